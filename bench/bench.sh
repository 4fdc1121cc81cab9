#!/usr/bin/env bash
# Benchmark nbdkit-qed against qemu-nbd (QED) and nbdkit-file-plugin (raw).
# See bench/README.md for what is measured and how.  Run with --help.
#
# This script runs the measurements: for each selected workload
# (bench/workloads.py names them) it makes the images, starts a fresh server
# for every measurement and runs the client (helpers in bench/lib.sh; the
# golden-image workloads in bench/golden.sh), writing one line per
# measurement to a results file.  bench/report.py makes the tables from it.
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
RESULTS=
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
  --results FILE    write the measurements (one tab-separated line each) to
                    FILE; bench/report.py FILE prints the tables again
                    (default: results.tsv in the work directory)
  --size SIZE       image size (default 1G, --quick 64M); suffix K/M/G
  --runtime SEC     seconds per fio run (default 10, --quick 2)
  --cache-size SIZE plugin cache-size= (default 64M)
  --miss-cache-size SIZE
                    plugin cache-size= for the 1 TiB image whose L2 tables do
                    not fit (section mem; default 16M)
  --only LIST       comma list of workloads and sections to run, e.g.
                    seq-alloc-write,nbd,golden-stream; the sections are
                    image, nbd, golden, mem, scale ('python3
                    bench/workloads.py list' lists them all; the numbers
                    1-9d of before are accepted for now)
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
    --results) RESULTS=$2; shift ;;
    --results=*) RESULTS=${1#*=} ;;
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

[ -x "$PY" ] || die "$PY is required"
# The selected workloads' names, in run order (an unknown name is an error).
SELECTED=$("$PY" "$here/workloads.py" select "$ONLY") || exit 2
want() {  # want NAME...: is any of these workloads selected?
  local n
  for n; do [[ " $SELECTED " == *" $n "* ]] && return 0; done
  return 1
}

for t in nbdkit qemu-nbd qemu-img qemu-io nbdcopy nbdinfo fio timeout; do
  command -v "$t" >/dev/null || die "'$t' is required but not in PATH"
done
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

# ------------------------------------------------------- work directories
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

mkdir -p "$CACHE_DIR" "$WORK_PARENT" || die "cannot create directories"
WORK=$(mktemp -d "$WORK_PARENT/nbdkit-qed-bench.XXXXXX") || die "mktemp failed"
SOCKDIR=$(mktemp -d /tmp/nqb.XXXXXX) || die "mktemp failed"   # short: sun_path is 108 bytes
NSOCK=0
IMG=([ours]=$WORK/ours.qed [qemu]=$WORK/qemu.qed [raw]=$WORK/raw.img)
: "${RESULTS:=$WORK/results.tsv}"
printf 'workload\tserver\trepeat\tmetric\tvalue\n' >"$RESULTS" || die "cannot write $RESULTS"
FAILED=0

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

# ----------------------------------------- section image: one image per server
# image_case NAME KIND: prepare KIND's image, start a server, run workload NAME.
image_case() {
  local name=$1 kind=$2 ok=1
  CASE_VAL='' CASE_ERR=''
  case $name in
    seq-alloc-write|rand-alloc-write|flush-write-qd1|flush-write-qd32) fresh_image "$kind" ;;
    seq-read|seq-overwrite|rand-read|rand-overwrite) full_image "$kind" ;;
    cow-*) fresh_image "$kind" cow ;;
  esac || { CASE_ERR="image preparation failed"; return 1; }
  start_server "$kind" "${IMG[$kind]}" || return 1
  case $name in
    seq-alloc-write|cow-seq-alloc-write) copy_in ;;
    seq-read) copy_out ;;
    seq-overwrite) copy_in ;;
    rand-alloc-write|cow-rand-alloc-write) fio_run randwrite alloc "$SIZE_B" ;;
    rand-read) fio_run randread timed "$SIZE_B" ;;
    rand-overwrite) fio_run randwrite timed "$SIZE_B" ;;
    flush-write-qd1|cow-flush-write-qd1) FIO_QD=1 FIO_FSYNC=1 fio_run randwrite alloc "$SIZE_B" ;;
    flush-write-qd32|cow-flush-write-qd32) FIO_QD=32 FIO_FSYNC=32 fio_run randwrite alloc "$SIZE_B" ;;
  esac || ok=0
  [ $ok = 1 ] || CASE_ERR="client failed: $(grep -v '^+ ' "$WORK/client.log" | tail -n 4 | tr '\n' ' ')"
  stop_server
  record "$name" "$kind" rss-kib "$SRV_HWM_KB"
  if [ "$SRV_DIED" = 1 ] || { [ "$SRV_RC" != 0 ] && [ $ok = 1 ]; }; then
    ok=0
    CASE_ERR="${CASE_ERR:+$CASE_ERR; }server exited with status $SRV_RC: $(grep -v '^+ ' "$SRV_LOG" | tail -n 4 | tr '\n' ' ')"
  fi
  [ $ok = 1 ] || return 1
  case $name in
    seq-alloc-write|seq-overwrite|rand-overwrite) FULL[$kind]=1 ;;
    rand-alloc-write|cow-*|flush-*) FULL[$kind]=0 ;;
  esac
  return 0
}

