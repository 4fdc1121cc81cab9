#!/usr/bin/env bash
# Benchmark nbdkit-qed against qemu-nbd (QED) and nbdkit-file-plugin (raw).
# See bench/README.md for what is measured and how.  Run with --help.
set -uo pipefail
export LC_ALL=C
# /usr/bin first: the pyenv shim in PATH lacks the nbd module (and is slow).
export PATH=/usr/bin:/usr/sbin:/bin:$PATH
PY=/usr/bin/python3

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/.." && pwd)

# ---------------------------------------------------------------- options
PLUGIN=$top/build-bench/plugin/nbdkit-qed-plugin.so
QUICK=0
REPEAT=
OUTPUT=
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/nbdkit-qed-bench
WORK_PARENT=${TMPDIR:-/var/tmp}
CACHE_SIZE=64M
MISS_CACHE_SIZE=16M
KEEP=0
SYNC=1
ONLY=
SIZE=
RUNTIME=
QEMU_OPTS="--cache=writeback --aio=threads -e 16"
BACKING_CONNECTIONS=8

usage() {
  cat <<EOF
Usage: bench/bench.sh [options]

  --plugin PATH     nbdkit-qed-plugin.so to test (default: build-bench/...,
                    built with 'meson setup build-bench --buildtype=release
                    -Dtests=false && ninja -C build-bench' if missing)
  --quick           CI smoke run: 64 MiB image, 2 s per fio run (< 2 min)
  --repeat N        run every measurement N times, servers interleaved, and
                    report the median with the spread (default 5, --quick 1)
  --output FILE     also write the result tables (markdown) to FILE
  --size SIZE       image size (default 1G, --quick 64M); suffix K/M/G
  --runtime SEC     seconds per fio run (default 10, --quick 2)
  --cache-size SIZE plugin cache-size= (default 64M)
  --miss-cache-size SIZE
                    plugin cache-size= for the 1 TiB image whose L2 tables do
                    not fit (section mem; default 16M)
  --only LIST       comma list of sections to run:
                    1,2,3,4,5,6,7a,7b,9a,9b,9c,9d,nbd,mem,scale,golden
                    (golden: copy-on-read and stream, bench/golden.sh)
  --backing-connections N
                    plugin backing-connections= in the nbd section (default 8)
  --cache-dir DIR   where the random source data is cached
                    (default \${XDG_CACHE_HOME:-~/.cache}/nbdkit-qed-bench)
  --workdir DIR     parent of the temporary work directory (default \${TMPDIR:-/var/tmp})
  --qemu-opts STR   qemu-nbd options (default "$QEMU_OPTS")
  --no-sync         do not syncfs the work directory's filesystem before
                    each server start (by default dirty pages left by the
                    previous run are written back first, untimed)
  --keep            keep the work directory (images, logs) at exit
  -h, --help        this text
EOF
}

while [ $# -gt 0 ]; do
  case $1 in
    --plugin) PLUGIN=$2; shift ;;
    --plugin=*) PLUGIN=${1#*=} ;;
    --quick) QUICK=1 ;;
    --repeat) REPEAT=$2; shift ;;
    --repeat=*) REPEAT=${1#*=} ;;
    --output) OUTPUT=$2; shift ;;
    --output=*) OUTPUT=${1#*=} ;;
    --size) SIZE=$2; shift ;;
    --size=*) SIZE=${1#*=} ;;
    --runtime) RUNTIME=$2; shift ;;
    --runtime=*) RUNTIME=${1#*=} ;;
    --cache-size) CACHE_SIZE=$2; shift ;;
    --cache-size=*) CACHE_SIZE=${1#*=} ;;
    --miss-cache-size) MISS_CACHE_SIZE=$2; shift ;;
    --miss-cache-size=*) MISS_CACHE_SIZE=${1#*=} ;;
    --only) ONLY=$2; shift ;;
    --only=*) ONLY=${1#*=} ;;
    --cache-dir) CACHE_DIR=$2; shift ;;
    --cache-dir=*) CACHE_DIR=${1#*=} ;;
    --workdir) WORK_PARENT=$2; shift ;;
    --workdir=*) WORK_PARENT=${1#*=} ;;
    --backing-connections) BACKING_CONNECTIONS=$2; shift ;;
    --backing-connections=*) BACKING_CONNECTIONS=${1#*=} ;;
    --qemu-opts) QEMU_OPTS=$2; shift ;;
    --qemu-opts=*) QEMU_OPTS=${1#*=} ;;
    --keep) KEEP=1 ;;
    --no-sync) SYNC=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "bench.sh: $*" >&2; exit 2; }
log() { echo "[$(date +%T)] $*" >&2; }

