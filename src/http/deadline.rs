//! The whole-request deadline (`REQUEST_TIMEOUT_MS`): a request whose answer has not started by
//! then answers 500. Database calls have their own, shorter bounds and answer 502; this catches
//! anything else that stalls. A write it cuts short may still commit (its COMMIT is not), so keep
//! it above the longest request that writes ([`longest_writing_request`]). A request whose body
//! has not arrived by then is the client's doing, not ours: the deadline rides in the request's
//! extensions ([`RequestDeadline`]) so that the body's reader answers that 400 itself. A tower
//! layer: it runs on every request, and its future is not boxed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tokio::time::{Instant, Timeout};
use tower::{Layer, Service};

use super::error::ApiError;

/// The longest a request that writes may take, with the store's `db_timeout` and the key cache's
/// `key_cache_ttl`: the shared limits' calls to Redis (three at most, each bounded), the wait for
/// its client address's turn to look a key up (an address that failed lately), the key's lookup
/// (which may first wait for a lookup begun more than the TTL earlier, then read again), and the
/// write ([`crate::store::longest_write`]). A request deadline not above it may answer 500 for a
/// write that then commits.
pub(crate) fn longest_writing_request(db_timeout: Duration, key_cache_ttl: Duration) -> Duration {
    let stale_lookup = match key_cache_ttl.is_zero() {
        true => Duration::ZERO, // no cache: one lookup
        false => db_timeout.saturating_sub(key_cache_ttl),
    };
    super::rate_limit::MOST_REDIS_WAIT
        + super::rate_limit::TURN_WAIT
        + db_timeout
        + stale_lookup
        + crate::store::longest_write(db_timeout)
}

/// When a request's deadline passes, for what waits on the client within it (its body).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestDeadline {
    pub(crate) at: Instant,
    pub(crate) limit: Duration,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    limit: Duration,
}

impl Deadline {
    pub(crate) fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for Deadline {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DeadlineService<S> {
    inner: S,
    limit: Duration,
}

impl<S> Service<Request> for DeadlineService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let deadline = RequestDeadline {
            at: Instant::now() + self.limit,
            limit: self.limit,
        };
        request.extensions_mut().insert(deadline);
        DeadlineFuture {
            // A millisecond after the body's own deadline: timers that expire together are
            // fired in batches, and the task may be polled between them, so with the same
            // instant this 500 could win over the body's 400.
            inner: tokio::time::timeout_at(
                deadline.at + Duration::from_millis(1),
                self.inner.call(request),
            ),
            limit: self.limit,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: Timeout<F>,
        limit: Duration,
    }
}

impl<F> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(match ready!(this.inner.poll(cx)) {
            Ok(answered) => answered,
            Err(_elapsed) => Ok(ApiError::Internal(format!(
                "request did not finish within {} ms",
                this.limit.as_millis()
            ))
            .into_response()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README's sum: 5 × `DB_TIMEOUT_MS` plus 2,750 ms, plus `DB_TIMEOUT_MS` − `KEY_CACHE_TTL_MS`
    /// while the cache is on and that is positive.
    #[test]
    fn the_longest_writing_request_is_the_documented_sum() {
        let ms = Duration::from_millis;
        assert_eq!(longest_writing_request(ms(2000), ms(1000)), ms(13_750));
        assert_eq!(longest_writing_request(ms(5000), ms(1000)), ms(31_750));
        assert_eq!(longest_writing_request(ms(2000), ms(5000)), ms(12_750));
        assert_eq!(
            longest_writing_request(ms(2000), Duration::ZERO),
            ms(12_750)
        );
    }
}
