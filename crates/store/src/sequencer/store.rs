//! The sequencer store on either backend.
//!
//! SQLite, the embedded default, allows one writer at a time, so all writes go through a pool
//! of exactly one connection (no lock contention inside the process, and `BEGIN IMMEDIATE`
//! takes the file's write lock up front in case another process shares the file), while reads
//! use a separate pool and, thanks to WAL, never wait behind a write. Several sequencer
//! processes on one machine may share the file (active-active on SQLite): the write lock
//! serializes their transactions, the same way the row locks do on PostgreSQL. One limit has
//! no SQLite remedy: a process *paused* (SIGSTOP) inside a write transaction keeps the file's
//! write lock, so every other instance waits (up to the busy timeout,
//! `pool::SQLITE_BUSY_TIMEOUT`, then errors) until it resumes or dies. A crash releases the
//! lock at once.
//!
//! PostgreSQL is the production backend, where several sequencer instances (processes) share
//! one database. Correctness between instances rests on row locks: `write_events` updates its
//! own watermark row first (checking the row's incarnation), so a concurrent `mark_offline` or
//! `start_instance` either waits for the whole batch to commit or makes it fail as fenced or
//! superseded. A paused writer cannot hold those locks for long: its session is ended by the
//! server after a short idle-in-transaction timeout (see `POOL`). One connection is reserved for writes
//! so reads never queue behind a batch and vice versa.
//!
//! On both, throughput comes from bulk inserts: one `write_events` call is a handful of
//! statements whatever its size.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use meridian_core::crypto::PublicKey;
use meridian_core::{InstanceIndex, MemberId, Timestamp};
use sqlx::{PgConnection, QueryBuilder, SqliteConnection};

use super::common::{
    self, advance_watermark, BatchOutcome, ClaimedRow, WritePlan, CURRENT_INCARNATION, MARK_OFFLINE,
};
use super::presence::{self, FilePresence, PresenceHold, SessionPresence};
use super::{
    postgres, sqlite, BackendStatus, Committed, Incarnation, InstanceClaim, InstanceStart,
    InstanceState, MemberHistoryAt, MemberRecord, MemberSeq, NewEvent, OrderingProgress,
    ReferenceTime, RoutedEvent, SequencerStore, StoredEvent, WriteResult,
};
use crate::pool::{self, on_backend, on_postgres, PoolSettings, PostgresLayout, StorePool};
use crate::postgres_url::PostgresUrl;
use crate::{StorageConfig, StoreError};

const POOL: PoolSettings = PoolSettings {
    store: "sequencer",
    sqlite_foreign_keys: true,
    // Several sequencer processes may open a fresh shared SQLite file at the same moment
    // (active-active on SQLite), and SQLite has no migration lock.
    sqlite_migrate_attempts: 5,
    // Reads run in parallel with the writer and with each other.
    sqlite_readers: Some(4),
    // The server ends a writer session that sits inside a transaction without sending
    // anything for this long. A healthy writer sends its statements back to back, so only a
    // paused process (SIGSTOP, a frozen VM) trips it; without it, such a zombie would keep its
    // watermark row locked (and any message ids it inserted) until it resumed, so no peer
    // could mark it offline and every reader would stall with it. Kept well below the default
    // `offline_after` (2 s) plus the peers' polling, so a paused instance costs readers
    // about `offline_after`. A read-only database (a standby) is reported by
    // `backend_status`.
    postgres: PostgresLayout::ReportsReadOnly {
        writer_idle_in_transaction_timeout_ms: Some(300),
    },
};

type MemberRow = (i64, String, Vec<u8>, i64);

const MEMBER_COLUMNS: &str = "seq, id, public_key, registered_at";

#[derive(Debug, Clone)]
pub struct SqlSequencerStore {
    pool: StorePool,
    presence: Arc<Presence>,
}

/// How this store's instance shows it is alive, by backend (see [`super::presence`]).
#[derive(Debug)]
enum Presence {
    File(FilePresence),
    Session(SessionPresence),
}

/// The former name of [`SqlSequencerStore`] (`open(path)` on SQLite), kept for existing
/// callers.
pub type SqliteSequencerStore = SqlSequencerStore;

