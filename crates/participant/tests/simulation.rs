//! A deterministic, in-process simulation of a whole synchronizer — three participant engines,
//! one mediator engine and a fake sequencer — driven by proptest on random workloads, checking
//! the protocol invariants of DESIGN.md §4:
//!
//! 1. no contract is consumed twice (per participant, and on the global ledger), and every
//!    consumption a participant commits is of a contract that participant held active;
//! 2. amounts are conserved: per currency, every committed transaction creates what it
//!    consumes, and the bank's participant (the issuer signs every IOU) holds exactly what was
//!    issued;
//! 3. every informee participant commits every approved transaction, identically, under the
//!    same transaction id, and nobody commits a request the mediator rejected;
//! 4. the active contract sets agree: each participant holds exactly the contracts of the
//!    global ledger that have a stakeholder it hosts;
//!
//! plus liveness and bookkeeping: after the run (everything delivered, time advanced past every
//! deadline) nothing is pending, locked or in flight, every submission completed exactly once,
//! a completion says "committed" exactly when its transaction committed, a change id commits at
//! most once, and a submission built on an archived contract never commits.
//!
//! The sequencer is a queue of submissions; the proptest input decides which pending one is
//! sequenced next, how far time jumps before it, which confirmation responses are lost (a
//! participant that is slow or down), and the workload: issues, transfers, splits, merges,
//! two-contract transfers, deliberate double spends, transfers of archived contracts, and
//! resubmissions of earlier command ids. Timestamps are strictly increasing; a submission that
//! is not sequenced by its max sequencing time is refused, as the real sequencer does.
//!
//! Everything is a function of the proptest input: fixed keys, seeds from counters, no wall
//! clock, and every iteration over engine state is sorted. Reproduce a failure with
//! `PROPTEST_RNG_SEED=<seed>`; set `MERIDIAN_SIM_TRACE=1` to print every sequenced event.

