# Helpers of bench.sh (sourced): the servers it starts and stops, the images
# it makes, the clients it runs, and record, which writes one line of the
# results file per measurement.  State is in globals, named in capitals; the
# script runs one server and one client at a time.

# --------------------------------------------------------- state, cleanup
declare -a PIDS=()      # servers we started and have not reaped yet
CLIENT_PID=
WORK=
SOCKDIR=

cleanup() {
  local p i
  [ -n "$CLIENT_PID" ] && kill -TERM "$CLIENT_PID" 2>/dev/null
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for i in $(seq 50); do
    local alive=0
    for p in "${PIDS[@]}"; do is_alive "$p" && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do is_alive "$p" && kill -KILL "$p" 2>/dev/null; done
  for p in "${PIDS[@]}" $CLIENT_PID; do wait "$p" 2>/dev/null; done
  [ -n "$SOCKDIR" ] && rm -rf "$SOCKDIR"
  if [ -n "$WORK" ]; then
    if [ "$KEEP" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  fi
}

# A process that exited but is not reaped yet (zombie) counts as dead.
is_alive() {
  local st
  st=$(awk '/^State:/{print $2}' "/proc/$1/status" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

now() { echo "$EPOCHREALTIME"; }
ms_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", (b - a) * 1000 }'; }

# ---------------------------------------------------------------- records
# The results file: one line per measurement, tab-separated, with a header:
#   workload  server  repeat  metric  value
# workload is a name of bench/workloads.py (or "run" for a fact about the
# whole run: options, versions, total time); metric "error" holds why a
# measurement failed.  bench/report.py makes the tables from it.
REP=1   # the repeat being run (1..REPEAT), the third column
record() {  # record WORKLOAD SERVER METRIC VALUE
  local v=${4//$'\t'/ }
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$REP" "$3" "${v//$'\n'/ }" >>"$RESULTS"
}
# fail WORKLOAD SERVER MESSAGE: record a failed measurement and log it.
fail() {
  record "$1" "$2" error "$3"
  FAILED=1
  log "  $2: FAILED: $3"
}

# --------------------------------------------------------------- servers
KINDS=(ours qemu raw)
declare -A IMG=()   # KIND -> its image, in $WORK (set once $WORK exists)
declare -A FULL=([ours]=0 [qemu]=0 [raw]=0)   # image fully allocated with $RAND?

SRV_PID='' SRV_URI='' SRV_LOG='' SRV_OPEN_MS='' SRV_HWM_KB='' SRV_RC='' SRV_DIED=0
OURS_EXTRA=()   # more plugin keys for "ours" (the nbd section sets allow-backing=network)
OURS_CACHE=     # cache-size= for "ours" instead of --cache-size (section mem)
# A client's result: CASE_VAL in CASE_METRIC (mibs: MiB/s, iops), CASE_BYTES
# the bytes it moved (copy_out, fio_run); CASE_ERR why it failed.
CASE_VAL='' CASE_METRIC='' CASE_ERR='' CASE_BYTES=''

# start_server KIND IMAGE: run it in the foreground (so $! is the server) on
# a fresh unix socket and wait until the socket exists.  nbdkit binds its
# socket after .get_ready (which opens the image), qemu-nbd after opening it.
start_server() {
  local kind=$1 img=$2 sock i t0
  NSOCK=$((NSOCK + 1))
  sock=$SOCKDIR/$kind.$NSOCK
  SRV_LOG=$WORK/$kind.$NSOCK.log
  local -a cmd
  case $kind in
    ours) cmd=(nbdkit -f --exit-with-parent -U "$sock" "$PLUGIN" file="$img" cache-size="${OURS_CACHE:-$CACHE_SIZE}"
               "${OURS_EXTRA[@]}") ;;
    qemu) # shellcheck disable=SC2206
          cmd=(qemu-nbd -t -k "$sock" -f qed $QEMU_OPTS "$img") ;;
    raw)  cmd=(nbdkit -f --exit-with-parent -U "$sock" file file="$img") ;;
    base) cmd=(nbdkit -f --exit-with-parent -r -U "$sock" file file="$img") ;;
    # golden.sh: QEMU's copy-on-read driver over the QED overlay; a base that logs its requests.
    qemu-cor) # shellcheck disable=SC2206
              cmd=(qemu-nbd -t -k "$sock" $QEMU_OPTS --image-opts
                   "driver=copy-on-read,file.driver=qed,file.file.driver=file,file.file.filename=$img") ;;
    base-log) cmd=(nbdkit -f --exit-with-parent -r -U "$sock" --filter=log file file="$img"
                   logfile="$GOLDEN_BASE_LOG") ;;
  esac
  echo "+ ${cmd[*]}" >"$SRV_LOG"
  [ "$SYNC" = 1 ] && sync -f "$img"
  t0=$(now)
  "${cmd[@]}" >>"$SRV_LOG" 2>&1 &
  SRV_PID=$!
  PIDS+=("$SRV_PID")
  for i in $(seq 12000); do       # up to 60 s
    [ -S "$sock" ] && break
    is_alive "$SRV_PID" || break
    sleep 0.005
  done
  SRV_OPEN_MS=$(ms_since "$t0")
  SRV_URI="nbd+unix:///?socket=$sock"
  if ! [ -S "$sock" ] || ! is_alive "$SRV_PID"; then
    stop_server
    CASE_ERR="server did not start: $(tail -n 5 "$SRV_LOG" | tr '\n' ' ')"
    return 1
  fi
  return 0
}

