//! The read side: one scan, the list, and the audit trail, with cancel's checks and envelope.

use signal_scans::domain::ids::ScanId;
use signal_scans::domain::keys::{AccountGroupAccess, Permission};
use signal_scans::domain::scan::ScanStatus;

use crate::helpers::{Backend, TestApp, group};
use crate::store_test;

fn scan_path(group: &str, scan: &str) -> String {
    format!("/v1/accounts/{group}/signals/scans/{scan}")
}

async fn a_scan_reads_back_with_every_moment_or_null(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = app
        .key_with(
            &[Permission::SignalsRead],
            AccountGroupAccess::Only(vec![group.clone()]),
            None,
        )
        .await;
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

async fn reads_check_key_permission_ids_group_and_existence_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (mine, theirs) = (group(), group());
    let reader = app
        .key_with(
            &[Permission::SignalsRead],
            AccountGroupAccess::Only(vec![mine.clone()]),
            None,
        )
        .await
        .0;
    let powerless = app
        .key_with(&[], AccountGroupAccess::Only(vec![mine.clone()]), None)
        .await
        .0;
    let their_scan = app.scan(&theirs, ScanStatus::Queued).await;
    let unknown = ScanId::generate();

    for path in [
        scan_path(mine.as_str(), unknown.as_str()),
        format!("{}/events", scan_path(mine.as_str(), unknown.as_str())),
        format!("/v1/accounts/{mine}/signals/scans"),
    ] {
        let unauthenticated =
            crate::helpers::ApiResponse::from(app.client.get(app.url(&path)).send().await.unwrap())
                .await;
        unauthenticated.assert_error(401, "UNAUTHORIZED");
        let details = app
            .get(&powerless, &path)
            .await
            .assert_error(403, "FORBIDDEN");
        assert!(
            details.contains("signals:read or signals:write"),
            "{details}"
        );
    }
    app.get(&reader, &scan_path("nope", "nope"))
        .await
        .assert_error(400, "VALIDATION_ERROR");
    app.get(&reader, &scan_path(theirs.as_str(), their_scan.as_str()))
        .await
        .assert_error(403, "FORBIDDEN");
    app.get(&reader, &format!("/v1/accounts/{theirs}/signals/scans"))
        .await
        .assert_error(403, "FORBIDDEN");
    app.get(
        &reader,
        &format!("{}/events", scan_path(theirs.as_str(), their_scan.as_str())),
    )
    .await
    .assert_error(403, "FORBIDDEN");
    app.get(&reader, &scan_path(mine.as_str(), their_scan.as_str()))
        .await
        .assert_error(404, "NOT_FOUND");
    app.get(
        &reader,
        &format!("{}/events", scan_path(mine.as_str(), their_scan.as_str())),
    )
    .await
    .assert_error(404, "NOT_FOUND");
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
    let list = |query: &str| format!("/v1/accounts/{group}/signals/scans{query}");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("?limit=2&cursor={cursor}"),
            None => "?limit=2".to_owned(),
        };
        let page = app.get(&key, &list(&query)).await;
        assert_eq!(page.status, 200, "{page:?}");
        pages += 1;
        for scan in page.body["data"]["scans"].as_array().unwrap() {
            seen.push(scan["scanId"].as_str().unwrap().to_owned());
        }
        match page.body["data"]["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let queued = app.get(&key, &list("?status=queued")).await;
    let default = app.get(&key, &list("")).await;

    let newest_first: Vec<String> = created.iter().rev().map(|id| id.to_string()).collect();
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
    assert_eq!(
        queued_ids,
        [
            created[4].as_str(),
            created[2].as_str(),
            created[0].as_str()
        ]
    );
    assert_eq!(default.body["data"]["scans"].as_array().unwrap().len(), 5);
    assert!(default.body["data"]["nextCursor"].is_null());
}
store_test!(the_list_pages_newest_first_and_filters_by_status);

async fn bad_list_parameters_are_400_naming_the_parameter(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
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
}
store_test!(bad_list_parameters_are_400_naming_the_parameter);

async fn the_events_route_shows_the_audit_trail(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let cancel = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

    let trail = app
        .get(
            &key,
            &format!("{}/events", scan_path(group.as_str(), scan.as_str())),
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
