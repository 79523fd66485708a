//! Opening a stream: its parameters and cursors, the order of its checks, the path it shares with
//! the scan routes, and the per-key cap on open streams.

use std::time::{Duration, Instant};

use serde_json::Value;
use signal_scans::domain::ids::ScanId;
use signal_scans::domain::keys::NewApiKey;
use signal_scans::domain::scan::ScanStatus;
use signal_scans::http::changes::StreamSettings;

use super::*;
use crate::helpers::sse::SseStream;
use crate::helpers::{Backend, TestApp, group};
use crate::store_test;

/// Each bad parameter or malformed cursor is a 400 naming it; a well-formed cursor ahead of every
/// change is no place in the trail: 410.
async fn bad_parameters_and_cursors_are_refused_naming_them(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    // (query, each Last-Event-ID header sent, what the details must name)
    let cases: Vec<(String, &[&str], &str)> = vec![
        ("?scanId=nope".into(), &[], "scanId"),
        ("?status=done".into(), &[], "status"),
        ("?status=CANCELLED".into(), &[], "status"),
        ("?after=garbage".into(), &[], "after"),
        ("?after=1-01".into(), &[], "after"),
        ("?after=1-1&after=1-2".into(), &[], "after"),
        ("".into(), &["garbage"], "Last-Event-ID"),
        // The header wins, but the `after` beside it must still be a cursor.
        ("?after=garbage".into(), &["0-0"], "after"),
        // Which copy counts would differ between proxies: the first was taken (HTTP review).
        (
            "".into(),
            &["0-0", "0-0"],
            "Last-Event-ID may be given once",
        ),
    ];
    for (query, last_event_ids, named) in cases {
        let mut request = stream_request(&app.url(&changes_path(&group, &query)), &reader);
        for id in last_event_ids {
            request = request.header("Last-Event-ID", *id);
        }

        let details = refused(request).await.assert_error(400, "VALIDATION_ERROR");

        assert!(
            details.contains(named),
            "{query} {last_event_ids:?}: {details}"
        );
    }
    // Well-formed, but ahead of everything the trail holds: no place in it, as a cursor from
    // before a restore of the database is, so expired rather than malformed (a client told 400
    // stops for good).
    for (query, last_event_id) in [
        (query_after("999999999999-1"), None),
        (String::new(), Some("999999999999-1")),
    ] {
        let mut request = stream_request(&app.url(&changes_path(&group, &query)), &reader);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }

        let details = refused(request).await.assert_error(410, "CURSOR_EXPIRED");

        assert!(
            details.contains("no place in this database's change history"),
            "{details}"
        );
    }
}
store_test!(bad_parameters_and_cursors_are_refused_naming_them);

fn scan_filters(count: usize) -> String {
    let filters: Vec<String> = (0..count)
        .map(|_| format!("scanId={}", ScanId::generate()))
        .collect();
    format!("?{}", filters.join("&"))
}

/// The contract allows up to 100 `scanId` filters, so a runner can follow its 100 scans; the
/// 101st is refused naming `scanId`.
async fn a_hundred_scan_filters_open_a_stream_and_the_101st_is_400_naming_scan_id(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;

    let hundred = SseStream::open(stream_request(
        &app.url(&changes_path(&group, &scan_filters(100))),
        &reader,
    ))
    .await;
    let hundred_and_one = refused(stream_request(
        &app.url(&changes_path(&group, &scan_filters(101))),
        &reader,
    ))
    .await;

    if let Err(refused) = hundred {
        panic!("100 scanId filters were refused: {refused:?}");
    }
    let details = hundred_and_one.assert_error(400, "VALIDATION_ERROR");
    assert!(details.contains("scanId"), "{details}");
}
store_test!(a_hundred_scan_filters_open_a_stream_and_the_101st_is_400_naming_scan_id);