[ -n "$REPEAT" ] || REPEAT=$(( QUICK ? 1 : 5 ))
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "--repeat needs a positive integer"
if [ "$QUICK" = 1 ]; then : "${SIZE:=64M}" "${RUNTIME:=2}"; else : "${SIZE:=1G}" "${RUNTIME:=10}"; fi
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "--runtime needs a positive integer"

to_bytes() {
  local s=$1 n u
  [[ $s =~ ^([0-9]+)([KMGTkmgt]?)$ ]] || die "bad size '$s'"
  n=${BASH_REMATCH[1]}; u=${BASH_REMATCH[2]^^}
  case $u in
    K) n=$((n << 10)) ;; M) n=$((n << 20)) ;; G) n=$((n << 30)) ;; T) n=$((n << 40)) ;;
  esac
  echo "$n"
}
SIZE_B=$(to_bytes "$SIZE")
(( SIZE_B >= 1 << 20 && SIZE_B % 65536 == 0 )) || die "--size must be >= 1M and a multiple of 64K"
MEM_RUNTIME=$(( QUICK ? 2 : 5 ))

want() {  # want SECTION: is it selected by --only?
  [ -z "$ONLY" ] && return 0
  [[ ",$ONLY," == *",$1,"* ]]
}

for t in nbdkit qemu-nbd qemu-img qemu-io nbdcopy nbdinfo fio timeout; do
  command -v "$t" >/dev/null || die "'$t' is required but not in PATH"
done
[ -x "$PY" ] || die "$PY is required"
nbdkit file --version >/dev/null 2>&1 || die "nbdkit file plugin is not installed"

# ------------------------------------------------------------ build plugin
if [ ! -f "$PLUGIN" ]; then
  if [ "$PLUGIN" = "$top/build-bench/plugin/nbdkit-qed-plugin.so" ]; then
    log "building the plugin in $top/build-bench (release)"
    ( cd "$top" &&
      { [ -d build-bench ] || meson setup build-bench --buildtype=release -Dtests=false; } &&
      ninja -C build-bench ) >&2 || die "build failed"
  else
    die "plugin $PLUGIN not found"
  fi
