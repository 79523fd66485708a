//! Prometheus metrics: the `metrics` facade everywhere, rendered by the Prometheus exporter at
//! `GET /metrics` (no key, like the health checks; keep the port internal).

use std::borrow::Borrow;
use std::convert::Infallible;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use metrics::{Counter, Histogram, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tower::{Layer, Service};

use super::changes::ChangeStreams;
use crate::domain::scan::ScanStatus;
use crate::store::{self, Store};

pub(crate) const REQUESTS: &str = "http_requests_total";
pub(crate) const REQUEST_DURATION: &str = "http_request_duration_seconds";
pub(crate) const RATE_LIMITED: &str = "rate_limited_total";
pub(crate) const DB_POOL: &str = "db_pool_connections";
pub(crate) const CONNECTIONS: &str = "http_connections";
pub(crate) const REQUESTS_IN_PROGRESS: &str = "http_requests_in_progress";
pub(crate) const STREAMS_OPEN: &str = "change_streams_open";
pub(crate) const STREAMS_ENDED: &str = "change_streams_ended_total";

/// Latency buckets, in seconds: a cancel should sit in the first few; the last ones hold what a
/// stalled database costs, up to past `REQUEST_TIMEOUT_MS` (15 s by default), which a request
/// reaches in full before it is answered 500.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
    30.0, 60.0,
];

/// The process-wide Prometheus recorder, installed on first use. Its histogram samples are
/// kept until [`upkeep`] folds them, which whoever serves requests must run.
pub(crate) fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = unregistered_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("no other metrics recorder is installed");
            describe();
            handle
        })
        .clone()
}

/// Each metric's `# HELP` line (README's `/metrics` row says more), and the counters whose labels
/// are known in advance at 0: Prometheus's `rate()` and `increase()` count from a series' first
/// sample, so a counter that appeared at its first event hid that event (a first burst of 429s,
/// a Redis that never answered) from every alert (the SRE review).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS,
        "Requests answered, by route template, method and status (499: the client left first)."
    );
    describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from a request's arrival to its answer, by route template and method."
    );
    describe_counter!(RATE_LIMITED, "429s given, by the limit that gave them.");
    describe_counter!(
        super::rate_limit::BACKEND_ERRORS,
        "Limit checks that Redis did not answer (each instance then limits alone)."
    );
    describe_gauge!(
        DB_POOL,
        "Database connections in use and idle, and the pool's size (state=max)."
    );
    describe_gauge!(
        CONNECTIONS,
        "Client connections open, and MAX_CONNECTIONS (state=max)."
    );
    describe_gauge!(
        REQUESTS_IN_PROGRESS,
        "Requests received and not yet answered in full (an open change stream is one)."
    );
    describe_gauge!(STREAMS_OPEN, "Change streams open.");
    describe_counter!(
        STREAMS_ENDED,
        "Change streams ended, by why (client_gone: the client left, or stopped reading)."
    );
    describe_counter!(
        store::CANCELS,
        "Cancels a commit settled, by the status each found (cancelled: a repeat)."
    );
    describe_histogram!(
        store::BATCH_SIZE,
        metrics::Unit::Count,
        "Status changes per commit."
    );
    describe_histogram!(
        store::QUEUE_WAIT,
        metrics::Unit::Seconds,
        "A request's wait until a writer took its changes, or until it gave up."
    );
    PROCESS.describe();
    for limit in super::error::Limit::ALL {
        metrics::counter!(RATE_LIMITED, "limit" => limit.label()).increment(0);
    }
    metrics::counter!(super::rate_limit::BACKEND_ERRORS).increment(0);
    for ending in super::changes::Ending::ALL {
        metrics::counter!(STREAMS_ENDED, "reason" => ending.label()).increment(0);
    }
    // The statuses a cancel can find (store/pipeline.rs counts them).
    for found in [
        ScanStatus::Queued,
        ScanStatus::Running,
        ScanStatus::Cancelled,
    ] {
        metrics::counter!(store::CANCELS, "previous_status" => found.as_str()).increment(0);
    }
}

/// The process's own figures, read at each scrape under the names of Prometheus's process
/// collector (`process_resident_memory_bytes`, `process_open_fds` against `process_max_fds`,
/// `process_cpu_seconds_total`, `process_start_time_seconds`; and `process_threads`): what an
/// operator watches for a leak, descriptors running out, or a restart.
static PROCESS: LazyLock<metrics_process::Collector> =
    LazyLock::new(metrics_process::Collector::default);

