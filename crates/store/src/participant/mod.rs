//! The participant's store contract.
//!
//! Data model (the same on both backends, every table prefixed `participant_`):
//! - `state`: one row with the checkpoint (timestamp of the last processed sequencer event)
//!   and the ledger end (the last assigned ledger offset).
//! - `contracts`: every contract with a stakeholder hosted here, with the offset that created
//!   it and, once archived, the offset that archived it. The active contract set is the rows
//!   without `archived_offset`.
//! - `transactions`: committed transactions by ledger offset, with the full tree as JSON.
//! - `completions`: outcomes of this participant's own submissions by ledger offset (committed
//!   ones share the transaction's offset; rejections get an offset of their own).
//! - `dedup`: command deduplication by change key: an in-flight marker, written *before* the
//!   submission is sent, or the committed outcome with its expiry.
//! - `pending`: requests validated but not yet decided, as opaque JSON records of the engine.
//! - `quiet_points`: recent batch boundaries with no request pending (checkpoint, ledger end):
//!   where a fork repair can rewind to, since the state there is exactly the rows up to that
//!   ledger end (pruned to [`QUIET_POINT_RETENTION`] of sequencer time).
//! - `fork`: the fork this participant detected, if any (at most one row), which the repair
//!   ([`ParticipantStore::rewind`]) requires.
//!
//! Invariant the participant relies on: everything one batch of sequencer events changes,
//! including the checkpoint, is written by one [`ParticipantStore::apply`] call, in one
//! database transaction. A crash therefore leaves the store at a batch boundary, and replaying
//! the sequencer stream from the checkpoint reproduces exactly the lost work.
//!
//! Replication: every write transaction (`apply`, `prune_dedup`) first runs the fencing check
//! of [`ParticipantStore::fence`] inside the transaction, so a deposed replica writes nothing.
//!
//! One implementation serves both backends ([`SqlParticipantStore`], in `store`); rows are
//! encoded and decoded in `rows`.

pub(crate) mod rows;
mod store;

pub use store::SqlParticipantStore;

use std::collections::BTreeSet;

use async_trait::async_trait;
use meridian_core::ledger::{Contract, Transaction};
use meridian_core::{
    CommandId, ContractId, LedgerOffset, PartyId, Timestamp, TransactionId, UserId,
};

use crate::{FenceSlot, StoreError};

/// A contract row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredContract {
    pub contract: Contract,
    pub created_offset: LedgerOffset,
    /// `None` while active.
    pub archived_offset: Option<LedgerOffset>,
}

/// A committed transaction as this participant saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionRecord {
    pub offset: LedgerOffset,
    pub transaction_id: TransactionId,
    /// The request's sequencing timestamp, which is also the record time.
    pub request_id: Timestamp,
    /// The timestamp of the verdict that committed it: a fork before it loses the commit.
    pub committed_at: Timestamp,
    /// Set when this participant submitted it.
    pub user_id: Option<UserId>,
    pub command_id: Option<CommandId>,
    pub informees: BTreeSet<PartyId>,
    pub transaction: Transaction,
}

/// The outcome of one of this participant's submissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionRecord {
    pub offset: LedgerOffset,
    pub user_id: UserId,
    pub command_id: CommandId,
    pub act_as: BTreeSet<PartyId>,
    pub submission_id: String,
    /// A gRPC status code: 0 for committed.
    pub status_code: i32,
    pub message: String,
    pub transaction_id: Option<TransactionId>,
    pub record_time: Timestamp,
}

/// What the dedup table knows about a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupState {
    /// Sent (or about to be) and not yet decided.
    InFlight,
    /// Committed; a resubmission before `expires_at` is a duplicate.
    Committed {
        transaction_id: TransactionId,
        offset: LedgerOffset,
        expires_at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupRecord {
    /// [`meridian_core::protocol::ChangeId::key`].
    pub change_key: String,
    pub user_id: UserId,
    pub command_id: CommandId,
    pub act_as: BTreeSet<PartyId>,
    pub submission_id: String,
    pub max_sequencing_time: Timestamp,
    pub dedup_period_us: u64,
    pub state: DedupState,
}

/// A request awaiting its verdict; `record` is the engine's own JSON encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecord {
    pub request_id: Timestamp,
    pub record: String,
}

/// Everything one batch of work changes, written atomically by [`ParticipantStore::apply`].
/// Changes apply in this order: dedup deletes, dedup upserts, contract inserts, archivals,
/// transactions, completions, pending deletes, pending upserts, then the state row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParticipantBatch {
    /// The last processed sequencer event, if the batch processed any.
    pub checkpoint: Option<Timestamp>,
    /// The last assigned offset, if the batch assigned any.
    pub ledger_end: Option<LedgerOffset>,
    pub created: Vec<StoredContract>,
    pub archived: Vec<(ContractId, LedgerOffset)>,
    pub transactions: Vec<TransactionRecord>,
    pub completions: Vec<CompletionRecord>,
    pub dedup_upserts: Vec<DedupRecord>,
    pub dedup_deletes: Vec<String>,
    pub pending_upserts: Vec<PendingRecord>,
    pub pending_deletes: Vec<Timestamp>,
    /// No request awaits its verdict after this batch: with a checkpoint, the batch boundary
    /// is recorded as a quiet point.
    pub quiet: bool,
}

impl ParticipantBatch {
    pub fn is_empty(&self) -> bool {
        *self == ParticipantBatch::default()
    }
}

/// How far back (sequencer time) quiet points are kept: a fork repair rewinds to one at or
/// before the fork point, and an asynchronous standby loses far less than this.
pub const QUIET_POINT_RETENTION_US: u64 = 3_600_000_000;

