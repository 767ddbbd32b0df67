//! The controller store conformance suite: the `ControllerStore` contract, run against SQLite
//! (a temp file) and PostgreSQL (a fresh database on the test binary's shared throwaway
//! server). What a controller taking over relies on belongs here: a batch of effects commits
//! whole or not at all, audit sequence numbers are gap-free in commit order even with several
//! committers, the audit log cannot be rewritten even by SQL sent around the store, and a
//! deposed controller writes nothing.

use std::sync::Arc;
use std::time::Duration;

use harness::{assert_unreachable_postgres_is_transient, Backend, OpenHarness, OpenStore};
use meridian_core::{SynchronizerId, Timestamp};
use meridian_store::controller::{
    self, ControllerBatch, ControllerStore, ControllerStores, NewAuditRecord, SqlControllerStore,
    StoredAuditRecord, StoredPlan, LEASE_NODE, MAX_AUDIT_READ,
};
use meridian_store::{claim_database, DatabaseOwner, Epoch, NodeKind, StorageConfig, StoreError};
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

#[macro_use]
mod harness;

/// Long enough that no test passes it by waiting.
const LONG: Duration = Duration::from_secs(60);

/// SQL sent to the database around the store, as an operator (or an attacker with the
/// credentials) could.
enum Raw {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

struct Harness {
    backend: Backend,
    /// Controller replica "a": its store, lease and fence.
    a: ControllerStores,
    raw: Raw,
}

impl OpenHarness for Harness {
    async fn open(backend: Backend) -> Harness {
        let a = controller::open(&backend.config, LEASE_NODE, None)
            .await
            .expect("open the controller store");
        let raw = match &backend.config {
            StorageConfig::Sqlite { path } => Raw::Sqlite(
                SqlitePool::connect_with(SqliteConnectOptions::new().filename(path))
                    .await
                    .expect("raw connection"),
            ),
            StorageConfig::Postgres { url, .. } => {
                Raw::Postgres(PgPool::connect(url).await.expect("raw connection"))
            }
        };
        Harness { backend, a, raw }
    }
}

impl Harness {
    /// Another controller replica on the same database (another process, as far as the store
    /// can tell: its own connections and lease).
    async fn replica(&self) -> ControllerStores {
        controller::open(&self.backend.config, LEASE_NODE, None)
            .await
            .expect("open another replica")
    }

    fn store(&self) -> &dyn ControllerStore {
        self.a.store.as_ref()
    }

    /// Runs `sql` around the store; the database's answer.
    async fn raw_execute(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match &self.raw {
            Raw::Sqlite(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()),
            Raw::Postgres(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()),
        }
    }

