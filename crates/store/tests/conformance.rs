//! The sequencer store conformance suite: one set of checks of the `SequencerStore` contract,
//! run against SQLite (a temp file) and PostgreSQL (a fresh database on the test binary's shared
//! throwaway server). A behaviour the sequencer relies on belongs here, so that both backends
//! are held to it; backend-specific facts (PostgreSQL's read-only and `synchronous_commit`
//! reporting) are tested at the end.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use harness::{
    assert_unreachable_postgres_is_transient, open_own_postgres, postgres_config,
    reopen_with_setting, t, Backend, OpenHarness, OpenStore,
};
use meridian_core::crypto::{PublicKey, SigningKey};
use meridian_core::{InstanceIndex, MemberId, MessageId, Timestamp};
use meridian_store::{
    Incarnation, InstanceClaim, InstanceStart, InstanceState, MemberSeq, NewEvent, PresenceHold,
    SequencerStore, SqlSequencerStore, StoreError, StoredEvent, WriteResult,
};
use meridian_testkit::PostgresServer;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

#[macro_use]
mod harness;

/// A store under test plus a side door into its database, for the few checks that must plant
/// or inspect rows the trait cannot (a zombie's leftovers, the watermark invariant).
struct Harness {
    store: Arc<dyn SequencerStore>,
    backend: Backend,
    raw: Raw,
}

enum Raw {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl OpenHarness for Harness {
    async fn open(backend: Backend) -> Harness {
        let store = <dyn SequencerStore>::open_on(&backend.config).await;
        let raw = match (backend.sqlite_path(), backend.postgres_url()) {
            (Some(path), _) => Raw::Sqlite(
                SqlitePool::connect_with(SqliteConnectOptions::new().filename(path))
                    .await
                    .expect("raw connection"),
            ),
            (None, Some(url)) => Raw::Postgres(PgPool::connect(url).await.expect("raw connection")),
            (None, None) => unreachable!("a backend is SQLite or PostgreSQL"),
        };
        Harness {
            store,
            backend,
            raw,
        }
    }
}

impl Harness {
    /// A second, independent store on the same database: another process, as far as the
    /// store can tell.
    async fn reopen(&self) -> Arc<dyn SequencerStore> {
        <dyn SequencerStore>::open_on(&self.backend.config).await
    }

    fn is_postgres(&self) -> bool {
        matches!(self.raw, Raw::Postgres(_))
    }

