"""The scale profile of compose.yaml as a client and an operator meet it, run without Docker by
scripts/deploy-test.sh (which sets BIN, COMPOSE and NGINX).

Each service of the image runs as `docker compose --profile scale config` gives it: its command, and
its environment with only what Docker alone provides replaced (the host names postgres and redis by
this machine's servers, a database and a Redis key prefix of this run's own, the port 8080 of each
container by a free port, the bootstrap volume by a folder). Every variable it is given must be one
the binary reads: a misspelt one would be ignored without a word. In front of the two api-replica,
deploy/nginx.conf runs in a real nginx, with Docker's DNS (`resolver`, `resolve`, api-replica)
replaced by the replicas' addresses and one that refuses connections. Then the checks: the one-shot
services do what README says, every server starts healthy by the image's health check, the service's
answers pass nginx as they are, nginx's own answers are the service's envelope with a trace id,
/metrics is refused however it is spelled, a replica that refuses connections is skipped, the change
stream is not held in a buffer, a key's rate is one across both replicas, failed authentications
count by the real client whatever X-Forwarded-For says, and with no replica left nginx answers 502
in the envelope.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import uuid

BIN = os.environ["BIN"]
COMPOSE = os.environ["COMPOSE"]
NGINX = os.environ["NGINX_BIN"]  # nginx itself reads NGINX (sockets it inherits)
POSTGRES = os.environ.get("DEPLOY_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432")
REDIS = os.environ.get("DEPLOY_TEST_REDIS", "redis://127.0.0.1:6379")
# compose.yaml requires it; the database URL it goes into is replaced.
PASSWORD_STAND_IN = "deploy-test-placeholder"
IMAGE = "signal-scans:local"
RUN = uuid.uuid4().hex[:12]
DATABASE = f"deploy_test_{RUN}"
WORK = tempfile.mkdtemp(prefix="deploy-test-")
LOGS = os.path.join(WORK, "nginx", "logs")

# Filled by setUpModule.
SERVICES = {}
REPLICAS = []  # (address, process) of each api-replica
FACTS = {}
LB = None
KEY = GROUP = QUEUED_SCAN = COMPLETED_SCAN = None
BACKGROUND = []  # every process started, stopped at the end


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def variables_the_binary_reads():
    """Every environment variable src/ names: clap's `env = "…"` and `env::var("…")`."""
    names = set()
    for folder, _, files in os.walk("src"):
        for name in files:
            if name.endswith(".rs"):
                with open(os.path.join(folder, name)) as source:
                    text = source.read()
                names |= set(re.findall(r'\benv = "([A-Z0-9_]+)"', text))
                names |= set(re.findall(r'env::var(?:_os)?\("([A-Z0-9_]+)"\)', text))
    return names


def compose_services():
    """`docker compose --profile scale config` with compose.yaml's own defaults: no variable of this
    shell that the file reads (a RUST_LOG, an API_PORT) is passed to it."""
    with open("compose.yaml") as file:
        read = set(re.findall(r"\$\{([A-Z0-9_]+)", file.read()))
    environment = {name: value for name, value in os.environ.items() if name not in read}
    environment["POSTGRES_PASSWORD"] = PASSWORD_STAND_IN
    output = subprocess.run(
        [COMPOSE, "-f", "compose.yaml", "--profile", "scale", "config", "--format", "json"],
        env=environment, check=True, capture_output=True, text=True,
    ).stdout
    services = json.loads(output)["services"]
    return {name: service for name, service in services.items() if service.get("image") == IMAGE}


def environment_of(name, port=None):
    """The service's environment as compose gives it, with what only Docker has replaced."""
    given = SERVICES[name].get("environment") or {}
    assert None not in given.values(), f"{name} is given a variable without a value: {given}"
    given = {key: str(value) for key, value in given.items()}
    unknown = sorted(set(given) - variables_the_binary_reads())
    assert not unknown, f"compose.yaml gives {name} variables the binary never reads: {unknown}"
    replaced = {
        "DATABASE_URL": (f"postgres://signal_scans:{PASSWORD_STAND_IN}@postgres:5432/signal_scans", f"{POSTGRES}/{DATABASE}"),
        "REDIS_URL": ("redis://redis:6379", REDIS),
        "LISTEN_ADDR": ("0.0.0.0:8080", f"127.0.0.1:{port}"),
    }
    for key, (expected, local) in replaced.items():
        if key in given:
            assert given[key] == expected, f"{name}'s {key} is {given[key]!r}, not {expected!r}: update scripts/deploy_test.py"
            given[key] = local
    if "REDIS_URL" in given:
        given["REDIS_KEY_PREFIX"] = f"deploy-test-{RUN}:"  # this run's own keys in a shared Redis
    return {"PATH": os.environ["PATH"], **given}


