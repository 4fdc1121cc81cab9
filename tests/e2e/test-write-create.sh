#!/usr/bin/env bash
# create=true: the new file must be byte-identical to what `qemu-img create -f qed`
# writes for the same options; an existing file is refused unless overwrite=true; a
# size above the geometry's maximum is refused with the limit in the message;
# geometries QEMU cannot use (cluster sizes >= 2 MiB at table_size 16) work.
# size= on an existing image grows it (qemu sees the new size, data intact); a
# smaller size is refused.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/functions.sh" "$@"

KiB=1024 MiB=$((1024 * 1024)) GiB=$((1024 * 1024 * 1024))

# refused_rw IMAGE CMD [PLUGIN-ARGS...]: serve_rw for a run that must fail; returns
# nbdkit's exit status.  Under the sanitizer nbdkit 1.32 can hang at exit after
# printing an error (the ASan-preload issue described in functions.sh): there, a
# time-out after an error message counts as a refusal (exit status 1).
refused_rw() {
  local rc=0
  QED_NBDKIT_TIMEOUT=15 serve_rw "$@" || rc=$?
  if [[ -n $_asan_lib ]] && [[ $rc -eq 124 || $rc -eq 137 ]] && grep -q 'error:' "$nbdkit_err"; then
    echo "(nbdkit hung at exit after reporting the error: known ASan preload issue)"
    rc=1
  fi
  return "$rc"
}

vsize() {  # qemu's idea of the virtual size
  qemu-img info --output=json -f qed "$1" |
    /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])'
}

# same_as_qemu NAME "PLUGIN-ARGS" "QEMU-IMG-OPTIONS" [SIZE]: create NAME.p.qed with
# the plugin and NAME.q.qed with qemu-img create; the files must be identical.
same_as_qemu() {
  local name=$1 pargs=$2 qopts=$3 qsize=${4:-}
  local p=$name.p.qed q=$name.q.qed
  rm -f "$p" "$q"
  # shellcheck disable=SC2086
  serve_rw "$p" true create=true $pargs || fail "$name: create=true $pargs failed"
  # shellcheck disable=SC2086
  qemu-img create -q -f qed $qopts "$q" $qsize || fail "$name: qemu-img create $qopts $qsize failed"
  if ! cmp "$p" "$q"; then
    echo "$name: plugin ($p, $(stat -c %s "$p") bytes) vs qemu-img ($q, $(stat -c %s "$q") bytes)," \
      "differing bytes (offset, octal plugin, octal qemu):" >&2
    cmp -l "$p" "$q" | head -40 >&2 || true
    /usr/bin/python3 - "$p" "$q" <<'PY' >&2
import struct, sys
names = ("magic", "cluster_size", "table_size", "header_size", "features", "compat_features",
         "autoclear_features", "l1_table_offset", "image_size", "backing_filename_offset",
         "backing_filename_size")
for path in sys.argv[1:]:
    v = struct.unpack("<IIIIQQQQQII", open(path, "rb").read(64))
    print(path + ": " + ", ".join("%s=%#x" % kv for kv in zip(names, v)))
PY
    fail "$name: create=true $pargs differs from qemu-img create $qopts $qsize"
  fi
  echo "$name: identical to qemu-img create ($(stat -c %s "$p") bytes)"
}

echo "== create=true vs qemu-img create"
same_as_qemu default "size=1G" "" 1G
same_as_qemu odd-size "size=1000" "" 1000
same_as_qemu c4k-t16 "cluster-size=4096 table-size=16 size=1G" "-o cluster_size=4096,table_size=16" 1G
same_as_qemu c1m-t2 "cluster-size=1M table-size=2 size=300G" "-o cluster_size=1M,table_size=2" 300G
head -c $((10 * MiB + 1000)) /dev/urandom >base.raw
same_as_qemu raw-backing "backing=base.raw backing-format=raw" "-b base.raw -F raw"
same_as_qemu raw-backing-size "backing=base.raw backing-format=raw size=20M" "-b base.raw -F raw" 20M
qemu-img create -q -f qed -o cluster_size=4096 -b base.raw -F raw mid.qed 12M
qemu-io -f qed -c 'write -P 0x4d 1M 100k' mid.qed >/dev/null
same_as_qemu qed-backing "backing=mid.qed backing-format=qed" "-b mid.qed -F qed"
same_as_qemu qed-backing-size "backing=mid.qed backing-format=qed size=3G cluster-size=4096 table-size=8" \
  "-o cluster_size=4096,table_size=8 -b mid.qed -F qed" 3G
