//! The participant's protocol logic, sans I/O: [`ParticipantEngine`] consumes sequenced events
//! and local submission steps and returns [`Effect`]s (messages to send, rows to persist,
//! completions to report); the runtime performs them.
//!
//! The engine is deterministic: the same restored state and the same inputs give the same
//! effects, byte for byte (ed25519 signatures are deterministic too). Randomness (seeds,
//! submission ids) and wall-clock time are arguments. That is what makes crash recovery a
//! replay from the checkpoint, and what lets a simulation drive whole clusters of engines.
//! Confirmation responses are signed when the effects are drained, all of a batch under one
//! signature (`meridian_core::signed_batch`), so the batch boundaries are inputs too.
//!
//! State: the active contract set of contracts with a stakeholder hosted here, locks held by
//! requests awaiting their verdict, those pending requests, this participant's in-flight
//! submissions, the deduplication table, the ledger end, and the topology history.
//!
//! Safety rules enforced here:
//! - a consumed contract is locked by the first request that passes activeness and stays locked
//!   until that request's verdict; a second request on it is rejected (`LockedContracts`), and
//!   one on an archived contract is rejected (`InactiveContracts`);
//! - a commit happens only on a mediator verdict whose signature verifies against the topology
//!   and whose request hash matches what this participant validated;
//! - an own request whose submission is not in flight (it was abandoned after a definite send
//!   failure) is rejected, so an application that was told "failed" never sees it commit.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use meridian_core::coalesce::CoalesceLimits;
use meridian_core::crypto::{SigningKey, SigningPurpose};
use meridian_core::ledger::{Action, Command, Contract, Transaction};
use meridian_core::protocol::{
    self, ChangeId, ConfirmationRequest, ConfirmationResponse, InformeeMessage, LocalVerdict,
    ProtocolMessage, RejectionCode, Signed, Verdict, VerdictOutcome,
};
use meridian_core::sequencing::{Envelope, Submission};
use meridian_core::signed_batch::VerifiedRoots;
use meridian_core::template::{authorize, ModelError, TemplateRegistry};
use meridian_core::topology::{SignedTopologyTransaction, TopologySnapshot, TopologyState};
use meridian_core::{
    ContractId, LedgerOffset, MemberId, MessageId, ParticipantId, PartyId, Timestamp, TransactionId,
};
use serde::{Deserialize, Serialize};

/// gRPC status codes the engine reports in completions (numeric values of `google.rpc.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusCode {
    Ok,
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    FailedPrecondition,
    Aborted,
    Unavailable,
    Internal,
}

impl StatusCode {
    pub fn as_i32(self) -> i32 {
        match self {
            StatusCode::Ok => 0,
            StatusCode::InvalidArgument => 3,
            StatusCode::NotFound => 5,
            StatusCode::AlreadyExists => 6,
            StatusCode::PermissionDenied => 7,
            StatusCode::FailedPrecondition => 9,
            StatusCode::Aborted => 10,
            StatusCode::Internal => 13,
            StatusCode::Unavailable => 14,
        }
    }

    /// How a mediator rejection reaches the application. Races and timeouts are ABORTED
    /// (retrying with a fresh command may succeed); a refused authority is PERMISSION_DENIED;
    /// anything that means the request itself was wrong is FAILED_PRECONDITION.
    pub fn for_rejection(code: RejectionCode) -> Self {
        match code {
            RejectionCode::Timeout
            | RejectionCode::LockedContracts
            | RejectionCode::InactiveContracts
            | RejectionCode::Topology => StatusCode::Aborted,
            RejectionCode::NotAuthorized => StatusCode::PermissionDenied,
            RejectionCode::ModelConformance | RejectionCode::Malformed => {
                StatusCode::FailedPrecondition
            }
        }
    }
}

/// One of this participant's own submissions, from the moment it is recorded (before it is
/// sent) until its completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSubmission {
    pub change: ChangeId,
    pub submission_id: String,
    pub max_sequencing_time: Timestamp,
    pub dedup_period_us: u64,
}

impl LocalSubmission {
    pub fn change_key(&self) -> String {
        self.change.key()
    }
}

/// What the deduplication table says about a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupStatus {
    InFlight {
        submission_id: String,
    },
    Committed {
        transaction_id: TransactionId,
        offset: LedgerOffset,
        expires_at: Timestamp,
    },
}

/// The deduplication table's key: 32 bytes of the change key's hash instead of its
/// 64-character text. The table holds every change committed within its period (10 minutes
/// by default), so at a thousand transfers per second each byte per entry is most of a
/// participant's memory (issue 14 bounds it at 100 MiB).
type DedupKey = [u8; 32];

fn dedup_key(change_key: &str) -> DedupKey {
    blake3::hash(change_key.as_bytes()).into()
}

/// 8 bytes of a key (itself a hash): what memory keeps of a forgotten entry.
fn fingerprint(key: &DedupKey) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&key[..8]);
    u64::from_le_bytes(bytes)
}

/// The minute in which a period ending at `expires_at` ends (rounded up).
fn expiry_minute(expires_at: Timestamp) -> u64 {
    expires_at.as_micros().div_ceil(60_000_000)
}

/// Files the fingerprint of a committed change memory does not hold under the minute its
/// period ends, which [`ParticipantEngine::prune_dedup`] drops whole.
fn file_fingerprint(
    forgotten: &mut BTreeMap<u64, HashSet<u64>>,
    key: &DedupKey,
    expires_at: Timestamp,
) {
    forgotten
        .entry(expiry_minute(expires_at))
        .or_default()
        .insert(fingerprint(key));
}

