//! The one pool type every store uses, [`StorePool`] (a writer and a reader pool on either
//! backend), and opening it: the steps every store takes the same way, kept in one place so
//! the stores cannot drift apart on them (WAL and `synchronous=FULL` on SQLite; on PostgreSQL,
//! finding the writer among the URL's hosts and migrating it, see [`crate::follow`]). What
//! differs between
//! stores (pool sizes, timeouts, retries, which checks apply) is a parameter, decided by the
//! store that calls.
//!
//! Store code is written once over both backends with [`on_backend!`], which expands the code
//! for each backend's pools and hands it the backend's [`Dialect`]: the few statements where
//! the two SQL dialects really differ (how a write transaction begins, how a snapshot read
//! begins, whether a table lock is needed).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::postgres::PgRow;
use sqlx::query_builder::Separated;
use sqlx::sqlite::SqliteRow;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Database, Encode, FromRow, Postgres, QueryBuilder, Sqlite, SqliteConnection, Type};

use crate::fencing::FencedConnection;
use crate::follow::{FollowingPools, PoolShape};
use crate::migrations::SQLITE_MIGRATOR;
use crate::postgres_url::PostgresUrl;
use crate::sequencer::BackendStatus;
use crate::{FenceSlot, StorageConfig, StoreError};

/// A store's connections: one writer (SQLite allows one writer at a time; on PostgreSQL each
/// store has one writing task anyway) and a reader pool, so reads never queue behind a commit.
/// A store that needs no separate readers passes a clone of its writer as `readers`. On
/// PostgreSQL both live on whichever server of the URL is the writer, and move when it does
/// ([`FollowingPools`]).
#[derive(Debug, Clone)]
pub(crate) enum StorePool {
    Sqlite {
        writer: SqlitePool,
        readers: SqlitePool,
    },
    Postgres(Arc<FollowingPools>),
}

/// The statements in which SQLite and PostgreSQL really differ, for code written once over
/// both (see [`on_backend!`]).
#[derive(Debug)]
pub(crate) struct Dialect {
    /// Begins a write transaction. SQLite: `BEGIN IMMEDIATE` takes the file's write lock up
    /// front, so a second process on the same file waits at `BEGIN` instead of failing at its
    /// first write, and nothing can commit between a check and the write it guards.
    pub write_begin: &'static str,
    /// Begins a read transaction whose statements all see one snapshot.
    pub snapshot_begin: &'static str,
    /// Whether a write transaction must lock a table explicitly to exclude other writers
    /// (PostgreSQL); on SQLite `write_begin` already did.
    pub locks_tables: bool,
    /// The scalar function returning the larger of its arguments.
    pub greatest: &'static str,
    /// A condition on a text column: any of the text elements of a JSON array bound as `$1`,
    /// so that a list of any length is one parameter and its statement's text (and SQLite's
    /// prepared statement) is one. PostgreSQL's form is an index condition whatever the
    /// planner knows; its generic plan of `IN (SELECT jsonb_array_elements_text(..))` on
    /// tables never analysed was a hash join over a scan of the whole table.
    pub in_json_text_elements: &'static str,
    /// Whether one call can run several statements with bound parameters ([`Script`]).
    pub joins_statements: bool,
    /// A condition on `member` of `event_recipients`: any registered member. PostgreSQL's form
    /// keeps the table's (member, ts) primary key in use whatever the planner knows: a
    /// connection's cached generic plan of the `IN (SELECT ..)` form, on tables never
    /// analysed, was a sequential scan of every recipient entry, slower with each event (after
    /// a database restart a drill's throughput fell to half within 45 s).
    pub any_member: &'static str,
}

pub(crate) const SQLITE: Dialect = Dialect {
    write_begin: "BEGIN IMMEDIATE",
    snapshot_begin: "BEGIN",
    locks_tables: false,
    greatest: "max",
    in_json_text_elements: "IN (SELECT value FROM json_each($1))",
    joins_statements: true,
    any_member: "IN (SELECT seq FROM members)",
};

pub(crate) const POSTGRES: Dialect = Dialect {
    write_begin: "BEGIN",
    // REPEATABLE READ: every read of the transaction comes from one snapshot.
    snapshot_begin: "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    locks_tables: true,
    greatest: "GREATEST",
    in_json_text_elements: "= ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))",
    joins_statements: false,
    any_member: "= ANY(ARRAY(SELECT seq FROM members))",
};

impl Dialect {
    /// The statement that locks `table` against other writers (readers proceed) for the rest
    /// of the transaction, if this dialect needs one.
    pub fn exclusive_lock(&self, table: &str) -> Option<String> {
        self.locks_tables
            .then(|| format!("LOCK TABLE {table} IN EXCLUSIVE MODE"))
    }
}

