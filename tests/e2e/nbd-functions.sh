# The preamble of the tests of backing files on NBD servers, and their helpers.
# Source it instead of functions.sh (it sources that, with the same arguments):
#
#   source "$(dirname "$0")/nbd-functions.sh" "$@"
#
#   start_base NAME NBDKIT-ARGS...  serve NBDKIT-ARGS (a plain nbdkit: file, memory
#                                   ... plugin) on $tmp/NAME.sock in the background;
#                                   its URI is $(bg_uri NAME)
#   start_tcp_base NAME NBDKIT-ARGS... the same on a free TCP port of 127.0.0.1
#   base_port NAME                  that port
#   stop_bg NAME [SIGNAL]           stop it (functions.sh; TERM by default: nbdkit
#                                   then waits for its clients: stop the plugin first)
#   $net                            allow-backing=network, the key these tests serve with
#   status_counts LOG               block status requests and extents sent, from
#                                   the logfile of a base served with --filter=log
#
# Every base still running when the test exits is killed.  The bases are plain
# nbdkit processes: no sanitizer preload, whatever the build.

source "$(dirname "${BASH_SOURCE[0]}")/functions.sh" "$@"

requires nbdkit file --version
requires nbdkit memory --version

net=allow-backing=network

# _start_base NAME URI NBDKIT-ARGS...: nbdkit NBDKIT-ARGS in the background, its
# stderr appended to $tmp/NAME.log, registered as NAME (stop_bg); returns once a
# client at URI gets an answer (nbdkit binds, then listens).
_start_base() {
  local name=$1 uri=$2 i
  shift 2
  nbdkit -f --exit-with-parent "$@" 2>>"$tmp/$name.log" &
  _bg_started "$name" $!
  for ((i = 0; i < 200; i++)); do
    if nbdinfo --size "$uri" >/dev/null 2>&1; then
      return 0
    fi
    kill -0 "$(bg_pid "$name")" 2>/dev/null || break
    sleep 0.05
  done
  cat "$tmp/$name.log" >&2
  fail "base server $name (nbdkit $*) did not start"
}

start_base() {
  local name=$1
  shift
  rm -f "$tmp/$name.sock"
  _start_base "$name" "$(bg_uri "$name")" -U "$tmp/$name.sock" "$@"
}

declare -A _base_port=()
base_port() { echo "${_base_port[$1]}"; }

start_tcp_base() {
  local name=$1 port
  shift
  port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  _base_port[$name]=$port
  _start_base "$name" "nbd://127.0.0.1:$port" -i 127.0.0.1 -p "$port" "$@"
}

# sparse_base FILE SIZE "OFFSET-MiB COUNT-MiB"...: a sparse file of SIZE bytes with
# random data in the given MiB ranges and holes elsewhere.
sparse_base() {
  local file=$1 size=$2 r range
  shift 2
  rm -f "$file"
  truncate -s "$size" "$file"
  for r in "$@"; do
    read -r -a range <<<"$r"
    dd if=/dev/urandom of="$file" bs=1M seek="${range[0]}" count="${range[1]}" conv=notrunc status=none
  done
}

# random_base FILE: the base of the randomized NBD tests: 24 MiB + 1024 bytes
# (a tail shorter than a cluster), random data with holes at MiB 6-9 and 16-20;
# its size in $base_size.
random_base() {
  base_size=$((24 * MiB + 1024))
  sparse_base "$1" "$base_size" "0 6" "9 7" "20 4"
  dd if=/dev/urandom of="$1" bs=1024 seek=$((24 * 1024)) count=1 conv=notrunc status=none
}

# status_counts LOG: "REQUESTS EXTENTS": the block status requests a base served with
# --filter=log logfile=LOG received, and the extents it sent in its replies (each
# logged as offset, length and "type").
status_counts() {
  awk '/ Extents id=/ { requests++ }
       / \.\.\.Extents id=/ { extents += gsub(/"/, "") / 2 }
       END { print requests + 0, extents + 0 }' "$1"
}

# read_bytes LOG: the bytes a base served with --filter=log logfile=LOG was asked
# to read.
read_bytes() {
  local n=0 c
  while read -r c; do
    n=$((n + c))
  done < <(grep -ao ' Read id=[0-9]* offset=0x[0-9a-f]* count=0x[0-9a-f]*' "$1" | sed 's/.*count=//')
  echo "$n"
}