/// A batch boundary with no request awaiting its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietPoint {
    pub checkpoint: Timestamp,
    pub ledger_end: LedgerOffset,
}

/// The fork a participant detected, as recorded for the operator's repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkRecord {
    pub last_processed: Option<Timestamp>,
    /// The last event both histories share: `Some(None)` for none at all, `None` if unknown.
    pub fork_point: Option<Option<Timestamp>>,
    pub detected_at: Timestamp,
    pub reason: String,
}

/// What a rewind changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RewindOutcome {
    pub transactions_removed: u64,
    pub completions_removed: u64,
    pub contracts_removed: u64,
    pub contracts_reactivated: u64,
    /// Own submissions whose request the shared history holds: back to in flight, so that the
    /// replay completes them as the new history decides.
    pub submissions_reopened: u64,
    /// Own submissions whose request the new history lacks: their change ids are free again.
    pub submissions_forgotten: u64,
    pub pending_removed: u64,
}

/// What a participant reloads at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParticipantSnapshot {
    pub checkpoint: Option<Timestamp>,
    pub ledger_end: LedgerOffset,
    pub active_contracts: Vec<StoredContract>,
    pub pending: Vec<PendingRecord>,
    /// In-flight markers and committed entries not yet expired.
    pub dedup: Vec<DedupRecord>,
}

#[async_trait]
pub trait ParticipantStore: Send + Sync + 'static {
    /// This store's fencing slot (see [`crate::lease`]): the replica manager sets it, and every
    /// write transaction checks it first. Unset (the default), writes are not fenced. Clones
    /// share the slot.
    fn fence(&self) -> FenceSlot;

    /// Writes a batch atomically: all of it or nothing. The checkpoint and ledger end never move
    /// backwards (a lower value is ignored).
    async fn apply(&self, batch: &ParticipantBatch) -> Result<(), StoreError>;

    /// Whether `batch` is already written: asked before applying again a batch whose earlier
    /// attempt failed with its outcome unknown (the connection lost during `COMMIT`), because
    /// its transactions and completions, at fresh offsets, cannot be inserted twice. Checked
    /// under the fence, like a write, so only this replica's own commit can answer yes. A
    /// batch without either is all upserts and forward-only updates: `false`, apply it again.
    async fn applied(&self, batch: &ParticipantBatch) -> Result<bool, StoreError>;

    /// Everything needed to restart: checkpoint, ledger end, the active contracts, pending
    /// requests and the in-flight deduplication markers. Not the committed dedup entries: a
    /// period's worth (throughput × `dedup_period_s`, most of a million at saturation) would
    /// be read whole into memory; [`committed_dedup_keys`](Self::committed_dedup_keys) pages
    /// through their keys instead.
    async fn load(&self) -> Result<ParticipantSnapshot, StoreError>;

    /// A page of the committed deduplication entries not expired by `now`: at most `limit`
    /// change keys with the end of their period, in key order after `after` (from the first
    /// with `None`). An empty page is the end.
    async fn committed_dedup_keys(
        &self,
        now: Timestamp,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Timestamp)>, StoreError>;

    /// The ledger end and the active contracts at that offset, read consistently.
    async fn active_contracts(&self) -> Result<(LedgerOffset, Vec<StoredContract>), StoreError>;

    /// A contract whether active or archived; `None` if never stored.
    async fn contract(&self, id: &ContractId) -> Result<Option<StoredContract>, StoreError>;

    /// Up to `limit` transactions with `offset > after`, in offset order.
    async fn transactions_after(
        &self,
        after: LedgerOffset,
        limit: u32,
    ) -> Result<Vec<TransactionRecord>, StoreError>;

    /// Up to `limit` completions of `user` with `offset > after`, in offset order.
    async fn completions_after(
        &self,
        user: &UserId,
        after: LedgerOffset,
        limit: u32,
    ) -> Result<Vec<CompletionRecord>, StoreError>;

    /// The deduplication entries of those of `change_keys` that have one, in no particular
    /// order; one round trip per few hundred keys.
    async fn dedup_entries(&self, change_keys: &[String]) -> Result<Vec<DedupRecord>, StoreError>;

    /// Forgets committed dedup entries that expired before `expired_before`. In-flight markers
    /// are never pruned here: only their resolution removes them.
    async fn prune_dedup(&self, expired_before: Timestamp) -> Result<u64, StoreError>;

    /// The ledger end as stored.
    async fn ledger_end(&self) -> Result<LedgerOffset, StoreError>;

    /// Records the detected fork (replacing an earlier record).
    async fn record_fork(&self, fork: &ForkRecord) -> Result<(), StoreError>;

    /// The recorded fork, if any.
    async fn fork(&self) -> Result<Option<ForkRecord>, StoreError>;

    /// Up to `limit` transactions committed by a verdict after `after` (every one for `None`),
    /// in offset order: what a fork at `after` loses.
    async fn transactions_committed_after(
        &self,
        after: Option<Timestamp>,
        limit: u32,
    ) -> Result<Vec<TransactionRecord>, StoreError>;

    /// The latest quiet point at or before `at`.
    async fn quiet_point_at_or_before(
        &self,
        at: Timestamp,
    ) -> Result<Option<QuietPoint>, StoreError>;

    /// The fork repair, in one transaction: rewinds the state to `to` (a quiet point at or
    /// before the fork point `fork_point`) — contracts, transactions, completions after its
    /// ledger end undone, nothing pending, the checkpoint back at it — reopens the own
    /// submissions committed since whose request the shared history holds (`request ≤
    /// fork_point`) and forgets the others, and deletes the fork record. Only for a stopped
    /// node: it is not fenced.
    async fn rewind(
        &self,
        to: QuietPoint,
        fork_point: Option<Timestamp>,
    ) -> Result<RewindOutcome, StoreError>;
}
