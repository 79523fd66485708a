#!/usr/bin/env python3
"""The cancel benchmark, one command. See bench/README.md (how) and BENCHMARKS.md (the method, the figures).

    bench/run.py                 full run: 32 connections, BENCH_SECONDS (20) per measured run
    bench/run.py --smoke         tiny end-to-end run for CI (4 connections, 2 s per run)
    bench/run.py --update-docs   also rewrite the generated section of BENCHMARKS.md and bench/latency.svg

Like for like: every request of every run changes exactly one fresh queued scan. Each run (and each warm-up)
owns its own range of scan ids, seeded just before it; pgbench takes the ids from a sequence, wrk's threads
count through their own. In one run, for the same duration:
  (a)  pgbench -M prepared: the bare guarded UPDATE (the database's own ceiling; informational)
  (a2) pgbench -M prepared: the service's cancel statement (src/store/postgres_transition.sql, rendered with
       literals for its parameters)
  (t)  the thin peer (bench/thin-peer): the service's statement before group commit behind axum + sqlx, nothing else; the limit
       the service is measured against
  (b)  the service on PostgreSQL, with one `signal-scans scans watch` running
  (c)  the service on its embedded SQLite store
  (s)  the service with BENCH_STREAMS change streams open (bench/stream-client), in short windows that take
       turns with windows of the same service without them, (s0), in the order (s0) (s), (s) (s0), ... so
       that a drift of the machine's speed weighs on both alike
  (b) and (c) again, in windows taking turns the same way, neither watched: (c) ÷ (b) without the minutes
       between their own runs
  (t) and (b) again at one connection, in windows taking turns: one cancel at a time, each a batch of its own;
       issue 24's single cancel on an idle service, (b)'s median against that of the thin peer's statement
       from before group commit
(t), (b), (c), (s), (s0) and the turns are driven by wrk + bench/cancel.lua.
Results: bench/out/run/results.md, results.json and latency.svg, with every raw output beside them.

Environment (all optional):
  BENCH_SECONDS            measured seconds per run (default 20; smoke 2)
  BENCH_WARMUP_SECONDS     unmeasured warm-up before each run, on its own fresh scans (default 2; smoke 1)
  BENCH_CONNECTIONS        pgbench clients and wrk connections (default 32; smoke 4)
  BENCH_STREAMS            change streams held open during each window (s) (default 500; smoke 20)
  BENCH_PAIRS              pairs of windows (s0) and (s), and of (b) and (c) in turns (default 4; smoke 1)
  BENCH_PAIR_SECONDS       measured seconds per window (default 5; smoke 2)
  BENCH_WARMUP_RATE_CAP    scans seeded per warm-up second (default 50000; smoke 20000): above any rate
                           this box reaches
  BENCH_SEED_FACTOR        a measured run gets this many times the scans the fastest rate seen so far
                           (its warm-up's or an earlier run's) would use (default 3)
  BENCH_DB                 database to create and drop (default signal_scans_bench; smoke signal_scans_bench_smoke)
  BENCH_DB_MAX_CONNECTIONS the service's and the thin peer's pool size (default 10, the service's default)
  BENCH_PG_RESTART         1: may enable pg_stat_statements via ALTER SYSTEM + a server restart
                           (default 1 for a full run, 0 for --smoke); 0: never restart
  BENCH_KEEP_DB=1          keep the benchmark database afterwards
  BENCH_PROFILE            the cargo profile to build (default production: what the image ships)
  PGHOST PGPORT PGUSER     the PostgreSQL server (default 127.0.0.1 5432 postgres; trust auth)
  CARGO_TARGET_DIR         honoured by every build (the bench crates share the service's dependencies)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import (BENCH, CANCEL_SQL, CLK_TCK, PROFILE, ROOT, Failed, Postgres, Server, Store, StreamClient,
                     build, busy_pct, cpu_ticks, create_key, hex_id, log, machine_ticks, migrate, nearest_rank, need,
                     note, pg_ticks, pgbench_package, ratio, replace_between, run, run_wrk, stamp_lines, status_kb,
                     stream_verdict, write_latency_dat)

OUT = BENCH / "out" / "run"
GROUP = "beefcafe0000000000000001"
THREADS = 2  # wrk threads and pgbench jobs
MIN_RANGE = 1000  # the smallest range a measured run gets, whatever its warm-up rate
# Cancels a second at one connection, for seeding: each waits for its answer, a commit on PostgreSQL's disk
# (0.3 to 3 ms here), so a window cannot reach this rate; one that did would run out of scans and fail.
ONE_RATE_CAP = 5000
BUSY_STREAMS = 10  # of the streams of a window (s), those that follow the benchmark's group
# How long the watch may take, after the service has stopped, to print the run's last changes (its fallback
# poll is FEED_POLL_MS, 1 s by default).
WATCH_DRAIN_SECONDS = 10
# (a2)'s literals for the service's statement's parameters, a batch of one change each (the statement takes
# arrays, one element per change): $1 the next id of the run's range, $2 the group, $3 the new status, $4 the
# statuses it may leave (comma-separated), $5 and $6 a fixed API key id and trace id, $7 no reason.
A2_PARAMETERS = {
    "$1": "ARRAY[(SELECT lpad(to_hex(nextval('bench_ids')), 24, '0'))]",
    "$2": "ARRAY[:group]",
    "$3": "ARRAY['cancelled']",
    "$4": "ARRAY['queued,running']",
    "$5": "ARRAY['00000000-0000-4000-8000-00000000be4c'::uuid]",
    "$6": "ARRAY['0000000000000000000000000000be4c']",
    "$7": "ARRAY[NULL::text]",
}


# ---------------------------------------------------------------- settings


@dataclass
class Settings:
    mode: str
    seconds: int
    warmup: int
    connections: int
    streams: int
    pairs: int
    pair_seconds: int
    warmup_rate_cap: int
    seed_factor: int
    db: str
    db_max_connections: int
    pg_restart: bool
    threads: int = THREADS
    busy_streams: int = BUSY_STREAMS


def settings_from(env: dict, smoke: bool) -> Settings:
    """The run's settings from BENCH_* variables, each a positive integer; smoke mode has its own defaults."""
    defaults = dict(seconds=(2, 20), warmup=(1, 2), connections=(4, 32), streams=(20, 500), pairs=(1, 4),
                    pair_seconds=(2, 5), warmup_rate_cap=(20000, 50000), seed_factor=(3, 3),
                    db_max_connections=(10, 10))
    names = dict(seconds="BENCH_SECONDS", warmup="BENCH_WARMUP_SECONDS", connections="BENCH_CONNECTIONS",
                 streams="BENCH_STREAMS", pairs="BENCH_PAIRS", pair_seconds="BENCH_PAIR_SECONDS",
                 warmup_rate_cap="BENCH_WARMUP_RATE_CAP", seed_factor="BENCH_SEED_FACTOR",
                 db_max_connections="BENCH_DB_MAX_CONNECTIONS")
    values = {}
    for key, (smoke_default, full_default) in defaults.items():
        raw = env.get(names[key], str(smoke_default if smoke else full_default))
        if not raw.isdigit() or int(raw) < 1:
            raise Failed(f"{names[key]} must be a positive integer, got {raw!r}")
        values[key] = int(raw)
    db = env.get("BENCH_DB", "signal_scans_bench_smoke" if smoke else "signal_scans_bench")
    s = Settings(mode="smoke" if smoke else "full", db=db,
                 pg_restart=env.get("BENCH_PG_RESTART", "0" if smoke else "1") == "1", **values)
    s.threads = min(THREADS, s.connections)
    s.busy_streams = min(BUSY_STREAMS, s.streams)
    return s


# ---------------------------------------------------------------- id ranges


def warmup_first(slot: int) -> int:
    """Run slot s owns 10^9 ids from s * 10^9: its warm-up takes them from there, its measured run from
    s * 10^9 + 5 * 10^8. Ranges never touch, so a run that overran its own would ask for ids nobody seeded,
    never for another run's scans."""
    return slot * 1_000_000_000 + 1


def measured_first(slot: int) -> int:
    return slot * 1_000_000_000 + 500_000_001


