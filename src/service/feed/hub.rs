//! One reader of the audit trail per process, shared by every follower (the HTTP change streams):
//! a follower costs no database connection and no query while it keeps up.
//!
//! The hub reads pages of every group's changes and hands each page whole, with the snapshot it
//! was read under, to the followers of the groups it holds changes of. Each follower moves its own
//! cursor over those pages, delivering its group's rows, so its cursor stays exact: what it
//! delivers, and the token a client resumes from, are its own. A follower is not given the pages
//! without its group's changes, and does not need them: its cursor moves past them with the next
//! page it is given, and a transaction that may still commit behind that cursor either was
//! running when it applied its last page (and is pending in it) or starts later, with a greater
//! xid than any row the cursor has passed.
//! A follower that starts from a cursor, or falls behind the broadcast buffer, first subscribes and
//! then reads its group's rows of the trail by its own cursor until it is level (through the
//! group's index: a replay costs that group's changes, never the other groups' history); pages
//! that arrive meanwhile are mostly rows it has already delivered, which its cursor skips. Reading
//! only its group's rows is as exact as reading them all: a row of the group that commits late,
//! behind the cursor, belongs to a transaction that was running when the group's rows were read
//! (and is pending in the cursor) or that started later (and lies ahead of it).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OnceCell, broadcast};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::{FeedError, FeedEvent, FeedReader, Start};
use crate::domain::feed::{FeedCursor, FeedPage};
use crate::domain::ids::AccountGroupId;
use crate::store::{Store, StoreError, joined};

/// Pages kept per group for followers that read slowly; one that falls further behind reads the
/// trail.
const BUFFERED_PAGES: usize = 256;
/// The longest the hub waits before reading again after the database failed it.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The process's shared reader; started by its first follower.
#[derive(Clone)]
pub struct ChangeHub {
    store: Store,
    poll: Duration,
    /// The least time between two reads while changes keep coming (`STREAM_BATCH_MS`): a read
    /// costs PostgreSQL mostly per read, not per row (it is planned afresh each time: 0.65 ms for
    /// 75 rows, 0.83 ms for 150, in BENCHMARKS.md as of `cf02152`), and every instance's hub reads. See
    /// [`FeedReader::spaced`].
    batch: Duration,
    running: Arc<OnceCell<Running>>,
}

struct Running {
    /// The pages of each followed group. A follower of a quiet group is not woken by every other
    /// group's changes: with hundreds of streams open, that was most of their cost.
    groups: Arc<Mutex<HashMap<AccountGroupId, broadcast::Sender<Arc<FeedPage>>>>>,
    /// The task reading the trail, stopped with the hub (the application that made it is gone):
    /// it would otherwise poll the database, and hold its listening connection, for good.
    reader: Option<tokio::task::AbortHandle>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

impl Running {
    fn subscribe(&self, group: AccountGroupId) -> broadcast::Receiver<Arc<FeedPage>> {
        let mut groups = self
            .groups
            .lock()
            .expect("no panic while holding the groups");
        groups
            .entry(group)
            .or_insert_with(|| broadcast::channel(BUFFERED_PAGES).0)
            .subscribe()
    }
}

/// Hands `page` to the followers of each group it holds changes of, and forgets the groups nobody
/// follows any more.
fn dispatch(
    groups: &Mutex<HashMap<AccountGroupId, broadcast::Sender<Arc<FeedPage>>>>,
    page: FeedPage,
) {
    let page = Arc::new(page);
    let mut groups = groups.lock().expect("no panic while holding the groups");
    groups.retain(|_, followers| followers.receiver_count() > 0);
    let mut given: Vec<AccountGroupId> = Vec::new();
    for change in page.rows.iter().map(|row| &row.change) {
        let group = change.account_group_id;
        if given.contains(&group) {
            continue;
        }
        given.push(group);
        if let Some(followers) = groups.get(&group) {
            // A follower that went away meanwhile is fine.
            let _ = followers.send(Arc::clone(&page));
        }
    }
}

impl ChangeHub {
    pub fn new(store: Store, poll: Duration, batch: Duration) -> Self {
        Self {
            store,
            poll,
            batch,
            running: Arc::new(OnceCell::new()),
        }
    }

