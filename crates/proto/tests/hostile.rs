//! Hostile input to every wire decoder a server or member runs on untrusted bytes (issue 11,
//! item 6): arbitrary and mutated bytes as every request message a Meridian server decodes, and
//! as what a member decodes from the sequencer and from its own database (sequenced events,
//! stored batches, fork details, protocol messages in envelope payloads); then arbitrary
//! well-formed messages through every wire -> domain conversion. Nothing may panic; a request
//! that does not decode is INVALID_ARGUMENT naming the message type; a conversion error names
//! a field; whatever converts converts back to the same message.
//!
//! Case count: `MERIDIAN_HOSTILE_CASES` (see `meridian_testkit::hostile`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use meridian_core::protocol::ProtocolMessage;
use meridian_proto::codec::decode_error_status;
use meridian_proto::convert::{self, ledger, WireError};
use meridian_proto::v1;
use meridian_testkit::hostile::hostile_config;
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;

// ---------------------------------------------------------------------------------------------
// Strategies: well-formed messages with hostile contents.
// ---------------------------------------------------------------------------------------------

/// Strings as an attacker picks them: often id-like (so conversions get past the first field),
/// sometimes empty, arbitrary Unicode, control characters, or far over every length limit.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_.:-]{1,12}",
        1 => Just(String::new()),
        2 => any::<String>(),
        1 => "[\\x00-\\x1f \u{7f}\u{feff}\u{202e}é日🦀/\\\\\"']{0,8}",
        1 => (prop_oneof![Just(255usize), Just(256), 257..70_000usize], any::<char>())
            .prop_map(|(n, c)| c.to_string().repeat(n)),
    ]
}

/// JSON as an attacker writes it: valid values, near-misses, deep nesting, huge numbers.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            vec((text(), inner), 0..6)
                .prop_map(|fields| serde_json::Value::Object(fields.into_iter().collect())),
        ]
    });
    prop_oneof![
        4 => value.prop_map(|v| v.to_string()),
        2 => text(),
        1 => (1usize..600).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        1 => (1usize..600).prop_map(|n| "{\"a\":".repeat(n)),
        1 => prop_oneof![
            Just("1e400".to_owned()),
            Just("-5".to_owned()),
            Just("18446744073709551616".to_owned()),
            Just("{\"amount\":-1}".to_owned()),
            Just("\"\\ud800\"".to_owned()),
            Just(" ".to_owned()),
        ],
    ]
}

/// u64s at and around every edge a store or a clock has (i64 columns: "negative-ish" values).
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => any::<u64>(),
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => Just(i64::MAX as u64),
        1 => Just(i64::MAX as u64 + 1),
        2 => 0u64..10,
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..48),
        1 => vec(any::<u8>(), 0..4096),
    ]
}

fn list<T: std::fmt::Debug + Clone>(
    item: impl Strategy<Value = T>,
) -> impl Strategy<Value = Vec<T>> {
    prop_oneof![4 => vec(item, 0..4), 1 => Just(Vec::new())]
}

fn command() -> impl Strategy<Value = v1::Command> {
    let create = (text(), json_text()).prop_map(|(template, payload_json)| {
        v1::command::Command::Create(v1::CreateCommand {
            template,
            payload_json,
        })
    });
    let exercise =
        (text(), text(), json_text()).prop_map(|(contract_id, choice, argument_json)| {
            v1::command::Command::Exercise(v1::ExerciseCommand {
                contract_id,
                choice,
                argument_json,
            })
        });
    prop_oneof![4 => create.prop_map(Some), 4 => exercise.prop_map(Some), 1 => Just(None)]
        .prop_map(|command| v1::Command { command })
}

fn submit_and_wait() -> impl Strategy<Value = v1::SubmitAndWaitRequest> {
    (
        text(),
        text(),
        list(text()),
        prop_oneof![4 => vec(command(), 1..4), 1 => vec(command(), 0..40)],
        proptest::option::of(number()),
    )
        .prop_map(
            |(user_id, command_id, act_as, commands, deduplication_period_s)| {
                v1::SubmitAndWaitRequest {
                    user_id,
                    command_id,
                    act_as,
                    commands,
                    deduplication_period_s,
                }
            },
        )
}

