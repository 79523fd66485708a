//! The change feed: every committed status change, delivered once, in cursor order, to whoever
//! follows changes (`scans watch`, and anything else that must hear of a cancel).
//!
//! A notification is only a hint; the audit trail is the truth. A reader listens first, then
//! finds its place, then reads the trail by its cursor each time a hint arrives, and at least
//! every `FEED_POLL_MS` without one, so a lost hint (a process killed between its commit and its
//! publish, a dropped connection) delays a change by at most one poll and loses nothing.

mod hub;

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

pub use hub::{ChangeHub, Follower};

pub use crate::domain::feed::FeedEvent;
use crate::domain::feed::{FeedCursor, FeedPage};
use crate::domain::ids::AccountGroupId;
use crate::domain::scan::ScanChange;
use crate::store::{ChangeHints, Hint, Store, StoreError};

/// Why a reader did not deliver its next change.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// Reading the trail failed. The reader is where it was: call again to retry.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The retention sweep deleted changes the reader had yet to deliver, so going on would skip
    /// them without a trace. The reader is where it was, and a reader resuming from its place is
    /// refused as expired (`check_resume`): a stream ends, so that its client's reconnect hears
    /// the 410.
    #[error("changes this reader had yet to deliver are no longer kept (AUDIT_RETENTION_DAYS)")]
    Expired,
}

/// Where a reader begins.
#[derive(Debug, Clone)]
pub enum Start {
    /// With the changes that commit from now on.
    Now,
    /// With every change after this cursor.
    After(FeedCursor),
}

/// Reads one account group's changes (or every group's) as they commit.
pub struct FeedReader {
    store: Store,
    cursor: FeedCursor,
    group: Option<AccountGroupId>,
    poll: Duration,
    /// `None` after the listening connection failed: the reader polls and listens again.
    hints: Option<ChangeHints>,
    ready: VecDeque<FeedEvent>,
    /// The trail must be read before waiting: at the start, and after a failed read.
    behind: bool,
    /// The least time from one read to the next that waited for a hint (see [`Self::spaced`]).
    gap: Duration,
    last_read: Option<Instant>,
    /// The poll, not a hint, woke the reader, and no read has succeeded since.
    polled: bool,
    /// Polls in a row that found changes no hint announced (see [`Self::suspect_the_listener`]).
    unannounced: u8,
}

impl FeedReader {
    pub async fn open(
        store: Store,
        start: Start,
        group: Option<AccountGroupId>,
        poll: Duration,
    ) -> Result<Self, StoreError> {
        // Listen before finding the place: a change that commits in between lies ahead of the
        // place, and its hint is already queued.
        let hints = store.hints().await?;
        let cursor = match start {
            Start::Now => store.feed_head().await?,
            Start::After(cursor) => cursor,
        };
        Ok(Self {
            store,
            cursor,
            group,
            poll,
            hints: Some(hints),
            ready: VecDeque::new(),
            behind: true,
            gap: Duration::ZERO,
            last_read: None,
            polled: false,
            unannounced: 0,
        })
    }

    /// Reads at most once per `gap` while the trail keeps changing, so that under load one read
    /// gathers the changes of many notifications: fewer, larger reads cost the database less per
    /// change (each read is planned afresh) and each change is late by `gap` at most. A change after
    /// a quiet spell is read as soon as its notification arrives, and a full page is followed by
    /// the next at once.
    pub(crate) fn spaced(mut self, gap: Duration) -> Self {
        self.gap = gap;
        self
    }

    /// Everything delivered so far lies behind this cursor.
    pub fn cursor(&self) -> &FeedCursor {
        &self.cursor
    }

