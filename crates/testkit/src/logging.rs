//! Logs for in-process tests. Nodes that run inside a test process log through `tracing`; with
//! no subscriber those lines vanish, and a failure seen only in CI leaves nothing to read. The
//! subscriber writes through the test harness's capture, so the lines show only with a
//! failing test's output.

/// Installs the test log subscriber once per process: `RUST_LOG` if set, else `info`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second call (another test in the same process) finds the subscriber already set.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
