//! The sequencer's store contract.
//!
//! Data model (the same on both backends):
//! - `members`: registered members with a dense numeric id ([`MemberSeq`]) used in the other tables.
//! - `events`: one row per sequenced submission: timestamp, writing instance, sender, message id
//!   and the encoded `meridian.v1.Batch`.
//! - `event_recipients(member, ts)`: the delivery index; a member's stream is this index in
//!   timestamp order, and `previous_timestamp` is computed from it at read time (so several
//!   instances writing interleaved events need no shared "last event per member" row). The
//!   sequencer's shared reader tail reads a range of `events` for all members at once
//!   ([`SequencerStore::events_after`]) and their recipients from this index, one range scan
//!   per member, so no second index on `ts` costs every write.
//! - `message_ids(sender, message_id)`: deduplication until the submission's max sequencing time.
//! - `sequencer_instances(index, watermark, online, incarnation)`: one row per instance.
//!
//! Invariant the sequencer relies on: events and the writer's watermark are committed in the
//! same transaction, and only while the writer is marked online *and* still holds the row's
//! current incarnation. So no committed event is ever above its writer's watermark, a fenced
//! (offline) instance writes nothing at all, and neither does a process of an earlier
//! incarnation: a zombie that was paused (SIGSTOP, a long GC-like stall, a VM freeze) or a
//! second process configured with the same index.
//!
//! Incarnations: every [`SequencerStore::start_instance`] bumps the row's incarnation and hands
//! the new value to its caller, which passes it to every write. The check runs in the same
//! transaction as the write (the watermark `UPDATE ... WHERE online AND incarnation = $n` comes
//! first and takes the row lock), so "claimed by someone else" and "wrote something" exclude
//! each other.
//!
//! One implementation serves both backends ([`SqlSequencerStore`], in `store`); `common` holds
//! the decisions both make the same way, without a database (deduplication within a call,
//! claims, row decoding), and `sqlite` / `postgres` only the statements where the dialects
//! really differ: bulk inserts (multi-row `VALUES` vs `UNNEST`), deleting a zombie's events,
//! and `mark_offline`'s lock wait.

mod common;
mod postgres;
mod presence;
mod sqlite;
mod store;

pub use presence::{lock_file_path as presence_lock_file_path, PresenceHold};
pub use store::{SqlSequencerStore, SqliteSequencerStore};

use async_trait::async_trait;
use meridian_core::crypto::PublicKey;
use meridian_core::{InstanceIndex, MemberId, MessageId, Timestamp};

use crate::StoreError;

/// Dense numeric id of a registered member, assigned by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberSeq(pub i64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub seq: MemberSeq,
    pub id: MemberId,
    pub public_key: PublicKey,
    pub registered_at: Timestamp,
}

/// A submission the sequencer has validated and stamped, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub timestamp: Timestamp,
    pub sender: MemberSeq,
    pub message_id: MessageId,
    /// Deduplication of (sender, message_id) lasts at least until this time.
    pub max_sequencing_time: Timestamp,
    /// Distinct recipients, sorted.
    pub recipients: Vec<MemberSeq>,
    /// The encoded `meridian.v1.Batch`.
    pub batch: Vec<u8>,
}

/// Outcome of one [`NewEvent`] of a [`SequencerStore::write_events`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    Sequenced,
    /// (sender, message_id) was already sequenced at `original`; nothing was written for it.
    Duplicate {
        original: Timestamp,
    },
}

/// What a committed [`SequencerStore::write_events`] or [`SequencerStore::advance_watermark`]
/// returns besides its results: the safe point as of its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed<T> {
    pub results: T,
    /// The minimum watermark of the online instances, read in the committing transaction
    /// after this instance's own advance — what [`SequencerStore::safe_point`] would read
    /// right after the commit, without another round trip. It is safe to publish once the
    /// commit returned: the writes that could put an instance below it (a join or rejoin, see
    /// [`SequencerStore::start_instance`]) exclude this transaction (SQLite's single writer;
    /// on PostgreSQL the join's EXCLUSIVE table lock against the row lock this transaction
    /// holds), so they see this watermark and start above it. Instances marked offline
    /// meanwhile only make it lower than it could be, never unsafe.
    pub safe_point: Timestamp,
    /// The newest event of any other instance index (online or not, any incarnation), read in
    /// the same statement as `safe_point` (`None`: there is none). Every other instance's event
    /// at or below `safe_point` was committed before that statement and is at or below this:
    /// a reader that has read everything up to it lacks, up to `safe_point`, only the
    /// caller's own events, which the caller wrote.
    pub others_latest_event: Option<Timestamp>,
}

/// The number of times an instance's row has been claimed by [`SequencerStore::start_instance`].
/// Only the holder of the current incarnation may write for the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Incarnation(pub i64);