/// The change stream's request target may be 4 KiB (the other routes' 2 KiB is too little for 100
/// filters), and no more: exactly 4096 bytes open a stream, 4097 are the size limit's 400 naming
/// both numbers. Without the upper bound a client could make every stream's filters as large as
/// the HTTP layer lets through (64 KiB).
async fn the_stream_target_limit_is_4096_bytes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    // A valid filter, then empty `&` pairs (which parse as nothing) to `bytes` of target.
    let target = |bytes: usize| {
        let mut target = changes_path(&group, "?status=cancelled");
        target.push_str(&"&".repeat(bytes - target.len()));
        target
    };

    let at_limit = SseStream::open(stream_request(&app.url(&target(4096)), &reader)).await;
    let over = refused(stream_request(&app.url(&target(4097)), &reader)).await;

    if let Err(refused) = at_limit {
        panic!("a 4096-byte target was refused: {refused:?}");
    }
    assert_eq!(
        over.assert_error(400, "VALIDATION_ERROR"),
        "request target is 4097 bytes; the limit is 4096"
    );
}
store_test!(the_stream_target_limit_is_4096_bytes);

/// As the list route does (`?colour=blue` names `colour`), so a client sees its own typo.
async fn an_unknown_parameter_is_400_naming_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;

    let details = refused(stream_request(
        &app.url(&changes_path(&group, "?colour=blue")),
        &reader,
    ))
    .await
    .assert_error(400, "VALIDATION_ERROR");

    assert!(details.contains("colour"), "{details}");
}
store_test!(an_unknown_parameter_is_400_naming_it);

/// 401 → 403 (permission) → 400 (path, parameters) → 403 (group) → 410 (unknown cursor): each
/// row breaks every later rule too, and must answer with the earliest one, as the read routes do.
async fn checks_run_in_the_read_routes_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (mine, theirs) = (group(), group());
    let (reader, _) = read_key(&app, &mine).await;
    let (powerless, _) = app.key_for(&[], &[mine]).await;
    let forged = query_after("999999999999-1");
    let unknown_key = NewApiKey::generate().secret;
    let path =
        |group: &str, query: &str| format!("/v1/accounts/{group}/signals/scans/changes{query}");
    let cases: [(Option<&str>, String, u16, &str, &str); 8] = [
        (None, path("nope", "?scanId=nope"), 401, "UNAUTHORIZED", ""),
        (
            Some(&unknown_key),
            path(mine.as_str(), ""),
            401,
            "UNAUTHORIZED",
            "",
        ),
        (
            Some(&powerless),
            path("nope", "?scanId=nope"),
            403,
            "FORBIDDEN",
            "signals:read or signals:write",
        ),
        (
            Some(&reader),
            path(theirs.as_str(), "?scanId=nope"),
            400,
            "VALIDATION_ERROR",
            "scanId",
        ),
        (
            Some(&reader),
            path("nope", ""),
            400,
            "VALIDATION_ERROR",
            "accountGroupId",
        ),
        (
            Some(&reader),
            path(theirs.as_str(), &forged),
            403,
            "FORBIDDEN",
            "",
        ),
        (
            Some(&reader),
            path(theirs.as_str(), ""),
            403,
            "FORBIDDEN",
            "",
        ),
        (
            Some(&reader),
            path(mine.as_str(), &forged),
            410,
            "CURSOR_EXPIRED",
            "no place in this database's change history",
        ),
    ];
    for (key, path, status, code, named) in cases {
        let mut request = reqwest::Client::new().get(app.url(&path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }

        let response = refused(request).await;

        let details = response.assert_error(status, code);
        assert!(details.contains(named), "{path}: {details}");
        // Every answer after authentication states the key's rate limit.
        assert_eq!(
            response.header("ratelimit").is_some(),
            status != 401,
            "{response:?}"
        );
    }
}
store_test!(checks_run_in_the_read_routes_order);

