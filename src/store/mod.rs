//! Everything that knows SQL. The rest of the service talks to [`Store`] and never to a driver.

mod postgres;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use uuid::Uuid;

pub use postgres::PgStore;

use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::keys::{AccountGroupAccess, ApiKey, KeyHash, Permission};
use crate::domain::scan::{Scan, ScanEvent, ScanStatus};
use crate::domain::service::Actor;

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable, too slow, or out of connections: the request may succeed later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with something we did not expect.
    #[error("database error: {0}")]
    Internal(String),
    /// A stored row breaks an invariant of the domain.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The database URL or settings are not usable.
    #[error("{0}")]
    Config(String),
}

/// What a guarded status change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The scan moved from `previous` to the requested status; `scan` is its new state.
    Applied {
        previous: ScanStatus,
        scan: Scan,
    },
    /// The scan's current status does not allow the change; `scan` is its current state.
    Refused {
        scan: Scan,
    },
    NotFound,
}

/// A key to be stored.
#[derive(Debug, Clone)]
pub struct KeyToCreate {
    pub name: String,
    pub hash: KeyHash,
    pub permissions: Vec<Permission>,
    pub access: AccountGroupAccess,
    pub expires_at: Option<OffsetDateTime>,
}

/// How to reach the database.
#[derive(Clone)]
pub struct StoreOptions {
    pub url: SecretString,
    /// Every database call answers within this, or fails as [`StoreError::Unavailable`].
    pub timeout: Duration,
    pub max_connections: u32,
}

/// The store interface: one variant per supported database, chosen by the URL's scheme.
#[derive(Clone)]
pub enum Store {
    Postgres(PgStore),
}

impl Store {
    /// Connects lazily: a database that is down at start-up makes requests answer 502 until it
    /// comes back, rather than keeping the process from starting.
    pub fn connect(options: &StoreOptions) -> Result<Store, StoreError> {
        let url = options.url.expose_secret();
        match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("postgres" | "postgresql") => Ok(Store::Postgres(PgStore::connect(options)?)),
            _ => Err(StoreError::Config(
                "DATABASE_URL must start with postgres://".into(),
            )),
        }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(store) => store.migrate().await,
        }
    }

    /// Succeeds when the database answers within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(store) => store.ping().await,
        }
    }

    pub async fn find_key(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError> {
        match self {
            Store::Postgres(store) => store.find_key(hash).await,
        }
    }

    pub async fn create_key(&self, key: &KeyToCreate) -> Result<ApiKey, StoreError> {
        match self {
            Store::Postgres(store) => store.create_key(key).await,
        }
    }

    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        match self {
            Store::Postgres(store) => store.list_keys().await,
        }
    }

    /// Revokes a key; `None` when there is no such key. Revoking twice keeps the first time.
    pub async fn revoke_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        match self {
            Store::Postgres(store) => store.revoke_key(id).await,
        }
    }

    /// Creates a scan directly in `status` (seeding and operations), with its audit row.
    pub async fn create_scan(
        &self,
        group: &AccountGroupId,
        status: ScanStatus,
    ) -> Result<Scan, StoreError> {
        match self {
            Store::Postgres(store) => store.create_scan(group, status).await,
        }
    }

    /// A scan by id; `group`, when given, must own it.
    pub async fn find_scan(
        &self,
        group: Option<&AccountGroupId>,
        scan: &ScanId,
    ) -> Result<Option<Scan>, StoreError> {
        match self {
            Store::Postgres(store) => store.find_scan(group, scan).await,
        }
    }

    /// A scan's audit trail, oldest first.
    pub async fn scan_events(&self, scan: &ScanId) -> Result<Vec<ScanEvent>, StoreError> {
        match self {
            Store::Postgres(store) => store.scan_events(scan).await,
        }
    }

    /// Moves a scan to `to` if and only if its current status allows it, in one guarded statement
    /// that also writes the audit row. `group`, when given, must own the scan.
    pub async fn transition(
        &self,
        group: Option<&AccountGroupId>,
        scan: &ScanId,
        to: ScanStatus,
        actor: Actor<'_>,
    ) -> Result<Transition, StoreError> {
        match self {
            Store::Postgres(store) => store.transition(group, scan, to, actor).await,
        }
    }
}