/// A [`DedupStatus`] as the table keeps it: a committed transaction's id as its 32 bytes when
/// it is the usual 64 hex digits ([`protocol::transaction_id`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum DedupEntry {
    InFlight {
        submission_id: String,
    },
    Committed {
        transaction_id: CompactTransactionId,
        offset: LedgerOffset,
        expires_at: Timestamp,
        /// When this engine committed it; zero for an entry read back from the store, which
        /// the next [`ParticipantEngine::forget_committed_before`] drops again.
        committed_at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CompactTransactionId {
    Digest([u8; 32]),
    Text(Box<TransactionId>),
}

impl From<&TransactionId> for CompactTransactionId {
    fn from(id: &TransactionId) -> Self {
        let text = id.as_str();
        let mut digest = [0u8; 32];
        // Only lowercase hex turns back into the same text.
        let lowercase = text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        match lowercase && hex::decode_to_slice(text, &mut digest).is_ok() {
            true => CompactTransactionId::Digest(digest),
            false => CompactTransactionId::Text(Box::new(id.clone())),
        }
    }
}

impl CompactTransactionId {
    fn to_id(&self) -> TransactionId {
        match self {
            CompactTransactionId::Digest(digest) => {
                TransactionId::new(hex::encode(digest)).expect("hex digits make a valid id")
            }
            CompactTransactionId::Text(id) => (**id).clone(),
        }
    }
}

impl From<DedupStatus> for DedupEntry {
    fn from(status: DedupStatus) -> Self {
        match status {
            DedupStatus::InFlight { submission_id } => DedupEntry::InFlight { submission_id },
            DedupStatus::Committed {
                transaction_id,
                offset,
                expires_at,
            } => DedupEntry::Committed {
                transaction_id: CompactTransactionId::from(&transaction_id),
                offset,
                expires_at,
                committed_at: Timestamp::from_micros(0),
            },
        }
    }
}

impl DedupEntry {
    fn to_status(&self) -> DedupStatus {
        match self {
            DedupEntry::InFlight { submission_id } => DedupStatus::InFlight {
                submission_id: submission_id.clone(),
            },
            DedupEntry::Committed {
                transaction_id,
                offset,
                expires_at,
                committed_at: _,
            } => DedupStatus::Committed {
                transaction_id: transaction_id.to_id(),
                offset: *offset,
                expires_at: *expires_at,
            },
        }
    }
}

/// A validated command submission, with what the engine must not pick itself: randomness
/// (the seed contract ids derive from, the submission id) and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitRequest {
    pub change: ChangeId,
    pub commands: Vec<Command>,
    pub dedup_period_us: u64,
    pub seed: [u8; 32],
    pub submission_id: MessageId,
    pub mediator: MemberId,
    pub max_sequencing_time: Timestamp,
}

/// The deduplication decision on a submission: [`ParticipantEngine::submit`] starts one with
/// the sequencer submission to send (`T`), [`ParticipantEngine::begin_submission`] one
/// prepared elsewhere (`T = ()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin<T = ()> {
    /// Recorded as in flight; persist the marker ([`Effect::InFlight`]) before sending.
    Started(T),
    /// The same change is already in flight under another submission.
    InFlight { submission_id: String },
    /// The same change committed within its deduplication period.
    Duplicate {
        transaction_id: TransactionId,
        offset: LedgerOffset,
    },
}

impl<T> Begin<T> {
    /// The same decision with the started submission's `T` replaced.
    pub fn map<U>(self, started: impl FnOnce(T) -> U) -> Begin<U> {
        match self {
            Begin::Started(value) => Begin::Started(started(value)),
            Begin::InFlight { submission_id } => Begin::InFlight { submission_id },
            Begin::Duplicate {
                transaction_id,
                offset,
            } => Begin::Duplicate {
                transaction_id,
                offset,
            },
        }
    }
}

/// A message to send through the sequencer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingMessage {
    pub message_id: String,
    pub recipients: Vec<MemberId>,
    /// An encoded [`ProtocolMessage`] (JSON text).
    pub payload: String,
}

/// A validated request awaiting its verdict. Persisted (as JSON) so a restart can finish it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    pub request_id: Timestamp,
    pub request_hash: String,
    pub mediator: MemberId,
    pub submitter: ParticipantId,
    pub transaction: Transaction,
    pub informees: BTreeSet<PartyId>,
    /// Consumed contracts this request locked here.
    pub locks: Vec<ContractId>,
    /// Created contracts with a stakeholder hosted here (not consumed in the same transaction).
    pub created_here: Vec<Contract>,
    /// Set when this participant submitted it and the submission was in flight.
    pub local: Option<LocalSubmission>,
    /// The confirmation response sent, resent after a restart.
    pub response: Option<OutgoingMessage>,
}

/// A commit to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRecord {
    pub offset: LedgerOffset,
    pub transaction_id: TransactionId,
    pub request_id: Timestamp,
    /// The verdict's timestamp: the event that committed it.
    pub committed_at: Timestamp,
    pub transaction: Transaction,
    pub informees: BTreeSet<PartyId>,
    pub local: Option<LocalSubmission>,
    /// Contracts removed from the active set here.
    pub archived: Vec<ContractId>,
    /// Contracts added to the active set here.
    pub created: Vec<Contract>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed {
        transaction_id: TransactionId,
        offset: LedgerOffset,
    },
    Rejected {
        code: StatusCode,
        message: String,
    },
}

/// The outcome of an own submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub submission: LocalSubmission,
    /// Committed ones share the transaction's offset; rejections get their own.
    pub offset: LedgerOffset,
    pub record_time: Timestamp,
    pub outcome: Outcome,
    /// The committed transaction, for answering the submitter.
    pub transaction: Option<Box<Transaction>>,
}

