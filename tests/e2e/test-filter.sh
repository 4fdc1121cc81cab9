#!/usr/bin/env bash
# The filter's own behaviour (the read tests also run through it, see meson.build):
# read-only, and nothing ever written below; writes through --filter=cow; one image
# for every connection, each reading through its own context into the plugin, and
# no error line at a normal start over the nbd plugin; multi-conn as the layer below says;
# the errno of a failure below reaching the client; a layer below that takes no
# parallel requests, or only aligned ones; the backing-file keys; dirty images.
# Needs QED_FILTER (the built nbdkit-qed-filter.so).
source "$(dirname "$0")/functions.sh" "$@"
requires /usr/bin/python3 -c 'import nbd'
[[ -f $filter ]] || fail "QED_FILTER must name the built nbdkit-qed-filter.so"

KiB=1024 MiB=$((1024 * 1024))

# serve CMD NBDKIT-ARGS...: nbdkit NBDKIT-ARGS... --run CMD on a private socket
# (the arguments name the filter themselves, so that other filters can go above or
# below it).
serve() {
  local cmd=$1
  shift
  rm -f "$tmp/sock"
  qed_nbdkit -U "$tmp/sock" "$@" --run "$cmd"
}

# refused WHAT NBDKIT-ARGS...: no client gets the export (nbdkit stops at start-up,
# or the filter refuses the connection). A short timeout: under the sanitizer,
# nbdkit can hang at exit after some errors (see functions.sh), which is a refusal.
refused() {
  local what=$1
  shift
  rm -f ran
  if QED_NBDKIT_TIMEOUT=10 serve 'nbdinfo --size "$uri" >/dev/null && touch ran' "$@"; then
    fail "$what: a client was served"
  fi
  [[ ! -e ran ]] || fail "$what: a client was served"
  grep -q 'error:' "$nbdkit_err" || fail "$what: no error message"
}

# said TEXT...: nbdkit's last stderr holds every TEXT.
said() {
  local t
  for t in "$@"; do
    grep -qF -- "$t" "$nbdkit_err" || fail "nbdkit's messages do not say: $t"
  done
}

# A 24 MiB image with 4 KiB clusters (one L2 table maps 8 MiB): data in the first
# and third tables, zero clusters, unallocated space.
qemu-img create -q -f qed -o cluster_size=4096,table_size=4 img.qed 24M
qemu-io -f qed -c "write -P 0x41 0 $((1 * MiB + 5000))" -c "write -z $((2 * MiB)) $((64 * KiB))" \
  -c "write -P 0x42 $((17 * MiB)) $((300 * KiB))" -c "write -P 0x43 $((24 * MiB - 512)) 512" \
  img.qed >/dev/null
qemu_raw img.qed ref.raw
sum=$(sha256sum img.qed)

echo "== read-only, even without -r"
serve 'nbdinfo --is read-only "$uri" && ! nbdinfo --can write "$uri" && nbdcopy "$uri" out.raw' \
  --filter="$filter" file img.qed || fail "the filter's export is not read-only"
cmp ref.raw out.raw || fail "the filter's export differs from qemu's decoding"

echo "== --filter=cow above: writes are accepted and read back; nothing reaches the plugin"
cat >cow.py <<'PY'
import nbd, os, random
ref = bytearray(open("ref.raw", "rb").read())
h = nbd.NBD()
h.connect_uri(os.environ["uri"])
assert h.get_size() == len(ref)
rng = random.Random(7)
for i in range(60):
    off = rng.randrange(len(ref) - 70000)
    n = rng.randrange(1, 70000)
    data = bytes([rng.randrange(256)]) * n
    h.pwrite(data, off)
    ref[off:off + n] = data
h.trim(64 * 1024, 17 * 1024 * 1024)
ref[17 * 1024 * 1024:17 * 1024 * 1024 + 64 * 1024] = bytes(64 * 1024)
h.flush()
for off in range(0, len(ref), 4 * 1024 * 1024):
    n = min(4 * 1024 * 1024, len(ref) - off)
    assert h.pread(n, off) == ref[off:off + n], "offset %d reads back wrong" % off
h.shutdown()
print("cow: 60 writes and a trim read back")
PY
rm -f below.log
serve 'export uri; /usr/bin/python3 cow.py && nbdinfo "$uri" >/dev/null &&
       nbdinfo "$uri" >/dev/null' \
  --filter=cow --filter="$filter" --filter=log file img.qed logfile="$tmp/below.log" ||
  fail "writes through --filter=cow --filter=qed"
