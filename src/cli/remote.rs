//! The service's API as a command-line client (`--server`): what a runner host or a client runs
//! with only the service's URL and an API key (`config::api_key`, from `SIGNAL_SCANS_API_KEY`,
//! never a flag: a flag would show the key in `ps`). No database credentials.

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::scan::{IdempotencyKey, Scan, ScanStatus};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `--server`'s parser: [`server_url`], with a refusal that does not repeat the value (clap's own
/// does, and a URL may carry a password).
#[derive(Debug, Clone, Copy)]
pub(super) struct ServerUrlParser;

impl clap::builder::TypedValueParser for ServerUrlParser {
    type Value = url::Url;

    fn parse_ref(
        &self,
        command: &clap::Command,
        _: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<url::Url, clap::Error> {
        let refused = |reason: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for --server: {reason}\n"),
            )
            .with_cmd(command)
        };
        let text = value.to_str().ok_or_else(|| refused("not UTF-8".into()))?;
        server_url(text).map_err(refused)
    }
}

/// `--idempotency-key`: refused here, as the service would refuse the header (a newline could not
/// even be sent as one).
pub(super) fn idempotency_key(text: &str) -> Result<IdempotencyKey, String> {
    IdempotencyKey::parse(text).ok_or_else(|| "1 to 255 visible ASCII characters, no spaces".into())
}

/// `--server`: the service's URL, as the base the API's paths are joined to. A path is kept as a
/// prefix (`http://gateway/signals` serves `/signals/v1/…`): without a trailing `/`, joining
/// replaced its last segment.
pub(super) fn server_url(text: &str) -> Result<url::Url, String> {
    let mut url = url::Url::parse(text).map_err(|error| format!("not a URL: {error}"))?;
    // This build's HTTP client has no TLS: an https:// URL failed every call, and each failure
    // exited 75 ("try again later"), so a script retried a mistake for ever.
    if url.scheme() != "http" {
        return Err(format!(
            "an http:// URL, not {}: (the commands speak plain HTTP: run them beside the service, \
             or through a proxy that adds TLS)",
            url.scheme()
        ));
    }
    // The API key is the one credential sent: a user and password would go out as a second
    // Authorization header (in clear over http), which the service refuses as a 401.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "a URL without a user or password: the API key, from SIGNAL_SCANS_API_KEY, is \
            the only credential sent"
                .into(),
        );
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// How long a command waits for a connection, and for the whole answer. The answer's wait is above
/// the service's default request deadline (`REQUEST_TIMEOUT_MS`, 15 s), so that a slow answer
/// arrives as the service's 500 or 502 rather than as none; a service given a longer deadline may
/// still be working when the command gives up (exit 75: a move repeated answers where it stands).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The service gave no answer now, or asked to be asked later: no connection, no answer within
/// [`ANSWER_TIMEOUT`], an answer broken off, a 429 or a 5xx. Nothing says the request did not
/// commit (a 500 or a lost answer may follow one that did): a move repeated answers where the
/// scan is. The command exits [`TryLater::EXIT_CODE`], so that a script tells it from a refusal
/// (1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct TryLater(String);

impl TryLater {
    /// `EX_TEMPFAIL` of sysexits.h: "temporary failure; the user is invited to retry".
    pub(super) const EXIT_CODE: u8 = 75;

    fn asks_to_retry(status: reqwest::StatusCode) -> bool {
        status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
    }
}

/// What a command asked the service, and how it answered.
pub(super) enum Answer {
    /// 2xx: the envelope's `data`.
    Done(Value),
    /// 422: the scan's status does not allow it (`currentStatus`).
    Refused { current: ScanStatus },
}

