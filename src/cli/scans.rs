//! `scans create | transition | show`: an operator's (or a runner's) scan operations, through
//! `ScanService` with no principal.

use anyhow::anyhow;
use serde::Serialize;

use super::migrated_store;
use super::output::{print_json, rfc3339};
use crate::config::DatabaseArgs;
use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::scan::{Actor, Scan, ScanStatus};
use crate::service::HINT_FLUSH_LIMIT;
use crate::service::{ScanService, ServiceError};

/// A scan as `scans create --json` prints it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScanView<'a> {
    scan_id: &'a str,
    status: ScanStatus,
}

impl<'a> From<&'a Scan> for ScanView<'a> {
    fn from(scan: &'a Scan) -> Self {
        Self {
            scan_id: scan.id.as_str(),
            status: scan.status,
        }
    }
}

async fn scan_service(database: &DatabaseArgs) -> anyhow::Result<ScanService> {
    Ok(ScanService::new(migrated_store(database).await?))
}

/// The command line's words for what the service refused.
fn refused(scan_id: &ScanId, error: ServiceError) -> anyhow::Error {
    match error {
        ServiceError::InvalidTransition { current, requested } => {
            anyhow!("scan {scan_id} is {current}; it cannot move to {requested}")
        }
        ServiceError::ScanNotFound => anyhow!("no scan with id {scan_id}"),
        other => other.into(),
    }
}

pub async fn create(
    database: &DatabaseArgs,
    group: &AccountGroupId,
    status: ScanStatus,
    json: bool,
) -> anyhow::Result<()> {
    let scan = scan_service(database)
        .await?
        .create_scan(group, status)
        .await?;
    if json {
        return print_json(&ScanView::from(&scan));
    }
    println!("{} {}", scan.id, scan.status);
    Ok(())
}

pub async fn transition(
    database: &DatabaseArgs,
    scan_id: &ScanId,
    to: &str,
    json: bool,
) -> anyhow::Result<()> {
    let to: ScanStatus = to.parse()?;
    let service = scan_service(database).await?;
    let actor = Actor {
        api_key_id: None,
        trace_id: None,
    };
    let outcome = service.advance(scan_id, to, actor).await;
    // Tell listeners now rather than leave them to find the change at their next poll.
    service.flush_hints(HINT_FLUSH_LIMIT).await;
    let scan = outcome.map_err(|error| refused(scan_id, error))?;
    if json {
        return print_json(&scan);
    }
    println!("{} {}", scan.id, scan.status);
    Ok(())
}

pub async fn show(database: &DatabaseArgs, scan_id: &ScanId, json: bool) -> anyhow::Result<()> {
    let scan = scan_service(database)
        .await?
        .find_scan(scan_id)
        .await
        .map_err(|error| refused(scan_id, error))?;
    if json {
        return print_json(&scan);
    }
    println!("scan          {}", scan.id);
    println!("account group {}", scan.account_group_id);
    println!("status        {}", scan.status);
    for (label, at) in [
        ("created", Some(scan.created_at)),
        ("updated", Some(scan.updated_at)),
        ("started", scan.started_at),
        ("finished", scan.finished_at),
        ("cancelled", scan.cancelled_at),
    ] {
        println!("{label:<13} {}", rfc3339(at));
    }
    Ok(())
}
