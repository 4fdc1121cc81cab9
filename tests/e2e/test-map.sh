#!/usr/bin/env bash
# Extents (NBD block status, base:allocation): the plugin's map must equal
# qemu-nbd's for images without a backing file, after merging adjacent ranges of the
# same type on both sides (qemu splits runs at L2 table boundaries and at physical
# discontinuities).  With a backing file, unallocated areas must report the backing
# file's status.  Single-extent queries (REQ_ONE) at unaligned offsets must agree
# with the full map.
source "$(dirname "$0")/functions.sh" "$@"
requires qemu-nbd --version
requires /usr/bin/python3 -c 'import nbd'

# normalise: "start length type" lines, adjacent ranges of the same type merged.
normalise() {
  awk '
    NF >= 3 {
      start = $1 + 0; len = $2 + 0; type = $3 + 0
      if (n > 0 && type == t && start == s + l) { l += len; next }
      if (n > 0) printf "%d %d %d\n", s, l, t
      s = start; l = len; t = type; n++
    }
    END { if (n > 0) printf "%d %d %d\n", s, l, t }'
}

plugin_map() {  # plugin_map IMAGE > map
  serve_ro "$1" 'nbdinfo --map "$uri"' >"$tmp/map.raw" || fail "$1: nbdinfo --map through the plugin"
  normalise <"$tmp/map.raw"
}

qemu_map() {
  nbdinfo --map -- [ qemu-nbd -r -f qed "$1" ] >"$tmp/map.raw" || fail "$1: nbdinfo --map via qemu-nbd"
  normalise <"$tmp/map.raw"
}

# check_req_one IMAGE MAPFILE: block status with REQ_ONE at assorted offsets through
# the plugin; the first extent's type must match MAPFILE at that offset, and it must
# not extend past the end of the merged range holding the offset.
check_req_one() {
  local image=$1 map=$2
  export MAPFILE="$map"
  serve_ro "$image" 'export uri; /usr/bin/python3 -c "
import nbd, os, random
ranges = [tuple(map(int, l.split())) for l in open(os.environ[\"MAPFILE\"])]
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(os.environ[\"uri\"])
size = h.get_size()
rng = random.Random(1234)
offsets = [0, size - 1] + [rng.randrange(size) for _ in range(150)]
offsets += [s for s, l, t in ranges] + [s + l - 1 for s, l, t in ranges]
offsets += [s - 1 for s, l, t in ranges if s > 0]
for off in offsets:
    want = next((s, l, t) for s, l, t in ranges if s <= off < s + l)
    got = []
    def cb(ctx, o, entries, err):
        got.extend(entries)
        return 0
    count = min(size - off, 3 * 1024 * 1024)
    h.block_status(count, off, cb, nbd.CMD_FLAG_REQ_ONE)
    assert len(got) >= 2, (off, got)
    length, typ = got[0], got[1]
    assert typ == want[2], \"offset %d: type %d, map says %s\" % (off, typ, want)
    assert 0 < length <= want[0] + want[1] - off, \"offset %d: length %d, map says %s\" % (off, length, want)
h.shutdown()
print(\"REQ_ONE: %d offsets ok\" % len(offsets))
"' || fail "$image: REQ_ONE block status disagrees with the map"
}

# compare_with_qemu IMAGE
compare_with_qemu() {
  local image=$1
  plugin_map "$image" >"$tmp/plugin.map"
  qemu_map "$image" >"$tmp/qemu.map"
  if ! diff -u "$tmp/qemu.map" "$tmp/plugin.map"; then
    fail "$image: extents differ from qemu-nbd (- qemu, + plugin)"
  fi
  check_req_one "$image" "$tmp/plugin.map"
}

map_geometry() {
  local cs=$1 ts=$2 size=$3
  local img="$tmp/m-$cs-$ts.qed"
  local l2span=$(( ts * cs / 8 * cs ))
  echo "== cluster_size=$cs table_size=$ts image_size=$size"
  qemu-img create -q -f qed -o "cluster_size=$cs,table_size=$ts" "$img" "$size"
  compare_with_qemu "$img"      # fully unallocated
  local cmds=(
    "write -P 0x11 0 $(( cs + 100 ))"                    # data, partial second cluster
    "write -z $(( 4 * cs )) $(( 2 * cs ))"               # zero clusters
    "write -P 0x22 $(( 6 * cs )) $cs"                    # data right after zero clusters
    "write -z $(( 10 * cs + 10 )) 100"                   # unaligned zero write: data cluster
    "write -P 0x33 $(( 20 * cs )) $(( 3 * cs ))"
    "write -P 0x44 $(( 16 * cs )) $(( 2 * cs ))"          # physically after 20..23
    "write -z $(( 21 * cs )) $cs"                        # zeroes inside allocated data: stays data
    "write -P 0x55 $(( size - 100 )) 100"                # last cluster (maybe partial)
  )
  if (( l2span + 4 * cs < size )); then
    cmds+=(
      "write -P 0x66 $(( l2span - cs )) $(( 2 * cs ))"   # data across an L2 boundary
      "write -z $(( l2span + 2 * cs )) $(( 2 * cs ))"
    )
  fi
  qio_ok "$img" "${cmds[@]}"
  compare_with_qemu "$img"
  rm -f "$img"
}

map_geometry 4096    4  $(( 20 * 1024 * 1024 + 512 ))
map_geometry 65536   4  $(( 64 * 1024 * 1024 ))
map_geometry 2097152 8  $(( 50 * 1024 * 1024 + 512 ))

# Backing files: where the overlay is unallocated, the backing file's status shows
# through; the overlay's zero clusters hide backing data.
echo "== qed backing file"
qemu-img create -q -f qed -o cluster_size=65536 base.qed 2M
qio_ok base.qed "write -P 0x77 0 $((192 * KiB))" "write -z $((256 * KiB)) $((64 * KiB))"
qemu-img create -q -f qed -o cluster_size=65536 -b base.qed -F qed top.qed 2M
qio_ok top.qed "write -z 0 $((64 * KiB))" "write -P 0x78 $((512 * KiB)) $((64 * KiB))"
cat >expected.map <<EOM
0 $((64 * KiB)) 3
$((64 * KiB)) $((128 * KiB)) 0
$((192 * KiB)) $((320 * KiB)) 3
$((512 * KiB)) $((64 * KiB)) 0
$((576 * KiB)) $((2048 * KiB - 576 * KiB)) 3
EOM
plugin_map top.qed >plugin.map
diff -u expected.map plugin.map || fail "top.qed (qed backing): unexpected extents (- expected, + plugin)"
check_req_one top.qed plugin.map

echo "== raw backing file (fully written, shorter than the overlay)"
head -c $((128 * KiB)) /dev/zero | tr '\0' '\132' >base.raw
qemu-img create -q -f qed -o cluster_size=65536 -b base.raw -F raw rtop.qed 1M
qio_ok rtop.qed "write -z $((64 * KiB)) $((64 * KiB))" "write -P 0x79 $((256 * KiB)) 100"
cat >expected.map <<EOM
0 $((64 * KiB)) 0
$((64 * KiB)) $((192 * KiB)) 3
$((256 * KiB)) $((64 * KiB)) 0
$((320 * KiB)) $((1024 * KiB - 320 * KiB)) 3
EOM
plugin_map rtop.qed >plugin.map
diff -u expected.map plugin.map || fail "rtop.qed (raw backing): unexpected extents (- expected, + plugin)"
check_req_one rtop.qed plugin.map

echo "PASS"