/// Changes per commit: powers of two up to the store's batch bound.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// The recorder `recorder` installs, not installed: a test measures what it keeps.
///
/// A test hook, `#[doc(hidden)]`: public only because `tests/metrics_upkeep.rs` is another crate.
#[doc(hidden)]
pub fn unregistered_recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), LATENCY_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(Matcher::Full(store::QUEUE_WAIT.into()), LATENCY_BUCKETS)
        })
        .and_then(|builder| {
            builder.set_buckets_for_metric(Matcher::Full(store::BATCH_SIZE.into()), BATCH_BUCKETS)
        })
        .expect("buckets are not empty")
        .build_recorder()
}

/// How often [`upkeep`] folds the samples recorded since: what a busy instance holds between
/// two folds is this many seconds of requests (the exporter's own default interval).
///
/// `#[doc(hidden)]`: public only for `tests/metrics_upkeep.rs` (another crate); not an API.
#[doc(hidden)]
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds every histogram's recorded samples into its buckets every `every`, forever. The exporter
/// keeps each sample until upkeep runs, and a recorder installed without the exporter's own HTTP
/// listener gets no upkeep task: without this, an instance nobody scrapes grows by every
/// request's samples (about 20 bytes a request).
///
/// `#[doc(hidden)]`: public only for `tests/metrics_upkeep.rs` (another crate); not an API.
#[doc(hidden)]
pub async fn upkeep(handle: PrometheusHandle, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        handle.run_upkeep();
    }
}

/// Layer: counts every request by route template (not raw path), method (a standard one or
/// `other`) and status, and records its latency. Every label has a bounded set of values: a
/// client cannot make the exporter keep a new series per request. A tower layer: it runs on
/// every request, and its future is not boxed.
///
/// A request whose client left before its answer (a closed connection, a reset HTTP/2 stream)
/// never has a response: it is counted with status 499, as nginx counts one, and its closing
/// log line is written here, for the trace layer above sees no response to log. Its work may
/// have committed all the same (a cancel is counted by `scan_cancels_total` at its commit), so
/// a database that stalls past clients' own timeouts shows in the 499s, not in silence.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Track;

impl<S> Layer<S> for Track {
    type Service = TrackService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackService { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TrackService<S> {
    inner: S,
}

impl<S, B> Service<Request> for TrackService<S>
where
    S: Service<Request, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = super::method::label(request.method());
        TrackFuture {
            inner: self.inner.call(request),
            started: Instant::now(),
            route,
            method,
            // Called inside the trace layer's span: the request's.
            span: tracing::Span::current(),
            answered: false,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        route: Option<MatchedPath>,
        method: &'static str,
        span: tracing::Span,
        answered: bool,
    }

    impl<F> PinnedDrop for TrackFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.answered {
                return;
            }
            let latency = this.started.elapsed();
            let latency_ms = latency.as_secs_f64() * 1000.0;
            let _entered = this.span.enter();
            if STOPPED_UNANSWERED.load(Ordering::Relaxed) {
                tracing::info!(latency_ms, "finished processing request: the service stopped before its answer");
                return;
            }
            count(this.route.as_ref(), this.method, CLIENT_CLOSED_REQUEST, latency);
            tracing::info!(
                status = CLIENT_CLOSED_REQUEST,
                latency_ms,
                "finished processing request: the client left before its answer"
            );
        }
    }
}

impl<F, B> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        *this.answered = true;
        let status = match response.extensions().get::<ClientLeft>() {
            Some(ClientLeft) => CLIENT_CLOSED_REQUEST,
            None => response.status().as_u16(),
        };
        count(
            this.route.as_ref(),
            this.method,
            status,
            this.started.elapsed(),
        );
        Poll::Ready(Ok(response))
    }
}

/// The status a request whose client left before its answer is counted and logged with (nginx's
/// "client closed request"); no client is ever sent it.
pub(crate) const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Marks an answer nobody will read: its client left while sending the request's body. The
/// handler answered (a 400, in form), so the request is not dropped unanswered; it is counted
/// and logged as one that was. HTTP/1.1 cannot tell a client gone from one that only stopped
/// writing (a half-close short of its `Content-Length`) and still reads: that rare client gets
/// its 400 and is counted 499. An HTTP/2 stream reset with `NO_ERROR` ends the body as if whole
/// (hyper), so it is answered, or dropped, as any request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientLeft;

