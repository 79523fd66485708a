//! Liveness and readiness, for load balancers and orchestrators; no API key needed.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::envelope::Envelope;
use super::error::ApiError;
use crate::domain::service::ScanService;

#[derive(Debug, Serialize)]
pub struct Health {
    status: &'static str,
}

/// `GET /healthz`: the process is up and serving.
pub async fn healthz() -> Json<Envelope<Health>> {
    Json(Envelope::success(Health { status: "ok" }))
}

/// `GET /readyz`: the database answers within its timeout; otherwise 503 NOT_READY, so a load
/// balancer stops sending traffic to an instance that could only fail it.
pub async fn readyz(
    State(service): State<ScanService>,
) -> Result<Json<Envelope<Health>>, ApiError> {
    service
        .store()
        .ping()
        .await
        .map_err(|error| ApiError::NotReady(error.to_string()))?;
    Ok(Json(Envelope::success(Health { status: "ready" })))
}
