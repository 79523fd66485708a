//! The reusable pieces handlers name in their `#[utoipa::path]`: the success envelopes, the one
//! error schema, and one response per error status, each with examples rendered from the real
//! `ApiError` (so an example is exactly what the service answers). A leaf: it imports no handler.

use std::borrow::Cow;

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use serde_json::Value;
use time::macros::datetime;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{AdditionalProperties, Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::{self, Ref, RefOr};
use utoipa::{PartialSchema, ToResponse, ToSchema};

use crate::domain::ids::{AccountGroupId, InvalidId, ScanId};
use crate::domain::keys::Permission;
use crate::domain::scan::{Scan, ScanCursor, ScanEvent, ScanStatus};
use crate::http::envelope::{Envelope, ErrorBody};
use crate::http::error::{self, ApiError, Limit, STREAM_CAP_RETRY_SECS};
use crate::http::extract::{ApiBody, NoFields};
use crate::http::limits::{
    self, MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_STREAM_TARGET_BYTES, MAX_TARGET_BYTES,
};
use crate::http::method;
use crate::http::runner::FailRequest;
use crate::http::views::{CancelledScan, CancelledScans, Health, MovedScan, ScanEvents, ScanList};
use crate::service::{
    AuthFailure, BatchCancellation, CancelOutcome, Cancellation, Moved, ScanPage, ServiceError,
};

/// The trace id every example shows (a real one is per request).
const EXAMPLE_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const EXAMPLE_GROUP: &str = "507f1f77bcf86cd799439011";
const EXAMPLE_SCAN: &str = "65a1f0c2e4b0a1b2c3d4e5f6";

// ----- Named envelopes: the derived `Envelope<T>` schema, narrowed to success or failure -----

/// Declares a unit type whose schema is the success envelope around `$data`, named `$name`.
macro_rules! success_envelope {
    ($(#[$doc:meta])* $name:ident, $data:ty, $example:expr) => {
        $(#[$doc])*
        pub(crate) struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                success_schema::<$data>($example)
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }

            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                schemas.push((<$data>::name().into_owned(), <$data>::schema()));
                <$data>::schemas(schemas);
            }
        }
    };
}

success_envelope!(
    /// `data` is the cancelled scan.
    SignalScanCancelSuccessResponse,
    CancelledScan,
    example_cancel()
);
success_envelope!(
    /// `data.results` says what became of each requested scan, in order.
    SignalScansCancelResponse,
    CancelledScans,
    example_cancel_all()
);
success_envelope!(
    /// `data` is the scan.
    SignalScanResponse,
    Scan,
    example_scan()
);
success_envelope!(
    /// `data` is the scan just started (status `queued`).
    SignalScanCreatedResponse,
    Scan,
    example_created()
);
success_envelope!(
    /// `data` is where a runner's move left the scan.
    SignalScanMoveResponse,
    MovedScan,
    example_move()
);
success_envelope!(
    /// `data` is a page of scans.
    SignalScanListResponse,
    ScanList,
    example_list()
);
success_envelope!(
    /// `data` is the scan's status changes.
    SignalScanEventsResponse,
    ScanEvents,
    example_events()
);
success_envelope!(
    /// `data` is the health status.
    HealthResponse,
    Health,
    Envelope::success(Health::OK).to_value()
);

/// One event of the change stream, as a Server-Sent Events client parses it: its cursor (`id`),
/// its name and its `data`, a `ScanStatusChanged` as JSON text. The opening block carries `retry`
/// and the `id` the stream starts at (no `data`: a client resumes there before any change); the
/// closing block only `retry`.
pub(crate) struct ChangeEvent;

impl PartialSchema for ChangeEvent {
    fn schema() -> RefOr<Schema> {
        let text = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
        };
        ObjectBuilder::new()
            .property(
                "id",
                text("The cursor after this change: resume with Last-Event-ID or after."),
            )
            .property(
                "event",
                text("Always `scan.status_changed`.").enum_values(Some(["scan.status_changed"])),
            )
            .property(
                "data",
                text("The change, a ScanStatusChanged as compact JSON text.")
                    .content_media_type("application/json"),
            )
            .property(
                "retry",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .description(Some("Milliseconds to wait before reconnecting.")),
            )
            .into()
    }
}