/// Set when the service stops with requests still unanswered (its drain time ran out): what is
/// dropped from then on was cut off by the service, not left by its client. Process-wide, as the
/// stop is: the runtime drops the connections' tasks as the process ends.
static STOPPED_UNANSWERED: AtomicBool = AtomicBool::new(false);

/// The service stops now, whatever requests are still in flight.
pub(crate) fn stopping_unanswered() {
    STOPPED_UNANSWERED.store(true, Ordering::Relaxed);
}

fn count(route: Option<&MatchedPath>, method: &'static str, status: u16, latency: Duration) {
    let series = RouteSeries::of(route.map_or(UNMATCHED, MatchedPath::as_str));
    series.requests(method, status).increment(1);
    series.duration(method).record(latency.as_secs_f64());
}

const UNMATCHED: &str = "unmatched";

/// A route's registered series, by their other labels. Registering a series builds its key (the
/// label list, the route as an owned string) and looks it up in the recorder's registry: about
/// ten allocations. A handle is the recorder's own counter behind an `Arc`, so a request after
/// the first of its kind counts through the cached handle without allocating. (A handle taken
/// before a recorder is installed would count nowhere for good; the state installs it, through
/// [`recorder`], before the first request is served.)
#[derive(Default)]
struct RouteSeries {
    route: SharedString,
    requests: DashMap<(&'static str, u16), Counter>,
    durations: DashMap<&'static str, Histogram>,
}

impl RouteSeries {
    /// The series of a route template (or `unmatched`): a bounded set, the router's routes.
    fn of(route: &str) -> Arc<RouteSeries> {
        static ROUTES: LazyLock<DashMap<String, Arc<RouteSeries>>> = LazyLock::new(DashMap::new);
        cached(&ROUTES, route, || {
            Arc::new(RouteSeries {
                route: route.to_owned().into(),
                ..RouteSeries::default()
            })
        })
    }

    fn requests(&self, method: &'static str, status: u16) -> Counter {
        cached(&self.requests, &(method, status), || {
            let status = status.to_string();
            metrics::counter!(REQUESTS, "route" => self.route.clone(), "method" => method, "status" => status)
        })
    }

    fn duration(&self, method: &'static str) -> Histogram {
        cached(
            &self.durations,
            &method,
            || metrics::histogram!(REQUEST_DURATION, "route" => self.route.clone(), "method" => method),
        )
    }
}

/// The handle cached under `key`, made by `register` the first time: looked up without taking
/// the key's ownership (no allocation on the common path), written only for a new series.
fn cached<K, Q, V>(handles: &DashMap<K, V>, key: &Q, register: impl FnOnce() -> V) -> V
where
    K: Borrow<Q> + Eq + Hash,
    Q: ToOwned<Owned = K> + Eq + Hash + ?Sized,
    V: Clone,
{
    if let Some(handle) = handles.get(key) {
        return handle.clone();
    }
    handles
        .entry(key.to_owned())
        .or_insert_with(register)
        .clone()
}

/// `GET /metrics`, in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "No API key needed; keep the port internal. The Prometheus text exposition format 0.0.4.",
    responses(
        (status = 200, description = "The metrics, in the Prometheus text format", body = String,
            content_type = "text/plain",
            example = "# HELP http_requests_total Requests answered, by route template, method and status (499: the client left first).\n# TYPE http_requests_total counter\nhttp_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 1\n"),
    )
)]
pub(crate) async fn render(
    State(handle): State<PrometheusHandle>,
    State(store): State<Store>,
    State(streams): State<ChangeStreams>,
) -> Response {
    metrics::gauge!(STREAMS_OPEN).set(streams.open_count() as f64);
    let pool = store.pool_usage();
    metrics::gauge!(DB_POOL, "state" => "in_use").set(f64::from(pool.in_use));
    metrics::gauge!(DB_POOL, "state" => "idle").set(f64::from(pool.idle));
    metrics::gauge!(DB_POOL, "state" => "max").set(f64::from(pool.max));
    // Off the async workers: counting the descriptors lists `/proc/self/fd` on kernels before
    // 6.2, some milliseconds with 10,000 connections open.
    let _ = tokio::task::spawn_blocking(|| PROCESS.collect()).await;
    handle.run_upkeep();
    let mut response = handle.render().into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response.extensions_mut().insert(super::Quiet);
    response
}
