//! Test-only helpers shared by the workspace's integration tests: a throwaway PostgreSQL server
//! started from the distribution's binaries ([`PostgresServer`]), a guard that kills a child
//! process when a test ends however it ends ([`ChildGuard`]), [`free_port`], and a log
//! subscriber for in-process tests ([`init_logging`]). Nothing here is meant for production
//! code.

mod logging;
mod process;

pub use logging::init_logging;
pub use meridian_pgserver::PostgresServer;
pub use process::{free_port, ChildGuard};
