//! The global load balancer in front of a deployment: one address per participant (and one
//! for the sequencer instances) instead of every replica's endpoint in every client.
//!
//! [`plan`] is the sans-I/O half: a [`plan::LbPlan`] says which frontends exist, which
//! replicas sit behind each, and which region is active; [`plan::render`] turns it into an
//! HAProxy configuration. [`haproxy`] is the process half: find the binary, check a
//! configuration (`haproxy -c`), start HAProxy in master-worker mode, reload it without
//! dropping connections, and read the servers' states from its runtime socket. The lab and the
//! controller build plans from a deployment description; this crate knows nothing of it.

pub mod haproxy;
pub mod plan;

pub use haproxy::{Haproxy, HaproxyFiles, LbError, ServerState};
pub use plan::{Frontend, HealthChecks, LbPlan, LbTls, PlanError, Server, Traffic};