[[ $(sha256sum img.qed) == "$sum" ]] || fail "the image changed"
# below.log is what the plugin was asked: a read-only context for each connection,
# opened by that connection (after its preconnect: not one shared context opened at
# start-up), reads only, and the image read once: its header by one connection
# only.  Three clients here; how many connections nbdinfo opens, and how many times
# nbdkit opens the stack per connection, differ between versions (1.32: 5 in all,
# 1.42: 7), so the count is checked against the clients, not a number.
clients=$(grep -c ' Preconnect id=[0-9]* readonly=' below.log) || true
contexts=$(grep -c ' Connect ' below.log) || true
first_connect=$(grep -n -m1 ' Connect ' below.log | cut -d: -f1)
first_preconnect=$(grep -n -m1 ' Preconnect id=' below.log | cut -d: -f1)
if ((clients != 3 || contexts < clients || first_connect < first_preconnect)); then
  cat below.log
  fail "not one context per connection ($clients clients, $contexts contexts below)"
fi
connects=$(grep ' Connect ' below.log)
if grep -vq ' write=0 ' <<<"$connects"; then
  cat below.log
  fail "a context below is writable"
fi
[[ $(grep ' Read id=[0-9]* offset=0x0 ' below.log | awk '{ print $3 }' | sort -u | wc -l) -eq 1 ]] ||
  { cat below.log; fail "the image was read again by another connection"; }
if grep -Eq ' (Write|Trim|Zero|Flush|Cache) ' below.log; then
  cat below.log
  fail "a write-side request reached the plugin"
fi

echo "== multi-conn as the layer below says"
serve 'nbdinfo --can multi-conn "$uri"' --filter="$filter" file img.qed ||
  fail "no multi-conn over the file plugin, which has it"
# below_nbd ARGS...: another nbdkit holding a copy of img.qed, on $tmp/below.sock.
below_pid=
below_nbd() {
  rm -f "$tmp/below.sock" "$tmp/below.pid"
  nbdkit -f --exit-with-parent -U "$tmp/below.sock" -P "$tmp/below.pid" "$@" &
  below_pid=$!
  local i
  for ((i = 0; i < 300; i++)); do [[ -s $tmp/below.pid ]] && break; sleep 0.02; done
  nbdcopy img.qed "nbd+unix:///?socket=$tmp/below.sock" || fail "loading the server below"
}
stop_below() { kill "$below_pid"; wait "$below_pid" || true; }
below_nbd memory "$(stat -c %s img.qed)"
serve 'nbdinfo --can multi-conn "$uri"' --filter="$filter" nbd socket="$tmp/below.sock" ||
  fail "no multi-conn over an NBD server that has it"
stop_below

echo "== a normal start over the nbd plugin logs no error"
# nbdkit 1.32's nbd plugin asks for the client's export name when it is opened:
# a context of the filter's own, opened for no client, made it log
# "error: no connection in this thread" at every start.
below_nbd memory "$(stat -c %s img.qed)"
serve 'nbdcopy "$uri" out.raw && nbdinfo "$uri" >/dev/null' -v --filter="$filter" \
  nbd socket="$tmp/below.sock" || fail "serving over the nbd plugin"
cmp ref.raw out.raw || fail "over the nbd plugin, the export differs from qemu's decoding"
if grep 'error' "$nbdkit_err"; then
  fail "a normal start over the nbd plugin logged an error"
fi
stop_below
below_nbd --filter=multi-conn memory "$(stat -c %s img.qed)" multi-conn-mode=disable
if serve 'nbdinfo --can multi-conn "$uri"' --filter="$filter" nbd socket="$tmp/below.sock"; then
  fail "multi-conn over an NBD server without it"
fi
stop_below

echo "== an image that cannot be opened is tried again by each client"
# The NBD server below is not there when nbdkit starts; the first client is
# refused, then the server starts and the next client is served. Under the
# sanitizer nbdkit can hang at exit after the first failure (see functions.sh):
# the command's own verdict (the marker file) is what counts.
rm -f "$tmp/below.sock" "$tmp/below.pid" retried
rc=0
QED_NBDKIT_TIMEOUT=20 serve "
  if nbdinfo --size \"\$uri\" >/dev/null 2>&1; then exit 1; fi
  nbdkit -U '$tmp/below.sock' -P '$tmp/below.pid' memory $(stat -c %s img.qed) || exit 1
  nbdcopy img.qed 'nbd+unix:///?socket=$tmp/below.sock' &&
    nbdcopy \"\$uri\" out.raw && touch retried
  rc=\$?
  kill \$(cat '$tmp/below.pid')
  exit \$rc" --filter="$filter" nbd socket="$tmp/below.sock" || rc=$?