# image_workload NAME: its measurement REPEAT times, the servers interleaved.
image_workload() {
  local name=$1 kind
  want "$name" || return 0
  log "workload $name"
  for ((REP = 1; REP <= REPEAT; REP++)); do
    for kind in "${KINDS[@]}"; do
      if image_case "$name" "$kind"; then
        log "  $kind: $CASE_VAL $CASE_METRIC"
        record "$name" "$kind" "$CASE_METRIC" "$CASE_VAL"
      else
        fail "$name" "$kind" "$CASE_ERR"
      fi
    done
  done
  REP=1
}

# ------------------------------------------ section nbd: backing file on an NBD server
# nbd_case NAME KIND IMAGE: a fresh KIND server on the overlay, one workload;
# its value, the server's CPU seconds (user + system, over the client's run)
# per GiB read and its peak RSS.
nbd_case() {
  local name=$1 kind=$2 img=$3 ok=1 c0 c1 cpu
  CASE_VAL='' CASE_ERR='' CASE_BYTES=''
  start_server "$kind" "$img" || { fail "$name" "$kind" "$CASE_ERR"; return; }
  c0=$(cpu_ticks "$SRV_PID")
  case $name in
    nbd-seq-read) copy_out ;;
    nbd-rand-read) fio_run randread timed "$SIZE_B" ;;
  esac || { ok=0; CASE_ERR="client failed: $(grep -v '^+ ' "$WORK/client.log" | tail -n 4 | tr '\n' ' ')"; }
  c1=$(cpu_ticks "$SRV_PID")
  stop_server
  if [ "$SRV_DIED" = 1 ] || { [ "$SRV_RC" != 0 ] && [ $ok = 1 ]; }; then
    ok=0; CASE_ERR="${CASE_ERR:+$CASE_ERR; }server exited with status $SRV_RC: $(grep -v '^+ ' "$SRV_LOG" | tail -n 4 | tr '\n' ' ')"
  fi
  if [ $ok = 1 ] && [ -n "$c0" ] && [ -n "$c1" ] && [ "${CASE_BYTES:-0}" -gt 0 ]; then
    cpu=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v b="$CASE_BYTES" 'BEGIN { printf "%.2f", t / hz / (b / 1073741824) }')
    log "  $kind: $CASE_VAL $CASE_METRIC, $cpu CPU s/GiB, peak RSS ${SRV_HWM_KB:-?} KiB"
    record "$name" "$kind" "$CASE_METRIC" "$CASE_VAL"
    record "$name" "$kind" cpu-s-per-gib "$cpu"
    record "$name" "$kind" rss-kib "$SRV_HWM_KB"
  else
    [ $ok = 1 ] && CASE_ERR="no CPU figure for the server (pid $SRV_PID)"
    fail "$name" "$kind" "$CASE_ERR"
  fi
}

