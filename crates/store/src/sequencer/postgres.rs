//! The sequencer store's statements that are PostgreSQL's own: bulk inserts as one
//! `INSERT ... SELECT FROM UNNEST(arrays)` per table (a batch of a thousand events costs a
//! handful of round trips), deleting a zombie's events through arrays so the primary keys find
//! the rows, and `mark_offline`'s bounded wait for a row lock.

use std::collections::{HashMap, HashSet};

use meridian_core::Timestamp;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Postgres, QueryBuilder};

use super::common::{self, advance_watermark, BatchOutcome, CURRENT_INCARNATION, MARK_OFFLINE};
use super::{Incarnation, NewEvent, ReferenceTime, WriteResult};
use crate::pool;
use crate::StoreError;

/// How long `mark_offline` waits for the row lock of the instance it inspects: long enough for
/// a healthy batch to commit, short enough that a zombie holding the lock cannot stall the
/// caller's polling.
const MARK_OFFLINE_LOCK_TIMEOUT_MS: u64 = 100;

/// `lock_not_available`: a `lock_timeout` expired.
const LOCK_NOT_AVAILABLE: &str = "55P03";

pub(super) async fn delete_events_above(
    connection: &mut PgConnection,
    idx: i32,
    own: i64,
) -> Result<u64, StoreError> {
    let zombie: Vec<i64> =
        sqlx::query_scalar("SELECT ts FROM events WHERE instance = $1 AND ts > $2")
            .bind(idx)
            .bind(own)
            .fetch_all(&mut *connection)
            .await?;
    if zombie.is_empty() {
        return Ok(0);
    }
    // Both columns as arrays, so the (member, ts) primary key finds the rows.
    sqlx::query(
        "DELETE FROM event_recipients \
         WHERE member = ANY(ARRAY(SELECT seq FROM members)) AND ts = ANY($1)",
    )
    .bind(&zombie)
    .execute(&mut *connection)
    .await?;
    sqlx::query(
        "DELETE FROM message_ids m USING events e \
         WHERE e.ts = ANY($1) AND m.sender = e.sender \
           AND m.message_id = e.message_id AND m.ts = e.ts",
    )
    .bind(&zombie)
    .execute(&mut *connection)
    .await?;
    sqlx::query("DELETE FROM events WHERE ts = ANY($1)")
        .bind(&zombie)
        .execute(&mut *connection)
        .await?;
    Ok(zombie.len() as u64)
}

/// The first sequencing of each (sender $1, message id $2) pair: a primary-key lookup per pair.
pub(super) const ORIGINALS_OF_DUPLICATES: &str = "SELECT m.sender, m.message_id, m.ts \
     FROM message_ids m \
     JOIN UNNEST($1::bigint[], $2::text[]) AS u(sender, message_id) \
       ON m.sender = u.sender AND m.message_id = u.message_id";

/// [`WriteBatch::write_batch`](super::store::WriteBatch): a statement per step.
pub(super) async fn write_batch(
    writer: &PgPool,
    idx: i32,
    incarnation: Incarnation,
    watermark: Timestamp,
    firsts: &[&NewEvent],
) -> Result<BatchOutcome, StoreError> {
    let mut tx = crate::pool::begin(writer, pool::POSTGRES.write_begin).await?;
    let mut advance = QueryBuilder::<Postgres>::new("");
    advance_watermark(&pool::POSTGRES, &mut advance, idx, incarnation, watermark);
    let advanced: Option<common::AdvancedRow> =
        advance.build_query_as().fetch_optional(&mut *tx).await?;
    let Some(advanced) = advanced else {
        let current: Option<i64> = sqlx::query_scalar(CURRENT_INCARNATION)
            .bind(idx)
            .fetch_optional(&mut *tx)
            .await?;
        tx.rollback().await?;
        return Ok(BatchOutcome::Refused { current });
    };
    let verdicts = claim_message_ids(&mut tx, firsts).await?;
    let new = common::sequenced(firsts, &verdicts);
    insert_events(&mut tx, idx, &new).await?;
    tx.commit().await?;
    Ok(BatchOutcome::Written { verdicts, advanced })
}

