#!/usr/bin/env bash
# Where the service's CPU goes under the benchmark's cancel load: a CPU profile of the production
# binary on PostgreSQL, with its CPU time per request. See BENCHMARKS.md ("Profile").
#
#   bench/profile.sh            profile the service (production build) for PROFILE_SECONDS
#   bench/profile.sh thin       profile the thin peer instead, the same way
#
# It seeds fresh queued scans, starts the server, drives it with wrk + bench/cancel.lua (32
# connections, every request cancels a fresh scan), and meanwhile runs
# `perf record -e cpu-clock -g` on the server's process. Prints CPU µs per request (utime + stime
# from /proc over the profiled window) and perf's top self-time symbols, and leaves the full
# profile in bench/out/perf-<kind>.data (read it with `perf report -i …`).
#
# Environment (all optional): PROFILE_PERF (1; 0: measure CPU per request only; malloc: count
# malloc and realloc calls per request with uprobes), PROFILE_WATCH (0; 1: run one `scans watch`
# meanwhile, as bench/run.py's (b) does, and print its CPU per change), PROFILE_STREAMS (0; N ≥ 10:
# hold N change streams open meanwhile with bench/stream-client, as bench/run.py's (s) does, and print
# the client's CPU per cancel), PROFILE_SECONDS (15), BENCH_CONNECTIONS (32), PROFILE_SCANS (200000),
# PROFILE_BINARY (another build of the service to profile instead of this one), PGHOST PGPORT PGUSER
# (127.0.0.1 5432 postgres). Needs perf (Debian: linux-perf) and wrk.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/out"
KIND="${1:-service}"
SECONDS_TO_PROFILE="${PROFILE_SECONDS:-15}"
CONNECTIONS="${BENCH_CONNECTIONS:-32}"
SCANS="${PROFILE_SCANS:-200000}"
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
DB=signal_scans_profile
URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
GROUP=507f1f77bcf86cd799439011
PORT=18471
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
# Another build of the service to profile the same way (say, an older commit's), instead of this one.
SERVICE_BIN="${PROFILE_BINARY:-$TARGET/production/signal-scans}"
mkdir -p "$OUT"

for tool in perf wrk psql; do
  command -v "$tool" >/dev/null || { echo "bench/profile.sh: $tool is not installed" >&2; exit 1; }
done

case "$KIND" in
  service) [ -n "${PROFILE_BINARY:-}" ] || (cd "$ROOT" && cargo build --profile production --locked -q) ;;
  thin) (cd "$ROOT/bench/thin-peer" && cargo build --profile production --locked -q --target-dir "$TARGET") ;;
  *) echo "bench/profile.sh: unknown kind $KIND (service or thin)" >&2; exit 2 ;;
esac
if [ "${PROFILE_STREAMS:-0}" -gt 0 ]; then
  (cd "$ROOT/bench/stream-client" && cargo build --profile production --locked -q --target-dir "$TARGET")
fi

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
"$SERVICE_BIN" migrate --database-url "$URL" >/dev/null
KEY="$("$SERVICE_BIN" keys create --database-url "$URL" --name profile \
  --all-account-groups --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
psql -X -q -d "$DB" <<SQL
INSERT INTO signal_scans (id, account_group_id, status, created_at, updated_at)
SELECT lpad(to_hex(n), 24, '0'), '$GROUP', 'queued', now(), now() FROM generate_series(1, $SCANS) AS n;
INSERT INTO signal_scan_events (scan_id, from_status, to_status, occurred_at)
SELECT id, NULL, 'queued', created_at FROM signal_scans;
VACUUM ANALYZE;
SQL

case "$KIND" in
  service)
    # As bench/run.py: no rate limit in the way, and room for every stream on one key.
    DATABASE_URL="$URL" LISTEN_ADDR="127.0.0.1:$PORT" RATE_LIMIT_PER_SECOND=1000000 \
      RATE_LIMIT_BURST=1000000 STREAM_MAX_PER_KEY=10000 LOG_FORMAT=json RUST_LOG=warn \
      "$SERVICE_BIN" serve >"$OUT/profile-$KIND.log" 2>&1 &
    ;;
  thin)
    DATABASE_URL="$URL" LISTEN_ADDR="127.0.0.1:$PORT" DB_MAX_CONNECTIONS=10 \
      "$TARGET/production/thin-peer" >"$OUT/profile-$KIND.log" 2>&1 &
    ;;
