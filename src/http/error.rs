//! `ApiError`: the only place an outcome becomes a status, a code and an envelope.

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::envelope::{Envelope, ErrorBody};
use super::metrics::ClientLeft;
use crate::domain::scan::ScanStatus;
use crate::service::ServiceError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request itself is malformed; the string names what.
    #[error("validation failed: {0}")]
    Validation(String),
    /// A 400 in form only: the client went away while sending its body, so nobody reads the
    /// answer, which is counted and logged as 499 (see [`ClientLeft`]).
    #[error("the client left while sending its body")]
    ClientLeft,
    /// 401: no usable API key; the string says why.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 403: the key lacks a permission or access to an account group.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404: no such resource, or one the caller may not know about.
    #[error("not found: {0}")]
    NotFound(String),
    /// 405: the path exists but not for this method (axum adds `Allow`); the method as
    /// `http::method::label` names it, never a client's made-up token.
    #[error("method {0} not allowed")]
    MethodNotAllowed(&'static str),
    /// 422: the scan is in a status that does not allow the cancel.
    #[error("scan is {current}")]
    NotCancellable { current: ScanStatus },
    /// 422: the scan is in a status that does not allow a runner's move.
    #[error("scan is {current}")]
    NotMovable { current: ScanStatus },
    /// 422: the `Idempotency-Key` started a scan of another account group.
    #[error("idempotency key reused for another account group")]
    IdempotencyKeyReused,
    /// 410: a change stream's cursor from before changes that are no longer kept: start again
    /// from now and re-read the current state.
    #[error("cursor expired")]
    CursorExpired,
    /// 410 too: a change stream's cursor that is no place in this database's change history
    /// (from before the database was restored from a backup, or made up): the same remedy.
    #[error("cursor from another history")]
    CursorForeign,
    /// 429: a limit was reached; its details say which.
    #[error("rate limited ({limit:?}) for {retry_after_secs} s")]
    RateLimited { limit: Limit, retry_after_secs: u64 },
    /// 500: something we did not expect; the cause is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// 502: the database is unreachable or too slow; the cause is logged, never sent.
    #[error("upstream error: {0}")]
    Upstream(String),
    /// 503, from `/readyz` only: this instance cannot serve now; the cause is logged.
    #[error("not ready: {0}")]
    NotReady(String),
}

/// The most bytes of a `details`: whatever a client sends, an error answer stays small.
const MAX_DETAILS_BYTES: usize = 1024;
/// The most problems a 400's `details` names; the others are counted.
const MAX_NAMED_PROBLEMS: usize = 8;

/// What is wrong with one request, for a 400's `details`: each problem named once (a thousand
/// copies of one bad parameter are one problem), at most `MAX_NAMED_PROBLEMS` of them, the rest
/// counted.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    named: Vec<String>,
    /// Every distinct problem beyond the named ones (bounded by the request's size limits).
    others: std::collections::HashSet<String>,
}

impl Problems {
    pub(crate) fn push(&mut self, problem: impl Into<String>) {
        let problem = problem.into();
        if self.named.contains(&problem) {
            return;
        }
        match self.named.len() < MAX_NAMED_PROBLEMS {
            true => self.named.push(problem),
            false => {
                self.others.insert(problem);
            }
        }
    }

    /// `Ok` when nothing is wrong, else the 400 naming what is.
    pub(crate) fn into_result(self) -> Result<(), ApiError> {
        if self.named.is_empty() {
            return Ok(());
        }
        let mut details = self.named.join("; ");
        match self.others.len() {
            0 => {}
            1 => details.push_str("; and 1 more problem"),
            more => details.push_str(&format!("; and {more} more problems")),
        }
        Err(ApiError::Validation(details))
    }
}

/// The unknown query parameters of a request, told as one problem: the first few distinct names
/// that are fit to echo (short and plain), and how many there were in all.
#[derive(Default)]
pub(crate) struct UnknownNames {
    shown: Vec<String>,
    count: usize,
}

/// The most unknown parameter names one answer echoes.
const UNKNOWN_NAMES_SHOWN: usize = 5;

impl UnknownNames {
    pub(crate) fn add(&mut self, name: &str) {
        self.count += 1;
        let plain = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        let shown = match plain {
            true => format!("`{name}`"),
            false => "(a name that is not plain text)".to_owned(),
        };
        if self.shown.len() < UNKNOWN_NAMES_SHOWN && !self.shown.contains(&shown) {
            self.shown.push(shown);
        }
    }

