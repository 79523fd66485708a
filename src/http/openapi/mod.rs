//! The OpenAPI 3.1 document of the whole API, served at `GET /openapi.json` (no API key).
//!
//! It is generated from the code: the routes the router lists (each handler's
//! `#[utoipa::path]`), the `ToSchema` derives on the real response types, and the reusable
//! responses of [`responses`], whose examples are what the real types answer.

pub(crate) mod responses;

use std::sync::{Arc, OnceLock};

use axum::Extension;
use axum::body::Bytes;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{self, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use self::responses::*;
use super::views::ScanStatusChanged;
use crate::domain::ids::{AccountGroupId, ScanId};

/// What the routes do not say: the API's description, the shared components and the tags.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "signal-scans",
        version = env!("CARGO_PKG_VERSION"),
        description = "Cancels asynchronous signal scans over a small, strict HTTP API. Every answer \
            except /metrics, this document, the reference at /docs and the change stream once it \
            is open (Server-Sent Events; until then it answers the envelope too) is the JSON \
            envelope `{\"success\",\"data\",\"error\",\"traceId\"}`, and every response carries \
            the trace id in `X-Request-Id`. The /v1 routes need an API key, as \
            `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
        // A name only: the reference page turns an SPDX identifier into a link to spdx.org,
        // and nothing on it links outside the service.
        license(name = "MIT"),
    ),
    components(
        schemas(
            SignalScanCancelSuccessResponse,
            SignalScanResponse,
            SignalScanListResponse,
            SignalScanEventsResponse,
            SignalScanCreatedResponse,
            SignalScanMoveResponse,
            SignalScansCancelResponse,
            HealthResponse,
            ErrorResponse,
            ValidationErrorResponse,
            AccountGroupId,
            ScanId,
            ScanStatusChanged,
            ChangeEvent,
        ),
        responses(
            BadScanRequest,
            BadListRequest,
            BadStreamRequest,
            BadCreateRequest,
            BadBatchCancelRequest,
            BadMoveRequest,
            BadFailRequest,
            RequestTooLarge,
            Unauthorized,
            Forbidden,
            ReadForbidden,
            RunnerForbidden,
            NotFound,
            NotCancellable,
            NotMovable,
            NotStartable,
            IdempotencyKeyReused,
            CursorExpired,
            RateLimited,
            StreamRateLimited,
            InternalError,
            UpstreamError,
            NotReady,
            OtherError,
        ),
    ),
    tags(
        (name = "signal scans", description = "Start, read and cancel the signal scans of an account group."),
        (name = "runners", description = "A runner's moves of a scan: start, complete, fail (the `signals:run` permission)."),
        (name = "operations", description = "Health, readiness, metrics and this document; no API key."),
    ),
)]
pub(crate) struct ApiDoc;

/// The rendered document, published once the router knows its routes and shared with the one
/// handler that serves it.
#[derive(Clone, Default)]
pub(crate) struct Document(Arc<OnceLock<Bytes>>);

impl Document {
    /// Completes the document with the router's `routes` and renders it.
    pub(crate) fn publish(&self, routes: openapi::OpenApi) {
        let mut document = ApiDoc::openapi();
        document.merge(routes);
        SecurityAndHeaders.modify(&mut document);
        for schema in document
            .components
            .iter_mut()
            .flat_map(|c| c.schemas.values_mut())
        {
            if let RefOr::T(openapi::Schema::Object(object)) = schema {
                object.properties.values_mut().for_each(nullable_described);
            }
        }
        let text = document
            .to_pretty_json()
            .expect("the OpenAPI document serializes");
        let _ = self.0.set(Bytes::from(text));
    }
}

