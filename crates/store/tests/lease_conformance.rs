//! The replica lease conformance suite: the `LeaseStore` contract and the fencing of the
//! replicated stores, run against SQLite (a temp file) and PostgreSQL (a fresh database on the
//! test binary's shared throwaway server). Several store instances on one database stand for
//! the replicas of one node (separate processes, as far as the stores can tell: each has its own
//! connections and, on SQLite, its own open file description for the flock).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{Backend, OpenHarness, OpenStore};
use meridian_core::ledger::{Action, Contract, Transaction};
use meridian_core::topology::SignedTopologyTransaction;
use meridian_core::{ContractId, LedgerOffset, PartyId, TemplateId, Timestamp, TransactionId};
use meridian_store::mediator::{MediatorChange, MediatorStore};
use meridian_store::{
    open_lease_store, Epoch, LeaseStore, ParticipantBatch, ParticipantStore, StorageConfig,
    StoreError, StoredContract, TopologyStore, TopologyStoreError, TransactionRecord,
};
use meridian_testkit::cancel::poll_then_drop;
use serde_json::json;

#[macro_use]
mod harness;

/// Its advisory lock key, `hashtext('meridian-lease:participant2')`, is negative, which is the
/// harder case for finding the holder in `pg_locks` (the key splits into two unsigned halves).
const NODE: &str = "participant2";
/// Long enough that no test passes it by waiting: a takeover before it is the fast path.
const LONG: Duration = Duration::from_secs(60);

struct Harness {
    backend: Backend,
}

impl OpenHarness for Harness {
    async fn open(backend: Backend) -> Harness {
        Harness { backend }
    }
}

