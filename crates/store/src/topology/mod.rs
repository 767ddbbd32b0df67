//! The topology manager's store contract: the owner-signed topology history, one row per serial.
//!
//! Data model (the same on both backends): `topology_transactions(serial, transaction_json,
//! signature, max_sequencing_time_us, effective_us)`. A row is written as an *intent* before
//! the transaction is sent through the sequencer (`effective_us` NULL) and *completed* with the
//! sequencing timestamp afterwards. Persisting first is what makes a crash between send and
//! persist recoverable: on restart the manager finds the incomplete intent and re-sends it
//! under the same message id, which the sequencer answers with the original timestamp.
//!
//! Invariants the store enforces, so that not even two managers racing on one database can
//! break them:
//! - serials are gap-free and strictly increasing: an intent must be `highest + 1` (1 first);
//! - at most one intent is incomplete, and it is the highest serial (a new intent is refused
//!   while one is open), so effective times follow serial order;
//! - a completed row never changes: completing again with another time is refused.
//!
//! Replication: every write transaction first runs the fencing check of
//! [`TopologyStore::fence`] inside the transaction; a deposed or passive replica gets
//! [`TopologyStoreError::Store`] with [`StoreError::LeaseLost`] / [`StoreError::Passive`].
//!
//! One implementation serves both backends ([`SqlTopologyStore`]). A manager makes a handful
//! of changes a day, so one connection pool serves reads and writes. Every write is one short
//! transaction that excludes other writers for its whole length, which makes "check the
//! highest serial, then insert the next" atomic even with two managers (an active and a
//! zombie) on one database: on SQLite `BEGIN IMMEDIATE` takes the file's write lock up front;
//! on PostgreSQL the transaction locks the table (`EXCLUSIVE` mode: readers proceed, writers
//! queue), without relying on isolation-level subtleties.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use meridian_core::topology::SignedTopologyTransaction;
use meridian_core::Timestamp;

use crate::fencing::FencedConnection;
use crate::pool::{self, on_backend, PoolSettings, PostgresLayout, StorePool};
use crate::{FenceSlot, StorageConfig, StoreError};

/// One serial of the topology history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyRecord {
    pub serial: u64,
    pub signed: SignedTopologyTransaction,
    /// Deadline of the latest send attempt.
    pub max_sequencing_time: Timestamp,
    /// The sequencing timestamp of the topology message; `None` while unpublished.
    pub effective: Option<Timestamp>,
}

impl TopologyRecord {
    pub fn is_complete(&self) -> bool {
        self.effective.is_some()
    }
}

/// Errors of the topology store. The manager tells a refused write (a bug, or a second
/// manager on the same database) apart from a database that is away.
#[derive(Debug, thiserror::Error)]
pub enum TopologyStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("topology serial {serial} is already recorded with a different transaction")]
    SerialTaken { serial: u64 },
    #[error("topology serial {serial} does not follow the highest recorded serial ({highest})")]
    SerialGap { serial: u64, highest: u64 },
    #[error("topology serial {pending} is still unpublished; it must complete before serial {serial} is recorded")]
    Pending { pending: u64, serial: u64 },
    #[error("topology serial {serial} is not recorded")]
    UnknownSerial { serial: u64 },
    #[error("topology serial {serial} already took effect at {effective}")]
    AlreadyComplete { serial: u64, effective: Timestamp },
    #[error("topology serial {serial} does not fit a BIGINT column")]
    SerialOutOfRange { serial: u64 },
}

impl From<sqlx::Error> for TopologyStoreError {
    fn from(error: sqlx::Error) -> Self {
        TopologyStoreError::Store(StoreError::from(error))
    }
}

impl crate::follow::StoreFailure for TopologyStoreError {
    fn into_store(self) -> Result<StoreError, Self> {
        match self {
            TopologyStoreError::Store(error) => Ok(error),
            other => Err(other),
        }
    }
}

