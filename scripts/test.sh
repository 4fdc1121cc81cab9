#!/usr/bin/env bash
# Install what is missing, then build and run the whole test suite:
#   build/           normal build: unit, crash-state and end-to-end tests
#   build-sanitize/  the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   build-tsan/      unit and crash-state tests under ThreadSanitizer
#   build-tsa/       built only, with clang -Wthread-safety -Werror: every lock
#                    that GUARDED_BY / REQUIRES names (lib/thread_annotations.h)
#                    is held where it must be, or the build fails
#   build-fuzz/      libFuzzer targets (clang): each one's corpus replayed, then
#                    each fuzzed for QED_FUZZ_SECONDS (60) (tests/fuzz/meson.build)
#   bench/bench.sh --quick, a smoke run of the benchmark (it does not gate on ratios),
#                    after bench/test_report.py (the report program's unit tests)
#   debian13-build: in a fresh minimal Debian 13 chroot (scripts/debian-chroot.sh
#                    trixie serve build), the README's first command and the build
#                    of every tree above, so that a package name, an include or a
#                    warning on the current stable fails here; skipped (and said
#                    so) only when this machine cannot debootstrap at all
# The last line of output is "N passed, N failed[, N skipped]" over all of them.
# Exits non-zero if anything failed (including a failed configure or build).
#
#   test.sh --build-only   install what is missing, configure and build the five
#                          trees, run nothing; one "N passed, N failed" over the
#                          builds (what debian13-build runs in the chroot)
set -uo pipefail

build_only=false
case ${1:-} in
  --build-only) build_only=true ;;
  "") ;;
  *) echo "usage: $0 [--build-only]" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

# python3 on PATH may be a pyenv interpreter without the libnbd bindings.
export PATH="/usr/bin:/bin:$PATH"

bash "$here/install-deps.sh" --test || { echo "test: installing dependencies failed" >&2; echo "0 passed, 1 failed"; exit 1; }

build_failures=0
logs=()
# Results of the steps that are not meson tests, one "name OK|FAIL" per line.
extra=$(mktemp)
trap 'rm -f "$extra"' EXIT
test_args=()

# configure DIR [meson options...]: (re)configure DIR with exactly these options
# on top of the ones every test build shares, whatever DIR held before (serve.sh
# builds elsewhere, and an earlier run may have used other options). A folder
# that cannot be reconfigured (another meson, another compiler) is wiped.
common_options=(--buildtype=debugoptimized -Dwerror=true -Db_ndebug=if-release)
configure() {
  local dir=$1
  shift
  echo "=== $dir: configure (${common_options[*]} $*)"
  if [[ -f $dir/build.ninja ]]; then
    meson setup --reconfigure "$dir" "${common_options[@]}" "$@" ||
      meson setup --wipe "$dir" "${common_options[@]}" "$@"
  else
    rm -rf "$dir"
    meson setup "$dir" "${common_options[@]}" "$@"
  fi
}

# run_suite DIR TIMEOUT_MULTIPLIER [meson options...]
run_suite() {
  local dir=$1 mult=$2
  shift 2
  if ! configure "$dir" "$@"; then
    echo "test: meson setup $dir failed" >&2
    build_failures=$((build_failures + 1))
    return
  fi
  echo "=== $dir: build"
  if ! ninja -C "$dir"; then
    echo "test: build in $dir failed" >&2
    build_failures=$((build_failures + 1))
    return
  fi
  if $build_only; then
    echo "build-$dir OK" >>"$extra"
    return
  fi
  echo "=== $dir: test"
  rm -f "$dir/meson-logs/testlog.json"
  meson test -C "$dir" --print-errorlogs --num-processes 2 \
    --timeout-multiplier "$mult" "${test_args[@]}" || true
  # The crash-state test's count, for the record.
  grep -h '^crash states:' "$dir/meson-logs/testlog.txt" 2>/dev/null | sed "s|^|$dir: |" || true
  # The system-call-level harness's counts (crash states, fault injections).
  grep -h '^syscall [a-z]*:' "$dir/meson-logs/testlog.txt" 2>/dev/null | sed "s|^|$dir: |" || true
  if [[ -f $dir/meson-logs/testlog.json ]]; then
    logs+=("$dir/meson-logs/testlog.json")
  else
    echo "test: meson test in $dir produced no testlog.json" >&2
    build_failures=$((build_failures + 1))
  fi
}

run_suite build 1 -Dtests=true -Dsanitize=false -Dtsan=false -Dfuzz=false
run_suite build-sanitize 3 -Dtests=true -Dsanitize=true -Dtsan=false -Dfuzz=false
test_args=(--suite unit --suite crash)
run_suite build-tsan 4 -Dtests=true -Dsanitize=false -Dtsan=true -Dfuzz=false
test_args=()

# Clang's thread-safety analysis: nothing to run, the build is the check.
echo "=== build-tsa: configure and build (clang, -Wthread-safety -Werror)"
# The compiler is fixed when a folder is first configured: start afresh unless
# it is clang.
if ! grep -qs clang build-tsa/meson-info/intro-compilers.json; then
  rm -rf build-tsa
