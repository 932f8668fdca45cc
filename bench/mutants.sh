#!/usr/bin/env bash
# Mutation testing of the modules that carry the rules, with cargo-mutants: the projection,
# the event model, authentication, the query language, and the event log's dedupe
# (storage/events.rs and the dedupe part of storage/writer.rs). Slow (each mutant rebuilds the
# crate and runs the tests), so not part of CI.
#
#   cargo install cargo-mutants --locked
#   bench/mutants.sh                        # every module below, one after the other
#   bench/mutants.sh src/query.rs           # only the files named
#   MUTANTS_ARGS=--in-place bench/mutants.sh  # in a scratch checkout: no copy of the tree
#
# Each file gets its own folder bench/out/mutants/<file>/mutants.out with caught.txt,
# missed.txt, unviable.txt and timeout.txt; bench/mutants-summary.sh prints the counts.
set -euo pipefail
cd "$(dirname "$0")/.."

files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  files=(
    src/handlers/projection.rs
    src/storage/sqlite/projection.rs
    src/storage/sqlite/events.rs
    src/storage/sqlite/writer.rs
    src/query/mod.rs
    src/query/filter.rs
    src/event.rs
    src/auth/mod.rs
    src/auth/basic.rs
    src/auth/digest.rs
    src/auth/hmac.rs
    src/auth/proxy.rs
  )
fi

baseline=run
for f in "${files[@]}"; do
  out="bench/out/mutants/$(echo "$f" | tr '/' '_')"
  mkdir -p "$out"
  # shellcheck disable=SC2086 # MUTANTS_ARGS is a list of options
  cargo mutants --file "$f" ${MUTANTS_ARGS:-} \
    --output "$out" \
    --baseline "$baseline" \
    --timeout "${MUTANTS_TIMEOUT:-300}" \
    --build-timeout "${MUTANTS_BUILD_TIMEOUT:-900}" \
    --exclude-re 'writer\.rs.*(spawn|Writer::|rebuild_projection)' \
    -- --locked --lib --test it -- --skip crash:: --skip sigterm \
    || true # cargo-mutants exits non-zero when a mutant survives
  baseline=skip
done

bench/mutants-summary.sh
