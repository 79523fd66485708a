//! How commands print: one JSON document per line, and times as RFC 3339 (`-` when absent).

use serde::Serialize;
use time::OffsetDateTime;

pub(super) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string(value)?;
    println!("{text}");
    Ok(())
}

pub(super) fn rfc3339(at: Option<OffsetDateTime>) -> String {
    at.and_then(|at| {
        at.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_else(|| "-".into())
}
