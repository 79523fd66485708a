//! API key extraction → `Principal`, and the per-route permission check.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, Limit};
use super::metrics::RATE_LIMITED;
use super::rate_limit::{Decision, Failure};
use crate::domain::keys::{Permission, Principal};
use crate::service::AuthFailure;

const API_KEY_HEADER: &str = "x-api-key";
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// What a route demands of its caller, with what checking it needs.
#[derive(Clone)]
pub(crate) struct Guard {
    state: AppState,
    permissions: &'static [Permission],
}

impl Guard {
    /// A route that needs a valid key holding one of `permissions`.
    pub(crate) fn requiring(state: &AppState, permissions: &'static [Permission]) -> Self {
        Self {
            state: state.clone(),
            permissions,
        }
    }
}

/// Route middleware, every check a documented route makes before its handler, in the documented
/// order: the API key (401; 429 first for a client address that keeps failing), the key's rate
/// limit (429), the route's permission (403). The `RateLimit` headers go on every answer after
/// the key is known. One layer rather than three: each `from_fn` layer costs a boxed future and
/// a clone of the boxed route per request. The key's `Principal` goes into the extensions for
/// the handler.
pub(crate) async fn guard(
    State(Guard { state, permissions }): State<Guard>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = client_ip(&request, state.trusted_proxy_hops);
    tracing::Span::current().record("client.address", tracing::field::display(client));
    let principal = match authenticate(&state, client, request.headers()).await {
        Ok(principal) => principal,
        Err(error) => return error.into_response(),
    };
    let decision = state.limits.spend(&principal.key_id).await;
    let mut response = match decision {
        Decision::Limited { retry_after_secs } => ApiError::RateLimited {
            limit: Limit::KeyRate,
            retry_after_secs,
        }
        .into_response(),
        Decision::Allowed { .. } => match permitted(&principal, permissions) {
            Ok(()) => {
                request.extensions_mut().insert(principal);
                next.run(request).await
            }
            Err(error) => error.into_response(),
        },
    };
    state.limits.write_headers(decision, response.headers_mut());
    response
}

/// The API key in `headers`, checked. A `client` address that keeps failing is answered 429
/// before its key is even looked at; one that failed lately looks keys up one at a time (see
/// [`super::rate_limit::RateLimiter::lookup_turn`]); a cached key needs no turn.
async fn authenticate(
    state: &AppState,
    client: IpAddr,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let failures_of = failure_bucket(client);
    refuse_if_blocked(state, failures_of).await?;
    let presented = match presented_key(headers) {
        Ok(presented) => presented,
        Err(error) => return settle(state, client, Err(error)).await,
    };
    if let Some(known) = state.scans.authenticate_cached(presented).await {
        return settle(state, client, known.map_err(ApiError::from)).await;
    }
    let turn = state.limits.lookup_turn(failures_of).await;
    if let Some(turn) = &turn {
        if turn.is_busy() {
            // The address's lookup in progress has taken a second: the database is slow, which
            // is what a 502 says (and what an operator should see, not a limit that was hit).
            return Err(ApiError::Upstream(
                "a key lookup of this client address took over a second; no second one beside it"
                    .into(),
            ));
        }
        refuse_if_blocked(state, failures_of).await?;
        // The key may have been looked up by the turn before this one.
        if let Some(known) = state.scans.authenticate_cached(presented).await {
            return settle(state, client, known.map_err(ApiError::from)).await;
        }
    }
    let looked_up = state.scans.authenticate(presented).await;
    let settled = settle(state, client, looked_up.map_err(ApiError::from)).await;
    drop(turn);
    settled
}

/// 429 for a `client` (by its [`failure_bucket`]) that failed too often.
async fn refuse_if_blocked(state: &AppState, failures_of: IpAddr) -> Result<(), ApiError> {
    match state.limits.auth_blocked(failures_of).await {
        Some(retry_after_secs) => Err(auth_failures_limited(retry_after_secs)),
        None => Ok(()),
    }
}

