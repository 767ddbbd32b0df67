//! Why a send failed, and how each reason reaches the client as a gRPC status. Every variant
//! is a definite answer ("nothing was sequenced") except `Unavailable`, after which the client
//! retries with the same message id and deduplication makes that safe.

use meridian_core::{MemberId, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("invalid submission: {0}")]
    Malformed(String),
    #[error("session belongs to {session_member} but the submission's sender is {sender}")]
    SenderMismatch {
        session_member: MemberId,
        sender: MemberId,
    },
    #[error("sender {0} is not a registered member")]
    UnknownSender(MemberId),
    #[error("the batch is empty: a submission needs at least one envelope")]
    EmptyBatch,
    #[error("envelope {envelope} has no recipients")]
    NoRecipients { envelope: usize },
    #[error("unknown recipient {0}: not a registered member")]
    UnknownRecipient(MemberId),
    #[error("submission has {count} envelopes; the limit is {limit}")]
    TooManyEnvelopes { count: usize, limit: usize },
    #[error("submission is {size_bytes} bytes; the limit (max_request_bytes) is {limit_bytes}")]
    TooLarge {
        size_bytes: usize,
        limit_bytes: usize,
    },
    #[error("max sequencing time {max_sequencing_time} is already past (sequencer time {now})")]
    MaxSequencingTimePassed {
        max_sequencing_time: Timestamp,
        now: Timestamp,
    },
    #[error(
        "not sequenced: the next timestamp {would_be} is after the max sequencing time \
         {max_sequencing_time}"
    )]
    MaxSequencingTimeExceeded {
        max_sequencing_time: Timestamp,
        would_be: Timestamp,
    },
    #[error("the sequencer is overloaded: {queued} submissions queued (the limit); retry later")]
    Overloaded { queued: usize },
    #[error("the sequencer cannot sequence right now: {0}; retry with the same message id")]
    Unavailable(String),
}

impl From<SendError> for tonic::Status {
    fn from(error: SendError) -> Self {
        let message = error.to_string();
        match error {
            SendError::SenderMismatch { .. } | SendError::UnknownSender(_) => {
                tonic::Status::permission_denied(message)
            }
            SendError::Malformed(_)
            | SendError::EmptyBatch
            | SendError::NoRecipients { .. }
            | SendError::UnknownRecipient(_)
            | SendError::TooManyEnvelopes { .. }
            | SendError::TooLarge { .. }
            | SendError::MaxSequencingTimePassed { .. } => tonic::Status::invalid_argument(message),
            SendError::MaxSequencingTimeExceeded { .. } => {
                tonic::Status::failed_precondition(message)
            }
            SendError::Overloaded { .. } => tonic::Status::resource_exhausted(message),
            SendError::Unavailable(_) => tonic::Status::unavailable(message),
        }
    }
}
