//! Opening the stores' database pools: the steps every store takes the same way, kept in one
//! place so the stores cannot drift apart on them (WAL and `synchronous=FULL` on SQLite, the
//! reachability and read-only checks before migrating on PostgreSQL). What differs between
//! stores (pool sizes, timeouts, retries, which checks apply) is a parameter, decided by the
//! store that calls.

use std::path::Path;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Connection;

use crate::StoreError;

/// One schema per backend for all stores (each store has its own tables in it).
pub(crate) static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");
pub(crate) static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long an SQLite statement waits for the file's write lock (held by another connection or
/// process) before failing. The same for every store on purpose: a replica lease's renewal
/// shares the file with the node's writer and must not give up sooner than the writer's own
/// transactions may take.
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The options every SQLite store opens its file with: WAL, so readers never wait behind the
/// writer, and `synchronous=FULL`, because what a store commits (an acknowledged send, a
/// verdict, a published topology transaction, an epoch bump) must survive a power loss, not
/// just a process crash. Callers may add options of their own.
pub(crate) fn sqlite_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
}

/// `migrate_attempts` for a store that migrates once, without retrying.
pub(crate) const MIGRATE_ONCE: u32 = 1;

/// Opens the single writer connection of an SQLite store (creating the file if missing) and
/// migrates the schema through it, making up to `migrate_attempts` attempts (see
/// [`migrate_sqlite`]).
pub(crate) async fn open_sqlite_writer(
    options: &SqliteConnectOptions,
    migrate_attempts: u32,
) -> Result<SqlitePool, StoreError> {
    // One connection: SQLite allows one writer at a time, so a second would only contend for
    // the file's lock inside the process.
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        // Keeping the one connection open keeps the WAL index alive for the readers.
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options.clone().create_if_missing(true))
        .await?;
    migrate_sqlite(&writer, migrate_attempts).await?;
    Ok(writer)
}

/// Opens the read-only pool of an SQLite store, `max_connections` strong; call it after
/// [`open_sqlite_writer`], which creates the file.
pub(crate) async fn open_sqlite_readers(
    options: SqliteConnectOptions,
    max_connections: u32,
) -> Result<SqlitePool, StoreError> {
    Ok(SqlitePoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options.read_only(true))
        .await?)
}

/// Migrates, making up to `attempts` attempts (1: no retry) with a growing pause between them.
/// Retrying serves stores whose file several processes may open (fresh) at the same moment:
/// SQLite has no migration lock, so all but one fail on "table already exists" and, on a retry,
/// find the schema complete (each migration is one transaction, so a failed one leaves nothing
/// behind).
async fn migrate_sqlite(writer: &SqlitePool, attempts: u32) -> Result<(), StoreError> {
    let mut attempt = 1;
    loop {
        match SQLITE_MIGRATOR.run(writer).await {
            Ok(()) => return Ok(()),
            Err(error) if attempt < attempts => {
                tracing::warn!(%error, attempt, "migrating the database failed; retrying (another process migrating it?)");
                tokio::time::sleep(Duration::from_millis(100) * attempt).await;
                attempt += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Checks that the PostgreSQL server answers within `connect_timeout` and migrates the schema,
/// unless the database is read-only (a standby, or `default_transaction_read_only`): migrating
/// is impossible there, and skipping it lets the store still open and report (through its
/// backend status) why its node must not serve. `store` names the store in the warning.
pub(crate) async fn migrate_postgres_unless_read_only(
    options: &PgConnectOptions,
    connect_timeout: Duration,
    store: &str,
) -> Result<(), StoreError> {
    // One plain connection first: a pool would keep retrying an unreachable server until
    // its acquire timeout, and the caller wants to hear "unavailable" at once.
    let mut connection = tokio::time::timeout(connect_timeout, PgConnection::connect_with(options))
        .await
        .map_err(|_| {
            StoreError::Unavailable(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting to PostgreSQL timed out",
            )))
        })??;
    let (in_recovery, read_only): (bool, String) =
        sqlx::query_as("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
            .fetch_one(&mut connection)
            .await?;
    if in_recovery || read_only == "on" {
        tracing::warn!(
            in_recovery,
            "the {store} database is read-only; not migrating it"
        );
    } else {
        // `run_direct`, not `run`: awaiting `run(&mut connection)` makes every enclosing
        // future's `Send` proof fail ("Acquire is not general enough"), so callers could not
        // spawn the node; sqlx offers `run_direct` for exactly this (`run` on a connection
        // only forwards to it).
        POSTGRES_MIGRATOR.run_direct(&mut connection).await?;
    }
    // Closing politely is a courtesy; the caller's pools do not depend on it.
    let _ = connection.close().await;
    Ok(())
}

/// Connects a one-connection pool (waiting up to `acquire_timeout` for the server) and
/// migrates the schema through it, without a read-only check. A pool rather than a bare
/// `PgConnection`: the latter's future is not provably `Send` (an sqlx higher-ranked lifetime),
/// which would stop callers from spawning the node. The caller closes the pool or keeps it as
/// its writer.
pub(crate) async fn connect_postgres_migrated(
    options: PgConnectOptions,
    acquire_timeout: Duration,
) -> Result<PgPool, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await?;
    POSTGRES_MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// A PostgreSQL pool that connects on first use, so opening a store does not wait for (or fail
/// on) connections it may not need yet; `acquire_timeout` bounds each call's wait instead.
pub(crate) fn lazy_postgres_pool(
    options: PgConnectOptions,
    max_connections: u32,
    acquire_timeout: Duration,
) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(options)
}

/// The readers' share of `max_connections` when one connection is reserved for the writer:
/// the rest, but at least one, so a configured total of one still leaves reads a connection.
pub(crate) fn postgres_reader_connections(max_connections: u32) -> u32 {
    max_connections.saturating_sub(1).max(1)
}
