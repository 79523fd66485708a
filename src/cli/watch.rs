//! `scans watch`: one JSON line per committed status change, read from the change feed in the
//! database, or from the service's HTTP change stream (`--server`), resuming after a dropped
//! connection from the last event id.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};

use serde::{Deserialize, Serialize};

use super::config::{self, DatabaseArgs};
use super::{BadInput, OR_SERVER, existing_store, remote};
use crate::domain::feed::FeedCursor;
use crate::domain::ids::AccountGroupId;
use crate::domain::scan::ScanChange;
use crate::service::feed::{FeedError, FeedReader, Start};
use crate::service::{ScanService, ServiceError};

/// The longest pause between two attempts to reach the server, and the longest a stream's `retry`
/// may ask.
const MAX_RECONNECT: Duration = Duration::from_secs(30);
/// The shortest pause a stream's `retry` may ask: 0 asked again in a tight loop.
const MIN_RECONNECT: Duration = Duration::from_millis(100);
/// The longest a refusal's `Retry-After` is waited (as the Python client's `MAX_WAIT_SECONDS`): a
/// proxy's mistake or a hostile server's "never" stopped the watch for good, silently.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// A line or an event of the service's stream is well under this; a longer one is not its stream,
/// and is refused rather than kept in memory for as long as it grows.
const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Prints changes from the database until the process is stopped. A database that goes away is
/// waited for: the feed resumes from its cursor, so nothing is printed twice or missed.
pub(super) async fn follow_database(
    database: &DatabaseArgs,
    group: Option<AccountGroupId>,
    after: Option<&str>,
) -> anyhow::Result<()> {
    let poll = database.feed_poll();
    let start = match after {
        Some(token) => Start::After(FeedCursor::decode(token).ok_or_else(|| {
            BadInput(format!("--after {token:?} is not a cursor a watch printed"))
        })?),
        None => Start::Now,
    };
    let store = existing_store(database, OR_SERVER).await?;
    // As the HTTP stream answers its two 410s.
    if let Start::After(cursor) = &start {
        let checked = ScanService::new(store.clone())
            .check_resume(group.as_ref(), cursor)
            .await;
        match checked {
            Err(ServiceError::ExpiredCursor) => bail!(
                "the changes after --after are no longer kept (AUDIT_RETENTION_DAYS): watch \
                 without --after, then re-read the current state of your scans"
            ),
            Err(ServiceError::ForeignCursor) => bail!(
                "--after is no place in this database's change history (the database was \
                 restored from a backup or moved from another cluster, or no watch printed it): \
                 watch without --after, then re-read the current state of your scans"
            ),
            checked => checked?,
        }
    }
    let mut feed = FeedReader::open(store, start, group, poll).await?;
    // Said before any change is printed: a runner that stops before the first one resumes here.
    tracing::info!(
        after = %feed.cursor(),
        "watching for status changes (--after this cursor resumes from here)"
    );
    loop {
        match feed.next().await {
            Ok(event) => {
                print(&Line {
                    id: &event.cursor,
                    change: &event.change,
                    trace_id: event.trace_id.as_deref(),
                });
            }
            Err(FeedError::Expired) => bail!(
                "the retention sweep deleted changes this watch had yet to print \
                 (AUDIT_RETENTION_DAYS): watch again from now (without --after), then re-read \
                 the current state of your scans"
            ),
            Err(FeedError::Store(error)) => {
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
    let silence = config::watch_silence()?;
    let url = server
        .join(&format!("v1/accounts/{group}/signals/scans/changes"))
        .with_context(|| format!("--server {server}"))?;
    let client = reqwest::Client::new();
    let mut stream = SseReader {
        last_id: after,
        silence,
    };
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
                event_stream(&url, &response)?;
                tracing::info!(server = %server, "watching for status changes");
                stream
                    .read(response, &mut reconnect)
                    .await
                    .with_context(|| format!("{url} is not the service's change stream"))?;
                reconnect
            }
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .map(retry_after_pause);
                let body = response.text().await.unwrap_or_default();
                if status == reqwest::StatusCode::GONE && stream.last_id.is_some() {
                    // The changes after the last event cannot be printed: retention deleted them,
                    // or the database was restored from a backup taken before them. Follow from
                    // now, and say so, so that whoever reads the lines re-reads the scans' state.
                    let details = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|envelope| {
                            envelope["error"]["details"].as_str().map(str::to_owned)
                        })
                        .unwrap_or(body);
                    tracing::warn!(%status, %details, "the changes after the last event id cannot \
                        be printed; following from now: re-read the current state of your scans");
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
                // With its causes (`{:#}`): reqwest's own words name only the URL.
                let error = format!("{:#}", anyhow::Error::from(error));
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

/// Refuses a 200 that is not an event stream: a captive portal's login page or a proxy's own page
/// answers in the service's place, and, read as a stream, printed nothing and was asked again
/// for good.
fn event_stream(url: &url::Url, response: &reqwest::Response) -> anyhow::Result<()> {
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let content_type = content_type.as_deref().unwrap_or("no content-type");
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case("text/event-stream") {
        return Ok(());
    }
    bail!(
        "{url} answered {} with {content_type}, not text/event-stream: not the service's change \
         stream",
        response.status()
    )
}

/// The pause a stream's `retry: ms` asks, within [`MIN_RECONNECT`] and [`MAX_RECONNECT`].
fn retry_pause(ms: u64) -> Duration {
    Duration::from_millis(ms).clamp(MIN_RECONNECT, MAX_RECONNECT)
}

/// The pause a refusal's `Retry-After: secs` asks, within [`MIN_RECONNECT`] and
/// [`MAX_RETRY_AFTER`]: a proxy's `Retry-After: 0` would otherwise be asked again in a tight loop.
fn retry_after_pause(secs: u64) -> Duration {
    Duration::from_secs(secs).clamp(MIN_RECONNECT, MAX_RETRY_AFTER)
}

/// The Server-Sent Events the watch understands: `id`, `data` and `retry` fields.
struct SseReader {
    /// The id of the last event printed: where a reconnection resumes.
    last_id: Option<String>,
    /// A stream without a whole event or keep-alive for this long is taken as dead and asked
    /// again (`config::watch_silence`).
    silence: Duration,
}

/// The event being read: its fields so far.
#[derive(Default)]
struct Pending {
    id: Option<String>,
    data: String,
    /// Its lines' bytes, held to [`MAX_EVENT_BYTES`]; 0 while no field came.
    bytes: usize,
}

impl SseReader {
    /// Prints every event of `response` until it ends, breaks or goes `silence` without a whole
    /// event or keep-alive, however many bytes come meanwhile: counted from the last chunk, a
    /// server dripping a byte at a time held the watch for good. An error for a line or an
    /// event past [`MAX_EVENT_BYTES`].
    async fn read(
        &mut self,
        mut response: reqwest::Response,
        reconnect: &mut Duration,
    ) -> anyhow::Result<()> {
        let mut buffer = Vec::new();
        // The buffer's first bytes, known to hold no line end: each byte is searched once.
        let mut searched = 0;
        let mut event = Pending::default();
        let mut silent_at = tokio::time::Instant::now() + self.silence;
        loop {
            let chunk = match tokio::time::timeout_at(silent_at, response.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(_) => return Ok(()),
                Err(_) => {
                    tracing::warn!(
                        silence = ?self.silence,
                        "the change stream sent no event or keep-alive; reconnecting"
                    );
                    return Ok(());
                }
            };
            buffer.extend_from_slice(&chunk);
            while let Some(at) = buffer[searched..].iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=searched + at).collect();
                searched = 0;
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                if line.len() > MAX_EVENT_BYTES {
                    return Err(too_long("a line"));
                }
                if self.take(line, &mut event, reconnect)? {
                    silent_at = tokio::time::Instant::now() + self.silence;
                }
            }
            searched = buffer.len();
            if buffer.len() > MAX_EVENT_BYTES {
                return Err(too_long("a line"));
            }
        }
    }

    /// Takes one line into `event`, printing the event a blank line ends. Whether the line was
    /// news from the stream, a whole event or a comment (the server's keep-alive): what silence
    /// counts from. A blank line alone is not: a server could drip those.
    fn take(
        &mut self,
        line: &str,
        event: &mut Pending,
        reconnect: &mut Duration,
    ) -> anyhow::Result<bool> {
        if line.is_empty() {
            let whole = event.bytes > 0;
            self.end(std::mem::take(event));
            return Ok(whole);
        }
        if line.starts_with(':') {
            return Ok(true);
        }
        event.bytes += line.len() + 1;
        if event.bytes > MAX_EVENT_BYTES {
            return Err(too_long("an event"));
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => event.id = Some(value.to_owned()),
            "data" => event.data.push_str(value),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    *reconnect = retry_pause(ms);
                }
            }
            _ => {} // event names
        }
        Ok(false)
    }

    /// The end of an event: print it, then remember where it stands. A block with an id and no
    /// data is the stream's opening (where it starts): said, for a runner that stops before the
    /// first change to resume there.
    fn end(&mut self, event: Pending) {
        if let (Some(id), true) = (&event.id, event.data.is_empty()) {
            tracing::info!(after = %id, "the stream opened at this cursor (--after it resumes from here)");
        }
        if !event.data.is_empty() {
            match serde_json::from_str::<Event>(&event.data) {
                Ok(parsed) => print(&Line {
                    id: event.id.as_deref().unwrap_or_default(),
                    change: &parsed.change,
                    trace_id: parsed.trace_id.as_deref(),
                }),
                Err(error) => tracing::warn!(%error, "an event that is not a change"),
            }
        }
        if event.id.is_some() {
            self.last_id = event.id;
        }
    }
}

/// Why a stream is refused for a line or an event past [`MAX_EVENT_BYTES`].
fn too_long(what: &str) -> anyhow::Error {
    anyhow!(
        "{what} over {} KiB (the service's are well under that)",
        MAX_EVENT_BYTES / 1024
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streams_retry_is_held_between_100_ms_and_30_s() {
        assert_eq!(retry_pause(0), Duration::from_millis(100));
        assert_eq!(retry_pause(2000), Duration::from_millis(2000));
        assert_eq!(retry_pause(94_608_000_000), MAX_RECONNECT);
        assert_eq!(retry_pause(u64::MAX), MAX_RECONNECT);
    }

    #[test]
    fn a_refusals_retry_after_is_waited_at_most_five_minutes() {
        assert_eq!(retry_after_pause(0), MIN_RECONNECT);
        assert_eq!(retry_after_pause(2), Duration::from_secs(2));
        assert_eq!(retry_after_pause(999_999), Duration::from_secs(300));
        assert_eq!(retry_after_pause(u64::MAX), Duration::from_secs(300));
    }
}
