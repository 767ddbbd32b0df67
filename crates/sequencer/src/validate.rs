//! Checks a submission against the sender's session, the member directory and the limits,
//! before it reaches the writer. Pure: the directory is passed in, time is an argument.
//! Everything refused here leaves the store untouched.

use meridian_core::sequencing::Submission;
use meridian_core::{MemberId, Timestamp};
use meridian_proto::{convert, v1};
use meridian_store::MemberSeq;
use prost::Message;

use crate::engine::ValidatedSubmission;
use crate::error::SendError;

/// Limits a submission must respect.
#[derive(Debug, Clone, Copy)]
pub struct SubmissionLimits {
    pub max_request_bytes: usize,
    /// Upper bound on envelopes per submission; keeps per-event decode work bounded.
    pub max_envelopes: usize,
}

/// Validates `submission` from the authenticated `session_member`. `lookup` resolves member
/// ids to their store ids (None: not registered).
pub fn validate_submission(
    submission: Submission,
    session_member: &MemberId,
    lookup: impl Fn(&MemberId) -> Option<MemberSeq>,
    limits: &SubmissionLimits,
    now: Timestamp,
) -> Result<ValidatedSubmission, SendError> {
    if &submission.sender != session_member {
        return Err(SendError::SenderMismatch {
            session_member: session_member.clone(),
            sender: submission.sender,
        });
    }
    let sender = lookup(&submission.sender)
        .ok_or_else(|| SendError::UnknownSender(submission.sender.clone()))?;
    if submission.envelopes.is_empty() {
        return Err(SendError::EmptyBatch);
    }
    if submission.envelopes.len() > limits.max_envelopes {
        return Err(SendError::TooManyEnvelopes {
            count: submission.envelopes.len(),
            limit: limits.max_envelopes,
        });
    }
    let size_bytes = submission.size_bytes();
    if size_bytes > limits.max_request_bytes {
        return Err(SendError::TooLarge {
            size_bytes,
            limit_bytes: limits.max_request_bytes,
        });
    }
    if submission.max_sequencing_time <= now {
        return Err(SendError::MaxSequencingTimePassed {
            max_sequencing_time: submission.max_sequencing_time,
            now,
        });
    }
    let mut recipients = Vec::new();
    for (index, envelope) in submission.envelopes.iter().enumerate() {
        if envelope.recipients.is_empty() {
            return Err(SendError::NoRecipients { envelope: index });
        }
        for recipient in &envelope.recipients {
            let seq =
                lookup(recipient).ok_or_else(|| SendError::UnknownRecipient(recipient.clone()))?;
            recipients.push(seq);
        }
    }
    recipients.sort_unstable();
    recipients.dedup();
    let batch = v1::Batch {
        envelopes: submission
            .envelopes
            .into_iter()
            .map(convert::envelope_to_wire)
            .collect(),
    }
    .encode_to_vec();
    Ok(ValidatedSubmission {
        sender,
        message_id: submission.message_id,
        max_sequencing_time: submission.max_sequencing_time,
        recipients,
        batch,
    })
}

#[cfg(test)]
mod tests {
    use meridian_core::sequencing::Envelope;
    use meridian_core::MessageId;

    use super::*;

    const LIMITS: SubmissionLimits = SubmissionLimits {
        max_request_bytes: 100,
        max_envelopes: 4,
    };

    fn member(id: &str) -> MemberId {
        MemberId::new(id).unwrap()
    }

    fn lookup(id: &MemberId) -> Option<MemberSeq> {
        match id.as_str() {
            "alice" => Some(MemberSeq(1)),
            "bob" => Some(MemberSeq(2)),
            _ => None,
        }
    }

    fn submission(recipients: &[&str], payload_len: usize) -> Submission {
        Submission {
            sender: member("alice"),
            message_id: MessageId::new("m1").unwrap(),
            envelopes: vec![Envelope {
                recipients: recipients.iter().map(|r| member(r)).collect(),
                payload: vec![7; payload_len],
            }],
            max_sequencing_time: Timestamp::from_micros(1_000),
        }
    }

    fn check(s: Submission) -> Result<ValidatedSubmission, SendError> {
        validate_submission(
            s,
            &member("alice"),
            lookup,
            &LIMITS,
            Timestamp::from_micros(10),
        )
    }

    #[test]
    fn accepts_and_dedups_recipients() {
        let mut s = submission(&["bob", "alice"], 3);
        s.envelopes.push(Envelope {
            recipients: vec![member("bob")],
            payload: vec![],
        });
        let v = check(s).unwrap();
        assert_eq!(v.recipients, vec![MemberSeq(1), MemberSeq(2)]);
        let batch = v1::Batch::decode(v.batch.as_slice()).unwrap();
        assert_eq!(batch.envelopes.len(), 2);
    }

    #[test]
    fn refuses_bad_input_with_precise_errors() {
        assert!(matches!(
            check(submission(&["carol"], 1)),
            Err(SendError::UnknownRecipient(m)) if m.as_str() == "carol"
        ));
        let mut empty = submission(&["bob"], 1);
        empty.envelopes.clear();
        assert_eq!(check(empty), Err(SendError::EmptyBatch));
        assert_eq!(
            check(submission(&[], 1)),
            Err(SendError::NoRecipients { envelope: 0 })
        );
        assert!(matches!(
            check(submission(&["bob"], 200)),
            Err(SendError::TooLarge {
                limit_bytes: 100,
                ..
            })
        ));
        let mut late = submission(&["bob"], 1);
        late.max_sequencing_time = Timestamp::from_micros(5);
        assert!(matches!(
            check(late),
            Err(SendError::MaxSequencingTimePassed { .. })
        ));
        let mut impostor = submission(&["bob"], 1);
        impostor.sender = member("bob");
        assert!(matches!(
            check(impostor),
            Err(SendError::SenderMismatch { .. })
        ));
        let mut many = submission(&["bob"], 1);
        many.envelopes = vec![many.envelopes[0].clone(); 5];
        assert!(matches!(
            check(many),
            Err(SendError::TooManyEnvelopes { count: 5, limit: 4 })
        ));
    }

    #[test]
    fn refuses_unregistered_sender() {
        let mut s = submission(&["bob"], 1);
        s.sender = member("mallory");
        let result = validate_submission(
            s,
            &member("mallory"),
            lookup,
            &LIMITS,
            Timestamp::from_micros(10),
        );
        assert!(matches!(result, Err(SendError::UnknownSender(_))));
    }
}
