//! `keys create --if-none --output-file`: what a bootstrap job that runs on every start needs.

use std::os::unix::fs::PermissionsExt;

use crate::cli::signal_scans;
use crate::helpers::{Backend, TestApp};
use crate::store_test;

fn bootstrap_args(output_file: &str) -> Vec<&str> {
    vec![
        "keys",
        "create",
        "--name",
        "bootstrap",
        "--all-account-groups",
        "--if-none",
        "--expires-in",
        "86400",
        "--output-file",
        output_file,
    ]
}

fn key_count(url: &str) -> usize {
    let listed = signal_scans(url, &["keys", "list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    serde_json::from_slice::<serde_json::Value>(&listed.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .len()
}

/// Run twice, it creates one key: the secret goes to a new 0600 file, never to stdout, and the
/// second run says an active key exists and exits 0 without touching anything.
async fn keys_create_if_none_twice_creates_one_key_written_to_a_private_file(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = app.db.url.clone();
    let folder = tempdir();
    let first_file = folder.join("api-key");
    let second_file = folder.join("second-api-key");

    let first = signal_scans(&url, &bootstrap_args(first_file.to_str().unwrap()));
    let second = signal_scans(&url, &bootstrap_args(second_file.to_str().unwrap()));

    assert!(first.status.success(), "{first:?}");
    let secret = std::fs::read_to_string(&first_file).unwrap();
    let secret = secret.trim_end();
    assert!(secret.starts_with("ssk_"), "the file holds the key");
    let mode = std::fs::metadata(&first_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let stdout = String::from_utf8(first.stdout.clone()).unwrap();
    assert!(!stdout.contains(secret) && !stdout.contains(&secret[4..]));
    assert!(stdout.contains(first_file.to_str().unwrap()), "{stdout}");
    let id = app.store.list_keys().await.unwrap()[0].id;
    assert!(stdout.contains(&id.to_string()), "{stdout}");
    // The key in the file works.
    let group = crate::helpers::group();
    let scan = app
        .scan(&group, signal_scans::domain::scan::ScanStatus::Queued)
        .await;
    app.cancel_ok(secret, &group, &scan).await;

    assert!(second.status.success(), "{second:?}");
    let said = String::from_utf8(second.stdout.clone()).unwrap();
    assert!(said.contains("an active API key exists"), "{said}");
    assert!(!second_file.exists(), "nothing written the second time");
    assert_eq!(key_count(&url), 1);
}
store_test!(keys_create_if_none_twice_creates_one_key_written_to_a_private_file);

/// An existing file is never overwritten: a clear error, a non-zero exit, and no key created.
async fn keys_create_refuses_an_existing_output_file_and_creates_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = app.db.url.clone();
    let folder = tempdir();
    let existing = folder.join("api-key");
    std::fs::write(&existing, "keep me\n").unwrap();

    let refused = signal_scans(&url, &bootstrap_args(existing.to_str().unwrap()));

    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert!(
        stderr.contains("already exists") && stderr.contains("no key was created"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me\n");
    assert_eq!(key_count(&url), 0);
}
store_test!(keys_create_refuses_an_existing_output_file_and_creates_nothing);

/// A revoked or expired key is not an active one: `--if-none` creates a new key then.
async fn keys_create_if_none_ignores_revoked_keys(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = app.db.url.clone();
    let folder = tempdir();
    let first = signal_scans(&url, &bootstrap_args(folder.join("a").to_str().unwrap()));
    assert!(first.status.success(), "{first:?}");
    let id = app.store.list_keys().await.unwrap()[0].id;
    app.store.revoke_key(id).await.unwrap();

    let again = signal_scans(&url, &bootstrap_args(folder.join("b").to_str().unwrap()));

    assert!(again.status.success(), "{again:?}");
    assert!(folder.join("b").exists());
    assert_eq!(key_count(&url), 2);
}
store_test!(keys_create_if_none_ignores_revoked_keys);

/// A folder of its own under the system's temporary directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    let folder = std::env::temp_dir().join(format!(
        "signal-scans-keys-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&folder).unwrap();
    TempDir(folder)
}

/// A secret that cannot be printed (stdout on a full disk; or its reader gone) leaves no usable
/// key behind: the key is revoked and the command fails naming it, so that a bootstrap job run
/// again (`--if-none`) makes one it receives. The key stayed active with its secret lost
/// (command line review).
async fn a_key_whose_secret_cannot_be_printed_is_revoked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = app.db.url.clone();
    let args = [
        "keys",
        "create",
        "--name",
        "boot",
        "--all-account-groups",
        "--if-none",
        "--json",
    ];
    let full_disk = crate::helpers::child::signal_scans()
        .args(args)
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .expect("the binary runs");

    let received = signal_scans(&url, &args);

    let stderr = String::from_utf8_lossy(&full_disk.stderr);
    assert_eq!(full_disk.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the key is revoked; create another"),
        "{stderr}"
    );
    assert!(received.status.success(), "{received:?}");
    let made: serde_json::Value = serde_json::from_slice(&received.stdout).unwrap();
    assert!(made["key"].as_str().unwrap().starts_with("ssk_"), "{made}");
    let keys = app.store.list_keys().await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let active: Vec<_> = keys.iter().filter(|key| key.revoked_at.is_none()).collect();
    assert_eq!(active.len(), 1, "{keys:?}");
    assert_eq!(active[0].id.to_string(), made["id"]);
}
store_test!(a_key_whose_secret_cannot_be_printed_is_revoked);