# The raw-backed image reads as the backing file (rounded up to 512 bytes).
check_same_as_qemu raw-backing.p.qed
check_same_as_qemu qed-backing.p.qed

echo "== an existing file is refused unless overwrite=true"
printf 'precious data\n' >exists.qed
rc=0
refused_rw exists.qed 'touch ran' create=true size=1M || rc=$?
[[ $rc -ne 0 && ! -e ran ]] || fail "create=true over an existing file was not refused"
grep -q 'exists' "$nbdkit_err" || fail "create=true over an existing file: no 'exists' in the error"
[[ $(cat exists.qed) == "precious data" ]] || fail "create=true (refused) changed the existing file"
serve_rw exists.qed "nbdinfo --size \"\$uri\" >size.out" create=true size=1M overwrite=true ||
  fail "create=true overwrite=true failed"
[[ $(cat size.out) -eq $MiB ]] || fail "overwrite=true: export size $(cat size.out)"
qemu-img create -q -f qed ref.qed 1M
cmp exists.qed ref.qed || fail "overwrite=true did not write a fresh image"
rm -f exists.qed ref.qed size.out ran

echo "== sizes above the geometry's maximum are refused, with the limit in the message"
# must_refuse_create ARGS... LIMIT
must_refuse_create() {
  local limit=${*: -1} rc=0
  rm -f big.qed ran
  refused_rw big.qed 'touch ran' create=true "${@:1:$#-1}" || rc=$?
  [[ $rc -ne 0 && ! -e ran ]] || fail "create ${*:1:$#-1} was not refused"
  grep -q -- "$limit" "$nbdkit_err" || fail "create ${*:1:$#-1}: the message does not give the limit $limit"
  [[ ! -e big.qed ]] || fail "create ${*:1:$#-1}: a refused create left big.qed behind"
}
must_accept_create() {
  rm -f big.qed
  serve_rw big.qed "nbdinfo --size \"\$uri\" >size.out" create=true "$@" || fail "create $* refused"
  rm -f big.qed
}
# 4 KiB / 1: (1 * 4096 / 8)^2 * 4096 = 1 GiB
must_accept_create cluster-size=4096 table-size=1 size=1G
[[ $(cat size.out) -eq $GiB ]] || fail "4K/1 at 1 GiB: export size $(cat size.out)"
must_refuse_create cluster-size=4096 table-size=1 size=$((GiB + 512)) 1073741824
# 64 KiB / 4 (defaults): 64 TiB
must_accept_create size=64T
must_refuse_create size=$((64 * 1024 * GiB + 512)) 70368744177664
# 4 KiB / 16: 256 GiB
must_refuse_create cluster-size=4096 table-size=16 size=$((256 * GiB + 512)) 274877906944
rm -f size.out

echo "== cluster sizes QEMU cannot use (its maximum size wraps to 0)"
for geo in "2M 16" "4M 4" "64M 1"; do
  set -- $geo
  rm -f g.qed
  py='import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
