//! Everything the manager does at the sequencer: registering members with an owner-signed
//! transaction, sending a topology transaction under its deterministic message id, and — when
//! a send's outcome is unknown and its deadline has passed — finding out from the manager's own
//! event stream whether it was sequenced.
//!
//! Why the stream: the sequencer answers a re-send of a message id from its deduplication
//! entries only until shortly after the original max sequencing time. After that, the only
//! authoritative record is the event itself. The manager is a recipient of every topology
//! transaction it sends, so its own stream holds them all; a time proof sequenced after the
//! deadline marks where the search can stop, because nothing with that deadline can be
//! sequenced later. The same stream, resumed after the last change the manager published,
//! tells whether the sequencer still has that change: one that lost it (a database failover to
//! a standby that had not replayed it) refuses the resumption, and that is a fork.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use meridian_client::{ClientError, SendReceipt, SequencerClient};
use meridian_core::protocol::ProtocolMessage;
use meridian_core::sequencing::{Envelope, ForkError, Submission};
use meridian_core::topology::SignedTopologyTransaction;
use meridian_core::{MemberId, MessageId, Timestamp};

/// How long a topology send may take to be sequenced.
pub const SEND_WINDOW: Duration = Duration::from_secs(30);

/// Bound on reading the own stream back when recovering a send's outcome.
const SCAN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Sequencer(#[from] ClientError),
    #[error("{0}")]
    Inconclusive(String),
}

/// The deterministic message id of serial `serial`: a re-send after a crash reuses it, so the
/// sequencer deduplicates it instead of sequencing the transaction twice.
pub fn message_id(serial: u64) -> MessageId {
    MessageId::new(format!("topology-{serial}")).expect("topology-<digits> is a valid message id")
}

#[derive(Debug, Clone)]
pub struct Publisher {
    endpoints: Vec<String>,
    client: SequencerClient,
}

impl Publisher {
    pub fn new(endpoints: Vec<String>, client: SequencerClient) -> Self {
        Self { endpoints, client }
    }

    fn member(&self) -> &MemberId {
        self.client.member()
    }

    /// Registers the member a transaction admits (idempotent at the sequencer).
    pub async fn register(&self, signed: &SignedTopologyTransaction) -> Result<bool, ClientError> {
        meridian_client::register_member_with_topology(&self.endpoints, signed).await
    }

    /// Sends serial `serial` to `recipients` in one envelope.
    pub async fn send(
        &self,
        serial: u64,
        signed: &SignedTopologyTransaction,
        recipients: &BTreeSet<MemberId>,
        max_sequencing_time: Timestamp,
    ) -> Result<SendReceipt, ClientError> {
        self.client
            .send(Submission {
                sender: self.member().clone(),
                message_id: message_id(serial),
                envelopes: vec![Envelope {
                    recipients: recipients.iter().cloned().collect(),
                    payload: ProtocolMessage::Topology(signed.clone()).encode(),
                }],
                max_sequencing_time,
            })
            .await
    }

    /// Whether serial `serial`, sent with `deadline`, was sequenced, and when. Only conclusive
    /// once the sequencer's clock is past `deadline`; before that it is an `Inconclusive` error.
    pub async fn sequenced_at(
        &self,
        serial: u64,
        deadline: Timestamp,
    ) -> Result<Option<Timestamp>, PublishError> {
        let proof = self.time_proof().await?;
        if proof <= deadline {
            return Err(PublishError::Inconclusive(format!(
                "the sequencer's time ({proof}) has not passed the send's deadline ({deadline}) yet"
            )));
        }
        let wanted = message_id(serial);
        let scan = async {
            let mut events = self.client.subscribe(None);
            while let Some(event) = events.next().await {
                let event = event?;
                if event.message_id.as_ref() == Some(&wanted) && event.sender == *self.member() {
                    return Ok(Some(event.timestamp));
                }
                if event.timestamp >= proof {
                    return Ok(None);
                }
            }
            Err(PublishError::Inconclusive(
                "the own event stream ended before the time proof".to_owned(),
            ))
        };
        tokio::time::timeout(SCAN_TIMEOUT, scan)
            .await
            .map_err(|_| scan_timed_out(proof))?
    }

    /// Whether the sequencer still serves the history this manager published, whose last
    /// change took effect at `last_published`: the own stream resumed after it must be
    /// accepted and reach a fresh time proof, every event following the one before (the
    /// client checks the `previous_timestamp` chain). `Ok(Err(fork))` when the sequencer lost
    /// that change or serves something else after it; `Err` when it could not tell yet.
    pub async fn confirm_history(
        &self,
        last_published: Timestamp,
    ) -> Result<Result<(), ForkError>, PublishError> {
        let proof = self.time_proof().await?;
        let scan = async {
            let mut events = self.client.subscribe(Some(last_published));
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) if event.timestamp >= proof => return Ok(Ok(())),
                    Ok(_) => {}
                    Err(ClientError::Fork(fork)) => return Ok(Err(fork)),
                    Err(error) => return Err(error.into()),
                }
            }
            Err(PublishError::Inconclusive(
                "the own event stream ended before the time proof".to_owned(),
            ))
        };
        tokio::time::timeout(SCAN_TIMEOUT, scan)
            .await
            .map_err(|_| scan_timed_out(proof))?
    }

    /// Sends a time proof to the manager itself; returns its sequencing time, which the own
    /// stream reaches once everything sequenced before it was delivered.
    async fn time_proof(&self) -> Result<Timestamp, ClientError> {
        let now = Timestamp::now();
        Ok(self
            .client
            .send(Submission {
                sender: self.member().clone(),
                message_id: MessageId::new(format!("time-proof-{}", now.as_micros()))
                    .expect("time-proof-<digits> is a valid message id"),
                envelopes: vec![Envelope {
                    recipients: vec![self.member().clone()],
                    payload: ProtocolMessage::TimeProof.encode(),
                }],
                max_sequencing_time: now.saturating_add(SEND_WINDOW),
            })
            .await?
            .timestamp)
    }
}

fn scan_timed_out(proof: Timestamp) -> PublishError {
    PublishError::Inconclusive(format!(
        "reading the own event stream up to {proof} took over {} s",
        SCAN_TIMEOUT.as_secs()
    ))
}
