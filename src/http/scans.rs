//! Scan handlers: parse the path into ids, call the service, shape the answer.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::envelope::Envelope;
use super::error::{ApiError, Problems, UnknownNames, both};
use super::extract::{ApiBody, ApiPath, GroupPath, NoFields, ScanPath};
use super::headers::single;
use super::openapi::responses as doc;
use super::trace_id::TraceId;
use super::views::{CancelledScan, CancelledScans, ScanEvents, ScanList};
use crate::domain::ids::ScanId;
use crate::domain::keys::Principal;
use crate::domain::scan::{IdempotencyKey, Scan, ScanCursor, ScanPageQuery, ScanStatus};
use crate::service::ScanService;

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// `POST /v1/accounts/{accountGroupId}/signals/scans/{scanId}/cancel`
#[utoipa::path(
    post,
    path = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/cancel",
    operation_id = "cancelSignalScan",
    tag = "signal scans",
    summary = "Cancel a signal scan",
    description = "Cancels a public signal scan when the scan is still in a cancellable status. Only \
        queued or running scans can be cancelled. Completed or failed scans return 422 VALIDATION_ERROR \
        when cancellation is attempted. Cancelling a cancelled scan answers 200 with `previousStatus` \
        cancelled and the original `cancelledAt`. Requires the `signals:write` permission and access to the account group. \
        No request body. Idempotency keys are not supported: check the scan's current state \
        (`GET …/scans/{scanId}`) before retrying a cancel that got no answer.",
    params(ScanPath),
    responses(
        (status = 200, description = "Scan cancelled (by this request, or before it: see `previousStatus`)", body = doc::SignalScanCancelSuccessResponse),
        (status = 400, response = doc::BadScanRequest),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 422, response = doc::NotCancellable),
    )
)]
pub(crate) async fn cancel_scan(
    State(service): State<ScanService>,
    principal: Principal,
    trace_id: TraceId,
    ApiPath(path): ApiPath<ScanPath>,
) -> Result<Json<Envelope<CancelledScan>>, ApiError> {
    let (group, scan) = path.parse()?;
    let cancellation = service
        .cancel(&principal, &group, &scan, trace_id.as_str())
        .await?;
    tracing::info!(
        scan.id = %cancellation.scan_id,
        scan.previous_status = %cancellation.previous_status,
        "scan cancelled"
    );
    Ok(Json(Envelope::success(cancellation.into())))
}

/// The most scans one batch cancel names.
const MAX_BATCH_CANCEL: usize = 100;

/// The body of a batch cancel.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CancelScansRequest {
    /// The scans to cancel: 1 to 100 distinct ids, 24 hexadecimal characters each; ids are
    /// compared in either case. Read as any JSON, so that a value of the wrong type is a 400
    /// naming its place.
    #[schema(schema_with = scan_id_list, required = true)]
    scan_ids: Option<serde_json::Value>,
}

/// `scanIds`' schema: 1 to 100 distinct scan ids (utoipa's field attributes cannot say
/// "distinct").
fn scan_id_list() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(utoipa::openapi::Ref::from_schema_name("ScanId"))
        .min_items(Some(1))
        .max_items(Some(MAX_BATCH_CANCEL))
        .unique_items(true)
        .description(Some(
            "The scans to cancel: 1 to 100 distinct ids, 24 hexadecimal characters each. Ids are \
             compared in either case: one id twice in different cases is a repeat (400), which \
             `uniqueItems` alone does not say.",
        ))
        .build()
}

impl CancelScansRequest {
    /// The ids `body` names, or a 400 naming what is wrong with them.
    fn read(body: &ApiBody) -> Result<Vec<ScanId>, ApiError> {
        body.object::<Self>("request body must be a JSON object with scanIds")?
            .parse()
    }

