//! Whose database this is. Every node records, on first use, which node owns its database —
//! the node's kind, its id and its synchronizer — in the one-row table `database_owner`, and
//! every later start checks that record before it takes a lease, loads state or writes
//! anything ([`claim_database`]). A node pointed at another node's database (a typo in a URL,
//! a copied config) or at another deployment's (a restored file, a reused server) then refuses
//! to start, naming both owners, instead of loading foreign state and corrupting it.
//!
//! Replicas of one node and the instances of the sequencer share their node's database on
//! purpose: they present the same owner (instances are not part of it), so each of them
//! passes. Two of them starting at once on a fresh database both pass too: the record is
//! written at most once (`ON CONFLICT DO NOTHING` inside a write transaction), and the
//! loser reads the winner's record in the same transaction.

use std::fmt;
use std::time::Duration;

use meridian_core::crypto::PublicKey;
use meridian_core::Backoff;
use meridian_core::{SynchronizerId, Timestamp};

use crate::pool::{on_backend, PoolSettings, PostgresLayout, StorePool};
use crate::postgres_url::PostgresUrl;
use crate::{StorageConfig, StoreError};

/// The kinds of node that keep a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    Sequencer,
    TopologyManager,
    Mediator,
    Participant,
    /// The deployment's controller (`meridian controller`): its plans and audit log.
    Controller,
}

impl NodeKind {
    const ALL: [NodeKind; 5] = [
        NodeKind::Sequencer,
        NodeKind::TopologyManager,
        NodeKind::Mediator,
        NodeKind::Participant,
        NodeKind::Controller,
    ];

    /// The kind as recorded in the database and shown in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Sequencer => "sequencer",
            NodeKind::TopologyManager => "topology-manager",
            NodeKind::Mediator => "mediator",
            NodeKind::Participant => "participant",
            NodeKind::Controller => "controller",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The node a database belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseOwner {
    pub kind: NodeKind,
    /// The node's id: the participant id, the mediator's or the topology manager's member id;
    /// for the sequencer, one name for all its instances (they share the database).
    pub node: String,
    /// `None` only for a sequencer without `owner_public_key` (open registration, as
    /// benchmarks run it): its synchronizer has no owner to be named after.
    pub synchronizer: Option<SynchronizerId>,
}

impl DatabaseOwner {
    /// `kind` `node` of the synchronizer whose owner's public key is `owner_key` (`None`: a
    /// sequencer without one).
    pub fn of_node(kind: NodeKind, node: impl Into<String>, owner_key: Option<&PublicKey>) -> Self {
        Self::new(kind, node, owner_key.map(SynchronizerId::of_owner))
    }

    pub fn new(
        kind: NodeKind,
        node: impl Into<String>,
        synchronizer: Option<SynchronizerId>,
    ) -> Self {
        Self {
            kind,
            node: node.into(),
            synchronizer,
        }
    }
}

impl fmt::Display for DatabaseOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} of ", self.kind, self.node)?;
        match &self.synchronizer {
            Some(synchronizer) => write!(f, "synchronizer {synchronizer}"),
            None => f.write_str("a synchronizer without an owner key"),
        }
    }
}

/// A node was pointed at a database that belongs to another node: what [`claim_database`]
/// refuses with, naming both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignDatabase {
    /// The database, as the node's `[storage]` names it (a PostgreSQL URL without password).
    pub database: String,
    /// This node.
    pub expected: DatabaseOwner,
    /// The owner recorded in the database.
    pub found: DatabaseOwner,
}

impl fmt::Display for ForeignDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the database {} belongs to {}, not to this node ({}); point [storage] at this node's own database",
            self.database, self.found, self.expected
        )
    }
}

/// What [`claim_database`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerClaim {
    /// The database had no owner; it now belongs to the caller.
    Recorded,
    /// The database already belonged to the caller.
    Confirmed,
}

/// Its own short-lived pool: the claim runs once, before the node opens its stores.
const POOL: PoolSettings = PoolSettings {
    store: "owner",
    sqlite_foreign_keys: false,
    // A node's replicas (or the sequencer's instances) may open a fresh SQLite file at the
    // same moment, and SQLite has no migration lock; this is the first thing they open.
    sqlite_migrate_attempts: 5,
    sqlite_readers: None,
    // A read-only database still answers whose it is, as long as it already knows.
    postgres: PostgresLayout::ReportsReadOnly {
        writer_idle_in_transaction_timeout_ms: None,
    },
};

const SELECT_OWNER: &str =
    "SELECT node_kind, node_id, synchronizer_id FROM database_owner WHERE id = 1";
const INSERT_OWNER: &str = "INSERT INTO database_owner \
     (id, node_kind, node_id, synchronizer_id, claimed_at_us) VALUES (1, $1, $2, $3, $4) \
     ON CONFLICT (id) DO NOTHING";

type OwnerRow = (String, String, Option<String>);

/// Records `owner` as the owner of the database `config` names if it has none yet, and
/// otherwise checks that it is `owner`: [`StoreError::ForeignDatabase`] if not. Migrates the
/// schema first (creating the SQLite file if missing). Writes nothing to a database that
/// already has its owner.
pub async fn claim_database(
    config: &StorageConfig,
    owner: &DatabaseOwner,
) -> Result<OwnerClaim, StoreError> {
    let (found, claim) = claim_attempts(config, owner).await?;
    if found == *owner {
        Ok(claim)
    } else {
        Err(StoreError::ForeignDatabase(Box::new(ForeignDatabase {
            database: describe_database(config),
            expected: owner.clone(),
            found,
        })))
    }
}

