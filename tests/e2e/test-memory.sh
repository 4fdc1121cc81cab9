#!/usr/bin/env bash
# cache-size is a promise about memory (issue 18): nbdkit's peak resident memory
# (VmHWM) stays within the cache budget plus the constant the man page documents
# (LIMITS, Memory in nbdkit-qed-plugin(1)), whatever the requests:
#   - one byte into each L2 span, no flush: each write dirties another table
#     (before the fix, dirty tables were bounded by their dirty sectors: 512
#     bytes each, not the whole table they keep in memory);
#   - reads across every table, through the plugin and through the filter;
#   - the same writes over a raw backing file (copy-on-write of each cluster),
#     then trims and write-zeroes over the whole disk: every cluster becomes a
#     zero cluster, so every table changes entirely;
# with 4 KiB, 64 KiB and 64 MiB clusters and tables of 1 to 16 clusters.  The
# budget is cache-size, or four tables of the image when that is more (64 MiB
# clusters here): that must be logged, naming the key.  One line per pattern
# gives the figures.  Images live in RAM (ram_dir): the flushes that keep memory
# bounded then cost nothing, and what they write is small.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/functions.sh" "$@"
requires /usr/bin/python3 -c 'import nbd'
if sanitized; then
  echo "$0: SKIP: under the sanitizer, memory is the sanitizer's (shadow memory, quarantine)" >&2
  exit 77
fi

KiB=1024 MiB=$((1024 * 1024)) GiB=$((1024 * 1024 * 1024)) TiB=$((1024 ** 4)) PiB=$((1024 ** 5))
# The documented constant, and what each request in flight may add when it
# writes part of a new cluster over a backing file (the man page, LIMITS, Memory).
constant=$((32 * MiB))
cow_per_request=$((2 * MiB))
inflight=8  # requests in flight (memory_patterns.py --inflight)
failed=()   # what broke the promise: every pattern runs, then the test fails
ram_dir images

# table_bytes CS TS SIZE: the bytes of the first (largest) L2 table the engine
# keeps for an image: the entries of its span within SIZE, rounded up to a
# 512-byte sector.
table_bytes() {
  local cs=$1 ts=$2 size=$3 entries clusters
  entries=$((ts * cs / 8))
  clusters=$(((size < entries * cs ? size : entries * cs) / cs))
  clusters=$(((clusters + 63) / 64 * 64))
  echo $((8 * (clusters < entries ? clusters : entries)))
}

# measure LABEL LIMIT-EXTRA KEY CMD NBDKIT-ARGS...: serve with NBDKIT-ARGS (-P is
# added), run the pattern command CMD, and check the peak against the budget
# ($budget) plus the constant plus LIMIT-EXTRA; KEY is the cache key the log must
# name when the budget was raised above cache-size.
measure() {
  local label=$1 extra=$2 key=$3 cmd=$4 peak limit
  shift 4
  rm -f "$tmp/sock"
  qed_nbdkit -P "$peak_pidfile" "$@" --run "$(peak_rss_run "$cmd")" ||
    fail "$label: the pattern failed"
  if ((budget > cache)) && ! grep -q "$key=$cache is below what this image needs" "$nbdkit_err"; then
    failed+=("$label: the budget was raised above $key=$cache without a word in the log")
  fi
  peak=$(($(peak_rss_kib) * KiB))
  limit=$((budget + constant + extra))
  printf 'memory: %-44s peak %5d MiB, limit %5d MiB (budget %d KiB)\n' \
    "$label" $((peak / MiB)) $((limit / MiB)) $((budget / KiB))
  ((peak <= limit)) || failed+=("$label: peak memory $peak bytes is above $limit")
}

