//! The sequencer store's statements that are SQLite's own: bulk inserts as multi-row `VALUES`
//! (chunked below SQLite's limit on bound parameters) and deleting a zombie's events with
//! subqueries.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use meridian_core::Timestamp;
use sqlx::{Column as _, Row as _, Sqlite, SqliteConnection, SqlitePool};

use super::common::{self, advance_watermark, BatchOutcome, CURRENT_INCARNATION};
use super::{Incarnation, NewEvent, ReferenceTime, WriteResult};
use crate::pool::{self, OpenTransaction, RunScript, Script};
use crate::StoreError;

/// Rows per multi-row `INSERT`. At five columns that is 2,500 bound parameters, far below
/// SQLite's limit, and large enough that per-statement overhead no longer matters.
const ROWS_PER_INSERT: usize = 500;

pub(super) async fn delete_events_above(
    connection: &mut SqliteConnection,
    idx: i32,
    own: i64,
) -> Result<u64, StoreError> {
    sqlx::query(
        "DELETE FROM event_recipients \
         WHERE member IN (SELECT seq FROM members) \
           AND ts IN (SELECT ts FROM events WHERE instance = $1 AND ts > $2)",
    )
    .bind(idx)
    .bind(own)
    .execute(&mut *connection)
    .await?;
    sqlx::query(
        "DELETE FROM message_ids WHERE (sender, message_id, ts) IN \
         (SELECT sender, message_id, ts FROM events WHERE instance = $1 AND ts > $2)",
    )
    .bind(idx)
    .bind(own)
    .execute(&mut *connection)
    .await?;
    Ok(
        sqlx::query("DELETE FROM events WHERE instance = $1 AND ts > $2")
            .bind(idx)
            .bind(own)
            .execute(&mut *connection)
            .await?
            .rows_affected(),
    )
}

/// [`WriteBatch::write_batch`](super::store::WriteBatch) in two calls to the connection's
/// thread, where a statement per step took five: one text begins the transaction, advances
/// the watermark and claims the message ids (rows of both come back; the advance's first
/// column is named `watermark`), the other inserts the new events and commits. Duplicates,
/// rare (client retries), read their originals in between.
pub(super) async fn write_batch(
    writer: &SqlitePool,
    idx: i32,
    incarnation: Incarnation,
    watermark: Timestamp,
    firsts: &[&NewEvent],
) -> Result<BatchOutcome, StoreError> {
    let mut claim = Script::<Sqlite>::transaction(&pool::SQLITE);
    advance_watermark(
        &pool::SQLITE,
        claim.statement(""),
        idx,
        incarnation,
        watermark,
    );
    claim.chunked(
        "INSERT INTO message_ids (sender, message_id, ts, expires_at) ",
        firsts,
        ROWS_PER_INSERT,
        |mut row, event| {
            row.push_bind(event.sender.0)
                .push_bind(event.message_id.as_str())
                .push_bind(event.timestamp.as_i64())
                .push_bind(event.max_sequencing_time.as_i64());
        },
        " ON CONFLICT DO NOTHING RETURNING sender, message_id",
    );
    let mut open = OpenTransaction::acquire(writer).await?;
    let connection = open.connection();
    let mut advanced: Option<common::AdvancedRow> = None;
    let mut claimed: Vec<(i64, String)> = Vec::with_capacity(firsts.len());
    for row in claim.fetch_all(&mut *connection, true).await? {
        if row.column(0).name() == "watermark" {
            advanced = Some((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
        } else {
            claimed.push((row.try_get(0)?, row.try_get(1)?));
        }
    }
    let Some(advanced) = advanced else {
        sqlx::query("ROLLBACK").execute(&mut *connection).await?;
        let current: Option<i64> = sqlx::query_scalar(CURRENT_INCARNATION)
            .bind(idx)
            .fetch_optional(&mut *connection)
            .await?;
        open.ended();
        return Ok(BatchOutcome::Refused { current });
    };
    let mut verdicts = vec![WriteResult::Sequenced; firsts.len()];
    if claimed.len() < firsts.len() {
        let claimed: HashSet<(i64, &str)> = claimed.iter().map(|(s, m)| (*s, m.as_str())).collect();
        for (verdict, event) in verdicts.iter_mut().zip(firsts) {
            if claimed.contains(&(event.sender.0, event.message_id.as_str())) {
                continue;
            }
            let original: Option<i64> = sqlx::query_scalar(
                "SELECT ts FROM message_ids WHERE sender = $1 AND message_id = $2",
            )
            .bind(event.sender.0)
            .bind(event.message_id.as_str())
            .fetch_optional(&mut *connection)
            .await?;
            let original = original.ok_or_else(|| {
                StoreError::corrupt(
                    "message_ids",
                    format!(
                        "({}, {}) conflicted on insert but cannot be read",
                        event.sender.0, event.message_id
                    ),
                )
            })?;
            *verdict = WriteResult::Duplicate {
                original: Timestamp::from_i64(original),
            };
        }
    }
    let new = common::sequenced(firsts, &verdicts);
    let recipients: Vec<(i64, i64)> = new
        .iter()
        .flat_map(|event| {
            let ts = event.timestamp.as_i64();
            event.recipients.iter().map(move |member| (member.0, ts))
        })
        .collect();
    let mut insert = Script::<Sqlite>::new(&pool::SQLITE);
    insert.chunked(
        "INSERT INTO events (ts, instance, sender, message_id, batch) ",
        &new,
        ROWS_PER_INSERT,
        |mut row, event| {
            row.push_bind(event.timestamp.as_i64())
                .push_bind(idx)
                .push_bind(event.sender.0)
                .push_bind(event.message_id.as_str())
                .push_bind(event.batch.as_slice());
        },
        "",
    );
    insert.chunked(
        "INSERT INTO event_recipients (member, ts) ",
        &recipients,
        ROWS_PER_INSERT,
        |mut row, &(member, ts)| {
            row.push_bind(member).push_bind(ts);
        },
        "",
    );
    insert.statement("COMMIT");
    connection.run(insert).await?;
    open.ended();
    Ok(BatchOutcome::Written { verdicts, advanced })
}

/// The kernel's clock, read without this process's `clock_gettime`: the modification time the
/// kernel stamps on a small file next to the database when it is written. The file lives in
/// the database's own directory (which SQLite needs writable for its WAL anyway), so writing
/// it never touches the database or its write lock.
pub(super) async fn kernel_time(database: &Path) -> Result<ReferenceTime, StoreError> {
    let mut name = database.as_os_str().to_owned();
    name.push("-clock");
    let probe = PathBuf::from(name);
    let stamped = tokio::task::spawn_blocking(move || -> std::io::Result<SystemTime> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&probe)?;
        file.write_all(b"clock probe\n")?;
        file.metadata()?.modified()
    })
    .await
    .map_err(|joined| StoreError::Unavailable(sqlx::Error::Io(std::io::Error::other(joined))))?
    .map_err(|error| StoreError::Unavailable(sqlx::Error::Io(error)))?;
    let micros = stamped
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros());
    Ok(ReferenceTime {
        time: Timestamp::from_micros(u64::try_from(micros).unwrap_or(u64::MAX)),
        source: "the kernel's clock (the modification time of a file next to the SQLite database)",
    })
}
