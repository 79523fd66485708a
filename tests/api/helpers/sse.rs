//! A small reader of Server-Sent Events over a live response body, for the change-stream tests:
//! it reads `chunk()` by `chunk()` and hands out whole frames (one per blank-line-ended block).

use std::time::Duration;

use serde_json::Value;

use super::ApiResponse;

/// What the stream tells clients to wait before reconnecting, at its start and its end.
pub const RECONNECT: Frame = Frame::Retry(2000);

/// One block of the stream, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `retry: <ms>` alone: how long to wait before reconnecting (at the end of a stream).
    Retry(u64),
    /// The opening block: `retry: <ms>` and the `id:` of where the stream starts, no event.
    Opening { retry: u64, id: String },
    /// `: <text>` alone, e.g. a keep-alive.
    Comment(String),
    /// An event: `id:`, `event:` and `data:` fields.
    Event(SseEvent),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }
}

/// The `scanId` of each event, in order.
pub fn scan_ids(events: &[SseEvent]) -> Vec<String> {
    events
        .iter()
        .map(|event| event.json()["scanId"].as_str().unwrap().to_owned())
        .collect()
}

/// An open `text/event-stream` response.
#[derive(Debug)]
pub struct SseStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    /// Pass over scans' creations (events `from` null) like keep-alives: for tests about moves
    /// that create their scans while the stream is open.
    moves_only: bool,
}

impl SseStream {
    /// A stream that must open, past its opening block (read within `limit`).
    pub async fn opened(request: reqwest::RequestBuilder, limit: Duration) -> Self {
        Self::opened_at(request, limit).await.0
    }

    /// A stream that must open, and the id of where it starts, from its opening block: `retry:
    /// 2000` and that `id:` (read within `limit`).
    pub async fn opened_at(request: reqwest::RequestBuilder, limit: Duration) -> (Self, String) {
        let mut stream = Self::open(request)
            .await
            .unwrap_or_else(|refused| panic!("the stream was refused: {refused:?}"));
        match stream.next_frame(limit).await {
            Some(Frame::Opening { retry: 2000, id }) => (stream, id),
            other => panic!("a stream opens with retry: 2000 and its id: {other:?}"),
        }
    }

    /// Sends `request`: the stream when it answers 200 with `text/event-stream`, otherwise the
    /// answer read whole (which must be the envelope).
    pub async fn open(request: reqwest::RequestBuilder) -> Result<Self, ApiResponse> {
        let response = request.send().await.expect("request is answered");
        if response.status() != reqwest::StatusCode::OK {
            return Err(ApiResponse::from(response).await);
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &reqwest::header::HeaderValue| v.to_str().unwrap().to_owned())
        };
        assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
        // An event stream is never cached (`no-store` from the guard must not replace it).
        assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
        Ok(Self {
            response,
            buffer: Vec::new(),
            moves_only: false,
        })
    }

    /// From now on, creations are passed over like keep-alives (see `moves_only`).
    pub fn moves_only(mut self) -> Self {
        self.moves_only = true;
        self
    }

    fn passed_over(&self, event: &SseEvent) -> bool {
        self.moves_only && event.json()["from"].is_null()
    }

    /// The next frame, or `None` when the body ended; panics when none comes within `limit`.
    #[track_caller]
    pub fn next_frame(
        &mut self,
        limit: Duration,
    ) -> impl Future<Output = Option<Frame>> + Send + '_ {
        let caller = std::panic::Location::caller();
        async move {
            self.try_next_frame(limit)
                .await
                .unwrap_or_else(|| panic!("{caller}: no frame within {limit:?}"))
        }
    }

    /// The next frame (`Some(None)`: the body ended), or `None` when nothing came within `limit`.
    /// Nothing is lost when the time runs out: a frame is only taken whole.
    pub async fn try_next_frame(&mut self, limit: Duration) -> Option<Option<Frame>> {
        tokio::time::timeout(limit, self.read_frame()).await.ok()
    }

    /// The next event, passing over keep-alive comments; panics on anything else or after `limit`.
    #[track_caller]
    pub fn next_event(&mut self, limit: Duration) -> impl Future<Output = SseEvent> + Send + '_ {
        let caller = std::panic::Location::caller();
        async move {
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self.try_next_frame(left).await {
                    Some(Some(Frame::Event(event))) if self.passed_over(&event) => continue,
                    Some(Some(Frame::Event(event))) => return event,
                    Some(Some(Frame::Comment(_))) => continue,
                    Some(other) => panic!("{caller}: expected an event, got {other:?}"),
                    None => panic!("{caller}: no event within {limit:?}"),
                }
            }
        }
    }

    /// For `period`, only keep-alive comments arrive (no event, no end of the stream).
    #[track_caller]
    pub fn assert_no_event_for(
        &mut self,
        period: Duration,
    ) -> impl Future<Output = ()> + Send + '_ {
        let caller = std::panic::Location::caller();
        async move {
            let deadline = tokio::time::Instant::now() + period;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self.try_next_frame(left).await {
                    None => return,
                    Some(Some(Frame::Event(event))) if self.passed_over(&event) => continue,
                    Some(Some(Frame::Comment(_))) => continue,
                    Some(other) => panic!("{caller}: expected silence, got {other:?}"),
                }
            }
        }
    }

    async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(block) = self.take_block() {
                return Some(parse_block(&block));
            }
            match self.response.chunk().await.expect("the stream body reads") {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => {
                    assert!(
                        self.buffer.is_empty(),
                        "the body ended inside a frame: {:?}",
                        String::from_utf8_lossy(&self.buffer)
                    );
                    return None;
                }
            }
        }
    }

    /// A whole block (without its blank line) when the buffer holds one. The server ends lines
    /// with `\n` only.
    fn take_block(&mut self) -> Option<String> {
        let end = self.buffer.windows(2).position(|pair| pair == b"\n\n")?;
        let block: Vec<u8> = self.buffer.drain(..end + 2).take(end).collect();
        Some(String::from_utf8(block).expect("SSE is UTF-8"))
    }
}

fn parse_block(block: &str) -> Frame {
    let (mut id, mut event, mut data, mut retry, mut comment) = (None, None, None, None, None);
    for line in block.split('\n') {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "" => comment = Some(value),
            "id" => id = Some(value),
            "event" => event = Some(value),
            "data" => {
                let data: &mut String = data.get_or_insert_default();
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(&value);
            }
            "retry" => retry = Some(value.parse().expect("retry is a number of ms")),
            other => panic!("unknown SSE field {other:?} in {block:?}"),
        }
    }
    match (id, event, data, retry, comment) {
        (None, None, None, Some(retry), None) => Frame::Retry(retry),
        (Some(id), None, None, Some(retry), None) => Frame::Opening { retry, id },
        (None, None, None, None, Some(comment)) => Frame::Comment(comment),
        (id, event, Some(data), None, None) => Frame::Event(SseEvent { id, event, data }),
        _ => panic!("a block that is neither a retry, a comment nor an event: {block:?}"),
    }
}
