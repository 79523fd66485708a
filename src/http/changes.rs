//! `GET /v1/accounts/{accountGroupId}/signals/scans/changes`: an account group's status changes as
//! Server-Sent Events, resumable exactly from the `id` of the last event received.
//!
//! Runners follow cancels here with an API key (`signals:read` is enough) instead of database
//! credentials. Every stream of a process shares the process's one reader of the audit trail
//! (`feed::ChangeHub`), so a stream holds no database connection.

use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use dashmap::DashMap;
use futures_util::Stream;
use tokio::sync::watch;
use tokio::time::Sleep;
use uuid::Uuid;

use super::auth::presented_key;
use super::error::{
    ApiError, Limit, Problems, STREAM_CAP_RETRY_SECS, UnknownNames, both, unknown_cursor,
};
use super::event_stream::{EventBlocks, event_stream_response};
use super::extract::{ApiPath, GroupPath};
use super::headers::{SentTwice, single};
use super::metrics::{RATE_LIMITED, STREAMS_ENDED};
use super::openapi::responses as doc;
use super::views::ScanStatusChanged;
use crate::domain::feed::FeedCursor;
use crate::domain::ids::ScanId;
use crate::domain::keys::Principal;
use crate::domain::scan::ScanStatus;
use crate::service::feed::{FeedError, FeedEvent, Follower, Start};
use crate::service::{ScanService, ServiceError};

/// The SSE event name of a status change.
pub(crate) const EVENT_NAME: &str = "scan.status_changed";
/// What clients wait before reconnecting (`retry:`), in milliseconds.
const RECONNECT_MS: u64 = 2000;
/// The most `scanId` filters one stream takes.
const MAX_SCAN_FILTERS: usize = 100;
/// A stream writes the changes it has at hand together, up to about this many bytes a frame
/// (a thousand-row page read by a stream that fell behind leaves in several).
const FRAME_BYTES: usize = 64 * 1024;

/// Why a stream ended: its `reason` in the closing log line and in
/// `change_streams_ended_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Its `STREAM_MAX_AGE_MS` was up.
    Age,
    /// The process is stopping.
    Shutdown,
    /// Its key no longer authenticates (revoked or expired).
    KeyInvalid,
    /// The retention sweep deleted changes it had yet to send.
    Swept,
    /// Its client left, or stopped reading and its connection was closed (`HTTP_IDLE_TIMEOUT_MS`).
    ClientGone,
}

impl Ending {
    pub(crate) const ALL: [Self; 5] = [
        Self::Age,
        Self::Shutdown,
        Self::KeyInvalid,
        Self::Swept,
        Self::ClientGone,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Age => "age",
            Self::Shutdown => "shutdown",
            Self::KeyInvalid => "key_invalid",
            Self::Swept => "swept",
            Self::ClientGone => "client_gone",
        }
    }
}

/// The limits of change streams.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// A comment line this often keeps proxies from closing an idle stream, notices a client that
    /// went away, and re-checks the key.
    pub keepalive: Duration,
    /// Open streams per API key in this process.
    pub max_per_key: usize,
    /// A stream ends after this long, so clients reconnect and authenticate again.
    pub max_age: Duration,
}

/// The streams of this process: their limits, their count per key, and the signal that ends
/// them all at shutdown.
#[derive(Clone)]
pub struct ChangeStreams {
    settings: StreamSettings,
    open: Arc<DashMap<Uuid, usize>>,
    closing: watch::Sender<bool>,
}

impl ChangeStreams {
    pub fn new(settings: StreamSettings) -> Self {
        Self {
            settings,
            open: Arc::new(DashMap::new()),
            closing: watch::Sender::new(false),
        }
    }

    /// Ends every stream now (at shutdown: a stream is not an in-flight request to wait for).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// The streams open now, every key's.
    pub(crate) fn open_count(&self) -> usize {
        self.open.iter().map(|entry| *entry.value()).sum()
    }

