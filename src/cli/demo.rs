//! `serve --demo`: seeds an empty database with a key and a scan in each status, and prints one
//! ready-to-paste curl command per documented outcome (each shows the status it gets), then a
//! queued scan left for the reader to cancel from `/docs`.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::keys::{AccountGroupAccess, KeySpec, Permission};
use crate::domain::scan::ScanStatus;
use crate::service::{KeyAdmin, ScanService, ServiceError};

/// What the demo created: enough to show every outcome.
pub(super) struct Demo {
    key: String,
    /// A runner's key: `signals:run` and `signals:read`.
    runner_key: String,
    group: AccountGroupId,
    queued: ScanId,
    running: ScanId,
    completed: ScanId,
    /// A second queued scan no printed command touches: the one to cancel from `/docs`.
    for_docs: ScanId,
}

/// Seeds the demo data, or returns `None` (adding nothing) when the database already holds data.
pub(super) async fn seed(
    keys: &KeyAdmin,
    scans: &ScanService,
) -> Result<Option<Demo>, ServiceError> {
    if !scans.is_fresh_install().await? {
        return Ok(None);
    }
    let group = AccountGroupId::parse("507f1f77bcf86cd799439011").expect("a valid id");
    // No permissions given: read and write.
    let spec = KeySpec::new("demo", &[], AccountGroupAccess::Only(vec![group]), None)
        .expect("a valid key spec");
    let (_, new_key) = keys.create(&spec).await?;
    let runner_spec = KeySpec::new(
        "demo runner",
        &[Permission::SignalsRun, Permission::SignalsRead],
        AccountGroupAccess::Only(vec![group]),
        None,
    )
    .expect("a valid key spec");
    let (_, runner_key) = keys.create(&runner_spec).await?;
    let mut created = Vec::new();
    for status in ScanStatus::ALL {
        created.push(scans.seed_scan(&group, status).await?);
    }
    let for_docs = scans.seed_scan(&group, ScanStatus::Queued).await?.id;
    let id_of = |status| {
        created
            .iter()
            .find(|scan| scan.status == status)
            .map(|scan| scan.id)
            .expect("one scan per status")
    };
    Ok(Some(Demo {
        key: new_key.secret,
        runner_key: runner_key.secret,
        queued: id_of(ScanStatus::Queued),
        running: id_of(ScanStatus::Running),
        completed: id_of(ScanStatus::Completed),
        for_docs,
        group,
    }))
}

/// The flags of every printed curl command: no progress meter, and the status on a line of its own after
/// the body (`HTTP 200`).
const CURL: &str = "-s -w '\\nHTTP %{http_code}\\n'";

impl Demo {
    /// The curl commands, one per outcome, against the server at `addr`, then how to cancel a scan
    /// from the API reference.
    pub(super) fn instructions(&self, addr: SocketAddr) -> String {
        let url = |group: &str, scan: &str| {
            format!("http://{addr}/v1/accounts/{group}/signals/scans/{scan}/cancel")
        };
        let auth = format!("-H 'Authorization: Bearer {}'", self.key);
        let group = self.group.as_str();
        let other_group = "aaaaaaaaaaaaaaaaaaaaaaaa";
        let unknown_scan = ScanId::parse("000000000000000000000000").expect("a valid id");
        let steps = [
            (
                "200: cancel a queued scan",
                format!(
                    "curl {CURL} -X POST {auth} {}",
                    url(group, self.queued.as_str())
                ),
            ),
            (
                "200 again: a repeated cancel answers the same cancelledAt, previousStatus cancelled",
                format!(
                    "curl {CURL} -X POST {auth} {}",
                    url(group, self.queued.as_str())
                ),
            ),
            (
                "401: no API key",
                format!("curl {CURL} -X POST {}", url(group, self.queued.as_str())),
            ),
            (
                "403: an account group this key may not reach",
                format!(
                    "curl {CURL} -X POST {auth} {}",
                    url(other_group, self.queued.as_str())
                ),
            ),
            (
                "404: no such scan in this account group",
                format!(
                    "curl {CURL} -X POST {auth} {}",
                    url(group, unknown_scan.as_str())
                ),
            ),
            (
                "422: a completed scan cannot be cancelled",
                format!(
                    "curl {CURL} -X POST {auth} {}",
                    url(group, self.completed.as_str())
                ),
            ),
            (
                "400: a malformed scan id",
                format!("curl {CURL} -X POST {auth} {}", url(group, "not-an-id")),
            ),
        ];
        let runner = format!("-H 'Authorization: Bearer {}'", self.runner_key);
        let scans = format!("http://{addr}/v1/accounts/{group}/signals/scans");
        let running = self.running.as_str();
        let runner_steps = [
            (
                "201: a client starts a scan (retry safely with the same Idempotency-Key)",
                format!("curl {CURL} -X POST {auth} -H 'Idempotency-Key: demo-1' {scans}"),
            ),
            (
                "200: the runner completes the running scan (its key has signals:run)",
                format!("curl {CURL} -X POST {runner} {scans}/{running}/complete"),
            ),
            (
                "422: completing it again is fine, failing it is not: currentStatus=completed",
                format!(
                    "curl {CURL} -X POST {runner} -H 'Content-Type: application/json' -d '{{\"reason\":\"too late\"}}' {scans}/{running}/fail"
                ),
            ),
            (
                "403: the client's key cannot forge a runner's move",
                format!("curl {CURL} -X POST {auth} {scans}/{running}/complete"),
            ),
        ];
        let mut text = format!(
            "\nDemo data created for account group {group}: a client's API key (signals:read,\n\
             signals:write) {key}, a runner's key (signals:run, signals:read) {runner_key},\n\
             one scan in each status and a second queued one. Try, in this order:\n",
            key = self.key,
            runner_key = self.runner_key,
        );
        for (what, command) in steps.into_iter().chain(runner_steps) {
            let _ = write!(text, "\n# {what}\n{command}\n");
        }
        let _ = write!(
            text,
            "\nOr cancel a scan from the API reference: open http://{addr}/docs/, choose Authorize,\n\
             paste the client's key under bearerAuth, then under \"Cancel a signal scan\" choose\n\
             Try it out, fill in\n  \
               accountGroupId  {group}\n  \
               scanId          {scan}   (queued; no command above touches it)\n\
             and choose Execute.\n\
             \nThe runner guide (docs/runners.md) names these; in another shell:\n\
             export SERVER=http://{addr} GROUP={group} CLIENT_KEY={key} RUNNER_KEY={runner_key}\n\
             \nCtrl-C stops the server.\n",
            scan = self.for_docs.as_str(),
            key = self.key,
            runner_key = self.runner_key,
        );
        text
    }
}
