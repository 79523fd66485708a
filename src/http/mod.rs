//! Everything that knows HTTP: the router, its middleware, and the mapping to the envelope.

pub(crate) mod auth;
pub mod changes;
pub(crate) mod deadline;
pub(crate) mod docs;
pub mod envelope;
pub(crate) mod error;
mod event_stream;
pub(crate) mod extract;
mod headers;
pub(crate) mod health;
pub(crate) mod limits;
pub(crate) mod method;
pub mod metrics;
pub(crate) mod openapi;
pub mod rate_limit;
pub(crate) mod runner;
pub(crate) mod scans;
pub(crate) mod server;
mod state;
pub(crate) mod trace_id;
pub(crate) mod views;

pub use state::{AppState, HttpSettings};

use std::any::Any;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::Method;
use axum::http::{HeaderValue, header};
use axum::middleware;
use axum::response::Response;
use axum::{Extension, Router};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use tower_http::validate_request::ValidateRequestHeaderLayer;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use self::deadline::Deadline;
use self::error::ApiError;
use self::trace_id::TraceId;
use crate::domain::keys::Permission;

/// The service's router with `extra` routes merged in under the same middleware: how tests
/// exercise paths the API does not have (a handler that panics, one that stalls).
///
/// # The order of checks
///
/// Every request meets its checks in this order, each in one place, so that nothing is revealed
/// to a caller who may not know it:
///
/// 1. 400, a request over the size limits or without one valid `Host`: [`limits::EnforceLimits`],
///    a layer below;
/// 2. 404 / 405, no such route or method: the router's fallbacks, below;
/// 3. 429, a client address that keeps failing to authenticate, then 401, the key:
///    [`auth::guard`], the route's one route layer (`requires` below);
/// 4. 429, the key's rate, then 403, the route's permission: [`auth::guard`] too;
/// 5. 400, the ids, query and body: the handler's extractors and parsing (`http/scans.rs`,
///    `http/runner.rs`, `http/changes.rs`);
/// 6. 403, the account group, then 404, then 200 / 422 (or 410 for an expired stream cursor):
///    [`ScanService`](crate::service::ScanService), which the handler calls and whose
///    [`ServiceError`](crate::service::ServiceError) `http/error.rs` maps, once, to a status.
///    The change stream asks the same group rule before its per-key cap (429).
///
/// Each documented route is listed once, here: `routes!` takes its path and method from the
/// handler's `#[utoipa::path]`, so the router and `/openapi.json` cannot disagree.
pub(crate) fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    let request_timeout = state.request_timeout;
    const READ: &[Permission] = &[Permission::SignalsRead, Permission::SignalsWrite];
    const WRITE: &[Permission] = &[Permission::SignalsWrite];
    const RUN: &[Permission] = &[Permission::SignalsRun];
    // Each route's guard runs only once the route matched: the key (401), its rate limit (429),
    // the route's permission (403), then the handler.
    // (`changes` and `cancel` are static segments, never taken for a scan id: those are 24 hex.)
    let requires = |permissions, (schemas, paths, handler): UtoipaMethodRouter<AppState>| {
        let guard = auth::Guard::requiring(&state, permissions);
        let handler = handler.route_layer(middleware::from_fn_with_state(guard, auth::guard));
        (schemas, paths, handler)
    };
    let api = OpenApiRouter::new()
        .routes(requires(READ, routes!(scans::list_scans)))
        .routes(requires(READ, routes!(changes::follow_changes)))
        .routes(requires(READ, routes!(scans::get_scan)))
        .routes(requires(READ, routes!(scans::scan_events)))
        .routes(requires(WRITE, routes!(scans::create_scan)))
        .routes(requires(WRITE, routes!(scans::cancel_scan)))
        .routes(requires(WRITE, routes!(scans::cancel_scans)))
        .routes(requires(RUN, routes!(runner::start_scan)))
        .routes(requires(RUN, routes!(runner::complete_scan)))
        .routes(requires(RUN, routes!(runner::fail_scan)));
    // The document describes itself: its handler is given the rendered text once the routes
    // are known.
    let document = openapi::Document::default();
    let (_, paths, serve_document) = routes!(openapi::openapi_json);
    let operations = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::render))
        .routes((
            Vec::new(),
            paths,
            serve_document.layer(Extension(document.clone())),
        ));
    let (routes, paths) = OpenApiRouter::new()
        .merge(api)
        .merge(operations)
        .split_for_parts();
    document.publish(paths);

    routes
        // The API reference page is a page, not part of the API it documents.
        .merge(docs::routes(state.docs_enabled))
        .merge(extra)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            // Outermost first: the trace id exists before the span that records it, and every
            // response below, even a timeout or a panic, is built inside its scope. These run on
            // every request, so they are tower layers with their own futures (`from_fn` boxes a
            // future and clones the inner service per call); the panic catcher sits above the
            // request limits and the deadline, whose answers are still plain axum bodies.
            ServiceBuilder::new()
                // Outermost, so every answer carries it, whatever layer made it: a browser must
                // take each body as the type it is declared (an error's JSON is never a script).
                .layer(SetResponseHeaderLayer::overriding(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ))
                // No cache on the way keeps an answer: what a key reads is its own, and every
                // other answer (an error, a health check) is of its moment. A route that says
                // otherwise, the change stream's `no-cache`, keeps its own.
                .layer(SetResponseHeaderLayer::if_not_present(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                ))
                .layer(trace_id::AssignTraceId)
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(log_response)
                        // Errors are logged once, by the next layer.
                        .on_failure(()),
                )
                .map_response(error::log_hidden_causes)
                .layer(metrics::Track)
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(ValidateRequestHeaderLayer::custom(limits::EnforceLimits))
                .layer(DefaultBodyLimit::max(limits::MAX_BODY_LEN))
                .layer(Deadline::new(request_timeout)),
        )
        .with_state(state)
}

