//! The read side: one scan, the list, and the audit trail, with cancel's checks and envelope.

use serde_json::Value;
use signal_scans::domain::ids::{AccountGroupId, ScanId};
use signal_scans::domain::keys::{AccountGroupAccess, Permission};
use signal_scans::domain::scan::{Scan, ScanStatus};
use signal_scans::store::statements::{postgres_scan_page, sqlite_scan_page};
use sqlx::{Connection, PgConnection, SqliteConnection};
use time::format_description::well_known::Rfc3339;

use crate::helpers::history::write_cancelled_scans;
use crate::helpers::plans::rows_touched;
use crate::helpers::{ApiResponse, Backend, Settings, TestApp, group};
use crate::store_test;

fn scan_path(group: &str, scan: &str) -> String {
    format!("/v1/accounts/{group}/signals/scans/{scan}")
}

async fn a_scan_reads_back_with_every_moment_or_null(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[group]).await;
    let writer = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;

    let queued = app
        .get(&reader, &scan_path(group.as_str(), scan.as_str()))
        .await;
    app.cancel(Some(&writer), group.as_str(), scan.as_str())
        .await;
    let cancelled = app
        .get(
            &writer,
            &scan_path(group.as_str(), &scan.as_str().to_uppercase()),
        )
        .await;

    assert_eq!(queued.status, 200, "{queued:?}");
    let data = queued.body["data"].as_object().unwrap();
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "cancelledAt",
            "createdAt",
            "finishedAt",
            "scanId",
            "startedAt",
            "status",
            "updatedAt"
        ]
    );
    assert_eq!(data["scanId"], scan.as_str());
    assert_eq!(data["status"], "queued");
    assert!(
        data["startedAt"].is_null()
            && data["finishedAt"].is_null()
            && data["cancelledAt"].is_null()
    );
    assert_eq!(cancelled.status, 200, "a writer may read too");
    assert_eq!(cancelled.body["data"]["status"], "cancelled");
    assert!(cancelled.body["data"]["cancelledAt"].is_string());
    assert_eq!(
        cancelled.body["data"]["finishedAt"],
        cancelled.body["data"]["cancelledAt"]
    );
}
store_test!(a_scan_reads_back_with_every_moment_or_null);

/// A route's path for a group and a scan id.
type PathFor = fn(&str, &str) -> String;

