//! The controller store on either backend. The controller writes a few batches a second at
//! most, so one small pool serves reads and writes; each commit is one short transaction:
//! the fencing check, the table lock (PostgreSQL; SQLite's `BEGIN IMMEDIATE` already holds the
//! file's), the next sequence number, and a multi-row statement per table.

use std::collections::BTreeMap;

use async_trait::async_trait;
use meridian_core::Timestamp;

use super::{
    check_batch, ControllerBatch, ControllerStore, NewAuditRecord, StoredAuditRecord, StoredPlan,
    MAX_AUDIT_READ,
};
use crate::fencing::FencedConnection;
use crate::pool::{on_backend, PoolSettings, PostgresLayout, RunScript, Script, StorePool};
use crate::{FenceSlot, StorageConfig, StoreError};

/// Rows per multi-row statement: five bound parameters each, far below either backend's limit.
const ROWS_PER_STATEMENT: usize = 500;

const AUDIT: &str = "controller_audit";

const AUDIT_COLUMNS: &str = "seq, at_us, kind, plan, body_json";

const POOL: PoolSettings = PoolSettings {
    store: "controller",
    sqlite_foreign_keys: false,
    // Both controller replicas may open a fresh file at the same moment; SQLite has no
    // migration lock.
    sqlite_migrate_attempts: 5,
    // One connection serves reads and writes: the controller's load is tiny.
    sqlite_readers: None,
    postgres: PostgresLayout::Shared { cap: 4 },
};

/// The controller store on either backend.
#[derive(Debug, Clone)]
pub struct SqlControllerStore {
    pool: StorePool,
    /// Checked at the start of every commit; shared by clones of this store.
    fence: FenceSlot,
}

impl SqlControllerStore {
    /// Opens (and migrates) the database the config names, unfenced until a replica manager
    /// sets [`ControllerStore::fence`]. [`super::open`] is the whole opening (owner claim,
    /// lease); this is the store alone.
    pub async fn open_config(config: &StorageConfig) -> Result<Self, StoreError> {
        Ok(Self {
            pool: StorePool::open(config, &POOL).await?,
            fence: FenceSlot::default(),
        })
    }
}

/// A stored audit row: seq, at, kind, plan, body.
type AuditRow = (i64, i64, String, Option<String>, String);

/// A stored plan row: id, state, body, updated at.
type PlanRow = (String, String, String, i64);

fn audit_record(row: AuditRow) -> Result<StoredAuditRecord, StoreError> {
    let (seq, at_us, kind, plan, body_json) = row;
    let seq = u64::try_from(seq)
        .map_err(|_| StoreError::corrupt("controller_audit", format!("negative seq {seq}")))?;
    Ok(StoredAuditRecord {
        seq,
        at: Timestamp::from_i64(at_us),
        kind,
        plan,
        body_json,
    })
}

fn stored_plan(row: PlanRow) -> StoredPlan {
    let (id, state, body_json, updated_at_us) = row;
    StoredPlan {
        id,
        state,
        body_json,
        updated_at: Timestamp::from_i64(updated_at_us),
    }
}

/// The plans to write: each id once, as its last occurrence in the batch (one multi-row upsert
/// must not touch a row twice), in id order (so that two committers lock rows in one order).
fn distinct_plans(plans: &[StoredPlan]) -> Vec<&StoredPlan> {
    let mut last: BTreeMap<&str, &StoredPlan> = BTreeMap::new();
    for plan in plans {
        last.insert(plan.id.as_str(), plan);
    }
    last.into_values().collect()
}

/// The audit rows to insert from `next` on: (seq, record).
fn numbered(next: i64, audit: &[NewAuditRecord]) -> Vec<(i64, &NewAuditRecord)> {
    (next..).zip(audit).collect()
}

#[async_trait]
impl ControllerStore for SqlControllerStore {
    fn fence(&self) -> FenceSlot {
        self.fence.clone()
    }