impl SqlSequencerStore {
    /// Opens the SQLite database file, creating and migrating it if needed.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_config(&StorageConfig::Sqlite { path: path.into() }).await
    }

    /// Opens (and migrates) the database the config names. On a read-only PostgreSQL database
    /// (a standby, or `default_transaction_read_only`) migrating is impossible and skipped, so
    /// that [`SequencerStore::backend_status`] can still report why this sequencer must not
    /// serve.
    pub async fn open_config(config: &StorageConfig) -> Result<Self, StoreError> {
        let presence = match config {
            StorageConfig::Sqlite { path } => Presence::File(FilePresence::new(path)),
            StorageConfig::Postgres { url, .. } => {
                Presence::Session(SessionPresence::new(PostgresUrl::parse(url)?))
            }
        };
        Ok(Self {
            pool: StorePool::open(config, &POOL).await?,
            presence: Arc::new(presence),
        })
    }
}

fn member_from(row: MemberRow) -> Result<MemberRecord, StoreError> {
    let (seq, id, key, at) = row;
    common::member_record(seq, id, &key, at)
}

/// The statements of [`SequencerStore::start_instance`]
/// where the dialects really differ; implemented in `sqlite` and `postgres`.
pub(super) trait DialectWrites {
    /// Deletes what instance `idx` wrote above its watermark `own` (a zombie's leftovers),
    /// with the recipient entries and message ids, so a retry of the zombie's submissions is
    /// not a duplicate of nothing. Returns how many events went.
    async fn delete_events_above(&mut self, idx: i32, own: i64) -> Result<u64, StoreError>;
}

/// Forwards [`DialectWrites`] of a connection type to the functions of its dialect's module.
macro_rules! dialect_writes {
    ($connection:ty, $dialect:ident) => {
        impl DialectWrites for $connection {
            async fn delete_events_above(&mut self, idx: i32, own: i64) -> Result<u64, StoreError> {
                $dialect::delete_events_above(self, idx, own).await
            }
        }
    };
}

dialect_writes!(SqliteConnection, sqlite);
dialect_writes!(PgConnection, postgres);

#[async_trait]
impl SequencerStore for SqlSequencerStore {
    async fn register_member(
        &self,
        id: &MemberId,
        public_key: &PublicKey,
        now: Timestamp,
    ) -> Result<(MemberRecord, bool), StoreError> {
        let key = public_key.to_bytes();
        let select = format!("SELECT {MEMBER_COLUMNS} FROM members WHERE id = $1");
        // On PostgreSQL a concurrent registration of the same id makes this wait for the other
        // transaction and then do nothing, so the read below sees the committed row. The read
        // is on the writer, which has seen its own insert.
        let (inserted, existing): (Option<i64>, Option<MemberRow>) =
            on_backend!(&self.pool, |writer, _, _| {
                let inserted: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO members (id, public_key, registered_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO NOTHING RETURNING seq",
                )
                .bind(id.as_str())
                .bind(&key[..])
                .bind(now.as_i64())
                .fetch_optional(writer)
                .await?;
                let existing = match inserted {
                    Some(_) => None,
                    None => {
                        sqlx::query_as(&select)
                            .bind(id.as_str())
                            .fetch_optional(writer)
                            .await?
                    }
                };
                (inserted, existing)
            });
        let existing = existing.map(member_from).transpose()?;
        common::registration_outcome(id, public_key, now, inserted, existing)
    }

