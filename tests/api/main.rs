//! Integration tests: the real router on a real port, over real HTTP, against a real database.
//! Every test gets a fresh database of its own. One file per feature:
//!
//! | file | feature |
//! |---|---|
//! | `auth.rs` | keys, permissions, account-group access and tenant isolation, the order of checks |
//! | `cancel.rs` | the cancel route's outcomes, ids, unknown routes and methods |
//! | `changes/` | the change stream (`GET …/scans/changes`); its `mod.rs` lists a file per job |
//! | `cli.rs`, `key_bootstrap.rs` | the binary's commands (keys, scans, migrations, bootstrap) |
//! | `create.rs` | starting a scan (`POST …/signals/scans`), idempotent replays |
//! | `connections.rs` | the connection layer against hostile clients (HTTP/1.1 and HTTP/2) |
//! | `database_outage.rs` | the database cut, stalled, locked, exhausted or out of reach |
//! | `demo.rs`, `docs.rs`, `openapi.rs` | `serve --demo`, `/docs`, `/openapi.json` |
//! | `feed.rs` | the change feed behind streams and `scans watch` (readers, publisher, migration) |
//! | `fuzz.rs` | hostile requests always get a documented envelope |
//! | `key_cache.rs` | the key cache's hot path and revocation across instances |
//! | `observability.rs` | logs and metrics of the real binary |
//! | `races.rs` | concurrent cancels, cancels racing completions |
//! | `rate_limit.rs`, `shared_limits.rs` | per-key and per-address limits, in process and through Redis |
//! | `reads.rs` | one scan, the list, the audit trail |
//! | `runners.rs`, `runner_cli.rs` | a runner's moves (start, complete, fail) over HTTP and the CLI |
//! | `request_limits.rs` | request size limits, the request deadline, a panicking handler |
//! | `shutdown.rs` | draining in-flight requests, in process and under SIGTERM |
//! | `state_machine.rs` | every move the scan state machine allows or refuses |
//! | `tenant_cost.rs` | a tenant pays only for its own history: group-scoped replays, audit retention, bounded error details, `nosniff` |
//! | `trace_id.rs` | trace ids in answers and the audit trail |

mod helpers;

mod auth;
mod batch_cancel;
mod cancel;
mod changes;
mod cli;
mod connections;
mod create;
mod database_outage;
mod demo;
mod docs;
mod feed;
mod fuzz;
mod key_bootstrap;
mod key_cache;
mod observability;
mod openapi;
mod races;
mod rate_limit;
mod reads;
mod request_limits;
mod runner_cli;
mod runners;
mod shared_limits;
mod shutdown;
mod state_machine;
mod tenant_cost;
mod trace_id;
