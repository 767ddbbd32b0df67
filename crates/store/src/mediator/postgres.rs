//! The mediator store on PostgreSQL. Each `apply` writes every table with one
//! `INSERT ... SELECT FROM UNNEST(arrays)` (or one `DELETE ... = ANY(array)`), so a run of a
//! thousand events costs a handful of round trips and one commit. One connection is reserved for
//! writes so a slow read (a restart's load) never delays the event loop's commits.

use std::time::Duration;

use async_trait::async_trait;
use meridian_core::Timestamp;
use sqlx::postgres::{PgConnectOptions, PgPool};

use crate::mediator::{
    self, ApplyPlan, MediatorChange, MediatorSnapshot, MediatorStore, VerdictRecord,
};
use crate::sequencer::BackendStatus;
use crate::{fencing, pools, FenceSlot, StoreError};

/// How long a call waits for a connection before reporting the database unavailable. Short,
/// because the mediator retries transient errors itself and reports not-ready meanwhile.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct PgMediatorStore {
    writer: PgPool,
    readers: PgPool,
    /// Checked at the start of every write transaction; shared by clones of this store.
    fence: FenceSlot,
}

impl PgMediatorStore {
    /// Connects with `max_connections` in total (one of them the writer, at least one reader)
    /// and migrates the schema, unless the database is read-only (a standby): then
    /// [`MediatorStore::backend_status`] reports why the mediator cannot work.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        pools::migrate_postgres_unless_read_only(&options, ACQUIRE_TIMEOUT, "mediator").await?;
        let writer = pools::lazy_postgres_pool(options.clone(), 1, ACQUIRE_TIMEOUT);
        let readers = pools::lazy_postgres_pool(
            options,
            pools::postgres_reader_connections(max_connections),
            ACQUIRE_TIMEOUT,
        );
        Ok(Self {
            writer,
            readers,
            fence: FenceSlot::default(),
        })
    }
}

const VERDICT_COLUMNS: &str = "request_id, recipients, verdict, sent";

#[async_trait]
impl MediatorStore for PgMediatorStore {
    fn fence(&self) -> FenceSlot {
        self.fence.clone()
    }

    async fn load(&self) -> Result<MediatorSnapshot, StoreError> {
        // REPEATABLE READ: the three reads see one snapshot, even while the writer commits.
        let mut tx = self.readers.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
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
        let mut tx = self.writer.begin().await?;
        fencing::check_postgres(&mut tx, &self.fence).await?;
        if !plan.deletes.is_empty() {
            let ids: Vec<i64> = plan.deletes.iter().map(|id| id.as_i64()).collect();
            for table in ["mediator_responses", "mediator_requests"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE request_id = ANY($1)"))
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if !plan.requests.is_empty() {
            let ids: Vec<i64> = plan.requests.iter().map(|r| r.0.as_i64()).collect();
            let deadlines: Vec<i64> = plan.requests.iter().map(|r| r.1.as_i64()).collect();
            let informees: Vec<&str> = plan.requests.iter().map(|r| r.2).collect();
            sqlx::query(
                "INSERT INTO mediator_requests (request_id, deadline, informee) \
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[])",
            )
            .bind(&ids)
            .bind(&deadlines)
            .bind(&informees)
            .execute(&mut *tx)
            .await?;
        }
        if !plan.responses.is_empty() {
            let ids: Vec<i64> = plan.responses.iter().map(|r| r.0.as_i64()).collect();
            let participants: Vec<&str> = plan.responses.iter().map(|r| r.1.as_str()).collect();
            let responses: Vec<&str> = plan.responses.iter().map(|r| r.2).collect();
            sqlx::query(
                "INSERT INTO mediator_responses (request_id, participant, response) \
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[])",
            )
            .bind(&ids)
            .bind(&participants)
            .bind(&responses)
            .execute(&mut *tx)
            .await?;
        }
        if !plan.verdicts.is_empty() {
            let ids: Vec<i64> = plan.verdicts.iter().map(|v| v.0.as_i64()).collect();
            let recipients: Vec<&str> = plan.verdicts.iter().map(|v| v.1.as_str()).collect();
            let verdicts: Vec<&str> = plan.verdicts.iter().map(|v| v.2).collect();
            sqlx::query(
                "INSERT INTO mediator_verdicts (request_id, recipients, verdict, sent) \
                 SELECT id, recipients, verdict, false \
                 FROM UNNEST($1::bigint[], $2::text[], $3::text[]) AS u(id, recipients, verdict)",
            )
            .bind(&ids)
            .bind(&recipients)
            .bind(&verdicts)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO mediator_checkpoint (id, ts) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE \
             SET ts = GREATEST(mediator_checkpoint.ts, excluded.ts)",
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
        let ids: Vec<i64> = request_ids.iter().map(|id| id.as_i64()).collect();
        let mut tx = self.writer.begin().await?;
        fencing::check_postgres(&mut tx, &self.fence).await?;
        sqlx::query("UPDATE mediator_verdicts SET sent = true WHERE request_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn verdict(&self, request_id: Timestamp) -> Result<Option<VerdictRecord>, StoreError> {
        let row: Option<mediator::VerdictRow> = sqlx::query_as(&format!(
            "SELECT {VERDICT_COLUMNS} FROM mediator_verdicts WHERE request_id = $1"
        ))
        .bind(request_id.as_i64())
        .fetch_optional(&self.readers)
        .await?;
        row.map(mediator::verdict_record).transpose()
    }

    async fn prune_verdicts(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await?;
        fencing::check_postgres(&mut tx, &self.fence).await?;
        let pruned = sqlx::query("DELETE FROM mediator_verdicts WHERE sent AND request_id < $1")
            .bind(before.as_i64())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(pruned)
    }

    async fn backend_status(&self) -> Result<BackendStatus, StoreError> {
        let (synchronous_commit, read_only, in_recovery): (String, String, bool) = sqlx::query_as(
            "SELECT current_setting('synchronous_commit'), \
                    current_setting('transaction_read_only'), \
                    pg_is_in_recovery()",
        )
        .fetch_one(&self.readers)
        .await?;
        Ok(BackendStatus {
            backend: "postgres",
            read_only: in_recovery || read_only == "on",
            synchronous_commit: Some(synchronous_commit),
        })
    }
}
