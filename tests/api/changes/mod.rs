//! `GET …/signals/scans/changes`: the Server-Sent Events stream of an account group's status
//! changes, followed over real sockets against the real router (and the real binary where the
//! process's own settings or signals are under test). One file per job of the stream:
//!
//! - `delivery.rs`: what reaches an open stream and when (hints, batching, groups, filters, the
//!   shared reader, keep-alives);
//! - `resume.rs`: cursors, so that a client reconnecting gets every change exactly once;
//! - `requests.rs`: opening a stream (parameters, the order of checks, the per-key cap);
//! - `lifetime.rs`: what ends a stream and what must not (revocation, max age, timeouts, SIGTERM);
//! - `outage.rs`: the database or the listener's connection going away under open streams;
//! - `backlog.rs`: resuming from far back, a follower lagging past the hub's buffer, big frames.

mod backlog;
mod delivery;
mod lifetime;
mod outage;
mod requests;
mod resume;

use std::time::Duration;

use signal_scans::domain::ids::{AccountGroupId, ScanId};
use signal_scans::domain::keys::Permission;
use signal_scans::domain::scan::ScanStatus;
use signal_scans::http::changes::StreamSettings;
use signal_scans::store::Store;
use sqlx::{Executor, PgConnection};
use uuid::Uuid;

use crate::helpers::process::ServerProcess;
use crate::helpers::sse::{Frame, RECONNECT, SseEvent, SseStream, scan_ids};
use crate::helpers::{
    ApiResponse, Backend, ServeDefault, Settings, TestApp, TestDatabase, group, key_in,
    migrated_database, store_options,
};

/// Long enough for anything that should happen promptly on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(5);

/// How long a stream is watched to show that nothing more arrives.
const QUIET: Duration = Duration::from_millis(400);

fn changes_path(group: &AccountGroupId, query: &str) -> String {
    format!("/v1/accounts/{group}/signals/scans/changes{query}")
}

/// A request for a stream: a client of its own, with no overall timeout (the body lasts as long
/// as the test reads it; every wait is bounded by the reader instead).
fn stream_request(url: &str, key: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new().get(url).bearer_auth(key)
}

/// Opens a stream that must be admitted, and reads its opening `retry:`. These tests are about
/// moves of scans they create while it is open: the creations are passed over (tests/api/runners.rs
/// follows them).
async fn follow(request: reqwest::RequestBuilder) -> SseStream {
    SseStream::opened(request, SOON).await.moves_only()
}

/// A stream request that must be refused, with the envelope.
async fn refused(request: reqwest::RequestBuilder) -> ApiResponse {
    match SseStream::open(request).await {
        Ok(stream) => panic!("the stream opened: {stream:?}"),
        Err(response) => response,
    }
}

fn query_after(cursor: &str) -> String {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("after", cursor)
        .finish();
    format!("?{query}")
}

/// A `signals:read` key on `group`: (secret, id).
async fn read_key(app: &TestApp, group: &AccountGroupId) -> (String, Uuid) {
    app.key_for(&[Permission::SignalsRead], &[*group]).await
}

/// The real binary serving a fresh, migrated database (with `env` added to its settings), a
/// store on that database to arrange with, and a group with a reader's and a writer's key.
struct Process {
    server: ServerProcess,
    store: Store,
    group: AccountGroupId,
    reader: String,
    writer: String,
    /// Dropped last: the server must not outlive its database.
    _db: TestDatabase,
}

impl Process {
    async fn start(backend: Backend, env: &[(&str, &str)]) -> Self {
        let (db, store) = migrated_database(backend).await;
        let mut settings = vec![("DATABASE_URL", db.url.as_str())];
        settings.extend_from_slice(env);
        let server = ServerProcess::start(&settings).await;
        let group = group();
        Self {
            server,
            reader: key_in(&store, Permission::SignalsRead, &[group]).await,
            writer: key_in(&store, Permission::SignalsWrite, &[group]).await,
            store,
            group,
            _db: db,
        }
    }

    /// A running scan of the group, and a stream of the group opened after it was created.
    async fn running_scan_and_stream(&self) -> (ScanId, SseStream) {
        let scan = self
            .store
            .create_scan(&self.group, ScanStatus::Running)
            .await
            .unwrap()
            .id;
        let url = self.server.url(&changes_path(&self.group, ""));
        (scan, follow(stream_request(&url, &self.reader)).await)
    }
}

/// Cancels `count` fresh running scans of `group` one after the other (so commit order is
/// request order), returning them in that order.
async fn cancel_fresh_scans(
    app: &TestApp,
    writer: &str,
    group: &AccountGroupId,
    count: usize,
) -> Vec<ScanId> {
    let mut scans = Vec::with_capacity(count);
    for _ in 0..count {
        let scan = app.scan(group, ScanStatus::Running).await;
        app.cancel_ok(writer, group, &scan).await;
        scans.push(scan);
    }
    scans
}

