//! Unit tests of the sans-I/O engine: a small in-memory synchronizer (three participants, a
//! signing "mediator" that the test drives by hand, no sockets or database).

use std::collections::{BTreeMap, BTreeSet};

use meridian_core::crypto::{SigningKey, SigningPurpose};
use meridian_core::ledger::{Command, Contract, Permission};
use meridian_core::protocol::{
    self, ChangeId, ConfirmationRequest, ConfirmationResponse, LocalVerdict, ProtocolMessage,
    RejectionCode, Signed, Verdict, VerdictOutcome,
};
use meridian_core::sequencing::Submission;
use meridian_core::template::IouPayload;
use meridian_core::topology::{
    SignedTopologyTransaction, TopologyMapping, TopologyState, TopologyTransaction,
};
use meridian_core::{
    CommandId, ContractId, MemberId, MessageId, ParticipantId, PartyId, TemplateId, Timestamp,
    UserId,
};
use serde_json::json;

use crate::engine::*;

fn ts(micros: u64) -> Timestamp {
    Timestamp::from_micros(micros)
}
fn party(name: &str) -> PartyId {
    PartyId::new(name).unwrap()
}
fn pid(name: &str) -> ParticipantId {
    ParticipantId::new(name).unwrap()
}
fn mediator() -> MemberId {
    MemberId::new("mediator").unwrap()
}

/// p1 hosts alice, p2 hosts bob, p3 hosts bank (all with submission permission).
struct World {
    engines: BTreeMap<ParticipantId, ParticipantEngine>,
    mediator_key: SigningKey,
    now: u64,
    seed: u8,
    submission: u64,
}

impl World {
    fn new() -> Self {
        let owner = SigningKey::from_seed([9; 32]);
        let mediator_key = SigningKey::from_seed([8; 32]);
        let keys: Vec<(ParticipantId, SigningKey)> = ["p1", "p2", "p3"]
            .iter()
            .enumerate()
            .map(|(i, p)| (pid(p), SigningKey::from_seed([i as u8 + 1; 32])))
            .collect();
        let mut mappings = vec![TopologyMapping::Mediator {
            mediator: mediator(),
            public_key: mediator_key.public_key().to_string(),
        }];
        for (p, key) in &keys {
            mappings.push(TopologyMapping::Participant {
                participant: p.clone(),
                public_key: key.public_key().to_string(),
            });
        }
        for (name, p) in [("alice", "p1"), ("bob", "p2"), ("bank", "p3")] {
            mappings.push(TopologyMapping::PartyToParticipant {
                party: party(name),
                participant: pid(p),
                permission: Permission::Submission,
            });
        }
        let mut topology = TopologyState::new(owner.public_key());
        for (serial, mapping) in mappings.into_iter().enumerate() {
            let signed = SignedTopologyTransaction::sign(
                &TopologyTransaction {
                    serial: serial as u64 + 1,
                    mapping,
                },
                &owner,
            );
            topology.add(ts(10 + serial as u64), &signed).unwrap();
        }
        let engines = keys
            .into_iter()
            .map(|(p, key)| {
                let engine = ParticipantEngine::new(
                    p.clone(),
                    key,
                    topology.clone(),
                    RestoredState::default(),
                );
                (p, engine)
            })
            .collect();
        Self {
            engines,
            mediator_key,
            now: 1_000,
            seed: 0,
            submission: 0,
        }
    }

    fn engine(&mut self, p: &str) -> &mut ParticipantEngine {
        self.engines.get_mut(&pid(p)).unwrap()
    }

    fn tick(&mut self) -> Timestamp {
        self.now += 10;
        ts(self.now)
    }

    fn change(user: &str, command: &str, act_as: &[&str]) -> ChangeId {
        ChangeId {
            user_id: UserId::new(user).unwrap(),
            act_as: act_as.iter().map(|p| party(p)).collect(),
            command_id: CommandId::new(command).unwrap(),
        }
    }

