//! The use cases, between the edges (`http`, `cli`) and the `store`: who may do what to which
//! scan, the key cache in front of authentication, and the change feed's readers.
//!
//! Everything here may wait on the store; nothing here knows HTTP or SQL.

pub mod feed;
mod key_cache;
mod scans;

pub use scans::{AuthFailure, Cancellation, ScanPage, ScanService, ServiceError};