/// Begins a transaction on a connection of `pool` with `statement`, as `Pool::begin_with`
/// does, but safe to cancel. sqlx 0.8 is not: a caller's future dropped after the `BEGIN` ran
/// but before the `Transaction` existed (SQLite: while a custom `BEGIN` is checked; PostgreSQL:
/// while the `BEGIN` is in flight) hands the connection back to the pool still inside the
/// transaction, and nothing ever ends it. On SQLite that connection keeps the file's write
/// lock, so every other writer of the file, the replica lease among them, waits for it until
/// the process exits. Stores are cancelled routinely (a shutdown, a step-down, a stalled call's
/// timeout), so the `BEGIN` runs in a task of its own that always finishes: if nobody awaits
/// its transaction any more, the task drops it, which rolls it back.
// The one caller of sqlx's `begin_with` that clippy.toml allows: here a dropped caller cannot
// cancel it.
#[allow(clippy::disallowed_methods)]
pub(crate) async fn begin<DB: Database>(
    pool: &sqlx::Pool<DB>,
    statement: &'static str,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin_with(statement).await })
        .await
        .map_err(|error| sqlx::Error::Protocol(format!("beginning a transaction: {error}")))?
}

/// Runs `$body` once per backend: `$writer` and `$readers` are bound to that backend's pools
/// and `$dialect` to its [`Dialect`], and the type `Db` names its sqlx database (for
/// `QueryBuilder::<Db>`). The body is compiled twice, so one SQL text serves both backends
/// wherever it is written once. The enclosing function returns a `Result` whose error converts
/// from [`StoreError`], and so does the body's `?` and `return Err(..)`.
///
/// On PostgreSQL the body runs on the pools of the current writer, and a failure of the body
/// is shown to [`FollowingPools::failed`] first: a lost connection or a read-only refusal
/// makes the store look for the writer before the caller's retry (see [`crate::follow`]).
macro_rules! on_backend {
    ($pool:expr, |$writer:pat_param, $readers:pat_param, $dialect:pat_param| $body:expr) => {
        match $pool {
            $crate::pool::StorePool::Sqlite {
                writer: $writer,
                readers: $readers,
            } => $crate::pool::on_backend!(@arm ::sqlx::Sqlite, SQLITE, $dialect, $body),
            $crate::pool::StorePool::Postgres(following) => {
                $crate::pool::on_postgres!(following, |$writer, $readers| {
                    $crate::pool::on_backend!(@arm ::sqlx::Postgres, POSTGRES, $dialect, $body)
                })
            }
        }
    };
    // One backend's arm: its `Db` type and its dialect in scope of the body.
    (@arm $db:ty, $dialect_const:ident, $dialect:pat_param, $body:expr) => {{
        #[allow(dead_code)]
        type Db = $db;
        let $dialect = &$crate::pool::$dialect_const;
        $body
    }};
}
pub(crate) use on_backend;

/// Runs `$body` on the PostgreSQL pools of the writer `$following` ([`FollowingPools`]), with
/// `$writer` and `$readers` bound to them; the PostgreSQL half of [`on_backend!`], for code
/// that exists on PostgreSQL only. A failure of the body is shown to
/// [`FollowingPools::failed`] before the enclosing function returns it; the body's error type
/// is the function's, a [`crate::follow::StoreFailure`].
macro_rules! on_postgres {
    ($following:expr, |$writer:pat_param, $readers:pat_param| $body:expr) => {{
        let following: &$crate::follow::FollowingPools = $following;
        let checkout = following.checkout().await?;
        // An async block, so that the body's `?` and `return Err(..)` end here, where the
        // failure can be looked at, instead of leaving the function.
        let outcome = checkout
            .watching(async {
                let $writer = &checkout.writer;
                let $readers = &checkout.readers;
                ::core::result::Result::Ok($body)
            })
            .await;
        match outcome {
            ::core::result::Result::Ok(value) => value,
            ::core::result::Result::Err(error) => {
                return ::core::result::Result::Err(
                    following.failed_as(checkout.generation, error).await,
                );
            }
        }
    }};
}
pub(crate) use on_postgres;

/// The write statements of one transaction, sent together where the backend allows it. On
/// SQLite they become one SQL text, statement after statement, run by a single call: one
/// hand-off to sqlx's connection thread instead of one per statement, and at low load each
/// hand-off is a sleep and a wake-up on both threads. PostgreSQL takes one statement per call
/// when parameters are bound, so there each statement is a call of its own, in order.
/// Parameters are bound with [`QueryBuilder::push_bind`] (never `$n` in the text: in one SQLite
/// text `$n` would name the n-th parameter of the whole script).
pub(crate) struct Script<'args, DB: Database> {
    /// Whether statements share one text (SQLite).
    joined: bool,
    /// Made by [`Script::transaction`], for [`CommitScript::commit_script`]: on SQLite its text
    /// starts with the `BEGIN`.
    transaction: bool,
    statements: Vec<QueryBuilder<'args, DB>>,
}