async fn changes_is_a_stream_and_never_taken_for_a_scan_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    let writer = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let scans = format!("/v1/accounts/{group}/signals/scans");

    follow(stream_request(
        &app.url(&format!("{scans}/changes")),
        &reader,
    ))
    .await;
    let read = app.get(&reader, &format!("{scans}/{scan}")).await;
    let events_of_changes = app.get(&reader, &format!("{scans}/changes/events")).await;
    let cancel_of_changes = app.cancel(Some(&writer), group.as_str(), "changes").await;

    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.body["data"]["scanId"], Value::from(scan.as_str()));
    for response in [events_of_changes, cancel_of_changes] {
        let details = response.assert_error(400, "VALIDATION_ERROR");
        assert!(details.contains("scanId"), "{details}");
    }
}
store_test!(changes_is_a_stream_and_never_taken_for_a_scan_id);

async fn a_key_past_its_stream_cap_is_429_until_one_closes(backend: Backend) {
    let app = streams_app(
        backend,
        StreamSettings {
            // The server notices a closed stream when its next keep-alive cannot be written.
            keepalive: Duration::from_millis(200),
            max_per_key: 2,
            max_age: Duration::from_secs(3600),
        },
    )
    .await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    let (other_reader, _) = read_key(&app, &group).await;
    let url = app.url(&changes_path(&group, ""));
    let first = follow(stream_request(&url, &reader)).await;
    // Refused requests hold no slot.
    for _ in 0..3 {
        refused(stream_request(
            &app.url(&changes_path(&group, &query_after("999999999999-1"))),
            &reader,
        ))
        .await
        .assert_error(410, "CURSOR_EXPIRED");
    }
    let _second = follow(stream_request(&url, &reader)).await;

    let third = refused(stream_request(&url, &reader)).await;
    // At the cap, the checks keep their order (the contract, section 2): a malformed request and
    // another group are told so first, and the cap comes before a cursor's 410.
    let at_cap = |group: &AccountGroupId, query: &str| {
        refused(stream_request(
            &app.url(&changes_path(group, query)),
            &reader,
        ))
    };
    let forged = at_cap(&group, &query_after("999999999999-1")).await;
    let malformed = at_cap(&group, "?after=zz").await;
    let elsewhere = at_cap(&crate::helpers::group(), "").await;
    let other_key = follow(stream_request(&url, &other_reader)).await;

    // The contract's `Retry-After: 2`: a slot frees as soon as a stream ends, so a client is
    // told to come back soon, not after a rate's refill.
    assert_eq!(
        third.assert_error(429, "RATE_LIMITED"),
        "this API key has as many change streams open as it may; retry after 2 s"
    );
    assert_eq!(third.header("retry-after"), Some("2"), "{third:?}");
    assert_eq!(
        forged.assert_error(429, "RATE_LIMITED"),
        third.body["error"]["details"]
    );
    malformed.assert_error(400, "VALIDATION_ERROR");
    elsewhere.assert_error(403, "FORBIDDEN");
    // The document shows this answer among the stream's own 429s (it showed only the limits every
    // route has: the key's rate and the address's failures).
    let document = app.document().await;
    let operation =
        &document["paths"]["/v1/accounts/{accountGroupId}/signals/scans/changes"]["get"];
    let response = operation["responses"]["429"]["$ref"].as_str().unwrap();
    let name = response.rsplit('/').next().unwrap();
    let examples =
        document["components"]["responses"][name]["content"]["application/json"]["examples"]
            .as_object()
            .unwrap();
    assert!(
        examples
            .values()
            .any(|example| example["value"]["error"] == third.body["error"]),
        "{name}: {examples:?}"
    );
    drop(other_key);
    drop(first);
    let deadline = Instant::now() + SOON;
    loop {
        match SseStream::open(stream_request(&url, &reader)).await {
            Ok(_) => break,
            Err(response) => {
                response.assert_error(429, "RATE_LIMITED");
                assert!(
                    Instant::now() < deadline,
                    "a slot was not given back within {SOON:?} of its stream closing"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
store_test!(a_key_past_its_stream_cap_is_429_until_one_closes);
