#!/usr/bin/env bash
# Durable ingest of rebilly-webhookd beside a minimal durable receiver (examples/bench_minimal:
# Basic auth, JSON parse, one group-committed insert of the raw body, WAL, synchronous = FULL),
# measured in the same run under three loads: 64 keep-alive connections, one delivery at a time,
# and 64 connections with `Connection: close` (as Rebilly sends). For each: deliveries/s, p99,
# disk bytes written per delivery (/proc/PID/io write_bytes) and CPU time per delivery
# (/proc/PID/stat utime + stime), both of the server process alone.
#
#   bash bench/durable.sh
#   BENCH_SIZES=10000 BENCH_SECONDS=5 bash bench/durable.sh     # quick run
#
# Settings: BENCH_SIZES (events stored before the daemon's runs, "10000"), BENCH_SECONDS (10),
# BENCH_CONNECTIONS (64), BENCH_THREADS (2), BENCH_OUT (bench/out), BENCH_BUILD (1: build first),
# BENCH_PAGE_SIZES ("new": the daemon creates its database; a number such as 4096 creates it
# first with that page size, as a database of an older release has; several may be listed, each
# measured on a database of its own; needs the sqlite3 shell), BENCH_PROJECTION_PAGE_SIZE (empty:
# the daemon creates its projection file; a number creates it first with that page size), BENCH_PERF (1: a CPU profile of
# each run with `perf record -g`, kept as bench/out/perf-SERVER-LOAD.data).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH_SIZES=${BENCH_SIZES:-10000}
BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-64}
BENCH_THREADS=${BENCH_THREADS:-2}
BENCH_OUT=${BENCH_OUT:-$ROOT/bench/out}
BENCH_BUILD=${BENCH_BUILD:-1}
BENCH_PAGE_SIZES=${BENCH_PAGE_SIZES:-new}
BENCH_PERF=${BENCH_PERF:-0}
BENCH_PROJECTION_PAGE_SIZE=${BENCH_PROJECTION_PAGE_SIZE:-}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/rebilly-webhookd
SEED=$TARGET_DIR/release/examples/bench_seed
MINIMAL=$TARGET_DIR/release/examples/bench_minimal
LUA=$ROOT/bench/ingest.lua
EXAMPLE_CONFIG=$ROOT/config.example.toml
CLK_TCK=$(getconf CLK_TCK)

die() {
  printf 'bench: %s\n' "$*" >&2
  exit 1
}
log() { printf '\n== %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/webhookd-durable.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_pid() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local kept=() pid
  for pid in "${PIDS[@]}"; do [[ $pid == "$1" ]] || kept+=("$pid"); done
  PIDS=("${kept[@]+"${kept[@]}"}")
}

if [[ $BENCH_BUILD == 1 ]]; then
  log "building (release)"
  cargo build --release --locked --bin rebilly-webhookd --examples
fi
command -v wrk >/dev/null 2>&1 || die "wrk is not installed (bash bench/run.sh installs it)"
mkdir -p "$BENCH_OUT"
OUT=$BENCH_OUT

BASIC_USER=$(sed -n '/^\[\[auth\.basic\]\]/,/^\[/ s/^username *= *"\(.*\)"/\1/p' "$EXAMPLE_CONFIG" | head -n1)
BASIC_PASSWORD=$(sed -n '/^\[\[auth\.basic\]\]/,/^\[/ s/^password *= *"\(.*\)"/\1/p' "$EXAMPLE_CONFIG" | head -n1)
AUTH="Basic $(printf '%s:%s' "$BASIC_USER" "$BASIC_PASSWORD" | base64 | tr -d '\n')"
TOKEN="bench-api-token-$RANDOM$RANDOM"

daemon_env() { # DB SYNCHRONOUS
  printf '%s\n' "REBILLY_WEBHOOKD__SERVER__LISTEN=127.0.0.1:0" "REBILLY_WEBHOOKD__STORAGE__PATH=$1" \
    "REBILLY_WEBHOOKD__STORAGE__SYNCHRONOUS=$2" "REBILLY_WEBHOOKD__API__TOKEN=$TOKEN"
}

wait_address() { # FILE PID
  local address i
  for ((i = 0; i < 600; i++)); do
    address=$(sed -n 's/.*listening.*address=\([0-9.]*:[0-9]*\).*/\1/p' "$1" | head -n1)
    [[ -n $address ]] && {
      echo "$address"
      return 0
    }
    kill -0 "$2" 2>/dev/null || {
      tail -n 20 "$1" >&2
      die "process $2 exited before listening"
    }
    sleep 0.1
  done
  die "no listening line in $1"
}

field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }
write_bytes() { awk '/^write_bytes:/ { print $2 }' "/proc/$1/io"; }
# utime + stime in clock ticks; the command name may hold spaces, so count from its end.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

