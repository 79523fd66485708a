//! signal-scans: cancel asynchronous signal scans over a small, strict HTTP API.
//!
//! A request travels `http` (trace id, auth, rate limit, handler) → `domain` (the rules) →
//! `store` (one guarded SQL statement), and every outcome comes back as the documented envelope.

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod http;
pub mod secret_url;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
