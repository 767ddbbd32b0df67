//! The sequencer store on PostgreSQL, the production backend, where several sequencer
//! instances (processes) share one database. Correctness between instances rests on row locks:
//! `write_events` updates its own watermark row first (checking the row's incarnation), so a
//! concurrent `mark_offline` or `start_instance` either waits for the whole batch to commit or
//! makes it fail as fenced or superseded. A paused writer cannot hold those locks for long: its
//! session is ended by the server after `WRITER_IDLE_IN_TRANSACTION_TIMEOUT_MS`.
//! Each call's rows go in with one `INSERT ... SELECT FROM UNNEST(arrays)` per table, so a
//! batch of a thousand events costs a handful of round trips. One connection is reserved for
//! writes so reads never queue behind a batch and vice versa.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use meridian_core::crypto::PublicKey;
use meridian_core::{InstanceIndex, MemberId, Timestamp};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};

use crate::common::{self, ClaimedRow, WritePlan};
use crate::sequencer::{
    BackendStatus, Incarnation, InstanceClaim, InstanceStart, InstanceState, MemberRecord,
    MemberSeq, NewEvent, SequencerStore, StoredEvent, WriteResult,
};
use crate::{pools, StoreError};

/// How long a call waits for a connection before reporting the database unavailable. Short,
/// because callers retry transient errors themselves and must report not-ready meanwhile.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The server ends a writer session that sits inside a transaction without sending anything
/// for this long. A healthy writer sends its statements back to back, so only a paused process
/// (SIGSTOP, a frozen VM) trips it; without it, such a zombie would keep its watermark row
/// locked (and any message ids it inserted) until it resumed, so no peer could mark it offline
/// and every reader would stall with it. Kept well below the default `offline_after` (500 ms)
/// plus the peers' polling, so a paused instance costs readers about `offline_after`.
const WRITER_IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 300;

/// How long `mark_offline` waits for the row lock of the instance it inspects: long enough for
/// a healthy batch to commit, short enough that a zombie holding the lock cannot stall the
/// caller's polling.
const MARK_OFFLINE_LOCK_TIMEOUT_MS: u64 = 100;

/// `lock_not_available`: a `lock_timeout` expired.
const LOCK_NOT_AVAILABLE: &str = "55P03";

#[derive(Debug, Clone)]
pub struct PgSequencerStore {
    writer: PgPool,
    readers: PgPool,
}

type MemberRow = (i64, String, Vec<u8>, i64);

/// The row's incarnation, `None` if the instance has no row.
async fn current_incarnation(
    connection: &mut PgConnection,
    idx: i32,
) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT incarnation FROM sequencer_instances WHERE idx = $1")
            .bind(idx)
            .fetch_optional(connection)
            .await?,
    )
}

impl PgSequencerStore {
    /// Connects with `max_connections` in total (one of them the writer, at least one reader)
    /// and migrates the schema. On a read-only database (a standby, or
    /// `default_transaction_read_only`) migrating is impossible and skipped, so that
    /// [`SequencerStore::backend_status`] can still report why this sequencer must not serve.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        pools::migrate_postgres_unless_read_only(&options, ACQUIRE_TIMEOUT, "sequencer").await?;
        let writer = pools::lazy_postgres_pool(
            options.clone().options([(
                "idle_in_transaction_session_timeout",
                WRITER_IDLE_IN_TRANSACTION_TIMEOUT_MS,
            )]),
            1,
            ACQUIRE_TIMEOUT,
        );
        let readers = pools::lazy_postgres_pool(
            options,
            pools::postgres_reader_connections(max_connections),
            ACQUIRE_TIMEOUT,
        );
        Ok(Self { writer, readers })
    }
}

