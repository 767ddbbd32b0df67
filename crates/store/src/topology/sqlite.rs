//! The topology store on an SQLite file. A topology manager makes a handful of changes a day,
//! so one connection serves reads and writes; every write is one `BEGIN IMMEDIATE` transaction,
//! which takes the file's write lock up front and so also excludes a second process on the
//! same file between the check of the highest serial and the insert.

use std::path::Path;

use async_trait::async_trait;
use meridian_core::topology::SignedTopologyTransaction;
use meridian_core::Timestamp;
use sqlx::sqlite::{SqliteConnection, SqlitePool};

use super::{
    admit_intent, record, serial_column, unchanged_update, Row, TopologyRecord, TopologyStore,
    TopologyStoreError, COLUMNS,
};
use crate::{fencing, pools, FenceSlot, StoreError};

#[derive(Debug, Clone)]
pub struct SqliteTopologyStore {
    pool: SqlitePool,
    /// Checked at the start of every write transaction; shared by clones of this store.
    fence: FenceSlot,
}

impl SqliteTopologyStore {
    /// Opens the database file, creating and migrating it if needed.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        // One connection serves reads and writes (see the module docs).
        let pool =
            pools::open_sqlite_writer(&pools::sqlite_options(path), pools::MIGRATE_ONCE).await?;
        Ok(Self {
            pool,
            fence: FenceSlot::default(),
        })
    }
}

async fn row_at(
    connection: &mut SqliteConnection,
    serial: i64,
) -> Result<Option<TopologyRecord>, TopologyStoreError> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM topology_transactions WHERE serial = ?1"
    ))
    .bind(serial)
    .fetch_optional(&mut *connection)
    .await?;
    row.map(record).transpose()
}

#[async_trait]
impl TopologyStore for SqliteTopologyStore {
    fn fence(&self) -> FenceSlot {
        self.fence.clone()
    }

    async fn records(&self) -> Result<Vec<TopologyRecord>, TopologyStoreError> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM topology_transactions ORDER BY serial"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(record).collect()
    }

    async fn record_intent(
        &self,
        serial: u64,
        signed: &SignedTopologyTransaction,
        max_sequencing_time: Timestamp,
    ) -> Result<bool, TopologyStoreError> {
        let column = serial_column(serial)?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        fencing::check_sqlite(&mut tx, &self.fence).await?;
        let existing = row_at(&mut tx, column).await?;
        let highest: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM topology_transactions ORDER BY serial DESC LIMIT 1"
        ))
        .fetch_optional(&mut *tx)
        .await?;
        let highest = highest.map(record).transpose()?;
        if !admit_intent(serial, signed, existing, highest)? {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO topology_transactions \
             (serial, transaction_json, signature, max_sequencing_time_us, effective_us) \
             VALUES (?1, ?2, ?3, ?4, NULL)",
        )
        .bind(column)
        .bind(&signed.transaction_json)
        .bind(&signed.signature)
        .bind(max_sequencing_time.as_i64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn renew_intent(
        &self,
        serial: u64,
        max_sequencing_time: Timestamp,
    ) -> Result<(), TopologyStoreError> {
        let column = serial_column(serial)?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        fencing::check_sqlite(&mut tx, &self.fence).await?;
        let updated = sqlx::query(
            "UPDATE topology_transactions SET max_sequencing_time_us = ?2 \
             WHERE serial = ?1 AND effective_us IS NULL",
        )
        .bind(column)
        .bind(max_sequencing_time.as_i64())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let row = row_at(&mut tx, column).await?;
            tx.rollback().await?;
            return unchanged_update(serial, row, None);
        }
        tx.commit().await?;
        Ok(())
    }

    async fn complete(&self, serial: u64, effective: Timestamp) -> Result<(), TopologyStoreError> {
        let column = serial_column(serial)?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        fencing::check_sqlite(&mut tx, &self.fence).await?;
        let updated = sqlx::query(
            "UPDATE topology_transactions SET effective_us = ?2 \
             WHERE serial = ?1 AND effective_us IS NULL",
        )
        .bind(column)
        .bind(effective.as_i64())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let row = row_at(&mut tx, column).await?;
            tx.rollback().await?;
            return unchanged_update(serial, row, Some(effective));
        }
        tx.commit().await?;
        Ok(())
    }
}
