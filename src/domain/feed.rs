//! Where a reader of the change feed stands in the audit trail, and how it moves, exactly.
//!
//! Audit rows are ordered by `(xid, id)`: the transaction that wrote the row, then the row's id.
//! Neither alone follows commit order: a transaction that started earlier (smaller xid, smaller id)
//! may commit after a later one. So a reader keeps two things:
//! - the **frontier**, the greatest position it has delivered;
//! - the **pending** transactions: those the database reported as still running, below the
//!   frontier, whose rows may yet appear behind it (with the last id delivered of each).
//!
//! A read asks for rows past the frontier plus rows of the pending transactions, and the database
//! answers with the snapshot it read them under ([`Horizon`]). A pending transaction that the
//! snapshot shows finished has had all of its rows returned by that read (a transaction's rows
//! become visible together) and is dropped. Every change is delivered once, none is skipped, and
//! the state stays small: at most one entry per transaction running in the database at once.
//!
//! On SQLite writers take the database's one write lock for the whole transaction, so ids follow
//! commit order, every xid is 0 and nothing is ever pending.

use std::collections::BTreeMap;
use std::fmt;

use super::scan::ScanChange;

/// The place of one audit row: its transaction, then its id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeedPosition {
    pub xid: u64,
    pub id: i64,
}

/// What the database could not yet see when it read a page: every transaction below `xmax` that
/// is not in `running` had finished.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Horizon {
    pub xmax: u64,
    pub running: Vec<u64>,
}

impl Horizon {
    /// Parses PostgreSQL's `pg_snapshot` text form, `xmin:xmax:xip,xip,…`.
    pub(crate) fn parse_pg_snapshot(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let _xmin: u64 = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let running = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?,
        };
        parts.next().is_none().then_some(Self { xmax, running })
    }

    fn finished(&self, xid: u64) -> bool {
        xid < self.xmax && !self.running.contains(&xid)
    }

    /// What both snapshots together know: a transaction either saw finished is finished.
    fn merge(&self, other: &Horizon) -> Horizon {
        let xmax = self.xmax.max(other.xmax);
        let mut running: Vec<u64> = self
            .running
            .iter()
            .chain(&other.running)
            .copied()
            .filter(|&xid| xid < xmax && !self.finished(xid) && !other.finished(xid))
            .collect();
        running.sort_unstable();
        running.dedup();
        Horizon { xmax, running }
    }
}

/// One audit row as the feed reads it: where it stands, and what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRow {
    pub position: FeedPosition,
    /// What changed; a scan's creation is a change from no status (`from` is `None`).
    pub change: ScanChange,
    /// The trace id of the request that made the change, when one did.
    pub trace_id: Option<String>,
}

/// A change delivered to a reader, and the cursor that resumes right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    pub position: FeedPosition,
    pub change: ScanChange,
    /// The trace id of the request that made the change, when a request did.
    pub trace_id: Option<String>,
    /// The token of the cursor that stands right after this change (what a client resumes from):
    /// written once here rather than the cursor cloned for every change delivered.
    pub cursor: String,
}

/// The most rows one read of the audit trail returns.
pub const PAGE_ROWS: u32 = 1000;

/// What one read of the audit trail returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedPage {
    /// In `(xid, id)` order.
    pub rows: Vec<FeedRow>,
    /// The snapshot the rows were read under; `None` where ids follow commit order (SQLite).
    pub horizon: Option<Horizon>,
    /// True when the read returned [`PAGE_ROWS`] rows: read again before waiting.
    pub full: bool,
    /// The greatest position the retention sweep had deleted when the rows were read: of the
    /// read's group, or of every group for a read of them all; `None` while it has deleted none.
    pub trimmed: Option<FeedPosition>,
}

impl FeedPage {
    /// Whether rows `cursor` has yet to deliver may have been deleted before this read, so that
    /// the page may lack them: a reader moving past it would skip them without a trace.
    pub(crate) fn may_lack_rows_of(&self, cursor: &FeedCursor) -> bool {
        self.trimmed
            .is_some_and(|mark| cursor.reaches_below(mark, self.horizon.as_ref()))
    }
}

/// A reader's place in the feed; see the module documentation. Its text form ([`fmt::Display`],
/// `FeedCursor::decode`) is an opaque token that resumes a reader exactly where it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedCursor {
    frontier: FeedPosition,
    /// Transaction → the last id of it delivered (0: none yet).
    pending: BTreeMap<u64, i64>,
    /// Every snapshot applied so far, merged: pages may arrive out of snapshot order (a page read
    /// by another reader and shared, see `feed::hub`), and a transaction once seen finished
    /// must not become pending again, or its rows would be delivered twice. Not in the token.
    known: Option<Horizon>,
}

