//! A tenant pays only for its own history: a replay of one account group's changes reads that
//! group's audit rows alone, however long another group's history is (counted in rows and read
//! from the statements' plans, never timed).

use std::time::Duration;

use serde_json::Value;
use signal_scans::domain::feed::FeedCursor;
use signal_scans::domain::ids::{AccountGroupId, ScanId};
use signal_scans::domain::keys::Permission;
use signal_scans::domain::scan::{Actor, ScanStatus, Transition};
use signal_scans::service::feed::{ChangeHub, FeedError, FeedEvent, FeedReader, Start};
use signal_scans::store::Store;
use signal_scans::store::statements::{
    POSTGRES_GROUP_FEED, POSTGRES_TRIM_AUDIT, SQLITE_GROUP_FEED,
};
use sqlx::{Connection, PgConnection, SqliteConnection};

use crate::helpers::clock_shift;
use crate::helpers::history::write_history;
use crate::helpers::plans::rows_touched;
use crate::helpers::process::ServerProcess;
use crate::helpers::sse::{SseStream, scan_ids};
use crate::helpers::{
    ApiResponse, Backend, SWEPT_410, TestApp, TestDatabase, group, id_strings, key_in,
    migrated_database, store_options,
};
use crate::store_test;

/// Long enough for anything that should happen promptly on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(10);
/// Another group's history: several of the feed's 1,000-row pages.
const OTHER_HISTORY_SCANS: u32 = 2500;

/// Cancels `count` fresh running scans of `group` through the API, in order.
async fn cancel_fresh_scans(app: &TestApp, group: &AccountGroupId, count: usize) -> Vec<ScanId> {
    let writer = app.writer(group).await;
    let mut scans = Vec::with_capacity(count);
    for _ in 0..count {
        let scan = app.scan(group, ScanStatus::Running).await;
        let cancel = app
            .cancel(Some(&writer), group.as_str(), scan.as_str())
            .await;
        assert_eq!(cancel.status, 200, "{cancel:?}");
        scans.push(scan);
    }
    scans
}

fn changes_url(app: &TestApp, group: &AccountGroupId, query: &str) -> String {
    app.url(&format!(
        "/v1/accounts/{group}/signals/scans/changes{query}"
    ))
}

/// The first `count` changes of `group`, read by a follower from the start of the trail (as
/// `scans watch --account-group` reads them).
async fn replay(store: &Store, group: AccountGroupId, count: u64) -> Vec<FeedEvent> {
    let mut reader = FeedReader::open(
        store.clone(),
        Start::After(FeedCursor::default()),
        Some(group),
        Duration::from_millis(100),
    )
    .await
    .unwrap();
    let mut events = Vec::new();
    for _ in 0..count {
        let event = tokio::time::timeout(SOON, reader.next())
            .await
            .expect("the group's changes are replayed");
        events.push(event.unwrap());
    }
    events
}

/// A stream of `group`'s changes that must be admitted, its opening `retry:` read.
async fn follow(app: &TestApp, group: &AccountGroupId, query: &str) -> SseStream {
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[*group]).await;
    let request = reqwest::Client::new()
        .get(changes_url(app, group, query))
        .bearer_auth(reader);
    SseStream::opened(request, SOON).await
}

/// Rows the statement that reads one group's feed touches in `group`'s table from the start of
/// the trail, by its plan: on PostgreSQL the rows every scan of the audit table returned or
/// filtered out (EXPLAIN ANALYZE); on SQLite, whose plans count nothing, the index and range it
/// searches.
async fn group_read_plan(app: &TestApp, group: &AccountGroupId) -> Result<u64, String> {
    match app.db.url.starts_with("postgres") {
        true => {
            let mut db = PgConnection::connect(&app.db.url).await.unwrap();
            let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "EXPLAIN (ANALYZE, FORMAT JSON) {POSTGRES_GROUP_FEED}"
            )))
            .bind("0")
            .bind(0i64)
            .bind(Vec::<String>::new())
            .bind(Vec::<i64>::new())
            .bind(1000i64)
            .bind(group.as_str())
            .fetch_one(&mut db)
            .await
            .unwrap();
            Ok(rows_touched(&plan[0]["Plan"], "signal_scan_events"))
        }
        false => {
            let mut db = SqliteConnection::connect(&app.db.url).await.unwrap();
            let steps: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "EXPLAIN QUERY PLAN {SQLITE_GROUP_FEED}"
            )))
            .bind(0i64)
            .bind(1000i64)
            .bind(group.as_str())
            .fetch_all(&mut db)
            .await
            .unwrap();
            Err(steps
                .into_iter()
                .map(|(.., detail)| detail)
                .collect::<Vec<_>>()
                .join("; "))
        }
    }
}

