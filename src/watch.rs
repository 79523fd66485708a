//! `scans watch`: one JSON line per committed status change, read from the change feed.

use std::io::Write;

use crate::domain::ids::AccountGroupId;
use crate::feed::{FeedReader, Start};
use crate::store::{Store, StoreError};

/// Prints changes until the process is stopped. A database that goes away is waited for: the
/// feed resumes from its cursor, so nothing is printed twice or missed.
pub async fn run(
    store: Store,
    group: Option<AccountGroupId>,
    poll: std::time::Duration,
) -> Result<(), StoreError> {
    let mut feed = FeedReader::open(store, Start::Now, group, poll).await?;
    tracing::info!("watching for status changes");
    loop {
        match feed.next().await {
            Ok(event) => {
                let line = serde_json::to_string(&event.change).expect("a change serializes");
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{line}");
                let _ = stdout.flush();
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the audit trail; trying again");
                tokio::time::sleep(poll).await;
            }
        }
    }
}