impl<'args, DB: Database> Script<'args, DB> {
    /// Statements to run inside a transaction someone else begins and ends.
    pub fn new(dialect: &Dialect) -> Self {
        Self {
            joined: dialect.joins_statements,
            transaction: false,
            statements: Vec::new(),
        }
    }

    /// The statements of one write transaction, for [`CommitScript::commit_script`]. On SQLite
    /// the text begins the transaction and (unless a fence must be checked) ends it too, so a
    /// commit is one hand-off to sqlx's connection thread instead of three.
    pub fn transaction(dialect: &Dialect) -> Self {
        let mut script = Self::new(dialect);
        script.transaction = true;
        if script.joined {
            script.statement(dialect.write_begin);
        }
        script
    }

    /// Starts the next statement with `sql`; the builder returned goes on with it.
    pub fn statement(&mut self, sql: &str) -> &mut QueryBuilder<'args, DB> {
        match self.statements.last_mut() {
            Some(last) if self.joined => {
                last.push(";\n").push(sql);
            }
            _ => self.statements.push(QueryBuilder::new(sql)),
        }
        self.statements
            .last_mut()
            .expect("a statement was just pushed or extended")
    }

    /// `head VALUES (..), (..) tail` once per `rows_per_statement` rows (so a statement stays
    /// below the backend's limit on bound parameters; and one statement, not one per row,
    /// because each is a round trip): `bind` binds one row's values; nothing for no rows.
    /// Mostly an insert (`head` names the table and columns, `tail` may hold an `ON CONFLICT`
    /// clause), but the list serves any statement that reads one: `... WHERE id IN (` + `)`,
    /// or `UPDATE ... FROM (` + `) AS v WHERE ...` (both backends name its columns `column1`,
    /// `column2`, ...).
    pub fn chunked<T>(
        &mut self,
        head: &str,
        rows: &'args [T],
        rows_per_statement: usize,
        mut bind: impl FnMut(Separated<'_, 'args, DB, &'static str>, &'args T),
        tail: &str,
    ) {
        for chunk in rows.chunks(rows_per_statement) {
            self.statement(head)
                .push_values(chunk, &mut bind)
                .push(tail);
        }
    }
}

/// Runs a [`Script`] on a connection of its backend.
pub(crate) trait RunScript {
    type Db: Database;

    async fn run(&mut self, script: Script<'_, Self::Db>) -> Result<(), StoreError>;
}

macro_rules! run_script {
    ($connection:ty, $db:ty, $cached:expr) => {
        impl RunScript for $connection {
            type Db = $db;

            async fn run(&mut self, script: Script<'_, $db>) -> Result<(), StoreError> {
                for mut statement in script.statements {
                    statement
                        .build()
                        .persistent($cached)
                        .execute(&mut *self)
                        .await?;
                }
                Ok(())
            }
        }
    };
}

// A SQLite script is prepared each time, not kept in the connection's statement cache: its
// text changes with every batch's mix of row counts, so cached scripts were rarely reused
// and each kept several prepared statements of up to 500 rows (+12 MiB of participant peak
// RSS in 40 s at saturation). PostgreSQL's are single statements, cached as before.
run_script!(SqliteConnection, ::sqlx::Sqlite, false);
run_script!(PgConnection, ::sqlx::Postgres, true);

impl<'args> Script<'args, Sqlite> {
    /// Runs the script's one text on `connection`; the rows of all its statements, in order.
    /// `cached`: kept prepared in the connection's statement cache, for a text that recurs
    /// (few shapes, small).
    pub async fn fetch_all(
        mut self,
        connection: &mut SqliteConnection,
        cached: bool,
    ) -> Result<Vec<SqliteRow>, StoreError> {
        let Some(mut text) = self.statements.pop() else {
            return Ok(Vec::new());
        };
        Ok(text
            .build()
            .persistent(cached)
            .fetch_all(connection)
            .await?)
    }
}

/// Commits a [`Script::transaction`] on a writer pool, after checking the store's fence.
pub(crate) trait CommitScript {
    type Db: Database;

    async fn commit_script(
        &self,
        fence: &FenceSlot,
        script: Script<'_, Self::Db>,
    ) -> Result<(), StoreError>;
}

/// One call to the connection's thread when unfenced (`BEGIN IMMEDIATE; ..; COMMIT` in one
/// text), two when fenced: the text ends with a read of the lease row instead, and `COMMIT` or
/// `ROLLBACK` follows its verdict. Reading the lease last is as good as first: `BEGIN
/// IMMEDIATE` holds the file's write lock from the start, so nobody changes the row meanwhile.
/// The script's statements must return no rows (the lease's row is told by being the only one).
///
/// The transaction is not a sqlx `Transaction`, so nothing rolls it back when this future is
/// dropped midway: [`OpenTransaction`] closes the connection then instead of handing it back
/// to the pool, and closing rolls back (the invariant [`begin`] keeps for sqlx's transactions).
impl CommitScript for SqlitePool {
    type Db = Sqlite;

