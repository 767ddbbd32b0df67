//! The participant store on either backend. The schema and every statement are the same on
//! both (portable SQL, `$n` placeholders, which sqlx accepts on SQLite too), so one body serves
//! both and they cannot drift apart; only opening the database and the `BEGIN` statements
//! differ (see [`crate::pool::Dialect`]).
//!
//! As for the sequencer store, writes go through a pool of exactly one connection (on SQLite
//! the file's single writer; on PostgreSQL there is only one writer task anyway) and reads use
//! a separate pool, so streaming readers never queue behind a batch commit. Rows are decoded in
//! `rows`, so bad data is [`StoreError::Corrupt`], never a panic.

use async_trait::async_trait;
use meridian_core::{ContractId, LedgerOffset, Timestamp, UserId};

use super::rows::{self, ContractRow, DedupRow, TransactionRow};
use super::{
    CompletionRecord, DedupRecord, ForkRecord, ParticipantBatch, ParticipantSnapshot,
    ParticipantStore, PendingRecord, QuietPoint, RewindOutcome, StoredContract, TransactionRecord,
    QUIET_POINT_RETENTION_US,
};
use crate::fencing::FencedConnection;
use crate::pool::{
    self, on_backend, CommitScript, PoolSettings, PostgresLayout, Script, StorePool,
};
use crate::{FenceSlot, StorageConfig, StoreError};

/// Rows per multi-row statement (an `INSERT`, or a list of keys to delete or archive): at up
/// to eleven columns well below both backends' limits on bound parameters.
const ROWS_PER_STATEMENT: usize = 400;
/// Keys per read of [`ParticipantStore::dedup_entries`], all in one JSON parameter.
const DEDUP_KEYS_PER_READ: usize = 1_000;
const READER_CONNECTIONS: u32 = 4;

#[derive(Debug, Clone)]
pub struct SqlParticipantStore {
    pool: StorePool,
    /// Checked at the start of every write transaction; shared by clones of this store.
    fence: FenceSlot,
}

const POOL: PoolSettings = PoolSettings {
    store: "participant",
    sqlite_foreign_keys: false,
    sqlite_migrate_attempts: pool::MIGRATE_ONCE,
    sqlite_readers: Some(READER_CONNECTIONS),
    postgres: PostgresLayout::MigratingWriter,
};

