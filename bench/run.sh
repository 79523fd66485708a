#!/usr/bin/env bash
# shellcheck disable=SC2154 # pg_* and sqlite_* results are set by measure_service through printf -v
# The cancel benchmark, one command. See BENCHMARKS.md.
#
#   bench/run.sh                 full run: 100,000 scans, 32 connections, BENCH_SECONDS (20) per run
#   bench/run.sh --smoke         tiny end-to-end run for CI (1,000 scans, 4 connections, 2 s per run)
#   bench/run.sh --update-docs   also rewrite the generated section of BENCHMARKS.md and bench/latency.svg
#
# In one run, from a freshly seeded all-queued state each time and for the same duration:
#   (a) pgbench -M prepared: the single guarded UPDATE the design is built on (the reference)
#   (b) the service (release build) on PostgreSQL, driven by wrk + bench/cancel.lua
#   (c) the service on its embedded SQLite store, same wrk workload
# Results: bench/out/results.md, bench/out/results.json, bench/out/latency.svg.
#
# Environment (all optional):
#   BENCH_SECONDS            measured seconds per run (default 20; smoke 2)
#   BENCH_WARMUP_SECONDS     unmeasured warm-up on ids that do not exist, before each run (default 2; smoke 1)
#   BENCH_SCANS              seeded scans (default 100000; smoke 1000)
#   BENCH_CONNECTIONS        pgbench clients and wrk connections (default 32; smoke 4)
#   BENCH_DB                 database to create and drop (default signal_scans_bench; smoke signal_scans_bench_smoke)
#   BENCH_DB_MAX_CONNECTIONS the service's DB_MAX_CONNECTIONS (default 10, the service's own default)
#   BENCH_PG_RESTART         1: may enable pg_stat_statements via ALTER SYSTEM + a server restart
#                            (default 1 for a full run, 0 for --smoke); 0: never restart (xact_commit fallback)
#   BENCH_KEEP_DB=1          keep the benchmark database afterwards
#   PGHOST PGPORT PGUSER     the PostgreSQL server (default 127.0.0.1 5432 postgres; trust auth)
#   CARGO_TARGET_DIR         honoured by the release build
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
  SCANS="${BENCH_SCANS:-1000}"
  CONNS="${BENCH_CONNECTIONS:-4}"
  DB="${BENCH_DB:-signal_scans_bench_smoke}"
  PG_RESTART="${BENCH_PG_RESTART:-0}"
else
  MODE=full
  SECONDS_PER_RUN="${BENCH_SECONDS:-20}"
  WARMUP="${BENCH_WARMUP_SECONDS:-2}"
  SCANS="${BENCH_SCANS:-100000}"
  CONNS="${BENCH_CONNECTIONS:-32}"
  DB="${BENCH_DB:-signal_scans_bench}"
  PG_RESTART="${BENCH_PG_RESTART:-1}"
fi
DB_MAX_CONNECTIONS="${BENCH_DB_MAX_CONNECTIONS:-10}"
THREADS=2 # wrk threads and pgbench jobs
if [ "$CONNS" -lt "$THREADS" ]; then THREADS="$CONNS"; fi
GROUP=beefcafe0000000000000001

export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
ADMIN_DB=postgres
DATABASE_URL_PG="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"

for v in SECONDS_PER_RUN WARMUP SCANS CONNS DB_MAX_CONNECTIONS; do
  if ! [[ "${!v}" =~ ^[0-9]+$ ]] || [ "${!v}" -lt 1 ]; then
    echo "bench/run.sh: $v must be a positive integer, got '${!v}'" >&2
    exit 2
  fi
done
if ! [[ "$DB" =~ ^[a-z_][a-z0-9_]*$ ]]; then
  echo "bench/run.sh: BENCH_DB must be a plain lowercase identifier, got '$DB'" >&2
  exit 2
fi