/// Each request breaks two rules at once; the answer names the one checked first:
/// 401 → 429 → 403 (permission) → 400 → 403 (account group) → 404, on every read route.
async fn reads_check_key_permission_ids_group_and_existence_in_order(backend: Backend) {
    let app = Settings::default()
        .with_rate_limit(1, 1)
        .spawn(backend)
        .await;
    // Stopped: only the spent key below is ever over its rate.
    app.limits.clock().stop();
    let (mine, theirs) = (group(), group());
    let read_mine = || AccountGroupAccess::Only(vec![mine]);
    let new_key =
        async |permissions: &[Permission]| app.key_with(permissions, read_mine(), None).await.0;
    let their_scan = app.scan(&theirs, ScanStatus::Queued).await;
    let unknown = ScanId::generate();
    let routes: [(&str, PathFor); 3] = [
        ("scan", |group, scan| scan_path(group, scan)),
        ("events", |group, scan| {
            format!("{}/events", scan_path(group, scan))
        }),
        // The list has no scan id: its own parameters stand in for it.
        ("list", |group, scan| {
            let limit = if scan == "nope" { "0" } else { "1" };
            format!("/v1/accounts/{group}/signals/scans?limit={limit}")
        }),
    ];

    for (route, path) in routes {
        // Fresh keys per route: each key's single request a second is spent deliberately.
        let (reader, powerless) = (
            new_key(&[Permission::SignalsRead]).await,
            new_key(&[]).await,
        );
        let spent_powerless = new_key(&[]).await;
        app.get(&spent_powerless, &path("nope", "nope"))
            .await
            .assert_error(403, "FORBIDDEN");
        let spent_reader = new_key(&[Permission::SignalsRead]).await;
        app.get(&spent_reader, &path(mine.as_str(), unknown.as_str()))
            .await;

        let unauthenticated = ApiResponse::of(app.client.get(app.url(&path("nope", "nope")))).await;
        let over_rate_and_powerless = app.get(&spent_powerless, &path("nope", "nope")).await;
        let powerless_and_bad_ids = app.get(&powerless, &path("nope", "nope")).await;
        let bad_id_and_their_group = app.get(&reader, &path(theirs.as_str(), "nope")).await;
        let their_group_and_unknown = app
            .get(
                &new_key(&[Permission::SignalsRead]).await,
                &path(theirs.as_str(), unknown.as_str()),
            )
            .await;
        let over_rate_and_unknown = app
            .get(&spent_reader, &path(mine.as_str(), unknown.as_str()))
            .await;

        unauthenticated.assert_error(401, "UNAUTHORIZED");
        over_rate_and_powerless.assert_error(429, "RATE_LIMITED");
        let details = powerless_and_bad_ids.assert_error(403, "FORBIDDEN");
        assert!(
            details.contains("signals:read or signals:write"),
            "{route}: {details}"
        );
        bad_id_and_their_group.assert_error(400, "VALIDATION_ERROR");
        let details = their_group_and_unknown.assert_error(403, "FORBIDDEN");
        assert_eq!(
            details,
            format!("API key has no access to account group {theirs}"),
            "{route}"
        );
        over_rate_and_unknown.assert_error(429, "RATE_LIMITED");
        if route != "list" {
            // Someone else's scan under my group is simply not there.
            let details = app
                .get(
                    &new_key(&[Permission::SignalsRead]).await,
                    &path(mine.as_str(), their_scan.as_str()),
                )
                .await
                .assert_error(404, "NOT_FOUND");
            assert_eq!(details, "no such scan in this account group", "{route}");
        }
    }
}
store_test!(reads_check_key_permission_ids_group_and_existence_in_order);