fi
PLUGIN=$(cd "$(dirname "$PLUGIN")" && pwd)/$(basename "$PLUGIN")

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
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# A process that exited but is not reaped yet (zombie) counts as dead.
is_alive() {
  local st
  st=$(awk '/^State:/{print $2}' "/proc/$1/status" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

mkdir -p "$CACHE_DIR" "$WORK_PARENT" || die "cannot create directories"
WORK=$(mktemp -d "$WORK_PARENT/nbdkit-qed-bench.XXXXXX") || die "mktemp failed"
SOCKDIR=$(mktemp -d /tmp/nqb.XXXXXX) || die "mktemp failed"   # short: sun_path is 108 bytes
NSOCK=0

now() { echo "$EPOCHREALTIME"; }
ms_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", (b - a) * 1000 }'; }

# ---------------------------------------------------------- random data
RAND=$CACHE_DIR/random-$SIZE_B.bin
if [ ! -f "$RAND" ] || [ "$(stat -c %s "$RAND")" != "$SIZE_B" ]; then
  log "creating $RAND ($SIZE of random data, cached for later runs)"
  tmp=$RAND.tmp.$$
  if command -v openssl >/dev/null; then
    openssl enc -aes-128-ctr -nosalt -pass pass:nbdkit-qed-bench -in /dev/zero 2>/dev/null |
      head -c "$SIZE_B" >"$tmp"
  else
    head -c "$SIZE_B" /dev/urandom >"$tmp"
  fi
  [ "$(stat -c %s "$tmp")" = "$SIZE_B" ] || { rm -f "$tmp"; die "could not create random data"; }
  mv "$tmp" "$RAND"
fi

# --------------------------------------------------------------- servers
KINDS=(ours qemu raw)
declare -A IMG=([ours]=$WORK/ours.qed [qemu]=$WORK/qemu.qed [raw]=$WORK/raw.img)
declare -A FULL=([ours]=0 [qemu]=0 [raw]=0)   # image fully allocated with $RAND?

SRV_PID='' SRV_URI='' SRV_LOG='' SRV_OPEN_MS='' SRV_HWM_KB='' SRV_RC='' SRV_DIED=0
OURS_EXTRA=()   # more plugin keys for "ours" (the nbd section sets allow-backing=network)
OURS_CACHE=     # cache-size= for "ours" instead of --cache-size (section mem)
CASE_VAL='' CASE_ERR='' CASE_BYTES=''   # CASE_BYTES: bytes the client moved (copy_out, fio_run)

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
    qemu-cor) cmd=(qemu-nbd -t -k "$sock" $QEMU_OPTS --image-opts
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
  CASE_VAL=$(mibs "$SIZE_B" "$t0")
}
copy_out() {
  local t0; t0=$(now)
  run_client "$COPY_LIMIT" nbdcopy --connections=4 "$SRV_URI" null: || return 1
  CASE_VAL=$(mibs "$SIZE_B" "$t0") CASE_BYTES=$SIZE_B
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
}

# ------------------------------------------------------------ one case
declare -A RES=() VALS=() ERR=() HWM=()   # RES: the median of VALS
FAILED=0

# run_case ID KIND: prepare KIND's image, start a server, run workload ID.
run_case() {
  local id=$1 kind=$2 ok=1
  CASE_VAL='' CASE_ERR=''
  case $id in
    1|4|9a|9b) fresh_image "$kind" ;;
    2|3|5|6) full_image "$kind" ;;
    7a|7b|9c|9d) fresh_image "$kind" cow ;;
  esac || { CASE_ERR="image preparation failed"; return 1; }
  start_server "$kind" "${IMG[$kind]}" || return 1
  case $id in
    1|7a) copy_in ;;
    2) copy_out ;;
    3) copy_in ;;
    4|7b) fio_run randwrite alloc "$SIZE_B" ;;
    5) fio_run randread timed "$SIZE_B" ;;
    6) fio_run randwrite timed "$SIZE_B" ;;
    9a|9c) FIO_QD=1 FIO_FSYNC=1 fio_run randwrite alloc "$SIZE_B" ;;
    9b|9d) FIO_QD=32 FIO_FSYNC=32 fio_run randwrite alloc "$SIZE_B" ;;
  esac || ok=0
  [ $ok = 1 ] || CASE_ERR="client failed: $(grep -v '^+ ' "$WORK/client.log" | tail -n 4 | tr '\n' ' ')"
  stop_server
  HWM[$id,$kind]=$SRV_HWM_KB
  if [ "$SRV_DIED" = 1 ] || { [ "$SRV_RC" != 0 ] && [ $ok = 1 ]; }; then
    ok=0
    CASE_ERR="${CASE_ERR:+$CASE_ERR; }server exited with status $SRV_RC: $(grep -v '^+ ' "$SRV_LOG" | tail -n 4 | tr '\n' ' ')"
  fi
  [ $ok = 1 ] || return 1
  case $id in 1|3|6) FULL[$kind]=1 ;; 4|7a|7b|9?) FULL[$kind]=0 ;; esac
  return 0
}

run_workload() {
  local id=$1 rep kind
  want "$id" || return 0
  log "workload $id: ${WL_NAME[$id]}"
  for ((rep = 1; rep <= REPEAT; rep++)); do
    for kind in "${KINDS[@]}"; do
      if run_case "$id" "$kind"; then
        log "  $kind: $CASE_VAL ${WL_UNIT[$id]}"
        VALS[$id,$kind]="${VALS[$id,$kind]:-} $CASE_VAL"
        # shellcheck disable=SC2086
        RES[$id,$kind]=$(median ${VALS[$id,$kind]})
      else
        log "  $kind: FAILED: $CASE_ERR"
        ERR[$id,$kind]=$CASE_ERR
        FAILED=1
      fi
    done
  done
}

declare -A WL_NAME=(
  [1]="sequential allocating write (nbdcopy --flush, fresh image)"
  [2]="sequential read (nbdcopy to null:)"
  [3]="sequential overwrite (nbdcopy --flush, allocated image)"
  [4]="4k random allocating write, QD32 (fresh image)"
  [5]="4k random read, QD32 (allocated image)"
  [6]="4k random overwrite, QD32 (allocated image)"
  [7a]="CoW: sequential allocating write over raw backing"
  [7b]="CoW: 4k random allocating write over raw backing, QD32"
  [9a]="4k random allocating write, flush after every write, QD1 (fresh image)"
  [9b]="4k random allocating write, flush every 32 writes, QD32 (fresh image)"
  [9c]="CoW: 4k random allocating write, flush after every write, QD1, over raw backing"
  [9d]="CoW: 4k random allocating write, flush every 32 writes, QD32, over raw backing"
)
declare -A WL_UNIT=([1]=MiB/s [2]=MiB/s [3]=MiB/s [4]=IOPS [5]=IOPS [6]=IOPS [7a]=MiB/s [7b]=IOPS
                    [9a]=IOPS [9b]=IOPS [9c]=IOPS [9d]=IOPS)