#![allow(clippy::unwrap_used)] // a harness: a failed unwrap is a failed test

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meridian_core::crypto::{SigningKey, SigningPurpose};
use meridian_core::ledger::{Action, Command, Contract, Permission, Transaction};
use meridian_core::protocol::{
    self, ChangeId, ProtocolMessage, RejectionCode, Signed, Verdict, VerdictOutcome,
};
use meridian_core::sequencing::{Envelope, Submission};
use meridian_core::template::{Iou, IouPayload};
use meridian_core::topology::{
    SignedTopologyTransaction, TopologyMapping, TopologySnapshot, TopologyState,
    TopologyTransaction,
};
use meridian_core::{
    CommandId, ContractId, MemberId, MessageId, ParticipantId, PartyId, TemplateId, Timestamp,
    TransactionId, UserId,
};
use meridian_mediator::{Effect as MediatorEffect, MediatorEngine};
use meridian_participant::engine::{
    Begin, CommitRecord, Completion, Effect, LocalSubmission, Outcome, ParticipantEngine,
    RestoredState, SequencedInput,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// The mediator's response timeout.
const TIMEOUT_US: u64 = 2_000;
/// Max sequencing delay of confirmation responses (as the participant runtime's setting).
const RESPONSE_MST_US: u64 = 4_000;
/// Longest max sequencing window of a command submission.
const MAX_WINDOW_US: u64 = 30_000;
/// Deduplication period: longer than any run.
const DEDUP_PERIOD_US: u64 = 3_600_000_000;
const START_US: u64 = 1_000_000;

const PARTICIPANTS: [&str; 3] = ["p1", "p2", "p3"];
/// Every party, with the participant that submits for it.
const PARTIES: [(&str, &str); 5] = [
    ("bank", "p1"),
    ("alice", "p2"),
    ("dave", "p2"),
    ("bob", "p3"),
    ("carol", "p3"),
];
/// (party, participant, permission): dave is hosted twice, confirming on p3 as well.
const HOSTING: [(&str, &str, Permission); 6] = [
    ("bank", "p1", Permission::Submission),
    ("alice", "p2", Permission::Submission),
    ("dave", "p2", Permission::Submission),
    ("dave", "p3", Permission::Confirmation),
    ("bob", "p3", Permission::Submission),
    ("carol", "p3", Permission::Submission),
];
const CURRENCIES: [&str; 2] = ["USD", "EUR"];

fn party(name: &str) -> PartyId {
    PartyId::new(name).unwrap()
}
fn pid(name: &str) -> ParticipantId {
    ParticipantId::new(name).unwrap()
}
fn member(name: &str) -> MemberId {
    MemberId::new(name).unwrap()
}
fn mediator() -> MemberId {
    member("mediator")
}
fn ts(micros: u64) -> Timestamp {
    Timestamp::from_micros(micros)
}
fn participant_key(p: &ParticipantId) -> SigningKey {
    let index = PARTICIPANTS.iter().position(|n| *n == p.as_str()).unwrap();
    SigningKey::from_seed([index as u8 + 1; 32])
}
fn submitter_of(p: &PartyId) -> ParticipantId {
    let (_, host) = PARTIES.iter().find(|(n, _)| *n == p.as_str()).unwrap();
    pid(host)
}
fn iou(contract: &Contract) -> IouPayload {
    Iou::payload(contract).unwrap()
}
fn iou_template() -> TemplateId {
    TemplateId::new("Iou").unwrap()
}

// ---- The workload -----------------------------------------------------------------------

/// Picks one of `len` candidates (modulo), shrinking towards the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pick(u16);

impl Pick {
    fn index(self, len: usize) -> usize {
        usize::from(self.0) % len
    }
}

impl Arbitrary for Pick {
    type Parameters = ();
    type Strategy = prop::strategy::Map<prop::num::u16::Any, fn(u16) -> Pick>;

    fn arbitrary_with((): ()) -> Self::Strategy {
        any::<u16>().prop_map(Pick)
    }
}

#[derive(Debug, Clone)]
enum Cmd {
    /// The bank issues an IOU.
    Issue {
        owner: usize,
        amount: u64,
        currency: usize,
    },
    /// `holder` transfers one of its IOUs (picked among those its participant sees, locked
    /// ones included: that is how concurrent requests conflict).
    Transfer {
        holder: usize,
        pick: Pick,
        to: usize,
    },
    Split {
        holder: usize,
        pick: Pick,
        cut: u64,
    },
    Merge {
        holder: usize,
        pick: Pick,
        other: Pick,
    },
    /// Two transfers of the same IOU, prepared from the same state: a double spend attempt.
    DoubleSpend {
        holder: usize,
        pick: Pick,
        to_a: usize,
        to_b: usize,
    },
    /// Two IOUs transferred in one transaction: it must commit or fail as a whole.
    TransferTwo {
        holder: usize,
        pick: Pick,
        other: Pick,
        to: usize,
    },
    /// A transfer of an IOU the holder's participant has seen archived, prepared as a
    /// submitter with a stale view would prepare it.
    Stale {
        holder: usize,
        pick: Pick,
        to: usize,
    },
    /// The change (user, act_as, command id) of an earlier command, submitted again.
    Resubmit {
        which: Pick,
    },
    /// The participant's next `count` confirmation responses are lost.
    Mute {
        participant: usize,
        count: u32,
    },
    /// Sequencer time jumps; a mediator with pending requests asks for a time proof.
    Advance {
        micros: u64,
    },
}

#[derive(Debug, Clone)]
struct Step {
    cmd: Cmd,
    /// Max sequencing time of the command's submission, relative to now.
    window: u64,
    /// Then sequence this many pending submissions: (which one, time gap before it).
    schedule: Vec<(Pick, u64)>,
}

fn cmd_strategy() -> impl Strategy<Value = Cmd> {
    let owner = 0..PARTIES.len();
    prop_oneof![
        3 => (owner.clone(), 1..=1_000u64, 0..CURRENCIES.len())
            .prop_map(|(owner, amount, currency)| Cmd::Issue { owner, amount, currency }),
        4 => (owner.clone(), any::<Pick>(), owner.clone())
            .prop_map(|(holder, pick, to)| Cmd::Transfer { holder, pick, to }),
        2 => (owner.clone(), any::<Pick>(), any::<u64>())
            .prop_map(|(holder, pick, cut)| Cmd::Split { holder, pick, cut }),
        2 => (owner.clone(), any::<Pick>(), any::<Pick>())
            .prop_map(|(holder, pick, other)| Cmd::Merge { holder, pick, other }),
        2 => (owner.clone(), any::<Pick>(), owner.clone(), owner.clone())
            .prop_map(|(holder, pick, to_a, to_b)| Cmd::DoubleSpend { holder, pick, to_a, to_b }),
        1 => (owner.clone(), any::<Pick>(), any::<Pick>(), owner.clone())
            .prop_map(|(holder, pick, other, to)| Cmd::TransferTwo { holder, pick, other, to }),
        1 => (owner.clone(), any::<Pick>(), owner.clone())
            .prop_map(|(holder, pick, to)| Cmd::Stale { holder, pick, to }),
        1 => any::<Pick>().prop_map(|which| Cmd::Resubmit { which }),
        1 => (0..PARTICIPANTS.len(), 1..=3u32)
            .prop_map(|(participant, count)| Cmd::Mute { participant, count }),
        1 => (0..=3 * TIMEOUT_US).prop_map(|micros| Cmd::Advance { micros }),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let gap = prop_oneof![6 => 1..=60u64, 1 => 60..=2 * TIMEOUT_US];
    let window = prop_oneof![3 => 5_000..=MAX_WINDOW_US, 1 => 50..=1_500u64];
    (
        cmd_strategy(),
        window,
        prop::collection::vec((any::<Pick>(), gap), 0..=6),
    )
        .prop_map(|(cmd, window, schedule)| Step {
            cmd,
            window,
            schedule,
        })
}

fn workload() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step_strategy(), 1..=30)
}

// ---- The simulated synchronizer ---------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct Stats {
    cases: usize,
    sequenced: usize,
    refused_by_sequencer: usize,
    dropped_responses: usize,
    deduplicated: usize,
    skipped_commands: usize,
    stale_submissions: usize,
    committed: usize,
    verdicts: BTreeMap<String, usize>,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.cases += other.cases;
        self.sequenced += other.sequenced;
        self.refused_by_sequencer += other.refused_by_sequencer;
        self.dropped_responses += other.dropped_responses;
        self.deduplicated += other.deduplicated;
        self.skipped_commands += other.skipped_commands;
        self.stale_submissions += other.stale_submissions;
        self.committed += other.committed;
        for (k, v) in &other.verdicts {
            *self.verdicts.entry(k.clone()).or_default() += v;
        }
    }

    fn verdicts_of(&self, outcome: &str) -> usize {
        self.verdicts.get(outcome).copied().unwrap_or(0)
    }
}

