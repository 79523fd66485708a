//! A runner's moves of a scan: start, complete, fail. Each is the same guarded statement as a
//! cancel; only a key holding `signals:run` may make them (a client must not forge a completion).

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::envelope::Envelope;
use super::error::{ApiError, both};
use super::extract::{ApiBody, ApiPath, NoFields, ScanPath};
use super::openapi::responses as doc;
use super::trace_id::TraceId;
use super::views::MovedScan;
use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::keys::Principal;
use crate::domain::scan::{ScanStatus, check_reason};
use crate::service::ScanService;

/// `POST /v1/accounts/{accountGroupId}/signals/scans/{scanId}/start`: queued → running.
#[utoipa::path(
    post,
    path = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/start",
    operation_id = "startSignalScan",
    tag = "runners",
    summary = "A runner starts a scan",
    description = "Moves a queued scan to running. No request body (or `{}`). A start is a claim: the key \
        that started the scan, starting it again, is answered 200 with `previousStatus` running and the \
        original `at`; any other key, or any other status, is answered 422 with `currentStatus`. Requires the `signals:run` permission and access to the account group.",
    params(ScanPath),
    responses(
        (status = 200, description = "Scan running, now or before", body = doc::SignalScanMoveResponse,
            example = doc::example_start),
        (status = 400, response = doc::BadMoveRequest),
        (status = 403, response = doc::RunnerForbidden),
        (status = 404, response = doc::NotFound),
        (status = 422, response = doc::NotStartable),
    )
)]
pub(crate) async fn start_scan(
    State(service): State<ScanService>,
    principal: Principal,
    trace_id: TraceId,
    ApiPath(path): ApiPath<ScanPath>,
    body: ApiBody,
) -> Result<Json<Envelope<MovedScan>>, ApiError> {
    let (ids, NoFields {}) = both(path.parse(), body.optional_fields())?;
    move_scan(
        &service,
        &principal,
        &trace_id,
        ids,
        ScanStatus::Running,
        None,
    )
    .await
}

/// `POST /v1/accounts/{accountGroupId}/signals/scans/{scanId}/complete`: running → completed.
#[utoipa::path(
    post,
    path = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/complete",
    operation_id = "completeSignalScan",
    tag = "runners",
    summary = "A runner completes a scan",
    description = "Moves a running scan to completed. No request body (or `{}`). The key that completed the \
        scan, completing it again, is answered 200 with `previousStatus` completed; only the key that started the scan may complete it (another key: 422 `currentStatus=running`); another key repeating the completion, or any \
        other status, is answered 422 with `currentStatus` (a cancelled scan answers `currentStatus=cancelled`: the runner stops). Requires the `signals:run` \
        permission and access to the account group.",
    params(ScanPath),
    responses(
        (status = 200, description = "Scan completed, now or before", body = doc::SignalScanMoveResponse),
        (status = 400, response = doc::BadMoveRequest),
        (status = 403, response = doc::RunnerForbidden),
        (status = 404, response = doc::NotFound),
        (status = 422, response = doc::NotMovable),
    )
)]
pub(crate) async fn complete_scan(
    State(service): State<ScanService>,
    principal: Principal,
    trace_id: TraceId,
    ApiPath(path): ApiPath<ScanPath>,
    body: ApiBody,
) -> Result<Json<Envelope<MovedScan>>, ApiError> {
    let (ids, NoFields {}) = both(path.parse(), body.optional_fields())?;
    move_scan(
        &service,
        &principal,
        &trace_id,
        ids,
        ScanStatus::Completed,
        None,
    )
    .await
}

/// The body of a failure: an optional reason.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailRequest {
    /// Why the scan failed, 1 to 1,000 characters, none of them NUL; kept with the audit row and shown in the
    /// scan's events, the change stream and `scans watch`.
    // The example keeps the API page from filling the field with text made from the pattern.
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = "^[^\\x00]*$",
        example = "target unreachable"
    )]
    reason: Option<String>,
}

/// `POST /v1/accounts/{accountGroupId}/signals/scans/{scanId}/fail`: running → failed.
#[utoipa::path(
    post,
    path = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/fail",
    operation_id = "failSignalScan",
    tag = "runners",
    summary = "A runner fails a scan",
    description = "Moves a running scan to failed, with an optional `reason` (1 to 1,000 characters, no NUL). \
        The key that failed the scan, failing it again, is answered 200 with `previousStatus` failed; \
        only the key that started the scan may fail it (another key: 422 `currentStatus=running`); \
        another key repeating the failure, or any other status, is answered 422 with `currentStatus`. Requires the `signals:run` permission and access to the account group.",
    params(ScanPath),
    request_body(content = Option<FailRequest>, description = "Optional; an empty body (or `{}`) means no reason."),
    responses(
        (status = 200, description = "Scan failed, now or before", body = doc::SignalScanMoveResponse,
            example = doc::example_fail),
        (status = 400, response = doc::BadFailRequest),
        (status = 403, response = doc::RunnerForbidden),
        (status = 404, response = doc::NotFound),
        (status = 422, response = doc::NotMovable),
    )
)]
pub(crate) async fn fail_scan(
    State(service): State<ScanService>,
    principal: Principal,
    trace_id: TraceId,
    ApiPath(path): ApiPath<ScanPath>,
    body: ApiBody,
) -> Result<Json<Envelope<MovedScan>>, ApiError> {
    let (ids, reason) = both(path.parse(), fail_reason(&body))?;
    let to = ScanStatus::Failed;
    move_scan(&service, &principal, &trace_id, ids, to, reason.as_deref()).await
}

/// The reason of a failure's body, if it gives one: 1 to 1,000 characters, none of them NUL.
fn fail_reason(body: &ApiBody) -> Result<Option<String>, ApiError> {
    // Empty, or an object: JSON `null` is refused as for start and complete, and as the
    // document's schema says (an object).
    let FailRequest { reason } = body.optional_fields()?;
    if let Some(reason) = &reason {
        check_reason(reason).map_err(ApiError::Validation)?;
    }
    Ok(reason)
}

/// The ids and the body are parsed (400s); the service checks the group (403), the scan (404)
/// and the move (422).
async fn move_scan(
    service: &ScanService,
    principal: &Principal,
    trace_id: &TraceId,
    (group, scan): (AccountGroupId, ScanId),
    to: ScanStatus,
    reason: Option<&str>,
) -> Result<Json<Envelope<MovedScan>>, ApiError> {
    let moved = service
        .move_scan(principal, &group, &scan, to, trace_id.as_str(), reason)
        .await?;
    tracing::info!(
        scan.id = %moved.scan_id,
        scan.status = %moved.status,
        scan.previous_status = %moved.previous_status,
        "scan moved"
    );
    Ok(Json(Envelope::success(moved.into())))
}