log() { printf '\n== %s\n' "$*" >&2; }
die() {
  printf 'bench/run.sh: FAILED: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------- cleanup
TMP="$(mktemp -d /tmp/signal-scans-bench.XXXXXX)"
SERVICE_PID=""
DB_CREATED=0
A2_DRIFT=""

stop_service() {
  local pid="$SERVICE_PID"
  [ -n "$pid" ] || return 0
  SERVICE_PID=""
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "service $pid did not stop on SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_service
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
for tool in wrk sqlite3 curl psql pgbench "$GNUPLOT" cargo; do
  command -v "$tool" >/dev/null || die "$tool is not available"
done

# ---------------------------------------------------------------- build
log "cargo build --release"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
build_start=$(date +%s)
cargo build --release --bin signal-scans
BUILD_SECONDS=$(($(date +%s) - build_start))
BIN="$TARGET_DIR/release/signal-scans"
[ -x "$BIN" ] || die "no binary at $BIN after the build"

rm -rf "$OUT" && mkdir -p "$OUT" # bench/out is ours alone (and not committed)

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
  echo "pg_stat_statements is not loaded (and BENCH_PG_RESTART=$PG_RESTART): round trips are" \
    "estimated from pg_stat_database.xact_commit deltas" >&2
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

# Scan n has the id lpad(to_hex(n), 24, '0'); cancel.lua and the pgbench script derive it the same way.
reseed_pg() {
  psql_bench >/dev/null <<SQL
TRUNCATE signal_scan_events, signal_scans RESTART IDENTITY;
INSERT INTO signal_scans (id, account_group_id, status, created_at, updated_at)
SELECT lpad(to_hex(n), 24, '0'), '$GROUP', 'queued',
       now() - make_interval(secs => $SCANS - n), now() - make_interval(secs => $SCANS - n)
FROM generate_series(1, $SCANS) AS n;
INSERT INTO signal_scan_events (scan_id, from_status, to_status, occurred_at)
SELECT id, NULL, 'queued', created_at FROM signal_scans ORDER BY created_at;
VACUUM ANALYZE signal_scans;
VACUUM ANALYZE signal_scan_events;
CHECKPOINT;
SQL
  local queued
  queued="$(psql_bench -Atc "SELECT count(*) FROM signal_scans WHERE status = 'queued'")"
  [ "$queued" = "$SCANS" ] || die "reseed left $queued queued scans, expected $SCANS"
}
cancelled_pg() { psql_bench -Atc "SELECT count(*) FROM signal_scans WHERE status = 'cancelled'"; }

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

free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

# start_service URL LOGFILE: sets SERVICE_PID and BASE_URL once /readyz answers 200.
start_service() {
  local url="$1" logfile="$2" port
  port="$(free_port)" || die "no free loopback port"
  DATABASE_URL="$url" LISTEN_ADDR="127.0.0.1:$port" \
    RATE_LIMIT_PER_SECOND=1000000 RATE_LIMIT_BURST=1000000 \
    DB_MAX_CONNECTIONS="$DB_MAX_CONNECTIONS" LOG_FORMAT=json RUST_LOG=warn \
    "$BIN" serve >"$logfile" 2>&1 &
  SERVICE_PID=$!
  BASE_URL="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    kill -0 "$SERVICE_PID" 2>/dev/null || {
      tail -n 20 "$logfile" >&2
      die "the service exited at start (log: $logfile)"
    }
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE_URL/readyz" || true)" = 200 ] && return 0
    sleep 0.1
  done
  die "the service did not become ready on $BASE_URL (log: $logfile)"
}

# run_wrk KEY OFFSET SECONDS OUTFILE
run_wrk() {
  BENCH_GROUP="$GROUP" BENCH_KEY="$1" BENCH_SCANS="$SCANS" BENCH_ID_OFFSET="$2" BENCH_LATENCY_OUT="$4" \
    wrk -t"$THREADS" -c"$CONNS" -d"$3"s --latency -s "$BENCH/cancel.lua" "$BASE_URL" >"$4.wrk" 2>&1 ||
    {
      cat "$4.wrk" >&2
      die "wrk failed"
    }
  [ -s "$4" ] || die "wrk wrote no latency file ($4)"
}

