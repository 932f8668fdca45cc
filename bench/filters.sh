#!/usr/bin/env bash
# Filtered list queries at scale; bench/README.md ("Filters at 1 million customers") explains it.
#
#   bash bench/filters.sh                                  # 1 million customers (a few minutes)
#   BENCH_CUSTOMERS=100000 BENCH_SECONDS=5 bash bench/filters.sh
#
# Settings (environment variables, defaults in brackets):
#   BENCH_CUSTOMERS        customers to seed [1000000]
#   BENCH_SECONDS          length of each wrk measurement [15]
#   BENCH_LIST_CONNECTIONS wrk connections per query [2]
#   BENCH_OUT              where raw outputs and the summary are kept [bench/out]
#   BENCH_KEEP             1 keeps the temporary folder (database) [0]
#   BENCH_DB               a database to use instead of a new one; seeding tops it up [none]
# Everything listens on 127.0.0.1 only.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BENCH_CUSTOMERS=${BENCH_CUSTOMERS:-1000000}
BENCH_SECONDS=${BENCH_SECONDS:-15}
BENCH_LIST_CONNECTIONS=${BENCH_LIST_CONNECTIONS:-2}
BENCH_OUT=${BENCH_OUT:-$ROOT/bench/out}
BENCH_KEEP=${BENCH_KEEP:-0}

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/rebilly-webhookd
SEED=$TARGET_DIR/release/examples/bench_seed
LUA=$ROOT/bench/ingest.lua
EXAMPLE_CONFIG=$ROOT/config.example.toml
TARGET_LIST_P99_MS=50

# name|path: the queries measured. Seeded customers were created from 2019 to 2025 (one in
# about 85 in January 2024); later revisions move updatedTime far ahead, so many match 2025...
QUERIES=(
  "range|/customers?filter=createdTime:2024-01-01T00:00:00Z..2024-01-31T23:59:59.999Z&limit=100"
  "sorted-range-page|/customers?filter=updatedTime:2025-01-01T00:00:00Z..&sort=-updatedTime&limit=100&offset=100"
  "country-negated-range|/customers?filter=primaryAddress.country:!FR,!DE;createdTime:2024-06-01T00:00:00%2B02:00..&sort=createdTime&limit=100"
)

log() { printf '\n== %s\n' "$*" >&2; }
die() {
  printf 'bench: %s\n' "$*" >&2
  exit 1
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/webhookd-filters.XXXXXX")
DAEMON_PID=
cleanup() {
  if [[ -n $DAEMON_PID ]]; then
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
  fi
  if [[ $BENCH_KEEP == 1 ]]; then
    echo "bench: kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building (release)"
cargo build --release --locked --bin rebilly-webhookd --examples
command -v wrk >/dev/null 2>&1 || die "wrk is not installed (bash bench/run.sh installs it, or apt-get install wrk)"
mkdir -p "$BENCH_OUT"
OUT=$BENCH_OUT

DB=${BENCH_DB:-$WORK/filters.db}
TOKEN="bench-api-token-$RANDOM$RANDOM$RANDOM"
ENVIRONMENT=(
  "REBILLY_WEBHOOKD__SERVER__LISTEN=127.0.0.1:0"
  "REBILLY_WEBHOOKD__STORAGE__PATH=$DB"
  "REBILLY_WEBHOOKD__STORAGE__SYNCHRONOUS=normal"
  "REBILLY_WEBHOOKD__API__TOKEN=$TOKEN"
)

# Three events in four create a customer (examples/bench_seed.rs).
EVENTS=$(((BENCH_CUSTOMERS * 4 + 2) / 3))
log "seeding $BENCH_CUSTOMERS customers ($EVENTS events)"
env "${ENVIRONMENT[@]}" "$SEED" seed --config "$EXAMPLE_CONFIG" --total "$EVENTS" | tee "$OUT/filters-seed.txt"
SEEDED=$(sed -n 's/.*seeded_customers=\([0-9]*\).*/\1/p' "$OUT/filters-seed.txt")

log "starting the daemon"
# Emptied here, not by the daemon's redirection, which could run after the first read below.
: >"$OUT/filters-daemon.log"
env "${ENVIRONMENT[@]}" RUST_LOG=info "$BIN" serve --config "$EXAMPLE_CONFIG" >>"$OUT/filters-daemon.log" 2>&1 &
DAEMON_PID=$!
ADDRESS=
for ((i = 0; i < 600; i++)); do
  ADDRESS=$(sed -n 's/.*listening.*address=\([0-9.]*:[0-9]*\).*/\1/p' "$OUT/filters-daemon.log" | head -n1)
  [[ -n $ADDRESS ]] && break
  kill -0 "$DAEMON_PID" 2>/dev/null || die "the daemon exited: $(tail -n 5 "$OUT/filters-daemon.log")"
  sleep 0.1
done
[[ -n $ADDRESS ]] || die "the daemon did not report its address"

SUMMARY=$OUT/filters-summary.txt
{
  echo "filtered lists at $SEEDED customers ($EVENTS events), release build,"
  echo "wrk: $BENCH_LIST_CONNECTIONS connections, ${BENCH_SECONDS}s per query, one query at a time"
  printf '%-22s %9s %9s %9s %9s %8s  %s\n' query total req/s p50_ms p99_ms verdict path
} >"$SUMMARY"
for entry in "${QUERIES[@]}"; do
  name=${entry%%|*}
  path=${entry#*|}
  headers=$(curl -s -o "$OUT/filters-$name.json" -D - -H "Authorization: Bearer $TOKEN" "http://$ADDRESS$path")
  status=$(head -n1 <<<"$headers" | awk '{print $2}')
  [[ $status == 200 ]] || die "$path answered $status: $(cat "$OUT/filters-$name.json")"
  total=$(tr -d '\r' <<<"$headers" | awk -F': *' 'tolower($1) == "pagination-total" { print $2 }')
  log "measuring $name ($total matching)"
  BENCH_MODE=static wrk -t 1 -c "$BENCH_LIST_CONNECTIONS" -d "${BENCH_SECONDS}s" --timeout 10s \
    -s "$LUA" -H "Authorization: Bearer $TOKEN" "http://$ADDRESS$path" >"$OUT/filters-$name.txt" 2>&1 ||
    die "wrk failed: $(cat "$OUT/filters-$name.txt")"
  line=$(grep '^BENCH_RESULT' "$OUT/filters-$name.txt" | tail -n1)
  value() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
  verdict=$(awk -v v="$(value p99_ms)" -v t="$TARGET_LIST_P99_MS" 'BEGIN { print (v + 0 <= t + 0) ? "ok" : "MISS" }')
  [[ $(value non2xx) == 0 ]] || verdict="ERRORS"
  printf '%-22s %9s %9s %9s %9s %8s  %s\n' "$name" "$total" "$(value rps)" "$(value p50_ms)" \
    "$(value p99_ms)" "$verdict" "$path" >>"$SUMMARY"
done
echo "target: p99 <= ${TARGET_LIST_P99_MS} ms; database $(du -h "$DB" | cut -f1); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$SUMMARY"
cat "$SUMMARY"