    async fn members(&self) -> Result<Vec<MemberRecord>, StoreError> {
        let select = format!("SELECT {MEMBER_COLUMNS} FROM members ORDER BY seq");
        let rows: Vec<MemberRow> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_as(&select).fetch_all(readers).await?
        });
        rows.into_iter().map(member_from).collect()
    }

    async fn member(&self, id: &MemberId) -> Result<Option<MemberRecord>, StoreError> {
        let select = format!("SELECT {MEMBER_COLUMNS} FROM members WHERE id = $1");
        let row: Option<MemberRow> = self.pool.read_optional(&select, id.as_str()).await?;
        row.map(member_from).transpose()
    }

    async fn start_instance(
        &self,
        index: InstanceIndex,
        not_before: Timestamp,
        claim: InstanceClaim,
    ) -> Result<InstanceStart, StoreError> {
        let idx = common::instance_column(index)?;
        on_backend!(&self.pool, |writer, _, dialect| {
            // SQLite's IMMEDIATE: no other writer, in this process or another, runs until we
            // commit. PostgreSQL's EXCLUSIVE table lock conflicts with the row locks every
            // watermark UPDATE takes, so no instance advances between reading the maximum and
            // joining above it, and two claims of the same index run one after the other;
            // plain reads go on. Either makes claiming an index (check, bump) atomic.
            let mut tx = crate::pool::begin(writer, dialect.write_begin).await?;
            if let Some(lock) = dialect.exclusive_lock("sequencer_instances") {
                sqlx::query(&lock).execute(&mut *tx).await?;
            }
            sqlx::query(
                "INSERT INTO sequencer_instances (idx, watermark, online) VALUES ($1, 0, false) \
                 ON CONFLICT (idx) DO NOTHING",
            )
            .bind(idx)
            .execute(&mut *tx)
            .await?;
            let (own, online, incarnation): (i64, bool, i64) = sqlx::query_as(
                "SELECT watermark, online, incarnation FROM sequencer_instances WHERE idx = $1",
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
            let deleted = tx.delete_events_above(idx, own).await?;
            if deleted > 0 {
                tracing::warn!(instance = %index, deleted, "deleted events written above the instance's watermark");
            }
            let highest: i64 = sqlx::query_scalar("SELECT max(watermark) FROM sequencer_instances")
                .fetch_one(&mut *tx)
                .await?;
            let watermark = Timestamp::from_i64(highest).max(not_before);
            let incarnation = Incarnation(incarnation.saturating_add(1));
            sqlx::query(
                "UPDATE sequencer_instances SET watermark = $2, online = true, incarnation = $3 \
                 WHERE idx = $1",
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
        })
    }

    async fn write_events(
        &self,
        index: InstanceIndex,
        incarnation: Incarnation,
        events: &[NewEvent],
        watermark: Timestamp,
    ) -> Result<Committed<Vec<WriteResult>>, StoreError> {
        let idx = common::instance_column(index)?;
        let watermark = common::effective_watermark(events, watermark);
        let plan = WritePlan::new(events);
        let firsts: Vec<&NewEvent> = plan.firsts.iter().map(|&i| &events[i]).collect();
        let outcome = on_backend!(&self.pool, |writer, _, _| {
            writer
                .write_batch(idx, incarnation, watermark, &firsts)
                .await?
        });
        match outcome {
            BatchOutcome::Written { verdicts, advanced } => {
                Ok(common::committed(advanced, plan.results(events, &verdicts)))
            }
            BatchOutcome::Refused { current } => {
                Err(common::refused_write(index, incarnation, current))
            }
        }
    }

    async fn advance_watermark(
        &self,
        index: InstanceIndex,
        incarnation: Incarnation,
        watermark: Timestamp,
    ) -> Result<Committed<()>, StoreError> {
        let idx = common::instance_column(index)?;
        let advanced = on_backend!(&self.pool, |writer, _, dialect| {
            let mut advance = QueryBuilder::<Db>::new("");
            advance_watermark(dialect, &mut advance, idx, incarnation, watermark);
            let advanced: Option<common::AdvancedRow> =
                advance.build_query_as().fetch_optional(writer).await?;
            let Some(advanced) = advanced else {
                // Read after the refusal, outside its statement: a claim in between can only
                // turn "fenced" into "superseded", and both mean nothing was written.
                let current: Option<i64> = sqlx::query_scalar(CURRENT_INCARNATION)
                    .bind(idx)
                    .fetch_optional(writer)
                    .await?;
                return Err(common::refused_write(index, incarnation, current));
            };
            advanced
        });
        Ok(common::committed(advanced, ()))
    }

    async fn instances(&self) -> Result<Vec<InstanceState>, StoreError> {
        let rows: Vec<(i32, i64, bool, i64)> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_as(
                "SELECT idx, watermark, online, incarnation FROM sequencer_instances ORDER BY idx",
            )
            .fetch_all(readers)
            .await?
        });
        rows.into_iter()
            .map(|(idx, watermark, online, incarnation)| {
                common::instance_state(i64::from(idx), watermark, online, incarnation)
            })
            .collect()
    }

    async fn hold_presence(&self, index: InstanceIndex) -> Result<PresenceHold, StoreError> {
        match &*self.presence {
            Presence::File(file) => file.hold(index).await,
            Presence::Session(session) => session.hold(index).await,
        }
    }

    async fn present_instances(
        &self,
        among: &[InstanceIndex],
    ) -> Result<Vec<InstanceIndex>, StoreError> {
        match (&*self.presence, &self.pool) {
            (Presence::File(file), _) => file.present(among).await,
            // Never built: both follow the one config. Everyone counts as present, which
            // leaves judging to the watermarks.
            (Presence::Session(_), StorePool::Sqlite { .. }) => Ok(among.to_vec()),
            (Presence::Session(_), StorePool::Postgres(following)) => {
                let locked: Vec<i64> = on_postgres!(following, |_, readers| {
                    sqlx::query_scalar(presence::PRESENT_INSTANCES)
                        .bind(presence::advisory_class())
                        .fetch_all(readers)
                        .await?
                });
                Ok(among
                    .iter()
                    .copied()
                    .filter(|index| locked.contains(&i64::from(index.0)))
                    .collect())
            }
        }
    }

    async fn safe_point(&self) -> Result<Option<Timestamp>, StoreError> {
        let minimum: Option<i64> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_scalar("SELECT min(watermark) FROM sequencer_instances WHERE online")
                .fetch_one(readers)
                .await?
        });
        Ok(minimum.map(Timestamp::from_i64))
    }

    async fn ordering_progress(&self) -> Result<OrderingProgress, StoreError> {
        let (safe_point, latest_event): (Option<i64>, Option<i64>) =
            on_backend!(&self.pool, |_, readers, _| {
                sqlx::query_as(
                    "SELECT (SELECT min(watermark) FROM sequencer_instances WHERE online), \
                            (SELECT max(ts) FROM events)",
                )
                .fetch_one(readers)
                .await?
            });
        Ok(OrderingProgress {
            safe_point: safe_point.map(Timestamp::from_i64),
            latest_event: latest_event.map(Timestamp::from_i64),
        })
    }

    async fn mark_offline(
        &self,
        index: InstanceIndex,
        stale_before: Timestamp,
    ) -> Result<bool, StoreError> {
        let idx = common::instance_column(index)?;
        match &self.pool {
            StorePool::Sqlite { writer, .. } => {
                let marked = sqlx::query(MARK_OFFLINE)
                    .bind(idx)
                    .bind(stale_before.as_i64())
                    .execute(writer)
                    .await?
                    .rows_affected();
                Ok(marked > 0)
            }
            StorePool::Postgres(following) => Ok(on_postgres!(following, |_, readers| {
                postgres::mark_offline(readers, idx, stale_before).await?
            })),
        }
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
        let rows: Vec<common::EventRow> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_as(MEMBER_EVENTS_PAGE)
                .bind(member.0)
                .bind(common::after_bound(after))
                .bind(up_to.as_i64())
                .bind(i64::from(limit))
                .fetch_all(readers)
                .await?
        });
        rows.into_iter().map(common::stored_event).collect()
    }

    async fn events_after(
        &self,
        after: Option<Timestamp>,
        up_to: Timestamp,
        limit: u32,
    ) -> Result<Vec<RoutedEvent>, StoreError> {
        let after = common::after_bound(after);
        // Two statements, no new index: the page is a range scan of the events' primary key;
        // the recipients are a range scan of the (member, ts) primary key per member (few
        // members, so this beats an index on ts that every write would pay for). Both stay
        // at or below the safe point, where nothing changes any more, so they need not share
        // a transaction.
        let (rows, recipients): (Vec<common::RoutedRow>, Vec<(i64, i64)>) =
            on_backend!(&self.pool, |_, readers, dialect| {
                let rows: Vec<common::RoutedRow> = sqlx::query_as(EVENTS_PAGE)
                    .bind(after)
                    .bind(up_to.as_i64())
                    .bind(i64::from(limit))
                    .fetch_all(readers)
                    .await?;
                let recipients = match rows.last() {
                    None => Vec::new(),
                    Some(last) => {
                        sqlx::query_as(&recipients_in_range(dialect))
                            .bind(after)
                            .bind(last.0)
                            .fetch_all(readers)
                            .await?
                    }
                };
                (rows, recipients)
            });
        common::routed_events(rows, recipients)
    }

    async fn member_history_at(
        &self,
        member: MemberSeq,
        at: Timestamp,
    ) -> Result<MemberHistoryAt, StoreError> {
        // Both are descending scans of the (member, ts) primary key, one row each.
        let (at_or_before, latest): (Option<i64>, Option<i64>) =
            on_backend!(&self.pool, |_, readers, _| {
                sqlx::query_as(
                    "SELECT (SELECT max(ts) FROM event_recipients WHERE member = $1 AND ts <= $2), \
                            (SELECT max(ts) FROM event_recipients WHERE member = $1)",
                )
                .bind(member.0)
                .bind(at.as_i64())
                .fetch_one(readers)
                .await?
            });
        Ok(MemberHistoryAt {
            at_or_before: at_or_before.map(Timestamp::from_i64),
            latest: latest.map(Timestamp::from_i64),
        })
    }

    async fn acknowledge(&self, member: MemberSeq, timestamp: Timestamp) -> Result<(), StoreError> {
        on_backend!(&self.pool, |writer, _, dialect| {
            // The coalesce makes the first acknowledgement simply set it.
            let greatest = dialect.greatest;
            sqlx::query(&format!(
                "UPDATE members SET acknowledged = {greatest}(coalesce(acknowledged, $1), $1) \
                 WHERE seq = $2"
            ))
            .bind(timestamp.as_i64())
            .bind(member.0)
            .execute(writer)
            .await?;
        });
        Ok(())
    }

    async fn acknowledged(&self, member: MemberSeq) -> Result<Option<Timestamp>, StoreError> {
        let acknowledged: Option<Option<i64>> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_scalar("SELECT acknowledged FROM members WHERE seq = $1")
                .bind(member.0)
                .fetch_optional(readers)
                .await?
        });
        Ok(acknowledged.flatten().map(Timestamp::from_i64))
    }

    async fn prune_message_ids(&self, expired_before: Timestamp) -> Result<u64, StoreError> {
        Ok(on_backend!(&self.pool, |writer, _, _| {
            sqlx::query("DELETE FROM message_ids WHERE expires_at < $1")
                .bind(expired_before.as_i64())
                .execute(writer)
                .await?
                .rows_affected()
        }))
    }

    async fn backend_status(&self) -> Result<BackendStatus, StoreError> {
        self.pool.backend_status().await
    }

    async fn reference_time(&self) -> Result<ReferenceTime, StoreError> {
        match &self.pool {
            StorePool::Sqlite { writer, .. } => {
                sqlite::kernel_time(writer.connect_options().get_filename()).await
            }
            StorePool::Postgres(following) => Ok(on_postgres!(following, |_, readers| {
                postgres::server_time(readers).await?
            })),
        }
    }
}

