#!/usr/bin/env bash
# QEMU's image locking (issue 19), with QEMU's own tools on the other side:
#   test-locking.sh PLUGIN.so FILTER.so [qed_syscalls.so]
# The plugin serving read-write keeps qemu-io, qemu-img (without -U), a second
# nbdkit and writers of the local backing file out, and lets qemu-img info -U and
# check -U in; after it exits (cleanly, or killed with SIGKILL) everything opens
# again. qemu-io holding the image read-write keeps the plugin out, read-write and
# read-only, with a message that says what to do; and keeps out grow and overwrite
# too. Two read-only servers share; locking=off opens anyway; the filter takes no
# locks. Where the file system has no OFD locks (the preload fails them with ENOLCK)
# locking=auto serves and says so, locking=on refuses.
filter_so=$(realpath -- "$2")
preload=
[[ -n ${3:-} ]] && preload=$(realpath -- "$3")
here=$(cd "$(dirname "$0")" && pwd)
source "$here/functions.sh" "$1"

qemu-img create -q -f raw base.raw 4M
qemu-io -f raw -c 'write -P 0x11 0 4M' base.raw >/dev/null
qemu-img create -q -f qed -b base.raw -F raw img.qed
img=$(realpath img.qed) base=$(realpath base.raw)
writer="100 101 103 201 203" reader="100 201 203"

echo "== nbdkit serving read-write: locked as a writer from start-up, the base as a reader"
serve_bg rw -- file="$img"
[[ $(locked_bytes "$img") == "$writer" ]] || fail "image locks: '$(locked_bytes "$img")'"
[[ $(locked_bytes "$base") == "$reader" ]] || fail "backing file locks: '$(locked_bytes "$base")'"
cp img.qed img.before
cp base.raw base.before
qemu_locked_out qemu-io -f qed -c 'write 1M 4k' "$img"
qemu_locked_out qemu-img info "$img"
info=$(qemu-img info -U "$img") || fail "qemu-img info -U"
grep -q '^file format: qed' <<<"$info" || fail "qemu-img info -U: not read as qed"
qemu-img check -U "$img" || fail "qemu-img check -U"
refuses --rw file="$img" || fail "a second read-write nbdkit served the image"
lock_refusal_ok "$img" 'failed to get "write" lock'
refuses file="$img" || fail "a read-only nbdkit served an image served read-write"
lock_refusal_ok "$img" 'failed to get shared "write" lock'
qemu_locked_out qemu-io -f raw -c 'write 0 4k' "$base"
cmp img.qed img.before || fail "the image changed"
cmp base.raw base.before || fail "the backing file changed"
# A client writes: the reopen for writing keeps everyone out as before.
out=$(qemu-io -f raw -c 'write -P 0x5a 1M 4k' "$(bg_uri rw)" 2>&1) || fail "write through NBD: $out"
[[ $(locked_bytes "$img") == "$writer" ]] || fail "image locks after the reopen"
qemu_locked_out qemu-img info "$img"
stop_bg rw
[[ -z $(locked_bytes "$img") && -z $(locked_bytes "$base") ]] || fail "locks left after exit"
qio_ok "$img" 'read -P 0x5a 1M 4k' 'write -P 0x66 2M 4k'
qemu-img info "$img" >/dev/null || fail "qemu-img info after nbdkit exited"
qemu-io -f raw -c 'write -P 0x11 0 4k' "$base" >/dev/null || fail "writing the base after exit"

echo "== kill -9 of nbdkit releases the locks"
serve_bg rw -- file="$img"
qemu_locked_out qemu-img info "$img"
stop_bg rw KILL
[[ -z $(locked_bytes "$img") && -z $(locked_bytes "$base") ]] || fail "locks left after kill -9"
qio_ok "$img" 'read -P 0x66 2M 4k' 'write -P 0x67 3M 4k'
qemu-io -f raw -c 'write -P 0x11 0 4k' "$base" >/dev/null || fail "writing the base after kill -9"

