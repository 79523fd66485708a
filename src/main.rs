use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    signal_scans::cli::main().await
}