/// A replay from the oldest cursor, beside another group's history of several pages: the stream's
/// catch-up and `scans watch --account-group` read the group's own rows and nothing else, and the
/// statement they run touches only those. Fails when the catch-up reads every group's rows and
/// drops the others' in memory (as it did), or when the statement walks an index that holds the
/// others' rows and filters them out.
async fn a_replay_from_the_oldest_cursor_reads_only_its_own_groups_rows(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (mine, other) = (group(), group());
    write_history(&app.db.url, &other, OTHER_HISTORY_SCANS, 0, false).await;
    let cancelled = cancel_fresh_scans(&app, &mine, 3).await;
    // Each scan of mine has two audit rows: its creation and its cancel.
    let my_rows = 2 * cancelled.len() as u64;

    let before = app.served_store.feed_rows_read();
    let mut stream = follow(&app, &mine, "?after=0-0").await;
    let mut replayed = Vec::new();
    // Each scan's creation, then its cancel.
    for _ in 0..my_rows {
        replayed.push(stream.next_event(SOON).await);
    }
    stream.assert_no_event_for(Duration::from_millis(300)).await;
    let after = app.served_store.feed_rows_read();

    let watch_before = app.store.feed_rows_read();
    let watched: Vec<String> = replay(&app.store, mine, my_rows)
        .await
        .into_iter()
        .map(|event| event.change.scan_id.to_string())
        .collect();
    let watch_after = app.store.feed_rows_read();
    let plan = group_read_plan(&app, &mine).await;

    let created_then_cancelled: Vec<String> = id_strings(&cancelled)
        .into_iter()
        .flat_map(|scan| [scan.clone(), scan])
        .collect();
    assert_eq!(scan_ids(&replayed), created_then_cancelled);
    assert_eq!(watched, created_then_cancelled);
    assert_eq!(
        after.one_group - before.one_group,
        my_rows,
        "the stream's catch-up read {after:?} (from {before:?}); the group has {my_rows} rows"
    );
    assert!(
        after.every_group - before.every_group < u64::from(OTHER_HISTORY_SCANS),
        "the shared read replayed the history: {after:?} from {before:?}"
    );
    assert_eq!(
        watch_after.one_group - watch_before.one_group,
        my_rows,
        "scans watch --account-group read {watch_after:?} (from {watch_before:?})"
    );
    assert_eq!(watch_after.every_group, watch_before.every_group);
    match plan {
        Ok(touched) => assert_eq!(touched, my_rows, "rows the group's read touched"),
        Err(sqlite_plan) => assert!(
            sqlite_plan.contains("signal_scan_events_group_feed (account_group_id=? AND id>?)"),
            "{sqlite_plan}"
        ),
    }
}
store_test!(a_replay_from_the_oldest_cursor_reads_only_its_own_groups_rows);

/// A cursor at a row of transaction id 0 (written before positions were kept, or moved there by
/// a restore from another cluster) is a place in this trail, and a stream resumes after it, as
/// after a row written since (a real transaction id, an id above those at 0). A cursor at a real
/// transaction id and an id at or below the greatest at 0 comes from another cluster and is
/// refused, even where the trail holds a place past it (another group's sweep deleted rows
/// there): followed, it would skip every row at 0. PostgreSQL: SQLite's positions are all at 0.
async fn rows_of_transaction_id_0_are_resumed_after_and_another_clusters_cursor_is_refused(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let mine = group();
    let cancelled = cancel_fresh_scans(&app, &mine, 2).await;
    // As migration 0002 left the rows written before it.
    let mut admin = PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::raw_sql("UPDATE signal_scan_events SET xid = '0'")
        .execute(&mut admin)
        .await
        .unwrap();
    let created = follow(&app, &mine, "?after=0-0")
        .await
        .next_event(SOON)
        .await;
    let cursor = created.id.clone().expect("an event has an id");

    let mut resumed = follow(&app, &mine, &format!("?after={cursor}")).await;
    let next = resumed.next_event(SOON).await.json();
    let mut live = follow(&app, &mine, "").await;
    let written_since = cancel_fresh_scans(&app, &mine, 1).await;
    let since = live.next_event(SOON).await.id.expect("an event has an id");
    let mut resumed_since = follow(&app, &mine, &format!("?after={since}")).await;
    let after_since = resumed_since.next_event(SOON).await.json();
    let among_them = cursor["0-".len()..].split('.').next().unwrap();
    let past_it = format!(
        "INSERT INTO signal_scan_events_trimmed VALUES ('{}', '4', {among_them})",
        group()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(past_it))
        .execute(&mut admin)
        .await
        .unwrap();
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[mine]).await;
    let another_clusters = changes_url(&app, &mine, &format!("?after=3-{among_them}"));
    let another_clusters = SseStream::open(
        reqwest::Client::new()
            .get(another_clusters)
            .bearer_auth(reader),
    )
    .await;

    assert!(cursor.starts_with("0-"), "{cursor}");
    assert_eq!(created.json()["scanId"], cancelled[0].as_str());
    assert_eq!(next["scanId"], cancelled[0].as_str());
    assert_eq!(next["to"], "cancelled");
    assert!(!since.starts_with("0-"), "{since}");
    assert_eq!(after_since["scanId"], written_since[0].as_str());
    assert_eq!(after_since["to"], "cancelled");
    let Err(refused) = another_clusters else {
        panic!("another cluster's cursor is followed");
    };
    let details = refused.assert_error(410, "CURSOR_EXPIRED");
    assert!(
        details.contains("no place in this database's change history"),
        "{details}"
    );
}
store_test!(
    rows_of_transaction_id_0_are_resumed_after_and_another_clusters_cursor_is_refused,
    postgres_only
);

/// The audit rows of `group` in the database at `url`: (all, older than a day).
async fn audit_rows(url: &str, group: &AccountGroupId) -> (i64, i64) {
    match url.starts_with("postgres") {
        true => {
            let mut db = PgConnection::connect(url).await.unwrap();
            sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE occurred_at < now() - interval '1 day')
                 FROM signal_scan_events WHERE account_group_id = $1",
            )
            .bind(group.as_str())
            .fetch_one(&mut db)
            .await
            .unwrap()
        }
        false => {
            let mut db = SqliteConnection::connect(url).await.unwrap();
            sqlx::query_as(
                "SELECT count(*),
                        count(*) FILTER (WHERE occurred_at <
                            strftime('%Y-%m-%dT%H:%M:%S', 'now', '-1 days') || '.000000Z')
                 FROM signal_scan_events WHERE account_group_id = ?1",
            )
            .bind(group.as_str())
            .fetch_one(&mut db)
            .await
            .unwrap()
        }
    }
}

/// A scan of `group` that has no audit row left.
async fn scan_without_rows(url: &str, group: &AccountGroupId) -> String {
    let query = "SELECT id FROM signal_scans s WHERE account_group_id = $1
                 AND NOT EXISTS (SELECT 1 FROM signal_scan_events e WHERE e.scan_id = s.id)
                 LIMIT 1";
    match url.starts_with("postgres") {
        true => {
            let mut db = PgConnection::connect(url).await.unwrap();
            sqlx::query_scalar(query)
                .bind(group.as_str())
                .fetch_one(&mut db)
                .await
                .unwrap()
        }
        false => {
            let mut db = SqliteConnection::connect(url).await.unwrap();
            sqlx::query_scalar(sqlx::AssertSqlSafe(query.replace("$1", "?1")))
                .bind(group.as_str())
                .fetch_one(&mut db)
                .await
                .unwrap()
        }
    }
}

