"""What a client of `docker compose --profile scale` gets through nginx (deploy/nginx.conf), run by
scripts/nginx-test.sh against the real service with demo data: the service's answers as it gives
them, nginx's own answers (a request it refuses, no replica answering) in the service's envelope
with a trace id, /metrics refused however it is spelled, a replica that refuses connections
skipped, and the change stream delivered as it happens. The last test stops the service.
"""

import http.client
import json
import os
import signal
import socket
import time
import unittest
import urllib.parse

LB = urllib.parse.urlsplit(os.environ["LB_URL"])
LOGS = os.environ["NGINX_LOGS"]
KEY = os.environ["DEMO_KEY"]
GROUP = os.environ["DEMO_GROUP"]
QUEUED_SCAN = os.environ["DEMO_QUEUED_SCAN"]
COMPLETED_SCAN = os.environ["DEMO_COMPLETED_SCAN"]
SCANS = f"/v1/accounts/{GROUP}/signals/scans"
AUTH = {"Authorization": f"Bearer {KEY}"}


def request(method, target, body=None, headers=None):
    """One request on a new connection: (status, headers, parsed JSON body or raw bytes)."""
    connection = http.client.HTTPConnection(LB.hostname, LB.port, timeout=10)
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
    with socket.create_connection((LB.hostname, LB.port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def access_log():
    """nginx's access log lines (JSON, deploy/nginx.conf's format), oldest first."""
    with open(os.path.join(LOGS, "access.log")) as lines:
        return [json.loads(line) for line in lines]


def log_line_of(trace_id):
    """The access log line of the request whose answer carried this trace id."""
    for _ in range(50):  # nginx writes the line once the answer is sent: give it a moment
        matching = [line for line in access_log() if trace_id in (line["trace_id"], line["request_id"])]
        if matching:
            return matching[-1]
        time.sleep(0.1)
    raise AssertionError(f"no access log line carries {trace_id}")


class ThroughNginx(unittest.TestCase):
    def assert_envelope(self, status, headers, body, expected_status, code):
        self.assertEqual(status, expected_status, body)
        self.assertIsInstance(body, dict, f"not JSON: {body!r}")
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(set(body), {"success", "data", "error", "traceId"})
        self.assertIs(body["success"], False)
        self.assertIsNone(body["data"])
        self.assertEqual(body["error"]["code"], code)
        self.assertTrue(body["error"]["message"] and body["error"]["details"], body)
        self.assertRegex(body["traceId"], r"^[0-9a-f]{32}$")
        self.assertEqual(headers["X-Request-Id"], body["traceId"])

    def assert_from_nginx(self, status, headers, body, expected_status, code):
        """An answer nginx gave itself: the envelope, its trace id in nginx's log, no replica asked."""
        self.assert_envelope(status, headers, body, expected_status, code)
        self.assertEqual(headers["X-Content-Type-Options"], "nosniff")
        self.assertEqual(headers["Cache-Control"], "no-store")
        line = log_line_of(body["traceId"])
        self.assertEqual(line["request_id"], body["traceId"])
        self.assertEqual(line["status"], expected_status)
        return line

    def test_1_the_services_answer_passes_and_carries_nginxs_id(self):
        status, headers, body = request("GET", f"{SCANS}/{COMPLETED_SCAN}", headers=AUTH)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["data"]["status"], "completed")
        line = log_line_of(body["traceId"])
        # The client sent no id: the service took nginx's, so one id finds both lines.
        self.assertEqual(line["trace_id"], body["traceId"])
        self.assertEqual(line["request_id"], body["traceId"])
        self.assertNotIn(line["upstream"], ("", "-"))
        # A client's own id goes on as it is.
        status, _, body = request("GET", f"{SCANS}/{COMPLETED_SCAN}", headers={**AUTH, "X-Request-Id": "client-chosen-7"})
        self.assertEqual((status, body["traceId"]), (200, "client-chosen-7"))

    def test_2_the_services_own_refusals_pass_as_they_are(self):
        status, headers, body = request("POST", f"{SCANS}/{COMPLETED_SCAN}/cancel", headers=AUTH)
        self.assert_envelope(status, headers, body, 422, "VALIDATION_ERROR")
        status, headers, body = request("GET", f"{SCANS}/{COMPLETED_SCAN}")
        self.assert_envelope(status, headers, body, 401, "UNAUTHORIZED")
        # Over the service's limit of 2,048 bytes and within nginx's 16k: the service says so.
        status, headers, body = request("GET", f"{SCANS}/{COMPLETED_SCAN}?{'a' * 3000}", headers=AUTH)
        self.assert_envelope(status, headers, body, 400, "VALIDATION_ERROR")
        self.assertIn("the limit is 2048", body["error"]["details"])
        self.assertNotIn(log_line_of(body["traceId"])["upstream"], ("", "-"))

    def test_3_metrics_is_refused_however_it_is_spelled(self):
        for target in ["/metrics", "/metrics/", "/metrics/anything", "/metrics?format=text", "/%6Detrics", "//metrics"]:
            with self.subTest(target=target):
                line = self.assert_from_nginx(*request("GET", target), 403, "FORBIDDEN")
                self.assertIn(line["upstream"], ("", "-"))

    def test_4_what_nginx_refuses_is_refused_in_the_envelope(self):
        cancel = f"{SCANS}/{QUEUED_SCAN}/cancel"
        status, headers, body = request("POST", cancel, body=b"{" + b" " * 65536 + b"}", headers=AUTH)
        self.assert_from_nginx(status, headers, body, 400, "VALIDATION_ERROR")
        self.assertEqual(body["error"]["details"], "request body is over the limit of 65536 bytes")
        status, headers, body = request("GET", f"{SCANS}?{'a' * 20000}", headers=AUTH)
        self.assert_from_nginx(status, headers, body, 400, "VALIDATION_ERROR")
        self.assertIn("request target", body["error"]["details"])
        status, headers, body = request("GET", SCANS, headers={**AUTH, "X-Padding": "a" * 20000})
        self.assert_from_nginx(status, headers, body, 400, "VALIDATION_ERROR")
        self.assertIn("header", body["error"]["details"])
        for data in [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n"]:
            with self.subTest(data=data):
                status, body = raw_request(data)
                self.assertEqual((status, body["error"]["code"]), (400, "VALIDATION_ERROR"), body)
                self.assertEqual(log_line_of(body["traceId"])["status"], 400)
        # nginx's own pages are for nginx alone.
        self.assert_from_nginx(*request("GET", "/_lb_errors/502"), 404, "NOT_FOUND")
        # None of it reached the scan.
        status, _, body = request("GET", f"{SCANS}/{QUEUED_SCAN}", headers=AUTH)
        self.assertEqual((status, body["data"]["status"]), (200, "queued"))

    def test_5_a_replica_that_refuses_connections_is_skipped_and_the_stream_flows(self):
        stream = http.client.HTTPConnection(LB.hostname, LB.port, timeout=10)
        stream.request("GET", f"{SCANS}/changes?scanId={QUEUED_SCAN}", headers=AUTH)
        response = stream.getresponse()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["Content-Type"], "text/event-stream")
        # Every request reaches the live replica, a cancel too, whichever nginx tried first.
        for _ in range(4):
            status, _, body = request("GET", f"{SCANS}/{COMPLETED_SCAN}", headers=AUTH)
            self.assertEqual(status, 200, body)
        status, _, body = request("POST", f"{SCANS}/{QUEUED_SCAN}/cancel", headers=AUTH)
        self.assertEqual((status, body["data"]["status"]), (200, "cancelled"), body)
        with open(os.path.join(LOGS, "error.log")) as errors:
            refused = f"127.0.0.1:{os.environ['REFUSING_PORT']}"
            self.assertTrue(any(refused in line and "refused" in line for line in errors), "no request tried the refusing replica")
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

    def test_9_no_replica_answering_is_a_502_in_the_envelope(self):
        os.kill(int(os.environ["DEMO_SERVICE_PID"]), signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, headers, body = request("GET", f"{SCANS}/{COMPLETED_SCAN}", headers=AUTH)
            if status == 502:
                break
            time.sleep(0.2)
        self.assert_from_nginx(status, headers, body, 502, "UPSTREAM_ERROR")
        status, headers, body = request("POST", f"{SCANS}/{COMPLETED_SCAN}/cancel", headers=AUTH)
        self.assert_from_nginx(status, headers, body, 502, "UPSTREAM_ERROR")


if __name__ == "__main__":
    unittest.main(verbosity=2)