# An empty overlay (every read goes to the base) whose raw base, the random
# data, is served read-only by nbdkit's file plugin on a Unix socket; ours and
# qemu-nbd serve the same overlay in turn (QEMU opens the base with its own
# NBD client, one connection).
run_nbd() {
  want nbd-seq-read nbd-rand-read || return 0
  local name kind base_pid base_uri img=$WORK/nbd-top.qed
  ensure_base
  log "backing file on an NBD server: $SIZE raw base served by nbdkit file, empty overlay"
  if ! start_server base "$WORK/base.raw"; then
    fail nbd base "base server: $CASE_ERR"; return
  fi
  base_pid=$SRV_PID base_uri=$SRV_URI
  rm -f "$img"
  qed_create -b "$base_uri" -F raw "$img"
  OURS_EXTRA=(allow-backing=network backing-connections="$BACKING_CONNECTIONS")
  for name in nbd-seq-read nbd-rand-read; do
    want "$name" || continue
    log "workload $name, overlay over an NBD base"
    for ((REP = 1; REP <= REPEAT; REP++)); do
      for kind in ours qemu; do nbd_case "$name" "$kind" "$img"; done
    done
  done
  REP=1
  OURS_EXTRA=()
  SRV_PID=$base_pid
  stop_server
  rm -f "$img"
}

# ---------------------------------------- section mem: peak RSS on 1 TiB images
# mem_case NAME KIND IMAGE: fio random reads over the whole image for
# MEM_RUNTIME seconds; record IOPS and peak RSS.
mem_case() {
  local name=$1 kind=$2 img=$3 size ok=1
  CASE_VAL='' CASE_ERR=''
  size=$(qemu-img info --output=json "$img" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
  start_server "$kind" "$img" || { fail "$name" "$kind" "$CASE_ERR"; return; }
  fio_run randread timed "$size" "$MEM_RUNTIME" || { ok=0; CASE_ERR="client failed: $(grep -v '^+ ' "$WORK/client.log" | tail -n 4 | tr '\n' ' ')"; }
  stop_server
  if [ "$SRV_DIED" = 1 ] || { [ "$SRV_RC" != 0 ] && [ $ok = 1 ]; }; then
    ok=0; CASE_ERR="${CASE_ERR:+$CASE_ERR; }server exited with status $SRV_RC: $(grep -v '^+ ' "$SRV_LOG" | tail -n 4 | tr '\n' ' ')"
  fi
  if [ $ok = 1 ]; then
    record "$name" "$kind" rss-kib "$SRV_HWM_KB"
    record "$name" "$kind" iops "$CASE_VAL"
    log "  $kind: peak RSS $((SRV_HWM_KB / 1024)) MiB, $CASE_VAL IOPS"
  else
    fail "$name" "$kind" "$CASE_ERR"
  fi
}

run_mem() {
  local kind img off i
  if want mem-sparse-1t; then
    log "workload mem-sparse-1t: 1 TiB sparse image, random reads over all of it for ${MEM_RUNTIME}s"
    for kind in "${KINDS[@]}"; do
      img=$WORK/mem-$kind.img; rm -f "$img"
      case $kind in
        ours|qemu) qed_create "$img" 1T ;;
        raw) truncate -s 1T "$img" ;;
      esac
      mem_case mem-sparse-1t "$kind" "$img"
      rm -f "$img"
    done
  fi
  want mem-l2-miss-1t || return 0
  # One cluster in every L2 table: 512 tables of 256 KiB = 128 MiB of L2
  # metadata, eight times the plugin's cache-size=16M (--miss-cache-size), so
  # most reads miss the L2 cache.
  log "workload mem-l2-miss-1t: 1 TiB image with all 512 L2 tables allocated, random reads for ${MEM_RUNTIME}s"
  img=$WORK/mem-l2.qed; rm -f "$img"
  qed_create "$img" 1T
  local -a cmds=()
  for ((i = 0; i < 512; i++)); do
    off=$(( i * (1 << 31) + (i % 32) * 65536 ))
    cmds+=(-c "write -q -P 0x5a $off 64k")
  done
  if qemu-io -f qed "${cmds[@]}" "$img" >"$WORK/qemu-io.log" 2>&1; then
    OURS_CACHE=$MISS_CACHE_SIZE
    for ((REP = 1; REP <= REPEAT; REP++)); do
      for kind in ours qemu; do mem_case mem-l2-miss-1t "$kind" "$img"; done
    done
    REP=1
    OURS_CACHE=
  else
    fail mem-l2-miss-1t ours "qemu-io could not fill the image: $(tail -n 3 "$WORK/qemu-io.log" | tr '\n' ' ')"
  fi
  rm -f "$img"
}

