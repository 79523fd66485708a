//! A wall clock off by some seconds for a child process: `fixtures/clock_shift.c`, built once per
//! test run with the C compiler Rust links with, and loaded into the child with `LD_PRELOAD`.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The environment that runs a child's wall clock `seconds` off the machine's.
pub fn env(seconds: i64) -> [(&'static str, String); 2] {
    [
        ("LD_PRELOAD", library().display().to_string()),
        ("CLOCK_SHIFT_SECS", seconds.to_string()),
    ]
}

fn library() -> &'static PathBuf {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        let source = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/api/fixtures/clock_shift.c"
        );
        let library = std::env::temp_dir().join(format!("clock_shift-{}.so", std::process::id()));
        let built = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&library)
            .arg(source)
            .arg("-ldl")
            .status()
            .expect("cc runs (Rust links with it)");
        assert!(built.success(), "{source} builds");
        library
    })
}