impl SqlParticipantStore {
    /// Opens (and migrates) the database the config names.
    pub async fn open_config(config: &StorageConfig) -> Result<Self, StoreError> {
        let pool = StorePool::open(config, &POOL).await?;
        on_backend!(&pool, |writer, _, _| {
            sqlx::query(
                "INSERT INTO participant_state (id, checkpoint, ledger_end) VALUES (1, NULL, 0) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .execute(writer)
            .await?;
        });
        Ok(Self {
            pool,
            fence: FenceSlot::default(),
        })
    }
}

const CONTRACT_COLUMNS: &str =
    "contract_id, template, payload, signatories, observers, created_offset, archived_offset";
const TRANSACTION_COLUMNS: &str =
    "ledger_offset, transaction_id, request_id, user_id, command_id, informees, tree, committed_at";
const COMPLETION_COLUMNS: &str = "ledger_offset, user_id, command_id, act_as, submission_id, \
     status_code, message, transaction_id, record_time";
/// Between two entries of [`ParticipantStore::committed_dedup_keys`]' joined page.
const KEY_PAGE_SEPARATOR: &str = "\n";
const DEDUP_COLUMNS: &str = "change_key, user_id, command_id, act_as, submission_id, state, \
     max_sequencing_time, dedup_period_us, transaction_id, ledger_offset, expires_at";

/// The multi-row inserts of [`ParticipantStore::apply`], added to its script; the only
/// statements whose binds need the backend's type: one body, generated for both backends below.
trait InsertRows<'args> {
    fn upsert_dedup(&mut self, rows: &'args [DedupRow]);
    fn insert_contracts(&mut self, rows: &'args [ContractRow]);
    fn insert_transactions(&mut self, rows: &'args [TransactionRow]);
    fn insert_completions(&mut self, rows: &'args [rows::CompletionRow]);
    fn upsert_pending(&mut self, rows: &'args [PendingRecord]);
}

macro_rules! insert_rows {
    ($db:ty) => {
        impl<'args> InsertRows<'args> for Script<'args, $db> {
            fn upsert_dedup(&mut self, rows: &'args [DedupRow]) {
                let head = format!("INSERT INTO participant_dedup ({DEDUP_COLUMNS}) ");
                let upsert = " ON CONFLICT (change_key) DO UPDATE SET user_id = excluded.user_id, \
                     command_id = excluded.command_id, act_as = excluded.act_as, \
                     submission_id = excluded.submission_id, state = excluded.state, \
                     max_sequencing_time = excluded.max_sequencing_time, \
                     dedup_period_us = excluded.dedup_period_us, \
                     transaction_id = excluded.transaction_id, \
                     ledger_offset = excluded.ledger_offset, expires_at = excluded.expires_at";
                self.chunked( &head, rows, ROWS_PER_STATEMENT, |mut row, d| {
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
}, upsert);
            }

            fn insert_contracts(&mut self, rows: &'args [ContractRow]) {
                let head = format!("INSERT INTO participant_contracts ({CONTRACT_COLUMNS}) ");
                // A replayed batch after a crash between commit and checkpoint cannot happen
                // (same transaction), but a contract id is derived from the seed, so a
                // conflict would be a real bug: no ON CONFLICT, let it fail loudly.
                self.chunked( &head, rows, ROWS_PER_STATEMENT, |mut row, c| {
                    row.push_bind(c.0.clone())
                        .push_bind(c.1.clone())
                        .push_bind(c.2.clone())
                        .push_bind(c.3.clone())
                        .push_bind(c.4.clone())
                        .push_bind(c.5)
                        .push_bind(c.6);
}, "");
            }

            fn insert_transactions(&mut self, rows: &'args [TransactionRow]) {
                let head = format!("INSERT INTO participant_transactions ({TRANSACTION_COLUMNS}) ");
                self.chunked( &head, rows, ROWS_PER_STATEMENT, |mut row, t| {
                    row.push_bind(t.0)
                        .push_bind(t.1.clone())
                        .push_bind(t.2)
                        .push_bind(t.3.clone())
                        .push_bind(t.4.clone())
                        .push_bind(t.5.clone())
                        .push_bind(t.6.clone())
                        .push_bind(t.7);
}, "");
            }

            fn insert_completions(&mut self, rows: &'args [rows::CompletionRow]) {
                let head = format!("INSERT INTO participant_completions ({COMPLETION_COLUMNS}) ");
                self.chunked( &head, rows, ROWS_PER_STATEMENT, |mut row, c| {
                        row.push_bind(c.0)
                            .push_bind(c.1.clone())
                            .push_bind(c.2.clone())
                            .push_bind(c.3.clone())
                            .push_bind(c.4.clone())
                            .push_bind(c.5)
                            .push_bind(c.6.clone())
                            .push_bind(c.7.clone())
                            .push_bind(c.8);
}, "");
            }

            fn upsert_pending(&mut self, rows: &'args [PendingRecord]) {
                let head = "INSERT INTO participant_pending (request_id, record) ";
                let upsert = " ON CONFLICT (request_id) DO UPDATE SET record = excluded.record";
                self.chunked( head, rows, ROWS_PER_STATEMENT, |mut row, p| {
                    row.push_bind(p.request_id.as_i64())
                        .push_bind(p.record.clone());
}, upsert);
            }
        }
    };
}

insert_rows!(::sqlx::Sqlite);
insert_rows!(::sqlx::Postgres);

/// A batch's rows, encoded before the write transaction begins.
struct EncodedBatch {
    dedup: Vec<DedupRow>,
    created: Vec<ContractRow>,
    archived: Vec<(i64, String)>,
    transactions: Vec<TransactionRow>,
    completions: Vec<rows::CompletionRow>,
    ledger_end: Option<i64>,
}

impl EncodedBatch {
    fn new(batch: &ParticipantBatch) -> Result<Self, StoreError> {
        Ok(Self {
            dedup: batch.dedup_upserts.iter().map(rows::dedup_row).collect(),
            created: encode_all(&batch.created, rows::contract_row)?,
            archived: encode_all(&batch.archived, |(id, offset)| {
                Ok((rows::offset_column(*offset)?, id.as_str().to_owned()))
            })?,
            transactions: encode_all(&batch.transactions, rows::transaction_row)?,
            completions: encode_all(&batch.completions, rows::completion_row)?,
            ledger_end: batch.ledger_end.map(rows::offset_column).transpose()?,
        })
    }
}

/// Encodes every item, failing on the first that does not encode.
fn encode_all<T, Row>(
    items: &[T],
    encode: impl Fn(&T) -> Result<Row, StoreError>,
) -> Result<Vec<Row>, StoreError> {
    items.iter().map(encode).collect()
}

/// One contract by its id: the primary key.
fn contract_by_id() -> String {
    format!("SELECT {CONTRACT_COLUMNS} FROM participant_contracts WHERE contract_id = $1")
}

/// A page of transactions after offset $1, at most $2: a range scan of the primary key.
fn transactions_page() -> String {
    format!(
        "SELECT {TRANSACTION_COLUMNS} FROM participant_transactions \
         WHERE ledger_offset > $1 ORDER BY ledger_offset LIMIT $2"
    )
}

/// A page of user $1's completions after offset $2, at most $3: a range scan of the
/// (user_id, ledger_offset) index.
fn completions_page() -> String {
    format!(
        "SELECT {COMPLETION_COLUMNS} FROM participant_completions \
         WHERE user_id = $1 AND ledger_offset > $2 ORDER BY ledger_offset LIMIT $3"
    )
}

/// The deduplication entries of the change keys in the JSON array $1: one primary-key lookup
/// per key.
fn dedup_entries_of(dialect: &pool::Dialect) -> String {
    format!(
        "SELECT {DEDUP_COLUMNS} FROM participant_dedup WHERE change_key {}",
        dialect.in_json_text_elements
    )
}

fn active_contracts_query() -> String {
    format!(
        "SELECT {CONTRACT_COLUMNS} FROM participant_contracts \
         WHERE archived_offset IS NULL ORDER BY created_offset, contract_id"
    )
}

#[async_trait]
impl ParticipantStore for SqlParticipantStore {
    fn fence(&self) -> FenceSlot {
        self.fence.clone()
    }

    async fn apply(&self, batch: &ParticipantBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        on_backend!(&self.pool, |writer, _, dialect| {
            let encoded = EncodedBatch::new(batch)?;
            let mut script = Script::<Db>::transaction(dialect);
            script.chunked(
                "DELETE FROM participant_dedup WHERE change_key IN (",
                &batch.dedup_deletes,
                ROWS_PER_STATEMENT,
                |mut row, key| {
                    row.push_bind(key.as_str());
                },
                ")",
            );
            script.upsert_dedup(&encoded.dedup);
            script.insert_contracts(&encoded.created);
            script.chunked(
                "UPDATE participant_contracts SET archived_offset = archive.column1 FROM (",
                &encoded.archived,
                ROWS_PER_STATEMENT,
                |mut row, (offset, id)| {
                    row.push_bind(*offset).push_bind(id.as_str());
                },
                ") AS archive WHERE participant_contracts.contract_id = archive.column2 \
                 AND participant_contracts.archived_offset IS NULL",
            );
            script.insert_transactions(&encoded.transactions);
            script.insert_completions(&encoded.completions);
            script.chunked(
                "DELETE FROM participant_pending WHERE request_id IN (",
                &batch.pending_deletes,
                ROWS_PER_STATEMENT,
                |mut row, request_id| {
                    row.push_bind(request_id.as_i64());
                },
                ")",
            );
            script.upsert_pending(&batch.pending_upserts);
            if let Some(checkpoint) = batch.checkpoint {
                script
                    .statement("UPDATE participant_state SET checkpoint = ")
                    .push_bind(checkpoint.as_i64())
                    .push(" WHERE id = 1 AND (checkpoint IS NULL OR checkpoint < ")
                    .push_bind(checkpoint.as_i64())
                    .push(")");
            }
            if let Some(end) = encoded.ledger_end {
                script
                    .statement("UPDATE participant_state SET ledger_end = ")
                    .push_bind(end)
                    .push(" WHERE id = 1 AND ledger_end < ")
                    .push_bind(end);
            }
            if let (true, Some(checkpoint)) = (batch.quiet, batch.checkpoint) {
                // The ledger end just written is the one at this boundary.
                script
                    .statement(
                        "INSERT INTO participant_quiet_points (checkpoint, ledger_end) SELECT ",
                    )
                    .push_bind(checkpoint.as_i64())
                    .push(
                        ", ledger_end FROM participant_state WHERE id = 1 \
                         ON CONFLICT (checkpoint) DO NOTHING",
                    );
                script
                    .statement("DELETE FROM participant_quiet_points WHERE checkpoint < ")
                    .push_bind(
                        checkpoint
                            .as_i64()
                            .saturating_sub(QUIET_POINT_RETENTION_US as i64),
                    );
            }
            writer.commit_script(&self.fence, script).await?;
        });
        Ok(())
    }

    async fn applied(&self, batch: &ParticipantBatch) -> Result<bool, StoreError> {
        // One row stands for the whole batch (it commits atomically); the submission id or
        // transaction id tells this batch's row from another one at the same offset.
        let (probe, offset, expected) = if let Some(first) = batch.transactions.first() {
            (
                "SELECT transaction_id FROM participant_transactions WHERE ledger_offset = $1",
                first.offset,
                first.transaction_id.as_str(),
            )
        } else if let Some(first) = batch.completions.first() {
            (
                "SELECT submission_id FROM participant_completions WHERE ledger_offset = $1",
                first.offset,
                first.submission_id.as_str(),
            )
        } else {
            return Ok(false);
        };
        let offset = rows::offset_column(offset)?;
        let found: Option<String> = on_backend!(&self.pool, |writer, _, dialect| {
            let mut tx = crate::pool::begin(writer, dialect.write_begin).await?;
            tx.check_fence(&self.fence).await?;
            let found = sqlx::query_scalar(probe)
                .bind(offset)
                .fetch_optional(&mut *tx)
                .await?;
            tx.rollback().await?;
            found
        });
        Ok(found.as_deref() == Some(expected))
    }

    async fn load(&self) -> Result<ParticipantSnapshot, StoreError> {
        let dedup_query = format!(
            "SELECT {DEDUP_COLUMNS} FROM participant_dedup WHERE state = '{}'",
            rows::IN_FLIGHT
        );
        let (state, contracts, pending, dedup) = on_backend!(&self.pool, |_, readers, dialect| {
            let mut tx = crate::pool::begin(readers, dialect.snapshot_begin).await?;
            let state: Option<(Option<i64>, i64)> =
                sqlx::query_as("SELECT checkpoint, ledger_end FROM participant_state WHERE id = 1")
                    .fetch_optional(&mut *tx)
                    .await?;
            let contracts: Vec<ContractRow> = sqlx::query_as(&active_contracts_query())
                .fetch_all(&mut *tx)
                .await?;
            let pending: Vec<(i64, String)> = sqlx::query_as(
                "SELECT request_id, record FROM participant_pending ORDER BY request_id",
            )
            .fetch_all(&mut *tx)
            .await?;
            let dedup: Vec<DedupRow> = sqlx::query_as(&dedup_query).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            (state, contracts, pending, dedup)
        });
        let (checkpoint, ledger_end) = state.unwrap_or((None, 0));
        Ok(ParticipantSnapshot {
            checkpoint: checkpoint.map(Timestamp::from_i64),
            ledger_end: rows::offset(ledger_end, "participant_state")?,
            active_contracts: contracts
                .into_iter()
                .map(rows::stored_contract)
                .collect::<Result<_, _>>()?,
            pending: pending
                .into_iter()
                .map(|(id, record)| PendingRecord {
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

    async fn active_contracts(&self) -> Result<(LedgerOffset, Vec<StoredContract>), StoreError> {
        let (end, contracts) = on_backend!(&self.pool, |_, readers, dialect| {
            let mut tx = crate::pool::begin(readers, dialect.snapshot_begin).await?;
            let end: Option<i64> =
                sqlx::query_scalar("SELECT ledger_end FROM participant_state WHERE id = 1")
                    .fetch_optional(&mut *tx)
                    .await?;
            let contracts: Vec<ContractRow> = sqlx::query_as(&active_contracts_query())
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            (end, contracts)
        });
        Ok((
            rows::offset(end.unwrap_or(0), "participant_state")?,
            contracts
                .into_iter()
                .map(rows::stored_contract)
                .collect::<Result<_, _>>()?,
        ))
    }

    async fn contract(&self, id: &ContractId) -> Result<Option<StoredContract>, StoreError> {
        let row: Option<ContractRow> = self
            .pool
            .read_optional(&contract_by_id(), id.as_str())
            .await?;
        row.map(rows::stored_contract).transpose()
    }

    async fn transactions_after(
        &self,
        after: LedgerOffset,
        limit: u32,
    ) -> Result<Vec<TransactionRecord>, StoreError> {
        let select = transactions_page();
        let after = rows::offset_column(after)?;
        let rows: Vec<TransactionRow> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_as(&select)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(readers)
                .await?
        });
        rows.into_iter().map(rows::transaction_record).collect()
    }

    async fn completions_after(
        &self,
        user: &UserId,
        after: LedgerOffset,
        limit: u32,
    ) -> Result<Vec<CompletionRecord>, StoreError> {
        let select = completions_page();
        let after = rows::offset_column(after)?;
        let rows: Vec<rows::CompletionRow> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_as(&select)
                .bind(user.as_str())
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(readers)
                .await?
        });
        rows.into_iter().map(rows::completion_record).collect()
    }

    async fn dedup_entries(&self, change_keys: &[String]) -> Result<Vec<DedupRecord>, StoreError> {
        let mut found = Vec::new();
        for chunk in change_keys.chunks(DEDUP_KEYS_PER_READ) {
            let keys = serde_json::Value::from(chunk).to_string();
            let rows: Vec<DedupRow> = on_backend!(&self.pool, |_, readers, dialect| {
                sqlx::query_as(&dedup_entries_of(dialect))
                    .bind(&keys)
                    .fetch_all(readers)
                    .await?
            });
            for row in rows {
                found.push(rows::dedup_record(row)?);
            }
        }
        Ok(found)
    }

    async fn committed_dedup_keys(
        &self,
        now: Timestamp,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Timestamp)>, StoreError> {
        // One row per page, the page's entries joined into one text: read row by row, a
        // restart spent about 5 µs on each of the period's keys in the driver (a second per
        // 200,000, which a promoted replica adds to its takeover). `$2 IS NULL` would leave
        // PostgreSQL unable to infer the parameter's type; the empty text sorts before every
        // key instead. A change key is the engine's hex digest: no separator in it.
        let page = format!(
            "SELECT string_agg(CAST(expires_at AS TEXT) || ' ' || change_key, $4 \
                 ORDER BY change_key) \
             FROM (SELECT change_key, expires_at FROM participant_dedup \
                   WHERE state = '{}' AND expires_at > $1 AND change_key > $2 \
                   ORDER BY change_key LIMIT $3) AS page",
            rows::COMMITTED
        );
        let joined: Option<String> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_scalar(&page)
                .bind(now.as_i64())
                .bind(after.unwrap_or(""))
                .bind(i64::from(limit))
                .bind(KEY_PAGE_SEPARATOR)
                .fetch_one(readers)
                .await?
        });
        let Some(joined) = joined else {
            return Ok(Vec::new());
        };
        joined
            .split(KEY_PAGE_SEPARATOR)
            .map(|entry| {
                let parsed = entry.split_once(' ').and_then(|(expires_at, key)| {
                    let expires_at = expires_at.parse::<i64>().ok()?;
                    Some((key.to_owned(), Timestamp::from_i64(expires_at)))
                });
                parsed.ok_or_else(|| {
                    StoreError::corrupt(
                        "participant_dedup",
                        format!("a committed entry reads as {entry:?}"),
                    )
                })
            })
            .collect()
    }

    async fn prune_dedup(&self, expired_before: Timestamp) -> Result<u64, StoreError> {
        let prune =
            "DELETE FROM participant_dedup WHERE expires_at IS NOT NULL AND expires_at < $1";
        self.pool
            .fenced_execute(&self.fence, prune, expired_before.as_i64())
            .await
    }

    async fn record_fork(&self, fork: &ForkRecord) -> Result<(), StoreError> {
        let (known, point) = match fork.fork_point {
            Some(point) => (1_i32, point.map(Timestamp::as_i64)),
            None => (0_i32, None),
        };
        on_backend!(&self.pool, |writer, _, dialect| {
            let mut tx = crate::pool::begin(writer, dialect.write_begin).await?;
            tx.check_fence(&self.fence).await?;
            sqlx::query(
                "INSERT INTO participant_fork \
                 (id, last_processed, fork_point, fork_point_known, detected_at, reason) \
                 VALUES (1, $1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET last_processed = excluded.last_processed, \
                 fork_point = excluded.fork_point, fork_point_known = excluded.fork_point_known, \
                 detected_at = excluded.detected_at, reason = excluded.reason",
            )
            .bind(fork.last_processed.map(Timestamp::as_i64))
            .bind(point)
            .bind(known)
            .bind(fork.detected_at.as_i64())
            .bind(&fork.reason)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    async fn fork(&self) -> Result<Option<ForkRecord>, StoreError> {
        type Row = (Option<i64>, Option<i64>, i32, i64, String);
        let row: Option<Row> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_as(
                "SELECT last_processed, fork_point, fork_point_known, detected_at, reason \
                 FROM participant_fork WHERE id = 1",
            )
            .fetch_optional(readers)
            .await?
        });
        Ok(
            row.map(|(last, point, known, detected_at, reason)| ForkRecord {
                last_processed: last.map(Timestamp::from_i64),
                fork_point: (known != 0).then(|| point.map(Timestamp::from_i64)),
                detected_at: Timestamp::from_i64(detected_at),
                reason,
            }),
        )
    }

    async fn transactions_committed_after(
        &self,
        after: Option<Timestamp>,
        limit: u32,
    ) -> Result<Vec<TransactionRecord>, StoreError> {
        let select = format!(
            "SELECT {TRANSACTION_COLUMNS} FROM participant_transactions \
             WHERE coalesce(committed_at, request_id) > $1 ORDER BY ledger_offset LIMIT $2"
        );
        let rows: Vec<TransactionRow> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_as(&select)
                .bind(after.map_or(-1, Timestamp::as_i64))
                .bind(i64::from(limit))
                .fetch_all(readers)
                .await?
        });
        rows.into_iter().map(rows::transaction_record).collect()
    }

    async fn quiet_point_at_or_before(
        &self,
        at: Timestamp,
    ) -> Result<Option<QuietPoint>, StoreError> {
        let row: Option<(i64, i64)> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_as(
                "SELECT checkpoint, ledger_end FROM participant_quiet_points \
                 WHERE checkpoint <= $1 ORDER BY checkpoint DESC LIMIT 1",
            )
            .bind(at.as_i64())
            .fetch_optional(readers)
            .await?
        });
        row.map(|(checkpoint, end)| {
            Ok(QuietPoint {
                checkpoint: Timestamp::from_i64(checkpoint),
                ledger_end: rows::offset(end, "participant_quiet_points")?,
            })
        })
        .transpose()
    }