    async fn commit(&self, batch: &ControllerBatch) -> Result<Vec<u64>, StoreError> {
        check_batch(batch)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let plans = distinct_plans(&batch.plans);
        let first: i64 = on_backend!(&self.pool, |writer, _, dialect| {
            let mut tx = crate::pool::begin(writer, dialect.write_begin).await?;
            tx.check_fence(&self.fence).await?;
            let mut upserts = Script::<Db>::new(dialect);
            upserts.chunked(
                "INSERT INTO controller_plan (id, state, body_json, updated_at_us) ",
                &plans,
                ROWS_PER_STATEMENT,
                |mut row, plan| {
                    row.push_bind(plan.id.as_str())
                        .push_bind(plan.state.as_str())
                        .push_bind(plan.body_json.as_str())
                        .push_bind(plan.updated_at.as_i64());
                },
                " ON CONFLICT (id) DO UPDATE SET state = excluded.state, \
                 body_json = excluded.body_json, updated_at_us = excluded.updated_at_us",
            );
            tx.run(upserts).await?;
            let mut first = 0;
            if !batch.audit.is_empty() {
                // Readers proceed; a second committer waits here until this one commits, so
                // max(seq) + 1 is free and no number is skipped.
                if let Some(lock) = dialect.exclusive_lock(AUDIT) {
                    sqlx::query(&lock).execute(&mut *tx).await?;
                }
                let highest: i64 =
                    sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM controller_audit")
                        .fetch_one(&mut *tx)
                        .await?;
                first = highest.checked_add(1).ok_or_else(|| {
                    StoreError::corrupt(
                        "controller_audit",
                        format!("seq {highest} is the largest there can be"),
                    )
                })?;
                let rows = numbered(first, &batch.audit);
                let mut inserts = Script::<Db>::new(dialect);
                inserts.chunked(
                    "INSERT INTO controller_audit (seq, at_us, kind, plan, body_json) ",
                    &rows,
                    ROWS_PER_STATEMENT,
                    |mut row, (seq, record)| {
                        row.push_bind(*seq)
                            .push_bind(record.at.as_i64())
                            .push_bind(record.kind.as_str())
                            .push_bind(record.plan.as_deref())
                            .push_bind(record.body_json.as_str());
                    },
                    "",
                );
                tx.run(inserts).await?;
            }
            tx.commit().await?;
            first
        });
        // `first` >= 1 whenever there are records; the seqs are the rows just inserted.
        let first = u64::try_from(first).unwrap_or(0);
        Ok((first..).take(batch.audit.len()).collect())
    }

    async fn plans(&self) -> Result<Vec<StoredPlan>, StoreError> {
        let rows: Vec<PlanRow> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_as(
                "SELECT id, state, body_json, updated_at_us FROM controller_plan \
                 ORDER BY length(id), id",
            )
            .fetch_all(readers)
            .await?
        });
        Ok(rows.into_iter().map(stored_plan).collect())
    }

    async fn audit_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredAuditRecord>, StoreError> {
        // No seq exceeds a BIGINT: past it, nothing comes after.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::from(limit.min(MAX_AUDIT_READ));
        let select =
            format!("SELECT {AUDIT_COLUMNS} FROM {AUDIT} WHERE seq > $1 ORDER BY seq LIMIT $2");
        let rows: Vec<AuditRow> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_as(&select)
                .bind(after)
                .bind(limit)
                .fetch_all(readers)
                .await?
        });
        rows.into_iter().map(audit_record).collect()
    }

    async fn audit_latest(&self, limit: u32) -> Result<Vec<StoredAuditRecord>, StoreError> {
        let limit = i64::from(limit.min(MAX_AUDIT_READ));
        let select = format!(
            "SELECT {AUDIT_COLUMNS} FROM \
             (SELECT {AUDIT_COLUMNS} FROM {AUDIT} ORDER BY seq DESC LIMIT $1) AS newest \
             ORDER BY seq"
        );
        let rows: Vec<AuditRow> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_as(&select)
                .bind(limit)
                .fetch_all(readers)
                .await?
        });
        rows.into_iter().map(audit_record).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: &str, state: &str) -> StoredPlan {
        StoredPlan {
            id: id.into(),
            state: state.into(),
            body_json: "{}".into(),
            updated_at: Timestamp::from_micros(1),
        }
    }

    #[test]
    fn a_plan_listed_twice_is_written_once_as_its_last_occurrence_in_id_order() {
        let plans = vec![
            plan("plan-2", "running"),
            plan("plan-1", "awaiting-approval"),
            plan("plan-1", "running"),
        ];
        let written: Vec<(&str, &str)> = distinct_plans(&plans)
            .into_iter()
            .map(|p| (p.id.as_str(), p.state.as_str()))
            .collect();
        assert_eq!(written, vec![("plan-1", "running"), ("plan-2", "running")]);
    }
}