impl ToSchema for ChangeEvent {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ChangeEvent")
    }
}

/// Every error but the 400s (whose body is [`ValidationErrorResponse`], the same fields): one
/// schema, so a generated client has one error type for them all.
/// `error.code` is one of the codes in the responses' descriptions.
pub(crate) struct ErrorResponse;

impl PartialSchema for ErrorResponse {
    fn schema() -> RefOr<Schema> {
        failure_schema(rendered(ServiceError::ScanNotFound.into()).body)
    }
}

impl ToSchema for ErrorResponse {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((ErrorBody::name().into_owned(), error_body_schema()));
    }
}

/// The body of every 400 (`VALIDATION_ERROR`: a malformed parameter, body or header, or a request
/// over a limit), named as the published contract names it: the same fields as [`ErrorResponse`].
pub(crate) struct ValidationErrorResponse;

impl PartialSchema for ValidationErrorResponse {
    fn schema() -> RefOr<Schema> {
        failure_schema(rendered(ApiError::Validation(format!("scanId {InvalidId}"))).body)
    }
}

impl ToSchema for ValidationErrorResponse {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((ErrorBody::name().into_owned(), error_body_schema()));
    }
}

/// `Envelope<T>` as derived, with `success` true, `data` a `T` and `error` null.
fn success_schema<T: ToSchema>(example: Value) -> RefOr<Schema> {
    let mut envelope = envelope_object::<T>();
    envelope.properties.insert("success".into(), constant(true));
    envelope
        .properties
        .insert("data".into(), Ref::from_schema_name(T::name()).into());
    envelope.properties.insert("error".into(), null());
    envelope.example = Some(example);
    RefOr::T(Schema::Object(envelope))
}

/// `Envelope<_>` as derived, with `success` false, `data` null and `error` an `ErrorBody`.
fn failure_schema(example: Value) -> RefOr<Schema> {
    let mut envelope = envelope_object::<Health>();
    envelope
        .properties
        .insert("success".into(), constant(false));
    envelope.properties.insert("data".into(), null());
    envelope.properties.insert(
        "error".into(),
        Ref::from_schema_name(ErrorBody::name()).into(),
    );
    envelope.example = Some(example);
    RefOr::T(Schema::Object(envelope))
}

/// The derived envelope: its property names, `traceId`, descriptions and required list.
fn envelope_object<T: ToSchema>() -> Object {
    let mut envelope = object(Envelope::<T>::schema());
    for property in ["success", "data", "error", "traceId"] {
        assert!(
            envelope.properties.contains_key(property),
            "the envelope has no {property}"
        );
        if !envelope.required.iter().any(|name| name == property) {
            envelope.required.push(property.into());
        }
    }
    envelope.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
    envelope
}

/// The derived `ErrorBody`, closed.
fn error_body_schema() -> RefOr<Schema> {
    let mut body = object(ErrorBody::schema());
    body.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
    RefOr::T(Schema::Object(body))
}

fn object(schema: RefOr<Schema>) -> Object {
    match schema {
        RefOr::T(Schema::Object(object)) => object,
        _ => panic!("a derived struct schema is an inline object"),
    }
}

fn constant(value: bool) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Boolean)
        .enum_values(Some([value]))
        .into()
}

fn null() -> RefOr<Schema> {
    Object::with_type(Type::Null).into()
}

// ----- Examples, made of the real types -----

fn example_scan_value() -> Scan {
    Scan {
        id: ScanId::parse(EXAMPLE_SCAN).expect("example id"),
        account_group_id: AccountGroupId::parse(EXAMPLE_GROUP).expect("example id"),
        status: ScanStatus::Cancelled,
        created_at: datetime!(2026-11-28 23:58:02.120 UTC),
        updated_at: datetime!(2026-11-29 00:14:45.778 UTC),
        started_at: Some(datetime!(2026-11-28 23:58:03.004 UTC)),
        // A cancelled scan's finishedAt is its cancelledAt.
        finished_at: Some(datetime!(2026-11-29 00:14:45.778 UTC)),
        cancelled_at: Some(datetime!(2026-11-29 00:14:45.778 UTC)),
    }
}

