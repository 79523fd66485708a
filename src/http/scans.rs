//! Scan handlers: parse the path into ids, call the service, shape the answer.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::envelope::Envelope;
use super::error::ApiError;
use super::trace_id::TraceId;
use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::keys::Principal;
use crate::domain::scan::ScanStatus;
use crate::domain::service::{Cancellation, ScanService};

/// `Path`, but its rejection is our envelope.
#[derive(FromRequestParts)]
#[from_request(via(Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The raw path of a scan route, before its ids are parsed.
#[derive(Deserialize)]
pub struct ScanPath {
    #[serde(rename = "accountGroupId")]
    account_group_id: String,
    #[serde(rename = "scanId")]
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
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelledScan {
    scan_id: String,
    status: ScanStatus,
    previous_status: ScanStatus,
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
    tracing::info!(
        scan.id = %cancellation.scan_id,
        scan.previous_status = %cancellation.previous_status,
        "scan cancelled"
    );
    Ok(Json(Envelope::success(cancellation.into())))
}
