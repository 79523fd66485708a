//! The body every response carries: `{"success","data","error","traceId"}`.

use serde::Serialize;

use super::trace_id::TraceId;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<T> {
    pub success: bool,
    pub data: Option<T>,
    pub error: Option<ErrorBody>,
    pub trace_id: TraceId,
}

/// What went wrong: a stable `code`, a human `message`, and `details` saying exactly what.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: &'static str,
    pub details: Option<String>,
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
