"""Following an account group's change stream: every status change after a cursor, in order.

Written by hand: scripts/gen-python-client.sh copies it from scripts/python-client/changes.py, and
leaves the stream's operation out of the generated modules, which read a whole body before they
parse it (a stream's body does not end).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import httpx

try:
    # With `httpx_args={"http2": True}` (httpx's `http2` extra): the h2 package raises its own
    # ProtocolError for a PING that follows the service's GOAWAY as it closes the connection
    # gracefully (at its stop, or idle), which RFC 9113 allows and h2 refuses; httpx does not wrap
    # it while a response's body is read (a stream open at the stop).
    from h2.exceptions import ProtocolError as _Http2ProtocolError
except ImportError:  # HTTP/1.1 only: nothing raises it.

    class _Http2ProtocolError(Exception):  # type: ignore[no-redef]
        pass

from .client import AuthenticatedClient
from .models import ScanStatus, ScanStatusChanged

# Each attempt that fails (no connection, a 429 or a 5xx) is told here, at WARNING: a follower that
# never reaches the service (a mistyped URL) would otherwise look like one with no changes to yield.
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """One change and its cursor: pass `id` as `after` to resume right after this change. Every
    change has one, its own: an event without an `id:` line of its own is not the service's
    stream (`NotAnEventStream`), never a change with another's cursor or none."""

    id: str
    data: ScanStatusChanged


class StreamRefused(Exception):
    """The service refused the stream, and asking again will not change that: 400 (a malformed
    parameter or cursor), 401 or 403 (the key), 404, or 410 `CURSOR_EXPIRED` (changes after the
    cursor are no longer kept, or the cursor is no place in the database's change history, as after
    a restore from a backup: follow again without `after`, then re-read the scans you track).
    `code`, `message`, `details` and `trace_id` are the error envelope's (as in the generated
    operations' `ErrorResponse`), None when the body is not the envelope."""

    def __init__(
        self,
        status: int,
        code: str | None,
        details: str | None,
        trace_id: str | None,
        message: str | None = None,
    ):
        said = ": ".join(part for part in (code, message, details) if part)
        super().__init__(f"{status} {said}" + (f" (trace id {trace_id})" if trace_id else ""))
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.trace_id = trace_id


class NotAnEventStream(StreamRefused):
    """A 200 that is not the service's event stream: its Content-Type is not `text/event-stream`
    (a captive portal's login page, a proxy's own page), or a line or an event of it runs past
    64 KiB (the service's are well under that). Something answers in the service's place, and
    asking again will not help until that changes; so does a change without an `id:` line of its
    own (no cursor to resume right after it). `status` is 200, `code`, `message` and `trace_id`
    None, `details` says what came instead."""

    def __init__(self, status: int, details: str):
        super().__init__(status, None, details, None)


