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
///
/// Read as text rather than by a URL parser: a password written without percent-encoding may hold
/// `/`, `?` or `#`, which a parser takes for the start of the path, query or fragment, leaving no
/// password to replace (`postgres://app:/9xQ+k==@db/x` has the path `/9xQ+k==@db/x`). What comes
/// before the last `@` is the user and password, of which only a user without `/` is shown. Query
/// parameters may carry a password too (`?password=…`): the query and any fragment are replaced
/// whole.
pub(crate) fn redact_url(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once(':').filter(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    }) else {
        return "[unparseable URL redacted]".into();
    };
    let (slashes, rest) = match rest.strip_prefix("//") {
        Some(rest) => ("//", rest),
        None => ("", rest),
    };
    // A SQLite URL names a file and holds no password: sqlx reads all before the first `?` as
    // the file's name, `@` and `#` included, so all of it is shown (the file shown is the file
    // opened); its query is hidden as any other.
    if scheme == "sqlite" {
        return match rest.split_once('?') {
            Some((file, _)) => format!("{scheme}:{slashes}{file}?redacted"),
            None => format!("{scheme}:{slashes}{rest}"),
        };
    }
    let (user, place) = match rest.rsplit_once('@') {
        // A `?` or `#` before the `@`: either the password holds one, or the query or fragment
        // holds the `@` (`?password=a@b`). Which is unknowable, so nothing after the scheme shows.
        Some((userinfo, _)) if userinfo.contains(['?', '#']) => {
            return format!("{scheme}:{slashes}redacted");
        }
        Some((userinfo, place)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, _)) => (user, true),
                None => (userinfo, false),
            };
            let plain = !user.contains('/');
            let shown = match (plain, password) {
                (true, true) => format!("{user}:redacted@"),
                (true, false) => format!("{user}@"),
                (false, _) => "redacted@".to_owned(),
            };
            (shown, place)
        }
        None => (String::new(), rest),
    };
    let (place, hidden) = match place.find(['?', '#']) {
        Some(end) => (&place[..end], "?redacted"),
        None => (place, ""),
    };
    format!("{scheme}:{slashes}{user}{place}{hidden}")
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
        // Text before the first `:` that is no scheme (empty, or with a space) is no URL: the
        // rest could be anything, a password written as a user included.
        for raw in ["://hunter2@db/scans", "my db:hunter2@db/scans"] {
            assert_eq!(redact_url(raw), "[unparseable URL redacted]", "{raw}");
        }
    }

    /// A password written without percent-encoding that holds `/`, `?` or `#` is read by a URL
    /// parser as the path, query or fragment: it was printed whole (configuration review).
    #[test]
    fn a_password_a_url_parser_would_misread_is_redacted_too() {
        for (raw, shown) in [
            (
                "postgres://app:/9xQ+Secr3t==@db.internal:5432/scans",
                "postgres://app:redacted@db.internal:5432/scans",
            ),
            (
                "postgres://app:#Secr3t@db.internal:5432/scans",
                "postgres://redacted",
            ),
            (
                "postgres://postgres:1234/Secr3t@127.0.0.1:5432/x",
                "postgres://postgres:redacted@127.0.0.1:5432/x",
            ),
            (
                "postgres://app:a?b@Secr3t@db:5432/x?sslmode=require",
                "postgres://redacted",
            ),
            (
                "postgres://db:5432/x?password=Sec@r3t",
                "postgres://redacted",
            ),
            (
                "redis://:Secr3t@redis:6379/0",
                "redis://:redacted@redis:6379/0",
            ),
            ("redis://redis:6379/0", "redis://redis:6379/0"),
            (
                "sqlite://data/signal-scans.db",
                "sqlite://data/signal-scans.db",
            ),
            ("sqlite:data.db?mode=rwc", "sqlite:data.db?redacted"),
            // `#` and `@` in a SQLite file's name are the name's (`data/run#2.db` was shown as
            // `data/run?redacted`, `data/a@b.db` as `redacted@b.db`).
            (
                "sqlite://data/run#2.db?mode=rwc",
                "sqlite://data/run#2.db?redacted",
            ),
            ("sqlite://data/a@b.db", "sqlite://data/a@b.db"),
        ] {
            assert_eq!(redact_url(raw), shown, "{raw}");
        }
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
