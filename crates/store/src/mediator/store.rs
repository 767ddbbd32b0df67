//! The mediator store on either backend. Writes go through one writer connection (on SQLite
//! the file's single writer, `BEGIN IMMEDIATE`) and reads through a separate pool, so a slow
//! read (a restart's load) never delays the event loop's commits. Each `apply` is a handful of
//! bulk statements whatever the number of events it covers.

use async_trait::async_trait;
use meridian_core::Timestamp;

use super::{
    pending_records, postgres, sqlite, verdict_record, ApplyPlan, MediatorChange, MediatorSnapshot,
    MediatorStore, VerdictRecord, VerdictRow,
};
use crate::pool::{
    self, on_backend, CommitScript, PoolSettings, PostgresLayout, Script, StorePool,
};
use crate::sequencer::BackendStatus;
use crate::{FenceSlot, StorageConfig, StoreError};

const SQLITE_READER_CONNECTIONS: u32 = 2;

const VERDICT_COLUMNS: &str = "request_id, recipients, verdict, sent";

#[derive(Debug, Clone)]
pub struct SqlMediatorStore {
    pool: StorePool,
    /// Checked at the start of every write transaction; shared by clones of this store.
    fence: FenceSlot,
}

const POOL: PoolSettings = PoolSettings {
    store: "mediator",
    sqlite_foreign_keys: false,
    sqlite_migrate_attempts: pool::MIGRATE_ONCE,
    sqlite_readers: Some(SQLITE_READER_CONNECTIONS),
    // The mediator reports a read-only database (a standby) through `backend_status`.
    postgres: PostgresLayout::ReportsReadOnly {
        writer_idle_in_transaction_timeout_ms: None,
    },
};

impl SqlMediatorStore {
    /// Opens (and migrates) the database the config names. On a read-only PostgreSQL database
    /// (a standby) migrating is skipped and [`MediatorStore::backend_status`] reports why the
    /// mediator cannot work.
    pub async fn open_config(config: &StorageConfig) -> Result<Self, StoreError> {
        Ok(Self {
            pool: StorePool::open(config, &POOL).await?,
            fence: FenceSlot::default(),
        })
    }
}

/// Appends `(id, id, ...)` to `query`.
#[async_trait]
impl MediatorStore for SqlMediatorStore {
    fn fence(&self) -> FenceSlot {
        self.fence.clone()
    }

    async fn load(&self) -> Result<MediatorSnapshot, StoreError> {
        let unsent_query = format!(
            "SELECT {VERDICT_COLUMNS} FROM mediator_verdicts WHERE NOT sent ORDER BY request_id"
        );
        // One snapshot, so the parts are consistent with each other even while a writer
        // (possibly in another process) commits.
        let (checkpoint, requests, responses, unsent) =
            on_backend!(&self.pool, |_, readers, dialect| {
                let mut tx = crate::pool::begin(readers, dialect.snapshot_begin).await?;
                let checkpoint: Option<i64> =
                    sqlx::query_scalar("SELECT ts FROM mediator_checkpoint WHERE id = 1")
                        .fetch_optional(&mut *tx)
                        .await?;
                let requests: Vec<(i64, i64, String)> = sqlx::query_as(
                    "SELECT request_id, deadline, informee FROM mediator_requests \
                     ORDER BY request_id",
                )
                .fetch_all(&mut *tx)
                .await?;
                let responses: Vec<(i64, String, String)> = sqlx::query_as(
                    "SELECT request_id, participant, response FROM mediator_responses \
                     ORDER BY request_id, participant",
                )
                .fetch_all(&mut *tx)
                .await?;
                let unsent: Vec<VerdictRow> =
                    sqlx::query_as(&unsent_query).fetch_all(&mut *tx).await?;
                tx.commit().await?;
                (checkpoint, requests, responses, unsent)
            });
        Ok(MediatorSnapshot {
            checkpoint: checkpoint.map(Timestamp::from_i64),
            pending: pending_records(requests, responses)?,
            unsent: unsent
                .into_iter()
                .map(verdict_record)
                .collect::<Result<_, _>>()?,
        })
    }

    async fn apply(
        &self,
        changes: &[MediatorChange],
        checkpoint: Timestamp,
    ) -> Result<(), StoreError> {
        let plan = ApplyPlan::new(changes);
        on_backend!(&self.pool, |writer, _, dialect| {
            let mut script = Script::<Db>::transaction(dialect);
            for table in ["mediator_responses", "mediator_requests"] {
                script.for_ids(
                    &format!("DELETE FROM {table} WHERE request_id"),
                    &plan.deletes,
                );
            }
            script.insert_plan(&plan);
            script
                .statement("INSERT INTO mediator_checkpoint (id, ts) VALUES (1, ")
                .push_bind(checkpoint.as_i64())
                .push(
                    ") ON CONFLICT (id) DO UPDATE SET ts = CASE \
                     WHEN excluded.ts > mediator_checkpoint.ts THEN excluded.ts \
                     ELSE mediator_checkpoint.ts END",
                );
            writer.commit_script(&self.fence, script).await?;
        });
        Ok(())
    }

    async fn mark_verdicts_sent(&self, request_ids: &[Timestamp]) -> Result<(), StoreError> {
        if request_ids.is_empty() {
            return Ok(());
        }
        on_backend!(&self.pool, |writer, _, dialect| {
            let mut script = Script::<Db>::transaction(dialect);
            script.for_ids(
                "UPDATE mediator_verdicts SET sent = true WHERE request_id",
                request_ids,
            );
            writer.commit_script(&self.fence, script).await?;
        });
        Ok(())
    }

    async fn verdict(&self, request_id: Timestamp) -> Result<Option<VerdictRecord>, StoreError> {
        let select =
            format!("SELECT {VERDICT_COLUMNS} FROM mediator_verdicts WHERE request_id = $1");
        let row: Option<VerdictRow> = self
            .pool
            .read_optional(&select, request_id.as_i64())
            .await?;
        row.map(verdict_record).transpose()
    }

    async fn prune_verdicts(&self, before: Timestamp) -> Result<u64, StoreError> {
        let prune = "DELETE FROM mediator_verdicts WHERE sent AND request_id < $1";
        self.pool
            .fenced_execute(&self.fence, prune, before.as_i64())
            .await
    }

    async fn backend_status(&self) -> Result<BackendStatus, StoreError> {
        self.pool.backend_status().await
    }
}

/// The bulk writes in the dialect's own form (the one place the backends differ), added to a
/// transaction's script: new rows, and statements over a list of request ids.
trait BulkWrites<'args> {
    fn insert_plan(&mut self, plan: &'args ApplyPlan<'_>);

    /// `statement` (ending in `WHERE request_id`) for every id in `ids`.
    fn for_ids(&mut self, statement: &str, ids: &'args [Timestamp]);
}

/// Forwards [`BulkWrites`] of a backend's script to the functions of its dialect's module.
macro_rules! bulk_writes {
    ($db:ty, $dialect:ident) => {
        impl<'args> BulkWrites<'args> for Script<'args, $db> {
            fn insert_plan(&mut self, plan: &'args ApplyPlan<'_>) {
                $dialect::insert_plan(self, plan);
            }

            fn for_ids(&mut self, statement: &str, ids: &'args [Timestamp]) {
                $dialect::for_ids(self, statement, ids);
            }
        }
    };
}

bulk_writes!(sqlx::Sqlite, sqlite);
bulk_writes!(sqlx::Postgres, postgres);
