#!/usr/bin/env python3
"""Tenant cost (issue 27): what change streams replaying one account group's history cost the
service beside a long history of another group, and what they do to that other group's reads.

    bench/tenant-cost.py [--store postgres|sqlite|both] [--binary PATH] [--streams 20] [--hold 8]

For each store, a fresh database: group B gets 150,000 cancelled scans (300,000 audit rows), then
group A 10 (20 rows). The service (PATH, a release build) serves it. Two windows of 8 s follow, in
each of which B reads one of its scans (`GET …/scans/{scanId}`) every 50 ms on a kept-alive
connection (a probe, light enough not to be the load itself):
  idle: nothing else: B's median latency, and the service's CPU for the probes alone;
  load: 20 streams of A opened at its start with `Last-Event-ID: 0-0` (a replay from the oldest
        cursor) and held to its end: the service's CPU over the window (utime + stime of its
        /proc/PID/stat) and B's median latency meanwhile.
Targets: CPU under 0.5 s in the load window, B's loaded median within 2 x its idle median. One
JSON line per store.
PostgreSQL is reached at BENCH_DATABASE_URL (an admin URL; default
postgres://postgres@127.0.0.1:5432/postgres) and gets a database of its own, dropped at the end.
"""
import argparse, http.client, json, os, socket, sqlite3, statistics, subprocess, tempfile
import threading, time, urllib.parse

B_SCANS, A_SCANS = 150_000, 10
GROUP_A, GROUP_B = "aaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbb"
TICKS = os.sysconf("SC_CLK_TCK")

# Cancelled scans of one group, each with its creation and its cancel, as a long history looks.
# {group_column} names the audit rows' group column when the build has one (a build before
# issue 27 has none).
PG_HISTORY = """
WITH made AS (
    INSERT INTO signal_scans (id, account_group_id, status, finished_at, cancelled_at)
    SELECT substr(md5(g::text || random()::text), 1, 24), '{group}', 'cancelled', now(), now()
    FROM generate_series(1, {scans}) g
    RETURNING id, account_group_id, created_at)
INSERT INTO signal_scan_events (scan_id{group_column}, from_status, to_status, occurred_at)
SELECT id{group_value}, m.f, m.t, created_at
FROM made, (VALUES (NULL, 'queued'), ('queued', 'cancelled')) AS m(f, t);
"""
SQLITE_HISTORY = """
WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < {scans})
INSERT INTO signal_scans (id, account_group_id, status, created_at, updated_at, finished_at,
                          cancelled_at)
SELECT lower(hex(randomblob(12))), '{group}', 'cancelled', '{at}', '{at}', '{at}', '{at}' FROM n;
INSERT INTO signal_scan_events (scan_id{group_column}, from_status, to_status, occurred_at)
SELECT id{group_value}, m.f, m.t, created_at FROM signal_scans,
    (SELECT NULL AS f, 'queued' AS t UNION ALL SELECT 'queued', 'cancelled') AS m
WHERE account_group_id = '{group}'
  AND NOT EXISTS (SELECT 1 FROM signal_scan_events e WHERE e.scan_id = signal_scans.id)
ORDER BY created_at, id;
"""


def run(binary, url, *args):
    return subprocess.run([binary, *args], env={**os.environ, "DATABASE_URL": url},
                          check=True, capture_output=True, text=True).stdout


