//! Hostile input to the participant's sans-I/O engine (issue 11, item 6), no sockets: arbitrary
//! well-formed SubmitAndWait requests through the Ledger API's conversion and the engine's one
//! door (`submit`), and arbitrary or mutated protocol messages from any sender on the
//! sequenced stream. Nothing may panic; a refused request is a client error (never INTERNAL or
//! UNKNOWN) and leaves the engine as it was; what is not a valid protocol message for this
//! participant changes nothing.
//!
//! Case count: `MERIDIAN_HOSTILE_CASES` (see `meridian_testkit::hostile`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use meridian_core::crypto::{SigningKey, SigningPurpose};
use meridian_core::ledger::{Command, Contract, Permission};
use meridian_core::protocol::{ChangeId, ProtocolMessage, Signed, Verdict, VerdictOutcome};
use meridian_core::topology::{
    SignedTopologyTransaction, TopologyMapping, TopologyState, TopologyTransaction,
};
use meridian_core::{
    CommandId, ContractId, LedgerOffset, MemberId, MessageId, ParticipantId, PartyId, TemplateId,
    Timestamp, UserId,
};
use meridian_participant::engine::{
    Begin, ParticipantEngine, RestoredState, SequencedInput, SubmitError, SubmitRequest,
};
use meridian_proto::convert::ledger::{submit_and_wait_from_wire, SubmitLimits};
use meridian_proto::v1;
use meridian_testkit::hostile::hostile_config;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{json, Value};

fn ts(micros: u64) -> Timestamp {
    Timestamp::from_micros(micros)
}

fn mediator() -> MemberId {
    MemberId::new("mediator").unwrap()
}

const OWNER_SEED: [u8; 32] = [9; 32];
const MEDIATOR_SEED: [u8; 32] = [8; 32];

/// p1 hosts alice, p2 hosts bob (both may submit), p3 hosts bank as observer only; `iou-*`
/// contracts of alice and bob (one with the largest amount), one of p3's bank.
fn engine(participant: &str) -> ParticipantEngine {
    let owner = SigningKey::from_seed(OWNER_SEED);
    let mut mappings = vec![TopologyMapping::Mediator {
        mediator: mediator(),
        public_key: SigningKey::from_seed(MEDIATOR_SEED)
            .public_key()
            .to_string(),
    }];
    for (i, p) in ["p1", "p2", "p3"].iter().enumerate() {
        mappings.push(TopologyMapping::Participant {
            participant: ParticipantId::new(*p).unwrap(),
            public_key: participant_key(i).public_key().to_string(),
        });
    }
    for (party, p, permission) in [
        ("alice", "p1", Permission::Submission),
        ("bob", "p2", Permission::Submission),
        ("bank", "p3", Permission::Observation),
    ] {
        mappings.push(TopologyMapping::PartyToParticipant {
            party: PartyId::new(party).unwrap(),
            participant: ParticipantId::new(p).unwrap(),
            permission,
        });
    }
    let mut topology = TopologyState::new(owner.public_key());
    for (serial, mapping) in mappings.into_iter().enumerate() {
        let transaction = TopologyTransaction {
            serial: serial as u64 + 1,
            mapping,
        };
        let signed = SignedTopologyTransaction::sign(&transaction, &owner);
        topology.add(ts(10 + serial as u64), &signed).unwrap();
    }
    let index = ["p1", "p2", "p3"]
        .iter()
        .position(|p| *p == participant)
        .unwrap();
    ParticipantEngine::new(
        ParticipantId::new(participant).unwrap(),
        participant_key(index),
        topology,
        RestoredState {
            active_contracts: contracts(),
            ..RestoredState::default()
        },
    )
}

fn participant_key(index: usize) -> SigningKey {
    SigningKey::from_seed([index as u8 + 1; 32])
}

fn contracts() -> Vec<Contract> {
    let iou = |id: &str, owner: &str, amount: u64| Contract {
        id: ContractId::new(id).unwrap(),
        template: TemplateId::new("Iou").unwrap(),
        payload: json!({"issuer": "bank", "owner": owner, "amount": amount, "currency": "USD"}),
        signatories: ["bank", owner]
            .iter()
            .map(|p| PartyId::new(*p).unwrap())
            .collect(),
        observers: BTreeSet::new(),
    };
    vec![
        iou("iou-1", "alice", 100),
        iou("iou-2", "alice", u64::MAX),
        iou("iou-3", "bob", 1),
        iou("iou-4", "bank", 7),
    ]
}

/// Everything of the engine a refused request or an ignored message must leave as it was.
#[derive(Debug, PartialEq)]
struct Observable {
    ledger_end: LedgerOffset,
    pending: usize,
    in_flight: usize,
    contracts: BTreeSet<String>,
}