kv() { awk -v k="$2" '$1 == k { print $2; exit }' "$1"; }
# percentile_of FILE P: the microseconds of percentile P from a wrk latency file.
percentile_of() { awk -v p="$2" '$1 == "p" && $2 == p { print $3; exit }' "$1"; }
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
div() { awk -v a="$1" -v b="$2" -v f="${3:-%.2f}" 'BEGIN { if (b == 0) print "null"; else printf f, a / b }'; }
peak_rss_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# Sum of the service's own http_requests_total for the cancel route, by status class.
metrics_count() {
  curl -s "$BASE_URL/metrics" | awk -v cls="$1" '
    /^http_requests_total\{/ && /cancel/ {
      match($0, /status="[0-9]+"/); s = substr($0, RSTART + 8, 3)
      if (substr(s, 1, 1) == cls) n += $NF
    }
    END { printf "%d", n }'
}
metrics_cancels_applied() {
  curl -s "$BASE_URL/metrics" | awk '
    /^scan_cancels_total\{/ && !/previous_status="cancelled"/ { n += $NF }
    END { printf "%d", n }'
}

# measure_service NAME URL KEY: warm-up, measured wrk run; sets NAME_* result variables.
measure_service() {
  local name="$1" url="$2" key="$3" lat="$OUT/latency-$1.txt" before_xact=0
  # pg_stat_database is flushed lazily by each backend (at the latest when it exits), so the
  # transaction count spans the service's whole life: from before its start to after its stop.
  [ "$name" = pg ] && before_xact="$(psql_bench -Atc "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")"
  start_service "$url" "$OUT/serve-$name.log"
  echo "service pid $SERVICE_PID on $BASE_URL; warm-up ${WARMUP}s on absent ids" >&2
  run_wrk "$key" "$SCANS" "$WARMUP" "$OUT/warmup-$name.txt"
  [ "$(kv "$OUT/warmup-$name.txt" requests)" -gt 0 ] || die "$name warm-up completed no request"
  printf -v "${name}_IDLE_BUSY" '%s' "$(busy_pct)"
  local before_ok
  before_ok="$(metrics_count 2)"
  # pg_stat_statements is exact and immediate: reset it after the warm-up.
  [ "$name" = pg ] && [ "$PSS" = 1 ] && psql_bench -Atc "SELECT pg_stat_statements_reset()" >/dev/null
  local idle_busy_var="${name}_IDLE_BUSY"
  log "($name) wrk -t$THREADS -c$CONNS -d${SECONDS_PER_RUN}s --latency -s bench/cancel.lua (machine ${!idle_busy_var}% busy just before)"
  run_wrk "$key" 0 "$SECONDS_PER_RUN" "$lat"
  local rss
  rss="$(peak_rss_kb "$SERVICE_PID")"
  local ok applied
  ok=$(($(metrics_count 2) - before_ok))
  applied="$(metrics_cancels_applied)"
  echo "($name) cancels applied per the service's metrics: $applied; 2xx per its metrics: $ok" >&2
  stop_service
  cat "$lat.wrk" >&2

  local requests duration non2xx sockerr
  requests="$(kv "$lat" requests)"
  duration="$(kv "$lat" duration_us)"
  non2xx="$(kv "$lat" non2xx)"
  sockerr=$(($(kv "$lat" errors_connect) + $(kv "$lat" errors_read) + $(kv "$lat" errors_write) + $(kv "$lat" errors_timeout)))
  printf -v "${name}_REQUESTS" '%s' "$requests"
  printf -v "${name}_RPS" '%s' "$(div "$requests" "$(awk -v d="$duration" 'BEGIN { print d / 1e6 }')" '%.1f')"
  printf -v "${name}_OK" '%s' "$ok"
  printf -v "${name}_NON2XX" '%s' "$non2xx"
  printf -v "${name}_SOCKERR" '%s' "$sockerr"
  printf -v "${name}_APPLIED" '%s' "$applied"
  printf -v "${name}_P50" '%s' "$(ms "$(percentile_of "$lat" 50)")"
  printf -v "${name}_P99" '%s' "$(ms "$(percentile_of "$lat" 99)")"
  printf -v "${name}_MAX" '%s' "$(ms "$(kv "$lat" latency_max_us)")"
  printf -v "${name}_RSS_MB" '%s' "$(div "$rss" 1024 '%.1f')"
  awk '$1 == "p" { printf "%s %.3f\n", $2, $3 / 1000 }' "$lat" >"$OUT/latency-$name.dat"

  [ "$requests" -gt 0 ] || die "($name) wrk completed no request"
  [ $((requests - non2xx)) -gt 0 ] || die "($name) wrk saw zero 2xx responses ($non2xx errors; log: $OUT/serve-$name.log)"
  [ "$ok" -gt 0 ] || die "($name) the service counted zero 2xx cancels in /metrics"

  if [ "$name" = pg ]; then
    sleep 1 # the service's backends have exited and so flushed their statistics
    local after_xact statements=null
    after_xact="$(psql_bench -Atc "SELECT pg_stat_clear_snapshot(); SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()" | tail -n 1)"
    if [ "$PSS" = 1 ]; then
      statements="$(psql_bench -Atc "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND query NOT ILIKE '%pg_stat_%'")"
      psql_bench -Atc "SELECT calls, round(mean_exec_time::numeric, 3), left(regexp_replace(query, '\s+', ' ', 'g'), 120)
        FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND query NOT ILIKE '%pg_stat_%' ORDER BY calls DESC LIMIT 10" >"$OUT/pg_stat_statements.txt"
      echo "statements the service ran during the measured run (calls | mean ms | query):" >&2
      cat "$OUT/pg_stat_statements.txt" >&2
      # (a2) replays the service's cancel statement; say so when the service no longer sends one like it.
      if [ "$(psql_bench -Atc "SELECT count(*) FROM pg_stat_statements
            WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND query ILIKE '%INSERT INTO signal_scan_events%' AND query ILIKE '%pg_notify%'")" = 0 ]; then
        A2_DRIFT="the service no longer sends one statement with the audit INSERT and pg_notify: bench/service-cancel.pgbench (a2) needs to follow src/store/postgres.rs"
        echo "WARNING: $A2_DRIFT" >&2
      fi
    fi
    PG_STATEMENTS_PER_REQ=null
    [ "$statements" = null ] || PG_STATEMENTS_PER_REQ="$(div "$statements" "$requests")"
    # Over the service's life: warm-up and measured requests; the delta also holds the start-up
    # migration check, the readiness probes, our own 1-2 transactions and any autovacuum (all small).
    PG_XACTS_PER_REQ="$(div "$((after_xact - before_xact - 1 - PSS))" "$((requests + $(kv "$OUT/warmup-$name.txt" requests)))")"
  fi
}

# ---------------------------------------------------------------- (a), (a2) pgbench
# measure_pgbench NAME SCRIPT: reseed, warm-up on absent ids, the measured run; sets NAME_* variables.
measure_pgbench() {
  local name="$1" script="$2" txt="$OUT/pgbench-$1.txt"
  log "($name) reseed: $SCANS queued scans in account group $GROUP"
  reseed_pg
  run_pgbench() { # OFFSET SECONDS [extra args]
    local offset="$1" secs="$2"
    shift 2
    pgbench -n -M prepared -c "$CONNS" -j "$THREADS" -T "$secs" -f "$BENCH/$script" \
      -D scans="$SCANS" -D offset="$offset" -D group="$GROUP" "$@" "$DB"
  }
  echo "pgbench warm-up ${WARMUP}s on absent ids" >&2
  run_pgbench "$SCANS" "$WARMUP" >"$OUT/pgbench-$name-warmup.txt" 2>&1 || {
    cat "$OUT/pgbench-$name-warmup.txt" >&2
    die "($name) pgbench warm-up failed"
  }
  [ "$(cancelled_pg)" = 0 ] || die "($name) the pgbench warm-up changed scans"
  printf -v "${name}_IDLE_BUSY" '%s' "$(busy_pct)"
  local idle_busy_var="${name}_IDLE_BUSY"
  log "($name) pgbench -n -M prepared -c $CONNS -j $THREADS -T $SECONDS_PER_RUN -f bench/$script (machine ${!idle_busy_var}% busy just before)"
  rm -rf "$TMP/pgbench-log" && mkdir -p "$TMP/pgbench-log"
  run_pgbench 0 "$SECONDS_PER_RUN" -l --log-prefix="$TMP/pgbench-log/tx" >"$txt" 2>&1 || {
    cat "$txt" >&2
    die "($name) pgbench failed"
  }
  cat "$txt" >&2
  local tps failed
  tps="$(awk '/^tps = / { printf "%.1f", $3; exit }' "$txt")"
  [ -n "$tps" ] || die "($name) no tps in pgbench's output"
  awk -v t="$tps" 'BEGIN { exit !(t > 0) }' || die "($name) pgbench ran no transaction"
  failed="$(awk -F': ' '/number of failed transactions/ { split($2, x, " "); print x[1]; exit }' "$txt")"
  printf -v "${name}_TPS" '%s' "$tps"
  printf -v "${name}_FAILED" '%s' "${failed:-0}"
  printf -v "${name}_TX" '%s' "$(awk -F': ' '/number of transactions actually processed/ { split($2, x, "/"); print x[1]; exit }' "$txt")"
  printf -v "${name}_APPLIED" '%s' "$(cancelled_pg)"
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

# (a) the reference: the bare guarded UPDATE.
measure_pgbench a cancel.pgbench
# (a2) the floor of the design: the service's own cancel statement (audit row and NOTIFY included).
measure_pgbench a2 service-cancel.pgbench
a2_EVENTS="$(psql_bench -Atc "SELECT count(*) FROM signal_scan_events WHERE from_status IS NOT NULL")"
[ "$a2_EVENTS" = "$a2_APPLIED" ] || die "(a2) wrote $a2_EVENTS audit rows for $a2_APPLIED cancels"

# ---------------------------------------------------------------- (b) the service on PostgreSQL
log "(b) reseed, then the service on PostgreSQL"
reseed_pg
measure_service pg "$DATABASE_URL_PG" "$KEY_PG"
pg_APPLIED_DB="$(cancelled_pg)"
pg_EVENTS="$(psql_bench -Atc "SELECT count(*) FROM signal_scan_events WHERE from_status IS NOT NULL")"
[ "$pg_EVENTS" = "$pg_APPLIED_DB" ] || die "(b) wrote $pg_EVENTS audit rows for $pg_APPLIED_DB cancels"

# ---------------------------------------------------------------- (c) the service on SQLite
log "(c) the service on SQLite: fresh database, same seed"
SQLITE_FILE="$TMP/bench.db"
SQLITE_URL="sqlite://$SQLITE_FILE"
DATABASE_URL="$SQLITE_URL" "$BIN" migrate >/dev/null
KEY_JSON="$(DATABASE_URL="$SQLITE_URL" "$BIN" keys create --name bench --permission signals:write \
  --account-group "$GROUP" --json)"
KEY_SQLITE="$(printf '%s' "$KEY_JSON" | grep -o '"key" *: *"ssk_[0-9a-f]*"' | grep -o 'ssk_[0-9a-f]*')" ||
  die "keys create --json printed no key (SQLite)"
sqlite3 -bail "$SQLITE_FILE" >/dev/null <<SQL
BEGIN;
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $SCANS)
INSERT INTO signal_scans (id, account_group_id, status, created_at, updated_at)
SELECT printf('%024x', n), '$GROUP', 'queued',
       strftime('%Y-%m-%dT%H:%M:%S', 'now', '-' || ($SCANS - n) || ' seconds') || '.000000Z',
       strftime('%Y-%m-%dT%H:%M:%S', 'now', '-' || ($SCANS - n) || ' seconds') || '.000000Z'
FROM seq;
INSERT INTO signal_scan_events (scan_id, from_status, to_status, occurred_at)
SELECT id, NULL, 'queued', created_at FROM signal_scans ORDER BY created_at;
COMMIT;
ANALYZE;
PRAGMA wal_checkpoint(TRUNCATE);
SQL

[ "$(sqlite3 "$SQLITE_FILE" "SELECT count(*) FROM signal_scans WHERE status = 'queued'")" = "$SCANS" ] ||
  die "SQLite seed incomplete"
measure_service sqlite "$SQLITE_URL" "$KEY_SQLITE"
sqlite_APPLIED_DB="$(sqlite3 "$SQLITE_FILE" "SELECT count(*) FROM signal_scans WHERE status = 'cancelled'")"

# ---------------------------------------------------------------- report
log "report"
RATIO_A2="$(div "$a2_TPS" "$a_TPS")"
RATIO_B="$(div "$pg_RPS" "$a_TPS")"
RATIO_C="$(div "$sqlite_RPS" "$a_TPS")"
RATIO_B_A2="$(div "$pg_RPS" "$a2_TPS")"
RATIO_C_A2="$(div "$sqlite_RPS" "$a2_TPS")"
CPU_MODEL="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
MEM_GB="$(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)"
KERNEL="$(uname -sr)"
OS_NAME="$(awk -F= '$1 == "PRETTY_NAME" { gsub(/"/, "", $2); print $2 }' /etc/os-release 2>/dev/null)"
RUSTC="$(rustc --version)"
WRK_VERSION="$( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $1, $2 }')"
PGBENCH_VERSION="$(pgbench --version)"
SQLITE_VERSION="$(sqlite3 --version | awk '{ print $1 }')"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock migrations 2>/dev/null)" ]; then
  COMMIT="$COMMIT (with uncommitted changes in src/Cargo/migrations)"
