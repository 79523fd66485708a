//! Authentication, permissions, account-group access, and the order in which they are checked.

use signal_scans::domain::ids::ScanId;
use signal_scans::domain::keys::{AccountGroupAccess, NewApiKey, Permission};
use signal_scans::domain::scan::ScanStatus;
use time::{Duration, OffsetDateTime};

use crate::helpers::process::ServerProcess;
use crate::helpers::{ApiResponse, Backend, TestApp, cancel_path, group};
use crate::store_test;

async fn missing_unknown_revoked_and_expired_keys_are_401(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let access = || AccountGroupAccess::Only(vec![group]);
    let (revoked, revoked_id) = app
        .key_with(&[Permission::SignalsWrite], access(), None)
        .await;
    app.store.revoke_key(revoked_id).await.unwrap().unwrap();
    let (expired, _) = app
        .key_with(
            &[Permission::SignalsWrite],
            access(),
            Some(OffsetDateTime::now_utc() - Duration::seconds(1)),
        )
        .await;
    let unknown = signal_scans::domain::keys::NewApiKey::generate().secret;

    let cases: [(Option<&str>, &str); 6] = [
        (
            None,
            "API key is missing: send Authorization: Bearer <key> or X-API-Key: <key>",
        ),
        (Some(""), "API key is invalid"),
        (Some("not-a-key"), "API key is invalid"),
        (Some(&unknown), "API key is invalid"),
        (Some(&revoked), "API key has been revoked"),
        (Some(&expired), "API key has expired"),
    ];
    for (key, said) in cases {
        let response = app.cancel(key, group.as_str(), scan.as_str()).await;

        let details = response.assert_error(401, "UNAUTHORIZED");
        assert_eq!(details, said, "{key:?}");
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        assert_eq!(
            response.header("ratelimit"),
            None,
            "not counted against any key"
        );
    }
    assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
}
store_test!(missing_unknown_revoked_and_expired_keys_are_401);

async fn keys_are_read_from_bearer_in_any_case_or_x_api_key(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let path = |scan: &ScanId| app.url(&cancel_path(group.as_str(), scan.as_str()));

    // Spaces around the key, between the scheme and the key too, are not part of it.
    for (header, value) in [
        ("authorization", format!("Bearer {key}")),
        ("authorization", format!("bearer {key}")),
        ("authorization", format!("BEARER {key}")),
        ("authorization", format!("Bearer   {key}  ")),
        ("x-api-key", key.clone()),
        ("x-api-key", format!("  {key}  ")),
    ] {
        let scan = app.scan(&group, ScanStatus::Queued).await;
        let response = ApiResponse::of(app.client.post(path(&scan)).header(header, value)).await;
        assert_eq!(response.status, 200, "{header}: {response:?}");
    }

    // When `Authorization` is present it alone decides: another scheme is a 401 naming the
    // scheme, and a valid `X-API-Key` beside it (or beside a Bearer that is not a key) is not
    // read. Falling through to `X-API-Key` would let a request authenticate as a key its
    // `Authorization` did not name.
    let bearer_only = "Authorization header must use the Bearer scheme";
    for (authorization, x_api_key, details) in [
        (format!("Basic {key}"), None, bearer_only),
        (format!("Basic {key}"), Some(&key), bearer_only),
        ("Bearer ssk_x".to_owned(), Some(&key), "API key is invalid"),
    ] {
        let scan = app.scan(&group, ScanStatus::Queued).await;
        let mut request = app
            .client
            .post(path(&scan))
            .header("authorization", &authorization);
        if let Some(x_api_key) = x_api_key {
            request = request.header("x-api-key", x_api_key);
        }
        let refused = ApiResponse::of(request).await;
        let said = refused.assert_error(401, "UNAUTHORIZED");
        let case = (authorization.split(' ').next(), x_api_key.is_some());
        assert_eq!(said, details, "{case:?}");
        assert_eq!(
            refused.header("www-authenticate"),
            Some("Bearer"),
            "{case:?}"
        );
        assert_eq!(app.status_of(&scan).await, ScanStatus::Queued, "{case:?}");
    }

    // A credential header given twice is ambiguous: refused, whichever copy holds the key (the
    // first one used to win).
    for (header, first, second) in [
        (
            "authorization",
            format!("Bearer {key}"),
            "Bearer ssk_x".to_owned(),
        ),
        ("x-api-key", key.clone(), "ssk_x".to_owned()),
    ] {
        let scan = app.scan(&group, ScanStatus::Queued).await;
        let twice = ApiResponse::of(
            app.client
                .post(path(&scan))
                .header(header, first)
                .header(header, second),
        )
        .await;
        let details = twice.assert_error(401, "UNAUTHORIZED");
        let named = match header {
            "authorization" => "Authorization",
            _ => "X-API-Key",
        };
        assert_eq!(
            details,
            format!("the {named} header is given more than once")
        );
        assert_eq!(twice.header("www-authenticate"), Some("Bearer"), "{header}");
        assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
    }
}
store_test!(keys_are_read_from_bearer_in_any_case_or_x_api_key);

