//! Integration tests: the real router on a real port, over real HTTP, against a real database.
//! Every test gets a fresh database of its own.

mod helpers;

mod auth;
mod cancel;
mod cli;
mod concurrency;
mod demo;
mod faults;
mod hardening;
mod lifecycle;
mod operations;
mod rate_limit;
mod reads;
mod trace_id;
