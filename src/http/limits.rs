//! Bounds on what a request may carry, checked before any work: an over-long target, oversized
//! headers or a body announced larger than we accept get a 400 envelope naming the limit, as does
//! a request without exactly one valid `Host` where HTTP requires it. (hyper's own, larger buffer
//! limit stays as the backstop for what never parses.)

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, HOST};
use axum::http::uri::Authority;
use axum::http::{Request, Version};
use axum::response::{IntoResponse, Response};
use tower_http::validate_request::ValidateRequest;

use super::error::ApiError;

/// Longest request target (path and query) accepted.
pub(crate) const MAX_TARGET_BYTES: usize = 2048;
/// The change stream's longer limit: its query may name up to 100 scans (`scanId=<24 hex>&`, 32
/// bytes each), which a runner following its own scans needs.
pub(crate) const MAX_STREAM_TARGET_BYTES: usize = 4096;
const STREAM_PATH_SUFFIX: &str = "/signals/scans/changes";
/// Most header bytes (names and values) accepted.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest body accepted: announced with Content-Length, it is refused before any work; sent in
/// chunks, when it outgrows this while read. The few routes that read a body read a small JSON
/// object.
pub(crate) const MAX_BODY_BYTES: u64 = 64 * 1024;
/// [`MAX_BODY_BYTES`] as a length.
pub(crate) const MAX_BODY_LEN: usize = MAX_BODY_BYTES as usize;

/// Answers a request over a limit with the 400 envelope before any other work, as tower-http's
/// `ValidateRequestHeaderLayer::custom` (it runs on every request, and its future is not boxed).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EnforceLimits;

impl<B> ValidateRequest<B> for EnforceLimits {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response> {
        match violation(request) {
            Some(details) => Err(ApiError::Validation(details).into_response()),
            None => Ok(()),
        }
    }
}

fn violation<B>(request: &Request<B>) -> Option<String> {
    if let Some(details) = host_violation(request) {
        return Some(details.to_owned());
    }
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    let limit = match request.uri().path().ends_with(STREAM_PATH_SUFFIX) {
        true => MAX_STREAM_TARGET_BYTES,
        false => MAX_TARGET_BYTES,
    };
    if target > limit {
        return Some(target_too_long(target, limit));
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Some(headers_too_large(header_bytes));
    }
    let announced = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match announced {
        Some(length) if length > MAX_BODY_BYTES => Some(body_too_large(length)),
        _ => None,
    }
}

/// HTTP's rule for `Host` (RFC 9112, section 3.2: a server must answer 400): an HTTP/1.1 request
/// has exactly one, and on any version one that is sent holds a host and an optional port. A
/// request target that names its host (HTTP/2's `:authority`, HTTP/1's absolute form) is held to
/// the same form, and on HTTP/2 a `Host` beside it must name the same (RFC 9113, section 8.3.1;
/// HTTP/1 ignores `Host` then). hyper checks none of it; the service never reads either, but a
/// proxy or cache in front that keys on them could be led to take one request for another.
/// (An HTTP/1.0 request may have no `Host`.)
fn host_violation<B>(request: &Request<B>) -> Option<&'static str> {
    let authority = request.uri().authority().map(Authority::as_str);
    if authority.is_some_and(|authority| !is_host_and_port(authority.as_bytes())) {
        return Some(AUTHORITY_INVALID);
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if request.version() == Version::HTTP_11 => Some(HOST_MISSING),
        (None, _) => None,
        (Some(_), Some(_)) => Some(HOST_REPEATED),
        (Some(host), None) if !is_host_and_port(host.as_bytes()) => Some(HOST_INVALID),
        (Some(host), None) => match authority {
            Some(authority)
                if request.version() == Version::HTTP_2
                    && !host.as_bytes().eq_ignore_ascii_case(authority.as_bytes()) =>
            {
                Some(HOST_NOT_AUTHORITY)
            }
            _ => None,
        },
    }
}

/// `uri-host [ ":" port ]` (RFC 3986): an IPv6 address in brackets, or a name (an IPv4 address
/// among them) of unreserved characters, sub-delimiters and percent-escapes, not empty; then, if
/// a colon follows, a port of at most 65535 (or none).
fn is_host_and_port(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let (host_ok, port) = match value.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((address, rest)) => (address.parse::<std::net::Ipv6Addr>().is_ok(), rest),
            None => return false,
        },
        None => {
            let end = value.find(':').unwrap_or(value.len());
            (is_reg_name(&value[..end]), &value[end..])
        }
    };
    let port_ok = match port.strip_prefix(':') {
        None => port.is_empty(),
        Some("") => true,
        Some(digits) => digits.bytes().all(|b| b.is_ascii_digit()) && digits.parse::<u16>().is_ok(),
    };
    host_ok && port_ok
}

/// A registered name, not empty: `*( unreserved / pct-encoded / sub-delims )`.
fn is_reg_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'%' if bytes
                .get(at + 1..at + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) =>
            {
                at += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) => {}
            _ => return false,
        }
        at += 1;
    }
    !name.is_empty()
}

pub(crate) const HOST_MISSING: &str = "an HTTP/1.1 request must have a Host header";
const HOST_REPEATED: &str = "a request may have only one Host header";
const HOST_INVALID: &str = "the Host header must be a host name or address with an optional port";
const HOST_NOT_AUTHORITY: &str =
    "the Host header must name the host the request's :authority names";
const AUTHORITY_INVALID: &str =
    "the request target's host must be a host name or address with an optional port";

/// The `details` of each refusal (also the OpenAPI document's examples).
pub(crate) fn target_too_long(bytes: usize, limit: usize) -> String {
    format!("request target is {bytes} bytes; the limit is {limit}")
}

pub(crate) fn headers_too_large(bytes: usize) -> String {
    format!("headers are {bytes} bytes; the limit is {MAX_HEADER_BYTES}")
}

pub(crate) fn body_too_large(bytes: u64) -> String {
    format!("request body is {bytes} bytes; the limit is {MAX_BODY_BYTES}")
}

pub(crate) fn body_over_limit() -> String {
    format!("request body is over the limit of {MAX_BODY_BYTES} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(value: &'static str) -> bool {
        is_host_and_port(value.as_bytes())
    }

    #[test]
    fn a_host_is_a_name_or_address_with_an_optional_port() {
        for good in [
            "localhost",
            "api.example.com:8443",
            "127.0.0.1:80",
            "[::1]:8080",
            "[::1]",
            "ex%61mple.com",
            "example.com:",
            "host:65535",
        ] {
            assert!(host_of(good), "{good} was refused");
        }
        for bad in [
            "",
            "a b",
            "user@example.com",
            "example.com/path",
            "exa mple:80",
            "[::1",
            "example.com:abc",
            "localhost:-1",
            "localhost:+80",
            "host:65536",
            "[hello]",
            "exa[mple]:80",
            ":80",
            "a:1:2",
            "ex%6",
            "[::1]x",
        ] {
            assert!(!host_of(bad), "{bad:?} was taken");
        }
    }
}
