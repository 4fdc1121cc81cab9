# Golden images (issue 20): copy-on-read and stream-and-detach, against
# qemu-nbd with QEMU's copy-on-read driver and against nbdcopy. Sourced by
# bench.sh (its helpers: start_server, stop_server, run_client, fio_run,
# median, spread, ratio, log); section "golden" of --only.
#
# The base: the random data with a quarter of it holes (the last quarter of
# every sixteenth of the disk punched out), served read-only by nbdkit's file
# plugin on Unix sockets: with the log filter for copy-on-read, so that the
# bytes each server fetches are counted at the base; without it for the
# stream (a line per request would weigh on a whole-disk copy).
#   cor     an empty overlay with copy-on-read (ours: copy-on-read=true;
#           qemu-nbd: --image-opts driver=copy-on-read); a client reads the
#           same region (a quarter of the disk, holes included) three times;
#           bytes fetched at the base over the region (target: 1.1 at most).
#   stream  ours: stream=true on an empty overlay, from nbdkit's start to the
#           log's "standalone" line; nbdcopy: the same base to a local file
#           (target: ours within 1.2x of nbdcopy's time).
#   during  fio 4k random read QD32 on an empty overlay, with a stream running
#           (stream-rate set so that it lasts the fio run) and without.
# Peak RSS for each: VmHWM of the server, /usr/bin/time's maximum RSS of
# nbdcopy.

declare -A GOLD=()   # KEY -> the values of every repeat (medians reported)

golden_base() {
  local f=$WORK/golden-base.raw step i
  [ -f "$f" ] && return 0
  cp --reflink=auto "$RAND" "$f" || return 1
  step=$((SIZE_B / 16))
  for ((i = 0; i < 16; i++)); do
    fallocate -p -o $((i * step + step * 3 / 4)) -l $((step / 4)) "$f" || return 1
  done
}

# golden_fetched: bytes the base was asked to read so far (its log).
golden_fetched() {
  local n=0 c
  while read -r c; do
    n=$((n + c))
  done < <(grep -ao ' Read id=[0-9]* offset=0x[0-9a-f]* count=0x[0-9a-f]*' "$GOLDEN_BASE_LOG" |
           sed 's/.*count=//')
  echo "$n"
}

golden_add() { GOLD[$1]="${GOLD[$1]:-} $2"; }

# golden_read_thrice: the region read three times, 1 MiB at a time.
golden_read_thrice() {
  run_client "$COPY_LIMIT" "$PY" -c '
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
at, n = int(sys.argv[2]), int(sys.argv[3])
for _ in range(3):
    for off in range(at, at + n, 1 << 20):
        h.pread(min(1 << 20, at + n - off), off)
h.shutdown()' "$SRV_URI" "$GOLDEN_AT" "$GOLDEN_LEN"
}

golden_cor() {
  local kind=$1 img=$WORK/golden-cor.qed before t0
  rm -f "$img"
  qed_create -b "$GOLDEN_BASE_URI" -F raw "$img" || return 1
  before=$(golden_fetched)
  if [ "$kind" = ours ]; then
    OURS_EXTRA=(allow-backing=network copy-on-read=true)
    start_server ours "$img" || return 1
  else
    start_server qemu-cor "$img" || return 1
  fi
  t0=$(now)
  golden_read_thrice || { CASE_ERR="client failed: $(tail -n 3 "$WORK/client.log" | tr '\n' ' ')"; stop_server; return 1; }
  golden_add "cor-mibs,$kind" "$(mibs $((3 * GOLDEN_LEN)) "$t0")"
  stop_server
  OURS_EXTRA=()
  [ "$SRV_RC" = 0 ] || { CASE_ERR="server exited with status $SRV_RC"; return 1; }
  golden_add "cor-fetched,$kind" "$(awk -v f="$(($(golden_fetched) - before))" -v r="$GOLDEN_LEN" 'BEGIN { printf "%.3f", f / r }')"
  golden_add "cor-rss,$kind" "$SRV_HWM_KB"
}

golden_stream_ours() {
  local img=$WORK/golden-stream.qed t0 i
  rm -f "$img"
  qed_create -b "$GOLDEN_BASE_URI" -F raw "$img" || return 1
  OURS_EXTRA=(allow-backing=network stream=true)
  t0=$(now)
  start_server ours "$img" || return 1
  OURS_EXTRA=()
  for ((i = 0; i < 36000; i++)); do   # up to 30 min
    grep -q 'stream: done: the image is standalone' "$SRV_LOG" && break
    is_alive "$SRV_PID" || break
    sleep 0.05
  done
  local secs; secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
  stop_server
  grep -q 'stream: done: the image is standalone' "$SRV_LOG" ||
    { CASE_ERR="the stream did not finish: $(tail -n 3 "$SRV_LOG" | tr '\n' ' ')"; return 1; }
  golden_add "stream-s,ours" "$secs"
  golden_add "stream-rss,ours" "$SRV_HWM_KB"
  rm -f "$img"
}

