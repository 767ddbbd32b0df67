//! Callers cancelled midway, as a shutdown or a step-down cancels a store call: a future
//! polled a given number of times and dropped, and probes of what such a call may have left
//! open in a database (a transaction that holds SQLite's write lock, a PostgreSQL session idle
//! inside one); and that write lock held on purpose, to stall a node's commits.

use std::future::Future;
use std::path::Path;
use std::task::{Context, Waker};
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection as _, Executor as _, PgExecutor, SqliteConnection};

/// Polls `call` at most `polls` times, yielding the thread between polls so that work it
/// handed elsewhere (a connection's worker thread, the I/O driver) moves on, then drops it:
/// at a different point of its life for each count. Its output if it finished first.
pub fn poll_then_drop<F: Future>(call: F, polls: u32) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    for _ in 0..polls {
        if let std::task::Poll::Ready(output) =
            call.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        {
            return Some(output);
        }
        std::thread::yield_now();
    }
    None
}

/// Whether another connection could take the SQLite file's write lock right now (without
/// waiting for it).
pub async fn sqlite_write_lock_is_free(path: &Path) -> bool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::ZERO);
    let mut other = SqliteConnection::connect_with(&options)
        .await
        .expect("open the SQLite file");
    let free = other.execute("BEGIN IMMEDIATE").await.is_ok();
    other.execute("ROLLBACK").await.ok();
    free
}

/// An SQLite file's write lock, held by a connection of the test's own as another process
/// would hold it: every commit of the node that owns the file waits for it (and, past its
/// busy timeout, fails and is retried) until [`SqliteWriteLock::release`]. Readers are not
/// blocked (WAL).
pub struct SqliteWriteLock {
    connection: SqliteConnection,
}

impl SqliteWriteLock {
    pub async fn take(path: &Path) -> Self {
        let mut connection =
            SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path))
                .await
                .expect("open the SQLite file");
        connection
            .execute("BEGIN IMMEDIATE")
            .await
            .expect("take the write lock");
        Self { connection }
    }

    /// The connection that holds the lock, to read the file through it.
    pub fn connection(&mut self) -> &mut SqliteConnection {
        &mut self.connection
    }

    pub async fn release(mut self) {
        self.connection
            .execute("ROLLBACK")
            .await
            .expect("release the write lock");
        self.connection.close().await.expect("close the connection");
    }
}

/// How many sessions of the executor's database sit idle inside a transaction.
pub async fn postgres_idle_in_transaction<'e>(executor: impl PgExecutor<'e>) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(executor)
    .await
    .expect("pg_stat_activity")
}