    async fn rewind(
        &self,
        to: QuietPoint,
        fork_point: Option<Timestamp>,
    ) -> Result<RewindOutcome, StoreError> {
        let end = rows::offset_column(to.ledger_end)?;
        let fork_point = fork_point.map_or(-1, Timestamp::as_i64);
        let mut outcome = RewindOutcome::default();
        // One statement of the rewind: its binds in order, the rows it changed.
        macro_rules! run {
            ($tx:ident, $sql:expr $(, $bind:expr)*) => {
                sqlx::query($sql)$(.bind($bind))*.execute(&mut *$tx).await?.rows_affected()
            };
        }
        on_backend!(&self.pool, |writer, _, dialect| {
            let mut tx = crate::pool::begin(writer, dialect.write_begin).await?;
            outcome.contracts_removed = run!(
                tx,
                "DELETE FROM participant_contracts WHERE created_offset > $1",
                end
            );
            outcome.contracts_reactivated = run!(tx, "UPDATE participant_contracts SET archived_offset = NULL WHERE archived_offset > $1", end);
            // Own commands committed after the quiet point: a request the new history lacks
            // can never complete, so its change id is freed for the resubmission; one it
            // holds is in flight again, and the replay decides it as the new history does.
            outcome.submissions_forgotten = run!(
                tx,
                "DELETE FROM participant_dedup WHERE ledger_offset > $1 AND transaction_id IN \
                 (SELECT transaction_id FROM participant_transactions \
                  WHERE ledger_offset > $1 AND request_id > $2)",
                end,
                fork_point
            );
            outcome.submissions_reopened = run!(
                tx,
                "UPDATE participant_dedup SET state = 'in_flight', transaction_id = NULL, \
                 ledger_offset = NULL, expires_at = NULL WHERE ledger_offset > $1",
                end
            );
            outcome.transactions_removed = run!(
                tx,
                "DELETE FROM participant_transactions WHERE ledger_offset > $1",
                end
            );
            outcome.completions_removed = run!(
                tx,
                "DELETE FROM participant_completions WHERE ledger_offset > $1",
                end
            );
            // Nothing was pending at the quiet point: whatever is, was validated after it.
            outcome.pending_removed = run!(tx, "DELETE FROM participant_pending");
            run!(
                tx,
                "UPDATE participant_state SET checkpoint = $1, ledger_end = $2 WHERE id = 1",
                to.checkpoint.as_i64(),
                end
            );
            run!(
                tx,
                "DELETE FROM participant_quiet_points WHERE checkpoint > $1",
                to.checkpoint.as_i64()
            );
            run!(tx, "DELETE FROM participant_fork");
            tx.commit().await?;
        });
        Ok(outcome)
    }