/// One span per request, named by route template (not the raw path) to keep cardinality low.
fn request_span(request: &Request) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    let trace_id = request
        .extensions()
        .get::<TraceId>()
        .cloned()
        .unwrap_or_else(TraceId::current);
    tracing::info_span!(
        "request",
        trace.id = %trace_id,
        http.method = method::label(request.method()),
        http.route = route,
        client.address = tracing::field::Empty,
        api_key.id = tracing::field::Empty,
    )
}

/// Marks an answer whose closing line is at `debug`: a probe that succeeded (`/healthz`, `/readyz`
/// and `/metrics` answering 200), since an orchestrator's health check every 10 s and a scrape
/// every 15 s would otherwise be most of a quiet service's log (a probe that fails is logged as
/// any request is); and a 429 of an address blocked for failed authentications, whose block is
/// logged once as it begins (a client with a wrong key in a loop wrote about 9 MB a second).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quiet;

/// The closing line of a request: its status and its latency in milliseconds, a number (tower-http's
/// own line gives the latency as text with its unit, which a log query cannot sum or compare).
fn log_response<B>(response: &axum::http::Response<B>, latency: Duration, _span: &tracing::Span) {
    let latency_ms = latency.as_secs_f64() * 1000.0;
    if response.extensions().get::<metrics::ClientLeft>().is_some() {
        tracing::info!(
            status = metrics::CLIENT_CLOSED_REQUEST,
            latency_ms,
            "finished processing request: the client left before its answer"
        );
        return;
    }
    let status = response.status().as_u16();
    match response.extensions().get::<Quiet>() {
        Some(Quiet) => tracing::debug!(status, latency_ms, "finished processing request"),
        None => tracing::info!(status, latency_ms, "finished processing request"),
    }
}

/// The panic's message and place are logged by the panic hook, in the request's span.
fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    error::panicked()
}

async fn not_found() -> ApiError {
    ApiError::no_route()
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method::label(&method))
}
