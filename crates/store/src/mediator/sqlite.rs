//! The mediator store on an SQLite file. As in the sequencer store, writes go through a pool of
//! one connection with `BEGIN IMMEDIATE` (one writer, no lock contention inside the process)
//! and reads use a separate read-only pool that WAL never blocks. Each `apply` is a handful of
//! multi-row statements whatever the number of events it covers.

use std::path::Path;

use async_trait::async_trait;
use meridian_core::Timestamp;
use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Sqlite};

use crate::mediator::{
    self, ApplyPlan, MediatorChange, MediatorSnapshot, MediatorStore, VerdictRecord,
};
use crate::sequencer::BackendStatus;
use crate::{fencing, pools, FenceSlot, StoreError};

/// Rows per multi-row statement: at most four bound parameters each, far below SQLite's limit.
const ROWS_PER_STATEMENT: usize = 500;

const READER_CONNECTIONS: u32 = 2;

#[derive(Debug, Clone)]
pub struct SqliteMediatorStore {
    writer: SqlitePool,
    readers: SqlitePool,
    /// Checked at the start of every write transaction; shared by clones of this store.
    fence: FenceSlot,
}

impl SqliteMediatorStore {
    /// Opens the database file, creating and migrating it if needed.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = pools::sqlite_options(path);
        let writer = pools::open_sqlite_writer(&options, pools::MIGRATE_ONCE).await?;
        let readers = pools::open_sqlite_readers(options, READER_CONNECTIONS).await?;
        Ok(Self {
            writer,
            readers,
            fence: FenceSlot::default(),
        })
    }
}

const VERDICT_COLUMNS: &str = "request_id, recipients, verdict, sent";

#[async_trait]
impl MediatorStore for SqliteMediatorStore {
    fn fence(&self) -> FenceSlot {
        self.fence.clone()
    }

    async fn load(&self) -> Result<MediatorSnapshot, StoreError> {
        // One read transaction, so the parts are consistent with each other even if a writer
        // in another process were active.
        let mut tx = self.readers.begin().await?;
        let checkpoint: Option<i64> =
            sqlx::query_scalar("SELECT ts FROM mediator_checkpoint WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?;
        let requests: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT request_id, deadline, informee FROM mediator_requests ORDER BY request_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let responses: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT request_id, participant, response FROM mediator_responses \
             ORDER BY request_id, participant",
        )
        .fetch_all(&mut *tx)
        .await?;
        let unsent: Vec<mediator::VerdictRow> = sqlx::query_as(&format!(
            "SELECT {VERDICT_COLUMNS} FROM mediator_verdicts WHERE NOT sent ORDER BY request_id"
        ))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(MediatorSnapshot {
            checkpoint: checkpoint.map(Timestamp::from_i64),
            pending: mediator::pending_records(requests, responses)?,
            unsent: unsent
                .into_iter()
                .map(mediator::verdict_record)
                .collect::<Result<_, _>>()?,
        })
    }

    async fn apply(
        &self,
        changes: &[MediatorChange],
        checkpoint: Timestamp,
    ) -> Result<(), StoreError> {
        let plan = ApplyPlan::new(changes);
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        fencing::check_sqlite(&mut tx, &self.fence).await?;
        for chunk in plan.deletes.chunks(ROWS_PER_STATEMENT) {
            for table in ["mediator_responses", "mediator_requests"] {
                let mut delete = QueryBuilder::<Sqlite>::new(format!(
                    "DELETE FROM {table} WHERE request_id IN ("
                ));
                let mut ids = delete.separated(", ");
                for id in chunk {
                    ids.push_bind(id.as_i64());
                }
                delete.push(")");
                delete.build().execute(&mut *tx).await?;
            }
        }
        for chunk in plan.requests.chunks(ROWS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO mediator_requests (request_id, deadline, informee) ",
            );
            insert.push_values(chunk, |mut row, (id, deadline, informee)| {
                row.push_bind(id.as_i64())
                    .push_bind(deadline.as_i64())
                    .push_bind(*informee);
            });
            insert.build().execute(&mut *tx).await?;
        }
        for chunk in plan.responses.chunks(ROWS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO mediator_responses (request_id, participant, response) ",
            );
            insert.push_values(chunk, |mut row, (id, participant, response)| {
                row.push_bind(id.as_i64())
                    .push_bind(participant.as_str())
                    .push_bind(*response);
            });
            insert.build().execute(&mut *tx).await?;
        }
        for chunk in plan.verdicts.chunks(ROWS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO mediator_verdicts (request_id, recipients, verdict, sent) ",
            );
            insert.push_values(chunk, |mut row, (id, recipients, verdict)| {
                row.push_bind(id.as_i64())
                    .push_bind(recipients.as_str())
                    .push_bind(*verdict)
                    .push_bind(false);
            });
            insert.build().execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO mediator_checkpoint (id, ts) VALUES (1, ?1) \
             ON CONFLICT (id) DO UPDATE SET ts = max(ts, excluded.ts)",
        )
        .bind(checkpoint.as_i64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_verdicts_sent(&self, request_ids: &[Timestamp]) -> Result<(), StoreError> {
        if request_ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        fencing::check_sqlite(&mut tx, &self.fence).await?;
        for chunk in request_ids.chunks(ROWS_PER_STATEMENT) {
            let mut update = QueryBuilder::<Sqlite>::new(
                "UPDATE mediator_verdicts SET sent = 1 WHERE request_id IN (",
            );
            let mut ids = update.separated(", ");
            for id in chunk {
                ids.push_bind(id.as_i64());
            }
            update.push(")");
            update.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn verdict(&self, request_id: Timestamp) -> Result<Option<VerdictRecord>, StoreError> {
        let row: Option<mediator::VerdictRow> = sqlx::query_as(&format!(
            "SELECT {VERDICT_COLUMNS} FROM mediator_verdicts WHERE request_id = ?1"
        ))
        .bind(request_id.as_i64())
        .fetch_optional(&self.readers)
        .await?;
        row.map(mediator::verdict_record).transpose()
    }

    async fn prune_verdicts(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        fencing::check_sqlite(&mut tx, &self.fence).await?;
        let pruned = sqlx::query("DELETE FROM mediator_verdicts WHERE sent AND request_id < ?1")
            .bind(before.as_i64())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(pruned)
    }

    async fn backend_status(&self) -> Result<BackendStatus, StoreError> {
        // Touch the database so that a vanished or unreadable file shows up here.
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(BackendStatus {
            backend: "sqlite",
            read_only: false,
            synchronous_commit: None,
        })
    }
}