WL_ORDER=(1 2 3 4 5 6 7a 7b 9a 9b 9c 9d)
RUN_ORDER=(1 2 3 5 6 4 7a 7b 9a 9b 9c 9d)   # reuse the image of 1 for 2, 3, 5 and 6

# --------------------------------------------------------- extra sections
declare -A MEM=() MEMV=() SCALE=()

# mem_case TAG KIND IMAGE: fio random reads over the whole image for
# MEM_RUNTIME seconds; record IOPS and peak RSS.
mem_case() {
  local tag=$1 kind=$2 img=$3 size ok=1
  CASE_VAL='' CASE_ERR=''
  size=$(qemu-img info --output=json "$img" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
  start_server "$kind" "$img" || { ERR[$tag,$kind]=$CASE_ERR; FAILED=1; log "  $kind: FAILED: $CASE_ERR"; return; }
  fio_run randread timed "$size" "$MEM_RUNTIME" || { ok=0; CASE_ERR="client failed: $(grep -v '^+ ' "$WORK/client.log" | tail -n 4 | tr '\n' ' ')"; }
  stop_server
  if [ "$SRV_DIED" = 1 ] || { [ "$SRV_RC" != 0 ] && [ $ok = 1 ]; }; then
    ok=0; CASE_ERR="${CASE_ERR:+$CASE_ERR; }server exited with status $SRV_RC: $(grep -v '^+ ' "$SRV_LOG" | tail -n 4 | tr '\n' ' ')"
  fi
  if [ $ok = 1 ]; then
    # Repeats keep every value; the report gives medians.
    MEMV[$tag,$kind]="${MEMV[$tag,$kind]:-} $SRV_HWM_KB"
    MEMV[$tag-iops,$kind]="${MEMV[$tag-iops,$kind]:-} $CASE_VAL"
    # shellcheck disable=SC2086
    MEM[$tag,$kind]=$(median ${MEMV[$tag,$kind]}) MEM[$tag-iops,$kind]=$(median ${MEMV[$tag-iops,$kind]})
    log "  $kind: peak RSS $((SRV_HWM_KB / 1024)) MiB, $CASE_VAL IOPS"
  else
    ERR[$tag,$kind]=$CASE_ERR; FAILED=1; log "  $kind: FAILED: $CASE_ERR"
  fi
}

run_mem() {
  want mem || return 0
  local kind img off i rep
  log "memory: 1 TiB sparse image, random reads over all of it for ${MEM_RUNTIME}s"
  for kind in "${KINDS[@]}"; do
    img=$WORK/mem-$kind.img; rm -f "$img"
    case $kind in
      ours|qemu) qed_create "$img" 1T ;;
      raw) truncate -s 1T "$img" ;;
    esac
    mem_case sparse1t "$kind" "$img"
    rm -f "$img"
  done
  # One cluster in every L2 table: 512 tables of 256 KiB = 128 MiB of L2
  # metadata, eight times the plugin's cache-size=16M (--miss-cache-size), so
  # most reads miss the L2 cache.
  log "memory: 1 TiB image with all 512 L2 tables allocated, random reads for ${MEM_RUNTIME}s"
  img=$WORK/mem-l2.qed; rm -f "$img"
  qed_create "$img" 1T
  local -a cmds=()
  for ((i = 0; i < 512; i++)); do
    off=$(( i * (1 << 31) + (i % 32) * 65536 ))
    cmds+=(-c "write -q -P 0x5a $off 64k")
  done
  if qemu-io -f qed "${cmds[@]}" "$img" >"$WORK/qemu-io.log" 2>&1; then
    OURS_CACHE=$MISS_CACHE_SIZE
    for ((rep = 1; rep <= REPEAT; rep++)); do
      for kind in ours qemu; do mem_case l2full1t "$kind" "$img"; done
    done
    OURS_CACHE=
  else
    ERR[l2full1t,ours]="qemu-io could not fill the image: $(tail -n 3 "$WORK/qemu-io.log" | tr '\n' ' ')"
    FAILED=1
  fi
  rm -f "$img"
}

