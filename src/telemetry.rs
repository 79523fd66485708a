//! The tracing subscriber: human text or one JSON object per line, always on stderr so that
//! command output on stdout stays machine-readable.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber, filtered by `directives` (`RUST_LOG`, read by
/// `cli::config::log_filter`). Directives that do not parse are refused, not silently ignored.
pub fn init(format: LogFormat, directives: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(directives)
        .map_err(|error| format!("invalid RUST_LOG {directives:?}: {error}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (a full disk, a reader of the pipe gone) is lost, and
        // the service goes on. Reported, tracing-subscriber's `eprintln!` panics on the same
        // stderr, the panic hook logs through it again, and the process aborts.
        .log_internal_errors(false)
        // Colours only for a person at a terminal, never into files or collectors.
        .with_ansi(std::io::stderr().is_terminal());
    // try_init: a second call (tests that start several apps) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    // Panics go through tracing, inside the request's span (so with its trace id), instead of
    // raw text on stderr.
    // Under this crate's own target, so a RUST_LOG that keeps the service's lines
    // (`signal_scans=info`) keeps this one. When logging would drop the event (a RUST_LOG that
    // filters errors out), the default hook still prints it: a panic is never silent.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |panic| {
        if tracing::enabled!(tracing::Level::ERROR) {
            tracing::error!(panic = %panic, "panicked");
        } else {
            default_hook(panic);
        }
    }));
    Ok(())
}
