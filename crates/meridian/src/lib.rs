//! Library half of the `meridian` binary: the pieces that integration tests drive too —
//! launching node processes and the benchmarks. `main.rs` only parses arguments and dispatches.

pub mod bench;
pub mod launch;