    /// Every record, read around the store's limits.
    async fn whole_log(&self) -> Vec<StoredAuditRecord> {
        let mut records = Vec::new();
        loop {
            let after = records.last().map_or(0, |r: &StoredAuditRecord| r.seq);
            let page = self
                .store()
                .audit_after(after, MAX_AUDIT_READ)
                .await
                .expect("audit_after");
            if page.is_empty() {
                return records;
            }
            records.extend(page);
        }
    }
}

fn t(micros: u64) -> Timestamp {
    Timestamp::from_micros(micros)
}

fn plan(id: &str, state: &str, at: u64) -> StoredPlan {
    StoredPlan {
        id: id.into(),
        state: state.into(),
        body_json: format!("{{\"id\":\"{id}\",\"state\":\"{state}\",\"steps\":[1,2,3]}}"),
        updated_at: t(at),
    }
}

fn record(kind: &str, plan: Option<&str>, detail: &str) -> NewAuditRecord {
    NewAuditRecord {
        at: t(1_000),
        kind: kind.into(),
        plan: plan.map(str::to_owned),
        body_json: format!("{{\"detail\":\"{detail}\"}}"),
    }
}

fn audit(records: Vec<NewAuditRecord>) -> ControllerBatch {
    ControllerBatch {
        plans: vec![],
        audit: records,
    }
}

/// `n` records whose details are `prefix-0` ... `prefix-(n-1)`.
fn records(prefix: &str, n: usize) -> Vec<NewAuditRecord> {
    (0..n)
        .map(|i| record("step-done", None, &format!("{prefix}-{i}")))
        .collect()
}

fn seqs(records: &[StoredAuditRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn range(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

// ---------------------------------------------------------------------------------------------
// The contract, once for both backends.

async fn a_new_store_is_empty(h: Harness) {
    assert_eq!(h.store().plans().await.expect("plans"), vec![]);
    assert_eq!(h.store().audit_after(0, 10).await.expect("after"), vec![]);
    assert_eq!(h.store().audit_latest(10).await.expect("latest"), vec![]);
    assert_eq!(
        h.store()
            .commit(&ControllerBatch::default())
            .await
            .expect("an empty batch"),
        Vec::<u64>::new()
    );
    assert_eq!(h.whole_log().await, vec![]);
}

async fn records_read_back_as_written(h: Harness) {
    let written = vec![
        record("plan-proposed", Some("plan-1"), "proposed"),
        NewAuditRecord {
            at: t(u64::try_from(i64::MAX).expect("fits")),
            kind: "replica-down".into(),
            plan: None,
            body_json: "[\"ü\", null, 1.5]".into(),
        },
    ];
    let got = h
        .store()
        .commit(&audit(written.clone()))
        .await
        .expect("commit");
    assert_eq!(got, vec![1, 2]);
    let stored = h.store().audit_after(0, 10).await.expect("after");
    let expected: Vec<StoredAuditRecord> = written
        .into_iter()
        .zip(1..)
        .map(|(r, seq)| StoredAuditRecord {
            seq,
            at: r.at,
            kind: r.kind,
            plan: r.plan,
            body_json: r.body_json,
        })
        .collect();
    assert_eq!(stored, expected);
}

async fn plans_upsert_and_list_in_id_order(h: Harness) {
    let store = h.store();
    store
        .commit(&ControllerBatch {
            plans: vec![
                plan("plan-10", "awaiting-approval", 1),
                plan("plan-2", "awaiting-approval", 2),
            ],
            audit: vec![],
        })
        .await
        .expect("commit");
    store
        .commit(&ControllerBatch {
            plans: vec![
                plan("plan-1", "done", 3),
                // A plan listed twice in one batch: its last occurrence is what is written.
                plan("plan-2", "running", 4),
                plan("plan-2", "done", 5),
            ],
            audit: vec![record("plan-approved", Some("plan-2"), "approved")],
        })
        .await
        .expect("commit");
    let expected = vec![
        plan("plan-1", "done", 3),
        plan("plan-2", "done", 5),
        plan("plan-10", "awaiting-approval", 1),
    ];
    assert_eq!(store.plans().await.expect("plans"), expected);
    // Another replica (or this one restarted) reads the same.
    let other = h.replica().await;
    assert_eq!(other.store.plans().await.expect("plans"), expected);
}

async fn seqs_are_gap_free_and_increasing_across_commits(h: Harness) {
    let store = h.store();
    assert_eq!(
        store.commit(&audit(records("a", 3))).await.expect("commit"),
        vec![1, 2, 3]
    );
    let plans_only = ControllerBatch {
        plans: vec![plan("plan-1", "running", 1)],
        audit: vec![],
    };
    assert_eq!(
        store.commit(&plans_only).await.expect("commit"),
        Vec::<u64>::new()
    );
    assert_eq!(
        store.commit(&audit(records("b", 2))).await.expect("commit"),
        vec![4, 5]
    );
    // A second replica continues the same numbering.
    let other = h.replica().await;
    assert_eq!(
        other
            .store
            .commit(&audit(records("c", 1)))
            .await
            .expect("commit"),
        vec![6]
    );
    let log = h.whole_log().await;
    assert_eq!(seqs(&log), range(1, 6));
    let details: Vec<&str> = log.iter().map(|r| r.body_json.as_str()).collect();
    assert_eq!(
        details,
        [
            "{\"detail\":\"a-0\"}",
            "{\"detail\":\"a-1\"}",
            "{\"detail\":\"a-2\"}",
            "{\"detail\":\"b-0\"}",
            "{\"detail\":\"b-1\"}",
            "{\"detail\":\"c-0\"}"
        ],
        "records keep the batch's order"
    );
}

/// Committers in separate "processes" at once: every commit gets a run of consecutive
/// numbers, and together they cover 1..=n exactly.
async fn concurrent_committers_share_one_gap_free_sequence(h: Harness) {
    const COMMITTERS: usize = 4;
    const COMMITS: usize = 8;
    const PER_COMMIT: usize = 3;
    let mut tasks = Vec::new();
    for committer in 0..COMMITTERS {
        let replica = h.replica().await;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for commit in 0..COMMITS {
                let batch = audit(records(&format!("{committer}.{commit}"), PER_COMMIT));
                got.push((
                    format!("{committer}.{commit}"),
                    replica.store.commit(&batch).await.expect("commit"),
                ));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        for (name, got) in task.await.expect("committer") {
            assert_eq!(got.len(), PER_COMMIT);
            assert!(
                got.windows(2).all(|pair| pair[1] == pair[0] + 1),
                "{name}: {got:?} is not one run"
            );
            all.push((name, got));
        }
    }
    let mut every: Vec<u64> = all.iter().flat_map(|(_, got)| got.clone()).collect();
    every.sort_unstable();
    let total = u64::try_from(COMMITTERS * COMMITS * PER_COMMIT).expect("fits");
    assert_eq!(every, range(1, total));
    // Each returned seq holds the record of that commit and position.
    let log = h.whole_log().await;
    assert_eq!(seqs(&log), range(1, total));
    for (name, got) in all {
        for (index, seq) in got.into_iter().enumerate() {
            let at = usize::try_from(seq - 1).expect("fits");
            assert_eq!(
                log[at].body_json,
                format!("{{\"detail\":\"{name}-{index}\"}}")
            );
        }
    }
}

/// A batch the database refuses part of (an empty kind breaks a constraint, after the plans
/// and the first record went in) leaves nothing behind, and numbering goes on from where it
/// was; a batch with a body that is not JSON is refused before it reaches the database.
async fn a_batch_with_a_bad_record_writes_nothing(h: Harness) {
    let store = h.store();
    store
        .commit(&ControllerBatch {
            plans: vec![plan("plan-1", "awaiting-approval", 1)],
            audit: records("before", 1),
        })
        .await
        .expect("commit");
    let before_plans = store.plans().await.expect("plans");
    let before_log = h.whole_log().await;

    let bad_kind = record("", Some("plan-1"), "nameless");
    let refused = store
        .commit(&ControllerBatch {
            plans: vec![plan("plan-1", "running", 2), plan("plan-2", "running", 2)],
            audit: vec![record("plan-approved", Some("plan-1"), "ok"), bad_kind],
        })
        .await
        .expect_err("an empty kind is refused");
    assert!(
        matches!(refused, StoreError::Database(_)),
        "a definite refusal: {refused:?}"
    );
    assert!(
        refused.to_string().contains("controller_audit_kind_named"),
        "the message names the broken rule: {refused}"
    );

    let mut not_json = record("plan-approved", Some("plan-1"), "ok");
    not_json.body_json = "{\"approved\": ".into();
    let refused = store
        .commit(&ControllerBatch {
            plans: vec![plan("plan-3", "running", 2)],
            audit: vec![record("step-done", None, "fine"), not_json],
        })
        .await
        .expect_err("a body that is not JSON is refused");
    assert!(
        refused
            .to_string()
            .contains("audit record 1 (plan-approved): body_json is not JSON"),
        "{refused}"
    );
    assert!(!refused.is_transient());

    let bad_plan = plan("plan-1", "", 3);
    store
        .commit(&ControllerBatch {
            plans: vec![plan("plan-4", "running", 3), bad_plan],
            audit: records("with-bad-plan", 2),
        })
        .await
        .expect_err("an empty state is refused");

    assert_eq!(store.plans().await.expect("plans"), before_plans);
    assert_eq!(h.whole_log().await, before_log);
    assert_eq!(
        store
            .commit(&audit(records("after", 2)))
            .await
            .expect("commit"),
        vec![2, 3],
        "no number was used up by the refused batches"
    );
}

async fn audit_reads_are_ordered_and_limited(h: Harness) {
    let store = h.store();
    // More than one read may return, in two batches (a batch is limited too).
    for prefix in ["first", "second"] {
        store
            .commit(&audit(records(prefix, 600)))
            .await
            .expect("commit");
    }
    assert_eq!(
        seqs(&store.audit_after(0, u32::MAX).await.expect("after")),
        range(1, u64::from(MAX_AUDIT_READ)),
        "capped at the oldest {MAX_AUDIT_READ}"
    );
    assert_eq!(
        seqs(&store.audit_after(1190, 5).await.expect("after")),
        range(1191, 1195)
    );
    assert_eq!(
        seqs(&store.audit_after(1198, 10).await.expect("after")),
        range(1199, 1200)
    );
    assert_eq!(store.audit_after(1200, 10).await.expect("after"), vec![]);
    assert_eq!(
        store.audit_after(u64::MAX, 10).await.expect("after"),
        vec![]
    );
    assert_eq!(store.audit_after(0, 0).await.expect("after"), vec![]);

    assert_eq!(
        seqs(&store.audit_latest(3).await.expect("latest")),
        range(1198, 1200),
        "the newest, oldest first"
    );
    assert_eq!(
        seqs(&store.audit_latest(u32::MAX).await.expect("latest")),
        range(201, 1200),
        "capped at the newest {MAX_AUDIT_READ}"
    );
    assert_eq!(store.audit_latest(0).await.expect("latest"), vec![]);
    let newest = store.audit_latest(1).await.expect("latest");
    assert_eq!(newest[0].body_json, "{\"detail\":\"second-599\"}");
}

/// Not even SQL sent around the store rewrites or erases the audit log.
async fn the_audit_log_is_append_only_in_the_database(h: Harness) {
    h.store()
        .commit(&audit(records("kept", 3)))
        .await
        .expect("commit");
    let before = h.whole_log().await;
    let mut attempts = vec![
        "UPDATE controller_audit SET body_json = '{}' WHERE seq = 2",
        "UPDATE controller_audit SET seq = seq + 10",
        "DELETE FROM controller_audit WHERE seq = 3",
        "DELETE FROM controller_audit",
    ];
    if matches!(h.raw, Raw::Postgres(_)) {
        attempts.push("TRUNCATE controller_audit");
    }
    for sql in attempts {
        let refused = h.raw_execute(sql).await.expect_err(sql);
        assert!(
            refused
                .to_string()
                .contains("controller_audit is append-only"),
            "{sql}: {refused}"
        );
    }
    assert_eq!(h.whole_log().await, before);
    // Plans are state, not history: they change (upserts) as plans progress.
    h.raw_execute("UPDATE controller_plan SET state = 'x'")
        .await
        .expect("plans are not append-only");
}

/// A deposed controller (its lease taken over by the other replica) writes nothing; a passive
/// one is refused; the new active goes on with the numbering.
async fn a_fenced_store_commits_nothing(h: Harness) {
    let b = h.replica().await;
    let e1 =
        h.a.lease
            .try_acquire("controller-a", "http://a", LONG, Timestamp::now())
            .await
            .expect("try_acquire")
            .expect("a takes the lease");
    h.a.fence.activate(LEASE_NODE, e1);
    let active = ControllerBatch {
        plans: vec![plan("plan-1", "running", 1)],
        audit: records("a", 2),
    };
    assert_eq!(h.store().commit(&active).await.expect("commit"), vec![1, 2]);

    h.a.lease
        .release("controller-a", e1)
        .await
        .expect("release");
    let e2 = b
        .lease
        .try_acquire("controller-b", "http://b", LONG, Timestamp::now())
        .await
        .expect("try_acquire")
        .expect("b takes over");
    assert_eq!(e2, Epoch(e1.0 + 1));

    // a still believes it holds e1.
    let zombie = ControllerBatch {
        plans: vec![plan("plan-1", "done", 2), plan("plan-2", "running", 2)],
        audit: records("zombie", 2),
    };
    let refused = h.store().commit(&zombie).await.expect_err("a is deposed");
    assert!(
        matches!(&refused, StoreError::LeaseLost { node, epoch } if node == LEASE_NODE && *epoch == e1.0),
        "{refused:?}"
    );
    h.a.fence.deactivate(LEASE_NODE);
    let refused = h.store().commit(&zombie).await.expect_err("a is passive");
    assert!(
        matches!(&refused, StoreError::Passive { node } if node == LEASE_NODE),
        "{refused:?}"
    );
    assert_eq!(
        h.store().plans().await.expect("plans"),
        vec![plan("plan-1", "running", 1)]
    );
    assert_eq!(seqs(&h.whole_log().await), range(1, 2));

    b.fence.activate(LEASE_NODE, e2);
    assert_eq!(
        b.store
            .commit(&audit(records("b", 1)))
            .await
            .expect("commit"),
        vec![3]
    );
}

/// The database is the controller's: a node's database is refused, and so is a controller of
/// another synchronizer.
async fn opening_claims_the_database_for_the_controller(h: Harness) {
    let config = &h.backend.config;
    let participant = DatabaseOwner::new(NodeKind::Participant, "participant1", None);
    assert!(matches!(
        claim_database(config, &participant).await,
        Err(StoreError::ForeignDatabase(_))
    ));
    let other = SynchronizerId::parse("sync-0123456789abcdef").expect("valid");
    let refused = controller::open(config, LEASE_NODE, Some(other))
        .await
        .expect_err("another deployment's controller");
    assert!(
        refused
            .to_string()
            .contains("belongs to controller controller"),
        "{refused}"
    );
}

conformance!(
    "controller":
    a_new_store_is_empty,
    records_read_back_as_written,
    plans_upsert_and_list_in_id_order,
    seqs_are_gap_free_and_increasing_across_commits,
    concurrent_committers_share_one_gap_free_sequence,
    a_batch_with_a_bad_record_writes_nothing,
    audit_reads_are_ordered_and_limited,
    the_audit_log_is_append_only_in_the_database,
    a_fenced_store_commits_nothing,
    opening_claims_the_database_for_the_controller,
);

impl OpenStore for SqlControllerStore {
    async fn try_open_on(config: &StorageConfig) -> Result<Arc<Self>, StoreError> {
        SqlControllerStore::open_config(config).await.map(Arc::new)
    }
}

#[tokio::test]
async fn postgres_unreachable_is_transient() {
    assert_unreachable_postgres_is_transient::<SqlControllerStore>().await;
}

/// The default database is `<data-dir>/controller/controller.db`, its directory made on open.
#[tokio::test]
async fn sqlite_default_storage_is_created_under_the_data_dir() {
    let data = tempfile::tempdir().expect("temp dir");
    let config = controller::default_storage(data.path());
    assert_eq!(
        config,
        StorageConfig::Sqlite {
            path: data.path().join("controller/controller.db")
        }
    );
    let stores = controller::open(&config, LEASE_NODE, None)
        .await
        .expect("open");
    assert_eq!(
        stores
            .store
            .commit(&audit(records("x", 1)))
            .await
            .expect("commit"),
        vec![1]
    );
    assert!(data.path().join("controller/controller.db").is_file());
}