    async fn commit_script(
        &self,
        fence: &FenceSlot,
        mut script: Script<'_, Sqlite>,
    ) -> Result<(), StoreError> {
        assert!(
            script.transaction,
            "commit_script takes a Script::transaction"
        );
        let lease = match fence.expected() {
            None => None,
            Some((node, None)) => return Err(StoreError::Passive { node }),
            Some((node, Some(epoch))) => Some((node, epoch)),
        };
        match &lease {
            None => {
                script.statement("COMMIT");
            }
            Some((node, _)) => {
                script
                    .statement("SELECT epoch FROM replica_lease WHERE node = ")
                    .push_bind(node.clone());
            }
        }
        let mut open = OpenTransaction::acquire(self).await?;
        let connection = open.connection();
        let rows = match script.fetch_all(&mut *connection, false).await {
            Ok(rows) => rows,
            Err(error) => {
                // A deposed writer's statements can fail on what its successor wrote (a
                // unique key) before the text reaches the lease's row; the fence, not that
                // symptom, is what the caller must hear (it demotes instead of stopping).
                if let Some((node, epoch)) = lease {
                    connection.check_epoch(node, epoch).await?;
                }
                return Err(error);
            }
        };
        if let Some((node, epoch)) = lease {
            let found = match rows.as_slice() {
                [] => None,
                [row] => Some(sqlx::Row::try_get::<i64, _>(row, 0)?),
                _ => {
                    return Err(StoreError::corrupt(
                        "replica_lease",
                        format!("{} rows where the lease's one was expected", rows.len()),
                    ))
                }
            };
            if let Err(refused) = crate::fencing::verdict(node, epoch, found) {
                sqlx::query("ROLLBACK").execute(&mut *connection).await?;
                open.ended();
                return Err(refused);
            }
            sqlx::query("COMMIT").execute(&mut *connection).await?;
        }
        open.ended();
        Ok(())
    }
}

impl CommitScript for sqlx::PgPool {
    type Db = Postgres;

    async fn commit_script(
        &self,
        fence: &FenceSlot,
        script: Script<'_, Postgres>,
    ) -> Result<(), StoreError> {
        assert!(
            script.transaction,
            "commit_script takes a Script::transaction"
        );
        let mut tx = begin(self, POSTGRES.write_begin).await?;
        tx.check_fence(fence).await?;
        tx.run(script).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A writer connection that may be inside a transaction begun by a script's text. Dropped
/// before [`OpenTransaction::ended`] (an error, or the caller's future dropped), it closes the
/// connection rather than return it to the pool still holding the file's write lock; the pool
/// opens a new one when next asked.
pub(crate) struct OpenTransaction(Option<sqlx::pool::PoolConnection<Sqlite>>);

impl OpenTransaction {
    pub async fn acquire(pool: &SqlitePool) -> Result<Self, sqlx::Error> {
        Ok(Self(Some(pool.acquire().await?)))
    }

    pub fn connection(&mut self) -> &mut SqliteConnection {
        self.0
            .as_deref_mut()
            .expect("the connection is held until ended")
    }

    /// The transaction committed or rolled back: the connection goes back to the pool.
    pub fn ended(mut self) {
        self.0.take();
    }
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        if let Some(connection) = self.0.take() {
            drop(connection.detach());
        }
    }
}

/// How a store opens its [`StorePool`]: what differs between stores, decided by each store.
#[derive(Debug)]
pub(crate) struct PoolSettings {
    /// Names the store in log lines.
    pub store: &'static str,
    /// Ask for foreign keys to be enforced on SQLite connections (whatever sqlx's default).
    pub sqlite_foreign_keys: bool,
    /// Migrating attempts on SQLite (see [`migrate_sqlite`]).
    pub sqlite_migrate_attempts: u32,
    /// Read-only SQLite connections; `None`: the writer serves reads too.
    pub sqlite_readers: Option<u32>,
    pub postgres: PostgresLayout,
}

/// How a store uses its PostgreSQL connections. Every layout's pools connect lazily, on the
/// server found to be the writer, which opening migrates.
#[derive(Debug)]
pub(crate) enum PostgresLayout {
    /// Opens even on a database without a writer (on a read-only server, not migrating it),
    /// so that the store can report why its node must not serve; a writer of one connection,
    /// which the server ends when it idles inside a transaction for
    /// `writer_idle_in_transaction_timeout_ms` (if set), and readers (the rest of
    /// `max_connections`).
    ReportsReadOnly {
        writer_idle_in_transaction_timeout_ms: Option<u64>,
    },
    /// Needs a writer to open; a writer of one connection and readers (the rest of
    /// `max_connections`).
    MigratingWriter,
    /// One lazy pool of at most `max_connections`, capped at `cap`, for reads and writes.
    Shared { cap: u32 },
}

impl StorePool {
    /// Opens (and migrates) the database `config` names, the way `settings` say.
    pub(crate) async fn open(
        config: &StorageConfig,
        settings: &PoolSettings,
    ) -> Result<Self, StoreError> {
        match config {
            StorageConfig::Sqlite { path } => {
                let mut options = sqlite_options(path);
                if settings.sqlite_foreign_keys {
                    options = options.foreign_keys(true);
                }
                Self::open_sqlite(
                    options,
                    settings.sqlite_migrate_attempts,
                    settings.sqlite_readers,
                )
                .await
            }
            StorageConfig::Postgres {
                url,
                max_connections,
            } => Self::open_postgres(url, *max_connections, settings).await,
        }
    }