n = h.get_size()
h.pwrite(b"\xa5" * 100000, n // 2 - 50000)
h.pwrite(b"\x5a" * 1000, n - 1000)
h.flush()
assert h.pread(100000, n // 2 - 50000) == b"\xa5" * 100000
assert h.pread(1000, n - 1000) == b"\x5a" * 1000
assert h.pread(4096, 0) == bytes(4096)'
  serve_rw g.qed "/usr/bin/python3 -c '$py' \"\$uri\"" create=true cluster-size=$1 table-size=$2 size=3G ||
    fail "cluster-size=$1 table-size=$2: create/write/read failed"
  serve_ro g.qed "/usr/bin/python3 -c '$(sed -e '/pwrite/d' -e '/flush/d' <<<"$py")' \"\$uri\"" ||
    fail "cluster-size=$1 table-size=$2: data not there after a restart"
  rm -f g.qed
done

echo "== size= on an existing image grows it"
rm -f grow.qed
qemu-img create -q -f qed -o cluster_size=4096 grow.qed 100M
qemu-io -f qed -c 'write -P 0x61 0 64k' -c 'write -P 0x62 99M 1M' grow.qed >/dev/null
serve_rw grow.qed "nbdinfo --size \"\$uri\" >size.out" size=200M || fail "grow to 200M failed"
[[ $(cat size.out) -eq $((200 * MiB)) ]] || fail "grow: the export size is $(cat size.out)"
[[ $(vsize grow.qed) -eq $((200 * MiB)) ]] || fail "grow: qemu-img info says $(vsize grow.qed)"
/usr/bin/python3 "$here/write_qemu_check.py" grow.qed || fail "grow: qemu-img check"
qio_ok grow.qed 'read -P 0x61 0 64k' 'read -P 0x62 99M 1M' 'read -P 0 100M 100M' \
  'write -P 0x63 150M 64k' 'read -P 0x63 150M 64k'
check_same_as_qemu grow.qed
# same size again: nothing to do
serve_rw grow.qed "nbdinfo --size \"\$uri\" >size.out" size=200M || fail "size= equal to the image size failed"
[[ $(cat size.out) -eq $((200 * MiB)) ]] || fail "size=200M again: the export size is $(cat size.out)"

echo "== a smaller size= is refused and changes nothing"
cp grow.qed before.qed
rc=0
refused_rw grow.qed "nbdinfo --size \"\$uri\" >size.out" size=50M || rc=$?
[[ $rc -ne 0 ]] || fail "size=50M on a 200M image was not refused (export size $(cat size.out))"
grep -Eq 'shrink|smaller|larger' "$nbdkit_err" || fail "shrink refusal: no explanation on stderr"
cmp grow.qed before.qed || fail "a refused shrink changed the image"

echo "== size= with -r never changes the file"
serve_ro grow.qed "nbdinfo --size \"\$uri\" >size.out" size=300M || true
cmp grow.qed before.qed || fail "size=300M with -r changed the image"
serve_ro grow.qed "nbdinfo --size \"\$uri\" >size.out" size=50M || true
cmp grow.qed before.qed || fail "size=50M with -r changed the image"

echo "== grow beyond the geometry's maximum is refused"
qemu-img create -q -f qed -o cluster_size=4096,table_size=4 grow4k.qed 1G
cp grow4k.qed before.qed
rc=0
refused_rw grow4k.qed "nbdinfo --size \"\$uri\" >size.out" size=$((16 * GiB + 512)) || rc=$?
[[ $rc -ne 0 ]] || fail "growing a 4K/4 image past 16 GiB was not refused"
grep -q 17179869184 "$nbdkit_err" || fail "grow past the maximum: the message does not give the limit"
cmp grow4k.qed before.qed || fail "a refused grow changed the image"
serve_rw grow4k.qed "nbdinfo --size \"\$uri\" >size.out" size=16G || fail "grow to exactly 16 GiB failed"
[[ $(vsize grow4k.qed) -eq $((16 * GiB)) ]] || fail "grow to 16G: qemu-img info says $(vsize grow4k.qed)"
echo "== grow over a backing file larger than the image is refused (it would show its data)"
rm -f gb.raw gb.qed
/usr/bin/python3 -c "open('gb.raw','wb').write(b'\\xbb' * (4 << 20))"
qemu-img create -q -f qed -b gb.raw -F raw gb.qed 1M
cp gb.qed gb-before.qed
rm -f ran
rc=0
refused_rw gb.qed 'touch ran' size=8M || rc=$?
[[ $rc -ne 0 && ! -e ran ]] || fail "grow to 8M over a 4M backing file was accepted"
grep -q 1048576 "$nbdkit_err" && grep -q 4194304 "$nbdkit_err" && grep -q 8388608 "$nbdkit_err" ||
  fail "the refusal does not name the image size, the backing file size and the new size"
cmp gb.qed gb-before.qed || fail "a refused grow changed the image"
# Up to the backing file's size it is no better; once the image is at least as
# large as its backing file, growing is fine: the new space reads as zeroes.
qemu-img create -q -f qed -b gb.raw -F raw gb2.qed 4M
serve_rw gb2.qed "nbdinfo --size \"\$uri\" >size.out" size=8M || fail "grow of a 4M image over a 4M backing file failed"
qio_ok gb2.qed 'read -P 0xbb 0 4M' 'read -P 0 4M 4M' || fail "grown over its backing file: wrong data"
echo "test-write-create: PASS"