impl Completion {
    /// Expiry of the deduplication entry of a committed change.
    pub fn dedup_expires_at(&self) -> Timestamp {
        self.record_time
            .saturating_add(std::time::Duration::from_micros(
                self.submission.dedup_period_us,
            ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Persist the in-flight marker of a submission (before it is sent).
    InFlight(LocalSubmission),
    /// Send a message (confirmation responses). Safe to send before the batch is persisted:
    /// a replay produces the same response under the same message id (signed in another
    /// group if the replay batches differently; the mediator takes only the first copy).
    Send(OutgoingMessage),
    /// Store (or replace) a pending request.
    Pending(Box<PendingRequest>),
    /// The pending request got its verdict: forget it.
    Decided {
        request_id: Timestamp,
    },
    Commit(Box<CommitRecord>),
    Complete(Box<Completion>),
    /// The topology changed (parties or permissions may differ).
    TopologyChanged,
}

/// Why a submission was refused before anything was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("party {0} is not known to the synchronizer (hosted on no participant)")]
    UnknownParty(PartyId),
    #[error("party {party} is not hosted on participant {participant} with submission permission")]
    NotHosted {
        party: PartyId,
        participant: ParticipantId,
    },
    #[error("contract {0} is not active or not visible to the acting parties")]
    UnknownContract(ContractId),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    InvalidCommand(String),
    #[error("mediator {0} is not in the topology")]
    UnknownMediator(MemberId),
}

impl SubmitError {
    fn from_model(error: ModelError) -> Self {
        // The code follows the root failure; the message keeps the command it happened in
        // (`commands[1]: ...`), except for an unknown contract, whose message the service
        // builds from a store lookup.
        match error.root() {
            ModelError::UnknownContract(id) => SubmitError::UnknownContract(id.clone()),
            ModelError::MissingAuthorization { .. } => SubmitError::Unauthorized(error.to_string()),
            ModelError::UnknownTemplate(_)
            | ModelError::BadPayload { .. }
            | ModelError::UnknownChoice { .. }
            | ModelError::BadArgument { .. }
            | ModelError::NoActingParty
            | ModelError::NoCommands
            | ModelError::InCommand { .. } => SubmitError::InvalidCommand(error.to_string()),
        }
    }
}

/// A sequenced event as the engine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencedInput {
    pub timestamp: Timestamp,
    pub sender: MemberId,
    /// Payloads of the envelopes addressed to this participant.
    pub payloads: Vec<Vec<u8>>,
}

/// What the engine is restored from.
#[derive(Debug, Clone, Default)]
pub struct RestoredState {
    pub checkpoint: Option<Timestamp>,
    pub ledger_end: LedgerOffset,
    pub active_contracts: Vec<Contract>,
    pub pending: Vec<PendingRequest>,
    /// In-flight submissions (markers) that have no completion yet. The committed changes of
    /// the deduplication period are not part of it: the node hands them over as fingerprints
    /// ([`ParticipantEngine::remember_forgotten`]).
    pub in_flight: Vec<LocalSubmission>,
}

/// The participant's sans-I/O protocol engine. See the module documentation.
pub struct ParticipantEngine {
    participant: ParticipantId,
    key: SigningKey,
    registry: TemplateRegistry,
    topology: TopologyState,
    /// Latest effective time in the topology history: snapshots after it are `latest()`.
    topology_last_effective: Timestamp,
    acs: HashMap<ContractId, Contract>,
    locks: HashMap<ContractId, Timestamp>,
    pending: BTreeMap<Timestamp, PendingRequest>,
    in_flight: HashMap<String, LocalSubmission>,
    /// (max sequencing time, submission id) of in-flight submissions not yet seen sequenced.
    expiry: BTreeSet<(Timestamp, String)>,
    /// Ordered, not hashed: a hash table doubles at once when it fills (the new table beside
    /// the old one, some 70 MB at 240,000 entries), a B-tree grows a node at a time.
    dedup: BTreeMap<DedupKey, DedupEntry>,
    /// Fingerprints (8 bytes of the key) of committed entries forgotten while still within
    /// their period, by the minute their period ends: a submission whose fingerprint is not
    /// here has nothing in the store, so only retries (and one in 2^64 others) cost a read.
    forgotten: BTreeMap<u64, HashSet<u64>>,
    /// Whether the fingerprints of the changes committed before a restart are still being
    /// read ([`begin_remembering`](Self::begin_remembering)): until then any change may have
    /// been forgotten.
    remembering: bool,
    ledger_end: LedgerOffset,
    last_event: Option<Timestamp>,
    /// Verdict groups whose root signature was checked: a group's other verdicts need no
    /// signature check of their own (`meridian_core::signed_batch`).
    verified_roots: VerifiedRoots,
    /// Responses decided since the last [`ParticipantEngine::drain_effects`], which signs
    /// them together: (mediator, response).
    unsigned_responses: Vec<(MemberId, ConfirmationResponse)>,
    effects: Vec<Effect>,
}

impl std::fmt::Debug for ParticipantEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParticipantEngine")
            .field("participant", &self.participant)
            .field("active_contracts", &self.acs.len())
            .field("pending", &self.pending.len())
            .field("in_flight", &self.in_flight.len())
            .field("ledger_end", &self.ledger_end)
            .finish_non_exhaustive()
    }
}

impl ParticipantEngine {
    pub fn new(
        participant: ParticipantId,
        key: SigningKey,
        topology: TopologyState,
        restored: RestoredState,
    ) -> Self {
        let topology_last_effective = topology
            .signed_history()
            .last()
            .map(|(t, _)| *t)
            .unwrap_or(Timestamp::MIN);
        let mut engine = Self {
            participant,
            key,
            registry: TemplateRegistry::standard(),
            topology,
            topology_last_effective,
            acs: restored
                .active_contracts
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect(),
            locks: HashMap::new(),
            pending: BTreeMap::new(),
            in_flight: HashMap::new(),
            expiry: BTreeSet::new(),
            dedup: BTreeMap::new(),
            forgotten: BTreeMap::new(),
            remembering: false,
            ledger_end: restored.ledger_end,
            last_event: restored.checkpoint,
            verified_roots: VerifiedRoots::default(),
            unsigned_responses: Vec::new(),
            effects: Vec::new(),
        };
        let sequenced: BTreeSet<String> = restored
            .pending
            .iter()
            .filter_map(|p| p.local.as_ref().map(|l| l.submission_id.clone()))
            .collect();
        for request in restored.pending {
            for id in &request.locks {
                engine.locks.insert(id.clone(), request.request_id);
            }
            if let Some(local) = &request.local {
                engine.dedup.insert(
                    dedup_key(&local.change_key()),
                    DedupEntry::InFlight {
                        submission_id: local.submission_id.clone(),
                    },
                );
            }
            engine.pending.insert(request.request_id, request);
        }
        for submission in restored.in_flight {
            engine.dedup.insert(
                dedup_key(&submission.change_key()),
                DedupEntry::InFlight {
                    submission_id: submission.submission_id.clone(),
                },
            );
            // Already sequenced ones belong to their pending request; the marker only keeps
            // the change deduplicated until the verdict.
            if !sequenced.contains(&submission.submission_id) {
                engine.track_in_flight(submission);
            }
        }
        engine
    }

    pub fn participant(&self) -> &ParticipantId {
        &self.participant
    }

    pub fn ledger_end(&self) -> LedgerOffset {
        self.ledger_end
    }

    pub fn last_event(&self) -> Option<Timestamp> {
        self.last_event
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }

    /// The local submissions sent (or about to be) and not yet seen sequenced or expired.
    pub fn in_flight(&self) -> impl Iterator<Item = &LocalSubmission> {
        self.in_flight.values()
    }

    pub fn pending(&self) -> impl Iterator<Item = &PendingRequest> {
        self.pending.values()
    }

    pub fn topology(&self) -> &TopologyState {
        &self.topology
    }

    pub fn active_contract(&self, id: &ContractId) -> Option<&Contract> {
        self.acs.get(id)
    }

    pub fn active_contracts(&self) -> impl Iterator<Item = &Contract> {
        self.acs.values()
    }

    pub fn is_locked(&self, id: &ContractId) -> bool {
        self.locks.contains_key(id)
    }

