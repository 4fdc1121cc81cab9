#!/usr/bin/env bash
# What an image on an NBD server may make the plugin do (allow-backing=network):
#   - below it, backing files that reach this host are refused, with a message naming
#     the URI and allow-local-exports=true: a Unix socket, the loopback address and
#     names in several spellings (before connecting, nothing reaches the server), and a
#     name that resolves to this host (by the address the connection reached);
#     allow-local-exports=true allows them;
#   - the whole chain holds at most backing-connections NBD backing files (one
#     connection each), whatever the servers serve;
#   - the whole chain's L2 caches stay within one cache-size: nbdkit's peak memory
#     over a chain of 8 QED images (VmHWM), every table of every level read.
source "$(dirname "$0")/nbd-functions.sh" "$@"
requires /usr/bin/python3 -c 'import nbd'

allow_hint='must not reach this host (allow-local-exports=true allows it)'

# A private export on this host, and a "golden" QED image on a server that names it.
head -c $((2 * MiB)) /dev/urandom >private.raw
start_base private -r file private.raw
start_tcp_base private-tcp -r --filter=log file private.raw logfile="$tmp/private-tcp.requests"
port=$(base_port private-tcp)
connects() { grep -c ' Connect ' private-tcp.requests || true; }
connects_at_start=$(connects)   # start_tcp_base's own probe

# golden NAME BACKING: NAME.qed, a QED image whose backing file is BACKING, served
# raw on $tmp/NAME.sock, and top-NAME.qed, a local image over it.
golden() {
  qemu-img create -q -f qed -u -b "$2" -F raw "$1.qed" 2M
  start_base "$1" -r file "$1.qed"
  qemu-img create -q -f qed -u -b "$(bg_uri "$1")" -F qed "top-$1.qed" 2M
}

echo "== below a network image, a Unix socket of this host is refused"
golden unix "$(bg_uri private)"
refuses file=top-unix.qed $net || fail "a remote image reached a private Unix socket"
grep -qF "$(bg_uri private): refused: a Unix socket, which is on this host; a backing file named by an image on an NBD server $allow_hint" \
  "$nbdkit_err" || fail "the refusal does not name the URI, the reason and the key"
serve_ro top-unix.qed 'nbdcopy "$uri" out.raw' $net allow-local-exports=true ||
  fail "allow-local-exports=true did not allow it"
cmp private.raw out.raw || fail "allowed, the chain reads wrongly"
echo "ok: refused, then allowed by the key"

echo "== the loopback address and names for it, in several spellings: refused before connecting"
n=0
for host in 127.0.0.1 127.1 2130706433 0x7f.0.0.1 localhost LocalHost. a.localhost '[::1]' \
  '[::ffff:127.0.0.1]' "$(hostname)"; do
  n=$((n + 1))
  golden "lo$n" "nbd://$host:$port/"
  refuses file="top-lo$n.qed" $net || fail "a remote image reached nbd://$host:$port/"
  grep -qF "nbd://$host:$port/: refused: " "$nbdkit_err" || fail "nbd://$host:$port/: no refusal"
  grep -qF "$allow_hint" "$nbdkit_err" || fail "nbd://$host:$port/: the key is not named"
  stop_bg "lo$n"
done
(( $(connects) == connects_at_start )) || fail "a refused name reached the server"
echo "ok: $n spellings refused, none connected"