/// A submission the harness started (recorded in flight at its participant).
#[derive(Debug, Clone)]
struct Started {
    participant: ParticipantId,
    submission_id: String,
    change_key: String,
    stale: bool,
}

struct Sim {
    now: u64,
    trace: bool,
    participants: BTreeMap<ParticipantId, ParticipantEngine>,
    mediator: MediatorEngine,
    mediator_key: SigningKey,
    /// Submitted, not yet sequenced.
    queue: Vec<Submission>,
    counter: u64,
    /// Confirmation responses still to lose, per participant.
    mute: BTreeMap<ParticipantId, u32>,
    commits: BTreeMap<ParticipantId, Vec<CommitRecord>>,
    completions: BTreeMap<ParticipantId, Vec<Completion>>,
    /// Every verdict the mediator decided, with its recipients.
    verdicts: BTreeMap<Timestamp, (Verdict, BTreeSet<ParticipantId>)>,
    started: Vec<Started>,
    /// Earlier commands, for resubmission: (participant, change, commands).
    history: Vec<(ParticipantId, ChangeId, Vec<Command>)>,
    /// Every contract ever created in a commit, and the ones each participant archived.
    contracts: BTreeMap<ContractId, Contract>,
    archived_at: BTreeMap<ParticipantId, BTreeSet<ContractId>>,
    /// The topology, as it ends up everywhere.
    topology: TopologySnapshot,
    stats: Stats,
}