    /// The problem, if any name was unknown; `accepted` lists the names that are known.
    pub(crate) fn problem(&self, accepted: &str) -> Option<String> {
        let names = match self.count {
            0 => return None,
            1 => format!("unknown query parameter {}", self.shown[0]),
            count => format!(
                "unknown query parameters ({count} in all) {}",
                self.shown.join(", ")
            ),
        };
        Some(format!("{names}: only {accepted} are accepted"))
    }
}

/// Both values, or the error of each: a request's parameters, headers and body are each read,
/// so that a 400 names every part that is wrong, not only the first.
pub(crate) fn both<A, B>(
    first: Result<A, ApiError>,
    second: Result<B, ApiError>,
) -> Result<(A, B), ApiError> {
    match (first, second) {
        (Ok(first), Ok(second)) => Ok((first, second)),
        (Err(ApiError::Validation(first)), Err(ApiError::Validation(second))) => {
            let mut problems = Problems::default();
            problems.push(first);
            problems.push(second);
            problems
                .into_result()
                .map(|()| unreachable!("two problems were named"))
        }
        (Err(error), _) | (_, Err(error)) => Err(error),
    }
}

/// `details` cut to [`MAX_DETAILS_BYTES`] at a character boundary, marked as cut.
fn bounded(mut details: String) -> String {
    if details.len() > MAX_DETAILS_BYTES {
        let mut end = MAX_DETAILS_BYTES - '…'.len_utf8();
        while !details.is_char_boundary(end) {
            end -= 1;
        }
        details.truncate(end);
        details.push('…');
    }
    details
}

/// Which limit a 429 met: its details name it, so that a client, and an operator reading them,
/// know whether to slow down, fix a key or close a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The key's request rate (`RATE_LIMIT_PER_SECOND`, `RATE_LIMIT_BURST`).
    KeyRate,
    /// The address's failed authentications (`AUTH_FAILURES_PER_MINUTE`).
    AuthFailures,
    /// The key's open change streams (`STREAM_MAX_PER_KEY`).
    StreamsPerKey,
}

/// `Retry-After` of a key that has all its streams open ([`Limit::StreamsPerKey`]).
pub(crate) const STREAM_CAP_RETRY_SECS: u64 = 2;

impl Limit {
    pub(crate) const ALL: [Limit; 3] = [Limit::KeyRate, Limit::AuthFailures, Limit::StreamsPerKey];

