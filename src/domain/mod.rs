//! The rules of the service, free of HTTP and SQL.

pub mod feed;
pub mod ids;
pub mod key_cache;
pub mod keys;
pub mod scan;
pub mod service;
