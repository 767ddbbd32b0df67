//! Unit tests of the verdict engine: every decision rule, validation of responses, time and
//! topology as of the request, and resuming from persisted state.

use std::collections::{BTreeMap, BTreeSet};
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

use super::*;
use crate::persist;

const TIMEOUT_US: u64 = 10_000;
/// The first request's id; the topology below is effective well before it.
const T: u64 = 1_000_000;
const HASH: &str = "request-hash";

fn t(micros: u64) -> Timestamp {
    Timestamp::from_micros(micros)
}

fn pid(name: &str) -> ParticipantId {
    ParticipantId::new(name).expect("participant id")
}

fn party(name: &str) -> PartyId {
    PartyId::new(name).expect("party id")
}

fn member(name: &str) -> MemberId {
    MemberId::new(name).expect("member id")
}

fn parties(names: &[&str]) -> BTreeSet<PartyId> {
    names.iter().map(|n| party(n)).collect()
}

fn participants(names: &[&str]) -> BTreeSet<ParticipantId> {
    names.iter().map(|n| pid(n)).collect()
}

/// A synchronizer with participants p1–p3 and parties:
/// alice on p1 (submission), bob on p2 and p3 (confirmation), carol on p3 (observation),
/// dave on p2 (observation only: nobody may confirm for him).
struct Fixture {
    owner: SigningKey,
    keys: BTreeMap<&'static str, SigningKey>,
    topology: TopologyState,
    serial: u64,
}

impl Fixture {
    fn new() -> Self {
        let owner = SigningKey::generate();
        let keys: BTreeMap<_, _> = ["p1", "p2", "p3", "p4"]
            .into_iter()
            .map(|name| (name, SigningKey::generate()))
            .collect();
        let mut fixture = Self {
            topology: TopologyState::new(owner.public_key()),
            owner,
            keys,
            serial: 0,
        };
        for name in ["p1", "p2", "p3"] {
            let mapping = fixture.participant(name);
            fixture.add(10, mapping);
        }
        for (who, host, permission) in [
            ("alice", "p1", Permission::Submission),
            ("bob", "p2", Permission::Confirmation),
            ("bob", "p3", Permission::Confirmation),
            ("carol", "p3", Permission::Observation),
            ("dave", "p2", Permission::Observation),
        ] {
            fixture.add(20, hosting(who, host, permission));
        }
        fixture
    }

    fn participant(&self, name: &str) -> TopologyMapping {
        TopologyMapping::Participant {
            participant: pid(name),
            public_key: self.keys[name].public_key().to_string(),
        }
    }

    fn signed(&mut self, mapping: TopologyMapping) -> SignedTopologyTransaction {
        self.serial += 1;
        SignedTopologyTransaction::sign(
            &TopologyTransaction {
                serial: self.serial,
                mapping,
            },
            &self.owner,
        )
    }

    fn add(&mut self, effective: u64, mapping: TopologyMapping) {
        let signed = self.signed(mapping);
        self.topology
            .add(t(effective), &signed)
            .expect("valid topology");
    }

    /// A fixture and its engine with a request at `T` from p1 pending (see [`submit`]).
    fn with_request(confirming: &[&str], informee_participants: &[&str]) -> (Self, MediatorEngine) {
        let fixture = Fixture::new();
        let mut engine = fixture.engine();
        submit(&mut engine, confirming, informee_participants);
        (fixture, engine)
    }

    fn engine(&self) -> MediatorEngine {
        MediatorEngine::new(
            member("mediator"),
            self.topology.clone(),
            Duration::from_micros(TIMEOUT_US),
        )
    }

    /// `participant` answers the request sequenced at `T` for `for_parties`, its response
    /// sequenced at `at_us`.
    fn answer(
        &self,
        engine: &mut MediatorEngine,
        at_us: u64,
        participant: &str,
        for_parties: &[&str],
        verdict: LocalVerdict,
    ) -> Vec<Effect> {
        engine.on_event(
            t(at_us),
            member(participant),
            self.response(participant, T, for_parties, verdict),
        )
    }