def follow_changes(
    client: AuthenticatedClient,
    account_group_id: str,
    *,
    after: str | None = None,
    scan_ids: Iterable[str] = (),
    statuses: Iterable[ScanStatus | str] = (),
    silence_seconds: float = 60.0,
    on_open: Callable[[str], None] | None = None,
) -> Iterator[Change]:
    """Yields each change of the account group after `after` (None: from now), for ever.

    The stream is opened again after the last id received whenever it ends (the service ends each
    after `STREAM_MAX_AGE_MS`, and at its shutdown), drops, falls silent, or is refused for a while
    (429 after its `Retry-After`, 5xx, no connection: after the stream's `retry` delay, 2 s; either
    wait is at least `MIN_WAIT_SECONDS`, 100 ms, and at most `MAX_WAIT_SECONDS`, five minutes,
    whatever a server or proxy asks). Silent is `silence_seconds` (four keep-alives at the service's
    default) without a whole event or keep-alive line, however many bytes come meanwhile: noticed as
    the next byte arrives, or, if none does, `silence_seconds` after the last one (the read
    timeout), so within twice `silence_seconds` at most. No change is missed or repeated across
    reconnections. Raises `StreamRefused` where asking again would not help, and its subclass
    `NotAnEventStream` for a 200 that is not an event stream. A refusal's body is read up to 64 KiB
    and within the same bound as silence (each read `silence_seconds` at most, the whole body
    noticed past `silence_seconds` as its next byte arrives): a longer or slower one is a refusal
    that is not the envelope (`code`, `details` and `trace_id` None), as a body that is not JSON is.
    `scan_ids` and `statuses` filter the changes, as the stream's `scanId` and `status` parameters.
    `on_open`, when given, is called with the id a stream starts after, each time a stream is
    open (its opening block, which the service always sends, has arrived) and before any of its
    changes is yielded: what committed before the stream opened is behind that id, and anything
    later arrives on the stream. A runner lists the queued scans there: a scan queued meanwhile is
    in the list or the stream, never in neither. It is called at every reconnection too, where
    the stream resumes after the last change yielded and listing again finds nothing new. An `httpx.TransportError` it raises counts as the stream's own: the stream is opened
    again after the wait, and `on_open` called again; any other exception ends the following. A
    connection lost is the stream's own too, over HTTP/2 as well (the h2 package's `ProtocolError`
    at the service's graceful close, which httpx does not wrap): the stream is opened again.
    Each attempt that fails (a refusal waited out, a connection that cannot be made or is lost) is
    logged at WARNING by the `signal_scans_client.changes` logger, with what failed and the wait: a
    follower that never reaches the service says so there (a stream the service ends is not a
    failure, and is not logged).
    """
    params = [("scanId", scan) for scan in scan_ids]
    params += [("status", str(status)) for status in statuses]
    path = f"/v1/accounts/{account_group_id}/signals/scans/changes"
    timeout = httpx.Timeout(10.0, read=silence_seconds)
    cursor, retry = after, 2.0
    while True:
        headers = {"Accept": "text/event-stream"}
        if cursor:
            headers["Last-Event-ID"] = cursor
        wait = retry
        try:
            request = client.get_httpx_client().stream("GET", path, params=params, headers=headers, timeout=timeout)
            with request as response:
                if response.status_code != 200:
                    wait = _refusal_wait(response, retry, silence_seconds)
                    logger.warning(
                        "the change stream of %s answered %s; asking again in %s s",
                        account_group_id,
                        response.status_code,
                        wait,
                    )
                elif not _is_event_stream(response):
                    content_type = response.headers.get("Content-Type", "no Content-Type")
                    raise NotAnEventStream(200, f"the answer is {content_type}, not text/event-stream")
                else:
                    silence = _Silence(silence_seconds)
                    opening = True
                    for block in _blocks(_lines(silence.until(response.iter_bytes())), silence):
                        if "retry" in block and _is_number(block["retry"]):
                            retry = _held(int(block["retry"]) / 1000)
                        # An empty `id:` would reset the cursor: the next stream would start from
                        # now and miss what came meanwhile. The cursor is only ever moved on.
                        if block.get("id"):
                            cursor = block["id"]
                        if opening and on_open is not None and cursor:
                            on_open(cursor)
                        opening = False
                        if "data" in block:
                            if not block.get("id"):
                                raise NotAnEventStream(200, "a change without an id of its own")
                            data = ScanStatusChanged.from_dict(json.loads(block["data"]))
                            yield Change(id=cursor, data=data)
                    wait = retry
        except (httpx.TransportError, _Http2ProtocolError) as error:
            logger.warning(
                "the change stream of %s failed (%s: %s); asking again in %s s",
                account_group_id,
                type(error).__name__,
                error,
                wait,
            )
        time.sleep(wait)


def _is_event_stream(response: httpx.Response) -> bool:
    media_type = response.headers.get("Content-Type", "").partition(";")[0]
    return media_type.strip().lower() == "text/event-stream"


