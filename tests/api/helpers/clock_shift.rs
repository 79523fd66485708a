//! A wall clock off by some seconds for a child process: `fixtures/clock_shift.c`, built once per
//! test run with the C compiler Rust links with (`$CC`, else `cc`), and loaded into the child with
//! `LD_PRELOAD`.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The environment that runs a child's wall clock `seconds` off the machine's.
pub fn env(seconds: i64) -> [(&'static str, String); 2] {
    [
        ("LD_PRELOAD", library().display().to_string()),
        ("CLOCK_SHIFT_SECS", seconds.to_string()),
    ]
}

/// The library, built and seen to work: a test whose shift did not take would prove nothing.
fn library() -> &'static PathBuf {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        let source = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/api/fixtures/clock_shift.c"
        );
        let library = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("clock_shift-{}.so", std::process::id()));
        let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let built = std::process::Command::new(&compiler)
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&library)
            .arg(source)
            .arg("-ldl")
            .status()
            .unwrap_or_else(|error| panic!("{compiler} runs (Rust links with it): {error}"));
        assert!(built.success(), "{source} builds");

        let seconds_now = |shift: Option<&str>| -> i64 {
            let mut date = std::process::Command::new("date");
            date.arg("+%s");
            if let Some(shift) = shift {
                date.env("LD_PRELOAD", &library)
                    .env("CLOCK_SHIFT_SECS", shift);
            }
            let output = date.output().expect("date runs");
            String::from_utf8(output.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let shifted = seconds_now(Some("1000000")) - seconds_now(None);
        assert!(
            (999_990..=1_000_000).contains(&shifted),
            "the library shifts a child's clock: {shifted} s"
        );
        library
    })
}
