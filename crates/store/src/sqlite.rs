//! The sequencer store on an SQLite file, the embedded default. SQLite allows one writer at a
//! time, so all writes go through a pool of exactly one connection (no lock contention inside
//! the process, and `BEGIN IMMEDIATE` takes the file's write lock up front in case another
//! process shares the file), while reads use a separate pool and, thanks to WAL, never wait
//! behind a write. Throughput comes from multi-row inserts: one `write_events` call is a handful
//! of statements whatever its size.
//!
//! Several sequencer processes on one machine may share the file (active-active on SQLite):
//! the write lock serializes their transactions, the same way the row locks do on PostgreSQL.
//! One limit has no SQLite remedy: a process *paused* (SIGSTOP) inside a write transaction
//! keeps the file's write lock, so every other instance waits (up to the busy timeout,
//! `pools::SQLITE_BUSY_TIMEOUT`, then errors) until it resumes or dies. A crash releases the
//! lock at once.

use std::collections::HashSet;
use std::path::Path;

use async_trait::async_trait;
use meridian_core::crypto::PublicKey;
use meridian_core::{InstanceIndex, MemberId, Timestamp};
use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Sqlite};

use crate::common::{self, ClaimedRow, WritePlan};
use crate::sequencer::{
    BackendStatus, Incarnation, InstanceClaim, InstanceStart, InstanceState, MemberRecord,
    MemberSeq, NewEvent, SequencerStore, StoredEvent, WriteResult,
};
use crate::{pools, StoreError};

/// Rows per multi-row `INSERT`. At five columns that is 2,500 bound parameters, far below
/// SQLite's limit, and large enough that per-statement overhead no longer matters.
const ROWS_PER_INSERT: usize = 500;

/// Reads run in parallel with the writer and with each other.
const READER_CONNECTIONS: u32 = 4;

#[derive(Debug, Clone)]
pub struct SqliteSequencerStore {
    writer: SqlitePool,
    readers: SqlitePool,
}

impl SqliteSequencerStore {
    /// Opens the database file, creating and migrating it if needed.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = pools::sqlite_options(path).foreign_keys(true);
        let writer = pools::open_sqlite_writer(&options, MIGRATE_ATTEMPTS).await?;
        let readers = pools::open_sqlite_readers(options, READER_CONNECTIONS).await?;
        Ok(Self { writer, readers })
    }
}

/// Migrating attempts before giving up. Several sequencer processes may open a fresh shared
/// file at the same moment (active-active on SQLite), and SQLite has no migration lock.
const MIGRATE_ATTEMPTS: u32 = 5;

/// Reads a member on `pool`: the writer when the read must see that connection's own writes.
async fn member_on(pool: &SqlitePool, id: &MemberId) -> Result<Option<MemberRecord>, StoreError> {
    let row: Option<MemberRow> =
        sqlx::query_as("SELECT seq, id, public_key, registered_at FROM members WHERE id = ?1")
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?;
    row.map(|(seq, id, key, at)| common::member_record(seq, id, &key, at))
        .transpose()
}

type MemberRow = (i64, String, Vec<u8>, i64);

/// The row's incarnation, `None` if the instance has no row.
async fn current_incarnation(
    connection: &mut sqlx::SqliteConnection,
    idx: i32,
) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT incarnation FROM sequencer_instances WHERE idx = ?1")
            .bind(idx)
            .fetch_optional(connection)
            .await?,
    )
}

#[async_trait]
impl SequencerStore for SqliteSequencerStore {
    async fn register_member(
        &self,
        id: &MemberId,
        public_key: &PublicKey,
        now: Timestamp,
    ) -> Result<(MemberRecord, bool), StoreError> {
        let key = public_key.to_bytes();
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO members (id, public_key, registered_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (id) DO NOTHING RETURNING seq",
        )
        .bind(id.as_str())
        .bind(&key[..])
        .bind(now.as_i64())
        .fetch_optional(&self.writer)
        .await?;
        let existing = match inserted {
            Some(_) => None,
            None => member_on(&self.writer, id).await?,
        };
        common::registration_outcome(id, public_key, now, inserted, existing)
    }

    async fn members(&self) -> Result<Vec<MemberRecord>, StoreError> {
        let rows: Vec<MemberRow> =
            sqlx::query_as("SELECT seq, id, public_key, registered_at FROM members ORDER BY seq")
                .fetch_all(&self.readers)
                .await?;
        rows.into_iter()
            .map(|(seq, id, key, at)| common::member_record(seq, id, &key, at))
            .collect()
    }

    async fn member(&self, id: &MemberId) -> Result<Option<MemberRecord>, StoreError> {
        member_on(&self.readers, id).await
    }

