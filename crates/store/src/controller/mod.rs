//! The controller's store contract: its plans and its append-only audit log, persisted so that
//! a controller taking over (the other replica, after a kill -9) finishes a plan where the
//! deposed one left it, and so that every approval and step outcome stays on record.
//!
//! Data model (the same on both backends):
//! - `controller_plan(id, state, body_json, updated_at_us)`: one row per plan, rewritten whole
//!   at every change ([`ControllerStore::commit`] upserts it);
//! - `controller_audit(seq, at_us, kind, plan, body_json)`: the audit log, `seq` gap-free and
//!   increasing from 1 in commit order. Triggers make it append-only in the database itself:
//!   an `UPDATE` or `DELETE` (and on PostgreSQL a `TRUNCATE`) of it fails, whoever sends it.
//!
//! Bodies are opaque JSON text to the store (it checks only that they are JSON): the
//! controller crate owns their encoding, and the store does not depend on it.
//!
//! Invariants the controller relies on:
//! - [`ControllerStore::commit`] writes a whole [`ControllerBatch`] — the effects of one engine
//!   call, persisted before the controller acts on them — in one transaction or nothing: a
//!   refused record, a lost connection or a lost lease leaves no part of it behind;
//! - every commit runs the fencing check of the store's [`FenceSlot`] first, inside its
//!   transaction, so a deposed controller (its lease taken over) writes nothing;
//! - audit sequence numbers are assigned under an exclusive write lock (SQLite's
//!   `BEGIN IMMEDIATE`, PostgreSQL's `LOCK TABLE ... IN EXCLUSIVE MODE`), so they have no gaps
//!   and follow commit order even with several committers on one database.
//!
//! [`open`] gives what one controller replica needs: the store, the replica lease its
//! replicas share (for `meridian_node::replica::ReplicaManager`) and the fence slot that
//! connects the two. One implementation serves both backends ([`SqlControllerStore`], in
//! `store`); the SQL is the same on both except the table lock.

mod store;

pub use store::SqlControllerStore;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use meridian_core::{SynchronizerId, Timestamp};

use crate::owner::{claim_database, DatabaseOwner, NodeKind};
use crate::{open_lease_store, FenceSlot, LeaseStore, StorageConfig, StoreError};

/// The most records [`ControllerStore::audit_after`] and [`ControllerStore::audit_latest`]
/// return in one call, whatever limit is asked for.
pub const MAX_AUDIT_READ: u32 = 1_000;

/// The most plans plus audit records one [`ControllerBatch`] may hold: an engine call yields
/// a handful; more is a bug, refused before anything is written.
pub const MAX_BATCH_RECORDS: usize = 1_000;

/// The largest `body_json` the store accepts, in bytes: a plan with every step and outcome is
/// a few kilobytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The lease node name both replicas of a deployment's controller share (`controller-a` and
/// `controller-b` are its holders).
pub const LEASE_NODE: &str = "controller";

/// One plan as stored: its id, its state's name, the whole plan as JSON and when it last
/// changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPlan {
    /// 1 to 200 bytes.
    pub id: String,
    /// The plan state's name (`awaiting-approval`, `running`, ...), 1 to 100 bytes.
    pub state: String,
    /// A JSON value, at most [`MAX_BODY_BYTES`].
    pub body_json: String,
    pub updated_at: Timestamp,
}

/// An audit record to append; the store assigns its `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditRecord {
    pub at: Timestamp,
    /// What the record is about (`plan-approved`, `step-done`, ...), 1 to 100 bytes.
    pub kind: String,
    /// The plan it concerns, if any, 1 to 200 bytes.
    pub plan: Option<String>,
    /// A JSON value, at most [`MAX_BODY_BYTES`].
    pub body_json: String,
}

/// An audit record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAuditRecord {
    /// From 1, gap-free, in commit order.
    pub seq: u64,
    pub at: Timestamp,
    pub kind: String,
    pub plan: Option<String>,
    pub body_json: String,
}

/// One batch of effects, committed in ONE transaction, fenced like every replicated write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerBatch {
    /// Upserted by id; a plan listed twice is written as its last occurrence.
    pub plans: Vec<StoredPlan>,
    /// Appended in this order.
    pub audit: Vec<NewAuditRecord>,
}

impl ControllerBatch {
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty() && self.audit.is_empty()
    }
}

#[async_trait]
pub trait ControllerStore: Send + Sync + 'static {
    /// This store's fencing slot (see [`crate::lease`]): the replica manager sets it, and every
    /// commit checks it first. Unset (the default), commits are not fenced. Clones share the
    /// slot.
    fn fence(&self) -> FenceSlot;

    /// Upserts the plans and appends the records (seq gap-free, increasing); returns the seqs,
    /// one per record of `batch.audit`, in its order. All or nothing: a record the store
    /// refuses (not JSON, too large, an empty id or kind, more than [`MAX_BATCH_RECORDS`]), a
    /// fenced store ([`StoreError::LeaseLost`], [`StoreError::Passive`]) or a database error
    /// leaves the database as it was. An empty batch writes nothing and touches no database.
    async fn commit(&self, batch: &ControllerBatch) -> Result<Vec<u64>, StoreError>;

    /// Every plan, any state, in id order with shorter ids first (`plan-2` before `plan-10`).
    async fn plans(&self) -> Result<Vec<StoredPlan>, StoreError>;

    /// Records with seq > after, oldest first, at most `limit` (capped at [`MAX_AUDIT_READ`]).
    async fn audit_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredAuditRecord>, StoreError>;

    /// The newest `limit` records (capped at [`MAX_AUDIT_READ`]), oldest first.
    async fn audit_latest(&self, limit: u32) -> Result<Vec<StoredAuditRecord>, StoreError>;
}

