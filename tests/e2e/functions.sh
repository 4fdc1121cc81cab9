# Common helpers for the end-to-end tests.  Source it from a test script:
#
#   source "$(dirname "$0")/functions.sh" "$@"
#
# The first test argument is the path of the built plugin (nbdkit-qed-plugin.so).
# After sourcing:
#   $plugin  absolute path of the plugin
#   $tmp     a private temporary directory, the current directory, removed on exit
# Exit codes follow automake/meson: 0 pass, 77 skip, anything else fail.
#
# Sanitized builds: the plugin is an ASan/UBSan-instrumented module dlopen'ed by an
# uninstrumented nbdkit, so the ASan runtime has to be preloaded into nbdkit
# (LD_PRELOAD) and leak detection turned off (nbdkit itself leaks at exit).  The
# helpers below do that when QED_SANITIZE=1 (set by tests/e2e/meson.build) or when
# the plugin links libasan, keep the preload away from the --run command's
# children (nbdinfo, qemu-img, ...), and fail the test if nbdkit's stderr carries a
# sanitizer report.

set -euo pipefail

if [[ $# -lt 1 || ! -f $1 ]]; then
  echo "usage: $0 PATH/TO/nbdkit-qed-plugin.so" >&2
  exit 1
fi
plugin=$(realpath -- "$1")
shift
# The nbdkit plugin below the filter when serve_ro and refuses serve through the
# filter (file, memory or nbd), or nothing when they serve through the plugin (see
# "Through the filter" at the end).
under_filter=${QED_UNDER_FILTER:-}
filter=
if [[ -n ${QED_FILTER:-} ]]; then
  filter=$(realpath -- "$QED_FILTER")
fi
if [[ -n $under_filter && ! -f $filter ]]; then
  echo "$0: QED_UNDER_FILTER=$under_filter needs QED_FILTER (the built nbdkit-qed-filter.so)" >&2
  exit 1
fi
# through_filter: whether serve_ro and refuses serve through the filter.
through_filter() { [[ -n $under_filter ]]; }
# The folder of the test scripts (helpers such as write_random.py live there).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KiB=1024 MiB=$((1024 * 1024))

# python3 on PATH may be a pyenv interpreter without the libnbd bindings.
export PATH="/usr/bin:/bin:$PATH"
export LIBNBD_DEBUG=${LIBNBD_DEBUG:-0}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qed-e2e.XXXXXX")
_ram_dirs=()
# _cleanup [STATUS]: the EXIT trap; exits with STATUS (default: the status the
# script was exiting with).  Traps that do more first pass the status on: under
# set -e, anything of theirs that fails would end the trap before the cleanup.
_cleanup() {
  local rc=${1:-$?}
  _stop_all_bg
  cd /
  rm -rf -- "$tmp" "${_ram_dirs[@]}"
  exit "$rc"
}
trap _cleanup EXIT
trap 'exit 130' INT TERM
cd "$tmp"

# requires CMD ARGS...: skip the test (77) unless the command succeeds.
# random_run NAME REQUESTS: the seed of a randomized test (random unless
# QED_WRITE_SEED is set) in $seed, its requests per image (QED_WRITE_REQUESTS,
# or REQUESTS) in $nreq, and a line that says how to run it again.
random_run() {
  seed=${QED_WRITE_SEED:-$(( (RANDOM << 15 | RANDOM) % 1000000 ))}
  nreq=${QED_WRITE_REQUESTS:-$2}
  echo "$1: seed $seed (rerun with QED_WRITE_SEED=$seed), $nreq requests per image"
}

requires() {
  if ! "$@" >/dev/null 2>&1; then
    echo "$0: SKIP: requirement not met: $*" >&2
    exit 77
  fi
}

fail() {
  echo "$0: FAIL: $*" >&2
  exit 1
}

requires nbdkit --version
requires qemu-img --version
requires qemu-io --version
requires nbdinfo --version
requires nbdcopy --version
# Some qemu builds (e.g. RHEL) compile QED out.
requires qemu-img create -f qed "$tmp/probe.qed" 1M
rm -f "$tmp/probe.qed"

# Sanitizer set-up. ldd's output is captured first: under pipefail, a reader
# that stops early (grep -q, awk's exit) kills the writer with SIGPIPE and fails
# the whole pipeline.
_asan_lib=
_plugin_ldd=$(ldd "$plugin" 2>/dev/null || true)
if [[ ${QED_SANITIZE:-0} == 1 ]] || grep -q 'libasan\.so' <<<"$_plugin_ldd"; then
  _asan_lib=$(awk '/libasan\.so/ { print $3; exit }' <<<"$_plugin_ldd")
  if [[ -z $_asan_lib || ! -f $_asan_lib ]]; then
    _asan_lib=$(${CXX:-g++} -print-file-name=libasan.so 2>/dev/null || true)
  fi
  if [[ -z $_asan_lib || ! -f $_asan_lib ]]; then
    echo "$0: cannot find libasan for the sanitized plugin" >&2
    exit 1
  fi
fi

# Known problem with the preload (not specific to this plugin; nbdkit's own file
# plugin shows it): when nbdkit 1.32 exits after printing an error that uses %m
# (e.g. "realpath: ...: No such file or directory"), it can hang forever in
# libp11-kit's destructor (freelocale on a glibc rwlock left unbalanced).  So under
# the sanitizer nbdkit runs under timeout(1) (QED_NBDKIT_TIMEOUT seconds), and
# callers expecting a startup failure treat "error printed, then timed out" as a
# refusal (see refuses).
sanitized() { [[ -n $_asan_lib ]]; }

# Where the last qed_nbdkit call put nbdkit's stderr (also copied to our stderr).
nbdkit_err="$tmp/nbdkit.stderr"

# qed_nbdkit ARGS...: run nbdkit ARGS... (with the sanitizer runtime when needed).
# Returns nbdkit's exit status; nbdkit's stderr is saved in $nbdkit_err (in
# $QED_NBDKIT_ERR when set).  A sanitizer report fails the whole test, whatever the
# exit status.
qed_nbdkit() {
  local args=() a prev=
  for a in "$@"; do
    if [[ $prev == --run && -n $_asan_lib ]]; then
      a="unset LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS; $a"
    fi
    args+=("$a")
    prev=$a
  done
  local rc=0 err=${QED_NBDKIT_ERR:-$nbdkit_err}
  if [[ -n $_asan_lib ]]; then
    LD_PRELOAD="$_asan_lib${LD_PRELOAD:+:$LD_PRELOAD}" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=97${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}" \
      timeout -k 5 "${QED_NBDKIT_TIMEOUT:-280}" nbdkit "${args[@]}" 2>"$err" || rc=$?
  else
    nbdkit "${args[@]}" 2>"$err" || rc=$?
  fi
  cat "$err" >&2
  if grep -Eq 'ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:|SUMMARY: (Address|Undefined)' "$err"; then
    echo "$0: FAIL: sanitizer report from nbdkit $*" >&2
    exit 1
  fi
  return "$rc"
}

# serve_ro IMAGE CMD [PLUGIN-ARGS...]: serve IMAGE read-only through the plugin on a
# private Unix socket and run the shell command CMD in captive mode ($uri is a shell
# variable inside CMD: quote it).  Returns CMD's exit status (or nbdkit's on startup
# failure).  A private socket under $tmp is used instead of "-U -" because nbdkit
# leaves /tmp/nbdkitXXXXXX behind when startup fails.  Through the filter when
# $under_filter says so (see below).
serve_ro() {
  local image=$1 cmd=$2
  shift 2
  rm -f "$tmp/sock"
  if through_filter; then
    serve_filter "$image" "$cmd" "$@"
    return
  fi
  qed_nbdkit -r -U "$tmp/sock" "$plugin" file="$image" "$@" --run "$cmd"
}

# serve_rw IMAGE CMD [PLUGIN-ARGS...]: like serve_ro, writable.
serve_rw() {
  local image=$1 cmd=$2
  shift 2
  rm -f "$tmp/sock"
  qed_nbdkit -U "$tmp/sock" "$plugin" file="$image" "$@" --run "$cmd"
}

# refuses [--rw] [PLUGIN-ARGS...]: nbdkit serving the plugin read-only (read-write
# with --rw) with these arguments must refuse to start: exit status 1..125 (not a
# signal), and the --run command must not run.  Sets $refuse_rc.  Tolerates the
# ASan-preload exit hang (see above).  Through the filter (file=IMAGE among the
# arguments), the refusal is that no client gets the export: the filter keeps
# nbdkit up and refuses each connection.
refuses() {
  local mode=(-r)
  if [[ ${1:-} == --rw ]]; then
    mode=()
    shift
  fi
  refuse_rc=0
  rm -f "$tmp/sock" "$tmp/ran"
  if through_filter; then
    _filter_refuses "$@"
  else
    QED_NBDKIT_TIMEOUT=8 qed_nbdkit "${mode[@]}" -U "$tmp/sock" "$plugin" "$@" --run "touch '$tmp/ran'" ||
      refuse_rc=$?
  fi
  if sanitized && [[ $refuse_rc -eq 124 || $refuse_rc -eq 137 ]] && grep -q 'error:' "$nbdkit_err"; then
    echo "(nbdkit hung at exit after reporting the error: known ASan preload issue)"
    refuse_rc=1
  fi
  if [[ -e $tmp/ran ]]; then
    echo "nbdkit started and served: $*" >&2
    return 1
  fi
  if [[ $refuse_rc -eq 0 || $refuse_rc -gt 125 ]]; then
    echo "nbdkit exit status $refuse_rc: $*" >&2
    return 1
  fi
  if grep -Eq 'Segmentation fault|Aborted|terminate called|killed by signal' "$nbdkit_err"; then
    echo "nbdkit crashed: $*" >&2
    return 1
  fi
  return 0
}

# man_th_field FIELD PAGE.1: field FIELD of the page's .TH line (1 the name,
# 2 the section, 3 the date, 4 the release, 5 the centre), unquoted: pod2man
# from podlators 4 quotes every field, podlators 5 only those that need it.
man_th_field() {
  perl -ne 'next unless /^\.TH\s/; my @f;
    push @f, defined $1 ? $1 =~ s/""/"/gr : $2 while /\G\s*(?:"((?:[^"]|"")*)"|(\S+))/gc;
    print $f['"$1"'], "\n"; exit' "$2"
}

# qio_ok IMAGE CMD...: qemu-io commands on IMAGE that must all succeed (qemu-io
# reports some failures only in its output).
qio_ok() {
  local image=$1 c args=() out
  shift
  for c in "$@"; do args+=(-c "$c"); done
  out=$(qemu-io -f qed "${args[@]}" "$image" 2>&1) || { echo "$out" >&2; fail "qemu-io on $image: $*"; }
  if grep -Eq 'failed|Pattern verification|error' <<<"$out"; then
    echo "$out" >&2
    fail "qemu-io on $image: $*"
  fi
}

# ---- Servers and other processes in the background --------------------------------
# For scenarios whose steps (stopping and starting other servers, looking at
# nbdkit's memory, holding locks) run in this shell between clients. Each
# process has a NAME; whatever is still running when the test exits is killed.
#
# serve_bg NAME [NBDKIT-OPTIONS...] [-- PLUGIN-ARGS...]: nbdkit serving the plugin
#   (with the sanitizer runtime when needed) on $tmp/NAME.sock, its URI
#   $(bg_uri NAME), its stderr in $(bg_err NAME), its pid $(bg_pid NAME). Returns
#   once it serves: nbdkit writes its pid file after binding its socket, which is
#   after .get_ready, where the image is opened and locked; no client has
#   connected yet. Fails the test if nbdkit exits instead.
# hold_bg NAME CMD...: any other command (qemu-io holding an image), its output
#   in $tmp/NAME.out.
# stop_bg NAME [SIGNAL]: stops NAME (SIGTERM by default) and waits for it. For a
#   server stopped with SIGTERM (nbdkit then waits for its clients: they must be
#   gone), returns nbdkit's exit status; a server that does not exit within 30 s
#   fails the test, except under the sanitizer, where one that hangs for 10 s is
#   the known ASan preload issue (see above): killed, and not counted. Otherwise
#   returns 0. A sanitizer report in a server's stderr fails the test.
#   (Plain nbdkit servers for backing files: start_base in nbd-functions.sh,
#   stopped with stop_bg too.)
declare -A _bg_pid=() _bg_job=() _bg_server=()
bg_uri() { echo "nbd+unix:///?socket=$tmp/$1.sock"; }
bg_err() { echo "$tmp/$1.err"; }
bg_pid() { echo "${_bg_pid[$1]}"; }
_sanitizer_report='ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:'

serve_bg() {
  local name=$1 opts=() i
  shift
  while [[ $# -gt 0 && $1 != -- ]]; do opts+=("$1"); shift; done
  [[ ${1:-} == -- ]] && shift
  [[ -z ${_bg_pid[$name]:-} ]] || fail "serve_bg: $name is already running"
  rm -f "$tmp/$name.sock" "$tmp/$name.pid" "$tmp/$name.err"
  QED_NBDKIT_ERR=$tmp/$name.err qed_nbdkit -f "${opts[@]}" -U "$tmp/$name.sock" \
    -P "$tmp/$name.pid" "$plugin" "$@" &
  _bg_job[$name]=$!
  _bg_server[$name]=1
  for ((i = 0; i < 600; i++)); do
    if [[ -s $tmp/$name.pid && -S $tmp/$name.sock ]]; then
      _bg_pid[$name]=$(cat "$tmp/$name.pid")
      return 0
    fi
    kill -0 "${_bg_job[$name]}" 2>/dev/null || break
    sleep 0.05
  done
  cat "$tmp/$name.err" >&2
  fail "nbdkit $name (${opts[*]} $*) did not start"
}

hold_bg() {
  local name=$1
  shift
  "$@" >"$tmp/$name.out" 2>&1 &
  _bg_pid[$name]=$! _bg_job[$name]=$!
}

# _bg_started NAME PID: register a process started elsewhere (start_base).
_bg_started() { _bg_pid[$1]=$2 _bg_job[$1]=$2; }
# bg_forget NAME: NAME was stopped by something else (a test's driver): nothing
# is left to stop or kill at exit.
bg_forget() { unset "_bg_pid[$1]" "_bg_job[$1]" "_bg_server[$1]"; }

stop_bg() {
  local name=$1 sig=${2:-TERM} pid=${_bg_pid[$1]:-} job=${_bg_job[$1]:-} server=${_bg_server[$1]:-}
  local i rc=0 wait=600 hung=false
  [[ -n $pid ]] || return 0
  unset "_bg_pid[$name]" "_bg_job[$name]" "_bg_server[$name]"
  kill "-$sig" "$pid" 2>/dev/null || true
  ! sanitized || [[ -z $server ]] || wait=200
  for ((i = 0; i < wait; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$pid" 2>/dev/null; then
    hung=true
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$job" 2>/dev/null || rc=$?
  if [[ -n $server ]] && grep -Eq "$_sanitizer_report" "$tmp/$name.err"; then
    cat "$tmp/$name.err" >&2
    fail "sanitizer report from nbdkit $name"
  fi
  [[ -n $server && $sig == TERM ]] || return 0
  if $hung; then
    sanitized || fail "nbdkit $name did not exit within 30 s of SIGTERM"
    echo "(nbdkit $name hung at exit: known ASan preload issue)"
    return 0
  fi
  return "$rc"
}

_stop_all_bg() {
  local name
  for name in "${!_bg_pid[@]}"; do
    kill -KILL "${_bg_pid[$name]}" 2>/dev/null || true
  done
}

# locked_bytes FILE: which of QEMU's lock bytes (100-103, 200-203) some open file
# holds on FILE, tested from a new open file description as QEMU tests them:
# "100 101 103 201 203" for a writer, "100 201 203" for a reader, "" for nobody.
locked_bytes() {
  /usr/bin/python3 - "$1" <<'PY'
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
held = []
for off in [100, 101, 102, 103, 200, 201, 202, 203]:
    # struct flock: l_type, l_whence, l_start, l_len, l_pid
    fl = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, off, 1, 0)
    if struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_OFD_GETLK, fl))[0] != fcntl.F_UNLCK:
        held.append(str(off))
print(" ".join(held))
PY
}

# wait_locked FILE BYTES: until locked_bytes FILE says BYTES (10 s at most).
wait_locked() {
  local i
  for ((i = 0; i < 200; i++)); do
    [[ $(locked_bytes "$1") == "$2" ]] && return 0
    sleep 0.05
  done
  fail "$1: locked bytes are '$(locked_bytes "$1")', not '$2'"
}

# qemu_locked_out CMD...: CMD, a QEMU program opening an image, must be refused for
# a lock: it fails and says "Failed to get ... lock", as QEMU does.
qemu_locked_out() {
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  if [[ $rc -eq 0 ]] || ! grep -q 'Failed to get .*lock' <<<"$out"; then
    echo "$out" >&2
    fail "not refused for a lock (exit status $rc): $*"
  fi
}

# lock_refusal_ok IMAGE WHAT: the last nbdkit's refusal ($nbdkit_err) names IMAGE and
# WHAT it failed to get, says another process uses it and how to find out, and names
# the key that turns locking off.
lock_refusal_ok() {
  local image=$1 what=$2 m
  for m in "$image: $what" "another process is using the image" "\"fuser -v $image\" shows which" \
      "locking=off opens it anyway"; do
    grep -qF -- "$m" "$nbdkit_err" || fail "the refusal does not say: $m"
  done
}

# qemu_raw IMAGE OUT: qemu's reference decoding of a QED image (with its backing chain).
qemu_raw() {
  qemu-img convert -f qed -O raw "$1" "$2"
}

# same_raw A B: two raw files have the same content.  cmp for small files; large
# sparse files go through qemu-img compare, which skips holes (cmp would read GiBs
# of zeroes).
same_raw() {
  local size
  size=$(stat -c %s "$1")
  if (( size <= 256 * 1024 * 1024 )); then
    cmp "$1" "$2"
  else
    qemu-img compare -q -f raw -F raw "$1" "$2" &&
      [[ $size -eq $(stat -c %s "$2") ]]
  fi
}

# check_same_as_qemu IMAGE [PLUGIN-ARGS...]: the plugin's export of IMAGE must equal
# qemu's decoding (qemu-img convert -O raw) byte for byte, copied with nbdcopy both
# with extents (holes skipped) and, for images up to 256 MiB, without them (every
# byte read through .pread; skipped when QED_QUICK=1); and qemu-img compare of the
# NBD export against IMAGE opened by qemu must succeed.
check_same_as_qemu() {
  local image=$1
  shift
  local base ref out vsize
  base=$(basename "$image" .qed)
  ref="$tmp/$base.ref.raw" out="$tmp/$base.nbd.raw"
  rm -f "$ref" "$out"
  qemu_raw "$image" "$ref"
  vsize=$(stat -c %s "$ref")
  serve_ro "$image" "nbdcopy \"\$uri\" '$out'" "$@" ||
    fail "$image: nbdcopy through the plugin failed"
  same_raw "$ref" "$out" ||
    fail "$image: plugin output (nbdcopy) differs from qemu-img convert -O raw"
  if (( vsize <= 256 * 1024 * 1024 )) && [[ ${QED_QUICK:-0} != 1 ]]; then
    rm -f "$out"
    serve_ro "$image" "nbdcopy --no-extents \"\$uri\" '$out'" "$@" ||
      fail "$image: nbdcopy --no-extents through the plugin failed"
    cmp "$ref" "$out" ||
      fail "$image: plugin output (nbdcopy --no-extents) differs from qemu-img convert -O raw"
  fi
  serve_ro "$image" "qemu-img compare -q -f raw -F qed \"\$uri\" '$image'" "$@" ||
    fail "$image: qemu-img compare of the plugin export against qemu failed"
  rm -f "$ref" "$out"
}

# u64 / u32 field pokes (little-endian) in a file: poke FILE OFFSET SIZE VALUE
poke() {
  /usr/bin/python3 - "$@" <<'PY'
import sys
path, off, size, val = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3]), int(sys.argv[4], 0)
with open(path, "r+b") as f:
    f.seek(off)
    f.write(val.to_bytes(size, "little"))
PY
}

# peek FILE OFFSET SIZE: print the little-endian integer at OFFSET
peek() {
  /usr/bin/python3 - "$@" <<'PY'
import sys
path, off, size = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3])
with open(path, "rb") as f:
    f.seek(off)
    print(int.from_bytes(f.read(size), "little"))
PY
}

# ram_dir VAR: sets VAR to a new private directory on tmpfs (/dev/shm) when there
# is one, else under $tmp; removed on exit like $tmp.  For images that see many
# flushes in tests that do not measure the disk: syncs cost nothing there.  Keep
# what is written there small: it is memory.
ram_dir() {
  local -n _dir=$1
  _dir=$(mktemp -d /dev/shm/qed-e2e.XXXXXX 2>/dev/null) || _dir=$(mktemp -d "$tmp/ram.XXXXXX")
  _ram_dirs+=("$_dir")
}

# Peak memory of a server.  Under --run nbdkit serves from a child process, so the
# command's shell is not its child: serve with -P "$peak_pidfile" among the
# arguments and CMD wrapped by peak_rss_run; afterwards peak_rss_kib prints the
# server's peak resident memory (VmHWM, KiB), read just before it was stopped.
peak_pidfile="$tmp/nbdkit.pid"
peak_rss_run() {
  printf '%s && awk '"'"'/^VmHWM:/ { print $2 }'"'"' "/proc/$(cat %q)/status" >%q' \
    "$1" "$peak_pidfile" "$tmp/peak_rss"
}
peak_rss_kib() {
  [[ -s $tmp/peak_rss ]] || fail "no peak memory was recorded"
  cat "$tmp/peak_rss"
  rm -f "$tmp/peak_rss" "$peak_pidfile"
}

# ---- Through the filter ---------------------------------------------------------
# QED_UNDER_FILTER (set by tests/e2e/meson.build) names the nbdkit plugin below the
# filter when serve_ro and refuses serve through it; QED_FILTER is then the path of
# the built nbdkit-qed-filter.so:
#   (unset) nbdkit -r PLUGIN file=IMAGE: our plugin, no filter      (the default)
#   file    nbdkit --filter=FILTER file IMAGE; and every image state served is
#           first compared with the plugin's -r export of it, byte for byte and
#           extent for extent (compare_with_plugin)
#   memory  nbdkit --filter=FILTER data data=<IMAGE               (a copy in RAM)
#   nbd     nbdkit --filter=FILTER nbd socket=S, where S is another nbdkit serving
#           a memory disk into which nbdcopy copied IMAGE
# Plugin arguments become the filter's keys (cache-size= -> qed-cache-size=), and an
# image with a backing file gets qed-backing= naming the file its header names,
# resolved as the plugin would (the filter cannot resolve it itself).
# (under_filter and filter are set at the top, before the cd into $tmp.)

# How the filter's messages name the image it reads.
filter_image_name="the plugin's export"

# _filter_args IMAGE [PLUGIN-ARGS...]: sets _fargs to the filter's keys.
_filter_args() {
  local image=$1 a backing
  shift
  _fargs=()
  for a in "$@"; do
    case $a in
      cache-size=*|check=*) _fargs+=("qed-$a") ;;
      *) fail "no filter key for plugin argument $a" ;;
    esac
  done
  if [[ -f $image ]] && backing=$(_backing_path "$image") && [[ -n $backing ]]; then
    _fargs+=("qed-backing=$backing")
  fi
}

