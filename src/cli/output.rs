//! How commands print: lines on stdout through `out!`, one JSON document per line, and times as
//! RFC 3339 (`-` when absent).

use std::fmt;
use std::io::Write as _;

use serde::Serialize;
use time::OffsetDateTime;

/// `println!` for what a command prints: a reader that went away (`| head`) ends the command
/// quietly, as it ends any Unix tool, where `println!` panicked and a watch printed on into the
/// void for good.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write_line(format_args!($($arg)*))
    };
}

/// Writes one line to stdout at once. Exits 0 when the reader is gone (nobody is left to tell),
/// and 1, saying why on stderr, when stdout cannot be written otherwise (a full disk).
pub(super) fn write_line(line: fmt::Arguments<'_>) {
    match try_write_line(line) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("error: cannot write to standard output: {error}");
            std::process::exit(1);
        }
    }
}

/// Writes one line to stdout at once, and says whether it could: for a line whose loss the caller
/// handles itself (a key's only secret; the demo's instructions, which must not stop the service).
pub(super) fn try_write_line(line: fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").and_then(|()| stdout.flush())
}

pub(super) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string(value)?;
    out!("{text}");
    Ok(())
}

pub(super) fn rfc3339(at: Option<OffsetDateTime>) -> String {
    at.map_or_else(|| "-".into(), crate::domain::rfc3339::text)
}
