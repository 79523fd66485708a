//! Extractors whose rejections are our envelope, and the raw paths they read.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, de};

use super::deadline::RequestDeadline;
use super::error::ApiError;
use crate::domain::ids::{AccountGroupId, InvalidId, ScanId};

/// `Path`, but its rejection is our envelope.
#[derive(FromRequestParts)]
#[from_request(via(Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub(crate) T);

/// The raw body, but its rejection (a body over the limit, a read that failed) is our envelope.
/// A body still arriving at the request's deadline is the client's fault, a 400, not the
/// deadline's 500 (which says the service stalled).
pub(crate) struct ApiBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let deadline = request.extensions().get::<RequestDeadline>().copied();
        let read = Bytes::from_request(request, state);
        let Some(deadline) = deadline else {
            return Ok(Self(read.await?));
        };
        match tokio::time::timeout_at(deadline.at, read).await {
            Ok(body) => Ok(Self(body?)),
            Err(_elapsed) => Err(ApiError::Validation(format!(
                "request body did not arrive within {} ms",
                deadline.limit.as_millis()
            ))),
        }
    }
}

/// The most of a client's text a 400 echoes back (a field name, say): the details stay small
/// whatever the body held.
const MAX_ECHO_CHARS: usize = 120;

/// `text`, or its first `MAX_ECHO_CHARS` characters ending in `…` when it is longer: a reader
/// sees it was cut, not a field name that ends mid-word.
fn bounded_echo(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        None => text.to_owned(),
        Some(_) => text.chars().take(MAX_ECHO_CHARS - 1).chain(['…']).collect(),
    }
}

impl ApiBody {
    /// The body without the whitespace JSON allows around a value (space, tab, line feed,
    /// carriage return; not a form feed, which `trim_ascii` would also take).
    pub(crate) fn trimmed(&self) -> &[u8] {
        let json_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let start = self.0.iter().position(|b| !json_space(b));
        let end = self.0.iter().rposition(|b| !json_space(b));
        match (start, end) {
            (Some(start), Some(end)) => &self.0[start..=end],
            _ => &[],
        }
    }

    /// The body of a route whose fields are all optional: empty, or a JSON object holding only
    /// the fields `T` knows, each once. Anything else is a 400 that says what is wrong.
    pub(crate) fn optional_fields<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        if self.trimmed().is_empty() {
            return Ok(T::default());
        }
        self.object("request body must be empty or a JSON object")
    }

    /// The body as the JSON object `T`, holding only the fields it knows, each once; a body that
    /// is not one is a 400 saying it must be what `expected` says. Read straight into `T`, never
    /// through a `Value` (which kept the last of a repeated key).
    pub(crate) fn object<T: DeserializeOwned>(&self, expected: &str) -> Result<T, ApiError> {
        let body = self.trimmed();
        if !body.starts_with(b"{") {
            return Err(ApiError::Validation(expected.into()));
        }
        serde_json::from_slice(body).map_err(|error| {
            let said = bounded_echo(&error.to_string());
            ApiError::Validation(match error.classify() {
                // The object's fields: unknown, repeated, or of the wrong type.
                serde_json::error::Category::Data => format!("request body: {said}"),
                // Not JSON, or not whole (where it broke: line and column).
                _ => format!("{expected}: {said}"),
            })
        })
    }
}

/// The body of a route that takes no fields: empty or `{}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoFields {}

/// A path id parsed as the path is read, from the path's own text (no `String` per id per
/// request); a malformed one is kept as its error, so the handler names every malformed parameter.
pub(crate) struct PathId<T>(Result<T, InvalidId>);

impl<'de, T: FromStr<Err = InvalidId>> Deserialize<'de> for PathId<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Parse<T>(PhantomData<T>);

        impl<T: FromStr<Err = InvalidId>> de::Visitor<'_> for Parse<T> {
            type Value = PathId<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an identifier")
            }

            fn visit_str<E: de::Error>(self, raw: &str) -> Result<Self::Value, E> {
                Ok(PathId(raw.parse()))
            }
        }

        deserializer.deserialize_str(Parse(PhantomData))
    }
}

