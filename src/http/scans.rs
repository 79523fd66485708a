//! Scan handlers: parse the path into ids, call the service, shape the answer.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::envelope::Envelope;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, GroupPath, ScanPath};
use super::trace_id::TraceId;
use super::views::{CancelledScan, ScanEvents, ScanList};
use crate::domain::keys::Principal;
use crate::domain::scan::{Scan, ScanCursor, ScanPageQuery, ScanStatus};
use crate::service::ScanService;

/// `POST /v1/accounts/{accountGroupId}/signals/scans/{scanId}/cancel`
#[utoipa::path(
    post,
    path = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/cancel",
    operation_id = "cancelSignalScan",
    tag = "signal scans",
    summary = "Cancel a signal scan",
    description = "Cancels a signal scan that is still queued or running. Completed or failed scans answer \
        422 VALIDATION_ERROR. Cancelling a cancelled scan answers 200 with `previousStatus` cancelled and the \
        original `cancelledAt`. Requires the `signals:write` permission and access to the account group. \
        No request body; no idempotency keys.",
    params(ScanPath),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "Scan cancelled, now or before", body = crate::http::openapi::responses::SignalScanCancelSuccessResponse),
        (status = 400, response = crate::http::openapi::responses::BadRequest),
        (status = 401, response = crate::http::openapi::responses::Unauthorized),
        (status = 403, response = crate::http::openapi::responses::Forbidden),
        (status = 404, response = crate::http::openapi::responses::NotFound),
        (status = 422, response = crate::http::openapi::responses::NotCancellable),
        (status = 429, response = crate::http::openapi::responses::RateLimited),
        (status = 500, response = crate::http::openapi::responses::InternalError),
        (status = 502, response = crate::http::openapi::responses::UpstreamError),
    )
)]
pub async fn cancel_scan(
    State(service): State<ScanService>,
    principal: Principal,
    trace_id: TraceId,
    ApiPath(path): ApiPath<ScanPath>,
) -> Result<Json<Envelope<CancelledScan>>, ApiError> {
    let (group, scan) = path.parse()?;
    let cancellation = service
        .cancel(&principal, &group, &scan, trace_id.as_str())
        .await?;
    super::metrics::count_cancel(cancellation.previous_status.as_str());
    tracing::info!(
        scan.id = %cancellation.scan_id,
        scan.previous_status = %cancellation.previous_status,
        "scan cancelled"
    );
    Ok(Json(Envelope::success(cancellation.into())))
}

/// `GET /v1/accounts/{accountGroupId}/signals/scans/{scanId}`: where a client checks a scan's
/// state before retrying a cancel.
#[utoipa::path(
    get,
    path = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}",
    operation_id = "getSignalScan",
    tag = "signal scans",
    summary = "Get a signal scan",
    description = "The scan's status and the moments it reached: where a client checks the state before \
        retrying a cancel. Requires `signals:read` or `signals:write` and access to the account group.",
    params(ScanPath),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "The scan", body = crate::http::openapi::responses::SignalScanResponse),
        (status = 400, response = crate::http::openapi::responses::BadRequest),
        (status = 401, response = crate::http::openapi::responses::Unauthorized),
        (status = 403, response = crate::http::openapi::responses::Forbidden),
        (status = 404, response = crate::http::openapi::responses::NotFound),
        (status = 429, response = crate::http::openapi::responses::RateLimited),
        (status = 500, response = crate::http::openapi::responses::InternalError),
        (status = 502, response = crate::http::openapi::responses::UpstreamError),
    )
)]
pub async fn get_scan(
    State(service): State<ScanService>,
    principal: Principal,
    ApiPath(path): ApiPath<ScanPath>,
) -> Result<Json<Envelope<Scan>>, ApiError> {
    let (group, scan) = path.parse()?;
    let scan = service.get_scan(&principal, &group, &scan).await?;
    Ok(Json(Envelope::success(scan)))
}

/// Query parameters of the list, as sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;