async fn the_list_pages_newest_first_and_filters_by_status(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (group, other) = (group(), group());
    let key = app.writer(&group).await;
    let mut created = Vec::new();
    for status in [
        ScanStatus::Queued,
        ScanStatus::Running,
        ScanStatus::Queued,
        ScanStatus::Completed,
        ScanStatus::Queued,
    ] {
        created.push(app.scan(&group, status).await);
    }
    app.scan(&other, ScanStatus::Queued).await;
    // Three scans created at one instant straddle a page boundary: the id breaks the tie.
    for tied in [&created[1], &created[3]] {
        same_created_at(&app, tied, &created[2]).await;
    }
    let list = |query: &str| format!("/v1/accounts/{group}/signals/scans{query}");
    // The documented order, from the database's own times: created_at, then id, descending.
    let mut newest_first = Vec::new();
    for id in &created {
        let scan = app.store.find_scan(None, id).await.unwrap().unwrap();
        newest_first.push((scan.created_at, scan.id.to_string()));
    }
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    let newest_first: Vec<String> = newest_first.into_iter().map(|(_, id)| id).collect();

    let (seen, pages) = page_through(&app, &key, &list("?limit=2")).await;
    let (queued_paged, queued_pages) =
        page_through(&app, &key, &list("?status=queued&limit=1")).await;
    let queued = app.get(&key, &list("?status=queued")).await;
    let default = app.get(&key, &list("")).await;

    assert_eq!(
        seen, newest_first,
        "every scan once, newest first, none of another group"
    );
    assert_eq!(pages, 3);
    let queued_ids: Vec<&str> = queued.body["data"]["scans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|scan| scan["scanId"].as_str().unwrap())
        .collect();
    let queued_in_order: Vec<&str> = newest_first
        .iter()
        .map(String::as_str)
        .filter(|id| {
            [&created[0], &created[2], &created[4]]
                .iter()
                .any(|q| q.as_str() == *id)
        })
        .collect();
    assert_eq!(queued_ids, queued_in_order);
    assert_eq!(queued_paged, queued_in_order, "a page at a time");
    // The last page is full and says that nothing follows: no cursor to an empty page.
    assert_eq!(queued_pages, queued_in_order.len());
    assert_eq!(default.body["data"]["scans"].as_array().unwrap().len(), 5);
    assert!(default.body["data"]["nextCursor"].is_null());
}
store_test!(the_list_pages_newest_first_and_filters_by_status);

/// The scan ids of every page of the list at `path` (which has a query), following `nextCursor`
/// to the end, and how many pages there were.
async fn page_through(app: &TestApp, key: &str, path: &str) -> (Vec<String>, usize) {
    page_on(app, key, path, None).await
}

/// [`page_through`] from `cursor` on.
async fn page_on(
    app: &TestApp,
    key: &str,
    path: &str,
    mut cursor: Option<String>,
) -> (Vec<String>, usize) {
    let (mut seen, mut pages) = (Vec::new(), 0);
    loop {
        let page = match &cursor {
            Some(cursor) => app.get(key, &format!("{path}&cursor={cursor}")).await,
            None => app.get(key, path).await,
        };
        assert_eq!(page.status, 200, "{page:?}");
        pages += 1;
        for scan in page.body["data"]["scans"].as_array().unwrap() {
            seen.push(scan["scanId"].as_str().unwrap().to_owned());
        }
        match page.body["data"]["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (seen, pages),
        }
    }
}

/// Paging to the end while others write lists every scan that existed when paging began exactly
/// once (with `status`, those still in it when their page is read); scans created meanwhile are
/// newer than the cursor and come on a new first page. A cursor read under another filter is the
/// same place in the order.
async fn paging_while_others_write_lists_each_scan_that_existed_once(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let mut existing = Vec::new();
    for _ in 0..6 {
        existing.push(app.scan(&group, ScanStatus::Queued).await.to_string());
    }
    let list = |query: &str| format!("/v1/accounts/{group}/signals/scans?{query}");
    let ids = |page: &ApiResponse| -> Vec<String> {
        let scans = page.body["data"]["scans"].as_array().unwrap();
        scans
            .iter()
            .map(|scan| scan["scanId"].as_str().unwrap().to_owned())
            .collect()
    };
    let cursor = |page: &ApiResponse| page.body["data"]["nextCursor"].as_str().unwrap().to_owned();

    // Unfiltered: a scan created and one of the unread ones cancelled between the pages.
    let first = app.get(&key, &list("limit=2")).await;
    let mut seen = ids(&first);
    let unread: Vec<&String> = existing.iter().filter(|id| !seen.contains(id)).collect();
    let moved = ScanId::parse(unread[0]).unwrap();
    app.cancel_ok(&key, &group, &moved).await;
    app.scan(&group, ScanStatus::Queued).await;
    let queued_after_first = app
        .get(
            &key,
            &list(&format!("status=queued&cursor={}", cursor(&first))),
        )
        .await;
    let (rest, _) = page_on(&app, &key, &list("limit=2"), Some(cursor(&first))).await;
    seen.extend(rest);

    let mut expected = existing.clone();
    expected.sort_unstable();
    let mut listed = seen.clone();
    listed.sort_unstable();
    assert_eq!(listed, expected, "each scan that existed, once: {seen:?}");
    // The unfiltered page's cursor, read with `status`: the same place, the rest that are queued.
    let mut still_queued: Vec<String> = unread.iter().skip(1).map(|id| id.to_string()).collect();
    still_queued.sort_unstable();
    let mut read = ids(&queued_after_first);
    read.sort_unstable();
    assert_eq!(read, still_queued);

    // Filtered by status: one scan of the first page and one unread one cancelled between pages.
    let other = crate::helpers::group();
    let writer = app.writer(&other).await;
    let mut queued = Vec::new();
    for _ in 0..6 {
        queued.push(app.scan(&other, ScanStatus::Queued).await.to_string());
    }
    let filtered =
        |query: &str| format!("/v1/accounts/{other}/signals/scans?status=queued&limit=2{query}");
    let first = app.get(&writer, &filtered("")).await;
    let mut seen = ids(&first);
    let unread = queued.iter().find(|id| !seen.contains(id)).unwrap().clone();
    for scan in [&seen[0], &unread] {
        app.cancel_ok(&writer, &other, &ScanId::parse(scan).unwrap())
            .await;
    }
    let (rest, _) = page_on(&app, &writer, &filtered(""), Some(cursor(&first))).await;
    seen.extend(rest);

    let mut expected: Vec<String> = queued.into_iter().filter(|id| *id != unread).collect();
    expected.sort_unstable();
    let mut listed = seen.clone();
    listed.sort_unstable();
    assert_eq!(
        listed, expected,
        "once each, those still queued when read: {seen:?}"
    );
}
store_test!(paging_while_others_write_lists_each_scan_that_existed_once);

/// Without `limit` a page holds 20 scans, and the next page the rest: a client that never names a
/// limit gets neither a page of everything (a tenant with years of scans) nor more round trips
/// than the contract promises. `limit=100`, the most, is taken.
async fn the_list_holds_20_scans_a_page_when_limit_is_absent(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    for _ in 0..21 {
        app.scan(&group, ScanStatus::Queued).await;
    }
    let list = format!("/v1/accounts/{group}/signals/scans");
    let count = |page: &ApiResponse| page.body["data"]["scans"].as_array().unwrap().len();

    let first = app.get(&key, &list).await;
    let cursor = first.body["data"]["nextCursor"]
        .as_str()
        .unwrap_or_else(|| panic!("a second page: {first:?}"));
    let second = app.get(&key, &format!("{list}?cursor={cursor}")).await;

    let at_most = app.get(&key, &format!("{list}?limit=100")).await;

    assert_eq!(count(&first), 20);
    assert_eq!(count(&second), 1);
    assert!(second.body["data"]["nextCursor"].is_null(), "{second:?}");
    // The largest page there is: all 21 at once.
    assert_eq!(count(&at_most), 21, "{at_most:?}");
    assert!(at_most.body["data"]["nextCursor"].is_null());
}
store_test!(the_list_holds_20_scans_a_page_when_limit_is_absent);

async fn bad_list_parameters_are_400_naming_the_parameter(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    for (query, named) in [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=ten", "limit"),
        ("?limit=-1", "limit"),
        ("?status=done", "status"),
        ("?status=CANCELLED", "status"),
        ("?cursor=not-a-cursor", "cursor"),
        ("?cursor=", "cursor"),
        // A well-formed cursor from before the epoch: refused, not passed to the database.
        (
            "?cursor=2d3230303030303030303030303030303030303030302e353037663166373762636638366364373939343339303131",
            "cursor",
        ),
        ("?colour=blue", "colour"),
        ("?limit=1&limit=2", "limit"),
    ] {
        let response = app
            .get(&key, &format!("/v1/accounts/{group}/signals/scans{query}"))
            .await;

        let details = response.assert_error(400, "VALIDATION_ERROR");
        assert!(details.contains(named), "{query}: {details}");
    }
    // A malformed group and a bad parameter are both named, the path first.
    let response = app
        .get(&key, "/v1/accounts/nope/signals/scans?limit=0")
        .await;
    let details = response.assert_error(400, "VALIDATION_ERROR");
    let (path, query) = details.split_once("; ").expect("two problems");
    assert!(path.starts_with("accountGroupId"), "{details}");
    assert!(query.contains("limit"), "{details}");
    // Every problem is named in our words, an unknown parameter with the rest, and the path's
    // problem too.
    let response = app
        .get(
            &key,
            "/v1/accounts/nope/signals/scans?colour=blue&limit=0&shade=x&status=done&limit=3",
        )
        .await;
    let details = response.assert_error(400, "VALIDATION_ERROR");
    assert!(details.starts_with("accountGroupId"), "{details}");
    for named in [
        "`colour`",
        "`shade`",
        "limit must be",
        "limit may be given once",
        "status must be",
        "only status, limit and cursor are accepted",
    ] {
        assert!(details.contains(named), "{named}: {details}");
    }
    assert!(!details.contains("deserialize"), "{details}");
}
store_test!(bad_list_parameters_are_400_naming_the_parameter);

async fn the_events_route_shows_the_audit_trail(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let cancel = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

    // Ids in either case, answered in lowercase.
    let (upper_group, upper_scan) = (group.as_str().to_uppercase(), scan.as_str().to_uppercase());
    let trail = app
        .get(
            &key,
            &format!("{}/events", scan_path(&upper_group, &upper_scan)),
        )
        .await;

    assert_eq!(trail.status, 200, "{trail:?}");
    assert_eq!(trail.body["data"]["scanId"], scan.as_str());
    let events = trail.body["data"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert!(events[0]["from"].is_null());
    assert_eq!(events[0]["to"], "queued");
    assert_eq!(events[1]["from"], "queued");
    assert_eq!(events[1]["to"], "cancelled");
    assert_eq!(events[1]["traceId"], cancel.trace_id());
    assert_eq!(events[1]["at"], cancel.body["data"]["cancelledAt"]);
}
store_test!(the_events_route_shows_the_audit_trail);

/// Gives `scan` the creation time of `like`, in the database.
async fn same_created_at(app: &TestApp, scan: &ScanId, like: &ScanId) {
    use sqlx::Connection;
    if app.db.url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
        sqlx::query(
            "UPDATE signal_scans SET created_at = (SELECT created_at FROM signal_scans WHERE id = ?1)
             WHERE id = ?2",
        )
        .bind(like.as_str())
        .bind(scan.as_str())
        .execute(&mut connection)
        .await
        .unwrap();
    } else {
        let mut connection = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
        sqlx::query(
            "UPDATE signal_scans SET created_at = (SELECT created_at FROM signal_scans WHERE id = $1)
             WHERE id = $2",
        )
        .bind(like.as_str())
        .bind(scan.as_str())
        .execute(&mut connection)
        .await
        .unwrap();
    }
}

/// What a key's caller reads is never kept by a cache on the way (`Cache-Control: no-store`),
/// its answers and its refusals alike, nor is any other answer; the change stream keeps its own
/// `no-cache`.
async fn answers_are_never_stored_by_caches(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let scan_path = format!("/v1/accounts/{group}/signals/scans/{scan}");

    let read = app.get(&key, &scan_path).await;
    let listed = app
        .get(&key, &format!("/v1/accounts/{group}/signals/scans"))
        .await;
    let cancelled = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
    let refused = app
        .get(&key, &format!("/v1/accounts/{group}/signals/scans?limit=0"))
        .await;

    let unknown_route = app.get(&key, "/v1/nowhere").await;
    let unauthenticated = app.get("ssk_nope", &scan_path).await;

    for response in [
        &read,
        &listed,
        &cancelled,
        &refused,
        &unknown_route,
        &unauthenticated,
    ] {
        assert_eq!(
            response.header("cache-control"),
            Some("no-store"),
            "{response:?}"
        );
    }
    assert_eq!(refused.status, 400);
    assert_eq!(unknown_route.status, 404);
    assert_eq!(unauthenticated.status, 401);
}
store_test!(answers_are_never_stored_by_caches);

/// A page deep in a large group reads from its cursor on, whatever the query's shape (a status or
/// not, a cursor or not), also under PostgreSQL's generic plan (a connection's after five runs of
/// a statement): each statement is a range of the group's index from the cursor, a status
/// filtered along it. Fails for a statement whose plan bounds the index by the group alone and
/// filters the group's newer scans out (`$n IS NULL OR …` did: 2,101 rows for a page of 101).
/// A status that few of the group's scans have reads the rest of the group (the contract says
/// so), and never another group's scans.
async fn a_page_deep_in_a_large_group_reads_from_its_cursor_on(backend: Backend) {
    const ROWS_A_PAGE: u64 = 101;
    let app = TestApp::spawn(backend).await;
    let (group, other) = (group(), group());
    // 3,000 scans, every 60th queued (50 of them), the others completed; newest first.
    let mut scans = Vec::new();
    for i in 0..3000 {
        let status = match i % 60 {
            59 => ScanStatus::Queued,
            _ => ScanStatus::Completed,
        };
        scans.push(app.store.create_scan(&group, status).await.unwrap());
    }
    scans.reverse();
    for _ in 0..1000 {
        app.scan(&other, ScanStatus::Completed).await;
    }
    // 2,000 scans down the group, and 40 queued scans down (with the group's scans below it).
    let deep = &scans[1999];
    let queued = ScanStatus::Queued;
    let (place, deep_queued) = (scans.iter().enumerate())
        .filter(|(_, scan)| scan.status == queued)
        .nth(39)
        .unwrap();
    let below_deep_queued = (scans.len() - place - 1) as u64;

    let shapes = [
        (None, None, ROWS_A_PAGE),
        (Some(queued), None, 3000),
        (None, Some(deep), ROWS_A_PAGE),
        (Some(queued), Some(deep_queued), below_deep_queued),
    ];
    for (status, after, rows) in shapes {
        let shape = format!("status {status:?}, after {:?}", after.map(|scan| &scan.id));
        match backend {
            Backend::Postgres => {
                let read = postgres_page_reads(&app.db.url, &group, status, after).await;
                assert_eq!(read, rows, "{shape}");
            }
            Backend::Sqlite => {
                let plan = sqlite_page_plan(&app.db.url, status.is_some(), after.is_some()).await;
                let range = match after {
                    Some(_) => "(account_group_id=? AND (created_at,id)<(?,?))",
                    None => "(account_group_id=?)",
                };
                assert!(
                    plan.starts_with("SEARCH signal_scans USING INDEX") && plan.contains(range),
                    "{shape}: {plan}"
                );
                assert!(!plan.contains("TEMP B-TREE"), "{shape}: {plan}");
            }
        }
    }
}
store_test!(a_page_deep_in_a_large_group_reads_from_its_cursor_on);

/// The rows of `signal_scans` that a page's statement reads, run under its generic plan.
async fn postgres_page_reads(
    url: &str,
    group: &AccountGroupId,
    status: Option<ScanStatus>,
    after: Option<&Scan>,
) -> u64 {
    let mut db = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql("ANALYZE signal_scans; SET plan_cache_mode = force_generic_plan")
        .execute(&mut db)
        .await
        .unwrap();
    let statement = postgres_scan_page(status.is_some(), after.is_some());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE page AS {statement}")))
        .execute(&mut db)
        .await
        .unwrap();
    let mut arguments = vec![group.to_string()];
    arguments.extend(status.map(|status| status.as_str().to_owned()));
    if let Some(scan) = after {
        arguments.push(scan.created_at.format(&Rfc3339).unwrap());
        arguments.push(scan.id.to_string());
    }
    let quoted: Vec<String> = arguments.iter().map(|value| format!("'{value}'")).collect();
    let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE page({}, 101)",
        quoted.join(", ")
    )))
    .fetch_one(&mut db)
    .await
    .unwrap();
    rows_touched(&plan[0]["Plan"], "signal_scans")
}