run_scale() {
  want scale || return 0
  local kind img t0 ok
  log "scale: open a 64 TiB sparse image and nbdinfo --map it"
  for kind in "${KINDS[@]}"; do
    img=$WORK/scale-$kind.img; rm -f "$img"
    case $kind in
      ours|qemu) qed_create "$img" 64T ;;
      raw) truncate -s 64T "$img" 2>/dev/null || {
             SCALE[note,raw]="n/a: $(df --output=fstype "$WORK" | tail -n 1) cannot hold a 64 TiB file"
             log "  raw: ${SCALE[note,raw]}"; continue; } ;;
    esac
    CASE_ERR=
    if ! start_server "$kind" "$img"; then
      ERR[scale,$kind]=$CASE_ERR; FAILED=1; log "  $kind: FAILED: $CASE_ERR"; rm -f "$img"; continue
    fi
    SCALE[open,$kind]=$SRV_OPEN_MS
    t0=$(now); ok=1
    run_client 600 nbdinfo --map "$SRV_URI" || ok=0
    SCALE[map,$kind]=$(ms_since "$t0")
    SCALE[extents,$kind]=$(grep -vc '^+ ' "$WORK/client.log")
    stop_server
    if [ $ok = 0 ] || [ "$SRV_DIED" = 1 ] || [ "$SRV_RC" != 0 ]; then
      ERR[scale,$kind]="nbdinfo --map failed or server exited ($SRV_RC): $(grep -v '^+ ' "$WORK/client.log" "$SRV_LOG" | tail -n 4 | tr '\n' ' ')"
      FAILED=1; unset "SCALE[open,$kind]" "SCALE[map,$kind]"
      log "  $kind: FAILED: ${ERR[scale,$kind]}"
    else
      log "  $kind: open ${SCALE[open,$kind]} ms, map ${SCALE[map,$kind]} ms (${SCALE[extents,$kind]} extent lines)"
    fi
    rm -f "$img"
  done
}

# ------------------------------------------- backing file on an NBD server
declare -A NBD=() NBD_CPU=() NBD_HWM=()   # per ID,KIND: the value, CPU s/GiB, peak RSS (KiB) of each run
NBD_ORDER=(8a 8b)
declare -A NBD_NAME=(
  [8a]="sequential read (nbdcopy to null:)"
  [8b]="4k random read, QD32"
)
declare -A NBD_UNIT=([8a]=MiB/s [8b]=IOPS)

median() {  # median VALUE...: of the values given (empty if none)
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) exit; if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# cpu_ticks PID: user + system clock ticks the process has used so far
# (fields 14 and 15 of /proc/PID/stat; the name in field 2 has no spaces here).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null; }
CLK_TCK=$(getconf CLK_TCK)

# nbd_case ID KIND IMAGE: a fresh KIND server on the overlay, one workload; the
# values of all repeats are kept and the median is reported (the ratio is what
# this section is for, and medians move less than maxima on a busy machine),
# with the server's CPU seconds (user + system, over the client's run) per GiB
# read and its peak RSS.
nbd_case() {
  local id=$1 kind=$2 img=$3 ok=1 c0 c1 cpu
  CASE_VAL='' CASE_ERR='' CASE_BYTES=''
  start_server "$kind" "$img" || { ERR[$id,$kind]=$CASE_ERR; FAILED=1; log "  $kind: FAILED: $CASE_ERR"; return; }
  c0=$(cpu_ticks "$SRV_PID")
  case $id in
    8a) copy_out ;;
    8b) fio_run randread timed "$SIZE_B" ;;
  esac || { ok=0; CASE_ERR="client failed: $(grep -v '^+ ' "$WORK/client.log" | tail -n 4 | tr '\n' ' ')"; }
  c1=$(cpu_ticks "$SRV_PID")
  stop_server
  if [ "$SRV_DIED" = 1 ] || { [ "$SRV_RC" != 0 ] && [ $ok = 1 ]; }; then
    ok=0; CASE_ERR="${CASE_ERR:+$CASE_ERR; }server exited with status $SRV_RC: $(grep -v '^+ ' "$SRV_LOG" | tail -n 4 | tr '\n' ' ')"
  fi
  if [ $ok = 1 ] && [ -n "$c0" ] && [ -n "$c1" ] && [ "${CASE_BYTES:-0}" -gt 0 ]; then
    cpu=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v b="$CASE_BYTES" 'BEGIN { printf "%.2f", t / hz / (b / 1073741824) }')
    log "  $kind: $CASE_VAL ${NBD_UNIT[$id]}, $cpu CPU s/GiB, peak RSS ${SRV_HWM_KB:-?} KiB"
    NBD[$id,$kind]="${NBD[$id,$kind]:-} $CASE_VAL"
    NBD_CPU[$id,$kind]="${NBD_CPU[$id,$kind]:-} $cpu"
    NBD_HWM[$id,$kind]="${NBD_HWM[$id,$kind]:-} $SRV_HWM_KB"
  else
    [ $ok = 1 ] && CASE_ERR="no CPU figure for the server (pid $SRV_PID)"
    ERR[$id,$kind]=$CASE_ERR; FAILED=1; log "  $kind: FAILED: $CASE_ERR"
  fi
}