fn envelope() -> impl Strategy<Value = v1::Envelope> {
    (list(text()), bytes()).prop_map(|(recipients, payload)| v1::Envelope {
        recipients,
        payload,
    })
}

fn submission() -> impl Strategy<Value = v1::SubmissionRequest> {
    (text(), text(), list(envelope()), number()).prop_map(
        |(sender, message_id, envelopes, max_sequencing_time_us)| v1::SubmissionRequest {
            sender,
            message_id,
            envelopes,
            max_sequencing_time_us,
        },
    )
}

fn sequenced_event() -> impl Strategy<Value = v1::SequencedEvent> {
    (
        number(),
        proptest::option::of(number()),
        text(),
        text(),
        list(envelope()),
        any::<bool>(),
    )
        .prop_map(
            |(timestamp_us, previous_timestamp_us, sender, message_id, envelopes, keep_alive)| {
                v1::SequencedEvent {
                    timestamp_us,
                    previous_timestamp_us,
                    sender,
                    message_id,
                    envelopes,
                    keep_alive,
                }
            },
        )
}

/// Bytes of one of the request messages: arbitrary, or a valid encoding with bytes flipped,
/// cut off or inserted (which reaches much deeper into the decoder than noise does).
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop_oneof![
        submit_and_wait().prop_map(|m| m.encode_to_vec()),
        submission().prop_map(|m| v1::SendRequest {
            submission: Some(m)
        }
        .encode_to_vec()),
        sequenced_event().prop_map(|m| m.encode_to_vec()),
    ];
    let mutated = (
        valid,
        vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    )
        .prop_map(|(mut bytes, edits)| {
            for (at, byte, kind) in edits {
                if bytes.is_empty() {
                    bytes.push(byte);
                    continue;
                }
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] = byte,
                    1 => bytes.truncate(i),
                    _ => bytes.insert(i, byte),
                }
            }
            bytes
        });
    prop_oneof![2 => bytes(), 3 => mutated]
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// Decodes `bytes` as a `T` request the way the servers' codec does: a failure must be
/// INVALID_ARGUMENT naming the message; a success must re-encode.
fn decode_as<T: Message + Default>(bytes: &[u8]) -> Option<T> {
    match T::decode(bytes) {
        Ok(message) => {
            let _ = message.encode_to_vec();
            Some(message)
        }
        Err(error) => {
            let status = decode_error_status::<T>(&error);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(
                status
                    .message()
                    .starts_with("the request is not a valid meridian.v1."),
                "{}",
                status.message()
            );
            None
        }
    }
}

fn limits() -> ledger::SubmitLimits {
    ledger::SubmitLimits {
        max_commands: 16,
        max_payload_bytes: 64 * 1024,
        default_dedup_period_s: 600,
        max_dedup_period_s: 86_400,
    }
}

/// A conversion error must say which field is wrong.
fn assert_names_a_field(error: &WireError) {
    let named = match error {
        WireError::Missing(field) | WireError::InvalidId { field, .. } => !field.is_empty(),
        WireError::Invalid { field, .. } => !field.is_empty(),
    };
    assert!(named, "{error:?}");
}

fn convert_submit(request: v1::SubmitAndWaitRequest) {
    if let Err(error) = ledger::submit_and_wait_from_wire(request, &limits()) {
        assert_names_a_field(&error);
    }
}

fn convert_submission(request: v1::SubmissionRequest) {
    match convert::submission_from_wire(request) {
        Ok(submission) => {
            let again = convert::submission_to_wire(submission.clone());
            assert_eq!(convert::submission_from_wire(again), Ok(submission));
        }
        Err(error) => assert_names_a_field(&error),
    }
}

fn convert_event(event: v1::SequencedEvent) {
    let keep_alive = event.keep_alive;
    match convert::event_from_wire(event) {
        Ok(domain) => {
            let again = convert::event_to_wire(domain.clone());
            assert_eq!(convert::event_from_wire(again), Ok(domain), "{keep_alive}");
        }
        Err(error) => assert_names_a_field(&error),
    }
}

/// A member decodes every envelope payload it is sent as a protocol message.
fn decode_payload(payload: &[u8]) {
    if let Ok(message) = ProtocolMessage::decode(payload) {
        let again = ProtocolMessage::decode(&message.encode()).unwrap();
        assert_eq!(again, message);
    }
}