/// `GET /openapi.json`
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    summary = "This OpenAPI 3.1 document",
    description = "No API key needed. Generated from the code of the version that serves it.",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", body = Object,
            content_type = "application/json"),
    )
)]
pub(crate) async fn openapi_json(Extension(document): Extension<Document>) -> Response {
    let text = document.0.get().cloned().unwrap_or_default();
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A field of type `Option<T>`, `T` a named schema, is `oneOf: [$ref T, null]`, and utoipa puts
/// the field's doc comment beside the `$ref`, where generators do not look for it (the Python
/// client's `previous_status`, whose `None` the description explains, went undescribed): it
/// belongs to the field.
fn nullable_described(property: &mut RefOr<openapi::Schema>) {
    if let RefOr::T(openapi::Schema::OneOf(one_of)) = property
        && one_of.description.is_none()
        && let Some(RefOr::Ref(reference)) = one_of.items.first_mut()
        && !reference.description.is_empty()
    {
        one_of.description = Some(std::mem::take(&mut reference.description));
    }
}

/// An optional body (`Option<T>` in a route's attribute) is told by `required` left out; utoipa
/// also makes its schema nullable (`oneOf: [T, null]`), and a generated client then sends its
/// "no body" marker as the JSON body (the Python client raised `TypeError`). The schema is `T`.
fn optional_body_not_nullable(body: &mut openapi::request_body::RequestBody) {
    if body.required == Some(openapi::Required::True) {
        return;
    }
    for content in body.content.values_mut() {
        let RefOr::T(content) = content else {
            continue;
        };
        if let Some(RefOr::T(openapi::Schema::OneOf(one_of))) = &content.schema
            && let [schema, null] = one_of.items.as_slice()
            && serde_json::to_value(null).ok() == Some(serde_json::json!({ "type": "null" }))
        {
            content.schema = Some(schema.clone());
        }
    }
}

/// What every /v1 route answers whatever it does, so its `#[utoipa::path]` lists only its own
/// outcomes: a key refused (401), over a rate (429), a failure of ours (500) or the database's (502).
/// A route that names one of these statuses itself (the change stream's 429) keeps its own.
const SHARED_V1_RESPONSES: [(&str, &str); 4] = [
    ("401", "Unauthorized"),
    ("429", "RateLimited"),
    ("500", "InternalError"),
    ("502", "UpstreamError"),
];

/// The shared parts of the document, added once: the security schemes, and on every /v1 route
/// both ways of sending the key and [`SHARED_V1_RESPONSES`]; on every operation the request-limit
/// 400 (unless it lists its own 400) and the `default` error envelope; the request id header on
/// every inline response, and the rate-limit headers on the /v1 routes' successes.
struct SecurityAndHeaders;

impl Modify for SecurityAndHeaders {
    fn modify(&self, document: &mut openapi::OpenApi) {
        let components = document.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ssk_<64 hex>")
                    .description(Some("`Authorization: Bearer <API key>`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "`X-API-Key: <API key>`",
            ))),
        );
        for (path, item) in document.paths.paths.iter_mut() {
            let v1 = path.starts_with("/v1/");
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                if v1 {
                    for (status, name) in SHARED_V1_RESPONSES {
                        responses
                            .entry(status.into())
                            .or_insert_with(|| Ref::from_response_name(name).into());
                    }
                    operation.security = Some(vec![
                        SecurityRequirement::new::<_, _, &str>("bearerAuth", []),
                        SecurityRequirement::new::<_, _, &str>("apiKey", []),
                    ]);
                }
                if let Some(RefOr::T(body)) = &mut operation.request_body {
                    optional_body_not_nullable(body);
                }
                responses
                    .entry("400".into())
                    .or_insert_with(|| Ref::from_response_name("RequestTooLarge").into());
                responses.insert(
                    "default".into(),
                    Ref::from_response_name("OtherError").into(),
                );
                for (status, response) in operation.responses.responses.iter_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    response
                        .headers
                        .insert("X-Request-Id".into(), RefOr::T(request_id_header()));
                    if v1 && status.starts_with('2') {
                        let with_limits = rate_limit_headers(ResponseBuilder::new(), true).build();
                        response.headers.extend(with_limits.headers);
                    }
                }
            }
        }
    }
}
