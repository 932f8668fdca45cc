#!/usr/bin/env bash
# Ingest on PostgreSQL with one and with two daemons, beside the same load on SQLite.
#
#   bash bench/postgres.sh                         # 15 s per run
#   BENCH_SECONDS=5 bash bench/postgres.sh         # quick run
#   BENCH_POSTGRES_URL=postgres://u:p@db/bench bash bench/postgres.sh   # an existing server
#
# Settings (environment variables, defaults in brackets):
#   BENCH_SECONDS       length of each wrk measurement [15]
#   BENCH_CONNECTIONS   wrk connections in all, split evenly over the daemons [64]
#   BENCH_THREADS       wrk threads per daemon [1]
#   BENCH_POSTGRES_URL  a database to use (emptied of nothing: give a new one) [a throwaway
#                       cluster from /usr/lib/postgresql/*/bin, with its default durability]
#   BENCH_OUT           where raw outputs and the summary are kept [bench/out]
#   BENCH_KEEP          1 keeps the temporary folder (databases, logs) [0]
# Each delivery is one ~1.5 KB customer event (bench/ingest.lua); with two daemons, one wrk per
# daemon, each with its own ids, and the figures are summed (requests/s) or the worse taken (p99).
# SQLite runs with synchronous = "full" and PostgreSQL with synchronous_commit = on: both answer
# 200 only after the delivery is durable. Everything listens on 127.0.0.1 only.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BENCH_SECONDS=${BENCH_SECONDS:-15}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-64}
BENCH_THREADS=${BENCH_THREADS:-1}
BENCH_OUT=${BENCH_OUT:-$ROOT/bench/out}
BENCH_KEEP=${BENCH_KEEP:-0}

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/rebilly-webhookd
LUA=$ROOT/bench/ingest.lua
EXAMPLE_CONFIG=$ROOT/config.example.toml

log() { printf '\n== %s\n' "$*" >&2; }
die() {
  printf 'bench: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------- clean-up
WORK=$(mktemp -d "${TMPDIR:-/tmp}/webhookd-pgbench.XXXXXX")
# The cluster's user must reach its folder inside.
chmod 0755 "$WORK"
PIDS=()
PGDATA_DIR=
PG_BIN=
as_postgres() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}
cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n $PGDATA_DIR ]]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" stop -m fast >/dev/null 2>&1 || true
  fi
  if [[ $BENCH_KEEP == 1 ]]; then
    echo "bench: kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- build and tools
log "building (release)"
cargo build --release --locked --bin rebilly-webhookd
command -v wrk >/dev/null 2>&1 || die "wrk is not installed (bash bench/run.sh installs it, or apt-get install wrk)"
mkdir -p "$BENCH_OUT"
OUT=$BENCH_OUT

[[ -f $EXAMPLE_CONFIG ]] || die "$EXAMPLE_CONFIG is missing"
BASIC_USER=$(sed -n '/^\[\[auth\.basic\]\]/,/^\[/ s/^username *= *"\(.*\)"/\1/p' "$EXAMPLE_CONFIG" | head -n1)
BASIC_PASSWORD=$(sed -n '/^\[\[auth\.basic\]\]/,/^\[/ s/^password *= *"\(.*\)"/\1/p' "$EXAMPLE_CONFIG" | head -n1)
[[ -n $BASIC_USER && -n $BASIC_PASSWORD ]] || die "no [[auth.basic]] credential in $EXAMPLE_CONFIG"
AUTH="Basic $(printf '%s:%s' "$BASIC_USER" "$BASIC_PASSWORD" | base64 | tr -d '\n')"
TOKEN="bench-api-token-$RANDOM$RANDOM$RANDOM"

# ---------------------------------------------------------------- PostgreSQL
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_cluster: a throwaway cluster in $WORK, durable as shipped (fsync, synchronous_commit);
# sets URL. Runs in this shell (not a subshell), so that clean-up knows to stop it.
start_cluster() {
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [[ -n $PG_BIN && -x $PG_BIN/initdb ]] ||
    die "no PostgreSQL server binaries (apt-get install postgresql) and no BENCH_POSTGRES_URL"
  local folder=$WORK/postgres port
  mkdir -p "$folder"
  [[ $(id -u) -ne 0 ]] || chown postgres: "$folder"
  as_postgres "$PG_BIN/initdb" -D "$folder/data" -U postgres -A trust -E UTF8 --locale=C >/dev/null
  PGDATA_DIR=$folder/data
  port=$(free_port)
  as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -w -l "$folder/server.log" \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$folder -c max_connections=200" \
    start >/dev/null
  as_postgres "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -qc 'CREATE DATABASE bench' >/dev/null
  URL="postgres://postgres@127.0.0.1:$port/bench"
}

# ---------------------------------------------------------------- daemons and wrk
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

