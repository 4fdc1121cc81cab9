#!/usr/bin/env bash
# The randomized differential test (write_random.py, 4 connections, several requests
# in flight on each) on overlays whose raw backing file is on an NBD server: nbdkit's
# memory plugin, filled with random data and holes, on a Unix socket.  The overlay is
# made by the plugin (create=true backing=URI); the model reads the base through NBD
# (--backing-uri).  Then the export must equal the model, qemu-img check must be
# clean, qemu (opening the same URI) must read the model, and what qemu-io writes
# must read back through the plugin.
#
# The seed is random unless QED_WRITE_SEED is set; QED_WRITE_REQUESTS sets the
# number of requests per image (3000).
source "$(dirname "$0")/nbd-functions.sh" "$@"
requires /usr/bin/python3 -c 'import nbd'

random_run test-nbd-random 3000

# The base: 24 MiB + 1024 bytes in memory, random data with two holes.
random_base seed.raw
start_base base memory "$base_size"
base=$(bg_uri base)
nbdcopy seed.raw "$base" || fail "filling the base"
rm -f seed.raw

# qemu_writes IMAGE REF "OFFSET LENGTH BYTE"...: whole clusters (a partial qemu
# write into a zero cluster copies backing data around it: QEMU bug 4), mirrored
# in REF.
qemu_writes() {
  local image=$1 ref=$2 w writes=() t=()
  shift 2
  for w in "$@"; do
    read -r -a t <<<"$w"
    writes+=("write -P ${t[2]} ${t[0]} ${t[1]}")
  done
  qio_ok "$image" "${writes[@]}"
  # shellcheck disable=SC2068
  /usr/bin/python3 "$here/write_random.py" --patch "$ref" $@
}

# run_case NAME SIZE CLUSTER TABLE
run_case() {
  local name=$1 size=$2 cs=$3 ts=$4
  local s=$(( (seed + $(cksum <<<"$name" | cut -d" " -f1)) % 1000000007 ))
  local img=$name.qed
  echo "== $name: size $size, cluster $cs, table $ts, base $base (seed $s)"
  rm -f "$img" ref.raw ref.raw.windows out.raw
  serve_rw "$img" "/usr/bin/python3 '$here/write_random.py' \"\$uri\" ref.raw $s $nreq \
                     --cluster-size $cs --table-size $ts --backing-uri '$base' &&
                   nbdcopy \"\$uri\" out.raw" \
    create=true size="$size" cluster-size="$cs" table-size="$ts" backing="$base" \
    backing-format=raw allow-backing=network backing-connections=4 ||
    fail "$name: random requests failed (seed $s)"
  same_raw ref.raw out.raw || fail "$name: the export differs from the model (seed $s)"
  /usr/bin/python3 "$here/write_qemu_check.py" "$img" || fail "$name: qemu-img check (seed $s)"
  qemu-img compare -q -f qed -F raw "$img" ref.raw ||
    fail "$name: qemu reads the image differently from the model (seed $s)"

  local writes=("0 $cs 0x5c" "$((3 * cs)) $((2 * cs)) 0x3d" "$((12 * MiB)) $cs 0x77"
                "$(( (size - 1) / cs * cs )) $(( size - (size - 1) / cs * cs )) 0x99")
  qemu_writes "$img" ref.raw "${writes[@]}"
  rm -f out.raw
  serve_ro "$img" 'nbdcopy "$uri" out.raw' allow-backing=network ||
    fail "$name: nbdcopy after qemu-io writes"
  same_raw ref.raw out.raw || fail "$name: after qemu-io writes the plugin reads something else"
  qemu-img compare -q -f qed -F raw "$img" ref.raw || fail "$name: qemu-io writes: qemu reads something else"
  rm -f "$img" ref.raw ref.raw.windows out.raw
}

run_case c64k $((32 * MiB + 512)) 65536 4
run_case c4k-t8 $((40 * MiB + 1536)) 4096 8
stop_bg base
echo "test-nbd-random: PASS (seed $seed)"
