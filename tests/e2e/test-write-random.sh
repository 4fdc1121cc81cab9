#!/usr/bin/env bash
# Randomized differential test of the write path.  For several geometries (and a raw
# backing file of random data) an image is created through the plugin and served
# once; write_random.py opens 4 connections and runs random pwrite/zero/trim/flush/
# pread/block-status requests from 4 threads, several in flight on each, checking
# every read against a reference model.  Then the whole export must equal the
# model, qemu-img check must be clean and qemu must read the same bytes; qemu-io
# writes into the image must then read back through the plugin.
#
# The seed is random unless QED_WRITE_SEED is set; it is printed, and a failure
# names it.  QED_WRITE_REQUESTS sets the number of requests per image (3000).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/functions.sh" "$@"
requires /usr/bin/python3 -c 'import nbd'

random_run test-write-random 3000

KiB=1024 MiB=$((1024 * 1024)) GiB=$((1024 * 1024 * 1024))


need_check_clear() {
  local f
  f=$(peek "$1" 16 8)
  (( (f & 2) == 0 )) || fail "$1: NEED_CHECK still set after a clean shutdown (features $f)"
}

# qemu_writes IMAGE REF "OFFSET LENGTH BYTE"...: write with one qemu-io run, and
# mirror the writes in REF.
qemu_writes() {
  local image=$1 ref=$2 w out args=() triples=()
  shift 2
  for w in "$@"; do
    read -r -a triples <<<"$w"
    args+=(-c "write -P ${triples[2]} ${triples[0]} ${triples[1]}")
  done
  out=$(qemu-io -f qed "${args[@]}" "$image" 2>&1) || { echo "$out" >&2; fail "qemu-io write on $image"; }
  if grep -q 'failed' <<<"$out"; then echo "$out" >&2; fail "qemu-io write on $image"; fi
  # shellcheck disable=SC2068
  /usr/bin/python3 "$here/write_random.py" --patch "$ref" $@
}

# qemu_same IMAGE REF: qemu reads IMAGE (with its backing file) as REF.  QEMU 7.2's
# block status aborts on images with an allocated L2 table whose unallocated tail is
# >= 4 GiB (see write_qemu_read.py), which rules out qemu-img compare there: then
# read the windows the test wrote to through qemu-nbd.
qemu_same() {
  local l2span=$((cs * ts * cs / 8))
  if (( l2span > 4 * GiB && size > 4 * GiB )); then
    /usr/bin/python3 "$here/write_qemu_read.py" "$1" "$2" "$2.windows"
  else
    qemu-img compare -q -f qed -F raw "$1" "$2"
  fi
}

# run_case NAME SIZE CLUSTER TABLE [BACKING.raw]
run_case() {
  local name=$1 size=$2 cs=$3 ts=$4 backing=${5:-}
  local s=$(( (seed + $(cksum <<<"$name" | cut -d" " -f1)) % 1000000007 ))
  local img=$name.qed args=(create=true size="$size" cluster-size="$cs" table-size="$ts")
  local pyargs=(--cluster-size "$cs" --table-size "$ts")
  if [[ -n $backing ]]; then
    args+=(backing="$backing" backing-format=raw)
    pyargs+=(--backing "$backing")
  fi
  echo "== $name: size $size, cluster $cs, table $ts${backing:+, backing $backing} (seed $s)"
  rm -f "$img" ref.raw ref.raw.windows out.raw
  serve_rw "$img" "/usr/bin/python3 '$here/write_random.py' \"\$uri\" ref.raw $s $nreq ${pyargs[*]} &&
                   nbdcopy \"\$uri\" out.raw" "${args[@]}" ||
    fail "$name: random requests failed (seed $s)"
  same_raw ref.raw out.raw || fail "$name: the export differs from the model (seed $s)"
  if (( ts == 1 )); then
    need_check_clear "$img"
    # QEMU cannot open table_size=1 images (docs/compared-with-qemu.md).
    rm -f "$img" ref.raw ref.raw.windows out.raw
    return
  fi
  /usr/bin/python3 "$here/write_qemu_check.py" "$img" || fail "$name: qemu-img check (seed $s)"
  qemu_same "$img" ref.raw || fail "$name: qemu reads the image differently from the model (seed $s)"

  # qemu writes into the image the plugin wrote; the plugin must read them.
  local l2span=$((cs * ts * cs / 8))
  local writes=("777 5000 0x5c" "$((cs - 100)) $((cs + 200)) 0x3d"
                "$(( (size - 70000) / 512 * 512 )) 4096 0x77" "$((size - 1000)) 1000 0x99")
  if (( l2span < size )); then
    writes+=("$((l2span - 3000)) 9000 0xe1")
  fi
  if [[ -n $backing ]]; then
    # Whole clusters only: a partial qemu write into a zero cluster would copy
    # backing data into the rest of it (a QEMU bug: docs/compared-with-qemu.md).
    local i w
    for i in "${!writes[@]}"; do
      read -r -a w <<<"${writes[i]}"
      w[1]=$(( ((w[0] + w[1] + cs - 1) / cs * cs < size ? (w[0] + w[1] + cs - 1) / cs * cs : size)
               - w[0] / cs * cs ))
      w[0]=$(( w[0] / cs * cs ))
      writes[i]="${w[*]}"
    done
  fi
  qemu_writes "$img" ref.raw "${writes[@]}"
  rm -f out.raw
  serve_ro "$img" 'nbdcopy "$uri" out.raw' || fail "$name: nbdcopy after qemu-io writes"
  same_raw ref.raw out.raw || fail "$name: after qemu-io writes the plugin reads something else"
  qemu_same "$img" ref.raw || fail "$name: qemu-io writes: qemu reads something else"
  /usr/bin/python3 "$here/write_qemu_check.py" "$img" || fail "$name: qemu-img check after qemu-io"
  rm -f "$img" ref.raw ref.raw.windows out.raw
}

run_case default $((4 * GiB + MiB + 512)) 65536 4
run_case c4k-t8 $((40 * MiB + 1536)) 4096 8
run_case c4k-t1 $((10 * MiB + 512)) 4096 1
run_case c1m-t2 $((300 * GiB)) $MiB 2

# Raw backing files of random data, not a multiple of 512 bytes, shorter than the
# image; the image size is not a multiple of the cluster size.
head -c $((24 * MiB + 1000)) /dev/urandom >base.raw
run_case backing-c4k $((32 * MiB + 512)) 4096 4 base.raw
head -c $((3 * MiB + 1000)) /dev/urandom >base.raw
run_case backing-c64k $((8 * MiB + 4096)) 65536 4 base.raw
echo "test-write-random: PASS (seed $seed)"
