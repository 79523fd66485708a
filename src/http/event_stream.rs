//! The `text/event-stream` (Server-Sent Events) wire format of the change streams, written
//! straight into one buffer per wake-up of a stream.
//!
//! axum's `Sse` sends every event as a frame of its own, and hyper writes at most 16 frames per
//! system call; a stream that wakes up with a page of changes at hand would pay a write (and its
//! client a read) for every 16 events, and a line-splitting pass over each event's JSON. Here all
//! the events a stream has at hand leave in one frame. The format is fixed and small: fields are
//! `id`, `event`, `data`, `retry` and comments, each block ended by a blank line.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Serialize;

/// A `200` whose body is `frames`, each a run of whole blocks written by [`EventBlocks`].
pub(super) fn event_stream_response<S>(frames: S) -> Response
where
    S: Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
{
    (
        [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(frames),
    )
        .into_response()
}

/// Blocks of Server-Sent Events gathered for one frame of the body.
#[derive(Debug, Default)]
pub(super) struct EventBlocks(Vec<u8>);

impl EventBlocks {
    /// `retry:`: how long a client waits before it reconnects.
    pub(super) fn retry(&mut self, after: Duration) {
        self.line("retry: ", &after.as_millis().to_string());
        self.0.push(b'\n');
    }

    /// The opening block: `retry:` and the `id:` of where the stream starts, with no event. A client
    /// takes the id as its last event id (EventSource sets `lastEventId` at the block's end, data
    /// or not), so a reconnection before any event arrives resumes where this stream started
    /// rather than from the new stream's start, which would skip what committed in between.
    pub(super) fn opening(&mut self, after: Duration, id: &str) {
        self.line("retry: ", &after.as_millis().to_string());
        self.line("id: ", id);
        self.0.push(b'\n');
    }

    /// A comment (`: text`), which clients ignore: a keep-alive.
    pub(super) fn comment(&mut self, text: &str) {
        self.line(": ", text);
        self.0.push(b'\n');
    }

    /// One event: its `id` (what a client resumes from), its name and its data as JSON.
    pub(super) fn event(&mut self, id: &str, name: &str, data: &impl Serialize) {
        self.line("id: ", id);
        self.line("event: ", name);
        self.0.extend_from_slice(b"data: ");
        // Compact JSON is one line: serde_json escapes every control character inside strings,
        // so the data needs no splitting into several `data:` lines.
        serde_json::to_writer(&mut self.0, data).expect("an event's data serializes");
        self.0.extend_from_slice(b"\n\n");
    }

    /// The bytes gathered so far.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Room for `bytes` more without growing the buffer step by step as events are written.
    pub(super) fn reserve(&mut self, bytes: usize) {
        self.0.reserve(bytes);
    }

    /// The frame, leaving this empty for the next one.
    pub(super) fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.0))
    }

    /// A field of one line. Our ids, names and comments are plain text; a line break inside one
    /// would end the field early and let the rest pass for other fields.
    fn line(&mut self, field: &str, value: &str) {
        assert!(
            !value.contains(['\n', '\r']),
            "an SSE field value is one line: {value:?}"
        );
        self.0.extend_from_slice(field.as_bytes());
        self.0.extend_from_slice(value.as_bytes());
        self.0.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_written_as_clients_read_them() {
        let mut blocks = EventBlocks::default();
        blocks.opening(Duration::from_secs(2), "7-11");
        blocks.retry(Duration::from_secs(2));
        blocks.comment("keep-alive");
        blocks.event(
            "7-12.5-0",
            "scan.status_changed",
            &serde_json::json!({"a": "x\ny"}),
        );
        assert_eq!(
            String::from_utf8(blocks.take().to_vec()).unwrap(),
            "retry: 2000\nid: 7-11\n\nretry: 2000\n\n: keep-alive\n\nid: 7-12.5-0\nevent: scan.status_changed\n\
             data: {\"a\":\"x\\ny\"}\n\n"
        );
        assert!(blocks.is_empty(), "take leaves it empty");
    }

    #[test]
    #[should_panic(expected = "one line")]
    fn a_line_break_in_a_field_is_refused() {
        EventBlocks::default().comment("a\nid: forged");
    }
}