def run_once(name, command=None):
    """A one-shot service (or another command of the image with its environment): its exit code,
    standard output and standard error."""
    result = subprocess.run([BIN, *(command or SERVICES[name]["command"])], env=environment_of(name),
                            capture_output=True, text=True, timeout=120)
    return result.returncode, result.stdout, result.stderr


def health_check():
    """The image's HEALTHCHECK command, after its ENTRYPOINT (the binary)."""
    with open("Dockerfile") as file:
        text = file.read().replace("\\\n", " ")
    command = json.loads(re.search(r"^HEALTHCHECK\b.*?\bCMD\s+(\[.*\])\s*$", text, re.M).group(1))
    entrypoint = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M).group(1))
    assert command[0] == entrypoint[0], f"HEALTHCHECK runs {command[0]}, not the image's binary"
    return command[1:]


def start_server(name):
    """A server of compose.yaml on a free port, once the image's health check passes."""
    port = free_port()
    environment = environment_of(name, port)
    log = os.path.join(WORK, f"{name}-{port}.log")
    with open(log, "w") as output:
        process = subprocess.Popen([BIN, *SERVICES[name]["command"]], env=environment, stdout=output, stderr=output)
    BACKGROUND.append(process)
    deadline = time.monotonic() + 60
    check = health_check()
    while subprocess.run([BIN, *check], env=environment, capture_output=True).returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            with open(log) as lines:
                raise AssertionError(f"{name} did not become healthy:\n{lines.read()}")
        time.sleep(0.2)
    return f"127.0.0.1:{port}", process