# An empty overlay (every read goes to the base) whose raw base, the random
# data, is served read-only by nbdkit's file plugin on a Unix socket; ours and
# qemu-nbd serve the same overlay in turn (QEMU opens the base with its own
# NBD client, one connection).
run_nbd() {
  want nbd || return 0
  local id rep kind base_pid base_uri img=$WORK/nbd-top.qed
  ensure_base
  log "backing file on an NBD server: $SIZE raw base served by nbdkit file, empty overlay"
  if ! start_server base "$WORK/base.raw"; then
    ERR[8a,ours]="base server: $CASE_ERR"; FAILED=1; log "  base: FAILED: $CASE_ERR"; return
  fi
  base_pid=$SRV_PID base_uri=$SRV_URI
  rm -f "$img"
  qed_create -b "$base_uri" -F raw "$img"
  OURS_EXTRA=(allow-backing=network backing-connections="$BACKING_CONNECTIONS")
  for id in "${NBD_ORDER[@]}"; do
    log "workload $id: ${NBD_NAME[$id]}, overlay over an NBD base"
    for ((rep = 1; rep <= REPEAT; rep++)); do
      for kind in ours qemu; do nbd_case "$id" "$kind" "$img"; done
    done
  done
  OURS_EXTRA=()
  SRV_PID=$base_pid
  stop_server
  rm -f "$img"
}

# Copy-on-read and stream (issue 20): run_golden, report_golden.
source "$here/golden.sh"

# ------------------------------------------------------------------ run
log "plugin $PLUGIN; image $SIZE; fio runtime ${RUNTIME}s; repeat $REPEAT; work dir $WORK"
START=$(now)
for id in "${RUN_ORDER[@]}"; do run_workload "$id"; done
run_nbd
run_golden
run_mem
run_scale

# --------------------------------------------------------------- report
ratio() {  # ratio A B
  [ -n "$1" ] && [ -n "$2" ] || { echo "-"; return; }
  awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}
spread() {  # spread VALUE...: "min-max" of the values, or nothing for fewer than 2
  [ $# -ge 2 ] || return 0
  printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }'
}
cell() {   # cell KEY: median [min-max] or FAIL or -
  # shellcheck disable=SC2086
  if [ -n "${RES[$1]:-}" ]; then
    local sp; sp=$(spread ${VALS[$1]:-})
    echo "${RES[$1]}${sp:+ [$sp]}"
  elif [ -n "${ERR[$1]:-}" ]; then echo "FAIL"
  else echo "-"; fi
}
nbd_cell() {  # nbd_cell MEDIAN VALUE...: "median [min-max]", "-" without values
  local m=$1; shift
  [ -n "$m" ] || { echo "-"; return; }
  local sp; sp=$(spread "$@")
  echo "$m${sp:+ [$sp]}"
}
mib() { [ -n "${1:-}" ] && awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }' || echo "-"; }

# target LABEL A B MIN: one line of the targets list, ratio A/B against MIN.
target() {
  local r; r=$(ratio "$2" "$3")
  local verdict=missed
  [ "$r" = - ] && verdict="not measured"
  [ "$r" != - ] && awk -v r="$r" -v m="$4" 'BEGIN { exit !(r + 0 >= m + 0) }' && verdict=met
  echo "| $1 | $r | >= $4 | $verdict |"
}

# target_max LABEL A B MAX: the same for a ratio that must stay at most MAX.
target_max() {
  local r; r=$(ratio "$2" "$3")
  local verdict=missed
  [ "$r" = - ] && verdict="not measured"
  [ "$r" != - ] && awk -v r="$r" -v m="$4" 'BEGIN { exit !(r + 0 <= m + 0) }' && verdict=met
  echo "| $1 | $r | <= $4 | $verdict |"
}