    /// `participant` approves the request sequenced at `request_id` for `for_parties`, its
    /// response sequenced at `at_us`.
    fn approve(
        &self,
        engine: &mut MediatorEngine,
        at_us: u64,
        participant: &str,
        request_id: u64,
        for_parties: &[&str],
    ) -> Vec<Effect> {
        let response = self.response(participant, request_id, for_parties, LocalVerdict::Approve);
        engine.on_event(t(at_us), member(participant), response)
    }

    fn response(
        &self,
        participant: &str,
        request_id: u64,
        for_parties: &[&str],
        verdict: LocalVerdict,
    ) -> ProtocolMessage {
        self.response_signed_by(participant, participant, request_id, for_parties, verdict)
    }

    fn response_signed_by(
        &self,
        participant: &str,
        key_of: &str,
        request_id: u64,
        for_parties: &[&str],
        verdict: LocalVerdict,
    ) -> ProtocolMessage {
        let response = ConfirmationResponse {
            request_id: t(request_id),
            request_hash: HASH.to_owned(),
            participant: pid(participant),
            parties: parties(for_parties),
            verdict,
        };
        ProtocolMessage::ConfirmationResponse(Signed::sign(
            &response,
            member(participant),
            &self.keys[key_of],
            SigningPurpose::ConfirmationResponse,
        ))
    }
}

fn hosting(who: &str, host: &str, permission: Permission) -> TopologyMapping {
    TopologyMapping::PartyToParticipant {
        party: party(who),
        participant: pid(host),
        permission,
    }
}

fn informee(confirming: &[&str], informee_participants: &[&str]) -> ProtocolMessage {
    ProtocolMessage::InformeeMessage(InformeeMessage {
        submitter: pid("p1"),
        informees: parties(confirming),
        confirming_parties: parties(confirming),
        informee_participants: participants(informee_participants),
        request_hash: HASH.to_owned(),
    })
}

fn reject(code: RejectionCode, message: &str) -> LocalVerdict {
    LocalVerdict::Reject {
        code,
        message: message.to_owned(),
    }
}

/// Of `$effects`, those of one kind (`$kind`), each turned into `$value`, in order.
macro_rules! effects_of {
    ($effects:expr, $kind:pat => $value:expr) => {
        $effects
            .iter()
            .filter_map(|effect| match effect {
                $kind => Some($value),
                _ => None,
            })
            .collect()
    };
}

/// The (request, recipients, outcome) of every verdict to send.
fn verdicts(effects: &[Effect]) -> Vec<(u64, BTreeSet<ParticipantId>, VerdictOutcome)> {
    effects_of!(effects, Effect::SendVerdict {
        request_id,
        informee_participants,
        verdict,
    } => {
        assert_eq!(verdict.request_id, *request_id);
        assert_eq!(verdict.request_hash, HASH);
        (
            request_id.as_micros(),
            informee_participants.clone(),
            verdict.outcome.clone(),
        )
    })
}

/// The verdicts of [`verdicts`] when the request at `T` is approved and sent to `recipients`.
fn approval_of_t(recipients: &[&str]) -> Vec<(u64, BTreeSet<ParticipantId>, VerdictOutcome)> {
    vec![(T, participants(recipients), VerdictOutcome::Approved)]
}

fn ignored(effects: &[Effect]) -> Vec<&'static str> {
    effects_of!(effects, Effect::Ignored(ignored) => ignored.reason())
}

fn changes(effects: &[Effect]) -> Vec<StateChange> {
    effects_of!(effects, Effect::Persist(change) => change.clone())
}

/// Submits a request at `T` from p1 and checks it is pending.
fn submit(engine: &mut MediatorEngine, confirming: &[&str], informee_participants: &[&str]) {
    let effects = engine.on_event(
        t(T),
        member("p1"),
        informee(confirming, informee_participants),
    );
    assert_eq!(
        changes(&effects),
        vec![StateChange::RequestAdded {
            request_id: t(T),
            deadline: t(T + TIMEOUT_US),
            informee: match informee(confirming, informee_participants) {
                ProtocolMessage::InformeeMessage(message) => message,
                _ => unreachable!(),
            },
        }]
    );
    assert!(verdicts(&effects).is_empty());
    assert!(engine.is_pending(t(T)));
}

fn rejected(code: RejectionCode, message: &str) -> VerdictOutcome {
    VerdictOutcome::Rejected {
        code,
        message: message.to_owned(),
    }
}