class Ranges:
    """Sizes each measured run's range from the fastest rate seen so far in this run (its own warm-up's or
    an earlier run's): a warm-up is short and can be slowed by a neighbour, and the fastest run before (the
    bare UPDATE, normally) bounds every later one."""

    def __init__(self, seed_factor: int):
        self.seed_factor = seed_factor
        self.fastest = 0.0

    def saw(self, rate: float) -> None:
        self.fastest = max(self.fastest, rate)

    def size(self, seconds: float) -> int:
        return max(int(self.fastest * seconds * self.seed_factor) + 1, MIN_RANGE)


def turns(first: str, second: str, pairs: int) -> list:
    """The order of windows of two sides taking turns, FIRST SECOND, SECOND FIRST, ...: a drift of the machine's
    speed that is steady over a pair of pairs weighs on both sides alike."""
    return [side for i in range(pairs) for side in ((first, second) if i % 2 == 0 else (second, first))]


def pair_ratios(order: list, rates: list, numerator: str) -> list:
    """NUMERATOR's rate ÷ the other side's, pair by pair, for windows in ORDER (see turns) with their RATES."""
    return [ratio(rates[i], rates[i + 1]) if order[i] == numerator else ratio(rates[i + 1], rates[i])
            for i in range(0, len(order), 2)]


# ---------------------------------------------------------------- checks


def check_http_run(name: str, wrk, changed_rows: int, not_found: int, recancels: int) -> None:
    """The run completed requests, every one a 2xx (wrk counts the others, and its socket errors, as
    requests); every 2xx changed a scan of the run's own range; no request ran past the range (wrk's
    beyond_range, the service's 404s); none changed nothing (the service's re-cancels)."""
    note(f"({name}) {wrk.requests} requests, {wrk.ok} 2xx, {wrk.non2xx} non-2xx, "
         f"{changed_rows} scans changed in the run's range")
    if wrk.requests == 0:
        raise Failed(f"({name}) wrk completed no request")
    if wrk.ok == 0:
        raise Failed(f"({name}) wrk saw zero 2xx responses ({wrk.non2xx} errors)")
    if wrk.non2xx:
        raise Failed(f"({name}) {wrk.non2xx} answers were not 2xx: every request must cancel a scan")
    if wrk.socket_errors:
        raise Failed(f"({name}) {wrk.socket_errors} socket errors (connect, read, write or wrk's timeout)")
    if wrk.beyond_range:
        raise Failed(f"({name}) ran out of scans: {wrk.beyond_range} requests asked for ids past its range "
                     "(raise BENCH_SEED_FACTOR)")
    if not_found:
        raise Failed(f"({name}) the service answered 404 {not_found} times: requests for scans nobody seeded")
    if recancels:
        raise Failed(f"({name}) the service re-cancelled {recancels} scans: requests that changed nothing")
    # Requests still in flight when wrk stops are not counted by wrk, but they do change their scans.
    if changed_rows < wrk.ok:
        raise Failed(f"({name}) {wrk.ok} 2xx answers but only {changed_rows} scans changed: some changed nothing")


def check_pgbench(name: str, used: int, count: int, transactions: int, changed: int, setting: str) -> None:
    """Every transaction changed one scan of the range, and the sequence never went past it."""
    if used > count:
        raise Failed(f"({name}) ran out of scans: took {used} ids of a range of {count} (raise {setting})")
    if changed != transactions:
        raise Failed(f"({name}) {transactions} transactions changed {changed} scans: some changed nothing")


def metrics_count(text: str, status_prefix: str) -> int:
    """The service's own http_requests_total for the cancel route, summed over statuses starting with PREFIX."""
    total = 0
    for line in text.splitlines():
        if line.startswith("http_requests_total{") and "cancel" in line:
            status = re.search(r'status="(\d+)"', line)
            if status and status.group(1).startswith(status_prefix):
                total += int(float(line.split()[-1]))
    return total


def metrics_recancels(text: str) -> int:
    """Cancels the service answered 200 for a scan that was already cancelled: requests that changed nothing."""
    return sum(int(float(line.split()[-1])) for line in text.splitlines()
               if line.startswith("scan_cancels_total{") and 'previous_status="cancelled"' in line)


def metrics_value(text: str, name: str) -> float:
    """The value of an unlabelled series (e.g. a histogram's `_sum` or `_count`); 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def batch_mean(before: str, after: str) -> float | None:
    """Changes per commit during a run, from the service's `scan_write_batch_size` histogram."""
    commits = metrics_value(after, "scan_write_batch_size_count") - metrics_value(before, "scan_write_batch_size_count")
    changes = metrics_value(after, "scan_write_batch_size_sum") - metrics_value(before, "scan_write_batch_size_sum")
    return round(changes / commits, 2) if commits else None