/// `POST path` on `server` with the key and an optional JSON body; the answer's `data`, a refusal
/// by the state machine, or an error naming the status and the service's words.
pub(super) async fn post(
    server: &url::Url,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> anyhow::Result<Answer> {
    ask(reqwest::Method::POST, server, path, key, body, None).await
}

/// `POST …/scans` on `server`: a scan of `group` created, or, with an `Idempotency-Key` the key
/// used before for `group`, the scan that first request created.
pub(super) async fn create(
    server: &url::Url,
    group: &AccountGroupId,
    key: &str,
    idempotency_key: Option<&str>,
) -> anyhow::Result<Answer> {
    let once = idempotency_key.map(|once| ("idempotency-key", once));
    ask(
        reqwest::Method::POST,
        server,
        &scans_path(group),
        key,
        None,
        once,
    )
    .await
}

/// A scan of `group` as `GET …/scans/{scanId}` shows it.
pub(super) async fn scan(
    server: &url::Url,
    group: &AccountGroupId,
    scan: &ScanId,
    key: &str,
) -> anyhow::Result<Scan> {
    let path = format!("{}/{scan}", scans_path(group));
    let Answer::Done(data) = ask(reqwest::Method::GET, server, &path, key, None, None).await?
    else {
        bail!("{server} refused to show scan {scan}");
    };
    let text = |name: &str| {
        data[name]
            .as_str()
            .with_context(|| format!("the scan has no {name}: {data}"))
    };
    let at = |name: &str| -> anyhow::Result<Option<OffsetDateTime>> {
        match &data[name] {
            Value::Null => Ok(None),
            _ => Ok(Some(OffsetDateTime::parse(text(name)?, &Rfc3339)?)),
        }
    };
    Ok(Scan {
        id: ScanId::parse(text("scanId")?)?,
        account_group_id: *group,
        status: text("status")?.parse()?,
        created_at: at("createdAt")?.context("the scan has no createdAt")?,
        updated_at: at("updatedAt")?.context("the scan has no updatedAt")?,
        started_at: at("startedAt")?,
        finished_at: at("finishedAt")?,
        cancelled_at: at("cancelledAt")?,
    })
}

async fn ask(
    method: reqwest::Method,
    server: &url::Url,
    path: &str,
    key: &str,
    body: Option<Value>,
    header: Option<(&str, &str)>,
) -> anyhow::Result<Answer> {
    let url = server
        .join(path.trim_start_matches('/'))
        .with_context(|| format!("--server {server}"))?;
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(ANSWER_TIMEOUT)
        .build()
        .context("cannot make an HTTP client")?;
    let mut request = client.request(method, url.clone()).bearer_auth(key);
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = match request.send().await {
        Ok(response) => response,
        // The request could not be made (a key holding a line break, from a file that ends in
        // CRLF): asking again cannot help.
        Err(error) if error.is_builder() => {
            return Err(error).with_context(|| format!("cannot ask {url}"));
        }
        Err(error) => return Err(error).with_context(|| TryLater(format!("cannot reach {url}"))),
    };
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| TryLater(format!("{url} answered {status}, then broke off")))?;
    let envelope = serde_json::from_str::<Value>(&text);
    if TryLater::asks_to_retry(status) {
        let said = match &envelope {
            Ok(envelope) => refusal(&url, status, envelope).to_string(),
            Err(_) => format!("{url} answered {status} without the JSON envelope"),
        };
        return Err(TryLater(said).into());
    }
    let envelope =
        envelope.with_context(|| format!("{url} answered {status} without the JSON envelope"))?;
    if status.is_success() {
        // A 2xx of something in the service's place (a proxy's, a captive portal's) is no answer.
        if envelope["success"] != Value::Bool(true) || !envelope["data"].is_object() {
            bail!("{url} answered {status} without the JSON envelope");
        }
        return Ok(Answer::Done(envelope["data"].clone()));
    }
    let details = envelope["error"]["details"].as_str().unwrap_or_default();
    if status.as_u16() == 422
        && let Some(current) = details.strip_prefix("currentStatus=")
    {
        return Ok(Answer::Refused {
            current: current.parse()?,
        });
    }
    Err(refusal(&url, status, &envelope))
}

/// A refusal in the service's own words: the status, the envelope's message and details, and
/// the trace id to look the request up by.
pub(super) fn refusal(
    url: &url::Url,
    status: reqwest::StatusCode,
    envelope: &Value,
) -> anyhow::Error {
    let message = envelope["error"]["message"].as_str().unwrap_or_default();
    let details = envelope["error"]["details"].as_str().unwrap_or_default();
    anyhow::anyhow!(
        "{url} answered {status}: {message}{}{details} (trace id {})",
        if details.is_empty() { "" } else { ": " },
        envelope["traceId"].as_str().unwrap_or("-")
    )
}

/// Where a client starts a scan of `group`.
pub(super) fn scans_path(group: &AccountGroupId) -> String {
    format!("/v1/accounts/{group}/signals/scans")
}

/// Where a runner moves a scan to `to` (running, completed or failed).
pub(super) fn move_path(
    group: &AccountGroupId,
    scan: &ScanId,
    to: ScanStatus,
) -> anyhow::Result<String> {
    let action = match to {
        ScanStatus::Running => "start",
        ScanStatus::Completed => "complete",
        ScanStatus::Failed => "fail",
        other => bail!("a runner cannot move a scan to {other}"),
    };
    Ok(format!(
        "/v1/accounts/{group}/signals/scans/{scan}/{action}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_url_keeps_its_path_as_the_prefix_of_the_apis_paths() {
        let join = |server: &str| {
            server_url(server)
                .unwrap()
                .join("v1/accounts")
                .unwrap()
                .to_string()
        };

        assert_eq!(
            join("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080/v1/accounts"
        );
        assert_eq!(
            join("http://gateway/signals"),
            "http://gateway/signals/v1/accounts"
        );
        assert_eq!(
            join("http://gateway/signals/"),
            "http://gateway/signals/v1/accounts"
        );
        assert!(server_url("ftp://gateway").unwrap_err().contains("http://"));
        assert!(
            server_url("https://gateway")
                .unwrap_err()
                .contains("plain HTTP")
        );
        assert!(server_url("gateway:8080").is_err());
    }

    #[test]
    fn a_server_url_carrying_a_user_or_password_is_refused() {
        for url in [
            "http://user:secret@127.0.0.1:8080",
            "http://user@gateway/signals",
            "http://:secret@gateway",
        ] {
            let refusal = server_url(url).unwrap_err();
            assert!(
                refusal.contains("without a user or password"),
                "{url}: {refusal}"
            );
        }
    }
}