/// The most pending transactions a cursor may carry: far above what a database runs at once
/// (PostgreSQL's `max_connections` bounds it), low enough to refuse a forged token cheaply.
const MAX_PENDING: usize = 4096;

impl FeedCursor {
    /// A cursor at the head of the trail: `newest` is the greatest position visible under
    /// `horizon`; every row that commits from now on lies ahead of it.
    pub(crate) fn at_head(newest: FeedPosition, horizon: Option<&Horizon>) -> Self {
        let mut cursor = Self {
            frontier: newest,
            pending: BTreeMap::new(),
            known: None,
        };
        if let Some(horizon) = horizon {
            cursor.learn(horizon);
            cursor.watch_running(horizon);
        }
        cursor
    }

    pub(crate) fn frontier(&self) -> FeedPosition {
        self.frontier
    }

    /// The pending transactions and the last id delivered of each, for the next read.
    pub fn pending(&self) -> impl Iterator<Item = (u64, i64)> + '_ {
        self.pending.iter().map(|(xid, id)| (*xid, *id))
    }

    /// Whether a row this cursor has yet to deliver may lie at or below `trimmed`, the greatest
    /// position the retention sweep deleted of the cursor's group: the rows past the frontier, and
    /// those of each pending transaction past its last delivered id. A pending transaction still
    /// running under `read_under`, a snapshot taken when the mark was read or after, had no rows
    /// any sweep behind that mark could see, so none deleted: a transaction left open for days
    /// must not expire every cursor that names it. One that finished (or with no snapshot to
    /// tell, SQLite's case, where no cursor has pending transactions) counts when it lies below
    /// the mark: it may have had no row deleted, but the rows are gone and cannot tell.
    pub(crate) fn reaches_below(
        &self,
        trimmed: FeedPosition,
        read_under: Option<&Horizon>,
    ) -> bool {
        let may_have_been_swept = |xid: u64| read_under.is_none_or(|horizon| horizon.finished(xid));
        self.frontier < trimmed
            || self
                .pending
                .iter()
                .any(|(&xid, &id)| FeedPosition { xid, id } < trimmed && may_have_been_swept(xid))
    }

    /// The snapshots this cursor has learnt from, merged: for a cursor fresh from the head of
    /// the trail, the snapshot the head was read under.
    pub(crate) fn horizon(&self) -> Option<&Horizon> {
        self.known.as_ref()
    }

    /// Moves past `page`, returning each change not delivered before that `wanted` keeps, with
    /// the cursor that stands right after it (what a client resumes from). The cursor also moves
    /// past the rows it does not keep, so a reader of one quiet group never reads the others' rows
    /// twice.
    pub fn advance(
        &mut self,
        page: &FeedPage,
        wanted: impl Fn(&ScanChange) -> bool,
    ) -> Vec<FeedEvent> {
        if let Some(horizon) = &page.horizon {
            self.learn(horizon);
        }
        let mut delivered = Vec::new();
        for row in &page.rows {
            let FeedPosition { xid, id } = row.position;
            match self.pending.get_mut(&xid) {
                Some(last) if id > *last => *last = id,
                Some(_) => continue,
                None if row.position > self.frontier => self.frontier = row.position,
                None => continue,
            }
            let change = &row.change;
            if !wanted(change) {
                continue;
            }
            // The cursor handed out must name what may still commit behind this row.
            if let Some(horizon) = &page.horizon {
                self.watch_running(horizon);
            }
            delivered.push(FeedEvent {
                position: row.position,
                change: change.clone(),
                trace_id: row.trace_id.clone(),
                cursor: self.token(),
            });
        }
        if let Some(horizon) = &page.horizon {
            self.watch_running(horizon);
            // A read that was cut short may not hold every row of a finished transaction yet.
            if !page.full {
                self.pending.retain(|xid, _| !horizon.finished(*xid));
            }
        }
        delivered
    }

    fn learn(&mut self, horizon: &Horizon) {
        self.known = Some(match &self.known {
            Some(known) => known.merge(horizon),
            None => horizon.clone(),
        });
    }

    /// Running transactions below the frontier may still commit rows behind it.
    fn watch_running(&mut self, horizon: &Horizon) {
        let known = self.known.as_ref();
        for &xid in &horizon.running {
            if xid < self.frontier.xid && !known.is_some_and(|known| known.finished(xid)) {
                self.pending.entry(xid).or_insert(0);
            }
        }
    }

    /// The text form, written into a string sized for it at once (a token is made for every
    /// change delivered, and growing the string as it is written cost more than writing it).
    fn token(&self) -> String {
        // At most 20 digits for an xid, 19 for an id, and two separators, per position.
        let mut token = String::with_capacity(41 * (1 + self.pending.len()));
        fmt::Write::write_fmt(&mut token, format_args!("{self}")).expect("a String takes any text");
        token
    }

    /// Reads a token made by [`fmt::Display`]; `None` for anything else.
    pub(crate) fn decode(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let frontier = parse_position(parts.next()?)?;
        let mut pending = BTreeMap::new();
        for part in parts {
            let FeedPosition { xid, id } = parse_position(part)?;
            // Pending transactions lie behind the frontier, each named once.
            if xid >= frontier.xid || pending.insert(xid, id).is_some() {
                return None;
            }
        }
        (pending.len() <= MAX_PENDING).then_some(Self {
            frontier,
            pending,
            known: None,
        })
    }
}