if [[ $rc -ne 0 ]] && ! { sanitized && [[ -e retried && ( $rc -eq 124 || $rc -eq 137 ) ]]; }; then
  fail "the image was not opened once the server below came up (exit status $rc)"
fi
[[ -e retried ]] || fail "the image was not opened once the server below came up"
cmp ref.raw out.raw || fail "once the server below came up, the export differs"

echo "== a failure below reaches the client with its errno, and is not remembered"
# The error filter below fails every read with ENOSPC while $tmp/fail exists.
cat >errno.py <<'PY'
import nbd, os
h = nbd.NBD()
h.connect_uri(os.environ["uri"])
def fails(off, what):
    try:
        h.pread(4096, off)
    except nbd.Error as e:
        assert e.errno == "ENOSPC", "%s: errno %s, not ENOSPC" % (what, e.errno)
    else:
        raise SystemExit(what + ": the read succeeded")
assert h.pread(4096, 0) == b"\x41" * 4096               # loads the first L2 table
open("fail", "w").close()
fails(8192, "a data read")                              # its L2 table is cached
fails(17 * 1024 * 1024, "a read needing another L2 table")
os.unlink("fail")
assert h.pread(4096, 17 * 1024 * 1024) == b"\x42" * 4096
h.shutdown()
print("ENOSPC from below reached the client, twice")
PY
rm -f fail
serve 'export uri; /usr/bin/python3 errno.py' --filter="$filter" --filter=error file img.qed \
  error-pread=ENOSPC error-pread-rate=100% error-pread-file="$tmp/fail" || fail "errors from below"

# 4 connections reading at once, each checking what it reads.
cat >parallel.py <<'PY'
import nbd, os, threading
ref = open("ref.raw", "rb").read()
bad = []
def work(i):
    h = nbd.NBD()
    h.connect_uri(os.environ["uri"])
    for j in range(10):
        off = ((i * 10 + j) * 3 * 4096) % (1024 * 1024)
        if h.pread(4096, off) != ref[off:off + 4096]:
            bad.append(off)
    h.shutdown()
threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
assert not bad, bad
print("4 connections read concurrently")
PY

# The eval plugin as a layer below that takes one request per handle at a time
# (serialize_requests) and notices when two overlap. Not under the sanitizer: its
# scripts fork from a threaded nbdkit with the ASan runtime preloaded, which hangs
# (unit-next-file covers the serialisation under ASan and TSan).
if ! sanitized; then
  echo "== a layer below without parallel requests on one handle gets one at a time"
  # Each handle (one per connection, named by its open) has its own busy marker.
  rm -rf busy-* overlapped
  detect="if ! mkdir $tmp/busy-\$2 2>/dev/null; then touch $tmp/overlapped; fi; sleep 0.02"
  copy="dd if=$tmp/img.qed iflag=skip_bytes,count_bytes skip=\$4 count=\$3 status=none"
  serve 'export uri; /usr/bin/python3 parallel.py' --filter="$filter" \
    eval get_size="stat -c %s $tmp/img.qed" open='echo h$$' \
    pread="$detect; $copy; rmdir $tmp/busy-\$2 2>/dev/null || true" \
    thread_model='echo serialize_requests' || fail "reads over a serialize_requests plugin"
  [[ ! -e overlapped ]] || fail "two requests reached a serialize_requests plugin's handle at once"
fi

# The same over a real one: the curl plugin (serialize_requests in nbdkit 1.32), one
# curl handle for every connection.
if nbdkit curl --version >/dev/null 2>&1; then
  echo "== over curl (file:// URL), 4 connections at once"
  rm -f out.raw
  serve 'export uri; /usr/bin/python3 parallel.py && nbdcopy "$uri" out.raw' \
    --filter="$filter" curl "file://$tmp/img.qed" || fail "reads over the curl plugin"
  cmp ref.raw out.raw || fail "over curl, the export differs from qemu's decoding"
fi

echo "== a layer below that takes only aligned requests of at most 64 KiB"
policy=(--filter=blocksize-policy file img.qed blocksize-minimum=4096 blocksize-maximum=65536
        blocksize-error-policy=error)
# The policy does refuse what breaks it (libnbd's own check off).
if serve '/usr/bin/python3 -c "
import nbd, sys
h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri(sys.argv[1]); h.pread(64, 100)
" "$uri" 2>/dev/null' "${policy[@]}"; then
  fail "blocksize-policy accepted an unaligned read: the test below proves nothing"