    /// Plants what a zombie instance would leave behind: an event above its watermark, its
    /// recipient entries and its deduplication entry.
    async fn plant_event(
        &self,
        ts: u64,
        instance: u32,
        sender: MemberSeq,
        message_id: &str,
        recipients: &[MemberSeq],
    ) {
        let ts = ts as i64;
        let instance = instance as i32;
        macro_rules! plant {
            ($pool:expr) => {{
                sqlx::query(
                    "INSERT INTO events (ts, instance, sender, message_id, batch) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(ts)
                .bind(instance)
                .bind(sender.0)
                .bind(message_id)
                .bind(vec![0u8])
                .execute($pool)
                .await
                .expect("plant event");
                sqlx::query(
                    "INSERT INTO message_ids (sender, message_id, ts, expires_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(sender.0)
                .bind(message_id)
                .bind(ts)
                .bind(i64::MAX)
                .execute($pool)
                .await
                .expect("plant message id");
                for member in recipients {
                    sqlx::query("INSERT INTO event_recipients (member, ts) VALUES ($1, $2)")
                        .bind(member.0)
                        .bind(ts)
                        .execute($pool)
                        .await
                        .expect("plant recipient");
                }
            }};
        }
        match &self.raw {
            Raw::Sqlite(raw) => plant!(raw),
            Raw::Postgres(raw) => plant!(raw),
        }
    }

    /// Events stored above their writer's watermark; the store's central invariant says none.
    async fn events_above_watermark(&self) -> i64 {
        let sql = "SELECT count(*) FROM events e JOIN sequencer_instances i \
                   ON i.idx = e.instance WHERE e.ts > i.watermark";
        match &self.raw {
            Raw::Sqlite(raw) => sqlx::query_scalar(sql).fetch_one(raw).await,
            Raw::Postgres(raw) => sqlx::query_scalar(sql).fetch_one(raw).await,
        }
        .expect("count")
    }

    async fn event_count(&self) -> i64 {
        self.count("SELECT count(*) FROM events").await
    }

    async fn count(&self, sql: &str) -> i64 {
        match &self.raw {
            Raw::Sqlite(raw) => sqlx::query_scalar(sql).fetch_one(raw).await,
            Raw::Postgres(raw) => sqlx::query_scalar(sql).fetch_one(raw).await,
        }
        .expect("count")
    }
}

/// The contract's calls the way most checks use them: claim an index unconditionally, and
/// write with whatever incarnation currently holds it. The incarnation checks themselves are
/// exercised with the real calls.
#[async_trait::async_trait]
trait StoreExt {
    async fn start_at(
        &self,
        index: InstanceIndex,
        not_before: Timestamp,
    ) -> Result<Timestamp, StoreError>;
    async fn current_incarnation(&self, index: InstanceIndex) -> Result<Incarnation, StoreError>;
    async fn write(
        &self,
        index: InstanceIndex,
        events: &[NewEvent],
        watermark: Timestamp,
    ) -> Result<Vec<WriteResult>, StoreError>;
    async fn advance(&self, index: InstanceIndex, watermark: Timestamp) -> Result<(), StoreError>;
    async fn assert_fresh(&self, returned: Timestamp);
}

#[async_trait::async_trait]
impl<S: SequencerStore + ?Sized> StoreExt for S {
    async fn start_at(
        &self,
        index: InstanceIndex,
        not_before: Timestamp,
    ) -> Result<Timestamp, StoreError> {
        Ok(self
            .start_instance(index, not_before, TAKE_OVER)
            .await?
            .watermark)
    }

    /// `Incarnation(0)` (never issued) for an instance without a row.
    async fn current_incarnation(&self, index: InstanceIndex) -> Result<Incarnation, StoreError> {
        Ok(self
            .instances()
            .await?
            .into_iter()
            .find(|state| state.index == index)
            .map_or(Incarnation(0), |state| state.incarnation))
    }

    async fn write(
        &self,
        index: InstanceIndex,
        events: &[NewEvent],
        watermark: Timestamp,
    ) -> Result<Vec<WriteResult>, StoreError> {
        let incarnation = self.current_incarnation(index).await?;
        let committed = self
            .write_events(index, incarnation, events, watermark)
            .await?;
        self.assert_fresh(committed.safe_point).await;
        Ok(committed.results)
    }

    async fn advance(&self, index: InstanceIndex, watermark: Timestamp) -> Result<(), StoreError> {
        let incarnation = self.current_incarnation(index).await?;
        let committed = self
            .advance_watermark(index, incarnation, watermark)
            .await?;
        self.assert_fresh(committed.safe_point).await;
        Ok(())
    }

    /// Every write of the suite checks that the safe point it returned is the one a fresh
    /// read finds right after it (nothing else writes in between here; the one test with a
    /// concurrent writer of the instances' rows calls `write_events` itself).
    async fn assert_fresh(&self, returned: Timestamp) {
        assert_eq!(
            Some(returned),
            self.safe_point().await.expect("safe point"),
            "the safe point a commit returns is the one read after it"
        );
    }
}

/// Claims an index whatever state its row is in.
const TAKE_OVER: InstanceClaim = InstanceClaim::Start {
    live_after: Timestamp::MAX,
};

const I0: InstanceIndex = InstanceIndex(0);
const I1: InstanceIndex = InstanceIndex(1);
const I2: InstanceIndex = InstanceIndex(2);

fn key(seed: u8) -> PublicKey {
    SigningKey::from_seed([seed; 32]).public_key()
}

fn member_id(name: &str) -> MemberId {
    MemberId::new(name).expect("member id")
}

async fn register(store: &dyn SequencerStore, name: &str) -> MemberSeq {
    let (record, _) = store
        .register_member(&member_id(name), &key(name.len() as u8), t(1))
        .await
        .expect("register");
    record.seq
}

fn event(ts: u64, sender: MemberSeq, message_id: &str, recipients: &[MemberSeq]) -> NewEvent {
    let mut recipients = recipients.to_vec();
    recipients.sort();
    NewEvent {
        timestamp: t(ts),
        sender,
        message_id: MessageId::new(message_id).expect("message id"),
        max_sequencing_time: t(ts + 1_000_000),
        recipients,
        batch: format!("batch at {ts}").into_bytes(),
    }
}

/// (timestamp, previous timestamp) of each event read.
fn chain(events: &[StoredEvent]) -> Vec<(u64, Option<u64>)> {
    events
        .iter()
        .map(|e| {
            (
                e.timestamp.as_micros(),
                e.previous_timestamp.map(Timestamp::as_micros),
            )
        })
        .collect()
}

async fn read(
    store: &dyn SequencerStore,
    member: MemberSeq,
    after: Option<u64>,
    up_to: u64,
    limit: u32,
) -> Vec<(u64, Option<u64>)> {
    chain(
        &store
            .read_events(member, after.map(t), t(up_to), limit)
            .await
            .expect("read"),
    )
}

async fn instance(store: &dyn SequencerStore, index: InstanceIndex) -> Option<InstanceState> {
    store
        .instances()
        .await
        .expect("instances")
        .into_iter()
        .find(|state| state.index == index)
}

fn dup(original: u64) -> WriteResult {
    WriteResult::Duplicate {
        original: t(original),
    }
}

const SEQ: WriteResult = WriteResult::Sequenced;

/// Writes `event` alone on `I0` and returns its outcome.
async fn write_one(
    store: &dyn SequencerStore,
    event: NewEvent,
    watermark: Timestamp,
) -> WriteResult {
    let results = store.write(I0, &[event], watermark).await.expect("write");
    assert_eq!(results.len(), 1, "one outcome per event");
    results[0]
}

// ---------------------------------------------------------------------------------------------
// The contract, once for both backends.

async fn register_is_idempotent_and_key_conflicts_change_nothing(h: Harness) {
    let store = &*h.store;
    let alice = member_id("alice");
    let (first, created) = store
        .register_member(&alice, &key(1), t(100))
        .await
        .expect("register");
    assert!(created);
    assert_eq!(first.id, alice);
    assert_eq!(first.public_key, key(1));
    assert_eq!(first.registered_at, t(100));

    let (again, created) = store
        .register_member(&alice, &key(1), t(200))
        .await
        .expect("register again");
    assert!(!created);
    assert_eq!(again, first, "re-registering keeps the original record");

    let conflict = store.register_member(&alice, &key(2), t(300)).await;
    assert!(
        matches!(&conflict, Err(StoreError::MemberKeyConflict { member }) if *member == alice),
        "{conflict:?}"
    );
    assert_eq!(
        store.member(&alice).await.expect("member"),
        Some(first.clone())
    );

    let (bob, created) = store
        .register_member(&member_id("bob"), &key(3), t(400))
        .await
        .expect("register bob");
    assert!(created);
    assert_ne!(bob.seq, first.seq);
    assert_eq!(
        store.members().await.expect("members"),
        vec![first, bob.clone()],
        "members in registration order"
    );
    assert_eq!(
        store.member(&member_id("bob")).await.expect("member"),
        Some(bob)
    );
    assert_eq!(
        store.member(&member_id("carol")).await.expect("member"),
        None
    );
}

async fn start_instance_joins_above_every_watermark(h: Harness) {
    let store = &*h.store;
    assert_eq!(store.instances().await.expect("instances"), vec![]);
    assert_eq!(store.safe_point().await.expect("safe point"), None);

    assert_eq!(store.start_at(I0, t(1_000)).await.expect("start"), t(1_000));
    store.advance(I0, t(5_000)).await.expect("advance");
    assert_eq!(store.start_at(I1, t(10)).await.expect("start"), t(5_000));
    assert_eq!(store.start_at(I2, t(9_000)).await.expect("start"), t(9_000));
    assert_eq!(
        store.instances().await.expect("instances"),
        vec![
            InstanceState {
                index: I0,
                watermark: t(5_000),
                online: true,
                incarnation: Incarnation(1)
            },
            InstanceState {
                index: I1,
                watermark: t(5_000),
                online: true,
                incarnation: Incarnation(1)
            },
            InstanceState {
                index: I2,
                watermark: t(9_000),
                online: true,
                incarnation: Incarnation(1)
            },
        ]
    );
    assert_eq!(
        store.safe_point().await.expect("safe point"),
        Some(t(5_000))
    );

    // Restarting an instance that is still marked online also moves it above everyone.
    assert_eq!(store.start_at(I0, t(0)).await.expect("restart"), t(9_000));
    assert_eq!(
        store.safe_point().await.expect("safe point"),
        Some(t(5_000))
    );

    // Offline instances do not hold the safe point back.
    assert!(store.mark_offline(I1, t(6_000)).await.expect("mark"));
    assert_eq!(
        store.safe_point().await.expect("safe point"),
        Some(t(9_000))
    );
}

async fn ordering_progress_shows_the_latest_event_waiting_above_the_safe_point(h: Harness) {
    let store = &*h.store;
    let empty = store.ordering_progress().await.expect("progress");
    assert_eq!((empty.safe_point, empty.latest_event), (None, None));
    assert_eq!(empty.waiting_through(), None);

    let a = register(store, "a").await;
    store.start_at(I0, t(1_000)).await.expect("start");
    store.start_at(I1, t(1_000)).await.expect("start");
    // I0 writes above I1's watermark: its event waits for I1.
    store
        .write(I0, &[event(1_500, a, "m1", &[a])], t(1_500))
        .await
        .expect("write");
    let waiting = store.ordering_progress().await.expect("progress");
    assert_eq!(waiting.safe_point, Some(t(1_000)));
    assert_eq!(waiting.latest_event, Some(t(1_500)));
    assert_eq!(waiting.waiting_through(), Some(t(1_500)));

    // I1 catches up: nothing waits any more.
    store.advance(I1, t(1_500)).await.expect("advance");
    let caught_up = store.ordering_progress().await.expect("progress");
    assert_eq!(caught_up.safe_point, Some(t(1_500)));
    assert_eq!(caught_up.waiting_through(), None);
    assert_eq!(
        caught_up.safe_point,
        store.safe_point().await.expect("safe point"),
        "the same safe point as safe_point()"
    );
}

/// What a commit says of the other instances' events, which lets the committing instance's
/// reader skip the store while it is the only writer: nothing while they wrote none, then the
/// newest of them whether their instance is online or not; never the instance's own.
async fn commits_name_the_other_instances_newest_event(h: Harness) {
    let store = &*h.store;
    let a = register(store, "a").await;
    store.start_at(I0, t(1_000)).await.expect("start");
    let incarnation = store.current_incarnation(I0).await.expect("incarnation");
    let alone = store
        .write_events(I0, incarnation, &[event(1_100, a, "m1", &[a])], t(1_100))
        .await
        .expect("write");
    assert_eq!(
        (alone.safe_point, alone.others_latest_event),
        (t(1_100), None)
    );

    store.start_at(I1, t(1_000)).await.expect("start");
    let joined = store
        .advance_watermark(I0, incarnation, t(1_200))
        .await
        .expect("advance");
    assert_eq!(joined.others_latest_event, None, "I1 has written nothing");
    store
        .write(
            I1,
            &[event(1_300, a, "m2", &[a]), event(1_400, a, "m3", &[a])],
            t(1_400),
        )
        .await
        .expect("write");
    let after_peer = store
        .write_events(I0, incarnation, &[event(1_500, a, "m4", &[a])], t(1_500))
        .await
        .expect("write");
    assert_eq!(after_peer.others_latest_event, Some(t(1_400)));
    let peer_view = store
        .advance_watermark(
            I1,
            store.current_incarnation(I1).await.expect("incarnation"),
            t(1_600),
        )
        .await
        .expect("advance");
    assert_eq!(
        peer_view.others_latest_event,
        Some(t(1_500)),
        "each instance sees the other's, not its own"
    );

    // Offline, its events still count: readers deliver them once the safe point passes.
    assert!(store.mark_offline(I1, t(1_700)).await.expect("mark"));
    let peer_offline = store
        .advance_watermark(I0, incarnation, t(1_800))
        .await
        .expect("advance");
    assert_eq!(
        (peer_offline.safe_point, peer_offline.others_latest_event),
        (t(1_800), Some(t(1_400)))
    );
}

async fn events_round_trip_with_recipients_and_previous_timestamps(h: Harness) {
    let store = &*h.store;
    let a = register(store, "a").await;
    let b = register(store, "bb").await;
    let c = register(store, "ccc").await;
    let idle = register(store, "dddd").await;
    assert_eq!(store.start_at(I0, t(0)).await.expect("start"), t(0));

    let events = vec![
        event(10, a, "m10", &[a, b]),
        event(20, b, "m20", &[b]),
        event(30, a, "m30", &[a, c]),
        event(40, c, "m40", &[b, c]),
    ];
    let results = store.write(I0, &events, t(50)).await.expect("write");
    assert_eq!(results, vec![SEQ; 4]);
    assert_eq!(instance(store, I0).await.expect("row").watermark, t(50));

    let read_a = store.read_events(a, None, t(100), 100).await.expect("read");
    assert_eq!(chain(&read_a), vec![(10, None), (30, Some(10))]);
    assert_eq!(read_a[0].sender, a);
    assert_eq!(read_a[0].message_id.as_str(), "m10");
    assert_eq!(read_a[0].batch, b"batch at 10");
    assert_eq!(read_a[1].batch, b"batch at 30");

    let all_b = vec![(10, None), (20, Some(10)), (40, Some(20))];
    assert_eq!(read(store, b, None, 100, 100).await, all_b);
    assert_eq!(
        read(store, c, None, 100, 100).await,
        vec![(30, None), (40, Some(30))]
    );
    assert_eq!(read(store, idle, None, 100, 100).await, vec![]);

    // Starting mid-stream still links the first event to the member's previous one.
    assert_eq!(read(store, b, Some(10), 100, 100).await, all_b[1..]);
    assert_eq!(read(store, b, Some(15), 100, 100).await, all_b[1..]);
    assert_eq!(
        read(store, c, Some(30), 100, 100).await,
        vec![(40, Some(30))]
    );

    // Paging one event at a time yields the same chain.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = read(store, b, after, 100, 1).await;
        assert!(page.len() <= 1);
        let Some(&last) = page.last() else { break };
        paged.extend(page);
        after = Some(last.0);
    }
    assert_eq!(paged, all_b);
    assert_eq!(read(store, b, None, 100, 2).await, all_b[..2]);
    assert_eq!(read(store, b, None, 100, 0).await, vec![]);

    // up_to is inclusive and respected.
    assert_eq!(read(store, b, None, 20, 100).await, all_b[..2]);
    assert_eq!(read(store, b, None, 39, 100).await, all_b[..2]);
    assert_eq!(read(store, b, None, 40, 100).await, all_b);
    assert_eq!(read(store, b, Some(20), 39, 100).await, vec![]);
    assert_eq!(read(store, b, None, 9, 100).await, vec![]);

    // A second instance's events interleave into the same streams.
    assert_eq!(store.start_at(I1, t(0)).await.expect("start"), t(50));
    store
        .write(I1, &[event(61, b, "m61", &[a])], t(61))
        .await
        .expect("write on I1");
    store
        .write(I0, &[event(70, c, "m70", &[a])], t(70))
        .await
        .expect("write on I0");
    assert_eq!(
        read(store, a, Some(10), 100, 100).await,
        vec![(30, Some(10)), (61, Some(30)), (70, Some(61))]
    );
}

async fn duplicates_return_the_original_and_write_nothing(h: Harness) {
    let store = &*h.store;
    let a = register(store, "a").await;
    let b = register(store, "bb").await;
    store.start_at(I0, t(0)).await.expect("start");

    let first = vec![event(10, a, "m1", &[a]), event(20, a, "m2", &[a])];
    assert_eq!(
        store.write(I0, &first, t(20)).await.expect("write"),
        vec![SEQ, SEQ]
    );

    let second = vec![
        event(30, a, "m1", &[a]), // already in the table at 10
        event(40, b, "m1", &[a]), // same message id, other sender: new
        event(50, a, "m3", &[a]), // new
        event(60, a, "m3", &[a]), // repeat of 50 within the call
        event(70, a, "m1", &[a]), // repeat within the call of a table duplicate
    ];
    assert_eq!(
        store.write(I0, &second, t(70)).await.expect("write"),
        vec![dup(10), SEQ, SEQ, dup(50), dup(10)]
    );
    assert_eq!(
        read(store, a, None, 100, 100).await,
        vec![(10, None), (20, Some(10)), (40, Some(20)), (50, Some(40))],
        "duplicates are not delivered"
    );
    // Even a call of nothing but duplicates advances the watermark.
    assert_eq!(
        write_one(store, event(80, a, "m2", &[b]), t(80)).await,
        dup(20)
    );
    assert_eq!(read(store, b, None, 100, 100).await, vec![]);
    assert_eq!(instance(store, I0).await.expect("row").watermark, t(80));
    assert_eq!(h.event_count().await, 4);
}

/// A write whose caller goes away (a timeout, a shutdown) at any point of it commits all of it
/// or nothing: its event with its message id and recipient, or none of them, and the
/// watermark never below what was written. And the store's next write is not stuck behind it.
async fn a_write_dropped_midway_commits_all_or_nothing(h: Harness) {
    let store = &*h.store;
    let a = register(store, "a").await;
    store.start_at(I0, t(0)).await.expect("start");
    let incarnation = store.current_incarnation(I0).await.expect("incarnation");
    let mut finished = 0;
    for attempt in 0..300_u64 {
        let ts = 10 * (attempt + 1);
        let events = [event(ts, a, &format!("m{attempt}"), &[a])];
        let write = store.write_events(I0, incarnation, &events, t(ts));
        // From no poll at all to well past a PostgreSQL round trip's worth of them.
        let polls = u32::try_from(attempt % 100 * 20).expect("below 2,000");
        if let Some(outcome) = meridian_testkit::cancel::poll_then_drop(write, polls) {
            assert_eq!(outcome.expect("write").results, vec![SEQ]);
            finished += 1;
        }
        // What a dropped write left behind may still be rolling back: wait for the store's
        // next write to go through, then look.
        let probe = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            store.advance_watermark(I0, incarnation, t(ts)),
        )
        .await;
        probe
            .unwrap_or_else(|_| panic!("attempt {attempt} left the store stuck"))
            .expect("advance");
        let events = h.event_count().await;
        assert_eq!(
            events,
            h.count("SELECT count(*) FROM message_ids").await,
            "attempt {attempt}: events and message ids differ"
        );
        assert_eq!(
            events,
            h.count("SELECT count(*) FROM event_recipients").await,
            "attempt {attempt}: events and recipients differ"
        );
        assert_eq!(h.events_above_watermark().await, 0, "attempt {attempt}");
    }
    assert!(finished > 0, "no attempt ran to its end");
    assert!(
        h.event_count().await < 300,
        "some attempt was dropped before its commit"
    );
}

async fn offline_instances_are_fenced(h: Harness) {
    let store = &*h.store;
    let a = register(store, "a").await;
    store.start_at(I0, t(0)).await.expect("start");
    store
        .write(I0, &[event(10, a, "m10", &[a])], t(10))
        .await
        .expect("write");

    assert!(
        !store.mark_offline(I0, t(10)).await.expect("mark"),
        "not stale yet"
    );
    assert!(store.mark_offline(I0, t(11)).await.expect("mark"));
    assert!(
        !store.mark_offline(I0, t(11)).await.expect("mark"),
        "already offline"
    );
    assert!(
        !store.mark_offline(I1, t(11)).await.expect("mark"),
        "unknown instance"
    );
    assert_eq!(store.safe_point().await.expect("safe point"), None);

    let fenced = store.write(I0, &[event(20, a, "m20", &[a])], t(20)).await;
    assert!(matches!(fenced, Err(StoreError::Fenced(I0))), "{fenced:?}");
    let fenced = store.write(I0, &[], t(20)).await;
    assert!(matches!(fenced, Err(StoreError::Fenced(I0))), "{fenced:?}");
    let fenced = store.advance(I0, t(25)).await;
    assert!(matches!(fenced, Err(StoreError::Fenced(I0))), "{fenced:?}");
    let unknown = store.advance(I1, t(25)).await;
    assert!(
        matches!(unknown, Err(StoreError::Fenced(I1))),
        "{unknown:?}"
    );
    let unknown = store.write(I1, &[event(21, a, "m21", &[a])], t(21)).await;
    assert!(
        matches!(unknown, Err(StoreError::Fenced(I1))),
        "{unknown:?}"
    );

    assert_eq!(
        instance(store, I0).await,
        Some(InstanceState {
            index: I0,
            watermark: t(10),
            online: false,
            incarnation: Incarnation(1)
        }),
        "a fenced write leaves the watermark alone"
    );
    assert_eq!(read(store, a, None, 100, 100).await, vec![(10, None)]);
    assert_eq!(h.event_count().await, 1);

    // Back online above everyone; the fenced submission's message id was never recorded.
    assert_eq!(store.start_at(I0, t(0)).await.expect("restart"), t(10));
    assert_eq!(
        write_one(store, event(30, a, "m20", &[a]), t(30)).await,
        SEQ
    );
    assert_eq!(
        read(store, a, None, 100, 100).await,
        vec![(10, None), (30, Some(10))]
    );
}

async fn watermarks_never_move_backwards(h: Harness) {
    let store = &*h.store;
    let a = register(store, "a").await;
    assert_eq!(store.start_at(I0, t(100)).await.expect("start"), t(100));
    store.advance(I0, t(200)).await.expect("advance");
    store
        .advance(I0, t(150))
        .await
        .expect("advance backwards is a no-op");
    assert_eq!(instance(store, I0).await.expect("row").watermark, t(200));
    store.write(I0, &[], t(120)).await.expect("empty write");
    assert_eq!(instance(store, I0).await.expect("row").watermark, t(200));
    store.write(I0, &[], t(220)).await.expect("empty write");
    assert_eq!(instance(store, I0).await.expect("row").watermark, t(220));
    // A watermark below an event's timestamp is raised to it: no event above its watermark.
    store
        .write(I0, &[event(300, a, "m300", &[a])], t(250))
        .await
        .expect("write");
    assert_eq!(instance(store, I0).await.expect("row").watermark, t(300));
    assert_eq!(h.events_above_watermark().await, 0);
}

async fn restart_deletes_what_a_zombie_wrote_above_its_watermark(h: Harness) {
    let store = &*h.store;
    let a = register(store, "a").await;
    let b = register(store, "bb").await;
    store.start_at(I0, t(0)).await.expect("start");
    store
        .write(I0, &[event(10, a, "m10", &[a, b])], t(10))
        .await
        .expect("write");
    assert!(store.mark_offline(I0, t(11)).await.expect("mark"));
    assert_eq!(store.start_at(I1, t(0)).await.expect("start"), t(10));
    store
        .write(I1, &[event(17, b, "m17", &[a])], t(17))
        .await
        .expect("write on I1");

    // The trait cannot produce this (that is the point of the invariant), so plant it.
    h.plant_event(15, 0, a, "zombie", &[a, b]).await;
    assert_eq!(h.events_above_watermark().await, 1);

    assert_eq!(store.start_at(I0, t(0)).await.expect("restart"), t(17));
    assert_eq!(h.events_above_watermark().await, 0);
    assert_eq!(
        read(store, a, None, 100, 100).await,
        vec![(10, None), (17, Some(10))]
    );
    assert_eq!(read(store, b, None, 100, 100).await, vec![(10, None)]);
    // The zombie's message id is forgotten with its event, so a retry gets sequenced.
    assert_eq!(
        write_one(store, event(20, a, "zombie", &[a]), t(20)).await,
        SEQ
    );
    // Another instance's events above the restarted one's old watermark are untouched.
    assert_eq!(
        read(store, a, None, 100, 100).await,
        vec![(10, None), (17, Some(10)), (20, Some(17))]
    );
}

/// Every claim bumps the incarnation; only the current one writes. A second process cannot
/// claim an index whose holder is live, takes over a stale one, and the old holder then writes
/// nothing (superseded); a holder fenced by its peers rejoins with a new incarnation.
async fn incarnations_fence_earlier_processes(h: Harness) {
    let first = h.store.clone();
    let second = h.reopen().await;
    let a = register(&*first, "a").await;
    let one = first
        .start_instance(I0, t(100), TAKE_OVER)
        .await
        .expect("start");
    assert_eq!(
        one,
        InstanceStart {
            incarnation: Incarnation(1),
            watermark: t(100)
        }
    );
    first
        .write_events(I0, one.incarnation, &[event(110, a, "m110", &[a])], t(110))
        .await
        .expect("write");

    // A live holder (online, watermark at or after live_after) keeps the index.
    let refused = second
        .start_instance(I0, t(0), InstanceClaim::Start { live_after: t(110) })
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::InstanceInUse {
                index: I0,
                watermark_us: 110
            })
        ),
        "{refused:?}"
    );
    assert_eq!(
        instance(&*first, I0).await.expect("row").incarnation,
        Incarnation(1),
        "a refused claim changes nothing"
    );

    // Stale: taken over, above everything the old holder wrote.
    let two = second
        .start_instance(I0, t(0), InstanceClaim::Start { live_after: t(111) })
        .await
        .expect("take over");
    assert_eq!(
        two,
        InstanceStart {
            incarnation: Incarnation(2),
            watermark: t(110)
        }
    );
    let superseded = first
        .write_events(I0, one.incarnation, &[event(120, a, "m120", &[a])], t(120))
        .await;
    assert!(
        matches!(
            superseded,
            Err(StoreError::Superseded {
                index: I0,
                incarnation: Incarnation(1),
                current: Incarnation(2)
            })
        ),
        "{superseded:?}"
    );
    let superseded = first.advance_watermark(I0, one.incarnation, t(130)).await;
    assert!(
        matches!(superseded, Err(StoreError::Superseded { .. })),
        "{superseded:?}"
    );
    let superseded = first
        .start_instance(I0, t(0), InstanceClaim::Rejoin(one.incarnation))
        .await;
    assert!(
        matches!(superseded, Err(StoreError::Superseded { .. })),
        "an old incarnation cannot rejoin: {superseded:?}"
    );
    assert_eq!(
        h.event_count().await,
        1,
        "the old incarnation wrote nothing"
    );
    assert_eq!(instance(&*first, I0).await.expect("row").watermark, t(110));
    second
        .write_events(I0, two.incarnation, &[event(140, a, "m120", &[a])], t(140))
        .await
        .expect("the new incarnation writes");

    // Fenced by the peers: the same incarnation rejoins with a new one.
    assert!(second.mark_offline(I0, t(141)).await.expect("mark"));
    let fenced = second
        .write_events(I0, two.incarnation, &[event(150, a, "m150", &[a])], t(150))
        .await;
    assert!(matches!(fenced, Err(StoreError::Fenced(I0))), "{fenced:?}");
    let three = second
        .start_instance(I0, t(0), InstanceClaim::Rejoin(two.incarnation))
        .await
        .expect("rejoin");
    assert_eq!(three.incarnation, Incarnation(3));
    assert_eq!(three.watermark, t(140));
    let superseded = second
        .write_events(I0, two.incarnation, &[event(150, a, "m150", &[a])], t(150))
        .await;
    assert!(
        matches!(superseded, Err(StoreError::Superseded { .. })),
        "{superseded:?}"
    );
    second
        .write_events(
            I0,
            three.incarnation,
            &[event(160, a, "m160", &[a])],
            t(160),
        )
        .await
        .expect("write");

    // An offline row is free to claim whatever its watermark.
    assert!(second.mark_offline(I0, t(161)).await.expect("mark"));
    let four = first
        .start_instance(I0, t(0), InstanceClaim::Start { live_after: t(0) })
        .await
        .expect("claim an offline row");
    assert_eq!(four.incarnation, Incarnation(4));
    assert_eq!(
        read(&*first, a, None, 1_000, 100).await,
        vec![(110, None), (140, Some(110)), (160, Some(140))]
    );
    assert_eq!(h.events_above_watermark().await, 0);
}