esac
PID=$!
STREAMS_PID="" WATCH_PID="" STAMP_PID=""
# The stream client and the watch too: once the server is gone they would wait for a signal forever.
trap 'kill $PID $STREAMS_PID $WATCH_PID $STAMP_PID 2>/dev/null || true; wait "$PID" 2>/dev/null || true; psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

if [ "${PROFILE_STREAMS:-0}" -gt 0 ]; then
  # As bench/run.py's (s): 10 streams follow the load's group, the others a quiet group each.
  follows=("$GROUP:10")
  for i in $(seq 1 $((PROFILE_STREAMS - 10))); do follows+=("$(printf '%024x' $((0xfeed000000 + i))):1"); done
  "$TARGET/production/stream-client" "http://127.0.0.1:$PORT" "$KEY" "$OUT/profile-streams.txt" "${follows[@]}" \
    >"$OUT/profile-streams-ready.txt" 2>"$OUT/profile-streams.log" &
  STREAMS_PID=$!
  for _ in $(seq 1 300); do
    grep -q ready "$OUT/profile-streams-ready.txt" 2>/dev/null && break
    kill -0 "$STREAMS_PID" 2>/dev/null || { tail -3 "$OUT/profile-streams.log" >&2; echo "bench/profile.sh: the stream client exited" >&2; exit 1; }
    sleep 0.1
  done
  grep -q ready "$OUT/profile-streams-ready.txt" || { echo "bench/profile.sh: the streams did not open within 30 s" >&2; exit 1; }
fi
if [ "${PROFILE_WATCH:-0}" = 1 ]; then
  # As bench/run.py's (b): one `scans watch` following the changes, its lines stamped.
  DATABASE_URL="$URL" RUST_LOG=warn "$SERVICE_BIN" scans watch 2>"$OUT/profile-watch.log" \
    | python3 "$ROOT/bench/harness.py" stamp >/dev/null &
  sleep 1
  WATCH_PID="$(pgrep -n -f "signal-scans scans watch")"
  STAMP_PID="$(pgrep -n -f "harness.py stamp")"
fi
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/${1:-$PID}/stat"; }
# All of PostgreSQL's processes together: what the database did for the same cancels, so the
# service's CPU can be read against it (the machine's speed moves both alike).
pg_ticks() { for p in $(pgrep -x postgres); do cat "/proc/$p/stat" 2>/dev/null; done | awk '{ s += $14 + $15 } END { print s }'; }
export BENCH_GROUP="$GROUP" BENCH_KEY="$KEY" BENCH_ID_FIRST=1 BENCH_ID_COUNT="$SCANS" BENCH_THREADS=2
export BENCH_LATENCY_OUT="$OUT/profile-$KIND.latency"
# wrk runs one second longer on each side than perf, so the profile sees only steady load.
wrk -t2 -c"$CONNECTIONS" -d"$((SECONDS_TO_PROFILE + 2))s" --latency -s "$ROOT/bench/cancel.lua" \
  "http://127.0.0.1:$PORT" >"$OUT/profile-$KIND.wrk" 2>&1 &
WRK=$!
sleep 1
before_ticks="$(cpu_ticks)" pg_before="$(pg_ticks)"
if [ "${PROFILE_WATCH:-0}" = 1 ]; then
  watch_before="$(cpu_ticks "$WATCH_PID")" stamp_before="$(cpu_ticks "$STAMP_PID")"
