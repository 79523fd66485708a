//! The use cases, between the edges (`http`, `cli`) and the `store`: who may do what to which
//! scan, an operator's keys and scans, the key cache in front of authentication, the change
//! feed's readers, and the audit retention sweep.
//!
//! Everything here may wait on the store; nothing here knows HTTP or SQL.

pub mod feed;
mod key_cache;
mod keys;
pub mod retention;
mod scans;

pub use keys::KeyAdmin;
use std::time::Duration;

/// How long a process that changed scans waits, before it exits, for its last change
/// notifications to go out (listeners would otherwise find those changes at their next poll).
pub(crate) const HINT_FLUSH_LIMIT: Duration = Duration::from_secs(2);

pub use scans::{
    AuthFailure, BatchCancellation, CancelOutcome, Cancellation, Moved, ScanPage, ScanService,
    ServiceError, Started,
};