/// The path of a group route.
#[derive(Deserialize)]
pub(crate) struct GroupPath {
    #[serde(rename = "accountGroupId")]
    account_group_id: PathId<AccountGroupId>,
}

impl GroupPath {
    pub(crate) fn parse(self) -> Result<AccountGroupId, ApiError> {
        self.account_group_id
            .0
            .map_err(|e| ApiError::Validation(format!("accountGroupId {e}")))
    }
}

/// The path of a scan route, its ids parsed but not yet judged; documented as the ids it must
/// hold.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ScanPath {
    /// Account group ID that scopes the request: 24 hexadecimal characters, either case.
    #[serde(rename = "accountGroupId")]
    #[param(value_type = AccountGroupId, inline)]
    account_group_id: PathId<AccountGroupId>,
    /// Signal scan ID returned when the scan was started: 24 hexadecimal characters, either case.
    #[serde(rename = "scanId")]
    #[param(value_type = ScanId, inline)]
    scan_id: PathId<ScanId>,
}

impl ScanPath {
    /// Both ids, or an error naming every parameter that is malformed.
    pub(crate) fn parse(self) -> Result<(AccountGroupId, ScanId), ApiError> {
        match (self.account_group_id.0, self.scan_id.0) {
            (Ok(group), Ok(scan)) => Ok((group, scan)),
            (group, scan) => {
                let problems: Vec<String> = [
                    group.err().map(|e| format!("accountGroupId {e}")),
                    scan.err().map(|e| format!("scanId {e}")),
                ]
                .into_iter()
                .flatten()
                .collect();
                Err(ApiError::Validation(problems.join("; ")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Reason {
        reason: Option<String>,
    }

    fn body(text: &str) -> ApiBody {
        ApiBody(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn refusal(read: Result<Reason, ApiError>) -> String {
        match read {
            Err(ApiError::Validation(details)) => details,
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn only_the_white_space_json_allows_is_trimmed_around_a_body() {
        assert_eq!(body(" \t\r\n{} \n").trimmed(), b"{}");
        assert_eq!(body("x").trimmed(), b"x");
        assert_eq!(body(" \n ").trimmed(), b"");
        assert_eq!(body("").trimmed(), b"");
        // A form feed is not JSON's white space: it stays, and the body is refused as not JSON.
        assert_eq!(body("\x0c{}").trimmed(), b"\x0c{}");
    }

    #[test]
    fn an_optional_body_is_nothing_or_an_object_of_known_fields_each_once() {
        let read = |text: &str| body(text).optional_fields::<Reason>();
        let gone = Reason {
            reason: Some("gone".into()),
        };
        let not_an_object = "request body must be empty or a JSON object";

        assert_eq!(read(" \n").unwrap(), Reason::default());
        assert_eq!(read("{}").unwrap(), Reason::default());
        assert_eq!(read(" {\"reason\": \"gone\"} ").unwrap(), gone);
        assert_eq!(refusal(read("null")), not_an_object);
        assert_eq!(refusal(read("[]")), not_an_object);
        // The object's own faults are its fields'; a body that is not whole JSON says where.
        let unknown = refusal(read(r#"{"status": "running"}"#));
        assert!(
            unknown.starts_with("request body: unknown field `status`"),
            "{unknown}"
        );
        let twice = refusal(read(r#"{"reason": "a", "reason": "b"}"#));
        assert!(
            twice.starts_with("request body: duplicate field `reason`"),
            "{twice}"
        );
        let broken = refusal(read(r#"{"reason": "#));
        assert!(
            broken.starts_with(&format!("{not_an_object}: EOF")),
            "{broken}"
        );
    }

    #[test]
    fn a_refusal_echoes_a_bounded_part_of_what_the_client_sent() {
        let long = format!(r#"{{"{}": 1}}"#, "x".repeat(1000));
        let said = refusal(body(&long).optional_fields());
        assert!(
            said.starts_with("request body: unknown field `xxx"),
            "{said}"
        );
        assert_eq!(
            said.chars().count(),
            "request body: ".len() + MAX_ECHO_CHARS
        );
        assert!(said.ends_with('…'), "a cut is shown: {said}");
        let short = r#"{"y": 1}"#;
        assert!(!refusal(body(short).optional_fields()).contains('…'));
    }
}