# _backing_path IMAGE: the backing file IMAGE's header names, resolved against the
# image's folder as the plugin does; nothing if none (or not a QED header).
_backing_path() {
  /usr/bin/python3 - "$1" <<'PY'
import os, struct, sys
p = sys.argv[1]
with open(p, "rb") as f:
    h = f.read(64)
    if len(h) < 64 or h[:4] != b"QED\0":
        sys.exit(0)
    features, = struct.unpack_from("<Q", h, 16)
    off, size = struct.unpack_from("<II", h, 56)
    if not features & 1 or size == 0 or size > 4096:
        sys.exit(0)
    f.seek(off)
    name = f.read(size).decode("utf-8", "surrogateescape")
if "\0" in name:
    sys.exit(0)
print(name if name.startswith("/") else os.path.join(os.path.dirname(os.path.abspath(p)), name))
PY
}

# _filter_plugin IMAGE: sets _below to the plugin below the filter and its arguments.
_filter_plugin() {
  local image
  image=$(realpath -m -- "$1")
  case $under_filter in
    file) _below=(file "$image") ;;
    memory) _below=(data "data=<$image") ;;
    nbd) _below=(nbd "socket=$tmp/below.sock") ;;
    *) fail "unknown QED_UNDER_FILTER=$under_filter" ;;
  esac
}