def stop(process):
    """SIGTERM, as `docker compose stop` sends: its exit code."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


def start_nginx(replicas):
    folder = os.path.join(WORK, "nginx")
    os.makedirs(LOGS)
    refusing = f"127.0.0.1:{free_port()}"  # bound and closed again: nothing listens there
    port = free_port()
    with open("deploy/nginx.conf") as file:
        text = file.read()
    servers = "\n        ".join(f"server {address} max_fails=3 fail_timeout=10s;" for address in [refusing, *replicas])
    temp_paths = "".join(f"    {kind}_temp_path {folder}/{kind};\n" for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    for old, new in [
        ("user nginx;", f"user {user};\npid {folder}/nginx.pid;"),
        ("error_log /dev/stderr warn;", f"error_log {LOGS}/error.log warn;"),
        ("    resolver 127.0.0.11 valid=10s ipv6=off;\n", ""),
        ("access_log /dev/stdout json;", f"access_log {LOGS}/access.log json;"),
        ("server api-replica:8080 resolve max_fails=3 fail_timeout=10s;", servers),
        ("listen 80;", f"listen 127.0.0.1:{port};"),
        # Debian's nginx keeps its buffers' files under /var/lib/nginx, which only root may write.
        ("http {", "http {\n" + temp_paths),
    ]:
        assert text.count(old) == 1, f"deploy/nginx.conf no longer holds {old!r} once: update scripts/deploy_test.py"
        text = text.replace(old, new)
    with open(os.path.join(folder, "nginx.conf"), "w") as file:
        file.write(text)
    subprocess.run([NGINX, "-t", "-q", "-p", folder, "-c", f"{folder}/nginx.conf"], check=True)
    BACKGROUND.append(subprocess.Popen([NGINX, "-p", folder, "-c", f"{folder}/nginx.conf", "-g", "daemon off;"]))
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return ("127.0.0.1", port), refusing
        except OSError:
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.1)


def psql(statement):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", f"{POSTGRES}/postgres", "-c", statement], check=True)


def setUpModule():
    global LB, KEY, GROUP, QUEUED_SCAN, COMPLETED_SCAN
    SERVICES.update(compose_services())
    assert set(SERVICES) == {"migrate", "bootstrap", "api", "api-replica"}, f"the image's services are {sorted(SERVICES)}"
    psql(f"CREATE DATABASE {DATABASE}")

    FACTS["migrate"] = run_once("migrate")
    volume = [v["target"] for v in SERVICES["bootstrap"]["volumes"]]
    assert volume == ["/bootstrap"], volume
    command = [os.path.join(WORK, arg[1:]) if arg.startswith("/bootstrap/") else arg for arg in SERVICES["bootstrap"]["command"]]
    os.makedirs(os.path.join(WORK, "bootstrap"))
    FACTS["bootstrap"] = run_once("bootstrap", command)
    key_file = os.path.join(WORK, "bootstrap", "api-key")
    FACTS["key file mode"] = oct(os.stat(key_file).st_mode & 0o777)
    with open(key_file) as file:
        KEY = file.read().strip()
    FACTS["bootstrap again"] = run_once("bootstrap", command)
    FACTS["keys"] = run_once("bootstrap", ["keys", "list"])[1]

    GROUP = uuid.uuid4().hex[:24]
    made = {}
    for status in ["queued", "completed"]:
        code, output, errors = run_once("migrate", ["scans", "create", "--account-group", GROUP, "--status", status, "--json"])
        assert code == 0, errors
        made[status] = json.loads(output)["scanId"]
    QUEUED_SCAN, COMPLETED_SCAN = made["queued"], made["completed"]

    api, process = start_server("api")
    FACTS["api"] = fetch(api, f"{scans()}/{COMPLETED_SCAN}")[0], stop(process)
    replicas = int(SERVICES["api-replica"].get("deploy", {}).get("replicas", 1))
    REPLICAS.extend(start_server("api-replica") for _ in range(replicas))
    LB, FACTS["refusing"] = start_nginx([address for address, _ in REPLICAS])


def tearDownModule():
    for process in reversed(BACKGROUND):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    shutil.rmtree(WORK, ignore_errors=True)


def scans():
    return f"/v1/accounts/{GROUP}/signals/scans"


def auth():
    return {"Authorization": f"Bearer {KEY}"}


def fetch(address, target):
    """A GET with the key straight to a server, not through nginx: its status and body."""
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", target, headers=auth())
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def request(method, target, body=None, headers=None):
    """One request through nginx on a new connection: (status, headers, parsed JSON body or raw bytes)."""
    connection = http.client.HTTPConnection(*LB, timeout=10)
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return response.status, response.headers, parsed
    finally:
        connection.close()


def raw_request(data):
    """Bytes sent as they are (a request http.client would not write): the status and the JSON body."""
    with socket.create_connection(LB, timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def log_line_of(trace_id, status=None):
    """nginx's access log line (deploy/nginx.conf's JSON) of the last request whose answer carried
    this id (and this status)."""
    for _ in range(50):  # nginx writes the line once the answer is sent: give it a moment
        with open(os.path.join(LOGS, "access.log")) as lines:
            matching = [line for line in map(json.loads, lines)
                        if trace_id in (line["trace_id"], line["request_id"]) and status in (None, line["status"])]
        if matching:
            return matching[-1]
        time.sleep(0.1)
    raise AssertionError(f"no access log line carries {trace_id}")


def rate_limit():
    """The replicas' per-key burst and rate a second, as compose gives them."""
    environment = environment_of("api-replica", 0)
    return int(environment["RATE_LIMIT_BURST"]), int(environment["RATE_LIMIT_PER_SECOND"])


def replica_of(line):
    """The replica that answered: the last address nginx tried."""
    return line["upstream"].split(", ")[-1]