fi
rm -f out.raw
serve 'nbdcopy "$uri" out.raw && /usr/bin/python3 -c "
import nbd, sys
ref = open(\"ref.raw\", \"rb\").read()
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for off, n in [(1, 63), (4095, 2), (100000, 200000), (17 * 2**20 - 7, 70000)]:
    assert h.pread(n, off) == ref[off:off + n], (off, n)
" "$uri"' --filter="$filter" "${policy[@]}" || fail "reads over blocksize-policy"
cmp ref.raw out.raw || fail "over blocksize-policy, the export differs from qemu's decoding"

echo "== backing files"
mkdir chain
/usr/bin/python3 -c "
import sys
open(sys.argv[1], 'wb').write(bytes((i * 7 + (i >> 12)) & 0xff for i in range(3 * 2**20)))
" chain/base.raw
qemu-img create -q -f qed -o cluster_size=65536 -b base.raw -F raw chain/mid.qed 4M
qemu-io -f qed -c "write -P 0x51 $((64 * KiB + 100)) 1000" \
  -c "write -z $((1 * MiB)) $((64 * KiB))" \
  chain/mid.qed >/dev/null
qemu-img create -q -f qed -o cluster_size=4096 -b mid.qed -F qed chain/top.qed 6M
qemu-io -f qed -c "write -P 0x52 $((2 * MiB - 10)) 20000" chain/top.qed >/dev/null
qemu_raw chain/top.qed top.ref.raw

refused "a backing file nobody named" --filter="$filter" file chain/top.qed
said "$filter_image_name" '"mid.qed"' qed-backing=
rm -f out.raw
serve 'nbdcopy "$uri" out.raw && nbdinfo "$uri" >info' \
  --filter="$filter" file chain/top.qed qed-backing="$tmp/chain/mid.qed" || fail "qed-backing="
cmp top.ref.raw out.raw || fail "with qed-backing=, the export differs from qemu's decoding"
grep -qF "backing file: qed $tmp/chain/mid.qed" info ||
  { cat info; fail "the description does not name the base"; }
grep -qF "backing file: raw $tmp/chain/base.raw" info ||
  { cat info; fail "the description does not name the base's base"; }
(cd chain &&
   serve 'nbdcopy "$uri" ../rel.raw' --filter="$filter" file top.qed qed-backing=mid.qed) ||
  fail "a relative qed-backing="
cmp top.ref.raw rel.raw || fail "with a relative qed-backing=, the export differs"

# qed-backing-format=raw: mid.qed read as raw bytes, as qemu reads it with -F raw.
cp chain/top.qed chain/top-raw.qed
qemu-img rebase -q -u -f qed -b mid.qed -F raw chain/top-raw.qed
qemu_raw chain/top-raw.qed top-raw.ref.raw
rm -f out.raw
serve 'nbdcopy "$uri" out.raw' --filter="$filter" file chain/top.qed \
  qed-backing="$tmp/chain/mid.qed" qed-backing-format=raw || fail "qed-backing-format=raw"
cmp top-raw.ref.raw out.raw ||
  fail "with qed-backing-format=raw, the export differs from qemu -F raw"

# qed-backing= naming an NBD URI: the base on another nbdkit.
qemu_raw chain/mid.qed mid.ref.raw
rm -f "$tmp/base.sock" "$tmp/base.pid"
nbdkit -r -U "$tmp/base.sock" -P "$tmp/base.pid" file "$tmp/chain/base.raw"
for i in $(seq 50); do [[ -S $tmp/base.sock ]] && break; sleep 0.1; done
rm -f out.raw
serve 'nbdcopy "$uri" out.raw && nbdinfo "$uri" >info' --filter="$filter" file chain/mid.qed \
  qed-backing="nbd+unix:///?socket=$tmp/base.sock" || fail "qed-backing=URI"
cmp mid.ref.raw out.raw || fail "with qed-backing=URI, the export differs from qemu's decoding"
grep -qF "nbd+unix:///?socket=$tmp/base.sock" info ||
  { cat info; fail "the description does not name the URI"; }
# A QED base over NBD whose own backing file is a local name: refused, so that
# a remote image cannot make the filter read local files.
kill "$(cat "$tmp/base.pid")"
rm -f "$tmp/base.sock"
nbdkit -r -U "$tmp/base.sock" -P "$tmp/base.pid" file "$tmp/chain/mid.qed"
for i in $(seq 50); do [[ -S $tmp/base.sock ]] && break; sleep 0.1; done
refused "a local name below an NBD base" --filter="$filter" file chain/top.qed \
  qed-backing="nbd+unix:///?socket=$tmp/base.sock"
said "local backing file below a network image is refused"
kill "$(cat "$tmp/base.pid")"
# A QED base over NBD whose own backing file is an NBD export on this host: refused
# unless qed-allow-local-exports=true.
rm -f "$tmp/base.sock" "$tmp/raw.sock"
nbdkit -r -U "$tmp/raw.sock" -P "$tmp/raw.pid" file "$tmp/chain/base.raw"
cp chain/mid.qed urimid.qed
qemu-img rebase -q -u -f qed -b "nbd+unix:///?socket=$tmp/raw.sock" -F raw urimid.qed
nbdkit -r -U "$tmp/base.sock" -P "$tmp/base.pid" file "$tmp/urimid.qed"
for i in $(seq 50); do [[ -S $tmp/base.sock && -S $tmp/raw.sock ]] && break; sleep 0.1; done
refused "an NBD export on this host below an NBD base" --filter="$filter" file chain/top.qed \
  qed-backing="nbd+unix:///?socket=$tmp/base.sock"
said "nbd+unix:///?socket=$tmp/raw.sock: refused: a Unix socket" \
  "(qed-allow-local-exports=true allows it)"
rm -f out.raw
serve 'nbdcopy "$uri" out.raw' --filter="$filter" file chain/top.qed \
  qed-backing="nbd+unix:///?socket=$tmp/base.sock" qed-allow-local-exports=true ||
  fail "qed-allow-local-exports=true"
cmp top.ref.raw out.raw || fail "with qed-allow-local-exports=true, the export differs"
kill "$(cat "$tmp/base.pid")" "$(cat "$tmp/raw.pid")"
refused "a URI that is not NBD" --filter="$filter" file chain/top.qed \
  qed-backing="http://localhost/base.qed"
said "qed-backing: http://localhost/base.qed" 'protocol "http" is not supported'

refused "qed-backing-format=qed on a raw file" --filter="$filter" file chain/mid.qed \
  qed-backing="$tmp/chain/base.raw" qed-backing-format=qed
said '"base.raw"' "$tmp/chain/base.raw"
refused "qed-backing= for an image without a backing file" --filter="$filter" file img.qed \
  qed-backing="$tmp/chain/base.raw"
said "$tmp/chain/base.raw"
refused "a missing qed-backing= file" --filter="$filter" file chain/top.qed qed-backing=gone.qed
said gone.qed
refused "qed-backing-format= alone" --filter="$filter" file img.qed qed-backing-format=raw
said qed-backing=
refused "an unknown qed- key" --filter="$filter" file img.qed qed-frobnicate=1
said qed-frobnicate
for key in qed-copy-on-read=true qed-stream=true qed-stream-rate=1M; do
  refused "$key (the filter is read-only)" --filter="$filter" file img.qed "$key"
  said "${key%%=*}: the qed filter serves the image read-only"
done
refused "qed-check=repair" --filter="$filter" file img.qed qed-check=repair
said qed-check
serve true --filter="$filter" file img.qed qed-cache-size=32K || fail "qed-cache-size="
refused "a bad qed-cache-size=" --filter="$filter" file img.qed qed-cache-size=lots

echo "== a dirty image is read without writing, as the plugin reads it with -r"
cp img.qed dirty.qed
# NEED_CHECK set, and one L2 entry pointing past the end of the file (lenient:
# reads as unallocated).
poke dirty.qed 16 8 $(( $(peek dirty.qed 16 8) | 2 ))
l1=$(peek dirty.qed 40 8)
l2=$(peek dirty.qed "$l1" 8)
poke dirty.qed $((l2 + 8)) 8 $(( ($(stat -c %s dirty.qed) / 4096 + 5) * 4096 ))
dsum=$(sha256sum dirty.qed)
compare_with_plugin dirty.qed
serve 'nbdinfo "$uri" >/dev/null' --filter="$filter" file dirty.qed qed-check=report ||
  fail "qed-check=report on a dirty image"
# An entry past the end of the file is what a crash leaves: information, not an error.
grep -Eq "check: .* 1 entries past the end of the file" "$nbdkit_err" ||
  fail "qed-check=report does not report the entry past the end of the file"
[[ $(sha256sum dirty.qed) == "$dsum" ]] || fail "the dirty image changed"

echo "== --help lists the keys"
qed_nbdkit --filter="$filter" null --help >help.txt
for k in qed-backing= qed-backing-format= qed-cache-size= qed-check= qed-allow-local-exports=; do
  grep -qF -- "$k" help.txt || fail "--help does not list $k"
done

echo "PASS"
