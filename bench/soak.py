#!/usr/bin/env python3
"""The soak: does the service hold steady (memory, file descriptors, database connections) under hours-like
load that nobody watches through /metrics? See bench/README.md.

    bench/soak.py                      5 minutes on PostgreSQL, then 5 on SQLite
    bench/soak.py --seconds 1800       longer
    bench/soak.py --store sqlite       one store
    bench/soak.py --smoke              30 s a store, samples every 5 s (CI's check that it still works)
    bench/soak.py --update-docs        also rewrite the soak section of BENCHMARKS.md and bench/soak.svg
    bench/soak.py --binary PATH        soak another build of the service (an older commit, say)
    bench/soak.py --rate 750           cancel at this rate instead of half the measured capacity

For each store, on a service started afresh:
  1. capacity: a short unpaced run of cancels (32 connections, as bench/run.py's) on a service of its own;
  2. the soak, on a new service: cancels paced at half that capacity (16 connections, each request a fresh
     queued scan), 50 change streams open throughout (5 follow every change of the account group, 45 are
     filtered to 3 scans each), a read loop (a scan, a page of scans, a scan's events; 100 a second) and a
     stream opened, read up to its `retry:` and closed over and over. /metrics is never requested.
  3. every --sample-every seconds (15): the service's resident memory (VmRSS), its open file descriptors, its
     database connections (PostgreSQL: its sessions; SQLite: its handles on the database file) and the
     changes committed so far.
It fails when a request failed (any non-2xx, socket error, or a read or stream that did not answer 200),
when a stream missed or repeated a committed change (each stream's events against the audit trail), when a
cancel changed nothing, or when the peak resident memory of the last third of the samples exceeds the middle
third's by more than 10 % + 2 MB (a slope, not the start-up climb of the first third).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import (BENCH, PROFILE, ROOT, Failed, Postgres, Server, Store, StreamClient, build, create_key,
                     hex_id, log, migrate, need, note, open_fds, pgbench_package, replace_between, run_wrk,
                     status_kb, stream_verdict)

OUT = BENCH / "out" / "soak"
GROUP = "beefcafe0000000000000001"
CONNECTIONS_CAPACITY = 32
CONNECTIONS_SOAK = 16
THREADS = 2
FULL_STREAMS = 5
FILTERED_STREAMS = 45
SCANS_PER_FILTER = 3
READS_PER_SECOND = 100
# Of the rule "the last third's peak RSS may exceed the middle third's by at most 10 % + 2 MB".
RSS_GROWTH_FACTOR = 1.10
RSS_GROWTH_KB = 2 * 1024


@dataclass
class Sample:
    t: float
    rss_kb: int
    fds: int
    db_connections: int
    changes: int


def thirds(samples: list, seconds: float) -> tuple:
    """The samples of the middle and of the last third of the soak's time."""
    middle = [s for s in samples if seconds / 3 <= s.t < 2 * seconds / 3]
    last = [s for s in samples if s.t >= 2 * seconds / 3]
    return middle, last


def rss_verdict(samples: list, seconds: float) -> dict:
    """Whether resident memory stayed flat: the last third's peak against the middle third's."""
    middle, last = thirds(samples, seconds)
    if not middle or not last:
        raise Failed(f"too few samples ({len(samples)}) for thirds of {seconds} s: sample more often")
    middle_peak = max(s.rss_kb for s in middle)
    last_peak = max(s.rss_kb for s in last)
    limit = middle_peak * RSS_GROWTH_FACTOR + RSS_GROWTH_KB
    return {"middle_peak_kb": middle_peak, "last_peak_kb": last_peak, "limit_kb": round(limit),
            "flat": last_peak <= limit}


def filtered_label(scans: list) -> str:
    return GROUP + "?" + urllib.parse.urlencode([("scanId", s) for s in scans])