# run_geometry NAME CS TS SIZE CACHE ZERO-REQUEST ZERO-SPANS [--each-span]
run_geometry() {
  local name=$1 cs=$2 ts=$3 size=$4 cache=$5 zreq=$6 zspans=$7 each=${8:-} span t
  span=$((ts * cs / 8 * cs))
  t=$(table_bytes "$cs" "$ts" "$size")
  budget=$((4 * t > cache ? 4 * t : cache))
  local img="$images/$name.qed" ov="$images/$name-ov.qed" base="$images/$name-base.raw"
  local py="/usr/bin/python3 '$here/memory_patterns.py' \"\$uri\""
  local pat="--span $span --inflight $inflight"
  local filter_args=(--filter="$filter" file "$img" "qed-cache-size=$cache")

  qed_nbdkit -U - "$plugin" file="$img" create=true size="$size" cluster-size="$cs" \
    table-size="$ts" --run true || fail "$name: create"
  measure "$name span-writes" 0 cache-size "$py span-writes $pat" \
    -U "$tmp/sock" "$plugin" file="$img" cache-size="$cache"
  measure "$name span-reads" 0 cache-size "$py span-reads --written $pat" \
    -r -U "$tmp/sock" "$plugin" file="$img" cache-size="$cache"
  if [[ -n $filter ]]; then
    measure "$name span-reads (filter)" 0 qed-cache-size "$py span-reads --written $pat" \
      -U "$tmp/sock" "${filter_args[@]}"
  fi
  rm -f "$img"

  truncate -s "$size" "$base"
  qed_nbdkit -U - "$plugin" file="$ov" create=true backing="$base" backing-format=raw \
    cluster-size="$cs" table-size="$ts" --run true || fail "$name: create over a backing file"
  local cow=$((inflight * (cs < cow_per_request ? cs : cow_per_request)))
  measure "$name span-writes over a backing file" "$cow" cache-size "$py span-writes $pat" \
    -U "$tmp/sock" "$plugin" file="$ov" cache-size="$cache"
  measure "$name trims over a backing file" 0 cache-size \
    "$py trim $pat --request $zreq --count $zspans $each" \
    -U "$tmp/sock" "$plugin" file="$ov" cache-size="$cache"
  measure "$name zeroes over a backing file" 0 cache-size \
    "$py zero $pat --request $zreq --count $zspans $each" \
    -U "$tmp/sock" "$plugin" file="$ov" cache-size="$cache"
  rm -f "$ov" "$base"
}

# NAME CLUSTER TABLE SIZE CACHE-SIZE ZERO-REQUEST ZERO-SPANS [--each-span]: enough
# tables that they are many times the budget; trims and zeroes over the first
# ZERO-SPANS spans (all if 0; each table written back in full is memory here),
# or one request at the start of each when the spans are too large to cover.
run_geometry 4k-t1 $((4 * KiB)) 1 $((1 * GiB)) $((64 * KiB)) $GiB 0
run_geometry 4k-t16 $((4 * KiB)) 16 $((16 * GiB)) $MiB $GiB 0
run_geometry 64k-t1 $((64 * KiB)) 1 $((256 * GiB)) $MiB $GiB 0
run_geometry 64k-t4 $((64 * KiB)) 4 $((512 * GiB)) $MiB $GiB 0
run_geometry 64k-t16 $((64 * KiB)) 16 $((2 * TiB)) $((4 * MiB)) $GiB 32
# Tables of 64 MiB, more than cache-size=4M: served with four of them, logged.
run_geometry 64m-t1 $((64 * MiB)) 1 $((4 * PiB)) $((4 * MiB)) $((2 * GiB)) 8 --each-span
# One table (of 128 KiB: the image is smaller than its span), above cache-size=256K.
run_geometry 64m-t16 $((64 * MiB)) 16 $TiB $((256 * KiB)) $((2 * GiB)) 1
if ((${#failed[@]})); then
  printf '%s\n' "${failed[@]}" >&2
  fail "${#failed[@]} patterns broke the promise"
fi
echo "test-memory: every pattern stayed within its budget plus $((constant / MiB)) MiB"