/// SQLite's plan of a page's statement, its steps joined by `; `.
async fn sqlite_page_plan(url: &str, status: bool, after: bool) -> String {
    let mut db = SqliteConnection::connect(url).await.unwrap();
    let statement = sqlite_scan_page(status, after);
    // The values do not change the plan: one for each parameter.
    let parameters = statement.matches('?').count();
    let mut explain = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "EXPLAIN QUERY PLAN {statement}"
    )));
    for _ in 0..parameters {
        explain = explain.bind("");
    }
    let steps: Vec<(i64, i64, i64, String)> = explain.fetch_all(&mut db).await.unwrap();
    steps
        .into_iter()
        .map(|(.., detail)| detail)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A read cut off at `DB_TIMEOUT_MS` ends in the database too, and never holds up a write: pages
/// that outran it (a status filter reading a long history through, as runners.md's restart does)
/// each answered 502, and the requests after them, another tenant's cancel and read, answer 200.
/// The cut-off statements ran on in SQLite for seconds, each holding a connection and a core, and
/// the writes shared their pool: the other tenant's cancel and read answered 502 (the read-side
/// review). SQLite's alone: PostgreSQL ends a statement at the same deadline itself
/// (`statement_timeout`), and its reads wait for no write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_read_past_its_deadline_ends_there_and_holds_up_no_write() {
    const SLOW_READS: usize = 6;
    let app = Settings::default()
        .with_db_timeout(std::time::Duration::from_millis(300))
        .with_db_max_connections(3)
        .with_rate_limit(1000, 1000)
        .spawn(Backend::Sqlite)
        .await;
    let (long, other) = (group(), group());
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[long]).await;
    let writer = app.writer(&other).await;
    let scan = app.scan(&other, ScanStatus::Queued).await;
    let mut db = SqliteConnection::connect(&app.db.url).await.unwrap();
    write_cancelled_scans(&mut db, &long, 400_000, 0).await;
    sqlx::query("ANALYZE").execute(&mut db).await.unwrap();
    let queued = format!("/v1/accounts/{long}/signals/scans?status=queued");

    let slow = futures::future::join_all((0..SLOW_READS).map(|_| app.get(&reader, &queued))).await;
    for answer in &slow {
        answer.assert_error(502, "UPSTREAM_ERROR");
    }
    let cancelled = app
        .cancel(Some(&writer), other.as_str(), scan.as_str())
        .await;
    let read = app
        .get(&writer, &scan_path(other.as_str(), scan.as_str()))
        .await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    assert_eq!(read.status, 200, "{read:?}");
}

