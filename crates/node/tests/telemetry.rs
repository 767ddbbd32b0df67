//! Installing the global subscriber, in a test binary of its own so the installed subscriber
//! (which writes straight to stderr) does not add noise to other tests.

use meridian_node::{init_tracing, LogFormat};

#[test]
fn init_twice_is_harmless() {
    init_tracing(LogFormat::Json);
    init_tracing(LogFormat::Text);
    tracing::info!("still logging");
}
