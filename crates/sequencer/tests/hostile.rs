//! Hostile submissions to the sequencer's sans-I/O checks (issue 11, item 6): arbitrary
//! well-formed `SubmissionRequest`s, converted as the Send handler converts them and validated
//! against a member directory, limits and a clock. Nothing may panic; a refusal is a definite
//! client-facing status (never INTERNAL or UNKNOWN), and since validation is pure and comes
//! before the writer, a refused submission reaches no store; an accepted one carries only
//! registered recipients and a batch that decodes.
//!
//! Case count: `MERIDIAN_HOSTILE_CASES` (see `meridian_testkit::hostile`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use meridian_core::{MemberId, Timestamp};
use meridian_proto::{convert, v1};
use meridian_sequencer::validate::{validate_submission, SubmissionLimits};
use meridian_store::MemberSeq;
use meridian_testkit::hostile::hostile_config;
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;

const MEMBERS: [&str; 3] = ["p1", "p2", "mediator"];

fn lookup(id: &MemberId) -> Option<MemberSeq> {
    MEMBERS
        .iter()
        .position(|m| *m == id.as_str())
        .map(|i| MemberSeq(i as i64 + 1))
}

fn member() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop_oneof![Just("p1"), Just("p2"), Just("mediator"), Just("p9")].prop_map(str::to_owned),
        1 => any::<String>(),
        1 => Just(String::new()),
        1 => "[a-z]{250,260}",
    ]
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        Just(u64::MAX),
        Just(i64::MAX as u64),
        Just(i64::MAX as u64 + 1),
        0u64..2_000,
    ]
}

fn envelope() -> impl Strategy<Value = v1::Envelope> {
    (vec(member(), 0..4), vec(any::<u8>(), 0..300)).prop_map(|(recipients, payload)| v1::Envelope {
        recipients,
        payload,
    })
}

fn submission() -> impl Strategy<Value = v1::SubmissionRequest> {
    (
        member(),
        prop_oneof![4 => "[a-z0-9-]{1,12}", 1 => any::<String>()],
        prop_oneof![6 => vec(envelope(), 1..3), 1 => vec(envelope(), 0..12)],
        number(),
    )
        .prop_map(|(sender, message_id, envelopes, max_sequencing_time_us)| {
            v1::SubmissionRequest {
                sender,
                message_id,
                envelopes,
                max_sequencing_time_us,
            }
        })
}

proptest! {
    #![proptest_config(hostile_config())]

    #[test]
    fn hostile_submissions_are_refused_with_a_client_status(
        request in submission(),
        session in prop_oneof![Just("p1"), Just("p2"), Just("mediator")],
        now in number(),
    ) {
        let limits = SubmissionLimits { max_request_bytes: 1_000, max_envelopes: 8 };
        let submission = match convert::submission_from_wire(request) {
            Ok(submission) => submission,
            // The Send handler answers INVALID_ARGUMENT with this text.
            Err(error) => {
                prop_assert!(!error.to_string().is_empty());
                return Ok(());
            }
        };
        let session = MemberId::new(session).unwrap();
        match validate_submission(submission, &session, lookup, &limits, Timestamp::from_micros(now)) {
            Ok(validated) => {
                let batch = v1::Batch::decode(validated.batch.as_slice()).unwrap();
                prop_assert!(!batch.envelopes.is_empty());
                prop_assert!(batch.envelopes.len() <= limits.max_envelopes);
                prop_assert!(validated.max_sequencing_time > Timestamp::from_micros(now));
                for envelope in batch.envelopes {
                    for recipient in envelope.recipients {
                        prop_assert!(MEMBERS.contains(&recipient.as_str()));
                    }
                }
            }
            Err(error) => {
                let status = tonic::Status::from(error);
                prop_assert!(
                    !matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown),
                    "{:?}", status
                );
                prop_assert!(!status.message().is_empty());
            }
        }
    }
}