/// A change of `group` written by the store now (a scan made queued, moved to running): its scan.
async fn fresh_change(store: &Store, group: &AccountGroupId) -> ScanId {
    let scan = store.create_scan(group, ScanStatus::Queued).await.unwrap();
    let moved = store
        .transition(None, &scan.id, ScanStatus::Running, RUNNER)
        .await
        .unwrap();
    assert!(matches!(moved, Transition::Applied { .. }), "{moved:?}");
    scan.id
}

const RUNNER: Actor<'static> = Actor {
    api_key_id: None,
    trace_id: Some("runner"),
    reason: None,
};

/// The real binary with `AUDIT_RETENTION_DAYS=1` over a trail whose oldest rows are ten days old:
/// its sweep deletes them, and only them, and a cursor of a group from before its deleted rows
/// answers 410 `CURSOR_EXPIRED`, while a group that lost nothing replays from the oldest cursor and
/// a cursor after the deleted rows resumes. Fails if the setting is ignored, if young rows are
/// deleted, or if an expired cursor is served (it would skip the deleted changes silently).
async fn retention_deletes_old_rows_and_a_cursor_from_before_them_answers_410(backend: Backend) {
    let (db, store) = migrated_database(backend).await;
    let (aged, young) = (group(), group());
    write_history(&db.url, &aged, 600, 10, true).await;
    fresh_change(&store, &aged).await;
    let young_change = fresh_change(&store, &young).await;
    let reader = key_in(&store, Permission::SignalsRead, &[aged, young]).await;
    // A sweep deletes a bounded batch and no more.
    let cutoff = time::OffsetDateTime::now_utc() - Duration::from_secs(24 * 3600);
    let first_batch = store.trim_audit(cutoff, 100).await.unwrap();

    let server = ServerProcess::start(&[
        ("DATABASE_URL", db.url.as_str()),
        ("AUDIT_RETENTION_DAYS", "1"),
    ])
    .await;
    let deadline = tokio::time::Instant::now() + SOON;
    while audit_rows(&db.url, &aged).await.1 > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (aged_rows, aged_old_rows) = audit_rows(&db.url, &aged).await;
    let (young_rows, _) = audit_rows(&db.url, &young).await;
    let stream = |group: &AccountGroupId, cursor: Option<&str>| {
        let mut request = reqwest::Client::new()
            .get(server.url(&format!("/v1/accounts/{group}/signals/scans/changes")))
            .bearer_auth(&reader);
        if let Some(cursor) = cursor {
            request = request.header("Last-Event-ID", cursor);
        }
        SseStream::open(request)
    };
    let expired = stream(&aged, Some("0-0")).await.unwrap_err();
    let mut young_replay = stream(&young, Some("0-0")).await.unwrap();
    young_replay.next_frame(SOON).await;
    let young_replayed = young_replay.next_event(SOON).await;
    // A cursor at the group's kept change: after everything deleted.
    // Its move, not its creation: the creation's cursor may still name the move's transaction as
    // running, below the mark of rows this test backdated (written by recent transactions), which
    // the check counts as possibly deleted.
    let mut now = stream(&aged, None).await.unwrap().moves_only();
    now.next_frame(SOON).await;
    // Made by another process: the server hears of it by its poll.
    let later = fresh_change(&store, &aged).await;
    let live = now.next_event(SOON).await;
    let resumed = stream(&aged, live.id.as_deref()).await;
    let emptied = ApiResponse::of(
        reqwest::Client::new()
            .get(server.url(&format!(
                "/v1/accounts/{aged}/signals/scans/{}/events",
                scan_without_rows(&db.url, &aged).await
            )))
            .bearer_auth(&reader),
    )
    .await;

    assert_eq!(first_batch, 100, "one delete removes one batch");
    assert_eq!(aged_old_rows, 0, "rows older than a day are deleted");
    // The kept scan's creation and its move.
    assert_eq!(aged_rows, 2, "young rows of the aged group are kept");
    assert_eq!(young_rows, 2, "the young group keeps every row");
    assert_eq!(expired.assert_error(410, "CURSOR_EXPIRED"), SWEPT_410);
    assert_eq!(young_replayed.json()["scanId"], young_change.as_str());
    assert_eq!(live.json()["scanId"], later.as_str());
    assert!(
        resumed.is_ok(),
        "a cursor after the deleted rows resumes: {resumed:?}"
    );
    assert_eq!(emptied.status, 200, "{emptied:?}");
    assert_eq!(emptied.body["data"]["events"], serde_json::json!([]));
}
store_test!(retention_deletes_old_rows_and_a_cursor_from_before_them_answers_410);

/// What the sweep deletes is always the head of the trail: it stops at the first row younger than
/// the cutoff, so old rows behind a young one wait, and each group's mark says exactly what is
/// gone. Fails if old rows are deleted past a young one (a cursor between them would be served
/// and skip them).
async fn the_retention_delete_stops_at_the_first_younger_row(backend: Backend) {
    let (db, store) = migrated_database(backend).await;
    let (first, second) = (group(), group());
    write_history(&db.url, &first, 20, 10, false).await;
    fresh_change(&store, &first).await;
    write_history(&db.url, &second, 20, 10, false).await;
    let cutoff = time::OffsetDateTime::now_utc() - Duration::from_secs(24 * 3600);

    let deleted = store.trim_audit(cutoff, 1000).await.unwrap();
    let again = store.trim_audit(cutoff, 1000).await.unwrap();

    assert_eq!(deleted, 40, "the first group's 20 old scans, two rows each");
    assert_eq!(again, 0, "the young row holds the rest back");
    assert_eq!(audit_rows(&db.url, &first).await, (2, 0));
    assert_eq!(audit_rows(&db.url, &second).await, (40, 40));
    assert!(store.trimmed_mark(Some(&first)).await.unwrap().is_some());
    assert_eq!(store.trimmed_mark(Some(&second)).await.unwrap(), None);
}
store_test!(the_retention_delete_stops_at_the_first_younger_row);

