//! Test-only helpers shared by the workspace's integration tests: a throwaway PostgreSQL server
//! started from the distribution's binaries ([`PostgresServer`]), a guard that kills a child
//! process when a test ends however it ends ([`ChildGuard`]), [`free_port`], a log
//! subscriber for in-process tests ([`init_logging`]), a database failover played on plain
//! servers ([`failover`]), the case count of the hostile-input property tests
//! ([`hostile::hostile_cases`]), headless Chromium for browser tests ([`browser::Browser`]), and
//! callers cancelled midway with probes of what they left open in a database ([`cancel`]).
//! Nothing here is meant for production code.

pub mod browser;
pub mod cancel;
pub mod failover;
pub mod haproxy;
pub mod hostile;
mod logging;
mod process;

pub use logging::init_logging;
pub use meridian_pgserver::{ApplicationName, PostgresServer, SyncState, SynchronousStandbys};
pub use process::{free_port, ChildGuard};