impl ListParams {
    /// Parses every parameter, naming each one that is malformed.
    fn parse(&self) -> Result<ScanPageQuery, ApiError> {
        let mut problems = Vec::new();
        let status = match self.status.as_deref().map(str::parse::<ScanStatus>) {
            Some(Ok(status)) => Some(status),
            Some(Err(_)) => {
                problems.push(
                    "status must be one of queued, running, completed, failed, cancelled"
                        .to_owned(),
                );
                None
            }
            None => None,
        };
        let limit = match self.limit.as_deref().map(str::parse::<u32>) {
            None => DEFAULT_PAGE,
            Some(Ok(limit)) if (1..=MAX_PAGE).contains(&limit) => limit,
            Some(_) => {
                problems.push(format!("limit must be an integer from 1 to {MAX_PAGE}"));
                DEFAULT_PAGE
            }
        };
        let after = match self.cursor.as_deref().map(ScanCursor::decode) {
            Some(Some(cursor)) => Some(cursor),
            Some(None) => {
                problems.push("cursor must be a nextCursor returned by this list".to_owned());
                None
            }
            None => None,
        };
        match problems.is_empty() {
            true => Ok(ScanPageQuery {
                status,
                limit,
                after,
            }),
            false => Err(ApiError::Validation(problems.join("; "))),
        }
    }
}

/// `GET /v1/accounts/{accountGroupId}/signals/scans?status=&limit=&cursor=`: newest first.
#[utoipa::path(
    get,
    path = "/v1/accounts/{accountGroupId}/signals/scans",
    operation_id = "listSignalScans",
    tag = "signal scans",
    summary = "List signal scans",
    description = "The account group's scans, newest first, a page at a time: pass `nextCursor` back as \
        `cursor`; it is null on the last page. A malformed or unknown query parameter is 400 naming it. \
        Requires `signals:read` or `signals:write` and access to the account group.",
    params(
        ("accountGroupId" = inline(crate::domain::ids::AccountGroupId), Path,
            description = "Account group ID that scopes the request: 24 hexadecimal characters, either case."),
        ("status" = Option<ScanStatus>, Query, description = "Only scans in this status."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100,
            description = "Scans per page, 1 to 100; 20 when absent."),
        ("cursor" = Option<String>, Query, pattern = "^(2[bB])?(3[0-9]){1,20}2[eE](3[0-9]|4[1-6]|6[1-6]){24}$",
            description = "The `nextCursor` of the previous page, passed back unchanged (an opaque token)."),
    ),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "A page of scans", body = crate::http::openapi::responses::SignalScanListResponse),
        (status = 400, response = crate::http::openapi::responses::BadRequest),
        (status = 401, response = crate::http::openapi::responses::Unauthorized),
        (status = 403, response = crate::http::openapi::responses::Forbidden),
        (status = 429, response = crate::http::openapi::responses::RateLimited),
        (status = 500, response = crate::http::openapi::responses::InternalError),
        (status = 502, response = crate::http::openapi::responses::UpstreamError),
    )
)]
pub async fn list_scans(
    State(service): State<ScanService>,
    principal: Principal,
    ApiPath(path): ApiPath<GroupPath>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Envelope<ScanList>>, ApiError> {
    let group = path.parse()?;
    let query = params.parse()?;
    let page = service.list_scans(&principal, &group, &query).await?;
    Ok(Json(Envelope::success(page.into())))
}

/// `GET /v1/accounts/{accountGroupId}/signals/scans/{scanId}/events`: the audit trail.
#[utoipa::path(
    get,
    path = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/events",
    operation_id = "listSignalScanEvents",
    tag = "signal scans",
    summary = "A signal scan's status changes",
    description = "The scan's audit trail, oldest first; `from` is null for its creation. Requires \
        `signals:read` or `signals:write` and access to the account group.",
    params(ScanPath),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "The scan's status changes", body = crate::http::openapi::responses::SignalScanEventsResponse),
        (status = 400, response = crate::http::openapi::responses::BadRequest),
        (status = 401, response = crate::http::openapi::responses::Unauthorized),
        (status = 403, response = crate::http::openapi::responses::Forbidden),
        (status = 404, response = crate::http::openapi::responses::NotFound),
        (status = 429, response = crate::http::openapi::responses::RateLimited),
        (status = 500, response = crate::http::openapi::responses::InternalError),
        (status = 502, response = crate::http::openapi::responses::UpstreamError),
    )
)]
pub async fn scan_events(
    State(service): State<ScanService>,
    principal: Principal,
    ApiPath(path): ApiPath<ScanPath>,
) -> Result<Json<Envelope<ScanEvents>>, ApiError> {
    let (group, scan) = path.parse()?;
    let events = service.scan_events(&principal, &group, &scan).await?;
    Ok(Json(Envelope::success(ScanEvents::new(scan, events))))
}
