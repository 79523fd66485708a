//! The thinnest server that cancels a scan the way signal-scans does: bench/run.py's limit.
//!
//! `POST /v1/accounts/{group}/signals/scans/{id}/cancel` runs the service's own changing statement
//! (the guarded UPDATE with its audit row, one statement, one commit) on a pool as large as the
//! service's, and answers with the same fields. Nothing else: no auth, no rate limit, no logs, no
//! metrics, no middleware. What the service spends beyond this is its own overhead.
//!
//! Environment: DATABASE_URL (required), LISTEN_ADDR (default 127.0.0.1:8080),
//! DB_MAX_CONNECTIONS (default 10, the service's default).
//!
//! Answers 200 only when this request changed the scan, 404 when there is no such scan, and 409
//! when the scan was already past `queued`/`running`: in the benchmark every request owns a fresh
//! queued scan, so any non-2xx is a request that changed nothing, and wrk counts it.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Error, Row};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// One guarded statement per request, as the service ran it before group commit (and as the
/// thinnest server would): $1 scan id, $2 account group, $3 the new status, $4 the statuses it may
/// leave, $5 the API key id, $6 the trace id, $7 the reason (a failure's; none for a cancel). The
/// service's own statement (src/store/postgres_transition.sql) takes a batch of changes as arrays.
const CANCEL: &str = include_str!("cancel.sql");

/// The statuses a cancel may leave, as the service binds them.
const CANCELLABLE: &[&str] = &["queued", "running"];
/// The audit row's actor: fixed, since there is no authentication (the same size as the service's).
const API_KEY_ID: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_be4c);
const TRACE_ID: &str = "0000000000000000000000000000be4c";

#[tokio::main]
async fn main() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL is required");
    let listen = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let max_connections = std::env::var("DB_MAX_CONNECTIONS")
        .map(|v| v.parse().expect("DB_MAX_CONNECTIONS is a number"))
        .unwrap_or(10);
    // The service's pool settings that bear on a request: its size, and no ping before an acquire.
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .test_before_acquire(false)
        .connect(&url)
        .await
        .expect("connect to DATABASE_URL");
    let app = Router::new()
        .route(
            "/v1/accounts/{group}/signals/scans/{id}/cancel",
            post(cancel),
        )
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .expect("bind LISTEN_ADDR");
    axum::serve(listener, app).await.expect("serve");
}

async fn cancel(
    State(pool): State<PgPool>,
    Path((group, scan)): Path<(String, String)>,
) -> Response {
    let row = sqlx::query(CANCEL)
        .bind(&scan)
        .bind(&group)
        .bind("cancelled")
        .bind(CANCELLABLE)
        .bind(API_KEY_ID)
        .bind(TRACE_ID)
        .bind(None::<&str>)
        .fetch_optional(&pool)
        .await;
    match row {
        Ok(Some(row)) => answer(&row).unwrap_or_else(|error| failure(&error)),
        Ok(None) => json(
            StatusCode::NOT_FOUND,
            r#"{"error":"no such scan"}"#.to_owned(),
        ),
        Err(error) => failure(&error),
    }
}

fn answer(row: &PgRow) -> Result<Response, Error> {
    let Some(previous) = row.try_get::<Option<&str>, _>("previous_status")? else {
        return Ok(json(
            StatusCode::CONFLICT,
            r#"{"error":"not changed"}"#.to_owned(),
        ));
    };
    let id: &str = row.try_get("id")?;
    let status: &str = row.try_get("status")?;
    let cancelled_at: OffsetDateTime = row.try_get("cancelled_at")?;
    let cancelled_at = cancelled_at
        .format(&Rfc3339)
        .map_err(|e| Error::Decode(e.into()))?;
    // Ids and statuses are lowercase hex and words, and the timestamp is RFC 3339: nothing to escape.
    Ok(json(
        StatusCode::OK,
        format!(
            r#"{{"scanId":"{id}","status":"{status}","previousStatus":"{previous}","cancelledAt":"{cancelled_at}"}}"#
        ),
    ))
}

fn failure(error: &Error) -> Response {
    json(
        StatusCode::BAD_GATEWAY,
        format!(r#"{{"error":{:?}}}"#, error.to_string()),
    )
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