def psql(url, sql):
    return subprocess.run(["psql", "-qAtX", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


def seed(store, url):
    """Migrates (by making the keys) and writes B's history, then A's."""
    keys = {g: json.loads(run(BINARY, url, "keys", "create", "--name", f"bench {g[:1]}",
                              "--permission", "signals:read", "--account-group", g, "--json"))["key"]
            for g in (GROUP_A, GROUP_B)}
    if store == "postgres":
        has_column = psql(url, "SELECT count(*) FROM information_schema.columns WHERE "
                               "table_name = 'signal_scan_events' AND column_name = 'account_group_id'")
        column = (", account_group_id", ", account_group_id") if has_column == "1" else ("", "")
        for group, scans in ((GROUP_B, B_SCANS), (GROUP_A, A_SCANS)):
            psql(url, PG_HISTORY.format(group=group, scans=scans, group_column=column[0],
                                        group_value=column[1]))
        psql(url, "ANALYZE")
        scan = psql(url, f"SELECT id FROM signal_scans WHERE account_group_id = '{GROUP_B}' LIMIT 1")
    else:
        db = sqlite3.connect(urllib.parse.urlparse(url).path)
        names = [row[1] for row in db.execute("PRAGMA table_info(signal_scan_events)")]
        column = (", account_group_id", ", account_group_id") if "account_group_id" in names else ("", "")
        at = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        for group, scans in ((GROUP_B, B_SCANS), (GROUP_A, A_SCANS)):
            db.executescript(SQLITE_HISTORY.format(group=group, scans=scans, at=at,
                                                   group_column=column[0], group_value=column[1]))
        db.execute("ANALYZE")
        scan = db.execute(f"SELECT id FROM signal_scans WHERE account_group_id = '{GROUP_B}'").fetchone()[0]
        db.commit()
        db.close()
    return keys, scan


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def get_latencies(port, key, path, until, every=0.05):
    """B's GET on one kept-alive connection, one every `every` s until `until`: each one's seconds."""
    connection, latencies = http.client.HTTPConnection("127.0.0.1", port), []
    while time.monotonic() < until:
        time.sleep(every)
        start = time.perf_counter()
        connection.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - start)
        assert response.status == 200, response.status
    connection.close()
    return latencies


def hold_stream(port, key, stop, received):
    """One stream of A from the oldest cursor, read until told to stop; counts its events."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall((f"GET /v1/accounts/{GROUP_A}/signals/scans/changes HTTP/1.1\r\n"
                   f"Host: bench\r\nAuthorization: Bearer {key}\r\nLast-Event-ID: 0-0\r\n\r\n").encode())
        s.settimeout(0.2)
        data = b""
        while not stop.is_set():
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                break
            data += chunk
        received.append(data.count(b"event: scan.status_changed"))


def measure(store, streams, hold):
    folder = tempfile.mkdtemp(prefix="tenant-cost-")
    admin = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    if store == "postgres":
        name = f"signal_scans_tenant_cost_{os.getpid()}"
        psql(admin, f"CREATE DATABASE {name}")
        url = urllib.parse.urlparse(admin)._replace(path=f"/{name}").geturl()
    else:
        url = f"sqlite://{folder}/bench.db"
    try:
        keys, scan = seed(store, url)
        port = free_port()
        server = subprocess.Popen([BINARY, "serve"], stderr=open(f"{folder}/server.log", "w"), env={
            **os.environ, "DATABASE_URL": url, "LISTEN_ADDR": f"127.0.0.1:{port}",
            "RATE_LIMIT_PER_SECOND": "1000000", "RATE_LIMIT_BURST": "1000000",
            "STREAM_MAX_PER_KEY": str(streams), "RUST_LOG": "warn"})
        try:
            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    time.sleep(0.1)
            path = f"/v1/accounts/{GROUP_B}/signals/scans/{scan}"
            get_latencies(port, keys[GROUP_B], path, until=time.monotonic() + 1)  # warm up
            idle_cpu_before, started = cpu_seconds(server.pid), time.monotonic()
            idle = get_latencies(port, keys[GROUP_B], path, until=started + hold)
            time.sleep(max(0.0, started + hold - time.monotonic()))
            idle_cpu = cpu_seconds(server.pid) - idle_cpu_before
            stop, received = threading.Event(), []
            cpu_before, started = cpu_seconds(server.pid), time.monotonic()
            threads = [threading.Thread(target=hold_stream, args=(port, keys[GROUP_A], stop, received))
                       for _ in range(streams)]
            for thread in threads:
                thread.start()
            loaded = get_latencies(port, keys[GROUP_B], path, until=started + hold)
            time.sleep(max(0.0, started + hold - time.monotonic()))
            cpu = cpu_seconds(server.pid) - cpu_before
            stop.set()
            for thread in threads:
                thread.join()
        finally:
            server.terminate()
            server.wait()
    finally:
        if store == "postgres":
            psql(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    idle_ms, loaded_ms = statistics.median(idle) * 1000, statistics.median(loaded) * 1000
    return {
        "store": store, "other_group_rows": 2 * B_SCANS, "streams": streams, "hold_s": hold,
        "events_per_stream": sorted(set(received)),
        "service_cpu_s": round(cpu, 3),
        "service_cpu_idle_window_s": round(idle_cpu, 3),
        "b_get_idle_median_ms": round(idle_ms, 3),
        "b_get_loaded_median_ms": round(loaded_ms, 3),
        "b_get_loaded_p90_ms": round(statistics.quantiles(loaded, n=10)[-1] * 1000, 3),
        "b_gets_loaded": len(loaded),
        "latency_ratio": round(loaded_ms / idle_ms, 2),
        "met": cpu < 0.5 and loaded_ms <= 2 * idle_ms,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--binary", default="target/release/signal-scans")
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--hold", type=float, default=8.0)
    options = parser.parse_args()
    BINARY = os.path.abspath(options.binary)
    for store in (["postgres", "sqlite"] if options.store == "both" else [options.store]):
        print(json.dumps(measure(store, options.streams, options.hold)), flush=True)