async fn acknowledgements_never_move_backwards(h: Harness) {
    let store = &*h.store;
    let a = register(store, "a").await;
    assert_eq!(store.acknowledged(a).await.expect("ack"), None);
    store.acknowledge(a, t(50)).await.expect("ack");
    assert_eq!(store.acknowledged(a).await.expect("ack"), Some(t(50)));
    store.acknowledge(a, t(30)).await.expect("ack");
    assert_eq!(store.acknowledged(a).await.expect("ack"), Some(t(50)));
    store.acknowledge(a, t(70)).await.expect("ack");
    assert_eq!(store.acknowledged(a).await.expect("ack"), Some(t(70)));
    let unknown = MemberSeq(a.0 + 1_000);
    store
        .acknowledge(unknown, t(1))
        .await
        .expect("ack of an unknown member is a no-op");
    assert_eq!(store.acknowledged(unknown).await.expect("ack"), None);
}

async fn pruned_message_ids_can_be_sequenced_again(h: Harness) {
    let store = &*h.store;
    let a = register(store, "a").await;
    store.start_at(I0, t(0)).await.expect("start");
    let mut events = vec![event(10, a, "m1", &[a]), event(20, a, "m2", &[a])];
    events[0].max_sequencing_time = t(100);
    events[1].max_sequencing_time = t(200);
    store.write(I0, &events, t(20)).await.expect("write");

    assert_eq!(
        store.prune_message_ids(t(100)).await.expect("prune"),
        0,
        "strictly before"
    );
    assert_eq!(store.prune_message_ids(t(200)).await.expect("prune"), 1);
    assert_eq!(store.prune_message_ids(t(200)).await.expect("prune"), 0);
    assert_eq!(
        store
            .write(
                I0,
                &[event(30, a, "m1", &[a]), event(40, a, "m2", &[a])],
                t(40)
            )
            .await
            .expect("write"),
        vec![SEQ, dup(20)]
    );
}