class _Silence:
    """When a stream counts as silent: `seconds` after its last whole event or keep-alive line (or
    after the caller last asked for the next one), not after its last byte."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.heard()

    def heard(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def until(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """`chunks` until the stream is silent, checked after each is read (and its lines taken)."""
        for chunk in chunks:
            yield chunk
            if time.monotonic() > self.deadline:
                return


# The longest wait before asking for the stream again: a `Retry-After` or `retry` beyond it (a
# proxy's mistake, a hostile server's "never") would stop the follower for good, silently.
MAX_WAIT_SECONDS = 300.0
# The shortest: a `Retry-After: 0` or `retry: 0` would have the follower ask again in a tight loop
# (thousands of requests a second). The same floor as `scans watch --server`'s.
MIN_WAIT_SECONDS = 0.1


def _is_number(text: str) -> bool:
    """ASCII digits only: `str.isdigit` also takes "²" and other digits `int` refuses."""
    return text.isascii() and text.isdigit()


def _held(seconds: float) -> float:
    """A wait a server or a proxy asks for, held within `MIN_WAIT_SECONDS` and `MAX_WAIT_SECONDS`."""
    return min(max(seconds, MIN_WAIT_SECONDS), MAX_WAIT_SECONDS)

# A line or an event of the service's stream is well under this; a longer one is not its stream,
# and is refused rather than kept in memory.
_MAX_EVENT_BYTES = 64 * 1024
_LINE_END = re.compile(rb"\r\n|\r|\n")


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The stream's lines, ended by CR, LF or CRLF only: httpx's `iter_lines` (as `str.splitlines`)
    also breaks at U+2028, U+0085 and others, which a change's JSON text may hold (in a reason)."""
    pending = bytearray()
    for chunk in chunks:
        # What was pending holds no line end, but for a CR at its very end.
        searched = max(len(pending) - 1, 0)
        pending += chunk
        # A CR at the very end may be the first half of a CRLF: it waits for the next chunk.
        end = len(pending) - 1 if pending.endswith(b"\r") else len(pending)
        start = 0
        for line_end in _LINE_END.finditer(pending, searched, end):
            if line_end.start() - start > _MAX_EVENT_BYTES:
                raise NotAnEventStream(200, f"a line runs past {_MAX_EVENT_BYTES} bytes")
            yield pending[start : line_end.start()].decode("utf-8", errors="replace")
            start = line_end.end()
        del pending[:start]
        if len(pending) > _MAX_EVENT_BYTES:
            raise NotAnEventStream(200, f"a line runs past {_MAX_EVENT_BYTES} bytes")


def _blocks(lines: Iterable[str], silence: _Silence) -> Iterator[dict[str, str]]:
    """The stream's blocks (fields up to a blank line), each field by name; comments skipped. A
    block, or a comment (the service's keep-alive), is news from the stream: `silence` is told."""
    block: dict[str, str] = {}
    size = 0
    for line in lines:
        if line == "":
            if block:
                silence.heard()
                yield block
                silence.heard()
            block, size = {}, 0
        elif line.startswith(":"):
            silence.heard()
        else:
            size += len(line.encode("utf-8")) + 1
            if size > _MAX_EVENT_BYTES:
                raise NotAnEventStream(200, f"an event runs past {_MAX_EVENT_BYTES} bytes")
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            block[name] = block[name] + "\n" + value if name == "data" and name in block else value


def _refusal_wait(response: httpx.Response, retry: float, silence_seconds: float) -> float:
    """How long to wait before asking again after a refusal, or `StreamRefused` if that is no use."""
    if response.status_code == 429 or response.status_code >= 500:
        after = response.headers.get("Retry-After", "")
        return _held(float(after)) if _is_number(after) else retry
    try:
        envelope = json.loads(_refusal_body(response, silence_seconds))
    except ValueError:
        envelope = None
    # What a proxy answers in the service's place need not be the envelope: its status still is.
    envelope = envelope if isinstance(envelope, dict) else {}
    error = envelope.get("error") if isinstance(envelope.get("error"), dict) else {}
    code, details, trace_id = _text(error.get("code")), _text(error.get("details")), _text(envelope.get("traceId"))
    raise StreamRefused(response.status_code, code, details, trace_id, message=_text(error.get("message")))


def _refusal_body(response: httpx.Response, silence_seconds: float) -> bytes:
    """A refusal's body, or nothing when it runs past `_MAX_EVENT_BYTES` or is still coming after
    `silence_seconds` (each read waits at most that long too). The service's envelope is well under
    both; a body that never ends, or drips, would hold the follower and fill its memory for ever."""
    body, deadline = bytearray(), time.monotonic() + silence_seconds
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > _MAX_EVENT_BYTES or time.monotonic() > deadline:
                return b""
    except httpx.TimeoutException:
        return b""
    return bytes(body)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