    /// The one-door decision on a submission at `submitter`, with fresh randomness.
    fn decide(
        &mut self,
        submitter: &str,
        change: ChangeId,
        commands: Vec<Command>,
    ) -> Result<Begin<Box<Submission>>, SubmitError> {
        self.seed += 1;
        self.submission += 1;
        let request = SubmitRequest {
            change,
            commands,
            dedup_period_us: 600_000_000,
            seed: [self.seed; 32],
            submission_id: MessageId::new(format!("sub-{}", self.submission)).unwrap(),
            mediator: mediator(),
            max_sequencing_time: ts(self.now + 1_000_000),
        };
        let now = ts(self.now);
        self.engine(submitter).submit(request, now)
    }

    /// Starts a fresh submission at `submitter`; returns the sequencer submission.
    fn submit(
        &mut self,
        submitter: &str,
        change: ChangeId,
        commands: Vec<Command>,
    ) -> Result<Submission, SubmitError> {
        match self.decide(submitter, change, commands)? {
            Begin::Started(submission) => Ok(*submission),
            other => panic!("expected a fresh submission, got {other:?}"),
        }
    }

    /// Sequences a submission at a fresh timestamp and delivers it; returns (request id,
    /// request hash, confirmation responses by participant).
    fn sequence(
        &mut self,
        submission: &Submission,
    ) -> (
        Timestamp,
        String,
        BTreeMap<ParticipantId, ConfirmationResponse>,
    ) {
        let at = self.tick();
        let request_bytes = submission.envelopes[0].payload.clone();
        let hash = protocol::request_hash(&request_bytes);
        let mut responses = BTreeMap::new();
        for recipient in &submission.envelopes[0].recipients {
            let p = ParticipantId::from_member(recipient);
            let engine = self.engines.get_mut(&p).unwrap();
            engine.drain_effects();
            engine.handle_event(&SequencedInput {
                timestamp: at,
                sender: submission.sender.clone(),
                payloads: vec![request_bytes.clone()],
            });
            for effect in engine.drain_effects() {
                if let Effect::Send(message) = effect {
                    let ProtocolMessage::ConfirmationResponse(signed) =
                        ProtocolMessage::decode(message.payload.as_bytes()).unwrap()
                    else {
                        panic!("not a response");
                    };
                    let key = SigningKey::from_seed(
                        [["p1", "p2", "p3"]
                            .iter()
                            .position(|x| *x == p.as_str())
                            .unwrap() as u8
                            + 1; 32],
                    );
                    let response: ConfirmationResponse = signed
                        .verify(&key.public_key(), SigningPurpose::ConfirmationResponse)
                        .unwrap();
                    assert_eq!(message.recipients, vec![mediator()]);
                    responses.insert(p.clone(), response);
                }
            }
        }
        // Every other engine sees time pass (a time proof), as they would in reality.
        (at, hash, responses)
    }

    /// Delivers a signed verdict to `recipients`; returns each one's effects.
    fn verdict(
        &mut self,
        request_id: Timestamp,
        hash: &str,
        outcome: VerdictOutcome,
        recipients: &[&str],
    ) -> BTreeMap<ParticipantId, Vec<Effect>> {
        let at = self.tick();
        let signed = Signed::sign(
            &Verdict {
                request_id,
                request_hash: hash.to_owned(),
                outcome,
            },
            mediator(),
            &self.mediator_key,
            SigningPurpose::Verdict,
        );
        let payload = ProtocolMessage::Verdict(signed).encode();
        recipients
            .iter()
            .map(|p| {
                let engine = self.engine(p);
                engine.drain_effects();
                engine.handle_event(&SequencedInput {
                    timestamp: at,
                    sender: mediator(),
                    payloads: vec![payload.clone()],
                });
                (pid(p), engine.drain_effects())
            })
            .collect()
    }