impl TopologyStoreError {
    /// Whether retrying later may succeed (the database was away).
    pub fn is_transient(&self) -> bool {
        matches!(self, TopologyStoreError::Store(error) if error.is_transient())
    }
}

#[async_trait]
pub trait TopologyStore: Send + Sync + 'static {
    /// This store's fencing slot (see [`crate::lease`]): the replica manager sets it, and every
    /// write transaction checks it first. Unset (the default), writes are not fenced. Clones
    /// share the slot.
    fn fence(&self) -> FenceSlot;

    /// Every record, in serial order.
    async fn records(&self) -> Result<Vec<TopologyRecord>, TopologyStoreError>;

    /// Records the intent to publish `signed` as `serial` with a send deadline, before sending.
    /// `serial` must be the highest recorded serial + 1 (1 on an empty store), and no other
    /// intent may be incomplete. Recording the identical transaction again is a no-op that
    /// returns `false` (a retry after an ambiguous commit); a different transaction under a
    /// recorded serial is [`TopologyStoreError::SerialTaken`].
    async fn record_intent(
        &self,
        serial: u64,
        signed: &SignedTopologyTransaction,
        max_sequencing_time: Timestamp,
    ) -> Result<bool, TopologyStoreError>;

    /// Moves an incomplete intent's deadline, for a new send attempt once the previous one is
    /// known not to have been sequenced.
    async fn renew_intent(
        &self,
        serial: u64,
        max_sequencing_time: Timestamp,
    ) -> Result<(), TopologyStoreError>;

    /// Records the effective time of an intent. Idempotent for the same time; another time for
    /// a completed serial is [`TopologyStoreError::AlreadyComplete`] and changes nothing.
    async fn complete(&self, serial: u64, effective: Timestamp) -> Result<(), TopologyStoreError>;
}

/// Opens (and migrates) the topology store the config names.
pub async fn open_topology_store(
    config: &StorageConfig,
) -> Result<Arc<dyn TopologyStore>, StoreError> {
    Ok(Arc::new(SqlTopologyStore::open_config(config).await?))
}

const TABLE: &str = "topology_transactions";

/// The topology store on either backend.
#[derive(Debug, Clone)]
pub struct SqlTopologyStore {
    pool: StorePool,
    /// Checked at the start of every write transaction; shared by clones of this store.
    fence: FenceSlot,
}

/// The former name of [`SqlTopologyStore`] (`open(path)` on SQLite), kept for existing
/// callers.
pub type SqliteTopologyStore = SqlTopologyStore;

const POOL: PoolSettings = PoolSettings {
    store: "topology",
    sqlite_foreign_keys: false,
    sqlite_migrate_attempts: pool::MIGRATE_ONCE,
    // One connection serves reads and writes (see the module docs).
    sqlite_readers: None,
    // The manager makes one change at a time.
    postgres: PostgresLayout::Shared { cap: 4 },
};

impl SqlTopologyStore {
    /// Opens the SQLite database file, creating and migrating it if needed.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_config(&StorageConfig::Sqlite { path: path.into() }).await
    }

    /// Opens (and migrates) the database the config names.
    pub async fn open_config(config: &StorageConfig) -> Result<Self, StoreError> {
        Ok(Self {
            pool: StorePool::open(config, &POOL).await?,
            fence: FenceSlot::default(),
        })
    }

    /// Sets an incomplete intent's `column` to `value` in one fenced write transaction; an
    /// update that matches nothing is explained by [`unchanged_update`].
    async fn update_intent(
        &self,
        serial: u64,
        column: &str,
        value: Timestamp,
        completing_with: Option<Timestamp>,
    ) -> Result<(), TopologyStoreError> {
        let serial_value = serial_column(serial)?;
        let update =
            format!("UPDATE {TABLE} SET {column} = $2 WHERE serial = $1 AND effective_us IS NULL");
        on_backend!(&self.pool, |writer, _, dialect| {
            let mut tx = crate::pool::begin(writer, dialect.write_begin).await?;
            tx.check_fence(&self.fence).await?;
            if let Some(lock) = dialect.exclusive_lock(TABLE) {
                sqlx::query(&lock).execute(&mut *tx).await?;
            }
            let updated = sqlx::query(&update)
                .bind(serial_value)
                .bind(value.as_i64())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated == 0 {
                let row: Option<Row> = sqlx::query_as(&select_serial())
                    .bind(serial_value)
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.rollback().await?;
                return unchanged_update(serial, row.map(record).transpose()?, completing_with);
            }
            tx.commit().await?;
        });
        Ok(())
    }
}