/// Readers replaying from far back when the sweep deletes changes they have yet to read (a client
/// resuming close to the retention age, replaying slowly): each delivers the page it had read,
/// then says its place expired rather than go on past the gap, and keeps saying it. Both readers:
/// a change stream's follower and `scans watch`'s. Fails for a reader that reads on from its
/// cursor (both did: the rows left past the deleted ones came next, the gap without a trace).
async fn a_reader_whose_unread_changes_are_swept_stops_rather_than_skip_them(backend: Backend) {
    let (db, store) = migrated_database(backend).await;
    let group = group();
    // 3,000 rows ten days old: three of the trail's pages.
    write_history(&db.url, &group, 1500, 10, true).await;
    let hub = ChangeHub::new(store.clone(), Duration::from_secs(60), Duration::ZERO);
    let from_the_start = || Start::After(FeedCursor::default());
    let mut follower = hub.follow(group, from_the_start()).await.unwrap();
    let poll = Duration::from_secs(60);
    let mut watch = FeedReader::open(store.clone(), from_the_start(), Some(group), poll)
        .await
        .unwrap();
    // Each reads its first page and delivers its first change.
    follower.next().await.unwrap();
    watch.next().await.unwrap();
    let cutoff = time::OffsetDateTime::now_utc() - Duration::from_secs(24 * 3600);
    let swept = store.trim_audit(cutoff, 10_000).await.unwrap();
    let later = fresh_change(&store, &group).await;

    let mut outcomes = Vec::new();
    for reader in [Reader::Follower(&mut follower), Reader::Watch(&mut watch)] {
        outcomes.push(reader.drain(&later).await);
    }

    assert_eq!(swept, 3000);
    for (delivered, stopped, again) in outcomes {
        assert_eq!(delivered, 999, "the rest of the page read before the sweep");
        assert!(matches!(stopped, Err(FeedError::Expired)), "{stopped:?}");
        assert!(matches!(again, Err(FeedError::Expired)), "{again:?}");
    }
}
store_test!(a_reader_whose_unread_changes_are_swept_stops_rather_than_skip_them);

/// A stream replaying a long backlog to a client that reads slowly while the sweep deletes
/// changes the stream has yet to send (a resume close to the retention age): it sends what it
/// had read, then ends with its last `retry:`, never a change from past the deleted ones; the
/// client's reconnect from its last id is answered 410. Fails for a stream that reads on from its
/// cursor (it did: thousands of changes skipped, on a connection that stayed open).
async fn a_stream_whose_unsent_changes_are_swept_ends_and_its_resume_is_410(backend: Backend) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let app = TestApp::spawn(backend).await;
    let group = group();
    // 40,000 rows ten days old, 40 of the trail's pages: more than the socket buffers hold.
    write_history(&app.db.url, &group, 20_000, 10, true).await;
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[group]).await;
    // A client that reads nothing more than the head until the sweep is done: the stream stops
    // reading the trail once the sockets' buffers are full, a few MB into the backlog.
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /v1/accounts/{group}/signals/scans/changes HTTP/1.1\r\nhost: {}\r\n\
         authorization: Bearer {reader}\r\nlast-event-id: 0-0\r\nconnection: close\r\n\r\n",
        app.addr
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut socket = BufReader::new(socket);
    let mut received = Vec::new();
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        socket.read_until(b'\n', &mut received).await.unwrap();
        head = String::from_utf8_lossy(&received).into_owned();
    }
    let cutoff = time::OffsetDateTime::now_utc() - Duration::from_secs(24 * 3600);
    let swept = app.store.trim_audit(cutoff, 50_000).await.unwrap();
    let later = fresh_change(&app.store, &group).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), socket.read_to_end(&mut rest))
        .await
        .expect("the stream ends")
        .unwrap();
    let body = String::from_utf8_lossy(&rest).into_owned();
    let ids: Vec<&str> = body
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .collect();
    let last = ids.last().copied().unwrap_or("0-0").to_owned();
    let resumed = ApiResponse::of(
        app.client
            .get(app.url(&format!("/v1/accounts/{group}/signals/scans/changes")))
            .bearer_auth(&reader)
            .header("Last-Event-ID", &last),
    )
    .await;

    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(swept, 40_000);
    assert!(
        !body.contains(later.as_str()),
        "a change past the deleted ones was sent"
    );
    assert!(ids.len() < 40_000, "{} events", ids.len());
    assert!(
        body.ends_with("retry: 2000\n\n\r\n0\r\n\r\n"),
        "{:?}",
        &body[body.len().saturating_sub(200)..]
    );
    assert_eq!(resumed.assert_error(410, "CURSOR_EXPIRED"), SWEPT_410);
}
store_test!(a_stream_whose_unsent_changes_are_swept_ends_and_its_resume_is_410);

/// A transaction left open (an idle session, in any database of the cluster) is named by every
/// cursor as one that may still commit rows behind it. Once the sweep deletes rows written after
/// it began, it lies below the group's mark, but it had no rows the sweep could see: a stream
/// from now still delivers, its ids resume, and `scans watch` reads on. Fails for a check that
/// counts such a transaction as possibly swept (every stream then ended at its first change,
/// every resume answered 410 and every watch exited, for as long as the transaction stayed open).
async fn a_transaction_left_open_past_the_retention_time_expires_no_cursor(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let mut idle = PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut idle).await.unwrap();
    let open: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut idle)
        .await
        .unwrap();
    // Written, ten days old, by a transaction that began after the open one.
    write_history(&app.db.url, &group, 1, 10, false).await;
    let cutoff = time::OffsetDateTime::now_utc() - Duration::from_secs(24 * 3600);
    let swept = app.store.trim_audit(cutoff, 100).await.unwrap();
    let mark = app.store.trimmed_mark(Some(&group)).await.unwrap().unwrap();
    only_the_open_transaction_runs_below(&app.db.url, &open, mark.xid).await;
    let mut stream = follow(&app, &group, "").await;
    let poll = Duration::from_secs(60);
    let mut watch = FeedReader::open(app.store.clone(), Start::Now, Some(group), poll)
        .await
        .unwrap();

    let later = fresh_change(&app.store, &group).await;
    let streamed = stream.next_event(SOON).await;
    let watched = tokio::time::timeout(SOON, watch.next()).await.unwrap();
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[group]).await;
    let resumed = SseStream::open(
        reqwest::Client::new()
            .get(changes_url(&app, &group, ""))
            .bearer_auth(reader)
            .header("Last-Event-ID", streamed.id.as_deref().unwrap()),
    )
    .await;
    sqlx::query("ROLLBACK").execute(&mut idle).await.unwrap();

    assert_eq!(swept, 2);
    assert_eq!(streamed.json()["scanId"], later.as_str());
    assert_eq!(watched.unwrap().change.scan_id, later);
    assert!(resumed.is_ok(), "the stream's id resumes: {resumed:?}");
}
store_test!(
    a_transaction_left_open_past_the_retention_time_expires_no_cursor,
    postgres_only
);