async fn member_on(pool: &PgPool, id: &MemberId) -> Result<Option<MemberRecord>, StoreError> {
    let row: Option<MemberRow> =
        sqlx::query_as("SELECT seq, id, public_key, registered_at FROM members WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?;
    row.map(|(seq, id, key, at)| common::member_record(seq, id, &key, at))
        .transpose()
}

#[async_trait]
impl SequencerStore for PgSequencerStore {
    async fn register_member(
        &self,
        id: &MemberId,
        public_key: &PublicKey,
        now: Timestamp,
    ) -> Result<(MemberRecord, bool), StoreError> {
        let key = public_key.to_bytes();
        // A concurrent registration of the same id makes this wait for the other transaction
        // and then do nothing, so the read below sees the committed row.
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO members (id, public_key, registered_at) VALUES ($1, $2, $3) \
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
        let mut tx = self.writer.begin().await?;
        // EXCLUSIVE conflicts with the row locks every watermark UPDATE takes, so no instance
        // advances between reading the maximum and joining above it, and two claims of the
        // same index run one after the other; plain reads go on.
        sqlx::query("LOCK TABLE sequencer_instances IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
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

        let zombie: Vec<i64> =
            sqlx::query_scalar("SELECT ts FROM events WHERE instance = $1 AND ts > $2")
                .bind(idx)
                .bind(own)
                .fetch_all(&mut *tx)
                .await?;
        if !zombie.is_empty() {
            // Both columns as arrays, so the (member, ts) primary key finds the rows.
            sqlx::query(
                "DELETE FROM event_recipients \
                 WHERE member = ANY(ARRAY(SELECT seq FROM members)) AND ts = ANY($1)",
            )
            .bind(&zombie)
            .execute(&mut *tx)
            .await?;
            // Or a retry of the zombie's submissions would be a duplicate of nothing.
            sqlx::query(
                "DELETE FROM message_ids m USING events e \
                 WHERE e.ts = ANY($1) AND m.sender = e.sender \
                   AND m.message_id = e.message_id AND m.ts = e.ts",
            )
            .bind(&zombie)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM events WHERE ts = ANY($1)")
                .bind(&zombie)
                .execute(&mut *tx)
                .await?;
            tracing::warn!(instance = %index, deleted = zombie.len(), "deleted events written above the instance's watermark");
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

        let mut tx = self.writer.begin().await?;
        // First, so that this transaction holds the row lock that mark_offline and
        // start_instance need: they wait for the batch, or the batch is fenced. The
        // incarnation check makes a newer claim of the index fence it as well.
        let advanced = sqlx::query(
            "UPDATE sequencer_instances SET watermark = GREATEST(watermark, $1) \
             WHERE idx = $2 AND online AND incarnation = $3",
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
        if !plan.firsts.is_empty() {
            let firsts = || plan.firsts.iter().map(|&i| &events[i]);
            let senders: Vec<i64> = firsts().map(|e| e.sender.0).collect();
            let message_ids: Vec<&str> = firsts().map(|e| e.message_id.as_str()).collect();
            let timestamps: Vec<i64> = firsts().map(|e| e.timestamp.as_i64()).collect();
            let expiries: Vec<i64> = firsts().map(|e| e.max_sequencing_time.as_i64()).collect();
            // Sorted by key so that two instances inserting overlapping keys lock them in the
            // same order and cannot deadlock.
            let inserted: Vec<(i64, String)> = sqlx::query_as(
                "INSERT INTO message_ids (sender, message_id, ts, expires_at) \
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[]) \
                     AS u(sender, message_id, ts, expires_at) \
                 ORDER BY sender, message_id \
                 ON CONFLICT DO NOTHING RETURNING sender, message_id",
            )
            .bind(&senders)
            .bind(&message_ids)
            .bind(&timestamps)
            .bind(&expiries)
            .fetch_all(&mut *tx)
            .await?;
            if inserted.len() < plan.firsts.len() {
                let inserted: HashSet<(i64, &str)> =
                    inserted.iter().map(|(s, m)| (*s, m.as_str())).collect();
                let (dup_senders, dup_ids): (Vec<i64>, Vec<&str>) = firsts()
                    .map(|e| (e.sender.0, e.message_id.as_str()))
                    .filter(|key| !inserted.contains(key))
                    .unzip();
                let originals: Vec<(i64, String, i64)> = sqlx::query_as(
                    "SELECT m.sender, m.message_id, m.ts FROM message_ids m \
                     JOIN UNNEST($1::bigint[], $2::text[]) AS u(sender, message_id) \
                       ON m.sender = u.sender AND m.message_id = u.message_id",
                )
                .bind(&dup_senders)
                .bind(&dup_ids)
                .fetch_all(&mut *tx)
                .await?;
                let originals: HashMap<(i64, &str), i64> = originals
                    .iter()
                    .map(|(s, m, ts)| ((*s, m.as_str()), *ts))
                    .collect();
                for (verdict, event) in verdicts.iter_mut().zip(firsts()) {
                    let key = (event.sender.0, event.message_id.as_str());
                    if inserted.contains(&key) {
                        continue;
                    }
                    // Missing only if pruned between our insert and this read, which needs an
                    // entry whose max sequencing time has passed: report it, don't guess.
                    let original = originals
                        .get(&key)
                        .ok_or_else(|| StoreError::Database(sqlx::Error::RowNotFound))?;
                    *verdict = WriteResult::Duplicate {
                        original: Timestamp::from_i64(*original),
                    };
                }
            }
        }

        let new: Vec<&NewEvent> = plan
            .firsts
            .iter()
            .zip(&verdicts)
            .filter(|(_, verdict)| **verdict == WriteResult::Sequenced)
            .map(|(&i, _)| &events[i])
            .collect();
        if !new.is_empty() {
            let timestamps: Vec<i64> = new.iter().map(|e| e.timestamp.as_i64()).collect();
            let senders: Vec<i64> = new.iter().map(|e| e.sender.0).collect();
            let message_ids: Vec<&str> = new.iter().map(|e| e.message_id.as_str()).collect();
            let batches: Vec<&[u8]> = new.iter().map(|e| e.batch.as_slice()).collect();
            sqlx::query(
                "INSERT INTO events (ts, instance, sender, message_id, batch) \
                 SELECT ts, $2, sender, message_id, batch \
                 FROM UNNEST($1::bigint[], $3::bigint[], $4::text[], $5::bytea[]) \
                     AS u(ts, sender, message_id, batch)",
            )
            .bind(&timestamps)
            .bind(idx)
            .bind(&senders)
            .bind(&message_ids)
            .bind(&batches)
            .execute(&mut *tx)
            .await?;

            let (members, recipient_ts): (Vec<i64>, Vec<i64>) = new
                .iter()
                .flat_map(|event| {
                    let ts = event.timestamp.as_i64();
                    event.recipients.iter().map(move |member| (member.0, ts))
                })
                .unzip();
            if !members.is_empty() {
                sqlx::query(
                    "INSERT INTO event_recipients (member, ts) \
                     SELECT * FROM UNNEST($1::bigint[], $2::bigint[])",
                )
                .bind(&members)
                .bind(&recipient_ts)
                .execute(&mut *tx)
                .await?;
            }
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
            "UPDATE sequencer_instances SET watermark = GREATEST(watermark, $1) \
             WHERE idx = $2 AND online AND incarnation = $3",
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
        let rows: Vec<(i32, i64, bool, i64)> = sqlx::query_as(
            "SELECT idx, watermark, online, incarnation FROM sequencer_instances ORDER BY idx",
        )
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter()
            .map(|(idx, watermark, online, incarnation)| {
                common::instance_state(i64::from(idx), watermark, online, incarnation)
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
        // Waits for a batch of that instance in flight (it holds the row lock) and then
        // re-checks the condition against the watermark that batch committed; but only
        // briefly, since the holder may be a paused zombie (its session is ended by
        // idle_in_transaction_session_timeout, and the next poll succeeds). On a reader
        // connection, so our own writer never queues behind that wait.
        let idx = common::instance_column(index)?;
        let mut tx = self.readers.begin().await?;
        sqlx::query(&format!(
            "SET LOCAL lock_timeout = '{MARK_OFFLINE_LOCK_TIMEOUT_MS}ms'"
        ))
        .execute(&mut *tx)
        .await?;
        let marked = sqlx::query(
            "UPDATE sequencer_instances SET online = false \
             WHERE idx = $1 AND online AND watermark < $2",
        )
        .bind(idx)
        .bind(stale_before.as_i64())
        .execute(&mut *tx)
        .await;
        let marked = match marked {
            Ok(result) => result.rows_affected(),
            Err(sqlx::Error::Database(error))
                if error.code().as_deref() == Some(LOCK_NOT_AVAILABLE) =>
            {
                tx.rollback().await?;
                return Ok(false);
            }
            Err(error) => return Err(error.into()),
        };
        tx.commit().await?;
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
                    COALESCE(lag(r.ts) OVER (ORDER BY r.ts), \
                             (SELECT max(p.ts) FROM event_recipients p \
                              WHERE p.member = $1 AND p.ts <= $2)), \
                    e.sender, e.message_id, e.batch \
             FROM (SELECT ts FROM event_recipients \
                   WHERE member = $1 AND ts > $2 AND ts <= $3 \
                   ORDER BY ts LIMIT $4) AS r \
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
        // GREATEST ignores NULL, so the first acknowledgement simply sets it.
        sqlx::query("UPDATE members SET acknowledged = GREATEST(acknowledged, $1) WHERE seq = $2")
            .bind(timestamp.as_i64())
            .bind(member.0)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn acknowledged(&self, member: MemberSeq) -> Result<Option<Timestamp>, StoreError> {
        let acknowledged: Option<Option<i64>> =
            sqlx::query_scalar("SELECT acknowledged FROM members WHERE seq = $1")
                .bind(member.0)
                .fetch_optional(&self.readers)
                .await?;
        Ok(acknowledged.flatten().map(Timestamp::from_i64))
    }

    async fn prune_message_ids(&self, expired_before: Timestamp) -> Result<u64, StoreError> {
        let pruned = sqlx::query("DELETE FROM message_ids WHERE expires_at < $1")
            .bind(expired_before.as_i64())
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(pruned)
    }

    async fn backend_status(&self) -> Result<BackendStatus, StoreError> {
        // transaction_read_only reflects default_transaction_read_only for a new transaction,
        // so this also catches a primary configured read-only, not just a standby.
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
