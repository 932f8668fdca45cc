#!/usr/bin/env bash
# Prints caught / missed / unviable / timeout per file from bench/out/mutants (see mutants.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
count() { if [ -f "$1" ]; then wc -l <"$1" | tr -d ' '; else echo 0; fi; }
printf '%-28s %7s %7s %9s %8s\n' file caught missed unviable timeout
for dir in bench/out/mutants/*/mutants.out; do
  [ -d "$dir" ] || continue
  name=$(basename "$(dirname "$dir")" | tr '_' '/')
  printf '%-28s %7s %7s %9s %8s\n' "$name" "$(count "$dir/caught.txt")" \
    "$(count "$dir/missed.txt")" "$(count "$dir/unviable.txt")" "$(count "$dir/timeout.txt")"
done
