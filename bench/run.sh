#!/usr/bin/env bash
# Reproducible benchmark of rebilly-webhookd; bench/README.md explains every figure.
#
#   bash bench/run.sh                                        # full run (several minutes)
#   BENCH_SIZES="10000" BENCH_SECONDS=5 bash bench/run.sh    # quick run
#
# Settings (environment variables, defaults in brackets):
#   BENCH_SIZES            events already stored before each ingest stage ["10000 100000 1000000"]
#   BENCH_SECONDS          length of each wrk measurement [15]
#   BENCH_CONNECTIONS      wrk connections for ingest and the ceiling [64]
#   BENCH_THREADS          wrk threads for ingest and the ceiling [2]
#   BENCH_READ_CONNECTIONS wrk connections for GET /customers/{id} beside ingest [8]
#   BENCH_READ_DELAY_MS    pause of each of those connections between requests [4]
#   BENCH_LIST_CONNECTIONS wrk connections for the customer list query [2]
#   BENCH_REPLAY           bodies timed through `rebilly-webhookd replay` [100000]
#   BENCH_CONNECTION_CLOSE 1 adds an ingest run with `Connection: close` at the first stage [0]
#   BENCH_OUT              where raw outputs and the summary are kept [bench/out]
#   BENCH_KEEP             1 keeps the temporary folder (databases, logs) [0]
# Everything listens on 127.0.0.1 only.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BENCH_SIZES=${BENCH_SIZES:-"10000 100000 1000000"}
BENCH_SECONDS=${BENCH_SECONDS:-15}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-64}
BENCH_THREADS=${BENCH_THREADS:-2}
BENCH_READ_CONNECTIONS=${BENCH_READ_CONNECTIONS:-8}
BENCH_READ_DELAY_MS=${BENCH_READ_DELAY_MS:-4}
BENCH_LIST_CONNECTIONS=${BENCH_LIST_CONNECTIONS:-2}
BENCH_REPLAY=${BENCH_REPLAY:-100000}
BENCH_CONNECTION_CLOSE=${BENCH_CONNECTION_CLOSE:-0}
BENCH_OUT=${BENCH_OUT:-$ROOT/bench/out}
BENCH_KEEP=${BENCH_KEEP:-0}

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/rebilly-webhookd
SEED=$TARGET_DIR/release/examples/bench_seed
CEILING_BIN=$TARGET_DIR/release/examples/bench_ceiling
LUA=$ROOT/bench/ingest.lua
EXAMPLE_CONFIG=$ROOT/config.example.toml
LIST_QUERY='/customers?filter=country:FR&sort=-createdTime&limit=100'

# The performance targets this benchmark checks.
TARGET_RATIO=0.2      # ingest requests/s as a share of the ceiling, at least
TARGET_P99_MS=15      # ingest p99, at most
TARGET_FLAT=0.20      # spread of ingest requests/s and p99 from the first to the last stage
TARGET_GET_P99_MS=5   # GET /customers/{id} p99 at the largest stage while ingest runs
TARGET_LIST_P99_MS=50 # list with filter and sort, p99
TARGET_REPLAY=50000   # replay events/s, at least
TARGET_RSS_MB=64      # daemon peak RSS, at most

log() { printf '\n== %s\n' "$*" >&2; }
die() {
  printf 'bench: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------- clean-up
WORK=$(mktemp -d "${TMPDIR:-/tmp}/webhookd-bench.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ $BENCH_KEEP == 1 ]]; then
    echo "bench: kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
  local kept=() pid
  for pid in "${PIDS[@]}"; do
    [[ $pid == "$1" ]] || kept+=("$pid")
  done
  PIDS=("${kept[@]+"${kept[@]}"}")
}

# SIGTERM, then wait: the daemon answers what is in flight, flushes and exits.
stop_pid() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget_pid "$1"
}

# ---------------------------------------------------------------- build and tools
log "building (release)"
cargo build --release --locked --bin rebilly-webhookd --examples