fn observe(engine: &ParticipantEngine) -> Observable {
    Observable {
        ledger_end: engine.ledger_end(),
        pending: engine.pending_count(),
        in_flight: engine.in_flight_count(),
        contracts: engine
            .active_contracts()
            .map(|c| format!("{}:{}", c.id, c.payload))
            .collect(),
    }
}

/// The gRPC code the Ledger API answers a refusal with (as `service.rs` maps it).
fn code_of(error: &SubmitError) -> tonic::Code {
    match error {
        SubmitError::UnknownParty(_) | SubmitError::UnknownContract(_) => tonic::Code::NotFound,
        SubmitError::NotHosted { .. } | SubmitError::Unauthorized(_) => {
            tonic::Code::PermissionDenied
        }
        SubmitError::InvalidCommand(_) => tonic::Code::InvalidArgument,
        SubmitError::UnknownMediator(_) => tonic::Code::Unavailable,
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop_oneof![
            Just("alice"), Just("bob"), Just("bank"), Just("carol"),
            Just("p1"), Just("mediator"),
        ].prop_map(str::to_owned),
        1 => any::<String>(),
        1 => Just(String::new()),
        1 => "[a-z]{250,260}",
    ]
}

fn contract_id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop_oneof![Just("iou-1"), Just("iou-2"), Just("iou-3"), Just("iou-4"), Just("iou-9")]
            .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// A JSON value an attacker puts in a payload or an argument field.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        name().prop_map(Value::from),
        contract_id().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![Just(0u64), Just(1), Just(99), Just(100), Just(u64::MAX)].prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(Value::Null),
        Just(json!([])),
        Just(json!({})),
        Just(json!("1e400")),
    ]
}