# golden_stream_nbdcopy [--flush]: nbdcopy of the base to a local file; with
# --flush also made durable (fsync), as the stream's copy is before it ends.
golden_stream_nbdcopy() {
  local out=$WORK/golden-copy.raw t0 secs key=nbdcopy
  [ "${1:-}" = --flush ] && key=nbdcopy-flush
  rm -f "$out"
  [ "$SYNC" = 1 ] && sync -f "$WORK"
  t0=$(now)
  run_client "$COPY_LIMIT" /usr/bin/time -f 'maxrss %M' nbdcopy "$@" "$GOLDEN_BASE_URI" "$out" ||
    { CASE_ERR="nbdcopy failed: $(tail -n 3 "$WORK/client.log" | tr '\n' ' ')"; return 1; }
  secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
  golden_add "stream-s,$key" "$secs"
  golden_add "stream-rss,$key" "$(sed -n 's/^maxrss //p' "$WORK/client.log" | tail -n 1)"
  rm -f "$out"
}

# golden_during STREAMING: fio 4k random read on an empty overlay, with or
# without a stream (rate-limited to last about the run).
golden_during() {
  local streaming=$1 img=$WORK/golden-during.qed key=without
  rm -f "$img"
  qed_create -b "$GOLDEN_BASE_URI" -F raw "$img" || return 1
  OURS_EXTRA=(allow-backing=network)
  if [ "$streaming" = 1 ]; then
    OURS_EXTRA+=(stream=true stream-rate="$GOLDEN_RATE")
    key=during
  fi
  start_server ours "$img" || return 1
  OURS_EXTRA=()
  fio_run randread timed "$SIZE_B" || { CASE_ERR="fio failed"; stop_server; return 1; }
  stop_server
  golden_add "iops-$key,ours" "$CASE_VAL"
  golden_add "iops-rss-$key,ours" "$SRV_HWM_KB"
  rm -f "$img"
}

golden_try() {   # golden_try WHAT CMD...: run, log a failure
  CASE_ERR=''
  if ! "${@:2}"; then
    log "  $1: FAILED: $CASE_ERR"
    ERR[golden-$1]=${CASE_ERR:-failed}
    FAILED=1
  fi
}

run_golden() {
  want golden || return 0
  local rep base_pid log_uri plain_pid plain_uri kind
  golden_base || { ERR[golden]="could not make the base"; FAILED=1; return; }
  log "golden images: $SIZE base (a quarter holes) on an NBD server, copy-on-read and stream"
  GOLDEN_BASE_LOG=$WORK/golden-base.requests
  : >"$GOLDEN_BASE_LOG"
  start_server base-log "$WORK/golden-base.raw" || { ERR[golden]="base server: $CASE_ERR"; FAILED=1; return; }
  base_pid=$SRV_PID log_uri=$SRV_URI
  # The stream and the reads during it: a base without the log filter, whose
  # line per request would weigh on the many requests of a whole-disk copy.
  if ! start_server base "$WORK/golden-base.raw"; then
    ERR[golden]="plain base server: $CASE_ERR"; FAILED=1
    SRV_PID=$base_pid; stop_server; return
  fi
  plain_pid=$SRV_PID plain_uri=$SRV_URI
  GOLDEN_AT=$((SIZE_B / 8)) GOLDEN_LEN=$((SIZE_B / 4))
  GOLDEN_RATE=$((SIZE_B * 3 / 4 / RUNTIME))
  for ((rep = 1; rep <= REPEAT; rep++)); do
    GOLDEN_BASE_URI=$log_uri
    for kind in ours qemu; do golden_try "cor-$kind" golden_cor "$kind"; done
    GOLDEN_BASE_URI=$plain_uri
    golden_try stream-ours golden_stream_ours
    golden_try stream-nbdcopy golden_stream_nbdcopy
    golden_try stream-nbdcopy-flush golden_stream_nbdcopy --flush
    golden_try during-without golden_during 0
    golden_try during-with golden_during 1
    log "  repeat $rep: cor fetched/region ours${GOLD[cor-fetched,ours]:-} qemu${GOLD[cor-fetched,qemu]:-};" \
        "stream s ours${GOLD[stream-s,ours]:-} nbdcopy${GOLD[stream-s,nbdcopy]:-};" \
        "IOPS without${GOLD[iops-without,ours]:-} during${GOLD[iops-during,ours]:-}"
  done
  SRV_PID=$plain_pid
  stop_server
  SRV_PID=$base_pid
  stop_server
}

