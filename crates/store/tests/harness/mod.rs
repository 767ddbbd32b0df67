//! The one conformance harness of the store tests: a [`Backend`] to run a case on (a fresh
//! SQLite file in a temporary directory, or a fresh database on the test binary's shared
//! throwaway PostgreSQL server) and the `conformance!` macro, which runs every listed case once
//! on each backend. A test file declares `#[macro_use] mod harness;`, a `Harness` type that
//! [`OpenHarness`] opens on a backend (usually a [`StoreHarness`]), and its cases as
//! `async fn case(h: Harness)`.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use meridian_core::Timestamp;
use meridian_store::mediator::MediatorStore;
use meridian_store::{
    open_mediator_store, open_participant_store, open_sequencer_store, open_topology_store,
    ParticipantStore, SequencerStore, StorageConfig, StoreError, TopologyStore,
};
use meridian_testkit::PostgresServer;

/// Connections a PostgreSQL store under test may open.
const POSTGRES_CONNECTIONS: u32 = 4;

/// Test timestamps are plain microsecond counts.
pub fn t(micros: u64) -> Timestamp {
    Timestamp::from_micros(micros)
}

/// A PostgreSQL config with two connections, for the PostgreSQL-only tests that open a store
/// on a database of their own.
pub fn postgres_config(url: &str) -> StorageConfig {
    StorageConfig::Postgres {
        url: url.to_owned(),
        max_connections: 2,
    }
}

/// Sets `setting` (`name = value`) for new sessions on the database at `url`; sessions already
/// open keep the old value, so a test reopens its store afterwards.
pub fn alter_database(url: &str, setting: &str) {
    let database = url.rsplit('/').next().expect("database in url");
    PostgresServer::shared()
        .psql(
            "postgres",
            &format!("ALTER DATABASE {database} SET {setting}"),
        )
        .expect("alter database");
}

/// Where a case's store lives; dropping it removes an SQLite file's directory.
pub struct Backend {
    pub config: StorageConfig,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// A fresh SQLite file named `name`.db.
    pub fn sqlite(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Backend {
            config: StorageConfig::Sqlite {
                path: dir.path().join(format!("{name}.db")),
            },
            _dir: Some(dir),
        }
    }

    /// A fresh database (named after `name`) on the shared PostgreSQL server.
    pub fn postgres(name: &str) -> Self {
        let url = PostgresServer::shared()
            .create_database(name)
            .expect("create database");
        Backend {
            config: StorageConfig::Postgres {
                url,
                max_connections: POSTGRES_CONNECTIONS,
            },
            _dir: None,
        }
    }

    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.config {
            StorageConfig::Sqlite { path } => Some(path),
            StorageConfig::Postgres { .. } => None,
        }
    }

    pub fn postgres_url(&self) -> Option<&str> {
        match &self.config {
            StorageConfig::Sqlite { .. } => None,
            StorageConfig::Postgres { url, .. } => Some(url),
        }
    }

    /// Panics if a transaction is still open on the database a second from now: on SQLite,
    /// one holding the file's write lock; on PostgreSQL, any session idle inside one. (A
    /// closed PostgreSQL session ends on the server a few milliseconds after the client let
    /// go, hence the grace.)
    pub async fn assert_no_transaction_left_open(&self) {
        use meridian_testkit::cancel::{postgres_idle_in_transaction, sqlite_write_lock_is_free};
        use sqlx::Connection as _;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            let open = match &self.config {
                StorageConfig::Sqlite { path } => i64::from(!sqlite_write_lock_is_free(path).await),
                StorageConfig::Postgres { url, .. } => {
                    let mut other = sqlx::PgConnection::connect(url).await.expect("connect");
                    postgres_idle_in_transaction(&mut other).await
                }
            };
            if open == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{open} transaction(s) left open on the database"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// A component's store, opened on a backend's database.
#[allow(async_fn_in_trait)]
pub trait OpenStore {
    async fn try_open_on(config: &StorageConfig) -> Result<Arc<Self>, StoreError>;

    async fn open_on(config: &StorageConfig) -> Arc<Self> {
        Self::try_open_on(config).await.expect("open the store")
    }
}

macro_rules! open_store {
    ($store:ty, $open:path) => {
        impl OpenStore for $store {
            async fn try_open_on(config: &StorageConfig) -> Result<Arc<Self>, StoreError> {
                $open(config).await
            }
        }
    };
}

open_store!(dyn SequencerStore, open_sequencer_store);
open_store!(dyn TopologyStore, open_topology_store);
open_store!(dyn MediatorStore, open_mediator_store);
open_store!(dyn ParticipantStore, open_participant_store);

/// Opening a store where no PostgreSQL server listens must fail with a transient error: the
/// node retries and reports not-ready meanwhile.
pub async fn assert_unreachable_postgres_is_transient<S: ?Sized + OpenStore>() {
    let url = format!(
        "postgres://meridian@127.0.0.1:{}/nowhere",
        meridian_testkit::free_port()
    );
    match S::try_open_on(&postgres_config(&url)).await {
        Ok(_) => panic!("nothing listens there"),
        Err(error) => assert!(error.is_transient(), "{error:?}"),
    }
}

/// A store on a database of its own, `name`, on the shared PostgreSQL server, and the
/// database's URL.
pub async fn open_own_postgres<S: ?Sized + OpenStore>(name: &str) -> (Arc<S>, String) {
    let url = PostgresServer::shared()
        .create_database(name)
        .expect("create database");
    (S::open_on(&postgres_config(&url)).await, url)
}

/// Sets `setting` on the database at `url` and opens a new store on it, since sessions already
/// open keep the old value. Opening must succeed even on a read-only database (no migrating).
pub async fn reopen_with_setting<S: ?Sized + OpenStore>(url: &str, setting: &str) -> Arc<S> {
    alter_database(url, setting);
    S::try_open_on(&postgres_config(url))
        .await
        .expect("reopen with the setting")
}

/// What a case gets: opened by `conformance!` on each backend.
#[allow(async_fn_in_trait)]
pub trait OpenHarness: Sized {
    async fn open(backend: Backend) -> Self;
}

/// A case's store and the backend it lives on.
pub struct StoreHarness<S: ?Sized> {
    pub store: Arc<S>,
    pub backend: Backend,
}

impl<S: ?Sized + OpenStore> OpenHarness for StoreHarness<S> {
    async fn open(backend: Backend) -> Self {
        Self {
            store: S::open_on(&backend.config).await,
            backend,
        }
    }
}

impl<S: ?Sized + OpenStore> StoreHarness<S> {
    /// A second, independent store on the same database: another process (or the node
    /// restarted), as far as the store can tell.
    pub async fn reopen(&self) -> Arc<S> {
        S::open_on(&self.backend.config).await
    }
}

/// Runs each case `case(h: Harness)` on SQLite (module `sqlite`) and on PostgreSQL (module
/// `postgres`), `h` opened by the test file's `Harness: OpenHarness`; `$name` names the SQLite
/// file and the PostgreSQL database.
macro_rules! conformance {
    ($name:literal: $($case:ident),* $(,)?) => {
        conformance!(@on sqlite, $name: $($case),*);
        conformance!(@on postgres, $name: $($case),*);
    };
    // Module `$backend`: each case on a fresh `Backend::$backend($name)`.
    (@on $backend:ident, $name:literal: $($case:ident),*) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = crate::harness::Backend::$backend($name);
                    let h = <super::Harness as crate::harness::OpenHarness>::open(backend).await;
                    super::$case(h).await;
                }
            )*
        }
    };
}