    async fn open_postgres(
        url: &str,
        max_connections: u32,
        settings: &PoolSettings,
    ) -> Result<Self, StoreError> {
        let url = PostgresUrl::parse(url)?;
        let readers = postgres_reader_connections(max_connections);
        let (shape, opens_read_only) = match settings.postgres {
            PostgresLayout::ReportsReadOnly {
                writer_idle_in_transaction_timeout_ms,
            } => (
                PoolShape::WriterAndReaders {
                    idle_in_transaction_timeout_ms: writer_idle_in_transaction_timeout_ms,
                    readers,
                },
                true,
            ),
            PostgresLayout::MigratingWriter => (
                PoolShape::WriterAndReaders {
                    idle_in_transaction_timeout_ms: None,
                    readers,
                },
                false,
            ),
            PostgresLayout::Shared { cap } => (
                PoolShape::Shared {
                    connections: max_connections.clamp(1, cap),
                },
                false,
            ),
        };
        let pools = FollowingPools::open(url, shape, opens_read_only, settings.store).await?;
        Ok(StorePool::Postgres(Arc::new(pools)))
    }

    /// Closes the pools, waiting for calls in progress; for a store used once and dropped.
    pub(crate) async fn close(&self) {
        match self {
            StorePool::Sqlite { writer, readers } => {
                writer.close().await;
                readers.close().await;
            }
            StorePool::Postgres(following) => following.close().await,
        }
    }

    /// An SQLite store's pools: the writer (created and migrated, making up to
    /// `migrate_attempts` attempts) and `reader_connections` read-only connections, or, with
    /// `None`, the writer serving reads as well.
    async fn open_sqlite(
        options: SqliteConnectOptions,
        migrate_attempts: u32,
        reader_connections: Option<u32>,
    ) -> Result<Self, StoreError> {
        let writer = open_sqlite_writer(&options, migrate_attempts).await?;
        let readers = match reader_connections {
            Some(connections) => open_sqlite_readers(options, connections).await?,
            None => writer.clone(),
        };
        Ok(StorePool::Sqlite { writer, readers })
    }

    /// Runs `statement`, with `value` as its one parameter, in a write transaction that first
    /// checks `fence`; returns how many rows it changed.
    pub(crate) async fn fenced_execute(
        &self,
        fence: &FenceSlot,
        statement: &str,
        value: i64,
    ) -> Result<u64, StoreError> {
        Ok(on_backend!(self, |writer, _, dialect| {
            let mut tx = begin(writer, dialect.write_begin).await?;
            tx.check_fence(fence).await?;
            let changed = sqlx::query(statement)
                .bind(value)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            changed
        }))
    }

    /// The row that `select` (whose one parameter `$1` is `key`) finds on a reader, if any.
    pub(crate) async fn read_optional<'q, Row, Key>(
        &self,
        select: &'q str,
        key: Key,
    ) -> Result<Option<Row>, StoreError>
    where
        Row: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
        Key: 'q + Send + Encode<'q, Sqlite> + Type<Sqlite> + Encode<'q, Postgres> + Type<Postgres>,
    {
        Ok(on_backend!(self, |_, readers, _| {
            sqlx::query_as(select)
                .bind(key)
                .fetch_optional(readers)
                .await?
        }))
    }