#[test]
fn approves_once_every_confirming_party_approved() {
    let (fx, mut engine) = Fixture::with_request(&["alice", "bob"], &["p1", "p2", "p3"]);

    let first = fx.answer(&mut engine, T + 10, "p1", &["alice"], LocalVerdict::Approve);
    assert!(verdicts(&first).is_empty(), "bob has not approved yet");
    assert!(matches!(
        changes(&first).as_slice(),
        [StateChange::ResponseAccepted { participant, .. }] if *participant == pid("p1")
    ));

    let second = fx.answer(&mut engine, T + 20, "p2", &["bob"], LocalVerdict::Approve);
    assert_eq!(verdicts(&second), approval_of_t(&["p1", "p2", "p3"]));
    let persisted = changes(&second);
    assert!(matches!(
        persisted.as_slice(),
        [
            StateChange::ResponseAccepted { .. },
            StateChange::VerdictDecided { request_id, .. }
        ] if *request_id == t(T)
    ));
    assert_eq!(engine.pending_count(), 0);
    assert_eq!(engine.last_event(), Some(t(T + 20)));
}

#[test]
fn one_approval_per_party_suffices() {
    let (fx, mut engine) = Fixture::with_request(&["bob"], &["p1", "p2", "p3"]);
    // bob is hosted on p2 and p3; p3 alone decides.
    let effects = fx.answer(&mut engine, T + 5, "p3", &["bob"], LocalVerdict::Approve);
    assert_eq!(verdicts(&effects), approval_of_t(&["p1", "p2", "p3"]));
    // p2's later answer finds the request decided.
    let late = fx.answer(&mut engine, T + 6, "p2", &["bob"], LocalVerdict::Approve);
    assert_eq!(ignored(&late), vec!["unknown_request"]);
    assert!(changes(&late).is_empty());
}

#[test]
fn the_first_valid_rejection_decides_with_its_code_and_message() {
    let (fx, mut engine) = Fixture::with_request(&["alice", "bob"], &["p1", "p2"]);
    fx.answer(&mut engine, T + 1, "p1", &["alice"], LocalVerdict::Approve);
    let effects = fx.answer(
        &mut engine,
        T + 2,
        "p2",
        &["bob"],
        reject(RejectionCode::LockedContracts, "contract c1 is locked"),
    );
    assert_eq!(
        verdicts(&effects),
        vec![(
            T,
            participants(&["p1", "p2"]),
            rejected(RejectionCode::LockedContracts, "contract c1 is locked")
        )]
    );
    assert!(
        matches!(
            changes(&effects).as_slice(),
            [StateChange::VerdictDecided { .. }]
        ),
        "a rejection is not kept as a response"
    );
    assert_eq!(engine.pending_count(), 0);
}

#[test]
fn partial_approvals_time_out_exactly_after_the_deadline() {
    let (fx, mut engine) = Fixture::with_request(&["alice", "bob"], &["p1", "p2"]);
    fx.answer(&mut engine, T + 1, "p1", &["alice"], LocalVerdict::Approve);
    assert_eq!(engine.next_deadline(), Some(t(T + TIMEOUT_US)));

    // An event exactly at the deadline does not time the request out...
    let at_deadline = engine.on_event(
        t(T + TIMEOUT_US),
        member("mediator"),
        ProtocolMessage::TimeProof,
    );
    assert!(at_deadline.is_empty(), "{at_deadline:?}");
    assert!(engine.is_pending(t(T)));

    // ...and anything after it does, naming who did not answer.
    let after = engine.on_time(t(T + TIMEOUT_US + 1));
    assert_eq!(
        verdicts(&after),
        vec![(
            T,
            participants(&["p1", "p2"]),
            rejected(
                RejectionCode::Timeout,
                &format!(
                    "no approval before the deadline {} from: bob",
                    t(T + TIMEOUT_US)
                )
            )
        )]
    );
    assert_eq!(engine.pending_count(), 0);
    assert_eq!(engine.next_deadline(), None);
}

