//! API key extraction → `Principal`, and the per-route permission check.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use crate::domain::keys::{Permission, Principal};
use crate::domain::service::{AuthFailure, ScanService};

const API_KEY_HEADER: &str = "x-api-key";

/// Middleware: authenticates the request's API key and puts its `Principal` in the extensions.
pub async fn authenticate(
    State(service): State<ScanService>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = presented_key(request.headers())?;
    let principal = service.authenticate(presented).await?;
    tracing::Span::current().record("api_key.id", tracing::field::display(principal.key_id));
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// The key from `Authorization: Bearer <key>` (scheme case-insensitive), else from `X-API-Key`.
fn presented_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    let unauthorized = |failure: AuthFailure| ApiError::Unauthorized(failure.to_string());
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

/// Route middleware: the authenticated key must hold at least one of `permissions`.
pub async fn require_permission(
    State(permissions): State<&'static [Permission]>,
    principal: Principal,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !permissions
        .iter()
        .any(|permission| principal.has(*permission))
    {
        let names: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
        return Err(ApiError::Forbidden(format!(
            "API key lacks the {} permission",
            names.join(" or ")
        )));
    }
    Ok(next.run(request).await)
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
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

    #[test]
    fn other_schemes_and_absence_are_unauthorized() {
        assert!(presented_key(&headers(&[("authorization", "Basic abc")])).is_err());
        assert!(presented_key(&headers(&[])).is_err());
    }
}
