//! Integration tests: the real router on a real port, over real HTTP, against a real database.
//! Every test gets a fresh database of its own.

mod helpers;

mod auth;
mod cancel;
mod changes;
mod cli;
mod concurrency;
mod create;
mod demo;
mod docs;
mod faults;
mod feed;
mod fuzz;
mod hardening;
mod hostile;
mod key_bootstrap;
mod key_cache;
mod lifecycle;
mod openapi;
mod operations;
mod rate_limit;
mod reads;
mod runner_cli;
mod runners;
mod shared_limits;
mod trace_id;
