//! SIGTERM cancels the shutdown token. A test binary of its own: it sends a real signal to its
//! own process, which must not reach tests that did not install a handler.

#![cfg(unix)]

use std::time::Duration;

#[tokio::test]
async fn sigterm_cancels_the_token() {
    let token = meridian_node::shutdown_token();
    assert!(!token.is_cancelled());
    // The handler is installed by the time shutdown_token returns, so this signal is caught
    // rather than killing the test process.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(10), token.cancelled())
        .await
        .expect("token cancelled after SIGTERM");
}