# _start_below IMAGE / _stop_below: for the nbd front end, another nbdkit holding a
# copy of IMAGE in a memory disk, on $tmp/below.sock.
_below_pid=
_start_below() {
  [[ $under_filter == nbd ]] || return 0
  rm -f "$tmp/below.sock" "$tmp/below.pid"
  nbdkit -f --exit-with-parent -U "$tmp/below.sock" -P "$tmp/below.pid" \
    memory "$(stat -c %s "$1")" &
  _below_pid=$!
  local i
  for ((i = 0; i < 300; i++)); do
    [[ -s $tmp/below.pid ]] && break
    sleep 0.02
  done
  [[ -s $tmp/below.pid ]] || fail "the nbd server below did not start"
  nbdcopy "$1" "nbd+unix:///?socket=$tmp/below.sock" || fail "nbdcopy of $1 into the server below"
}
_stop_below() {
  [[ -n $_below_pid ]] || return 0
  kill "$_below_pid" 2>/dev/null || true
  wait "$_below_pid" 2>/dev/null || true
  _below_pid=
}

# serve_filter IMAGE CMD [PLUGIN-ARGS...]: serve_ro through the filter.
serve_filter() {
  local image=$1 cmd=$2 rc=0
  shift 2
  _filter_args "$image" "$@"
  [[ $under_filter == file ]] && compare_with_plugin "$image" "$@"
  _filter_plugin "$image"
  _start_below "$image"
  rm -f "$tmp/sock"
  qed_nbdkit -U "$tmp/sock" --filter="$filter" "${_below[@]}" "${_fargs[@]}" --run "$cmd" || rc=$?
  _stop_below
  return "$rc"
}