# ------------------------------------------- section scale: 64 TiB sparse image
run_scale() {
  want scale-64t || return 0
  local kind img t0 ok note
  log "workload scale-64t: open a 64 TiB sparse image and nbdinfo --map it"
  for kind in "${KINDS[@]}"; do
    img=$WORK/scale-$kind.img; rm -f "$img"
    case $kind in
      ours|qemu) qed_create "$img" 64T ;;
      raw) truncate -s 64T "$img" 2>/dev/null || {
             note="n/a: $(df --output=fstype "$WORK" | tail -n 1) cannot hold a 64 TiB file"
             record scale-64t raw note "$note"
             log "  raw: $note"; continue; } ;;
    esac
    CASE_ERR=
    if ! start_server "$kind" "$img"; then
      fail scale-64t "$kind" "$CASE_ERR"; rm -f "$img"; continue
    fi
    local open_ms=$SRV_OPEN_MS map_ms extents
    t0=$(now); ok=1
    run_client 600 nbdinfo --map "$SRV_URI" || ok=0
    map_ms=$(ms_since "$t0")
    extents=$(grep -vc '^+ ' "$WORK/client.log")
    stop_server
    if [ $ok = 0 ] || [ "$SRV_DIED" = 1 ] || [ "$SRV_RC" != 0 ]; then
      fail scale-64t "$kind" "nbdinfo --map failed or server exited ($SRV_RC): $(grep -v '^+ ' "$WORK/client.log" "$SRV_LOG" | tail -n 4 | tr '\n' ' ')"
    else
      record scale-64t "$kind" open-ms "$open_ms"
      record scale-64t "$kind" map-ms "$map_ms"
      record scale-64t "$kind" extent-lines "$extents"
      log "  $kind: open $open_ms ms, map $map_ms ms ($extents extent lines)"
    fi
    rm -f "$img"
  done
}

# Section golden, copy-on-read and stream (issue 20): run_golden.
# shellcheck source=bench/golden.sh
source "$here/golden.sh"

# ------------------------------------------------------------------ run
fact() { REP=0 record run - "$1" "$2"; }   # a fact about the whole run
fact selected "$SELECTED"
fact size "$SIZE"; fact size-bytes "$SIZE_B"; fact runtime-s "$RUNTIME"; fact repeat "$REPEAT"
fact plugin "$(basename "$PLUGIN")"; fact cache-size "$CACHE_SIZE"; fact miss-cache-size "$MISS_CACHE_SIZE"
fact qemu-opts "$QEMU_OPTS"; fact backing-connections "$BACKING_CONNECTIONS"; fact mem-runtime-s "$MEM_RUNTIME"

log "plugin $PLUGIN; image $SIZE; fio runtime ${RUNTIME}s; repeat $REPEAT; work dir $WORK"
START=$(now)
for name in $("$PY" "$here/workloads.py" select "$ONLY" image); do image_workload "$name"; done
run_nbd
run_golden
run_mem
run_scale

fact date "$(date -u '+%F %T UTC')"; fact host "$(uname -n)"; fact cpus "$(nproc)"
fact loadavg "$(cut -d' ' -f1-3 /proc/loadavg)"
fact nbdkit-version "$(nbdkit --version | head -n 1)"; fact qemu-nbd-version "$(qemu-nbd --version | head -n 1)"
fact nbdcopy-version "$(nbdcopy --version | head -n 1)"; fact fio-version "$(fio --version)"
fact total-s "$(awk -v a="$START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f", b - a }')"

# --------------------------------------------------------------- report
REPORT=$("$PY" "$here/report.py" "$RESULTS") || { echo "bench.sh: bench/report.py failed on $RESULTS" >&2; exit 1; }
echo
echo "$REPORT"
if [ -n "$OUTPUT" ]; then
  echo "$REPORT" >"$OUTPUT" || { echo "bench.sh: cannot write $OUTPUT" >&2; exit 1; }
  log "report written to $OUTPUT"
fi
exit $FAILED
