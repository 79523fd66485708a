//! Extractors whose rejections are our envelope, and the raw paths they read.

use axum::extract::{FromRequestParts, Path, Query};
use serde::Deserialize;

use super::error::ApiError;
use crate::domain::ids::{AccountGroupId, ScanId};

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
    pub fn parse(&self) -> Result<AccountGroupId, ApiError> {
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
    pub fn parse(&self) -> Result<(AccountGroupId, ScanId), ApiError> {
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