fn json_object() -> impl Strategy<Value = String> {
    let keys = prop_oneof![
        4 => prop_oneof![
            Just("issuer"), Just("owner"), Just("amount"), Just("currency"),
            Just("new_owner"), Just("other"),
        ].prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    prop_oneof![
        6 => vec((keys, hostile_value()), 0..6)
            .prop_map(|fields| Value::Object(fields.into_iter().collect()).to_string()),
        1 => any::<String>(),
        1 => Just(String::new()),
    ]
}

fn command() -> impl Strategy<Value = v1::Command> {
    let create = (
        prop_oneof![4 => Just("Iou".to_owned()), 1 => name()],
        json_object(),
    )
        .prop_map(|(template, payload_json)| {
            v1::command::Command::Create(v1::CreateCommand {
                template,
                payload_json,
            })
        });
    let exercise = (
        contract_id(),
        prop_oneof![
            4 => prop_oneof![Just("Transfer"), Just("Split"), Just("Merge"), Just("Archive")]
                .prop_map(str::to_owned),
            1 => any::<String>(),
        ],
        json_object(),
    )
        .prop_map(|(contract_id, choice, argument_json)| {
            v1::command::Command::Exercise(v1::ExerciseCommand {
                contract_id,
                choice,
                argument_json,
            })
        });
    prop_oneof![4 => create.prop_map(Some), 6 => exercise.prop_map(Some), 1 => Just(None)]
        .prop_map(|command| v1::Command { command })
}

fn request() -> impl Strategy<Value = v1::SubmitAndWaitRequest> {
    (
        name(),
        name(),
        vec(name(), 0..3),
        vec(command(), 0..4),
        proptest::option::of(prop_oneof![
            Just(0u64),
            Just(1),
            Just(u64::MAX),
            any::<u64>()
        ]),
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

/// Every path to a value inside `value`, as JSON pointers.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let key = key.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// `bytes` (a JSON protocol message) with the value at one path replaced: well-formed JSON of
/// the right shape everywhere but there.
fn mutate(bytes: &[u8], at: prop::sample::Index, replacement: Value) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(bytes).unwrap();
    let mut paths = Vec::new();
    pointers(&value, String::new(), &mut paths);
    let path = &paths[at.index(paths.len())];
    if let Some(slot) = value.pointer_mut(path) {
        *slot = replacement;
    }
    serde_json::to_vec(&value).unwrap()
}

/// A valid confirmation request of p1 (alice transfers iou-1 to bob) as its payload bytes.
fn valid_request_payload() -> &'static [u8] {
    static PAYLOAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PAYLOAD.get_or_init(build_request_payload)
}

fn build_request_payload() -> Vec<u8> {
    let mut p1 = engine("p1");
    let submission = match p1
        .submit(
            SubmitRequest {
                change: ChangeId {
                    user_id: UserId::new("app").unwrap(),
                    act_as: [PartyId::new("alice").unwrap()].into(),
                    command_id: CommandId::new("c1").unwrap(),
                },
                commands: vec![Command::Exercise {
                    contract_id: ContractId::new("iou-1").unwrap(),
                    choice: "Transfer".into(),
                    argument: json!({"new_owner": "bob"}),
                }],
                dedup_period_us: 600_000_000,
                seed: [5; 32],
                submission_id: MessageId::new("s1").unwrap(),
                mediator: mediator(),
                max_sequencing_time: ts(1_000_000_000),
            },
            ts(1_000),
        )
        .unwrap()
    {
        Begin::Started(submission) => submission,
        other => panic!("expected a fresh submission, got {other:?}"),
    };
    submission.envelopes[0].payload.clone()
}

fn limits() -> SubmitLimits {
    SubmitLimits {
        max_commands: 8,
        max_payload_bytes: 4096,
        default_dedup_period_s: 600,
        max_dedup_period_s: 86_400,
    }
}

fn sender() -> impl Strategy<Value = MemberId> {
    prop_oneof![
        Just("p1"),
        Just("p2"),
        Just("p3"),
        Just("mediator"),
        Just("stranger")
    ]
    .prop_map(|m| MemberId::new(m).unwrap())
}

proptest! {
    #![proptest_config(hostile_config())]

    /// Ledger API requests with hostile contents, from the wire to the engine's decision: the
    /// answer is never INTERNAL or UNKNOWN, and a refusal changes nothing.
    #[test]
    fn hostile_submissions_are_refused_cleanly_and_change_nothing(
        request in request(),
        submitter in prop_oneof![Just("p1"), Just("p2"), Just("p3")],
        seed in any::<[u8; 32]>(),
    ) {
        let Ok(validated) = submit_and_wait_from_wire(request, &limits()) else {
            // INVALID_ARGUMENT before the engine (the conversion's own tests name the field).
            return Ok(());
        };
        let mut engine = engine(submitter);
        let before = observe(&engine);
        let result = engine.submit(
            SubmitRequest {
                change: validated.change,
                commands: validated.commands,
                dedup_period_us: validated.dedup_period_s.saturating_mul(1_000_000),
                seed,
                submission_id: MessageId::new("s1").unwrap(),
                mediator: mediator(),
                max_sequencing_time: ts(1_000_000_000),
            },
            ts(1_000),
        );
        match result {
            Ok(_) => {}
            Err(error) => {
                let code = code_of(&error);
                prop_assert!(code != tonic::Code::Internal && code != tonic::Code::Unknown);
                prop_assert!(!error.to_string().is_empty());
                prop_assert_eq!(observe(&engine), before);
                prop_assert!(engine.drain_effects().is_empty());
            }
        }
    }

    /// What arrives on the sequenced stream: garbage, protocol messages that are not for a
    /// participant, and p1's valid confirmation request with one value replaced, from any
    /// sender, followed by a verdict with hostile fields. Nothing panics; garbage changes
    /// nothing; no contract appears or disappears without a verdict on a valid request.
    #[test]
    fn hostile_sequenced_messages_never_panic_and_garbage_changes_nothing(
        garbage in vec(any::<u8>(), 0..64),
        at in any::<prop::sample::Index>(),
        replacement in hostile_value(),
        sender in sender(),
        recipient in prop_oneof![Just("p1"), Just("p2"), Just("p3")],
        verdict_id in prop_oneof![Just(100u64), any::<u64>()],
        verdict_hash in prop_oneof![Just(String::new()), any::<String>()],
        approved in any::<bool>(),
    ) {
        let mut engine = engine(recipient);
        let before = observe(&engine);
        engine.handle_event(&SequencedInput {
            timestamp: ts(50),
            sender: sender.clone(),
            payloads: vec![
                garbage,
                ProtocolMessage::TimeProof.encode(),
                b"{\"type\":\"informee_message\"}".to_vec(),
            ],
        });
        prop_assert_eq!(&observe(&engine), &before);
        prop_assert!(engine.drain_effects().is_empty());

        let payload = mutate(valid_request_payload(), at, replacement);
        engine.handle_event(&SequencedInput {
            timestamp: ts(100),
            sender: sender.clone(),
            payloads: vec![payload],
        });
        engine.drain_effects();
        let verdict = Signed::sign(
            &Verdict {
                request_id: ts(verdict_id),
                request_hash: verdict_hash,
                outcome: if approved {
                    VerdictOutcome::Approved
                } else {
                    VerdictOutcome::Rejected {
                        code: meridian_core::protocol::RejectionCode::Timeout,
                        message: "hostile".into(),
                    }
                },
            },
            mediator(),
            &SigningKey::from_seed(MEDIATOR_SEED),
            SigningPurpose::Verdict,
        );
        engine.handle_event(&SequencedInput {
            timestamp: ts(200),
            sender,
            payloads: vec![ProtocolMessage::Verdict(verdict).encode()],
        });
        // A verdict whose hash is not the request's never commits.
        prop_assert_eq!(observe(&engine).contracts, before.contracts);
    }
}