#[test]
fn a_response_sequenced_at_the_deadline_counts_and_one_after_it_does_not() {
    let (fx, mut engine) = Fixture::with_request(&["bob"], &["p1", "p2"]);
    let at_deadline = fx.answer(
        &mut engine,
        T + TIMEOUT_US,
        "p2",
        &["bob"],
        LocalVerdict::Approve,
    );
    assert_eq!(verdicts(&at_deadline), approval_of_t(&["p1", "p2"]));

    let mut engine = fx.engine();
    submit(&mut engine, &["bob"], &["p1", "p2"]);
    let late = fx.answer(
        &mut engine,
        T + TIMEOUT_US + 1,
        "p2",
        &["bob"],
        LocalVerdict::Approve,
    );
    // The timeout is decided first; the late response then finds nothing pending.
    assert!(matches!(
        verdicts(&late).as_slice(),
        [(
            _,
            _,
            VerdictOutcome::Rejected {
                code: RejectionCode::Timeout,
                ..
            }
        )]
    ));
    assert_eq!(ignored(&late), vec!["unknown_request"]);
}

#[test]
fn a_bad_signature_is_ignored_and_changes_nothing() {
    let (fx, mut engine) = Fixture::with_request(&["bob"], &["p1", "p2"]);
    // Claims to be p2, signed with p3's key.
    let forged = engine.on_event(
        t(T + 1),
        member("p2"),
        fx.response_signed_by("p2", "p3", T, &["bob"], LocalVerdict::Approve),
    );
    assert_eq!(ignored(&forged), vec!["bad_signature"]);
    assert!(changes(&forged).is_empty() && verdicts(&forged).is_empty());

    let mut tampered = fx.response("p2", T, &["bob"], reject(RejectionCode::Malformed, "x"));
    if let ProtocolMessage::ConfirmationResponse(signed) = &mut tampered {
        signed.payload_json = signed.payload_json.replace("\"x\"", "\"y\"");
    }
    let tampered = engine.on_event(t(T + 2), member("p2"), tampered);
    assert_eq!(ignored(&tampered), vec!["bad_signature"]);

    let garbage = Signed {
        signer: member("p2"),
        payload_json: "not json".to_owned(),
        signature: String::new(),
        batch: None,
    };
    let garbage = engine.on_event(
        t(T + 2),
        member("p2"),
        ProtocolMessage::ConfirmationResponse(garbage),
    );
    assert_eq!(ignored(&garbage), vec!["malformed_response"]);

    // The genuine answer still decides.
    let genuine = fx.answer(&mut engine, T + 3, "p2", &["bob"], LocalVerdict::Approve);
    assert_eq!(verdicts(&genuine).len(), 1);
}

#[test]
fn a_response_signed_in_a_group_decides_and_a_tampered_member_of_the_group_is_ignored() {
    let (fx, mut engine) = Fixture::with_request(&["bob"], &["p1", "p2"]);
    let response = |request_id: u64, verdict: LocalVerdict| ConfirmationResponse {
        request_id: t(request_id),
        request_hash: HASH.to_owned(),
        participant: pid("p2"),
        parties: parties(&["bob"]),
        verdict,
    };
    // p2 answered two requests in one batch, under one signature over the batch's root.
    let group = Signed::sign_all(
        &[
            response(T - 1, LocalVerdict::Approve),
            response(T, LocalVerdict::Approve),
        ],
        &member("p2"),
        &fx.keys["p2"],
        SigningPurpose::ConfirmationResponse,
    );
    assert!(group.iter().all(|signed| signed.batch.is_some()));
    let mut forged = group[1].clone();
    forged.payload_json =
        serde_json::to_string(&response(T, reject(RejectionCode::Malformed, "forged"))).unwrap();
    let forged = engine.on_event(
        t(T + 1),
        member("p2"),
        ProtocolMessage::ConfirmationResponse(forged),
    );
    assert_eq!(ignored(&forged), vec!["bad_signature"]);
    assert!(changes(&forged).is_empty() && verdicts(&forged).is_empty());

    let genuine = engine.on_event(
        t(T + 2),
        member("p2"),
        ProtocolMessage::ConfirmationResponse(group[1].clone()),
    );
    assert_eq!(verdicts(&genuine), approval_of_t(&["p1", "p2"]));
}

