//! The topology store on PostgreSQL. Writes are rare, so each one simply locks the table
//! (`EXCLUSIVE` mode: readers proceed, writers queue) for its short transaction; that makes
//! "check the highest serial, then insert the next" atomic even with two managers (an active
//! and a zombie) on one database, without relying on isolation-level subtleties.

use std::time::Duration;

use async_trait::async_trait;
use meridian_core::topology::SignedTopologyTransaction;
use meridian_core::Timestamp;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};

use super::{
    admit_intent, record, serial_column, unchanged_update, Row, TopologyRecord, TopologyStore,
    TopologyStoreError, COLUMNS,
};
use crate::{fencing, pools, FenceSlot, StoreError};

/// How long a call waits for a connection before reporting the database unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

const LOCK: &str = "LOCK TABLE topology_transactions IN EXCLUSIVE MODE";

#[derive(Debug, Clone)]
pub struct PgTopologyStore {
    pool: PgPool,
    /// Checked at the start of every write transaction; shared by clones of this store.
    fence: FenceSlot,
}

impl PgTopologyStore {
    /// Connects (at most `max_connections`, capped at 4: the manager makes one change at a
    /// time) and migrates the schema.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let migrator = pools::connect_postgres_migrated(options.clone(), ACQUIRE_TIMEOUT).await?;
        migrator.close().await;
        let pool = pools::lazy_postgres_pool(options, max_connections.clamp(1, 4), ACQUIRE_TIMEOUT);
        Ok(Self {
            pool,
            fence: FenceSlot::default(),
        })
    }
}

async fn row_at(
    connection: &mut PgConnection,
    serial: i64,
) -> Result<Option<TopologyRecord>, TopologyStoreError> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM topology_transactions WHERE serial = $1"
    ))
    .bind(serial)
    .fetch_optional(&mut *connection)
    .await?;
    row.map(record).transpose()
}

#[async_trait]
impl TopologyStore for PgTopologyStore {
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
        let mut tx = self.pool.begin().await?;
        fencing::check_postgres(&mut tx, &self.fence).await?;
        sqlx::query(LOCK).execute(&mut *tx).await?;
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
             VALUES ($1, $2, $3, $4, NULL)",
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
        let mut tx = self.pool.begin().await?;
        fencing::check_postgres(&mut tx, &self.fence).await?;
        sqlx::query(LOCK).execute(&mut *tx).await?;
        let updated = sqlx::query(
            "UPDATE topology_transactions SET max_sequencing_time_us = $2 \
             WHERE serial = $1 AND effective_us IS NULL",
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
        let mut tx = self.pool.begin().await?;
        fencing::check_postgres(&mut tx, &self.fence).await?;
        sqlx::query(LOCK).execute(&mut *tx).await?;
        let updated = sqlx::query(
            "UPDATE topology_transactions SET effective_us = $2 \
             WHERE serial = $1 AND effective_us IS NULL",
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
