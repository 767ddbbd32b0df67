//! Meridian's database layer. Each component has one store trait (here: [`SequencerStore`]);
//! SQLite (the embedded default) and PostgreSQL implement it, and one conformance suite
//! (`tests/conformance.rs`) holds both to the same contract. Migrations are plain SQL files
//! under `migrations/<backend>/`, embedded at compile time.

mod common;
mod error;
mod fencing;
pub mod lease;
pub mod mediator;
pub mod participant;
mod participant_rows;
mod participant_sql;
mod pools;
pub mod postgres;
pub mod sequencer;
pub mod sqlite;
pub mod topology;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use error::StoreError;
pub use lease::{Epoch, FenceSlot, LeaseState, LeaseStore, PgLeaseStore, SqliteLeaseStore};
pub use participant::{
    CompletionRecord, DedupRecord, DedupState, ParticipantBatch, ParticipantSnapshot,
    ParticipantStore, PendingRecord, StoredContract, TransactionRecord,
};
pub use participant_sql::{PgParticipantStore, SqliteParticipantStore};
pub use sequencer::{
    BackendStatus, Incarnation, InstanceClaim, InstanceStart, InstanceState, MemberRecord,
    MemberSeq, NewEvent, SequencerStore, StoredEvent, WriteResult,
};
pub use topology::{open_topology_store, TopologyRecord, TopologyStore, TopologyStoreError};

/// Where a component keeps its state. Deserialized from the `[storage]` table of node configs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum StorageConfig {
    /// An SQLite database file (created if missing), opened in WAL mode with `synchronous=FULL`.
    Sqlite { path: std::path::PathBuf },
    /// A PostgreSQL connection URL, e.g. `postgres://meridian@127.0.0.1:5432/sequencer`.
    Postgres {
        url: String,
        /// Connections in the pool; one of them is the writer.
        #[serde(default = "default_pool_size")]
        max_connections: u32,
    },
}

fn default_pool_size() -> u32 {
    8
}

/// Opens (and migrates) the sequencer store the config names.
pub async fn open_sequencer_store(
    config: &StorageConfig,
) -> Result<Arc<dyn SequencerStore>, StoreError> {
    Ok(match config {
        StorageConfig::Sqlite { path } => Arc::new(sqlite::SqliteSequencerStore::open(path).await?),
        StorageConfig::Postgres {
            url,
            max_connections,
        } => Arc::new(postgres::PgSequencerStore::connect(url, *max_connections).await?),
    })
}

/// Opens (and migrates) the mediator store the config names.
pub async fn open_mediator_store(
    config: &StorageConfig,
) -> Result<Arc<dyn mediator::MediatorStore>, StoreError> {
    Ok(match config {
        StorageConfig::Sqlite { path } => {
            Arc::new(mediator::sqlite::SqliteMediatorStore::open(path).await?)
        }
        StorageConfig::Postgres {
            url,
            max_connections,
        } => Arc::new(mediator::postgres::PgMediatorStore::connect(url, *max_connections).await?),
    })
}

/// Opens (and migrates) the participant store the config names.
pub async fn open_participant_store(
    config: &StorageConfig,
) -> Result<Arc<dyn ParticipantStore>, StoreError> {
    Ok(match config {
        StorageConfig::Sqlite { path } => Arc::new(SqliteParticipantStore::open(path).await?),
        StorageConfig::Postgres {
            url,
            max_connections,
        } => Arc::new(PgParticipantStore::connect(url, *max_connections).await?),
    })
}

/// Opens (and migrates) the replica lease of `node` in the database the config names: the
/// node's own database, shared by its replicas. One lease store per node and process; it keeps
/// its own connection (PostgreSQL: a dedicated session for the advisory lock, plus one for
/// status reads; SQLite: one connection and the sidecar lock file `<path>.lease-<node>`).
pub async fn open_lease_store(
    config: &StorageConfig,
    node: &str,
) -> Result<Arc<dyn LeaseStore>, StoreError> {
    Ok(match config {
        StorageConfig::Sqlite { path } => Arc::new(SqliteLeaseStore::open(path, node).await?),
        StorageConfig::Postgres { url, .. } => Arc::new(PgLeaseStore::connect(url, node).await?),
    })
}