    /// A slot for one more stream of `key`, or `None` when it has all it may (counted with the
    /// other limits' refusals).
    fn admit(&self, key: Uuid) -> Option<StreamSlot> {
        let mut count = self.open.entry(key).or_insert(0);
        if *count >= self.settings.max_per_key {
            tracing::info!(api_key.id = %key, open = *count, "too many change streams for this key");
            metrics::counter!(RATE_LIMITED, "limit" => Limit::StreamsPerKey.label()).increment(1);
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            open: self.open.clone(),
            key,
        })
    }
}

/// Holds one of a key's stream slots until the stream is dropped.
struct StreamSlot {
    open: Arc<DashMap<Uuid, usize>>,
    key: Uuid,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.open.remove_if_mut(&self.key, |_, count| {
            *count -= 1;
            *count == 0
        });
    }
}

/// What a stream was asked for, parsed once.
struct StreamRequest {
    start: Start,
    scans: Option<HashSet<ScanId>>,
    statuses: Option<HashSet<ScanStatus>>,
}

impl StreamRequest {
    /// Every parameter, each problem named. `Last-Event-ID` (what an EventSource sends when it
    /// reconnects) wins over `after` (what the first connection was opened with).
    fn parse(query: Option<&str>, headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut problems = Problems::default();
        let mut after = None;
        let mut scans = HashSet::new();
        let mut statuses = HashSet::new();
        let mut scan_filters = 0;
        let mut unknown = UnknownNames::default();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match name.as_ref() {
                "after" if after.is_some() => problems.push("after may be given once"),
                "after" => after = Some(value.into_owned()),
                "scanId" => {
                    scan_filters += 1;
                    match ScanId::parse(&value) {
                        Ok(scan) => {
                            scans.insert(scan);
                        }
                        Err(error) => problems.push(format!("scanId {error}")),
                    }
                }
                "status" => match value.parse::<ScanStatus>() {
                    Ok(status) => {
                        statuses.insert(status);
                    }
                    Err(_) => problems.push(
                        "status must be one of queued, running, completed, failed, cancelled",
                    ),
                },
                name => unknown.add(name),
            }
        }
        if let Some(problem) = unknown.problem("after, scanId and status") {
            problems.push(problem);
        }
        if scan_filters > MAX_SCAN_FILTERS {
            problems.push(format!(
                "scanId may be given at most {MAX_SCAN_FILTERS} times"
            ));
        }
        // An empty id is what an EventSource sends before any event had one: no cursor. Sent
        // twice, it is refused, as a doubled `after` is.
        let sent = single(headers, "last-event-id");
        let last_event_id = match sent.map(|value| value.map(|v| v.to_str())) {
            Err(SentTwice) => {
                problems.push("Last-Event-ID may be given once");
                None
            }
            Ok(Some(Ok(value))) if value.trim().is_empty() => None,
            Ok(Some(Ok(value))) => Some(value.trim().to_owned()),
            Ok(Some(Err(_))) => {
                problems.push(unknown_cursor("Last-Event-ID"));
                None
            }
            Ok(None) => None,
        };
        let (cursor, cursor_source) = match (last_event_id, after) {
            (Some(id), after) => {
                // The `after` a stream was opened with comes back on every reconnect: it no
                // longer counts, yet it must still be a cursor, as the document says it is.
                // Its form only, not what this version reads in it: after an upgrade that changes
                // what ids mean, a stream opened with an older `after` still resumes by its header.
                let after = after.filter(|after| !after.is_empty());
                if after.is_some_and(|after| !has_event_id_form(&after)) {
                    problems.push(unknown_cursor("after"));
                }
                (Some(id), Some("Last-Event-ID"))
            }
            (None, Some(after)) if !after.is_empty() => (Some(after), Some("after")),
            (None, _) => (None, None),
        };
        let start = match (cursor.as_deref().map(FeedCursor::decode), cursor_source) {
            (Some(Some(cursor)), _) => Start::After(cursor),
            (Some(None), Some(source)) => {
                problems.push(unknown_cursor(source));
                Start::Now
            }
            _ => Start::Now,
        };
        problems.into_result()?;
        Ok(Self {
            start,
            scans: (!scans.is_empty()).then_some(scans),
            statuses: (!statuses.is_empty()).then_some(statuses),
        })
    }

    fn wants(&self, event: &FeedEvent) -> bool {
        self.scans
            .as_ref()
            .is_none_or(|scans| scans.contains(&event.change.scan_id))
            && self
                .statuses
                .as_ref()
                .is_none_or(|statuses| statuses.contains(&event.change.to))
    }
}