gmed() {  # gmed KEY: median of the repeats
  # shellcheck disable=SC2086
  median ${GOLD[$1]:-}
}
gcell() {  # gcell KEY: median [min-max], or -
  local m sp
  m=$(gmed "$1")
  [ -n "$m" ] || { echo "-"; return; }
  # shellcheck disable=SC2086
  sp=$(spread ${GOLD[$1]:-})
  echo "$m${sp:+ [$sp]}"
}
gmib() {  # gmib KEY: median RSS in MiB
  local m; m=$(gmed "$1")
  [ -n "$m" ] && awk -v k="$m" 'BEGIN { printf "%.1f", k / 1024 }' || echo "-"
}
# target_le LABEL VALUE MAX: a target met when VALUE <= MAX.
target_le() {
  local verdict=missed
  [ -z "$2" ] && verdict="not measured"
  [ -n "$2" ] && awk -v v="$2" -v m="$3" 'BEGIN { exit !(v + 0 <= m + 0) }' && verdict=met
  echo "| $1 | ${2:--} | <= $3 | $verdict |"
}

report_golden() {
  want golden || return 0
  local so sn
  echo
  echo "Golden images: a $SIZE raw base with a quarter of it holes, served by \`nbdkit -r file\` on a" \
       "Unix socket (for copy-on-read with \`--filter=log\`: bytes fetched counted in its log); empty QED" \
       "overlays over it. Medians of $REPEAT run(s) [min-max]."
  echo
  echo "| measurement | ours | qemu-nbd / nbdcopy | ours/other |"
  echo "|---|--:|--:|--:|"
  echo "| copy-on-read: bytes fetched from the base / region, region ($((GOLDEN_LEN >> 20)) MiB) read 3 times | $(gcell cor-fetched,ours) | $(gcell cor-fetched,qemu) | $(ratio "$(gmed cor-fetched,ours)" "$(gmed cor-fetched,qemu)") |"
  echo "| copy-on-read: MiB/s over the 3 reads | $(gcell cor-mibs,ours) | $(gcell cor-mibs,qemu) | $(ratio "$(gmed cor-mibs,ours)" "$(gmed cor-mibs,qemu)") |"
  echo "| copy-on-read: peak RSS (MiB) | $(gmib cor-rss,ours) | $(gmib cor-rss,qemu) | $(ratio "$(gmed cor-rss,ours)" "$(gmed cor-rss,qemu)") |"
  echo "| stream to standalone (ours) vs nbdcopy to a local file: seconds | $(gcell stream-s,ours) | $(gcell stream-s,nbdcopy) | $(ratio "$(gmed stream-s,ours)" "$(gmed stream-s,nbdcopy)") |"
  echo "| stream vs nbdcopy --flush (durable, as the stream is): seconds | $(gcell stream-s,ours) | $(gcell stream-s,nbdcopy-flush) | $(ratio "$(gmed stream-s,ours)" "$(gmed stream-s,nbdcopy-flush)") |"
  echo "| stream vs nbdcopy: peak RSS (MiB) | $(gmib stream-rss,ours) | $(gmib stream-rss,nbdcopy) | $(ratio "$(gmed stream-rss,ours)" "$(gmed stream-rss,nbdcopy)") |"
  echo
  echo "Client 4k random read IOPS, QD32, ${RUNTIME}s, on an empty overlay, during a stream (stream-rate=$GOLDEN_RATE, so that it lasts about the run) and without one:"
  echo
  echo "| measurement | during the stream | without | during/without |"
  echo "|---|--:|--:|--:|"
  echo "| IOPS | $(gcell iops-during,ours) | $(gcell iops-without,ours) | $(ratio "$(gmed iops-during,ours)" "$(gmed iops-without,ours)") |"
  echo "| peak RSS (MiB) | $(gmib iops-rss-during,ours) | $(gmib iops-rss-without,ours) | $(ratio "$(gmed iops-rss-during,ours)" "$(gmed iops-rss-without,ours)") |"
  echo
  echo "Golden-image targets:"
  echo
  echo "| measurement | value | target | |"
  echo "|---|--:|--:|---|"
  target_le "copy-on-read, ours: bytes fetched / region read 3 times" "$(gmed cor-fetched,ours)" 1.1
  so=$(gmed stream-s,ours) sn=$(gmed stream-s,nbdcopy)
  target_le "stream time, ours / nbdcopy of the same base" "$(ratio "$so" "$sn" | sed 's/^-$//')" 1.2
}
