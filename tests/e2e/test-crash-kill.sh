#!/usr/bin/env bash
# Power-loss style test end to end: nbdkit is killed with SIGKILL while four
# connections write and flush. Started again on the image, the plugin must
# repair it (NEED_CHECK is set) and serve every flushed byte; qemu-img check
# must then find no corruption (leaks are allowed: clusters never move, so a
# leak inside the file stays one, punched out). Three rounds on one image, so
# later rounds start from a repaired image.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/functions.sh" "$@"
requires /usr/bin/python3 -c 'import nbd'

# start_bg IMAGE: nbdkit in the background on $tmp/sock; sets $pid.
start_bg() {
  rm -f "$tmp/sock"
  if sanitized; then
    LD_PRELOAD="$_asan_lib" ASAN_OPTIONS="detect_leaks=0:exitcode=97" \
      nbdkit -f -U "$tmp/sock" "$plugin" file="$1" 2>>"$tmp/bg.err" &
  else
    nbdkit -f -U "$tmp/sock" "$plugin" file="$1" 2>>"$tmp/bg.err" &
  fi
  pid=$!
  for _ in $(seq 100); do [[ -S $tmp/sock ]] && return 0; sleep 0.1; done
  fail "nbdkit did not start"
}

img=$tmp/kill.qed
qemu-img create -f qed -o cluster_size=65536 "$img" 64M >/dev/null
uri="nbd+unix:///?socket=$tmp/sock"

for round in 1 2 3; do
  start_bg "$img"
  /usr/bin/python3 "$here/crash_kill.py" write "$uri" "$tmp/model.json" 20 &
  wpid=$!
  sleep 2
  kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
  wait "$wpid" || fail "round $round: writer failed"
  features=$(peek "$img" 16 8)
  echo "round $round: features after the kill: $features"
  serve_ro "$img" "true" >/dev/null 2>&1 || true   # read-only: must not repair
  [[ $(peek "$img" 16 8) == "$features" ]] || fail "a read-only open wrote to the image"
  rm -f "$tmp/sock"
  qed_nbdkit -U "$tmp/sock" "$plugin" file="$img" \
    --run "/usr/bin/python3 '$here/crash_kill.py' verify \"\$uri\" '$tmp/model.json' '$tmp/baseline.json'" ||
    fail "round $round: flushed data lost"
  (( ($(peek "$img" 16 8) & 2) == 0 )) || fail "round $round: NEED_CHECK left set after a clean run"
  rc=0
  qemu-img check --output=json "$img" >"$tmp/check.json" || rc=$?
  cat "$tmp/check.json"
  [[ $rc == 0 || $rc == 3 ]] || fail "round $round: qemu-img check exit $rc"
  /usr/bin/python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))
sys.exit(1 if c.get("corruptions", 0) or c.get("check-errors", 0) else 0)' "$tmp/check.json" ||
    fail "round $round: qemu-img check found corruption"
done
echo "test-crash-kill: 3 rounds of kill -9 during writes: flushed data intact, image consistent"