/// Whether `id` has the form the document gives an event id (its `pattern`): parts joined by
/// `.`, each 1 to 20 digits, `-`, and 1 to 19 digits.
fn has_event_id_form(id: &str) -> bool {
    let digits = |part: &str, most: usize| {
        (1..=most).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
    };
    id.split('.').all(|part| {
        part.split_once('-')
            .is_some_and(|(position, order)| digits(position, 20) && digits(order, 19))
    })
}

/// `GET /v1/accounts/{accountGroupId}/signals/scans/changes`
#[utoipa::path(
    get,
    path = "/v1/accounts/{accountGroupId}/signals/scans/changes",
    operation_id = "followSignalScanChanges",
    tag = "signal scans",
    summary = "Follow status changes",
    description = "The account group's scan status changes as they commit, as Server-Sent Events: \
        each change is one `scan.status_changed` event whose `id` is a cursor. Reconnect with \
        `Last-Event-ID` (or `?after=`) set to the last id received to get every change after it, in \
        order, none missed and none repeated; without either the stream starts now. A cursor from \
        before changes that are no longer kept (`AUDIT_RETENTION_DAYS`) answers 410 \
        `CURSOR_EXPIRED`: reconnect without one and re-read the scans' current state; so does one \
        that is no place in this database's change history (handed out before the database was \
        restored from a backup, or ahead of every change). Event ids are \
        opaque. A scan's creation is sent too (`from` null, `to` the status it was created in: \
        `queued` through the API). The stream opens with `retry: 2000` and \
        an `id:` of where it starts (no event), so a reconnection before any event resumes from there, \
        sends `: keep-alive` comments, and ends after \
        `STREAM_MAX_AGE_MS` (reconnect to continue). Errors before the stream opens are the usual \
        envelope. Requires `signals:read` or `signals:write` and access to the account group; at \
        most `STREAM_MAX_PER_KEY` open streams per key (429 past it). This page cannot show a \
        stream, whose answer never ends, and \"Try it out\" holds one of the key's streams until the page \
        is closed: follow one with `curl -N` and the key in `Authorization`.",
    params(
        ("accountGroupId" = inline(crate::domain::ids::AccountGroupId), Path,
            description = "Account group ID that scopes the request: 24 hexadecimal characters, either case."),
        ("after" = Option<String>, Query, pattern = "^([0-9]{1,20}-[0-9]{1,19}(\\.[0-9]{1,20}-[0-9]{1,19})*)?$",
            description = "Resume after this event id (an opaque cursor; empty: none). `Last-Event-ID` wins when both are sent."),
        ("scanId" = Option<Vec<crate::domain::ids::ScanId>>, Query, explode = true, max_items = 100,
            description = "Only these scans (repeat the parameter, at most 100)."),
        ("status" = Option<Vec<ScanStatus>>, Query, explode = true,
            description = "Only changes to these statuses, e.g. `cancelled`."),
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = "^([0-9]{1,20}-[0-9]{1,19}(\\.[0-9]{1,20}-[0-9]{1,19})*)?$",
            description = "The id of the last event received: resume right after it (empty: none)."),
    ),
    responses(
        (status = 200, description = "A stream of `scan.status_changed` events; each `data` is a ScanStatusChanged.",
            content_type = "text/event-stream", body = doc::ChangeEvent),
        (status = 400, response = doc::BadStreamRequest),
        (status = 403, response = doc::ReadForbidden),
        (status = 410, response = doc::CursorExpired),
        (status = 429, response = doc::StreamRateLimited),
    )
)]
pub(crate) async fn follow_changes(
    State(service): State<ScanService>,
    State(streams): State<ChangeStreams>,
    principal: Principal,
    method: Method,
    headers: HeaderMap,
    ApiPath(path): ApiPath<GroupPath>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (group, request) = both(
        path.parse(),
        StreamRequest::parse(query.as_deref(), &headers),
    )?;
    // The service's own rule, asked before the stream cap so that 403 comes before 429.
    ScanService::check_access(&principal, &group)?;
    let slot = streams
        .admit(principal.key_id)
        .ok_or(ApiError::RateLimited {
            limit: Limit::StreamsPerKey,
            retry_after_secs: STREAM_CAP_RETRY_SECS,
        })?;
    let follower = service
        .follow_changes(&principal, &group, request.start.clone())
        .await?;
    // A HEAD (axum routes it to this GET) is answered as its GET would be, without a stream:
    // one opened only to be dropped unread was counted as a client gone.
    if method == Method::HEAD {
        return Ok(event_stream_response(futures_util::stream::empty()));
    }
    // The key is checked again at every keep-alive, so a revoked key stops receiving.
    let key = presented_key(&headers)?.to_owned();
    let stream = ChangeStream {
        follower,
        request,
        service,
        key,
        settings: streams.settings,
        keepalive: Box::pin(tokio::time::sleep(streams.settings.keepalive)),
        expiry: Box::pin(tokio::time::sleep(streams.settings.max_age)),
        closing: streams.closing.subscribe(),
        _slot: slot,
        ending: None,
        opened: tokio::time::Instant::now(),
        span: tracing::Span::current(),
    };
    Ok(event_stream_response(stream.frames()))
}