    /// The ids, or a 400 naming each id that is not one or repeats another (a client sees all
    /// its mistakes at once, as on the other routes: the first alone was named).
    fn parse(self) -> Result<Vec<ScanId>, ApiError> {
        let raw = match self.scan_ids {
            None => return Err(ApiError::Validation("scanIds is required".into())),
            Some(serde_json::Value::Array(raw)) => raw,
            Some(_) => {
                return Err(ApiError::Validation(
                    "scanIds must be an array of scan ids".into(),
                ));
            }
        };
        if !(1..=MAX_BATCH_CANCEL).contains(&raw.len()) {
            return Err(ApiError::Validation(format!(
                "scanIds must hold 1 to {MAX_BATCH_CANCEL} ids; it holds {}",
                raw.len()
            )));
        }
        let mut problems = Problems::default();
        // Each id with its place, which a repeat names.
        let mut ids: Vec<(usize, ScanId)> = Vec::with_capacity(raw.len());
        for (place, raw) in raw.iter().enumerate() {
            let Some(raw) = raw.as_str() else {
                problems.push(format!("scanIds[{place}] must be a string (a scan id)"));
                continue;
            };
            match ScanId::parse(raw) {
                Err(error) => problems.push(format!("scanIds[{place}] {error}")),
                Ok(id) => match ids.iter().find(|(_, seen)| *seen == id) {
                    Some((first, _)) => {
                        problems.push(format!("scanIds[{place}] repeats scanIds[{first}]"));
                    }
                    None => ids.push((place, id)),
                },
            }
        }
        problems.into_result()?;
        Ok(ids.into_iter().map(|(_, id)| id).collect())
    }
}

/// `POST /v1/accounts/{accountGroupId}/signals/scans/cancel`: cancels up to 100 scans at once.
#[utoipa::path(
    post,
    path = "/v1/accounts/{accountGroupId}/signals/scans/cancel",
    operation_id = "cancelSignalScans",
    tag = "signal scans",
    summary = "Cancel several signal scans at once",
    description = "Cancels each listed scan that is still queued or running, all in one commit, and answers \
        one result per id, in the request's order: `cancelled`, `already_cancelled` (with its original \
        `cancelledAt`), `not_cancellable` (completed or failed; nothing changed) or `not_found` (no such \
        scan in this account group). One scan's outcome never changes another's. The request is one commit: \
        all of its cancels commit or none. A 502 means none did, unless the commit itself outlasted the \
        database's timeout or the database stopped answering during it; after such a 502 or a 500, \
        cancelling the same ids again is safe and answers what happened. The body names 1 to 100 \
        distinct ids; more, none, a malformed or a repeated id is 400 and changes nothing. Requires the \
        `signals:write` permission and access to the account group.",
    params(
        ("accountGroupId" = inline(crate::domain::ids::AccountGroupId), Path,
            description = "Account group ID that scopes the request: 24 hexadecimal characters, either case."),
    ),
    request_body = CancelScansRequest,
    responses(
        (status = 200, description = "One result per requested scan, in order", body = doc::SignalScansCancelResponse),
        (status = 400, response = doc::BadBatchCancelRequest),
        (status = 403, response = doc::Forbidden),
    )
)]
pub(crate) async fn cancel_scans(
    State(service): State<ScanService>,
    principal: Principal,
    trace_id: TraceId,
    ApiPath(path): ApiPath<GroupPath>,
    body: ApiBody,
) -> Result<Json<Envelope<CancelledScans>>, ApiError> {
    let (group, scans) = both(path.parse(), CancelScansRequest::read(&body))?;
    let lines = service
        .cancel_all(&principal, &group, &scans, trace_id.as_str())
        .await?;
    tracing::info!(scans = lines.len(), "batch cancel");
    Ok(Json(Envelope::success(lines.into())))
}