def expected_for(changed: list):
    """For a stream's label (bench/stream-client's FOLLOW), the changes it should have seen, sorted."""
    def expected(label: str) -> list:
        if label == GROUP:
            return changed
        query = urllib.parse.parse_qs(label.split("?", 1)[1])
        wanted = set(query["scanId"])
        return [scan for scan in changed if scan in wanted]
    return expected


# ---------------------------------------------------------------- the loops beside the cancels


class Loop(threading.Thread):
    """Calls `step` about `per_second` times a second until stopped; counts what answered and what failed."""

    def __init__(self, name: str, step, per_second: float, stopping: threading.Event):
        super().__init__(name=name, daemon=True)
        self.step, self.interval, self.stopping = step, 1 / per_second, stopping
        self.ok = self.failed = 0
        self.first_error = None

    def run(self) -> None:
        due = time.monotonic()
        while not self.stopping.is_set():
            try:
                self.step()
                self.ok += 1
            except Exception as error:  # every failure counts, whatever its kind
                self.failed += 1
                self.first_error = self.first_error or f"{type(error).__name__}: {error}"
            due = max(due + self.interval, time.monotonic())
            self.stopping.wait(max(0.0, due - time.monotonic()))


class Reader:
    """GETs on one keep-alive connection, in turn: a scan, a page of scans, a scan's events. Each must be 200."""

    def __init__(self, base_url: str, key: str, first: int, count: int):
        import http.client
        self.connect = lambda: http.client.HTTPConnection(base_url.removeprefix("http://"), timeout=10)
        self.connection = self.connect()
        self.headers = {"Authorization": f"Bearer {key}"}
        self.first, self.count, self.turn = first, count, 0
        self.random = random.Random(7)

    def __call__(self) -> None:
        scan = hex_id(self.first + self.random.randrange(self.count))
        base = f"/v1/accounts/{GROUP}/signals/scans"
        path = [f"{base}/{scan}", f"{base}?limit=20", f"{base}/{scan}/events"][self.turn % 3]
        self.turn += 1
        try:
            self.connection.request("GET", path, headers=self.headers)
            response = self.connection.getresponse()
            response.read()
        except OSError:
            self.connection.close()
            self.connection = self.connect()
            raise
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}")