    /// The next committed change. An error leaves the reader where it was: call again to retry
    /// a [`FeedError::Store`].
    pub async fn next(&mut self) -> Result<FeedEvent, FeedError> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(event);
            }
            let page = self.read_page().await?;
            if page.may_lack_rows_of(&self.cursor) {
                // Read again when called again: the next read finds the same mark.
                self.behind = true;
                return Err(FeedError::Expired);
            }
            let group = self.group.as_ref();
            self.ready
                .extend(self.cursor.advance(&page, |change| in_group(group, change)));
        }
    }

    /// The next page read from the trail, as read, with the reader moved past it: what a
    /// [`ChangeHub`] shares with its followers, each of which checks the page's retention mark
    /// against its own cursor.
    pub(crate) async fn next_page(&mut self) -> Result<FeedPage, StoreError> {
        let page = self.read_page().await?;
        self.cursor.advance(&page, |_| false);
        Ok(page)
    }

    /// Waits for a hint or the poll unless the last read was cut short or failed, then reads.
    async fn read_page(&mut self) -> Result<FeedPage, StoreError> {
        if !self.behind {
            self.polled = !self.wait().await;
            self.keep_gap().await;
        }
        self.behind = true;
        self.last_read = Some(Instant::now());
        let page = self
            .store
            .read_feed(&self.cursor, self.group.as_ref())
            .await?;
        self.behind = page.full;
        if std::mem::take(&mut self.polled) {
            // Twice in a row: a poll that falls between a commit and its hint, milliseconds
            // later, finds one unannounced change now and then. A poll that finds nothing ends
            // the run.
            self.unannounced = match page.rows.is_empty() {
                true => 0,
                false => self.unannounced + 1,
            };
            if self.unannounced >= 2 {
                self.unannounced = 0;
                self.suspect_the_listener().await;
            }
        }
        Ok(page)
    }

    /// Polls found changes that no hint announced. On PostgreSQL that is what a listening
    /// connection that died silently looks like (a NAT or firewall dropping it, a failover behind
    /// one address: no reset ever arrives, so it waits forever), which would leave every change
    /// to the poll for the life of the process. Listen afresh, then read once more, so that
    /// nothing committed in between is left to the next poll. (A hint can also be lost by a
    /// process killed between its commit and its publish: listening afresh costs a connection.)
    /// The old listener, dropped, sends `UNLISTEN` from a task of its own, which on a dead
    /// connection waits until TCP gives up on it (minutes): one socket a replacement, for a while.
    async fn suspect_the_listener(&mut self) {
        if !self.hints.as_ref().is_some_and(ChangeHints::may_go_silent) {
            return;
        }
        tracing::warn!(
            "polls found changes no notification announced: listening for them on a new connection"
        );
        self.hints = self.store.hints().await.ok();
        self.behind = true;
    }

    /// Until `gap` has passed since the last read. The read that follows covers every hint that
    /// arrives meanwhile: a hint is sent after its change committed.
    async fn keep_gap(&mut self) {
        let Some(due) = self.last_read.map(|last| last + self.gap) else {
            return;
        };
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
            if let Some(hints) = self.hints.as_mut() {
                hints.discard_queued();
            }
        }
    }

    /// Until a hint that concerns this reader (true), or the poll interval (false).
    async fn wait(&mut self) -> bool {
        let poll = tokio::time::sleep(self.poll);
        tokio::pin!(poll);
        loop {
            let Some(hints) = self.hints.as_mut() else {
                poll.await;
                // Listen again before the read that follows, so nothing falls in between.
                self.hints = self.store.hints().await.ok();
                return true;
            };
            tokio::select! {
                () = &mut poll => return false,
                hint = hints.next() => match hint {
                    Ok(Hint::Changes(changes)) if !concerns(self.group.as_ref(), &changes) => {
                        // Of another group, but the listener is alive.
                        self.unannounced = 0;
                        continue;
                    }
                    Ok(_) => {
                        self.unannounced = 0;
                        // One read covers every hint already queued.
                        hints.discard_queued();
                        return true;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "lost the change notifications; polling until they are back");
                        self.hints = None;
                    }
                },
            }
        }
    }
}

/// Whether `change` belongs to the followed group (every change does, when following them all).
fn in_group(group: Option<&AccountGroupId>, change: &ScanChange) -> bool {
    group.is_none_or(|group| change.account_group_id == *group)
}

/// Whether a hint lists a change of the followed group (any change, when following them all).
fn concerns(group: Option<&AccountGroupId>, changes: &[ScanChange]) -> bool {
    changes.iter().any(|change| in_group(group, change))
}
