//! The mediator (DESIGN.md §4, steps 3–4): it collects the confirmation responses to each
//! request and sends a signed verdict to all informee participants — approve when every
//! confirming party approved, reject on any rejection, reject with TIMEOUT once sequencer time
//! passes the request's deadline.
//!
//! From pure to effectful: `engine` (the verdict state machine, sans I/O), `persist` (engine
//! state changes to and from store rows), `config`, `metrics`, `runtime` (the event loop:
//! subscription, batched persistence, verdict sending, time proofs) and `node` (the wiring:
//! store, topology, sequencer client, admin HTTP, and the start-up order). Its state is
//! persisted with a checkpoint, so a restarted mediator finishes its in-flight requests.
//! `node` runs the same start as a promotion of a passive replica under the shared role loop
//! of [`meridian_node::replication`] (DESIGN.md §5), so a promoted mediator finishes the
//! in-flight requests of the one it replaces.

pub mod config;
pub mod engine;
pub mod metrics;
pub mod node;
pub mod persist;
mod runtime;

pub use config::{ConfigCheckError, MediatorConfig};
pub use engine::{Effect, Ignored, MediatorEngine, RestoredRequest, StateChange};
pub use node::run;
pub use runtime::MAX_EVENTS_PER_COMMIT;