fn select_serial() -> String {
    format!("SELECT {COLUMNS} FROM {TABLE} WHERE serial = $1")
}

#[async_trait]
impl TopologyStore for SqlTopologyStore {
    fn fence(&self) -> FenceSlot {
        self.fence.clone()
    }

    async fn records(&self) -> Result<Vec<TopologyRecord>, TopologyStoreError> {
        let select = format!("SELECT {COLUMNS} FROM {TABLE} ORDER BY serial");
        let rows: Vec<Row> = on_backend!(&self.pool, |_, readers, _| {
            sqlx::query_as(&select).fetch_all(readers).await?
        });
        rows.into_iter().map(record).collect()
    }

    async fn record_intent(
        &self,
        serial: u64,
        signed: &SignedTopologyTransaction,
        max_sequencing_time: Timestamp,
    ) -> Result<bool, TopologyStoreError> {
        let column = serial_column(serial)?;
        let highest_row = format!("SELECT {COLUMNS} FROM {TABLE} ORDER BY serial DESC LIMIT 1");
        Ok(on_backend!(&self.pool, |writer, _, dialect| {
            let mut tx = crate::pool::begin(writer, dialect.write_begin).await?;
            tx.check_fence(&self.fence).await?;
            if let Some(lock) = dialect.exclusive_lock(TABLE) {
                sqlx::query(&lock).execute(&mut *tx).await?;
            }
            let existing: Option<Row> = sqlx::query_as(&select_serial())
                .bind(column)
                .fetch_optional(&mut *tx)
                .await?;
            let highest: Option<Row> = sqlx::query_as(&highest_row)
                .fetch_optional(&mut *tx)
                .await?;
            let existing = existing.map(record).transpose()?;
            let highest = highest.map(record).transpose()?;
            if !admit_intent(serial, signed, existing, highest)? {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO topology_transactions \
                 (serial, transaction_json, signature, max_sequencing_time_us, effective_us) \
                 VALUES ($1, $2, $3, $4, NULL)",
            )
            .bind(column)
            .bind(&signed.transaction_json)
            .bind(&signed.signature)
            .bind(max_sequencing_time.as_i64())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            true
        }))
    }

    async fn renew_intent(
        &self,
        serial: u64,
        max_sequencing_time: Timestamp,
    ) -> Result<(), TopologyStoreError> {
        self.update_intent(serial, "max_sequencing_time_us", max_sequencing_time, None)
            .await
    }

    async fn complete(&self, serial: u64, effective: Timestamp) -> Result<(), TopologyStoreError> {
        self.update_intent(serial, "effective_us", effective, Some(effective))
            .await
    }
}

/// A row as both backends read it: serial, transaction, signature, deadline, effective time.
type Row = (i64, String, String, i64, Option<i64>);

const COLUMNS: &str = "serial, transaction_json, signature, max_sequencing_time_us, effective_us";

fn serial_column(serial: u64) -> Result<i64, TopologyStoreError> {
    i64::try_from(serial).map_err(|_| TopologyStoreError::SerialOutOfRange { serial })
}

