//! Hostile protocol messages to the mediator's sans-I/O engine (issue 11, item 6), no sockets:
//! informee messages and signed confirmation responses with hostile fields, from any sender,
//! at hostile timestamps, then time passing. Nothing may panic; a message the engine ignores
//! changes nothing (no persist, no verdict, no pending request); and responses not signed by
//! the participants' keys never produce an approval.
//!
//! Case count: `MERIDIAN_HOSTILE_CASES` (see `meridian_testkit::hostile`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use meridian_core::crypto::{SigningKey, SigningPurpose};
use meridian_core::ledger::Permission;
use meridian_core::protocol::{
    ConfirmationResponse, InformeeMessage, LocalVerdict, ProtocolMessage, RejectionCode, Signed,
    VerdictOutcome,
};
use meridian_core::topology::{
    SignedTopologyTransaction, TopologyMapping, TopologyState, TopologyTransaction,
};
use meridian_core::{MemberId, ParticipantId, PartyId, Timestamp};
use meridian_mediator::engine::{Effect, MediatorEngine};
use meridian_testkit::hostile::hostile_config;
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;

fn ts(micros: u64) -> Timestamp {
    Timestamp::from_micros(micros)
}

const PARTICIPANTS: [&str; 3] = ["p1", "p2", "p3"];

fn participant_key(index: usize) -> SigningKey {
    SigningKey::from_seed([index as u8 + 1; 32])
}

/// p1 hosts alice, p2 bob, p3 bank (confirmation only); the mediator is `mediator`.
fn engine() -> MediatorEngine {
    let owner = SigningKey::from_seed([9; 32]);
    let mut mappings = vec![TopologyMapping::Mediator {
        mediator: MemberId::new("mediator").unwrap(),
        public_key: SigningKey::from_seed([8; 32]).public_key().to_string(),
    }];
    for (i, p) in PARTICIPANTS.iter().enumerate() {
        mappings.push(TopologyMapping::Participant {
            participant: ParticipantId::new(*p).unwrap(),
            public_key: participant_key(i).public_key().to_string(),
        });
    }
    for (party, p, permission) in [
        ("alice", "p1", Permission::Submission),
        ("bob", "p2", Permission::Submission),
        ("bank", "p3", Permission::Confirmation),
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
        topology
            .add(
                ts(10 + serial as u64),
                &SignedTopologyTransaction::sign(&transaction, &owner),
            )
            .unwrap();
    }
    MediatorEngine::new(
        MemberId::new("mediator").unwrap(),
        topology,
        Duration::from_secs(30),
    )
}

fn party() -> impl Strategy<Value = PartyId> {
    prop_oneof![
        Just("alice"),
        Just("bob"),
        Just("bank"),
        Just("carol"),
        Just("p1")
    ]
    .prop_map(|p| PartyId::new(p).unwrap())
}

fn participant() -> impl Strategy<Value = ParticipantId> {
    prop_oneof![
        Just("p1"),
        Just("p2"),
        Just("p3"),
        Just("p9"),
        Just("mediator")
    ]
    .prop_map(|p| ParticipantId::new(p).unwrap())
}

fn member() -> impl Strategy<Value = MemberId> {
    prop_oneof![
        Just("p1"),
        Just("p2"),
        Just("p3"),
        Just("mediator"),
        Just("stranger")
    ]
    .prop_map(|m| MemberId::new(m).unwrap())
}

fn time() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 100u64..100_000_000,
        1 => Just(u64::MAX),
        1 => Just(i64::MAX as u64),
        1 => any::<u64>(),
        1 => 0u64..100,
    ]
}

fn informee() -> impl Strategy<Value = InformeeMessage> {
    (
        participant(),
        btree_set(party(), 0..4),
        btree_set(party(), 0..4),
        btree_set(participant(), 0..4),
        prop_oneof![Just("h".to_owned()), any::<String>()],
    )
        .prop_map(
            |(submitter, informees, confirming_parties, informee_participants, request_hash)| {
                InformeeMessage {
                    submitter,
                    informees,
                    confirming_parties,
                    informee_participants,
                    request_hash,
                }
            },
        )
}

#[derive(Debug, Clone)]
struct Response {
    sender: MemberId,
    at: u64,
    same_request: bool,
    same_hash: bool,
    participant: ParticipantId,
    parties: BTreeSet<PartyId>,
    approve: bool,
    signer: usize,
}

fn response() -> impl Strategy<Value = Response> {
    (
        member(),
        time(),
        any::<bool>(),
        any::<bool>(),
        participant(),
        btree_set(party(), 0..4),
        any::<bool>(),
        0usize..3,
    )
        .prop_map(
            |(sender, at, same_request, same_hash, participant, parties, approve, signer)| {
                Response {
                    sender,
                    at,
                    same_request,
                    same_hash,
                    participant,
                    parties,
                    approve,
                    signer,
                }
            },
        )
}

/// An ignored message adds nothing: no request, no accepted response. (Time still moves on
/// with its event, which may time a pending request out: that verdict is not the message's.)
fn check_ignored_changes_nothing(effects: &[Effect], pending_before: usize, pending_after: usize) {
    use meridian_mediator::engine::StateChange;
    if effects.iter().any(|e| matches!(e, Effect::Ignored(_))) {
        assert!(
            !effects.iter().any(|e| matches!(
                e,
                Effect::Persist(
                    StateChange::RequestAdded { .. } | StateChange::ResponseAccepted { .. }
                )
            )),
            "{effects:?}"
        );
        assert!(pending_after <= pending_before, "{effects:?}");
    }
}

proptest! {
    #![proptest_config(hostile_config())]

    #[test]
    fn hostile_mediator_messages_never_panic_and_forgeries_never_approve(
        request_sender in member(),
        request_at in time(),
        informee in informee(),
        responses in vec(response(), 0..5),
        honest_keys in any::<bool>(),
        later in time(),
    ) {
        let mut engine = engine();
        let hash = informee.request_hash.clone();
        let before = engine.pending_count();
        let effects = engine.on_event(
            ts(request_at),
            request_sender,
            ProtocolMessage::InformeeMessage(informee),
        );
        check_ignored_changes_nothing(&effects, before, engine.pending_count());
        let mut all = effects;
        for response in responses {
            let signed = Signed::sign(
                &ConfirmationResponse {
                    request_id: if response.same_request { ts(request_at) } else { ts(response.at) },
                    request_hash: if response.same_hash { hash.clone() } else { "other".into() },
                    participant: response.participant,
                    parties: response.parties,
                    verdict: if response.approve {
                        LocalVerdict::Approve
                    } else {
                        LocalVerdict::Reject {
                            code: RejectionCode::NotAuthorized,
                            message: "hostile".into(),
                        }
                    },
                },
                response.sender.clone(),
                &if honest_keys {
                    participant_key(response.signer)
                } else {
                    SigningKey::from_seed([77; 32])
                },
                SigningPurpose::ConfirmationResponse,
            );
            let before = engine.pending_count();
            let effects = engine.on_event(
                ts(response.at.max(request_at)),
                response.sender,
                ProtocolMessage::ConfirmationResponse(signed),
            );
            check_ignored_changes_nothing(&effects, before, engine.pending_count());
            all.extend(effects);
        }
        all.extend(engine.on_time(ts(later)));
        all.extend(engine.on_quiet());
        if !honest_keys {
            for effect in &all {
                if let Effect::SendVerdict { verdict, .. } = effect {
                    prop_assert!(
                        !matches!(verdict.outcome, VerdictOutcome::Approved),
                        "a forged response approved: {:?}", all
                    );
                }
            }
        }
    }
}
