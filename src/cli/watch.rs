//! `scans watch`: one JSON line per committed status change, read from the change feed in the
//! database, or from the service's HTTP change stream (`--server`), resuming after a dropped
//! connection from the last event id.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};

use serde::{Deserialize, Serialize};

use super::config::{self, DatabaseArgs};
use super::{OR_SERVER, existing_store, remote};
use crate::domain::feed::FeedCursor;
use crate::domain::ids::AccountGroupId;
use crate::domain::scan::ScanChange;
use crate::service::feed::{FeedReader, Start};
use crate::service::{ScanService, ServiceError};

/// The longest pause between two attempts to reach the server.
const MAX_RECONNECT: Duration = Duration::from_secs(30);
/// A stream that sends nothing for this long is taken as dead and reconnected: four keep-alives
/// at the server's default `STREAM_KEEPALIVE_MS` (15 s). A connection that a network device
/// dropped without a word gives no error, and would be waited on for good.
const SILENCE: Duration = Duration::from_secs(60);

/// Prints changes from the database until the process is stopped. A database that goes away is
/// waited for: the feed resumes from its cursor, so nothing is printed twice or missed.
pub(super) async fn follow_database(
    database: &DatabaseArgs,
    group: Option<AccountGroupId>,
    after: Option<&str>,
) -> anyhow::Result<()> {
    let poll = database.feed_poll();
    let start = match after {
        Some(token) => Start::After(
            FeedCursor::decode(token)
                .ok_or_else(|| anyhow!("--after {token:?} is not a cursor a watch printed"))?,
        ),
        None => Start::Now,
    };
    let store = existing_store(database, OR_SERVER).await?;
    // As the HTTP stream answers 400 and 410.
    if let Start::After(cursor) = &start {
        let checked = ScanService::new(store.clone())
            .check_resume(group.as_ref(), cursor, "--after")
            .await;
        match checked {
            Err(ServiceError::ExpiredCursor) => bail!(
                "the changes after --after are no longer kept (AUDIT_RETENTION_DAYS): watch \
                 without --after, then re-read the current state of your scans"
            ),
            checked => checked?,
        }
    }
    let mut feed = FeedReader::open(store, start, group, poll).await?;
    tracing::info!("watching for status changes");
    loop {
        match feed.next().await {
            Ok(event) => {
                print(&Line {
                    id: &event.cursor,
                    change: &event.change,
                    trace_id: event.trace_id.as_deref(),
                });
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the audit trail; trying again");
                tokio::time::sleep(poll).await;
            }
        }
    }
}

/// A printed line: the change, where it stands (what `--after` resumes from) and the request
/// that made it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    id: &'a str,
    #[serde(flatten)]
    change: &'a ScanChange,
    /// null when the command line made the change.
    trace_id: Option<&'a str>,
}

fn print(line: &Line<'_>) {
    let line = serde_json::to_string(line).expect("a change serializes");
    out!("{line}");
}

/// Follows `GET /v1/accounts/{group}/signals/scans/changes` on `server` until the process is
/// stopped or the server refuses the key; reconnects with `Last-Event-ID` after anything else, and
/// from now (with a warning) when the server no longer keeps the changes after that id (410).
pub(super) async fn follow_server(
    server: &url::Url,
    group: &AccountGroupId,
    after: Option<String>,
) -> anyhow::Result<()> {
    let key = config::api_key("scans watch")?;
    let url = server
        .join(&format!("v1/accounts/{group}/signals/scans/changes"))
        .with_context(|| format!("--server {server}"))?;
    let client = reqwest::Client::new();
    let mut stream = SseReader { last_id: after };
    let mut reconnect = Duration::from_millis(2000);
    let mut failures = 0u32;
    loop {
        let mut request = client
            .get(url.clone())
            .bearer_auth(&key)
            .header("accept", "text/event-stream");
        if let Some(id) = &stream.last_id {
            request = request.header("last-event-id", id);
        }
        let pause = match request.send().await {
            Ok(response) if response.status().is_success() => {
                failures = 0;
                tracing::info!(server = %server, "watching for status changes");
                stream.read(response, &mut reconnect).await;
                reconnect
            }
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .map(Duration::from_secs);
                let body = response.text().await.unwrap_or_default();
                if status == reqwest::StatusCode::GONE && stream.last_id.is_some() {
                    // The changes after the last event were deleted by retention: they cannot
                    // be printed. Follow from now, and say so, so that whoever reads the lines
                    // re-reads the scans' current state.
                    tracing::warn!(%status, "the changes after the last event id are no longer kept; \
                        following from now: re-read the current state of your scans");
                    stream.last_id = None;
                    continue;
                }
                // The key, the permission or the request is wrong: retrying cannot help.
                if status.is_client_error() && status.as_u16() != 429 {
                    return Err(match serde_json::from_str(&body) {
                        Ok(envelope) => remote::refusal(&url, status, &envelope),
                        Err(_) => anyhow!("{url} answered {status}: {body}"),
                    });
                }
                tracing::warn!(%status, "the change stream is unavailable; retrying");
                retry_after.unwrap_or(reconnect)
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, "cannot reach the change stream; retrying");
                (reconnect * failures).min(MAX_RECONNECT)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// A change event's `data`: the change and the request that made it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    #[serde(flatten)]
    change: ScanChange,
    trace_id: Option<String>,
}

/// The Server-Sent Events the watch understands: `id`, `data` and `retry` fields.
struct SseReader {
    /// The id of the last event printed: where a reconnection resumes.
    last_id: Option<String>,
}

impl SseReader {
    /// Prints every event of `response` until it ends, breaks or falls silent for `SILENCE`.
    async fn read(&mut self, mut response: reqwest::Response, reconnect: &mut Duration) {
        let mut buffer = Vec::new();
        let (mut id, mut data) = (None::<String>, String::new());
        loop {
            let chunk = match tokio::time::timeout(SILENCE, response.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(_) => return,
                Err(_) => {
                    tracing::warn!(
                        silent_secs = SILENCE.as_secs(),
                        "the change stream fell silent; reconnecting"
                    );
                    return;
                }
            };
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                if line.is_empty() {
                    // The end of an event: print it, then remember where it stands.
                    if !data.is_empty() {
                        match serde_json::from_str::<Event>(&data) {
                            Ok(event) => print(&Line {
                                id: id.as_deref().unwrap_or_default(),
                                change: &event.change,
                                trace_id: event.trace_id.as_deref(),
                            }),
                            Err(error) => tracing::warn!(%error, "an event that is not a change"),
                        }
                    }
                    if id.is_some() {
                        self.last_id = id.take();
                    }
                    data.clear();
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => id = Some(value.to_owned()),
                    "data" => data.push_str(value),
                    "retry" => {
                        if let Ok(ms) = value.parse() {
                            *reconnect = Duration::from_millis(ms);
                        }
                    }
                    _ => {} // comments (keep-alives) and event names
                }
            }
        }
    }
}
