"""The generated Python client (clients/python) against the running service with demo data.

Run by scripts/python-client-test.sh, which starts the service and installs the client into a fresh
virtual environment; reads BASE_URL, DEMO_KEY, DEMO_GROUP, DEMO_QUEUED_SCAN, DEMO_COMPLETED_SCAN and
DEMO_RUNNER_KEY (signals:run and signals:read), and SIGNAL_SCANS_BIN (the binary, for a service of
a test's own).
"""

import asyncio
import contextlib
import datetime
import http.server
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import unittest.mock
from http import HTTPStatus

import httpx

from signal_scans_client import AuthenticatedClient, Client, errors
from signal_scans_client.api.operations import healthz
from signal_scans_client.changes import NotAnEventStream, StreamRefused, follow_changes
from signal_scans_client.api.runners import complete_signal_scan, fail_signal_scan, start_signal_scan
from signal_scans_client.api.signal_scans import (
    cancel_signal_scan,
    cancel_signal_scans,
    create_signal_scan,
    get_signal_scan,
    list_signal_scan_events,
    list_signal_scans,
)
from signal_scans_client.models import (
    CancelOutcome,
    CancelResult,
    CancelScansRequest,
    ErrorResponse,
    ScanStatus,
    FailRequest,
    SignalScanCancelSuccessResponse,
    SignalScanCreatedResponse,
    SignalScanListResponse,
    SignalScanMoveResponse,
    SignalScanResponse,
    ValidationErrorResponse,
)

BASE_URL = os.environ["BASE_URL"]
KEY = os.environ["DEMO_KEY"]
GROUP = os.environ["DEMO_GROUP"]
QUEUED = os.environ["DEMO_QUEUED_SCAN"]
COMPLETED = os.environ["DEMO_COMPLETED_SCAN"]
RUNNER_KEY = os.environ["DEMO_RUNNER_KEY"]
UNKNOWN_SCAN = "000000000000000000000000"


def bearer_client() -> AuthenticatedClient:
    return AuthenticatedClient(base_url=BASE_URL, token=KEY, raise_on_unexpected_status=True)


def runner_client() -> AuthenticatedClient:
    return AuthenticatedClient(base_url=BASE_URL, token=RUNNER_KEY, raise_on_unexpected_status=True)


def api_key_client() -> AuthenticatedClient:
    return AuthenticatedClient(
        base_url=BASE_URL,
        token=KEY,
        auth_header_name="X-API-Key",
        prefix="",
        raise_on_unexpected_status=True,
    )


@contextlib.contextmanager
def fake_server(*answers):
    """A server on 127.0.0.1 that is not the service, for answers the service never gives (a proxy's
    page, a CDN's status, a captive portal, a stream that drips). The n-th request gets answers[n-1],
    and any after the last the last again; each answer is `answer(handler, stopping)`. Yields the
    server's base URL and the list of the paths it was asked for."""
    asked, lock, stopping = [], threading.Lock(), threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            with lock:
                asked.append(self.path)
                answer = answers[min(len(asked), len(answers)) - 1]
            self.close_connection = True
            try:
                answer(self, stopping)
            except OSError:  # the client went away
                pass

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", asked
    finally:
        stopping.set()
        server.shutdown()
        server.server_close()


def whole(status, content_type, body, headers=()):
    """An answer with a whole body (no Content-Type header when `content_type` is None), and
    `headers`, pairs of a name and a value."""

    def answer(handler, stopping):
        handler.send_response(status)
        if content_type is not None:
            handler.send_header("Content-Type", content_type)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def envelope(status, code, details):
    return whole(
        status,
        "application/json",
        json.dumps(
            {
                "success": False,
                "data": None,
                "error": {"code": code, "message": code.lower(), "details": details},
                "traceId": "0af7651916cd43dd8448eb211c80319c",
            }
        ).encode(),
    )


def sent_slowly(*writes, every=0.0, content_type="text/event-stream", hold=False, status=200):
    """A `status` (200 unless told) whose body is `writes`, one every `every` seconds, without a
    length: ended after the last, or held open until the server stops (`hold`)."""

    def answer(handler, stopping):
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Connection", "close")
        handler.end_headers()
        for write in writes:
            handler.wfile.write(write)
            handler.wfile.flush()
            if stopping.wait(every):
                return
        if hold:
            stopping.wait()

    return answer


