#!/usr/bin/env bash
# qed-stream (tools/): a stream to completion without serving, over an NBD base.
# SIGTERM mid-stream stops it (exit 3) keeping what it copied; run again, it
# resumes (fetching less than the base's data again) and detaches: qemu-img info
# shows no backing file, check is clean, compare matches the base.  Usage errors
# exit 2; a missing image exits 1 naming it.
#   test-qed-stream.sh PLUGIN QED-STREAM
tool=$(realpath -- "$2")
source "$(dirname "$0")/nbd-functions.sh" "$1"

sparse_base base.raw $((24 * MiB)) "0 6" "9 7" "20 4"
start_base base -r --filter=log file base.raw logfile="$tmp/base.log"
qemu-img create -q -f qed -b "$(bg_uri base)" -F raw top.qed $((24 * MiB))

"$tool" top.qed allow-backing=network stream-rate=4M 2>first.err &
pid=$!
sleep 1.5
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
cat first.err
((rc == 3)) || fail "qed-stream stopped by SIGTERM exited $rc, not 3"
grep -q 'stopped by a signal' first.err || fail "no message for the stop"
first=$(read_bytes base.log)
((first > 0)) || fail "nothing copied before the stop"

rc=0
"$tool" top.qed allow-backing=network 2>second.err || rc=$?
cat second.err
((rc == 0)) || fail "qed-stream exited $rc"
grep -q 'done: the image is standalone' second.err || fail "no final message"
second=$(($(read_bytes base.log) - first))
echo "fetched: $first bytes before the stop, $second after"
((second < 17 * MiB)) || fail "the second run did not resume (fetched $second bytes)"
info=$(qemu-img info top.qed)
! grep -qi 'backing file' <<<"$info" || fail "qemu-img info still shows a backing file"
qemu-img check -q top.qed || fail "qemu-img check"
qemu-img compare -q -f qed -F raw top.qed base.raw || fail "content"
stop_bg base

rc=0
"$tool" 2>usage.err || rc=$?
((rc == 2)) || fail "no image: exit $rc, not 2"
rc=0
"$tool" top.qed stream-rate=fast 2>usage.err || rc=$?
((rc == 2)) && grep -q "stream-rate: 'fast' is not a valid value" usage.err || fail "bad rate: $rc"
rc=0
"$tool" missing.qed 2>missing.err || rc=$?
((rc == 1)) && grep -q 'missing.qed' missing.err || fail "missing image: exit $rc: $(cat missing.err)"
echo PASS