    /// The bank issues an IOU to `owner` and everything commits. Returns the contract.
    fn issue(&mut self, owner: &str, amount: u64) -> Contract {
        let command = Command::Create {
            template: TemplateId::new("Iou").unwrap(),
            payload: IouPayload {
                issuer: party("bank"),
                owner: party(owner),
                amount,
                currency: "USD".into(),
            }
            .to_value(),
        };
        let change = Self::change("bank-app", &format!("issue-{}", self.seed), &["bank"]);
        let submission = self.submit("p3", change, vec![command]).unwrap();
        let (request_id, hash, responses) = self.sequence(&submission);
        assert!(responses
            .values()
            .all(|r| r.verdict == LocalVerdict::Approve));
        let recipients: Vec<String> = submission.envelopes[0]
            .recipients
            .iter()
            .map(|m| m.to_string())
            .collect();
        let recipients: Vec<&str> = recipients.iter().map(String::as_str).collect();
        let effects = self.verdict(request_id, &hash, VerdictOutcome::Approved, &recipients);
        let created = effects
            .values()
            .flatten()
            .find_map(|e| match e {
                Effect::Commit(commit) => commit.created.first().cloned(),
                _ => None,
            })
            .expect("a commit creating the IOU");
        created
    }

    /// Where most cases start: alice holds an IOU of 100 and p1 has prepared its transfer to
    /// bob (command "t1"), not sequenced yet.
    fn with_alices_transfer() -> (Self, Contract, Submission) {
        let mut world = Self::new();
        let iou = world.issue("alice", 100);
        let submission = world.transfer(&iou.id, "bob", "t1");
        (world, iou, submission)
    }

    /// Sequences `submission` and returns how `participant` answered it (`None`: approved).
    fn rejection_by(
        &mut self,
        submission: &Submission,
        participant: &str,
    ) -> Option<RejectionCode> {
        let (_, _, responses) = self.sequence(submission);
        rejection(&responses[&pid(participant)])
    }

    fn transfer(&mut self, contract: &ContractId, to: &str, command_id: &str) -> Submission {
        self.submit(
            "p1",
            Self::change("alice-app", command_id, &["alice"]),
            vec![transfer_command(contract, to)],
        )
        .unwrap()
    }
}

fn transfer_command(contract: &ContractId, to: &str) -> Command {
    Command::Exercise {
        contract_id: contract.clone(),
        choice: "Transfer".into(),
        argument: json!({ "new_owner": to }),
    }
}

fn rejection(response: &ConfirmationResponse) -> Option<RejectionCode> {
    match &response.verdict {
        LocalVerdict::Approve => None,
        LocalVerdict::Reject { code, .. } => Some(*code),
    }
}

fn completion(effects: &[Effect]) -> Option<&Completion> {
    effects.iter().find_map(|e| match e {
        Effect::Complete(c) => Some(c.as_ref()),
        _ => None,
    })
}