#[test]
fn responders_must_be_the_signer_and_host_the_parties_with_confirmation_rights() {
    let (fx, mut engine) = Fixture::with_request(&["alice", "bob"], &["p1", "p2", "p3"]);
    let cases = [
        // p1 hosts alice but not bob.
        (
            fx.response("p1", T, &["bob"], LocalVerdict::Approve),
            "not_confirmer",
        ),
        // carol is hosted on p3 but is no confirming party of this request.
        (
            fx.response("p3", T, &["carol"], LocalVerdict::Approve),
            "not_confirming_party",
        ),
        // A rejection from someone who may not confirm does not count either.
        (
            fx.response(
                "p3",
                T,
                &["alice"],
                reject(RejectionCode::NotAuthorized, "no"),
            ),
            "not_confirmer",
        ),
        (
            fx.response("p2", T, &[], LocalVerdict::Approve),
            "no_parties",
        ),
        // p4 is not registered at all.
        (
            fx.response("p4", T, &["bob"], LocalVerdict::Approve),
            "unknown_participant",
        ),
    ];
    for (message, reason) in cases {
        let effects = engine.on_event(t(T + 1), member("x"), message);
        assert_eq!(ignored(&effects), vec![reason]);
        assert!(changes(&effects).is_empty());
    }
    // Signed by p2 but naming p3 as the participant.
    let mut mismatched = fx.response("p3", T, &["bob"], LocalVerdict::Approve);
    if let ProtocolMessage::ConfirmationResponse(signed) = &mut mismatched {
        signed.signer = member("p2");
    }
    let effects = engine.on_event(t(T + 2), member("p2"), mismatched);
    assert_eq!(ignored(&effects), vec!["signer_mismatch"]);
    assert!(effects.iter().all(|effect| match effect {
        Effect::Ignored(ignored) => ignored.is_invalid_response() && ignored.is_suspicious(),
        _ => false,
    }));
    assert!(engine.is_pending(t(T)));
}

#[test]
fn a_response_naming_another_request_hash_is_ignored() {
    let (fx, mut engine) = Fixture::with_request(&["bob"], &["p1", "p2"]);
    let response = ConfirmationResponse {
        request_id: t(T),
        request_hash: "some-other-request".to_owned(),
        participant: pid("p2"),
        parties: parties(&["bob"]),
        verdict: LocalVerdict::Approve,
    };
    let signed = Signed::sign(
        &response,
        member("p2"),
        &fx.keys["p2"],
        SigningPurpose::ConfirmationResponse,
    );
    let effects = engine.on_event(
        t(T + 1),
        member("p2"),
        ProtocolMessage::ConfirmationResponse(signed),
    );
    assert_eq!(ignored(&effects), vec!["wrong_request_hash"]);
}

#[test]
fn responses_to_unknown_requests_and_duplicates_change_nothing() {
    let fx = Fixture::new();
    let mut engine = fx.engine();
    let unknown = fx.approve(&mut engine, T - 1, "p2", T - 5, &["bob"]);
    assert_eq!(ignored(&unknown), vec!["unknown_request"]);

    submit(&mut engine, &["alice", "bob"], &["p1", "p2"]);
    let first = fx.answer(&mut engine, T + 1, "p1", &["alice"], LocalVerdict::Approve);
    assert_eq!(changes(&first).len(), 1);
    let again = fx.answer(&mut engine, T + 2, "p1", &["alice"], LocalVerdict::Approve);
    assert_eq!(ignored(&again), vec!["duplicate_response"]);
    assert!(changes(&again).is_empty());
    // A change of mind after approving is a duplicate too: the first answer stands.
    let change_of_mind = fx.answer(
        &mut engine,
        T + 3,
        "p1",
        &["alice"],
        reject(RejectionCode::InactiveContracts, "gone"),
    );
    assert_eq!(ignored(&change_of_mind), vec!["duplicate_response"]);
    assert!(engine.is_pending(t(T)));
    assert!(!Ignored::DuplicateResponse {
        request_id: t(T),
        participant: pid("p1")
    }
    .is_suspicious());
}

