# Golden images (issue 20): copy-on-read and stream-and-detach, against
# qemu-nbd with QEMU's copy-on-read driver and against nbdcopy. Sourced by
# bench.sh (helpers of bench/lib.sh: start_server, stop_server, run_client,
# fio_run, record, fail); section "golden" of --only, workloads golden-cor,
# golden-stream and golden-read-during-stream.
#
# The base: the random data with a quarter of it holes (the last quarter of
# every sixteenth of the disk punched out), served read-only by nbdkit's file
# plugin on Unix sockets: with the log filter for copy-on-read, so that the
# bytes each server fetches are counted at the base; without it for the
# stream (a line per request would weigh on a whole-disk copy).
#   golden-cor
#           an empty overlay with copy-on-read (ours: copy-on-read=true;
#           qemu-nbd: --image-opts driver=copy-on-read); a client reads the
#           same region (a quarter of the disk, holes included) three times;
#           bytes fetched at the base over the region (target: 1.1 at most).
#   golden-stream
#           ours: stream=true on an empty overlay, from nbdkit's start to the
#           log's "standalone" line; nbdcopy: the same base to a local file
#           (target: ours within 1.2x of nbdcopy's time).
#   golden-read-during-stream
#           fio 4k random read QD32 on an empty overlay, with a stream running
#           (stream-rate set so that it lasts the fio run) and without.
# Peak RSS for each: VmHWM of the server, /usr/bin/time's maximum RSS of
# nbdcopy.  bench/report.py makes the tables from the records.

declare -A GOLD=()   # WORKLOAD,SERVER,METRIC -> the values so far (for the log)

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

golden_add() {  # golden_add WORKLOAD SERVER METRIC VALUE: record it
  record "$@"
  GOLD[$1,$2,$3]="${GOLD[$1,$2,$3]:-} $4"
}

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
  golden_add golden-cor "$kind" mibs "$(mibs $((3 * GOLDEN_LEN)) "$t0")"
  stop_server
  OURS_EXTRA=()
  [ "$SRV_RC" = 0 ] || { CASE_ERR="server exited with status $SRV_RC"; return 1; }
  golden_add golden-cor "$kind" fetched-per-region "$(awk -v f="$(($(golden_fetched) - before))" -v r="$GOLDEN_LEN" 'BEGIN { printf "%.3f", f / r }')"
  golden_add golden-cor "$kind" rss-kib "$SRV_HWM_KB"
}

golden_stream_ours() {
  local img=$WORK/golden-stream.qed t0 i
  rm -f "$img"
  qed_create -b "$GOLDEN_BASE_URI" -F raw "$img" || return 1
  OURS_EXTRA=(allow-backing=network stream=true)
  # Dirty pages of the earlier cases are written back before the clock starts,
  # as for nbdcopy below (start_server's own sync then finds nothing to do).
  [ "$SYNC" = 1 ] && sync -f "$WORK"
  t0=$(now)
  start_server ours "$img" || return 1
  OURS_EXTRA=()
  for ((i = 0; i < 180000; i++)); do   # up to 30 min
    grep -q 'stream: done: the image is standalone' "$SRV_LOG" && break
    is_alive "$SRV_PID" || break
    sleep 0.01
  done
  local secs; secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
  stop_server
  grep -q 'stream: done: the image is standalone' "$SRV_LOG" ||
    { CASE_ERR="the stream did not finish: $(tail -n 3 "$SRV_LOG" | tr '\n' ' ')"; return 1; }
  golden_add golden-stream ours seconds "$secs"
  golden_add golden-stream ours rss-kib "$SRV_HWM_KB"
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
  golden_add golden-stream "$key" seconds "$secs"
  golden_add golden-stream "$key" rss-kib "$(sed -n 's/^maxrss //p' "$WORK/client.log" | tail -n 1)"
  rm -f "$out"
}

# golden_during STREAMING: fio 4k random read on an empty overlay, with or
# without a stream (rate-limited to last about the run).
golden_during() {
  local streaming=$1 img=$WORK/golden-during.qed key=ours
  rm -f "$img"
  qed_create -b "$GOLDEN_BASE_URI" -F raw "$img" || return 1
  OURS_EXTRA=(allow-backing=network)
  if [ "$streaming" = 1 ]; then
    OURS_EXTRA+=(stream=true stream-rate="$GOLDEN_RATE")
    key=ours+stream
  fi
  start_server ours "$img" || return 1
  OURS_EXTRA=()
  fio_run randread timed "$SIZE_B" || { CASE_ERR="fio failed"; stop_server; return 1; }
  stop_server
  golden_add golden-read-during-stream "$key" iops "$CASE_VAL"
  golden_add golden-read-during-stream "$key" rss-kib "$SRV_HWM_KB"
  rm -f "$img"
}

golden_try() {   # golden_try WORKLOAD SERVER CMD...: run it if selected, record a failure
  want "$1" || return 0
  CASE_ERR=''
  "${@:3}" || fail "$1" "$2" "${CASE_ERR:-failed}"
}

run_golden() {
  want golden-cor golden-stream golden-read-during-stream || return 0
  local base_pid log_uri plain_pid plain_uri kind
  golden_base || { fail golden base "could not make the base"; return; }
  log "golden images: $SIZE base (a quarter holes) on an NBD server, copy-on-read and stream"
  GOLDEN_BASE_LOG=$WORK/golden-base.requests
  : >"$GOLDEN_BASE_LOG"
  start_server base-log "$WORK/golden-base.raw" || { fail golden base "base server: $CASE_ERR"; return; }
  base_pid=$SRV_PID log_uri=$SRV_URI
  # The stream and the reads during it: a base without the log filter, whose
  # line per request would weigh on the many requests of a whole-disk copy.
  if ! start_server base "$WORK/golden-base.raw"; then
    fail golden base "plain base server: $CASE_ERR"
    SRV_PID=$base_pid; stop_server; return
  fi
  plain_pid=$SRV_PID plain_uri=$SRV_URI
  GOLDEN_AT=$((SIZE_B / 8)) GOLDEN_LEN=$((SIZE_B / 4))
  GOLDEN_RATE=$((SIZE_B * 3 / 4 / RUNTIME))
  fact golden-region-bytes "$GOLDEN_LEN"; fact golden-stream-rate "$GOLDEN_RATE"
  for ((REP = 1; REP <= REPEAT; REP++)); do
    GOLDEN_BASE_URI=$log_uri
    for kind in ours qemu; do golden_try golden-cor "$kind" golden_cor "$kind"; done
    GOLDEN_BASE_URI=$plain_uri
    golden_try golden-stream ours golden_stream_ours
    golden_try golden-stream nbdcopy golden_stream_nbdcopy
    golden_try golden-stream nbdcopy-flush golden_stream_nbdcopy --flush
    golden_try golden-read-during-stream ours golden_during 0
    golden_try golden-read-during-stream ours+stream golden_during 1
    log "  repeat $REP: cor fetched/region ours${GOLD[golden-cor,ours,fetched-per-region]:-}" \
        "qemu${GOLD[golden-cor,qemu,fetched-per-region]:-};" \
        "stream s ours${GOLD[golden-stream,ours,seconds]:-} nbdcopy${GOLD[golden-stream,nbdcopy,seconds]:-};" \
        "IOPS without${GOLD[golden-read-during-stream,ours,iops]:-}" \
        "during${GOLD[golden-read-during-stream,ours+stream,iops]:-}"
  done
  REP=1
  SRV_PID=$plain_pid
  stop_server
  SRV_PID=$base_pid
  stop_server
}
