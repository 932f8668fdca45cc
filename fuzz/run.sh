#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a bounded time, starting from the seed corpus and
# replaying every input kept under regressions/; stops at the first crash, whose input
# libFuzzer writes under artifacts/<target>/.
#
# Usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]   (default: 30 seconds, every target)
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-30}"
shift || true
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
# Rust code here forbids `unsafe`, so AddressSanitizer finds little; without it every
# iteration is faster. Debug assertions keep overflow checks, a source of panics.
flags=(--sanitizer none --debug-assertions)

./seeds.sh
cargo +nightly fuzz build "${flags[@]}"
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "regressions/$target"
  options=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  if [ -f "dict/$target.dict" ]; then
    options+=(-dict="dict/$target.dict")
  fi
  log="$(mktemp)"
  if cargo +nightly fuzz run "${flags[@]}" "$target" "corpus/$target" "regressions/$target" \
      -- "${options[@]}" >"$log" 2>&1; then
    runs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)"
    cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -1 || true)"
    echo "fuzz $target: ${runs:-?} runs in ${seconds}s, $cov, no crash"
    rm -f "$log"
  else
    tail -n 60 "$log"
    echo "fuzz $target: CRASH (input under fuzz/artifacts/$target/; log $log)" >&2
    exit 1
  fi
done