if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk"
  SUDO=()
  [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  {
    "${SUDO[@]}" apt-get install -y wrk ||
      { "${SUDO[@]}" apt-get update && "${SUDO[@]}" apt-get install -y wrk; }
  } >&2
fi
command -v wrk >/dev/null 2>&1 || die "wrk is not installed"

mkdir -p "$BENCH_OUT"
OUT=$BENCH_OUT
rm -f "$OUT"/*.txt "$OUT"/*.log

# The daemon runs on config.example.toml as shipped, with four keys overridden through the
# environment: the address, the database, synchronous = "full" and the API token. Its Basic
# credential is the example's own.
[[ -f $EXAMPLE_CONFIG ]] || die "$EXAMPLE_CONFIG is missing"
BASIC_USER=$(sed -n '/^\[\[auth\.basic\]\]/,/^\[/ s/^username *= *"\(.*\)"/\1/p' "$EXAMPLE_CONFIG" | head -n1)
BASIC_PASSWORD=$(sed -n '/^\[\[auth\.basic\]\]/,/^\[/ s/^password *= *"\(.*\)"/\1/p' "$EXAMPLE_CONFIG" | head -n1)
[[ -n $BASIC_USER && -n $BASIC_PASSWORD ]] || die "no [[auth.basic]] credential in $EXAMPLE_CONFIG"
AUTH="Basic $(printf '%s:%s' "$BASIC_USER" "$BASIC_PASSWORD" | base64 | tr -d '\n')"
TOKEN="bench-api-token-$RANDOM$RANDOM$RANDOM"

# daemon_env DB SYNCHRONOUS: the environment for any rebilly-webhookd process on DB.
daemon_env() {
  printf '%s\n' \
    "REBILLY_WEBHOOKD__SERVER__LISTEN=127.0.0.1:0" \
    "REBILLY_WEBHOOKD__STORAGE__PATH=$1" \
    "REBILLY_WEBHOOKD__STORAGE__SYNCHRONOUS=$2" \
    "REBILLY_WEBHOOKD__API__TOKEN=$TOKEN"
}

# wait_address LOG PID: prints the address of the `listening ... address=IP:PORT` line.
wait_address() {
  local file=$1 pid=$2 address i
  for ((i = 0; i < 600; i++)); do
    address=$(sed -n 's/.*listening.*address=\([0-9.]*:[0-9]*\).*/\1/p' "$file" | head -n1)
    if [[ -n $address ]]; then
      echo "$address"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$file" >&2
      die "process $pid exited before listening"
    fi
    sleep 0.1
  done
  die "no listening line in $file"
}

# start_daemon DB LOG: sets DAEMON_PID and DAEMON_ADDR.
start_daemon() {
  local env_lines
  mapfile -t env_lines < <(daemon_env "$1" full)
  env -u RUST_LOG "${env_lines[@]}" "$BIN" serve --config "$EXAMPLE_CONFIG" >/dev/null 2>"$2" &
  DAEMON_PID=$!
  PIDS+=("$DAEMON_PID")
  DAEMON_ADDR=$(wait_address "$2" "$DAEMON_PID")
}

