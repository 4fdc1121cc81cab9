#!/usr/bin/env bash
# Install what is missing, then build and run the whole test suite twice:
#   build/           normal build
#   build-sanitize/  AddressSanitizer + UndefinedBehaviorSanitizer (-Dsanitize=true)
# The last line of output is "N passed, N failed[, N skipped]" over both builds.
# Exits non-zero if anything failed (including a failed configure or build).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

# python3 on PATH may be a pyenv interpreter without the libnbd bindings.
export PATH="/usr/bin:/bin:$PATH"

bash "$here/install-deps.sh" || { echo "test: installing dependencies failed" >&2; echo "0 passed, 1 failed"; exit 1; }

build_failures=0
logs=()

# run_suite DIR TIMEOUT_MULTIPLIER [meson options...]
run_suite() {
  local dir=$1 mult=$2
  shift 2
  echo "=== $dir: configure ($*)"
  if [[ -f $dir/build.ninja ]]; then
    if [[ $# -gt 0 ]] && ! meson configure "$dir" "$@"; then
      echo "test: meson configure $dir failed" >&2
      build_failures=$((build_failures + 1))
      return
    fi
  elif ! meson setup "$dir" "$@"; then
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
  echo "=== $dir: test"
  rm -f "$dir/meson-logs/testlog.json"
  meson test -C "$dir" --print-errorlogs --num-processes 2 \
    --timeout-multiplier "$mult" || true
  if [[ -f $dir/meson-logs/testlog.json ]]; then
    logs+=("$dir/meson-logs/testlog.json")
  else
    echo "test: meson test in $dir produced no testlog.json" >&2
    build_failures=$((build_failures + 1))
  fi
}

run_suite build 1 -Dsanitize=false
run_suite build-sanitize 3 -Dsanitize=true

/usr/bin/python3 - "$build_failures" "${logs[@]}" <<'PY'
import json, sys

build_failures = int(sys.argv[1])
passed = failed = skipped = 0
bad = []
for path in sys.argv[2:]:
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
    print("%s: %d passed, %d failed, %d skipped" % (path.split("/meson-logs")[0], p, f, s))
    passed += p; failed += f; skipped += s
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