/// One open stream.
struct ChangeStream {
    follower: Follower,
    request: StreamRequest,
    service: ScanService,
    key: String,
    settings: StreamSettings,
    /// The next keep-alive, and the end of the stream's life: each one timer for the stream's
    /// whole life, reset rather than made anew for every change sent.
    keepalive: Pin<Box<Sleep>>,
    expiry: Pin<Box<Sleep>>,
    closing: watch::Receiver<bool>,
    _slot: StreamSlot,
    /// Why it ends, once it does on its own; a stream dropped with none was its client's doing,
    /// unless the process was stopping (a stream its client left unread is cut at the drain's
    /// end, never having seen the signal).
    ending: Option<Ending>,
    opened: tokio::time::Instant,
    /// The request's span, for the closing line (the body outlives the handler).
    span: tracing::Span,
}

/// Every stream's end is one line and one count, whoever ended it: a stream lives long after its
/// request's own closing line, which is written when its answer begins.
impl Drop for ChangeStream {
    fn drop(&mut self) {
        let stopping = *self.closing.borrow();
        let reason = self
            .ending
            .unwrap_or(if stopping {
                Ending::Shutdown
            } else {
                Ending::ClientGone
            })
            .label();
        metrics::counter!(STREAMS_ENDED, "reason" => reason).increment(1);
        let _request = self.span.enter();
        tracing::info!(
            reason,
            lived_ms = self.opened.elapsed().as_millis() as u64,
            "a change stream ended"
        );
    }
}

/// What woke a waiting stream.
enum Wake {
    Change(Result<FeedEvent, FeedError>),
    Tick,
    End(Ending),
}

/// What a stream sends next.
enum Next {
    Change(Box<FeedEvent>),
    KeepAlive,
    End(Ending),
}