# The ratios the project aims at, from the medians above.
targets() {
  local any=0 id
  for id in 1 2 9a 9b 9c 9d nbd mem; do want "$id" && any=1; done
  [ $any = 1 ] || return 0
  echo
  echo "Targets (ratios of medians; the benchmark reports them, it does not gate on them):"
  echo
  echo "| ratio | value | target | |"
  echo "|---|--:|--:|---|"
  if want 9a; then
    target "9a ours/raw, flush after every write, QD1" "${RES[9a,ours]:-}" "${RES[9a,raw]:-}" 0.9
    target "9a ours/qemu-nbd" "${RES[9a,ours]:-}" "${RES[9a,qemu]:-}" 2
  fi
  if want 9b; then
    target "9b ours/raw, flush every 32 writes, QD32" "${RES[9b,ours]:-}" "${RES[9b,raw]:-}" 0.9
    target "9b ours/qemu-nbd" "${RES[9b,ours]:-}" "${RES[9b,qemu]:-}" 2
  fi
  want 9c && target "9c ours/qemu-nbd over raw backing, QD1" "${RES[9c,ours]:-}" "${RES[9c,qemu]:-}" 2
  want 9d && target "9d ours/qemu-nbd over raw backing, QD32" "${RES[9d,ours]:-}" "${RES[9d,qemu]:-}" 2
  want 1 && target "1 ours/raw, nbdcopy into a fresh image" "${RES[1,ours]:-}" "${RES[1,raw]:-}" 0.9
  want 2 && target "2 ours/raw, nbdcopy out of the image" "${RES[2,ours]:-}" "${RES[2,raw]:-}" 0.9
  if want nbd; then
    # shellcheck disable=SC2086
    target "8a ours/qemu-nbd, sequential read over an NBD base" \
      "$(median ${NBD[8a,ours]:-})" "$(median ${NBD[8a,qemu]:-})" 1.2
    # shellcheck disable=SC2086
    target "8b ours/qemu-nbd, 4k random read over an NBD base" \
      "$(median ${NBD[8b,ours]:-})" "$(median ${NBD[8b,qemu]:-})" 1.3
    # shellcheck disable=SC2086
    target_max "8b ours/qemu-nbd, overlay server CPU s/GiB of those reads" \
      "$(median ${NBD_CPU[8b,ours]:-})" "$(median ${NBD_CPU[8b,qemu]:-})" 0.7
  fi
  want mem && target "ours/qemu-nbd IOPS, 1 TiB, L2 tables 8x the cache" \
    "${MEM[l2full1t-iops,ours]:-}" "${MEM[l2full1t-iops,qemu]:-}" 2
}