fn example_cancel() -> Value {
    Envelope::success(CancelledScan::from(Cancellation {
        scan_id: ScanId::parse(EXAMPLE_SCAN).expect("example id"),
        previous_status: ScanStatus::Running,
        cancelled_at: datetime!(2026-11-29 00:14:45.778 UTC),
    }))
    .to_value()
}

fn example_cancel_all() -> Value {
    let at = datetime!(2026-11-29 00:14:45.778 UTC);
    let line = |id: &str, outcome, status, previous_status, cancelled_at| BatchCancellation {
        scan_id: ScanId::parse(id).expect("example id"),
        outcome,
        status,
        previous_status,
        cancelled_at,
    };
    Envelope::success(CancelledScans::from(vec![
        line(
            EXAMPLE_SCAN,
            CancelOutcome::Cancelled,
            Some(ScanStatus::Cancelled),
            Some(ScanStatus::Running),
            Some(at),
        ),
        line(
            "65a1f0c2e4b0a1b2c3d4e5f7",
            CancelOutcome::NotCancellable,
            Some(ScanStatus::Completed),
            Some(ScanStatus::Completed),
            None,
        ),
        line(
            "65a1f0c2e4b0a1b2c3d4e5f8",
            CancelOutcome::NotFound,
            None,
            None,
            None,
        ),
    ]))
    .to_value()
}

fn example_created() -> Value {
    Envelope::success(example_scan_value().as_created()).to_value()
}

/// The schema's example: a completion. The start and fail routes show their own.
fn example_move() -> Value {
    example_move_to(ScanStatus::Completed, ScanStatus::Running)
}

/// The 200 of a start.
pub(crate) fn example_start() -> Value {
    example_move_to(ScanStatus::Running, ScanStatus::Queued)
}

/// The 200 of a failure.
pub(crate) fn example_fail() -> Value {
    example_move_to(ScanStatus::Failed, ScanStatus::Running)
}

/// The 200 of `/readyz` (the schema's example is that of `/healthz`).
pub(crate) fn example_ready() -> Value {
    Envelope::success(Health::READY).to_value()
}

fn example_move_to(status: ScanStatus, previous_status: ScanStatus) -> Value {
    Envelope::success(MovedScan::from(Moved {
        scan_id: ScanId::parse(EXAMPLE_SCAN).expect("example id"),
        status,
        previous_status,
        at: datetime!(2026-11-29 00:14:45.778 UTC),
    }))
    .to_value()
}

fn example_scan() -> Value {
    Envelope::success(example_scan_value()).to_value()
}

fn example_list() -> Value {
    let scan = example_scan_value();
    let next = Some(ScanCursor::after(&scan));
    Envelope::success(ScanList::from(ScanPage {
        scans: vec![scan],
        next,
    }))
    .to_value()
}

fn example_events() -> Value {
    let scan = example_scan_value();
    let event = |from, to, at, trace_id: Option<&str>| ScanEvent {
        scan_id: scan.id,
        from,
        to,
        api_key_id: None,
        trace_id: trace_id.map(str::to_owned),
        at,
        reason: None,
    };
    let events = vec![
        event(None, ScanStatus::Queued, scan.created_at, None),
        event(
            Some(ScanStatus::Queued),
            ScanStatus::Running,
            scan.started_at.expect("example is started"),
            None,
        ),
        event(
            Some(ScanStatus::Running),
            ScanStatus::Cancelled,
            scan.updated_at,
            Some(EXAMPLE_TRACE_ID),
        ),
    ];
    Envelope::success(ScanEvents::new(scan.id, events)).to_value()
}

trait ExampleValue {
    fn to_value(&self) -> Value;
}

impl<T: serde::Serialize> ExampleValue for Envelope<T> {
    /// The envelope as JSON, with the examples' trace id.
    fn to_value(&self) -> Value {
        let mut value = serde_json::to_value(self).expect("an envelope serializes");
        value["traceId"] = EXAMPLE_TRACE_ID.into();
        value
    }
}

/// An error as the service answers it.
struct Rendered {
    status: StatusCode,
    body: Value,
}

/// `error` as the service answers it: its status and its envelope, with the examples' trace id.
fn rendered(error: ApiError) -> Rendered {
    Rendered {
        status: error.status(),
        body: error.envelope().to_value(),
    }
}

// ----- Reusable error responses, one per status, with the service's own answers as examples -----

