//! `DATABASE_URL` read into sqlx's connection options without its secrets reaching the logs.
//!
//! sqlx's parser warns of every query parameter it does not know with the parameter's value
//! (`ignoring unrecognized connect parameter key=sslpassword value=…`): libpq's `sslpassword`,
//! or a misspelt `password`, would put a secret in the log. The parse runs under a subscriber of
//! its own, on this thread only, and each of its warnings is logged again with the parameter's
//! name (when it is one of libpq's) and never its value.

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

use super::StoreError;

/// Which part of a URL sqlx refused, never with the URL's text (sqlx's own message may quote a
/// value, which a password holding an unencoded `?` or `&` could reach).
fn what_is_wrong(error: &sqlx::Error) -> String {
    let sqlx::Error::Configuration(cause) = error else {
        return "sqlx could not read it".into();
    };
    if let Some(syntax) = cause.downcast_ref::<url::ParseError>() {
        // The URL's own syntax: `invalid port number`, `empty host`, never the text.
        syntax.to_string()
    } else if cause.is::<std::str::Utf8Error>() {
        "its user, password, database name or socket path is not UTF-8 once percent-decoded".into()
    } else if cause.is::<std::num::ParseIntError>() {
        "its port (or statement-cache-capacity) parameter is not a number in range".into()
    } else if cause.is::<std::net::AddrParseError>() {
        "its hostaddr parameter is not an IP address".into()
    } else if cause.is::<sqlx::Error>() {
        // sqlx's own refusal of a value: in 0.9 only `sslmode`'s.
        "its sslmode is none of disable, allow, prefer, require, verify-ca and verify-full".into()
    } else {
        "sqlx could not read it".into()
    }
}

/// The options of a `postgres://` URL. What the parse warned of is logged again, naming a
/// parameter only when its name is one of libpq's: any other "name" may be the tail of a password
/// holding an unencoded `&`.
pub(super) fn parse(url: &str) -> Result<PgConnectOptions, StoreError> {
    let warnings = Warnings::default();
    let heard = Arc::clone(&warnings.0);
    let parsed = tracing::subscriber::with_default(warnings, || PgConnectOptions::from_str(url));
    // The scoped subscriber had its say in the interest of every callsite it saw; asked again
    // without it, those callsites cost what the global filter says, as before.
    tracing::callsite::rebuild_interest_cache();
    for Warning { message, key, path } in heard
        .lock()
        .map(|mut w| std::mem::take(&mut *w))
        .unwrap_or_default()
    {
        let key = key.map(|key| match LIBPQ_KEYWORDS.contains(&key.as_str()) {
            true => key,
            false => "(not a libpq parameter; its name is not shown)".to_owned(),
        });
        tracing::warn!(key, path, "DATABASE_URL: {message}");
    }
    let options = parsed.map_err(|error| {
        StoreError::Setting(format!(
            "DATABASE_URL is not a valid PostgreSQL URL: {}",
            what_is_wrong(&error)
        ))
    })?;
    // No connection could be made: a setting to change, not a database to wait for (sqlx's TLS
    // error reads as an unavailable database, which commands exit 75 for and scripts retry).
    if matches!(
        options.get_ssl_mode(),
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    ) {
        return Err(StoreError::Setting(
            "DATABASE_URL (or PGSSLMODE) asks for TLS (sslmode=require, verify-ca or \
             verify-full), which this binary is built without: reach the database over a private \
             network or a TLS tunnel, with sslmode=disable or prefer"
                .into(),
        ));
    }
    Ok(options)
}

/// libpq's connection parameters (PostgreSQL 17's list), which sqlx may not all honour: a name an
/// operator can be shown.
const LIBPQ_KEYWORDS: &[&str] = &[
    "application_name",
    "channel_binding",
    "client_encoding",
    "connect_timeout",
    "dbname",
    "fallback_application_name",
    "gssdelegation",
    "gssencmode",
    "gsslib",
    "host",
    "hostaddr",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "krbsrvname",
    "load_balance_hosts",
    "options",
    "passfile",
    "password",
    "port",
    "replication",
    "require_auth",
    "requirepeer",
    "requiressl",
    "service",
    "sslcert",
    "sslcertmode",
    "sslcompression",
    "sslcrl",
    "sslcrldir",
    "sslkey",
    "sslkeylogfile",
    "sslmode",
    "sslnegotiation",
    "sslpassword",
    "sslrootcert",
    "sslsni",
    "ssl_max_protocol_version",
    "ssl_min_protocol_version",
    "target_session_attrs",
    "tcp_user_timeout",
    "user",
];

/// One event of the parse: its message, the parameter and the file (a `.pgpass`) it names,
/// nothing else.
#[derive(Debug, Clone, Default)]
struct Warning {
    message: String,
    key: Option<String>,
    path: Option<String>,
}

impl Warning {
    fn keep(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            "key" => self.key = Some(value),
            "path" => self.path = Some(value),
            _ => {}
        }
    }
}

impl Visit for Warning {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.keep(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.keep(field, format!("{value:?}"));
    }
}

/// A subscriber that keeps each event's message and `key`, and no span.
#[derive(Default)]
struct Warnings(Arc<Mutex<Vec<Warning>>>);

/// Warnings and errors only. Said in the interest and the hint too: a subscriber, while it
/// exists, has a say in every callsite's interest and in the level every event is first compared
/// with, and a wider one would leave debug events costing a filter's check after it is gone.
impl Subscriber for Warnings {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        match self.enabled(metadata) {
            true => Interest::always(),
            false => Interest::never(),
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::WARN)
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && *metadata.level() <= tracing::Level::WARN
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut warning = Warning::default();
        event.record(&mut warning);
        if let Ok(mut heard) = self.0.lock() {
            heard.push(warning);
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