# A name the URI does not give away: one /etc/hosts maps to this host (on Debian,
# the machine's full name maps to 127.0.1.1), caught by the address it reaches.
alias=$(awk -v self="$(hostname)" '
  $1 ~ /^(127\.|::1$)/ { for (i = 2; i <= NF; i++) {
      n = tolower($i)
      if (n !~ /localhost|^ip6-/ && n != tolower(self) && n !~ /^#/) { print $i; exit } } }' /etc/hosts)
if [[ -n $alias ]]; then
  echo "== a name that resolves to this host ($alias): refused by the address reached"
  golden alias "nbd://$alias:$port/"
  refuses file=top-alias.qed $net || fail "a remote image reached nbd://$alias:$port/"
  grep -qF "nbd://$alias:$port/: refused: the server is on this host (the loopback address" \
    "$nbdkit_err" || fail "nbd://$alias:$port/: not refused by its address"
  serve_ro top-alias.qed 'nbdcopy "$uri" out.raw' $net allow-local-exports=true ||
    fail "allow-local-exports=true did not allow nbd://$alias:$port/"
  cmp private.raw out.raw || fail "allowed, the chain over nbd://$alias:$port/ reads wrongly"
  stop_bg alias
else
  echo "(no name in /etc/hosts maps to this host beyond the well-known ones: skipped)"
fi

echo "== the whole chain holds at most backing-connections NBD backing files"
# top.qed -> nbd mid1 (qed) -> nbd mid2 (qed) -> nbd private (raw): three NBD files.
qemu-img create -q -f qed -u -b "$(bg_uri private)" -F raw mid2.qed 2M
start_base mid2 -r file mid2.qed
qemu-img create -q -f qed -u -b "$(bg_uri mid2)" -F qed mid1.qed 2M
start_base mid1 -r file mid1.qed
qemu-img create -q -f qed -u -b "$(bg_uri mid1)" -F qed top-chain.qed 2M
refuses file=top-chain.qed $net allow-local-exports=true backing-connections=2 ||
  fail "a chain of three NBD files was opened with backing-connections=2"
grep -qF "$(bg_uri private): refused: the backing chain already holds 2 NBD backing files, which keep all the connections it may hold (one each; backing-connections=2)" \
  "$nbdkit_err" || fail "the refusal does not say why, or which key"
serve_ro top-chain.qed 'nbdcopy "$uri" out.raw' $net allow-local-exports=true backing-connections=3 ||
  fail "a chain of three NBD files with backing-connections=3"
cmp private.raw out.raw || fail "the chain of three NBD files reads wrongly"
echo "ok: three NBD files need backing-connections=3"

echo "== the whole chain's L2 caches stay within one cache-size"
# Eight QED images, each over the one before, each with an L2 table in each of the
# 32 spans of 2 GiB (8 MiB of tables per image, 64 MiB for the chain); data only in
# the lowest. Reading one byte per span through the top loads every table of every
# level. With cache-size=4M for the whole chain, nbdkit's peak memory may grow by
# that and some slack; a budget per level would let it grow by 8 x 4 MiB.
prev=
for level in 0 1 2 3 4 5 6 7; do
  if [[ -z $prev ]]; then
    qemu-img create -q -f qed -o cluster_size=65536,table_size=4 "lvl$level.qed" 64G
  else
    qemu-img create -q -f qed -o cluster_size=65536,table_size=4 -b "$prev" -F qed "lvl$level.qed" 64G
  fi
  cmds=()
  for span in $(seq 0 31); do
    cmds+=("write -P $((level + 1)) $((span * 2048 * MiB + level * 65536)) 512")
  done
  qio_ok "lvl$level.qed" "${cmds[@]}"
  prev=lvl$level.qed
done
serve_bg lvl7 -r -- file=lvl7.qed cache-size=4M
kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$(bg_pid lvl7)/status"; }
before=$(kib VmHWM)
py='import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for rounds in range(2):
    for span in range(32):
        assert h.pread(512, span << 31) == b"\x01" * 512, span
h.shutdown()'
/usr/bin/python3 -c "$py" "$(bg_uri lvl7)" || fail "reads through the chain of eight images"
after=$(kib VmHWM)
stop_bg lvl7 || fail "nbdkit failed"
grew=$(((after - before) / 1024))
echo "nbdkit peak memory: $((before / 1024)) MiB after opening the chain, $((after / 1024)) MiB" \
  "after reading every table of its 8 levels (+$grew MiB; cache-size=4M for the chain)"
if sanitized; then
  echo "(under the sanitizer, freed memory is quarantined: not checked)"
elif (( grew > 4 + 8 )); then
  fail "the chain's caches took $grew MiB over cache-size=4M"
fi

echo "PASS"