async fn a_key_without_signals_write_is_403_naming_the_permission(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[group]).await;

    let response = app
        .cancel(Some(&reader), group.as_str(), scan.as_str())
        .await;

    let details = response.assert_error(403, "FORBIDDEN");
    assert_eq!(details, "API key lacks the signals:write permission");
    assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
}
store_test!(a_key_without_signals_write_is_403_naming_the_permission);

async fn a_key_without_access_to_the_group_is_403_whether_or_not_it_exists(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (mine, theirs, empty) = (group(), group(), group());
    let key = app.writer(&mine).await;
    let their_scan = app.scan(&theirs, ScanStatus::Queued).await;

    let existing = app
        .cancel(Some(&key), theirs.as_str(), their_scan.as_str())
        .await;
    let missing = app
        .cancel(Some(&key), empty.as_str(), ScanId::generate().as_str())
        .await;

    let existing_details = existing.assert_error(403, "FORBIDDEN");
    let missing_details = missing.assert_error(403, "FORBIDDEN");
    assert!(existing_details.contains(theirs.as_str()));
    assert_eq!(
        existing_details.replace(theirs.as_str(), "G"),
        missing_details.replace(empty.as_str(), "G"),
        "the answer does not tell whether the group exists"
    );
    assert_eq!(app.status_of(&their_scan).await, ScanStatus::Queued);
}
store_test!(a_key_without_access_to_the_group_is_403_whether_or_not_it_exists);

async fn a_key_for_all_groups_reaches_any_group(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (key, _) = app
        .key_with(&[Permission::SignalsWrite], AccountGroupAccess::All, None)
        .await;
    for _ in 0..2 {
        let group = group();
        let scan = app.scan(&group, ScanStatus::Queued).await;
        app.cancel_ok(&key, &group, &scan).await;
    }
}
store_test!(a_key_for_all_groups_reaches_any_group);

/// 401 → 403 (permission) → 400 → 403 (group) → 404 → 200/422: each row breaks every later rule
/// too, and must answer with the earliest one. (The key's rate, 429, between 401 and 403, has its
/// own tests in `rate_limit.rs`: its limit is spent by every request here.)
async fn checks_run_in_the_documented_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (mine, theirs) = (group(), group());
    let writer = app.writer(&mine).await;
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[mine]).await;
    let completed = app.scan(&mine, ScanStatus::Completed).await;
    let their_scan = app.scan(&theirs, ScanStatus::Completed).await;
    let unknown = ScanId::generate();

    let cases: [(Option<&str>, &str, &str, u16, &str); 6] = [
        (None, "bad", "bad", 401, "UNAUTHORIZED"),
        (Some(&reader), "bad", "bad", 403, "FORBIDDEN"),
        (
            Some(&writer),
            theirs.as_str(),
            "bad",
            400,
            "VALIDATION_ERROR",
        ),
        (
            Some(&writer),
            theirs.as_str(),
            their_scan.as_str(),
            403,
            "FORBIDDEN",
        ),
        (
            Some(&writer),
            mine.as_str(),
            unknown.as_str(),
            404,
            "NOT_FOUND",
        ),
        (
            Some(&writer),
            mine.as_str(),
            completed.as_str(),
            422,
            "VALIDATION_ERROR",
        ),
    ];
    for (key, group, scan, status, code) in cases {
        let response = app.cancel(key, group, scan).await;
        response.assert_error(status, code);
        // Every answer after authentication states the key's rate limit.
        assert_eq!(
            response.header("ratelimit").is_some(),
            status != 401,
            "{response:?}"
        );
        assert_eq!(response.header("ratelimit-policy").is_some(), status != 401);
    }
}
store_test!(checks_run_in_the_documented_order);