    /// Follows `group`'s changes from `start`. Starting from a cursor reads the trail up to the
    /// present on the first [`Follower::next`].
    pub async fn follow(
        &self,
        group: AccountGroupId,
        start: Start,
    ) -> Result<Follower, StoreError> {
        let running = self.running.get_or_try_init(|| self.start()).await?;
        // Subscribe before taking the place: a page handed out in between is received, and its
        // rows already behind the place are skipped by the cursor.
        let pages = running.subscribe(group);
        let (cursor, behind) = match start {
            // The trail's head, not the hub's place: the hub may be a batch, a lost hint's poll
            // or a database stall behind, and what committed before the follower started is not
            // its to deliver. The hub's pages up to the head pass by behind the cursor.
            Start::Now => (self.store.feed_head().await?, false),
            Start::After(cursor) => (cursor, true),
        };
        Ok(Follower {
            store: self.store.clone(),
            group,
            cursor,
            pages,
            ready: VecDeque::new(),
            behind,
            reading: None,
        })
    }

    async fn start(&self) -> Result<Running, StoreError> {
        let mut reader = FeedReader::open(self.store.clone(), Start::Now, None, self.poll)
            .await?
            .spaced(self.batch);
        let groups = Arc::new(Mutex::new(HashMap::new()));
        let followed = Arc::clone(&groups);
        let reader = tokio::spawn(async move {
            let mut retry = Duration::from_millis(100);
            let mut failing = false;
            loop {
                match reader.next_page().await {
                    Ok(page) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("the change hub reads the audit trail again");
                        }
                        retry = Duration::from_millis(100);
                        // No follower right now is fine: the hub keeps its place for the next.
                        dispatch(&followed, page);
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_ms = retry.as_millis() as u64,
                            "the change hub cannot read the audit trail; retrying");
                        failing = true;
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(MAX_RETRY);
                    }
                }
            }
        });
        Ok(Running {
            groups,
            reader: Some(reader.abort_handle()),
        })
    }
}

/// One group's changes, from the hub's pages and, when behind, from the trail itself.
pub struct Follower {
    store: Store,
    group: AccountGroupId,
    cursor: FeedCursor,
    pages: broadcast::Receiver<Arc<FeedPage>>,
    ready: VecDeque<FeedEvent>,
    /// Read the trail by the own cursor before taking pages from the hub.
    behind: bool,
    /// The read of the trail in progress, kept across calls of [`Self::next`]: see
    /// [`Self::read_trail_page`].
    reading: Option<JoinHandle<Result<FeedPage, StoreError>>>,
}

impl Drop for Follower {
    /// A follower gone (its stream ended) stops the read it started.
    fn drop(&mut self) {
        if let Some(reading) = &self.reading {
            reading.abort();
        }
    }
}

impl Follower {
    /// Everything delivered so far lies behind this cursor.
    pub fn cursor(&self) -> &FeedCursor {
        &self.cursor
    }

