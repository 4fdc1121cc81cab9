#!/usr/bin/env bash
# fuzz-timed.sh TARGET CORPUS MAX_LEN ARTIFACTS: fuzz the libFuzzer binary TARGET
# for QED_FUZZ_SECONDS (default 60) from the seed corpus CORPUS (only read: new
# inputs go to a scratch folder, removed at the end); an input that fails is
# written under ARTIFACTS. The test fails when libFuzzer does: a crash, a
# sanitizer report (UBSan does not recover in this build), a leak, a fuzz
# finding (an abort), 30 s on one input or 2 GiB of memory all end it with a
# non-zero status. Prints one line, "fuzz TARGET: ...", with libFuzzer's own
# count of runs (scripts/test.sh shows it).
set -uo pipefail
target=$1 corpus=$2 max_len=$3 artifacts=$4
secs=${QED_FUZZ_SECONDS:-60}
name=$(basename "$target")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/new"
rc=0
timeout -k 10 $((secs + 120)) "$target" -max_total_time="$secs" -timeout=30 \
  -rss_limit_mb=2048 -max_len="$max_len" -error_exitcode=1 -print_final_stats=1 \
  -artifact_prefix="$artifacts/" "$scratch/new" "$corpus" >"$scratch/log" 2>&1 || rc=$?
done_line=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$scratch/log" | tail -1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$scratch/log")
if [[ $rc -eq 0 ]]; then
  echo "fuzz $name: ${done_line:-no runs}(s), ${rate:-?} exec/s, clean"
  exit 0
fi
tail -60 "$scratch/log"
echo "fuzz $name: FAILED (status $rc; the input is under $artifacts/)"
exit 1