fn record(row: Row) -> Result<TopologyRecord, TopologyStoreError> {
    let (serial, transaction_json, signature, deadline, effective) = row;
    let serial = u64::try_from(serial).map_err(|_| {
        StoreError::corrupt("topology_transactions", format!("negative serial {serial}"))
    })?;
    Ok(TopologyRecord {
        serial,
        signed: SignedTopologyTransaction {
            transaction_json,
            signature,
        },
        max_sequencing_time: Timestamp::from_i64(deadline),
        effective: effective.map(Timestamp::from_i64),
    })
}

/// The decision on a new intent, given the row already under that serial (if any) and the
/// highest row: shared by both backends so they refuse in exactly the same way.
fn admit_intent(
    serial: u64,
    signed: &SignedTopologyTransaction,
    existing: Option<TopologyRecord>,
    highest: Option<TopologyRecord>,
) -> Result<bool, TopologyStoreError> {
    if let Some(existing) = existing {
        if existing.signed == *signed {
            return Ok(false);
        }
        return Err(TopologyStoreError::SerialTaken { serial });
    }
    let top = highest.as_ref().map_or(0, |h| h.serial);
    if serial != top.saturating_add(1) {
        return Err(TopologyStoreError::SerialGap {
            serial,
            highest: top,
        });
    }
    if let Some(open) = highest.filter(|h| !h.is_complete()) {
        return Err(TopologyStoreError::Pending {
            pending: open.serial,
            serial,
        });
    }
    Ok(true)
}

/// Why an `UPDATE ... WHERE serial = ? AND effective_us IS NULL` changed nothing, given the
/// row as it is now. `Ok` when completing again with the time already recorded.
fn unchanged_update(
    serial: u64,
    row: Option<TopologyRecord>,
    completing_with: Option<Timestamp>,
) -> Result<(), TopologyStoreError> {
    match row {
        None => Err(TopologyStoreError::UnknownSerial { serial }),
        Some(TopologyRecord {
            effective: Some(effective),
            ..
        }) => {
            if completing_with == Some(effective) {
                Ok(())
            } else {
                Err(TopologyStoreError::AlreadyComplete { serial, effective })
            }
        }
        Some(_) => Err(TopologyStoreError::Store(StoreError::corrupt(
            "topology_transactions",
            format!("serial {serial} is incomplete yet the update matched no row"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(text: &str) -> SignedTopologyTransaction {
        SignedTopologyTransaction {
            transaction_json: text.into(),
            signature: "sig".into(),
        }
    }

    fn row(serial: u64, effective: Option<u64>) -> TopologyRecord {
        TopologyRecord {
            serial,
            signed: signed(&format!("tx{serial}")),
            max_sequencing_time: Timestamp::from_micros(1),
            effective: effective.map(Timestamp::from_micros),
        }
    }

    #[test]
    fn intents_must_be_next_and_alone() {
        assert!(admit_intent(1, &signed("a"), None, None).unwrap());
        assert!(matches!(
            admit_intent(2, &signed("a"), None, None),
            Err(TopologyStoreError::SerialGap {
                serial: 2,
                highest: 0
            })
        ));
        assert!(matches!(
            admit_intent(3, &signed("a"), None, Some(row(2, None))),
            Err(TopologyStoreError::Pending {
                pending: 2,
                serial: 3
            })
        ));
        assert!(!admit_intent(2, &signed("tx2"), Some(row(2, None)), Some(row(2, None))).unwrap());
        assert!(matches!(
            admit_intent(
                2,
                &signed("b"),
                Some(row(2, Some(5))),
                Some(row(2, Some(5)))
            ),
            Err(TopologyStoreError::SerialTaken { serial: 2 })
        ));
    }

    #[test]
    fn corrupt_rows_are_errors() {
        assert!(matches!(
            record((-1, "x".into(), "y".into(), 0, None)),
            Err(TopologyStoreError::Store(StoreError::Corrupt { .. }))
        ));
        assert!(matches!(
            serial_column(u64::MAX),
            Err(TopologyStoreError::SerialOutOfRange { .. })
        ));
    }
}