def scrape(base_url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(base_url + "/metrics", timeout=5) as response:
        return response.read().decode()


def a2_script(statement: str) -> str:
    """The service's statement as a pgbench script: comments out, parameters as literals (A2_PARAMETERS)."""
    lines = [line for line in statement.splitlines() if not line.strip().startswith("--")]
    sql = "\n".join(lines).strip().rstrip(";")
    placeholders = set(re.findall(r"\$\d+", sql))
    if placeholders != set(A2_PARAMETERS):
        raise Failed(f"the service's statement has parameters {sorted(placeholders)}; (a2) knows "
                     f"{sorted(A2_PARAMETERS)}: update A2_PARAMETERS in bench/run.py")
    sql = re.sub(r"\$\d+", lambda m: A2_PARAMETERS[m.group(0)], sql)
    return ("-- Generated by bench/run.py from src/store/postgres_transition.sql: run (a2).\n" + sql + ";\n")


def pgbench_percentiles(latencies_us: list) -> dict:
    """The percentiles wrk reports (1..99, 99.5, 99.9, 99.99, 100) of pgbench's per-transaction latencies."""
    values = sorted(latencies_us)
    points = [float(p) for p in range(1, 100)] + [99.5, 99.9, 99.99]
    out = {p: nearest_rank(values, p) for p in points}
    out[100.0] = values[-1]
    return out


def watch_report(stamped: list, expected: set, first: int, last: int) -> dict:
    """How fast and how completely `scans watch` delivered the run's changes. STAMPED: (microseconds when the
    line was read, the line); EXPECTED: the (scan id, to status) of every audit row of a change in the range.
    Delay is receipt time minus the change's `at` (PostgreSQL's clock_timestamp() on the same machine).
    Missing: an audit row never printed. Duplicated: a pair printed more than once. Extra: printed for a
    scan of the range with no such audit row, i.e. a change that did not commit."""
    seen: dict = {}
    delays = []
    unparsed = outside = 0
    for received_us, text in stamped:
        try:
            change = json.loads(text)
            scan_id, to = change["scanId"], change["to"]
            at_us = epoch_us(change["at"])
        except (ValueError, KeyError, TypeError):
            unparsed += 1
            continue
        if not first <= int(scan_id, 16) <= last:
            outside += 1
            continue
        key = (scan_id, to)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 1:
            delays.append(received_us - at_us)
    delays.sort()

    def ms(us):
        return None if us is None else round(us / 1000, 2)

    return {"lines": len(stamped), "unparsed": unparsed, "outside_range": outside, "expected": len(expected),
            "printed_unique": len(seen), "missing": len(expected - seen.keys()),
            "duplicated": sum(n - 1 for n in seen.values()), "extra": len(seen.keys() - expected),
            "delay_p50_ms": ms(nearest_rank(delays, 50)), "delay_p99_ms": ms(nearest_rank(delays, 99)),
            "delay_max_ms": ms(delays[-1] if delays else None)}


RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def epoch_us(text: str) -> int:
    """An RFC 3339 timestamp as microseconds since the epoch, to the microsecond (no float rounding)."""
    import calendar
    m = RFC3339.match(text)
    if not m:
        raise ValueError(f"not RFC 3339: {text!r}")
    seconds = calendar.timegm(tuple(int(g) for g in m.groups()[:6]))
    fraction = (m.group(7) or "0")[:6].ljust(6, "0")
    offset = 0
    if m.group(8) != "Z":
        sign = 1 if m.group(8)[0] == "+" else -1
        offset = sign * (int(m.group(8)[1:3]) * 3600 + int(m.group(8)[4:6]) * 60)
    return (seconds - offset) * 1_000_000 + int(fraction)


# ---------------------------------------------------------------- the benchmark


@dataclass
class Bench:
    s: Settings
    pg: Postgres
    bins: object
    tmp: Path
    pss: bool = False
    ranges: Ranges = None
    results: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)

    # ---------------------------------------------------- PostgreSQL
    def psql(self, sql: str) -> str:
        return self.pg.sql(sql)

    def xacts(self) -> int:
        return int(self.pg.sql("SELECT pg_stat_clear_snapshot(); SELECT xact_commit + xact_rollback "
                               "FROM pg_stat_database WHERE datname = current_database()").splitlines()[-1])

    def statements(self) -> int | None:
        if not self.pss:
            return None
        return int(self.pg.value("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE dbid = "
                                 "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                                 "AND query NOT ILIKE '%pg_stat_%'"))

    def enable_pg_stat_statements(self) -> None:
        """pg_stat_statements counts the statements the service sends per request. It must be in
        shared_preload_libraries, which takes a server restart: done once, idempotently, when allowed."""
        preload = self.pg.admin("SELECT current_setting('shared_preload_libraries')")
        if "pg_stat_statements" in preload.replace(" ", "").split(","):
            self.pss = True
            return
        available = self.pg.admin("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'")
        cluster = self.pg.local_cluster()
        if self.s.pg_restart and available == "1" and cluster:
            log(f"enabling pg_stat_statements: ALTER SYSTEM SET shared_preload_libraries, restarting {cluster}")
            new = f"{preload},pg_stat_statements" if preload.strip() else "pg_stat_statements"
            self.pg.admin(f"ALTER SYSTEM SET shared_preload_libraries = '{new}'")
            run(["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"])
            self.pg.wait()
            self.pss = True
        else:
            note(f"pg_stat_statements is not loaded (and BENCH_PG_RESTART={int(self.s.pg_restart)}): statements "
                 "per request are not counted; transactions per request still are (pg_stat_database)")

    # ---------------------------------------------------- (a), (a2): pgbench
    def measure_pgbench(self, name: str, script: Path, slot: int) -> None:
        s, store = self.s, Store("postgres", pg=self.pg)
        wfirst, wcount, mfirst = warmup_first(slot), s.warmup * s.warmup_rate_cap, measured_first(slot)

        def pgbench(first: int, seconds: int, out: Path, *extra: str) -> str:
            self.psql(f"SELECT setval('bench_ids', {first}, false)")
            result = subprocess.run(["pgbench", "-n", "-M", "prepared", "-c", str(s.connections), "-j",
                                     str(s.threads), "-T", str(seconds), "-f", str(script), "-D", f"group={GROUP}",
                                     *extra, s.db], capture_output=True, text=True)
            out.write_text(result.stdout + result.stderr)
            if result.returncode != 0:
                raise Failed(f"({name}) pgbench failed: {result.stdout}{result.stderr}")
            return result.stdout

        def figures(text: str) -> tuple:
            tps = re.search(r"^tps = ([\d.]+)", text, re.M)
            tx = re.search(r"number of transactions actually processed: (\d+)", text)
            failed = re.search(r"number of failed transactions: (\d+)", text)
            if not tps or not tx:
                raise Failed(f"({name}) no tps in pgbench's output")
            return round(float(tps.group(1)), 1), int(tx.group(1)), int(failed.group(1)) if failed else 0

        def used(first: int) -> int:
            return int(self.pg.value(f"SELECT CASE WHEN is_called THEN last_value - {first} + 1 ELSE 0 END "
                                     "FROM bench_ids"))

        log(f"({name}) {wcount} fresh scans for the warm-up")
        self.pg.truncate()
        store.seed(GROUP, wfirst, wcount)
        note(f"pgbench warm-up {s.warmup}s")
        wtps, wtx, _ = figures(pgbench(wfirst, s.warmup, OUT / f"pgbench-{name}-warmup.txt"))
        check_pgbench(f"{name} warm-up", used(wfirst), wcount, wtx, store.cancelled(wfirst, wcount),
                      "BENCH_WARMUP_RATE_CAP")
        self.ranges.saw(wtps)
        mcount = self.ranges.size(s.seconds)
        log(f"({name}) warm-up ran at {wtps}/s (fastest so far {self.ranges.fastest}/s): {mcount} fresh scans")
        store.seed(GROUP, mfirst, mcount)
        idle = busy_pct()
        log(f"({name}) pgbench -n -M prepared -c {s.connections} -j {s.threads} -T {s.seconds} -f {script.name} "
            f"(machine {idle}% busy just before)")
        logs = self.tmp / f"pgbench-log-{name}"
        logs.mkdir()
        text = pgbench(mfirst, s.seconds, OUT / f"pgbench-{name}.txt", "-l", f"--log-prefix={logs}/tx")
        note(text)
        tps, tx, failed = figures(text)
        if tps <= 0:
            raise Failed(f"({name}) pgbench ran no transaction")
        changed = store.cancelled(mfirst, mcount)
        check_pgbench(name, used(mfirst), mcount, tx, changed, "BENCH_SEED_FACTOR")
        self.ranges.saw(tps)
        # Per-transaction latencies (column 3, microseconds) -> the same percentiles as wrk's.
        latencies = [int(line.split()[2]) for f in logs.iterdir() for line in f.read_text().splitlines()]
        percentiles = pgbench_percentiles(latencies)
        write_latency_dat(percentiles, OUT / f"latency-{name}.dat")
        self.results[name] = dict(rps=tps, requests=tx, changed=changed, events=store.changes(mfirst, mcount),
                                  failed=failed, p50=round(percentiles[50.0] / 1000, 2),
                                  p99=round(percentiles[99.0] / 1000, 2), max=round(percentiles[100.0] / 1000, 2),
                                  warmup_rate=wtps, seeded=mcount, idle_busy=idle)

    # ---------------------------------------------------- (t), (b), (c) over HTTP
    def start_watch(self) -> tuple:
        """One `signal-scans scans watch` on the benchmark database; a thread writes each line it prints to
        bench/out/run/watch-lines.txt, stamped with the moment it was read."""
        log_file = open(OUT / "watch.log", "w")
        watch = subprocess.Popen([self.bins.service, "scans", "watch"], stdout=subprocess.PIPE, stderr=log_file,
                                 env=dict(os.environ, DATABASE_URL=self.pg.url, RUST_LOG="info,sqlx=warn"))
        lines = open(OUT / "watch-lines.txt", "wb")
        stamper = threading.Thread(target=stamp_lines, args=(watch.stdout, lines), daemon=True)
        stamper.start()
        for _ in range(150):
            if watch.poll() is not None:
                raise Failed(f"scans watch exited at start: {(OUT / 'watch.log').read_text()}")
            if "watching for status changes" in (OUT / "watch.log").read_text():
                return watch, stamper
            time.sleep(0.1)
        raise Failed("scans watch did not say it was watching within 15 s")

    def measure_http(self, name: str, kind: str, slot: int, store: Store) -> None:
        """KIND is service-pg, thin or service-sqlite. Fresh scans, the server, a warm-up, the measured run
        (with one watch for service-pg)."""
        s = self.s
        wfirst, wcount, mfirst = warmup_first(slot), s.warmup * s.warmup_rate_cap, measured_first(slot)
        server_kind = "thin" if kind == "thin" else "service"
        binary = self.bins.thin_peer if kind == "thin" else self.bins.service
        key = self.keys["sqlite" if kind == "service-sqlite" else "pg"]
        on_pg = kind != "service-sqlite"

        log(f"({name}) {wcount} fresh scans for the warm-up")
        if on_pg:
            self.pg.truncate()
        store.seed(GROUP, wfirst, wcount)
        server = Server(server_kind, binary, store.url, OUT / f"serve-{name}.log", s.db_max_connections)
        watch = None
        try:
            note(f"{server_kind} pid {server.pid} on {server.base_url}; warm-up {s.warmup}s")
            warm = run_wrk(server.base_url, key, GROUP, wfirst, wcount, s.warmup, OUT / f"warmup-{name}.txt",
                           s.threads, s.connections)
            if warm.ok == 0:
                raise Failed(f"({name}) the warm-up got no 2xx answer (log: {server.log_file})")
            if warm.beyond_range:
                raise Failed(f"({name}) the warm-up ran out of scans (raise BENCH_WARMUP_RATE_CAP)")
            self.ranges.saw(warm.rate)
            mcount = self.ranges.size(s.seconds)
            log(f"({name}) warm-up ran at {warm.rate}/s (fastest so far {self.ranges.fastest}/s): "
                f"{mcount} fresh scans for the measured run")
            warmup_end = time.monotonic()
            store.seed(GROUP, mfirst, mcount)
            if kind == "service-pg":
                watch = self.start_watch()
            if on_pg:
                # pg_stat_database counts a transaction when its backend flushes its statistics: at once when
                # idle, unless it flushed less than a second before; then up to 10 s later
                # (PGSTAT_IDLE_INTERVAL, PostgreSQL 15+). Wait that out, so the warm-up's are all in.
                time.sleep(max(0.0, 11 - (time.monotonic() - warmup_end)))
            idle = busy_pct()
            before = scrape(server.base_url) if server_kind == "service" else ""
            before_xacts = 0
            if on_pg:
                if self.pss:  # exact and immediate: reset after the warm-up
                    self.psql("SELECT pg_stat_statements_reset()")
                before_xacts = self.xacts()
            log(f"({name}) wrk -t{s.threads} -c{s.connections} -d{s.seconds}s --latency -s bench/cancel.lua "
                f"(machine {idle}% busy just before)")
            cpu0, pg0, machine0 = cpu_ticks(server.pid), pg_ticks(), machine_ticks()
            wrk = run_wrk(server.base_url, key, GROUP, mfirst, mcount, s.seconds, OUT / f"latency-{name}.txt",
                          s.threads, s.connections)
            cpu1, pg1, machine1 = cpu_ticks(server.pid), pg_ticks(), machine_ticks()
            rss_kb = status_kb(server.pid, "VmHWM")
            ok_metrics = not_found = recancels = batch = None
            if server_kind == "service":
                after = scrape(server.base_url)
                batch = batch_mean(before, after)
                ok_metrics = metrics_count(after, "2") - metrics_count(before, "2")
                not_found = metrics_count(after, "404") - metrics_count(before, "404")
                recancels = metrics_recancels(after)
            connections = self.pg.service_connections() if on_pg else None
        finally:
            server.stop()
        note((OUT / f"latency-{name}.txt.wrk").read_text())
        changed = store.cancelled(mfirst, mcount)
        check_http_run(name, wrk, changed, not_found or 0, recancels or 0)
        write_latency_dat(wrk.percentiles_us, OUT / f"latency-{name}.dat")
        cpu_us = (cpu1 - cpu0) * 1e6 / CLK_TCK
        result = dict(rps=wrk.rate, requests=wrk.requests, changed=changed, ok_metrics=ok_metrics,
                      failed=wrk.non2xx, sockerr=wrk.socket_errors, p50=wrk.ms(50), p99=wrk.ms(99),
                      max=round(wrk.latency_max_us / 1000, 2), warmup_rate=warm.rate, seeded=mcount,
                      idle_busy=idle, cpu_us=round(cpu_us / wrk.requests), cpu_cores=ratio(cpu_us, wrk.duration_us),
                      rss_mb=round(rss_kb / 1024, 1), machine_per_pg=ratio(machine1 - machine0, pg1 - pg0),
                      pg_cpu_us=round((pg1 - pg0) * 1e6 / CLK_TCK / wrk.requests),
                      db_connections=connections, batch_mean=batch)
        self.ranges.saw(wrk.rate)
        self.results[name] = result
        events = store.changes(mfirst, mcount)
        if events != changed:
            raise Failed(f"({name}) wrote {events} audit rows for {changed} changed scans")
        if not on_pg:
            return
        if watch:
            self.finish_watch(watch, mfirst, mcount, events)
        time.sleep(1)  # the servers' backends have exited and so flushed their statistics
        result["xacts_per_req"] = ratio(self.xacts() - before_xacts, wrk.requests, 3)
        statements = self.statements()
        result["statements_per_req"] = ratio(statements, wrk.requests, 3)
        if self.pss:
            top = self.psql("SELECT calls, round(mean_exec_time::numeric, 3), left(regexp_replace(query, '\\s+', ' ', "
                            "'g'), 120) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE "
                            "datname = current_database()) AND query NOT ILIKE '%pg_stat_%' ORDER BY calls DESC LIMIT 10")
            (OUT / f"pg_stat_statements-{name}.txt").write_text(top + "\n")
            note(f"({name}) statements during the measured run (calls | mean ms | query):\n{top}")

    def finish_watch(self, watch: tuple, mfirst: int, mcount: int, events: int) -> None:
        """Every committed change of the run should reach the watch; give it its fallback poll and more."""
        process, stamper = watch
        printed = OUT / "watch-lines.txt"
        deadline = time.monotonic() + WATCH_DRAIN_SECONDS
        while printed.read_bytes().count(b"\n") < events and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a duplicate printed late would still be counted
        process.terminate()
        process.wait(10)
        stamper.join(10)
        stamped = []
        for line in printed.read_text().splitlines():
            received_us, text = line.split("\t", 1)
            stamped.append((int(received_us), text))
        rows = self.pg.sql("SELECT scan_id || '|' || to_status FROM signal_scan_events "
                           f"WHERE from_status IS NOT NULL AND scan_id BETWEEN '{hex_id(mfirst)}' "
                           f"AND '{hex_id(mfirst + mcount - 1)}'")
        expected = {tuple(line.split("|")) for line in rows.splitlines()}
        report = watch_report(stamped, expected, mfirst, mfirst + mcount - 1)
        note(f"(watch) {report}")
        self.results["watch"] = report

    # ---------------------------------------------------- (s) and (s0)
    def seed_windows(self, name: str, slot: int, order: list, stores: dict, rate_cap: int | None = None) -> tuple:
        """Fresh scans for each window of ORDER (see turns), in the store STORES gives its side, PostgreSQL's
        tables emptied first: each window's warm-up and measured run get ranges of their own within SLOT, for
        the fastest rate seen so far or, with RATE_CAP, for that rate. Returns the windows' (warm-up, measured)
        first ids and the two ranges' sizes."""
        s = self.s
        if rate_cap:
            wcount, mcount = rate_cap * s.warmup, rate_cap * s.pair_seconds
        else:
            wcount, mcount = self.ranges.size(s.warmup), self.ranges.size(s.pair_seconds)
        log(f"{name}: {len(order)} windows of {s.pair_seconds}s in the order {' '.join(order)}; "
            f"{wcount} + {mcount} fresh scans each")
        self.pg.truncate()
        firsts = [(warmup_first(slot) + k * 10_000_000, measured_first(slot) + k * 10_000_000)
                  for k in range(len(order))]
        for (wfirst, mfirst), side in zip(firsts, order):
            stores[side].seed(GROUP, wfirst, wcount, settle=False)
            stores[side].seed(GROUP, mfirst, mcount, settle=False)
        self.pg.settle()
        return firsts, wcount, mcount

    def measure_paired(self, slot: int, store: Store) -> None:
        """What open change streams cost the cancels, read as (s) / (s0). Two runs made a minute apart cannot
        tell a 10 % difference on a machine whose speed drifts by more than that between them, so the two
        sides take turns in windows, in the order (s0) (s), (s) (s0), ...: a drift that is steady over a pair
        of pairs weighs on both alike. Each window is a run of its own: the service started afresh, a
        warm-up, the streams opened (for (s)), the measured run, the streams' reports checked."""
        s = self.s
        order = turns("s0", "s", s.pairs)
        firsts, wcount, mcount = self.seed_windows("(s) and (s0)", slot, order, {"s": store, "s0": store})
        totals = {side: dict(requests=0, duration=0, service=0, client=0, pg=0, machine=0) for side in ("s", "s0")}
        rates = []
        streams_total = {"streams": 0, "busy": 0, "complete": 0, "missing_max": 0, "duplicates": 0, "foreign": 0}
        rss_max = connections_max = 0
        follows = [f"{GROUP}:{s.busy_streams}"] + [f"{0xfeed000000 + i:024x}:1"
                                                   for i in range(1, s.streams - s.busy_streams + 1)]
        for k, side in enumerate(order):
            name = f"{side} #{k + 1}"
            wfirst, mfirst = firsts[k]
            server = Server("service", self.bins.service, self.pg.url, OUT / f"serve-window-{k}.log",
                            s.db_max_connections)
            streams = None
            try:
                warm = run_wrk(server.base_url, self.keys["pg"], GROUP, wfirst, wcount, s.warmup,
                               OUT / f"warmup-window-{k}.txt", s.threads, s.connections)
                if warm.beyond_range:
                    raise Failed(f"({name}) the warm-up ran out of scans")
                if side == "s":
                    streams = StreamClient(self.bins.stream_client, server.base_url, self.keys["streams"],
                                           OUT / f"streams-seen-{k}.txt", OUT / f"streams-{k}.log", follows)
                before = scrape(server.base_url)
                cpu0, pg0, machine0 = cpu_ticks(server.pid), pg_ticks(), machine_ticks()
                client0 = cpu_ticks(streams.process.pid) if streams else 0
                wrk = run_wrk(server.base_url, self.keys["pg"], GROUP, mfirst, mcount, s.pair_seconds,
                              OUT / f"latency-window-{k}.txt", s.threads, s.connections)
                t = totals[side]
                t["service"] += cpu_ticks(server.pid) - cpu0
                t["pg"] += pg_ticks() - pg0
                t["machine"] += machine_ticks() - machine0
                t["client"] += (cpu_ticks(streams.process.pid) - client0) if streams else 0
                after = scrape(server.base_url)
                not_found = metrics_count(after, "404") - metrics_count(before, "404")
                recancels = metrics_recancels(after)
                seen = None
                if streams:
                    rss_max = max(rss_max, status_kb(server.pid, "VmHWM"))
                    connections_max = max(connections_max, self.pg.service_connections())
                    seen = streams.finish()
                    streams = None
            finally:
                if streams:
                    streams.process.kill()
                server.stop()
            changed, events = store.cancelled(mfirst, mcount), store.changes(mfirst, mcount)
            check_http_run(name, wrk, changed, not_found, recancels)
            if events != changed:
                raise Failed(f"({name}) wrote {events} audit rows for {changed} changed scans")
            t["requests"] += wrk.requests
            t["duration"] += wrk.duration_us
            rates.append(wrk.rate)
            note(f"({name}) {wrk.rate} requests/s")
            if seen is not None:
                expected = store.changed_scans(mfirst, mcount)
                verdict = stream_verdict(seen, lambda label: expected if label == GROUP else [])
                verdict["busy"] = sum(1 for label, *_ in seen if label == GROUP)
                note(f"({name}, streams) {verdict}")
                for key in ("streams", "busy", "complete", "duplicates", "foreign"):
                    streams_total[key] += verdict[key]
                streams_total["missing_max"] = max(streams_total["missing_max"], verdict["missing_max"])
        for side, key in (("s", "streams"), ("s0", "nostreams")):
            t = totals[side]
            self.results[key] = dict(requests=t["requests"], rps=round(t["requests"] / (t["duration"] / 1e6), 1),
                                     cpu_us=round(t["service"] * 1e6 / CLK_TCK / t["requests"]),
                                     client_cpu_us=round(t["client"] * 1e6 / CLK_TCK / t["requests"]),
                                     machine_per_pg=ratio(t["machine"], t["pg"]))
        self.results["streams"].update(rss_mb=round(rss_max / 1024, 1), db_connections=connections_max)
        self.results["streams_check"] = streams_total
        self.results["pair_ratios"] = pair_ratios(order, rates, "s")

    def measure_turns(self, name: str, slot: int, sides: dict, connections: int, rate_cap: int | None = None) -> list:
        """Windows of the two SIDES taking turns (see turns), 4 of each by default; SIDES maps each side's name to
        its (server kind: "service" or "thin", store, key), the first side first. Each window is a run of its
        own: the server started afresh on its store, a warm-up, the measured run at CONNECTIONS connections,
        its answers and audit rows checked. Windows are seeded for the fastest rate seen so far, or RATE_CAP.
        Returns each window's (side, wrk run, the server's CPU ticks)."""
        s = self.s
        first, second = sides
        order = turns(first, second, s.pairs)
        stores = {side: store for side, (_, store, _) in sides.items()}
        firsts, wcount, mcount = self.seed_windows(name, slot, order, stores, rate_cap)
        threads = min(s.threads, connections)
        windows = []
        for k, side in enumerate(order):
            kind, store, key = sides[side]
            window = f"{side} #{k + 1}"
            wfirst, mfirst = firsts[k]
            binary = self.bins.thin_peer if kind == "thin" else self.bins.service
            server = Server(kind, binary, store.url, OUT / f"serve-turn-{slot}-{k}.log", s.db_max_connections)
            try:
                warm = run_wrk(server.base_url, key, GROUP, wfirst, wcount, s.warmup,
                               OUT / f"warmup-turn-{slot}-{k}.txt", threads, connections)
                if warm.beyond_range:
                    raise Failed(f"({window}) the warm-up ran out of scans")
                before = scrape(server.base_url) if kind == "service" else ""
                cpu0 = cpu_ticks(server.pid)
                wrk = run_wrk(server.base_url, key, GROUP, mfirst, mcount, s.pair_seconds,
                              OUT / f"latency-turn-{slot}-{k}.txt", threads, connections)
                cpu = cpu_ticks(server.pid) - cpu0
                after = scrape(server.base_url) if kind == "service" else ""
            finally:
                server.stop()
            changed, events = store.cancelled(mfirst, mcount), store.changes(mfirst, mcount)
            not_found = metrics_count(after, "404") - metrics_count(before, "404") if after else 0
            check_http_run(window, wrk, changed, not_found, metrics_recancels(after) if after else 0)
            if events != changed:
                raise Failed(f"({window}) wrote {events} audit rows for {changed} changed scans")
            note(f"({window}) {wrk.rate} requests/s, p50 {wrk.ms(50)} ms")
            windows.append((side, wrk, cpu))
        return windows

    def measure_store_turns(self, slot: int, stores: dict) -> None:
        """(c) ÷ (b) again, in windows taking turns as (s) and (s0) do: the 20-s runs (b) and (c) are minutes
        apart, and the machine's speed drifts by tens of percent between them. STORES maps "b" and "c" to a
        store with a key in self.keys["turns-b"] and ["turns-c"]. Neither side runs a watch."""
        sides = {side: ("service", stores[side], self.keys[f"turns-{side}"]) for side in ("b", "c")}
        windows = self.measure_turns("(b) and (c) in turns", slot, sides, self.s.connections)
        for side in ("b", "c"):
            mine = [(wrk, cpu) for name, wrk, cpu in windows if name == side]
            requests = sum(wrk.requests for wrk, _ in mine)
            self.results[f"turns_{side}"] = dict(
                requests=requests, rps=round(requests / (sum(wrk.duration_us for wrk, _ in mine) / 1e6), 1),
                cpu_us=round(sum(cpu for _, cpu in mine) * 1e6 / CLK_TCK / requests))
        self.results["turns_pair_ratios"] = pair_ratios([name for name, _, _ in windows],
                                                        [wrk.rate for _, wrk, _ in windows], "c")

    def measure_one_at_a_time(self, slot: int, store: Store) -> None:
        """Issue 24's single cancel on an idle service: one connection, so that every cancel is a batch of its
        own, the service (b) against the thin peer (t), whose statement is the service's before group commit,
        in windows taking turns. A batching delay would show in (b)'s median."""
        sides = {"t": ("thin", store, self.keys["pg"]), "b": ("service", store, self.keys["pg"])}
        windows = self.measure_turns("one cancel at a time, (t) and (b) in turns", slot, sides, 1, ONE_RATE_CAP)
        medians = {side: [wrk.ms(50) for name, wrk, _ in windows if name == side] for side in sides}
        runs = {side: [wrk for name, wrk, _ in windows if name == side] for side in sides}
        self.results["one_at_a_time"] = dict(
            p50_t=round(sum(medians["t"]) / len(medians["t"]), 2),
            p50_b=round(sum(medians["b"]) / len(medians["b"]), 2),
            rps_t=round(sum(w.requests for w in runs["t"]) / (sum(w.duration_us for w in runs["t"]) / 1e6), 1),
            rps_b=round(sum(w.requests for w in runs["b"]) / (sum(w.duration_us for w in runs["b"]) / 1e6), 1),
            pair_ratios=pair_ratios([name for name, _, _ in windows], [wrk.ms(50) for _, wrk, _ in windows], "b"))


# ---------------------------------------------------------------- the report


def met(value, target, op: str) -> str:
    if value is None:
        return "n/a"
    ok = {">=": value >= target, "<": value < target, "=": value == target, "<=": value <= target}[op]
    return "**yes**" if ok else "**no**"


def dash(value) -> str:
    return "—" if value is None else str(value)


def report_body(r: dict, s: Settings, context: dict) -> str:
    """The generated section of BENCHMARKS.md (and bench/out/run/results.md): every figure from this one run."""
    a, a2, thin, pg, sq = (r[k] for k in ("a", "a2", "thin", "pg", "sqlite"))
    tb, tc, one = r["turns_b"], r["turns_c"], r["one_at_a_time"]
    st, ns, sc, w = r["streams"], r["nostreams"], r["streams_check"], r["watch"]
    for run_ in (a, a2, thin, pg, sq):
        run_["to_thin"] = ratio(run_["rps"], thin["rps"])
    cpu_ratio = ratio(pg["cpu_us"], thin["cpu_us"])
    streams_to_without = ratio(st["rps"], ns["rps"])
    # On 2 saturated cores throughput is the machine's speed / its CPU per request; PostgreSQL's CPU per request
    # measures that speed within each window. So this is what (s) / (s0) would be had the machine run at one
    # speed through both (a cross-check beside the measured ratio, not in its place).
    same_speed = ratio(ns["machine_per_pg"], st["machine_per_pg"])
    missed = w["missing"] + w["duplicated"] + w["extra"]
    context.update(cpu_ratio=cpu_ratio, streams_to_without=streams_to_without, same_speed=same_speed, missed=missed)
    max_conns = s.db_max_connections + 2
    lines = [f"Run of {context['when']}, mode **{s.mode}**, commit `{context['commit']}`, profile `{PROFILE}`."]
    if s.mode == "smoke":
        lines += ["", f"Smoke mode: {s.connections} connections and {s.seconds}-s runs check that the benchmark "
                  "works; its figures are not comparable with the targets."]
    lines += [
        "",
        "| measure (issue 10; (b) against (t), from this run) | now | target | met |",
        "|---|---|---|---|",
        f"| service ÷ thin peer, requests/s | {pg['to_thin']} ({pg['rps']} vs {thin['rps']}) | ≥ 0.9 | "
        f"{met(ratio(pg['rps'], thin['rps'], 9), 0.9, '>=')} |",
        f"| service CPU per request ÷ thin peer's | {cpu_ratio} ({pg['cpu_us']} vs {thin['cpu_us']} µs) | ≤ 1.3 | "
        f"{met(ratio(pg['cpu_us'], thin['cpu_us'], 9), 1.3, '<=')} |",
        f"| p99 at {s.connections} connections (wrk) | {pg['p99']} ms (thin peer {thin['p99']} ms) | < 10 ms | "
        f"{met(pg['p99'], 10, '<')} |",
        f"| database transactions per cancel, one watcher running | {pg['xacts_per_req']} | ≤ 1.05 | "
        f"{met(pg['xacts_per_req'], 1.05, '<=')} |",
        f"| watch delivery delay p99 under that load | {w['delay_p99_ms']} ms (p50 {w['delay_p50_ms']} ms, max "
        f"{w['delay_max_ms']} ms) | ≤ 50 ms | {met(w['delay_p99_ms'], 50, '<=')} |",
        f"| changes missed or duplicated by watch | {missed} ({w['missing']} missed, {w['duplicated']} duplicated, "
        f"{w['extra']} never committed, of {w['expected']}) | 0 | {met(missed, 0, '=')} |",
        f"| peak RSS of the service | {pg['rss_mb']} MB | < 20 MB | {met(pg['rss_mb'], 20, '<')} |",
        "",
        "| measure (issue 24, group commit; from this run) | now | target | met |",
        "|---|---|---|---|",
        f"| (c) SQLite ÷ (b) PostgreSQL, requests/s: the {s.seconds}-s runs, one after the other ((b) with its "
        f"watch) | {ratio(sq['rps'], pg['rps'])} ({sq['rps']} vs {pg['rps']}) | "
        f"≥ 1.2 | {met(ratio(sq['rps'], pg['rps'], 9), 1.2, '>=')} |",
        f"| the same in windows of {s.pair_seconds} s taking turns, {s.pairs} of each, neither watched | "
        f"{ratio(tc['rps'], tb['rps'])} ({tc['rps']} vs {tb['rps']}; pair by pair "
        f"{', '.join(map(str, r['turns_pair_ratios']))}) | ≥ 1.2 | {met(ratio(tc['rps'], tb['rps'], 9), 1.2, '>=')} |",
        f"| (c) CPU per request ÷ (b)'s: the {s.seconds}-s runs | {ratio(sq['cpu_us'], pg['cpu_us'])} "
        f"({sq['cpu_us']} vs {pg['cpu_us']} µs) | ≤ 1 | {met(ratio(sq['cpu_us'], pg['cpu_us'], 9), 1, '<=')} |",
        f"| the same in the windows taking turns | {ratio(tc['cpu_us'], tb['cpu_us'])} ({tc['cpu_us']} vs "
        f"{tb['cpu_us']} µs) | ≤ 1 | {met(ratio(tc['cpu_us'], tb['cpu_us'], 9), 1, '<=')} |",
        f"| (c) p99 ÷ (b) p99 | {ratio(sq['p99'], pg['p99'])} ({sq['p99']} vs {pg['p99']} ms) | ≤ 1 | "
        f"{met(ratio(sq['p99'], pg['p99'], 9), 1, '<=')} |",
        f"| one cancel at a time (one connection, windows of {s.pair_seconds} s taking turns, {s.pairs} of each): "
        f"(b) p50 ÷ (t) p50 | {ratio(one['p50_b'], one['p50_t'])} ({one['p50_b']} vs {one['p50_t']} ms; pair by pair "
        f"{', '.join(map(str, one['pair_ratios']))}; requests/s {one['rps_b']} vs {one['rps_t']}) | ≤ 1.1 | "
        f"{met(ratio(one['p50_b'], one['p50_t'], 9), 1.1, '<=')} |",
        f"| (b) ÷ (t) thin peer, requests/s | {pg['to_thin']} | ≥ 1.5 | {met(ratio(pg['rps'], thin['rps'], 9), 1.5, '>=')} |",
        f"| (b) p99 ÷ (t) p99 | {ratio(pg['p99'], thin['p99'])} ({pg['p99']} vs {thin['p99']} ms) | ≤ 1 | "
        f"{met(ratio(pg['p99'], thin['p99'], 9), 1, '<=')} |",
        f"| (b) database transactions per cancel | {pg['xacts_per_req']} | ≤ 0.5 | "
        f"{met(pg['xacts_per_req'], 0.5, '<=')} |",
        f"| peak RSS, (b) / (c) | {pg['rss_mb']} / {sq['rss_mb']} MB | < 20 / < 32 MB | "
        f"{met(pg['rss_mb'], 20, '<')} / {met(sq['rss_mb'], 32, '<')} |",
        f"| changes per commit (mean, from `scan_write_batch_size`), (b) / (c) | {pg.get('batch_mean')} / "
        f"{sq.get('batch_mean')} | (reported) | |",
        "",
        f"(c)'s CPU counts its database engine, (b)'s does not: with every PostgreSQL process's, (b) spent "
        f"{pg['cpu_us'] + pg['pg_cpu_us']} µs a request (the service {pg['cpu_us']}, PostgreSQL {pg['pg_cpu_us']}) "
        f"against (c)'s {sq['cpu_us']} (informational; the target compares the services' own).",
        "",
        f"| measure (issue 11; (s) against (s0): windows of {s.pair_seconds} s taking turns, {s.pairs} of each, "
        "from this run) | now | target | met |",
        "|---|---|---|---|",
        f"| streams that saw exactly their group's committed changes | {sc['complete']} of {sc['streams']} "
        f"({s.streams} streams in each window (s), {s.busy_streams} of them on the busy group; missing at most "
        f"{sc['missing_max']}, {sc['duplicates']} duplicates, {sc['foreign']} of another group) | all | "
        f"{met(sc['complete'], sc['streams'], '=')} |",
        f"| peak RSS of the service with {s.streams} streams open | {st['rss_mb']} MB | < 64 MB | "
        f"{met(st['rss_mb'], 64, '<')} |",
        f"| database connections of the service with {s.streams} streams open | {st['db_connections']} | "
        f"≤ {max_conns}: the pool, the publisher, one shared listener; none per stream | "
        f"{met(st['db_connections'], max_conns, '<=')} |",
        f"| cancel throughput with streams ÷ without | {streams_to_without} ({st['rps']} vs {ns['rps']} requests/s; "
        f"pair by pair {', '.join(map(str, r['pair_ratios']))}) | ≥ 0.9 | {met(ratio(st['rps'], ns['rps'], 9), 0.9, '>=')} |",
        "",
        f"Per cancel, with the streams against without: the service's own CPU {st['cpu_us']} against {ns['cpu_us']} "
        f"µs; the stream client's (`bench/stream-client`, on the same cores, reading {s.busy_streams} events per "
        f"cancel) {st['client_cpu_us']} µs; the whole machine's, in units of PostgreSQL's in the same windows, "
        f"{st['machine_per_pg']} against {ns['machine_per_pg']}. Had the machine run at one speed through both "
        f"sides, (s) ÷ (s0) would be {same_speed} (a cross-check, not the target's figure).",
        "",
        "| | (a) pgbench: the bare UPDATE | (a2) pgbench: the service's statement | (t) thin peer | "
        "(b) service on PostgreSQL, one watch | (c) service on SQLite |",
        "|---|---|---|---|---|---|",
    ]

    def row(label: str, key: str, bold: bool = False, http_only: bool = False, sqlite: str | None = None,
            fmt=lambda v: dash(v)) -> str:
        cells = []
        for name, run_ in (("a", a), ("a2", a2), ("thin", thin), ("pg", pg), ("sqlite", sq)):
            if http_only and name in ("a", "a2"):
                cells.append("—")
            elif sqlite is not None and name == "sqlite":
                cells.append(sqlite)
            else:
                value = fmt(run_.get(key))
                cells.append(f"**{value}**" if bold and name == "pg" else value)
        return f"| {label} | " + " | ".join(cells) + " |"

    lines += [
        row("requests/s", "rps", bold=True),
        row("÷ thin peer", "to_thin", bold=True),
        row("latency p50 (ms)", "p50"),
        row("latency p99 (ms)", "p99", bold=True),
        row("latency max (ms)", "max"),
        row("requests completed", "requests"),
        row("scans changed in the run's own range", "changed"),
        row("non-2xx responses / failed transactions", "failed"),
        row("socket errors (connect/read/write/timeout)", "sockerr", http_only=True),
        row("server CPU per request (µs)", "cpu_us", bold=True, http_only=True),
        row("server CPU, cores busy on average", "cpu_cores", http_only=True),
        row("peak RSS of the server (VmHWM, MB)", "rss_mb", bold=True, http_only=True),
        row("DB transactions per request", "xacts_per_req", bold=True, http_only=True, sqlite="in-process"),
        row("DB statements per request (pg_stat_statements)", "statements_per_req", http_only=True,
            sqlite="in-process"),
        "| warm-up rate (/s) → scans seeded for the run | " + " | ".join(
            f"{x['warmup_rate']} → {x['seeded']}" for x in (a, a2, thin, pg, sq)) + " |",
        row("machine busy in the second before the run (%)", "idle_busy"),
        "",
        f"The watch during (b): {w['lines']} lines, {w['printed_unique']} distinct changes of the run's "
        f"{w['expected']} committed ones (audit rows), {w['outside_range']} lines for other scans, {w['unparsed']} "
        f"unreadable; delivery delay (time printed − the change's `at`) p50 {w['delay_p50_ms']} ms, p99 "
        f"{w['delay_p99_ms']} ms, max {w['delay_max_ms']} ms.",
        "",
        f"Workload: every request changes exactly one fresh queued scan of one account group: each run and each "
        f"warm-up owns its own id range, seeded just before it ({s.seed_factor} × the fastest rate seen so far × "
        f"{s.seconds} s for a measured run), pgbench takes ids from a sequence, wrk's {s.threads} threads count "
        f"through their own; a run that ran out would fail. Each run {s.seconds} s at {s.connections} connections "
        f"(wrk -t{s.threads}, pgbench -M prepared -j{s.threads}) after an unmeasured {s.warmup}-s warm-up. "
        f"Service: `{PROFILE}` build, `DB_MAX_CONNECTIONS={s.db_max_connections}`, rate limit out of the way "
        "(`RATE_LIMIT_PER_SECOND=RATE_LIMIT_BURST=1000000`), `LOG_FORMAT=json RUST_LOG=warn`; thin peer: the "
        f"same profile, a pool of {s.db_max_connections}. Client, servers and database share the machine's "
        f"{context['nproc']} cores.",
        "",
        f"PostgreSQL: {context['pg_version']}; {context['pg_settings']}.",
        "",
        f"Machine: {context['machine']}.",
    ]
    return "\n".join(lines) + "\n"


def results_json(r: dict, s: Settings, context: dict, build_seconds: dict) -> dict:
    keys = ("rps", "to_thin", "requests", "changed", "failed", "p50", "p99", "max", "warmup_rate", "seeded",
            "idle_busy", "sockerr", "cpu_us", "cpu_cores", "rss_mb", "xacts_per_req", "statements_per_req",
            "client_cpu_us", "machine_per_pg", "pg_cpu_us")

    def pick(name: str) -> dict:
        return {k: r[name][k] for k in keys if k in r[name]}

    return {
        "when": context["when"], "mode": s.mode, "commit": context["commit"], "profile": PROFILE,
        "config": {"seconds": s.seconds, "warmup_seconds": s.warmup, "connections": s.connections,
                   "threads": s.threads, "db_max_connections": s.db_max_connections,
                   "warmup_rate_cap": s.warmup_rate_cap, "seed_factor": s.seed_factor, "account_group": GROUP},
        "targets": {"service_to_thin_peer": r["pg"]["to_thin"], "cpu_per_request_to_thin_peer": context["cpu_ratio"],
                    "p99_ms": r["pg"]["p99"], "db_transactions_per_cancel": r["pg"]["xacts_per_req"],
                    "watch_delay_p99_ms": r["watch"]["delay_p99_ms"], "watch_missed_or_duplicated": context["missed"],
                    "peak_rss_mb": r["pg"]["rss_mb"], "streams_to_without": context["streams_to_without"],
                    "streams_to_without_at_one_speed": context["same_speed"]},
        "bare_update_pgbench": pick("a"),
        "service_statement_pgbench": pick("a2"),
        "thin_peer": pick("thin"),
        "service_postgres": pick("pg"),
        "service_postgres_streams": {**pick("streams"), "streams": s.streams, "windows": s.pairs,
                                     "window_seconds": s.pair_seconds,
                                     "db_connections": r["streams"]["db_connections"],
                                     "complete": r["streams_check"]["complete"],
                                     "opened": r["streams_check"]["streams"]},
        "service_postgres_without_streams": {**pick("nostreams"), "windows": s.pairs,
                                             "window_seconds": s.pair_seconds},
        "streams_pair_ratios": r["pair_ratios"],
        "service_sqlite": pick("sqlite"),
        "store_turns": {"postgres": pick("turns_b"), "sqlite": pick("turns_c"), "windows": s.pairs,
                        "window_seconds": s.pair_seconds, "sqlite_to_postgres_pair_ratios": r["turns_pair_ratios"]},
        "one_at_a_time": {**r["one_at_a_time"], "windows": s.pairs, "window_seconds": s.pair_seconds},
        "watch": r["watch"],
        "postgres": {"version": context["pg_version"], "synchronous_commit": context["sync_commit"],
                     "fsync": context["fsync"], "pg_stat_statements": context["pss"],
                     "settings": context["pg_settings"]},
        "machine": context["machine"],
        "build_seconds": build_seconds,
    }


def plot_latency(s: Settings, when: str, path: Path) -> None:
    """The percentile curves of every run on one chart."""
    series = [("pg", "(b) service on PostgreSQL, one watch", "#1f77b4", "lw 2", "ps 0.4"),
              ("thin", "(t) thin peer", "#ff7f0e", "lw 2", "ps 0.4"),
              ("sqlite", "(c) service on SQLite", "#d62728", "lw 2", "ps 0.4"),
              ("a2", "(a2) pgbench, the service's statement", "#2ca02c", "lw 1.5 dt 3", "ps 0.3"),
              ("a", "(a) pgbench, the bare UPDATE", "#555555", "lw 1.5 dt 2", "ps 0.3")]
    plots = ", ".join(f'"{OUT}/latency-{name}.dat" using (px($1)):2 with linespoints pt 7 {ps} {lw} '
                      f'lc rgb "{colour}" title "{title}"' for name, title, colour, lw, ps in series)
    script = f"""set terminal svg size 900,520 dynamic enhanced font "sans,12" background rgb "white"
set output "{path}"
set title "Cancel latency by percentile ({s.connections} connections, {s.seconds} s, one fresh scan per request, {s.mode} run {when})"
set xlabel "percentile (the tail stretched: each step right is ten times rarer)"
set ylabel "latency (ms, log scale)"
set logscale y
set grid xtics ytics mytics
set key top left
# x = log10(100 / (100 - p)); the maximum is drawn at x = 4.3.
px(p) = p >= 100 ? 4.3 : log10(100.0 / (100.0 - p))
set xrange [0:4.3]
set xtics ("0" 0, "50" px(50), "90" px(90), "99" px(99), "99.9" px(99.9), "99.99" px(99.99), "max" 4.3)
plot {plots}
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    if not path.exists() or path.stat().st_size == 0:
        raise Failed("gnuplot wrote no SVG")


def machine_description() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 1048576
    os_name = next((line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("PRETTY_NAME=")), platform.system())

    def version(args: list) -> str:
        result = subprocess.run(args, capture_output=True, text=True)
        return (result.stdout or result.stderr).splitlines()[0].strip() if (result.stdout or result.stderr) else "?"

    wrk = " ".join(version(["wrk", "-v"]).split()[:2])
    return (f"{os.cpu_count()} × {cpu}, {mem_gib:.1f} GiB RAM, {os_name}, {platform.system()} {platform.release()}; "
            f"{version(['rustc', '--version'])}; {wrk}; {version(['pgbench', '--version'])}; "
            f"SQLite {bundled_sqlite()}")


def bundled_sqlite() -> str:
    """The SQLite the service links (libsqlite3-sys's bundled copy), not the sqlite3 command's."""
    metadata = subprocess.run(["cargo", "metadata", "--format-version", "1", "--locked"], cwd=ROOT,
                              capture_output=True, text=True).stdout
    for package in json.loads(metadata or "{}").get("packages", []):
        if package["name"] == "libsqlite3-sys":
            header = Path(package["manifest_path"]).parent / "sqlite3" / "sqlite3.h"
            found = re.search(r'#define SQLITE_VERSION\s+"([^"]+)"', header.read_text()) if header.exists() else None
            return f"{found.group(1) if found else '?'}, bundled by libsqlite3-sys {package['version']}"
    return "?"


def commit_description() -> str:
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock",
                            "migrations", "bench"], capture_output=True, text=True).stdout.strip()
    return f"{commit} (with uncommitted changes)" if dirty else commit


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny end-to-end run for CI")
    parser.add_argument("--update-docs", action="store_true",
                        help="rewrite the generated section of BENCHMARKS.md and bench/latency.svg")
    args = parser.parse_args()
    s = settings_from(os.environ, args.smoke)

    log("tools")
    for command, package in [("wrk", "wrk"), ("sqlite3", "sqlite3"), ("psql", "postgresql-client"),
                             ("pgbench", pgbench_package()), ("gnuplot", "gnuplot-nox")]:
        need(command, package)
    bins = build()
    if OUT.exists():
        shutil.rmtree(OUT)  # bench/out/run is ours alone (bench/out is not committed)
    OUT.mkdir(parents=True)
    pg = Postgres(s.db)
    log(f"PostgreSQL at {pg.host}:{pg.port}")
    pg.start_if_down()
    with tempfile.TemporaryDirectory(prefix="signal-scans-bench.") as tmp:
        bench = Bench(s=s, pg=pg, bins=bins, tmp=Path(tmp), ranges=Ranges(s.seed_factor))
        try:
            return measure_and_report(bench, args.update_docs)
        finally:
            pg.drop()


def measure_and_report(bench: Bench, update_docs: bool) -> int:
    s, pg, bins = bench.s, bench.pg, bench.bins
    bench.enable_pg_stat_statements()
    log(f"database {s.db} (dropped and recreated)")
    pg.recreate()
    if bench.pss:
        pg.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    sync_commit, fsync = pg.durable()
    note(f"synchronous_commit = {sync_commit}, fsync = {fsync}")
    pg_settings = pg.value("SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ', ' ORDER BY name) "
                           "FROM pg_settings WHERE name IN ('shared_buffers', 'max_connections', 'wal_sync_method', "
                           "'full_page_writes', 'synchronous_commit', 'fsync', 'wal_level', 'commit_delay')")
    pg_version = pg.value("SHOW server_version")
    migrate(bins.service, pg.url)
    bench.keys["pg"] = create_key(bins.service, pg.url, "bench", "--permission", "signals:write",
                                  "--account-group", GROUP)
    bench.keys["streams"] = create_key(bins.service, pg.url, "bench-streams", "--permission", "signals:read",
                                       "--all-account-groups")
    # pgbench's source of ids (bench/cancel.pgbench and (a2)); not part of the service's schema.
    pg.sql("CREATE SEQUENCE bench_ids AS bigint")
    a2 = OUT / "service-cancel.pgbench"
    a2.write_text(a2_script(CANCEL_SQL.read_text()))
    pg_store = Store("postgres", pg=pg)

    # Each run's slot numbers its id range; the SQLite run has its own file and its own numbers.
    bench.measure_pgbench("a", BENCH / "cancel.pgbench", 1)
    bench.measure_pgbench("a2", a2, 2)
    if bench.results["a2"]["events"] != bench.results["a2"]["changed"]:
        raise Failed(f"(a2) wrote {bench.results['a2']['events']} audit rows for "
                     f"{bench.results['a2']['changed']} cancels")
    bench.measure_http("thin", "thin", 3, pg_store)
    bench.measure_http("pg", "service-pg", 4, pg_store)
    bench.measure_paired(6, pg_store)
    log("(c) the service on SQLite: a fresh database file")
    sqlite_store = Store("sqlite", sqlite_file=bench.tmp / "bench.db")
    migrate(bins.service, sqlite_store.url)
    bench.keys["sqlite"] = create_key(bins.service, sqlite_store.url, "bench", "--permission", "signals:write",
                                      "--account-group", GROUP)
    bench.measure_http("sqlite", "service-sqlite", 5, sqlite_store)
    log("(b) and (c) in turns: PostgreSQL's tables emptied, a fresh SQLite file")
    turns_store = Store("sqlite", sqlite_file=bench.tmp / "turns.db")
    migrate(bins.service, turns_store.url)
    bench.keys["turns-b"] = bench.keys["pg"]
    bench.keys["turns-c"] = create_key(bins.service, turns_store.url, "bench", "--permission", "signals:write",
                                       "--account-group", GROUP)
    bench.measure_store_turns(7, {"b": pg_store, "c": turns_store})
    bench.measure_one_at_a_time(8, pg_store)

    log("report")
    context = dict(when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), commit=commit_description(),
                   nproc=os.cpu_count(), pg_version=pg_version, pg_settings=pg_settings, sync_commit=sync_commit,
                   fsync=fsync, pss=bench.pss, machine=machine_description())
    body = report_body(bench.results, s, context)
    (OUT / "results-body.md").write_text(body)
    (OUT / "results.md").write_text(f"# signal-scans cancel benchmark\n\n{body}\n![latency percentiles](latency.svg)\n")
    (OUT / "results.json").write_text(json.dumps(results_json(bench.results, s, context, bins.build_seconds),
                                                 indent=2) + "\n")
    plot_latency(s, context["when"], OUT / "latency.svg")
    print(body)
    if update_docs:
        doc = ROOT / "BENCHMARKS.md"
        section = body + "\n![latency percentiles of (a), (a2), (t), (b) and (c)](bench/latency.svg)\n"
        doc.write_text(replace_between(doc.read_text(), "<!-- bench:begin -->", "<!-- bench:end -->", section))
        shutil.copy(OUT / "latency.svg", BENCH / "latency.svg")
        log("updated BENCHMARKS.md and bench/latency.svg")
    log(f"done: {OUT}/results.md, {OUT}/results.json, {OUT}/latency.svg")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as error:
        print(f"bench/run.py: FAILED: {error} (logs of the last runs are in {OUT})", file=sys.stderr)
        sys.exit(1)