fn auth_failures_limited(retry_after_secs: u64) -> ApiError {
    metrics::counter!(RATE_LIMITED, "limit" => Limit::AuthFailures.label()).increment(1);
    ApiError::RateLimited {
        limit: Limit::AuthFailures,
        retry_after_secs,
    }
}

/// The authentication's answer: a failure is counted against `client` (the one that spends the
/// address's last allowance blocks it), and answered 429 when the address had none left.
async fn settle(
    state: &AppState,
    client: IpAddr,
    outcome: Result<Principal, ApiError>,
) -> Result<Principal, ApiError> {
    match outcome {
        Ok(principal) => {
            tracing::Span::current()
                .record("api_key.id", tracing::field::display(principal.key_id));
            Ok(principal)
        }
        Err(ApiError::Unauthorized(reason)) => {
            // The reason is the 401's own details: never the key, and what an operator chasing
            // "401 for a key that should work" needs (missing, malformed, unknown, expired, revoked).
            tracing::info!(client.address = %client, reason = %reason, "authentication failed");
            let failure = state
                .limits
                .record_auth_failure(failure_bucket(client))
                .await;
            if let (false, Some(retry_after_secs)) = (failure.refused, failure.blocked_for) {
                // The failure that spent the last allowance: its requests are refused before
                // authentication from now on, until the address may fail again, their closing
                // lines at `debug` (`http::Quiet`). (A refused one, in flight when the block
                // began, is not logged again.)
                tracing::warn!(
                    client.address = %client,
                    retry_after_s = retry_after_secs,
                    "address blocked after repeated authentication failures"
                );
            }
            Err(match failure {
                Failure {
                    refused: true,
                    blocked_for,
                } => auth_failures_limited(blocked_for.unwrap_or(1)),
                Failure { refused: false, .. } => ApiError::Unauthorized(reason),
            })
        }
        Err(other) => Err(other),
    }
}

/// The client's address: the peer, or with `trusted_hops` load balancers in front, the
/// X-Forwarded-For entry the outermost trusted one appended (entries before it are the client's
/// own claims and cannot be trusted).
fn client_ip(request: &Request, trusted_hops: usize) -> IpAddr {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |info| info.0.ip());
    if trusted_hops == 0 {
        return peer;
    }
    // Split as bytes: the client's own entries may hold bytes that are not text (a proxy passes
    // them on, and appends its entry to the same line), and must not hide the proxy's entry.
    let forwarded: Vec<&[u8]> = request
        .headers()
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    forwarded
        .len()
        .checked_sub(trusted_hops)
        .and_then(|index| std::str::from_utf8(forwarded[index]).ok())
        .and_then(parse_forwarded)
        .unwrap_or(peer)
}

/// Whose failed authentications count together: an IPv4 client by its address, an IPv6 client by
/// its /64. One host is routinely given a whole /64, so counting per /128 would let it walk
/// around the limit by changing addresses. An IPv4-mapped IPv6 address counts as the IPv4 one.
fn failure_bucket(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// An X-Forwarded-For entry: an address, possibly with a port (`1.2.3.4:5678`, `[::1]:80`) or in
/// brackets, as load balancers variously write it.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .or_else(|| {
            entry
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()
        })
}