async fn backend_status_reports_a_writable_durable_database(h: Harness) {
    let status = h.store.backend_status().await.expect("status");
    assert!(!status.read_only);
    if h.is_postgres() {
        assert_eq!(status.backend, "postgres");
        assert_eq!(status.synchronous_commit.as_deref(), Some("on"));
    } else {
        assert_eq!(status.backend, "sqlite");
        assert_eq!(status.synchronous_commit, None);
    }
}

/// The reference clock is the host's (or server's) true time: on this one machine it agrees
/// with this process's unshifted clock to well within the sequencer's skew bound.
async fn the_reference_time_agrees_with_this_hosts_clock(h: Harness) {
    let before = Timestamp::now();
    let reference = h.store.reference_time().await.expect("reference time");
    let after = Timestamp::now();
    let slack = std::time::Duration::from_millis(50);
    assert!(
        reference.time >= before.saturating_sub(slack)
            && reference.time <= after.saturating_add(slack),
        "{} read {} outside [{before}, {after}]",
        reference.source,
        reference.time
    );
    let expected = if h.is_postgres() {
        "PostgreSQL"
    } else {
        "kernel"
    };
    assert!(reference.source.contains(expected), "{}", reference.source);
}

async fn reopening_keeps_everything(h: Harness) {
    let a = register(&*h.store, "a").await;
    h.store.start_at(I0, t(0)).await.expect("start");
    h.store
        .write(I0, &[event(10, a, "m10", &[a])], t(10))
        .await
        .expect("write");
    let reopened = h.reopen().await;
    assert_eq!(reopened.members().await.expect("members").len(), 1);
    assert_eq!(read(&*reopened, a, None, 100, 100).await, vec![(10, None)]);
    assert_eq!(
        reopened.instances().await.expect("instances"),
        vec![InstanceState {
            index: I0,
            watermark: t(10),
            online: true,
            incarnation: Incarnation(1)
        }]
    );
}

