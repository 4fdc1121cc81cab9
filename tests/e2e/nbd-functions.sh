# Helpers for the tests of backing files on NBD servers.  Source after
# functions.sh:
#
#   start_base NAME NBDKIT-ARGS...  serve NBDKIT-ARGS (a plain nbdkit: file, memory
#                                   ... plugin) on $tmp/NAME.sock in the background
#   base_uri NAME                   its URI, nbd+unix:///?socket=$tmp/NAME.sock
#   start_tcp_base NAME NBDKIT-ARGS... the same on a free TCP port of 127.0.0.1
#   base_port NAME                  that port
#   stop_base NAME [SIGNAL]         stop it (TERM by default; nbdkit then waits for
#                                   its clients: stop the plugin first)
#   status_counts LOG               block status requests and extents sent, from
#                                   the logfile of a base served with --filter=log
#
# Every base still running when the test exits is killed.  The bases are plain
# nbdkit processes: no sanitizer preload, whatever the build.

requires nbdkit file --version
requires nbdkit memory --version

declare -A _base_pid=()

base_uri() { echo "nbd+unix:///?socket=$tmp/$1.sock"; }

start_base() {
  local name=$1 i
  shift
  rm -f "$tmp/$name.sock"
  nbdkit -f --exit-with-parent -U "$tmp/$name.sock" "$@" 2>>"$tmp/$name.log" &
  _base_pid[$name]=$!
  # nbdkit binds, then listens: wait until a client gets an answer.
  for ((i = 0; i < 200; i++)); do
    if nbdinfo --size "$(base_uri "$name")" >/dev/null 2>&1; then
      return 0
    fi
    kill -0 "${_base_pid[$name]}" 2>/dev/null || break
    sleep 0.05
  done
  cat "$tmp/$name.log" >&2
  fail "base server $name (nbdkit $*) did not start"
}

declare -A _base_port=()
base_port() { echo "${_base_port[$1]}"; }

start_tcp_base() {
  local name=$1 port i
  shift
  port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  _base_port[$name]=$port
  nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$port" "$@" 2>>"$tmp/$name.log" &
  _base_pid[$name]=$!
  for ((i = 0; i < 200; i++)); do
    if nbdinfo --size "nbd://127.0.0.1:$port" >/dev/null 2>&1; then
      return 0
    fi
    kill -0 "${_base_pid[$name]}" 2>/dev/null || break
    sleep 0.05
  done
  cat "$tmp/$name.log" >&2
  fail "base server $name (nbdkit -p $port $*) did not start"
}

stop_base() {
  local name=$1 sig=${2:-TERM} pid=${_base_pid[$1]:-} i
  [[ -n $pid ]] || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "_base_pid[$name]"
}

_stop_bases() {
  local name
  for name in "${!_base_pid[@]}"; do
    kill -KILL "${_base_pid[$name]}" 2>/dev/null || true
  done
}
trap '_nbd_rc=$?; _stop_bases; _cleanup "$_nbd_rc"' EXIT

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