#[test]
fn a_party_nobody_may_confirm_for_is_rejected_at_once() {
    let fx = Fixture::new();
    let mut engine = fx.engine();
    let effects = engine.on_event(
        t(T),
        member("p1"),
        informee(&["alice", "dave", "erin"], &["p1", "p2"]),
    );
    assert_eq!(
        verdicts(&effects),
        vec![(
            T,
            participants(&["p1", "p2"]),
            rejected(
                RejectionCode::Topology,
                &format!("no participant may confirm at {} for: dave, erin", t(T))
            )
        )]
    );
    assert!(matches!(
        changes(&effects).as_slice(),
        [StateChange::VerdictDecided { .. }]
    ));
    assert_eq!(engine.pending_count(), 0);
}

#[test]
fn malformed_requests_are_rejected_and_unreachable_ones_dropped() {
    let fx = Fixture::new();
    let mut engine = fx.engine();
    // Sent by p2 while naming p1 as the submitter.
    let forged = engine.on_event(t(T), member("p2"), informee(&["alice"], &["p1", "p2"]));
    assert!(matches!(
        verdicts(&forged).as_slice(),
        [(
            _,
            _,
            VerdictOutcome::Rejected {
                code: RejectionCode::Malformed,
                ..
            }
        )]
    ));
    let empty = engine.on_event(t(T + 1), member("p1"), informee(&[], &["p1"]));
    assert!(matches!(
        verdicts(&empty).as_slice(),
        [(
            _,
            _,
            VerdictOutcome::Rejected {
                code: RejectionCode::Malformed,
                ..
            }
        )]
    ));
    // Nobody registered to tell: nothing to decide. Unregistered informees are left out.
    let nobody = engine.on_event(t(T + 2), member("p1"), informee(&["alice"], &["p4"]));
    assert_eq!(ignored(&nobody), vec!["no_recipients"]);
    assert!(changes(&nobody).is_empty());
    submit_at(&mut engine, T + 3, &["alice"], &["p1", "p4"]);
    let decided = fx.approve(&mut engine, T + 4, "p1", T + 3, &["alice"]);
    assert_eq!(
        verdicts(&decided),
        vec![(T + 3, participants(&["p1"]), VerdictOutcome::Approved)]
    );
    // Two informee messages in one event: the second is ignored.
    submit_at(&mut engine, T + 5, &["alice"], &["p1"]);
    let twice = engine.on_event(t(T + 5), member("p1"), informee(&["alice"], &["p1"]));
    assert_eq!(ignored(&twice), vec!["duplicate_request"]);
    // Messages the mediator never expects.
    let unexpected = engine.on_event(
        t(T + 6),
        member("p1"),
        ProtocolMessage::Verdict(Signed {
            signer: member("p1"),
            payload_json: "{}".to_owned(),
            signature: String::new(),
            batch: None,
        }),
    );
    assert_eq!(ignored(&unexpected), vec!["unexpected"]);
    // Time never runs backwards.
    let old = engine.on_time(t(T));
    assert_eq!(ignored(&old), vec!["out_of_order"]);
    assert_eq!(engine.last_event(), Some(t(T + 6)));
}

/// The topology manager's `signed` transaction reaches `engine`, sequenced at `at_us`.
fn publish(
    engine: &mut MediatorEngine,
    at_us: u64,
    signed: SignedTopologyTransaction,
) -> Vec<Effect> {
    engine.on_event(
        t(at_us),
        member("topology-manager"),
        ProtocolMessage::Topology(signed),
    )
}

fn submit_at(engine: &mut MediatorEngine, at: u64, confirming: &[&str], to: &[&str]) {
    let effects = engine.on_event(t(at), member("p1"), informee(confirming, to));
    assert!(
        matches!(
            changes(&effects).as_slice(),
            [StateChange::RequestAdded { .. }]
        ),
        "{effects:?}"
    );
}