    /// Its `limit` label in `rate_limited_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Limit::KeyRate => "per_key",
            Limit::AuthFailures => "auth_failures",
            Limit::StreamsPerKey => "streams_per_key",
        }
    }

    fn reached(self) -> &'static str {
        match self {
            Limit::KeyRate => "this API key is over its request rate",
            Limit::AuthFailures => "too many failed authentications from this address",
            Limit::StreamsPerKey => "this API key has as many change streams open as it may",
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) | ApiError::ClientLeft => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotCancellable { .. }
            | ApiError::NotMovable { .. }
            | ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::CursorExpired | ApiError::CursorForeign => StatusCode::GONE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_)
            | ApiError::ClientLeft
            | ApiError::NotCancellable { .. }
            | ApiError::NotMovable { .. }
            | ApiError::IdempotencyKeyReused => "VALIDATION_ERROR",
            ApiError::Unauthorized(_) => "UNAUTHORIZED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            ApiError::CursorExpired | ApiError::CursorForeign => "CURSOR_EXPIRED",
            ApiError::RateLimited { .. } => "RATE_LIMITED",
            ApiError::Internal(_) => "INTERNAL_ERROR",
            ApiError::Upstream(_) => "UPSTREAM_ERROR",
            ApiError::NotReady(_) => "NOT_READY",
        }
    }

    /// The human summary, one per status, as the spec names them.
    fn message(&self) -> &'static str {
        match self {
            ApiError::Validation(_) | ApiError::ClientLeft => "Request validation failed",
            ApiError::Unauthorized(_) => "Invalid or missing API key",
            ApiError::Forbidden(_) => "Missing required permission",
            ApiError::NotFound(_) => "Resource not found",
            ApiError::MethodNotAllowed(_) => "Method not allowed",
            ApiError::NotCancellable { .. } => "Scan is not in a cancellable status",
            ApiError::NotMovable { .. } => "Scan is not in a status that allows this change",
            ApiError::IdempotencyKeyReused => "Idempotency key already used",
            ApiError::CursorExpired | ApiError::CursorForeign => "Cursor expired",
            ApiError::RateLimited { .. } => "Rate limit exceeded",
            ApiError::Internal(_) => "Internal server error",
            ApiError::Upstream(_) => "Upstream service error",
            ApiError::NotReady(_) => "Service not ready",
        }
    }

    /// Exactly what was wrong, for the client; internal causes stay in the logs.
    fn details(&self) -> String {
        match self {
            ApiError::Validation(details)
            | ApiError::Unauthorized(details)
            | ApiError::Forbidden(details)
            | ApiError::NotFound(details) => details.clone(),
            ApiError::ClientLeft => BODY_UNREADABLE.into(),
            ApiError::MethodNotAllowed(super::method::OTHER) => {
                "this method is not allowed on this path; see the Allow header".into()
            }
            ApiError::MethodNotAllowed(method) => {
                format!("method {method} is not allowed on this path; see the Allow header")
            }
            ApiError::NotCancellable { current } | ApiError::NotMovable { current } => {
                format!("currentStatus={current}")
            }
            ApiError::IdempotencyKeyReused => {
                "Idempotency-Key was used for another account group within 24 hours; send a new key"
                    .into()
            }
            ApiError::CursorExpired => "changes after this cursor are no longer kept \
                (AUDIT_RETENTION_DAYS): reconnect without a cursor, then re-read the current state \
                of your scans"
                .into(),
            ApiError::CursorForeign => "this cursor is no place in this database's change \
                history (the database was restored from a backup or moved from another cluster, \
                or the cursor was not sent by this service): reconnect without a cursor, then \
                re-read the current state of your scans"
                .into(),
            ApiError::RateLimited {
                limit,
                retry_after_secs,
            } => format!("{}; retry after {retry_after_secs} s", limit.reached()),
            // The cause stays in the logs; the client gets where to find it.
            ApiError::Internal(_) => {
                "an error of the service; its cause is logged under this traceId".into()
            }
            ApiError::Upstream(_) | ApiError::NotReady(_) => {
                "the database is unavailable or did not answer in time; retry later".into()
            }
        }
    }

    /// The envelope this error answers with (the trace id is the current request's).
    pub fn envelope(&self) -> Envelope<()> {
        Envelope::failure(ErrorBody {
            code: self.code(),
            message: self.message(),
            details: bounded(self.details()),
        })
    }

    /// The cause an operator needs and a client must never see: for 500, 502 and 503 only.
    fn hidden_cause(self) -> Option<HiddenCause> {
        match self {
            ApiError::Internal(cause) => Some(HiddenCause::Internal(cause)),
            ApiError::Upstream(cause) | ApiError::NotReady(cause) => {
                Some(HiddenCause::Upstream(cause))
            }
            _ => None,
        }
    }

    /// A 404 for a path no route matches (the router's fallback).
    pub fn no_route() -> Self {
        ApiError::NotFound("no route matches this path".into())
    }
}

/// Turning an error into a response has no side effect: a hidden cause rides along in the
/// response's extensions, and [`log_hidden_causes`] logs it once, inside the request's span.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.envelope())).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        match self {
            ApiError::ClientLeft => {
                response.extensions_mut().insert(ClientLeft);
            }
            ApiError::RateLimited {
                limit: Limit::AuthFailures,
                ..
            } => {
                response.extensions_mut().insert(super::Quiet);
            }
            _ => {}
        }
        if let Some(cause) = self.hidden_cause() {
            response.extensions_mut().insert(cause);
        }
        response
    }
}

/// The 500 of a handler that panicked. The panic hook (`telemetry::init`) has logged the panic
/// already, with its place in the code and inside the request's span: the answer carries no cause
/// for [`log_hidden_causes`] to log a second time.
pub(crate) fn panicked() -> Response {
    let mut response = ApiError::Internal(String::new()).into_response();
    response.extensions_mut().remove::<HiddenCause>();
    response
}

/// Why a request failed on our side, for the logs only.
#[derive(Debug, Clone)]
enum HiddenCause {
    Internal(String),
    Upstream(String),
}