/// Inserts the message ids of `firsts` (one per key) and returns, in order, whether each was
/// new ([`WriteResult::Sequenced`]) or already there (a duplicate of its original).
async fn claim_message_ids(
    connection: &mut PgConnection,
    firsts: &[&NewEvent],
) -> Result<Vec<WriteResult>, StoreError> {
    let mut verdicts = vec![WriteResult::Sequenced; firsts.len()];
    if firsts.is_empty() {
        return Ok(verdicts);
    }
    let senders: Vec<i64> = firsts.iter().map(|e| e.sender.0).collect();
    let message_ids: Vec<&str> = firsts.iter().map(|e| e.message_id.as_str()).collect();
    let timestamps: Vec<i64> = firsts.iter().map(|e| e.timestamp.as_i64()).collect();
    let expiries: Vec<i64> = firsts
        .iter()
        .map(|e| e.max_sequencing_time.as_i64())
        .collect();
    // Sorted by key so that two instances inserting overlapping keys lock them in the same
    // order and cannot deadlock.
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
    .fetch_all(&mut *connection)
    .await?;
    if inserted.len() == firsts.len() {
        return Ok(verdicts);
    }
    let inserted: HashSet<(i64, &str)> = inserted.iter().map(|(s, m)| (*s, m.as_str())).collect();
    let (dup_senders, dup_ids): (Vec<i64>, Vec<&str>) = firsts
        .iter()
        .map(|e| (e.sender.0, e.message_id.as_str()))
        .filter(|key| !inserted.contains(key))
        .unzip();
    let originals: Vec<(i64, String, i64)> = sqlx::query_as(ORIGINALS_OF_DUPLICATES)
        .bind(&dup_senders)
        .bind(&dup_ids)
        .fetch_all(&mut *connection)
        .await?;
    let originals: HashMap<(i64, &str), i64> = originals
        .iter()
        .map(|(s, m, ts)| ((*s, m.as_str()), *ts))
        .collect();
    for (verdict, event) in verdicts.iter_mut().zip(firsts) {
        let key = (event.sender.0, event.message_id.as_str());
        if inserted.contains(&key) {
            continue;
        }
        // Missing only if pruned between our insert and this read, which needs an entry
        // whose max sequencing time has passed: report it, don't guess.
        let original = originals
            .get(&key)
            .ok_or_else(|| StoreError::Database(sqlx::Error::RowNotFound))?;
        *verdict = WriteResult::Duplicate {
            original: Timestamp::from_i64(*original),
        };
    }
    Ok(verdicts)
}

/// Inserts `new` events of instance `idx` and their recipient entries.
async fn insert_events(
    connection: &mut PgConnection,
    idx: i32,
    new: &[&NewEvent],
) -> Result<(), StoreError> {
    if new.is_empty() {
        return Ok(());
    }
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
    .execute(&mut *connection)
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
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// Waits for a batch of that instance in flight (it holds the row lock) and then re-checks
/// the condition against the watermark that batch committed; but only briefly, since the
/// holder may be a paused zombie (its session is ended by idle_in_transaction_session_timeout,
/// and the next poll succeeds). On a reader connection, so the store's own writer never queues
/// behind that wait.
pub(super) async fn mark_offline(
    readers: &PgPool,
    idx: i32,
    stale_before: Timestamp,
) -> Result<bool, StoreError> {
    let mut tx = crate::pool::begin(readers, "BEGIN").await?;
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{MARK_OFFLINE_LOCK_TIMEOUT_MS}ms'"
    ))
    .execute(&mut *tx)
    .await?;
    let marked = sqlx::query(MARK_OFFLINE)
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

/// The server's own clock, `clock_timestamp()` (the time of the call, not of the transaction).
pub(super) async fn server_time(readers: &PgPool) -> Result<ReferenceTime, StoreError> {
    let micros: i64 =
        sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
            .fetch_one(readers)
            .await?;
    Ok(ReferenceTime {
        time: Timestamp::from_i64(micros),
        source: "the PostgreSQL server's clock_timestamp()",
    })
}
