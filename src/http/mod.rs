//! Everything that knows HTTP: the router, its middleware, and the mapping to the envelope.

pub mod auth;
pub mod changes;
pub mod docs;
pub mod envelope;
pub mod error;
pub mod health;
pub mod limits;
pub mod method;
pub mod metrics;
pub mod openapi;
pub mod rate_limit;
pub mod scans;
mod state;
pub mod trace_id;

pub use state::{AppState, HttpSettings};

use std::any::Any;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use self::error::ApiError;
use self::trace_id::TraceId;
use crate::domain::keys::Permission;

/// The whole HTTP surface of the service.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// The service's router with `extra` routes merged in under the same middleware: how tests
/// exercise paths the API does not have (a handler that panics, one that stalls).
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    let request_timeout = state.request_timeout;
    let requires = |permissions: &'static [Permission]| {
        middleware::from_fn_with_state(permissions, auth::require_permission)
    };
    const READ: &[Permission] = &[Permission::SignalsRead, Permission::SignalsWrite];
    const WRITE: &[Permission] = &[Permission::SignalsWrite];
    // route_layer runs only for matched routes, and the last added runs first:
    // authenticate (401) → rate limit (429) → the route's permission (403) → handler.
    let api = Router::new()
        .route(
            "/v1/accounts/{accountGroupId}/signals/scans",
            get(scans::list_scans).route_layer(requires(READ)),
        )
        .route(
            // A static segment: `changes` is never taken for a scan id (those are 24 hex).
            "/v1/accounts/{accountGroupId}/signals/scans/changes",
            get(changes::follow_changes).route_layer(requires(READ)),
        )
        .route(
            "/v1/accounts/{accountGroupId}/signals/scans/{scanId}",
            get(scans::get_scan).route_layer(requires(READ)),
        )
        .route(
            "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/events",
            get(scans::scan_events).route_layer(requires(READ)),
        )
        .route(
            "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/cancel",
            post(scans::cancel_scan).route_layer(requires(WRITE)),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            rate_limit::limit,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));

    Router::new()
        .merge(api)
        .merge(docs::routes(state.docs_enabled))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(extra)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            // Outermost first: the trace id exists before the span that records it, and every
            // response below, even a timeout or a panic, is built inside its scope.
            ServiceBuilder::new()
                .layer(middleware::from_fn(trace_id::assign))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(DefaultOnResponse::new().level(Level::INFO))
                        // Errors are logged once, where they become responses (ApiError).
                        .on_failure(()),
                )
                .layer(middleware::from_fn(metrics::track))
                .layer(middleware::from_fn(limits::enforce))
                .layer(middleware::from_fn_with_state(request_timeout, deadline))
                .layer(CatchPanicLayer::custom(panic_response)),
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
        api_key.id = tracing::field::Empty,
    )
}

/// A whole-request deadline. Database calls have their own, shorter one and answer 502; this
/// catches anything else that stalls.
async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Internal(format!(
            "request did not finish within {} ms",
            limit.as_millis()
        ))
        .into_response(),
    }
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("non-string panic payload");
    ApiError::Internal(format!("handler panicked: {message}")).into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no route matches this path".into())
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method::label(&method))
}
