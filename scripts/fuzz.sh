#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/*.rs) for a bounded time.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default 30 s, all targets)
#   CI=true: a fixed seed and FUZZ_RUNS inputs per target (default 100000), SECONDS x 4 as a cap
# Installs cargo-fuzz if missing. Works on the stable toolchain: no sanitizer
# (`--sanitizer none`, libFuzzer's coverage needs no nightly-only flag), and
# RUSTC_BOOTSTRAP=1 for this build only, for the `-Z` flags cargo-fuzz passes.
# New inputs go to a scratch corpus; the committed seeds in fuzz/seeds/<target>
# are read, never written. A crash leaves its input in fuzz/artifacts/<target>/:
# add it to fuzz/seeds/<target>/ (and a case to tests/fixtures/bad-inputs/) with
# the fix.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-30}"
shift || true

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_targets/*.rs; do
    targets+=("$(basename "$f" .rs)")
  done
fi

export RUSTC_BOOTSTRAP=1
# One build for all targets, then one bounded run each.
flags=(--sanitizer none --release --debug-assertions)
echo "== cargo fuzz build (${#targets[@]} targets)"
cargo fuzz build "${flags[@]}"

# Under CI every run explores the same inputs (fixed seed and count, time only as a
# cap), so its verdict is repeatable and main stays green until code changes; by hand,
# each run explores new ground for SECONDS.
if [ -n "${CI:-}" ]; then
  bound=(-seed=1 -runs="${FUZZ_RUNS:-100000}" -max_total_time=$((secs * 4)))
else
  bound=(-max_total_time="$secs")
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  echo "== fuzz $t (${bound[*]})"
  mkdir -p "$scratch/$t" "fuzz/artifacts/$t"
  dict=()
  if [ -f "fuzz/dicts/$t.dict" ]; then
    dict=(-dict="fuzz/dicts/$t.dict")
  fi
  cargo fuzz run "${flags[@]}" "$t" "$scratch/$t" "fuzz/seeds/$t" -- "${dict[@]}" \
    "${bound[@]}" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/"
done
echo "== fuzzing passed"