async fn a_near_miss_key_is_rejected_exactly_like_a_random_one(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let last = key.chars().last().unwrap();
    let near_miss = format!(
        "{}{}",
        &key[..key.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let random = NewApiKey::generate().secret;

    let near = app
        .cancel(Some(&near_miss), group.as_str(), scan.as_str())
        .await;
    let far = app
        .cancel(Some(&random), group.as_str(), scan.as_str())
        .await;

    assert_eq!(near.status, far.status);
    assert_eq!(near.body["error"], far.body["error"]);
    assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
}
store_test!(a_near_miss_key_is_rejected_exactly_like_a_random_one);

/// Anything not shaped like a key (`ssk_` and 64 lowercase hexadecimal characters) is refused
/// without a database lookup: guesses that cannot match cost the database nothing, and a client
/// cannot make the service hash and look up whatever it sends. A well-shaped unknown key, by
/// contrast, is looked up once.
async fn a_value_not_shaped_like_a_key_is_refused_without_a_lookup(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let hex = &key["ssk_".len()..];
    let malformed = [
        "not-a-key".to_owned(),
        format!("ssk_{}", hex.to_uppercase()),
        key[..key.len() - 1].to_owned(),
        format!("{key}0"),
        format!("ssk-{hex}"),
        format!("ssk_{}g", &hex[1..]),
        hex.to_owned(),
    ];
    let looked_up_before = app.served_store.key_lookups();

    for presented in &malformed {
        let refused = app
            .cancel(Some(presented), group.as_str(), scan.as_str())
            .await;
        assert_eq!(
            refused.assert_error(401, "UNAUTHORIZED"),
            "API key is invalid",
            "{presented}"
        );
    }
    let no_lookups = app.served_store.key_lookups() - looked_up_before;
    let unknown = NewApiKey::generate().secret;
    app.cancel(Some(&unknown), group.as_str(), scan.as_str())
        .await
        .assert_error(401, "UNAUTHORIZED");

    assert_eq!(no_lookups, 0, "malformed keys were looked up");
    assert_eq!(
        app.served_store.key_lookups() - looked_up_before,
        1,
        "a key-shaped value is looked up once"
    );
    assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
}
store_test!(a_value_not_shaped_like_a_key_is_refused_without_a_lookup);

/// A key of one group, guessing ids, can neither cancel nor read nor list another group's scans,
/// and cannot tell whether they exist.
async fn tenants_are_isolated_on_every_route(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (mine, theirs) = (group(), group());
    let (key, _) = app
        .key_for(
            &[Permission::SignalsRead, Permission::SignalsWrite],
            &[mine],
        )
        .await;
    let their_scan = app.scan(&theirs, ScanStatus::Running).await;
    let nobody = ScanId::generate();
    let nowhere = group();

    for (target_group, target_scan) in [(&theirs, &their_scan), (&nowhere, &nobody)] {
        let base = format!("/v1/accounts/{target_group}/signals/scans");
        let answers = [
            app.cancel(Some(&key), target_group.as_str(), target_scan.as_str())
                .await,
            app.get(&key, &format!("{base}/{target_scan}")).await,
            app.get(&key, &format!("{base}/{target_scan}/events")).await,
            app.get(&key, &base).await,
        ];
        for answer in answers {
            let details = answer.assert_error(403, "FORBIDDEN");
            assert_eq!(
                details,
                format!("API key has no access to account group {target_group}")
            );
        }
    }
    // Their scan id under my own group is just as unknown as an id nobody has.
    let base = format!("/v1/accounts/{mine}/signals/scans");
    for target in [&their_scan, &nobody] {
        let answers = [
            app.cancel(Some(&key), mine.as_str(), target.as_str()).await,
            app.get(&key, &format!("{base}/{target}")).await,
            app.get(&key, &format!("{base}/{target}/events")).await,
        ];
        for answer in answers {
            assert_eq!(
                answer.assert_error(404, "NOT_FOUND"),
                "no such scan in this account group"
            );
        }
    }
    let listed = app.get(&key, &base).await;
    assert_eq!(listed.body["data"]["scans"], serde_json::json!([]));
    assert_eq!(app.status_of(&their_scan).await, ScanStatus::Running);
}
store_test!(tenants_are_isolated_on_every_route);

/// A key whose row holds a permission this version does not know (a newer version's, seen during
/// a rolling upgrade or after a rollback) works with the permissions it knows, and `keys list`
/// still lists every key, saying which permission it leaves out. The whole row was taken as
/// corrupt: its requests answered 500, and `keys list` failed for every key.
async fn a_permission_this_version_does_not_know_is_one_the_key_lacks(backend: Backend) {
    use sqlx::Connection;
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (key, id) = app.key_for(&[Permission::SignalsRead], &[group]).await;
    match backend {
        Backend::Postgres => {
            let mut db = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
            sqlx::query(
                "UPDATE api_keys SET permissions = array_append(permissions, 'signals:admin')
                 WHERE id = $1",
            )
            .bind(id)
            .execute(&mut db)
            .await
            .unwrap();
        }
        Backend::Sqlite => {
            let mut db = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
            sqlx::query(
                "UPDATE api_keys SET permissions = json_insert(permissions, '$[#]', 'signals:admin')
                 WHERE id = ?1",
            )
            .bind(id.to_string())
            .execute(&mut db)
            .await
            .unwrap();
        }
    }

    let read = app
        .get(&key, &format!("/v1/accounts/{group}/signals/scans"))
        .await;
    let write = app
        .cancel(Some(&key), group.as_str(), "aaaaaaaaaaaaaaaaaaaaaaaa")
        .await;
    let listed = crate::cli::signal_scans(&app.db.url, &["keys", "list", "--json"]);

    assert_eq!(read.status, 200, "{read:?}");
    write.assert_error(403, "FORBIDDEN");
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&id.to_string()),
        "{listed:?}"
    );
    let warning = String::from_utf8_lossy(&listed.stderr);
    assert!(
        warning.contains("a key holds a permission this version does not know")
            && warning.contains("signals:admin")
            && warning.contains(&id.to_string()),
        "{warning}"
    );
    // A serving process says it once, however often it reads the key.
    let server = ServerProcess::start(&[
        ("DATABASE_URL", app.db.url.as_str()),
        ("KEY_CACHE_TTL_MS", "0"),
    ])
    .await;
    for _ in 0..3 {
        let read = reqwest::Client::new()
            .get(server.url(&format!("/v1/accounts/{group}/signals/scans")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200);
    }
    let said = |event: &serde_json::Value| {
        event["message"]
            == "a key holds a permission this version does not know; taken as one it lacks"
    };
    let logs = server
        .until_events(|events| {
            let finished = |e: &&serde_json::Value| e["message"] == "finished processing request";
            events.iter().filter(finished).count() == 3
        })
        .await;
    assert_eq!(logs.iter().filter(|e| said(e)).count(), 1, "{logs:?}");
}
store_test!(a_permission_this_version_does_not_know_is_one_the_key_lacks);