/// The transaction of [`SequencerStore::write_events`] on one backend's writer pool: advance
/// instance `idx`'s watermark ([`advance_watermark`], first, so that on PostgreSQL it holds
/// the row lock that `mark_offline` and `start_instance` need: they wait for the batch, or the
/// batch is fenced), claim the message ids of `firsts`, insert the new events.
pub(super) trait WriteBatch {
    async fn write_batch(
        &self,
        idx: i32,
        incarnation: Incarnation,
        watermark: Timestamp,
        firsts: &[&NewEvent],
    ) -> Result<BatchOutcome, StoreError>;
}

/// Forwards [`WriteBatch`] of a pool type to its dialect module's `write_batch`.
macro_rules! write_batch_in {
    ($pool:ty, $dialect:ident) => {
        impl WriteBatch for $pool {
            async fn write_batch(
                &self,
                idx: i32,
                incarnation: Incarnation,
                watermark: Timestamp,
                firsts: &[&NewEvent],
            ) -> Result<BatchOutcome, StoreError> {
                $dialect::write_batch(self, idx, incarnation, watermark, firsts).await
            }
        }
    };
}

write_batch_in!(sqlx::SqlitePool, sqlite);
write_batch_in!(sqlx::PgPool, postgres);

/// A page of one member's events in `($2, $3]`, at most $4, for member $1: a range scan of the
/// recipients' (member, ts) primary key. The first row's previous event is the member's last
/// one at or before $2, later rows' is the row before.
const MEMBER_EVENTS_PAGE: &str = "SELECT r.ts, \
        coalesce(lag(r.ts) OVER (ORDER BY r.ts), \
                 (SELECT max(p.ts) FROM event_recipients p \
                  WHERE p.member = $1 AND p.ts <= $2)), \
        e.sender, e.message_id, e.batch \
 FROM (SELECT ts FROM event_recipients \
       WHERE member = $1 AND ts > $2 AND ts <= $3 \
       ORDER BY ts LIMIT $4) AS r \
 LEFT JOIN events e ON e.ts = r.ts \
 ORDER BY r.ts";

