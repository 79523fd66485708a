//! signal-scans: cancel asynchronous signal scans over a small, strict HTTP API.
//!
//! Layers, each depending only on those below it: `http` and `cli` (the edges) → `service` (the
//! use cases) → `store` (all SQL) → `domain` (rules and types, no I/O). `app` wires them once,
//! `cli::config` reads the settings. `docs/architecture.md` draws a request's path through them.

pub mod app;
pub mod cli;
pub mod domain;
pub mod http;
pub mod secret_url;
pub mod service;
pub mod store;
pub mod telemetry;
