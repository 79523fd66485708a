//! Audit retention (`AUDIT_RETENTION_DAYS`): the audit rows older than the setting are deleted in
//! the background, a bounded batch at a time, so the trail (and what a replay may cost) stops
//! growing without bound. Unset, nothing is deleted.

use std::time::Duration;

use crate::store::Store;

/// The most audit rows one delete removes: one short transaction. On SQLite, where writers take
/// turns, a cancel waits behind at most one batch (about 30 ms); on PostgreSQL cancels do not
/// wait for it at all (the delete locks only the rows it removes, which nothing else locks).
pub(crate) const BATCH: u32 = 500;
/// The pause between two full batches while a backlog is worked off, leaving the database to the
/// requests: at most `BATCH` rows per pause.
const PAUSE: Duration = Duration::from_millis(100);
/// How often the sweep looks again once nothing is left to delete.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Deletes the audit rows older than `keep`, now and every `SWEEP_EVERY`, until the process
/// ends. Started by `serve` (every replica sweeps; two sweeping at once is harmless).
pub(crate) async fn sweep_forever(store: Store, keep: Duration) {
    loop {
        sweep(&store, keep).await;
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

/// One sweep: batches until one finds less than a full batch to delete, or the database fails
/// (the next sweep tries again).
async fn sweep(store: &Store, keep: Duration) {
    // The rows' age by the clock that stamped them (the database's, on PostgreSQL).
    let cutoff = match store.clock().await {
        Ok(now) => now - keep,
        Err(error) => {
            tracing::warn!(%error, "the audit retention sweep cannot read the time; trying later");
            return;
        }
    };
    let mut deleted = 0u64;
    loop {
        match store.trim_audit(cutoff, BATCH).await {
            Ok(count) => {
                deleted += count;
                if count < u64::from(BATCH) {
                    break;
                }
                tokio::time::sleep(PAUSE).await;
            }
            Err(error) => {
                tracing::warn!(%error, "the audit retention sweep cannot delete; trying later");
                break;
            }
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, %cutoff, "deleted audit rows past their retention");
    }
}
