"""What bench/run.py (the benchmark) and bench/soak.py (the soak) share: tools, builds, PostgreSQL and
SQLite, the servers, the load generator, and readings of /proc.

Python 3.11 standard library only. Every function that only computes (no process, no database) is
tested in bench/test_bench.py; the rest is exercised end to end by `bench/run.py --smoke` in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
# The cargo profile of every binary the benchmarks build (Cargo.toml: release plus fat LTO and one
# codegen unit), the one the Docker image ships. BENCH_PROFILE=release measures the quick start's build.
PROFILE = os.environ.get("BENCH_PROFILE", "production")
# The service's cancel statement, which run (a2) renders for pgbench (the thin peer runs its own copy from
# before group commit, bench/thin-peer/src/cancel.sql).
CANCEL_SQL = ROOT / "src" / "store" / "postgres_transition.sql"

STARTED = time.monotonic()


class Failed(Exception):
    """A step failed or a check did not hold; the message says which and why."""


def log(message: str) -> None:
    print(f"\n== [{time.monotonic() - STARTED:.0f}s] {message}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- numbers


def hex_id(n: int) -> str:
    """Scan number n's id: 24 lowercase hex digits, as the seeding SQL and bench/cancel.lua make it."""
    return f"{n:024x}"


def nearest_rank(sorted_values: list, q: float):
    """The q-th percentile (0 < q <= 100) by nearest rank; None for no values."""
    if not sorted_values:
        return None
    k = -(-len(sorted_values) * q // 100)  # ceil without floats drifting
    return sorted_values[max(1, int(k)) - 1]


def ratio(a, b, digits: int = 2):
    """a / b rounded, or None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


# ---------------------------------------------------------------- tools and builds


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    """A command that must succeed; its output captured as text."""
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise Failed(f"{' '.join(map(str, args))} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result


_apt_updated = False


def need(command: str, package: str) -> None:
    """Installs PACKAGE with apt-get when COMMAND is missing."""
    global _apt_updated
    if shutil.which(command) and (command != "pgbench" or subprocess.run(
            ["pgbench", "--version"], capture_output=True).returncode == 0):
        return
    if not shutil.which("apt-get"):
        raise Failed(f"{command} is missing, and there is no apt-get to install {package}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        run(sudo + ["apt-get", "update", "-qq"], env=env)
        _apt_updated = True
    log(f"installing {package}")
    run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], env=env)


def pgbench_package() -> str:
    # Debian 12: pgbench is shipped by the server package postgresql-<v> (not by postgresql-client-<v>);
    # /usr/bin/pgbench is postgresql-common's wrapper.
    versions = sorted(Path("/usr/lib/postgresql").glob("*"), key=lambda p: int(p.name) if p.name.isdigit() else 0)
    return f"postgresql-{versions[-1].name if versions else 15}"


def target_dir() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target if target.is_absolute() else ROOT / target


@dataclass
class Binaries:
    service: Path
    thin_peer: Path
    stream_client: Path
    build_seconds: dict = field(default_factory=dict)


def build(thin_peer: bool = True) -> Binaries:
    """The service, the thin peer and the stream client, in PROFILE. The two bench crates have their own
    package and lock file but build into the service's target directory, so the dependencies all
    three resolve alike (same versions, features and profile) are compiled once."""
    target = target_dir()
    seconds = {}
    crates = [("service", None), ("stream_client", BENCH / "stream-client")]
    if thin_peer:
        crates.insert(1, ("thin_peer", BENCH / "thin-peer"))
    for name, crate in crates:
        log(f"cargo build --profile {PROFILE} ({name.replace('_', ' ')})")
        args = ["cargo", "build", "--profile", PROFILE, "--locked"]
        if crate is None:
            args += ["--bin", "signal-scans"]
        else:
            args += ["--manifest-path", str(crate / "Cargo.toml"), "--target-dir", str(target)]
        start = time.monotonic()
        if subprocess.run(args, cwd=ROOT).returncode != 0:
            raise Failed(f"{' '.join(args)} failed")
        seconds[name] = round(time.monotonic() - start)
    built = Binaries(target / PROFILE / "signal-scans", target / PROFILE / "thin-peer",
                     target / PROFILE / "stream-client", seconds)
    for path in (built.service, built.stream_client) + ((built.thin_peer,) if thin_peer else ()):
        if not os.access(path, os.X_OK):
            raise Failed(f"no binary at {path} after the build")
    return built


# ---------------------------------------------------------------- PostgreSQL


class Postgres:
    """The server at PGHOST:PGPORT (default 127.0.0.1:5432, user postgres, trust auth), through psql."""

    def __init__(self, db: str):
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", db):
            raise Failed(f"the database name must be a plain lowercase identifier, got {db!r}")
        self.host = os.environ.setdefault("PGHOST", "127.0.0.1")
        self.port = os.environ.setdefault("PGPORT", "5432")
        self.user = os.environ.setdefault("PGUSER", "postgres")
        self.db = db
        self.url = f"postgres://{self.user}@{self.host}:{self.port}/{db}"
        self.created = False

    def sql(self, statement: str, db: str | None = None) -> str:
        """Runs SQL (one or more statements); returns the last result's rows, unaligned, tuples only."""
        result = run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-d", db or self.db],
                     input=statement)
        return result.stdout.strip()

    def value(self, statement: str) -> str:
        return self.sql(statement).splitlines()[-1]

    def admin(self, statement: str) -> str:
        return self.sql(statement, db="postgres")

    def ready(self) -> bool:
        return subprocess.run(["pg_isready", "-q", "-d", "postgres"]).returncode == 0

    def local_cluster(self) -> list | None:
        """The local cluster listening on PGPORT as [version, name] (for pg_ctlcluster), if there is one."""
        if self.host not in ("127.0.0.1", "localhost", "::1") and not self.host.startswith("/"):
            return None
        if not shutil.which("pg_lsclusters"):
            return None
        for line in run(["pg_lsclusters", "-h"]).stdout.splitlines():
            version, name, port, *_ = line.split()
            if port == self.port:
                return [version, name]
        return None

    def wait(self) -> None:
        for _ in range(60):
            if self.ready():
                return
            time.sleep(0.5)
        raise Failed(f"PostgreSQL does not answer at {self.host}:{self.port}")

    def start_if_down(self) -> None:
        if self.ready():
            return
        cluster = self.local_cluster()
        if cluster:
            note(f"PostgreSQL is down; starting cluster {' '.join(cluster)}")
            run(["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "start"])
        self.wait()

    def recreate(self) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")
        self.admin(f"CREATE DATABASE {self.db}")
        self.created = True

    def drop(self) -> None:
        if self.created and os.environ.get("BENCH_KEEP_DB") != "1":
            subprocess.run(["psql", "-X", "-q", "-d", "postgres", "-c",
                            f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)"], capture_output=True)

    def durable(self) -> tuple:
        """(synchronous_commit, fsync); fails when either leaves commits not durable: every 200
        measured here is a durable commit."""
        sync_commit, fsync = self.value("SHOW synchronous_commit"), self.value("SHOW fsync")
        if sync_commit == "off":
            raise Failed("synchronous_commit is off; the benchmarks measure durable commits only")
        if fsync != "on":
            raise Failed("fsync is off; the benchmarks measure durable commits only")
        return sync_commit, fsync

    def service_connections(self) -> int:
        """The service's sessions on the database (its pool, the publisher, the change hub's listener)."""
        return int(self.value("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                              "AND application_name LIKE 'signal-scans%'"))

    def settle(self) -> None:
        """Statistics fresh and nothing left to flush, so a run does not pay for the seeding."""
        self.sql("VACUUM ANALYZE signal_scans;\nVACUUM ANALYZE signal_scan_events;\nCHECKPOINT;")

    def truncate(self) -> None:
        self.sql("TRUNCATE signal_scan_events, signal_scans RESTART IDENTITY")


def in_range(first: int, count: int) -> str:
    return f"BETWEEN '{hex_id(first)}' AND '{hex_id(first + count - 1)}'"


def seed_sql_pg(group: str, first: int, count: int) -> str:
    """COUNT queued scans from id number FIRST, each with its creation audit row, the oldest first."""
    return f"""
INSERT INTO signal_scans (id, account_group_id, status, created_at, updated_at)
SELECT lpad(to_hex(n), 24, '0'), '{group}', 'queued',
       now() - make_interval(secs => {first} + {count} - n), now() - make_interval(secs => {first} + {count} - n)
FROM generate_series({first}::bigint, {first}::bigint + {count} - 1) AS n;
INSERT INTO signal_scan_events (scan_id, from_status, to_status, occurred_at)
SELECT id, NULL, 'queued', created_at FROM signal_scans WHERE id {in_range(first, count)} ORDER BY created_at;
"""


def seed_sql_sqlite(group: str, first: int, count: int) -> str:
    return f"""
WITH RECURSIVE seq(n) AS (SELECT {first} UNION ALL SELECT n + 1 FROM seq WHERE n < {first} + {count} - 1)
INSERT INTO signal_scans (id, account_group_id, status, created_at, updated_at)
SELECT printf('%024x', n), '{group}', 'queued',
       strftime('%Y-%m-%dT%H:%M:%S', 'now', '-' || ({first} + {count} - n) || ' seconds') || '.000000Z',
       strftime('%Y-%m-%dT%H:%M:%S', 'now', '-' || ({first} + {count} - n) || ' seconds') || '.000000Z'
FROM seq;
INSERT INTO signal_scan_events (scan_id, from_status, to_status, occurred_at)
SELECT id, NULL, 'queued', created_at FROM signal_scans WHERE id {in_range(first, count)} ORDER BY created_at;
"""


class Store:
    """One benchmark database, PostgreSQL or SQLite, seen the same way: seed, count, read the audit trail."""

    def __init__(self, kind: str, pg: Postgres | None = None, sqlite_file: Path | None = None):
        self.kind = kind
        self.pg = pg
        self.sqlite_file = sqlite_file
        self.url = pg.url if kind == "postgres" else f"sqlite://{sqlite_file}"

    def query(self, statement: str) -> list:
        """Rows of one SELECT, as lists of strings."""
        if self.kind == "postgres":
            out = self.pg.sql(statement)
            return [line.split("|") for line in out.splitlines()] if out else []
        with closing(sqlite3.connect(self.sqlite_file, timeout=10)) as db:
            return [[str(v) for v in row] for row in db.execute(statement)]

    def count(self, statement: str) -> int:
        return int(self.query(statement)[0][0])

    def seed(self, group: str, first: int, count: int, settle: bool = True) -> None:
        """COUNT queued scans from id number FIRST; checked to be all there. With SETTLE (PostgreSQL),
        statistics are made fresh and a checkpoint taken, so the run that follows does not pay for them."""
        if self.kind == "postgres":
            self.pg.sql(seed_sql_pg(group, first, count))
            if settle:
                self.pg.settle()
        else:
            with closing(sqlite3.connect(self.sqlite_file, timeout=10, isolation_level=None)) as db:
                db.executescript("BEGIN IMMEDIATE;" + seed_sql_sqlite(group, first, count) + "COMMIT;")
                db.execute("ANALYZE")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        queued = self.queued(first, count)
        if queued != count:
            raise Failed(f"seeding left {queued} queued scans in the range from {first}, expected {count}")

    def queued(self, first: int, count: int) -> int:
        return self.count(f"SELECT count(*) FROM signal_scans WHERE status = 'queued' AND id {in_range(first, count)}")

    def cancelled(self, first: int, count: int) -> int:
        return self.count(f"SELECT count(*) FROM signal_scans WHERE status = 'cancelled' AND id {in_range(first, count)}")

    def changes(self, first: int, count: int) -> int:
        """Audit rows of changes (not creations) of the range's scans."""
        return self.count("SELECT count(*) FROM signal_scan_events WHERE from_status IS NOT NULL "
                          f"AND scan_id {in_range(first, count)}")

    def changed_scans(self, first: int, count: int) -> list:
        """The scan id of every change of the range (one per audit row), sorted."""
        rows = self.query("SELECT scan_id FROM signal_scan_events WHERE from_status IS NOT NULL "
                          f"AND scan_id {in_range(first, count)} ORDER BY scan_id")
        return [row[0] for row in rows]


def create_key(binary: Path, database_url: str, name: str, *permission_args: str) -> str:
    """A new API key's secret, from `signal-scans keys create --json`."""
    out = run([binary, "keys", "create", "--name", name, *permission_args, "--json"],
              env=dict(os.environ, DATABASE_URL=database_url)).stdout
    found = re.search(r'"key"\s*:\s*"(ssk_[0-9a-f]+)"', out)
    if not found:
        raise Failed(f"keys create --json printed no key: {out[:200]}")
    return found.group(1)


def migrate(binary: Path, database_url: str) -> None:
    run([binary, "migrate"], env=dict(os.environ, DATABASE_URL=database_url))


# ---------------------------------------------------------------- processes and /proc

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list:
    """/proc/<pid>/stat after the command name (which may hold spaces): field 3 onwards."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, all its threads, in clock ticks."""
    fields = stat_fields(pid)
    return int(fields[11]) + int(fields[12])


def status_kb(pid: int, key: str) -> int:
    """A kB figure of /proc/<pid>/status: VmRSS (resident now) or VmHWM (the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise Failed(f"no {key} in /proc/{pid}/status")


def open_fds(pid: int) -> list:
    """What each of the process's open file descriptors points at."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass  # closed while we looked
    return out


def pg_ticks() -> int:
    """Every PostgreSQL process's utime + stime together: with machine_ticks, a run's CPU per request can be
    read in units of what the database spent on the same requests, which the machine's speed moves alike."""
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == "postgres":
                    total += cpu_ticks(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total


def cpu_line() -> tuple:
    """(busy, total) clock ticks of the whole machine from /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def machine_ticks() -> int:
    return cpu_line()[0]


def busy_pct() -> int:
    """How busy the machine is (%, all cores) over one second. Taken right before a measured run, when the
    benchmark itself is idle, it tells whether something else was competing for the cores."""
    b0, t0 = cpu_line()
    time.sleep(1)
    b1, t1 = cpu_line()
    return round(100 * (b1 - b0) / (t1 - t0)) if t1 > t0 else 0


def free_port() -> int:
    """A loopback port nobody listens on, below the kernel's range of ephemeral ports: a port in that range
    may be the local end of a client's connection (the 500 streams' own, say), which a server cannot bind."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except OSError:
        low = 32768
    for port in range(10000 + os.getpid() % 5000, low):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise Failed("no free loopback port")


def stop(process: subprocess.Popen | None, what: str = "process") -> int | None:
    """SIGTERM, then SIGKILL after 10 s; returns its exit code."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            note(f"{what} {process.pid} did not stop on SIGTERM; killing it")
            process.kill()
    return process.wait()


def http_status(url: str, timeout: float = 2) -> int | None:
    """The status code of a GET, or None when nothing answered."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


class Server:
    """The service (`signal-scans serve`) or the thin peer on a free loopback port, stopped gracefully."""

    def __init__(self, kind: str, binary: Path, database_url: str, log_file: Path, db_max_connections: int,
                 extra_env: dict | None = None):
        port = free_port()
        self.kind = kind
        self.base_url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, DATABASE_URL=database_url, LISTEN_ADDR=f"127.0.0.1:{port}",
                   DB_MAX_CONNECTIONS=str(db_max_connections))
        if kind == "service":
            env.update(RATE_LIMIT_PER_SECOND="1000000", RATE_LIMIT_BURST="1000000", STREAM_MAX_PER_KEY="10000",
                       LOG_FORMAT="json", RUST_LOG="warn")
            args, probe, ready_status = [binary, "serve"], "/readyz", 200
        else:
            # It connects its pool before it listens; any answer (404 here) means ready.
            args, probe, ready_status = [binary], "/", 404
        env.update(extra_env or {})
        self.log_file = log_file
        with open(log_file, "w") as out:
            self.process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        for _ in range(100):
            if self.process.poll() is not None:
                raise Failed(f"the {kind} exited at start: {log_file.read_text()[-2000:]}")
            if http_status(self.base_url + probe, timeout=1) == ready_status:
                return
            time.sleep(0.1)
        raise Failed(f"the {kind} did not become ready on {self.base_url} (log: {log_file})")

    def stop(self) -> None:
        """Gracefully: requests in flight finish, and what the service still has to publish goes out."""
        stop(self.process, self.kind)


# ---------------------------------------------------------------- wrk


def parse_kv(text: str) -> dict:
    """bench/cancel.lua's output: "key value" lines and "p <percentile> <microseconds>" lines."""
    out = {"p": {}}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "p":
            out["p"][float(parts[1])] = int(parts[2])
        elif len(parts) == 2:
            key, value = parts
            out[key] = float(value) if "." in value else int(value)
    return out


@dataclass
class WrkRun:
    requests: int
    duration_us: int
    non2xx: int
    socket_errors: int
    beyond_range: int
    latency_max_us: int
    percentiles_us: dict

    @property
    def ok(self) -> int:
        return self.requests - self.non2xx

    @property
    def rate(self) -> float:
        return round(self.requests / (self.duration_us / 1e6), 1) if self.duration_us else 0.0

    def ms(self, p: float) -> float:
        return round(self.percentiles_us[p] / 1000, 2)


def run_wrk(base_url: str, key: str, group: str, first: int, count: int, seconds: float, out: Path,
            threads: int, connections: int, rate: float | None = None) -> WrkRun:
    """wrk with bench/cancel.lua: every request cancels the next fresh scan of [first, first + count).
    With RATE, requests are paced to about that many a second (a closed loop: never more)."""
    env = dict(os.environ, BENCH_GROUP=group, BENCH_KEY=key, BENCH_ID_FIRST=str(first), BENCH_ID_COUNT=str(count),
               BENCH_THREADS=str(threads), BENCH_LATENCY_OUT=str(out))
    if rate:
        env["BENCH_RATE"] = str(rate)
    result = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency",
                             "-s", BENCH / "cancel.lua", base_url], env=env, capture_output=True, text=True)
    Path(f"{out}.wrk").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise Failed(f"wrk failed: {result.stdout}{result.stderr}")
    if not out.exists() or out.stat().st_size == 0:
        raise Failed(f"wrk wrote no latency file ({out})")
    kv = parse_kv(out.read_text())
    return WrkRun(kv["requests"], kv["duration_us"], kv["non2xx"],
                  kv["errors_connect"] + kv["errors_read"] + kv["errors_write"] + kv["errors_timeout"],
                  kv["beyond_range"], kv["latency_max_us"], kv["p"])


def write_latency_dat(percentiles_us: dict, path: Path) -> None:
    """Percentile and milliseconds per line, for gnuplot."""
    path.write_text("".join(f"{p:g} {us / 1000:.3f}\n" for p, us in sorted(percentiles_us.items())))


# ---------------------------------------------------------------- the stream client


class StreamClient:
    """bench/stream-client holding change streams open; `follows` are its FOLLOW:COUNT arguments."""

    def __init__(self, binary: Path, base_url: str, key: str, seen_file: Path, log_file: Path, follows: list):
        self.seen_file = seen_file
        ready = seen_file.with_suffix(".ready")
        self.process = subprocess.Popen([binary, base_url, key, seen_file, *follows],
                                        stdout=open(ready, "w"), stderr=open(log_file, "w"))
        for _ in range(300):
            if "ready" in ready.read_text():
                return
            if self.process.poll() is not None:
                raise Failed(f"the stream client exited at start: {log_file.read_text()[-2000:]}")
            time.sleep(0.1)
        raise Failed(f"the change streams did not all open within 30 s (log: {log_file})")

    def finish(self, drain_seconds: float = 2) -> list:
        """Gives the streams time to receive the last changes, stops the client and returns what each stream
        saw: (label, events, distinct, foreign, sorted scan ids)."""
        time.sleep(drain_seconds)
        self.process.send_signal(signal.SIGTERM)
        if self.process.wait() != 0:
            raise Failed("the stream client failed")
        seen = []
        for line in self.seen_file.read_text().splitlines():
            label, events, distinct, foreign, *scans = line.split()
            seen.append((label, int(events), int(distinct), int(foreign), scans))
        return seen


def stream_verdict(seen: list, expected_for) -> dict:
    """How many streams saw exactly the changes they should (each once). `expected_for(label)` gives the
    sorted scan ids a stream of that label should have received."""
    complete = duplicates = foreign = missing_max = extra = 0
    for label, events, distinct, foreign_n, scans in seen:
        should = expected_for(label)
        duplicates += events - distinct
        foreign += foreign_n
        missing_max = max(missing_max, len(set(should) - set(scans)))
        extra += len(set(scans) - set(should))
        complete += scans == should
    return {"streams": len(seen), "complete": complete, "missing_max": missing_max, "duplicates": duplicates,
            "foreign": foreign, "extra": extra}


# ---------------------------------------------------------------- BENCHMARKS.md


def replace_between(text: str, begin: str, end: str, section: str) -> str:
    """TEXT with what lies between the marker lines BEGIN and END replaced by SECTION."""
    lines = text.split("\n")
    try:
        b, e = lines.index(begin), lines.index(end)
    except ValueError:
        raise Failed(f"BENCHMARKS.md has no {begin} / {end} markers") from None
    if e < b:
        raise Failed(f"{end} comes before {begin} in BENCHMARKS.md")
    return "\n".join(lines[:b + 1] + ["", section.strip("\n"), ""] + lines[e:])


def stamp_lines(source, out) -> None:
    """Copies SOURCE (a binary file) to OUT, each line prefixed with the wall-clock microseconds at which
    it was read and a tab. Raw reads: each returns as soon as the writer has written something."""
    fd, pending = source.fileno(), b""
    while chunk := os.read(fd, 65536):
        now = time.time_ns() // 1000
        *lines, pending = (pending + chunk).split(b"\n")
        out.write(b"".join(b"%d\t%s\n" % (now, line) for line in lines))
        out.flush()
    if pending:
        out.write(b"%d\t%s\n" % (time.time_ns() // 1000, pending))
    out.flush()


if __name__ == "__main__":
    # `harness.py stamp`: stdin to stdout, stamped (bench/profile.sh's watch reader).
    if sys.argv[1:] != ["stamp"]:
        sys.exit("usage: harness.py stamp  (stdin -> stdout, each line stamped with the microseconds it was read)")
    stamp_lines(sys.stdin.buffer, sys.stdout.buffer)
