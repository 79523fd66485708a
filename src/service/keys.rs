//! `KeyAdmin`: an operator's management of API keys (create, list, revoke). There is no principal:
//! whoever runs these holds the database itself.

use uuid::Uuid;

use super::ServiceError;
use crate::domain::keys::{ApiKey, KeySpec, NewApiKey};
use crate::store::{KeyToCreate, Store};

/// Creates, lists and revokes API keys.
#[derive(Clone)]
pub struct KeyAdmin {
    store: Store,
}

impl KeyAdmin {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Stores a new key as `spec` says, and returns it with its secret. Only the secret's hash is
    /// stored: this answer is the one place the secret can be read.
    pub async fn create(&self, spec: &KeySpec) -> Result<(ApiKey, NewApiKey), ServiceError> {
        let new_key = NewApiKey::generate();
        let key = self
            .store
            .create_key(&KeyToCreate {
                name: spec.name().to_owned(),
                hash: new_key.hash,
                permissions: spec.permissions().to_vec(),
                access: spec.access().clone(),
                expires_in: spec.expires_in(),
            })
            .await?;
        Ok((key, new_key))
    }

    /// Every key, revoked and expired ones included (never their secrets).
    pub async fn list(&self) -> Result<Vec<ApiKey>, ServiceError> {
        Ok(self.store.list_keys().await?)
    }

    /// A key that authenticates now (neither revoked nor expired), if there is one.
    pub async fn active(&self) -> Result<Option<ApiKey>, ServiceError> {
        let now = self.store.clock().await?;
        let keys = self.list().await?;
        Ok(keys.into_iter().find(|key| key.authenticate(now).is_ok()))
    }

    /// Revokes a key; `None` when there is no such key. Revoking twice keeps the first time.
    /// Servers stop accepting the key once their key cache lets it go (at most a second).
    pub async fn revoke(&self, id: Uuid) -> Result<Option<ApiKey>, ServiceError> {
        Ok(self.store.revoke_key(id).await?)
    }
}
