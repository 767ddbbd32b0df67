//! HAProxy for the load balancer's tests: the binary, or a skip that says why — unless the
//! suite demands HAProxy (`MERIDIAN_REQUIRE_HAPROXY`, set by scripts/test.sh, which installs
//! it), where a missing HAProxy is a failure, never a silent pass.

use std::path::PathBuf;

/// The HAProxy binary; `None` (with a line on stderr) where it is missing and not required.
///
/// # Panics
/// Where it is missing and `MERIDIAN_REQUIRE_HAPROXY` is set.
pub fn binary() -> Option<PathBuf> {
    match meridian_lb::haproxy::binary() {
        Ok(path) => Some(path),
        Err(error) if std::env::var_os("MERIDIAN_REQUIRE_HAPROXY").is_some() => {
            panic!("{error}")
        }
        Err(error) => {
            eprintln!("skipped: {error}");
            None
        }
    }
}
