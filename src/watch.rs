//! `scans watch`: one JSON line per status change, as it commits.
//!
//! On PostgreSQL it listens on `signal_scan_events`; on SQLite, whose broadcast reaches only the
//! process that made the change, it reads the audit trail a few times a second. Either way a gap
//! (a dropped connection, a slow reader) is filled from the audit trail, so nothing is lost.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::scan::{ScanChange, ScanStatus};
use crate::store::{FeedItem, Store, StoreError};

const SQLITE_POLL: Duration = Duration::from_millis(200);
/// How many audit ids behind the newest one read a catch-up reads again.
const RECHECK_WINDOW: i64 = 1000;

/// Prints changes until the process is stopped.
pub async fn run(store: &Store, group: Option<&AccountGroupId>) -> Result<(), StoreError> {
    // Listen first, then note where the audit trail stands: a change committed in between is
    // heard live, and one committed before is behind the starting point.
    let mut feed = match store {
        Store::Postgres(_) => Some(store.subscribe().await?),
        Store::Sqlite(_) => None,
    };
    let mut printer = Printer::new(store.latest_event_id().await?);
    tracing::info!("watching for status changes");
    let Some(feed) = feed.as_mut() else {
        loop {
            printer.catch_up(store, group).await?;
            tokio::time::sleep(SQLITE_POLL).await;
        }
    };
    loop {
        match feed.next().await? {
            FeedItem::Change(change) => {
                if group.is_none_or(|group| *group == change.account_group_id) {
                    printer.print(&change);
                }
            }
            FeedItem::Gap => {
                // Listen again before catching up, so nothing falls between the two.
                *feed = store.subscribe().await?;
                printer.catch_up(store, group).await?;
            }
        }
    }
}

/// Prints each change once, whether it came live or from the audit trail.
struct Printer {
    /// The newest audit row already read back.
    after_event: i64,
    /// A scan reaches each status at most once (the state machine has no cycles), so
    /// (scan, status) names a change exactly.
    printed: HashSet<(ScanId, ScanStatus)>,
    /// The newest audit row when the watch began.
    started_at: i64,
}

impl Printer {
    fn new(after_event: i64) -> Self {
        Self {
            after_event,
            printed: HashSet::new(),
            started_at: after_event,
        }
    }

    fn print(&mut self, change: &ScanChange) {
        if self.printed.insert((change.scan_id.clone(), change.to)) {
            let line = serde_json::to_string(change).expect("a change serializes");
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        }
    }

    async fn catch_up(
        &mut self,
        store: &Store,
        group: Option<&AccountGroupId>,
    ) -> Result<(), StoreError> {
        // Audit ids follow insertion, not commit, order: a change with an id just below the
        // newest one read may commit later. Re-reading a window behind the mark catches it;
        // printing is idempotent.
        // Never behind where the watch started: older changes are not news.
        let mut after = self
            .after_event
            .saturating_sub(RECHECK_WINDOW)
            .max(self.started_at);
        loop {
            let page = store.changes_after(after, group).await?;
            if page.is_empty() {
                return Ok(());
            }
            for (event, change) in page {
                self.print(&change);
                after = event;
                self.after_event = self.after_event.max(event);
            }
        }
    }
}