#[test]
fn topology_effective_after_the_request_is_not_used_for_it() {
    let mut fx = Fixture::new();
    let mut engine = fx.engine();
    submit(&mut engine, &["bob"], &["p1", "p2"]);
    // p4 joins and gets to confirm for bob, effective after T: too late for request T.
    let join = fx.signed(fx.participant("p4"));
    let host = fx.signed(hosting("bob", "p4", Permission::Confirmation));
    for (at, signed) in [(T + 1, join), (T + 2, host)] {
        let effects = publish(&mut engine, at, signed);
        assert!(effects.is_empty(), "{effects:?}");
    }
    let effects = fx.answer(&mut engine, T + 3, "p4", &["bob"], LocalVerdict::Approve);
    assert_eq!(ignored(&effects), vec!["unknown_participant"]);
    assert!(engine.is_pending(t(T)));

    // A request after the change may be confirmed by p4.
    submit_at(&mut engine, T + 4, &["bob"], &["p1", "p4"]);
    let effects = fx.approve(&mut engine, T + 5, "p4", T + 4, &["bob"]);
    assert_eq!(
        verdicts(&effects),
        vec![(T + 4, participants(&["p1", "p4"]), VerdictOutcome::Approved)]
    );

    // Revoking p2's right after T does not stop p2 from confirming request T.
    let revoke = fx.signed(hosting("bob", "p2", Permission::Observation));
    let effects = publish(&mut engine, T + 6, revoke);
    assert!(effects.is_empty(), "{effects:?}");
    let effects = fx.answer(&mut engine, T + 7, "p2", &["bob"], LocalVerdict::Approve);
    assert_eq!(verdicts(&effects), approval_of_t(&["p1", "p2"]));

    // A topology transaction not signed by the owner is ignored.
    let forged = SignedTopologyTransaction::sign(
        &TopologyTransaction {
            serial: 99,
            mapping: hosting("bob", "p1", Permission::Submission),
        },
        &SigningKey::generate(),
    );
    let effects = engine.on_event(t(T + 8), member("p1"), ProtocolMessage::Topology(forged));
    assert_eq!(ignored(&effects), vec!["topology"]);
}

#[test]
fn time_proofs_are_requested_only_while_waiting_and_one_at_a_time() {
    let fx = Fixture::new();
    let mut engine = fx.engine();
    assert!(engine.on_quiet().is_empty(), "nothing waits for time");
    submit(&mut engine, &["bob"], &["p1", "p2"]);
    assert_eq!(engine.on_quiet(), vec![Effect::RequestTimeProof]);
    assert!(engine.on_quiet().is_empty(), "one is outstanding");
    // Someone else's event does not answer our proof...
    engine.on_time(t(T + 1));
    assert!(engine.on_quiet().is_empty());
    // ...our own does.
    engine.on_event(t(T + 2), member("mediator"), ProtocolMessage::TimeProof);
    assert_eq!(engine.on_quiet(), vec![Effect::RequestTimeProof]);
    // A proof that got lost is replaced after a number of quiet periods.
    let mut quiet = 0;
    while engine.on_quiet().is_empty() {
        quiet += 1;
        assert!(
            quiet <= TIME_PROOF_RETRY_QUIET_PERIODS,
            "never re-requested"
        );
    }
    assert_eq!(quiet, TIME_PROOF_RETRY_QUIET_PERIODS);
    // The proof that arrives after the deadline decides.
    let effects = engine.on_event(
        t(T + TIMEOUT_US + 1),
        member("mediator"),
        ProtocolMessage::TimeProof,
    );
    assert_eq!(verdicts(&effects).len(), 1);
    assert!(engine.on_quiet().is_empty());
}