/// Another process marks a busy writer offline at an arbitrary moment: every batch is then
/// either entirely committed (and below the watermark) or fenced with nothing written.
async fn mark_offline_races_cleanly_with_writes(h: Harness) {
    let writer = h.store.clone();
    let monitor = h.reopen().await;
    let members: Vec<MemberSeq> = {
        let mut members = Vec::new();
        for name in ["a", "bb", "ccc"] {
            members.push(register(&*writer, name).await);
        }
        members
    };
    writer.start_at(I0, t(0)).await.expect("start");

    let writing = tokio::spawn({
        let members = members.clone();
        async move {
            let mut committed = Vec::new();
            // Until fenced; the bound only keeps a broken store from looping forever.
            for round in 0..100_000u64 {
                let batch: Vec<NewEvent> = (0..10)
                    .map(|i| {
                        let ts = 1_000 + round * 10 + i;
                        let m = members[(ts % 3) as usize];
                        event(ts, m, &format!("r{round}-{i}"), &[m])
                    })
                    .collect();
                let watermark = batch.last().map(|e| e.timestamp).expect("non-empty");
                // Not `write`: its check that the returned safe point is the one a fresh read
                // finds needs nobody writing in between, and the monitor marks the instance
                // offline right between a commit and that read.
                let incarnation = writer.current_incarnation(I0).await.expect("incarnation");
                let written = writer
                    .write_events(I0, incarnation, &batch, watermark)
                    .await;
                match written.map(|committed| committed.results) {
                    Ok(results) => {
                        assert_eq!(results, vec![SEQ; 10]);
                        committed.extend(batch.iter().map(|e| e.timestamp));
                    }
                    Err(StoreError::Fenced(I0)) => return (committed, round),
                    Err(error) => panic!("unexpected error: {error}"),
                }
            }
            (committed, 100_000)
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // A batch in flight holds the row; PostgreSQL's mark_offline waits for it only briefly
    // and then reports "not marked" for the caller to poll again.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !monitor
        .mark_offline(I0, Timestamp::MAX)
        .await
        .expect("mark")
    {
        assert!(Instant::now() < deadline, "never marked offline");
    }
    let (committed, fenced_at) = writing.await.expect("writer task");
    assert!(fenced_at < 100_000, "the writer was never fenced");

    let mut stored = HashSet::new();
    for &m in &members {
        for e in monitor
            .read_events(m, None, Timestamp::MAX, 10_000)
            .await
            .expect("read")
        {
            stored.insert(e.timestamp);
        }
    }
    assert_eq!(stored, committed.iter().copied().collect::<HashSet<_>>());
    assert_eq!(h.events_above_watermark().await, 0);
    let state = instance(&*monitor, I0).await.expect("row");
    assert!(!state.online);
    assert_eq!(
        state.watermark,
        committed.iter().copied().max().unwrap_or(t(0))
    );
}

/// A live process's presence lock shows it present to every other store on the database; the
/// lock is released when the process (here: its store) goes, with nothing else to do.
async fn presence_shows_a_live_holder_until_it_is_gone(h: Harness) {
    let peer = h.reopen().await;
    let both = [I0, I1];
    assert_eq!(peer.present_instances(&both).await.expect("probe"), vec![]);
    assert_eq!(
        h.store.hold_presence(I0).await.expect("hold"),
        PresenceHold::Held
    );
    // Holding again only checks the lock; probing never takes it from its holder.
    for _ in 0..3 {
        assert_eq!(
            h.store.hold_presence(I0).await.expect("hold"),
            PresenceHold::Held
        );
        assert_eq!(
            peer.present_instances(&both).await.expect("probe"),
            vec![I0]
        );
    }
    assert_eq!(
        peer.hold_presence(I0).await.expect("hold"),
        PresenceHold::HeldElsewhere,
        "a second process cannot take a live instance's presence"
    );
    let Harness { store, .. } = h;
    drop(store);
    // The kernel releases a file lock as the file closes; the server a session's locks as it
    // notices the connection closed, a moment later.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while peer.present_instances(&both).await.expect("probe") != vec![] {
        assert!(
            Instant::now() < deadline,
            "the closed store's lock was never released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        peer.hold_presence(I0).await.expect("hold"),
        PresenceHold::Held
    );
}

/// (timestamp, recipients) of each event of `events_after`.
async fn routed(
    store: &dyn SequencerStore,
    after: Option<u64>,
    up_to: u64,
    limit: u32,
) -> Vec<(u64, Vec<MemberSeq>)> {
    store
        .events_after(after.map(t), t(up_to), limit)
        .await
        .expect("events after")
        .into_iter()
        .map(|e| (e.timestamp.as_micros(), e.recipients))
        .collect()
}

async fn events_after_reads_every_members_events_once_with_their_recipients(h: Harness) {
    let store = &*h.store;
    let a = register(store, "a").await;
    let b = register(store, "bb").await;
    let c = register(store, "ccc").await;
    assert_eq!(routed(store, None, 100, 100).await, vec![]);
    store.start_at(I0, t(0)).await.expect("start");
    store.start_at(I1, t(0)).await.expect("start");
    store
        .write(
            I0,
            &[
                event(10, a, "m10", &[b, a]),
                event(20, b, "m20", &[c]),
                event(40, c, "m40", &[a, b, c]),
            ],
            t(40),
        )
        .await
        .expect("write on I0");
    store
        .write(I1, &[event(31, a, "m31", &[b])], t(41))
        .await
        .expect("write on I1");

    let all = vec![
        (10, vec![a, b]),
        (20, vec![c]),
        (31, vec![b]),
        (40, vec![a, b, c]),
    ];
    assert_eq!(routed(store, None, 100, 100).await, all);
    let read = store
        .events_after(None, t(100), 100)
        .await
        .expect("events after");
    assert_eq!(read[2].sender, a);
    assert_eq!(read[2].message_id.as_str(), "m31");
    assert_eq!(read[2].batch, b"batch at 31");

    // Bounds: after exclusive, up_to inclusive; a page ends on a complete event.
    assert_eq!(routed(store, Some(10), 100, 100).await, all[1..]);
    assert_eq!(routed(store, Some(15), 31, 100).await, all[1..3]);
    assert_eq!(routed(store, None, 9, 100).await, vec![]);
    assert_eq!(routed(store, None, 100, 0).await, vec![]);
    assert_eq!(routed(store, Some(10), 100, 2).await, all[1..3]);

    // Paging through yields every event exactly once, in order: the same as each member's
    // own stream.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = routed(store, after, 100, 1).await;
        let Some(last) = page.last() else { break };
        after = Some(last.0);
        paged.extend(page);
    }
    assert_eq!(paged, all);
    for member in [a, b, c] {
        let own: Vec<u64> = read_member(store, member).await;
        let from_all: Vec<u64> = all
            .iter()
            .filter(|(_, recipients)| recipients.contains(&member))
            .map(|(ts, _)| *ts)
            .collect();
        assert_eq!(own, from_all, "member {member:?}");
    }
}

async fn read_member(store: &dyn SequencerStore, member: MemberSeq) -> Vec<u64> {
    read(store, member, None, 100, 100)
        .await
        .into_iter()
        .map(|(ts, _)| ts)
        .collect()
}

conformance!(
    "conformance":
    events_after_reads_every_members_events_once_with_their_recipients,
    register_is_idempotent_and_key_conflicts_change_nothing,
    start_instance_joins_above_every_watermark,
    ordering_progress_shows_the_latest_event_waiting_above_the_safe_point,
    commits_name_the_other_instances_newest_event,
    events_round_trip_with_recipients_and_previous_timestamps,
    duplicates_return_the_original_and_write_nothing,
    a_write_dropped_midway_commits_all_or_nothing,
    offline_instances_are_fenced,
    watermarks_never_move_backwards,
    restart_deletes_what_a_zombie_wrote_above_its_watermark,
    incarnations_fence_earlier_processes,
    acknowledgements_never_move_backwards,
    pruned_message_ids_can_be_sequenced_again,
    backend_status_reports_a_writable_durable_database,
    the_reference_time_agrees_with_this_hosts_clock,
    reopening_keeps_everything,
    mark_offline_races_cleanly_with_writes,
    presence_shows_a_live_holder_until_it_is_gone,
);

// ---------------------------------------------------------------------------------------------
// PostgreSQL only.

#[tokio::test]
async fn postgres_read_only_database_is_reported_and_refuses_writes() {
    let (store, url) = open_own_postgres::<dyn SequencerStore>("read_only").await;
    let a = register(&*store, "a").await;
    store.start_at(I0, t(0)).await.expect("start");
    let read_only =
        reopen_with_setting::<dyn SequencerStore>(&url, "default_transaction_read_only = on").await;
    let status = read_only.backend_status().await.expect("status");
    assert!(status.read_only, "{status:?}");
    assert_eq!(status.synchronous_commit.as_deref(), Some("on"));
    // The store found no writer among the URL's (one) host; the refusal names it and why.
    assert!(
        status
            .read_only_reason
            .as_deref()
            .is_some_and(|reason| reason.contains("read-only")),
        "{status:?}"
    );
    let write = read_only
        .write(I0, &[event(10, a, "m10", &[a])], t(10))
        .await;
    assert!(
        matches!(&write, Err(error @ StoreError::NoWriter(_)) if error.to_string().contains("read-only")),
        "{write:?}"
    );
    let register = read_only
        .register_member(&member_id("zed"), &key(9), t(1))
        .await;
    assert!(
        matches!(register, Err(StoreError::NoWriter(_))),
        "{register:?}"
    );
    // Reads still work on a read-only database.
    assert_eq!(read_only.members().await.expect("members").len(), 1);
}

/// A writer paused inside its transaction holds its watermark row lock; a peer's
/// `mark_offline` must give up quickly instead of hanging with it (it polls again), and succeed
/// once the lock is gone.
#[tokio::test]
async fn postgres_mark_offline_does_not_wait_for_a_paused_writer() {
    let h = Harness::open(Backend::postgres("conformance")).await;
    h.store.start_at(I0, t(0)).await.expect("start");
    let Raw::Postgres(raw) = &h.raw else {
        unreachable!("a postgres harness")
    };
    // Never cancelled here, so sqlx's own begin is safe (see clippy.toml).
    #[allow(clippy::disallowed_methods)]
    let mut paused = raw.begin().await.expect("begin");
    sqlx::query("UPDATE sequencer_instances SET watermark = watermark WHERE idx = 0")
        .execute(&mut *paused)
        .await
        .expect("lock the row");
    let started = Instant::now();
    let marked = h
        .store
        .mark_offline(I0, Timestamp::MAX)
        .await
        .expect("mark_offline answers");
    assert!(!marked, "the row is locked; nothing marked");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "mark_offline waited {:?}",
        started.elapsed()
    );
    paused.rollback().await.expect("rollback");
    assert!(h
        .store
        .mark_offline(I0, Timestamp::MAX)
        .await
        .expect("mark"));
}

#[tokio::test]
async fn postgres_reports_asynchronous_commit() {
    let (_, url) = open_own_postgres::<dyn SequencerStore>("async_commit").await;
    let store = reopen_with_setting::<dyn SequencerStore>(&url, "synchronous_commit = off").await;
    let status = store.backend_status().await.expect("status");
    assert_eq!(status.synchronous_commit.as_deref(), Some("off"));
    assert!(!status.read_only);
}

#[tokio::test]
async fn postgres_unreachable_is_transient() {
    assert_unreachable_postgres_is_transient::<dyn SequencerStore>().await;
}

/// A database restart (as in a failover) breaks every pooled connection; the store must not
/// need reopening. A call caught mid-restart may fail, but only with a transient error.
#[tokio::test]
async fn postgres_store_survives_a_server_restart() {
    let server = PostgresServer::start().expect("own server, restarted below");
    let url = server.create_database("restart").expect("create database");
    let store = SqlSequencerStore::open_config(&postgres_config(&url))
        .await
        .expect("connect");
    let a = register(&store, "a").await;
    store.start_at(I0, t(0)).await.expect("start");
    store
        .write(I0, &[event(10, a, "m10", &[a])], t(10))
        .await
        .expect("write");

    server.restart().expect("restart");

    let mut written = false;
    for attempt in 0..20u64 {
        match store
            .write(
                I0,
                &[event(20 + attempt, a, &format!("m{attempt}"), &[a])],
                t(40),
            )
            .await
        {
            Ok(_) => {
                written = true;
                break;
            }
            Err(error) if error.is_transient() => {
                eprintln!("attempt {attempt}: {error:?}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(error) => panic!("non-transient error after a restart: {error:?}"),
        }
    }
    assert!(written, "the store never recovered");
    assert_eq!(read(&store, a, None, 100, 100).await.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Throughput, measured by hand: `cargo test --release -p meridian-store -- --ignored --nocapture`.

async fn measure_throughput(name: &str, store: &dyn SequencerStore) {
    const EVENTS: u64 = 20_000;
    const BATCH: u64 = 200;
    let mut members = Vec::new();
    for i in 0..20 {
        members.push(register(store, &format!("member-{i}")).await);
    }
    store.start_at(I0, t(0)).await.expect("start");
    let payload = vec![7u8; 256];
    let started = Instant::now();
    for batch_no in 0..EVENTS / BATCH {
        let batch: Vec<NewEvent> = (0..BATCH)
            .map(|i| {
                let ts = 1 + batch_no * BATCH + i;
                let sender = members[(ts % 20) as usize];
                let mut recipients = vec![sender];
                // Every other event also goes to a second member.
                if ts & 1 == 0 {
                    recipients.push(members[((ts + 7) % 20) as usize]);
                }
                let mut e = event(ts, sender, &format!("msg-{ts}"), &recipients);
                e.batch = payload.clone();
                e
            })
            .collect();
        let watermark = batch.last().map(|e| e.timestamp).expect("non-empty");
        store.write(I0, &batch, watermark).await.expect("write");
    }
    let elapsed = started.elapsed();
    println!(
        "{name}: {EVENTS} events in batches of {BATCH}: {:.0} events/s ({elapsed:?})",
        EVENTS as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test]
#[ignore = "measurement, run by hand in release mode"]
async fn throughput_sqlite() {
    let h = Harness::open(Backend::sqlite("sequencer")).await;
    measure_throughput("sqlite", &*h.store).await;
}

#[tokio::test]
#[ignore = "measurement, run by hand in release mode"]
async fn throughput_postgres() {
    let h = Harness::open(Backend::postgres("conformance")).await;
    measure_throughput("postgres", &*h.store).await;
}