/// Cancels `scans` one after the other; their moves as a stream shows them.
async fn cancel_fresh_scans_of(
    app: &TestApp,
    writer: &str,
    group: &AccountGroupId,
    scans: &[ScanId],
) -> Vec<(String, String, String)> {
    for scan in scans {
        app.cancel_ok(writer, group, scan).await;
    }
    cancels_of(scans, "running")
}

async fn next_events(stream: &mut SseStream, count: usize) -> Vec<SseEvent> {
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        events.push(stream.next_event(SOON).await);
    }
    events
}

/// (scanId, from, to) of each event, to compare with what was done.
fn moves(events: &[SseEvent]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|event| {
            let data = event.json();
            let text = |field: &str| data[field].as_str().unwrap_or_default().to_owned();
            (text("scanId"), text("from"), text("to"))
        })
        .collect()
}

fn cancels_of(scans: &[ScanId], from: &str) -> Vec<(String, String, String)> {
    scans
        .iter()
        .map(|scan| (scan.to_string(), from.to_owned(), "cancelled".to_owned()))
        .collect()
}

fn id_of(event: &SseEvent) -> String {
    let id = event.id.clone().expect("every change has an id");
    assert!(!id.is_empty(), "{event:?}");
    id
}

/// Every frame that arrives during `period`; `None` marks the end of the body.
async fn frames_during(stream: &mut SseStream, period: Duration) -> Vec<Option<Frame>> {
    let deadline = tokio::time::Instant::now() + period;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match stream.try_next_frame(left).await {
            Some(None) => {
                frames.push(None);
                return frames;
            }
            Some(frame) => frames.push(frame),
            None => return frames,
        }
    }
}

fn keep_alive() -> Option<Frame> {
    Some(Frame::Comment("keep-alive".into()))
}

/// `frames` are keep-alives only, at least `at_least` of them.
#[track_caller]
fn assert_keep_alives(frames: &[Option<Frame>], at_least: usize) {
    assert!(
        frames.iter().all(|frame| *frame == keep_alive()),
        "only keep-alives: {frames:?}"
    );
    assert!(
        frames.len() >= at_least,
        "{at_least} keep-alives at least: {frames:?}"
    );
}

/// A service whose poll is a minute away, so that changes reach streams by their hints alone; a
/// group of its own, a writer's key and a reader's key of that group.
async fn app_without_poll(
    backend: Backend,
    settings: Settings,
) -> (TestApp, AccountGroupId, String, String) {
    let app = settings
        .with_feed_poll(Duration::from_secs(60))
        .spawn(backend)
        .await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    (app, group, writer, reader)
}

/// A test app with these stream settings and every other setting the default.
async fn streams_app(backend: Backend, streams: StreamSettings) -> TestApp {
    TestApp::spawn_with(backend, with_streams(streams)).await
}

/// A test app whose streams send a keep-alive every `keepalive`, the rest the defaults.
async fn keeping_alive_every(backend: Backend, keepalive: Duration) -> TestApp {
    let streams = StreamSettings {
        keepalive,
        ..StreamSettings::default()
    };
    streams_app(backend, streams).await
}

fn with_streams(streams: StreamSettings) -> Settings {
    let mut settings = Settings::default();
    settings.http.streams = streams;
    settings
}

/// Cancels `scan` in the open transaction `held`, with its audit row (trace id `held`), and
/// commits: a change whose transaction began before the changes committed meanwhile.
async fn cancel_and_commit(held: &mut PgConnection, scan: &ScanId) {
    sqlx::query(
        "UPDATE signal_scans SET status = 'cancelled', updated_at = now(), finished_at = now(),
             cancelled_at = now() WHERE id = $1",
    )
    .bind(scan.as_str())
    .execute(&mut *held)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO signal_scan_events (scan_id, from_status, to_status, trace_id, occurred_at)
         VALUES ($1, 'running', 'cancelled', 'held', now())",
    )
    .bind(scan.as_str())
    .execute(&mut *held)
    .await
    .unwrap();
    held.execute("COMMIT").await.unwrap();
}

/// Reads events until `received` holds `total`, as a client does: when the stream ends, it
/// reconnects with the id of the last event received (`Last-Event-ID`). Fails after `limit`.
/// Returns the stream it ends on, and how many times it reconnected.
async fn read_as_a_client(
    mut stream: SseStream,
    url: &str,
    key: &str,
    received: &mut Vec<SseEvent>,
    total: usize,
    limit: Duration,
) -> (SseStream, usize) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut reconnections = 0;
    while received.len() < total {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match stream.try_next_frame(left).await {
            // Creations are passed over, as `follow`'s streams do.
            Some(Some(Frame::Event(event))) if event.json()["from"].is_null() => continue,
            Some(Some(Frame::Event(event))) => received.push(event),
            Some(Some(_)) => continue,
            Some(None) => {
                let mut request = stream_request(url, key);
                if let Some(last) = received.last() {
                    request = request.header("Last-Event-ID", id_of(last));
                }
                stream = follow(request).await;
                reconnections += 1;
            }
            None => panic!(
                "{} of {total} changes within {limit:?} ({reconnections} reconnections): {:?}",
                received.len(),
                moves(received)
            ),
        }
    }
    (stream, reconnections)
}