fn parse_position(text: &str) -> Option<FeedPosition> {
    let (xid, id) = text.split_once('-')?;
    // Digits only: no sign, no spaces, one spelling per number.
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(xid) || !digits(id) || (xid.len() > 1 && xid.starts_with('0')) {
        return None;
    }
    if id.len() > 1 && id.starts_with('0') {
        return None;
    }
    Some(FeedPosition {
        xid: xid.parse().ok()?,
        id: id.parse().ok()?,
    })
}

impl fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.frontier.xid, self.frontier.id)?;
        for (xid, id) in &self.pending {
            write!(f, ".{xid}-{id}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::domain::ids::{AccountGroupId, ScanId};
    use crate::domain::scan::ScanStatus;

    fn row(xid: u64, id: i64) -> FeedRow {
        FeedRow {
            position: FeedPosition { xid, id },
            change: ScanChange {
                scan_id: ScanId::generate(),
                account_group_id: AccountGroupId::parse("507f1f77bcf86cd799439011").unwrap(),
                from: Some(ScanStatus::Queued),
                to: ScanStatus::Cancelled,
                at: OffsetDateTime::UNIX_EPOCH,
                reason: None,
            },
            trace_id: None,
        }
    }

    fn page(rows: Vec<FeedRow>, xmax: u64, running: &[u64]) -> FeedPage {
        FeedPage {
            rows,
            horizon: Some(Horizon {
                xmax,
                running: running.to_vec(),
            }),
            full: false,
            trimmed: None,
        }
    }

    fn positions(delivered: &[FeedEvent]) -> Vec<(u64, i64)> {
        delivered
            .iter()
            .map(|event| (event.position.xid, event.position.id))
            .collect()
    }

    fn all(_: &ScanChange) -> bool {
        true
    }

    #[test]
    fn a_transaction_that_commits_after_a_later_one_is_still_delivered_once() {
        let mut cursor = FeedCursor::default();
        // 100 wrote id 1 but has not committed; 101 wrote id 2 and committed.
        let first = cursor.advance(&page(vec![row(101, 2)], 102, &[100]), all);
        assert_eq!(positions(&first), [(101, 2)]);
        assert_eq!(cursor.pending().collect::<Vec<_>>(), [(100, 0)]);

        // 100 commits: its row comes back through the pending entry, then the entry is gone.
        let second = cursor.advance(&page(vec![row(100, 1)], 103, &[]), all);
        assert_eq!(positions(&second), [(100, 1)]);
        assert_eq!(cursor.pending().count(), 0);

        // Reading the same rows again delivers nothing.
        let again = cursor.advance(&page(vec![row(100, 1), row(101, 2)], 103, &[]), all);
        assert!(again.is_empty());
    }

    #[test]
    fn the_cursor_of_each_row_resumes_exactly_after_it() {
        let mut cursor = FeedCursor::default();
        let delivered =
            cursor.advance(&page(vec![row(101, 2), row(104, 3)], 105, &[100, 103]), all);
        let after_first = &delivered[0].cursor;
        // After (101, 2) only 100 lies behind; 103 is still ahead of that frontier.
        assert_eq!(after_first, "101-2.100-0");
        assert_eq!(delivered[1].cursor, "104-3.100-0.103-0");

        // A client that resumes after the first row gets the second, and 100 when it commits.
        let mut resumed = FeedCursor::decode(after_first).unwrap();
        let next = resumed.advance(&page(vec![row(100, 1), row(104, 3)], 105, &[103]), all);
        assert_eq!(positions(&next), [(100, 1), (104, 3)]);
    }

    #[test]
    fn a_page_read_under_an_older_snapshot_does_not_make_a_finished_transaction_pending_again() {
        let mut cursor = FeedCursor::default();
        // A fresh read: 100 committed, and 101 after it.
        let fresh = cursor.advance(&page(vec![row(100, 1), row(101, 2)], 105, &[]), all);
        assert_eq!(positions(&fresh), [(100, 1), (101, 2)]);
        // A page shared late, read while 100 still ran: it holds nothing new.
        assert!(cursor.advance(&page(vec![], 102, &[100]), all).is_empty());
        assert_eq!(cursor.pending().count(), 0);
        // So 100's row, passed on again by another reader, is not delivered twice.
        assert!(
            cursor
                .advance(&page(vec![row(100, 1)], 106, &[]), all)
                .is_empty()
        );
    }

    #[test]
    fn rows_not_kept_move_the_cursor_and_creations_are_delivered() {
        let mut cursor = FeedCursor::default();
        let mut creation = row(0, 1);
        creation.change.from = None;
        creation.change.to = ScanStatus::Queued;
        let mut other_group = row(0, 2);
        other_group.change.account_group_id =
            AccountGroupId::parse("aaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        let page = FeedPage {
            rows: vec![creation, other_group, row(0, 3), row(0, 4)],
            horizon: None,
            full: false,
            trimmed: None,
        };
        let mine =
            |change: &ScanChange| change.account_group_id.as_str() == "507f1f77bcf86cd799439011";
        let delivered = cursor.advance(&page, mine);
        assert_eq!(positions(&delivered), [(0, 1), (0, 3), (0, 4)]);
        assert_eq!(delivered[0].change.from, None);
        // The cursor stands past the last row read, kept or not.
        let mut quiet = FeedCursor::default();
        assert!(quiet.advance(&page, |_| false).is_empty());
        assert_eq!(quiet.to_string(), "0-4");
    }

    #[test]
    fn a_page_cut_short_keeps_pending_transactions_until_a_whole_read() {
        let mut cursor = FeedCursor::at_head(FeedPosition { xid: 50, id: 9 }, None);
        cursor.pending.insert(40, 0);
        let mut cut = page(vec![row(40, 3)], 60, &[]);
        cut.full = true;
        assert_eq!(positions(&cursor.advance(&cut, all)), [(40, 3)]);
        assert_eq!(cursor.pending().collect::<Vec<_>>(), [(40, 3)]);

        let rest = cursor.advance(&page(vec![row(40, 4)], 60, &[]), all);
        assert_eq!(positions(&rest), [(40, 4)]);
        assert_eq!(cursor.pending().count(), 0);
    }

    #[test]
    fn without_a_horizon_ids_alone_order_the_trail() {
        let mut cursor = FeedCursor::default();
        let first = cursor.advance(
            &FeedPage {
                rows: vec![row(0, 1), row(0, 2)],
                horizon: None,
                full: false,
                trimmed: None,
            },
            all,
        );
        assert_eq!(positions(&first), [(0, 1), (0, 2)]);
        assert_eq!(cursor.to_string(), "0-2");
    }

    #[test]
    fn at_head_treats_running_transactions_below_the_newest_row_as_pending() {
        let horizon = Horizon {
            xmax: 90,
            running: vec![70, 95],
        };
        let cursor = FeedCursor::at_head(FeedPosition { xid: 80, id: 5 }, Some(&horizon));
        assert_eq!(cursor.to_string(), "80-5.70-0");
    }

    #[test]
    fn tokens_round_trip_and_anything_else_is_refused() {
        for token in ["123-45.100-0.120-44", "0-4"] {
            assert_eq!(FeedCursor::decode(token).unwrap().to_string(), token);
        }
        for garbage in [
            "",
            "-",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-2.",
            "01-2",
            "1-02",
            "+1-2",
            "1-2.3-0",     // pending at or past the frontier
            "9-2.3-0.3-1", // named twice
            "1-2 ",
            "18446744073709551616-1",
            "1-9223372036854775808",
        ] {
            assert_eq!(FeedCursor::decode(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn a_cursor_reaches_below_a_trimmed_mark_by_its_frontier_or_a_pending_transaction() {
        let cursor = FeedCursor::decode("50-9.40-3").unwrap();
        assert!(!cursor.reaches_below(FeedPosition { xid: 40, id: 3 }, None));
        assert!(!cursor.reaches_below(FeedPosition { xid: 30, id: 100 }, None));
        // Rows of transaction 40 past id 3 may have been deleted.
        assert!(cursor.reaches_below(FeedPosition { xid: 40, id: 4 }, None));
        assert!(cursor.reaches_below(FeedPosition { xid: 50, id: 10 }, None));
        assert!(
            !FeedCursor::decode("50-9")
                .unwrap()
                .reaches_below(FeedPosition { xid: 50, id: 9 }, None)
        );
    }

    /// A pending transaction still running when the mark was read had no rows a sweep could
    /// see: it does not count, however far the mark has passed it; once finished, it does.
    #[test]
    fn a_pending_transaction_still_running_under_the_marks_snapshot_had_nothing_swept() {
        let cursor = FeedCursor::decode("50-9.40-0").unwrap();
        let mark = FeedPosition { xid: 45, id: 20 };
        let running = Horizon {
            xmax: 60,
            running: vec![40],
        };
        let finished = Horizon {
            xmax: 60,
            running: vec![],
        };
        assert!(!cursor.reaches_below(mark, Some(&running)));
        assert!(cursor.reaches_below(mark, Some(&finished)));
        assert!(cursor.reaches_below(mark, None));
        // The frontier counts whatever the snapshot.
        assert!(cursor.reaches_below(FeedPosition { xid: 55, id: 1 }, Some(&running)));
    }

    /// A snapshot saw finished only what began before its `xmax` and was not running then.
    #[test]
    fn a_snapshot_finished_only_what_began_before_it_and_no_longer_ran() {
        let horizon = Horizon {
            xmax: 100,
            running: vec![90],
        };
        assert!(horizon.finished(89));
        assert!(!horizon.finished(90), "running");
        assert!(!horizon.finished(100), "not begun");
        assert!(!horizon.finished(101));
    }

    /// Merged snapshots keep running what neither saw finished, so a later row of it is still
    /// awaited; what either saw finished is finished.
    #[test]
    fn merged_snapshots_keep_running_what_neither_saw_finished() {
        let older = Horizon {
            xmax: 105,
            running: vec![100],
        };
        let newer = Horizon {
            xmax: 106,
            running: vec![100, 105],
        };
        assert_eq!(older.merge(&newer), newer);
        assert_eq!(newer.merge(&older), newer);
        let later = Horizon {
            xmax: 110,
            running: vec![],
        };
        assert_eq!(newer.merge(&later), later);
    }

    /// A cursor fresh from the head knows the snapshot the head was read under (what a resume
    /// checks a pending transaction against), and none without one.
    #[test]
    fn a_cursor_at_the_head_keeps_its_snapshot() {
        let horizon = Horizon {
            xmax: 90,
            running: vec![70],
        };
        let head = FeedPosition { xid: 80, id: 5 };
        assert_eq!(
            FeedCursor::at_head(head, Some(&horizon)).horizon(),
            Some(&horizon)
        );
        assert_eq!(FeedCursor::at_head(head, None).horizon(), None);
    }

    /// A pending transaction's rows already delivered are not delivered again when a shared page
    /// holds them.
    #[test]
    fn a_pending_transactions_rows_are_delivered_once() {
        let mut cursor = FeedCursor::decode("50-9.40-3").unwrap();
        let page = page(vec![row(40, 2), row(40, 3), row(40, 4)], 60, &[40]);
        assert_eq!(positions(&cursor.advance(&page, all)), [(40, 4)]);
    }

    /// The frontier's own transaction is not pending: its rows up to the frontier are delivered,
    /// and a later one lies past it.
    #[test]
    fn the_frontiers_own_transaction_is_not_pending() {
        let mut cursor = FeedCursor::decode("101-2").unwrap();
        assert!(cursor.advance(&page(vec![], 103, &[101]), all).is_empty());
        assert_eq!(cursor.to_string(), "101-2");
    }

    #[test]
    fn pg_snapshots_parse() {
        assert_eq!(
            Horizon::parse_pg_snapshot("10:20:10,14"),
            Some(Horizon {
                xmax: 20,
                running: vec![10, 14]
            })
        );
        assert_eq!(
            Horizon::parse_pg_snapshot("7:7:"),
            Some(Horizon {
                xmax: 7,
                running: vec![]
            })
        );
        assert_eq!(Horizon::parse_pg_snapshot("7:7"), None);
        assert_eq!(Horizon::parse_pg_snapshot("7:x:"), None);
    }
}
