//! `SecretUrl`: a URL that may carry a password, shown redacted everywhere but where it connects.

use std::fmt;
use std::str::FromStr;

/// A URL that may carry a password (the database's, Redis's). `Debug` and `Display` show it
/// redacted, so it can sit in any settings struct that is logged or printed; only
/// [`SecretUrl::expose`] gives the real one, to the one place that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(Self(url.to_owned()))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretUrl")
            .field(&redact_url(&self.0))
            .finish()
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// The URL with any password replaced, fit for logs and Debug output.
pub(crate) fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("redacted"));
            }
            // Query parameters may carry a password too (e.g. ?password=...).
            if url.query().is_some() {
                url.set_query(Some("redacted"));
            }
            url.to_string()
        }
        Err(_) => "[unparseable URL redacted]".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        let redacted =
            redact_url("postgres://app:hunter2@db:5432/scans?sslmode=require&password=x");
        assert!(!redacted.contains("hunter2"));
        assert!(!redacted.contains("password=x"));
        assert!(redacted.contains("db:5432/scans"));
        assert!(!redact_url("not a url hunter2").contains("hunter2"));
    }

    #[test]
    fn neither_debug_nor_display_of_a_secret_url_shows_its_password() {
        for (raw, kept) in [
            ("postgres://app:hunter2@db:5432/scans", "db:5432/scans"),
            ("redis://:hunter2@redis:6379/0", "redis:6379/0"),
            (
                "rediss://default:hunter2@cache.internal:6380",
                "cache.internal:6380",
            ),
        ] {
            let url: SecretUrl = raw.parse().unwrap();
            for shown in [format!("{url:?}"), format!("{url}"), format!("{url:#?}")] {
                assert!(!shown.contains("hunter2"), "{shown}");
                assert!(shown.contains(kept), "{shown}");
            }
            assert_eq!(url.expose(), raw);
        }
    }
}