impl Harness {
    /// Another replica's lease store.
    async fn replica(&self) -> Arc<dyn LeaseStore> {
        open_lease_store(&self.backend.config, NODE)
            .await
            .expect("open lease store")
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

async fn acquire(lease: &dyn LeaseStore, holder: &str, timeout: Duration, at: Timestamp) -> Epoch {
    lease
        .try_acquire(holder, &format!("http://{holder}"), timeout, at)
        .await
        .expect("try_acquire")
        .unwrap_or_else(|| panic!("{holder} should get the lease"))
}

async fn refused(lease: &dyn LeaseStore, holder: &str, timeout: Duration, at: Timestamp) {
    let got = lease
        .try_acquire(holder, &format!("http://{holder}"), timeout, at)
        .await
        .expect("try_acquire");
    assert_eq!(got, None, "{holder} must not get the lease");
}

/// Polls like a passive replica does, for at most `within`; the server side of a closed
/// PostgreSQL session ends asynchronously, a few milliseconds after the client let go.
async fn acquire_within(lease: &dyn LeaseStore, holder: &str, within: Duration) -> Epoch {
    let started = Instant::now();
    loop {
        if let Some(epoch) = lease
            .try_acquire(holder, "http://x", LONG, now())
            .await
            .expect("try_acquire")
        {
            return epoch;
        }
        assert!(
            started.elapsed() < within,
            "{holder} did not get the lease within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_lost(result: Result<(), StoreError>, expected_epoch: i64) -> bool {
    matches!(result, Err(StoreError::LeaseLost { ref node, epoch }) if node == NODE && epoch == expected_epoch)
}

async fn first_holder_gets_epoch_one_and_excludes_others(h: Harness) {
    let a = h.replica().await;
    let b = h.replica().await;
    assert_eq!(a.current().await.expect("current"), None);
    let t0 = now();
    assert_eq!(acquire(a.as_ref(), "a", LONG, t0).await, Epoch(1));
    refused(b.as_ref(), "b", LONG, t0).await;
    a.renew("a", Epoch(1), now()).await.expect("renew");
    refused(b.as_ref(), "b", LONG, now()).await;
    let state = b.current().await.expect("current").expect("a row");
    assert_eq!(state.epoch, Epoch(1));
    assert_eq!(state.holder.as_deref(), Some("a"));
    assert_eq!(state.holder_endpoint.as_deref(), Some("http://a"));
}

async fn release_hands_over_and_the_old_epoch_is_lost(h: Harness) {
    let a = h.replica().await;
    let b = h.replica().await;
    assert_eq!(acquire(a.as_ref(), "a", LONG, now()).await, Epoch(1));
    a.release("a", Epoch(1)).await.expect("release");
    let state = b.current().await.expect("current").expect("a row");
    assert_eq!(
        (state.epoch, state.holder, state.holder_endpoint),
        (Epoch(1), None, None),
        "a release keeps the epoch and clears the holder"
    );
    assert_eq!(acquire(b.as_ref(), "b", LONG, now()).await, Epoch(2));
    assert!(is_lost(a.renew("a", Epoch(1), now()).await, 1));
    refused(a.as_ref(), "a", LONG, now()).await;
    b.renew("b", Epoch(2), now()).await.expect("b renews");
}

async fn a_dead_holder_frees_the_lease_at_once(h: Harness) {
    let a = h.replica().await;
    let b = h.replica().await;
    assert_eq!(acquire(a.as_ref(), "a", LONG, now()).await, Epoch(1));
    refused(b.as_ref(), "b", LONG, now()).await;
    // The process "dies": its session / flock goes with it. No time passes on the lease clock.
    drop(a);
    let started = Instant::now();
    assert_eq!(
        acquire_within(b.as_ref(), "b", Duration::from_secs(5)).await,
        Epoch(2)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

async fn a_stuck_holder_is_deposed_after_the_timeout(h: Harness) {
    let timeout = Duration::from_secs(2);
    let a = h.replica().await;
    let b = h.replica().await;
    let c = h.replica().await;
    let t0 = now();
    assert_eq!(acquire(a.as_ref(), "a", timeout, t0).await, Epoch(1));
    // a stays alive but stops renewing (on PostgreSQL its session is idle; on SQLite it keeps
    // its flock).
    refused(b.as_ref(), "b", timeout, t0.saturating_add(timeout / 2)).await;
    let t1 = t0.saturating_add(timeout);
    assert_eq!(acquire(b.as_ref(), "b", timeout, t1).await, Epoch(2));
    // a wakes up: its renewal finds the new epoch.
    assert!(is_lost(a.renew("a", Epoch(1), t1).await, 1));
    // Whatever a let go of meanwhile, b is alive and renewing: nobody may take over.
    refused(c.as_ref(), "c", timeout, t1).await;
    b.renew("b", Epoch(2), t1).await.expect("b renews");
    refused(a.as_ref(), "a", timeout, t1).await;
    refused(c.as_ref(), "c", timeout, t1).await;
    // Once b renewed after a let go, b's own death is detected at once again.
    drop(b);
    assert_eq!(
        acquire_within(c.as_ref(), "c", Duration::from_secs(5)).await,
        Epoch(3)
    );
}

async fn renewing_under_a_stale_epoch_fails(h: Harness) {
    let a = h.replica().await;
    assert_eq!(acquire(a.as_ref(), "a", LONG, now()).await, Epoch(1));
    assert!(is_lost(a.renew("a", Epoch(7), now()).await, 7));
    assert!(is_lost(a.renew("someone", Epoch(1), now()).await, 1));
}

// --- fencing -----------------------------------------------------------------------------

fn contract(id: &str) -> Contract {
    Contract {
        id: ContractId::new(id).expect("id"),
        template: TemplateId::new("Iou").expect("template"),
        payload: json!({"issuer": "bank", "owner": "alice", "amount": 1, "currency": "USD"}),
        signatories: BTreeSet::from([PartyId::new("bank").expect("party")]),
        observers: BTreeSet::from([PartyId::new("alice").expect("party")]),
    }
}

/// A batch that commits one transaction creating one contract at `offset`.
fn batch(offset: u64) -> ParticipantBatch {
    let created = contract(&format!("c{offset}"));
    ParticipantBatch {
        checkpoint: Some(Timestamp::from_micros(offset * 100)),
        ledger_end: Some(LedgerOffset(offset)),
        created: vec![StoredContract {
            contract: created.clone(),
            created_offset: LedgerOffset(offset),
            archived_offset: None,
        }],
        transactions: vec![TransactionRecord {
            offset: LedgerOffset(offset),
            transaction_id: TransactionId::new(format!("tx-{offset}")).expect("tx id"),
            request_id: Timestamp::from_micros(offset * 100),
            committed_at: Timestamp::from_micros(offset * 100),
            user_id: None,
            command_id: None,
            informees: created.stakeholders(),
            transaction: Transaction {
                roots: vec![Action::Create { contract: created }],
            },
        }],
        ..ParticipantBatch::default()
    }
}

async fn a_deposed_participant_writes_nothing(h: Harness) {
    let a = h.replica().await;
    let b = h.replica().await;
    let store = <dyn ParticipantStore>::open_on(&h.backend.config).await;
    let fence = store.fence();
    let e1 = acquire(a.as_ref(), "a", LONG, now()).await;
    fence.activate(NODE, e1);
    store.apply(&batch(1)).await.expect("the active writes");
    store.prune_dedup(now()).await.expect("the active prunes");

    a.release("a", e1).await.expect("release");
    let e2 = acquire(b.as_ref(), "b", LONG, now()).await;
    assert_eq!(e2, Epoch(2));
    // The zombie still believes it holds epoch 1.
    assert!(is_lost(store.apply(&batch(2)).await, 1));
    assert!(matches!(
        store.prune_dedup(now()).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(
        store.ledger_end().await.expect("ledger end"),
        LedgerOffset(1)
    );
    assert_eq!(
        store
            .contract(&ContractId::new("c2").expect("id"))
            .await
            .expect("read"),
        None,
        "nothing of the refused batch was written"
    );

    // Demoted: passive refuses every write.
    fence.deactivate(NODE);
    assert!(matches!(
        store.apply(&batch(2)).await,
        Err(StoreError::Passive { ref node }) if node == NODE
    ));

    // The new active writes under epoch 2 (here through a second store on the database).
    let active = <dyn ParticipantStore>::open_on(&h.backend.config).await;
    active.fence().activate(NODE, e2);
    active
        .apply(&batch(2))
        .await
        .expect("the new active writes");
    // A store whose slot was never set is not replicated and not fenced.
    let unfenced = <dyn ParticipantStore>::open_on(&h.backend.config).await;
    unfenced.apply(&batch(3)).await.expect("unfenced writes");
    assert_eq!(
        store.ledger_end().await.expect("ledger end"),
        LedgerOffset(3)
    );
}

async fn a_deposed_mediator_writes_nothing(h: Harness) {
    let a = h.replica().await;
    let b = h.replica().await;
    let store = <dyn MediatorStore>::open_on(&h.backend.config).await;
    let fence = store.fence();
    let request = |id: u64| MediatorChange::RequestAdded {
        request_id: Timestamp::from_micros(id),
        deadline: Timestamp::from_micros(id + 1_000),
        informee_json: format!("{{\"informee\":{id}}}"),
    };
    let e1 = acquire(a.as_ref(), "a", LONG, now()).await;
    fence.activate(NODE, e1);
    store
        .apply(&[request(1)], Timestamp::from_micros(1))
        .await
        .expect("the active writes");

    // a is stuck; b deposes it after the timeout.
    let later = now().saturating_add(LONG);
    assert_eq!(acquire(b.as_ref(), "b", LONG, later).await, Epoch(2));
    assert!(is_lost(
        store.apply(&[request(2)], Timestamp::from_micros(2)).await,
        1
    ));
    assert!(is_lost(
        store.mark_verdicts_sent(&[Timestamp::from_micros(1)]).await,
        1
    ));
    assert!(matches!(
        store.prune_verdicts(Timestamp::from_micros(10)).await,
        Err(StoreError::LeaseLost { .. })
    ));
    let snapshot = store.load().await.expect("load");
    assert_eq!(snapshot.checkpoint, Some(Timestamp::from_micros(1)));
    assert_eq!(snapshot.pending.len(), 1);

    fence.deactivate(NODE);
    assert!(matches!(
        store.apply(&[request(2)], Timestamp::from_micros(2)).await,
        Err(StoreError::Passive { .. })
    ));
}

async fn a_deposed_topology_manager_writes_nothing(h: Harness) {
    let a = h.replica().await;
    let b = h.replica().await;
    let store = <dyn TopologyStore>::open_on(&h.backend.config).await;
    let fence = store.fence();
    let signed = SignedTopologyTransaction {
        transaction_json: "{\"serial\":1}".into(),
        signature: "sig-1".into(),
    };
    let e1 = acquire(a.as_ref(), "a", LONG, now()).await;
    fence.activate(NODE, e1);
    assert!(store
        .record_intent(1, &signed, Timestamp::from_micros(100))
        .await
        .expect("the active writes"));

    a.release("a", e1).await.expect("release");
    acquire(b.as_ref(), "b", LONG, now()).await;
    assert!(matches!(
        store.complete(1, Timestamp::from_micros(50)).await,
        Err(TopologyStoreError::Store(StoreError::LeaseLost {
            epoch: 1,
            ..
        }))
    ));
    assert!(matches!(
        store.renew_intent(1, Timestamp::from_micros(200)).await,
        Err(TopologyStoreError::Store(StoreError::LeaseLost { .. }))
    ));
    let records = store.records().await.expect("records");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].effective, None);
    assert_eq!(records[0].max_sequencing_time, Timestamp::from_micros(100));

    fence.deactivate(NODE);
    assert!(matches!(
        store.complete(1, Timestamp::from_micros(50)).await,
        Err(TopologyStoreError::Store(StoreError::Passive { .. }))
    ));
}

/// Lease calls dropped midway leave nothing held that outlives them: the dropping replica can
/// go on and hand over, the other takes over, and no transaction stays open (on PostgreSQL a
/// session left inside the epoch bump would keep the lease row locked against every fenced
/// write of the node; on SQLite a connection left inside `BEGIN IMMEDIATE` keeps the file).
async fn calls_dropped_midway_leave_nothing_held(h: Harness) {
    let a = h.replica().await;
    let b = h.replica().await;
    for attempt in 0..60u32 {
        let polls = attempt % 30;
        // A call dropped midway (a shutdown, a step-down), at a different point each time.
        poll_then_drop(a.try_acquire("a", "http://a", LONG, now()), polls);
        let epoch = acquire_within(a.as_ref(), "a", Duration::from_secs(5)).await;
        poll_then_drop(a.renew("a", epoch, now()), polls);
        a.release("a", epoch).await.expect("a hands over");
        let taken = acquire_within(b.as_ref(), "b", Duration::from_secs(5)).await;
        assert!(
            taken > epoch,
            "attempt {attempt}: {taken:?} after {epoch:?}"
        );
        b.release("b", taken).await.expect("b hands back");
        h.backend.assert_no_transaction_left_open().await;
    }
}

conformance!(
    "lease":
    first_holder_gets_epoch_one_and_excludes_others,
    release_hands_over_and_the_old_epoch_is_lost,
    a_dead_holder_frees_the_lease_at_once,
    a_stuck_holder_is_deposed_after_the_timeout,
    renewing_under_a_stale_epoch_fails,
    a_deposed_participant_writes_nothing,
    a_deposed_mediator_writes_nothing,
    a_deposed_topology_manager_writes_nothing,
    calls_dropped_midway_leave_nothing_held,
);

/// The fencing check of a PostgreSQL write transaction, as `meridian_store::fencing` runs it.
const FENCE_CHECK: &str = "SELECT epoch FROM replica_lease WHERE node = $1 FOR KEY SHARE";

/// A connection to the harness's PostgreSQL database in the middle of a fenced write
/// transaction: it passed the fencing check at `epoch` and has not committed.
async fn fenced_writer(h: &Harness, epoch: i64) -> sqlx::PgConnection {
    use sqlx::Connection;

    let StorageConfig::Postgres { url, .. } = &h.backend.config else {
        unreachable!("a PostgreSQL harness");
    };
    let mut writer = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut writer)
        .await
        .expect("begin");
    let found: i64 = sqlx::query_scalar(FENCE_CHECK)
        .bind(NODE)
        .fetch_one(&mut writer)
        .await
        .expect("fence check");
    assert_eq!(found, epoch);
    writer
}

/// PostgreSQL only: the holder's renewal does not queue behind its own node's write
/// transactions (their fencing lock does not conflict with it: under load, commits waiting on
/// the disk made renewals late enough for a passive to depose a healthy holder), while a
/// takeover's epoch bump still waits for every one of them to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_renewals_pass_in_flight_writes_and_a_takeover_waits_for_them() {
    let h = Harness::open(Backend::postgres("lease")).await;
    let a = h.replica().await;
    let b = h.replica().await;
    assert_eq!(acquire(a.as_ref(), "a", LONG, now()).await, Epoch(1));
    let mut writer = fenced_writer(&h, 1).await;

    // The write transaction stays open for as long as this test likes: a renewal that waited
    // for it would wait for the session's lock_timeout and fail.
    tokio::time::timeout(Duration::from_secs(3), a.renew("a", Epoch(1), now()))
        .await
        .expect("the renewal does not wait for the open write transaction")
        .expect("renewed");

    // A handover while the write is still open: the bump waits for it (the lease is fresh, so
    // nothing is terminated), and the write commits under the epoch it checked.
    a.release("a", Epoch(1)).await.expect("released");
    let take = tokio::spawn({
        let b = b.clone();
        async move { acquire(b.as_ref(), "b", LONG, now()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !take.is_finished(),
        "the epoch bump went ahead of a fenced write transaction still open"
    );
    sqlx::query("COMMIT")
        .execute(&mut writer)
        .await
        .expect("the write that checked epoch 1 before the bump commits");
    assert_eq!(take.await.expect("take task"), Epoch(2));
    assert!(is_lost(a.renew("a", Epoch(1), now()).await, 1));
}

/// PostgreSQL only: a holder stopped (SIGSTOP) in the middle of a fenced write transaction holds
/// `FOR KEY SHARE` on the lease row, which the epoch bump must wait for; once the lease is stale the
/// taker terminates that session too instead of waiting forever. (On SQLite such a process
/// holds the database's write lock, which no other process can break; see the lease module.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_holder_stopped_mid_write_is_deposed() {
    let h = Harness::open(Backend::postgres("lease")).await;
    let a = h.replica().await;
    let b = h.replica().await;
    let t0 = now();
    assert_eq!(acquire(a.as_ref(), "a", LONG, t0).await, Epoch(1));
    // a's writer: a fenced transaction that passed the check and then froze.
    let mut writer = fenced_writer(&h, 1).await;

    let started = Instant::now();
    assert_eq!(
        acquire(b.as_ref(), "b", LONG, t0.saturating_add(LONG)).await,
        Epoch(2)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        sqlx::query("COMMIT").execute(&mut writer).await.is_err(),
        "the frozen writer's session was terminated"
    );
    assert!(is_lost(a.renew("a", Epoch(1), now()).await, 1));
}