# _filter_refuses [PLUGIN-ARGS...]: refuses, through the filter: no client may get
# the export.
_filter_refuses() {
  local a image= rest=()
  for a in "$@"; do
    case $a in
      file=*) image=${a#file=} ;;
      *) rest+=("$a") ;;
    esac
  done
  [[ -n $image ]] || fail "refuses: no file= argument"
  [[ $under_filter != nbd ]] || fail "refuses: not through the filter over the nbd plugin"
  _filter_args "$image" "${rest[@]}"
  _filter_plugin "$image"
  QED_NBDKIT_TIMEOUT=8 qed_nbdkit -U "$tmp/sock" --filter="$filter" "${_below[@]}" "${_fargs[@]}" \
    --run "nbdinfo --size \"\$uri\" >/dev/null && touch '$tmp/ran'" || refuse_rc=$?
}

# compare_with_plugin IMAGE [PLUGIN-ARGS...]: the filter over the file plugin must
# serve exactly what the plugin serves with -r: the same bytes (nbdcopy) and the
# same extents (nbdinfo --map, unmerged); an image the plugin cannot read whole (a
# corrupt entry) the filter cannot read whole either.  Once per image state and
# arguments.
declare -A _compared=()
compare_with_plugin() {
  local image=$1 key p f prc=0 frc=0
  shift
  key="$(realpath -m -- "$image") $(stat -c '%s %y %i' "$image" 2>/dev/null) $*"
  [[ -z ${_compared[$key]:-} ]] || return 0
  _compared[$key]=1
  p="$tmp/cmp.plugin" f="$tmp/cmp.filter"
  rm -f "$p.raw" "$f.raw" "$p.map" "$f.map" "$tmp/sock"
  qed_nbdkit -r -U "$tmp/sock" "$plugin" file="$image" "$@" \
    --run "nbdcopy \"\$uri\" '$p.raw' && nbdinfo --map \"\$uri\" >'$p.map'" || prc=$?
  _filter_args "$image" "$@"
  rm -f "$tmp/sock"
  qed_nbdkit -U "$tmp/sock" --filter="$filter" file "$(realpath -- "$image")" "${_fargs[@]}" \
    --run "nbdcopy \"\$uri\" '$f.raw' && nbdinfo --map \"\$uri\" >'$f.map'" || frc=$?
  if (( prc != 0 )); then
    (( frc != 0 )) || fail "$image: the filter read all of an image the plugin cannot read"
    echo "(the filter, like the plugin, cannot read all of $image $*)" >&2
  else
    (( frc == 0 )) || fail "$image: the filter did not serve what the plugin serves"
    same_raw "$p.raw" "$f.raw" || fail "$image: the filter's bytes differ from the plugin's"
    diff -u "$p.map" "$f.map" ||
      fail "$image: the filter's extents differ from the plugin's (- plugin, + filter)"
    echo "(the filter serves what the plugin serves: $image $*)" >&2
  fi
  rm -f "$p.raw" "$f.raw" "$p.map" "$f.map"
}

# wait_line FILE REGEX [SECONDS]: until a line of FILE matches REGEX (grep -E);
# fails the test after SECONDS (default 120), showing FILE.
wait_line() {
  local file=$1 re=$2 secs=${3:-120} i
  for ((i = 0; i < secs * 10; i++)); do
    if [[ -f $file ]] && grep -Eq -- "$re" "$file"; then
      return 0
    fi
    sleep 0.1
  done
  cat "$file" >&2 || true
  fail "no line matching '$re' in $file within $secs s"
}