class ScaleProfile(unittest.TestCase):
    def assert_envelope(self, status, headers, body, expected_status, code):
        self.assertEqual(status, expected_status, body)
        self.assertIsInstance(body, dict, f"not JSON: {body!r}")
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(set(body), {"success", "data", "error", "traceId"})
        self.assertIs(body["success"], False)
        self.assertIsNone(body["data"])
        self.assertEqual(body["error"]["code"], code)
        self.assertTrue(body["error"]["message"] and body["error"]["details"], body)
        self.assertTrue(body["traceId"])
        self.assertEqual(headers["X-Request-Id"], body["traceId"])

    def assert_from_nginx(self, status, headers, body, expected_status, code):
        """An answer nginx gave itself: the envelope, with its trace id in nginx's log line, returned."""
        self.assert_envelope(status, headers, body, expected_status, code)
        self.assertEqual(headers["X-Content-Type-Options"], "nosniff")
        self.assertEqual(headers["Cache-Control"], "no-store")
        line = log_line_of(body["traceId"], expected_status)
        self.assertEqual(line["trace_id"], body["traceId"])
        return line

    def assert_refused_by_nginx(self, answer, expected_status, code):
        """An answer nginx gave itself without asking any replica: its log line, returned."""
        line = self.assert_from_nginx(*answer, expected_status, code)
        self.assertIn(line["upstream"], ("", "-"))
        return line

    def test_0_the_one_shot_services_and_the_api_do_what_readme_says(self):
        self.assertEqual(FACTS["migrate"][0], 0, FACTS["migrate"][2])
        self.assertEqual(FACTS["bootstrap"][0], 0, FACTS["bootstrap"][2])
        self.assertEqual(FACTS["key file mode"], "0o600")
        self.assertRegex(KEY, r"^ssk_[0-9a-f]{64}$")
        self.assertNotIn(KEY, FACTS["bootstrap"][1] + FACTS["bootstrap"][2], "the secret went to the log")
        self.assertEqual(FACTS["bootstrap again"][0], 0, FACTS["bootstrap again"][2])
        self.assertIn("none created", FACTS["bootstrap again"][1] + FACTS["bootstrap again"][2])
        self.assertEqual(FACTS["keys"].count("bootstrap"), 1, FACTS["keys"])
        self.assertEqual(FACTS["api"], (200, 0), "api answered and stopped cleanly")

    def test_1_the_services_answer_passes_and_carries_nginxs_id(self):
        status, _, body = request("GET", f"{scans()}/{COMPLETED_SCAN}", headers=auth())
        self.assertEqual((status, body["data"]["status"]), (200, "completed"), body)
        line = log_line_of(body["traceId"])
        # The client sent no id: the service took nginx's, so one id finds both lines.
        self.assertEqual((line["trace_id"], line["request_id"]), (body["traceId"], body["traceId"]))
        self.assertIn(replica_of(line), [address for address, _ in REPLICAS])
        # A client's own id goes on as it is.
        status, _, body = request("GET", f"{scans()}/{COMPLETED_SCAN}", headers={**auth(), "X-Request-Id": "client-chosen-7"})
        self.assertEqual((status, body["traceId"]), (200, "client-chosen-7"))
        self.assertEqual(log_line_of("client-chosen-7")["trace_id"], "client-chosen-7")

    def test_2_the_services_own_refusals_pass_as_they_are(self):
        status, headers, body = request("POST", f"{scans()}/{COMPLETED_SCAN}/cancel", headers=auth())
        self.assert_envelope(status, headers, body, 422, "VALIDATION_ERROR")
        # Over the service's limit of 2,048 bytes and within nginx's 16k: the service says so.
        status, headers, body = request("GET", f"{scans()}/{COMPLETED_SCAN}?{'a' * 3000}", headers=auth())
        self.assert_envelope(status, headers, body, 400, "VALIDATION_ERROR")
        self.assertIn("the limit is 2048", body["error"]["details"])
        self.assertIn(replica_of(log_line_of(body["traceId"])), [address for address, _ in REPLICAS])
        # 97 header fields (http.client adds Host and Accept-Encoding), and nginx's three make the
        # HTTP layer's 100; one more is its bare 431, as README says.
        def fields(count):
            return {**auth(), **{f"X-Field-{n}": "v" for n in range(count - 3)}}

        self.assertEqual(request("GET", f"{scans()}/{COMPLETED_SCAN}", headers=fields(97))[0], 200)
        self.assertEqual(request("GET", f"{scans()}/{COMPLETED_SCAN}", headers=fields(98))[0], 431)

    def test_3_metrics_is_refused_however_it_is_spelled(self):
        for target in ["/metrics", "/metrics/", "/metrics/anything", "/metrics?format=text", "/%6Detrics", "//metrics"]:
            with self.subTest(target=target):
                self.assert_refused_by_nginx(request("GET", target), 403, "FORBIDDEN")

    def test_4_what_nginx_refuses_is_refused_in_the_envelope(self):
        cancel = f"{scans()}/{QUEUED_SCAN}/cancel"
        padding = {f"X-Padding-{n}": "a" * 9000 for n in range(8)}
        over_headers = "the headers are over 16384 bytes in a line or 65536 in all; the limit for all headers is 16384"
        for method, target, body, headers, details in [
            ("POST", cancel, b"{" + b" " * 65536 + b"}", {}, "request body is over the limit of 65536 bytes"),
            ("GET", f"{scans()}?{'a' * 20000}", None, {}, "the request line is over 16384 bytes; the limit for the request target is 2048"),
            ("GET", scans(), None, {"X-Padding": "a" * 20000}, over_headers),
            ("GET", scans(), None, padding, over_headers),
            ("POST", cancel, b"{}", {"Transfer-Encoding": "gzip"}, "Transfer-Encoding must be chunked"),
        ]:
            with self.subTest(details=details, method=method):
                answer = request(method, target, body=body, headers={**auth(), **headers})
                line = self.assert_refused_by_nginx(answer, 400, "VALIDATION_ERROR")
                self.assertEqual(answer[2]["error"]["details"], details)
                # The method sent (an answer through error_page is an internal redirect as a GET).
                self.assertEqual(line["method"], method)
        for data, status, code in [
            (b"GARBAGE\r\n\r\n", 400, "VALIDATION_ERROR"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", 400, "VALIDATION_ERROR"),
            (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400, "VALIDATION_ERROR"),
            (f"TRACE {scans()} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 405, "METHOD_NOT_ALLOWED"),
        ]:
            with self.subTest(data=data):
                answer_status, body = raw_request(data)
                self.assertEqual((answer_status, body["error"]["code"]), (status, code), body)
                self.assertEqual(log_line_of(body["traceId"])["status"], status)
        # nginx's own pages are for nginx alone.
        self.assert_refused_by_nginx(request("GET", "/_lb_errors/502"), 404, "NOT_FOUND")
        # None of it reached the scan.
        status, _, body = request("GET", f"{scans()}/{QUEUED_SCAN}", headers=auth())
        self.assertEqual((status, body["data"]["status"]), (200, "queued"))

    def test_5_a_replica_that_refuses_connections_is_skipped_and_the_stream_flows(self):
        stream = http.client.HTTPConnection(*LB, timeout=10)
        stream.request("GET", f"{scans()}/changes?scanId={QUEUED_SCAN}", headers=auth())
        response = stream.getresponse()
        self.assertEqual((response.status, response.headers["Content-Type"]), (200, "text/event-stream"))
        # Every request reaches a live replica, a cancel too, whichever nginx tried first.
        for _ in range(4):
            status, _, body = request("GET", f"{scans()}/{COMPLETED_SCAN}", headers=auth())
            self.assertEqual(status, 200, body)
        status, _, body = request("POST", f"{scans()}/{QUEUED_SCAN}/cancel", headers=auth())
        self.assertEqual((status, body["data"]["status"]), (200, "cancelled"), body)
        with open(os.path.join(LOGS, "error.log")) as errors:
            self.assertTrue(any(FACTS["refusing"] in line and "refused" in line for line in errors),
                            "no request tried the refusing replica")
        # The cancel's event comes through as it happens: nginx holds nothing back in a buffer.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            line = response.fp.readline().decode()
            if line.startswith("data:") and QUEUED_SCAN in line:
                self.assertEqual(json.loads(line[len("data:"):])["to"], "cancelled")
                break
        else:
            self.fail("the cancel's event did not come through nginx within 5 s")
        stream.close()

    def test_6_a_keys_rate_is_one_across_both_replicas(self):
        burst, per_second = rate_limit()
        time.sleep(burst / per_second + 0.5)  # the key's allowance whole again
        started = time.monotonic()
        answers = [request("GET", f"{scans()}/{COMPLETED_SCAN}", headers=auth()) for _ in range(2 * burst)]
        elapsed = time.monotonic() - started
        statuses = [status for status, _, _ in answers]
        self.assertEqual(statuses.count(200) + statuses.count(429), len(statuses), statuses)
        # Each replica counting alone would let up to twice the burst through.
        self.assertLessEqual(statuses.count(200), burst + per_second * elapsed + 1, f"{statuses} in {elapsed:.2f} s")
        self.assertGreater(statuses.count(429), 0)
        served_by = {replica_of(log_line_of(body["traceId"])) for _, _, body in answers}
        self.assertEqual(served_by, {address for address, _ in REPLICAS})

    def test_7_nginx_and_the_service_take_one_trace_id_by_one_rule(self):
        burst, per_second = rate_limit()
        time.sleep(burst / per_second + 0.5)  # test_6 spent the key's allowance
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        valid = f"00-{trace}-00f067aa0ba902b7-01"
        for headers, expected in [
            ({"traceparent": valid}, trace),
            ({"X-Request-Id": "client-chosen.7:a_b"}, "client-chosen.7:a_b"),
            ({"traceparent": valid, "X-Request-Id": "second"}, trace),
            ({"traceparent": f"{valid}-more", "X-Request-Id": "kept"}, "kept"),  # version 00 has four fields
            ({"traceparent": f"01-{trace}-00f067aa0ba902b7-01-more"}, trace),  # a later version may have more
            ({"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01", "X-Request-Id": "kept"}, "kept"),
            ({"traceparent": f"ff-{trace}-00f067aa0ba902b7-01", "X-Request-Id": "kept"}, "kept"),
            ({"traceparent": valid.upper(), "X-Request-Id": "kept"}, "kept"),
            ({"X-Request-Id": "not safe"}, None),
            ({"X-Request-Id": "a" * 65}, None),
        ]:
            with self.subTest(headers=headers):
                status, _, served = request("GET", f"{scans()}/{COMPLETED_SCAN}", headers={**auth(), **headers})
                self.assertEqual(status, 200, served)
                refused = request("GET", "/metrics", headers=headers)
                line = self.assert_refused_by_nginx(refused, 403, "FORBIDDEN")
                if expected is None:
                    # An unsafe id is replaced by nginx's own on the way, which the service takes.
                    self.assertEqual(log_line_of(served["traceId"], 200)["request_id"], served["traceId"])
                    self.assertEqual(line["request_id"], refused[2]["traceId"])
                else:
                    self.assertEqual((served["traceId"], refused[2]["traceId"]), (expected, expected))

    def test_8_failed_authentications_count_by_the_real_client(self):
        # X-Forwarded-For as a client writes it: nginx appends the address it sees, which the
        # replicas (TRUSTED_PROXY_HOPS=1) take as the client.
        statuses = []
        for n in range(25):
            status, _, body = request("GET", scans(), headers={"Authorization": f"Bearer ssk_{n:064x}", "X-Forwarded-For": f"203.0.113.{n}"})
            statuses.append((status, body["error"]["code"]))
        # The minute's 20 (AUTH_FAILURES_PER_MINUTE; no test before sent a failure), then every one
        # refused, whatever address each claimed.
        self.assertEqual(statuses, [(401, "UNAUTHORIZED")] * 20 + [(429, "RATE_LIMITED")] * 5)

    def test_9_no_replica_answering_is_a_502_in_the_envelope(self):
        for _, process in REPLICAS:
            if process.poll() is None:
                self.assertEqual(stop(process), 0)
        for method, target in [("GET", f"{scans()}/{COMPLETED_SCAN}"), ("POST", f"{scans()}/{QUEUED_SCAN}/cancel")]:
            with self.subTest(method=method):
                status, headers, body = request(method, target, headers=auth())
                line = self.assert_from_nginx(status, headers, body, 502, "UPSTREAM_ERROR")
                self.assertIn("may have been carried out", body["error"]["details"])
                self.assertEqual(line["method"], method)


if __name__ == "__main__":
    unittest.main(verbosity=2)