def within(test, seconds, call):
    """What `call()` returns or raises, from a thread of its own; fails the test when it has not
    finished after `seconds` (it is left running, a daemon thread, rather than hang the test)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except Exception as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    test.assertFalse(thread.is_alive(), f"still running after {seconds} s")
    return outcome.get("value"), outcome.get("error")


class GeneratedClient(unittest.TestCase):
    # Runs in name order: the cancel first, the reads of its result after.

    def test_1_cancels_a_queued_scan_and_reads_it_back(self):
        with bearer_client() as client:
            answer = cancel_signal_scan.sync_detailed(account_group_id=GROUP, scan_id=QUEUED, client=client)
            self.assertEqual(answer.status_code, 200)
            cancelled = answer.parsed
            self.assertIsInstance(cancelled, SignalScanCancelSuccessResponse)
            self.assertTrue(cancelled.success)
            self.assertIsNone(cancelled.error)
            self.assertEqual(cancelled.data.scan_id, QUEUED)
            self.assertEqual(cancelled.data.status, ScanStatus.CANCELLED)
            self.assertEqual(cancelled.data.previous_status, ScanStatus.QUEUED)
            self.assertIsInstance(cancelled.data.cancelled_at, datetime.datetime)
            self.assertEqual(answer.headers["x-request-id"], cancelled.trace_id)

        # Read back through the other way of sending the key.
        with api_key_client() as client:
            scan = get_signal_scan.sync(account_group_id=GROUP, scan_id=QUEUED, client=client)
            self.assertIsInstance(scan, SignalScanResponse)
            self.assertEqual(scan.data.status, ScanStatus.CANCELLED)
            self.assertEqual(scan.data.cancelled_at, cancelled.data.cancelled_at)

            events = list_signal_scan_events.sync(account_group_id=GROUP, scan_id=QUEUED, client=client)
            self.assertEqual(
                [(event.from_, event.to) for event in events.data.events],
                [(None, ScanStatus.QUEUED), (ScanStatus.QUEUED, ScanStatus.CANCELLED)],
            )
            self.assertEqual(events.data.events[-1].trace_id, cancelled.trace_id)

            page = list_signal_scans.sync(account_group_id=GROUP, client=client, status=ScanStatus.CANCELLED)
            self.assertIsInstance(page, SignalScanListResponse)
            self.assertIn(QUEUED, [listed.scan_id for listed in page.data.scans])
            self.assertTrue(all(listed.status == ScanStatus.CANCELLED for listed in page.data.scans))

    def test_2_repeated_cancel_reports_the_original_moment(self):
        with bearer_client() as client:
            first = get_signal_scan.sync(account_group_id=GROUP, scan_id=QUEUED, client=client)
            again = cancel_signal_scan.sync(account_group_id=GROUP, scan_id=QUEUED, client=client)
            self.assertIsInstance(again, SignalScanCancelSuccessResponse)
            self.assertEqual(again.data.previous_status, ScanStatus.CANCELLED)
            self.assertEqual(again.data.cancelled_at, first.data.cancelled_at)

    def test_3_a_completed_scan_is_a_typed_422(self):
        with bearer_client() as client:
            answer = cancel_signal_scan.sync_detailed(account_group_id=GROUP, scan_id=COMPLETED, client=client)
            self.assertEqual(answer.status_code, 422)
            refused = answer.parsed
            self.assertIsInstance(refused, ErrorResponse)
            self.assertFalse(refused.success)
            self.assertIsNone(refused.data)
            self.assertEqual(refused.error.code, "VALIDATION_ERROR")
            self.assertEqual(refused.error.details, "currentStatus=completed")
            self.assertEqual(answer.headers["x-request-id"], refused.trace_id)
            scan = get_signal_scan.sync(account_group_id=GROUP, scan_id=COMPLETED, client=client)
            self.assertEqual(scan.data.status, ScanStatus.COMPLETED, "a refused cancel changes nothing")

    def test_4_an_unknown_scan_is_a_typed_404(self):
        with bearer_client() as client:
            answer = cancel_signal_scan.sync_detailed(account_group_id=GROUP, scan_id=UNKNOWN_SCAN, client=client)
            self.assertEqual(answer.status_code, 404)
            self.assertIsInstance(answer.parsed, ErrorResponse)
            self.assertEqual(answer.parsed.error.code, "NOT_FOUND")
            self.assertEqual(answer.parsed.error.details, "no such scan in this account group")

    def test_5_other_errors_are_typed_too(self):
        with bearer_client() as client:
            malformed = cancel_signal_scan.sync_detailed(account_group_id=GROUP, scan_id="nope", client=client)
            self.assertEqual(malformed.status_code, 400)
            self.assertIsInstance(malformed.parsed, ValidationErrorResponse)
            self.assertEqual(malformed.parsed.error.code, "VALIDATION_ERROR")
            self.assertIn("scanId", malformed.parsed.error.details)
        with AuthenticatedClient(base_url=BASE_URL, token="ssk_not_a_key", raise_on_unexpected_status=True) as client:
            refused = get_signal_scan.sync_detailed(account_group_id=GROUP, scan_id=QUEUED, client=client)
            self.assertEqual(refused.status_code, 401)
            self.assertIsInstance(refused.parsed, ErrorResponse)
            self.assertEqual(refused.parsed.error.code, "UNAUTHORIZED")

    def test_6_a_client_starts_a_scan_and_a_runner_moves_it_but_cannot_complete_a_cancelled_one(self):
        with bearer_client() as client:
            created = create_signal_scan.sync_detailed(account_group_id=GROUP, client=client, idempotency_key="py-1")
            self.assertEqual(created.status_code, 201)
            self.assertIsInstance(created.parsed, SignalScanCreatedResponse)
            scan = created.parsed.data
            self.assertEqual(scan.status, ScanStatus.QUEUED)
            self.assertEqual(created.headers["location"], f"/v1/accounts/{GROUP}/signals/scans/{scan.scan_id}")
            again = create_signal_scan.sync_detailed(account_group_id=GROUP, client=client, idempotency_key="py-1")
            self.assertEqual(again.headers["idempotent-replayed"], "true")
            self.assertEqual(again.parsed.data.scan_id, scan.scan_id)
            failing = create_signal_scan.sync(account_group_id=GROUP, client=client).data
            silent = create_signal_scan.sync(account_group_id=GROUP, client=client).data

        with runner_client() as runner:
            started = start_signal_scan.sync(account_group_id=GROUP, scan_id=scan.scan_id, client=runner)
            self.assertIsInstance(started, SignalScanMoveResponse)
            self.assertEqual(started.data.status, ScanStatus.RUNNING)
            self.assertEqual(started.data.previous_status, ScanStatus.QUEUED)
            start_signal_scan.sync(account_group_id=GROUP, scan_id=failing.scan_id, client=runner)
            failed = fail_signal_scan.sync(
                account_group_id=GROUP, scan_id=failing.scan_id, client=runner, body=FailRequest(reason="no route")
            )
            self.assertEqual(failed.data.status, ScanStatus.FAILED)
            # The body is optional: a failure without a reason.
            start_signal_scan.sync(account_group_id=GROUP, scan_id=silent.scan_id, client=runner)
            failed_silently = fail_signal_scan.sync(account_group_id=GROUP, scan_id=silent.scan_id, client=runner)
            self.assertEqual(failed_silently.data.status, ScanStatus.FAILED)

        with bearer_client() as client:
            cancel_signal_scan.sync(account_group_id=GROUP, scan_id=scan.scan_id, client=client)
            events = list_signal_scan_events.sync(account_group_id=GROUP, scan_id=failing.scan_id, client=client)
            self.assertEqual(events.data.events[-1].reason, "no route")
            silent_events = list_signal_scan_events.sync(account_group_id=GROUP, scan_id=silent.scan_id, client=client)
            self.assertIsNone(silent_events.data.events[-1].reason)
            # A client's key cannot make a runner's move.
            forged = complete_signal_scan.sync_detailed(account_group_id=GROUP, scan_id=scan.scan_id, client=client)
            self.assertEqual(forged.status_code, 403)

        with runner_client() as runner:
            late = complete_signal_scan.sync_detailed(account_group_id=GROUP, scan_id=scan.scan_id, client=runner)
            self.assertEqual(late.status_code, 422)
            self.assertIsInstance(late.parsed, ErrorResponse)
            self.assertEqual(late.parsed.error.details, "currentStatus=cancelled")

    def test_7_a_batch_cancel_answers_each_scan_in_order(self):
        with bearer_client() as client:
            fresh = create_signal_scan.sync(account_group_id=GROUP, client=client).data
            answer = cancel_signal_scans.sync_detailed(
                account_group_id=GROUP,
                client=client,
                body=CancelScansRequest(scan_ids=[fresh.scan_id, COMPLETED, UNKNOWN_SCAN]),
            )
            self.assertEqual(answer.status_code, 200)
            results = answer.parsed.data.results
            self.assertEqual([r.scan_id for r in results], [fresh.scan_id, COMPLETED, UNKNOWN_SCAN])
            self.assertEqual(
                [r.outcome for r in results],
                [CancelOutcome.CANCELLED, CancelOutcome.NOT_CANCELLABLE, CancelOutcome.NOT_FOUND],
            )
            self.assertEqual(results[0].previous_status, ScanStatus.QUEUED)
            self.assertIsInstance(results[0].cancelled_at, datetime.datetime)
            self.assertIsNone(results[2].status)
            repeated = cancel_signal_scans.sync_detailed(
                account_group_id=GROUP, client=client, body=CancelScansRequest(scan_ids=[COMPLETED, COMPLETED])
            )
            self.assertEqual(repeated.status_code, 400)
            self.assertIsInstance(repeated.parsed, ValidationErrorResponse)
            self.assertEqual(repeated.parsed.error.details, "scanIds[1] repeats scanIds[0]")

    def test_8_operations_need_no_key(self):
        with Client(base_url=BASE_URL, raise_on_unexpected_status=True) as client:
            health = healthz.sync(client=client)
            self.assertTrue(health.success)

    def test_9_follows_changes_from_a_cursor_live_and_after_a_resume(self):
        with bearer_client() as client:
            scan = create_signal_scan.sync(account_group_id=GROUP, client=client).data
            other = create_signal_scan.sync(account_group_id=GROUP, client=client).data
            with runner_client() as runner:
                # From the trail's start, only the scan asked for: its creation, replayed.
                changes = follow_changes(runner, GROUP, after="0-0", scan_ids=[scan.scan_id])
                created = next(changes)
                self.assertEqual(created.data.scan_id, scan.scan_id)
                self.assertIsNone(created.data.from_)
                self.assertEqual(created.data.to, ScanStatus.QUEUED)
                # Live, on the same stream: a change made after the stream opened.
                cancel_signal_scan.sync(account_group_id=GROUP, scan_id=other.scan_id, client=client)
                cancel_signal_scan.sync(account_group_id=GROUP, scan_id=scan.scan_id, client=client)
                cancelled = next(changes)
                changes.close()
                self.assertEqual((cancelled.data.scan_id, cancelled.data.to), (scan.scan_id, ScanStatus.CANCELLED))
                self.assertEqual(cancelled.data.from_, ScanStatus.QUEUED)
                # Resumed after the creation: the cancel, with its own cursor, and nothing before it.
                resumed = follow_changes(runner, GROUP, after=created.id, scan_ids=[scan.scan_id])
                self.assertEqual(next(resumed), cancelled)
                resumed.close()
                # Every change of the group, in order: the creation of `other` comes after that of `scan`.
                every = [c.data.scan_id for c in itertools.islice(follow_changes(runner, GROUP, after=created.id), 2)]
                self.assertEqual(every, [other.scan_id, other.scan_id])

    def test_11_a_change_whose_text_holds_unicode_line_separators_arrives_whole(self):
        # JSON text keeps U+2028 and U+0085 as they are; a stream's lines end only at CR or LF.
        reason = "disk\u2028full\u0085 again"
        with bearer_client() as client:
            scan = create_signal_scan.sync(account_group_id=GROUP, client=client).data
        with runner_client() as runner:
            start_signal_scan.sync(account_group_id=GROUP, scan_id=scan.scan_id, client=runner)
            fail_signal_scan.sync(
                account_group_id=GROUP, scan_id=scan.scan_id, client=runner, body=FailRequest(reason=reason)
            )
            changes = follow_changes(runner, GROUP, after="0-0", scan_ids=[scan.scan_id])
            failed = list(itertools.islice(changes, 3))[-1]
            changes.close()
            self.assertEqual((failed.data.to, failed.data.reason), (ScanStatus.FAILED, reason))

    def test_12_follows_on_across_the_ends_of_streams(self):
        # The service here ends each stream after 1.5 s (scripts/python-client-test.sh): changes
        # made over several streams all arrive, in order, once.
        with bearer_client() as client:
            scans = [create_signal_scan.sync(account_group_id=GROUP, client=client).data.scan_id for _ in range(3)]
            with runner_client() as runner:
                changes = follow_changes(runner, GROUP, after="0-0", scan_ids=scans)
                created = [next(changes) for _ in scans]
                for scan in scans:
                    time.sleep(1.0)
                    cancel_signal_scan.sync(account_group_id=GROUP, scan_id=scan, client=client)
                cancelled = [next(changes) for _ in scans]
                changes.close()
        self.assertEqual([c.data.scan_id for c in created], scans)
        self.assertEqual([(c.data.scan_id, c.data.to) for c in cancelled], [(s, ScanStatus.CANCELLED) for s in scans])
        self.assertEqual(len({c.id for c in created + cancelled}), 6)

    def test_27_on_open_is_called_once_a_stream_is_open_and_again_at_each_reconnection(self):
        # A runner's start: open the stream, then list the queued scans from `on_open`. A scan
        # queued before the call is in the list; one queued after it arrives on the stream.
        with bearer_client() as client:
            before = create_signal_scan.sync(account_group_id=GROUP, client=client).data.scan_id
            with runner_client() as runner:
                opened, listed, after = [], [], []

                def list_queued(cursor):
                    opened.append(cursor)
                    if len(opened) == 1:
                        page = list_signal_scans.sync(account_group_id=GROUP, client=runner, status=ScanStatus.QUEUED)
                        listed.extend(scan.scan_id for scan in page.data.scans)
                        after.append(create_signal_scan.sync(account_group_id=GROUP, client=client).data.scan_id)

                changes = follow_changes(runner, GROUP, statuses=["queued"], on_open=list_queued)
                first, error = within(self, 10, lambda: next(changes))
                self.assertIsNone(error)
                self.assertIn(before, listed)
                self.assertEqual(first.data.scan_id, after[0])
                # The service here ends each stream after 1.5 s: the next opening calls it again,
                # and nothing is missed in between.
                time.sleep(2.0)
                later = create_signal_scan.sync(account_group_id=GROUP, client=client).data.scan_id
                latest, error = within(self, 10, lambda: next(changes))
                self.assertIsNone(error)
                self.assertEqual(latest.data.scan_id, later)
                changes.close()
                self.assertGreaterEqual(len(opened), 2)

    def test_30_follows_on_over_http2_across_a_stop_of_the_service(self):
        # Over HTTP/2 (h2c, httpx's `http2` extra) a service that stops closes its connections
        # gracefully: a GOAWAY, then a PING, which the h2 package refuses with its own
        # ProtocolError, not an httpx error. The follower takes it as the connection lost, asks
        # again until the service is back, and misses nothing committed meanwhile.
        binary = os.environ["SIGNAL_SCANS_BIN"]
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = dict(os.environ, DATABASE_URL=f"sqlite://{folder}/h2.db", LISTEN_ADDR=f"127.0.0.1:{port}", RUST_LOG="warn")

        def command(*args):
            done = subprocess.run([binary, *args], env=env, check=True, capture_output=True, text=True)
            return done.stdout

        def serve():
            service = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(100):
                if subprocess.run([binary, "healthcheck"], env=env, capture_output=True).returncode == 0:
                    return service
                time.sleep(0.1)
            service.kill()
            self.fail("the service of this test did not start")

        key = json.loads(command("keys", "create", "--name", "h2", "--all-account-groups", "--json"))["key"]
        first = json.loads(command("scans", "create", "--account-group", GROUP, "--json"))["scanId"]
        service = serve()
        try:
            client = AuthenticatedClient(
                base_url=f"http://127.0.0.1:{port}", token=key, httpx_args={"http2": True, "http1": False}
            )
            with client:
                changes = follow_changes(client, GROUP, after="0-0")
                created, error = within(self, 10, lambda: next(changes))
                self.assertIsNone(error)
                self.assertEqual(created.data.scan_id, first)
                service.terminate()
                self.assertEqual(service.wait(20), 0)
                second = json.loads(command("scans", "create", "--account-group", GROUP, "--json"))["scanId"]
                service = serve()
                resumed, error = within(self, 20, lambda: next(changes))
                changes.close()
        finally:
            service.terminate()
            service.wait(20)
        self.assertIsNone(error)
        self.assertEqual(resumed.data.scan_id, second)
        self.assertNotEqual(resumed.id, created.id)

    def test_13_a_client_never_shows_its_key(self):
        client = bearer_client()
        self.assertNotIn(KEY, repr(client))
        self.assertNotIn(KEY, str(client))
        self.assertIn("AuthenticatedClient(", repr(client))

    def test_10_a_refused_stream_raises_with_the_envelope(self):
        with runner_client() as runner:
            with self.assertRaises(StreamRefused) as raised:
                next(follow_changes(runner, GROUP, after="not-a-cursor"))
            self.assertEqual((raised.exception.status, raised.exception.code), (400, "VALIDATION_ERROR"))
            self.assertIn("Last-Event-ID", raised.exception.details)
            self.assertTrue(raised.exception.message)  # the envelope's, as the generated operations keep it
            self.assertTrue(raised.exception.trace_id)
        with AuthenticatedClient(base_url=BASE_URL, token="ssk_not_a_key") as stranger:
            with self.assertRaises(StreamRefused) as raised:
                next(follow_changes(stranger, GROUP))
            self.assertEqual(raised.exception.status, 401)

    def test_14_an_answer_that_is_not_the_envelope_keeps_its_status_and_body(self):
        # The service's HTTP layer refuses more than 100 header fields with a bare 431, no body.
        padding = {f"X-Padding-{n}": "x" for n in range(100)}
        with AuthenticatedClient(base_url=BASE_URL, token=KEY).with_headers(padding) as client:
            bare = get_signal_scan.sync_detailed(account_group_id=GROUP, scan_id=QUEUED, client=client)
            self.assertEqual((bare.status_code, bare.content, bare.parsed), (431, b"", None))
        with bearer_client().with_headers(padding) as client:
            with self.assertRaises(errors.UnexpectedStatus) as raised:
                get_signal_scan.sync(account_group_id=GROUP, scan_id=QUEUED, client=client)
            self.assertEqual((raised.exception.status_code, raised.exception.content), (431, b""))
            # An HTTPStatus, as a Response's (the README says so): it was a plain int.
            self.assertIs(raised.exception.status_code, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        # What a proxy or a captive portal may answer in the service's place.
        html = b"<html><body>502 Bad Gateway</body></html>"
        no_upstream = b'{"message":"no healthy upstream"}'
        portal = b"<html><body>Log in to use the Wi-Fi</body></html>"
        answers = [(502, "text/html", html), (503, "application/json", no_upstream), (200, "text/html", portal)]
        with fake_server(*[whole(*answer) for answer in answers * 2]) as (url, _):
            with AuthenticatedClient(base_url=url, token=KEY) as client:
                for status, _, body in answers:
                    answer = cancel_signal_scan.sync_detailed(account_group_id=GROUP, scan_id=QUEUED, client=client)
                    self.assertEqual((answer.status_code, answer.content, answer.parsed), (status, body, None))
            with AuthenticatedClient(base_url=url, token=KEY, raise_on_unexpected_status=True) as client:
                for status, _, body in answers:
                    with self.assertRaises(errors.UnexpectedStatus) as raised:
                        cancel_signal_scan.sync(account_group_id=GROUP, scan_id=QUEUED, client=client)
                    self.assertEqual((raised.exception.status_code, raised.exception.content), (status, body))

    def test_15_a_status_python_does_not_name_is_handled_like_any_other(self):
        # A CDN's 520, with the envelope and with its own page.
        page = b"<html><body>Web server is returning an unknown error</body></html>"
        answers = [envelope(520, "UPSTREAM_ERROR", "unknown"), whole(520, "text/html", page), whole(520, None, page)]
        with fake_server(*answers) as (url, _):
            with AuthenticatedClient(base_url=url, token=KEY) as client:
                typed = get_signal_scan.sync_detailed(account_group_id=GROUP, scan_id=QUEUED, client=client)
                self.assertEqual(typed.status_code, 520)
                self.assertIsInstance(typed.parsed, ErrorResponse)
                self.assertEqual(typed.parsed.error.code, "UPSTREAM_ERROR")
                untyped = get_signal_scan.sync_detailed(account_group_id=GROUP, scan_id=QUEUED, client=client)
                self.assertEqual((untyped.status_code, untyped.content, untyped.parsed), (520, page, None))
            with AuthenticatedClient(base_url=url, token=KEY, raise_on_unexpected_status=True) as client:
                with self.assertRaises(errors.UnexpectedStatus) as raised:
                    get_signal_scan.sync(account_group_id=GROUP, scan_id=QUEUED, client=client)
                self.assertEqual((raised.exception.status_code, raised.exception.content), (520, page))
                self.assertIs(type(raised.exception.status_code), int)

    def test_16_with_headers_cookies_and_timeout_leave_the_original_alone(self):
        # The service answers an X-Request-Id it is sent as the request's trace id.
        for original in [bearer_client(), api_key_client()]:
            with original:
                get_signal_scan.sync(account_group_id=GROUP, scan_id=QUEUED, client=original)  # its httpx client made
                traced = original.with_headers({"X-Request-Id": "py-with-headers"})
                with traced:
                    answer = get_signal_scan.sync_detailed(account_group_id=GROUP, scan_id=QUEUED, client=traced)
                    self.assertEqual(answer.headers["x-request-id"], "py-with-headers")
                    self.assertIsInstance(answer.parsed, SignalScanResponse)
                again = get_signal_scan.sync_detailed(account_group_id=GROUP, scan_id=QUEUED, client=original)
                self.assertNotEqual(again.headers["x-request-id"], "py-with-headers")
                self.assertIsInstance(again.parsed, SignalScanResponse)
                before = original.get_httpx_client()
                timeout = httpx.Timeout(1.0)
                with original.with_cookies({"session": "other"}) as other, original.with_timeout(timeout) as quick:
                    self.assertEqual(other.get_httpx_client().cookies.get("session"), "other")
                    self.assertEqual(quick.get_httpx_client().timeout, timeout)
                self.assertIs(original.get_httpx_client(), before)
                self.assertIsNone(before.cookies.get("session"))
                self.assertNotIn("x-request-id", before.headers)
                self.assertNotEqual(before.timeout, timeout)

    def test_17_a_timeout_bounds_each_wait_and_the_docs_say_so(self):
        # A body sent a byte at a time, more often than the timeout: the call takes longer than it.
        body = json.dumps({"success": True, "data": {"status": "ok"}, "error": None, "traceId": "t"}).encode()
        dripped = sent_slowly(*[bytes([byte]) for byte in body], every=0.02, content_type="application/json")
        with fake_server(dripped) as (url, _), Client(base_url=url, timeout=httpx.Timeout(0.5)) as client:
            started = time.monotonic()
            answer = healthz.sync_detailed(client=client)
            self.assertGreater(time.monotonic() - started, 1.0)
            self.assertEqual(answer.status_code, 200)
        for documented in [Client.__doc__, AuthenticatedClient.__doc__, cancel_signal_scan.sync.__doc__]:
            words = " ".join(documented.split())
            self.assertNotIn("maximum amount of a time a request can take", words)
            self.assertNotIn("If the request takes longer than Client.timeout", words)
            self.assertIn("not the whole call", words)

    def test_18_a_stream_that_drips_or_runs_on_is_dropped(self):
        refusal = envelope(404, "NOT_FOUND", "no such stream")
        # Bytes more often than silence_seconds, but never a whole event or keep-alive: dropped after
        # silence_seconds and asked again (then refused, which ends the test).
        drip = sent_slowly(b"retry: 100\n\n", *[b"x"] * 10000, every=0.1)
        with fake_server(drip, refusal) as (url, asked), AuthenticatedClient(base_url=url, token=KEY) as client:
            started = time.monotonic()
            _, error = within(self, 10, lambda: next(follow_changes(client, GROUP, silence_seconds=1.0)))
            self.assertIsInstance(error, StreamRefused)
            self.assertEqual((error.status, error.code, error.message), (404, "NOT_FOUND", "not_found"))
            self.assertEqual(len(asked), 2)
            self.assertLess(time.monotonic() - started, 5)
        # Keep-alives more often than silence_seconds hold the stream: not asked again until it ends.
        keep_alive = sent_slowly(b"retry: 100\n\n", *[b": keep-alive\n"] * 6, every=0.4)
        with fake_server(keep_alive, refusal) as (url, asked), AuthenticatedClient(base_url=url, token=KEY) as client:
            started = time.monotonic()
            _, error = within(self, 10, lambda: next(follow_changes(client, GROUP, silence_seconds=1.0)))
            self.assertIsInstance(error, StreamRefused)
            self.assertEqual(len(asked), 2)
            self.assertGreater(time.monotonic() - started, 2.0)
        # A line, or an event, past 64 KiB is not the service's: refused, not kept in memory.
        long_line = sent_slowly(b"data: " + b"x" * 70_000, hold=True)
        long_event = sent_slowly(*[b"data: " + b"x" * 1000 + b"\n"] * 70, hold=True)
        # Counted in bytes, not characters: 12 lines of 2,000 three-byte characters are 72 KB.
        wide_event = sent_slowly(*[b"data: " + "\u20ac".encode() * 2000 + b"\n"] * 12, hold=True)
        # A whole line, its end included, in one piece.
        whole_line = sent_slowly(b"data: " + b"x" * 90_000 + b"\n", hold=True)
        for answer in [long_line, long_event, wide_event, whole_line]:
            with fake_server(answer) as (url, asked), AuthenticatedClient(base_url=url, token=KEY) as client:
                _, error = within(self, 5, lambda: next(follow_changes(client, GROUP)))
                self.assertIsInstance(error, NotAnEventStream)
                self.assertIn("65536", error.details)
                self.assertEqual(len(asked), 1)

    def test_19_a_200_that_is_not_an_event_stream_is_refused(self):
        portal = whole(200, "text/html; charset=utf-8", b"<html><body>Log in to use the Wi-Fi</body></html>")
        with fake_server(portal) as (url, asked), AuthenticatedClient(base_url=url, token=KEY) as client:
            _, error = within(self, 5, lambda: next(follow_changes(client, GROUP)))
            self.assertIsInstance(error, NotAnEventStream)
            self.assertIsInstance(error, StreamRefused)
            self.assertEqual((error.status, error.code), (200, None))
            self.assertIn("text/html", error.details)
            self.assertEqual(len(asked), 1)

    def test_20_a_refusal_of_the_stream_that_is_not_the_envelope_keeps_its_status(self):
        # A proxy's refusals: a JSON list, an `error` that is not an object, an HTML page.
        answers = [
            whole(403, "application/json", b"[]"),
            whole(403, "application/json", b'{"error": "forbidden", "traceId": 7}'),
            whole(404, "text/html", b"<html><body>Not Found</body></html>"),
        ]
        with fake_server(*answers) as (url, asked), AuthenticatedClient(base_url=url, token=KEY) as client:
            for status in [403, 403, 404]:
                with self.assertRaises(StreamRefused) as raised:
                    next(follow_changes(client, GROUP))
                refused = raised.exception
                self.assertEqual((refused.status, refused.code, refused.details), (status, None, None))
            self.assertEqual(len(asked), 3)

    def waits_after(self, refusal, stream):
        """The follower's two waits: after `refusal` (its first answer), then after `stream` ends
        (its second), each seen asked for once."""
        waits = []

        class Stop(Exception):
            pass

        def sleep(seconds):
            waits.append(seconds)
            if len(waits) == 2:
                raise Stop

        with (
            fake_server(refusal, stream) as (url, asked),
            AuthenticatedClient(base_url=url, token=KEY) as client,
            unittest.mock.patch("signal_scans_client.changes.time.sleep", sleep),
        ):
            with self.assertRaises(Stop):
                next(follow_changes(client, GROUP))
            self.assertEqual(len(asked), 2)
        return waits

    def test_21_no_server_makes_the_follower_wait_past_five_minutes(self):
        # A proxy's 429 asking for eleven days, then a stream whose `retry` asks for three years.
        refusal = whole(429, "text/plain", b"slow down", headers=[("Retry-After", "999999")])
        stream = sent_slowly(b"retry: 99999999999\n\n")
        self.assertEqual(self.waits_after(refusal, stream), [300.0, 300.0])

    def test_22_clients_sharing_a_headers_dict_keep_their_own_keys(self):
        # A runner's move answers 403 to the client's key (no signals:run), 404 (no such scan) to the
        # runner's: each client is seen sending its own key, Authorization and X-API-Key alike.
        shared = {"X-Shared": "yes"}

        def made():
            client = AuthenticatedClient(base_url=BASE_URL, token=KEY, headers=shared)
            runner = AuthenticatedClient(
                base_url=BASE_URL, token=RUNNER_KEY, auth_header_name="X-API-Key", prefix="", headers=shared
            )
            return client, runner

        clients = made()
        with clients[0], clients[1]:  # the client's httpx client is made first
            moves = [
                start_signal_scan.sync_detailed(account_group_id=GROUP, scan_id=UNKNOWN_SCAN, client=c) for c in clients
            ]
            self.assertEqual([move.status_code for move in moves], [403, 404])
        self.assertEqual(shared, {"X-Shared": "yes"}, "the caller's dict is left as it was, and holds no key")

        async def async_moves():
            clients = made()
            async with clients[0], clients[1]:
                moves = [
                    await start_signal_scan.asyncio_detailed(account_group_id=GROUP, scan_id=UNKNOWN_SCAN, client=c)
                    for c in clients
                ]
            return [move.status_code for move in moves]

        self.assertEqual(asyncio.run(async_moves()), [403, 404])
        self.assertEqual(shared, {"X-Shared": "yes"})

    def test_23_a_refusals_body_is_read_only_so_far_and_so_long(self):
        # A refusal whose body never ends, and one whose body drips: refused with their status as a
        # body that is not the envelope, within twice silence_seconds, having kept at most 64 KiB.
        def endless(handler, stopping):
            handler.send_response(404)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Connection", "close")
            handler.end_headers()
            while not stopping.is_set():
                handler.wfile.write(b" " * 65536)

        dripping = sent_slowly(b'{"error": ', *[b" "] * 200, every=0.1, content_type="application/json", status=410)
        for answer, status in [(endless, 404), (dripping, 410)]:
            with fake_server(answer) as (url, asked), AuthenticatedClient(base_url=url, token=KEY) as client:
                _, error = within(self, 5, lambda: next(follow_changes(client, GROUP, silence_seconds=1.0)))
                self.assertIsInstance(error, StreamRefused)
                self.assertEqual((error.status, error.code, error.details), (status, None, None))
                self.assertEqual(len(asked), 1)

    def test_28_a_follower_that_cannot_reach_the_service_says_so(self):
        # Nothing listens there: each attempt is told at WARNING, with the error and the wait. It
        # retried every 2 s, silent, as a follower with no changes to yield would be.
        nobody = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        url = f"http://127.0.0.1:{nobody.server_address[1]}"
        nobody.server_close()
        waits = []

        def sleep(seconds):
            waits.append(seconds)
            if len(waits) == 2:
                raise KeyboardInterrupt

        with (
            AuthenticatedClient(base_url=url, token=KEY) as client,
            unittest.mock.patch("signal_scans_client.changes.time.sleep", sleep),
            self.assertLogs("signal_scans_client.changes", "WARNING") as logged,
        ):
            with self.assertRaises(KeyboardInterrupt):
                next(follow_changes(client, GROUP))
        self.assertEqual(waits, [2.0, 2.0])
        self.assertEqual(len(logged.records), 2, logged.output)
        self.assertIn(f"the change stream of {GROUP} failed (ConnectError", logged.output[0])
        self.assertIn("asking again in 2.0 s", logged.output[0])

    def test_24_no_server_makes_the_follower_ask_again_at_once(self):
        # A 429 asking for no wait, then a stream whose `retry` asks for none: 100 ms each.
        refusal = whole(429, "text/plain", b"slow down", headers=[("Retry-After", "0")])
        stream = sent_slowly(b"retry: 0\n\n")
        self.assertEqual(self.waits_after(refusal, stream), [0.1, 0.1])

    def test_26_a_wait_that_is_not_a_number_of_seconds_is_ignored(self):
        # "²" is a digit to str.isdigit, not to int: a 429 and a stream asking for it are waited
        # on as if they had not asked (the stream's 2 s), rather than ending the follower.
        refusal = whole(429, "text/plain", b"slow down", headers=[("Retry-After", "\u00b2")])
        stream = sent_slowly("retry: \u00b2\n\n".encode())
        self.assertEqual(self.waits_after(refusal, stream), [2.0, 2.0])

    def test_25_every_change_carries_its_own_cursor(self):
        change = json.dumps(
            {
                "accountGroupId": GROUP,
                "at": "2026-12-05T00:00:00Z",
                "from": None,
                "reason": None,
                "scanId": UNKNOWN_SCAN,
                "to": "queued",
                "traceId": None,
            }
        ).encode()
        # A change with no id (none yet, or only an earlier block's): no cursor to resume right after
        # it, so not the service's stream.
        for stream in [b"retry: 100\n\ndata: " + change + b"\n\n", b"id: 7-1\n\ndata: " + change + b"\n\n"]:
            answer = sent_slowly(stream, hold=True)
            with fake_server(answer) as (url, asked), AuthenticatedClient(base_url=url, token=KEY) as client:
                _, error = within(self, 5, lambda: next(follow_changes(client, GROUP)))
                self.assertIsInstance(error, NotAnEventStream)
                self.assertIn("id", error.details)
                self.assertEqual(len(asked), 1)
        # An empty `id:` does not wipe the cursor: the next stream resumes after the last change.
        cursors = []

        def answer(*writes):
            def recorded(handler, stopping):
                cursors.append(handler.headers.get("Last-Event-ID"))
                sent_slowly(*writes)(handler, stopping)

            return recorded

        first = answer(b"retry: 100\nid: 7-1\n\nid: 7-2\ndata: " + change + b"\n\nid:\n\n")
        with fake_server(first, answer(b"id: 7-3\ndata: " + change + b"\n\n")) as (url, _):
            with AuthenticatedClient(base_url=url, token=KEY) as client:
                changes = follow_changes(client, GROUP, after="7-0")
                received, _ = within(self, 5, lambda: [next(changes).id for _ in range(2)])
                changes.close()
        self.assertEqual(received, ["7-2", "7-3"])
        self.assertEqual(cursors, ["7-0", "7-2"])

    def test_29_the_docstrings_say_what_a_caller_passes_and_gets(self):
        # The parameters' own descriptions, and what a nullable field's None means, reach the
        # docstrings (the generator read neither where the document had them).
        words = lambda documented: " ".join(documented.split())
        self.assertIn("Makes a retry safe", words(create_signal_scan.sync.__doc__))
        self.assertIn("limit (int | Unset): Scans per page, 1 to 100", words(list_signal_scans.sync.__doc__))
        self.assertIn("null when not found", words(CancelResult.__doc__))
        # Every status is documented (the `default` answer is the error envelope): an envelope
        # under a status the service does not list is an ErrorResponse, never raised, and the
        # docstrings say the flag raises for a body that is not the envelope, not for a status.
        with fake_server(envelope(418, "TEAPOT", "short and stout")) as (url, _):
            with AuthenticatedClient(base_url=url, token=KEY, raise_on_unexpected_status=True) as client:
                parsed = cancel_signal_scan.sync(account_group_id=GROUP, scan_id=QUEUED, client=client)
        self.assertIsInstance(parsed, ErrorResponse)
        for documented in [Client.__doc__, cancel_signal_scan.sync.__doc__, errors.UnexpectedStatus.__doc__]:
            self.assertIn("every status is documented", words(documented).lower())
            self.assertNotIn("undocumented status", words(documented))


if __name__ == "__main__":
    unittest.main(verbosity=2)
