#!/usr/bin/env bash
# Build every fuzz target (fuzz/, cargo-fuzz with libFuzzer) and run each
# over its seed corpus (fuzz/corpus/<target>) for FUZZ_SECONDS seconds.
# Fails if a build fails or any target finds a crash, a leak, an
# out-of-memory or a timeout; the input that did it is left in
# fuzz/artifacts/<target>/ and its reproduction command is printed.
#
#   FUZZ_SECONDS  seconds per target (default 20)
#   FUZZ_JOBS     targets run at once (default 2: the machine has 2 cores)
#   FUZZ_TARGETS  space-separated targets (default: all of them)
#   FUZZ_SANITIZER address (default) or none
#   FUZZ_BUILD    0 to skip the build (default 1)
#
# New inputs found are kept in a scratch directory, not in fuzz/corpus:
# the seed corpus stays small and reviewed (see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SECONDS:-20}
jobs=${FUZZ_JOBS:-2}
sanitizer=${FUZZ_SANITIZER:-address}
# cargo-fuzz needs nightly-only flags (-Zsanitizer, sancov passes); the
# stable toolchain accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "error: cargo-fuzz is missing: scripts/install-deps.sh installs it" >&2
  exit 1
fi

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
if [[ ${FUZZ_BUILD:-1} != 0 ]]; then
  start=$(date +%s)
  cargo fuzz build -O --debug-assertions -s "$sanitizer"
  echo "fuzz build: $(($(date +%s) - start)) s"
fi
bin_dir=target/x86_64-unknown-linux-gnu/release

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

run_one() {
  local target=$1
  local log=$scratch/$target.log
  mkdir -p "$scratch/corpus/$target" "artifacts/$target"
  # Seeds are read from fuzz/corpus; what is found goes to the scratch
  # directory (the first corpus directory is the one written to).
  if "$bin_dir/$target" "$scratch/corpus/$target" "corpus/$target" \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="artifacts/$target/" >"$log" 2>&1; then
    local stats
    stats=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
    echo "ok   $target: ${stats:-done}"
  else
    echo "FAIL $target (log below; reproduce with: cargo fuzz run $target fuzz/artifacts/$target/<file>)"
    grep -E -A40 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -80
    return 1
  fi
}

failed=0
running=0
for target in $targets; do
  if [[ ! -d corpus/$target ]]; then
    echo "error: no seed corpus fuzz/corpus/$target" >&2
    failed=1
    continue
  fi
  run_one "$target" >"$scratch/$target.result" 2>&1 &
  running=$((running + 1))
  if ((running >= jobs)); then
    wait -n || failed=1
    running=$((running - 1))
  fi
done
while ((running > 0)); do
  wait -n || failed=1
  running=$((running - 1))
done
cat "$scratch"/*.result
count=$(echo $targets | wc -w)
if ((failed)); then
  echo "fuzz smoke: a target failed"
  exit 1
fi
echo "fuzz smoke: $count targets ran ${seconds}s each, no crash"