# start_daemon NAME VAR=VALUE...: starts `serve` on the example configuration with the given
# overrides and sets ADDRESS. Runs in this shell, so that its pid joins PIDS.
start_daemon() {
  local name=$1
  shift
  : >"$WORK/$name.log"
  env "REBILLY_WEBHOOKD__SERVER__LISTEN=127.0.0.1:0" "REBILLY_WEBHOOKD__API__TOKEN=$TOKEN" "$@" \
    "$BIN" --config "$EXAMPLE_CONFIG" serve >/dev/null 2>>"$WORK/$name.log" &
  local pid=$!
  PIDS+=("$pid")
  ADDRESS=$(wait_address "$WORK/$name.log" "$pid")
}

stop_daemons() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}

# ingest NAME ADDRESS...: one wrk per daemon at once, connections split evenly; prints
# "rps p99_ms non2xx" for all of them together.
ingest() {
  local name=$1
  shift
  local count=$# per=$((BENCH_CONNECTIONS / $#)) n=0 address wrks=()
  for address in "$@"; do
    n=$((n + 1))
    env BENCH_MODE=ingest BENCH_AUTH="$AUTH" BENCH_RUN="$name-$n-$RANDOM" \
      wrk -t "$BENCH_THREADS" -c "$per" -d "${BENCH_SECONDS}s" --timeout 10s -s "$LUA" \
      "http://$address/webhooks/rebilly" >"$OUT/pg-$name-$n.txt" 2>&1 &
    wrks+=("$!")
  done
  for n in "${wrks[@]}"; do
    wait "$n" || die "wrk $name failed"
  done
  local files=()
  for ((n = 1; n <= count; n++)); do
    files+=("$OUT/pg-$name-$n.txt")
  done
  grep -h '^BENCH_RESULT' "${files[@]}" | awk '
    { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      rps += v["rps"]; if (v["p99_ms"] + 0 > p99) p99 = v["p99_ms"] + 0; bad += v["non2xx"] + v["socket_errors"] }
    END { printf "%.0f %.2f %d\n", rps, p99, bad }'
}

RESULTS=()
record() { # LABEL "rps p99 non2xx"
  RESULTS+=("$1|$2")
  printf '%-34s %s\n' "$1" "$2" >&2
}

# ---------------------------------------------------------------- runs
# check_run LABEL "rps p99 errors": a run whose requests failed measures nothing.
check_run() {
  local errors
  errors=$(awk '{ print $3 }' <<<"$2")
  [[ $errors -eq 0 ]] || die "$1: $errors requests failed (see $OUT and $WORK with BENCH_KEEP=1)"
}

log "SQLite, one daemon"
mkdir -p "$WORK/sqlite"
start_daemon sqlite "REBILLY_WEBHOOKD__STORAGE__PATH=$WORK/sqlite/webhookd.db" \
  "REBILLY_WEBHOOKD__STORAGE__SYNCHRONOUS=full"
figures=$(ingest sqlite "$ADDRESS")
check_run "SQLite, 1 daemon" "$figures"
record "SQLite, 1 daemon" "$figures"
stop_daemons

if [[ -n ${BENCH_POSTGRES_URL:-} ]]; then
  URL=$BENCH_POSTGRES_URL
else
  log "starting a throwaway PostgreSQL"
  start_cluster
fi
PG_ENV=("REBILLY_WEBHOOKD__STORAGE__BACKEND=postgres" "REBILLY_WEBHOOKD__STORAGE__URL=$URL")

log "PostgreSQL, one daemon"
start_daemon pg-one "${PG_ENV[@]}"
figures=$(ingest pg-one "$ADDRESS")
check_run "PostgreSQL, 1 daemon" "$figures"
record "PostgreSQL, 1 daemon" "$figures"
stop_daemons

log "PostgreSQL, two daemons on the same database"
start_daemon pg-two-a "${PG_ENV[@]}"
first=$ADDRESS
start_daemon pg-two-b "${PG_ENV[@]}"
figures=$(ingest pg-two "$first" "$ADDRESS")
check_run "PostgreSQL, 2 daemons" "$figures"
record "PostgreSQL, 2 daemons" "$figures"
stop_daemons

# ---------------------------------------------------------------- summary
{
  echo
  echo "Ingest, $BENCH_CONNECTIONS connections in all, ${BENCH_SECONDS}s per run ($(nproc) cores, daemons, wrk and database on one machine)"
  printf '%-24s %14s %10s %8s\n' "setup" "deliveries/s" "p99 ms" "errors"
  for line in "${RESULTS[@]}"; do
    IFS='|' read -r label figures <<<"$line"
    read -r rps p99 bad <<<"$figures"
    printf '%-24s %14s %10s %8s\n' "$label" "$rps" "$p99" "$bad"
  done
} | tee "$OUT/postgres-summary.txt"
