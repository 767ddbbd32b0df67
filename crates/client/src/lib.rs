//! Clients of Meridian's APIs. The main one is [`SequencerClient`], which every synchronizer
//! member uses to authenticate to a sequencer (one or several active-active instances), send
//! submissions, and subscribe to its events with fork detection and transparent reconnects and
//! failover. All retrying is bounded by a [`Backoff`].

pub mod backoff;
pub mod error;
pub mod ledger;
pub mod sequencer;
pub mod tls;
pub mod topology;

pub use backoff::{Backoff, Delays};
pub use error::ClientError;
pub use ledger::{Committed, LedgerClient, SubmitOutcome};
pub use sequencer::{
    register_member, register_member_with_topology, SendReceipt, SequencerClient,
    SequencerClientConfig, Subscription, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_STALL_TIMEOUT, ENDPOINT_COOLDOWN, FAILBACK_PROBE_INTERVAL, SUBSCRIPTION_BUFFER,
};
pub use tls::{ClientIdentity, ClientTls};