/// Declares a unit type that is a reusable response: the error envelope, with named examples
/// rendered from `ApiError`s (all of the same status; `+ more` appends already rendered ones), and
/// the headers `$headers` adds.
macro_rules! error_response {
    ($(#[$doc:meta])* $name:ident, $schema:ty, $headers:expr, [$(($example:literal, $error:expr)),* $(,)?] $(+ $more:expr)?) => {
        $(#[$doc])*
        pub(crate) struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<openapi::Response>) {
                #[allow(unused_mut)]
                let mut examples: Vec<(&'static str, Rendered)> = vec![$(($example, rendered($error))),*];
                $(examples.extend($more);)?
                (stringify!($name), error_response::<$schema>(examples, $headers).into())
            }
        }
    };
}

fn error_response<S: ToSchema>(
    examples: Vec<(&'static str, Rendered)>,
    headers: fn(ResponseBuilder) -> ResponseBuilder,
) -> openapi::Response {
    let status = examples[0].1.status;
    assert!(
        examples.iter().all(|(_, example)| example.status == status),
        "one response, one status"
    );
    let description = examples[0].1.body["error"]["message"]
        .as_str()
        .expect("an error has a message")
        .to_owned();
    described_error_response::<S>(description, examples, headers)
}

/// The error envelope with named examples, whatever their statuses.
fn described_error_response<S: ToSchema>(
    description: String,
    examples: Vec<(&'static str, Rendered)>,
    headers: fn(ResponseBuilder) -> ResponseBuilder,
) -> openapi::Response {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(S::name())))
        .examples_from_iter(examples.into_iter().map(|(name, example)| {
            let summary = example.body["error"]["details"]
                .as_str()
                .unwrap_or("no details")
                .to_owned();
            (
                name,
                ExampleBuilder::new()
                    .summary(summary)
                    .value(Some(example.body))
                    .build(),
            )
        }))
        .build();
    headers(
        ResponseBuilder::new()
            .description(description)
            .content("application/json", content)
            .header("X-Request-Id", request_id_header()),
    )
    .build()
}

/// After authentication: the rate-limit headers, when the key's limit was checked.
fn after_auth(response: ResponseBuilder) -> ResponseBuilder {
    rate_limit_headers(response, false)
}

fn no_headers(response: ResponseBuilder) -> ResponseBuilder {
    response
}

/// The 400s a request over a limit, or without its `Host`, answers before any route is matched
/// (the target limit is `target_limit`; the change stream's is larger).
fn over_limits(target_limit: usize) -> Vec<(&'static str, Rendered)> {
    vec![
        (
            "hostMissing",
            rendered(ApiError::Validation(limits::HOST_MISSING.to_owned())),
        ),
        (
            "targetTooLong",
            rendered(ApiError::Validation(limits::target_too_long(
                target_limit + 1,
                target_limit,
            ))),
        ),
        (
            "headersTooLarge",
            rendered(ApiError::Validation(limits::headers_too_large(
                MAX_HEADER_BYTES + 1,
            ))),
        ),
        (
            "bodyTooLarge",
            rendered(ApiError::Validation(limits::body_too_large(
                MAX_BODY_BYTES + 1,
            ))),
        ),
    ]
}

/// A body the route refuses, as `ApiBody::optional_fields` answers it.
fn refused_body<T: serde::de::DeserializeOwned + Default>(body: &'static [u8]) -> ApiError {
    match ApiBody(Bytes::from_static(body)).optional_fields::<T>() {
        Err(error) => error,
        Ok(_) => panic!("the example body is refused"),
    }
}

error_response!(
    /// 400 VALIDATION_ERROR on a route with only the two ids: a malformed id, or a request over a
    /// limit.
    BadScanRequest,
    ValidationErrorResponse,
    after_auth,
    [("malformedIds", ApiError::Validation(format!("accountGroupId {InvalidId}; scanId {InvalidId}")))]
        + over_limits(MAX_TARGET_BYTES)
);
error_response!(
    /// 400 VALIDATION_ERROR on the list: a malformed id or query parameter, or a request over a
    /// limit.
    BadListRequest,
    ValidationErrorResponse,
    after_auth,
    [
        ("malformedGroupId", ApiError::Validation(format!("accountGroupId {InvalidId}"))),
        ("badQuery", ApiError::Validation("limit must be an integer from 1 to 100".into())),
    ] + over_limits(MAX_TARGET_BYTES)
);
error_response!(
    /// 400 VALIDATION_ERROR on the change stream: a malformed id, filter or cursor, or a request
    /// over a limit.
    BadStreamRequest,
    ValidationErrorResponse,
    after_auth,
    [
        ("malformedGroupId", ApiError::Validation(format!("accountGroupId {InvalidId}"))),
        ("badFilter", ApiError::Validation(format!(
            "scanId {InvalidId}; status must be one of queued, running, completed, failed, cancelled"
        ))),
        ("unknownCursor", ApiError::Validation(error::unknown_cursor("after"))),
    ] + over_limits(MAX_STREAM_TARGET_BYTES)
);
error_response!(
    /// 400 VALIDATION_ERROR on starting a scan: a malformed id, body or Idempotency-Key, or a
    /// request over a limit.
    BadCreateRequest,
    ValidationErrorResponse,
    after_auth,
    [
        ("malformedGroupId", ApiError::Validation(format!("accountGroupId {InvalidId}"))),
        ("unexpectedBody", refused_body::<NoFields>(b"[]")),
        ("badIdempotencyKey", ApiError::Validation("Idempotency-Key must be 1 to 255 visible ASCII characters, sent once".into())),
    ] + over_limits(MAX_TARGET_BYTES)
);
error_response!(
    /// 400 VALIDATION_ERROR on a batch cancel: a malformed id or body, too many or too few ids, a
    /// repeated one, or a request over a limit.
    BadBatchCancelRequest,
    ValidationErrorResponse,
    after_auth,
    [
        ("malformedGroupId", ApiError::Validation(format!("accountGroupId {InvalidId}"))),
        ("missingBody", ApiError::Validation("request body must be a JSON object with scanIds".into())),
        ("tooManyIds", ApiError::Validation("scanIds must hold 1 to 100 ids; it holds 101".into())),
        ("malformedId", ApiError::Validation(format!("scanIds[1] {InvalidId}"))),
        ("repeatedId", ApiError::Validation("scanIds[1] repeats scanIds[0]".into())),
    ] + over_limits(MAX_TARGET_BYTES)
);
error_response!(
    /// 400 VALIDATION_ERROR on a runner's start or complete: a malformed id or body, or a request
    /// over a limit.
    BadMoveRequest,
    ValidationErrorResponse,
    after_auth,
    [
        ("malformedIds", ApiError::Validation(format!("accountGroupId {InvalidId}; scanId {InvalidId}"))),
        ("unexpectedBody", refused_body::<NoFields>(b"[]")),
        ("unknownField", refused_body::<NoFields>(br#"{"status":"completed"}"#)),
    ] + over_limits(MAX_TARGET_BYTES)
);
error_response!(
    /// 400 VALIDATION_ERROR on a runner's fail: a malformed id, body or reason, or a request over a
    /// limit.
    BadFailRequest,
    ValidationErrorResponse,
    after_auth,
    [
        ("malformedIds", ApiError::Validation(format!("accountGroupId {InvalidId}; scanId {InvalidId}"))),
        ("unexpectedBody", refused_body::<NoFields>(b"[]")),
        ("unknownField", refused_body::<FailRequest>(br#"{"status":"failed"}"#)),
        ("reasonTooLong", ApiError::Validation("reason must be 1 to 1000 characters; it is 1001".into())),
    ] + over_limits(MAX_TARGET_BYTES)
);
error_response!(
    /// 400 VALIDATION_ERROR on a route without parameters: the request is over a limit
    /// (checked before any route).
    RequestTooLarge,
    ValidationErrorResponse,
    no_headers,
    [] + over_limits(MAX_TARGET_BYTES)
);
error_response!(
    /// 401 UNAUTHORIZED.
    Unauthorized,
    ErrorResponse,
    |response: ResponseBuilder| response.header(
        "WWW-Authenticate",
        required(
            HeaderBuilder::new()
                .schema(Some(String::schema()))
                .description(Some("Always `Bearer`."))
                .example(Some("Bearer".into()))
        )
    ),
    [
        ("missingKey", ApiError::Unauthorized(AuthFailure::Missing.to_string())),
        ("invalidKey", ApiError::Unauthorized(AuthFailure::Invalid.to_string())),
    ]
);
/// A 403 for a key without any of `permissions`, as the service words it.
fn lacks(permissions: &[Permission]) -> ApiError {
    let names: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
    ApiError::Forbidden(format!(
        "API key lacks the {} permission",
        names.join(" or ")
    ))
}

/// A group other than the examples' own, which the demo's keys may use: the refusal names a group
/// the key has no access to.
fn no_group_access() -> ApiError {
    let other = AccountGroupId::parse("5f1d7a3e9c4b2a1f0e8d7c6b").expect("example id");
    ServiceError::GroupForbidden(other).into()
}

error_response!(
    /// 403 FORBIDDEN on a route that changes a scan (`signals:write`).
    Forbidden,
    ErrorResponse,
    after_auth,
    [
        ("missingPermission", lacks(&[Permission::SignalsWrite])),
        ("noGroupAccess", no_group_access()),
    ]
);
error_response!(
    /// 403 FORBIDDEN on a route that reads (`signals:read` or `signals:write`).
    ReadForbidden,
    ErrorResponse,
    after_auth,
    [
        ("missingPermission", lacks(&[Permission::SignalsRead, Permission::SignalsWrite])),
        ("noGroupAccess", no_group_access()),
    ]
);
error_response!(
    /// 403 FORBIDDEN on a runner's route (`signals:run`).
    RunnerForbidden,
    ErrorResponse,
    after_auth,
    [
        ("missingPermission", lacks(&[Permission::SignalsRun])),
        ("noGroupAccess", no_group_access()),
    ]
);
error_response!(
    /// 404 NOT_FOUND.
    NotFound,
    ErrorResponse,
    after_auth,
    [("noSuchScan", ServiceError::ScanNotFound.into())]
);
error_response!(
    /// 422 VALIDATION_ERROR: the scan is completed or failed.
    NotCancellable,
    ErrorResponse,
    after_auth,
    [
        ("completed", ApiError::NotCancellable { current: ScanStatus::Completed }),
        ("failed", ApiError::NotCancellable { current: ScanStatus::Failed }),
    ]
);
error_response!(
    /// 422 VALIDATION_ERROR on a start: the scan is not queued, or another key started it.
    NotStartable,
    ErrorResponse,
    after_auth,
    [
        ("startedByAnotherKey", ApiError::NotMovable { current: ScanStatus::Running }),
        ("cancelled", ApiError::NotMovable { current: ScanStatus::Cancelled }),
        ("completed", ApiError::NotMovable { current: ScanStatus::Completed }),
    ]
);
error_response!(
    /// 422 VALIDATION_ERROR on a complete or fail: the scan's status does not allow it, or another
    /// key started the scan or finished it.
    NotMovable,
    ErrorResponse,
    after_auth,
    [
        ("cancelled", ApiError::NotMovable { current: ScanStatus::Cancelled }),
        ("queued", ApiError::NotMovable { current: ScanStatus::Queued }),
        ("startedByAnotherKey", ApiError::NotMovable { current: ScanStatus::Running }),
    ]
);
error_response!(
    /// 422 VALIDATION_ERROR: the Idempotency-Key started a scan of another account group.
    IdempotencyKeyReused,
    ErrorResponse,
    after_auth,
    [("keyReused", ApiError::IdempotencyKeyReused)]
);
error_response!(
    /// 410 CURSOR_EXPIRED: a change stream's cursor from before changes that are no longer kept,
    /// or one that is no place in this database's change history (from before a restore).
    CursorExpired,
    ErrorResponse,
    after_auth,
    [
        ("changesNoLongerKept", ApiError::CursorExpired),
        ("notInThisHistory", ApiError::CursorForeign)
    ]
);
error_response!(
    /// 429 RATE_LIMITED.
    RateLimited,
    ErrorResponse,
    retry_after_header,
    [] + over_rates()
);
error_response!(
    /// 429 RATE_LIMITED on the change stream: [`RateLimited`]'s, or the key's streams open.
    StreamRateLimited,
    ErrorResponse,
    retry_after_header,
    [(
        "tooManyStreams",
        ApiError::RateLimited {
            limit: Limit::StreamsPerKey,
            retry_after_secs: STREAM_CAP_RETRY_SECS
        }
    )] + over_rates()
);

/// `Retry-After` beside the rate-limit headers, as every 429 sends them.
fn retry_after_header(response: ResponseBuilder) -> ResponseBuilder {
    rate_limit_headers(response, false).header(
        "Retry-After",
        required(
            HeaderBuilder::new()
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                ))
                .description(Some("Whole seconds to wait before retrying; at least 1."))
                .example(Some(1.into())),
        ),
    )
}

/// The 429s of every /v1 route: the key's rate, and the address's failed authentications.
fn over_rates() -> Vec<(&'static str, Rendered)> {
    [
        (
            "overRate",
            ApiError::RateLimited {
                limit: Limit::KeyRate,
                retry_after_secs: 1,
            },
        ),
        (
            "tooManyFailedAuthentications",
            ApiError::RateLimited {
                limit: Limit::AuthFailures,
                retry_after_secs: 3,
            },
        ),
    ]
    .into_iter()
    .map(|(name, error)| (name, rendered(error)))
    .collect()
}

error_response!(
    /// 500 INTERNAL_ERROR.
    InternalError,
    ErrorResponse,
    no_headers,
    [("unexpected", ApiError::Internal(String::new()))]
);
error_response!(
    /// 502 UPSTREAM_ERROR.
    UpstreamError,
    ErrorResponse,
    after_auth,
    [("databaseUnavailable", ApiError::Upstream(String::new()))]
);
error_response!(
    /// 503 NOT_READY, from /readyz.
    NotReady,
    ErrorResponse,
    no_headers,
    [("databaseUnavailable", ApiError::NotReady(String::new()))]
);

/// `default`, on every operation: any status the operation does not list answers the same
/// envelope, so a generated client parses it into `ErrorResponse` too. The answers of the
/// router's own fallbacks are the examples.
pub(crate) struct OtherError;

impl<'r> ToResponse<'r> for OtherError {
    fn response() -> (&'r str, RefOr<openapi::Response>) {
        let examples = vec![
            ("noSuchRoute", rendered(ApiError::no_route())),
            (
                "methodNotAllowed",
                rendered(ApiError::MethodNotAllowed(method::label(&Method::DELETE))),
            ),
        ];
        let response = described_error_response::<ErrorResponse>(
            "Any other status, as the same envelope: 404 NOT_FOUND for a path no route matches, \
             405 METHOD_NOT_ALLOWED (with `Allow`) for a known path with another method"
                .into(),
            examples,
            |response| {
                response.header(
                    "Allow",
                    HeaderBuilder::new()
                        .schema(Some(String::schema()))
                        .description(Some("On a 405: the methods the path has."))
                        .example(Some("POST".into()))
                        .build(),
                )
            },
        );
        ("OtherError", response.into())
    }
}

// ----- Headers and security, applied to the whole document -----

/// Marks a header `required` (the OpenAPI Header Object has the field; utoipa's type does not).
fn required(header: HeaderBuilder) -> Header {
    header
        .extensions(Some(Extensions::from_iter([("required", true)])))
        .build()
}

pub(super) fn request_id_header() -> Header {
    required(
        HeaderBuilder::new()
            .schema(Some(String::schema()))
            .description(Some(
                "The request's trace id, as in the body's `traceId`: the trace-id of a valid W3C \
                 `traceparent`, else a safe incoming `X-Request-Id`, else a new one.",
            ))
            .example(Some(EXAMPLE_TRACE_ID.into())),
    )
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub(super) fn rate_limit_headers(response: ResponseBuilder, always: bool) -> ResponseBuilder {
    let header = |description: &str, example: &str| {
        let header = HeaderBuilder::new()
            .schema(Some(String::schema()))
            .description(Some(description))
            .example(Some(example.into()));
        match always {
            true => required(header),
            false => header.build(),
        }
    };
    response
        .header(
            "RateLimit-Policy",
            header(
                "The key's quota: `q` requests per window of `w` seconds.",
                "\"per-key\";q=40;w=2",
            ),
        )
        .header(
            "RateLimit",
            header(
                "What is left of the key's quota: `r` requests, full again in `t` seconds.",
                "\"per-key\";r=39;t=1",
            ),
        )
}
