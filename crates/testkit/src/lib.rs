//! Test-only helpers shared by the workspace's integration tests: a throwaway PostgreSQL server
//! started from the distribution's binaries ([`PostgresServer`]), a guard that kills a child
//! process when a test ends however it ends ([`ChildGuard`]), and [`free_port`]. Nothing here is
//! meant for production code.

mod postgres;
mod process;

pub use postgres::PostgresServer;
pub use process::{free_port, ChildGuard};
