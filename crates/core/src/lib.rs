//! Meridian's domain vocabulary, shared by every other crate: validated identifiers, sequencer
//! time, ed25519 signing with domain separation (and one signature over a group of messages,
//! [`signed_batch`]), the sequencer's event model, the ledger
//! model with its templates, the topology with time-indexed snapshots, the synchronizer's id
//! (a fingerprint of its owner's key), the messages of the transaction protocol, and the retry
//! [`backoff`] schedule every client and node uses.
//!
//! This crate performs no I/O, so everything in it is deterministic and unit-testable.

pub mod backoff;
pub mod coalesce;
pub mod crypto;
pub mod ids;
pub mod ledger;
pub mod placement;
pub mod protocol;
pub mod sequencing;
pub mod signed_batch;
pub mod synchronizer;
pub mod template;
pub mod time;
pub mod topology;

pub use backoff::Backoff;
pub use ids::{
    CommandId, ContractId, IdError, InstanceIndex, LedgerOffset, MemberId, MessageId,
    ParticipantId, PartyId, TemplateId, TransactionId, UserId,
};
pub use synchronizer::SynchronizerId;
pub use time::Timestamp;
