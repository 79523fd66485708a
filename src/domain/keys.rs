//! API keys: how they look, how they are stored (only as a SHA-256 hash) and what they allow.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use super::ids::AccountGroupId;

/// Every key starts with this, so a leaked one is recognisable by secret scanners.
const KEY_PREFIX: &str = "ssk_";
const KEY_RANDOM_BYTES: usize = 32;
const KEY_LEN: usize = KEY_PREFIX.len() + KEY_RANDOM_BYTES * 2;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    SignalsRead,
    SignalsWrite,
    /// A runner's: start, complete or fail a scan, and nothing else (a client holding
    /// `signals:write` must not be able to forge a completion).
    SignalsRun,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::SignalsRead => "signals:read",
            Permission::SignalsWrite => "signals:write",
            Permission::SignalsRun => "signals:run",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown permission {0:?} (expected signals:read, signals:write or signals:run)")]
pub struct UnknownPermission(pub String);

impl FromStr for Permission {
    type Err = UnknownPermission;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "signals:read" => Ok(Permission::SignalsRead),
            "signals:write" => Ok(Permission::SignalsWrite),
            "signals:run" => Ok(Permission::SignalsRun),
            other => Err(UnknownPermission(other.to_owned())),
        }
    }
}

/// Which account groups a key reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountGroupAccess {
    All,
    Only(Vec<AccountGroupId>),
}

impl AccountGroupAccess {
    pub fn allows(&self, group: &AccountGroupId) -> bool {
        match self {
            AccountGroupAccess::All => true,
            AccountGroupAccess::Only(groups) => groups.contains(group),
        }
    }
}

/// The longest key name, in characters, as the schema counts them (`length(name)`).
const MAX_NAME_CHARS: usize = 200;

/// What a new key is to be: checked once, so whoever holds a `KeySpec` holds a valid one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    name: String,
    permissions: Vec<Permission>,
    access: AccountGroupAccess,
    expires_in: Option<time::Duration>,
}

/// Why a key cannot be created as asked (the command line words these in its own flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeySpecError {
    #[error("a key's name must be 1 to 200 characters, none of them a control character")]
    Name,
    #[error("a key must reach at least one account group, or all of them")]
    NoAccountGroup,
}