#[test]
fn happy_path_issue_and_transfer_commit_everywhere() {
    let mut world = World::new();
    let iou = world.issue("alice", 100);
    assert!(world.engine("p1").active_contract(&iou.id).is_some());
    assert!(world.engine("p3").active_contract(&iou.id).is_some());
    assert!(world.engine("p2").active_contract(&iou.id).is_none());

    let submission = world.transfer(&iou.id, "bob", "t1");
    let recipients: BTreeSet<_> = submission.envelopes[0].recipients.iter().cloned().collect();
    assert_eq!(recipients.len(), 3, "alice, bob and bank's participants");
    assert_eq!(submission.envelopes[1].recipients, vec![mediator()]);
    let (request_id, hash, responses) = world.sequence(&submission);
    // p1 (alice: actor) and p3 (bank: signatory) confirm; p2 (bob: observer of the new IOU) does not.
    assert_eq!(
        responses.keys().cloned().collect::<Vec<_>>(),
        vec![pid("p1"), pid("p3")]
    );
    assert!(responses
        .values()
        .all(|r| r.verdict == LocalVerdict::Approve));
    assert!(world.engine("p1").is_locked(&iou.id));

    let effects = world.verdict(
        request_id,
        &hash,
        VerdictOutcome::Approved,
        &["p1", "p2", "p3"],
    );
    let tx_ids: BTreeSet<_> = effects
        .values()
        .flatten()
        .filter_map(|e| match e {
            Effect::Commit(c) => Some(c.transaction_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(tx_ids.len(), 1, "all informees agree on the transaction id");
    let done = completion(&effects[&pid("p1")]).expect("the submitter completes");
    assert!(matches!(done.outcome, Outcome::Committed { .. }));
    assert!(!world.engine("p1").is_locked(&iou.id));
    assert!(world.engine("p1").active_contract(&iou.id).is_none());
    let bobs: Vec<_> = world.engine("p2").active_contracts().cloned().collect();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].payload["owner"], "bob");
    assert_eq!(bobs[0].payload["amount"], 100);
    // A duplicate of the committed change is refused with the original outcome.
    let change = World::change("alice-app", "t1", &["alice"]);
    assert!(matches!(
        world.engine("p1").dedup_status(&change.key(), ts(2_000)),
        Some(DedupStatus::Committed { .. })
    ));
    // The deduplication decision comes before interpretation: the retry is a duplicate, not
    // a command on a contract archived by now.
    let retry = world.decide("p1", change, vec![transfer_command(&iou.id, "bob")]);
    let Ok(Begin::Duplicate { transaction_id, .. }) = retry else {
        panic!("a retry of a committed change is a duplicate: {retry:?}");
    };
    assert!(tx_ids.contains(&transaction_id));
}

#[test]
fn a_change_forgotten_by_memory_is_a_duplicate_again_once_recalled_from_the_store() {
    let (mut world, iou, submission) = World::with_alices_transfer();
    let (request_id, hash, _) = world.sequence(&submission);
    let effects = world.verdict(
        request_id,
        &hash,
        VerdictOutcome::Approved,
        &["p1", "p2", "p3"],
    );
    let committed = match &completion(&effects[&pid("p1")]).expect("completes").outcome {
        Outcome::Committed { .. } => World::change("alice-app", "t1", &["alice"]),
        other => panic!("expected a commit, got {other:?}"),
    };
    let status = world
        .engine("p1")
        .dedup_status(&committed.key(), ts(2_000))
        .expect("deduplicated from memory after the commit");
    // A change still in flight at p1 stays whatever the horizon.
    let in_flight = World::change("alice-app", "t2", &["alice"]);
    let other_iou = world.issue("alice", 5);
    world
        .submit(
            "p1",
            in_flight.clone(),
            vec![transfer_command(&other_iou.id, "bob")],
        )
        .expect("a second transfer starts");

    // Forgetting entries committed before the verdict keeps this one; after it, drops it.
    assert_eq!(world.engine("p1").forget_committed_before(request_id), 0);
    let forgotten = world.engine("p1").forget_committed_before(ts(u64::MAX / 2));
    assert!(
        forgotten >= 1,
        "the committed transfer's entry is forgotten"
    );
    assert_eq!(
        world.engine("p1").dedup_status(&committed.key(), ts(2_000)),
        None
    );
    assert!(matches!(
        world.engine("p1").dedup_status(&in_flight.key(), ts(2_000)),
        Some(DedupStatus::InFlight { .. })
    ));
    // Memory keeps the forgotten change's fingerprint, so only it calls for a store read.
    assert!(world.engine("p1").may_have_forgotten(&committed.key()));
    let fresh = World::change("alice-app", "never-submitted", &["alice"]);
    assert!(!world.engine("p1").may_have_forgotten(&fresh.key()));
    assert_eq!(world.engine("p1").forgotten_len(), forgotten);

    // The runtime hands back what the store holds: a retry is a duplicate again, with the
    // original transaction, and never re-run on a contract archived by now.
    world
        .engine("p1")
        .recall_committed(&committed.key(), status.clone());
    let retry = world.decide("p1", committed, vec![transfer_command(&iou.id, "bob")]);
    let (
        Ok(Begin::Duplicate { transaction_id, .. }),
        DedupStatus::Committed {
            transaction_id: original,
            ..
        },
    ) = (retry, status)
    else {
        panic!("a retry of a recalled change is a duplicate");
    };
    assert_eq!(transaction_id, original);
    // A recalled entry never replaces what memory holds (an in-flight marker is newer).
    world.engine("p1").recall_committed(
        &in_flight.key(),
        DedupStatus::Committed {
            transaction_id: transaction_id.clone(),
            offset: meridian_core::LedgerOffset(1),
            expires_at: ts(u64::MAX / 2),
        },
    );
    assert!(matches!(
        world.engine("p1").dedup_status(&in_flight.key(), ts(2_000)),
        Some(DedupStatus::InFlight { .. })
    ));

    // Once the period ended, the fingerprint goes too: no read for a change long expired.
    let DedupStatus::Committed { expires_at, .. } = world
        .engine("p1")
        .dedup_status(
            &World::change("alice-app", "t1", &["alice"]).key(),
            ts(2_000),
        )
        .expect("recalled")
    else {
        panic!("committed");
    };
    let after_period = expires_at.saturating_add(std::time::Duration::from_secs(120));
    world.engine("p1").prune_dedup(after_period);
    assert!(!world
        .engine("p1")
        .may_have_forgotten(&World::change("alice-app", "t1", &["alice"]).key()));
    assert_eq!(world.engine("p1").forgotten_len(), 0);
}

/// A restart takes the period's committed changes as fingerprints, not entries: nothing of
/// them in memory but 8 bytes each, a read before deciding on one (on any change while they
/// are still being read), none once its period ended.
#[test]
fn a_restart_remembers_committed_changes_as_fingerprints_only() {
    let (mut world, _iou, _submission) = World::with_alices_transfer();
    let engine = world.engine("p1");
    let entries = engine.dedup_len();
    let stored = World::change("alice-app", "committed-before-the-restart", &["alice"]);
    let expires_at = ts(600_000_000);
    engine.remember_forgotten(&stored.key(), expires_at);
    assert_eq!(engine.dedup_len(), entries, "no entry in memory");
    assert_eq!(engine.forgotten_len(), 1);
    assert_eq!(engine.dedup_status(&stored.key(), ts(2_000)), None);
    assert!(engine.may_have_forgotten(&stored.key()));
    let fresh = World::change("alice-app", "never-submitted", &["alice"]);
    assert!(!engine.may_have_forgotten(&fresh.key()));
    // While the fingerprints are still being read, any change may be in the store.
    engine.begin_remembering();
    assert!(engine.may_have_forgotten(&fresh.key()));
    engine.end_remembering();
    assert!(!engine.may_have_forgotten(&fresh.key()));
    assert!(engine.may_have_forgotten(&stored.key()));

    engine.prune_dedup(expires_at);
    assert!(
        engine.may_have_forgotten(&stored.key()),
        "its minute has not passed"
    );
    engine.prune_dedup(expires_at.saturating_add(std::time::Duration::from_secs(60)));
    assert!(!engine.may_have_forgotten(&stored.key()));
    assert_eq!(engine.forgotten_len(), 0);
}

#[test]
fn rejection_releases_locks_and_frees_the_change() {
    let (mut world, iou, submission) = World::with_alices_transfer();
    let (request_id, hash, _) = world.sequence(&submission);
    assert!(world.engine("p1").is_locked(&iou.id));
    let effects = world.verdict(
        request_id,
        &hash,
        VerdictOutcome::Rejected {
            code: RejectionCode::Timeout,
            message: "p2 did not answer".into(),
        },
        &["p1", "p2", "p3"],
    );
    assert!(!world.engine("p1").is_locked(&iou.id));
    assert!(!world.engine("p3").is_locked(&iou.id));
    assert!(effects
        .values()
        .flatten()
        .all(|e| !matches!(e, Effect::Commit(_))));
    let done = completion(&effects[&pid("p1")]).unwrap();
    assert!(matches!(
        done.outcome,
        Outcome::Rejected {
            code: StatusCode::Aborted,
            ..
        }
    ));
    assert!(world.engine("p1").active_contract(&iou.id).is_some());
    // The same command id may be submitted again, and now it commits.
    let again = world.transfer(&iou.id, "bob", "t1");
    let (request_id, hash, responses) = world.sequence(&again);
    assert!(responses
        .values()
        .all(|r| r.verdict == LocalVerdict::Approve));
    let effects = world.verdict(
        request_id,
        &hash,
        VerdictOutcome::Approved,
        &["p1", "p2", "p3"],
    );
    assert!(matches!(
        completion(&effects[&pid("p1")]).unwrap().outcome,
        Outcome::Committed { .. }
    ));
}

#[test]
fn double_spend_second_request_is_locked_then_inactive() {
    let mut world = World::new();
    let iou = world.issue("alice", 100);
    let first = world.transfer(&iou.id, "bob", "t1");
    let second = world.transfer(&iou.id, "bank", "t2");
    let third = world.transfer(&iou.id, "bob", "t3");
    let (r1, h1, responses1) = world.sequence(&first);
    assert!(responses1.values().all(|r| rejection(r).is_none()));
    let (r2, h2, responses2) = world.sequence(&second);
    for response in responses2.values() {
        assert_eq!(rejection(response), Some(RejectionCode::LockedContracts));
    }
    world.verdict(
        r2,
        &h2,
        VerdictOutcome::Rejected {
            code: RejectionCode::LockedContracts,
            message: "locked".into(),
        },
        &["p1", "p3"],
    );
    // The loser's rejection must not release the winner's lock.
    assert!(world.engine("p1").is_locked(&iou.id));
    world.verdict(r1, &h1, VerdictOutcome::Approved, &["p1", "p2", "p3"]);
    let (_, _, responses3) = world.sequence(&third);
    for response in responses3.values() {
        assert_eq!(rejection(response), Some(RejectionCode::InactiveContracts));
    }
    // Amount conserved: exactly one IOU of 100 exists, owned by bob.
    let total: u64 = world
        .engine("p3")
        .active_contracts()
        .map(|c| c.payload["amount"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 100);
}

#[test]
fn tampered_transaction_fails_model_conformance() {
    let (mut world, _, mut submission) = World::with_alices_transfer();
    let ProtocolMessage::ConfirmationRequest(mut request) =
        ProtocolMessage::decode(&submission.envelopes[0].payload).unwrap()
    else {
        panic!("not a request");
    };
    let request: &mut ConfirmationRequest = &mut request;
    // Alice tries to hand bob 1,000 instead of 100.
    let json = serde_json::to_string(&request.transaction)
        .unwrap()
        .replace("\"amount\":100", "\"amount\":1000");
    request.transaction = serde_json::from_str(&json).unwrap();
    submission.envelopes[0].payload =
        ProtocolMessage::ConfirmationRequest(Box::new(request.clone())).encode();
    assert_eq!(
        world.rejection_by(&submission, "p3"),
        Some(RejectionCode::ModelConformance)
    );
}

#[test]
fn submitter_must_host_the_acting_parties() {
    let mut world = World::new();
    let iou = world.issue("alice", 100);
    // Each refused before anything is sent: (at, acting for, new owner, expected error).
    type Expected = fn(&SubmitError) -> bool;
    let refusals: [(&str, &str, &str, Expected); 4] = [
        // p2 cannot even prepare a submission for alice, nor for an unknown party.
        ("p2", "alice", "bob", |err| {
            matches!(err, SubmitError::NotHosted { .. })
        }),
        ("p2", "mallory", "bob", |err| {
            matches!(err, SubmitError::UnknownParty(_))
        }),
        // Bob cannot see alice's IOU, so for him it does not exist.
        ("p2", "bob", "bob", |err| {
            matches!(err, SubmitError::UnknownContract(_))
        }),
        // Transferring to a party nobody hosts is refused before sending.
        ("p1", "alice", "nobody", |err| {
            matches!(err, SubmitError::UnknownParty(_))
        }),
    ];
    for (at, acting, new_owner, expected) in refusals {
        let err = world
            .submit(
                at,
                World::change("x", "c", &[acting]),
                vec![transfer_command(&iou.id, new_owner)],
            )
            .unwrap_err();
        assert!(expected(&err), "{at} acting for {acting}: {err}");
    }

    // A forged request from p2 claiming to act for alice is rejected by the others.
    let mut forged = world.transfer(&iou.id, "bob", "t1");
    let ProtocolMessage::ConfirmationRequest(mut request) =
        ProtocolMessage::decode(&forged.envelopes[0].payload).unwrap()
    else {
        panic!("not a request");
    };
    request.submitter = pid("p2");
    forged.sender = pid("p2").as_member();
    forged.envelopes[0].payload = ProtocolMessage::ConfirmationRequest(request).encode();
    assert_eq!(
        world.rejection_by(&forged, "p3"),
        Some(RejectionCode::NotAuthorized)
    );
    assert!(!world.engine("p3").is_locked(&iou.id));
}

#[test]
fn dedup_in_flight_and_unsequenced_expiry() {
    let mut world = World::new();
    let iou = world.issue("alice", 100);
    let change = World::change("alice-app", "t1", &["alice"]);
    let engine = world.engine("p1");
    let local = LocalSubmission {
        change: change.clone(),
        submission_id: "sub-a".into(),
        max_sequencing_time: ts(5_000),
        dedup_period_us: 1_000,
    };
    assert_eq!(
        engine.begin_submission(local.clone(), ts(1_000)),
        Begin::Started(())
    );
    let mut other = local.clone();
    other.submission_id = "sub-b".into();
    assert_eq!(
        engine.begin_submission(other.clone(), ts(1_000)),
        Begin::InFlight {
            submission_id: "sub-a".into()
        }
    );
    // The one door says the same, before interpreting (or recording) anything.
    let retry = world.decide("p1", change.clone(), vec![transfer_command(&iou.id, "bob")]);
    assert!(
        matches!(&retry, Ok(Begin::InFlight { submission_id }) if submission_id == "sub-a"),
        "{retry:?}"
    );
    let engine = world.engine("p1");
    engine.drain_effects();
    // Sequencer time passes the deadline without the request: ABORTED, change freed.
    engine.handle_event(&SequencedInput {
        timestamp: ts(5_001),
        sender: pid("p1").as_member(),
        payloads: vec![ProtocolMessage::TimeProof.encode()],
    });
    let effects = engine.drain_effects();
    let done = completion(&effects).expect("expired");
    assert_eq!(done.submission.submission_id, "sub-a");
    assert!(matches!(
        done.outcome,
        Outcome::Rejected {
            code: StatusCode::Aborted,
            ..
        }
    ));
    assert_eq!(
        engine.begin_submission(other, ts(6_000)),
        Begin::Started(())
    );
    assert!(world.engine("p1").active_contract(&iou.id).is_some());
}

#[test]
fn an_abandoned_submission_never_commits() {
    let (mut world, _, submission) = World::with_alices_transfer();
    let engine = world.engine("p1");
    engine.abandon_submission("sub-2", StatusCode::Aborted, "refused".into(), ts(1));
    let effects = engine.drain_effects();
    assert!(completion(&effects).is_some());
    // The sequencer had sequenced it after all: the submitter itself rejects it.
    assert_eq!(
        world.rejection_by(&submission, "p1"),
        Some(RejectionCode::Malformed)
    );
}

#[test]
fn verdicts_with_bad_signatures_or_hashes_are_ignored_and_restart_resumes() {
    let (mut world, iou, submission) = World::with_alices_transfer();
    let (request_id, hash, _) = world.sequence(&submission);
    let effects = world.verdict(request_id, "wrong-hash", VerdictOutcome::Approved, &["p1"]);
    assert!(effects[&pid("p1")].is_empty());
    let forged = Signed::sign(
        &Verdict {
            request_id,
            request_hash: hash.clone(),
            outcome: VerdictOutcome::Approved,
        },
        mediator(),
        &SigningKey::from_seed([77; 32]),
        SigningPurpose::Verdict,
    );
    let at = world.tick();
    let engine = world.engine("p1");
    engine.handle_event(&SequencedInput {
        timestamp: at,
        sender: mediator(),
        payloads: vec![
            ProtocolMessage::Verdict(forged).encode(),
            b"garbage".to_vec(),
        ],
    });
    assert!(engine.drain_effects().is_empty());
    assert_eq!(engine.pending_count(), 1);

    // Restart p1 from what it would have persisted: the pending request and its lock survive.
    let pending: Vec<PendingRequest> = engine.pending().cloned().collect();
    let contracts: Vec<Contract> = engine.active_contracts().cloned().collect();
    let topology = engine.topology().clone();
    let ledger_end = engine.ledger_end();
    let restarted = ParticipantEngine::new(
        pid("p1"),
        SigningKey::from_seed([1; 32]),
        topology,
        RestoredState {
            checkpoint: Some(at),
            ledger_end,
            active_contracts: contracts,
            pending,
            in_flight: Vec::new(),
        },
    );
    world.engines.insert(pid("p1"), restarted);
    assert!(world.engine("p1").is_locked(&iou.id));
    let effects = world.verdict(request_id, &hash, VerdictOutcome::Approved, &["p1"]);
    assert!(effects[&pid("p1")]
        .iter()
        .any(|e| matches!(e, Effect::Commit(_))));
}

#[test]
fn a_verdict_signed_in_a_group_commits_and_a_tampered_member_of_it_is_ignored() {
    let (mut world, _iou, submission) = World::with_alices_transfer();
    let (request_id, hash, _) = world.sequence(&submission);
    let verdict = |request_id: Timestamp, request_hash: &str, outcome| Verdict {
        request_id,
        request_hash: request_hash.to_owned(),
        outcome,
    };
    // The mediator signed this verdict in one group with two others (for requests p1 never
    // saw): one signature over the group's root.
    let group = Signed::sign_all(
        &[
            verdict(ts(1), "other", VerdictOutcome::Approved),
            verdict(request_id, &hash, VerdictOutcome::Approved),
            verdict(ts(2), "another", VerdictOutcome::Approved),
        ],
        &mediator(),
        &world.mediator_key,
        SigningPurpose::Verdict,
    );
    // A rejection dressed in the group's signature and a neighbour's proof changes nothing.
    let mut forged = group[1].clone();
    forged.payload_json = serde_json::to_string(&verdict(
        request_id,
        &hash,
        VerdictOutcome::Rejected {
            code: RejectionCode::InactiveContracts,
            message: "forged".into(),
        },
    ))
    .unwrap();
    let deliver = |world: &mut World, signed: &Signed| {
        let at = world.tick();
        let engine = world.engine("p1");
        engine.handle_event(&SequencedInput {
            timestamp: at,
            sender: mediator(),
            payloads: vec![ProtocolMessage::Verdict(signed.clone()).encode()],
        });
        engine.drain_effects()
    };
    assert!(deliver(&mut world, &forged).is_empty());
    assert_eq!(world.engine("p1").pending_count(), 1);
    let effects = deliver(&mut world, &group[1]);
    assert!(effects.iter().any(|e| matches!(e, Effect::Commit(_))));
    assert_eq!(world.engine("p1").pending_count(), 0);
}