    /// The earliest max sequencing time of a submission not yet seen sequenced: once the
    /// sequencer's time passes it, that submission can be completed as not sequenced. The
    /// runtime requests a time proof when wall-clock time is past it.
    pub fn earliest_unsequenced_deadline(&self) -> Option<Timestamp> {
        self.expiry.iter().next().map(|(t, _)| *t)
    }

    /// Takes the effects produced since the last call.
    pub fn drain_effects(&mut self) -> Vec<Effect> {
        self.sign_responses();
        std::mem::take(&mut self.effects)
    }

    /// The deduplication status of a change, ignoring committed entries expired by `now`.
    pub fn dedup_status(&self, change_key: &str, now: Timestamp) -> Option<DedupStatus> {
        match self.dedup.get(&dedup_key(change_key))? {
            DedupEntry::Committed { expires_at, .. } if *expires_at <= now => None,
            entry => Some(entry.to_status()),
        }
    }

    /// Forgets committed dedup entries committed before `horizon`, though still within their
    /// period: the store keeps them ([`ParticipantStore::dedup_entries`]), and the runtime
    /// hands them back with [`recall_committed`](Self::recall_committed) before deciding on a
    /// submission of theirs. Memory then holds a window of recent changes instead of a whole
    /// period's (throughput × `dedup_period_s`). The caller must have persisted everything
    /// processed so far: an entry forgotten here must be in the store. Returns how many.
    ///
    /// [`ParticipantStore::dedup_entries`]: meridian_store::ParticipantStore::dedup_entries
    pub fn forget_committed_before(&mut self, horizon: Timestamp) -> usize {
        let before = self.dedup.len();
        let forgotten = &mut self.forgotten;
        self.dedup.retain(|key, entry| match entry {
            DedupEntry::Committed {
                committed_at,
                expires_at,
                ..
            } => {
                let keep = *committed_at >= horizon;
                if !keep {
                    file_fingerprint(forgotten, key, *expires_at);
                }
                keep
            }
            DedupEntry::InFlight { .. } => true,
        });
        before - self.dedup.len()
    }

    /// Whether the store may hold a committed entry of `change_key` that memory forgot (or
    /// never had: those committed before a restart, see
    /// [`remember_forgotten`](Self::remember_forgotten)). `false` is certain; `true` calls
    /// for a read ([`recall_committed`](Self::recall_committed)).
    pub fn may_have_forgotten(&self, change_key: &str) -> bool {
        if self.remembering {
            return true;
        }
        let fingerprint = fingerprint(&dedup_key(change_key));
        self.forgotten
            .values()
            .any(|fingerprints| fingerprints.contains(&fingerprint))
    }

    /// Notes a committed change the store holds and memory does not, as a fingerprint until
    /// its period ends at `expires_at`: how a restart takes the period's committed entries,
    /// which the store pages through ([`committed_dedup_keys`]) instead of loading them whole.
    /// A submission of the change is then read back ([`recall_committed`]) before deciding.
    ///
    /// [`committed_dedup_keys`]: meridian_store::ParticipantStore::committed_dedup_keys
    /// [`recall_committed`]: Self::recall_committed
    pub fn remember_forgotten(&mut self, change_key: &str, expires_at: Timestamp) {
        file_fingerprint(&mut self.forgotten, &dedup_key(change_key), expires_at);
    }

    /// Marks the fingerprints of the changes committed before a restart as still being read
    /// ([`remember_forgotten`](Self::remember_forgotten) page by page, while the node already
    /// serves): until [`end_remembering`](Self::end_remembering) every change may have been
    /// forgotten, so every submission's entry is read from the store before it is decided.
    /// A takeover then waits for none of the period's keys.
    pub fn begin_remembering(&mut self) {
        self.remembering = true;
    }

    /// Every fingerprint of the changes committed before the restart is in memory: only
    /// changes that match one call for a read again.
    pub fn end_remembering(&mut self) {
        self.remembering = false;
    }

    /// How many forgotten entries' fingerprints the engine holds.
    pub fn forgotten_len(&self) -> usize {
        self.forgotten.values().map(HashSet::len).sum()
    }

    /// Takes back a committed change's entry from the store, where
    /// [`forget_committed_before`](Self::forget_committed_before) left it; an entry the engine
    /// holds is newer and stays.
    pub fn recall_committed(&mut self, change_key: &str, status: DedupStatus) {
        if matches!(status, DedupStatus::Committed { .. }) {
            self.dedup
                .entry(dedup_key(change_key))
                .or_insert_with(|| status.into());
        }
    }

    /// How many deduplication entries the engine holds in memory.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// Forgets committed dedup entries that expired by `now`, and the fingerprints of the
    /// forgotten ones whose period ended. Returns how many entries.
    pub fn prune_dedup(&mut self, now: Timestamp) -> usize {
        // A minute's fingerprints go once the whole minute has passed.
        self.forgotten = self.forgotten.split_off(&expiry_minute(now));
        let before = self.dedup.len();
        self.dedup.retain(|_, entry| match entry {
            DedupEntry::Committed { expires_at, .. } => *expires_at > now,
            DedupEntry::InFlight { .. } => true,
        });
        before - self.dedup.len()
    }

    /// Adds topology transactions learnt out of band (from the topology manager). Returns how
    /// many were new. Invalid ones are skipped with a warning.
    pub fn add_topology(&mut self, entries: &[(Timestamp, SignedTopologyTransaction)]) -> usize {
        let mut added = 0;
        for (effective, signed) in entries {
            match self.topology.add(*effective, signed) {
                Ok(true) => {
                    added += 1;
                    self.topology_last_effective = self.topology_last_effective.max(*effective);
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "ignoring a topology transaction"),
            }
        }
        if added > 0 {
            self.effects.push(Effect::TopologyChanged);
        }
        added
    }