    async fn start_instance(
        &self,
        index: InstanceIndex,
        not_before: Timestamp,
        claim: InstanceClaim,
    ) -> Result<InstanceStart, StoreError> {
        let idx = common::instance_column(index)?;
        // IMMEDIATE: no other writer, in this process or another, runs until we commit. That
        // is the lock that makes claiming an index (check, bump the incarnation) atomic.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO sequencer_instances (idx, watermark, online) VALUES (?1, 0, 0) \
             ON CONFLICT (idx) DO NOTHING",
        )
        .bind(idx)
        .execute(&mut *tx)
        .await?;
        let (own, online, incarnation): (i64, bool, i64) = sqlx::query_as(
            "SELECT watermark, online, incarnation FROM sequencer_instances WHERE idx = ?1",
        )
        .bind(idx)
        .fetch_one(&mut *tx)
        .await?;
        let row = ClaimedRow {
            watermark: own,
            online,
            incarnation,
        };
        if let Err(refusal) = common::check_claim(index, row, claim) {
            tx.rollback().await?;
            return Err(refusal);
        }

        // The zombie's message ids must go too, or a retry of its submissions would be
        // reported as a duplicate of an event that no longer exists.
        sqlx::query(
            "DELETE FROM event_recipients \
             WHERE member IN (SELECT seq FROM members) \
               AND ts IN (SELECT ts FROM events WHERE instance = ?1 AND ts > ?2)",
        )
        .bind(idx)
        .bind(own)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM message_ids WHERE (sender, message_id, ts) IN \
             (SELECT sender, message_id, ts FROM events WHERE instance = ?1 AND ts > ?2)",
        )
        .bind(idx)
        .bind(own)
        .execute(&mut *tx)
        .await?;
        let deleted = sqlx::query("DELETE FROM events WHERE instance = ?1 AND ts > ?2")
            .bind(idx)
            .bind(own)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted > 0 {
            tracing::warn!(instance = %index, deleted, "deleted events written above the instance's watermark");
        }

        let highest: i64 = sqlx::query_scalar("SELECT max(watermark) FROM sequencer_instances")
            .fetch_one(&mut *tx)
            .await?;
        let watermark = Timestamp::from_i64(highest).max(not_before);
        let incarnation = Incarnation(incarnation.saturating_add(1));
        sqlx::query(
            "UPDATE sequencer_instances SET watermark = ?2, online = 1, incarnation = ?3 \
             WHERE idx = ?1",
        )
        .bind(idx)
        .bind(watermark.as_i64())
        .bind(incarnation.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(InstanceStart {
            incarnation,
            watermark,
        })
    }

    async fn write_events(
        &self,
        index: InstanceIndex,
        incarnation: Incarnation,
        events: &[NewEvent],
        watermark: Timestamp,
    ) -> Result<Vec<WriteResult>, StoreError> {
        let idx = common::instance_column(index)?;
        let watermark = common::effective_watermark(events, watermark);
        let plan = WritePlan::new(events);

        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let advanced = sqlx::query(
            "UPDATE sequencer_instances SET watermark = max(watermark, ?1) \
             WHERE idx = ?2 AND online AND incarnation = ?3",
        )
        .bind(watermark.as_i64())
        .bind(idx)
        .bind(incarnation.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if advanced == 0 {
            let current = current_incarnation(&mut tx, idx).await?;
            tx.rollback().await?;
            return Err(common::refused_write(index, incarnation, current));
        }

        let mut verdicts = vec![WriteResult::Sequenced; plan.firsts.len()];
        for (chunk_no, chunk) in plan.firsts.chunks(ROWS_PER_INSERT).enumerate() {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO message_ids (sender, message_id, ts, expires_at) ",
            );
            insert.push_values(chunk, |mut row, &i| {
                let event = &events[i];
                row.push_bind(event.sender.0)
                    .push_bind(event.message_id.as_str())
                    .push_bind(event.timestamp.as_i64())
                    .push_bind(event.max_sequencing_time.as_i64());
            });
            insert.push(" ON CONFLICT DO NOTHING RETURNING sender, message_id");
            let inserted: Vec<(i64, String)> = insert.build_query_as().fetch_all(&mut *tx).await?;
            if inserted.len() == chunk.len() {
                continue;
            }
            // Duplicates are rare (client retries), so looking each up on its own is fine.
            let inserted: HashSet<(i64, &str)> =
                inserted.iter().map(|(s, m)| (*s, m.as_str())).collect();
            for (offset, &i) in chunk.iter().enumerate() {
                let event = &events[i];
                if inserted.contains(&(event.sender.0, event.message_id.as_str())) {
                    continue;
                }
                let original: Option<i64> = sqlx::query_scalar(
                    "SELECT ts FROM message_ids WHERE sender = ?1 AND message_id = ?2",
                )
                .bind(event.sender.0)
                .bind(event.message_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let original = original.ok_or_else(|| StoreError::Corrupt {
                    table: "message_ids",
                    detail: format!(
                        "({}, {}) conflicted on insert but cannot be read",
                        event.sender.0, event.message_id
                    ),
                })?;
                verdicts[chunk_no * ROWS_PER_INSERT + offset] = WriteResult::Duplicate {
                    original: Timestamp::from_i64(original),
                };
            }
        }

        let new: Vec<&NewEvent> = plan
            .firsts
            .iter()
            .zip(&verdicts)
            .filter(|(_, verdict)| **verdict == WriteResult::Sequenced)
            .map(|(&i, _)| &events[i])
            .collect();
        for chunk in new.chunks(ROWS_PER_INSERT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO events (ts, instance, sender, message_id, batch) ",
            );
            insert.push_values(chunk, |mut row, event| {
                row.push_bind(event.timestamp.as_i64())
                    .push_bind(idx)
                    .push_bind(event.sender.0)
                    .push_bind(event.message_id.as_str())
                    .push_bind(event.batch.as_slice());
            });
            insert.build().execute(&mut *tx).await?;
        }
        let recipients: Vec<(i64, i64)> = new
            .iter()
            .flat_map(|event| {
                let ts = event.timestamp.as_i64();
                event.recipients.iter().map(move |member| (member.0, ts))
            })
            .collect();
        for chunk in recipients.chunks(ROWS_PER_INSERT) {
            let mut insert =
                QueryBuilder::<Sqlite>::new("INSERT INTO event_recipients (member, ts) ");
            insert.push_values(chunk, |mut row, &(member, ts)| {
                row.push_bind(member).push_bind(ts);
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(plan.results(events, &verdicts))
    }

    async fn advance_watermark(
        &self,
        index: InstanceIndex,
        incarnation: Incarnation,
        watermark: Timestamp,
    ) -> Result<(), StoreError> {
        let idx = common::instance_column(index)?;
        let advanced = sqlx::query(
            "UPDATE sequencer_instances SET watermark = max(watermark, ?1) \
             WHERE idx = ?2 AND online AND incarnation = ?3",
        )
        .bind(watermark.as_i64())
        .bind(idx)
        .bind(incarnation.0)
        .execute(&self.writer)
        .await?
        .rows_affected();
        if advanced == 0 {
            // Read after the refusal, outside its statement: a claim in between can only turn
            // "fenced" into "superseded", and both mean nothing was written.
            let mut connection = self.writer.acquire().await?;
            let current = current_incarnation(&mut connection, idx).await?;
            return Err(common::refused_write(index, incarnation, current));
        }
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<InstanceState>, StoreError> {
        let rows: Vec<(i64, i64, bool, i64)> = sqlx::query_as(
            "SELECT idx, watermark, online, incarnation FROM sequencer_instances ORDER BY idx",
        )
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter()
            .map(|(idx, watermark, online, incarnation)| {
                common::instance_state(idx, watermark, online, incarnation)
            })
            .collect()
    }

    async fn safe_point(&self) -> Result<Option<Timestamp>, StoreError> {
        let minimum: Option<i64> =
            sqlx::query_scalar("SELECT min(watermark) FROM sequencer_instances WHERE online")
                .fetch_one(&self.readers)
                .await?;
        Ok(minimum.map(Timestamp::from_i64))
    }

    async fn mark_offline(
        &self,
        index: InstanceIndex,
        stale_before: Timestamp,
    ) -> Result<bool, StoreError> {
        let marked = sqlx::query(
            "UPDATE sequencer_instances SET online = 0 \
             WHERE idx = ?1 AND online AND watermark < ?2",
        )
        .bind(common::instance_column(index)?)
        .bind(stale_before.as_i64())
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(marked > 0)
    }

    async fn read_events(
        &self,
        member: MemberSeq,
        after: Option<Timestamp>,
        up_to: Timestamp,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // The page is a range scan of the (member, ts) primary key; the first row's previous
        // event is the member's last one at or before `after`, later rows' is the row before.
        let rows: Vec<common::EventRow> = sqlx::query_as(
            "SELECT r.ts, \
                    coalesce(lag(r.ts) OVER (ORDER BY r.ts), \
                             (SELECT max(p.ts) FROM event_recipients p \
                              WHERE p.member = ?1 AND p.ts <= ?2)), \
                    e.sender, e.message_id, e.batch \
             FROM (SELECT ts FROM event_recipients \
                   WHERE member = ?1 AND ts > ?2 AND ts <= ?3 \
                   ORDER BY ts LIMIT ?4) AS r \
             LEFT JOIN events e ON e.ts = r.ts \
             ORDER BY r.ts",
        )
        .bind(member.0)
        .bind(common::after_bound(after))
        .bind(up_to.as_i64())
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter().map(common::stored_event).collect()
    }

    async fn acknowledge(&self, member: MemberSeq, timestamp: Timestamp) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE members SET acknowledged = max(coalesce(acknowledged, ?1), ?1) WHERE seq = ?2",
        )
        .bind(timestamp.as_i64())
        .bind(member.0)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn acknowledged(&self, member: MemberSeq) -> Result<Option<Timestamp>, StoreError> {
        let acknowledged: Option<Option<i64>> =
            sqlx::query_scalar("SELECT acknowledged FROM members WHERE seq = ?1")
                .bind(member.0)
                .fetch_optional(&self.readers)
                .await?;
        Ok(acknowledged.flatten().map(Timestamp::from_i64))
    }

    async fn prune_message_ids(&self, expired_before: Timestamp) -> Result<u64, StoreError> {
        let pruned = sqlx::query("DELETE FROM message_ids WHERE expires_at < ?1")
            .bind(expired_before.as_i64())
            .execute(&self.writer)
            .await?
            .rows_affected();
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
