//! Meridian's database layer. Each component has one store trait and one module:
//! [`sequencer`], [`topology`], [`mediator`], [`participant`], the [`controller`]'s plans and
//! audit log, and the replica [`lease`]; and [`owner`], the record of which node a database
//! belongs to, checked at every start. One implementation per component serves both backends,
//! SQLite (the embedded default) and PostgreSQL: the SQL is written once wherever the dialects agree (sqlx accepts `$n`
//! placeholders on SQLite too), and per dialect only where they really differ (bulk inserts
//! through `UNNEST` or multi-row `VALUES`, `BEGIN IMMEDIATE`, table and row locks, advisory
//! locks). Every component opens its connections as one pool type (`pool::StorePool`: a
//! writer and readers on either backend), and every write transaction of a replicated node
//! runs the same fencing check (`fencing`). One conformance harness (`tests/harness`) holds
//! every store to its contract on both backends. Migrations are plain SQL files under
//! `migrations/<backend>/`, embedded at compile time.

pub mod controller;
mod error;
mod fencing;
pub mod follow;
#[cfg(test)]
mod generic_plans;
pub mod lease;
pub mod mediator;
mod migrations;
pub mod owner;
pub mod participant;
mod pool;
pub mod postgres_url;
pub mod sequencer;
pub mod topology;
pub mod writer_fence;

/// The sequencer store's former SQLite path, kept for existing callers.
pub mod sqlite {
    pub use crate::sequencer::SqliteSequencerStore;
}

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use error::StoreError;
pub use follow::{NoWriter, PassedOver};
pub use lease::{Epoch, FenceSlot, LeaseState, LeaseStore, PgLeaseStore, SqliteLeaseStore};
pub use mediator::SqlMediatorStore;
pub use owner::{claim_database, DatabaseOwner, ForeignDatabase, NodeKind, OwnerClaim};
pub use participant::{
    CompletionRecord, DedupRecord, DedupState, ForkRecord, ParticipantBatch, ParticipantSnapshot,
    ParticipantStore, PendingRecord, QuietPoint, RewindOutcome, SqlParticipantStore,
    StoredContract, TransactionRecord, QUIET_POINT_RETENTION_US,
};
pub use postgres_url::{HostAddr, PostgresUrl, TargetSessionAttrs, UrlError};
pub use sequencer::{
    BackendStatus, Committed, Incarnation, InstanceClaim, InstanceStart, InstanceState,
    MemberHistoryAt, MemberRecord, MemberSeq, NewEvent, OrderingProgress, PresenceHold,
    ReferenceTime, RoutedEvent, SequencerStore, SqlSequencerStore, StoredEvent, WriteResult,
};
pub use topology::{
    open_topology_store, SqlTopologyStore, TopologyRecord, TopologyStore, TopologyStoreError,
};
pub use writer_fence::Fenced;

/// Where a component keeps its state. Deserialized from the `[storage]` table of node configs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum StorageConfig {
    /// An SQLite database file (created if missing), opened in WAL mode with `synchronous=FULL`.
    Sqlite { path: std::path::PathBuf },
    /// A PostgreSQL connection URL, e.g. `postgres://meridian@127.0.0.1:5432/sequencer`, or
    /// libpq's multi-host form for a replicated database,
    /// `postgres://meridian@db1:5432,db2:5432/sequencer?target_session_attrs=read-write`: the
    /// store uses whichever host is the writer and follows it (see [`follow`]). Checked when the
    /// config is read ([`PostgresUrl::parse`]).
    Postgres {
        #[serde(deserialize_with = "checked_postgres_url")]
        url: String,
        /// Connections in the pool; one of them is the writer.
        #[serde(default = "default_pool_size")]
        max_connections: u32,
    },
}

fn default_pool_size() -> u32 {
    8
}

/// A PostgreSQL URL as written, refused at once (naming the bad part) if it cannot be used.
fn checked_postgres_url<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    let url = String::deserialize(deserializer)?;
    PostgresUrl::parse(&url).map_err(|error| serde::de::Error::custom(format!("url: {error}")))?;
    Ok(url)
}

/// Opens (and migrates) the sequencer store the config names.
pub async fn open_sequencer_store(
    config: &StorageConfig,
) -> Result<Arc<dyn SequencerStore>, StoreError> {
    Ok(Arc::new(SqlSequencerStore::open_config(config).await?))
}

/// Opens (and migrates) the mediator store the config names.
pub async fn open_mediator_store(
    config: &StorageConfig,
) -> Result<Arc<dyn mediator::MediatorStore>, StoreError> {
    Ok(Arc::new(SqlMediatorStore::open_config(config).await?))
}

/// Opens (and migrates) the participant store the config names.
pub async fn open_participant_store(
    config: &StorageConfig,
) -> Result<Arc<dyn ParticipantStore>, StoreError> {
    Ok(Arc::new(SqlParticipantStore::open_config(config).await?))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Configs are written by serializing values, so what is written must parse back the same
    /// (and in the shape operators write by hand: `backend = "..."` beside its fields).
    #[test]
    fn storage_config_round_trips_through_toml() {
        let configs = [
            StorageConfig::Sqlite {
                path: "/var/lib/meridian/node.db".into(),
            },
            StorageConfig::Postgres {
                url: "postgres://meridian@127.0.0.1:5432/sequencer".into(),
                max_connections: 3,
            },
        ];
        for config in configs {
            let text = toml::to_string(&config).expect("serialize");
            let parsed: StorageConfig = toml::from_str(&text).expect("parse");
            assert_eq!(parsed, config, "{text}");
        }
        let sqlite = toml::to_string(&StorageConfig::Sqlite {
            path: "node.db".into(),
        })
        .expect("serialize");
        assert_eq!(sqlite, "backend = \"sqlite\"\npath = \"node.db\"\n");
        let postgres: StorageConfig =
            toml::from_str("backend = \"postgres\"\nurl = \"postgres://h/db\"\n").expect("parse");
        assert_eq!(
            postgres,
            StorageConfig::Postgres {
                url: "postgres://h/db".into(),
                max_connections: 8
            }
        );
        assert!(toml::from_str::<StorageConfig>(
            "backend = \"sqlite\"\npath = \"a\"\nurl = \"b\"\n"
        )
        .is_err());
    }

    /// A URL the store could not use is refused when the config is read, naming what is wrong.
    #[test]
    fn a_bad_postgres_url_is_refused_when_read() {
        let replicated = "backend = \"postgres\"\n\
             url = \"postgres://m@db1:5432,db2:5433/p?target_session_attrs=read-write\"\n";
        assert!(toml::from_str::<StorageConfig>(replicated).is_ok());
        for (url, needle) in [
            ("postgres://m:pw@/p", "names no host"),
            ("postgres://m:pw@db1:5432,/p", "entry 2"),
            ("postgres://m:pw@db1:54x2/p", "port of host db1"),
            (
                "postgres://m:pw@db1,db2/p?target_session_attrs=prefer-standby",
                "target_session_attrs=prefer-standby",
            ),
        ] {
            let text = format!("backend = \"postgres\"\nurl = \"{url}\"\n");
            // The message alone: node configs never quote the file's line (it holds the URL).
            let error = toml::from_str::<StorageConfig>(&text)
                .expect_err(url)
                .message()
                .to_owned();
            assert!(error.contains(needle), "{url}: {error}");
            assert!(!error.contains("pw"), "{url}: the password leaked: {error}");
        }
    }
}