/// A page of every member's events in `($1, $2]`, at most $3: a range scan of the events'
/// primary key.
const EVENTS_PAGE: &str = "SELECT ts, sender, message_id, batch FROM events \
     WHERE ts > $1 AND ts <= $2 ORDER BY ts LIMIT $3";

/// The recipient entries of every member in `($1, $2]`: a range scan of the (member, ts)
/// primary key per member.
fn recipients_in_range(dialect: &pool::Dialect) -> String {
    format!(
        "SELECT ts, member FROM event_recipients \
         WHERE member {} AND ts > $1 AND ts <= $2",
        dialect.any_member
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generic_plans::{assert_indexed, migrated_database, Read};

    /// The reads every delivery makes, as PostgreSQL plans them once a connection's plan cache
    /// settles on a generic plan, on tables that were never analysed (a fresh database, or
    /// any database right after a restart that lost its statistics): each must use an index
    /// of `events` and `event_recipients`, never read either whole. The `IN (SELECT ..)`
    /// form of the recipients' read failed this: a hash join over a sequential scan.
    #[tokio::test]
    async fn delivery_reads_use_the_indexes_in_generic_plans_without_statistics() {
        let mut connection = migrated_database("generic_plans", |config| async move {
            SqlSequencerStore::open_config(&config).await
        })
        .await;
        // Tables of a few thousand rows: big enough that reading one whole is the plan to
        // avoid, as after a minute of load.
        sqlx::raw_sql(
            "INSERT INTO members (id, public_key, registered_at) \
                 SELECT 'm' || i, '\\x00', 0 FROM generate_series(1, 5) AS i; \
             INSERT INTO events (ts, instance, sender, message_id, batch) \
                 SELECT i, 0, 1, 'x' || i, '\\x00' FROM generate_series(1, 5000) AS i; \
             INSERT INTO event_recipients (member, ts) \
                 SELECT 1 + i % 5, i FROM generate_series(1, 5000) AS i; \
             INSERT INTO message_ids (sender, message_id, ts, expires_at) \
                 SELECT 1, 'x' || i, i, i FROM generate_series(1, 5000) AS i",
        )
        .execute(&mut connection)
        .await
        .expect("fill");
        let reads = [
            Read {
                name: "events_page",
                parameter_types: "bigint, bigint, bigint",
                sql: EVENTS_PAGE.to_owned(),
                arguments: "1, 2, 3",
            },
            Read {
                name: "recipients",
                parameter_types: "bigint, bigint",
                sql: recipients_in_range(&pool::POSTGRES),
                arguments: "1, 2",
            },
            Read {
                name: "member_page",
                parameter_types: "bigint, bigint, bigint, bigint",
                sql: MEMBER_EVENTS_PAGE.to_owned(),
                arguments: "1, 2, 3, 4",
            },
            // Not a delivery read: a resubmission's, frequent right after a failover.
            Read {
                name: "originals",
                parameter_types: "bigint[], text[]",
                sql: super::super::postgres::ORIGINALS_OF_DUPLICATES.to_owned(),
                arguments: "'{1}', '{x1}'",
            },
        ];
        assert_indexed(
            &mut connection,
            &reads,
            &["events", "event_recipients", "message_ids"],
        )
        .await;
    }
}
