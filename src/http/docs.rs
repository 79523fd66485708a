//! `GET /docs`: the interactive API reference (Swagger UI) over `/openapi.json`, every asset
//! embedded in the binary (`utoipa-swagger-ui` with `vendored`), so the page works offline and
//! sends no request to another host.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::body::Bytes;
use axum::http::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_SECURITY_POLICY, CONTENT_TYPE, VARY,
};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use utoipa_swagger_ui::Config;

use super::error::ApiError;
use super::extract::ApiPath;

/// Where the page lives; `/docs` and `/` redirect here (the page's assets are relative to it).
pub(crate) const PAGE: &str = "/docs/";

/// The browser may load only what this service serves: scripts, styles and the document from
/// this origin, and the `data:` images Swagger UI's stylesheet embeds. Swagger UI sets inline
/// styles on elements, hence `'unsafe-inline'` for styles (never for scripts).
const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The reference's routes: `GET /` and `GET /docs` redirect to the page, `GET /docs/` is the page,
/// `GET /docs/{file}` its assets; any other file under `/docs/` is the 404 envelope. None of
/// them when `enabled` is false (`DOCS_ENABLED`): every such path is then an unknown route.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(enabled: bool) -> Router<S> {
    if !enabled {
        return Router::new();
    }
    Router::new()
        .route("/", get(|| async { Redirect::temporary(PAGE) }))
        .route("/docs", get(|| async { Redirect::permanent(PAGE) }))
        .route("/docs/", get(index))
        .route("/docs/{*file}", get(asset))
}

/// Swagger UI's settings: read `/openapi.json`, never call the public validator service.
fn config() -> Arc<Config<'static>> {
    static CONFIG: OnceLock<Arc<Config<'static>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            Arc::new(
                Config::from("/openapi.json")
                    .validator_url("none")
                    .display_operation_id(true)
                    .display_request_duration(true),
            )
        })
        .clone()
}

async fn index(headers: HeaderMap) -> Response {
    file("index.html", &headers)
}

async fn asset(ApiPath(name): ApiPath<String>, headers: HeaderMap) -> Response {
    file(&name, &headers)
}

/// One embedded file, gzipped when the client accepts it (the assets are stored gzipped).
fn file(name: &str, request: &HeaderMap) -> Response {
    let file = match utoipa_swagger_ui::serve(name, config()) {
        Ok(Some(file)) => file,
        Ok(None) => {
            // The name is not echoed back: it is whatever the client sent.
            return ApiError::NotFound("the API reference has no such file".into()).into_response();
        }
        Err(error) => {
            return ApiError::Internal(format!("cannot render Swagger UI's {name}: {error}"))
                .into_response();
        }
    };
    let content_type = HeaderValue::from_str(&file.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    if !file.gzpipped {
        return (headers, shared(file.bytes)).into_response();
    }
    headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
    if accepts_gzip(request) {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        return (headers, shared(file.bytes)).into_response();
    }
    match unzipped(name, &file.bytes) {
        Ok(plain) => (headers, plain).into_response(),
        Err(error) => {
            ApiError::Internal(format!("cannot unzip Swagger UI's {name}: {error}")).into_response()
        }
    }
}

/// A file's bytes as a body that costs nothing per response: the binary's own copy, never copied
/// again. A client that reads slowly keeps its response's body until it has read it all, so a
/// copy each (1.5 MB of Swagger UI's bundle) let a thousand such clients hold gigabytes.
fn shared(bytes: Cow<'static, [u8]>) -> Bytes {
    match bytes {
        Cow::Borrowed(bytes) => Bytes::from_static(bytes),
        Cow::Owned(bytes) => Bytes::from(bytes),
    }
}

/// A gzipped file's plain bytes, unzipped once per process and shared by every response (see
/// [`shared`]); kept for each file asked for, a handful of embedded files at most.
fn unzipped(name: &str, gzipped: &[u8]) -> std::io::Result<Bytes> {
    static UNZIPPED: OnceLock<Mutex<HashMap<String, Bytes>>> = OnceLock::new();
    let unzipped = UNZIPPED.get_or_init(Default::default);
    if let Some(plain) = unzipped.lock().expect("not poisoned").get(name) {
        return Ok(plain.clone());
    }
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(gzipped).read_to_end(&mut plain)?;
    let plain = Bytes::from(plain);
    unzipped
        .lock()
        .expect("not poisoned")
        .insert(name.to_owned(), plain.clone());
    Ok(plain)
}

/// Whether `Accept-Encoding` allows gzip: its weight is gzip's own when gzip is named, else that
/// of `*` (which stands only for codings not named), and gzip is sent when that weight is not 0.
fn accepts_gzip(request: &HeaderMap) -> bool {
    let (mut gzip, mut any) = (None, None);
    let codings = request
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for coding in codings {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let allowed = parts
            .find_map(|parameter| {
                let (key, value) = parameter.split_once('=')?;
                key.trim().eq_ignore_ascii_case("q").then(|| value.trim())
            })
            .is_none_or(|weight| weight.parse::<f32>().is_ok_and(|q| q > 0.0));
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(gzip.unwrap_or(false) || allowed);
        } else if name == "*" {
            any = Some(any.unwrap_or(false) || allowed);
        }
    }
    gzip.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepting(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn gzip_is_sent_only_to_clients_that_accept_it() {
        for (value, expected) in [
            ("gzip, deflate, br, zstd", true),
            ("GZIP", true),
            ("br;q=1.0, gzip;q=0.5", true),
            ("*", true),
            ("gzip;q=0", false),
            ("gzip; q=0.0", false),
            ("identity", false),
            ("br, deflate", false),
            // `*` stands only for codings not named: a refused gzip stays refused.
            ("gzip;q=0, *", false),
            ("*, gzip;q=0", false),
            ("gzip;Q=0", false),
            ("*;q=0, gzip", true),
            ("*;q=0", false),
            ("x-gzip", true),
        ] {
            assert_eq!(accepts_gzip(&accepting(value)), expected, "{value}");
        }
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
