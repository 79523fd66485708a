//! Scan handlers: parse the path into ids, call the service, shape the answer.

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::envelope::Envelope;
use super::error::ApiError;
use super::trace_id::TraceId;
use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::keys::Principal;
use crate::domain::scan::ScanPageQuery;
use crate::domain::scan::{Scan, ScanCursor, ScanEvent, ScanStatus};
use crate::service::{Cancellation, ScanPage, ScanService};

/// `Path`, but its rejection is our envelope.
#[derive(FromRequestParts)]
#[from_request(via(Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `Query`, but its rejection (a malformed, duplicate or unknown parameter) is our envelope.
#[derive(FromRequestParts)]
#[from_request(via(Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// The raw path of a group route.
#[derive(Deserialize)]
pub struct GroupPath {
    #[serde(rename = "accountGroupId")]
    account_group_id: String,
}

impl GroupPath {
    pub(super) fn parse(&self) -> Result<AccountGroupId, ApiError> {
        AccountGroupId::parse(&self.account_group_id)
            .map_err(|e| ApiError::Validation(format!("accountGroupId {e}")))
    }
}

/// The raw path of a scan route, before its ids are parsed; documented as the ids it must hold.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ScanPath {
    /// Account group ID that scopes the request: 24 hexadecimal characters, either case.
    #[serde(rename = "accountGroupId")]
    #[param(value_type = AccountGroupId, inline)]
    account_group_id: String,
    /// Signal scan ID returned when the scan was started: 24 hexadecimal characters, either case.
    #[serde(rename = "scanId")]
    #[param(value_type = ScanId, inline)]
    scan_id: String,
}

impl ScanPath {
    /// Parses both ids, naming every parameter that is malformed.
    fn parse(&self) -> Result<(AccountGroupId, ScanId), ApiError> {
        match (
            AccountGroupId::parse(&self.account_group_id),
            ScanId::parse(&self.scan_id),
        ) {
            (Ok(group), Ok(scan)) => Ok((group, scan)),
            (group, scan) => {
                let problems: Vec<String> = [
                    group.err().map(|e| format!("accountGroupId {e}")),
                    scan.err().map(|e| format!("scanId {e}")),
                ]
                .into_iter()
                .flatten()
                .collect();
                Err(ApiError::Validation(problems.join("; ")))
            }
        }
    }
}

/// `data` of a successful cancel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelledScan {
    #[schema(value_type = ScanId)]
    scan_id: String,
    /// Always `cancelled`.
    status: ScanStatus,
    /// `queued` or `running` when cancelled by this request; `cancelled` when it already was.
    previous_status: ScanStatus,
    /// When the scan was cancelled (the original moment on a repeated cancel).
    #[serde(with = "time::serde::rfc3339")]
    cancelled_at: OffsetDateTime,
}

impl From<Cancellation> for CancelledScan {
    fn from(cancellation: Cancellation) -> Self {
        Self {
            scan_id: cancellation.scan_id.to_string(),
            status: ScanStatus::Cancelled,
            previous_status: cancellation.previous_status,
            cancelled_at: cancellation.cancelled_at,
        }
    }
}

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
        (status = 200, description = "Scan cancelled, now or before", body = crate::http::openapi::SignalScanCancelSuccessResponse),
        (status = 400, response = crate::http::openapi::BadRequest),
        (status = 401, response = crate::http::openapi::Unauthorized),
        (status = 403, response = crate::http::openapi::Forbidden),
        (status = 404, response = crate::http::openapi::NotFound),
        (status = 422, response = crate::http::openapi::NotCancellable),
        (status = 429, response = crate::http::openapi::RateLimited),
        (status = 500, response = crate::http::openapi::InternalError),
        (status = 502, response = crate::http::openapi::UpstreamError),
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
    metrics::counter!(
        super::metrics::CANCELS,
        "previous_status" => cancellation.previous_status.as_str()
    )
    .increment(1);
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
        (status = 200, description = "The scan", body = crate::http::openapi::SignalScanResponse),
        (status = 400, response = crate::http::openapi::BadRequest),
        (status = 401, response = crate::http::openapi::Unauthorized),
        (status = 403, response = crate::http::openapi::Forbidden),
        (status = 404, response = crate::http::openapi::NotFound),
        (status = 429, response = crate::http::openapi::RateLimited),
        (status = 500, response = crate::http::openapi::InternalError),
        (status = 502, response = crate::http::openapi::UpstreamError),
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

/// `data` of the list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScanList {
    /// Newest first.
    scans: Vec<Scan>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

impl From<ScanPage> for ScanList {
    fn from(page: ScanPage) -> Self {
        Self {
            scans: page.scans,
            next_cursor: page.next.map(|cursor| cursor.encode()),
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
        (status = 200, description = "A page of scans", body = crate::http::openapi::SignalScanListResponse),
        (status = 400, response = crate::http::openapi::BadRequest),
        (status = 401, response = crate::http::openapi::Unauthorized),
        (status = 403, response = crate::http::openapi::Forbidden),
        (status = 429, response = crate::http::openapi::RateLimited),
        (status = 500, response = crate::http::openapi::InternalError),
        (status = 502, response = crate::http::openapi::UpstreamError),
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

/// One row of the audit trail as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// null for the row that records the scan's creation.
    #[schema(required = true)]
    from: Option<ScanStatus>,
    to: ScanStatus,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    /// The trace id of the request that made the change; null when none did (e.g. the command line).
    #[schema(required = true)]
    trace_id: Option<String>,
}

impl From<ScanEvent> for EventView {
    fn from(event: ScanEvent) -> Self {
        Self {
            from: event.from,
            to: event.to,
            at: event.at,
            trace_id: event.trace_id,
        }
    }
}

/// `data` of the events route.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScanEvents {
    scan_id: ScanId,
    /// Oldest first.
    events: Vec<EventView>,
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
        (status = 200, description = "The scan's status changes", body = crate::http::openapi::SignalScanEventsResponse),
        (status = 400, response = crate::http::openapi::BadRequest),
        (status = 401, response = crate::http::openapi::Unauthorized),
        (status = 403, response = crate::http::openapi::Forbidden),
        (status = 404, response = crate::http::openapi::NotFound),
        (status = 429, response = crate::http::openapi::RateLimited),
        (status = 500, response = crate::http::openapi::InternalError),
        (status = 502, response = crate::http::openapi::UpstreamError),
    )
)]
pub async fn scan_events(
    State(service): State<ScanService>,
    principal: Principal,
    ApiPath(path): ApiPath<ScanPath>,
) -> Result<Json<Envelope<ScanEvents>>, ApiError> {
    let (group, scan) = path.parse()?;
    let events = service.scan_events(&principal, &group, &scan).await?;
    Ok(Json(Envelope::success(ScanEvents {
        scan_id: scan,
        events: events.into_iter().map(EventView::from).collect(),
    })))
}