report() {
  local id k v
  echo "## nbdkit-qed benchmark"
  echo
  echo "- date: $(date -u '+%F %T UTC'); host: $(uname -n), $(nproc) CPUs, load avg $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- image ${SIZE} ($SIZE_B bytes), 64 KiB clusters, table_size 4 (images made with qemu-img create/convert);" \
       "fio 4k, iodepth 32 unless the workload says otherwise, 1 job, ${RUNTIME}s;" \
       "medians of $REPEAT run(s) [min-max], ours, qemu-nbd and raw interleaved; nbdcopy 4 connections"
  echo "- ours: \`nbdkit -f -U SOCK $(basename "$PLUGIN") file=IMG cache-size=$CACHE_SIZE\` (default 16 threads)"
  echo "- qemu: \`qemu-nbd -t -k SOCK -f qed $QEMU_OPTS IMG\`; raw: \`nbdkit -f -U SOCK file file=IMG\`"
  echo "- $(nbdkit --version | head -n 1); $(qemu-nbd --version | head -n 1); $(nbdcopy --version | head -n 1); $(fio --version)"
  echo
  local any=0
  for id in "${WL_ORDER[@]}"; do want "$id" && any=1; done
  [ $any = 1 ] && echo "| # | workload | unit | ours | qemu-nbd | raw (file) | ours/qemu | ours/raw |"
  [ $any = 1 ] && echo "|---|---|---|--:|--:|--:|--:|--:|"
  for id in "${WL_ORDER[@]}"; do
    want "$id" || continue
    echo "| $id | ${WL_NAME[$id]} | ${WL_UNIT[$id]} | $(cell "$id,ours") | $(cell "$id,qemu") | $(cell "$id,raw") |" \
         "$(ratio "${RES[$id,ours]:-}" "${RES[$id,qemu]:-}") | $(ratio "${RES[$id,ours]:-}" "${RES[$id,raw]:-}") |"
  done
  if want nbd; then
    echo
    echo "Backing file on an NBD server: an empty overlay (every read goes to the base) over the $SIZE" \
         "raw base served by \`nbdkit -r file\` on a Unix socket; ours with allow-backing=network" \
         "backing-connections=$BACKING_CONNECTIONS, qemu-nbd opening the same overlay (QEMU's NBD client, one connection)."
    echo
    echo "Medians of $REPEAT run(s) each [min-max], ours and qemu-nbd interleaved; CPU is the overlay server's" \
         "user + system time over the client's run (/proc/PID/stat) per GiB read; peak RSS is VmHWM (MiB)."
    echo
    echo "| # | workload | unit | ours | qemu-nbd | ours/qemu | CPU s/GiB ours | CPU s/GiB qemu-nbd | ours/qemu | peak RSS ours | peak RSS qemu-nbd |"
    echo "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"
    for id in "${NBD_ORDER[@]}"; do
      # shellcheck disable=SC2086
      local o q mo mq co cq
      mo=$(median ${NBD[$id,ours]:-}) mq=$(median ${NBD[$id,qemu]:-})
      co=$(median ${NBD_CPU[$id,ours]:-}) cq=$(median ${NBD_CPU[$id,qemu]:-})
      o=$(nbd_cell "$mo" ${NBD[$id,ours]:-}) q=$(nbd_cell "$mq" ${NBD[$id,qemu]:-})
      [ -z "$mo" ] && [ -n "${ERR[$id,ours]:-}" ] && o=FAIL
      [ -z "$mq" ] && [ -n "${ERR[$id,qemu]:-}" ] && q=FAIL
      echo "| $id | ${NBD_NAME[$id]} | ${NBD_UNIT[$id]} | $o | $q | $(ratio "$mo" "$mq") |" \
           "$(nbd_cell "$co" ${NBD_CPU[$id,ours]:-}) | $(nbd_cell "$cq" ${NBD_CPU[$id,qemu]:-}) | $(ratio "$co" "$cq") |" \
           "$(mib "$(median ${NBD_HWM[$id,ours]:-})") | $(mib "$(median ${NBD_HWM[$id,qemu]:-})") |"
    done
  fi
  if want mem || want 5; then
    echo
    echo "Memory: peak RSS (VmHWM, MiB) of each server, read just before stopping it (plugin cache-size=$CACHE_SIZE," \
         "and $MISS_CACHE_SIZE for the image whose L2 tables do not fit; medians of $REPEAT run(s) there)."
    echo
    echo "| measurement | ours | qemu-nbd | raw (file) | ours/qemu |"
    echo "|---|--:|--:|--:|--:|"
    if want 5; then
      echo "| workload 5 (4k random read, $SIZE image) | $(mib "${HWM[5,ours]:-}") | $(mib "${HWM[5,qemu]:-}") | $(mib "${HWM[5,raw]:-}") | $(ratio "${HWM[5,ours]:-}" "${HWM[5,qemu]:-}") |"
    fi
    if want mem; then
      for k in sparse1t l2full1t; do
        case $k in
          sparse1t) v="1 TiB sparse image, ${MEM_RUNTIME}s 4k random read over all of it" ;;
          l2full1t) v="1 TiB image, all 512 L2 tables allocated (128 MiB), ours cache-size=$MISS_CACHE_SIZE, ${MEM_RUNTIME}s 4k random read" ;;
        esac
        echo "| $v | $(mib "${MEM[$k,ours]:-}") | $(mib "${MEM[$k,qemu]:-}") | $(mib "${MEM[$k,raw]:-}") | $(ratio "${MEM[$k,ours]:-}" "${MEM[$k,qemu]:-}") |"
        echo "| (IOPS in that run) | ${MEM[$k-iops,ours]:--} | ${MEM[$k-iops,qemu]:--} | ${MEM[$k-iops,raw]:--} | $(ratio "${MEM[$k-iops,ours]:-}" "${MEM[$k-iops,qemu]:-}") |"
      done
    fi
  fi
  if want scale; then
    echo
    echo "Scale: 64 TiB sparse image (milliseconds; lower is better)."
    echo
    echo "| measurement | ours | qemu-nbd | raw (file) | ours/qemu |"
    echo "|---|--:|--:|--:|--:|"
    echo "| server start until socket is listening (ms) | ${SCALE[open,ours]:--} | ${SCALE[open,qemu]:--} | ${SCALE[open,raw]:--} | $(ratio "${SCALE[open,ours]:-}" "${SCALE[open,qemu]:-}") |"
    echo "| nbdinfo --map of the whole image (ms) | ${SCALE[map,ours]:--} | ${SCALE[map,qemu]:--} | ${SCALE[map,raw]:--} | $(ratio "${SCALE[map,ours]:-}" "${SCALE[map,qemu]:-}") |"
    [ -n "${SCALE[note,raw]:-}" ] && echo "" && echo "raw: ${SCALE[note,raw]}"
  fi
  report_golden
  targets
  if [ ${#ERR[@]} -gt 0 ]; then
    echo
    echo "Failures:"
    echo
    for k in "${!ERR[@]}"; do echo "- ${k/,/ on }: ${ERR[$k]}"; done | sort
  fi
  echo
  echo "Ratios: higher is better for MiB/s and IOPS; for RSS and ms, lower is better. Total time $(awk -v a="$START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s."
}

REPORT=$(report)
echo
echo "$REPORT"
if [ -n "$OUTPUT" ]; then
  echo "$REPORT" >"$OUTPUT" || { echo "bench.sh: cannot write $OUTPUT" >&2; exit 1; }
  log "report written to $OUTPUT"
fi
exit $FAILED