/// Attempts at opening the database and claiming it while that meets a conflict: replicas
/// starting at once race for the fresh database (creating the file, switching it to WAL,
/// migrating, writing the record), and SQLite can answer "database is locked" to a loser even
/// within its busy timeout; a retry then finds the winner's record.
const CLAIM_RETRY: Backoff = Backoff {
    initial: Duration::from_millis(40),
    max: Duration::from_millis(320),
    max_attempts: 5,
};

async fn claim_attempts(
    config: &StorageConfig,
    owner: &DatabaseOwner,
) -> Result<(DatabaseOwner, OwnerClaim), StoreError> {
    let mut delays = CLAIM_RETRY.delays();
    loop {
        let outcome = claim_once(config, owner).await;
        match (&outcome, delays.next()) {
            (Err(StoreError::Conflict(_)), Some(delay)) => tokio::time::sleep(delay).await,
            _ => return outcome,
        }
    }
}

/// Opens the database (its own short-lived pool), claims it, closes it.
async fn claim_once(
    config: &StorageConfig,
    owner: &DatabaseOwner,
) -> Result<(DatabaseOwner, OwnerClaim), StoreError> {
    let pool = StorePool::open(config, &POOL).await?;
    let claimed = claim_in(&pool, owner).await;
    pool.close().await;
    claimed
}

/// One write transaction: read the record, write it if missing, read it back. The first read
/// spares a database that already has its owner any write (it may be read-only); the insert
/// cannot overwrite a record another process wrote meanwhile.
async fn claim_in(
    pool: &StorePool,
    owner: &DatabaseOwner,
) -> Result<(DatabaseOwner, OwnerClaim), StoreError> {
    let (row, claim) = on_backend!(pool, |writer, _, dialect| {
        let mut tx = crate::pool::begin(writer, dialect.write_begin).await?;
        let existing: Option<OwnerRow> = sqlx::query_as(SELECT_OWNER)
            .fetch_optional(&mut *tx)
            .await?;
        let claimed = match existing {
            Some(row) => (row, OwnerClaim::Confirmed),
            None => {
                let inserted = sqlx::query(INSERT_OWNER)
                    .bind(owner.kind.as_str())
                    .bind(&owner.node)
                    .bind(owner.synchronizer.as_ref().map(SynchronizerId::as_str))
                    .bind(now_us())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                // On PostgreSQL a concurrent claim may have won (the insert waited for it and
                // did nothing); this statement sees its committed row.
                let row: OwnerRow = sqlx::query_as(SELECT_OWNER).fetch_one(&mut *tx).await?;
                let claim = if inserted == 1 {
                    OwnerClaim::Recorded
                } else {
                    OwnerClaim::Confirmed
                };
                (row, claim)
            }
        };
        tx.commit().await?;
        claimed
    });
    Ok((parse_row(row)?, claim))
}

fn parse_row((kind, node, synchronizer): OwnerRow) -> Result<DatabaseOwner, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        table: "database_owner",
        detail,
    };
    let kind =
        NodeKind::parse(&kind).ok_or_else(|| corrupt(format!("unknown node kind {kind:?}")))?;
    let synchronizer = synchronizer
        .map(|text| SynchronizerId::parse(&text))
        .transpose()
        .map_err(|error| corrupt(error.to_string()))?;
    Ok(DatabaseOwner {
        kind,
        node,
        synchronizer,
    })
}

fn now_us() -> i64 {
    i64::try_from(Timestamp::now().as_micros()).unwrap_or(i64::MAX)
}

/// The database as an operator recognises it: the SQLite file, or the PostgreSQL server and
/// database without the password the URL may carry.
pub fn describe_database(config: &StorageConfig) -> String {
    match config {
        StorageConfig::Sqlite { path } => path.display().to_string(),
        StorageConfig::Postgres { url, .. } => match PostgresUrl::parse(url) {
            Ok(url) => url.to_string(),
            Err(_) => "(an unparsable PostgreSQL URL)".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_kinds_read_back_as_written() {
        for kind in NodeKind::ALL {
            assert_eq!(NodeKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(NodeKind::parse("observer"), None);
    }

    #[test]
    fn a_postgres_database_is_described_without_its_password() {
        let config = StorageConfig::Postgres {
            url: "postgres://meridian:hunter2@db.example:5433/participant1".into(),
            max_connections: 4,
        };
        assert_eq!(
            describe_database(&config),
            "postgres://meridian@db.example:5433/participant1"
        );
        let replicated = StorageConfig::Postgres {
            url: "postgres://meridian:hunter2@db1:5433,db2:5434/participant1\
                  ?target_session_attrs=read-write"
                .into(),
            max_connections: 4,
        };
        assert_eq!(
            describe_database(&replicated),
            "postgres://meridian@db1:5433,db2:5434/participant1"
        );
    }

    #[test]
    fn a_foreign_database_names_both_owners_and_the_database() {
        let synchronizer = Some(SynchronizerId::parse("sync-0123456789abcdef").expect("valid"));
        let foreign = ForeignDatabase {
            database: "data/participant2.db".into(),
            expected: DatabaseOwner::new(
                NodeKind::Participant,
                "participant1",
                synchronizer.clone(),
            ),
            found: DatabaseOwner::new(NodeKind::Participant, "participant2", synchronizer),
        };
        assert_eq!(
            foreign.to_string(),
            "the database data/participant2.db belongs to participant participant2 of synchronizer \
             sync-0123456789abcdef, not to this node (participant participant1 of synchronizer \
             sync-0123456789abcdef); point [storage] at this node's own database"
        );
    }
}
