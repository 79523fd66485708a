//! The trace id of a request: taken from W3C `traceparent`, else a safe `X-Request-Id`, else new.
//!
//! It is held in a task-local for the life of the request so that every envelope, including
//! those built by axum rejections, the fallback and the panic handler, carries it without each
//! caller threading it through.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

const REQUEST_ID_HEADER: &str = "x-request-id";
/// As a header name made once: inserting by `&str` copies a non-standard name on every response.
static REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
const TRACEPARENT_HEADER: &str = "traceparent";
const MAX_REQUEST_ID_LEN: usize = 64;

tokio::task_local! {
    static CURRENT: TraceId;
}

/// The id that ties a response to its log lines.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceId(Arc<str>);

impl TraceId {
    /// A random (version 4) UUID, from the thread's generator: `Uuid::new_v4` asks the kernel
    /// (`getrandom`), one system call per request.
    fn new_random() -> Self {
        let mut buffer = uuid::Uuid::encode_buffer();
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        Self(Arc::from(&*id.simple().encode_lower(&mut buffer)))
    }

    /// The id a request carries, by the documented order of preference. A header sent more
    /// than once is not taken: which copy counts differs between proxies (some join them into
    /// one line), and W3C's trace context discards a duplicated `traceparent`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let header = |name| {
            let value = super::headers::single(headers, name).ok().flatten();
            value.and_then(|v| v.to_str().ok())
        };
        header(TRACEPARENT_HEADER)
            .and_then(trace_id_of_traceparent)
            .or_else(|| header(REQUEST_ID_HEADER).filter(|id| is_safe_request_id(id)))
            .map(|id| Self(id.into()))
            .unwrap_or_else(Self::new_random)
    }

    /// The id of the request being served; a fresh one outside any request.
    pub fn current() -> Self {
        CURRENT
            .try_with(Clone::clone)
            .unwrap_or_else(|_| Self::new_random())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({})", self.0)
    }
}

impl serde::Serialize for TraceId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TraceId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<TraceId>()
            .cloned()
            .unwrap_or_else(TraceId::current))
    }
}

/// Layer, outermost: fixes the request's trace id, serves the request inside its scope, and
/// echoes the id in `X-Request-Id`. A tower layer rather than `from_fn`: it runs on every request,
/// and its future is not boxed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AssignTraceId;

impl<S> Layer<S> for AssignTraceId {
    type Service = TraceIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceIdService { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TraceIdService<S> {
    inner: S,
}

impl<S, B> Service<Request> for TraceIdService<S>
where
    S: Service<Request, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = TraceIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let id = TraceId::from_headers(request.headers());
        request.extensions_mut().insert(id.clone());
        let header = HeaderValue::from_str(id.as_str()).ok();
        // The layers below may answer in `call` itself (a request over the limits), so the id is
        // in scope there as well as while the future runs.
        let inner = CURRENT.sync_scope(id.clone(), || self.inner.call(request));
        TraceIdFuture {
            inner: CURRENT.scope(id, inner),
            header,
        }
    }
}

pin_project_lite::pin_project! {
    /// The request's future inside its trace id's scope; adds `X-Request-Id` to the answer.
    pub struct TraceIdFuture<F: Future> {
        #[pin]
        inner: TaskLocalFuture<TraceId, F>,
        header: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for TraceIdFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(value) = this.header.take() {
            response.headers_mut().insert(REQUEST_ID.clone(), value);
        }
        Poll::Ready(Ok(response))
    }
}

/// The trace-id field of a valid W3C `traceparent` (version-traceid-parentid-flags).
fn trace_id_of_traceparent(value: &str) -> Option<&str> {
    let mut fields = value.trim().split('-');
    let (version, trace_id, parent_id, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let lower_hex =
        |s: &str, len| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let all_zero = |s: &str| s.bytes().all(|b| b == b'0');
    let valid = lower_hex(version, 2)
        && version != "ff"
        // Version 00 has exactly four fields; later versions may append more.
        && (version != "00" || fields.next().is_none())
        && lower_hex(trace_id, 32)
        && !all_zero(trace_id)
        && lower_hex(parent_id, 16)
        && !all_zero(parent_id)
        && lower_hex(flags, 2);
    valid.then_some(trace_id)
}

/// A request id we are willing to echo into bodies, headers and logs.
fn is_safe_request_id(value: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_wins_over_a_request_id() {
        let id = TraceId::from_headers(&headers(&[
            ("traceparent", TRACEPARENT),
            ("x-request-id", "abc"),
        ]));
        assert_eq!(id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    /// Which copy of a header sent twice counts differs between proxies, and W3C discards a
    /// doubled `traceparent`: neither is taken (HTTP review; the first copy was).
    #[test]
    fn a_header_sent_twice_is_not_taken() {
        let other = "00-11111111111111111111111111111111-00f067aa0ba902b7-01";
        let id = TraceId::from_headers(&headers(&[
            ("traceparent", TRACEPARENT),
            ("traceparent", other),
            ("x-request-id", "abc"),
        ]));
        assert_eq!(id.as_str(), "abc");
        let id = TraceId::from_headers(&headers(&[
            ("x-request-id", "abc"),
            ("x-request-id", "abc"),
        ]));
        assert_ne!(id.as_str(), "abc");
        assert_eq!(id.as_str().len(), 32);
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(trace_id_of_traceparent(bad), None, "{bad}");
        }
        assert!(
            trace_id_of_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xx")
                .is_some()
        );
    }

    #[test]
    fn only_safe_request_ids_are_echoed() {
        assert!(is_safe_request_id("req-123_abc.def:1"));
        assert!(!is_safe_request_id(""));
        assert!(!is_safe_request_id(&"a".repeat(65)));
        assert!(!is_safe_request_id("has space"));
        assert!(!is_safe_request_id("quote\"d"));
        let generated = TraceId::from_headers(&headers(&[("x-request-id", "bad value")]));
        assert_eq!(generated.as_str().len(), 32);
        assert!(
            generated
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
}
