#!/usr/bin/env bash
# shellcheck disable=SC2154 # a_*, pg_*, thin_* ... results are set through printf -v
# The cancel benchmark, one command. See BENCHMARKS.md.
#
#   bench/run.sh                 full run: 32 connections, BENCH_SECONDS (20) per measured run
#   bench/run.sh --smoke         tiny end-to-end run for CI (4 connections, 2 s per run)
#   bench/run.sh --update-docs   also rewrite the generated section of BENCHMARKS.md and bench/latency.svg
#
# Like for like: every request of every run changes exactly one fresh queued scan. Each run (and
# each warm-up) owns its own range of scan ids, seeded just before it; pgbench takes the ids from a
# sequence, wrk's threads count through their own. In one run, for the same duration:
#   (a)  pgbench -M prepared: the bare guarded UPDATE (the database's own ceiling; informational)
#   (a2) pgbench -M prepared: the service's cancel statement (UPDATE + audit row)
#   (t)  the thin peer (bench/thin-peer, production profile): the same statement behind axum + sqlx,
#        nothing else; the limit the service is measured against
#   (b)  the service (production profile) on PostgreSQL, with one `signal-scans scans watch` running
#   (c)  the service on its embedded SQLite store
#   (s)  the service with BENCH_STREAMS change streams open (bench/stream-client), in short windows
#        that alternate with windows of the same service without them, (s0), in the order
#        (s0) (s), (s) (s0), (s0) (s), ... so that a drift of the machine's speed weighs on both alike
# (t), (b), (c), (s) and (s0) are driven by wrk + bench/cancel.lua.
# Results: bench/out/results.md, bench/out/results.json, bench/out/latency.svg.
#
# Environment (all optional):
#   BENCH_SECONDS            measured seconds per run (default 20; smoke 2)
#   BENCH_WARMUP_SECONDS     unmeasured warm-up before each run, on its own fresh scans (default 2; smoke 1)
#   BENCH_CONNECTIONS        pgbench clients and wrk connections (default 32; smoke 4)
#   BENCH_STREAMS            change streams held open during each window (s) (default 500; smoke 20)
#   BENCH_PAIRS              pairs of windows (s0) and (s) (default 4; smoke 1)
#   BENCH_PAIR_SECONDS       measured seconds per window (default 5; smoke 2)
#   BENCH_WARMUP_RATE_CAP    scans seeded per warm-up second (default 50000; smoke 20000): above any rate
#                            this box reaches
#   BENCH_SEED_FACTOR        a measured run gets this many times the scans the fastest rate seen so far
#                            (its warm-up's or an earlier run's) would use (default 3)
#   BENCH_DB                 database to create and drop (default signal_scans_bench; smoke signal_scans_bench_smoke)
#   BENCH_DB_MAX_CONNECTIONS the service's and the thin peer's pool size (default 10, the service's default)
#   BENCH_PG_RESTART         1: may enable pg_stat_statements via ALTER SYSTEM + a server restart
#                            (default 1 for a full run, 0 for --smoke); 0: never restart
#   BENCH_KEEP_DB=1          keep the benchmark database afterwards
#   PGHOST PGPORT PGUSER     the PostgreSQL server (default 127.0.0.1 5432 postgres; trust auth)
#   CARGO_TARGET_DIR         honoured by every build (production profile) (the thin peer shares its dependencies)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
OUT="$BENCH/out"

SMOKE=0
UPDATE_DOCS=0
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    --update-docs) UPDATE_DOCS=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep -v shellcheck | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "bench/run.sh: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

if [ "$SMOKE" = 1 ]; then
  MODE=smoke
  SECONDS_PER_RUN="${BENCH_SECONDS:-2}"
  WARMUP="${BENCH_WARMUP_SECONDS:-1}"
  CONNS="${BENCH_CONNECTIONS:-4}"
  DB="${BENCH_DB:-signal_scans_bench_smoke}"
  PG_RESTART="${BENCH_PG_RESTART:-0}"
  WARMUP_RATE_CAP="${BENCH_WARMUP_RATE_CAP:-20000}"
  STREAMS="${BENCH_STREAMS:-20}"
  PAIRS="${BENCH_PAIRS:-1}"
  PAIR_SECONDS="${BENCH_PAIR_SECONDS:-2}"
else
  MODE=full
  SECONDS_PER_RUN="${BENCH_SECONDS:-20}"
  WARMUP="${BENCH_WARMUP_SECONDS:-2}"
  CONNS="${BENCH_CONNECTIONS:-32}"
  DB="${BENCH_DB:-signal_scans_bench}"
  PG_RESTART="${BENCH_PG_RESTART:-1}"
  WARMUP_RATE_CAP="${BENCH_WARMUP_RATE_CAP:-50000}"
  STREAMS="${BENCH_STREAMS:-500}"
  PAIRS="${BENCH_PAIRS:-4}"
  PAIR_SECONDS="${BENCH_PAIR_SECONDS:-5}"
fi
# Of the change streams held open during a window (s), this many follow the benchmark's group (and must
# each see every change of the run); the rest follow groups where nothing changes.
BUSY_STREAMS=10
if [ "$STREAMS" -lt "$BUSY_STREAMS" ]; then BUSY_STREAMS="$STREAMS"; fi
SEED_FACTOR="${BENCH_SEED_FACTOR:-3}"
DB_MAX_CONNECTIONS="${BENCH_DB_MAX_CONNECTIONS:-10}"
THREADS=2 # wrk threads and pgbench jobs
if [ "$CONNS" -lt "$THREADS" ]; then THREADS="$CONNS"; fi
GROUP=beefcafe0000000000000001
# The smallest range a measured run gets, whatever its warm-up rate.
MIN_RANGE=1000
# How long the watch may take, after the service has stopped, to print the run's last changes
# (its fallback poll is FEED_POLL_MS, 1 s by default).
WATCH_DRAIN_SECONDS=10

export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
ADMIN_DB=postgres
DATABASE_URL_PG="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"

for v in SECONDS_PER_RUN WARMUP CONNS DB_MAX_CONNECTIONS WARMUP_RATE_CAP SEED_FACTOR STREAMS PAIRS PAIR_SECONDS; do
  if ! [[ "${!v}" =~ ^[0-9]+$ ]] || [ "${!v}" -lt 1 ]; then
    echo "bench/run.sh: $v must be a positive integer, got '${!v}'" >&2
    exit 2
  fi
done
if ! [[ "$DB" =~ ^[a-z_][a-z0-9_]*$ ]]; then
  echo "bench/run.sh: BENCH_DB must be a plain lowercase identifier, got '$DB'" >&2
  exit 2
fi

