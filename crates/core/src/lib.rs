//! Meridian's domain vocabulary, shared by every other crate: validated identifiers, sequencer
//! time, ed25519 signing with domain separation, and the sequencer's event model.
//!
//! This crate performs no I/O, so everything in it is deterministic and unit-testable.

pub mod crypto;
pub mod ids;
pub mod sequencing;
pub mod time;

pub use ids::{IdError, InstanceIndex, MemberId, MessageId};
pub use time::Timestamp;