    /// The next change of the group. An error leaves the follower where it was: call again to
    /// retry a [`FeedError::Store`] (reading the trail).
    pub async fn next(&mut self) -> Result<FeedEvent, FeedError> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(event);
            }
            if self.behind {
                self.behind = self.read_trail_page().await?;
                continue;
            }
            match self.pages.recv().await {
                Ok(page) => self.take(&page),
                Err(broadcast::error::RecvError::Lagged(_)) => self.fall_behind(),
                Err(broadcast::error::RecvError::Closed) => {
                    let stopped = StoreError::Unavailable("the change hub stopped".into());
                    return Err(stopped.into());
                }
            }
        }
    }

    /// The next change of the group when one is at hand, without waiting or reading the trail:
    /// a stream takes every change it has before it writes them out together.
    pub(crate) fn next_at_hand(&mut self) -> Option<FeedEvent> {
        while self.ready.is_empty() && !self.behind {
            match self.pages.try_recv() {
                Ok(page) => self.take(&page),
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.fall_behind(),
                // Nothing more now; a closed hub is reported by the next `next`.
                Err(_) => break,
            }
        }
        self.ready.pop_front()
    }

    /// The group's changes of `page` that the cursor has not passed yet; or, when the sweep had
    /// deleted rows of any group past the cursor before the hub read the page (a hub that lagged
    /// by the whole retention time), a read of the trail by the cursor, which tells whether the
    /// group's own were among them.
    fn take(&mut self, page: &FeedPage) {
        if page.may_lack_rows_of(&self.cursor) {
            self.fall_behind();
            return;
        }
        let group = &self.group;
        self.ready.extend(
            self.cursor
                .advance(page, |change| change.account_group_id == *group),
        );
    }

    /// Too slow for the buffer: subscribe afresh, then read what was missed.
    fn fall_behind(&mut self) {
        self.pages = self.pages.resubscribe();
        self.behind = true;
    }

    /// Reads the trail's next page past the cursor; true when it was full, so more may follow.
    /// One page at a time, each handed out before the next is read: a replay from far back holds
    /// a page, not the group's history, and its first change comes after one read.
    ///
    /// The read runs in a task of its own, which the follower keeps until it ends, so a caller
    /// that stops waiting for it (a stream sending its keep-alive, or checking its key) takes it
    /// up again at its next call. Started afresh at each call, a read slower than the keep-alive
    /// never finished: the stream sent keep-alives only, and each read given up held a database
    /// connection until its statement ended. In a task, it ends and gives its connection back
    /// even while its stream is not polled (a client that stopped reading), and an idle follower
    /// (hundreds per process) carries no reading future's space. The cursor stays put meanwhile
    /// (pages are not taken while behind), so the page read is still the one past it.
    async fn read_trail_page(&mut self) -> Result<bool, FeedError> {
        let reading = self.reading.get_or_insert_with(|| {
            let (store, cursor, group) = (self.store.clone(), self.cursor.clone(), self.group);
            let read = async move { store.read_feed(&cursor, Some(&group)).await };
            tokio::spawn(read.in_current_span())
        });
        let read = reading.await;
        self.reading = None;
        let page = joined(read, "a read of the audit trail")?;
        if page.may_lack_rows_of(&self.cursor) {
            return Err(FeedError::Expired);
        }
        self.take(&page);
        Ok(page.full)
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;
    use time::OffsetDateTime;

    use super::*;
    use crate::domain::feed::{FeedPosition, FeedRow};
    use crate::domain::ids::ScanId;
    use crate::domain::scan::{ScanChange, ScanStatus};
    use crate::store::StoreOptions;

    fn group(hex: &str) -> AccountGroupId {
        AccountGroupId::parse(hex).unwrap()
    }

    /// A page of one row per group, at ids `first`, `first + 1`, …, as SQLite reads them (no
    /// snapshot: ids follow commit order).
    fn page(first: i64, groups: &[AccountGroupId]) -> FeedPage {
        let rows = (first..).zip(groups).map(|(id, group)| FeedRow {
            position: FeedPosition { xid: 0, id },
            change: ScanChange {
                scan_id: ScanId::generate(),
                account_group_id: *group,
                from: Some(ScanStatus::Running),
                to: ScanStatus::Cancelled,
                at: OffsetDateTime::UNIX_EPOCH,
                reason: None,
            },
            trace_id: None,
        });
        FeedPage {
            rows: rows.collect(),
            horizon: None,
            full: false,
            trimmed: None,
        }
    }

    /// A follower of `group` taking pages from `pages`, level with the hub, over a real SQLite
    /// store (read only by a catch-up, which these tests leave to `Follower::next`).
    fn follower(group: AccountGroupId, pages: broadcast::Receiver<Arc<FeedPage>>) -> Follower {
        // The pool connects lazily: the file is made only if a test reads the trail.
        let file =
            std::env::temp_dir().join(format!("signal-scans-hub-{}.db", uuid::Uuid::new_v4()));
        let store = Store::connect(&StoreOptions {
            url: SecretString::from(format!("sqlite://{}", file.display())),
            timeout: Duration::from_secs(1),
            max_connections: 1,
            write_batches: 1,
            publish_interval: Duration::from_millis(10),
        })
        .unwrap();
        Follower {
            store,
            group,
            cursor: FeedCursor::default(),
            pages,
            ready: VecDeque::new(),
            behind: false,
            reading: None,
        }
    }

    fn ids(events: impl IntoIterator<Item = FeedEvent>) -> Vec<i64> {
        events.into_iter().map(|event| event.position.id).collect()
    }

    /// Every page already sent is at hand, in order, and only the follower's group's rows; then
    /// nothing, without waiting; the follower's cursor stands after the last of them.
    #[tokio::test]
    async fn what_is_at_hand_is_every_page_already_sent_then_nothing() {
        let (mine, other) = (
            group("507f1f77bcf86cd799439011"),
            group("507f1f77bcf86cd799439022"),
        );
        let (pages, receiver) = broadcast::channel(BUFFERED_PAGES);
        let mut follower = follower(mine, receiver);
        pages.send(Arc::new(page(1, &[mine, other, mine]))).unwrap();
        pages.send(Arc::new(page(4, &[other, mine]))).unwrap();

        let at_hand: Vec<FeedEvent> = std::iter::from_fn(|| follower.next_at_hand()).collect();

        assert_eq!(ids(at_hand.clone()), [1, 3, 5]);
        assert!(!follower.behind);
        // What it delivered lies behind its cursor: the last event's own.
        assert_eq!(follower.cursor().to_string(), at_hand[2].cursor);
    }

    /// A follower that lagged past the buffer takes nothing more from the pages (the next rows
    /// it would take lie past the ones it lost) and is marked behind, so that `next` reads the
    /// trail first.
    #[tokio::test]
    async fn a_follower_that_lagged_takes_no_page_until_it_has_read_the_trail() {
        let mine = group("507f1f77bcf86cd799439011");
        let (pages, receiver) = broadcast::channel(1);
        let mut follower = follower(mine, receiver);
        pages.send(Arc::new(page(1, &[mine]))).unwrap();
        pages.send(Arc::new(page(2, &[mine]))).unwrap();

        let at_hand = follower.next_at_hand();

        assert_eq!(at_hand, None);
        assert!(follower.behind);
        assert_eq!(follower.cursor, FeedCursor::default());
    }

    /// A page read after the sweep had deleted rows past the follower's cursor (a hub that lagged
    /// by the whole retention time) may lack rows of the follower's group: it takes nothing from
    /// it and reads the trail by its own cursor, whose group mark says whether it lost any. A page
    /// whose mark lies behind the cursor is taken as any other.
    #[tokio::test]
    async fn a_page_read_past_deleted_rows_sends_the_follower_to_the_trail() {
        let mine = group("507f1f77bcf86cd799439011");
        let (pages, receiver) = broadcast::channel(BUFFERED_PAGES);
        let mut follower = follower(mine, receiver);
        let swept_before = |mut page: FeedPage, id| {
            page.trimmed = Some(FeedPosition { xid: 0, id });
            Arc::new(page)
        };
        pages.send(swept_before(page(1, &[mine]), 0)).unwrap();
        pages.send(swept_before(page(3, &[mine]), 2)).unwrap();

        let at_hand: Vec<FeedEvent> = std::iter::from_fn(|| follower.next_at_hand()).collect();

        assert_eq!(ids(at_hand), [1], "the page before the deleted row 2 only");
        assert!(follower.behind);
    }

    /// A page goes to the followers of the groups it holds rows of, and a group nobody follows
    /// any more is forgotten.
    #[test]
    fn a_page_reaches_its_groups_followers_and_unfollowed_groups_are_forgotten() {
        let (followed, left, quiet) = (
            group("507f1f77bcf86cd799439011"),
            group("507f1f77bcf86cd799439022"),
            group("507f1f77bcf86cd799439033"),
        );
        let running = Running {
            groups: Arc::default(),
            reader: None,
        };
        let mut follower = running.subscribe(followed);
        let mut quiet_follower = running.subscribe(quiet);
        drop(running.subscribe(left));

        dispatch(&running.groups, page(1, &[followed, left]));

        assert_eq!(follower.try_recv().unwrap().rows.len(), 2);
        assert!(quiet_follower.try_recv().is_err());
        let mut kept: Vec<AccountGroupId> =
            running.groups.lock().unwrap().keys().copied().collect();
        kept.sort_by_key(|group| group.to_string());
        assert_eq!(kept, [followed, quiet]);
    }
}