fi
if CXX=clang++ CC=clang configure build-tsa -Dtests=false -Dsanitize=false -Dtsan=false \
     -Dfuzz=false -Dcpp_args=-Wthread-safety && ninja -C build-tsa; then
  echo "build-build-tsa OK" >>"$extra"
else
  echo "test: build-tsa (clang -Wthread-safety) failed" >&2
  echo "build-build-tsa FAIL" >>"$extra"
fi

# The fuzz build's tests: each target's corpus replayed, then each target
# fuzzed for QED_FUZZ_SECONDS, one at a time (tests/fuzz/meson.build).
export QED_FUZZ_SECONDS=${QED_FUZZ_SECONDS:-60}
# The compiler is fixed when a folder is first configured: start afresh unless
# it is clang.
if ! grep -qs clang build-fuzz/meson-info/intro-compilers.json; then
  rm -rf build-fuzz
fi
CXX=clang++ run_suite build-fuzz 1 -Dtests=false -Dsanitize=false -Dtsan=false -Dfuzz=true
$build_only ||
  grep -h '^fuzz [a-z_]*:' build-fuzz/meson-logs/testlog.txt 2>/dev/null | sed "s|^|build-fuzz: |" || true

bench_smoke() {
  echo "=== benchmark report tests (bench/test_report.py)"
  if /usr/bin/python3 bench/test_report.py; then
    echo "bench-report OK" >>"$extra"
  else
    echo "bench-report FAIL" >>"$extra"
  fi
  echo "=== benchmark smoke run (bench/bench.sh --quick)"
  if [[ -x build/plugin/nbdkit-qed-plugin.so || -f build/plugin/nbdkit-qed-plugin.so ]] &&
      bash bench/bench.sh --quick --no-sync --plugin build/plugin/nbdkit-qed-plugin.so; then
    echo "bench-smoke OK" >>"$extra"
  else
    echo "bench-smoke FAIL" >>"$extra"
  fi
}

# The README's first command and every tree's build on the current Debian
# stable, from a minimal install (see scripts/debian-chroot.sh). The clone is
# of HEAD: uncommitted changes are not part of it.
debian13_build() {
  local start=$SECONDS rc reason
  echo "=== debian13-build: scripts/debian-chroot.sh trixie serve build"
  if [[ -f /etc/nbdkit-qed-debian-chroot ]]; then
    reason="this run is inside a chroot of scripts/debian-chroot.sh ($(cat /etc/nbdkit-qed-debian-chroot)), which is that check"
    echo "debian13-build: SKIP: $reason"
    echo "debian13-build SKIP $reason" >>"$extra"
    return
  fi
  rm -rf build-debian13
  mkdir build-debian13
  QED_CHROOT_LOGS=build-debian13 bash "$here/debian-chroot.sh" trixie serve build 2>&1 |
    tee build-debian13/output.log
  rc=${PIPESTATUS[0]}
  echo "debian13-build: exit status $rc in $((SECONDS - start)) s (logs in build-debian13/)"
  case $rc in
    0) echo "debian13-build OK" >>"$extra" ;;
    77)
      reason=$(sed -n 's/.*SKIP: //p' build-debian13/output.log | tail -1)
      echo "debian13-build SKIP ${reason:-see its output}" >>"$extra"
      ;;
    *) echo "debian13-build FAIL" >>"$extra" ;;
  esac
}

if ! $build_only; then
  bench_smoke
  debian13_build
fi

/usr/bin/python3 - "$build_failures" "$extra" "${logs[@]}" <<'PY'
import json, sys

build_failures = int(sys.argv[1])
passed = failed = skipped = 0
bad = []
# The end of each failed test's output, printed again just above the summary:
# a CI log that keeps only its last lines still says why.
tails = []
with open(sys.argv[2]) as extra:
    for line in extra:
        name, result, *why = line.split(None, 2)
        if result == "OK":
            passed += 1
        elif result == "SKIP":
            skipped += 1
            print("SKIPPED %s: %s" % (name, why[0].strip() if why else "see its output"))
        else:
            failed += 1
            bad.append(name + " " + result)
for path in sys.argv[3:]:
    p = f = s = 0
    with open(path) as log:
        for line in log:
            line = line.strip()
            if not line:
                continue
            t = json.loads(line)
            r = t.get("result", "")
            if r in ("OK", "EXPECTEDFAIL"):
                p += 1
            elif r == "SKIP":
                s += 1
            else:
                f += 1
                bad.append("%s: %s %s" % (path.split("/meson-logs")[0], t.get("name"), r))
                tails.append((bad[-1], (t.get("stdout") or "").splitlines()[-25:]))
    print("%s: %d passed, %d failed, %d skipped" % (path.split("/meson-logs")[0], p, f, s))
    passed += p; failed += f; skipped += s
for name, lines in tails:
    print("--- last lines of %s" % name)
    for line in lines:
        print("    " + line)
for b in bad:
    print("FAILED " + b)
if build_failures:
    print("FAILED %d configure/build step(s)" % build_failures)
failed += build_failures
summary = "%d passed, %d failed" % (passed, failed)
if skipped:
    summary += ", %d skipped" % skipped
print(summary)
sys.exit(1 if failed else 0)
PY