/// Logs the hidden cause of an error response, once. Applied to every response inside the
/// request's span and outside everything that can fail a request (handlers, auth, limits, the
/// deadline, the panic catcher), so every error is logged with its trace id. A plain function
/// over the response: nothing to box or clone per request.
pub(crate) fn log_hidden_causes<B>(response: Response<B>) -> Response<B> {
    match response.extensions().get::<HiddenCause>() {
        Some(HiddenCause::Internal(cause)) => {
            tracing::error!(error.cause = %cause, "internal error")
        }
        Some(HiddenCause::Upstream(cause)) => {
            tracing::warn!(error.cause = %cause, "upstream error")
        }
        None => {}
    }
    response
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(cause) => ApiError::Upstream(cause),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The 400's details for a change stream's cursor that is not one, named as the client sent it
/// (`after` or `Last-Event-ID`).
pub(crate) fn unknown_cursor(named: &str) -> String {
    format!("{named} must be an event id this stream sent")
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::Unauthenticated(reason) => ApiError::Unauthorized(reason.to_string()),
            ServiceError::GroupForbidden(group) => {
                ApiError::Forbidden(format!("API key has no access to account group {group}"))
            }
            ServiceError::ScanNotFound => {
                ApiError::NotFound("no such scan in this account group".into())
            }
            ServiceError::NotCancellable { current } => ApiError::NotCancellable { current },
            ServiceError::InvalidTransition { current, .. } => ApiError::NotMovable { current },
            ServiceError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            ServiceError::ExpiredCursor => ApiError::CursorExpired,
            ServiceError::ForeignCursor => ApiError::CursorForeign,
            ServiceError::Store(error) => error.into(),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        // The only way a string path parameter fails is bad percent-encoding; the raw input is
        // not echoed back.
        ApiError::Validation("path parameters must be valid percent-encoded UTF-8".into())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        match rejection {
            // Announced too large bodies are refused before any route (`limits`); this is one
            // that was not announced (chunked) and outgrew the same limit while read.
            BytesRejection::FailedToBufferBody(_) if rejection.status().as_u16() == 413 => {
                ApiError::Validation(super::limits::body_over_limit())
            }
            _ if client_left(&rejection) => ApiError::ClientLeft,
            _ => ApiError::Validation(BODY_UNREADABLE.into()),
        }
    }
}

const BODY_UNREADABLE: &str = "the request body could not be read";

/// The body stopped because its client went away: HTTP/1.1's connection closed before the
/// announced length (end of file), an HTTP/2 stream the client reset, or its connection gone.
/// Not a body the service refused (over the limit, a malformed chunk): its client may still read
/// the 400.
fn client_left(rejection: &BytesRejection) -> bool {
    use std::io::ErrorKind;
    let mut causes =
        std::iter::successors(Some(rejection as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        });
    causes.any(|cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
            );
        }
        cause
            .downcast_ref::<h2::Error>()
            .is_some_and(|h2| h2.is_remote() || h2.is_io())
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// What `log_hidden_causes` writes for `response`, under a subscriber of this thread only.
    fn logged_for(response: Response) -> String {
        let written = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = Arc::clone(&written);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || SinkWriter(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::with_default(subscriber, || log_hidden_causes(response));
        String::from_utf8(written.lock().unwrap().clone()).unwrap()
    }

    struct SinkWriter(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for SinkWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A panic is logged once, by the panic hook: its 500 is an internal error's answer with
    /// nothing more to log, where any other internal error's cause is logged there.
    #[test]
    fn a_panics_answer_is_a_500_with_no_cause_to_log_again() {
        let panicked = panicked();
        assert_eq!(panicked.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(logged_for(panicked), "");
        let other = ApiError::Internal("a cause".into()).into_response();
        assert!(logged_for(other).contains("a cause"));
    }

    fn details_of(problems: Problems) -> String {
        match problems.into_result() {
            Err(ApiError::Validation(details)) => details,
            other => panic!("not a 400: {other:?}"),
        }
    }

    /// No request reaches more than seven distinct problems today; past eight the rest are
    /// counted, each once, so that no request can make a 400 list everything it got wrong.
    #[test]
    fn problems_past_eight_are_counted_not_named() {
        let mut problems = Problems::default();
        for n in 0..11 {
            problems.push(format!("p{n}"));
            problems.push(format!("p{n}"));
        }
        assert_eq!(
            details_of(problems),
            "p0; p1; p2; p3; p4; p5; p6; p7; and 3 more problems"
        );
        let mut problems = Problems::default();
        (0..9).for_each(|n| problems.push(format!("p{n}")));
        assert!(details_of(problems).ends_with("p7; and 1 more problem"));
        assert!(Problems::default().into_result().is_ok());
    }

    /// `details` stays within 1 KiB whatever it holds: cut at a character boundary, ending in
    /// `…`; one exactly at the limit is kept whole.
    #[test]
    fn details_over_a_kibibyte_are_cut_at_a_character_boundary() {
        let cut = bounded("é".repeat(600));
        assert!(cut.len() <= MAX_DETAILS_BYTES, "{} bytes", cut.len());
        assert!(cut.len() > MAX_DETAILS_BYTES - 4, "{} bytes", cut.len());
        let (kept, mark) = cut.split_at(cut.len() - '…'.len_utf8());
        assert_eq!(mark, "…");
        assert!(kept.chars().all(|c| c == 'é'));
        let whole = "a".repeat(MAX_DETAILS_BYTES);
        assert_eq!(bounded(whole.clone()), whole);
    }
}
