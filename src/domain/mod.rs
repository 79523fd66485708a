//! The rules and types of the service: ids, the scan state machine, keys and permissions, the
//! change feed's cursor. No I/O, and nothing from the layers above (`service`, `store`, `http`).

pub mod feed;
pub mod ids;
pub mod keys;
pub mod rfc3339;
pub mod scan;
