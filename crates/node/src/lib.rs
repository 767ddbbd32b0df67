//! The runtime every Meridian node (sequencer, topology manager, mediator, participant) shares:
//! its TOML config loading, logging setup, stop-signal handling, readiness state, metrics
//! registry, the admin HTTP server that exposes health, status and metrics (DESIGN.md §6), the
//! gRPC server with health and reflection ([`grpc`]), the readiness-aware retry of everything
//! a node waits for ([`retry`]), the admin-token check ([`admin_token`]) and the owner-only
//! secret files it reads ([`secrets`]), and the replicated
//! lifecycle of active/passive replicas with its one vocabulary ([`replication`], over the
//! lease handling of [`replica`]). Role crates build on these so every node behaves the same
//! to operators and orchestrators; [`owner`] is the start-up check that a node's database is
//! its own. [`tls`] is the `[tls]` section and TLS on every listener and client; [`certs`]
//! writes development certificates. [`ports`] picks loopback ports for deployments launched on one machine. [`forward`]
//! publishes values that only move forward (a safe point, a ledger end) on watch channels.
//! [`runtime`] builds the process's async runtime with as many threads as it is given.

pub mod admin;
pub mod admin_token;
pub mod certs;
pub mod commit_queue;
pub mod conditions;
pub mod config;
pub mod fork;
pub mod forward;
pub mod grpc;
pub mod health;
pub mod keys;
pub mod lease_watch;
pub mod metrics;
pub mod owner;
pub mod ports;
pub mod replica;
pub mod replication;
pub mod report;
pub mod retry;
pub mod runtime;
pub mod secrets;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use admin::{
    bind, router, serve_admin, serve_admin_tls, AdminHttpAuth, AdminHttpConfig, AdminState,
    StatusSource,
};
pub use admin_token::AdminToken;
pub use conditions::Conditions;
pub use config::{load_toml, parse_toml, ConfigError};
pub use grpc::GrpcServer;
pub use health::{Health, HealthSnapshot, Readiness};
pub use metrics::{Metrics, MetricsError};
pub use retry::Retry;
pub use shutdown::shutdown_token;
pub use telemetry::{init_tracing, LogFormat};
pub use tls::{NodeTls, TlsConfig};