    async fn ledger_end(&self) -> Result<LedgerOffset, StoreError> {
        let end: Option<i64> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_scalar("SELECT ledger_end FROM participant_state WHERE id = 1")
                .fetch_optional(readers)
                .await?
        });
        rows::offset(end.unwrap_or(0), "participant_state")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generic_plans::{assert_indexed, migrated_database, Read};

    /// The reads a serving participant makes (a contract, a page of its transactions or of a
    /// user's completions, the entries of commands its memory forgot), as PostgreSQL plans them
    /// once a connection's plan cache settles on a generic plan on tables that were never
    /// analysed: each must use an index, never read a table whole. See
    /// [`crate::generic_plans`] for why.
    #[tokio::test]
    async fn serving_reads_use_the_indexes_in_generic_plans_without_statistics() {
        let mut connection = migrated_database("participant_generic_plans", |config| async move {
            SqlParticipantStore::open_config(&config).await
        })
        .await;
        // Tables of a few thousand rows, as after a minute of load, for three users.
        sqlx::raw_sql(
            "INSERT INTO participant_contracts (contract_id, template, payload, signatories, \
                 observers, created_offset, archived_offset) \
                 SELECT md5(i::text), 't', '{}', '[]', '[]', i, NULL \
                 FROM generate_series(1, 5000) AS i; \
             INSERT INTO participant_transactions (ledger_offset, transaction_id, request_id, \
                 informees, tree) \
                 SELECT i, 'tx' || i, i, '[]', '{}' FROM generate_series(1, 5000) AS i; \
             INSERT INTO participant_completions (ledger_offset, user_id, command_id, act_as, \
                 submission_id, status_code, message, record_time) \
                 SELECT i, 'user' || i % 3, 'c' || i, '[]', 's' || i, 0, '', i \
                 FROM generate_series(1, 5000) AS i; \
             INSERT INTO participant_dedup (change_key, user_id, command_id, act_as, \
                 submission_id, state, max_sequencing_time, dedup_period_us) \
                 SELECT md5(i::text), 'u', 'c' || i, '[]', 's' || i, 'committed', i, 0 \
                 FROM generate_series(1, 5000) AS i",
        )
        .execute(&mut connection)
        .await
        .expect("fill");
        let reads = [
            Read {
                name: "contract",
                parameter_types: "text",
                sql: contract_by_id(),
                arguments: "'a'",
            },
            Read {
                name: "transactions",
                parameter_types: "bigint, bigint",
                sql: transactions_page(),
                arguments: "1, 2",
            },
            Read {
                name: "completions",
                parameter_types: "text, bigint, bigint",
                sql: completions_page(),
                arguments: "'user1', 1, 2",
            },
            Read {
                name: "dedup_entries",
                parameter_types: "text",
                sql: dedup_entries_of(&pool::POSTGRES),
                arguments: "'[\"a\", \"b\"]'",
            },
        ];
        assert_indexed(
            &mut connection,
            &reads,
            &[
                "participant_contracts",
                "participant_transactions",
                "participant_completions",
                "participant_dedup",
            ],
        )
        .await;
    }
}
