//! The `signal-scans` binary: everything it does is in the library, starting at `cli::main`.

use std::process::ExitCode;

fn main() -> ExitCode {
    signal_scans::cli::main()
}
