//! The participant store on SQLite and on PostgreSQL. The schema and every statement are the
//! same on both (portable SQL, `$n` placeholders, which sqlx accepts on SQLite too), so one
//! macro generates both implementations and they cannot drift apart; only opening the
//! database and the `BEGIN` statements differ.
//!
//! As for the sequencer store, writes go through a pool of exactly one connection (on SQLite
//! the file's single writer; on PostgreSQL there is only one writer task anyway) and reads use
//! a separate pool, so streaming readers never queue behind a batch commit. Rows are decoded in
//! `participant_rows`, so bad data is [`StoreError::Corrupt`], never a panic.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use meridian_core::{ContractId, LedgerOffset, Timestamp, UserId};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::SqlitePool;
use sqlx::{Postgres, QueryBuilder, Sqlite};

use crate::participant::{
    CompletionRecord, DedupRecord, ParticipantBatch, ParticipantSnapshot, ParticipantStore,
    StoredContract, TransactionRecord,
};
use crate::participant_rows::{self as rows, ContractRow, DedupRow, TransactionRow};
use crate::{fencing, pools, FenceSlot, StoreError};

/// Rows per multi-row `INSERT`: at up to eleven columns well below both backends' limits on
/// bound parameters.
const ROWS_PER_INSERT: usize = 400;
const READER_CONNECTIONS: u32 = 4;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct SqliteParticipantStore {
    writer: SqlitePool,
    readers: SqlitePool,
    /// Checked at the start of every write transaction; shared by clones of this store.
    fence: FenceSlot,
}

impl SqliteParticipantStore {
    /// Opens the database file, creating and migrating it if needed.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = pools::sqlite_options(path);
        let writer = pools::open_sqlite_writer(&options, pools::MIGRATE_ONCE).await?;
        let readers = pools::open_sqlite_readers(options, READER_CONNECTIONS).await?;
        let store = Self {
            writer,
            readers,
            fence: FenceSlot::default(),
        };
        store.ensure_state_row().await?;
        Ok(store)
    }

    async fn ensure_state_row(&self) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO participant_state (id, checkpoint, ledger_end) VALUES (1, NULL, 0) \
             ON CONFLICT (id) DO NOTHING",
        )
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct PgParticipantStore {
    writer: PgPool,
    readers: PgPool,
    /// Checked at the start of every write transaction; shared by clones of this store.
    fence: FenceSlot,
}

impl PgParticipantStore {
    /// Connects with `max_connections` in total (one of them the writer) and migrates.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        // The migrating connection stays on as the writer.
        let writer = pools::connect_postgres_migrated(options.clone(), ACQUIRE_TIMEOUT).await?;
        let readers = pools::lazy_postgres_pool(
            options,
            pools::postgres_reader_connections(max_connections),
            ACQUIRE_TIMEOUT,
        );
        let store = Self {
            writer,
            readers,
            fence: FenceSlot::default(),
        };
        store.ensure_state_row().await?;
        Ok(store)
    }

    async fn ensure_state_row(&self) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO participant_state (id, checkpoint, ledger_end) VALUES (1, NULL, 0) \
             ON CONFLICT (id) DO NOTHING",
        )
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}

const CONTRACT_COLUMNS: &str =
    "contract_id, template, payload, signatories, observers, created_offset, archived_offset";
const TRANSACTION_COLUMNS: &str =
    "ledger_offset, transaction_id, request_id, user_id, command_id, informees, tree";
const COMPLETION_COLUMNS: &str = "ledger_offset, user_id, command_id, act_as, submission_id, \
     status_code, message, transaction_id, record_time";
const DEDUP_COLUMNS: &str = "change_key, user_id, command_id, act_as, submission_id, state, \
     max_sequencing_time, dedup_period_us, transaction_id, ledger_offset, expires_at";