# run_wrk NAME CONNECTIONS THREADS URL [VAR=VALUE... --] [WRK ARGS...]: prints the result line.
run_wrk() {
  local name=$1 connections=$2 threads=$3 url=$4
  shift 4
  local vars=()
  while [[ $# -gt 0 && $1 != -- ]]; do
    vars+=("$1")
    shift
  done
  [[ $# -gt 0 ]] && shift
  env "${vars[@]+"${vars[@]}"}" wrk -t "$threads" -c "$connections" -d "${BENCH_SECONDS}s" \
    --timeout 10s -s "$LUA" "$@" "$url" >"$OUT/$name.txt" 2>&1 || {
    cat "$OUT/$name.txt" >&2
    die "wrk $name failed"
  }
  grep '^BENCH_RESULT' "$OUT/$name.txt" | tail -n1 || die "wrk $name printed no result"
}

# field LINE KEY: the value of KEY=VALUE in LINE.
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

# Arithmetic and verdicts in awk (bash has integers only).
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }
at_most() { awk -v v="$1" -v t="$2" 'BEGIN { print (v + 0 <= t + 0) ? "ok" : "MISS" }'; }
at_least() { awk -v v="$1" -v t="$2" 'BEGIN { print (v + 0 >= t + 0) ? "ok" : "MISS" }'; }

count_events() { # DB ADDRESS
  if command -v sqlite3 >/dev/null 2>&1; then
    sqlite3 "$1" 'SELECT COUNT(*) FROM events'
  else
    curl -s -o /dev/null -D - -H "Authorization: Bearer $TOKEN" "http://$2/events?limit=0" |
      tr -d '\r' | awk -F': *' 'tolower($1) == "pagination-total" { print $2 }'
  fi
}

db_bytes() { # DB: database plus write-ahead log, in bytes
  local total=0 file
  for file in "$1" "$1-wal"; do
    [[ -f $file ]] && total=$((total + $(stat -c %s "$file")))
  done
  echo "$total"
}

peak_rss_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# writer_stats ADDRESS: "average batch size, average commit ms" from /metrics, if curl is here.
writer_stats() {
  command -v curl >/dev/null 2>&1 || {
    echo "n/a"
    return 0
  }
  curl -s "http://$1/metrics" | awk '
    /^rebilly_webhookd_writer_batch_size_sum / { bs = $2 }
    /^rebilly_webhookd_writer_batch_size_count / { bc = $2 }
    /^rebilly_webhookd_writer_commit_seconds_sum / { cs = $2 }
    /^rebilly_webhookd_writer_commit_seconds_count / { cc = $2 }
    END { if (bc > 0 && cc > 0) printf "%.1f events, %.2f ms", bs / bc, 1000 * cs / cc; else print "n/a" }'
}

# measure_ceiling NAME: requests/s of a bare axum server answering 204 to the same requests.
# Measured right before each ingest run, so that the ratio compares like with like on a
# machine whose other load changes.
measure_ceiling() {
  local pid address line
  log "$1: HTTP ceiling, bare axum server, same bodies, ${BENCH_CONNECTIONS} connections, ${BENCH_SECONDS}s"
  "$CEILING_BIN" 127.0.0.1:0 >"$WORK/ceiling.out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  address=$(wait_address "$WORK/ceiling.out" "$pid")
  line=$(run_wrk "ceiling-$1" "$BENCH_CONNECTIONS" "$BENCH_THREADS" "http://$address/webhooks/rebilly" \
    BENCH_MODE=ingest BENCH_RUN=ceil BENCH_AUTH="$AUTH" --)
  stop_pid "$pid"
  echo "$line" >&2
  CEILING_RPS=$(field "$line" rps)
}

# ---------------------------------------------------------------- ingest stages
# Each stage has its own database, seeded to exactly its size.
read -r -a SIZES <<<"$BENCH_SIZES"
mapfile -t SIZES < <(printf '%s\n' "${SIZES[@]}" | grep -v '^$' | sort -n)
[[ ${#SIZES[@]} -gt 0 ]] || die "BENCH_SIZES is empty"
LARGEST=${SIZES[-1]}
declare -A RPS P50 P99 P999 NON2XX ERRORS BYTES_PER_EVENT EVENTS RSS WRITER CEILING LOAD
MAX_RSS_KB=0

for size in "${SIZES[@]}"; do
  rm -rf "$WORK/db"
  DB=$WORK/db/webhookd.db
  log "stage $size: seeding the database to $size events (examples/bench_seed)"
  mapfile -t env_lines < <(daemon_env "$DB" normal)
  seed_line=$(env -u RUST_LOG RUST_LOG=warn "${env_lines[@]}" "$SEED" seed --config "$EXAMPLE_CONFIG" --total "$size" 2>>"$OUT/seed.log") ||
    die "seeding failed: see $OUT/seed.log"
  echo "$seed_line" >&2
  seeded_customers=$(field " $seed_line" seeded_customers)

  measure_ceiling "stage $size"
  CEILING[$size]=$CEILING_RPS
  LOAD[$size]=$(cut -d' ' -f1-3 /proc/loadavg)
  start_daemon "$DB" "$OUT/daemon-$size.log"
  log "stage $size: durable ingest, ${BENCH_CONNECTIONS} keep-alive connections, ${BENCH_SECONDS}s"
  line=$(run_wrk "ingest-$size" "$BENCH_CONNECTIONS" "$BENCH_THREADS" "http://$DAEMON_ADDR/webhooks/rebilly" \
    BENCH_MODE=ingest BENCH_RUN="s$size" BENCH_AUTH="$AUTH" --)
  echo "$line" >&2
  RPS[$size]=$(field "$line" rps)
  P50[$size]=$(field "$line" p50_ms)
  P99[$size]=$(field "$line" p99_ms)
  P999[$size]=$(field "$line" p999_ms)
  NON2XX[$size]=$(field "$line" non2xx)
  ERRORS[$size]=$(($(field "$line" socket_errors) + $(field "$line" timeouts)))
  RSS[$size]=$(peak_rss_kb "$DAEMON_PID")
  if ((RSS[$size] > MAX_RSS_KB)); then MAX_RSS_KB=${RSS[$size]}; fi
  WRITER[$size]=$(writer_stats "$DAEMON_ADDR")

  if [[ $BENCH_CONNECTION_CLOSE == 1 && $size == "${SIZES[0]}" ]]; then
    log "stage $size: durable ingest with Connection: close (as Rebilly sends)"
    CLOSE_LINE=$(run_wrk "ingest-close-$size" "$BENCH_CONNECTIONS" "$BENCH_THREADS" \
      "http://$DAEMON_ADDR/webhooks/rebilly" BENCH_MODE=ingest BENCH_RUN="c$size" BENCH_AUTH="$AUTH" \
      BENCH_CONNECTION_CLOSE=1 --)
    echo "$CLOSE_LINE" >&2
  fi

  if [[ $size == "$LARGEST" ]]; then
    log "stage $size: GET /customers/{id} (${BENCH_READ_CONNECTIONS} connections, ${BENCH_READ_DELAY_MS} ms pauses) while ingest runs"
    run_wrk "ingest-under-reads-$size" "$BENCH_CONNECTIONS" "$BENCH_THREADS" "http://$DAEMON_ADDR/webhooks/rebilly" \
      BENCH_MODE=ingest BENCH_RUN="r$size" BENCH_AUTH="$AUTH" -- >"$WORK/ingest-under-reads.line" &
    ingest_pid=$!
    GET_LINE=$(run_wrk "get-customer-$size" "$BENCH_READ_CONNECTIONS" 1 "http://$DAEMON_ADDR/" \
      BENCH_MODE=customer BENCH_TOKEN="$TOKEN" BENCH_SEEDED_CUSTOMERS="$seeded_customers" \
      BENCH_DELAY_MS="$BENCH_READ_DELAY_MS" --)
    wait "$ingest_pid" || die "the ingest run beside the reads failed"
    UNDER_READS_LINE=$(cat "$WORK/ingest-under-reads.line")
    echo "$GET_LINE" >&2
    echo "$UNDER_READS_LINE" >&2

    log "stage $size: GET $LIST_QUERY (${BENCH_LIST_CONNECTIONS} connections)"
    LIST_LINE=$(run_wrk "list-customers-$size" "$BENCH_LIST_CONNECTIONS" 1 "http://$DAEMON_ADDR$LIST_QUERY" \
      BENCH_MODE=static -- -H "Authorization: Bearer $TOKEN")
    echo "$LIST_LINE" >&2
    GET_SIZE=$size
    READS_RSS_KB=$(peak_rss_kb "$DAEMON_PID")
  fi

  EVENTS[$size]=$(count_events "$DB" "$DAEMON_ADDR")
  BYTES_PER_EVENT[$size]=$(calc "$(db_bytes "$DB") / ${EVENTS[$size]}" 0)
  stop_pid "$DAEMON_PID"
done

# ---------------------------------------------------------------- replay
log "replay: writing $BENCH_REPLAY bodies, then timing rebilly-webhookd replay"
"$SEED" files --dir "$WORK/replay-bodies" --count "$BENCH_REPLAY" >"$OUT/replay-files.txt"
mapfile -t env_lines < <(daemon_env "$WORK/replay/webhookd.db" full)
TIMEFORMAT=%R
{ time env -u RUST_LOG "${env_lines[@]}" "$BIN" replay "$WORK/replay-bodies" --config "$EXAMPLE_CONFIG" \
  >"$WORK/replay.out" 2>"$OUT/replay.log"; } 2>"$WORK/replay.time" || {
  tail -n 5 "$WORK/replay.out" >&2
  die "replay failed"
}
REPLAY_SECONDS=$(cat "$WORK/replay.time")
REPLAY_SUMMARY=$(tail -n 1 "$WORK/replay.out")
echo "$REPLAY_SUMMARY in ${REPLAY_SECONDS}s" >&2
REPLAY_RATE=$(calc "$BENCH_REPLAY / $REPLAY_SECONDS" 0)

# ---------------------------------------------------------------- summary
row() { printf '%-58s %-30s %-16s %s\n' "$@"; }
summary() {
  echo
  echo "rebilly-webhookd benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)," \
    "$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
  echo "wrk: ${BENCH_THREADS} threads, ${BENCH_CONNECTIONS} keep-alive connections, ${BENCH_SECONDS}s per run;" \
    "daemon: config.example.toml, synchronous = full"
  echo "load: the 1-minute load average just before each ingest run (the machine may be shared)"
  echo "reads: GET /customers/{id} on ${BENCH_READ_CONNECTIONS} connections pausing ${BENCH_READ_DELAY_MS} ms," \
    "beside the ingest run; list on ${BENCH_LIST_CONNECTIONS} connections, alone"
  echo
  row "measure" "measured" "target" "verdict"
  local size ratio first=${SIZES[0]}
  for size in "${SIZES[@]}"; do
    row "HTTP ceiling before stage $size (bare axum, 204)" \
      "$(calc "${CEILING[$size]}" 0) req/s, load ${LOAD[$size]%% *}" "" ""
    ratio=$(calc "${RPS[$size]} / ${CEILING[$size]}" 3)
    row "ingest @ $size stored: requests/s (x ceiling)" "$(calc "${RPS[$size]}" 0) (${ratio}x)" \
      ">= ${TARGET_RATIO}x ceiling" "$(at_least "$ratio" "$TARGET_RATIO")"
    row "ingest @ $size stored: p50 / p99 / p999 ms" "${P50[$size]} / ${P99[$size]} / ${P999[$size]}" \
      "p99 <= ${TARGET_P99_MS} ms" "$(at_most "${P99[$size]}" "$TARGET_P99_MS")"
    row "ingest @ $size stored: non-2xx / socket errors" "${NON2XX[$size]} / ${ERRORS[$size]}" "0" \
      "$(at_most "$((NON2XX[$size] + ERRORS[$size]))" 0)"
    row "ingest @ $size stored: events after, db bytes/event" \
      "${EVENTS[$size]}, ${BYTES_PER_EVENT[$size]} B" "" ""
    row "ingest @ $size stored: writer avg batch, avg commit" "${WRITER[$size]}" "" ""
    row "ingest @ $size stored: daemon peak RSS (VmHWM)" "$(calc "${RSS[$size]} / 1024" 1) MB" \
      "<= ${TARGET_RSS_MB} MB" "$(at_most "$(calc "${RSS[$size]} / 1024" 1)" "$TARGET_RSS_MB")"
  done
  if [[ ${#SIZES[@]} -gt 1 ]]; then
    local rps_spread p99_spread
    rps_spread=$(calc "(${RPS[$first]} - ${RPS[$LARGEST]}) / ${RPS[$first]}" 3)
    p99_spread=$(calc "(${P99[$LARGEST]} - ${P99[$first]}) / ${P99[$first]}" 3)
    row "ingest $first -> $LARGEST: requests/s drop, p99 rise" "${rps_spread}, ${p99_spread}" \
      "each <= ${TARGET_FLAT}" \
      "$(awk -v a="$rps_spread" -v b="$p99_spread" -v t="$TARGET_FLAT" 'BEGIN { print (a <= t && b <= t) ? "ok" : "MISS" }')"
  else
    row "ingest flatness across stages" "n/a (one stage)" "within ${TARGET_FLAT}" ""
  fi
  if [[ -n ${CLOSE_LINE:-} ]]; then
    row "ingest @ $first, Connection: close: req/s, p99 ms" \
      "$(calc "$(field "$CLOSE_LINE" rps)" 0), $(field "$CLOSE_LINE" p99_ms)" "(information)" ""
  fi
  row "GET /customers/{id} @ $GET_SIZE during ingest: p99 ms" "$(field "$GET_LINE" p99_ms) ($(calc "$(field "$GET_LINE" rps)" 0) req/s)" \
    "<= ${TARGET_GET_P99_MS} ms" "$(at_most "$(field "$GET_LINE" p99_ms)" "$TARGET_GET_P99_MS")"
  row "  GET non-2xx" "$(field "$GET_LINE" non2xx)" "0" "$(at_most "$(field "$GET_LINE" non2xx)" 0)"
  row "  ingest beside it: req/s, p99 ms" \
    "$(calc "$(field "$UNDER_READS_LINE" rps)" 0), $(field "$UNDER_READS_LINE" p99_ms)" "(information)" ""
  row "GET list country:FR sort -createdTime @ $GET_SIZE: p99 ms" \
    "$(field "$LIST_LINE" p99_ms) ($(calc "$(field "$LIST_LINE" rps)" 0) req/s)" "<= ${TARGET_LIST_P99_MS} ms" \
    "$(at_most "$(field "$LIST_LINE" p99_ms)" "$TARGET_LIST_P99_MS")"
  row "replay $BENCH_REPLAY bodies: events/s" "$REPLAY_RATE (${REPLAY_SECONDS}s)" \
    ">= ${TARGET_REPLAY}" "$(at_least "$REPLAY_RATE" "$TARGET_REPLAY")"
  row "daemon peak RSS, ingest, all stages" "$(calc "$MAX_RSS_KB / 1024" 1) MB" "<= ${TARGET_RSS_MB} MB" \
    "$(at_most "$(calc "$MAX_RSS_KB / 1024" 1)" "$TARGET_RSS_MB")"
  row "daemon peak RSS @ $GET_SIZE, with the GET runs" "$(calc "$READS_RSS_KB / 1024" 1) MB" \
    "<= ${TARGET_RSS_MB} MB" "$(at_most "$(calc "$READS_RSS_KB / 1024" 1)" "$TARGET_RSS_MB")"
  echo
  echo "replay: $REPLAY_SUMMARY"
  echo "raw wrk outputs and logs: $OUT"
}
summary | tee "$OUT/summary.txt"