impl Sim {
    fn new() -> Self {
        let owner = SigningKey::from_seed([42; 32]);
        let mediator_key = SigningKey::from_seed([43; 32]);
        let participants: BTreeMap<ParticipantId, ParticipantEngine> = PARTICIPANTS
            .iter()
            .map(|name| {
                let p = pid(name);
                let engine = ParticipantEngine::new(
                    p.clone(),
                    participant_key(&p),
                    TopologyState::new(owner.public_key()),
                    RestoredState::default(),
                );
                (p, engine)
            })
            .collect();
        let mediator_engine = MediatorEngine::new(
            mediator(),
            TopologyState::new(owner.public_key()),
            Duration::from_micros(TIMEOUT_US),
        );
        let mut sim = Self {
            now: START_US,
            trace: std::env::var_os("MERIDIAN_SIM_TRACE").is_some(),
            participants,
            mediator: mediator_engine,
            mediator_key,
            queue: Vec::new(),
            counter: 0,
            mute: BTreeMap::new(),
            commits: BTreeMap::new(),
            completions: BTreeMap::new(),
            verdicts: BTreeMap::new(),
            started: Vec::new(),
            history: Vec::new(),
            contracts: BTreeMap::new(),
            archived_at: BTreeMap::new(),
            topology: TopologySnapshot::default(),
            stats: Stats {
                cases: 1,
                ..Stats::default()
            },
        };

        // The owner-signed topology, sequenced first, one transaction per event.
        let mut mappings = vec![TopologyMapping::Mediator {
            mediator: mediator(),
            public_key: sim.mediator_key.public_key().to_string(),
        }];
        for name in PARTICIPANTS {
            mappings.push(TopologyMapping::Participant {
                participant: pid(name),
                public_key: participant_key(&pid(name)).public_key().to_string(),
            });
        }
        for (who, host, permission) in HOSTING {
            mappings.push(TopologyMapping::PartyToParticipant {
                party: party(who),
                participant: pid(host),
                permission,
            });
        }
        let everyone: Vec<MemberId> = PARTICIPANTS
            .iter()
            .map(|p| pid(p).as_member())
            .chain([mediator()])
            .collect();
        for (serial, mapping) in mappings.into_iter().enumerate() {
            let signed = SignedTopologyTransaction::sign(
                &TopologyTransaction {
                    serial: serial as u64 + 1,
                    mapping,
                },
                &owner,
            );
            sim.sequence(
                Submission {
                    sender: member("topology-manager"),
                    message_id: MessageId::new(format!("topology-{serial}")).unwrap(),
                    envelopes: vec![Envelope {
                        recipients: everyone.clone(),
                        payload: ProtocolMessage::Topology(signed).encode(),
                    }],
                    max_sequencing_time: Timestamp::MAX,
                },
                1,
            );
        }
        sim.topology = sim.participants[&pid("p1")].topology().latest().clone();
        for engine in sim.participants.values() {
            assert_eq!(engine.topology().latest(), &sim.topology);
        }
        assert_eq!(sim.mediator.topology().latest(), &sim.topology);
        sim
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn engine(&self, p: &ParticipantId) -> &ParticipantEngine {
        &self.participants[p]
    }

    // ---- The sequencer ----

    /// Stamps `submission` with a fresh timestamp `gap` (≥ 1) after the last one and delivers
    /// it to every recipient; refuses it past its max sequencing time.
    fn sequence(&mut self, submission: Submission, gap: u64) {
        self.now += gap.max(1);
        let at = ts(self.now);
        if at > submission.max_sequencing_time {
            self.stats.refused_by_sequencer += 1;
            if self.trace {
                eprintln!(
                    "{at} REFUSED {} from {}",
                    submission.message_id, submission.sender
                );
            }
            return;
        }
        self.stats.sequenced += 1;
        let recipients: BTreeSet<MemberId> = submission
            .envelopes
            .iter()
            .flat_map(|e| e.recipients.iter().cloned())
            .collect();
        if self.trace {
            eprintln!(
                "{at} {} from {} to {:?}",
                submission.message_id, submission.sender, recipients
            );
        }
        for recipient in recipients {
            let payloads: Vec<Vec<u8>> = submission
                .envelopes
                .iter()
                .filter(|e| e.recipients.contains(&recipient))
                .map(|e| e.payload.clone())
                .collect();
            if recipient == mediator() {
                let mut effects = Vec::new();
                for payload in &payloads {
                    match ProtocolMessage::decode(payload) {
                        Ok(message) => effects.extend(self.mediator.on_event(
                            at,
                            submission.sender.clone(),
                            message,
                        )),
                        Err(_) => effects.extend(self.mediator.on_time(at)),
                    }
                }
                self.on_mediator_effects(effects);
            } else {
                let p = ParticipantId::from_member(&recipient);
                let engine = self.participants.get_mut(&p).expect("a known participant");
                engine.handle_event(&SequencedInput {
                    timestamp: at,
                    sender: submission.sender.clone(),
                    payloads,
                });
                let effects = engine.drain_effects();
                self.on_participant_effects(&p, effects);
            }
        }
    }

    fn on_participant_effects(&mut self, p: &ParticipantId, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send(message) => {
                    let mute = self.mute.entry(p.clone()).or_default();
                    let is_response = matches!(
                        ProtocolMessage::decode(message.payload.as_bytes()),
                        Ok(ProtocolMessage::ConfirmationResponse(_))
                    );
                    if is_response && *mute > 0 {
                        *mute -= 1;
                        self.stats.dropped_responses += 1;
                        continue;
                    }
                    self.queue.push(Submission {
                        sender: p.as_member(),
                        message_id: MessageId::new(message.message_id).unwrap(),
                        envelopes: vec![Envelope {
                            recipients: message.recipients,
                            payload: message.payload.into_bytes(),
                        }],
                        max_sequencing_time: ts(self.now + RESPONSE_MST_US),
                    });
                }
                Effect::Commit(record) => {
                    for contract in &record.created {
                        self.contracts.insert(contract.id.clone(), contract.clone());
                    }
                    self.archived_at
                        .entry(p.clone())
                        .or_default()
                        .extend(record.archived.iter().cloned());
                    self.commits.entry(p.clone()).or_default().push(*record);
                }
                Effect::Complete(completion) => {
                    self.completions
                        .entry(p.clone())
                        .or_default()
                        .push(*completion);
                }
                Effect::InFlight(_)
                | Effect::Pending(_)
                | Effect::Decided { .. }
                | Effect::TopologyChanged => {}
            }
        }
    }

    fn on_mediator_effects(&mut self, effects: Vec<MediatorEffect>) {
        for effect in effects {
            match effect {
                MediatorEffect::SendVerdict {
                    request_id,
                    informee_participants,
                    verdict,
                } => {
                    let label = match &verdict.outcome {
                        VerdictOutcome::Approved => "approved".to_owned(),
                        VerdictOutcome::Rejected { code, .. } => format!("{code:?}"),
                    };
                    *self.stats.verdicts.entry(label).or_default() += 1;
                    let signed = Signed::sign(
                        &verdict,
                        mediator(),
                        &self.mediator_key,
                        SigningPurpose::Verdict,
                    );
                    let previous = self
                        .verdicts
                        .insert(request_id, (verdict.clone(), informee_participants.clone()));
                    assert!(
                        previous.is_none(),
                        "the mediator decided request {request_id} twice"
                    );
                    self.queue.push(Submission {
                        sender: mediator(),
                        message_id: MessageId::new(format!("verdict-{}", request_id.as_micros()))
                            .unwrap(),
                        envelopes: vec![Envelope {
                            recipients: informee_participants
                                .iter()
                                .map(ParticipantId::as_member)
                                .collect(),
                            payload: ProtocolMessage::Verdict(signed).encode(),
                        }],
                        max_sequencing_time: Timestamp::MAX,
                    });
                }
                MediatorEffect::RequestTimeProof => self.queue.push(time_proof(mediator())),
                MediatorEffect::Persist(_) | MediatorEffect::Ignored(_) => {}
            }
        }
    }

    // ---- Applications ----

    /// Prepares `commands` at `p` (or, if given, at a stand-in engine holding a stale view)
    /// and starts the submission at `p`.
    fn submit(
        &mut self,
        p: &ParticipantId,
        change: ChangeId,
        commands: Vec<Command>,
        window: u64,
        stale_view: Option<&ParticipantEngine>,
    ) {
        let n = self.next();
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&n.to_be_bytes());
        let submission_id = MessageId::new(format!("sub-{n}")).unwrap();
        let deadline = ts(self.now + window);
        let preparer = stale_view.unwrap_or(&self.participants[p]);
        let prepared = preparer.prepare_submission(
            &change,
            &commands,
            seed,
            &submission_id,
            &mediator(),
            deadline,
        );
        let submission = match prepared {
            Ok(submission) => submission,
            Err(error) => {
                // Cannot happen for the commands the harness builds from visible contracts.
                panic!("preparing {commands:?} at {p} failed: {error}");
            }
        };
        let local = LocalSubmission {
            change: change.clone(),
            submission_id: submission_id.to_string(),
            max_sequencing_time: deadline,
            dedup_period_us: DEDUP_PERIOD_US,
        };
        let now = ts(self.now);
        let engine = self.participants.get_mut(p).unwrap();
        match engine.begin_submission(local, now) {
            Begin::Started => {
                let effects = engine.drain_effects();
                self.on_participant_effects(p, effects);
                self.started.push(Started {
                    participant: p.clone(),
                    submission_id: submission_id.to_string(),
                    change_key: change.key(),
                    stale: stale_view.is_some(),
                });
                if stale_view.is_none() {
                    self.history.push((p.clone(), change, commands));
                } else {
                    self.stats.stale_submissions += 1;
                }
                self.queue.push(submission);
            }
            Begin::InFlight { .. } | Begin::Duplicate { .. } => self.stats.deduplicated += 1,
        }
    }

    fn change(&mut self, acting: &PartyId) -> ChangeId {
        let n = self.next();
        ChangeId {
            user_id: UserId::new(format!("app-{acting}")).unwrap(),
            act_as: BTreeSet::from([acting.clone()]),
            command_id: CommandId::new(format!("cmd-{n}")).unwrap(),
        }
    }

    /// The IOUs `holder` owns that its participant holds, sorted by id.
    fn holdings(&self, holder: &PartyId) -> Vec<Contract> {
        let mut contracts: Vec<Contract> = self
            .engine(&submitter_of(holder))
            .active_contracts()
            .filter(|c| iou(c).owner == *holder)
            .cloned()
            .collect();
        contracts.sort_by(|a, b| a.id.cmp(&b.id));
        contracts
    }

    fn run_cmd(&mut self, cmd: &Cmd, window: u64) {
        let owner = |i: usize| party(PARTIES[i].0);
        let transfer = |c: &Contract, to: &PartyId| Command::Exercise {
            contract_id: c.id.clone(),
            choice: "Transfer".into(),
            argument: serde_json::json!({ "new_owner": to }),
        };
        match cmd {
            Cmd::Issue {
                owner: o,
                amount,
                currency,
            } => {
                let bank = party("bank");
                let command = Command::Create {
                    template: iou_template(),
                    payload: IouPayload {
                        issuer: bank.clone(),
                        owner: owner(*o),
                        amount: *amount,
                        currency: CURRENCIES[*currency].into(),
                    }
                    .to_value(),
                };
                let change = self.change(&bank);
                self.submit(&pid("p1"), change, vec![command], window, None);
            }
            Cmd::Transfer { holder, pick, to } => {
                let holder = owner(*holder);
                let held = self.holdings(&holder);
                if held.is_empty() {
                    self.stats.skipped_commands += 1;
                    return;
                }
                let command = transfer(&held[pick.index(held.len())], &owner(*to));
                let change = self.change(&holder);
                self.submit(&submitter_of(&holder), change, vec![command], window, None);
            }
            Cmd::Split { holder, pick, cut } => {
                let holder = owner(*holder);
                let held: Vec<Contract> = self
                    .holdings(&holder)
                    .into_iter()
                    .filter(|c| iou(c).amount >= 2)
                    .collect();
                if held.is_empty() {
                    self.stats.skipped_commands += 1;
                    return;
                }
                let contract = &held[pick.index(held.len())];
                let amount = 1 + cut % (iou(contract).amount - 1);
                let command = Command::Exercise {
                    contract_id: contract.id.clone(),
                    choice: "Split".into(),
                    argument: serde_json::json!({ "amount": amount }),
                };
                let change = self.change(&holder);
                self.submit(&submitter_of(&holder), change, vec![command], window, None);
            }
            Cmd::Merge {
                holder,
                pick,
                other,
            } => {
                let holder = owner(*holder);
                let held = self.holdings(&holder);
                if held.is_empty() {
                    self.stats.skipped_commands += 1;
                    return;
                }
                let first = &held[pick.index(held.len())];
                let candidates: Vec<&Contract> = held
                    .iter()
                    .filter(|c| c.id != first.id && iou(c).currency == iou(first).currency)
                    .collect();
                if candidates.is_empty() {
                    self.stats.skipped_commands += 1;
                    return;
                }
                let second = candidates[other.index(candidates.len())];
                let command = Command::Exercise {
                    contract_id: first.id.clone(),
                    choice: "Merge".into(),
                    argument: serde_json::json!({ "other": second.id }),
                };
                let change = self.change(&holder);
                self.submit(&submitter_of(&holder), change, vec![command], window, None);
            }
            Cmd::DoubleSpend {
                holder,
                pick,
                to_a,
                to_b,
            } => {
                let holder = owner(*holder);
                let held = self.holdings(&holder);
                if held.is_empty() {
                    self.stats.skipped_commands += 1;
                    return;
                }
                let contract = held[pick.index(held.len())].clone();
                let p = submitter_of(&holder);
                for to in [to_a, to_b] {
                    let change = self.change(&holder);
                    let command = transfer(&contract, &owner(*to));
                    self.submit(&p, change, vec![command], window, None);
                }
            }
            Cmd::TransferTwo {
                holder,
                pick,
                other,
                to,
            } => {
                let holder = owner(*holder);
                let held = self.holdings(&holder);
                if held.len() < 2 {
                    self.stats.skipped_commands += 1;
                    return;
                }
                let first = pick.index(held.len());
                let mut second = other.index(held.len() - 1);
                if second >= first {
                    second += 1;
                }
                let to = owner(*to);
                let commands = vec![transfer(&held[first], &to), transfer(&held[second], &to)];
                let change = self.change(&holder);
                self.submit(&submitter_of(&holder), change, commands, window, None);
            }
            Cmd::Stale { holder, pick, to } => {
                let holder = owner(*holder);
                let p = submitter_of(&holder);
                let archived: Vec<Contract> = self
                    .archived_at
                    .get(&p)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| self.contracts.get(id))
                    .filter(|c| iou(c).owner == holder)
                    .cloned()
                    .collect();
                if archived.is_empty() {
                    self.stats.skipped_commands += 1;
                    return;
                }
                let contract = archived[pick.index(archived.len())].clone();
                // The participant as it was before the contract was archived.
                let ghost = ParticipantEngine::new(
                    p.clone(),
                    participant_key(&p),
                    self.engine(&p).topology().clone(),
                    RestoredState {
                        active_contracts: vec![contract.clone()],
                        ..RestoredState::default()
                    },
                );
                let change = self.change(&holder);
                let command = transfer(&contract, &owner(*to));
                self.submit(&p, change, vec![command], window, Some(&ghost));
            }
            Cmd::Resubmit { which } => {
                if self.history.is_empty() {
                    self.stats.skipped_commands += 1;
                    return;
                }
                let (p, change, commands) = self.history[which.index(self.history.len())].clone();
                // Only if its contracts are still visible; otherwise it fails before sending.
                let visible = commands.iter().all(|command| match command {
                    Command::Exercise { contract_id, .. } => {
                        self.engine(&p).active_contract(&contract_id).is_some()
                    }
                    Command::Create { .. } => true,
                });
                let merge_other_visible = commands.iter().all(|command| match command {
                    Command::Exercise {
                        choice, argument, ..
                    } if choice == "Merge" => argument["other"]
                        .as_str()
                        .and_then(|id| ContractId::new(id).ok())
                        .is_some_and(|id| self.engine(&p).active_contract(&id).is_some()),
                    _ => true,
                });
                if !visible || !merge_other_visible {
                    self.stats.skipped_commands += 1;
                    return;
                }
                self.submit(&p, change, commands, window, None);
            }
            Cmd::Mute { participant, count } => {
                *self
                    .mute
                    .entry(pid(PARTICIPANTS[*participant]))
                    .or_default() += count;
            }
            Cmd::Advance { micros } => {
                self.now += micros;
                let effects = self.mediator.on_quiet();
                self.on_mediator_effects(effects);
            }
        }
    }

    fn run(&mut self, steps: &[Step]) {
        for step in steps {
            self.run_cmd(&step.cmd, step.window);
            for (pick, gap) in &step.schedule {
                if self.queue.is_empty() {
                    break;
                }
                let submission = self.queue.remove(pick.index(self.queue.len()));
                self.sequence(submission, *gap);
            }
        }
        // Deliver everything in order, then let time pass every deadline, until quiet.
        for _ in 0..20 {
            while !self.queue.is_empty() {
                let submission = self.queue.remove(0);
                self.sequence(submission, 1);
            }
            if self.quiescent() {
                return;
            }
            self.now += TIMEOUT_US.max(MAX_WINDOW_US).max(RESPONSE_MST_US) + 1;
            for p in PARTICIPANTS {
                self.queue.push(time_proof(pid(p).as_member()));
            }
            self.queue.push(time_proof(mediator()));
        }
    }

    fn quiescent(&self) -> bool {
        self.queue.is_empty()
            && self.mediator.pending_count() == 0
            && self
                .participants
                .values()
                .all(|e| e.pending_count() == 0 && e.in_flight_count() == 0)
    }

    fn hosts(&self, p: &ParticipantId, parties: &BTreeSet<PartyId>) -> bool {
        parties
            .iter()
            .any(|party| self.topology.permission(party, p).is_some())
    }

    // ---- The invariants ----

    fn check(&self) -> Result<(), TestCaseError> {
        // Liveness: everything was decided and delivered.
        prop_assert!(self.quiescent(), "not quiescent after the final drain");
        for (p, engine) in &self.participants {
            for id in self.contracts.keys() {
                prop_assert!(!engine.is_locked(id), "{p} still locks {id}");
            }
        }

        // (3) Informee agreement, and commits only on approval.
        let mut ledger: BTreeMap<TransactionId, (Timestamp, Transaction, BTreeSet<PartyId>)> =
            BTreeMap::new();
        let mut committed_at: BTreeMap<TransactionId, BTreeSet<ParticipantId>> = BTreeMap::new();
        for (p, records) in &self.commits {
            let mut seen = BTreeSet::new();
            for record in records {
                prop_assert!(
                    seen.insert(record.transaction_id.clone()),
                    "{p} committed {} twice",
                    record.transaction_id
                );
                let Some((verdict, _)) = self.verdicts.get(&record.request_id) else {
                    return Err(TestCaseError::fail(format!(
                        "{p} committed request {} without a verdict",
                        record.request_id
                    )));
                };
                prop_assert_eq!(
                    &verdict.outcome,
                    &VerdictOutcome::Approved,
                    "{} committed request {} which the mediator rejected",
                    p,
                    record.request_id
                );
                prop_assert_eq!(
                    &record.transaction_id,
                    &protocol::transaction_id(record.request_id, &verdict.request_hash)
                );
                let entry = (
                    record.request_id,
                    record.transaction.clone(),
                    record.informees.clone(),
                );
                let known = ledger
                    .entry(record.transaction_id.clone())
                    .or_insert_with(|| entry.clone());
                prop_assert!(
                    *known == entry,
                    "participants disagree on transaction {}",
                    record.transaction_id
                );
                prop_assert_eq!(&record.informees, &record.transaction.informees());
                committed_at
                    .entry(record.transaction_id.clone())
                    .or_default()
                    .insert(p.clone());
            }
        }
        for (tx_id, (_, transaction, _)) in &ledger {
            let expected = self.topology.hosting_participants(&transaction.informees());
            prop_assert_eq!(
                &committed_at[tx_id],
                &expected,
                "transaction {} is not committed on exactly its informee participants",
                tx_id
            );
        }
        for (request_id, (verdict, recipients)) in &self.verdicts {
            if verdict.outcome == VerdictOutcome::Approved {
                let tx_id = protocol::transaction_id(*request_id, &verdict.request_hash);
                prop_assert_eq!(
                    committed_at.get(&tx_id),
                    Some(recipients),
                    "approved request {} not committed by all its informee participants",
                    request_id
                );
            }
        }

        // (1) No contract consumed twice, and consumptions only of contracts held active.
        for (p, records) in &self.commits {
            let mut consumed = BTreeSet::new();
            for record in records {
                for id in record.transaction.consumed() {
                    prop_assert!(consumed.insert(id.clone()), "{p} consumed {id} twice");
                }
                for action in record.transaction.actions() {
                    if let Action::Exercise {
                        contract_id,
                        consuming: true,
                        stakeholders,
                        ..
                    } = action
                    {
                        if self.hosts(p, stakeholders) {
                            prop_assert!(
                                record.archived.contains(contract_id),
                                "{} committed {} consuming {}, which it did not hold active",
                                p,
                                record.transaction_id,
                                contract_id
                            );
                        }
                    }
                }
            }
        }
        // The global ledger, replayed in request order: every consumed contract was created
        // before and is consumed once; each transaction conserves amounts per currency.
        let mut by_request: Vec<&(Timestamp, Transaction, BTreeSet<PartyId>)> =
            ledger.values().collect();
        by_request.sort_by_key(|(request_id, _, _)| *request_id);
        let mut active: BTreeMap<ContractId, Contract> = BTreeMap::new();
        let mut issued: BTreeMap<String, u64> = BTreeMap::new();
        for (request_id, transaction, _) in by_request {
            let mut consumed_amounts: BTreeMap<String, u64> = BTreeMap::new();
            let mut created_amounts: BTreeMap<String, u64> = BTreeMap::new();
            for id in transaction.consumed() {
                let Some(contract) = active.remove(&id) else {
                    return Err(TestCaseError::fail(format!(
                        "request {request_id} consumes {id}, which is not active on the ledger"
                    )));
                };
                *consumed_amounts.entry(iou(&contract).currency).or_default() +=
                    iou(&contract).amount;
            }
            for contract in transaction.created() {
                *created_amounts.entry(iou(contract).currency).or_default() += iou(contract).amount;
                active.insert(contract.id.clone(), contract.clone());
            }
            if transaction.consumed().is_empty() {
                for (currency, amount) in created_amounts {
                    *issued.entry(currency).or_default() += amount;
                }
            } else {
                prop_assert_eq!(
                    consumed_amounts,
                    created_amounts,
                    "request {} does not conserve amounts",
                    request_id
                );
            }
        }

        // (2) Conservation at the bank's participant, which holds every IOU.
        let mut held: BTreeMap<String, u64> = BTreeMap::new();
        for contract in self.engine(&pid("p1")).active_contracts() {
            *held.entry(iou(contract).currency).or_default() += iou(contract).amount;
        }
        prop_assert_eq!(
            held,
            issued,
            "bank's ACS totals differ from what was issued"
        );

        // (4) Each participant holds exactly the ledger's contracts with a stakeholder it
        // hosts; hence any two agree on every contract both should know.
        for (p, engine) in &self.participants {
            let acs: BTreeMap<ContractId, Contract> = engine
                .active_contracts()
                .map(|c| (c.id.clone(), c.clone()))
                .collect();
            let expected: BTreeMap<ContractId, Contract> = active
                .iter()
                .filter(|(_, c)| self.hosts(p, &c.stakeholders()))
                .map(|(id, c)| (id.clone(), c.clone()))
                .collect();
            prop_assert!(acs == expected, "{p}'s active contract set differs");
            for (q, other) in &self.participants {
                for contract in other.active_contracts() {
                    if self.hosts(p, &contract.stakeholders()) {
                        prop_assert_eq!(
                            acs.get(&contract.id),
                            Some(contract),
                            "{} and {} disagree on {}",
                            p,
                            q,
                            contract.id
                        );
                    }
                }
            }
        }

        // Completions: each started submission completes once; "committed" means committed.
        let mut completed: BTreeMap<(ParticipantId, String), &Completion> = BTreeMap::new();
        for (p, completions) in &self.completions {
            for completion in completions {
                let key = (p.clone(), completion.submission.submission_id.clone());
                prop_assert!(
                    completed.insert(key, completion).is_none(),
                    "{p} completed {} twice",
                    completion.submission.submission_id
                );
            }
        }
        prop_assert_eq!(completed.len(), self.started.len());
        let mut committed_changes = BTreeSet::new();
        for started in &self.started {
            let key = (started.participant.clone(), started.submission_id.clone());
            let Some(completion) = completed.get(&key) else {
                return Err(TestCaseError::fail(format!(
                    "{} never completed {}",
                    started.participant, started.submission_id
                )));
            };
            let commit = self.commits.get(&started.participant).and_then(|records| {
                records.iter().find(|r| {
                    r.local
                        .as_ref()
                        .is_some_and(|l| l.submission_id == started.submission_id)
                })
            });
            match &completion.outcome {
                Outcome::Committed {
                    transaction_id,
                    offset,
                } => {
                    let Some(commit) = commit else {
                        return Err(TestCaseError::fail(format!(
                            "{} completed {} as committed without committing it",
                            started.participant, started.submission_id
                        )));
                    };
                    prop_assert_eq!(transaction_id, &commit.transaction_id);
                    prop_assert_eq!(*offset, commit.offset);
                    prop_assert!(
                        !started.stale,
                        "a transfer of an archived contract committed"
                    );
                    prop_assert!(
                        committed_changes.insert(started.change_key.clone()),
                        "change {} committed twice",
                        started.change_key
                    );
                }
                Outcome::Rejected { .. } => prop_assert!(
                    commit.is_none(),
                    "{} completed {} as rejected but committed it",
                    started.participant,
                    started.submission_id
                ),
            }
        }
        Ok(())
    }
}

