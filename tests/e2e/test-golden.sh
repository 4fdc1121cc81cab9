#!/usr/bin/env bash
# Golden images (issue 20): copy-on-read=true and stream=true over a local and an
# NBD base, at cluster sizes 4K, 64K, 2M and 64M (QEMU cannot open 64M-cluster
# images, see docs/qemu-qed-findings: there the plugin reads the result back).  Copy-on-read: a region read three
# times is fetched from the base once (counted at the NBD base's log), reads right,
# and is in the image afterwards (it reads right with the backing link cut).
# Stream: with a client write in the image first, the stream copies the rest,
# detaches, says so in the log and in new clients' export description; then
# qemu-img info shows no backing file, qemu-img check is clean and qemu-img compare
# matches the base with the write.  Refusals: -r, allow-backing=false, stream-rate
# without stream.
source "$(dirname "$0")/nbd-functions.sh" "$@"
requires /usr/bin/python3 -c 'import nbd'

size=$((24 * MiB))
# Data in [0, 2M), [5M, 6M), [16M, 24M); holes elsewhere (more than a quarter).
sparse_base base.raw $size "0 2" "5 1" "16 8"
start_base nbdbase -r --filter=log file base.raw logfile="$tmp/nbdbase.log"

# The region read three times: across the edges of the data at [5M, 6M).
region_at=$((5 * MiB - 3000))
region_len=$((MiB + 8000))

read_region_thrice='
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
at, n = int(sys.argv[2]), int(sys.argv[3])
want = open("base.raw", "rb").read()[at:at + n]
for _ in range(3):
    if h.pread(n, at) != want:
        sys.exit("copy-on-read: the region read wrong")
h.shutdown()
'

write_mine='
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(open("mine.bin", "rb").read(), int(sys.argv[2]))
h.flush()
h.shutdown()
'

# covering CLUSTER-BYTES: bytes of the clusters covering the region, within the base.
covering() {
  local cs=$1 from to
  from=$((region_at / cs * cs))
  to=$(((region_at + region_len + cs - 1) / cs * cs))
  ((to <= size)) || to=$size
  echo $((to - from))
}

# overlay FILE CLUSTER-BYTES BACKING ARGS...: a new empty overlay; by the plugin for
# 64M clusters, which qemu-img cannot create.
overlay() {
  local file=$1 csb=$2 backing=$3
  shift 3
  rm -f "$file"
  if ((csb < 4 * MiB)); then
    qemu-img create -q -f qed -o cluster_size="$csb" -b "$backing" -F raw "$file" $size
  else
    serve_rw "$file" true create=true cluster-size="$csb" backing="$backing" backing-format=raw "$@"
  fi
}

# read_back FILE OUT: the virtual disk of a standalone FILE, through the plugin.
read_back() {
  serve_ro "$1" "nbdcopy \"\$uri\" $2" allow-backing=false
}

for cs in 4K 64K 2M 64M; do
  csb=$(numfmt --from=iec "$cs")
  for where in local nbd; do
    echo "== cluster size $cs, $where base"
    args=()
    backing=$tmp/base.raw
    if [[ $where == nbd ]]; then
      backing=$(bg_uri nbdbase)
      args=(allow-backing=network)
    fi

    # Copy-on-read.
    overlay cor.qed "$csb" "$backing" "${args[@]}"
    before=$(read_bytes nbdbase.log)
    serve_rw cor.qed "/usr/bin/python3 -c '$read_region_thrice' \"\$uri\" $region_at $region_len" \
      copy-on-read=true "${args[@]}" || fail "copy-on-read ($cs, $where)"
    if [[ $where == nbd ]]; then
      fetched=$(($(read_bytes nbdbase.log) - before))
      want=$(covering "$csb")
      echo "fetched from the base: $fetched bytes for a region of $region_len read 3 times (its clusters: $want)"
      ((fetched >= region_len && fetched * 10 <= want * 11)) ||
        fail "copy-on-read fetched $fetched bytes, not the clusters once ($want)"
    fi
    if ((csb < 4 * MiB)); then
      qemu-img check -q cor.qed || fail "qemu-img check after copy-on-read ($cs, $where)"
      # Cut the backing link: the region must read right from the image alone.
      qemu-img rebase -q -u -f qed -b "" cor.qed
      qemu-img convert -f qed -O raw cor.qed cor.raw
      cmp -n $region_len -i $region_at:$region_at cor.raw base.raw ||
        fail "copy-on-read: the region is not in the image ($cs, $where)"
    fi

    # Stream and detach, after a client write of its own.
    overlay st.qed "$csb" "$backing" "${args[@]}"
    cp base.raw want.raw
    head -c 70000 /dev/urandom >mine.bin
    dd if=mine.bin of=want.raw bs=1 seek=$((17 * MiB + 11)) conv=notrunc status=none
    serve_rw st.qed "/usr/bin/python3 -c '$write_mine' \"\$uri\" $((17 * MiB + 11))" \
      "${args[@]}" || fail "writing before the stream ($cs, $where)"
    serve_bg st -- file=st.qed stream=true "${args[@]}"
    wait_line "$tmp/st.err" 'stream: done: the image is standalone' 120
    described=$(nbdinfo "$(bg_uri st)")
    grep -q 'description:.*standalone' <<<"$described" ||
      fail "the export description does not say standalone: $described"
    stop_bg st
    grep -Eq 'stream: streamed .* of .* \(100%\)' "$tmp/st.err" || fail "no progress line"
    if ((csb < 4 * MiB)); then
      info=$(qemu-img info st.qed)
      ! grep -qi 'backing file' <<<"$info" || fail "qemu-img info still shows a backing file: $info"
      qemu-img check -q st.qed || fail "qemu-img check after the stream ($cs, $where)"
      qemu-img compare -q -f qed -F raw st.qed want.raw || fail "stream: content ($cs, $where)"
    else
      rm -f st.raw
      read_back st.qed st.raw || fail "the streamed image does not open standalone ($cs, $where)"
      cmp st.raw want.raw || fail "stream: content ($cs, $where)"
    fi
  done
done

# Refusals, with the reason.
qemu-img create -q -f qed -b "$tmp/base.raw" -F raw top.qed $size
refuses file=top.qed copy-on-read=true
grep -q 'copy-on-read=true: nbdkit runs with -r' "$nbdkit_err" || fail "no reason for the -r refusal"
refuses file=top.qed stream=true
refuses --rw file=top.qed stream-rate=1M
grep -q 'stream-rate only applies with stream=true' "$nbdkit_err" || fail "stream-rate alone"
refuses --rw file=top.qed stream=true allow-backing=false
echo PASS