    /// Facts about the database that decide whether a node may serve on it.
    pub(crate) async fn backend_status(&self) -> Result<BackendStatus, StoreError> {
        let (synchronous_commit, read_only, in_recovery): (Option<String>, String, bool) =
            on_backend!(self, |_, readers, dialect| {
                if dialect.locks_tables {
                    // transaction_read_only reflects default_transaction_read_only for a new
                    // transaction, so this also catches a primary configured read-only, not
                    // just a standby.
                    sqlx::query_as(
                        "SELECT current_setting('synchronous_commit'), \
                                current_setting('transaction_read_only'), \
                                pg_is_in_recovery()",
                    )
                    .fetch_one(readers)
                    .await?
                } else {
                    // Touch the database so that a vanished or unreadable file shows up here.
                    sqlx::query("SELECT 1").execute(readers).await?;
                    (None, "off".to_owned(), false)
                }
            });
        Ok(match self {
            StorePool::Sqlite { .. } => BackendStatus {
                backend: "sqlite",
                read_only: false,
                synchronous_commit: None,
                read_only_reason: None,
            },
            StorePool::Postgres(following) => {
                let read_only = in_recovery || read_only == "on";
                BackendStatus {
                    backend: "postgres",
                    read_only,
                    synchronous_commit,
                    // Without a writer the pools are on a read-only server; the search's
                    // report says what every host is.
                    read_only_reason: following
                        .no_writer()
                        .filter(|_| read_only)
                        .map(|no_writer| no_writer.to_string()),
                }
            }
        })
    }
}

/// How long an SQLite statement waits for the file's write lock (held by another connection or
/// process) before failing. The same for every store on purpose: a replica lease's renewal
/// shares the file with the node's writer and must not give up sooner than the writer's own
/// transactions may take.
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The options every SQLite store opens its file with: WAL, so readers never wait behind the
/// writer, and `synchronous=FULL`, because what a store commits (an acknowledged send, a
/// verdict, a published topology transaction, an epoch bump) must survive a power loss, not
/// just a process crash; temporary data (statement journals) in memory. Callers may add
/// options of their own.
pub(crate) fn sqlite_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        // A statement inside a write transaction journals each page it first changes, so
        // that it alone can be rolled back; in memory, not in a temporary file, that is a
        // copy rather than a write system call per page. It holds one statement's pages.
        .pragma("temp_store", "memory")
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

/// The readers' share of `max_connections` when one connection is reserved for the writer:
/// the rest, but at least one, so a configured total of one still leaves reads a connection.
pub(crate) fn postgres_reader_connections(max_connections: u32) -> u32 {
    max_connections.saturating_sub(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_testkit::cancel::{
        poll_then_drop, postgres_idle_in_transaction, sqlite_write_lock_is_free,
    };
    use sqlx::postgres::PgPoolOptions;
    use sqlx::Pool;
    use std::future::Future;

    /// Starts `begin` and drops it after some polls: at every point from before the `BEGIN`
    /// was sent to after it returned, as the attempts go by (the connection's worker runs on
    /// its own, so the exact points vary). `nothing_left_open` runs after each attempt, once
    /// the connection is back in the pool.
    async fn cancel_begins<DB: Database, F: Future<Output = bool>>(
        pool: &Pool<DB>,
        statement: &'static str,
        attempts: u32,
        mut nothing_left_open: impl FnMut() -> F,
    ) {
        for attempt in 0..attempts {
            if let Some(begun) = poll_then_drop(begin(pool, statement), attempt % 300) {
                drop(begun.expect("begin"));
            }
            // The begin may still be running (it owns the connection meanwhile) or be about
            // to roll back what nobody took: a leak is what is still open a second later.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            loop {
                drop(pool.acquire().await.expect("acquire"));
                if nothing_left_open().await {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "attempt {attempt} left a transaction open"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// Without [`begin`] (`Pool::begin_with`), this fails within a few hundred attempts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_sqlite_begin_leaves_no_write_lock_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let writer = open_sqlite_writer(&sqlite_options(&path), MIGRATE_ONCE)
            .await
            .expect("open");
        cancel_begins(&writer, SQLITE.write_begin, 1_500, || {
            sqlite_write_lock_is_free(&path)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_postgres_begin_leaves_no_transaction_open() {
        let url = meridian_testkit::PostgresServer::shared()
            .create_database("cancelled_begin")
            .expect("create database");
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("connect");
        let observer = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("connect");
        cancel_begins(&pool, POSTGRES.write_begin, 600, || async {
            postgres_idle_in_transaction(&observer).await == 0
        })
        .await;
    }

    fn script_of<DB: Database>(dialect: &Dialect) -> Script<'static, DB>
    where
        i64: Encode<'static, DB> + Type<DB>,
    {
        let mut script = Script::<DB>::new(dialect);
        script
            .statement("UPDATE t SET n = ")
            .push_bind(7_i64)
            .push(" WHERE id = 1");
        script.chunked(
            "INSERT INTO t (id, n) ",
            &[(2_i64, 20_i64), (3, 30), (4, 40)],
            2,
            |mut row, (id, n)| {
                row.push_bind(*id).push_bind(*n);
            },
            "",
        );
        script
    }

    #[test]
    fn a_script_is_one_text_on_sqlite_and_a_statement_per_call_on_postgres() {
        let sqlite = script_of::<Sqlite>(&SQLITE);
        let texts: Vec<&str> = sqlite.statements.iter().map(QueryBuilder::sql).collect();
        assert_eq!(
            texts,
            ["UPDATE t SET n = ? WHERE id = 1;\nINSERT INTO t (id, n) VALUES (?, ?), (?, ?);\nINSERT INTO t (id, n) VALUES (?, ?)"]
        );
        let postgres = script_of::<Postgres>(&POSTGRES);
        let texts: Vec<&str> = postgres.statements.iter().map(QueryBuilder::sql).collect();
        assert_eq!(
            texts,
            [
                "UPDATE t SET n = $1 WHERE id = 1",
                "INSERT INTO t (id, n) VALUES ($1, $2), ($3, $4)",
                "INSERT INTO t (id, n) VALUES ($1, $2)"
            ]
        );
    }

    /// One SQLite text binds each statement's own parameters, and a statement that fails stops
    /// the script with its error: the transaction around it then writes nothing.
    #[tokio::test]
    async fn a_sqlite_script_binds_in_order_and_a_failure_writes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = open_sqlite_writer(&sqlite_options(&dir.path().join("t.db")), MIGRATE_ONCE)
            .await
            .expect("open");
        sqlx::raw_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO t VALUES (1, 0)")
            .execute(&writer)
            .await
            .expect("create");
        let mut tx = begin(&writer, SQLITE.write_begin).await.expect("begin");
        tx.run(script_of::<Sqlite>(&SQLITE)).await.expect("run");
        tx.commit().await.expect("commit");
        let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT id, n FROM t ORDER BY id")
            .fetch_all(&writer)
            .await
            .expect("read");
        assert_eq!(rows, [(1, 7), (2, 20), (3, 30), (4, 40)]);

        let mut failing = Script::<Sqlite>::new(&SQLITE);
        failing.statement("UPDATE t SET n = ").push_bind(8_i64);
        failing
            .statement("INSERT INTO t (id, n) VALUES (")
            .push_bind(2_i64)
            .push(", 0)");
        let mut tx = begin(&writer, SQLITE.write_begin).await.expect("begin");
        let error = tx.run(failing).await.expect_err("a duplicate key");
        assert!(error.to_string().contains("UNIQUE"), "{error}");
        drop(tx);
        let after: Vec<(i64, i64)> = sqlx::query_as("SELECT id, n FROM t ORDER BY id")
            .fetch_all(&writer)
            .await
            .expect("read");
        assert_eq!(after, rows);
    }

    /// An SQLite store file with a table `t` (row 1 counts the commits that ran) and a
    /// `commits` table (one row per commit); `t`'s count and `commits`' rows move together
    /// only if every commit is atomic.
    async fn counting_store(path: &Path) -> SqlitePool {
        let writer = open_sqlite_writer(&sqlite_options(path), MIGRATE_ONCE)
            .await
            .expect("open");
        sqlx::raw_sql(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); \
             INSERT INTO t VALUES (1, 0); \
             CREATE TABLE commits (attempt INTEGER PRIMARY KEY)",
        )
        .execute(&writer)
        .await
        .expect("create");
        writer
    }

    /// A [`counting_store`] whose lease row names `p1` at epoch 3, held by `holder`.
    async fn leased_counting_store(path: &Path, holder: &str) -> SqlitePool {
        let writer = counting_store(path).await;
        sqlx::query(
            "INSERT INTO replica_lease (node, epoch, holder, renewed_at_us) \
             VALUES ('p1', 3, ?, 0)",
        )
        .bind(holder)
        .execute(&writer)
        .await
        .expect("lease");
        writer
    }

    /// One commit of the counting store: bumps the count, records `attempt`.
    fn counting_commit(attempt: i64) -> Script<'static, Sqlite> {
        let mut script = Script::<Sqlite>::transaction(&SQLITE);
        script.statement("UPDATE t SET n = n + 1 WHERE id = 1");
        script
            .statement("INSERT INTO commits (attempt) VALUES (")
            .push_bind(attempt)
            .push(")");
        script
    }

    async fn count_and_commits(pool: &SqlitePool) -> (i64, i64) {
        sqlx::query_as("SELECT (SELECT n FROM t WHERE id = 1), (SELECT count(*) FROM commits)")
            .fetch_one(pool)
            .await
            .expect("read")
    }

    #[test]
    fn a_transaction_script_begins_in_its_text_on_sqlite_only() {
        let sqlite = counting_commit(1);
        let texts: Vec<&str> = sqlite.statements.iter().map(QueryBuilder::sql).collect();
        assert_eq!(
            texts,
            ["BEGIN IMMEDIATE;\nUPDATE t SET n = n + 1 WHERE id = 1;\nINSERT INTO commits (attempt) VALUES (?)"]
        );
        let mut postgres = Script::<Postgres>::transaction(&POSTGRES);
        postgres.statement("UPDATE t SET n = n + 1 WHERE id = 1");
        let texts: Vec<&str> = postgres.statements.iter().map(QueryBuilder::sql).collect();
        assert_eq!(texts, ["UPDATE t SET n = n + 1 WHERE id = 1"]);
    }

    /// Unfenced, fenced with the current epoch, fenced with a lost one, passive: the first two
    /// commit; the others write nothing, say why, and leave the file's write lock free.
    #[tokio::test]
    async fn a_sqlite_transaction_script_commits_only_under_its_fence() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let writer = leased_counting_store(&path, "p1-a").await;
        let fence = FenceSlot::default();
        writer
            .commit_script(&fence, counting_commit(1))
            .await
            .expect("unfenced commit");
        fence.activate("p1", crate::lease::Epoch(3));
        writer
            .commit_script(&fence, counting_commit(2))
            .await
            .expect("a commit under the current epoch");
        assert_eq!(count_and_commits(&writer).await, (2, 2));

        fence.activate("p1", crate::lease::Epoch(2));
        let lost = writer
            .commit_script(&fence, counting_commit(3))
            .await
            .expect_err("the lease moved on");
        assert!(
            matches!(lost, StoreError::LeaseLost { ref node, epoch: 2 } if node == "p1"),
            "{lost:?}"
        );
        fence.activate("p2", crate::lease::Epoch(1));
        let never_leased = writer
            .commit_script(&fence, counting_commit(4))
            .await
            .expect_err("no lease row");
        assert!(
            matches!(never_leased, StoreError::LeaseLost { .. }),
            "{never_leased:?}"
        );
        fence.deactivate("p1");
        let passive = writer
            .commit_script(&fence, counting_commit(5))
            .await
            .expect_err("a passive replica");
        assert!(matches!(passive, StoreError::Passive { .. }), "{passive:?}");
        assert_eq!(count_and_commits(&writer).await, (2, 2));
        assert!(sqlite_write_lock_is_free(&path).await);
    }

    /// A statement that fails ends the transaction with nothing written, and the writer's next
    /// commit works (on a new connection: the failed one was closed).
    #[tokio::test]
    async fn a_failed_sqlite_transaction_script_writes_nothing_and_blocks_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let writer = counting_store(&path).await;
        writer
            .commit_script(&FenceSlot::default(), counting_commit(1))
            .await
            .expect("commit");
        let error = writer
            .commit_script(&FenceSlot::default(), counting_commit(1))
            .await
            .expect_err("attempt 1 is recorded already");
        assert!(error.to_string().contains("UNIQUE"), "{error}");
        assert_eq!(count_and_commits(&writer).await, (1, 1));
        assert!(sqlite_write_lock_is_free(&path).await);
        writer
            .commit_script(&FenceSlot::default(), counting_commit(2))
            .await
            .expect("the next commit");
        assert_eq!(count_and_commits(&writer).await, (2, 2));
    }

    /// A deposed writer whose statement fails (here on a key its successor wrote) is told it
    /// lost the lease, not the statement's error; a writer still holding it hears the error.
    #[tokio::test]
    async fn a_failed_fenced_sqlite_script_reports_a_lost_lease_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let writer = leased_counting_store(&path, "p1-b").await;
        let fence = FenceSlot::default();
        fence.activate("p1", crate::lease::Epoch(3));
        writer
            .commit_script(&fence, counting_commit(1))
            .await
            .expect("the successor's commit");
        let held = writer
            .commit_script(&fence, counting_commit(1))
            .await
            .expect_err("attempt 1 is recorded already");
        assert!(held.to_string().contains("UNIQUE"), "{held}");

        fence.activate("p1", crate::lease::Epoch(2));
        let deposed = writer
            .commit_script(&fence, counting_commit(1))
            .await
            .expect_err("a deposed writer");
        assert!(
            matches!(deposed, StoreError::LeaseLost { ref node, epoch: 2 } if node == "p1"),
            "{deposed:?}"
        );
        assert_eq!(count_and_commits(&writer).await, (1, 1));
        assert!(sqlite_write_lock_is_free(&path).await);
    }

    /// Dropped at every point of its life, a commit either happened whole or not at all, and
    /// never leaves the file's write lock held (the connection it ran on is closed, not handed
    /// back inside its transaction). Without [`OpenTransaction`]'s drop this fails within a
    /// few attempts: the next commit's `BEGIN` finds a transaction already open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_sqlite_transaction_script_is_atomic_and_leaves_no_lock() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let writer = counting_store(&path).await;
        let fence = FenceSlot::default();
        let mut finished = 0;
        for attempt in 0..600_i64 {
            let polls = u32::try_from(attempt % 200).expect("below 200");
            if let Some(outcome) = poll_then_drop(
                writer.commit_script(&fence, counting_commit(attempt)),
                polls,
            ) {
                outcome.expect("commit");
                finished += 1;
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while !sqlite_write_lock_is_free(&path).await {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "attempt {attempt} left the write lock held"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let (count, commits) = count_and_commits(&writer).await;
            assert_eq!(count, commits, "attempt {attempt} committed half");
        }
        assert!(finished > 0, "no attempt ran to its end");
        writer
            .commit_script(&fence, counting_commit(1_000))
            .await
            .expect("a commit after all the cancelled ones");
    }
}
