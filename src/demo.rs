//! `serve --demo`: seeds an empty database with a key and a scan in each status, and prints one
//! ready-to-paste curl command per documented outcome.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::keys::{AccountGroupAccess, KeySpec};
use crate::domain::scan::ScanStatus;
use crate::service::{KeyAdmin, ScanService, ServiceError};

/// What the demo created: enough to show every outcome.
pub struct Demo {
    key: String,
    group: AccountGroupId,
    queued: ScanId,
    completed: ScanId,
}

/// Seeds the demo data, or returns `None` (adding nothing) when the database already holds data.
pub async fn seed(keys: &KeyAdmin, scans: &ScanService) -> Result<Option<Demo>, ServiceError> {
    if !scans.is_fresh_install().await? {
        return Ok(None);
    }
    let group = AccountGroupId::parse("507f1f77bcf86cd799439011").expect("a valid id");
    // No permissions given: read and write.
    let spec = KeySpec::new("demo", &[], AccountGroupAccess::Only(vec![group]), None)
        .expect("a valid key spec");
    let (_, new_key) = keys.create(&spec).await?;
    let mut created = Vec::new();
    for status in ScanStatus::ALL {
        created.push(scans.seed_scan(&group, status).await?);
    }
    let id_of = |status| {
        created
            .iter()
            .find(|scan| scan.status == status)
            .map(|scan| scan.id)
            .expect("one scan per status")
    };
    Ok(Some(Demo {
        key: new_key.secret,
        queued: id_of(ScanStatus::Queued),
        completed: id_of(ScanStatus::Completed),
        group,
    }))
}

impl Demo {
    /// The curl commands, one per outcome, against the server at `addr`.
    pub fn instructions(&self, addr: SocketAddr) -> String {
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
                    "curl -s -X POST {auth} {}",
                    url(group, self.queued.as_str())
                ),
            ),
            (
                "200 again: a repeated cancel answers the same cancelledAt, previousStatus cancelled",
                format!(
                    "curl -s -X POST {auth} {}",
                    url(group, self.queued.as_str())
                ),
            ),
            (
                "401: no API key",
                format!("curl -s -X POST {}", url(group, self.queued.as_str())),
            ),
            (
                "403: an account group this key may not reach",
                format!(
                    "curl -s -X POST {auth} {}",
                    url(other_group, self.queued.as_str())
                ),
            ),
            (
                "404: no such scan in this account group",
                format!(
                    "curl -s -X POST {auth} {}",
                    url(group, unknown_scan.as_str())
                ),
            ),
            (
                "422: a completed scan cannot be cancelled",
                format!(
                    "curl -s -X POST {auth} {}",
                    url(group, self.completed.as_str())
                ),
            ),
            (
                "400: a malformed scan id",
                format!("curl -s -X POST {auth} {}", url(group, "not-an-id")),
            ),
        ];
        let mut text = format!(
            "\nDemo data created: API key (signals:read, signals:write) for account group {group},\n\
             and one scan in each status. Try, in this order:\n"
        );
        for (what, command) in steps {
            let _ = write!(text, "\n# {what}\n{command}\n");
        }
        text
    }
}