impl KeySpec {
    /// The name is trimmed; no permissions means read and write; `access` must reach at least one
    /// group; the key expires `expires_in` after it is created, or never.
    pub fn new(
        name: &str,
        permissions: &[Permission],
        access: AccountGroupAccess,
        expires_in: Option<time::Duration>,
    ) -> Result<Self, KeySpecError> {
        let name = name.trim();
        // A control character (a newline, an escape) would break the lines `keys list` prints.
        if name.is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(KeySpecError::Name);
        }
        if access == AccountGroupAccess::Only(Vec::new()) {
            return Err(KeySpecError::NoAccountGroup);
        }
        // A group named twice is one group: kept once, in the order given.
        let access = match access {
            AccountGroupAccess::Only(groups) => {
                let mut once = Vec::with_capacity(groups.len());
                for group in groups {
                    if !once.contains(&group) {
                        once.push(group);
                    }
                }
                AccountGroupAccess::Only(once)
            }
            all => all,
        };
        let mut permissions = match permissions.is_empty() {
            true => vec![Permission::SignalsRead, Permission::SignalsWrite],
            false => permissions.to_vec(),
        };
        permissions.sort();
        permissions.dedup();
        Ok(Self {
            name: name.to_owned(),
            permissions,
            access,
            expires_in,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sorted, without repeats.
    pub fn permissions(&self) -> &[Permission] {
        &self.permissions
    }

    pub fn access(&self) -> &AccountGroupAccess {
        &self.access
    }

    /// How long after its creation the key expires; `None`: never.
    pub fn expires_in(&self) -> Option<time::Duration> {
        self.expires_in
    }
}

/// A freshly generated key: the secret exists only here and in the one answer that shows it.
pub struct NewApiKey {
    pub secret: String,
    pub hash: KeyHash,
}

impl NewApiKey {
    pub fn generate() -> Self {
        let secret = format!(
            "{KEY_PREFIX}{}",
            hex::encode(rand::random::<[u8; KEY_RANDOM_BYTES]>())
        );
        let hash = KeyHash::of(&secret);
        Self { secret, hash }
    }
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewApiKey")
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// SHA-256 of a key: what the database holds and what a presented key is looked up by.
///
/// A key carries 256 random bits, so a fast unsalted hash is enough; looking up by hash also
/// means the time to reject a key does not depend on how much of it matches a real one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

/// Whether a presented string can be one of our keys at all; anything else is refused without a
/// database round trip.
pub(crate) fn looks_like_key(presented: &str) -> bool {
    presented.len() == KEY_LEN
        && presented.starts_with(KEY_PREFIX)
        && presented[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A key as stored, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub permissions: Vec<Permission>,
    pub access: AccountGroupAccess,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

/// Why a stored key does not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejected {
    #[error("API key has been revoked")]
    Revoked,
    #[error("API key has expired")]
    Expired,
}

impl ApiKey {
    /// The principal this key authenticates as at `now`, or why it does not.
    pub fn authenticate(&self, now: OffsetDateTime) -> Result<Principal, KeyRejected> {
        if self.revoked_at.is_some() {
            return Err(KeyRejected::Revoked);
        }
        if self.expires_at.is_some_and(|expires_at| expires_at <= now) {
            return Err(KeyRejected::Expired);
        }
        Ok(Principal {
            key_id: self.id,
            permissions: self.permissions.clone(),
            access: self.access.clone(),
        })
    }
}

/// Who is calling: an authenticated, current API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: Uuid,
    pub permissions: Vec<Permission>,
    pub access: AccountGroupAccess,
}

impl Principal {
    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    pub(crate) fn can_access(&self, group: &AccountGroupId) -> bool {
        self.access.allows(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn key(expires_at: Option<OffsetDateTime>, revoked_at: Option<OffsetDateTime>) -> ApiKey {
        ApiKey {
            id: Uuid::new_v4(),
            name: "test".into(),
            permissions: vec![Permission::SignalsWrite],
            access: AccountGroupAccess::All,
            created_at: OffsetDateTime::now_utc(),
            expires_at,
            revoked_at,
        }
    }

    #[test]
    fn generated_keys_have_the_prefix_and_256_random_bits() {
        let a = NewApiKey::generate();
        let b = NewApiKey::generate();
        assert!(looks_like_key(&a.secret));
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.hash, KeyHash::of(&a.secret));
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn debug_output_names_the_value_and_hides_the_secret() {
        let key = NewApiKey::generate();
        assert_eq!(format!("{key:?}"), r#"NewApiKey { secret: "[redacted]" }"#);
        assert_eq!(format!("{:?}", key.hash), "KeyHash(..)");
    }

    #[test]
    fn permissions_are_written_and_read_by_their_documented_names() {
        for (permission, name) in [
            (Permission::SignalsRead, "signals:read"),
            (Permission::SignalsWrite, "signals:write"),
            (Permission::SignalsRun, "signals:run"),
        ] {
            assert_eq!(permission.as_str(), name);
            assert_eq!(name.parse::<Permission>(), Ok(permission));
        }
        assert_eq!(
            "signals:admin".parse::<Permission>(),
            Err(UnknownPermission("signals:admin".into()))
        );
    }

    #[test]
    fn strings_that_cannot_be_keys_are_recognised() {
        let good = NewApiKey::generate().secret;
        assert!(!looks_like_key(""));
        assert!(!looks_like_key(&good[..good.len() - 1]));
        assert!(!looks_like_key(&good.to_uppercase()));
        assert!(!looks_like_key(&good.replacen("ssk_", "sk__", 1)));
    }

    #[test]
    fn revoked_and_expired_keys_do_not_authenticate() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            key(None, Some(now)).authenticate(now),
            Err(KeyRejected::Revoked)
        );
        assert_eq!(
            key(Some(now - Duration::seconds(1)), None).authenticate(now),
            Err(KeyRejected::Expired)
        );
        assert!(
            key(Some(now + Duration::hours(1)), None)
                .authenticate(now)
                .is_ok()
        );
    }

    /// A spec for every group that never expires.
    fn spec(name: &str, permissions: &[Permission]) -> Result<KeySpec, KeySpecError> {
        KeySpec::new(name, permissions, AccountGroupAccess::All, None)
    }

    #[test]
    fn a_key_spec_trims_its_name_and_defaults_to_read_and_write() {
        let spec = spec("  ci  ", &[]).unwrap();
        assert_eq!(spec.name(), "ci");
        let both = [Permission::SignalsRead, Permission::SignalsWrite];
        assert_eq!(spec.permissions(), both);
        assert_eq!(spec.access(), &AccountGroupAccess::All);
        assert_eq!(spec.expires_in(), None);
    }

    #[test]
    fn a_key_spec_sorts_and_deduplicates_its_permissions() {
        let (read, write) = (Permission::SignalsRead, Permission::SignalsWrite);
        let given = spec("ci", &[write, read, write]).unwrap();
        assert_eq!(given.permissions(), [read, write]);
        assert_eq!(spec("ci", &[write]).unwrap().permissions(), [write]);
    }

    #[test]
    fn a_key_spec_needs_a_name_of_1_to_200_characters_without_control_characters() {
        assert_eq!(spec("", &[]), Err(KeySpecError::Name));
        assert_eq!(spec("   ", &[]), Err(KeySpecError::Name));
        assert!(spec(&"n".repeat(200), &[]).is_ok());
        assert_eq!(spec(&"n".repeat(201), &[]), Err(KeySpecError::Name));
        // Characters, as the schema counts them: 200 two-byte characters are a name.
        assert!(spec(&"é".repeat(200), &[]).is_ok());
        assert_eq!(spec(&"é".repeat(201), &[]), Err(KeySpecError::Name));
        assert_eq!(spec("ci\nops", &[]), Err(KeySpecError::Name));
        assert_eq!(spec("ci\u{1b}[2J", &[]), Err(KeySpecError::Name));
    }

    #[test]
    fn a_key_spec_keeps_each_group_once_in_the_order_given() {
        let (a, b) = (AccountGroupId::generate(), AccountGroupId::generate());
        let access = AccountGroupAccess::Only(vec![b, a, b, a]);
        let spec = KeySpec::new("ci", &[], access, None).unwrap();
        assert_eq!(spec.access(), &AccountGroupAccess::Only(vec![b, a]));
    }

    #[test]
    fn a_key_spec_reaches_all_groups_or_a_non_empty_list() {
        let only = AccountGroupAccess::Only(vec![AccountGroupId::generate()]);
        let spec = KeySpec::new("ci", &[], only.clone(), None).unwrap();
        assert_eq!(spec.access(), &only);
        assert_eq!(
            KeySpec::new("ci", &[], AccountGroupAccess::Only(vec![]), None),
            Err(KeySpecError::NoAccountGroup)
        );
    }

    #[test]
    fn access_is_all_groups_or_a_list() {
        let a = AccountGroupId::generate();
        let b = AccountGroupId::generate();
        assert!(AccountGroupAccess::All.allows(&a));
        let only = AccountGroupAccess::Only(vec![a]);
        assert!(only.allows(&a));
        assert!(!only.allows(&b));
    }
}