#[test]
fn a_restored_engine_finishes_in_flight_requests() {
    let fx = Fixture::new();
    let mut before = fx.engine();
    let mut persisted = Vec::new();
    let mut feed = |engine: &mut MediatorEngine, at: u64, sender: &str, message| {
        let effects = engine.on_event(t(at), member(sender), message);
        persisted.extend(changes(&effects));
        effects
    };
    feed(
        &mut before,
        T,
        "p1",
        informee(&["alice", "bob"], &["p1", "p2"]),
    );
    feed(
        &mut before,
        T + 1,
        "p1",
        fx.response("p1", T, &["alice"], LocalVerdict::Approve),
    );
    feed(&mut before, T + 2, "p1", informee(&["alice"], &["p1"]));
    feed(
        &mut before,
        T + 3,
        "p1",
        informee(&["alice", "bob"], &["p1", "p3"]),
    );
    feed(
        &mut before,
        T + 4,
        "p3",
        fx.response("p3", T + 3, &["bob"], LocalVerdict::Approve),
    );
    assert_eq!(before.pending_count(), 3);

    // What a store would hold: requests and approvals of the still pending requests, through
    // the same encoding the runtime uses.
    let mut records: BTreeMap<Timestamp, meridian_store::mediator::PendingRequestRecord> =
        BTreeMap::new();
    for change in &persisted {
        match persist::to_store(change) {
            meridian_store::mediator::MediatorChange::RequestAdded {
                request_id,
                deadline,
                informee_json,
            } => {
                records.insert(
                    request_id,
                    meridian_store::mediator::PendingRequestRecord {
                        request_id,
                        deadline,
                        informee_json,
                        responses: Vec::new(),
                    },
                );
            }
            meridian_store::mediator::MediatorChange::ResponseAdded {
                request_id,
                participant,
                response_json,
            } => {
                if let Some(record) = records.get_mut(&request_id) {
                    record
                        .responses
                        .push(meridian_store::mediator::ResponseRecord {
                            participant,
                            response_json,
                        });
                }
            }
            meridian_store::mediator::MediatorChange::VerdictDecided { request_id, .. } => {
                records.remove(&request_id);
            }
        }
    }
    let restored: Vec<RestoredRequest> = records
        .into_values()
        .map(persist::restored)
        .collect::<Result<_, _>>()
        .expect("decodes");
    // A restart with a different timeout keeps the persisted deadlines.
    let mut after = MediatorEngine::restore(
        member("mediator"),
        fx.topology.clone(),
        Duration::from_secs(3_600),
        before.last_event(),
        restored,
    );
    assert_eq!(after.pending_count(), 3);
    assert_eq!(after.last_event(), Some(t(T + 4)));

    // p1's approval survived: bob's approval alone completes request T.
    let effects = fx.answer(&mut after, T + 5, "p2", &["bob"], LocalVerdict::Approve);
    assert_eq!(verdicts(&effects), approval_of_t(&["p1", "p2"]));
    // The request persisted without approvals is still open for them.
    let effects = fx.approve(&mut after, T + 6, "p1", T + 2, &["alice"]);
    assert_eq!(
        verdicts(&effects),
        vec![(T + 2, participants(&["p1"]), VerdictOutcome::Approved)]
    );
    assert!(after.is_pending(t(T + 3)));
    assert_eq!(after.pending_count(), 1);
    // The partly approved request still times out at its original deadline, naming only
    // the party whose approval is missing.
    let effects = after.on_time(t(T + 3 + TIMEOUT_US + 1));
    assert_eq!(
        verdicts(&effects),
        vec![(
            T + 3,
            participants(&["p1", "p3"]),
            rejected(
                RejectionCode::Timeout,
                &format!(
                    "no approval before the deadline {} from: alice",
                    t(T + 3 + TIMEOUT_US)
                )
            )
        )]
    );
    // The same events before a restart would have given the same verdicts: replaying them into
    // the original engine agrees.
    let effects = fx.answer(&mut before, T + 5, "p2", &["bob"], LocalVerdict::Approve);
    assert_eq!(verdicts(&effects), approval_of_t(&["p1", "p2"]));
}

#[test]
fn restored_responses_block_duplicates() {
    let fx = Fixture::new();
    let informee_message = match informee(&["alice", "bob"], &["p1", "p2"]) {
        ProtocolMessage::InformeeMessage(message) => message,
        _ => unreachable!(),
    };
    let mut engine = MediatorEngine::restore(
        member("mediator"),
        fx.topology.clone(),
        Duration::from_micros(TIMEOUT_US),
        Some(t(T + 1)),
        vec![RestoredRequest {
            request_id: t(T),
            deadline: t(T + TIMEOUT_US),
            informee: informee_message,
            responses: vec![ConfirmationResponse {
                request_id: t(T),
                request_hash: HASH.to_owned(),
                participant: pid("p1"),
                parties: parties(&["alice"]),
                verdict: LocalVerdict::Approve,
            }],
        }],
    );
    let effects = fx.answer(&mut engine, T + 2, "p1", &["alice"], LocalVerdict::Approve);
    assert_eq!(ignored(&effects), vec!["duplicate_response"]);
    assert_eq!(engine.next_deadline(), Some(t(T + TIMEOUT_US)));
}