fn time_proof(to: MemberId) -> Submission {
    Submission {
        sender: to.clone(),
        message_id: MessageId::new(format!("tp-{to}")).unwrap(),
        envelopes: vec![Envelope {
            recipients: vec![to],
            payload: ProtocolMessage::TimeProof.encode(),
        }],
        max_sequencing_time: Timestamp::MAX,
    }
}

fn simulate(steps: &[Step]) -> Result<Stats, TestCaseError> {
    let mut sim = Sim::new();
    sim.run(steps);
    sim.check()?;
    sim.stats.committed = sim.commits.get(&pid("p1")).map_or(0, Vec::len);
    Ok(sim.stats)
}

#[test]
fn random_workloads_keep_the_ledger_invariants() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let config = Config {
        cases,
        source_file: Some(file!()),
        ..Config::default()
    };
    let total = RefCell::new(Stats::default());
    let mut runner = TestRunner::new(config);
    let result = runner.run(&workload(), |steps| {
        let stats = simulate(&steps)?;
        total.borrow_mut().add(&stats);
        Ok(())
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, steps)) => {
            panic!("invariant violated: {reason}\nminimal workload: {steps:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("aborted: {reason}"),
    }
    let total = total.into_inner();
    eprintln!("{total:#?}");
    // The workload must actually exercise what the invariants are about.
    if cases >= 64 {
        assert!(total.committed > 0, "nothing committed: {total:?}");
        for code in [
            RejectionCode::LockedContracts,
            RejectionCode::InactiveContracts,
            RejectionCode::Timeout,
        ] {
            assert!(
                total.verdicts_of(&format!("{code:?}")) > 0,
                "no {code:?} rejection in {cases} cases: {total:?}"
            );
        }
        assert!(total.refused_by_sequencer > 0, "{total:?}");
        assert!(total.dropped_responses > 0, "{total:?}");
        assert!(total.stale_submissions > 0, "{total:?}");
    }
}