/// What one controller replica opens: the store, the replica lease the controller's replicas
/// share, and the fence slot `meridian_node::replica::ReplicaManager::new` takes, already the
/// store's own (`fence` and `store.fence()` are one slot).
pub struct ControllerStores {
    pub store: Arc<dyn ControllerStore>,
    pub lease: Arc<dyn LeaseStore>,
    pub fence: FenceSlot,
}

impl std::fmt::Debug for ControllerStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerStores")
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

/// The controller's database by default: `<data-dir>/controller/controller.db`.
pub fn default_storage(data_dir: &Path) -> StorageConfig {
    StorageConfig::Sqlite {
        path: data_dir.join("controller").join("controller.db"),
    }
}

/// Opens (and migrates) the controller's database `config` names, for a replica of the
/// controller whose replicas share the lease of `node` (normally [`LEASE_NODE`]).
///
/// First it claims the database (see [`crate::owner`]) as the controller `node` of
/// `synchronizer` (the deployment's, `None` if it has no owner key), so that a controller
/// pointed at a node's database — or a node at the controller's — is refused with
/// [`StoreError::ForeignDatabase`] before anything is written. On SQLite the file's directory
/// is created if missing. Transient errors (the database away) are worth retrying; the caller
/// decides how long.
pub async fn open(
    config: &StorageConfig,
    node: &str,
    synchronizer: Option<SynchronizerId>,
) -> Result<ControllerStores, StoreError> {
    if let StorageConfig::Sqlite { path } = config {
        if let Some(directory) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(directory).map_err(|error| {
                StoreError::Database(sqlx::Error::Configuration(
                    format!(
                        "creating the controller's database directory {}: {error}",
                        directory.display()
                    )
                    .into(),
                ))
            })?;
        }
    }
    let owner = DatabaseOwner::new(NodeKind::Controller, node, synchronizer);
    claim_database(config, &owner).await?;
    let store = SqlControllerStore::open_config(config).await?;
    let fence = store.fence();
    let lease = open_lease_store(config, node).await?;
    Ok(ControllerStores {
        store: Arc::new(store),
        lease,
        fence,
    })
}

/// Checks what the database's constraints cannot (that a body is JSON, sizes, the batch's
/// length) before anything is written, naming the record and the field.
pub(crate) fn check_batch(batch: &ControllerBatch) -> Result<(), StoreError> {
    let records = batch.plans.len() + batch.audit.len();
    if records > MAX_BATCH_RECORDS {
        return Err(refused(format!(
            "a controller batch of {records} records exceeds the limit of {MAX_BATCH_RECORDS}"
        )));
    }
    for (index, plan) in batch.plans.iter().enumerate() {
        check_body(&plan.body_json).map_err(|problem| {
            refused(format!("plan {index} ({}): body_json {problem}", plan.id))
        })?;
    }
    for (index, record) in batch.audit.iter().enumerate() {
        check_body(&record.body_json).map_err(|problem| {
            refused(format!(
                "audit record {index} ({}): body_json {problem}",
                record.kind
            ))
        })?;
    }
    Ok(())
}

fn check_body(body: &str) -> Result<(), String> {
    if body.len() > MAX_BODY_BYTES {
        return Err(format!(
            "is {} bytes, more than {MAX_BODY_BYTES}",
            body.len()
        ));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|error| format!("is not JSON: {error}"))
}

/// A value the store refuses to write, the way the other stores report one (the caller's bug,
/// not a database that is away: definite, not transient).
fn refused(detail: String) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(detail.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: &str, body: &str) -> StoredPlan {
        StoredPlan {
            id: id.into(),
            state: "running".into(),
            body_json: body.into(),
            updated_at: Timestamp::from_micros(1),
        }
    }

    #[test]
    fn bodies_must_be_json_and_the_message_names_the_record() {
        let good = ControllerBatch {
            plans: vec![plan("plan-1", "{\"a\":1}")],
            audit: vec![NewAuditRecord {
                at: Timestamp::from_micros(1),
                kind: "plan-proposed".into(),
                plan: None,
                body_json: "null".into(),
            }],
        };
        assert!(check_batch(&good).is_ok());

        let mut bad = good.clone();
        bad.audit[0].body_json = "{not json".into();
        let error = check_batch(&bad).expect_err("not JSON").to_string();
        assert!(
            error.contains("audit record 0 (plan-proposed): body_json is not JSON"),
            "{error}"
        );
        assert!(!error.is_empty());

        let mut bad = good.clone();
        bad.plans[0].body_json = format!("\"{}\"", "x".repeat(MAX_BODY_BYTES));
        let error = check_batch(&bad).expect_err("too large").to_string();
        assert!(error.contains("plan 0 (plan-1): body_json is"), "{error}");

        let bad = ControllerBatch {
            plans: (0..=MAX_BATCH_RECORDS)
                .map(|n| plan(&format!("plan-{n}"), "{}"))
                .collect(),
            audit: vec![],
        };
        let error = check_batch(&bad).expect_err("too many").to_string();
        assert!(error.contains("exceeds the limit"), "{error}");
        assert!(!refused(String::new()).is_transient());
    }
}