log() { printf '\n== [%ds] %s\n' "$SECONDS" "$*" >&2; }
die() {
  printf 'bench/run.sh: FAILED: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------- cleanup
TMP="$(mktemp -d /tmp/signal-scans-bench.XXXXXX)"
SERVICE_PID=""
WATCH_PID=""
STAMP_PID=""
STREAMS_PID=""
DB_CREATED=0

# stop_pid PID: SIGTERM, then SIGKILL after 10 s; waits for it.
stop_pid() {
  local pid="$1"
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "process $pid did not stop on SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}
stop_service() {
  local pid="$SERVICE_PID"
  SERVICE_PID=""
  stop_pid "$pid"
}
stop_watch() {
  local watch="$WATCH_PID" stamp="$STAMP_PID"
  WATCH_PID="" STAMP_PID=""
  stop_pid "$watch"
  # The stamper ends at the end of its input, i.e. once the watch has gone.
  stop_pid "$stamp"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_service
  stop_watch
  stop_pid "$STREAMS_PID"
  if [ "$DB_CREATED" = 1 ] && [ "${BENCH_KEEP_DB:-0}" != 1 ]; then
    psql -X -q -d "$ADMIN_DB" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$TMP"
  if [ "$rc" -ne 0 ]; then
    echo "bench/run.sh: exit $rc (mode $MODE); logs of the last runs are in $OUT" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools
APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || die "missing $*, and no apt-get to install it"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ "$APT_UPDATED" = 0 ]; then
    $sudo apt-get update -qq
    APT_UPDATED=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

log "tools"
command -v wrk >/dev/null || apt_install wrk
command -v sqlite3 >/dev/null || apt_install sqlite3
command -v curl >/dev/null || apt_install curl
command -v psql >/dev/null || apt_install postgresql-client
command -v python3 >/dev/null || apt_install python3
# Debian 12: pgbench is /usr/lib/postgresql/<v>/bin/pgbench, shipped by the server package
# postgresql-<v> (not by postgresql-client-<v>); /usr/bin/pgbench is postgresql-common's wrapper.
if ! command -v pgbench >/dev/null || ! pgbench --version >/dev/null 2>&1; then
  # shellcheck disable=SC2012
  PGV="$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n 1)"
  apt_install "postgresql-${PGV:-15}"
fi
if command -v gnuplot >/dev/null; then
  GNUPLOT=gnuplot
elif command -v gnuplot-nox >/dev/null; then
  GNUPLOT=gnuplot-nox
else
  apt_install gnuplot-nox
  GNUPLOT="$(command -v gnuplot || command -v gnuplot-nox)"
fi
for tool in wrk sqlite3 curl psql pgbench python3 "$GNUPLOT" cargo; do
  command -v "$tool" >/dev/null || die "$tool is not available"
done

# ---------------------------------------------------------------- build
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
log "cargo build --profile production (the service)"
build_start=$(date +%s)
cargo build --profile production --bin signal-scans
BUILD_SECONDS=$(($(date +%s) - build_start))
BIN="$TARGET_DIR/production/signal-scans"
[ -x "$BIN" ] || die "no binary at $BIN after the build"
# Its own package and lock file, built into the same target directory so that the dependencies
# both builds resolve identically (same versions, features and profile) are compiled once.
log "cargo build --profile production (the thin peer, bench/thin-peer)"
build_start=$(date +%s)
cargo build --profile production --locked --manifest-path "$BENCH/thin-peer/Cargo.toml" --target-dir "$TARGET_DIR"
THIN_BUILD_SECONDS=$(($(date +%s) - build_start))
THIN_BIN="$TARGET_DIR/production/thin-peer"
[ -x "$THIN_BIN" ] || die "no binary at $THIN_BIN after the build"
# The client that holds run (s)'s streams: compiled, as it shares the cores it measures on.
log "cargo build --profile production (the stream client, bench/stream-client)"
cargo build --profile production --locked --manifest-path "$BENCH/stream-client/Cargo.toml" --target-dir "$TARGET_DIR"
STREAM_CLIENT_BIN="$TARGET_DIR/production/stream-client"
[ -x "$STREAM_CLIENT_BIN" ] || die "no binary at $STREAM_CLIENT_BIN after the build"

rm -rf "$OUT" && mkdir -p "$OUT" # bench/out is ours alone (and not committed)

# The thin peer and (a2) replay the service's statement; say so when they no longer match it.
DRIFT="$(python3 bench/statement-drift.py src/store/postgres.rs bench/thin-peer/src/main.rs \
  bench/service-cancel.pgbench)" || die "bench/statement-drift.py failed"
[ -z "$DRIFT" ] || printf 'WARNING: %s\n' "$DRIFT" >&2

# ---------------------------------------------------------------- PostgreSQL
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -d "$ADMIN_DB" "$@"; }
psql_bench() { psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }

wait_pg() {
  for _ in $(seq 1 60); do
    pg_isready -q -d "$ADMIN_DB" && return 0
    sleep 0.5
  done
  return 1
}

# The local cluster listening on PGPORT, as "version name" (for pg_ctlcluster), if there is one.
local_cluster() {
  case "$PGHOST" in 127.0.0.1 | localhost | ::1 | /*) ;; *) return 1 ;; esac
  command -v pg_lsclusters >/dev/null || return 1
  pg_lsclusters -h | awk -v port="$PGPORT" '$3 == port { print $1, $2; exit }' | grep .
}

log "PostgreSQL at $PGHOST:$PGPORT"
if ! pg_isready -q -d "$ADMIN_DB"; then
  if cluster="$(local_cluster)"; then
    echo "PostgreSQL is down; starting cluster $cluster" >&2
    # shellcheck disable=SC2086
    pg_ctlcluster --skip-systemctl-redirect $cluster start
  fi
  wait_pg || die "PostgreSQL does not answer at $PGHOST:$PGPORT"
fi

# pg_stat_statements counts the statements the service sends per request. It must be in
# shared_preload_libraries, which takes a server restart: done once, idempotently, when allowed.
PSS=0
preload="$(psql_admin -Atc "SELECT current_setting('shared_preload_libraries')")"
if [[ ",${preload// /}," == *",pg_stat_statements,"* ]]; then
  PSS=1
elif [ "$PG_RESTART" = 1 ] &&
  [ "$(psql_admin -Atc "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'")" = 1 ] &&
  cluster="$(local_cluster)"; then
  log "enabling pg_stat_statements: ALTER SYSTEM SET shared_preload_libraries, restarting cluster $cluster"
  new_preload="pg_stat_statements"
  [ -n "${preload// /}" ] && new_preload="$preload,pg_stat_statements"
  psql_admin -c "ALTER SYSTEM SET shared_preload_libraries = '$new_preload'"
  # shellcheck disable=SC2086
  pg_ctlcluster --skip-systemctl-redirect $cluster restart
  wait_pg || die "PostgreSQL did not come back after the restart"
  PSS=1
else
  echo "pg_stat_statements is not loaded (and BENCH_PG_RESTART=$PG_RESTART): statements per request" \
    "are not counted; transactions per request still are (pg_stat_database)" >&2
fi

log "database $DB (dropped and recreated)"
psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
psql_admin -c "CREATE DATABASE $DB"
DB_CREATED=1
[ "$PSS" = 1 ] && psql_bench -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"

# Durability is part of what is measured: refuse to benchmark without it.
SYNC_COMMIT="$(psql_bench -Atc "SHOW synchronous_commit")"
FSYNC="$(psql_bench -Atc "SHOW fsync")"
echo "synchronous_commit = $SYNC_COMMIT, fsync = $FSYNC" >&2
[ "$SYNC_COMMIT" != off ] || die "synchronous_commit is off; the benchmark measures durable commits only"
[ "$FSYNC" = on ] || die "fsync is off; the benchmark measures durable commits only"
PG_SETTINGS="$(psql_bench -Atc "SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ', ' ORDER BY name)
  FROM pg_settings WHERE name IN ('shared_buffers', 'max_connections', 'wal_sync_method', 'full_page_writes',
  'synchronous_commit', 'fsync', 'wal_level', 'commit_delay')")"
PG_VERSION="$(psql_bench -Atc "SHOW server_version")"

DATABASE_URL="$DATABASE_URL_PG" "$BIN" migrate >/dev/null
KEY_JSON="$(DATABASE_URL="$DATABASE_URL_PG" "$BIN" keys create --name bench --permission signals:write \
  --account-group "$GROUP" --json)"
KEY_PG="$(printf '%s' "$KEY_JSON" | grep -o '"key" *: *"ssk_[0-9a-f]*"' | grep -o 'ssk_[0-9a-f]*')" ||
  die "keys create --json printed no key"
KEY_JSON="$(DATABASE_URL="$DATABASE_URL_PG" "$BIN" keys create --name bench-streams \
  --permission signals:read --all-account-groups --json)"
KEY_STREAMS="$(printf '%s' "$KEY_JSON" | grep -o '"key" *: *"ssk_[0-9a-f]*"' | grep -o 'ssk_[0-9a-f]*')" ||
  die "keys create --json printed no key (streams)"
# pgbench's source of ids (bench/*.pgbench); not part of the service's schema.
psql_bench -c "CREATE SEQUENCE bench_ids AS bigint"

# ---------------------------------------------------------------- id ranges
# Scan n has the id lpad(to_hex(n), 24, '0'). Run slot s owns 10^9 ids from s * 10^9: its warm-up
# takes them from s * 10^9 + 1, its measured run from s * 10^9 + 5 * 10^8 + 1. Ranges never touch,
# so a run that overran its own would ask for ids nobody seeded, never for another run's scans.
warmup_first() { echo $(($1 * 1000000000 + 1)); }
measured_first() { echo $(($1 * 1000000000 + 500000001)); }
hex_id() { printf '%024x' "$1"; }
# The fastest rate measured so far in this run, measured runs and warm-ups alike.
FASTEST=0
# range_size SECONDS: scans for a measured run: SEED_FACTOR times what the fastest rate seen so far
# (its own warm-up's, or an earlier run's) would use. A warm-up is short and can be slowed by a
# neighbour; the fastest run before (the bare UPDATE, normally) bounds every later one.
range_size() {
  awk -v r="$FASTEST" -v s="$1" -v f="$SEED_FACTOR" -v m="$MIN_RANGE" \
    'BEGIN { n = int(r * s * f) + 1; print (n > m) ? n : m }'
}
# saw_rate RATE: a rate measured in this run, for the ranges of the runs after it.
saw_rate() { FASTEST="$(awk -v r="$1" -v f="$FASTEST" 'BEGIN { print (r > f) ? r : f }')"; }

# seed_pg FIRST COUNT: COUNT queued scans from id number FIRST, each with its creation audit row.
seed_pg() {
  local first="$1" count="$2"
  psql_bench >/dev/null <<SQL
INSERT INTO signal_scans (id, account_group_id, status, created_at, updated_at)
SELECT lpad(to_hex(n), 24, '0'), '$GROUP', 'queued',
       now() - make_interval(secs => $first + $count - n), now() - make_interval(secs => $first + $count - n)
FROM generate_series($first::bigint, $first::bigint + $count - 1) AS n;
INSERT INTO signal_scan_events (scan_id, from_status, to_status, occurred_at)
SELECT id, NULL, 'queued', created_at FROM signal_scans
WHERE id BETWEEN '$(hex_id "$first")' AND '$(hex_id $((first + count - 1)))' ORDER BY created_at;
SQL
  local queued
  queued="$(queued_pg "$first" "$count")"
  [ "$queued" = "$count" ] || die "seeding left $queued queued scans in the range from $first, expected $count"
}
# Every run starts from the same state: only its own scans, statistics fresh, nothing left to flush.
fresh_pg() { psql_bench -c "TRUNCATE signal_scan_events, signal_scans RESTART IDENTITY" >/dev/null; }
settle_pg() {
  psql_bench >/dev/null <<SQL
VACUUM ANALYZE signal_scans;
VACUUM ANALYZE signal_scan_events;
CHECKPOINT;
SQL
}
in_range() { echo "BETWEEN '$(hex_id "$1")' AND '$(hex_id $(($1 + $2 - 1)))'"; }
queued_pg() { psql_bench -Atc "SELECT count(*) FROM signal_scans WHERE status = 'queued' AND id $(in_range "$1" "$2")"; }
cancelled_pg() { psql_bench -Atc "SELECT count(*) FROM signal_scans WHERE status = 'cancelled' AND id $(in_range "$1" "$2")"; }
changes_pg() { psql_bench -Atc "SELECT count(*) FROM signal_scan_events WHERE from_status IS NOT NULL AND scan_id $(in_range "$1" "$2")"; }
xacts_pg() {
  psql_bench -Atc "SELECT pg_stat_clear_snapshot(); SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()" | tail -n 1
}

SQLITE_FILE="$TMP/bench.db"
SQLITE_URL="sqlite://$SQLITE_FILE"
seed_sqlite() {
  local first="$1" count="$2"
  sqlite3 -bail "$SQLITE_FILE" >/dev/null <<SQL
PRAGMA busy_timeout = 10000;
BEGIN IMMEDIATE;
WITH RECURSIVE seq(n) AS (SELECT $first UNION ALL SELECT n + 1 FROM seq WHERE n < $first + $count - 1)
INSERT INTO signal_scans (id, account_group_id, status, created_at, updated_at)
SELECT printf('%024x', n), '$GROUP', 'queued',
       strftime('%Y-%m-%dT%H:%M:%S', 'now', '-' || ($first + $count - n) || ' seconds') || '.000000Z',
       strftime('%Y-%m-%dT%H:%M:%S', 'now', '-' || ($first + $count - n) || ' seconds') || '.000000Z'
FROM seq;
INSERT INTO signal_scan_events (scan_id, from_status, to_status, occurred_at)
SELECT id, NULL, 'queued', created_at FROM signal_scans WHERE id $(in_range "$first" "$count") ORDER BY created_at;
COMMIT;
ANALYZE;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
  local queued
  queued="$(sqlite3 "$SQLITE_FILE" "SELECT count(*) FROM signal_scans WHERE status = 'queued' AND id $(in_range "$first" "$count")")"
  [ "$queued" = "$count" ] || die "SQLite seeding left $queued queued scans in the range from $first, expected $count"
}
cancelled_sqlite() {
  sqlite3 "$SQLITE_FILE" "PRAGMA busy_timeout = 10000; SELECT count(*) FROM signal_scans WHERE status = 'cancelled' AND id $(in_range "$1" "$2")" | tail -n 1
}

# ---------------------------------------------------------------- helpers
# How busy the machine is (%, all cores) over one second. Taken right before a measured run, when the
# benchmark itself is idle, it tells whether something else was competing for the cores.
busy_pct() {
  local a b
  a="$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)"
  sleep 1
  b="$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)"
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ")
    d = y[2] - x[2]; printf "%.0f", (d > 0) ? 100 * (y[1] - x[1]) / d : 0 }'
}

# free_port: a loopback port nobody listens on, below the kernel's range of ephemeral ports: a port
# in that range may be the local end of a client's connection (the 500 streams' own, say), which
# connecting to does not reveal but which a server cannot bind.
EPHEMERAL_LOW="$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

CLK_TCK="$(getconf CLK_TCK)"
# utime + stime of a process, all its threads, in clock ticks (/proc/<pid>/stat fields 14 and 15;
# the command name in field 2 may hold spaces, so count from after its closing parenthesis).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
peak_rss_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
# Every PostgreSQL process's utime + stime together, and the whole machine's busy time (/proc/stat,
# all processes), in clock ticks: with them a run's CPU per request can be read in units of what the
# database spent on the same requests, which the machine's speed of the moment moves alike.
pg_ticks() {
  local p
  for p in $(pgrep -x postgres); do sed 's/.*) //' "/proc/$p/stat" 2>/dev/null || true; done |
    awk '{ s += $12 + $13 } END { print s + 0 }'
}
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

# start_server KIND URL LOGFILE: KIND service or thin; sets SERVICE_PID and BASE_URL once it answers.
start_server() {
  local kind="$1" url="$2" logfile="$3" port probe
  port="$(free_port)" || die "no free loopback port"
  BASE_URL="http://127.0.0.1:$port"
  if [ "$kind" = service ]; then
    DATABASE_URL="$url" LISTEN_ADDR="127.0.0.1:$port" \
      RATE_LIMIT_PER_SECOND=1000000 RATE_LIMIT_BURST=1000000 STREAM_MAX_PER_KEY=10000 \
      DB_MAX_CONNECTIONS="$DB_MAX_CONNECTIONS" LOG_FORMAT=json RUST_LOG=warn \
      "$BIN" serve >"$logfile" 2>&1 &
    probe="$BASE_URL/readyz"
  else
    DATABASE_URL="$url" LISTEN_ADDR="127.0.0.1:$port" DB_MAX_CONNECTIONS="$DB_MAX_CONNECTIONS" \
      "$THIN_BIN" >"$logfile" 2>&1 &
    probe="$BASE_URL/" # it connects its pool before it listens; any answer (404 here) means ready
  fi
  SERVICE_PID=$!
  for _ in $(seq 1 100); do
    kill -0 "$SERVICE_PID" 2>/dev/null || {
      tail -n 20 "$logfile" >&2
      die "the $kind server exited at start (log: $logfile)"
    }
    case "$(curl -s -o /dev/null -w '%{http_code}' "$probe" || true)" in
      200) [ "$kind" = service ] && return 0 ;;
      404) [ "$kind" = thin ] && return 0 ;;
    esac
    sleep 0.1
  done
  die "the $kind server did not become ready on $BASE_URL (log: $logfile)"
}

# run_wrk KEY FIRST COUNT SECONDS OUTFILE
run_wrk() {
  BENCH_GROUP="$GROUP" BENCH_KEY="$1" BENCH_ID_FIRST="$2" BENCH_ID_COUNT="$3" BENCH_THREADS="$THREADS" \
    BENCH_LATENCY_OUT="$5" \
    wrk -t"$THREADS" -c"$CONNS" -d"$4"s --latency -s "$BENCH/cancel.lua" "$BASE_URL" >"$5.wrk" 2>&1 ||
    {
      cat "$5.wrk" >&2
      die "wrk failed"
    }
  [ -s "$5" ] || die "wrk wrote no latency file ($5)"
}

kv() { awk -v k="$2" '$1 == k { print $2; exit }' "$1"; }
# percentile_of FILE P: the microseconds of percentile P from a latency file.
percentile_of() { awk -v p="$2" '$1 == "p" && $2 == p { print $3; exit }' "$1"; }
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
div() {
  awk -v a="$1" -v b="$2" -v f="${3:-%.2f}" \
    'BEGIN { if (a == "null" || b == "null" || b == 0) print "null"; else printf f, a / b }'
}
wrk_rate() { div "$(kv "$1" requests)" "$(awk -v d="$(kv "$1" duration_us)" 'BEGIN { print d / 1e6 }')" '%.1f'; }

# Sum of the service's own http_requests_total for the cancel route, by status (a prefix: "2", "404").
metrics_count() {
  curl -s "$BASE_URL/metrics" | awk -v want="$1" '
    /^http_requests_total\{/ && /cancel/ {
      match($0, /status="[0-9]+"/); s = substr($0, RSTART + 8, 3)
      if (index(s, want) == 1) n += $NF
    }
    END { printf "%d", n }'
}
# Cancels the service answered 200 for a scan that was already cancelled: a request that changed nothing.
metrics_recancels() {
  curl -s "$BASE_URL/metrics" | awk '
    /^scan_cancels_total\{/ && /previous_status="cancelled"/ { n += $NF }
    END { printf "%d", n }'
}

# ---------------------------------------------------------------- (a), (a2) pgbench
# pgbench_check NAME FIRST COUNT TRANSACTIONS SETTING: every transaction changed one scan of the range,
# and the sequence never went past it (SETTING is the one that sizes the range).
pgbench_check() {
  local name="$1" first="$2" count="$3" tx="$4" setting="$5" used changed
  used="$(psql_bench -Atc "SELECT CASE WHEN is_called THEN last_value - $first + 1 ELSE 0 END FROM bench_ids")"
  [ "$used" -le "$count" ] || die "($name) ran out of scans: took $used ids of a range of $count (raise $setting)"
  changed="$(cancelled_pg "$first" "$count")"
  [ "$changed" = "$tx" ] || die "($name) $tx transactions changed $changed scans: some changed nothing"
}

# measure_pgbench NAME SCRIPT SLOT: fresh scans, warm-up, the measured run; sets NAME_* variables.
measure_pgbench() {
  local name="$1" script="$2" slot="$3" txt="$OUT/pgbench-$1.txt"
  local wfirst wcount mfirst mcount
  wfirst="$(warmup_first "$slot")" wcount=$((WARMUP * WARMUP_RATE_CAP))
  mfirst="$(measured_first "$slot")"
  run_pgbench() { # FIRST SECONDS [extra args]
    psql_bench -Atc "SELECT setval('bench_ids', $1, false)" >/dev/null
    local secs="$2"
    shift 2
    pgbench -n -M prepared -c "$CONNS" -j "$THREADS" -T "$secs" -f "$BENCH/$script" \
      -D group="$GROUP" "$@" "$DB"
  }
  log "($name) $wcount fresh scans for the warm-up"
  fresh_pg
  seed_pg "$wfirst" "$wcount"
  settle_pg
  echo "pgbench warm-up ${WARMUP}s" >&2
  run_pgbench "$wfirst" "$WARMUP" >"$OUT/pgbench-$name-warmup.txt" 2>&1 || {
    cat "$OUT/pgbench-$name-warmup.txt" >&2
    die "($name) pgbench warm-up failed"
  }
  local wtps wtx
  wtps="$(awk '/^tps = / { printf "%.1f", $3; exit }' "$OUT/pgbench-$name-warmup.txt")"
  wtx="$(awk -F': ' '/number of transactions actually processed/ { split($2, x, "/"); print x[1]; exit }' "$OUT/pgbench-$name-warmup.txt")"
  { [ -n "$wtps" ] && [ -n "$wtx" ]; } || die "($name) no tps in the warm-up's output"
  pgbench_check "$name warm-up" "$wfirst" "$wcount" "$wtx" BENCH_WARMUP_RATE_CAP
  saw_rate "$wtps"
  mcount="$(range_size "$SECONDS_PER_RUN")"
  printf -v "${name}_WARMUP_RATE" '%s' "$wtps"
  printf -v "${name}_SEEDED" '%s' "$mcount"
  log "($name) warm-up ran at $wtps/s (fastest so far $FASTEST/s): $mcount fresh scans for the measured run"
  seed_pg "$mfirst" "$mcount"
  settle_pg
  printf -v "${name}_IDLE_BUSY" '%s' "$(busy_pct)"
  local idle_busy_var="${name}_IDLE_BUSY"
  log "($name) pgbench -n -M prepared -c $CONNS -j $THREADS -T $SECONDS_PER_RUN -f bench/$script (machine ${!idle_busy_var}% busy just before)"
  rm -rf "$TMP/pgbench-log" && mkdir -p "$TMP/pgbench-log"
  run_pgbench "$mfirst" "$SECONDS_PER_RUN" -l --log-prefix="$TMP/pgbench-log/tx" >"$txt" 2>&1 || {
    cat "$txt" >&2
    die "($name) pgbench failed"
  }
  cat "$txt" >&2
  local tps failed tx
  tps="$(awk '/^tps = / { printf "%.1f", $3; exit }' "$txt")"
  [ -n "$tps" ] || die "($name) no tps in pgbench's output"
  awk -v t="$tps" 'BEGIN { exit !(t > 0) }' || die "($name) pgbench ran no transaction"
  failed="$(awk -F': ' '/number of failed transactions/ { split($2, x, " "); print x[1]; exit }' "$txt")"
  tx="$(awk -F': ' '/number of transactions actually processed/ { split($2, x, "/"); print x[1]; exit }' "$txt")"
  pgbench_check "$name" "$mfirst" "$mcount" "$tx" BENCH_SEED_FACTOR
  saw_rate "$tps"
  printf -v "${name}_RPS" '%s' "$tps"
  printf -v "${name}_FAILED" '%s' "${failed:-0}"
  printf -v "${name}_REQUESTS" '%s' "$tx"
  printf -v "${name}_CHANGED" '%s' "$(cancelled_pg "$mfirst" "$mcount")"
  printf -v "${name}_EVENTS" '%s' "$(changes_pg "$mfirst" "$mcount")"
  # Per-transaction latencies (column 3, microseconds) -> the same percentiles as wrk's.
  local lat="$OUT/latency-$name.txt"
  cat "$TMP"/pgbench-log/tx* | awk '{ print $3 }' | sort -n | awk '
    function at(q,   k) { k = int(q * NR); if (k < q * NR) k++; if (k < 1) k = 1; return v[k] }
    { v[NR] = $1 }
    END { for (i = 1; i <= 99; i++) printf "p %d %s\n", i, at(i / 100)
          printf "p 99.5 %s\np 99.9 %s\np 99.99 %s\np 100 %s\n", at(0.995), at(0.999), at(0.9999), v[NR] }' >"$lat"
  awk '$1 == "p" { printf "%s %.3f\n", $2, $3 / 1000 }' "$lat" >"$OUT/latency-$name.dat"
  printf -v "${name}_P50" '%s' "$(ms "$(percentile_of "$lat" 50)")"
  printf -v "${name}_P99" '%s' "$(ms "$(percentile_of "$lat" 99)")"
  printf -v "${name}_MAX" '%s' "$(ms "$(percentile_of "$lat" 100)")"
}

# ---------------------------------------------------------------- (t), (b), (c) over HTTP
# start_watch: one `signal-scans scans watch` on the benchmark database, each line it prints stamped
# with the moment it was read (bench/watch-delay.py stamp).
start_watch() {
  mkfifo "$TMP/watch.fifo"
  python3 "$BENCH/watch-delay.py" stamp <"$TMP/watch.fifo" >"$OUT/watch-lines.txt" &
  STAMP_PID=$!
  DATABASE_URL="$DATABASE_URL_PG" RUST_LOG=info,sqlx=warn "$BIN" scans watch \
    >"$TMP/watch.fifo" 2>"$OUT/watch.log" &
  WATCH_PID=$!
  for _ in $(seq 1 150); do
    kill -0 "$WATCH_PID" 2>/dev/null || {
      cat "$OUT/watch.log" >&2
      die "scans watch exited at start"
    }
    grep -q 'watching for status changes' "$OUT/watch.log" && return 0
    sleep 0.1
  done
  die "scans watch did not say it was watching within 15 s (log: $OUT/watch.log)"
}

# check_run NAME LAT CHANGED NOT_FOUND RECANCELS: the run behind latency file LAT did what it should:
# it completed requests, every 2xx changed a scan of the run's own range (CHANGED scans changed there),
# no request ran past the range (NOT_FOUND: the service's 404s), none changed nothing (RECANCELS).
check_run() {
  local name="$1" lat="$2" changed_rows="$3" not_found="$4" recancels="$5" requests non2xx beyond ok
  requests="$(kv "$lat" requests)" non2xx="$(kv "$lat" non2xx)" beyond="$(kv "$lat" beyond_range)"
  ok=$((requests - non2xx))
  echo "($name) $requests requests, $ok 2xx, $non2xx non-2xx, $changed_rows scans changed in the run's range" >&2
  [ "$requests" -gt 0 ] || die "($name) wrk completed no request"
  [ "$ok" -gt 0 ] || die "($name) wrk saw zero 2xx responses ($non2xx errors)"
  [ "$beyond" = 0 ] || die "($name) ran out of scans: $beyond requests asked for ids past its range (raise BENCH_SEED_FACTOR)"
  [ "$not_found" = 0 ] || die "($name) the service answered 404 $not_found times: requests for scans nobody seeded"
  [ "$recancels" = 0 ] || die "($name) the service re-cancelled $recancels scans: requests that changed nothing"
  # Requests still in flight when wrk stops are not counted by wrk, but they do change their scans.
  [ "$changed_rows" -ge "$ok" ] || die "($name) $ok 2xx answers but only $changed_rows scans changed: some changed nothing"
}

# measure_http NAME KIND SLOT: KIND is service-pg, thin or service-sqlite. Fresh scans, the server,
# a warm-up, the measured run (with one watch for service-pg); sets NAME_* variables.
measure_http() {
  local name="$1" kind="$2" slot="$3" lat="$OUT/latency-$1.txt"
  local wfirst wcount mfirst mcount url key server
  wfirst="$(warmup_first "$slot")" wcount=$((WARMUP * WARMUP_RATE_CAP))
  mfirst="$(measured_first "$slot")"
  case "$kind" in
    service-pg) url="$DATABASE_URL_PG" key="$KEY_PG" server=service ;;
    thin) url="$DATABASE_URL_PG" key="$KEY_PG" server=thin ;;
    service-sqlite) url="$SQLITE_URL" key="$KEY_SQLITE" server=service ;;
  esac
  seed() {
    if [ "$kind" = service-sqlite ]; then seed_sqlite "$@"; else
      seed_pg "$@"
      settle_pg
    fi
  }
  changed() { if [ "$kind" = service-sqlite ]; then cancelled_sqlite "$@"; else cancelled_pg "$@"; fi; }

  log "($name) $wcount fresh scans for the warm-up"
  [ "$kind" = service-sqlite ] || fresh_pg
  seed "$wfirst" "$wcount"
  start_server "$server" "$url" "$OUT/serve-$name.log"
  echo "$server pid $SERVICE_PID on $BASE_URL; warm-up ${WARMUP}s" >&2
  run_wrk "$key" "$wfirst" "$wcount" "$WARMUP" "$OUT/warmup-$name.txt"
  local wok=$(($(kv "$OUT/warmup-$name.txt" requests) - $(kv "$OUT/warmup-$name.txt" non2xx)))
  [ "$wok" -gt 0 ] || die "($name) the warm-up got no 2xx answer (log: $OUT/serve-$name.log)"
  [ "$(kv "$OUT/warmup-$name.txt" beyond_range)" = 0 ] ||
    die "($name) the warm-up ran out of scans (raise BENCH_WARMUP_RATE_CAP)"
  local wrate
  wrate="$(wrk_rate "$OUT/warmup-$name.txt")"
  saw_rate "$wrate"
  mcount="$(range_size "$SECONDS_PER_RUN")"
  printf -v "${name}_WARMUP_RATE" '%s' "$wrate"
  printf -v "${name}_SEEDED" '%s' "$mcount"
  log "($name) warm-up ran at $wrate/s (fastest so far $FASTEST/s): $mcount fresh scans for the measured run"
  local warmup_end=$SECONDS
  seed "$mfirst" "$mcount"

  [ "$kind" = service-pg ] && start_watch
  if [ "$kind" != service-sqlite ]; then
    # pg_stat_database counts a transaction when its backend flushes its statistics: at once when
    # idle, unless it flushed less than a second before; then up to 10 s later (PGSTAT_IDLE_INTERVAL,
    # PostgreSQL 15+). Wait that out, so the warm-up's transactions are all in before the count starts.
    while [ $((SECONDS - warmup_end)) -lt 11 ]; do sleep 0.5; done
  fi
  printf -v "${name}_IDLE_BUSY" '%s' "$(busy_pct)"
  local before_2xx=0 before_404=0 before_xact=0
  if [ "$server" = service ]; then
    before_2xx="$(metrics_count 2)"
    before_404="$(metrics_count 404)"
  fi
  if [ "$kind" != service-sqlite ]; then
    # pg_stat_statements is exact and immediate: reset it after the warm-up.
    [ "$PSS" = 1 ] && psql_bench -Atc "SELECT pg_stat_statements_reset()" >/dev/null
    before_xact="$(xacts_pg)"
  fi
  local idle_busy_var="${name}_IDLE_BUSY"
  log "($name) wrk -t$THREADS -c$CONNS -d${SECONDS_PER_RUN}s --latency -s bench/cancel.lua (machine ${!idle_busy_var}% busy just before)"
  local cpu_before cpu_after pg_before pg_after machine_before machine_after
  cpu_before="$(cpu_ticks "$SERVICE_PID")" pg_before="$(pg_ticks)" machine_before="$(machine_ticks)"
  run_wrk "$key" "$mfirst" "$mcount" "$SECONDS_PER_RUN" "$lat"
  cpu_after="$(cpu_ticks "$SERVICE_PID")" pg_after="$(pg_ticks)" machine_after="$(machine_ticks)"
  local rss ok_metrics=null not_found=0 recancels=0
  rss="$(peak_rss_kb "$SERVICE_PID")"
  if [ "$server" = service ]; then
    ok_metrics=$(($(metrics_count 2) - before_2xx))
    not_found=$(($(metrics_count 404) - before_404))
    recancels="$(metrics_recancels)"
  fi
  local connections=null
  if [ "$kind" != service-sqlite ]; then
    connections="$(psql_bench -Atc "SELECT count(*) FROM pg_stat_activity
      WHERE datname = current_database() AND application_name LIKE 'signal-scans%'")"
  fi
  printf -v "${name}_DB_CONNECTIONS" '%s' "$connections"
  # The service stops gracefully: requests in flight finish, and what it still has to publish goes out.
  stop_service
  cat "$lat.wrk" >&2

  local requests duration non2xx sockerr changed_rows
  requests="$(kv "$lat" requests)"
  duration="$(kv "$lat" duration_us)"
  non2xx="$(kv "$lat" non2xx)"
  sockerr=$(($(kv "$lat" errors_connect) + $(kv "$lat" errors_read) + $(kv "$lat" errors_write) + $(kv "$lat" errors_timeout)))
  changed_rows="$(changed "$mfirst" "$mcount")"
  check_run "$name" "$lat" "$changed_rows" "$not_found" "$recancels"

  printf -v "${name}_REQUESTS" '%s' "$requests"
  printf -v "${name}_RPS" '%s' "$(wrk_rate "$lat")"
  saw_rate "$(wrk_rate "$lat")"
  printf -v "${name}_OK_METRICS" '%s' "$ok_metrics"
  printf -v "${name}_FAILED" '%s' "$non2xx"
  printf -v "${name}_SOCKERR" '%s' "$sockerr"
  printf -v "${name}_CHANGED" '%s' "$changed_rows"
  printf -v "${name}_P50" '%s' "$(ms "$(percentile_of "$lat" 50)")"
  printf -v "${name}_P99" '%s' "$(ms "$(percentile_of "$lat" 99)")"
  printf -v "${name}_MAX" '%s' "$(ms "$(kv "$lat" latency_max_us)")"
  printf -v "${name}_RSS_MB" '%s' "$(div "$rss" 1024 '%.1f')"
  # CPU of the server process over the measured run (wrk's duration), per completed request.
  local cpu_us
  cpu_us="$(awk -v t=$((cpu_after - cpu_before)) -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", t * 1e6 / hz }')"
  printf -v "${name}_CPU_US" '%s' "$(div "$cpu_us" "$requests" '%.0f')"
  printf -v "${name}_CPU_CORES" '%s' "$(div "$cpu_us" "$duration")"
  # The whole machine's CPU per request in units of PostgreSQL's (see pg_ticks).
  printf -v "${name}_MACHINE_PER_PG" '%s' "$(div $((machine_after - machine_before)) $((pg_after - pg_before)))"
  awk '$1 == "p" { printf "%s %.3f\n", $2, $3 / 1000 }' "$lat" >"$OUT/latency-$name.dat"

  [ "$kind" = service-sqlite ] && return 0
  local events
  events="$(changes_pg "$mfirst" "$mcount")"
  [ "$events" = "$changed_rows" ] || die "($name) wrote $events audit rows for $changed_rows changed scans"

  if [ "$kind" = service-pg ]; then
    # Every committed change of the run should reach the watch; give it its fallback poll and more.
    local printed=0
    for _ in $(seq 1 $((WATCH_DRAIN_SECONDS * 10))); do
      printed="$(wc -l <"$OUT/watch-lines.txt")"
      [ "$printed" -ge "$events" ] && break
      sleep 0.1
    done
    sleep 0.5 # a duplicate printed late would still be counted
    stop_watch
    psql_bench -Atc "SELECT scan_id || chr(9) || to_status FROM signal_scan_events
      WHERE from_status IS NOT NULL AND scan_id $(in_range "$mfirst" "$mcount")" >"$OUT/watch-expected.txt"
    python3 "$BENCH/watch-delay.py" report "$OUT/watch-lines.txt" "$OUT/watch-expected.txt" \
      "$mfirst" $((mfirst + mcount - 1)) >"$OUT/watch-report.txt" || die "watch-delay.py report failed"
    echo "(watch) $(tr '\n' ' ' <"$OUT/watch-report.txt")" >&2
    for k in lines unparsed outside_range expected printed_unique missing duplicated extra delay_p50_ms delay_p99_ms delay_max_ms; do
      printf -v "WATCH_${k^^}" '%s' "$(kv "$OUT/watch-report.txt" "$k")"
    done
  fi

  sleep 1 # the servers' backends have exited and so flushed their statistics
  local after_xact
  after_xact="$(xacts_pg)"
  printf -v "${name}_XACTS_PER_REQ" '%s' "$(div $((after_xact - before_xact)) "$requests" '%.3f')"
  local statements=null
  if [ "$PSS" = 1 ]; then
    statements="$(psql_bench -Atc "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
      WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND query NOT ILIKE '%pg_stat_%'")"
    psql_bench -Atc "SELECT calls, round(mean_exec_time::numeric, 3), left(regexp_replace(query, '\s+', ' ', 'g'), 120)
      FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND query NOT ILIKE '%pg_stat_%' ORDER BY calls DESC LIMIT 10" >"$OUT/pg_stat_statements-$name.txt"
    echo "($name) statements during the measured run (calls | mean ms | query):" >&2
    cat "$OUT/pg_stat_statements-$name.txt" >&2
  fi
  printf -v "${name}_STATEMENTS_PER_REQ" '%s' "$(div "$statements" "$requests" '%.3f')"
}

# ---------------------------------------------------------------- (s) and (s0): the change streams' cost
# start_streams SEEN: BENCH_STREAMS change streams on the service (bench/stream-client), BUSY_STREAMS of
# them following the benchmark's group, the others one quiet group each; returns once all are open.
start_streams() {
  local seen="$1" follows=("$GROUP:$BUSY_STREAMS") i
  for i in $(seq 1 $((STREAMS - BUSY_STREAMS))); do follows+=("$(printf '%024x' $((0xfeed000000 + i))):1"); done
  : >"$OUT/streams-ready.txt"
  "$STREAM_CLIENT_BIN" "$BASE_URL" "$KEY_STREAMS" "$seen" "${follows[@]}" \
    >"$OUT/streams-ready.txt" 2>"$OUT/streams.log" &
  STREAMS_PID=$!
  for _ in $(seq 1 300); do
    grep -q ready "$OUT/streams-ready.txt" 2>/dev/null && return 0
    kill -0 "$STREAMS_PID" 2>/dev/null || { cat "$OUT/streams.log" >&2; die "the stream client exited at start"; }
    sleep 0.1
  done
  die "the $STREAMS change streams did not all open within 30 s (log: $OUT/streams.log)"
}
# stop_streams: give the streams the fallback poll and more to receive the run's last changes, then
# let the stream client write what each stream saw.
stop_streams() {
  sleep 2
  kill -TERM "$STREAMS_PID" 2>/dev/null || true
  wait "$STREAMS_PID" || die "the stream client failed (log: $OUT/streams.log)"
  STREAMS_PID=""
}
ticks_to_us() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", t * 1e6 / hz }'; }

# measure_paired SLOT: what 500 open change streams cost the cancels (issue 11), read as (s) ÷ (s0).
# Two runs made a minute apart cannot tell a 10 % difference on a machine whose speed drifts by more
# than that between them (BENCHMARKS.md), so the two sides take turns in windows of PAIR_SECONDS, in
# the order (s0) (s), (s) (s0), (s0) (s), ...: a drift that is steady over a pair of pairs weighs on
# both sides alike. Each window is a run of its own: the service started afresh (no change hub
# left running from an earlier window), a warm-up, the streams opened (for (s)), the measured run,
# the streams' reports checked. Sets streams_* and nostreams_* (each side's windows together),
# STREAMS_* (every stream of every window (s)) and PAIR_RATIOS.
measure_paired() {
  local slot="$1" order=() i k side wcount mcount
  for i in $(seq 1 "$PAIRS"); do
    if [ $((i % 2)) = 1 ]; then order+=(s0 s); else order+=(s s0); fi
  done
  wcount="$(range_size "$WARMUP")" mcount="$(range_size "$PAIR_SECONDS")"
  log "(s) and (s0): ${#order[@]} windows of ${PAIR_SECONDS}s in the order ${order[*]}; $wcount + $mcount fresh scans each"
  fresh_pg
  for k in "${!order[@]}"; do
    seed_pg $(($(warmup_first "$slot") + k * 10000000)) "$wcount"
    seed_pg $(($(measured_first "$slot") + k * 10000000)) "$mcount"
  done
  settle_pg
  local -A requests=() duration=() service=() client=() pg=() machine=()
  local -a rates=()
  STREAMS_STREAMS=0 STREAMS_BUSY=0 STREAMS_COMPLETE=0 STREAMS_MISSING_MAX=0 STREAMS_DUPLICATES=0 STREAMS_FOREIGN=0
  local rss_max=0 connections_max=0
  for k in "${!order[@]}"; do
    side="${order[$k]}"
    local name="$side #$((k + 1))" lat="$OUT/latency-window-$k.txt" seen="$OUT/streams-seen-$k.txt"
    local wfirst=$(($(warmup_first "$slot") + k * 10000000)) mfirst=$(($(measured_first "$slot") + k * 10000000))
    start_server service "$DATABASE_URL_PG" "$OUT/serve-window-$k.log"
    run_wrk "$KEY_PG" "$wfirst" "$wcount" "$WARMUP" "$OUT/warmup-window-$k.txt"
    [ "$(kv "$OUT/warmup-window-$k.txt" beyond_range)" = 0 ] || die "($name) the warm-up ran out of scans"
    [ "$side" = s ] && start_streams "$seen"
    local before_2xx before_404 cpu0 pg0 machine0 client0=0 client1=0
    before_2xx="$(metrics_count 2)" before_404="$(metrics_count 404)"
    cpu0="$(cpu_ticks "$SERVICE_PID")" pg0="$(pg_ticks)" machine0="$(machine_ticks)"
    [ "$side" = s ] && client0="$(cpu_ticks "$STREAMS_PID")"
    run_wrk "$KEY_PG" "$mfirst" "$mcount" "$PAIR_SECONDS" "$lat"
    service[$side]=$((${service[$side]:-0} + $(cpu_ticks "$SERVICE_PID") - cpu0))
    pg[$side]=$((${pg[$side]:-0} + $(pg_ticks) - pg0))
    machine[$side]=$((${machine[$side]:-0} + $(machine_ticks) - machine0))
    [ "$side" = s ] && client1="$(cpu_ticks "$STREAMS_PID")"
    client[$side]=$((${client[$side]:-0} + client1 - client0))
    local not_found recancels rss connections
    not_found=$(($(metrics_count 404) - before_404)) recancels="$(metrics_recancels)"
    if [ "$side" = s ]; then
      rss="$(peak_rss_kb "$SERVICE_PID")"
      connections="$(psql_bench -Atc "SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name LIKE 'signal-scans%'")"
      [ "$rss" -gt "$rss_max" ] && rss_max="$rss"
      [ "$connections" -gt "$connections_max" ] && connections_max="$connections"
      stop_streams
    fi
    stop_service
    local changed_rows events
    changed_rows="$(cancelled_pg "$mfirst" "$mcount")" events="$(changes_pg "$mfirst" "$mcount")"
    check_run "$name" "$lat" "$changed_rows" "$not_found" "$recancels"
    [ "$events" = "$changed_rows" ] || die "($name) wrote $events audit rows for $changed_rows changed scans"
    requests[$side]=$((${requests[$side]:-0} + $(kv "$lat" requests)))
    duration[$side]=$((${duration[$side]:-0} + $(kv "$lat" duration_us)))
    rates+=("$(wrk_rate "$lat")")
    echo "($name) $(wrk_rate "$lat") requests/s" >&2
    if [ "$side" = s ]; then
      psql_bench -Atc "SELECT scan_id FROM signal_scan_events
        WHERE from_status IS NOT NULL AND scan_id $(in_range "$mfirst" "$mcount")" >"$TMP/streams-expected.txt"
      python3 "$BENCH/streams.py" report "$seen" "$GROUP" "$TMP/streams-expected.txt" \
        >"$OUT/streams-report-$k.txt" || die "streams.py report failed"
      echo "($name, streams) $(tr '\n' ' ' <"$OUT/streams-report-$k.txt")" >&2
      local key
      for key in streams busy complete duplicates foreign; do
        printf -v "STREAMS_${key^^}" '%s' $((STREAMS_${key^^} + $(kv "$OUT/streams-report-$k.txt" "$key")))
      done
      STREAMS_MISSING_MAX="$(awk -v a="$STREAMS_MISSING_MAX" -v b="$(kv "$OUT/streams-report-$k.txt" missing_max)" \
        'BEGIN { print (b > a) ? b : a }')"
    fi
  done
  PAIR_RATIOS=""
  for i in $(seq 0 2 $((${#order[@]} - 1))); do
    if [ "${order[$i]}" = s ]; then k="$(div "${rates[$i]}" "${rates[$((i + 1))]}")"; else k="$(div "${rates[$((i + 1))]}" "${rates[$i]}")"; fi
    PAIR_RATIOS="${PAIR_RATIOS:+$PAIR_RATIOS, }$k"
  done
  for side in s s0; do
    local var=streams
    [ "$side" = s0 ] && var=nostreams
    printf -v "${var}_REQUESTS" '%s' "${requests[$side]}"
    printf -v "${var}_RPS" '%s' "$(div "${requests[$side]}" "$(awk -v d="${duration[$side]}" 'BEGIN { print d / 1e6 }')" '%.1f')"
    printf -v "${var}_CPU_US" '%s' "$(div "$(ticks_to_us "${service[$side]}")" "${requests[$side]}" '%.0f')"
    printf -v "${var}_CLIENT_CPU_US" '%s' "$(div "$(ticks_to_us "${client[$side]}")" "${requests[$side]}" '%.0f')"
    printf -v "${var}_MACHINE_PER_PG" '%s' "$(div "${machine[$side]}" "${pg[$side]}")"
  done
  streams_RSS_MB="$(div "$rss_max" 1024 '%.1f')"
  streams_DB_CONNECTIONS="$connections_max"
}

# ---------------------------------------------------------------- the runs
# Each run's slot numbers its id range; the SQLite run has its own file and its own numbers.
measure_pgbench a cancel.pgbench 1
measure_pgbench a2 service-cancel.pgbench 2
[ "$a2_EVENTS" = "$a2_CHANGED" ] || die "(a2) wrote $a2_EVENTS audit rows for $a2_CHANGED cancels"
measure_http thin thin 3
measure_http pg service-pg 4
measure_paired 6

log "(c) the service on SQLite: a fresh database file"
DATABASE_URL="$SQLITE_URL" "$BIN" migrate >/dev/null
KEY_JSON="$(DATABASE_URL="$SQLITE_URL" "$BIN" keys create --name bench --permission signals:write \
  --account-group "$GROUP" --json)"
KEY_SQLITE="$(printf '%s' "$KEY_JSON" | grep -o '"key" *: *"ssk_[0-9a-f]*"' | grep -o 'ssk_[0-9a-f]*')" ||
  die "keys create --json printed no key (SQLite)"
measure_http sqlite service-sqlite 5

# ---------------------------------------------------------------- report
log "report"
for n in a a2 thin pg sqlite; do
  v="${n}_RPS"
  printf -v "${n}_TO_THIN" '%s' "$(div "${!v}" "$thin_RPS")"
done
RATIO_CPU="$(div "$pg_CPU_US" "$thin_CPU_US")"
STREAMS_TO_WITHOUT="$(div "$streams_RPS" "$nostreams_RPS")"
# On 2 saturated cores throughput is the machine's speed ÷ its CPU per request; PostgreSQL's CPU per
# request measures that speed within each run. So this is what (s) ÷ (s0) would be had the machine
# run at one speed through both (a cross-check beside the measured ratio, not in its place).
STREAMS_TO_WITHOUT_SAME_SPEED="$(div "$nostreams_MACHINE_PER_PG" "$streams_MACHINE_PER_PG")"
MISSED_OR_DUP="$((WATCH_MISSING + WATCH_DUPLICATED + WATCH_EXTRA))"
CPU_MODEL="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
MEM_GB="$(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)"
KERNEL="$(uname -sr)"
OS_NAME="$(awk -F= '$1 == "PRETTY_NAME" { gsub(/"/, "", $2); print $2 }' /etc/os-release 2>/dev/null)"
RUSTC="$(rustc --version)"
WRK_VERSION="$( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $1, $2 }')"
PGBENCH_VERSION="$(pgbench --version)"
SQLITE_VERSION="$(sqlite3 --version | awk '{ print $1 }')"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock migrations bench 2>/dev/null)" ]; then
  COMMIT="$COMMIT (with uncommitted changes)"
fi
WHEN="$(date -u '+%Y-%m-%d %H:%M UTC')"
NPROC="$(nproc)"
met() {
  awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { if (v == "null" || v == "") { print "n/a"; exit }
  ok = (op == ">=") ? (v >= t) : (op == "<") ? (v < t) : (op == "=") ? (v == t) : (v <= t); print (ok ? "**yes**" : "**no**") }'
}
fmt_int() { printf "%'d" "$1" 2>/dev/null || printf '%s' "$1"; }
or_dash() { if [ -z "$1" ] || [ "$1" = null ]; then printf '—'; else printf '%s' "$1"; fi; }

{
  echo "Run of $WHEN, mode **$MODE**, commit \`$COMMIT\`."
  if [ "$MODE" = smoke ]; then
    echo
    echo "Smoke mode: $CONNS connections and $SECONDS_PER_RUN-s runs check that the benchmark works; its figures are not comparable with the targets."
  fi
  echo
  echo "| measure (issue 10; (b) against (t), from this run) | now | target | met |"
  echo "|---|---|---|---|"
  echo "| service ÷ thin peer, requests/s | $pg_TO_THIN ($pg_RPS vs $thin_RPS) | ≥ 0.9 | $(met "$pg_TO_THIN" 0.9 ">=") |"
  echo "| service CPU per request ÷ thin peer's | $RATIO_CPU ($pg_CPU_US vs $thin_CPU_US µs) | ≤ 1.3 | $(met "$RATIO_CPU" 1.3 "<=") |"
  echo "| p99 at $CONNS connections (wrk) | $pg_P99 ms (thin peer $thin_P99 ms) | < 10 ms | $(met "$pg_P99" 10 "<") |"
  echo "| database transactions per cancel, one watcher running | $pg_XACTS_PER_REQ | ≤ 1.05 | $(met "$pg_XACTS_PER_REQ" 1.05 "<=") |"
  echo "| watch delivery delay p99 under that load | $WATCH_DELAY_P99_MS ms (p50 $WATCH_DELAY_P50_MS ms, max $WATCH_DELAY_MAX_MS ms) | ≤ 50 ms | $(met "$WATCH_DELAY_P99_MS" 50 "<=") |"
  echo "| changes missed or duplicated by watch | $MISSED_OR_DUP ($WATCH_MISSING missed, $WATCH_DUPLICATED duplicated, $WATCH_EXTRA never committed, of $(fmt_int "$WATCH_EXPECTED")) | 0 | $(met "$MISSED_OR_DUP" 0 "=") |"
  echo "| peak RSS of the service | $pg_RSS_MB MB | < 20 MB | $(met "$pg_RSS_MB" 20 "<") |"
  echo
  echo "| measure (issue 11; (s) against (s0): windows of ${PAIR_SECONDS} s taking turns, $PAIRS of each, from this run) | now | target | met |"
  echo "|---|---|---|---|"
  echo "| streams that saw exactly their group's committed changes | $STREAMS_COMPLETE of $STREAMS_STREAMS ($STREAMS streams in each window (s), $BUSY_STREAMS of them on the busy group; missing at most $STREAMS_MISSING_MAX, $STREAMS_DUPLICATES duplicates, $STREAMS_FOREIGN of another group) | all | $(met "$STREAMS_COMPLETE" "$STREAMS_STREAMS" "=") |"
  echo "| peak RSS of the service with $STREAMS streams open | $streams_RSS_MB MB | < 64 MB | $(met "$streams_RSS_MB" 64 "<") |"
  echo "| database connections of the service with $STREAMS streams open | $streams_DB_CONNECTIONS | ≤ $((DB_MAX_CONNECTIONS + 2)): the pool, the publisher, one shared listener; none per stream | $(met "$streams_DB_CONNECTIONS" "$((DB_MAX_CONNECTIONS + 2))" "<=") |"
  echo "| cancel throughput with streams ÷ without | $STREAMS_TO_WITHOUT ($streams_RPS vs $nostreams_RPS requests/s; pair by pair $PAIR_RATIOS) | ≥ 0.9 | $(met "$STREAMS_TO_WITHOUT" 0.9 ">=") |"
  echo
  echo "Per cancel, with the streams against without: the service's own CPU $streams_CPU_US against $nostreams_CPU_US µs; the stream client's (\`bench/stream-client\`, on the same cores, reading $BUSY_STREAMS events per cancel) $streams_CLIENT_CPU_US µs; the whole machine's, in units of PostgreSQL's in the same windows, $streams_MACHINE_PER_PG against $nostreams_MACHINE_PER_PG. Had the machine run at one speed through both sides, (s) ÷ (s0) would be $STREAMS_TO_WITHOUT_SAME_SPEED (a cross-check, not the target's figure)."
  echo
  echo "| | (a) pgbench: the bare UPDATE | (a2) pgbench: the service's statement | (t) thin peer | (b) service on PostgreSQL, one watch | (c) service on SQLite |"
  echo "|---|---|---|---|---|---|"
  echo "| requests/s | $a_RPS | $a2_RPS | $thin_RPS | **$pg_RPS** | $sqlite_RPS |"
  echo "| ÷ thin peer | $a_TO_THIN | $a2_TO_THIN | 1.00 | **$pg_TO_THIN** | $sqlite_TO_THIN |"
  echo "| latency p50 (ms) | $a_P50 | $a2_P50 | $thin_P50 | $pg_P50 | $sqlite_P50 |"
  echo "| latency p99 (ms) | $a_P99 | $a2_P99 | $thin_P99 | **$pg_P99** | $sqlite_P99 |"
  echo "| latency max (ms) | $a_MAX | $a2_MAX | $thin_MAX | $pg_MAX | $sqlite_MAX |"
  echo "| requests completed | $(fmt_int "$a_REQUESTS") | $(fmt_int "$a2_REQUESTS") | $(fmt_int "$thin_REQUESTS") | $(fmt_int "$pg_REQUESTS") | $(fmt_int "$sqlite_REQUESTS") |"
  echo "| scans changed in the run's own range | $(fmt_int "$a_CHANGED") | $(fmt_int "$a2_CHANGED") | $(fmt_int "$thin_CHANGED") | $(fmt_int "$pg_CHANGED") | $(fmt_int "$sqlite_CHANGED") |"
  echo "| non-2xx responses / failed transactions | $a_FAILED | $a2_FAILED | $thin_FAILED | $pg_FAILED | $sqlite_FAILED |"
  echo "| socket errors (connect/read/write/timeout) | — | — | $thin_SOCKERR | $pg_SOCKERR | $sqlite_SOCKERR |"
  echo "| server CPU per request (µs) | — | — | $thin_CPU_US | **$pg_CPU_US** | $sqlite_CPU_US |"
  echo "| server CPU, cores busy on average | — | — | $thin_CPU_CORES | $pg_CPU_CORES | $sqlite_CPU_CORES |"
  echo "| peak RSS of the server (VmHWM, MB) | — | — | $thin_RSS_MB | **$pg_RSS_MB** | $sqlite_RSS_MB |"
  echo "| DB transactions per request | — | — | $thin_XACTS_PER_REQ | **$pg_XACTS_PER_REQ** | in-process |"
  echo "| DB statements per request (pg_stat_statements) | — | — | $(or_dash "$thin_STATEMENTS_PER_REQ") | $(or_dash "$pg_STATEMENTS_PER_REQ") | in-process |"
  echo "| warm-up rate (/s) → scans seeded for the run | $a_WARMUP_RATE → $(fmt_int "$a_SEEDED") | $a2_WARMUP_RATE → $(fmt_int "$a2_SEEDED") | $thin_WARMUP_RATE → $(fmt_int "$thin_SEEDED") | $pg_WARMUP_RATE → $(fmt_int "$pg_SEEDED") | $sqlite_WARMUP_RATE → $(fmt_int "$sqlite_SEEDED") |"
  echo "| machine busy in the second before the run (%) | $a_IDLE_BUSY | $a2_IDLE_BUSY | $thin_IDLE_BUSY | $pg_IDLE_BUSY | $sqlite_IDLE_BUSY |"
  echo
  echo "The watch during (b): $(fmt_int "$WATCH_LINES") lines, $(fmt_int "$WATCH_PRINTED_UNIQUE") distinct changes of the run's" \
    "$(fmt_int "$WATCH_EXPECTED") committed ones (audit rows), $WATCH_OUTSIDE_RANGE lines for other scans, $WATCH_UNPARSED unreadable;" \
    "delivery delay (time printed − the change's \`at\`) p50 $WATCH_DELAY_P50_MS ms, p99 $WATCH_DELAY_P99_MS ms, max $WATCH_DELAY_MAX_MS ms."
  if [ -n "$DRIFT" ]; then
    echo
    while IFS= read -r line; do echo "**Warning:** $line."; done <<<"$DRIFT"
  fi
  echo
  echo "Workload: every request changes exactly one fresh queued scan of one account group: each run and each" \
    "warm-up owns its own id range, seeded just before it ($SEED_FACTOR × the fastest rate seen so far × $SECONDS_PER_RUN s for a measured run)," \
    "pgbench takes ids from a sequence, wrk's $THREADS threads count through their own; a run that ran out would fail." \
    "Each run $SECONDS_PER_RUN s at $CONNS connections (wrk -t$THREADS, pgbench -M prepared -j$THREADS)" \
    "after an unmeasured ${WARMUP}-s warm-up. Service: production profile, \`DB_MAX_CONNECTIONS=$DB_MAX_CONNECTIONS\`," \
    "rate limit out of the way (\`RATE_LIMIT_PER_SECOND=RATE_LIMIT_BURST=1000000\`), \`LOG_FORMAT=json RUST_LOG=warn\`;" \
    "thin peer: production profile, a pool of $DB_MAX_CONNECTIONS. Client, servers and database share the machine's $NPROC cores."
  echo
  echo "PostgreSQL: $PG_VERSION; $PG_SETTINGS."
  echo
  echo "Machine: $NPROC × $CPU_MODEL, $MEM_GB GiB RAM, $OS_NAME, $KERNEL; $RUSTC; $WRK_VERSION; $PGBENCH_VERSION; SQLite $SQLITE_VERSION."
} >"$OUT/results-body.md"

{
  echo "# signal-scans cancel benchmark"
  echo
  cat "$OUT/results-body.md"
  echo
  echo "![latency percentiles](latency.svg)"
} >"$OUT/results.md"

jstr() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr '\n' ' ')"; }
jnum() { if [ -z "$1" ] || [ "$1" = null ]; then printf null; else printf '%s' "$1"; fi; }
jrun() { # NAME: the figures every run has, as JSON members
  local n="$1" k v sep=""
  for k in RPS TO_THIN REQUESTS CHANGED FAILED P50 P99 MAX WARMUP_RATE SEEDED IDLE_BUSY SOCKERR CPU_US CPU_CORES RSS_MB XACTS_PER_REQ STATEMENTS_PER_REQ CLIENT_CPU_US MACHINE_PER_PG; do
    v="${n}_$k"
    if [ -n "${!v+x}" ]; then
      printf '%s"%s": %s' "$sep" "${k,,}" "$(jnum "${!v}")"
      sep=", "
    fi
  done
}
{
  echo "{"
  echo "  \"when\": $(jstr "$WHEN"), \"mode\": $(jstr "$MODE"), \"commit\": $(jstr "$COMMIT"),"
  echo "  \"config\": {\"seconds\": $SECONDS_PER_RUN, \"warmup_seconds\": $WARMUP, \"connections\": $CONNS, \"threads\": $THREADS, \"db_max_connections\": $DB_MAX_CONNECTIONS, \"warmup_rate_cap\": $WARMUP_RATE_CAP, \"seed_factor\": $SEED_FACTOR, \"account_group\": $(jstr "$GROUP")},"
  echo "  \"targets\": {\"service_to_thin_peer\": $(jnum "$pg_TO_THIN"), \"cpu_per_request_to_thin_peer\": $(jnum "$RATIO_CPU"), \"p99_ms\": $(jnum "$pg_P99"), \"db_transactions_per_cancel\": $(jnum "$pg_XACTS_PER_REQ"), \"watch_delay_p99_ms\": $(jnum "$WATCH_DELAY_P99_MS"), \"watch_missed_or_duplicated\": $MISSED_OR_DUP, \"peak_rss_mb\": $(jnum "$pg_RSS_MB"), \"streams_to_without\": $(jnum "$STREAMS_TO_WITHOUT"), \"streams_to_without_at_one_speed\": $(jnum "$STREAMS_TO_WITHOUT_SAME_SPEED")},"
  echo "  \"bare_update_pgbench\": {$(jrun a)},"
  echo "  \"service_statement_pgbench\": {$(jrun a2)},"
  echo "  \"thin_peer\": {$(jrun thin)},"
  echo "  \"service_postgres\": {$(jrun pg)},"
  echo "  \"service_postgres_streams\": {$(jrun streams), \"streams\": $STREAMS, \"windows\": $PAIRS, \"window_seconds\": $PAIR_SECONDS, \"db_connections\": $(jnum "$streams_DB_CONNECTIONS"), \"complete\": $STREAMS_COMPLETE, \"opened\": $STREAMS_STREAMS},"
  echo "  \"service_postgres_without_streams\": {$(jrun nostreams), \"windows\": $PAIRS, \"window_seconds\": $PAIR_SECONDS},"
  echo "  \"streams_pair_ratios\": [$PAIR_RATIOS],"
  echo "  \"service_sqlite\": {$(jrun sqlite)},"
  echo "  \"watch\": {\"lines\": $WATCH_LINES, \"expected\": $WATCH_EXPECTED, \"printed_unique\": $WATCH_PRINTED_UNIQUE, \"missing\": $WATCH_MISSING, \"duplicated\": $WATCH_DUPLICATED, \"extra\": $WATCH_EXTRA, \"outside_range\": $WATCH_OUTSIDE_RANGE, \"unparsed\": $WATCH_UNPARSED, \"delay_p50_ms\": $(jnum "$WATCH_DELAY_P50_MS"), \"delay_p99_ms\": $(jnum "$WATCH_DELAY_P99_MS"), \"delay_max_ms\": $(jnum "$WATCH_DELAY_MAX_MS")},"
  echo "  \"statement_drift\": $(jstr "$DRIFT"),"
  echo "  \"postgres\": {\"version\": $(jstr "$PG_VERSION"), \"synchronous_commit\": $(jstr "$SYNC_COMMIT"), \"fsync\": $(jstr "$FSYNC"), \"pg_stat_statements\": $([ "$PSS" = 1 ] && echo true || echo false), \"settings\": $(jstr "$PG_SETTINGS")},"
  echo "  \"machine\": {\"nproc\": $NPROC, \"cpu\": $(jstr "$CPU_MODEL"), \"memory_gib\": $MEM_GB, \"os\": $(jstr "$OS_NAME"), \"kernel\": $(jstr "$KERNEL"), \"rustc\": $(jstr "$RUSTC"), \"wrk\": $(jstr "$WRK_VERSION"), \"pgbench\": $(jstr "$PGBENCH_VERSION"), \"sqlite\": $(jstr "$SQLITE_VERSION")},"
  echo "  \"build_seconds\": {\"service\": $BUILD_SECONDS, \"thin_peer\": $THIN_BUILD_SECONDS}"
  echo "}"
} >"$OUT/results.json"
python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$OUT/results.json" || die "results.json is not valid JSON"

# The latency plot: percentile curves of every run on one chart.
"$GNUPLOT" <<GP
set terminal svg size 900,520 dynamic enhanced font "sans,12" background rgb "white"
set output "$OUT/latency.svg"
set title "Cancel latency by percentile ($CONNS connections, ${SECONDS_PER_RUN} s, one fresh scan per request, $MODE run $WHEN)"
set xlabel "percentile (the tail stretched: each step right is ten times rarer)"
set ylabel "latency (ms, log scale)"
set logscale y
set grid xtics ytics mytics
set key top left
# x = log10(100 / (100 - p)); the maximum is drawn at x = 4.3.
px(p) = p >= 100 ? 4.3 : log10(100.0 / (100.0 - p))
set xrange [0:4.3]
set xtics ("0" 0, "50" px(50), "90" px(90), "99" px(99), "99.9" px(99.9), "99.99" px(99.99), "max" 4.3)
plot "$OUT/latency-pg.dat" using (px(\$1)):2 with linespoints pt 7 ps 0.4 lw 2 lc rgb "#1f77b4" title "(b) service on PostgreSQL, one watch", \
     "$OUT/latency-thin.dat" using (px(\$1)):2 with linespoints pt 7 ps 0.4 lw 2 lc rgb "#ff7f0e" title "(t) thin peer", \
     "$OUT/latency-sqlite.dat" using (px(\$1)):2 with linespoints pt 7 ps 0.4 lw 2 lc rgb "#d62728" title "(c) service on SQLite", \
     "$OUT/latency-a2.dat" using (px(\$1)):2 with linespoints pt 7 ps 0.3 lw 1.5 dt 3 lc rgb "#2ca02c" title "(a2) pgbench, the service's statement", \
     "$OUT/latency-a.dat" using (px(\$1)):2 with linespoints pt 7 ps 0.3 lw 1.5 dt 2 lc rgb "#555555" title "(a) pgbench, the bare UPDATE"
GP
[ -s "$OUT/latency.svg" ] || die "gnuplot wrote no SVG"

cat "$OUT/results.md"

if [ "$UPDATE_DOCS" = 1 ]; then
  DOC="$ROOT/BENCHMARKS.md"
  [ -f "$DOC" ] || die "no $DOC to update"
  if ! grep -q '^<!-- bench:begin -->$' "$DOC" || ! grep -q '^<!-- bench:end -->$' "$DOC"; then
    die "$DOC has no <!-- bench:begin --> / <!-- bench:end --> markers"
  fi
  {
    cat "$OUT/results-body.md"
    echo
    echo "![latency percentiles of (a), (a2), (t), (b) and (c)](bench/latency.svg)"
  } >"$TMP/section.md"
  awk -v section="$TMP/section.md" '
    /^<!-- bench:begin -->$/ { print; print ""; while ((getline line < section) > 0) print line; print ""; skip = 1; next }
    /^<!-- bench:end -->$/ { skip = 0 }
    !skip { print }' "$DOC" >"$TMP/BENCHMARKS.md"
  cp "$TMP/BENCHMARKS.md" "$DOC"
  cp "$OUT/latency.svg" "$BENCH/latency.svg"
  log "updated BENCHMARKS.md and bench/latency.svg"
fi

log "done: $OUT/results.md, $OUT/results.json, $OUT/latency.svg"
