//! The service's API as a command-line client (`--server`): what a runner host or a client runs
//! with only the service's URL and an API key (`config::api_key`, from `SIGNAL_SCANS_API_KEY`,
//! never a flag: a flag would show the key in `ps`). No database credentials.

use anyhow::{Context as _, bail};
use axum::body::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::scan::ScanStatus;

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
    let url = server
        .join(path.trim_start_matches('/'))
        .with_context(|| format!("--server {server}"))?;
    let request = request(hyper::Method::POST, &url, key);
    let request = match body {
        Some(body) => request
            .header(CONTENT_TYPE, "application/json")
            .body(Full::from(body.to_string())),
        None => request.body(Full::default()),
    }
    .with_context(|| format!("--server {server}"))?;
    let response = client()
        .request(request)
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = text(response.into_body())
        .await
        .with_context(|| format!("{url} answered {status}, then broke off"))?;
    let envelope: Value = serde_json::from_str(&text)
        .with_context(|| format!("{url} answered {status} without the JSON envelope"))?;
    if status.is_success() {
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
    let message = envelope["error"]["message"].as_str().unwrap_or_default();
    bail!(
        "{url} answered {status}: {message}{}{details} (trace id {})",
        if details.is_empty() { "" } else { ": " },
        envelope["traceId"].as_str().unwrap_or("-")
    )
}

/// The command line's HTTP client: hyper's, HTTP/1.1, plain HTTP only (no TLS stack in the
/// binary), no timeout: as long as the server keeps the connection.
pub(super) type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(super) fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A request for `url` that carries the API key as its bearer token; the caller adds the body.
pub(super) fn request(
    method: hyper::Method,
    url: &url::Url,
    key: &str,
) -> hyper::http::request::Builder {
    hyper::Request::builder()
        .method(method)
        .uri(url.as_str())
        .header(AUTHORIZATION, format!("Bearer {key}"))
}

/// A whole answer's body as text (bytes that are not UTF-8 shown as U+FFFD).
pub(super) async fn text(body: hyper::body::Incoming) -> Result<String, hyper::Error> {
    let bytes = body.collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
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