# stop_server: record peak RSS, SIGTERM the server, reap it (SIGKILL after 60 s).
stop_server() {
  local i p; local -a rest=()
  SRV_HWM_KB=$(awk '/^VmHWM:/{print $2}' "/proc/$SRV_PID/status" 2>/dev/null)
  SRV_DIED=0
  is_alive "$SRV_PID" || SRV_DIED=1
  kill -TERM "$SRV_PID" 2>/dev/null
  for i in $(seq 1200); do is_alive "$SRV_PID" || break; sleep 0.05; done
  is_alive "$SRV_PID" && kill -KILL "$SRV_PID" 2>/dev/null
  wait "$SRV_PID" 2>/dev/null; SRV_RC=$?
  for p in "${PIDS[@]}"; do [ "$p" != "$SRV_PID" ] && rest+=("$p"); done
  PIDS=("${rest[@]}")
}

# run_client LIMIT CMD...: run a client in the background (so that signals
# reach our trap at once) with a time limit; output goes to $WORK/client.log.
run_client() {
  local limit=$1; shift
  echo "+ $*" >"$WORK/client.log"
  timeout -k 10 "$limit" "$@" >>"$WORK/client.log" 2>&1 &
  CLIENT_PID=$!
  wait "$CLIENT_PID"; local rc=$?
  CLIENT_PID=
  return $rc
}

# ---------------------------------------------------------------- images
qed_create() { qemu-img create -q -f qed -o cluster_size=65536,table_size=4 "$@"; }

fresh_image() {  # fresh_image KIND [cow]
  local kind=$1 cow=${2:-} img=${IMG[$1]}
  rm -f "$img"; FULL[$kind]=0
  if [ "$cow" = cow ]; then
    ensure_base
    case $kind in
      ours|qemu) qed_create -b "$WORK/base.raw" -F raw "$img" ;;
      raw) cp --sparse=always "$WORK/base.raw" "$img" ;;
    esac
  else
    case $kind in
      ours|qemu) qed_create "$img" "$SIZE_B" ;;
      raw) truncate -s "$SIZE_B" "$img" ;;
    esac
  fi
}

full_image() {  # make sure KIND's image holds all of $RAND (allocated)
  local kind=$1 img=${IMG[$1]}
  [ "${FULL[$kind]}" = 1 ] && return 0
  rm -f "$img"
  case $kind in
    ours|qemu) qemu-img convert -q -f raw -O qed -o cluster_size=65536,table_size=4 "$RAND" "$img" ;;
    raw) cp "$RAND" "$img" ;;
  esac && FULL[$kind]=1
}

ensure_base() {
  [ -f "$WORK/base.raw" ] || cp --reflink=auto "$RAND" "$WORK/base.raw"
}

# --------------------------------------------------------------- clients
COPY_LIMIT=$(( QUICK ? 60 : 900 ))
FIO_LIMIT=$(( RUNTIME * 3 + 60 ))

mibs() { awk -v b="$1" -v a="$2" -v c="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b / 1048576 / (c - a) }'; }

copy_in() {   # nbdcopy the random data into the server, final flush included
  local t0; t0=$(now)
  run_client "$COPY_LIMIT" nbdcopy --connections=4 --flush "$RAND" "$SRV_URI" || return 1
  CASE_VAL=$(mibs "$SIZE_B" "$t0") CASE_METRIC=mibs
}
copy_out() {
  local t0; t0=$(now)
  run_client "$COPY_LIMIT" nbdcopy --connections=4 "$SRV_URI" null: || return 1
  CASE_VAL=$(mibs "$SIZE_B" "$t0") CASE_BYTES=$SIZE_B CASE_METRIC=mibs
}

# fio_run RW MODE SIZE [RUNTIME]: MODE "alloc" = each 4k block at most once
# (fio's random map; stops after RUNTIME s or when every block was written),
# "timed" = RUNTIME s of I/O.  Queue depth FIO_QD (32); with FIO_FSYNC=N, a
# flush after every N writes.  Sets CASE_VAL to IOPS.
FIO_QD=32 FIO_FSYNC=0
fio_run() {
  local rw=$1 mode=$2 size=$3 rt=${4:-$RUNTIME} dir json=$WORK/fio.json
  local -a extra=()
  [ "$mode" = timed ] && extra=(--time_based)
  [ "$FIO_FSYNC" != 0 ] && extra+=(--fsync="$FIO_FSYNC")
  case $rw in *read*) dir='read' ;; *) dir='write' ;; esac
  rm -f "$json"
  run_client "$FIO_LIMIT" fio --name=bench --ioengine=nbd --uri="$SRV_URI" \
    --rw="$rw" --bs=4k --iodepth="$FIO_QD" --numjobs=1 --size="$size" \
    --runtime="$rt" "${extra[@]}" --norandommap=0 --randrepeat=1 \
    --output-format=json --output="$json" || return 1
  local out
  out=$("$PY" - "$json" "$dir" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
j = d["jobs"][0]
if j.get("error"):
    sys.exit("fio job error %s" % j["error"])
print("%.0f %d" % (j[sys.argv[2]]["iops"], j[sys.argv[2]]["io_bytes"]))
EOF
  ) || return 1
  read -r CASE_VAL CASE_BYTES <<<"$out"
  CASE_METRIC=iops
}

# cpu_ticks PID: user + system clock ticks the process has used so far
# (fields 14 and 15 of /proc/PID/stat; the name in field 2 has no spaces here).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null; }
CLK_TCK=$(getconf CLK_TCK)
