#!/usr/bin/env bash
# Golden images under stress (issue 20), over a base on an NBD server:
#   - client writes racing copy-on-read and the stream on the same clusters:
#     write_random.py (4 connections, several requests in flight each, against a
#     model; no trims, see --no-trim) while the stream runs, then the export, qemu
#     and qemu-img check after the detach must agree with the model;
#   - kill -9 mid-stream, then a new stream resumes (fetching less than the whole
#     base again) and detaches: qemu-img compare with the base;
#   - the base server killed mid-stream: the stream pauses (log line), clients that
#     do not need the base go on, and it resumes when the base is back;
#   - stream-rate is a promise: the bytes copied per second, measured from the
#     base's log timestamps and from the stream's own report, stay within it.
# The seed is random unless QED_WRITE_SEED is set.
source "$(dirname "$0")/nbd-functions.sh" "$@"
requires /usr/bin/python3 -c 'import nbd'

random_run test-golden-races 2000

# The base: 24 MiB + 1024 bytes, random data with holes, in memory behind NBD.
random_base base.raw
start_base base --filter=log memory "$base_size" logfile="$tmp/base.log"
base=$(bg_uri base)
nbdcopy base.raw "$base" || fail "filling the base"

# standalone_or_wait URI: (inside --run) waits until new clients are told the
# image is standalone.
wait_standalone='for i in $(seq 600); do d=$(nbdinfo "$uri"); case $d in *standalone*) exit 0;; esac; sleep 0.1; done; exit 1'

# 1. Writes racing copy-on-read and the stream.
for geo in "65536 4" "4096 8"; do
  read -r cs ts <<<"$geo"
  s=$((seed + cs))
  echo "== race: cluster $cs, table $ts (seed $s)"
  rm -f race.qed ref.raw ref.raw.windows out.raw
  serve_rw race.qed "/usr/bin/python3 '$here/write_random.py' \"\$uri\" ref.raw $s $nreq \
                       --cluster-size $cs --table-size $ts --backing-uri '$base' --no-trim &&
                     ($wait_standalone) && nbdcopy \"\$uri\" out.raw" \
    create=true size=$((32 * MiB + 512)) cluster-size=$cs table-size=$ts backing="$base" \
    backing-format=raw allow-backing=network copy-on-read=true stream=true stream-rate=16M ||
    fail "race: the random requests or the stream failed (seed $s)"
  grep -q 'stream: done: the image is standalone' "$nbdkit_err" || fail "race: no detach"
  same_raw ref.raw out.raw || fail "race: the export differs from the model (seed $s)"
  info=$(qemu-img info race.qed)
  ! grep -qi 'backing file' <<<"$info" || fail "race: qemu-img info shows a backing file"
  /usr/bin/python3 "$here/write_qemu_check.py" race.qed || fail "race: qemu-img check (seed $s)"
  qemu-img compare -q -f qed -F raw race.qed ref.raw || fail "race: qemu reads otherwise (seed $s)"
done

# 2. kill -9 mid-stream, then resume.
echo "== kill -9 mid-stream"
rm -f k.qed
qemu-img create -q -f qed -b "$base" -F raw k.qed "$base_size"
before=$(read_bytes base.log)
serve_bg k -- file=k.qed allow-backing=network stream=true stream-rate=8M
sleep 1.5
stop_bg k KILL
first=$(($(read_bytes base.log) - before))
echo "fetched before the kill: $first bytes"
((first > 0)) || fail "the stream copied nothing before the kill"
/usr/bin/python3 "$here/write_qemu_check.py" k.qed --allow-leaks --allow-dirty || fail "qemu-img check after kill -9"
before=$(read_bytes base.log)
serve_bg k2 -- file=k.qed allow-backing=network stream=true
wait_line "$tmp/k2.err" 'stream: done: the image is standalone' 120
stop_bg k2
second=$(($(read_bytes base.log) - before))
echo "fetched by the resumed stream: $second bytes"
data=$((17 * MiB + 1024))
((second < data)) || fail "the resumed stream fetched $second bytes: it did not skip what was copied"
qemu-img check -q k.qed || fail "qemu-img check after the resumed stream"
qemu-img compare -q -f qed -F raw k.qed base.raw || fail "kill -9 and resume: content"

# 3. The base killed mid-stream and restarted.
# A base served from a file: back with its data the moment it listens again.
echo "== the base killed mid-stream"
start_base fb -r file base.raw
rm -f b.qed
qemu-img create -q -f qed -b "$(bg_uri fb)" -F raw b.qed "$base_size"
serve_bg b -- file=b.qed allow-backing=network stream=true stream-rate=4M
# A whole cluster written first: it needs no base.
head -c 65536 /dev/urandom >mine.bin
cp base.raw want.raw
dd if=mine.bin of=want.raw bs=65536 seek=100 conv=notrunc status=none
/usr/bin/python3 -c '
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(open("mine.bin", "rb").read(), 100 * 65536); h.flush(); h.shutdown()' "$(bg_uri b)"
sleep 1
stop_bg fb KILL
wait_line "$tmp/b.err" 'stream: paused, the backing file failed' 60
/usr/bin/python3 -c '
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
if h.pread(65536, 100 * 65536) != open("mine.bin", "rb").read():
    sys.exit("a read that needs no base failed while the base was down")
h.shutdown()' "$(bg_uri b)" || fail "clients that do not need the base must go on"
start_base fb -r file base.raw
wait_line "$tmp/b.err" 'stream: resumed' 60
wait_line "$tmp/b.err" 'stream: done: the image is standalone' 120
stop_bg b
stop_bg fb
qemu-img check -q b.qed || fail "qemu-img check after the base came back"
qemu-img compare -q -f qed -F raw b.qed want.raw || fail "base killed and restarted: content"

# 4. stream-rate, measured.
echo "== stream-rate=4M"
rm -f r.qed
qemu-img create -q -f qed -b "$base" -F raw r.qed "$base_size"
before=$(read_bytes base.log)
t0=$(date +%s.%N)
serve_bg r -- file=r.qed allow-backing=network stream=true stream-rate=4M
wait_line "$tmp/r.err" 'stream: done: the image is standalone' 120
t1=$(date +%s.%N)
stop_bg r
fetched=$(($(read_bytes base.log) - before))
/usr/bin/python3 - "$t0" "$t1" "$fetched" "$tmp/r.err" <<'PY' || fail "stream-rate=4M was not kept"
import re, sys
t0, t1, fetched = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
rate = 4 << 20
# The first quarter second's worth may go at once (one step); after that, the
# average since the start stays within the rate.
elapsed = t1 - t0
allowed = rate * elapsed + rate / 4
print("stream-rate=4M: %d bytes fetched in %.2f s: %.2f MiB/s (limit 4 MiB/s)" %
      (fetched, elapsed, fetched / elapsed / 2**20))
if fetched > allowed:
    sys.exit("fetched %d bytes in %.2f s, more than %d" % (fetched, elapsed, allowed))
if fetched < 16 << 20:
    sys.exit("the stream fetched only %d bytes" % fetched)
last = [l for l in open(sys.argv[4]) if "stream: streamed" in l][-1]
m = re.search(r"([0-9.]+) (bytes|KiB|MiB|GiB)/s", last)
reported = float(m.group(1)) * {"bytes": 1, "KiB": 1024, "MiB": 2**20, "GiB": 2**30}[m.group(2)]
print("the stream's own report: " + last.strip())
if reported > rate * 1.05:
    sys.exit("the stream reports %.0f bytes/s" % reported)
PY
stop_bg base
echo "test-golden-races: PASS (seed $seed)"