/// A hand-written case: a double spend sequenced back to back, then a stale transfer.
#[test]
fn double_spend_commits_at_most_once() {
    let first = Pick(0);
    let steps = vec![
        Step {
            cmd: Cmd::Issue {
                owner: 1,
                amount: 100,
                currency: 0,
            },
            window: MAX_WINDOW_US,
            schedule: Vec::new(),
        },
        Step {
            cmd: Cmd::Advance { micros: 1 },
            window: MAX_WINDOW_US,
            schedule: vec![(first, 1); 8],
        },
        Step {
            cmd: Cmd::DoubleSpend {
                holder: 1,
                pick: first,
                to_a: 3,
                to_b: 4,
            },
            window: MAX_WINDOW_US,
            schedule: vec![(first, 1); 12],
        },
        Step {
            cmd: Cmd::Stale {
                holder: 1,
                pick: first,
                to: 3,
            },
            window: MAX_WINDOW_US,
            schedule: Vec::new(),
        },
    ];
    let mut sim = Sim::new();
    sim.run(&steps);
    sim.check().unwrap();
    assert_eq!(sim.stats.verdicts_of("approved"), 2, "{:?}", sim.stats);
    assert_eq!(
        sim.stats.verdicts_of("LockedContracts"),
        1,
        "{:?}",
        sim.stats
    );
    assert_eq!(
        sim.stats.verdicts_of("InactiveContracts"),
        1,
        "{:?}",
        sim.stats
    );
}
