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
//! sequenced next, how far time jumps before it, and the workload: issues, transfers, splits,
//! merges, two-contract transfers, deliberate double spends, transfers of archived contracts
//! (prepared from a stale view), and resubmissions of earlier command ids. Faults: lost
//! confirmation responses (a slow participant, forcing mediator timeouts), submissions and
//! responses delayed past their max sequencing time (refused, as the real sequencer does),
//! crashes of a participant or the mediator that lose the effects of up to 4 unpersisted
//! events and miss further events while down, then restart from the persisted state (rebuilt
//! from the engines' own effects, as the runtimes store them) and replay everything after the
//! checkpoint, and "ambiguous refusals" (a sequenced submission that its submitter abandons).
//! Timestamps are strictly increasing and the sequencer deduplicates (sender, message id).
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
use meridian_core::protocol::{ConfirmationResponse, InformeeMessage};
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
use meridian_mediator::{Effect as MediatorEffect, MediatorEngine, RestoredRequest, StateChange};
use meridian_participant::engine::{
    Begin, CommitRecord, Completion, DedupStatus, Effect, LocalSubmission, Outcome,
    ParticipantEngine, PendingRequest, RestoredState, SequencedInput, StatusCode, SubmitRequest,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};

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
/// Participants 0-2, then the mediator.
fn member_at(who: usize) -> MemberId {
    PARTICIPANTS
        .get(who)
        .map_or_else(mediator, |p| pid(p).as_member())
}
fn submitter_of(p: &PartyId) -> ParticipantId {
    let (_, host) = PARTIES.iter().find(|(n, _)| *n == p.as_str()).unwrap();
    pid(host)
}
fn exercise(contract: &Contract, choice: &str, argument: serde_json::Value) -> Command {
    Command::Exercise {
        contract_id: contract.id.clone(),
        choice: choice.into(),
        argument,
    }
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
    /// A holder (picked among the parties holding an IOU) transfers one of its IOUs (picked
    /// among those its participant holds, locked ones included: that is how concurrent
    /// requests conflict).
    Transfer {
        holder: Pick,
        pick: Pick,
        to: usize,
    },
    Split {
        holder: Pick,
        pick: Pick,
        cut: u64,
    },
    Merge {
        holder: Pick,
        pick: Pick,
        other: Pick,
    },
    /// Two transfers of the same IOU, prepared from the same state: a double spend attempt.
    DoubleSpend {
        holder: Pick,
        pick: Pick,
        to_a: usize,
        to_b: usize,
    },
    /// Two IOUs transferred in one transaction: it must commit or fail as a whole.
    TransferTwo {
        holder: Pick,
        pick: Pick,
        other: Pick,
        to: usize,
    },
    /// A transfer of an IOU its owner's participant has seen archived, prepared as a
    /// submitter with a stale view would prepare it.
    Stale {
        pick: Pick,
        to: usize,
    },
    /// Deliver every pending submission in order, `gap` apart.
    Settle {
        gap: u64,
    },
    /// The change (user, act_as, command id) of an earlier command, submitted again.
    Resubmit {
        which: Pick,
    },
    /// A pending command submission is sequenced, but its submitter is told the send was
    /// refused (a retry after a lost answer that reached the sequencer past the max sequencing
    /// time) and abandons it before its lagging subscription delivers the request. Only for
    /// acting parties that no other participant confirms for, unless
    /// `Sim::multi_hosted_ambiguity` (a known bug otherwise; see the ignored test).
    AmbiguousRefusal {
        pick: Pick,
    },
    /// The participant's next `count` confirmation responses are lost.
    Mute {
        participant: usize,
        count: u32,
    },
    /// A participant (0-2) or the mediator (3) processes its next `unpersisted` events
    /// without persisting them, crashes, misses its next `down_for` events, then restarts from
    /// what it persisted and replays every event after its checkpoint.
    Crash {
        who: usize,
        unpersisted: u32,
        down_for: u32,
    },
    /// A participant (0-2) or the mediator (3) restarts (crashed ones come back at once).
    Restart {
        who: usize,
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

impl Step {
    /// `cmd` with the widest window and nothing sequenced right after it, as the fixed parts
    /// of a workload and the hand-written cases use it.
    fn plain(cmd: Cmd) -> Self {
        Step {
            cmd,
            window: MAX_WINDOW_US,
            schedule: Vec::new(),
        }
    }
}

fn cmd_strategy() -> impl Strategy<Value = Cmd> {
    let owner = 0..PARTIES.len();
    let pick = any::<Pick>;
    prop_oneof![
        4 => (owner.clone(), 1..=1_000u64, 0..CURRENCIES.len())
            .prop_map(|(owner, amount, currency)| Cmd::Issue { owner, amount, currency }),
        4 => (pick(), pick(), owner.clone())
            .prop_map(|(holder, pick, to)| Cmd::Transfer { holder, pick, to }),
        2 => (pick(), pick(), any::<u64>())
            .prop_map(|(holder, pick, cut)| Cmd::Split { holder, pick, cut }),
        2 => (pick(), pick(), pick())
            .prop_map(|(holder, pick, other)| Cmd::Merge { holder, pick, other }),
        2 => (pick(), pick(), owner.clone(), owner.clone())
            .prop_map(|(holder, pick, to_a, to_b)| Cmd::DoubleSpend { holder, pick, to_a, to_b }),
        1 => (pick(), pick(), pick(), owner.clone())
            .prop_map(|(holder, pick, other, to)| Cmd::TransferTwo { holder, pick, other, to }),
        1 => (pick(), owner.clone()).prop_map(|(pick, to)| Cmd::Stale { pick, to }),
        1 => pick().prop_map(|which| Cmd::Resubmit { which }),
        1 => pick().prop_map(|pick| Cmd::AmbiguousRefusal { pick }),
        1 => (0..PARTICIPANTS.len(), 1..=3u32)
            .prop_map(|(participant, count)| Cmd::Mute { participant, count }),
        1 => (0..=3 * TIMEOUT_US).prop_map(|micros| Cmd::Advance { micros }),
        2 => (1..=100u64).prop_map(|gap| Cmd::Settle { gap }),
        1 => (0..=PARTICIPANTS.len(), 0..=4u32, 0..=6u32)
            .prop_map(|(who, unpersisted, down_for)| Cmd::Crash { who, unpersisted, down_for }),
        1 => (0..=PARTICIPANTS.len()).prop_map(|who| Cmd::Restart { who }),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let gap = prop_oneof![12 => 1..=60u64, 1 => 60..=2 * TIMEOUT_US];
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

/// A few IOUs issued and settled up front (so that most commands find something to work
/// on), then up to 25 random steps: at most 30 commands.
fn workload() -> impl Strategy<Value = Vec<Step>> {
    let issue = (0..PARTIES.len(), 1..=1_000u64, 0..CURRENCIES.len()).prop_map(
        |(owner, amount, currency)| {
            Step::plain(Cmd::Issue {
                owner,
                amount,
                currency,
            })
        },
    );
    (
        prop::collection::vec(issue, 1..=5),
        prop::collection::vec(step_strategy(), 1..=25),
    )
        .prop_map(|(mut steps, random)| {
            steps.push(Step::plain(Cmd::Settle { gap: 1 }));
            steps.extend(random);
            steps
        })
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
    restarts: usize,
    ambiguous_refusals: usize,
    replayed_events: usize,
    deduplicated_sends: usize,
    committed: usize,
    verdicts: BTreeMap<String, usize>,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        macro_rules! add_counters {
            ($into:expr, $from:expr; $($counter:ident),+) => {
                $($into.$counter += $from.$counter;)+
            };
        }
        add_counters!(self, other; cases, sequenced, refused_by_sequencer, dropped_responses,
            deduplicated, skipped_commands, stale_submissions, restarts, ambiguous_refusals,
            replayed_events, deduplicated_sends, committed);
        for (k, v) in &other.verdicts {
            *self.verdicts.entry(k.clone()).or_default() += v;
        }
    }

    fn verdicts_of(&self, outcome: &str) -> usize {
        self.verdicts.get(outcome).copied().unwrap_or(0)
    }
}

/// An event as delivered to one member: its envelopes for that member.
#[derive(Debug, Clone)]
struct Delivery {
    at: Timestamp,
    sender: MemberId,
    payloads: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Health {
    #[default]
    Up,
    /// Processing, not persisting; crashes after `left` more events.
    Lagging { left: u32, down_for: u32 },
    /// Crashed; restarts after `left` more events were sequenced for it.
    Down { left: u32 },
}

/// What a participant's runtime would have stored, kept from its effects alone.
#[derive(Debug, Default)]
struct ParticipantStore {
    checkpoint: Option<Timestamp>,
    ledger_end: u64,
    acs: BTreeMap<ContractId, Contract>,
    pending: BTreeMap<Timestamp, PendingRequest>,
    /// Change key → (submission, committed status if committed).
    dedup: BTreeMap<String, (LocalSubmission, Option<DedupStatus>)>,
}

/// What the mediator's runtime would have stored.
#[derive(Debug, Default)]
struct MediatorStore {
    checkpoint: Option<Timestamp>,
    pending: BTreeMap<Timestamp, (Timestamp, InformeeMessage, Vec<ConfirmationResponse>)>,
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
    stores: BTreeMap<ParticipantId, ParticipantStore>,
    mediator_store: MediatorStore,
    /// Events processed but not yet persisted (lost on a crash, then replayed).
    unpersisted: BTreeMap<ParticipantId, Vec<(Delivery, Vec<Effect>)>>,
    mediator_unpersisted: Vec<(Delivery, Vec<MediatorEffect>)>,
    health: BTreeMap<MemberId, Health>,
    /// Whether [`Cmd::AmbiguousRefusal`] may hit a party that another participant confirms
    /// for too (see `abandoned_submission_of_a_multi_hosted_party_commits`).
    multi_hosted_ambiguity: bool,
    /// A member whose deliveries are held back (a lagging subscription), and those held.
    hold: Option<(MemberId, Vec<Delivery>)>,
    /// Request id → (submitter, submission id, change key) of every sequenced request.
    requests: BTreeMap<Timestamp, (ParticipantId, String, String)>,
    /// Events for a crashed member, delivered when it is back.
    backlog: BTreeMap<MemberId, Vec<Delivery>>,
    /// (sender, message id) of every sequenced submission: the sequencer deduplicates.
    sequenced_ids: BTreeSet<(MemberId, MessageId)>,
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
            stores: BTreeMap::new(),
            mediator_store: MediatorStore::default(),
            unpersisted: BTreeMap::new(),
            mediator_unpersisted: Vec::new(),
            health: BTreeMap::new(),
            multi_hosted_ambiguity: false,
            hold: None,
            requests: BTreeMap::new(),
            backlog: BTreeMap::new(),
            sequenced_ids: BTreeSet::new(),
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
        if !self
            .sequenced_ids
            .insert((submission.sender.clone(), submission.message_id.clone()))
        {
            self.stats.deduplicated_sends += 1;
            return;
        }
        self.stats.sequenced += 1;
        for envelope in &submission.envelopes {
            if let Ok(ProtocolMessage::ConfirmationRequest(request)) =
                ProtocolMessage::decode(&envelope.payload)
            {
                self.requests.insert(
                    at,
                    (
                        request.submitter.clone(),
                        request.submission_id.clone(),
                        request.change_id.key(),
                    ),
                );
            }
        }
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
            let delivery = Delivery {
                at,
                sender: submission.sender.clone(),
                payloads,
            };
            self.deliver(&recipient, delivery);
        }
    }

    /// Hands an event to a member according to its health.
    fn deliver(&mut self, to: &MemberId, delivery: Delivery) {
        if let Some((held, deliveries)) = &mut self.hold {
            if held == to {
                deliveries.push(delivery);
                return;
            }
        }
        match self.health.get(to).copied().unwrap_or_default() {
            Health::Up => {
                self.process(to, delivery);
                self.persist(to);
            }
            Health::Lagging { left, down_for } => {
                self.process(to, delivery);
                self.health.insert(
                    to.clone(),
                    if left > 1 {
                        Health::Lagging {
                            left: left - 1,
                            down_for,
                        }
                    } else {
                        Health::Down { left: down_for }
                    },
                );
                if left <= 1 && down_for == 0 {
                    self.restart(to);
                }
            }
            Health::Down { left } => {
                self.backlog.entry(to.clone()).or_default().push(delivery);
                if left > 1 {
                    self.health
                        .insert(to.clone(), Health::Down { left: left - 1 });
                } else {
                    self.restart(to);
                }
            }
        }
    }

    /// Feeds an event to an engine. A participant's messages go out at once (a replay
    /// re-sends them under the same message ids); the rest waits for [`Self::persist`].
    fn process(&mut self, to: &MemberId, delivery: Delivery) {
        if *to == mediator() {
            let mut effects = Vec::new();
            for payload in &delivery.payloads {
                match ProtocolMessage::decode(payload) {
                    Ok(message) => effects.extend(self.mediator.on_event(
                        delivery.at,
                        delivery.sender.clone(),
                        message,
                    )),
                    Err(_) => effects.extend(self.mediator.on_time(delivery.at)),
                }
            }
            self.mediator_unpersisted.push((delivery, effects));
            return;
        }
        let p = ParticipantId::from_member(to);
        let engine = self.participants.get_mut(&p).expect("a known participant");
        engine.handle_event(&SequencedInput {
            timestamp: delivery.at,
            sender: delivery.sender.clone(),
            payloads: delivery.payloads.clone(),
        });
        let effects = engine.drain_effects();
        self.send_participant_messages(&p, &effects);
        self.unpersisted
            .entry(p)
            .or_default()
            .push((delivery, effects));
    }

    /// Persists a member's processed events with its checkpoint; the mediator sends its
    /// verdicts only then.
    fn persist(&mut self, to: &MemberId) {
        if *to == mediator() {
            for (delivery, effects) in std::mem::take(&mut self.mediator_unpersisted) {
                self.on_mediator_effects(effects);
                self.mediator_store.checkpoint = Some(delivery.at);
            }
            return;
        }
        let p = ParticipantId::from_member(to);
        for (delivery, effects) in self.unpersisted.remove(&p).unwrap_or_default() {
            self.persist_participant_effects(&p, effects);
            self.stores.entry(p.clone()).or_default().checkpoint = Some(delivery.at);
        }
    }

    fn send_participant_messages(&mut self, p: &ParticipantId, effects: &[Effect]) {
        for effect in effects {
            let Effect::Send(message) = effect else {
                continue;
            };
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
                message_id: MessageId::new(message.message_id.clone()).unwrap(),
                envelopes: vec![Envelope {
                    recipients: message.recipients.clone(),
                    payload: message.payload.clone().into_bytes(),
                }],
                max_sequencing_time: ts(self.now + RESPONSE_MST_US),
            });
        }
    }

    /// What the runtime stores for effects, and what the harness observes once stored.
    fn persist_participant_effects(&mut self, p: &ParticipantId, effects: Vec<Effect>) {
        let store = self.stores.entry(p.clone()).or_default();
        for effect in &effects {
            match effect {
                Effect::InFlight(local) => {
                    store
                        .dedup
                        .insert(local.change_key(), (local.clone(), None));
                }
                Effect::Pending(pending) => {
                    store
                        .pending
                        .insert(pending.request_id, (**pending).clone());
                }
                Effect::Decided { request_id } => {
                    store.pending.remove(request_id);
                }
                Effect::Commit(record) => {
                    store.ledger_end = store.ledger_end.max(record.offset.0);
                    for id in &record.archived {
                        store.acs.remove(id);
                    }
                    for contract in &record.created {
                        store.acs.insert(contract.id.clone(), contract.clone());
                    }
                }
                Effect::Complete(completion) => {
                    store.ledger_end = store.ledger_end.max(completion.offset.0);
                    let local = &completion.submission;
                    let key = local.change_key();
                    match &completion.outcome {
                        Outcome::Committed {
                            transaction_id,
                            offset,
                        } => {
                            let status = DedupStatus::Committed {
                                transaction_id: transaction_id.clone(),
                                offset: *offset,
                                expires_at: completion.dedup_expires_at(),
                            };
                            store.dedup.insert(key, (local.clone(), Some(status)));
                        }
                        Outcome::Rejected { .. } => {
                            if store.dedup.get(&key).is_some_and(|(stored, _)| {
                                stored.submission_id == local.submission_id
                            }) {
                                store.dedup.remove(&key);
                            }
                        }
                    }
                }
                Effect::Send(_) | Effect::TopologyChanged => {}
            }
        }
        for effect in effects {
            match effect {
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
                | Effect::Send(_)
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
                MediatorEffect::RequestTimeProof => {
                    let n = self.next();
                    self.queue.push(time_proof(mediator(), n));
                }
                MediatorEffect::Persist(StateChange::RequestAdded {
                    request_id,
                    deadline,
                    informee,
                }) => {
                    self.mediator_store
                        .pending
                        .insert(request_id, (deadline, informee, Vec::new()));
                }
                MediatorEffect::Persist(StateChange::ResponseAccepted {
                    request_id,
                    signed,
                    ..
                }) => {
                    let response: ConfirmationResponse = signed.decode_unverified().unwrap();
                    if let Some((_, _, responses)) =
                        self.mediator_store.pending.get_mut(&request_id)
                    {
                        responses.push(response);
                    }
                }
                MediatorEffect::Persist(StateChange::VerdictDecided { request_id, .. }) => {
                    self.mediator_store.pending.remove(&request_id);
                }
                MediatorEffect::Ignored(_) => {}
            }
        }
    }

    // ---- Applications ----

    /// What the runtime's writer does before deciding on a submission: a change memory does
    /// not hold but may have forgotten is read back from the store.
    fn recall_forgotten(&mut self, p: &ParticipantId, change_key: &str, now: Timestamp) {
        let engine = self.participants.get_mut(p).unwrap();
        if engine.dedup_status(change_key, now).is_some() || !engine.may_have_forgotten(change_key)
        {
            return;
        }
        let stored = self
            .stores
            .get(p)
            .and_then(|store| store.dedup.get(change_key))
            .and_then(|(_, status)| status.clone());
        if let Some(status) = stored {
            engine.recall_committed(change_key, status);
        }
    }

    /// Submits `commands` at `p` through the engine's one door, or, given a stand-in engine
    /// holding a stale view, prepares them there and starts that submission at `p`.
    fn submit(
        &mut self,
        p: &ParticipantId,
        change: ChangeId,
        commands: Vec<Command>,
        window: u64,
        stale_view: Option<&ParticipantEngine>,
    ) {
        if matches!(self.health.get(&p.as_member()), Some(Health::Down { .. })) {
            // A crashed node takes no commands.
            self.stats.skipped_commands += 1;
            return;
        }
        // The runtime stores the in-flight marker in the same transaction as everything the
        // engine did before it.
        self.persist(&p.as_member());
        let n = self.next();
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&n.to_be_bytes());
        let submission_id = MessageId::new(format!("sub-{n}")).unwrap();
        let deadline = ts(self.now + window);
        let now = ts(self.now);
        self.recall_forgotten(p, &change.key(), now);
        let begin = match stale_view {
            // The runtime's one door: deduplication, interpretation and the in-flight marker
            // in one step.
            None => {
                let request = SubmitRequest {
                    change: change.clone(),
                    commands: commands.clone(),
                    dedup_period_us: DEDUP_PERIOD_US,
                    seed,
                    submission_id: submission_id.clone(),
                    mediator: mediator(),
                    max_sequencing_time: deadline,
                };
                let engine = self.participants.get_mut(p).unwrap();
                match engine.submit(request, now) {
                    Ok(begin) => begin.map(|submission| *submission),
                    // Cannot happen for the commands the harness builds from visible contracts.
                    Err(error) => panic!("submitting {commands:?} at {p} failed: {error}"),
                }
            }
            // A submission interpreted against a stale view of the participant's state, which
            // the participant then records as in flight.
            Some(stale) => {
                let prepared = stale.prepare_submission(
                    &change,
                    &commands,
                    seed,
                    &submission_id,
                    &mediator(),
                    deadline,
                );
                let submission = match prepared {
                    Ok(submission) => submission,
                    Err(error) => panic!("preparing {commands:?} at {p} failed: {error}"),
                };
                let local = LocalSubmission {
                    change: change.clone(),
                    submission_id: submission_id.to_string(),
                    max_sequencing_time: deadline,
                    dedup_period_us: DEDUP_PERIOD_US,
                };
                let engine = self.participants.get_mut(p).unwrap();
                engine.begin_submission(local, now).map(|()| submission)
            }
        };
        match begin {
            Begin::Started(submission) => {
                // The marker is stored before the submission is sent.
                let engine = self.participants.get_mut(p).unwrap();
                let effects = engine.drain_effects();
                self.persist_participant_effects(p, effects);
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

    /// Submits `commands` acting for `holder`, from the participant it submits through.
    fn submit_for(&mut self, holder: &PartyId, commands: Vec<Command>, window: u64) {
        let change = self.change(holder);
        self.submit(&submitter_of(holder), change, commands, window, None);
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

    /// Among the parties whose holdings satisfy `usable`, the `pick`-th with its holdings.
    fn holder(
        &self,
        pick: Pick,
        usable: impl Fn(&[Contract]) -> bool,
    ) -> Option<(PartyId, Vec<Contract>)> {
        let candidates: Vec<(PartyId, Vec<Contract>)> = PARTIES
            .iter()
            .map(|(name, _)| {
                let holder = party(name);
                let held = self.holdings(&holder);
                (holder, held)
            })
            .filter(|(_, held)| usable(held))
            .collect();
        (!candidates.is_empty()).then(|| candidates[pick.index(candidates.len())].clone())
    }

    fn run_cmd(&mut self, cmd: &Cmd, window: u64) {
        let owner = |i: usize| party(PARTIES[i].0);
        let transfer = |c: &Contract, to: &PartyId| {
            exercise(c, "Transfer", serde_json::json!({ "new_owner": to }))
        };
        let mergeable = |held: &[Contract], first: &Contract| -> Vec<Contract> {
            held.iter()
                .filter(|c| c.id != first.id && iou(c).currency == iou(first).currency)
                .cloned()
                .collect()
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
                let Some((holder, held)) = self.holder(*holder, |h| !h.is_empty()) else {
                    self.stats.skipped_commands += 1;
                    return;
                };
                let command = transfer(&held[pick.index(held.len())], &owner(*to));
                self.submit_for(&holder, vec![command], window);
            }
            Cmd::Split { holder, pick, cut } => {
                let splittable = |c: &Contract| iou(c).amount >= 2;
                let Some((holder, held)) = self.holder(*holder, |h| h.iter().any(splittable))
                else {
                    self.stats.skipped_commands += 1;
                    return;
                };
                let held: Vec<Contract> = held.into_iter().filter(splittable).collect();
                let contract = &held[pick.index(held.len())];
                let amount = 1 + cut % (iou(contract).amount - 1);
                let command = exercise(contract, "Split", serde_json::json!({ "amount": amount }));
                self.submit_for(&holder, vec![command], window);
            }
            Cmd::Merge {
                holder,
                pick,
                other,
            } => {
                let Some((holder, held)) =
                    self.holder(*holder, |h| h.iter().any(|c| !mergeable(h, c).is_empty()))
                else {
                    self.stats.skipped_commands += 1;
                    return;
                };
                let firsts: Vec<&Contract> = held
                    .iter()
                    .filter(|c| !mergeable(&held, c).is_empty())
                    .collect();
                let first = firsts[pick.index(firsts.len())];
                let others = mergeable(&held, first);
                let second = &others[other.index(others.len())];
                let command = exercise(first, "Merge", serde_json::json!({ "other": second.id }));
                self.submit_for(&holder, vec![command], window);
            }
            Cmd::DoubleSpend {
                holder,
                pick,
                to_a,
                to_b,
            } => {
                let Some((holder, held)) = self.holder(*holder, |h| !h.is_empty()) else {
                    self.stats.skipped_commands += 1;
                    return;
                };
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
                let Some((holder, held)) = self.holder(*holder, |h| h.len() >= 2) else {
                    self.stats.skipped_commands += 1;
                    return;
                };
                let first = pick.index(held.len());
                let mut second = other.index(held.len() - 1);
                if second >= first {
                    second += 1;
                }
                let to = owner(*to);
                let commands = vec![transfer(&held[first], &to), transfer(&held[second], &to)];
                self.submit_for(&holder, commands, window);
            }
            Cmd::Stale { pick, to } => {
                // Contracts whose owner's participant has seen them archived.
                let archived: Vec<Contract> = self
                    .contracts
                    .values()
                    .filter(|c| {
                        self.archived_at
                            .get(&submitter_of(&iou(c).owner))
                            .is_some_and(|ids| ids.contains(&c.id))
                    })
                    .cloned()
                    .collect();
                if archived.is_empty() {
                    self.stats.skipped_commands += 1;
                    return;
                }
                let contract = archived[pick.index(archived.len())].clone();
                let holder = iou(&contract).owner;
                let p = submitter_of(&holder);
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
            Cmd::Crash {
                who,
                unpersisted,
                down_for,
            } => {
                let who = member_at(*who);
                if self.health.get(&who).copied().unwrap_or_default() != Health::Up {
                    self.stats.skipped_commands += 1;
                    return;
                }
                let health = if *unpersisted > 0 {
                    Health::Lagging {
                        left: *unpersisted,
                        down_for: *down_for,
                    }
                } else {
                    Health::Down { left: *down_for }
                };
                self.health.insert(who.clone(), health);
                if health == (Health::Down { left: 0 }) {
                    self.restart(&who);
                }
            }
            Cmd::Restart { who } => self.restart(&member_at(*who)),
            Cmd::AmbiguousRefusal { pick } => {
                let candidates: Vec<usize> = (0..self.queue.len())
                    .filter(|i| {
                        let submission = &self.queue[*i];
                        submission.message_id.as_str().starts_with("sub-")
                            && ts(self.now + 1) <= submission.max_sequencing_time
                            && !self.health.contains_key(&submission.sender)
                            && (self.multi_hosted_ambiguity
                                || self.only_submitter_confirms(submission))
                    })
                    .collect();
                if candidates.is_empty() {
                    self.stats.skipped_commands += 1;
                    return;
                }
                let submission = self.queue.remove(candidates[pick.index(candidates.len())]);
                let submitter = submission.sender.clone();
                let submission_id = submission.message_id.to_string();
                self.hold = Some((submitter.clone(), Vec::new()));
                self.sequence(submission, 1);
                let (_, held) = self.hold.take().unwrap();
                let p = ParticipantId::from_member(&submitter);
                let engine = self.participants.get_mut(&p).unwrap();
                engine.abandon_submission(
                    &submission_id,
                    StatusCode::Aborted,
                    "the sequencer refused the send".into(),
                    ts(self.now),
                );
                let effects = engine.drain_effects();
                self.persist(&submitter);
                self.persist_participant_effects(&p, effects);
                self.stats.ambiguous_refusals += 1;
                for delivery in held {
                    self.deliver(&submitter, delivery);
                }
            }
            Cmd::Settle { gap } => {
                while !self.queue.is_empty() {
                    let submission = self.queue.remove(0);
                    self.sequence(submission, *gap);
                }
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
                        self.engine(&p).active_contract(contract_id).is_some()
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

    /// Replaces an engine by one restored from its store, as a restarted node would build it,
    /// and resends what the node resends at start-up (responses of pending requests).
    fn restart(&mut self, who: &MemberId) {
        self.stats.restarts += 1;
        self.health.remove(who);
        let backlog = self.backlog.remove(who).unwrap_or_default();
        if *who == mediator() {
            let lost: Vec<Delivery> = std::mem::take(&mut self.mediator_unpersisted)
                .into_iter()
                .map(|(delivery, _)| delivery)
                .chain(backlog)
                .collect();
            let requests = self
                .mediator_store
                .pending
                .iter()
                .map(
                    |(request_id, (deadline, informee, responses))| RestoredRequest {
                        request_id: *request_id,
                        deadline: *deadline,
                        informee: informee.clone(),
                        responses: responses.clone(),
                    },
                )
                .collect();
            let restored = MediatorEngine::restore(
                mediator(),
                self.mediator.topology().clone(),
                Duration::from_micros(TIMEOUT_US),
                self.mediator_store.checkpoint,
                requests,
            );
            if lost.is_empty() {
                assert_eq!(restored.last_event(), self.mediator.last_event());
                assert_eq!(restored.pending_count(), self.mediator.pending_count());
                assert_eq!(restored.next_deadline(), self.mediator.next_deadline());
            }
            self.mediator = restored;
            for delivery in lost {
                self.stats.replayed_events += 1;
                self.deliver(who, delivery);
            }
            return;
        }
        let p = ParticipantId::from_member(who);
        let lost: Vec<Delivery> = self
            .unpersisted
            .remove(&p)
            .unwrap_or_default()
            .into_iter()
            .map(|(delivery, _)| delivery)
            .chain(backlog)
            .collect();
        let store = self.stores.entry(p.clone()).or_default();
        let restored = RestoredState {
            checkpoint: store.checkpoint,
            ledger_end: meridian_core::LedgerOffset(store.ledger_end),
            active_contracts: store.acs.values().cloned().collect(),
            pending: store.pending.values().cloned().collect(),
            in_flight: store
                .dedup
                .values()
                .filter(|(_, status)| status.is_none())
                .map(|(local, _)| local.clone())
                .collect(),
        };
        let committed: Vec<(String, Timestamp)> = store
            .dedup
            .iter()
            .filter_map(|(key, (_, status))| match status {
                Some(DedupStatus::Committed { expires_at, .. }) => Some((key.clone(), *expires_at)),
                _ => None,
            })
            .collect();
        let responses: Vec<Effect> = restored
            .pending
            .iter()
            .filter_map(|pending| pending.response.clone().map(Effect::Send))
            .collect();
        let topology = self.engine(&p).topology().clone();
        let mut engine = ParticipantEngine::new(p.clone(), participant_key(&p), topology, restored);
        // As the node does: the period's committed changes as fingerprints, a retry of one
        // read back before it is decided (`recall_forgotten`).
        for (key, expires_at) in &committed {
            engine.remember_forgotten(key, *expires_at);
        }
        let old = self.participants.insert(p.clone(), engine).unwrap();
        if lost.is_empty() {
            // Nothing was lost: the restored engine is the one that stopped.
            let new = self.engine(&p);
            let sorted = |e: &ParticipantEngine| {
                let mut contracts: Vec<Contract> = e.active_contracts().cloned().collect();
                contracts.sort_by(|a, b| a.id.cmp(&b.id));
                contracts
            };
            assert_eq!(sorted(new), sorted(&old), "{p} restored another ACS");
            assert_eq!(
                new.ledger_end(),
                old.ledger_end(),
                "{p} restored ledger end"
            );
            assert_eq!(new.last_event(), old.last_event());
            assert_eq!(new.in_flight_count(), old.in_flight_count());
            assert_eq!(
                new.pending().collect::<Vec<_>>(),
                old.pending().collect::<Vec<_>>()
            );
            for id in self.contracts.keys() {
                assert_eq!(new.is_locked(id), old.is_locked(id), "{p} lock on {id}");
            }
        }
        // At start-up the node resends the responses of pending requests.
        self.send_participant_messages(&p, &responses);
        for delivery in lost {
            self.stats.replayed_events += 1;
            self.deliver(who, delivery);
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
        // Everybody catches up with persisting; deliver everything in order, then let time
        // pass every deadline, until quiet.
        let crashed: Vec<MemberId> = self.health.keys().cloned().collect();
        for who in crashed {
            self.restart(&who);
        }
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
                let n = self.next();
                self.queue.push(time_proof(pid(p).as_member(), n));
            }
            let n = self.next();
            self.queue.push(time_proof(mediator(), n));
        }
    }

    /// Whether only the submitting participant may confirm for the request's acting parties.
    fn only_submitter_confirms(&self, submission: &Submission) -> bool {
        let Ok(ProtocolMessage::ConfirmationRequest(request)) =
            ProtocolMessage::decode(&submission.envelopes[0].payload)
        else {
            return false;
        };
        request.change_id.act_as.iter().all(|party| {
            self.topology.confirmers(party) == BTreeSet::from([request.submitter.clone()])
        })
    }

    fn quiescent(&self) -> bool {
        self.queue.is_empty()
            && self.health.is_empty()
            && self.mediator_unpersisted.is_empty()
            && self.unpersisted.values().all(Vec::is_empty)
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
        // Against the ledger itself: a change commits at most once, and never after its
        // application was told it failed.
        let mut changes: BTreeMap<&str, &TransactionId> = BTreeMap::new();
        for (tx_id, (request_id, _, _)) in &ledger {
            let (submitter, submission_id, change_key) = &self.requests[request_id];
            if let Some(previous) = changes.insert(change_key, tx_id) {
                return Err(TestCaseError::fail(format!(
                    "change {change_key} committed twice: {previous} and {tx_id}"
                )));
            }
            if let Some(completion) = completed.get(&(submitter.clone(), submission_id.clone())) {
                prop_assert!(
                    matches!(completion.outcome, Outcome::Committed { .. }),
                    "{} completed {} as {:?}, yet it committed as {} (request {})",
                    submitter,
                    submission_id,
                    completion.outcome,
                    tx_id,
                    request_id
                );
            }
        }
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

fn time_proof(to: MemberId, n: u64) -> Submission {
    Submission {
        sender: to.clone(),
        message_id: MessageId::new(format!("tp-{to}-{n}")).unwrap(),
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
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/simulation.txt"
        )))),
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

/// The steps of a hand-written case: the bank issues one IOU (currency 0) to `owner` and it
/// settles, so that the case's `commands` find it as `Pick(0)`; then the commands run.
fn after_one_settled_iou(owner: usize, amount: u64, commands: Vec<Cmd>) -> Vec<Step> {
    let issue = Cmd::Issue {
        owner,
        amount,
        currency: 0,
    };
    [issue, Cmd::Settle { gap: 1 }]
        .into_iter()
        .chain(commands)
        .map(Step::plain)
        .collect()
}

/// A hand-written case: alice double spends an IOU (both requests sequenced before either
/// verdict: the second finds it locked), then transfers it again from a stale view.
#[test]
fn double_spend_commits_at_most_once() {
    let steps = after_one_settled_iou(
        1,
        100,
        vec![
            Cmd::DoubleSpend {
                holder: Pick(0),
                pick: Pick(0),
                to_a: 3,
                to_b: 4,
            },
            Cmd::Settle { gap: 1 },
            Cmd::Stale {
                pick: Pick(0),
                to: 3,
            },
        ],
    );
    let mut sim = Sim::new();
    sim.run(&steps);
    sim.check().unwrap();
    let stats = &sim.stats;
    assert_eq!(stats.verdicts_of("approved"), 2, "{stats:?}");
    assert_eq!(stats.verdicts_of("LockedContracts"), 1, "{stats:?}");
    assert_eq!(stats.verdicts_of("InactiveContracts"), 1, "{stats:?}");
    assert_eq!(stats.stale_submissions, 1, "{stats:?}");
}

/// The limit of `ParticipantEngine::abandon_submission`: an abandoned submission still commits
/// when another participant may confirm for its acting party. Found by this simulation; the
/// runtime therefore no longer abandons a submission on a sequencer refusal (which can answer
/// a retry of an attempt that was sequenced) and lets the stream or the max sequencing time
/// decide. The scenario stays here, ignored, as the reason for that rule.
///
/// The engine promises that an own request whose submission was abandoned (the sequencer
/// definitely refused the send) is rejected if it turns out to be sequenced after all, "so an
/// application that was told 'failed' never sees it commit". It relies on the submitter's
/// own rejection reaching the mediator. But dave is hosted on p2 (submission) and p3
/// (confirmation): the mediator needs one approval per confirming party, so p3's approval for
/// dave and p1's for the bank decide the request before p2's rejection arrives, and every
/// informee commits — p2 too, silently (no completion, the command was completed ABORTED).
///
/// The ambiguity is real: a send whose answer was lost is retried with the same message id,
/// and a retry that reaches the sequencer after the max sequencing time is refused
/// (`validate` and the writer's `plan` check the deadline before deduplication) although
/// the first attempt was sequenced; if the participant's subscription lags, the runtime
/// abandons the submission before the engine sees the request.
#[test]
#[ignore = "documents why the runtime never abandons on a sequencer refusal"]
fn abandoned_submission_of_a_multi_hosted_party_commits() {
    // The bank issues an IOU to dave (hosted on p2, confirmed for on p3 as well).
    let steps = after_one_settled_iou(
        2,
        10,
        vec![
            // Dave transfers it to bob from p2; the send is sequenced, but p2 is told it was
            // refused and abandons it (ABORTED) before its subscription delivers the request.
            Cmd::Transfer {
                holder: Pick(0),
                pick: Pick(0),
                to: 3,
            },
            Cmd::AmbiguousRefusal { pick: Pick(0) },
            // In order: p1's and p3's approvals, then p2's rejection (too late), the verdict.
            Cmd::Settle { gap: 1 },
        ],
    );
    let mut sim = Sim::new();
    sim.multi_hosted_ambiguity = true;
    sim.run(&steps);
    assert_eq!(sim.stats.ambiguous_refusals, 1);
    // Fails: "p2 completed sub-N as Rejected { code: Aborted, .. }, yet it committed".
    sim.check().unwrap();
}
