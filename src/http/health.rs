//! Liveness and readiness, for load balancers and orchestrators; no API key needed.

use axum::extract::State;
use axum::{Extension, Json};

use super::Quiet;
use super::envelope::Envelope;
use super::error::ApiError;
use super::openapi::responses as doc;
use super::views::Health;
use crate::store::Store;

/// `GET /healthz`: the process is up and serving.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    summary = "Liveness: the process is up and serving",
    description = "No API key needed. Does not touch the database.",
    responses(
        (status = 200, description = "The process is serving", body = doc::HealthResponse),
    )
)]
pub(crate) async fn healthz() -> (Extension<Quiet>, Json<Envelope<Health>>) {
    (Extension(Quiet), Json(Envelope::success(Health::OK)))
}

/// `GET /readyz`: the database answers within its timeout; otherwise 503 NOT_READY, so a load
/// balancer stops sending traffic to an instance that could only fail it.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    summary = "Readiness: the database answers within its timeout",
    description = "No API key needed. 503 NOT_READY while the database is unreachable or too slow.",
    responses(
        (status = 200, description = "Ready to serve", body = doc::HealthResponse,
            example = doc::example_ready),
        (status = 503, response = doc::NotReady),
    )
)]
pub(crate) async fn readyz(
    State(store): State<Store>,
) -> Result<(Extension<Quiet>, Json<Envelope<Health>>), ApiError> {
    store
        .ping()
        .await
        .map_err(|error| ApiError::NotReady(error.to_string()))?;
    Ok((Extension(Quiet), Json(Envelope::success(Health::READY))))
}