impl std::fmt::Display for Incarnation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// How [`SequencerStore::start_instance`] claims an instance's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceClaim {
    /// A process starting up. Refused with [`StoreError::InstanceInUse`] while the row is
    /// online with a watermark at or after `live_after` (typically now minus `offline_after`):
    /// that is a live process configured with the same index, and taking its row over would
    /// only make the two fence each other in turn. A row that is offline, or whose watermark is
    /// older (its process crashed or is paused), is taken over; a paused holder then finds
    /// itself [`StoreError::Superseded`] when it resumes. `Timestamp::MAX` takes over
    /// unconditionally.
    Start { live_after: Timestamp },
    /// The running incarnation coming back after its peers marked it offline. Refused with
    /// [`StoreError::Superseded`] if another incarnation claimed the row in the meantime.
    Rejoin(Incarnation),
}

/// What [`SequencerStore::start_instance`] granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceStart {
    /// To pass to every write of this instance.
    pub incarnation: Incarnation,
    /// The instance must only issue timestamps strictly above it.
    pub watermark: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceState {
    pub index: InstanceIndex,
    pub watermark: Timestamp,
    pub online: bool,
    pub incarnation: Incarnation,
}

/// The answer of [`SequencerStore::ordering_progress`]: how far readers may deliver, and how
/// far events were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderingProgress {
    /// As [`SequencerStore::safe_point`].
    pub safe_point: Option<Timestamp>,
    /// The latest event's timestamp, of any instance.
    pub latest_event: Option<Timestamp>,
}

impl OrderingProgress {
    /// The latest event when it lies above the safe point: it waits for the watermark of an
    /// instance below it.
    pub fn waiting_through(&self) -> Option<Timestamp> {
        match (self.safe_point, self.latest_event) {
            (Some(safe_point), Some(latest)) if latest > safe_point => Some(latest),
            _ => None,
        }
    }
}

/// The answer of [`SequencerStore::member_history_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberHistoryAt {
    pub at_or_before: Option<Timestamp>,
    pub latest: Option<Timestamp>,
}

/// One event of a member's stream, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub timestamp: Timestamp,
    /// The member's previous event (at any time, not just within this read); `None` if first.
    pub previous_timestamp: Option<Timestamp>,
    pub sender: MemberSeq,
    pub message_id: MessageId,
    pub batch: Vec<u8>,
}

/// One event with every recipient, as read for all members at once (see
/// [`SequencerStore::events_after`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedEvent {
    pub timestamp: Timestamp,
    pub sender: MemberSeq,
    pub message_id: MessageId,
    /// Every member the event is delivered to, sorted and distinct.
    pub recipients: Vec<MemberSeq>,
    pub batch: Vec<u8>,
}

/// A written event as readers see it: what it was stored with, less its deduplication horizon.
impl From<NewEvent> for RoutedEvent {
    fn from(event: NewEvent) -> Self {
        Self {
            timestamp: event.timestamp,
            sender: event.sender,
            message_id: event.message_id,
            recipients: event.recipients,
            batch: event.batch,
        }
    }
}

/// Facts about the database that decide whether a sequencer may serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    pub backend: &'static str,
    /// A PostgreSQL standby, or a database opened read-only.
    pub read_only: bool,
    /// PostgreSQL's `synchronous_commit` setting; `None` on SQLite (always `synchronous=FULL`).
    pub synchronous_commit: Option<String>,
    /// When read-only because no server of the storage URL takes writes: every host and what
    /// it is (a standby, read-only, unreachable), as the search for the writer found them.
    pub read_only_reason: Option<String>,
}

/// A reading of the clock the sequencer's instances compare their own wall clock with (see
/// [`SequencerStore::reference_time`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferenceTime {
    pub time: Timestamp,
    /// Which clock it was, for the messages that report a skew.
    pub source: &'static str,
}