    fn snapshot_at(&self, at: Timestamp) -> Cow<'_, TopologySnapshot> {
        if at > self.topology_last_effective {
            Cow::Borrowed(self.topology.latest())
        } else {
            Cow::Owned(self.topology.snapshot_at(at))
        }
    }

    fn next_offset(&mut self) -> LedgerOffset {
        self.ledger_end = LedgerOffset(self.ledger_end.0 + 1);
        self.ledger_end
    }

    fn track_in_flight(&mut self, submission: LocalSubmission) {
        self.expiry.insert((
            submission.max_sequencing_time,
            submission.submission_id.clone(),
        ));
        self.in_flight
            .insert(submission.submission_id.clone(), submission);
    }

    fn untrack_in_flight(&mut self, submission_id: &str) -> Option<LocalSubmission> {
        let submission = self.in_flight.remove(submission_id)?;
        self.expiry.remove(&(
            submission.max_sequencing_time,
            submission.submission_id.clone(),
        ));
        Some(submission)
    }

    // ---- Submission side -------------------------------------------------------------

    /// Interprets `commands` for `change.act_as` against this participant's active contracts
    /// and the latest topology, and builds the one sequencer submission of the protocol: the
    /// confirmation request for every informee participant and the informee message for the
    /// mediator. Changes nothing.
    pub fn prepare_submission(
        &self,
        change: &ChangeId,
        commands: &[Command],
        seed: [u8; 32],
        submission_id: &MessageId,
        mediator: &MemberId,
        max_sequencing_time: Timestamp,
    ) -> Result<Submission, SubmitError> {
        let snapshot = self.topology.latest();
        let known = |party: &PartyId| snapshot.parties().any(|(p, _)| p == party);
        for party in &change.act_as {
            match snapshot.permission(party, &self.participant) {
                Some(permission) if permission.can_submit() => {}
                Some(_) => {
                    return Err(SubmitError::NotHosted {
                        party: party.clone(),
                        participant: self.participant.clone(),
                    })
                }
                None if known(party) => {
                    return Err(SubmitError::NotHosted {
                        party: party.clone(),
                        participant: self.participant.clone(),
                    })
                }
                None => return Err(SubmitError::UnknownParty(party.clone())),
            }
        }
        if snapshot.mediator_key(mediator).is_none() {
            return Err(SubmitError::UnknownMediator(mediator.clone()));
        }
        // Only contracts the acting parties can see: nobody learns from an error message
        // that a contract of someone else exists.
        let act_as = &change.act_as;
        let lookup = |id: &ContractId| -> Option<Contract> {
            self.acs
                .get(id)
                .filter(|c| c.stakeholders().iter().any(|p| act_as.contains(p)))
                .cloned()
        };
        let transaction = self
            .registry
            .interpret(commands, act_as, &seed, &lookup)
            .map_err(SubmitError::from_model)?;
        authorize(&transaction, act_as).map_err(SubmitError::from_model)?;
        let informees = transaction.informees();
        for party in &informees {
            if !known(party) {
                return Err(SubmitError::UnknownParty(party.clone()));
            }
        }
        let informee_participants = snapshot.hosting_participants(&informees);
        let inputs: Vec<Contract> = transaction
            .inputs()
            .iter()
            .filter_map(|id| self.acs.get(id).cloned())
            .collect();
        let request = ConfirmationRequest {
            submitter: self.participant.clone(),
            change_id: change.clone(),
            submission_id: submission_id.to_string(),
            commands: commands.to_vec(),
            seed: hex::encode(seed),
            transaction: transaction.clone(),
            inputs,
            mediator: mediator.clone(),
            informee_participants: informee_participants.clone(),
        };
        let request_bytes = ProtocolMessage::ConfirmationRequest(Box::new(request)).encode();
        let informee_message = ProtocolMessage::InformeeMessage(InformeeMessage {
            submitter: self.participant.clone(),
            informees,
            confirming_parties: transaction.confirming_parties(),
            informee_participants: informee_participants.clone(),
            request_hash: protocol::request_hash(&request_bytes),
        });
        Ok(Submission {
            sender: self.participant.as_member(),
            message_id: submission_id.clone(),
            envelopes: vec![
                Envelope {
                    recipients: informee_participants
                        .iter()
                        .map(ParticipantId::as_member)
                        .collect(),
                    payload: request_bytes,
                },
                Envelope {
                    recipients: vec![mediator.clone()],
                    payload: informee_message.encode(),
                },
            ],
            max_sequencing_time,
        })
    }

    /// The one door of a local submission: the deduplication decision, then interpretation
    /// ([`prepare_submission`](Self::prepare_submission)), then recording it as in flight, in
    /// one step so nothing can change in between. Deduplication comes first: a retry of a
    /// committed command is a duplicate even though its input contracts are archived by now.
    /// On [`Begin::Started`] the caller must persist the [`Effect::InFlight`] marker before
    /// sending the returned submission.
    pub fn submit(
        &mut self,
        request: SubmitRequest,
        now: Timestamp,
    ) -> Result<Begin<Box<Submission>>, SubmitError> {
        if let Some(decided) = self.deduplicate(&request.change.key(), now) {
            return Ok(decided);
        }
        let submission = self.prepare_submission(
            &request.change,
            &request.commands,
            request.seed,
            &request.submission_id,
            &request.mediator,
            request.max_sequencing_time,
        )?;
        self.start(LocalSubmission {
            change: request.change,
            submission_id: request.submission_id.to_string(),
            max_sequencing_time: request.max_sequencing_time,
            dedup_period_us: request.dedup_period_us,
        });
        Ok(Begin::Started(Box::new(submission)))
    }

    /// Records a submission prepared elsewhere (a harness's stale view, say) as in flight
    /// unless its change is already in flight or committed within its deduplication period.
    /// The runtime uses [`submit`](Self::submit). On [`Begin::Started`] the caller must persist
    /// the [`Effect::InFlight`] marker before sending.
    pub fn begin_submission(&mut self, submission: LocalSubmission, now: Timestamp) -> Begin {
        if let Some(decided) = self.deduplicate(&submission.change_key(), now) {
            return decided;
        }
        self.start(submission);
        Begin::Started(())
    }

    /// The decision for a change that is in flight or committed within its period.
    fn deduplicate<T>(&self, change_key: &str, now: Timestamp) -> Option<Begin<T>> {
        Some(match self.dedup_status(change_key, now)? {
            DedupStatus::InFlight { submission_id } => Begin::InFlight { submission_id },
            DedupStatus::Committed {
                transaction_id,
                offset,
                ..
            } => Begin::Duplicate {
                transaction_id,
                offset,
            },
        })
    }

    fn start(&mut self, submission: LocalSubmission) {
        self.dedup.insert(
            dedup_key(&submission.change_key()),
            DedupEntry::InFlight {
                submission_id: submission.submission_id.clone(),
            },
        );
        self.effects.push(Effect::InFlight(submission.clone()));
        self.track_in_flight(submission);
    }

    /// Gives up a submission that definitely was not sequenced: completes it with `code` and
    /// frees its change id. If it was sequenced after all, its request is rejected here when it
    /// arrives — but that only prevents a commit when this participant is the sole confirmer
    /// of the acting parties (the `abandoned_submission_of_a_multi_hosted_party_commits`
    /// simulation shows the other case). The runtime therefore never calls this on a sequencer
    /// refusal, which can answer a retry of an attempt that was sequenced; it lets the stream
    /// (or the max sequencing time) decide. Callers must *know* the request was not sequenced.
    pub fn abandon_submission(
        &mut self,
        submission_id: &str,
        code: StatusCode,
        message: String,
        now: Timestamp,
    ) {
        if let Some(submission) = self.untrack_in_flight(submission_id) {
            self.complete_rejected(submission, now, code, message);
        }
    }

    fn complete_rejected(
        &mut self,
        submission: LocalSubmission,
        record_time: Timestamp,
        code: StatusCode,
        message: String,
    ) {
        let key = dedup_key(&submission.change_key());
        if matches!(self.dedup.get(&key), Some(DedupEntry::InFlight { submission_id }) if *submission_id == submission.submission_id)
        {
            self.dedup.remove(&key);
        }
        let offset = self.next_offset();
        self.effects.push(Effect::Complete(Box::new(Completion {
            submission,
            offset,
            record_time,
            outcome: Outcome::Rejected { code, message },
            transaction: None,
        })));
    }

    // ---- Sequenced events ---------------------------------------------------------------

    /// Processes one sequenced event. Events must come in timestamp order, each once.
    pub fn handle_event(&mut self, event: &SequencedInput) {
        if self.last_event.is_some_and(|last| event.timestamp <= last) {
            tracing::warn!(ts = %event.timestamp, "ignoring an event at or before the checkpoint");
            return;
        }
        for payload in &event.payloads {
            match ProtocolMessage::decode(payload) {
                Ok(ProtocolMessage::ConfirmationRequest(request)) => {
                    self.on_request(event.timestamp, &event.sender, payload, *request)
                }
                Ok(ProtocolMessage::Verdict(signed)) => {
                    self.on_verdict(event.timestamp, &event.sender, &signed)
                }
                Ok(ProtocolMessage::Topology(signed)) => {
                    self.add_topology(&[(event.timestamp, signed)]);
                }
                Ok(ProtocolMessage::TimeProof) => {}
                Ok(other) => tracing::warn!(
                    ts = %event.timestamp,
                    sender = %event.sender,
                    kind = message_kind(&other),
                    "ignoring a message not meant for participants"
                ),
                Err(error) => tracing::warn!(
                    ts = %event.timestamp,
                    sender = %event.sender,
                    %error,
                    "ignoring a malformed envelope"
                ),
            }
        }
        self.last_event = Some(event.timestamp);
        self.expire_unsequenced(event.timestamp);
    }

    /// Submissions whose max sequencing time is before the sequencer's time `now` and that were
    /// not seen sequenced never will be: they complete as ABORTED and free their change id.
    fn expire_unsequenced(&mut self, now: Timestamp) {
        while let Some((deadline, submission_id)) = self.expiry.iter().next().cloned() {
            if deadline >= now {
                break;
            }
            if let Some(submission) = self.untrack_in_flight(&submission_id) {
                self.complete_rejected(
                    submission,
                    now,
                    StatusCode::Aborted,
                    format!(
                        "{} {deadline}; nothing was committed, resubmit",
                        meridian_core::protocol::NOT_SEQUENCED_REJECTION
                    ),
                );
            } else {
                self.expiry.remove(&(deadline, submission_id));
            }
        }
    }

    fn on_request(
        &mut self,
        ts: Timestamp,
        sender: &MemberId,
        bytes: &[u8],
        request: ConfirmationRequest,
    ) {
        if self.pending.contains_key(&ts) {
            tracing::warn!(%ts, "ignoring a second confirmation request in one event");
            return;
        }
        let request_hash = protocol::request_hash(bytes);
        let local = if request.submitter == self.participant {
            self.untrack_in_flight(&request.submission_id)
        } else {
            None
        };
        let snapshot = self.snapshot_at(ts);
        let hosted = snapshot.hosted_by(&self.participant);
        let check = self.validate(ts, sender, &request, &snapshot, &hosted, local.is_some());
        let transaction = request.transaction;
        let informees = transaction.informees();
        let consumed: BTreeSet<ContractId> = transaction.consumed().into_iter().collect();
        let hosts_any =
            |parties: &BTreeSet<PartyId>| parties.iter().any(|p| hosted.contains_key(p));
        let created_here: Vec<Contract> = transaction
            .created()
            .filter(|c| !consumed.contains(&c.id) && hosts_any(&c.stakeholders()))
            .cloned()
            .collect();
        let confirming: BTreeSet<PartyId> = transaction
            .confirming_parties()
            .into_iter()
            .filter(|p| hosted.get(p).is_some_and(|perm| perm.can_confirm()))
            .collect();
        drop(snapshot);

        let locks: Vec<ContractId> = match &check {
            Ok(()) => consumed
                .iter()
                .filter(|id| self.acs.contains_key(*id))
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        };
        for id in &locks {
            self.locks.insert(id.clone(), ts);
        }
        // Signed in `drain_effects`, with the batch's other responses.
        let response = (!confirming.is_empty()).then(|| ConfirmationResponse {
            request_id: ts,
            request_hash: request_hash.clone(),
            participant: self.participant.clone(),
            parties: confirming,
            verdict: match &check {
                Ok(()) => LocalVerdict::Approve,
                Err((code, message)) => LocalVerdict::Reject {
                    code: *code,
                    message: message.clone(),
                },
            },
        });
        if let Err((code, message)) = &check {
            tracing::info!(request_id = %ts, ?code, %message, "rejecting a request locally");
        }
        let pending = PendingRequest {
            request_id: ts,
            request_hash,
            mediator: request.mediator,
            submitter: request.submitter,
            transaction,
            informees,
            locks,
            created_here,
            local,
            response: None,
        };
        if let Some(response) = response {
            self.unsigned_responses
                .push((pending.mediator.clone(), response));
        }
        self.effects
            .push(Effect::Pending(Box::new(pending.clone())));
        self.pending.insert(ts, pending);
    }

    /// Signs the responses decided since the last drain as groups of one signature each
    /// (at most one coalesced submission's worth, `meridian_core::signed_batch`): the mediator
    /// then checks one signature per group. Each response goes into its pending request
    /// (which is persisted, to resend it after a restart) and out as a send.
    fn sign_responses(&mut self) {
        let unsigned = std::mem::take(&mut self.unsigned_responses);
        let mut messages: HashMap<Timestamp, OutgoingMessage> = HashMap::new();
        for chunk in unsigned.chunks(CoalesceLimits::DEFAULT.max_envelopes) {
            let values: Vec<&ConfirmationResponse> =
                chunk.iter().map(|(_, response)| response).collect();
            let signed = Signed::sign_all(
                &values,
                &self.participant.as_member(),
                &self.key,
                SigningPurpose::ConfirmationResponse,
            );
            for ((mediator, response), signed) in chunk.iter().zip(signed) {
                let payload = ProtocolMessage::ConfirmationResponse(signed).encode();
                let message = OutgoingMessage {
                    message_id: format!(
                        "resp-{}-{}",
                        response.request_id.as_micros(),
                        self.participant
                    ),
                    recipients: vec![mediator.clone()],
                    payload: String::from_utf8(payload).expect("serde_json writes UTF-8"),
                };
                if let Some(pending) = self.pending.get_mut(&response.request_id) {
                    pending.response = Some(message.clone());
                }
                messages.insert(response.request_id, message);
            }
        }
        for effect in &mut self.effects {
            if let Effect::Pending(pending) = effect {
                if let Some(message) = messages.get(&pending.request_id) {
                    pending.response = Some(message.clone());
                }
            }
        }
        let mut sends: Vec<OutgoingMessage> = messages.into_values().collect();
        sends.sort_by(|a, b| a.message_id.cmp(&b.message_id));
        self.effects.extend(sends.into_iter().map(Effect::Send));
    }

    /// The deterministic checks every informee participant runs on a request.
    fn validate(
        &self,
        ts: Timestamp,
        sender: &MemberId,
        request: &ConfirmationRequest,
        snapshot: &TopologySnapshot,
        hosted: &BTreeMap<PartyId, meridian_core::ledger::Permission>,
        local_in_flight: bool,
    ) -> Result<(), (RejectionCode, String)> {
        self.check_submitter(ts, sender, request, snapshot, local_in_flight)?;
        self.check_conformance(request, snapshot)?;
        self.check_activeness(&request.transaction, hosted)
    }

    /// The sender, the submitter's right to act for `act_as`, the mediator.
    fn check_submitter(
        &self,
        ts: Timestamp,
        sender: &MemberId,
        request: &ConfirmationRequest,
        snapshot: &TopologySnapshot,
        local_in_flight: bool,
    ) -> Result<(), (RejectionCode, String)> {
        use RejectionCode::*;
        if *sender != request.submitter.as_member() {
            return Err((
                Malformed,
                format!(
                    "request names submitter {} but was sent by {sender}",
                    request.submitter
                ),
            ));
        }
        if request.submitter == self.participant && !local_in_flight {
            return Err((
                Malformed,
                format!(
                    "submission {} is not in flight at its submitter (abandoned or unknown)",
                    request.submission_id
                ),
            ));
        }
        if snapshot.mediator_key(&request.mediator).is_none() {
            return Err((
                Topology,
                format!(
                    "mediator {} is not in the topology at {ts}",
                    request.mediator
                ),
            ));
        }
        let act_as = &request.change_id.act_as;
        if act_as.is_empty() {
            return Err((NotAuthorized, "no acting party".into()));
        }
        for party in act_as {
            let allowed = snapshot
                .permission(party, &request.submitter)
                .is_some_and(|p| p.can_submit());
            if !allowed {
                return Err((
                    NotAuthorized,
                    format!(
                        "participant {} may not submit for party {party}",
                        request.submitter
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Model conformance (re-interpretation gives the same transaction), authorization, the
    /// informee participants, and the disclosed contracts against ours.
    fn check_conformance(
        &self,
        request: &ConfirmationRequest,
        snapshot: &TopologySnapshot,
    ) -> Result<(), (RejectionCode, String)> {
        use RejectionCode::*;
        let act_as = &request.change_id.act_as;
        let seed: [u8; 32] = hex::decode(&request.seed)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| (Malformed, "the seed is not 32 bytes of hex".to_owned()))?;
        let disclosed: HashMap<&ContractId, &Contract> =
            request.inputs.iter().map(|c| (&c.id, c)).collect();
        let lookup = |id: &ContractId| disclosed.get(id).map(|c| (*c).clone());
        let reinterpreted = self
            .registry
            .interpret(&request.commands, act_as, &seed, &lookup)
            .map_err(|e| {
                (
                    ModelConformance,
                    format!("re-interpreting the commands failed: {e}"),
                )
            })?;
        if reinterpreted != request.transaction {
            return Err((
                ModelConformance,
                "re-interpreting the commands gives a different transaction".into(),
            ));
        }
        authorize(&request.transaction, act_as).map_err(|e| (NotAuthorized, e.to_string()))?;
        let expected = snapshot.hosting_participants(&request.transaction.informees());
        if expected != request.informee_participants {
            return Err((
                Topology,
                format!(
                    "informee participants {:?} differ from the topology's {:?}",
                    request.informee_participants, expected
                ),
            ));
        }
        // Disclosed copies of contracts we hold must be exactly ours.
        for contract in &request.inputs {
            if let Some(ours) = self.acs.get(&contract.id) {
                if ours != contract {
                    return Err((
                        ModelConformance,
                        format!(
                            "disclosed contract {} differs from the stored one",
                            contract.id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The inputs this participant knows of (a stakeholder hosted here) are active and not
    /// locked by another pending request.
    fn check_activeness(
        &self,
        transaction: &Transaction,
        hosted: &BTreeMap<PartyId, meridian_core::ledger::Permission>,
    ) -> Result<(), (RejectionCode, String)> {
        use RejectionCode::*;
        let mut locked = Vec::new();
        let mut inactive = Vec::new();
        for (id, stakeholders) in input_stakeholders(transaction) {
            if !stakeholders.iter().any(|p| hosted.contains_key(p)) {
                continue;
            }
            if self.locks.contains_key(&id) {
                locked.push(id);
            } else if !self.acs.contains_key(&id) {
                inactive.push(id);
            }
        }
        if !inactive.is_empty() {
            return Err((
                InactiveContracts,
                format!("contracts {} are not active", join(&inactive)),
            ));
        }
        if !locked.is_empty() {
            return Err((
                LockedContracts,
                format!(
                    "contracts {} are locked by a concurrent request",
                    join(&locked)
                ),
            ));
        }
        Ok(())
    }

    fn on_verdict(&mut self, ts: Timestamp, sender: &MemberId, signed: &Signed) {
        let claimed: Verdict = match signed.decode_unverified() {
            Ok(v) => v,
            Err(error) => {
                tracing::warn!(%ts, %error, "ignoring a malformed verdict");
                return;
            }
        };
        let Some(pending) = self.pending.get(&claimed.request_id) else {
            tracing::debug!(request_id = %claimed.request_id, "ignoring a verdict for an unknown request");
            return;
        };
        if signed.signer != pending.mediator || *sender != pending.mediator {
            tracing::warn!(request_id = %claimed.request_id, signer = %signed.signer, %sender,
                "ignoring a verdict not from the request's mediator");
            return;
        }
        let snapshot = self.snapshot_at(ts);
        let Some(key) = snapshot.mediator_key(&signed.signer).copied() else {
            tracing::warn!(request_id = %claimed.request_id, "ignoring a verdict from a mediator not in the topology");
            return;
        };
        drop(snapshot);
        let verdict: Verdict = match signed.verify_remembering(
            &key,
            SigningPurpose::Verdict,
            &mut self.verified_roots,
        ) {
            Ok(v) => v,
            Err(error) => {
                tracing::warn!(request_id = %claimed.request_id, %error, "ignoring a verdict with a bad signature");
                return;
            }
        };
        if verdict.request_hash != pending.request_hash {
            tracing::warn!(request_id = %verdict.request_id, "ignoring a verdict for different request bytes");
            return;
        }
        let Some(pending) = self.pending.remove(&verdict.request_id) else {
            return;
        };
        for id in &pending.locks {
            if self.locks.get(id) == Some(&pending.request_id) {
                self.locks.remove(id);
            }
        }
        self.effects.push(Effect::Decided {
            request_id: pending.request_id,
        });
        match verdict.outcome {
            VerdictOutcome::Approved => self.commit(pending, ts),
            VerdictOutcome::Rejected { code, message } => {
                tracing::debug!(request_id = %pending.request_id, ?code, %message, "request rejected");
                if let Some(local) = pending.local {
                    self.complete_rejected(
                        local,
                        pending.request_id,
                        StatusCode::for_rejection(code),
                        format!(
                            "{}: {message}",
                            protocol::mediator_rejection(code_name(code))
                        ),
                    );
                }
            }
        }
    }

    /// Commits on the verdict sequenced at `verdict_at`: the event whose loss (a fork) would
    /// lose this commit.
    fn commit(&mut self, pending: PendingRequest, verdict_at: Timestamp) {
        let offset = self.next_offset();
        let transaction_id = protocol::transaction_id(pending.request_id, &pending.request_hash);
        let archived: Vec<ContractId> = pending
            .transaction
            .consumed()
            .into_iter()
            .filter(|id| self.acs.remove(id).is_some())
            .collect();
        for contract in &pending.created_here {
            self.acs.insert(contract.id.clone(), contract.clone());
        }
        let completion = pending.local.as_ref().map(|local| Completion {
            submission: local.clone(),
            offset,
            record_time: pending.request_id,
            outcome: Outcome::Committed {
                transaction_id: transaction_id.clone(),
                offset,
            },
            transaction: Some(Box::new(pending.transaction.clone())),
        });
        if let Some(completion) = &completion {
            self.dedup.insert(
                dedup_key(&completion.submission.change_key()),
                DedupEntry::Committed {
                    transaction_id: CompactTransactionId::from(&transaction_id),
                    offset,
                    expires_at: completion.dedup_expires_at(),
                    committed_at: verdict_at,
                },
            );
        }
        self.effects.push(Effect::Commit(Box::new(CommitRecord {
            offset,
            transaction_id,
            request_id: pending.request_id,
            committed_at: verdict_at,
            transaction: pending.transaction,
            informees: pending.informees,
            local: pending.local,
            archived,
            created: pending.created_here,
        })));
        if let Some(completion) = completion {
            self.effects.push(Effect::Complete(Box::new(completion)));
        }
    }
}

/// Every input contract (exercised or fetched, not created in the transaction) with the
/// stakeholders the tree states for it.
fn input_stakeholders(transaction: &Transaction) -> Vec<(ContractId, BTreeSet<PartyId>)> {
    let inputs = transaction.inputs();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for action in transaction.actions() {
        let (id, stakeholders) = match action {
            Action::Exercise {
                contract_id,
                stakeholders,
                ..
            }
            | Action::Fetch {
                contract_id,
                stakeholders,
                ..
            } => (contract_id, stakeholders),
            Action::Create { .. } => continue,
        };
        if inputs.contains(id) && seen.insert(id.clone()) {
            out.push((id.clone(), stakeholders.clone()));
        }
    }
    out
}

fn join(ids: &[ContractId]) -> String {
    ids.iter()
        .map(ContractId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn message_kind(message: &ProtocolMessage) -> &'static str {
    match message {
        ProtocolMessage::ConfirmationRequest(_) => "confirmation_request",
        ProtocolMessage::InformeeMessage(_) => "informee_message",
        ProtocolMessage::ConfirmationResponse(_) => "confirmation_response",
        ProtocolMessage::Verdict(_) => "verdict",
        ProtocolMessage::Topology(_) => "topology",
        ProtocolMessage::TimeProof => "time_proof",
    }
}

pub fn code_name(code: RejectionCode) -> &'static str {
    match code {
        RejectionCode::Timeout => "TIMEOUT",
        RejectionCode::InactiveContracts => "INACTIVE_CONTRACTS",
        RejectionCode::LockedContracts => "LOCKED_CONTRACTS",
        RejectionCode::NotAuthorized => "NOT_AUTHORIZED",
        RejectionCode::ModelConformance => "MODEL_CONFORMANCE",
        RejectionCode::Topology => "TOPOLOGY",
        RejectionCode::Malformed => "MALFORMED",
    }
}

#[cfg(test)]
mod dedup_tests {
    use super::*;

    #[test]
    fn a_committed_entry_gives_back_the_status_it_was_made_from() {
        let digest = protocol::transaction_id(Timestamp::from_micros(7), "hash");
        let uppercase = TransactionId::new(digest.as_str().to_uppercase()).unwrap();
        let other = TransactionId::new("tx-42").unwrap();
        for transaction_id in [digest.clone(), uppercase, other] {
            let status = DedupStatus::Committed {
                transaction_id,
                offset: LedgerOffset(3),
                expires_at: Timestamp::from_micros(9),
            };
            assert_eq!(DedupEntry::from(status.clone()).to_status(), status);
        }
        assert!(matches!(
            CompactTransactionId::from(&digest),
            CompactTransactionId::Digest(_)
        ));
        let in_flight = DedupStatus::InFlight {
            submission_id: "sub-1".into(),
        };
        assert_eq!(DedupEntry::from(in_flight.clone()).to_status(), in_flight);
    }

    #[test]
    fn a_committed_entry_is_far_smaller_than_its_status() {
        // The key and the id live in the entry itself: no allocation per entry.
        let entry = std::mem::size_of::<(DedupKey, DedupEntry)>();
        assert!(entry <= 96, "{entry} bytes");
    }
}