/// `POST /v1/accounts/{accountGroupId}/signals/scans`: starts a scan (queued).
#[utoipa::path(
    post,
    path = "/v1/accounts/{accountGroupId}/signals/scans",
    operation_id = "createSignalScan",
    tag = "signal scans",
    summary = "Start a signal scan",
    description = "Starts a signal scan: it is queued until a runner starts it. No request body (or `{}`). \
        Answers 201 with the scan and its `Location`. With an `Idempotency-Key`, a retry by the same API key \
        for the same account group within 24 hours answers the first answer again (201, the same scan, \
        `Idempotent-Replayed: true`) and starts nothing; the same key for another account group is 422. \
        Requires the `signals:write` permission and access to the account group.",
    params(
        ("accountGroupId" = inline(crate::domain::ids::AccountGroupId), Path,
            description = "Account group ID that scopes the request: 24 hexadecimal characters, either case."),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[!-~]{1,255}$",
            description = "Makes a retry safe: 1 to 255 visible ASCII characters, remembered for 24 hours per API key."),
    ),
    responses(
        (status = 201, description = "Scan started (or, replayed, started before with this Idempotency-Key)",
            body = doc::SignalScanCreatedResponse,
            headers(
                ("Location" = String, description = "The scan's own URL."),
                ("Idempotent-Replayed" = String, description = "`true` when the answer is a replay of an earlier request with the same Idempotency-Key; absent otherwise."),
            )),
        (status = 400, response = doc::BadCreateRequest),
        (status = 403, response = doc::Forbidden),
        (status = 422, response = doc::IdempotencyKeyReused),
    )
)]
pub(crate) async fn create_scan(
    State(service): State<ScanService>,
    principal: Principal,
    trace_id: TraceId,
    headers: HeaderMap,
    ApiPath(path): ApiPath<GroupPath>,
    body: ApiBody,
) -> Result<Response, ApiError> {
    let (group, (once, NoFields {})) = both(
        path.parse(),
        both(idempotency_key(&headers), body.optional_fields()),
    )?;
    let started = service
        .create_scan(&principal, &group, once.as_ref(), trace_id.as_str())
        .await?;
    let scan = started.scan;
    if !started.replayed {
        tracing::info!(scan.id = %scan.id, "scan created");
    }
    let location = format!(
        "/v1/accounts/{}/signals/scans/{}",
        scan.account_group_id, scan.id
    );
    let mut response = (StatusCode::CREATED, Json(Envelope::success(scan))).into_response();
    let response_headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response_headers.insert(header::LOCATION, location);
    }
    if started.replayed {
        response_headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The request's `Idempotency-Key`, if it sent one: once, 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let malformed = || {
        ApiError::Validation(
            "Idempotency-Key must be 1 to 255 visible ASCII characters, sent once".into(),
        )
    };
    let Some(value) = single(headers, IDEMPOTENCY_KEY).map_err(|_| malformed())? else {
        return Ok(None);
    };
    let key = value.to_str().ok().and_then(IdempotencyKey::parse);
    key.map(Some).ok_or_else(malformed)
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
    responses(
        (status = 200, description = "The scan", body = doc::SignalScanResponse),
        (status = 400, response = doc::BadScanRequest),
        (status = 403, response = doc::ReadForbidden),
        (status = 404, response = doc::NotFound),
    )
)]
pub(crate) async fn get_scan(
    State(service): State<ScanService>,
    principal: Principal,
    ApiPath(path): ApiPath<ScanPath>,
) -> Result<Json<Envelope<Scan>>, ApiError> {
    let (group, scan) = path.parse()?;
    let scan = service.get_scan(&principal, &group, &scan).await?;
    Ok(Json(Envelope::success(scan)))
}

const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;