proptest! {
    #![proptest_config(hostile_config())]

    /// The same bytes as every request message of the four services, and as everything a
    /// member decodes from the sequencer or its database.
    #[test]
    fn hostile_bytes_decode_as_every_request_message(bytes in wire_bytes()) {
        // LedgerService
        decode_as::<v1::AllocatePartyRequest>(&bytes);
        decode_as::<v1::ListPartiesRequest>(&bytes);
        if let Some(request) = decode_as::<v1::SubmitAndWaitRequest>(&bytes) {
            convert_submit(request);
        }
        if let Some(request) = decode_as::<v1::GetTransactionsRequest>(&bytes) {
            let _ = ledger::transactions_query_from_wire(request);
        }
        if let Some(request) = decode_as::<v1::GetActiveContractsRequest>(&bytes) {
            let _ = ledger::parties_from_wire("parties", request.parties);
        }
        if let Some(request) = decode_as::<v1::CompletionStreamRequest>(&bytes) {
            let _ = ledger::completions_query_from_wire(request);
        }
        // SequencerService, SequencerAdminService
        decode_as::<v1::GetChallengeRequest>(&bytes);
        decode_as::<v1::AuthenticateRequest>(&bytes);
        if let Some(v1::SendRequest { submission: Some(submission) }) =
            decode_as::<v1::SendRequest>(&bytes)
        {
            convert_submission(submission);
        }
        decode_as::<v1::SubscribeRequest>(&bytes);
        decode_as::<v1::AcknowledgeRequest>(&bytes);
        decode_as::<v1::RegisterMemberRequest>(&bytes);
        decode_as::<v1::ListMembersRequest>(&bytes);
        // TopologyAdminService
        decode_as::<v1::AddParticipantRequest>(&bytes);
        decode_as::<v1::AddMediatorRequest>(&bytes);
        decode_as::<v1::TopologyAllocatePartyRequest>(&bytes);
        decode_as::<v1::GetTopologyRequest>(&bytes);
        // What members decode from the sequencer and from their own stores.
        if let Some(event) = decode_as::<v1::SequencedEvent>(&bytes) {
            convert_event(event);
        }
        if let Some(batch) = decode_as::<v1::Batch>(&bytes) {
            for envelope in batch.envelopes {
                let _ = convert::envelope_from_wire(envelope);
            }
        }
        decode_as::<v1::GetTopologyResponse>(&bytes);
        let _ = convert::sequencer::fork_from_status_details(&bytes);
        decode_payload(&bytes);
    }

    /// Well-formed Ledger API requests with hostile contents: Ok, or an error naming the field.
    #[test]
    fn hostile_ledger_requests_convert_or_name_the_field(
        request in submit_and_wait(),
        parties in list(text()),
        begin in number(),
        user_id in text(),
    ) {
        convert_submit(request);
        let _ = ledger::transactions_query_from_wire(v1::GetTransactionsRequest {
            begin_offset: begin,
            parties: parties.clone(),
        });
        let _ = ledger::completions_query_from_wire(v1::CompletionStreamRequest {
            user_id,
            begin_offset: begin,
        });
        if let Err(error) = ledger::parties_from_wire("parties", parties) {
            assert_names_a_field(&error);
        }
    }

    /// Well-formed sequencer messages with hostile contents, in both directions of trust: the
    /// submissions a sequencer converts and the events a member converts.
    #[test]
    fn hostile_sequencer_messages_convert_or_name_the_field(
        request in submission(),
        event in sequenced_event(),
    ) {
        convert_submission(request);
        convert_event(event);
    }

    /// Envelope payloads: JSON that looks like a protocol message, or does not.
    #[test]
    fn hostile_protocol_payloads_decode_or_fail_cleanly(
        json in json_text(),
        kind in prop_oneof![
            Just("confirmation_request"), Just("informee_message"),
            Just("confirmation_response"), Just("verdict"), Just("topology"),
            Just("time_proof"), Just("nope"),
        ],
        fields in vec((text(), json_text()), 0..6),
    ) {
        decode_payload(json.as_bytes());
        let mut message = format!("{{\"type\":{}", serde_json::Value::from(kind));
        for (key, value) in fields {
            message.push_str(&format!(",{}:{value}", serde_json::Value::from(key)));
        }
        message.push('}');
        decode_payload(message.as_bytes());
    }
}