echo "== qemu-io holding the image read-write keeps the plugin out"
hold_bg qio qemu-io -f qed -c 'sleep 600000' "$img"
wait_locked "$img" "$writer"
cp img.qed img.before
refuses --rw file="$img" || fail "served read-write an image qemu-io holds"
lock_refusal_ok "$img" 'failed to get "write" lock'
refuses file="$img" || fail "served read-only an image qemu-io holds"
lock_refusal_ok "$img" 'failed to get shared "write" lock'
refuses --rw file="$img" size=8M || fail "grew an image qemu-io holds"
lock_refusal_ok "$img" 'failed to get "write" lock'
refuses --rw file="$img" create=true overwrite=true size=1M || fail "replaced an image qemu-io holds"
lock_refusal_ok "$img" 'failed to get "write" lock'
cmp img.qed img.before || fail "a refused open changed the image"
serve_ro "$img" 'nbdinfo --size "$uri" >/dev/null' locking=off || fail "locking=off"
stop_bg qio
wait_locked "$img" ""

echo "== two read-only servers share the image with QEMU's readers"
serve_bg ro1 -r -- file="$img"
serve_bg ro2 -r -- file="$img"
[[ $(locked_bytes "$img") == "$reader" ]] || fail "read-only locks: '$(locked_bytes "$img")'"
nbdinfo --size "$(bg_uri ro1)" >/dev/null && nbdinfo --size "$(bg_uri ro2)" >/dev/null ||
  fail "nbdinfo on the read-only servers"
qemu-img info "$img" >/dev/null || fail "qemu-img info beside read-only servers"
out=$(qemu-io -f qed -r -c 'read -P 0x67 3M 4k' "$img" 2>&1) && ! grep -q 'verification' <<<"$out" ||
  fail "qemu-io -r beside read-only servers: $out"
qemu_locked_out qemu-io -f qed -c 'write 0 4k' "$img"
refuses --rw file="$img" || fail "served read-write beside read-only servers"
lock_refusal_ok "$img" 'failed to get "write" lock'
stop_bg ro1
stop_bg ro2

echo "== the filter takes no locks"
rm -f "$tmp/sock"
qed_nbdkit -U "$tmp/sock" --filter="$filter_so" file "$img" qed-backing="$base" \
  --run "nbdinfo --size \"\$uri\" >/dev/null &&
         qemu-io -f qed -c 'read -P 0x67 3M 4k' '$img' &&
         qemu-io -f raw -c 'write -P 0x11 4k 4k' '$base'" >/dev/null ||
  fail "QEMU's tools could not open files the filter reads"

echo "== locking= values"
refuses file="$img" locking=maybe || fail "locking=maybe accepted"
grep -q "locking: 'maybe' is not auto, on or off" "$nbdkit_err" || fail "locking=maybe message"

if [[ -n $preload ]]; then
  echo "== a file system without OFD locks: auto serves unlocked and says so, on refuses"
  export QED_SYSCALL_PATH=$img QED_SYSCALL_FAIL=lock:1+:ENOLCK
  LD_PRELOAD=$preload serve_ro "$img" 'nbdinfo --size "$uri" >/dev/null' ||
    fail "locking=auto on a file system without OFD locks"
  grep -qF "$img: the file system does not support OFD locks" "$nbdkit_err" ||
    fail "no log line for the image served unlocked"
  grep -qF "$base: the file system does not support OFD locks" "$nbdkit_err" &&
    fail "the base (not on that file system) was said to be unlocked"
  LD_PRELOAD=$preload refuses file="$img" locking=on || fail "locking=on served without locks"
  grep -qF "$img: the file system does not support OFD locks (locking: No locks available), so the image cannot be locked; locking=off opens it without locks" \
    "$nbdkit_err" || fail "the locking=on refusal"
  unset QED_SYSCALL_PATH QED_SYSCALL_FAIL
fi
echo "test-locking: OK"