/// A read the database refuses for a reason of its own (here a column a later version renamed:
/// "no such column") is a 500, the service's own failure: only a read stopped at its deadline, or
/// one that found no connection in time, is the database out of reach, a 502 to try again. On
/// SQLite every failed read could be told as "no answer within" the timeout, and no test saw it
/// (the eighth mutation run).
async fn a_read_the_database_refuses_for_a_reason_of_its_own_is_a_500(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[group]).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let path = scan_path(group.as_str(), scan.as_str());
    let before = app.get(&reader, &path).await;
    let renamed = "ALTER TABLE signal_scans RENAME COLUMN cancelled_at TO cancelled_on";
    match backend {
        Backend::Postgres => {
            let mut db = PgConnection::connect(&app.db.url).await.unwrap();
            sqlx::raw_sql(renamed).execute(&mut db).await.unwrap();
        }
        Backend::Sqlite => {
            let mut db = SqliteConnection::connect(&app.db.url).await.unwrap();
            sqlx::raw_sql(renamed).execute(&mut db).await.unwrap();
        }
    }

    let after = app.get(&reader, &path).await;

    assert_eq!(before.status, 200, "{before:?}");
    after.assert_error(500, "INTERNAL_ERROR");
}
store_test!(a_read_the_database_refuses_for_a_reason_of_its_own_is_a_500);