fi
[ "${PROFILE_STREAMS:-0}" -gt 0 ] && streams_before="$(cpu_ticks "$STREAMS_PID")"
before_done="$(psql -X -Atq -d "$DB" -c "SELECT count(*) FROM signal_scans WHERE status = 'cancelled'")"
if [ "${PROFILE_PERF:-1}" = malloc ]; then
  # Allocations per request: uprobes on glibc's malloc and realloc, counted, not sampled.
  libc="$(ldd "$SERVICE_BIN" | awk '/libc.so/ { print $3 }')"
  for fn in malloc realloc; do
    perf probe -q -x "$libc" "$fn" 2>/dev/null || true
  done
  perf stat -x, -e probe_libc:malloc,probe_libc:realloc -p "$PID" -o "$OUT/malloc-$KIND.txt" -- sleep "$SECONDS_TO_PROFILE"
elif [ "${PROFILE_PERF:-1}" = 1 ]; then
  perf record -e cpu-clock -F 499 --call-graph "${PROFILE_CALL_GRAPH:-fp}" -p "$PID" -o "$OUT/perf-$KIND.data" -- sleep "$SECONDS_TO_PROFILE" 2>/dev/null
else
  sleep "$SECONDS_TO_PROFILE"
fi
after_ticks="$(cpu_ticks)" pg_after="$(pg_ticks)"
if [ "${PROFILE_WATCH:-0}" = 1 ]; then
  watch_after="$(cpu_ticks "$WATCH_PID")" stamp_after="$(cpu_ticks "$STAMP_PID")"
fi
[ "${PROFILE_STREAMS:-0}" -gt 0 ] && streams_after="$(cpu_ticks "$STREAMS_PID")"
after_done="$(psql -X -Atq -d "$DB" -c "SELECT count(*) FROM signal_scans WHERE status = 'cancelled'")"
wait "$WRK"

peak_rss_kb="$(awk '/^VmHWM/ { print $2 }' "/proc/$PID/status")"
requests=$((after_done - before_done))
hz="$(getconf CLK_TCK)"
echo "== $KIND: $requests cancels in ${SECONDS_TO_PROFILE} s ($((requests / SECONDS_TO_PROFILE))/s)," \
  "CPU $(awk -v t=$((after_ticks - before_ticks)) -v n="$requests" -v hz="$hz" \
  'BEGIN { printf "%.0f", t / hz * 1e6 / n }') µs per request"
awk -v t=$((after_ticks - before_ticks)) -v p=$((pg_after - pg_before)) -v n="$requests" -v hz="$hz" \
  'BEGIN { printf "== PostgreSQL: CPU %.0f µs per request; the server'"'"'s ÷ PostgreSQL'"'"'s: %.2f\n", p / hz * 1e6 / n, t / p }'
grep -E "Requests/sec|99%" "$OUT/profile-$KIND.wrk" || true
echo "== peak RSS of the server so far: $((peak_rss_kb / 1024)).$(((peak_rss_kb % 1024) * 10 / 1024)) MB"
if [ "${PROFILE_WATCH:-0}" = 1 ]; then
  awk -v w=$((watch_after - watch_before)) -v s=$((stamp_after - stamp_before)) -v n="$requests" -v hz="$hz" \
    'BEGIN { printf "== the watch: %.1f µs per change, its stamper: %.1f µs per change\n", w / hz * 1e6 / n, s / hz * 1e6 / n }'
  kill "$WATCH_PID" 2>/dev/null || true
fi
if [ "${PROFILE_STREAMS:-0}" -gt 0 ]; then
  awk -v c=$((streams_after - streams_before)) -v n="$requests" -v hz="$hz" \
    'BEGIN { printf "== the stream client: %.1f µs per cancel\n", c / hz * 1e6 / n }'
fi
if [ "${PROFILE_PERF:-1}" = malloc ]; then
  awk -F, -v n="$requests" '/probe_libc/ { printf "== %s per request: %.1f\n", $3, $1 / n }' "$OUT/malloc-$KIND.txt"
  exit 0
fi
[ "${PROFILE_PERF:-1}" = 1 ] || exit 0
echo "== top self time (perf report -i $OUT/perf-$KIND.data)"
perf report -i "$OUT/perf-$KIND.data" --no-children --sort symbol --stdio -g none 2>/dev/null \
  | grep -E "^ +[0-9]" | sed -E 's/ +$//; s/^ +//' | cut -c1-150 | head -n 40