class StreamChurn:
    """Opens a change stream, reads it up to its opening `retry:` and closes it: the service must let go of
    every stream it is left by."""

    def __init__(self, base_url: str, key: str):
        host, port = base_url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.request = (f"GET /v1/accounts/{GROUP}/signals/scans/changes HTTP/1.1\r\nHost: {host}\r\n"
                        f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n").encode()

    def __call__(self) -> None:
        with socket.create_connection(self.address, timeout=10) as connection:
            connection.sendall(self.request)
            received = b""
            while b"retry:" not in received:
                chunk = connection.recv(4096)
                if not chunk:
                    raise RuntimeError(f"the stream closed before its retry: {received[:200]!r}")
                received += chunk
            if not received.startswith(b"HTTP/1.1 200 "):
                status_line = received.split(b"\r\n", 1)[0]
                raise RuntimeError(f"the stream was refused: {status_line!r}")


# ---------------------------------------------------------------- one store


def db_connections(store: Store, pid: int) -> int:
    if store.kind == "postgres":
        return store.pg.service_connections()
    # One handle on the database file per SQLite connection (the -wal and -shm files have their own).
    return sum(1 for target in open_fds(pid) if target == str(store.sqlite_file))


def soak_store(kind: str, service_bin: Path, stream_client_bin: Path, seconds: float, sample_every: float,
               capacity_seconds: float, work: Path, rate: float | None = None) -> dict:
    log(f"({kind}) a fresh database")
    if kind == "postgres":
        pg = Postgres(os.environ.get("BENCH_SOAK_DB", "signal_scans_soak"))
        pg.start_if_down()
        pg.recreate()
        pg.durable()
        store = Store("postgres", pg=pg)
    else:
        store = Store("sqlite", sqlite_file=work / "soak.db")
    try:
        return soak_on(store, service_bin, stream_client_bin, seconds, sample_every, capacity_seconds, work, rate)
    finally:
        if store.pg:
            store.pg.drop()


def soak_on(store: Store, service_bin: Path, stream_client_bin: Path, seconds: float, sample_every: float,
            capacity_seconds: float, work: Path, rate: float | None) -> dict:
    kind = store.kind
    migrate(service_bin, store.url)
    write_key = create_key(service_bin, store.url, "soak", "--permission", "signals:write",
                           "--account-group", GROUP)
    read_key = create_key(service_bin, store.url, "soak-read", "--permission", "signals:read",
                          "--all-account-groups")
    db_max = int(os.environ.get("BENCH_DB_MAX_CONNECTIONS", "10"))

    # 1. Capacity, on a service of its own: a warm-up, then an unpaced run.
    warm_first, cap_first, soak_first = 1_000_000_001, 1_500_000_001, 2_000_000_001
    # 20,000 scans a second of warm-up is more than this machine reaches; the measured run gets three
    # times what the warm-up's rate would use, and at least 10,000 a second (a first second is slow).
    store.seed(GROUP, warm_first, 20_000)
    server = Server("service", service_bin, store.url, OUT / f"soak-{kind}-capacity.log", db_max)
    try:
        warmup = run_wrk(server.base_url, write_key, GROUP, warm_first, 20_000, 1, OUT / f"soak-{kind}-warmup.txt",
                         THREADS, CONNECTIONS_CAPACITY)
        cap_count = int(max(warmup.rate * 3, 10_000) * capacity_seconds)
        store.seed(GROUP, cap_first, cap_count)
        capacity = run_wrk(server.base_url, write_key, GROUP, cap_first, cap_count, capacity_seconds,
                           OUT / f"soak-{kind}-capacity.txt", THREADS, CONNECTIONS_CAPACITY)
    finally:
        server.stop()
    if capacity.ok == 0 or capacity.beyond_range:
        raise Failed(f"({kind}) the capacity run got {capacity.ok} 2xx answers, {capacity.beyond_range} past its range")
    target = round(rate or capacity.rate / 2)
    log(f"({kind}) capacity {capacity.rate}/s at {CONNECTIONS_CAPACITY} connections: the soak cancels at {target}/s"
        + (" (--rate)" if rate else ""))

    # 2. The soak's scans: enough for the paced rate with room to spare; the filtered streams each follow
    # three scans spread over the part of the range the soak will reach.
    count = int(target * seconds * 1.5) + 1000
    store.seed(GROUP, soak_first, count)
    reached = max(int(target * seconds * 0.8), 1)
    spacing = max(reached // (FILTERED_STREAMS * SCANS_PER_FILTER), 1)
    filtered = [filtered_label([hex_id(soak_first + (i * SCANS_PER_FILTER + j) * spacing)
                                for j in range(SCANS_PER_FILTER)]) for i in range(FILTERED_STREAMS)]

    server = Server("service", service_bin, store.url, OUT / f"soak-{kind}.log", db_max)
    samples: list = []
    stopping = threading.Event()
    streams = loops = None
    try:
        streams = StreamClient(stream_client_bin, server.base_url, read_key, OUT / f"soak-{kind}-seen.txt",
                               OUT / f"soak-{kind}-streams.log",
                               [f"{GROUP}:{FULL_STREAMS}"] + [f"{label}:1" for label in filtered])
        loops = [Loop("reads", Reader(server.base_url, read_key, soak_first, reached), READS_PER_SECOND, stopping),
                 Loop("stream churn", StreamChurn(server.base_url, read_key), 10, stopping)]
        for loop in loops:
            loop.start()
        log(f"({kind}) soak: {seconds:g} s of cancels at {target}/s, {FULL_STREAMS + FILTERED_STREAMS} streams, "
            f"reads, a stream opened and closed; a sample every {sample_every:g} s")
        result: dict = {}

        def cancels() -> None:
            try:
                result["wrk"] = run_wrk(server.base_url, write_key, GROUP, soak_first, count, seconds,
                                        OUT / f"soak-{kind}-cancels.txt", THREADS, CONNECTIONS_SOAK, rate=target)
            except Failed as error:
                result["error"] = error

        wrk = threading.Thread(target=cancels, name="cancels")
        start = time.monotonic()
        wrk.start()
        next_sample = start
        while True:
            now = time.monotonic()
            # On the schedule, and once more at the end unless the last sample was just taken.
            last_due = not wrk.is_alive() and (not samples or now - start - samples[-1].t >= sample_every / 2)
            if now >= next_sample or last_due:
                try:
                    connections, changes = db_connections(store, server.pid), store.changes(soak_first, count)
                except Failed as error:
                    # The database is shared (a full server refuses our psql): the memory sample still counts.
                    note(f"({kind}) no database figures for this sample: {error}")
                    connections = changes = -1
                sample = Sample(round(now - start, 1), status_kb(server.pid, "VmRSS"), len(open_fds(server.pid)),
                                connections, changes)
                samples.append(sample)
                note(f"({kind}) t={sample.t:>5.0f}s RSS {sample.rss_kb / 1024:.1f} MB, {sample.fds} fds, "
                     f"{sample.db_connections} database connections, {sample.changes} changes")
                next_sample += sample_every
            if not wrk.is_alive():
                break
            time.sleep(min(0.5, max(0.0, next_sample - time.monotonic())))
        wrk.join()
        if "error" in result:
            raise result["error"]
        cancels_run = result["wrk"]
        stopping.set()
        for loop in loops:
            loop.join()
        seen = streams.finish()
        streams = None
    finally:
        stopping.set()
        if streams:
            streams.process.kill()
        server.stop()

    # 3. The verdict.
    changed = store.changed_scans(soak_first, count)
    cancelled = store.cancelled(soak_first, count)
    verdict = stream_verdict(seen, expected_for(changed))
    rss = rss_verdict(samples, seconds)
    reads, churn = loops
    failures = []
    if cancels_run.requests == 0:
        failures.append("no cancel completed")
    if cancels_run.non2xx or cancels_run.socket_errors:
        failures.append(f"{cancels_run.non2xx} cancels answered non-2xx, {cancels_run.socket_errors} socket errors")
    if cancels_run.beyond_range:
        failures.append(f"{cancels_run.beyond_range} cancels ran past the seeded scans")
    if len(changed) != cancelled:
        failures.append(f"{len(changed)} audit rows of changes for {cancelled} cancelled scans")
    if cancelled < cancels_run.ok:
        failures.append(f"{cancels_run.ok} cancels answered 2xx but only {cancelled} scans changed")
    if verdict["complete"] != verdict["streams"] or verdict["duplicates"] or verdict["foreign"]:
        failures.append(f"streams: {verdict['complete']} of {verdict['streams']} saw exactly their changes "
                        f"(missing at most {verdict['missing_max']}, {verdict['duplicates']} repeated, "
                        f"{verdict['extra']} never committed, {verdict['foreign']} of another group)")
    for loop in loops:
        if loop.failed or not loop.ok:
            failures.append(f"{loop.name}: {loop.ok} answered, {loop.failed} failed (first: {loop.first_error})")
    if not rss["flat"]:
        failures.append(f"resident memory grew: the last third's peak {rss['last_peak_kb'] / 1024:.1f} MB > "
                        f"{rss['limit_kb'] / 1024:.1f} MB (the middle third's {rss['middle_peak_kb'] / 1024:.1f} MB "
                        "+ 10 % + 2 MB)")
    return {
        "store": kind, "seconds": seconds, "sample_every": sample_every,
        "capacity_per_second": capacity.rate, "target_per_second": target,
        "cancels": {"requests": cancels_run.requests, "per_second": cancels_run.rate, "non2xx": cancels_run.non2xx,
                    "socket_errors": cancels_run.socket_errors, "p99_ms": cancels_run.ms(99),
                    "scans_changed": cancelled, "audit_rows": len(changed)},
        "streams": verdict, "reads": {"ok": reads.ok, "failed": reads.failed, "first_error": reads.first_error},
        "stream_churn": {"ok": churn.ok, "failed": churn.failed, "first_error": churn.first_error},
        "rss": rss, "samples": [asdict(s) for s in samples], "failures": failures,
    }


# ---------------------------------------------------------------- the report

STORE_NAMES = {"postgres": "PostgreSQL", "sqlite": "SQLite"}


def summary_line(r: dict) -> str:
    c, s, rss = r["cancels"], r["streams"], r["rss"]
    verdict = "**pass**" if not r["failures"] else "**FAIL**: " + "; ".join(r["failures"])
    return (f"- **{STORE_NAMES[r['store']]}**: capacity {r['capacity_per_second']:,.0f} cancels/s, soaked at "
            f"{c['per_second']:,.0f}/s for {r['seconds']:g} s ({c['requests']:,} cancels, {c['non2xx']} failed, "
            f"p99 {c['p99_ms']} ms); {s['complete']} of {s['streams']} streams saw exactly their committed changes; "
            f"{r['reads']['ok']:,} reads and {r['stream_churn']['ok']:,} streams opened and closed, "
            f"{r['reads']['failed'] + r['stream_churn']['failed']} failed; peak RSS {rss['middle_peak_kb'] / 1024:.1f} MB "
            f"in the middle third, {rss['last_peak_kb'] / 1024:.1f} MB in the last (limit "
            f"{rss['limit_kb'] / 1024:.1f} MB): {verdict}.")


def series_table(results: list) -> list:
    """One row per sample time; for each store its RSS, open fds and database connections."""
    head = "| t (s) |" + "".join(f" {STORE_NAMES[r['store']]}: RSS (MB) | fds | DB conns |" for r in results)
    lines = [head, "|---:|" + "---:|---:|---:|" * len(results)]
    for i in range(max(len(r["samples"]) for r in results)):
        row = []
        t = None
        for r in results:
            if i < len(r["samples"]):
                s = r["samples"][i]
                t = s["t"] if t is None else t
                row.append(f" {s['rss_kb'] / 1024:.1f} | {s['fds']} | {s['db_connections']} |")
            else:
                row.append(" | | |")
        lines.append(f"| {t:.0f} |" + "".join(row))
    return lines


def report(results: list, when: str, commit: str) -> str:
    lines = [f"Soak of {when}, commit `{commit}`, profile `{PROFILE}`, `/metrics` never requested.", ""]
    lines += [summary_line(r) for r in results]
    lines += ["", *series_table(results), "", "![resident memory during the soak](bench/soak.svg)"]
    return "\n".join(lines) + "\n"


def plot(results: list, path: Path, title: str) -> None:
    plots = []
    colours = {"postgres": "#1f77b4", "sqlite": "#d62728"}
    for r in results:
        dat = OUT / f"soak-{r['store']}.dat"
        dat.write_text("".join(f"{s['t']} {s['rss_kb'] / 1024:.2f} {s['fds']}\n" for s in r["samples"]))
        name = STORE_NAMES[r["store"]]
        plots.append(f'"{dat}" using 1:2 with linespoints pt 7 ps 0.5 lw 2 lc rgb "{colours[r["store"]]}" '
                     f'title "{name}: RSS (MB)"')
        plots.append(f'"{dat}" using 1:3 axes x1y2 with lines dt 2 lw 1 lc rgb "{colours[r["store"]]}" '
                     f'title "{name}: open fds (right)"')
    script = f"""set terminal svg size 760,360 dynamic enhanced font "sans,11" background rgb "white"
set output "{path}"
set title "{title}"
set xlabel "seconds"
set ylabel "resident memory (MB)"
set y2label "open file descriptors"
set yrange [0:*]
set y2range [0:*]
set ytics nomirror
set y2tics
set grid
set key bottom right
plot {", ".join(plots)}
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, help="soak length per store (default 300; smoke 30)")
    parser.add_argument("--sample-every", type=float, help="seconds between samples (default 15; smoke 5)")
    parser.add_argument("--store", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--smoke", action="store_true", help="short, for CI: the memory rule is reported, not enforced")
    parser.add_argument("--update-docs", action="store_true", help="rewrite BENCHMARKS.md's soak section and bench/soak.svg")
    parser.add_argument("--binary", type=Path, help="the service binary to soak instead of building one")
    parser.add_argument("--rate", type=float, help="cancels a second instead of half the measured capacity "
                        "(to compare two builds at one rate on a machine whose speed moves)")
    args = parser.parse_args()
    seconds = args.seconds or (30 if args.smoke else 300)
    sample_every = args.sample_every or (5 if args.smoke else 15)
    if seconds < 3 * sample_every:
        parser.error("--seconds must hold at least three samples (--sample-every)")

    for command, package in [("wrk", "wrk"), ("psql", "postgresql-client"), ("gnuplot", "gnuplot-nox"),
                             ("pgbench", pgbench_package())]:
        need(command, package)
    binaries = build(thin_peer=False) if not args.binary else None
    service_bin = args.binary.resolve() if args.binary else binaries.service
    stream_client_bin = binaries.stream_client if binaries else build_stream_client_only()
    OUT.mkdir(parents=True, exist_ok=True)
    stores = ["postgres", "sqlite"] if args.store == "both" else [args.store]
    results = []
    with tempfile.TemporaryDirectory(prefix="signal-scans-soak.") as work:
        for kind in stores:
            result = soak_store(kind, service_bin, stream_client_bin, seconds, sample_every,
                                2 if args.smoke else 5, Path(work), args.rate)
            if args.smoke and not result["rss"]["flat"]:
                note(f"({kind}) smoke: resident memory grew ({result['rss']}); a 30-s soak cannot tell a slope "
                     "from the start-up climb, so this is reported, not failed")
                result["failures"] = [f for f in result["failures"] if not f.startswith("resident memory")]
            (OUT / f"soak-{kind}.json").write_text(json.dumps(result, indent=1))
            results.append(result)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    if args.binary:
        commit = f"{commit} (service binary {args.binary})"
    section = report(results, when, commit)
    (OUT / "soak.md").write_text(section)
    plot(results, OUT / "soak.svg", f"Soak of {when}: cancels at half capacity, 50 streams, reads, no scrape")
    print(section)
    if args.update_docs:
        doc = ROOT / "BENCHMARKS.md"
        doc.write_text(replace_between(doc.read_text(), "<!-- soak:begin -->", "<!-- soak:end -->", section))
        (BENCH / "soak.svg").write_bytes((OUT / "soak.svg").read_bytes())
        log("updated BENCHMARKS.md and bench/soak.svg")
    failed = [r for r in results if r["failures"]]
    for r in failed:
        note(f"bench/soak.py: FAILED on {STORE_NAMES[r['store']]}: " + "; ".join(r["failures"]))
    return 1 if failed else 0


def build_stream_client_only() -> Path:
    from harness import target_dir
    subprocess.run(["cargo", "build", "--profile", PROFILE, "--locked", "--manifest-path",
                    str(BENCH / "stream-client" / "Cargo.toml"), "--target-dir", str(target_dir())], check=True)
    return target_dir() / PROFILE / "stream-client"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as error:
        print(f"bench/soak.py: FAILED: {error}", file=sys.stderr)
        sys.exit(1)
