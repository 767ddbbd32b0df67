//! The one error type of the sequencer client. Its variants separate what a caller must
//! handle differently: a definite answer from the sequencer (do not retry), an outage the
//! client already retried (the outcome of a send is unknown; resending the same message id is
//! safe), a refused identity (configuration problem), and a fork (stop processing, raise an
//! alarm).

use meridian_core::sequencing::ForkError;

/// Which kind of server a client talked to, so its errors name the right one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Sequencer,
    /// A participant's Ledger API.
    Participant,
    TopologyManager,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Peer::Sequencer => "sequencer",
            Peer::Participant => "participant",
            Peer::TopologyManager => "topology manager",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server (`peer`) could not be reached, or kept answering with transient errors, for
    /// `attempts` consecutive attempts spaced by the configured backoff. For a send the outcome
    /// is unknown: resend with the same message id to learn it (the sequencer deduplicates).
    #[error("{peer} at {endpoint} unavailable after {attempts} attempts: {last_error}")]
    Unavailable {
        peer: Peer,
        endpoint: String,
        attempts: u32,
        last_error: String,
    },
    /// The sequencer's definite answer, for example `InvalidArgument` for a malformed
    /// submission or `NotFound` for an unknown recipient. Retrying the same request is
    /// pointless.
    #[error("request rejected ({code:?}): {message}")]
    Rejected { code: tonic::Code, message: String },
    /// The sequencer refused to authenticate this member: it is not registered, or the key
    /// does not match the registered one, or a freshly issued token was refused at once.
    #[error("authentication refused: {0}")]
    Unauthenticated(String),
    /// The delivered history is inconsistent with what was delivered before. The subscription
    /// has ended; the member must stop processing and raise an alarm.
    #[error(transparent)]
    Fork(#[from] ForkError),
    /// The sequencer sent something that does not follow the protocol (a malformed event,
    /// an empty token, a send response without timestamp).
    #[error("protocol violation by the sequencer: {0}")]
    Protocol(String),
    /// A participant or the topology manager sent an answer that does not follow its API.
    #[error("invalid answer from the {peer}: {detail}")]
    InvalidAnswer { peer: Peer, detail: String },
    /// The topology history does not verify against the configured `owner_public_key`: the
    /// key is not the synchronizer owner's (or the manager belongs to another synchronizer).
    #[error("the topology manager's history is not signed by owner_public_key {owner}: {detail}; set owner_public_key to the synchronizer owner's public key")]
    OwnerKeyMismatch { owner: String, detail: String },
    /// A send's `max_sequencing_time` passed while retrying transient errors, before any
    /// definite answer. The submission can no longer be sequenced if it was not already; its
    /// outcome is unknown to the client.
    #[error("gave up sending: max sequencing time passed without a definite answer (last error: {last_error})")]
    Timeout { last_error: String },
    /// The client configuration cannot work, e.g. an endpoint that is not an `http://` URI.
    #[error("invalid sequencer client configuration: {0}")]
    InvalidConfig(String),
}

/// Refuses an empty endpoint list up front: with no endpoint, every retry loop would have
/// nothing to try and the failure would surface later as a confusing connection error.
pub(crate) fn require_endpoints(endpoints: &[String], message: &str) -> Result<(), ClientError> {
    if endpoints.is_empty() {
        return Err(ClientError::InvalidConfig(message.to_owned()));
    }
    Ok(())
}
