//! The participant node (DESIGN.md §4): it hosts parties, serves the Ledger API to
//! applications, and runs the participant's side of the transaction protocol — interpreting
//! commands against its active contract set, submitting confirmation requests, validating and
//! confirming requests of others (authorization, model conformance, activeness with locks),
//! committing or rolling back on the mediator's verdict, and deduplicating commands.
//!
//! From pure to effectful: [`engine`] (all protocol decisions, sans I/O, deterministic),
//! `runtime` (the single writer task that feeds the engine and persists its effects one batch
//! per database transaction, the one door of a local submission, plus time proofs and dedup
//! pruning), [`fork`] (what a participant on a forked history lists and the operator's
//! rewind), `service` (the gRPC Ledger API: admission, wire conversion through
//! `meridian_proto::convert::ledger`, the runtime's answer as a status), `replication` (active/passive replicas: what a passive replica
//! answers and reports), [`node`] (wiring, start-up order, promotion and demotion), [`config`].

pub mod config;
pub mod engine;
pub mod fork;
pub mod metrics;
pub mod node;
mod replication;
mod runtime;
mod service;
pub mod stages;

#[cfg(test)]
mod engine_tests;

pub use config::{ConfigCheckError, LimitsConfig, ParticipantConfig, ReplicationConfig};
pub use node::run;
