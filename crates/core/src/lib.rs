//! Meridian's domain vocabulary, shared by every other crate: validated identifiers, sequencer
//! time, ed25519 signing with domain separation, the sequencer's event model, the ledger
//! model with its templates, the topology with time-indexed snapshots, and the messages of
//! the transaction protocol.
//!
//! This crate performs no I/O, so everything in it is deterministic and unit-testable.

pub mod crypto;
pub mod ids;
pub mod ledger;
pub mod protocol;
pub mod sequencing;
pub mod template;
pub mod time;
pub mod topology;

pub use ids::{
    CommandId, ContractId, IdError, InstanceIndex, LedgerOffset, MemberId, MessageId,
    ParticipantId, PartyId, TemplateId, TransactionId, UserId,
};
pub use time::Timestamp;