/// The key from `Authorization: Bearer <key>` (scheme case-insensitive), else from `X-API-Key`.
pub(super) fn presented_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    let unauthorized = |failure: AuthFailure| ApiError::Unauthorized(failure.to_string());
    // Two copies of one credential header are ambiguous (proxies and frameworks disagree on
    // which counts): neither is used.
    for (name, shown) in [
        (AUTHORIZATION.as_str(), "Authorization"),
        (API_KEY_HEADER, "X-API-Key"),
    ] {
        if super::headers::single(headers, name).is_err() {
            return Err(ApiError::Unauthorized(format!(
                "the {shown} header is given more than once"
            )));
        }
    }
    if let Some(value) = headers.get(AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| unauthorized(AuthFailure::Invalid))?;
        let (scheme, key) = value.split_once(' ').unwrap_or((value, ""));
        return match scheme.eq_ignore_ascii_case("bearer") {
            true => Ok(key.trim()),
            false => Err(ApiError::Unauthorized(
                "Authorization header must use the Bearer scheme".into(),
            )),
        };
    }
    match headers.get(API_KEY_HEADER) {
        Some(value) => value
            .to_str()
            .map(str::trim)
            .map_err(|_| unauthorized(AuthFailure::Invalid)),
        None => Err(unauthorized(AuthFailure::Missing)),
    }
}

/// The key must hold at least one of the route's `permissions`.
fn permitted(principal: &Principal, permissions: &[Permission]) -> Result<(), ApiError> {
    if permissions
        .iter()
        .any(|permission| principal.has(*permission))
    {
        return Ok(());
    }
    let names: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
    Err(ApiError::Forbidden(format!(
        "API key lacks the {} permission",
        names.join(" or ")
    )))
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    /// Taken out of the extensions, not cloned: the handler is its only reader, and a clone
    /// would copy its lists on every request.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.remove::<Principal>().ok_or_else(|| {
            ApiError::Internal("route reached without the authentication middleware".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn keys_come_from_bearer_in_any_case_or_x_api_key() {
        for (name, value) in [
            ("authorization", "Bearer ssk_x"),
            ("authorization", "bearer ssk_x"),
            ("authorization", "BEARER ssk_x"),
            ("x-api-key", "ssk_x"),
        ] {
            assert_eq!(presented_key(&headers(&[(name, value)])).unwrap(), "ssk_x");
        }
    }

    fn request_from(peer: &str, forwarded: &[&'static str]) -> Request {
        let mut request = Request::new(axum::body::Body::empty());
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(peer.parse().unwrap(), 1234)));
        for value in forwarded {
            request
                .headers_mut()
                .append(X_FORWARDED_FOR, HeaderValue::from_static(value));
        }
        request
    }

    #[test]
    fn the_client_is_the_peer_unless_proxies_are_trusted() {
        let request = request_from("10.0.0.9", &["1.1.1.1, 2.2.2.2", "3.3.3.3"]);
        assert_eq!(
            client_ip(&request, 0),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(&request, 1), "3.3.3.3".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(&request, 2), "2.2.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(
            client_ip(&request, 9),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        let with_ports = request_from(
            "10.0.0.9",
            &["1.1.1.1:5678, [2001:db8::1]:443", "[2001:db8::2]"],
        );
        assert_eq!(
            client_ip(&with_ports, 1),
            "2001:db8::2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(&with_ports, 2),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(&with_ports, 3),
            "1.1.1.1".parse::<IpAddr>().unwrap()
        );
        let spoofed = request_from("10.0.0.9", &["not-an-ip"]);
        assert_eq!(
            client_ip(&spoofed, 1),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv6_failures_count_per_64_and_ipv4_per_address() {
        let bucket = |ip: &str| failure_bucket(ip.parse().unwrap());
        assert_eq!(
            bucket("2001:db8:1:2:aaaa::1"),
            bucket("2001:db8:1:2:ffff:1:2:3")
        );
        assert_eq!(bucket("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::");
        assert_ne!(bucket("2001:db8:1:2::1"), bucket("2001:db8:1:3::1"));
        assert_eq!(bucket("203.0.113.7").to_string(), "203.0.113.7");
        assert_ne!(bucket("203.0.113.7"), bucket("203.0.113.8"));
        assert_eq!(bucket("::ffff:203.0.113.7"), bucket("203.0.113.7"));
    }

    #[test]
    fn other_schemes_and_absence_are_unauthorized() {
        assert!(presented_key(&headers(&[("authorization", "Basic abc")])).is_err());
        assert!(presented_key(&headers(&[])).is_err());
    }
}
