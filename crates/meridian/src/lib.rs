//! Library half of the `meridian` binary: the pieces that integration tests drive too —
//! launching node processes, whole deployments, the IOU workload with its audit, and the
//! benchmarks. `main.rs` only parses arguments and dispatches.

pub mod admin;
pub mod bench;
pub mod demo;
pub mod deployment;
pub mod drill;
pub mod launch;
pub mod workload;