# measure NAME PID URL CONNECTIONS THREADS CLOSE: one wrk run; prints
# "rps p99_ms bytes_per_delivery cpu_us_per_delivery errors".
measure() {
  local name=$1 pid=$2 url=$3 connections=$4 threads=$5 close=$6 bytes0 ticks0 line n
  sync
  bytes0=$(write_bytes "$pid")
  ticks0=$(cpu_ticks "$pid")
  if [[ $BENCH_PERF == 1 ]]; then
    perf record -F 999 -g -p "$pid" -o "$OUT/perf-${name//\//-}.data" -- sleep "$BENCH_SECONDS" \
      >/dev/null 2>&1 &
  fi
  BENCH_MODE=ingest BENCH_RUN="${name//[^A-Za-z0-9]/}$RANDOM" BENCH_AUTH="$AUTH" BENCH_CONNECTION_CLOSE=$close \
    wrk -t "$threads" -c "$connections" -d "${BENCH_SECONDS}s" --timeout 10s -s "$LUA" "$url" \
    >"$OUT/durable-${name//\//-}.txt" 2>&1 || die "wrk $name failed"
  # Writes the run dirtied but the kernel has not yet charged are charged by the next sync.
  sync
  line=$(grep '^BENCH_RESULT' "$OUT/durable-${name//\//-}.txt" | tail -n1)
  n=$(field "$line" requests)
  printf '%s %s %s %s %s\n' "$(calc "$(field "$line" rps)" 0)" "$(field "$line" p99_ms)" \
    "$(calc "($(write_bytes "$pid") - $bytes0) / $n" 0)" \
    "$(calc "($(cpu_ticks "$pid") - $ticks0) * 1000000 / $CLK_TCK / $n" 1)" \
    "$(($(field "$line" non2xx) + $(field "$line" socket_errors) + $(field "$line" timeouts)))"
}

LOADS=("keepalive $BENCH_CONNECTIONS $BENCH_THREADS 0" "one 1 1 0" "close $BENCH_CONNECTIONS $BENCH_THREADS 1")
declare -A RESULT

run_loads() { # SERVER PID ADDRESS
  local load name connections threads close
  for load in "${LOADS[@]}"; do
    read -r name connections threads close <<<"$load"
    log "$1: $name ($connections connections, ${BENCH_SECONDS}s)"
    RESULT[$1/$name]=$(measure "$1-$name" "$2" "http://$3/webhooks/rebilly" "$connections" "$threads" "$close")
    echo "${RESULT[$1/$name]}" >&2
  done
}

SERVERS=()
for size in $BENCH_SIZES; do
  log "minimal receiver"
  "$MINIMAL" 127.0.0.1:0 "$WORK/minimal-$size.db" "$BASIC_USER:$BASIC_PASSWORD" >"$WORK/minimal.out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  run_loads "minimal@$size" "$pid" "$(wait_address "$WORK/minimal.out" "$pid")"
  stop_pid "$pid"
  SERVERS+=("minimal@$size")

  for pages in $BENCH_PAGE_SIZES; do
    name="daemon@$size"
    DB=$WORK/daemon-$size-$pages/webhookd.db
    mkdir -p "$(dirname "$DB")"
    if [[ $pages != new ]]; then
      name="daemon@$size/$pages"
      sqlite3 "$DB" "PRAGMA page_size = $pages; PRAGMA journal_mode = WAL; CREATE TABLE t (x); DROP TABLE t;" \
        >/dev/null || die "sqlite3 could not create $DB"
    fi
    if [[ -n $BENCH_PROJECTION_PAGE_SIZE ]]; then
      name="$name/p$BENCH_PROJECTION_PAGE_SIZE"
      sqlite3 "$DB-projection" "PRAGMA page_size = $BENCH_PROJECTION_PAGE_SIZE; PRAGMA journal_mode = WAL;
        CREATE TABLE t (x); DROP TABLE t;" >/dev/null || die "sqlite3 could not create $DB-projection"
    fi
    log "$name: seeding the daemon's database to $size events"
    mapfile -t env_lines < <(daemon_env "$DB" normal)
    env -u RUST_LOG RUST_LOG=warn "${env_lines[@]}" "$SEED" seed --config "$EXAMPLE_CONFIG" --total "$size" \
      >/dev/null 2>>"$OUT/durable-seed.log" || die "seeding failed"
    mapfile -t env_lines < <(daemon_env "$DB" full)
    # Emptied first, so that the address is never read from an older run's log.
    : >"$OUT/durable-daemon-$size-$pages.log"
    env -u RUST_LOG "${env_lines[@]}" "$BIN" serve --config "$EXAMPLE_CONFIG" >/dev/null \
      2>"$OUT/durable-daemon-$size-$pages.log" &
    pid=$!
    PIDS+=("$pid")
    run_loads "$name" "$pid" "$(wait_address "$OUT/durable-daemon-$size-$pages.log" "$pid")"
    stop_pid "$pid"
    SERVERS+=("$name")
    rm -rf "$WORK/daemon-$size-$pages"
  done
  rm -rf "$WORK/minimal-$size.db"*
done

{
  echo
  echo "durable ingest, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, ${BENCH_SECONDS}s per run," \
    "load $(cut -d' ' -f1 /proc/loadavg)"
  printf '%-22s %-10s %12s %9s %14s %12s %7s\n' server load "deliveries/s" "p99 ms" "disk B/deliv." \
    "CPU us/deliv." errors
  for server in "${SERVERS[@]}"; do
    for load in "${LOADS[@]}"; do
      read -r name _ <<<"$load"
      read -r rps p99 bytes cpu errors <<<"${RESULT[$server/$name]}"
      printf '%-22s %-10s %12s %9s %14s %12s %7s\n' "$server" "$name" "$rps" "$p99" "$bytes" "$cpu" "$errors"
    done
  done
} | tee "$OUT/durable-summary.txt"