/// The list's query (`status`, `limit`, `cursor`, each at most once), every problem named.
fn parse_list_query(query: Option<&str>) -> Result<ScanPageQuery, ApiError> {
    let mut problems = Problems::default();
    let mut unknown = UnknownNames::default();
    let (mut status, mut limit, mut cursor) = (None, None, None);
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let given = match name.as_ref() {
            "status" => &mut status,
            "limit" => &mut limit,
            "cursor" => &mut cursor,
            name => {
                unknown.add(name);
                continue;
            }
        };
        match given {
            Some(_) => problems.push(format!("{name} may be given once")),
            None => *given = Some(value),
        }
    }
    let status = match status.as_deref().map(str::parse::<ScanStatus>) {
        Some(Ok(status)) => Some(status),
        Some(Err(_)) => {
            problems.push("status must be one of queued, running, completed, failed, cancelled");
            None
        }
        None => None,
    };
    let limit = match limit.as_deref().map(str::parse::<u32>) {
        None => DEFAULT_PAGE,
        Some(Ok(limit)) if (1..=MAX_PAGE).contains(&limit) => limit,
        Some(_) => {
            problems.push(format!("limit must be an integer from 1 to {MAX_PAGE}"));
            DEFAULT_PAGE
        }
    };
    let after = match cursor.as_deref().map(ScanCursor::decode) {
        Some(Some(cursor)) => Some(cursor),
        Some(None) => {
            problems.push("cursor must be a nextCursor returned by this list");
            None
        }
        None => None,
    };
    if let Some(problem) = unknown.problem("status, limit and cursor") {
        problems.push(problem);
    }
    problems.into_result()?;
    Ok(ScanPageQuery {
        status,
        limit,
        after,
    })
}

/// `GET /v1/accounts/{accountGroupId}/signals/scans?status=&limit=&cursor=`: newest first.
#[utoipa::path(
    get,
    path = "/v1/accounts/{accountGroupId}/signals/scans",
    operation_id = "listSignalScans",
    tag = "signal scans",
    summary = "List signal scans",
    description = "The account group's scans (or only those in one `status`), newest first, a page \
        at a time: pass `nextCursor` back as `cursor`; it is null on the last page. A malformed or \
        unknown query parameter is 400 naming it. Requires `signals:read` or `signals:write` and \
        access to the account group.",
    params(
        ("accountGroupId" = inline(crate::domain::ids::AccountGroupId), Path,
            description = "Account group ID that scopes the request: 24 hexadecimal characters, either case."),
        ("status" = Option<ScanStatus>, Query, description = "Only scans in this status."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100,
            description = "Scans per page, 1 to 100; 20 when absent."),
        ("cursor" = Option<String>, Query, pattern = "^(2[bB])?(3[0-9]){1,20}2[eE](3[0-9]|4[1-6]|6[1-6]){24}$",
            description = "The `nextCursor` of the previous page, passed back unchanged (an opaque token)."),
    ),
    responses(
        (status = 200, description = "A page of scans", body = doc::SignalScanListResponse),
        (status = 400, response = doc::BadListRequest),
        (status = 403, response = doc::ReadForbidden),
    )
)]
pub(crate) async fn list_scans(
    State(service): State<ScanService>,
    principal: Principal,
    ApiPath(path): ApiPath<GroupPath>,
    RawQuery(query): RawQuery,
) -> Result<Json<Envelope<ScanList>>, ApiError> {
    let (group, query) = both(path.parse(), parse_list_query(query.as_deref()))?;
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
    responses(
        (status = 200, description = "The scan's status changes", body = doc::SignalScanEventsResponse),
        (status = 400, response = doc::BadScanRequest),
        (status = 403, response = doc::ReadForbidden),
        (status = 404, response = doc::NotFound),
    )
)]
pub(crate) async fn scan_events(
    State(service): State<ScanService>,
    principal: Principal,
    ApiPath(path): ApiPath<ScanPath>,
) -> Result<Json<Envelope<ScanEvents>>, ApiError> {
    let (group, scan) = path.parse()?;
    let events = service.scan_events(&principal, &group, &scan).await?;
    Ok(Json(Envelope::success(ScanEvents::new(scan, events))))
}