/// Waits until the open transaction is the only one still running in the cluster below `mark`:
/// the backdated rows were written seconds ago, so another test's transaction that began before
/// them, still running when a cursor is made and finished later, would lie below the mark, and
/// rightly count as one that may have lost rows (in life the mark is days old).
async fn only_the_open_transaction_runs_below(url: &str, open: &str, mark: u64) {
    let mut db = PgConnection::connect(url).await.unwrap();
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let alone: bool = sqlx::query_scalar(
            "SELECT coalesce(bool_and(x = $1::text::xid8 OR x > $2::text::xid8), true)
             FROM pg_snapshot_xip(pg_current_snapshot()) AS x",
        )
        .bind(open)
        .bind(mark.to_string())
        .fetch_one(&mut db)
        .await
        .unwrap();
        if alone {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "other transactions stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A change stream's follower or `scans watch`'s reader.
enum Reader<'a> {
    Follower(&'a mut signal_scans::service::feed::Follower),
    Watch(&'a mut FeedReader),
}

impl Reader<'_> {
    async fn next(&mut self) -> Result<FeedEvent, FeedError> {
        let next = async {
            match self {
                Reader::Follower(follower) => follower.next().await,
                Reader::Watch(watch) => watch.next().await,
            }
        };
        tokio::time::timeout(SOON, next).await.expect("an answer")
    }

    /// The changes delivered before the first that is not a change of the history (`later`, or
    /// an error), that answer, and the next call's.
    async fn drain(
        mut self,
        later: &ScanId,
    ) -> (
        usize,
        Result<FeedEvent, FeedError>,
        Result<FeedEvent, FeedError>,
    ) {
        let mut delivered = 0;
        loop {
            match self.next().await {
                Ok(event) if event.change.scan_id != *later => delivered += 1,
                stopped => return (delivered, stopped, self.next().await),
            }
        }
    }
}

/// `GET path` with `key`: (status, headers, body as text).
async fn raw_get(
    app: &TestApp,
    key: &str,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("request is answered");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// A 400's `details` names each problem once and stays small whatever the input: thousands of
/// copies of one unknown parameter, a thousand distinct ones, a hundred malformed scan ids, a name
/// as long as the request target allows. Fails when a problem is repeated per occurrence (a 4-KB
/// request once answered 146 KB) or a name is echoed whole.
async fn a_400_names_each_problem_once_and_stays_small_whatever_the_input(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[group]).await;
    let changes = format!("/v1/accounts/{group}/signals/scans/changes?");
    // Each within the change stream's 4-KiB request target.
    let repeated = format!("{changes}{}", "a&".repeat(1900));
    let distinct: Vec<String> = (0..800).map(|n| format!("p{n}")).collect();
    let distinct = format!("{changes}{}", distinct.join("&"));
    let bad_ids = format!("{changes}{}", "scanId=nope&".repeat(100));
    let long_name = format!("/v1/accounts/{group}/signals/scans?{}=1", "x".repeat(1900));

    let mut answers = Vec::new();
    for path in [&repeated, &distinct, &bad_ids, &long_name] {
        assert!(path.len() > 1000, "the request is large: {}", path.len());
        answers.push(raw_get(&app, &reader, path).await);
    }

    for (status, _, body) in &answers {
        assert_eq!(*status, 400, "{body}");
        assert!(body.len() < 2048, "{} bytes: {}", body.len(), &body[..200]);
    }
    let details = |index: usize| -> String {
        let body: Value = serde_json::from_str(&answers[index].2).unwrap();
        body["error"]["details"].as_str().unwrap().to_owned()
    };
    let repeated = details(0);
    assert_eq!(repeated.matches("`a`").count(), 1, "{repeated}");
    assert!(repeated.contains("1900 in all"), "{repeated}");
    let distinct = details(1);
    assert!(
        distinct.contains("800 in all") && distinct.contains("`p0`"),
        "{distinct}"
    );
    assert_eq!(
        distinct.matches("`p").count(),
        5,
        "five names shown: {distinct}"
    );
    let bad_ids = details(2);
    assert_eq!(bad_ids.matches("scanId").count(), 1, "{bad_ids}");
    // A name is echoed only when it is short and plain (32 bytes at most): a longer one is
    // described, never copied, so no parameter can grow an answer.
    assert_eq!(
        details(3),
        "unknown query parameter (a name that is not plain text): only status, limit and cursor \
         are accepted"
    );
    let list = format!("/v1/accounts/{group}/signals/scans");
    let plain = app
        .get(&reader, &format!("{list}?{}=1", "y".repeat(32)))
        .await;
    let too_long = app
        .get(&reader, &format!("{list}?{}=1", "y".repeat(33)))
        .await;
    let plain = plain.assert_error(400, "VALIDATION_ERROR");
    assert!(plain.contains(&format!("`{}`", "y".repeat(32))), "{plain}");
    let too_long = too_long.assert_error(400, "VALIDATION_ERROR");
    assert!(too_long.contains("not plain text"), "{too_long}");
}
store_test!(a_400_names_each_problem_once_and_stays_small_whatever_the_input);

/// Every answer carries `X-Content-Type-Options: nosniff`, `Cache-Control: no-store` (the change
/// stream's 200: `no-cache`) and its trace id in `X-Request-Id`: successes, errors from every layer
/// (limits, routing, authentication, handlers), the documents, the redirects and the change
/// stream, enveloped or not.
async fn every_response_carries_nosniff_no_store_and_its_trace_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let writer = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let scans = format!("/v1/accounts/{group}/signals/scans");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let paths = [
        (writer.as_str(), format!("{scans}/{scan}"), 200),
        (writer.as_str(), format!("{scans}/{scan}/events"), 200),
        (writer.as_str(), format!("{scans}/nope"), 400),
        ("ssk_not_a_key", format!("{scans}/{scan}"), 401),
        (writer.as_str(), "/no/such/route".to_owned(), 404),
        (writer.as_str(), format!("/{}", "x".repeat(3000)), 400),
        (writer.as_str(), "/healthz".to_owned(), 200),
        (writer.as_str(), "/metrics".to_owned(), 200),
        (writer.as_str(), "/openapi.json".to_owned(), 200),
        (writer.as_str(), "/docs/".to_owned(), 200),
        (writer.as_str(), "/docs/swagger-ui.css".to_owned(), 200),
        (writer.as_str(), "/".to_owned(), 307),
        (writer.as_str(), "/docs".to_owned(), 308),
    ];
    let mut seen = Vec::new();
    for (key, path, status) in &paths {
        let response = client.get(app.url(path)).bearer_auth(key).send().await;
        let response = response.expect("request is answered");
        assert_eq!(response.status(), *status, "{path}");
        seen.push((path.clone(), response.headers().clone(), "no-store"));
    }
    let cancel = client
        .put(app.url(&format!("{scans}/{scan}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 405);
    seen.push(("PUT cancel".into(), cancel.headers().clone(), "no-store"));
    let stream = client
        .get(app.url(&format!("{scans}/changes")))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    seen.push((
        "the change stream".into(),
        stream.headers().clone(),
        "no-cache",
    ));

    for (what, headers, cache) in seen {
        let value = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            value("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{what}"
        );
        assert_eq!(value("cache-control").as_deref(), Some(cache), "{what}");
        let trace_id = value("x-request-id").unwrap_or_default();
        assert_eq!(trace_id.len(), 32, "{what}: {trace_id:?}");
    }
}
store_test!(every_response_carries_nosniff_no_store_and_its_trace_id);

/// The migrations before the one that adds the group column, copied into a folder of their own.
async fn migrations_before_the_group_column(backend: Backend) -> sqlx::migrate::Migrator {
    let (store, first_new) = match backend {
        Backend::Postgres => ("postgres", 4),
        Backend::Sqlite => ("sqlite", 3),
    };
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(store);
    let folder = std::env::temp_dir().join(format!(
        "signal-scans-before-group-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&folder).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let version: u32 = name.split('_').next().unwrap().parse().unwrap();
        if version < first_new {
            std::fs::copy(&path, folder.join(&name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(folder.as_path())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&folder);
    migrator
}

/// Every audit row as (id, xid, group), in id order.
async fn positions_and_groups(url: &str) -> Vec<(i64, String, Option<String>)> {
    match url.starts_with("postgres") {
        true => {
            let mut db = PgConnection::connect(url).await.unwrap();
            sqlx::query_as(
                "SELECT id, xid::text, to_jsonb(e) ->> 'account_group_id'
                 FROM signal_scan_events e ORDER BY id",
            )
            .fetch_all(&mut db)
            .await
            .unwrap()
        }
        false => {
            let mut db = SqliteConnection::connect(url).await.unwrap();
            let has_group: bool = sqlx::query_scalar(
                "SELECT count(*) > 0 FROM pragma_table_info('signal_scan_events')
                 WHERE name = 'account_group_id'",
            )
            .fetch_one(&mut db)
            .await
            .unwrap();
            let group = if has_group {
                "account_group_id"
            } else {
                "NULL"
            };
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT id, '0', {group} FROM signal_scan_events ORDER BY id"
            )))
            .fetch_all(&mut db)
            .await
            .unwrap()
        }
    }
}

async fn execute(url: &str, sql: String) {
    match url.starts_with("postgres") {
        true => {
            let mut db = PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut db)
                .await
                .unwrap();
        }
        false => {
            let mut db = SqliteConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut db)
                .await
                .unwrap();
        }
    }
}

/// A database made by the migrations before the group column, with rows of two groups, upgraded
/// by the service's own migrate: every old row gets its scan's group and keeps its position (so
/// every cursor stays exact), a writer that does not know the column (an old replica during a
/// rolling upgrade) still files its rows under the right group, and a reader of one group from the
/// start replays that group's old changes. Fails if an earlier migration was edited, if the
/// backfill misses rows or moves them, or if the trigger is missing.
async fn the_group_migration_fills_old_rows_and_keeps_their_positions(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let before = migrations_before_the_group_column(backend).await;
    match backend {
        Backend::Postgres => {
            let mut old = PgConnection::connect(&db.url).await.unwrap();
            before.run(&mut old).await.unwrap();
        }
        Backend::Sqlite => {
            let options: sqlx::sqlite::SqliteConnectOptions = db.url.parse().unwrap();
            std::fs::create_dir_all(options.get_filename().parent().unwrap()).unwrap();
            let mut old = SqliteConnection::connect_with(&options.create_if_missing(true))
                .await
                .unwrap();
            before.run(&mut old).await.unwrap();
        }
    }
    let (a, b) = (group(), group());
    let (a1, a2, b1) = (ScanId::generate(), ScanId::generate(), ScanId::generate());
    let now = match backend {
        Backend::Postgres => "now()",
        Backend::Sqlite => "'2026-12-01T10:00:00.000000Z'",
    };
    let old_rows = |statement: &str| {
        format!(
            "INSERT INTO signal_scans (id, account_group_id, status, created_at, updated_at)
             VALUES ('{a1}', '{a}', 'running', {now}, {now}), ('{a2}', '{a}', 'queued', {now}, {now}),
                    ('{b1}', '{b}', 'running', {now}, {now});
             {statement}"
        )
    };
    let events = |rows: &[(&ScanId, &str, &str)]| {
        let values: Vec<String> = rows
            .iter()
            .map(|(scan, from, to)| format!("('{scan}', {from}, '{to}', {now})"))
            .collect();
        format!(
            "INSERT INTO signal_scan_events (scan_id, from_status, to_status, occurred_at)
             VALUES {};",
            values.join(", ")
        )
    };
    execute(
        &db.url,
        old_rows(&events(&[
            (&a1, "NULL", "queued"),
            (&b1, "NULL", "queued"),
            (&a1, "'queued'", "running"),
            (&a2, "NULL", "queued"),
            (&b1, "'queued'", "running"),
        ])),
    )
    .await;
    let old_positions = positions_and_groups(&db.url).await;

    let store = Store::connect(&store_options(&db.url, Duration::from_secs(10))).unwrap();
    store
        .migrate()
        .await
        .expect("the group column applies over old rows");
    let migrated = positions_and_groups(&db.url).await;
    // A writer from before the column: its row names no group.
    execute(&db.url, events(&[(&a2, "'queued'", "cancelled")])).await;
    let written_without = positions_and_groups(&db.url).await;
    let replayed: Vec<_> = replay(&store, a, 4)
        .await
        .into_iter()
        .map(|event| (event.change.scan_id, event.change.from, event.change.to))
        .collect();

    let groups = |rows: &[(i64, String, Option<String>)]| -> Vec<Option<String>> {
        rows.iter().map(|(.., group)| group.clone()).collect()
    };
    let positions = |rows: &[(i64, String, Option<String>)]| -> Vec<(i64, String)> {
        rows.iter().map(|(id, xid, _)| (*id, xid.clone())).collect()
    };
    let (a, b) = (Some(a.to_string()), Some(b.to_string()));
    assert_eq!(groups(&old_positions), [None, None, None, None, None]);
    assert_eq!(
        positions(&migrated),
        positions(&old_positions),
        "positions are kept"
    );
    assert_eq!(
        groups(&migrated),
        [a.clone(), b.clone(), a.clone(), a.clone(), b.clone()]
    );
    assert_eq!(written_without.last().unwrap().2, a, "the trigger files it");
    use ScanStatus::{Cancelled, Queued, Running};
    assert_eq!(
        replayed,
        [
            (a1, None, Queued),
            (a1, Some(Queued), Running),
            (a2, None, Queued),
            (a2, Some(Queued), Cancelled)
        ]
    );
}
store_test!(the_group_migration_fills_old_rows_and_keeps_their_positions);

/// `scans watch --after` on the database refuses a cursor from before the group's deleted changes
/// (of any group's, without `--account-group`), as the stream answers 410, instead of skipping
/// them silently, and one ahead
/// of the whole trail, as the stream answers its other 410; a cursor after them is followed. Fails if the
/// watch starts from an expired cursor.
async fn scans_watch_refuses_a_cursor_from_before_deleted_changes(backend: Backend) {
    let (db, store) = migrated_database(backend).await;
    let aged = group();
    write_history(&db.url, &aged, 10, 10, true).await;
    let cutoff = time::OffsetDateTime::now_utc() - Duration::from_secs(24 * 3600);
    assert_eq!(store.trim_audit(cutoff, 1000).await.unwrap(), 20);
    let watch_of = |group: Option<&str>, after: &str| {
        let group = group.map(|group| ["--account-group", group]);
        tokio::process::Command::new(env!("CARGO_BIN_EXE_signal-scans"))
            .args(["scans", "watch", "--after", after])
            .args(group.iter().flatten())
            .env("DATABASE_URL", &db.url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .output()
    };

    let watch = |after: &str| watch_of(Some(aged.as_str()), after);
    let expired = tokio::time::timeout(SOON, watch("0-0"))
        .await
        .expect("the watch refuses at once")
        .unwrap();
    // Every group's watch too: changes of one of them are gone.
    let expired_for_all = tokio::time::timeout(SOON, watch_of(None, "0-0"))
        .await
        .expect("the watch refuses at once")
        .unwrap();
    // Well-formed, but ahead of everything the trail holds: no watch printed it.
    let ahead = tokio::time::timeout(SOON, watch("999999999999-1"))
        .await
        .expect("the watch refuses at once")
        .unwrap();
    let head = store.feed_head().await.unwrap().to_string();
    let current = tokio::time::timeout(Duration::from_secs(2), watch(&head)).await;

    for expired in [&expired, &expired_for_all] {
        let stderr = String::from_utf8_lossy(&expired.stderr);
        assert!(!expired.status.success(), "{stderr}");
        assert!(stderr.contains("no longer kept"), "{stderr}");
    }
    let stderr = String::from_utf8_lossy(&ahead.stderr);
    assert!(!ahead.status.success(), "{stderr}");
    assert!(
        stderr.contains("--after is no place in this database's change history"),
        "{stderr}"
    );
    assert!(
        current.is_err(),
        "a cursor after the deleted rows is followed: {current:?}"
    );
}
store_test!(scans_watch_refuses_a_cursor_from_before_deleted_changes);

/// On PostgreSQL the database's clock stamps the audit rows, so the sweep measures their age by
/// that clock: a replica whose own clock runs two days ahead deletes the rows older than a day by
/// the database's clock, and keeps the rest. Before, it measured them by its own clock and
/// deleted every row, seconds old or not (expiring every cursor).
async fn a_replica_whose_clock_runs_ahead_sweeps_by_the_databases_clock(backend: Backend) {
    let (db, store) = migrated_database(backend).await;
    let (aged, young) = (group(), group());
    write_history(&db.url, &aged, 10, 10, true).await;
    fresh_change(&store, &young).await;

    let two_days = 2 * 24 * 3600;
    let shifted = clock_shift::env(two_days);
    let mut env = vec![
        ("DATABASE_URL", db.url.as_str()),
        ("AUDIT_RETENTION_DAYS", "1"),
    ];
    env.extend(shifted.iter().map(|(name, value)| (*name, value.as_str())));
    let server = ServerProcess::start(&env).await;
    let logged = server
        .until_logged(|event| event["message"] == "deleted audit rows past their retention")
        .await;

    // The shift took: the replica's own log lines are two days ahead.
    let stamped = logged
        .iter()
        .find_map(|event| event["timestamp"].as_str())
        .unwrap();
    let stamped =
        time::OffsetDateTime::parse(stamped, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let ahead = stamped - time::OffsetDateTime::now_utc();
    assert!(
        ahead > time::Duration::days(1),
        "the clock runs {ahead} ahead"
    );
    assert_eq!(
        audit_rows(&db.url, &aged).await.0,
        0,
        "ten days old: deleted"
    );
    assert_eq!(audit_rows(&db.url, &young).await.0, 2, "seconds old: kept");
}
store_test!(
    a_replica_whose_clock_runs_ahead_sweeps_by_the_databases_clock,
    postgres_only
);

/// A database restored from another cluster has its trail and marks moved to xid 0 at start,
/// ordered by id alone there. Two transactions of the old cluster that overlapped may have taken
/// their ids in the other order than their xids, so its sweep may have left a row with an id below
/// its group's mark: that row is swept here all the same. Fails for a sweep that starts past the
/// greatest mark at xid 0 (the row past its retention was kept for good; the diff review found
/// it).
async fn rows_a_restore_moved_behind_a_mark_are_still_swept(backend: Backend) {
    let (db, store) = migrated_database(backend).await;
    let group = group();
    write_history(&db.url, &group, 2, 100, true).await;
    let mut connection = PgConnection::connect(&db.url).await.unwrap();
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM signal_scan_events WHERE account_group_id = $1 ORDER BY id",
    )
    .bind(group.as_str())
    .fetch_all(&mut connection)
    .await
    .unwrap();
    // As the old cluster left them, at transaction ids this one has not reached: its sweep deleted
    // the second row, first in its (xid, id) order, and marked it; the first row's transaction
    // came after. Far enough ahead that the cluster's other sessions cannot take its counter
    // past them before the start below.
    sqlx::query(
        "WITH ahead AS (
             SELECT pg_snapshot_xmax(pg_current_snapshot())::text::numeric + 20000 AS base)
         UPDATE signal_scan_events
         SET xid = (base + array_position($1::bigint[], id))::text::xid8 FROM ahead
         WHERE id = ANY($1)",
    )
    .bind([ids[1], ids[0], ids[2], ids[3]])
    .execute(&mut connection)
    .await
    .unwrap();
    sqlx::query(
        "WITH gone AS (DELETE FROM signal_scan_events WHERE id = $1 RETURNING account_group_id, xid, id)
         INSERT INTO signal_scan_events_trimmed (account_group_id, xid, id) SELECT * FROM gone",
    )
    .bind(ids[1])
    .execute(&mut connection)
    .await
    .unwrap();
    // The start on the restored database moves the rows and the mark to xid 0.
    store.migrate().await.unwrap();
    let moved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM signal_scan_events_trimmed WHERE xid = '0' AND id = $1",
    )
    .bind(ids[1])
    .fetch_one(&mut connection)
    .await
    .unwrap();
    let cutoff = time::OffsetDateTime::now_utc() - Duration::from_secs(24 * 3600);

    let swept = store.trim_audit(cutoff, 500).await.unwrap();

    assert_eq!(moved, 1, "the mark was moved to xid 0");
    assert_eq!(
        swept, 3,
        "the three rows left, the first of them behind the mark"
    );
    assert_eq!(audit_rows(&db.url, &group).await, (0, 0));
}
store_test!(
    rows_a_restore_moved_behind_a_mark_are_still_swept,
    postgres_only
);

/// PostgreSQL keeps a deleted row, and its index entries, until vacuum removes them. Each batch of
/// the retention sweep starts past what the batches before it deleted, so what a batch reads does
/// not grow with the trail's deleted past. Fails for a batch that starts at the trail's start:
/// with autovacuum off, after 20,000 deletions such a batch read 343 pages (the planner chose to
/// read the table, the dead rows' pages included), against 20.
async fn a_sweep_batch_reads_past_the_rows_earlier_batches_deleted(backend: Backend) {
    let (db, store) = migrated_database(backend).await;
    let group = group();
    let mut connection = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("ALTER TABLE signal_scan_events SET (autovacuum_enabled = false)")
        .execute(&mut connection)
        .await
        .unwrap();
    write_history(&db.url, &group, 10_000, 10, true).await;
    let cutoff = time::OffsetDateTime::now_utc() - Duration::from_secs(24 * 3600);
    let mut swept = 0;
    loop {
        let deleted = store.trim_audit(cutoff, 5000).await.unwrap();
        swept += deleted;
        if deleted < 5000 {
            break;
        }
    }
    write_history(&db.url, &group, 1, 10, true).await;

    // Explained in a transaction that is rolled back: the batch deletes nothing.
    let mut explaining = connection.begin().await.unwrap();
    let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {POSTGRES_TRIM_AUDIT}"
    )))
    .bind(cutoff)
    .bind(500i64)
    .fetch_one(&mut *explaining)
    .await
    .unwrap();
    drop(explaining);

    assert_eq!(swept, 20_000);
    let statement = &plan[0]["Plan"];
    assert_eq!(statement["Actual Rows"], 1, "the count: {plan}");
    // Pages read from the cache or the disk, by the statement and all it ran.
    let pages = ["Shared Hit Blocks", "Shared Read Blocks"]
        .iter()
        .map(|field| statement[field].as_u64().unwrap())
        .sum::<u64>();
    assert!(pages <= 60, "{pages} pages read: {plan}");
}
store_test!(
    a_sweep_batch_reads_past_the_rows_earlier_batches_deleted,
    postgres_only
);