impl ChangeStream {
    /// The body: the opening `retry:` with the id of where the stream starts, then one frame per
    /// wake-up holding everything there is to send (the changes at hand, or a keep-alive), and a
    /// last `retry:` at the end.
    fn frames(self) -> impl Stream<Item = Result<Bytes, Infallible>> {
        let mut opening = EventBlocks::default();
        let start = self.follower.cursor().to_string();
        opening.opening(Duration::from_millis(RECONNECT_MS), &start);
        let opening = opening.take();
        futures_util::stream::unfold((Some(self), Some(opening)), |(stream, first)| async move {
            if let Some(first) = first {
                return Some((Ok(first), (stream, None)));
            }
            let mut stream = stream?;
            let mut frame = EventBlocks::default();
            loop {
                match stream.next().await {
                    Next::Change(event) => {
                        stream.write_changes(*event, &mut frame);
                        if frame.is_empty() {
                            // None this stream asked for.
                            continue;
                        }
                        return Some((Ok(frame.take()), (Some(stream), None)));
                    }
                    Next::KeepAlive => {
                        frame.comment("keep-alive");
                        return Some((Ok(frame.take()), (Some(stream), None)));
                    }
                    Next::End(ending) => {
                        stream.ending = Some(ending);
                        // A last reconnection hint, then the end of the body.
                        frame.retry(Duration::from_millis(RECONNECT_MS));
                        return Some((Ok(frame.take()), (None, None)));
                    }
                }
            }
        })
    }

    /// Writes `first`, then every change already at hand, each one the stream asked for, until
    /// the frame is full.
    fn write_changes(&mut self, first: FeedEvent, frame: &mut EventBlocks) {
        // A page of the feed under load holds tens of changes of about 300 bytes each.
        frame.reserve(16 * 1024);
        let mut next = Some(first);
        while let Some(event) = next {
            if self.request.wants(&event) {
                let data = ScanStatusChanged::from(&event);
                frame.event(&event.cursor, EVENT_NAME, &data);
            }
            if frame.len() >= FRAME_BYTES {
                return;
            }
            next = self.follower.next_at_hand();
        }
    }

    async fn next(&mut self) -> Next {
        // The keep-alive keeps its own rhythm, however many changes pass (filtered out or not):
        // it is also when the key is checked again. Biased, the stream's end and the key's check
        // come before any change when they are due: a client that took no bytes for long (an
        // HTTP/2 window left closed) is polled again only when it opens it, and then received
        // what was committed meanwhile, after its key was revoked or its stream's age was up.
        loop {
            let woken = tokio::select! {
                biased;
                () = &mut self.expiry => Wake::End(Ending::Age),
                _ = self.closing.wait_for(|closing| *closing) => Wake::End(Ending::Shutdown),
                () = &mut self.keepalive => Wake::Tick,
                event = self.follower.next() => Wake::Change(event),
            };
            match woken {
                Wake::Change(Ok(event)) => return Next::Change(Box::new(event)),
                Wake::Change(Err(FeedError::Expired)) => {
                    // Going on would skip the deleted changes: the client reconnects from its
                    // last id, and is answered 410.
                    return Next::End(Ending::Swept);
                }
                Wake::Change(Err(FeedError::Store(error))) => {
                    // The database is away: keep the stream; the follower resumes from its
                    // cursor when it is back.
                    tracing::warn!(%error, "a change stream cannot read the audit trail; retrying");
                    tokio::select! {
                        () = &mut self.keepalive => return self.keep_alive().await,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Wake::Tick => return self.keep_alive().await,
                Wake::End(ending) => return Next::End(ending),
            }
        }
    }

    /// A keep-alive, unless the key no longer authenticates.
    async fn keep_alive(&mut self) -> Next {
        let next = tokio::time::Instant::now() + self.settings.keepalive;
        self.keepalive.as_mut().reset(next);
        // Boxed, like the follower's reads: an open stream should not carry a query's space.
        match Box::pin(self.service.authenticate(&self.key)).await {
            Err(ServiceError::Unauthenticated(_)) => Next::End(Ending::KeyInvalid),
            // A database that cannot answer now does not end the stream.
            _ => Next::KeepAlive,
        }
    }
}
