//! The body every response carries: `{"success","data","error","traceId"}`.

use serde::Serialize;

use super::trace_id::TraceId;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<T> {
    /// true exactly when the status is 2xx.
    pub success: bool,
    /// The answer on success; null on error.
    pub data: Option<T>,
    /// What went wrong; null on success.
    pub error: Option<ErrorBody>,
    /// The request's trace id, also sent as the `X-Request-Id` header.
    #[schema(value_type = String, example = "4bf92f3577b34da6a3ce929d0e0e4736")]
    pub trace_id: TraceId,
}

/// What went wrong: a stable `code`, a human `message`, and `details` saying exactly what.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable and machine-readable, e.g. `VALIDATION_ERROR`, `NOT_FOUND`.
    #[schema(example = "NOT_FOUND")]
    pub code: &'static str,
    /// The human summary of the status.
    #[schema(example = "Resource not found")]
    pub message: &'static str,
    /// Exactly what was wrong (on a 500, where the cause is logged: under this trace id).
    #[schema(example = "no such scan in this account group")]
    pub details: String,
}

impl<T: Serialize> Envelope<T> {
    pub fn success(data: T) -> Self {
        Self {
            success: true,
            data: Some(data),
            error: None,
            trace_id: TraceId::current(),
        }
    }
}

impl Envelope<()> {
    pub fn failure(error: ErrorBody) -> Self {
        Self {
            success: false,
            data: None,
            error: Some(error),
            trace_id: TraceId::current(),
        }
    }
}