macro_rules! participant_store_impl {
    ($store:ty, $db:ty, $write_begin:literal, $read_begin:literal, $fence_check:path) => {
        #[async_trait]
        impl ParticipantStore for $store {
            fn fence(&self) -> FenceSlot {
                self.fence.clone()
            }

            async fn apply(&self, batch: &ParticipantBatch) -> Result<(), StoreError> {
                if batch.is_empty() {
                    return Ok(());
                }
                let mut tx = self.writer.begin_with($write_begin).await?;
                $fence_check(&mut *tx, &self.fence).await?;
                for key in &batch.dedup_deletes {
                    sqlx::query("DELETE FROM participant_dedup WHERE change_key = $1")
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                }
                let dedup: Vec<DedupRow> = batch.dedup_upserts.iter().map(rows::dedup_row).collect();
                for chunk in dedup.chunks(ROWS_PER_INSERT) {
                    let mut insert = QueryBuilder::<$db>::new(format!(
                        "INSERT INTO participant_dedup ({DEDUP_COLUMNS}) "
                    ));
                    insert.push_values(chunk, |mut row, d| {
                        row.push_bind(d.0.clone())
                            .push_bind(d.1.clone())
                            .push_bind(d.2.clone())
                            .push_bind(d.3.clone())
                            .push_bind(d.4.clone())
                            .push_bind(d.5.clone())
                            .push_bind(d.6)
                            .push_bind(d.7)
                            .push_bind(d.8.clone())
                            .push_bind(d.9)
                            .push_bind(d.10);
                    });
                    insert.push(
                        " ON CONFLICT (change_key) DO UPDATE SET user_id = excluded.user_id, \
                         command_id = excluded.command_id, act_as = excluded.act_as, \
                         submission_id = excluded.submission_id, state = excluded.state, \
                         max_sequencing_time = excluded.max_sequencing_time, \
                         dedup_period_us = excluded.dedup_period_us, \
                         transaction_id = excluded.transaction_id, \
                         ledger_offset = excluded.ledger_offset, expires_at = excluded.expires_at",
                    );
                    insert.build().execute(&mut *tx).await?;
                }
                let created: Vec<ContractRow> = batch
                    .created
                    .iter()
                    .map(rows::contract_row)
                    .collect::<Result<_, _>>()?;
                for chunk in created.chunks(ROWS_PER_INSERT) {
                    let mut insert = QueryBuilder::<$db>::new(format!(
                        "INSERT INTO participant_contracts ({CONTRACT_COLUMNS}) "
                    ));
                    insert.push_values(chunk, |mut row, c| {
                        row.push_bind(c.0.clone())
                            .push_bind(c.1.clone())
                            .push_bind(c.2.clone())
                            .push_bind(c.3.clone())
                            .push_bind(c.4.clone())
                            .push_bind(c.5)
                            .push_bind(c.6);
                    });
                    // A replayed batch after a crash between commit and checkpoint cannot
                    // happen (same transaction), but a contract id is derived from the seed,
                    // so a conflict would be a real bug: let it fail loudly.
                    insert.build().execute(&mut *tx).await?;
                }
                for (id, offset) in &batch.archived {
                    sqlx::query(
                        "UPDATE participant_contracts SET archived_offset = $1 \
                         WHERE contract_id = $2 AND archived_offset IS NULL",
                    )
                    .bind(rows::offset_column(*offset)?)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                }
                let transactions: Vec<TransactionRow> = batch
                    .transactions
                    .iter()
                    .map(rows::transaction_row)
                    .collect::<Result<_, _>>()?;
                for chunk in transactions.chunks(ROWS_PER_INSERT) {
                    let mut insert = QueryBuilder::<$db>::new(format!(
                        "INSERT INTO participant_transactions ({TRANSACTION_COLUMNS}) "
                    ));
                    insert.push_values(chunk, |mut row, t| {
                        row.push_bind(t.0)
                            .push_bind(t.1.clone())
                            .push_bind(t.2)
                            .push_bind(t.3.clone())
                            .push_bind(t.4.clone())
                            .push_bind(t.5.clone())
                            .push_bind(t.6.clone());
                    });
                    insert.build().execute(&mut *tx).await?;
                }
                let completions: Vec<rows::CompletionRow> = batch
                    .completions
                    .iter()
                    .map(rows::completion_row)
                    .collect::<Result<_, _>>()?;
                for chunk in completions.chunks(ROWS_PER_INSERT) {
                    let mut insert = QueryBuilder::<$db>::new(format!(
                        "INSERT INTO participant_completions ({COMPLETION_COLUMNS}) "
                    ));
                    insert.push_values(chunk, |mut row, c| {
                        row.push_bind(c.0)
                            .push_bind(c.1.clone())
                            .push_bind(c.2.clone())
                            .push_bind(c.3.clone())
                            .push_bind(c.4.clone())
                            .push_bind(c.5)
                            .push_bind(c.6.clone())
                            .push_bind(c.7.clone())
                            .push_bind(c.8);
                    });
                    insert.build().execute(&mut *tx).await?;
                }
                for request_id in &batch.pending_deletes {
                    sqlx::query("DELETE FROM participant_pending WHERE request_id = $1")
                        .bind(request_id.as_i64())
                        .execute(&mut *tx)
                        .await?;
                }
                for chunk in batch.pending_upserts.chunks(ROWS_PER_INSERT) {
                    let mut insert = QueryBuilder::<$db>::new(
                        "INSERT INTO participant_pending (request_id, record) ",
                    );
                    insert.push_values(chunk, |mut row, p| {
                        row.push_bind(p.request_id.as_i64()).push_bind(p.record.clone());
                    });
                    insert.push(" ON CONFLICT (request_id) DO UPDATE SET record = excluded.record");
                    insert.build().execute(&mut *tx).await?;
                }
                if let Some(checkpoint) = batch.checkpoint {
                    sqlx::query(
                        "UPDATE participant_state SET checkpoint = $1 \
                         WHERE id = 1 AND (checkpoint IS NULL OR checkpoint < $1)",
                    )
                    .bind(checkpoint.as_i64())
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some(end) = batch.ledger_end {
                    sqlx::query(
                        "UPDATE participant_state SET ledger_end = $1 \
                         WHERE id = 1 AND ledger_end < $1",
                    )
                    .bind(rows::offset_column(end)?)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn load(&self, now: Timestamp) -> Result<ParticipantSnapshot, StoreError> {
                let mut tx = self.readers.begin_with($read_begin).await?;
                let (checkpoint, ledger_end): (Option<i64>, i64) = sqlx::query_as(
                    "SELECT checkpoint, ledger_end FROM participant_state WHERE id = 1",
                )
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or((None, 0));
                let contracts: Vec<ContractRow> = sqlx::query_as(&format!(
                    "SELECT {CONTRACT_COLUMNS} FROM participant_contracts \
                     WHERE archived_offset IS NULL ORDER BY created_offset, contract_id"
                ))
                .fetch_all(&mut *tx)
                .await?;
                let pending: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT request_id, record FROM participant_pending ORDER BY request_id",
                )
                .fetch_all(&mut *tx)
                .await?;
                let dedup: Vec<DedupRow> = sqlx::query_as(&format!(
                    "SELECT {DEDUP_COLUMNS} FROM participant_dedup \
                     WHERE expires_at IS NULL OR expires_at > $1"
                ))
                .bind(now.as_i64())
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(ParticipantSnapshot {
                    checkpoint: checkpoint.map(Timestamp::from_i64),
                    ledger_end: rows::offset(ledger_end, "participant_state")?,
                    active_contracts: contracts
                        .into_iter()
                        .map(rows::stored_contract)
                        .collect::<Result<_, _>>()?,
                    pending: pending
                        .into_iter()
                        .map(|(id, record)| crate::participant::PendingRecord {
                            request_id: Timestamp::from_i64(id),
                            record,
                        })
                        .collect(),
                    dedup: dedup
                        .into_iter()
                        .map(rows::dedup_record)
                        .collect::<Result<_, _>>()?,
                })
            }

            async fn active_contracts(
                &self,
            ) -> Result<(LedgerOffset, Vec<StoredContract>), StoreError> {
                let mut tx = self.readers.begin_with($read_begin).await?;
                let end: Option<i64> =
                    sqlx::query_scalar("SELECT ledger_end FROM participant_state WHERE id = 1")
                        .fetch_optional(&mut *tx)
                        .await?;
                let contracts: Vec<ContractRow> = sqlx::query_as(&format!(
                    "SELECT {CONTRACT_COLUMNS} FROM participant_contracts \
                     WHERE archived_offset IS NULL ORDER BY created_offset, contract_id"
                ))
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok((
                    rows::offset(end.unwrap_or(0), "participant_state")?,
                    contracts
                        .into_iter()
                        .map(rows::stored_contract)
                        .collect::<Result<_, _>>()?,
                ))
            }

            async fn contract(
                &self,
                id: &ContractId,
            ) -> Result<Option<StoredContract>, StoreError> {
                let row: Option<ContractRow> = sqlx::query_as(&format!(
                    "SELECT {CONTRACT_COLUMNS} FROM participant_contracts WHERE contract_id = $1"
                ))
                .bind(id.as_str())
                .fetch_optional(&self.readers)
                .await?;
                row.map(rows::stored_contract).transpose()
            }

            async fn transactions_after(
                &self,
                after: LedgerOffset,
                limit: u32,
            ) -> Result<Vec<TransactionRecord>, StoreError> {
                let rows: Vec<TransactionRow> = sqlx::query_as(&format!(
                    "SELECT {TRANSACTION_COLUMNS} FROM participant_transactions \
                     WHERE ledger_offset > $1 ORDER BY ledger_offset LIMIT $2"
                ))
                .bind(rows::offset_column(after)?)
                .bind(i64::from(limit))
                .fetch_all(&self.readers)
                .await?;
                rows.into_iter().map(rows::transaction_record).collect()
            }

            async fn completions_after(
                &self,
                user: &UserId,
                after: LedgerOffset,
                limit: u32,
            ) -> Result<Vec<CompletionRecord>, StoreError> {
                let rows: Vec<rows::CompletionRow> = sqlx::query_as(&format!(
                    "SELECT {COMPLETION_COLUMNS} FROM participant_completions \
                     WHERE user_id = $1 AND ledger_offset > $2 ORDER BY ledger_offset LIMIT $3"
                ))
                .bind(user.as_str())
                .bind(rows::offset_column(after)?)
                .bind(i64::from(limit))
                .fetch_all(&self.readers)
                .await?;
                rows.into_iter().map(rows::completion_record).collect()
            }

            async fn dedup_entry(
                &self,
                change_key: &str,
            ) -> Result<Option<DedupRecord>, StoreError> {
                let row: Option<DedupRow> = sqlx::query_as(&format!(
                    "SELECT {DEDUP_COLUMNS} FROM participant_dedup WHERE change_key = $1"
                ))
                .bind(change_key)
                .fetch_optional(&self.readers)
                .await?;
                row.map(rows::dedup_record).transpose()
            }

            async fn prune_dedup(&self, expired_before: Timestamp) -> Result<u64, StoreError> {
                let mut tx = self.writer.begin_with($write_begin).await?;
                $fence_check(&mut *tx, &self.fence).await?;
                let pruned = sqlx::query(
                    "DELETE FROM participant_dedup \
                     WHERE expires_at IS NOT NULL AND expires_at < $1",
                )
                .bind(expired_before.as_i64())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(pruned)
            }

            async fn ledger_end(&self) -> Result<LedgerOffset, StoreError> {
                let end: Option<i64> =
                    sqlx::query_scalar("SELECT ledger_end FROM participant_state WHERE id = 1")
                        .fetch_optional(&self.readers)
                        .await?;
                rows::offset(end.unwrap_or(0), "participant_state")
            }
        }
    };
}

// IMMEDIATE takes SQLite's write lock up front, so a second process on the same file waits
// at BEGIN instead of failing at its first write.
participant_store_impl!(
    SqliteParticipantStore,
    Sqlite,
    "BEGIN IMMEDIATE",
    "BEGIN",
    fencing::check_sqlite
);
// REPEATABLE READ: the ledger end and the contracts of one read come from one snapshot.
participant_store_impl!(
    PgParticipantStore,
    Postgres,
    "BEGIN",
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    fencing::check_postgres
);