#[async_trait]
pub trait SequencerStore: Send + Sync + 'static {
    /// Registers a member. Idempotent for the same key (`created == false`); a different key
    /// for an existing member is [`StoreError::MemberKeyConflict`] and changes nothing.
    async fn register_member(
        &self,
        id: &MemberId,
        public_key: &PublicKey,
        now: Timestamp,
    ) -> Result<(MemberRecord, bool), StoreError>;

    async fn members(&self) -> Result<Vec<MemberRecord>, StoreError>;

    async fn member(&self, id: &MemberId) -> Result<Option<MemberRecord>, StoreError>;

    /// Claims instance `index` (see [`InstanceClaim`]) and brings it online, in one
    /// transaction that excludes every other instance's watermark updates and claims: bumps the
    /// row's incarnation, deletes any of its events above its last watermark (writes a zombie
    /// left behind), sets its watermark to the maximum of all instances' watermarks and
    /// `not_before`, and marks it online. Returns the new incarnation and that watermark.
    async fn start_instance(
        &self,
        index: InstanceIndex,
        not_before: Timestamp,
        claim: InstanceClaim,
    ) -> Result<InstanceStart, StoreError>;

    /// Stores a batch of events and advances the instance's watermark to `watermark` (which is
    /// at least every event's timestamp; a lower value is raised to the highest one, so the
    /// invariant above holds regardless), atomically: either everything is committed or
    /// nothing. Fails with [`StoreError::Superseded`] if `incarnation` is no longer the row's
    /// (a newer process claimed the index) and with [`StoreError::Fenced`] if the instance is
    /// not online; either way nothing is written. Results are in input order; a
    /// (sender, message_id) already present — in the table or earlier in the same call — is a
    /// [`WriteResult::Duplicate`] and is not written. Returns the safe point as of the commit
    /// beside the results ([`Committed`]).
    async fn write_events(
        &self,
        index: InstanceIndex,
        incarnation: Incarnation,
        events: &[NewEvent],
        watermark: Timestamp,
    ) -> Result<Committed<Vec<WriteResult>>, StoreError>;

    /// Advances an idle instance's watermark (never backwards). [`StoreError::Superseded`] or
    /// [`StoreError::Fenced`] as for [`SequencerStore::write_events`]; the safe point as of
    /// the commit as for it too.
    async fn advance_watermark(
        &self,
        index: InstanceIndex,
        incarnation: Incarnation,
        watermark: Timestamp,
    ) -> Result<Committed<()>, StoreError>;

    async fn instances(&self) -> Result<Vec<InstanceState>, StoreError>;

    /// Takes (or, when already held, checks) the presence lock of instance `index`: a lock
    /// the kernel or the database server releases the moment this process dies, so that
    /// peers see a killed instance gone at once (see [`SequencerStore::present_instances`]).
    /// Called at start and then periodically: a lock lost with a broken database session is
    /// taken again. [`PresenceHold::HeldElsewhere`] while another live process holds it.
    async fn hold_presence(&self, index: InstanceIndex) -> Result<PresenceHold, StoreError>;

    /// Which of `among` hold their presence lock now: the others' processes are gone (or
    /// have not taken it yet, or lost it with their database session, which is why a caller
    /// also waits for the watermark to stand still). Cheap enough to ask many times a
    /// second.
    async fn present_instances(
        &self,
        among: &[InstanceIndex],
    ) -> Result<Vec<InstanceIndex>, StoreError>;

    /// The minimum watermark of the online instances, read fresh from the database (`None`
    /// when no instance is online). Readers deliver only events at or below it. Any fresh read
    /// is safe because a joining instance starts above every watermark it can see, whereas
    /// combining a cached value for other instances with a fresh own watermark is not.
    async fn safe_point(&self) -> Result<Option<Timestamp>, StoreError>;

    /// The safe point and the latest event's timestamp, in one read. An event above the safe
    /// point waits for an instance whose watermark is below it; that instance can advance its
    /// watermark at once instead of at its next heartbeat, which would otherwise delay every
    /// protocol hop whose event lands on a busy peer.
    async fn ordering_progress(&self) -> Result<OrderingProgress, StoreError>;

    /// Marks instance `index` offline if it is online with a watermark older than
    /// `stale_before`. Returns whether it did. On PostgreSQL it waits only briefly for a batch
    /// of that instance in flight and otherwise returns `false` (the caller polls again), so
    /// that a paused process holding its row lock cannot block the caller.
    async fn mark_offline(
        &self,
        index: InstanceIndex,
        stale_before: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` events of `member` with `after < ts <= up_to`, in timestamp order.
    async fn read_events(
        &self,
        member: MemberSeq,
        after: Option<Timestamp>,
        up_to: Timestamp,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Up to `limit` events of every member with `after < ts <= up_to`, in timestamp order,
    /// each with all its recipients: what a sequencer instance's shared reader tail reads once
    /// per safe-point advance instead of one [`SequencerStore::read_events`] per subscriber.
    /// Recipients of events that are not in the page are not read, so a full page ends at an
    /// event whose recipients are complete.
    async fn events_after(
        &self,
        after: Option<Timestamp>,
        up_to: Timestamp,
        limit: u32,
    ) -> Result<Vec<RoutedEvent>, StoreError>;

    /// Where `at` lies in `member`'s history: the member's latest event at or before `at` (so
    /// `at` is one of its events iff that equals `at`) and its latest event of all. Asked when
    /// a member resumes after `at`, to tell a lost event (a fork) from a known one.
    async fn member_history_at(
        &self,
        member: MemberSeq,
        at: Timestamp,
    ) -> Result<MemberHistoryAt, StoreError>;

    /// Records the member's acknowledgement; never moves backwards. Unknown members are ignored.
    async fn acknowledge(&self, member: MemberSeq, timestamp: Timestamp) -> Result<(), StoreError>;

    async fn acknowledged(&self, member: MemberSeq) -> Result<Option<Timestamp>, StoreError>;

    /// Forgets deduplication entries whose max sequencing time is before `expired_before`.
    async fn prune_message_ids(&self, expired_before: Timestamp) -> Result<u64, StoreError>;

    async fn backend_status(&self) -> Result<BackendStatus, StoreError>;

    /// The current time of a clock shared by every instance of this database and read without
    /// this process's own clock: PostgreSQL's `clock_timestamp()` on the server; on SQLite (a
    /// file on this host) the kernel's clock, as the modification time the kernel gives a
    /// file written next to the database. Instances compare their wall clock with it to bound
    /// their skew; the caller brackets the call with its own clock readings.
    async fn reference_time(&self) -> Result<ReferenceTime, StoreError>;
}
