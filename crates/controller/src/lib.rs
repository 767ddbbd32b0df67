//! The controller: the orchestration the seed deployment leaves to "an orchestration tool".
//! It supervises a deployment's processes (probes with rise/fall thresholds, restarts with
//! backoff, crash loops marked failed), starts a cold standby when a node has no replica left
//! that could serve, and moves whole regions or single components to another region as a
//! *plan* of explicit, idempotent steps that waits for an operator's approval — with dwell
//! times, a cooldown and an hourly cap against flapping.
//!
//! The controller decides; it is never on the transaction path. The replicas' own lease still
//! does every warm failover, and a deployment keeps serving while no controller runs.
//!
//! Layout, pure to effectful:
//! - [`model`]: the deployment as the controller sees it (replicas with their placement and
//!   what the last probe said, database servers with role and lag) — plain data;
//! - [`plan`]: plans, steps, approvals — plain data, persisted as JSON;
//! - [`settings`]: the `[controller]` timings and limits;
//! - [`engine`]: every decision, sans I/O: inputs in, effects out;
//! - [`actuator`]: the trait the runtime does its I/O through (processes, probes, databases);
//! - [`runtime`]: the loop that runs the engine against an actuator and the controller
//!   store, under a lease shared by the controller's replicas;
//! - [`api`]: the JSON of the HTTP API, the CLI and the dashboard; [`handle`]: how the HTTP
//!   server talks to the running controller;
//! - [`http`]: the HTTP API and the live dashboard over a handle; [`client`]: the API's
//!   client, for `meridian ctl`, the drills and the tests.

pub mod actuator;
pub mod api;
pub mod client;
pub mod engine;
pub mod handle;
pub mod http;
pub mod model;
pub mod plan;
pub mod runtime;
pub mod settings;
