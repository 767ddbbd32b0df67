//! The sequencer API's submissions and sequenced events, to and from their wire messages.

use meridian_core::sequencing::{Envelope, ForkError, SequencedEvent, Submission};
use meridian_core::{MessageId, Timestamp};

use super::{id, member_id, WireError};
use crate::v1;

pub fn envelope_from_wire(wire: v1::Envelope) -> Result<Envelope, WireError> {
    let recipients = wire
        .recipients
        .into_iter()
        .map(|r| member_id("envelopes.recipients", r))
        .collect::<Result<_, _>>()?;
    Ok(Envelope {
        recipients,
        payload: wire.payload,
    })
}

pub fn envelope_to_wire(envelope: Envelope) -> v1::Envelope {
    v1::Envelope {
        recipients: envelope.recipients.into_iter().map(String::from).collect(),
        payload: envelope.payload,
    }
}

pub fn submission_from_wire(wire: v1::SubmissionRequest) -> Result<Submission, WireError> {
    Ok(Submission {
        sender: member_id("sender", wire.sender)?,
        message_id: id("message_id", wire.message_id, MessageId::new)?,
        envelopes: wire
            .envelopes
            .into_iter()
            .map(envelope_from_wire)
            .collect::<Result<_, _>>()?,
        max_sequencing_time: Timestamp::from_micros(wire.max_sequencing_time_us),
    })
}

pub fn submission_to_wire(submission: Submission) -> v1::SubmissionRequest {
    v1::SubmissionRequest {
        sender: submission.sender.into(),
        message_id: submission.message_id.into(),
        envelopes: submission
            .envelopes
            .into_iter()
            .map(envelope_to_wire)
            .collect(),
        max_sequencing_time_us: submission.max_sequencing_time.as_micros(),
    }
}

/// The fork a sequencer reports in the `details` of Subscribe's FAILED_PRECONDITION answer
/// ([`v1::ForkDetails`]), or `None` when the details are not that message.
pub fn fork_from_status_details(details: &[u8]) -> Option<ForkError> {
    use prost::Message;
    if details.is_empty() {
        return None;
    }
    let wire = v1::ForkDetails::decode(details).ok()?;
    Some(ForkError::UnknownLastEvent {
        last_processed: Timestamp::from_micros(wire.last_processed_us),
        last_shared: wire.last_shared_us.map(Timestamp::from_micros),
        sequencer_latest: wire.sequencer_latest_us.map(Timestamp::from_micros),
    })
}

/// The `details` of Subscribe's FAILED_PRECONDITION answer for a fork.
pub fn fork_to_status_details(
    last_processed: Timestamp,
    last_shared: Option<Timestamp>,
    sequencer_latest: Option<Timestamp>,
) -> Vec<u8> {
    use prost::Message;
    v1::ForkDetails {
        last_processed_us: last_processed.as_micros(),
        last_shared_us: last_shared.map(Timestamp::as_micros),
        sequencer_latest_us: sequencer_latest.map(Timestamp::as_micros),
    }
    .encode_to_vec()
}

pub fn event_from_wire(wire: v1::SequencedEvent) -> Result<SequencedEvent, WireError> {
    Ok(SequencedEvent {
        timestamp: Timestamp::from_micros(wire.timestamp_us),
        previous_timestamp: wire.previous_timestamp_us.map(Timestamp::from_micros),
        sender: member_id("sender", wire.sender)?,
        message_id: if wire.message_id.is_empty() {
            None
        } else {
            Some(id("message_id", wire.message_id, MessageId::new)?)
        },
        envelopes: wire
            .envelopes
            .into_iter()
            .map(envelope_from_wire)
            .collect::<Result<_, _>>()?,
    })
}

pub fn event_to_wire(event: SequencedEvent) -> v1::SequencedEvent {
    v1::SequencedEvent {
        timestamp_us: event.timestamp.as_micros(),
        previous_timestamp_us: event.previous_timestamp.map(Timestamp::as_micros),
        sender: event.sender.into(),
        message_id: event.message_id.map(String::from).unwrap_or_default(),
        envelopes: event.envelopes.into_iter().map(envelope_to_wire).collect(),
        keep_alive: false,
    }
}

#[cfg(test)]
mod tests {
    use meridian_core::MemberId;

    use super::*;

    #[test]
    fn round_trips_and_names_bad_fields() {
        let submission = Submission {
            sender: MemberId::new("p1").unwrap(),
            message_id: MessageId::new("m1").unwrap(),
            envelopes: vec![Envelope {
                recipients: vec![MemberId::new("p2").unwrap()],
                payload: b"hi".to_vec(),
            }],
            max_sequencing_time: Timestamp::from_micros(42),
        };
        let wire = submission_to_wire(submission.clone());
        assert_eq!(submission_from_wire(wire.clone()), Ok(submission));

        let mut bad = wire;
        bad.envelopes[0].recipients[0] = "no spaces".into();
        let err = submission_from_wire(bad).unwrap_err();
        assert!(err.to_string().contains("envelopes.recipients"), "{err}");
    }
}