fi
WHEN="$(date -u '+%Y-%m-%d %H:%M UTC')"
NPROC="$(nproc)"
yesno() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { if (v == "null") { print "n/a"; exit }
  ok = (op == ">=") ? (v >= t) : (op == "<") ? (v < t) : (v <= t); print (ok ? "**yes**" : "**no**") }'; }
fmt_int() { printf "%'d" "$1" 2>/dev/null || printf '%s' "$1"; }
if [ "$PSS" = 1 ]; then
  RT_SOURCE="pg_stat_statements (sum of calls in this database / HTTP requests)"
  RT_B="$PG_STATEMENTS_PER_REQ"
else
  RT_SOURCE="pg_stat_database xact_commit+xact_rollback delta / HTTP requests (pg_stat_statements not loaded)"
  RT_B="$PG_XACTS_PER_REQ"
fi

{
  echo "Run of $WHEN, mode **$MODE**, commit \`$COMMIT\`."
  echo
  echo "| | (a) pgbench: the bare UPDATE | (a2) pgbench: the service's statement | (b) service on PostgreSQL | (c) service on SQLite |"
  echo "|---|---|---|---|---|"
  echo "| requests/s | $a_TPS | $a2_TPS | $pg_RPS | $sqlite_RPS |"
  echo "| ratio to (a) | 1.00 | $RATIO_A2 | **$RATIO_B** | $RATIO_C |"
  echo "| ratio to (a2) | — | 1.00 | $RATIO_B_A2 | $RATIO_C_A2 |"
  echo "| latency p50 (ms) | $a_P50 | $a2_P50 | $pg_P50 | $sqlite_P50 |"
  echo "| latency p99 (ms) | $a_P99 | $a2_P99 | **$pg_P99** | $sqlite_P99 |"
  echo "| latency max (ms) | $a_MAX | $a2_MAX | $pg_MAX | $sqlite_MAX |"
  echo "| requests completed | $(fmt_int "$a_TX") | $(fmt_int "$a2_TX") | $(fmt_int "$pg_REQUESTS") | $(fmt_int "$sqlite_REQUESTS") |"
  echo "| non-2xx responses / failed transactions | $a_FAILED | $a2_FAILED | $pg_NON2XX | $sqlite_NON2XX |"
  echo "| socket errors (connect/read/write/timeout) | — | — | $pg_SOCKERR | $sqlite_SOCKERR |"
  echo "| scans actually cancelled (of $(fmt_int "$SCANS")) | $(fmt_int "$a_APPLIED") | $(fmt_int "$a2_APPLIED") | $(fmt_int "$pg_APPLIED_DB") | $(fmt_int "$sqlite_APPLIED_DB") |"
  echo "| share of requests that changed a scan (the rest were repeats) | $(div "$a_APPLIED" "$a_TX") | $(div "$a2_APPLIED" "$a2_TX") | $(div "$pg_APPLIED_DB" "$pg_REQUESTS") | $(div "$sqlite_APPLIED_DB" "$sqlite_REQUESTS") |"
  echo "| peak RSS of the service (VmHWM, MB) | — | — | **$pg_RSS_MB** | $sqlite_RSS_MB |"
  echo "| DB statements per request | 1 | 1 | **$PG_STATEMENTS_PER_REQ** | in-process |"
  echo "| DB transactions per request (approximate) | 1 | 1 | $PG_XACTS_PER_REQ | in-process |"
  echo "| machine busy in the second before the run (%) | $a_IDLE_BUSY | $a2_IDLE_BUSY | $pg_IDLE_BUSY | $sqlite_IDLE_BUSY |"
  echo
  echo "Targets (issue 6), for (b): throughput ratio ≥ 0.8: $(yesno "$RATIO_B" 0.8 ">=") ($RATIO_B) ·" \
    "p99 < 10 ms at $CONNS connections: $(yesno "$pg_P99" 10 "<") ($pg_P99 ms) ·" \
    "RSS < 64 MB: $(yesno "$pg_RSS_MB" 64 "<") ($pg_RSS_MB MB) ·" \
    "one database round trip per request: $(yesno "$RT_B" 1.05 "<=") ($RT_B, from $RT_SOURCE)." \
    "Against the floor of its own statement (a2), (b) reaches $RATIO_B_A2."
  if [ -n "$A2_DRIFT" ]; then
    echo
    echo "**Warning:** $A2_DRIFT."
  fi
  echo
  echo "Workload: $(fmt_int "$SCANS") queued scans in one account group, reseeded to all-queued before (a), (a2) and (b)," \
    "a fresh SQLite file with the same seed for (c); each run $SECONDS_PER_RUN s at $CONNS connections" \
    "(wrk -t$THREADS, pgbench -j$THREADS) after an unmeasured ${WARMUP}-s warm-up on ids that do not exist;" \
    "random scan ids, so a scan drawn twice is answered 200 \`previousStatus: cancelled\` (a no-op UPDATE for pgbench)." \
    "Service: release build, \`DB_MAX_CONNECTIONS=$DB_MAX_CONNECTIONS\`, rate limit out of the way" \
    "(\`RATE_LIMIT_PER_SECOND=RATE_LIMIT_BURST=1000000\`), \`LOG_FORMAT=json RUST_LOG=warn\`."
  echo "Client, service and database share the machine's $NPROC cores."
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

jstr() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
jnum() { if [ -z "$1" ] || [ "$1" = null ]; then printf null; else printf '%s' "$1"; fi; }
{
  echo "{"
  echo "  \"when\": $(jstr "$WHEN"), \"mode\": $(jstr "$MODE"), \"commit\": $(jstr "$COMMIT"),"
  echo "  \"config\": {\"scans\": $SCANS, \"seconds\": $SECONDS_PER_RUN, \"warmup_seconds\": $WARMUP, \"connections\": $CONNS, \"threads\": $THREADS, \"db_max_connections\": $DB_MAX_CONNECTIONS, \"account_group\": $(jstr "$GROUP")},"
  echo "  \"design_floor_pgbench\": {\"rps\": $(jnum "$a2_TPS"), \"ratio_to_reference\": $(jnum "$RATIO_A2"), \"transactions\": $(jnum "$a2_TX"), \"failed\": $(jnum "$a2_FAILED"), \"p50_ms\": $(jnum "$a2_P50"), \"p99_ms\": $(jnum "$a2_P99"), \"max_ms\": $(jnum "$a2_MAX"), \"scans_cancelled\": $(jnum "$a2_APPLIED"), \"busy_before_pct\": $(jnum "$a2_IDLE_BUSY")},"
  echo "  \"reference_pgbench\": {\"rps\": $(jnum "$a_TPS"), \"transactions\": $(jnum "$a_TX"), \"failed\": $(jnum "$a_FAILED"), \"p50_ms\": $(jnum "$a_P50"), \"p99_ms\": $(jnum "$a_P99"), \"max_ms\": $(jnum "$a_MAX"), \"scans_cancelled\": $(jnum "$a_APPLIED"), \"busy_before_pct\": $(jnum "$a_IDLE_BUSY")},"
  echo "  \"service_postgres\": {\"rps\": $(jnum "$pg_RPS"), \"ratio_to_reference\": $(jnum "$RATIO_B"), \"requests\": $(jnum "$pg_REQUESTS"), \"ok_2xx\": $(jnum "$pg_OK"), \"non_2xx\": $(jnum "$pg_NON2XX"), \"socket_errors\": $(jnum "$pg_SOCKERR"), \"p50_ms\": $(jnum "$pg_P50"), \"p99_ms\": $(jnum "$pg_P99"), \"max_ms\": $(jnum "$pg_MAX"), \"peak_rss_mb\": $(jnum "$pg_RSS_MB"), \"db_statements_per_request\": $(jnum "$PG_STATEMENTS_PER_REQ"), \"db_transactions_per_request\": $(jnum "$PG_XACTS_PER_REQ"), \"round_trips_source\": $(jstr "$RT_SOURCE"), \"scans_cancelled\": $(jnum "$pg_APPLIED_DB"), \"ratio_to_design_floor\": $(jnum "$RATIO_B_A2"), \"busy_before_pct\": $(jnum "$pg_IDLE_BUSY")},"
  echo "  \"service_sqlite\": {\"rps\": $(jnum "$sqlite_RPS"), \"ratio_to_reference\": $(jnum "$RATIO_C"), \"requests\": $(jnum "$sqlite_REQUESTS"), \"ok_2xx\": $(jnum "$sqlite_OK"), \"non_2xx\": $(jnum "$sqlite_NON2XX"), \"socket_errors\": $(jnum "$sqlite_SOCKERR"), \"p50_ms\": $(jnum "$sqlite_P50"), \"p99_ms\": $(jnum "$sqlite_P99"), \"max_ms\": $(jnum "$sqlite_MAX"), \"peak_rss_mb\": $(jnum "$sqlite_RSS_MB"), \"scans_cancelled\": $(jnum "$sqlite_APPLIED_DB"), \"ratio_to_design_floor\": $(jnum "$RATIO_C_A2"), \"busy_before_pct\": $(jnum "$sqlite_IDLE_BUSY")},"
  echo "  \"postgres\": {\"version\": $(jstr "$PG_VERSION"), \"synchronous_commit\": $(jstr "$SYNC_COMMIT"), \"fsync\": $(jstr "$FSYNC"), \"pg_stat_statements\": $([ "$PSS" = 1 ] && echo true || echo false), \"settings\": $(jstr "$PG_SETTINGS")},"
  echo "  \"machine\": {\"nproc\": $NPROC, \"cpu\": $(jstr "$CPU_MODEL"), \"memory_gib\": $MEM_GB, \"os\": $(jstr "$OS_NAME"), \"kernel\": $(jstr "$KERNEL"), \"rustc\": $(jstr "$RUSTC"), \"wrk\": $(jstr "$WRK_VERSION"), \"pgbench\": $(jstr "$PGBENCH_VERSION"), \"sqlite\": $(jstr "$SQLITE_VERSION")},"
  echo "  \"build_seconds\": $BUILD_SECONDS"
  echo "}"
} >"$OUT/results.json"

# The latency plot: percentile curves of (a), (b) and (c) on one chart.
"$GNUPLOT" <<GP
set terminal svg size 900,520 dynamic enhanced font "sans,12" background rgb "white"
set output "$OUT/latency.svg"
set title "Cancel latency by percentile ($CONNS connections, ${SECONDS_PER_RUN} s, $(fmt_int "$SCANS") scans, $MODE run $WHEN)"
set xlabel "percentile (the tail stretched: each step right is ten times rarer)"
set ylabel "latency (ms, log scale)"
set logscale y
set grid xtics ytics mytics
set key top left
# x = log10(100 / (100 - p)); the maximum is drawn at x = 4.3.
px(p) = p >= 100 ? 4.3 : log10(100.0 / (100.0 - p))
set xrange [0:4.3]
set xtics ("0" 0, "50" px(50), "90" px(90), "99" px(99), "99.9" px(99.9), "99.99" px(99.99), "max" 4.3)
plot "$OUT/latency-pg.dat" using (px(\$1)):2 with linespoints pt 7 ps 0.4 lw 2 lc rgb "#1f77b4" title "(b) service on PostgreSQL", \
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
    echo "![latency percentiles of (a), (a2), (b) and (c)](bench/latency.svg)"
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
