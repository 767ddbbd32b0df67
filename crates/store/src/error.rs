//! Errors of every store. Callers must tell apart a fenced writer (demote, stop writing), a
//! database that is away (report not-ready, retry with backoff) and a genuine conflict.

use meridian_core::{InstanceIndex, MemberId};

use crate::sequencer::Incarnation;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sequencer instance {0} is marked offline; its writes are fenced")]
    Fenced(InstanceIndex),
    #[error("sequencer instance {index} was claimed by incarnation {current}; this process (incarnation {incarnation}) must stop writing")]
    Superseded {
        index: InstanceIndex,
        incarnation: Incarnation,
        current: Incarnation,
    },
    #[error("sequencer instance {index} is held by a live process (online, watermark {watermark_us} µs is recent); is another process configured with the same instance index?")]
    InstanceInUse {
        index: InstanceIndex,
        watermark_us: i64,
    },
    #[error("the replica lease of {node} is no longer held at epoch {epoch}: another replica took over; this one must stop writing")]
    LeaseLost { node: String, epoch: i64 },
    #[error("this replica of {node} is passive: it holds no lease and may not write")]
    Passive { node: String },
    #[error("member {member} is already registered with a different public key")]
    MemberKeyConflict { member: MemberId },
    #[error("{0}")]
    ForeignDatabase(Box<crate::owner::ForeignDatabase>),
    #[error("the database is read-only (a standby?)")]
    ReadOnly,
    /// No server of the storage URL takes writes (see [`crate::follow`]): every host tried
    /// and why — refused, no answer, a standby, read-only. Passes once a server is promoted.
    #[error("{0}")]
    NoWriter(Box<crate::follow::NoWriter>),
    /// The storage URL cannot be used as written; the message names the bad part.
    #[error("{0}")]
    BadUrl(#[from] crate::postgres_url::UrlError),
    #[error("the database is unreachable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// PostgreSQL 53100 (`disk_full`), SQLite `SQLITE_FULL`: nothing more can be written until
    /// an operator frees space; the data already written is intact.
    #[error("the database is out of disk space: {0}")]
    DiskFull(#[source] sqlx::Error),
    /// PostgreSQL class 53 besides `disk_full`: out of memory, too many connections, a
    /// configured limit reached. Passes when the load on the server does.
    #[error("the database server is out of resources: {0}")]
    OutOfResources(#[source] sqlx::Error),
    /// A serialization failure (40001), a deadlock (40P01), a lock not available (55P03), or
    /// SQLite's `SQLITE_BUSY`/`SQLITE_LOCKED`: the transaction lost a race and was rolled back
    /// whole; the same transaction again normally succeeds.
    #[error("the transaction conflicted with another and was rolled back: {0}")]
    Conflict(#[source] sqlx::Error),
    /// 57014 `query_canceled`: a statement timeout, or an operator's `pg_cancel_backend`. The
    /// transaction was rolled back.
    #[error("the database canceled the statement (statement timeout?): {0}")]
    Canceled(#[source] sqlx::Error),
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// The schema cannot be brought up to date: a migration the database refuses, or a history
    /// of applied migrations this code does not know. (A migration that failed because the
    /// database was away or read-only is that failure instead, see the `From` impl.)
    #[error("migrating the database failed: {0}")]
    Migration(sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// A row of `table` that does not decode: the database holds what this code never writes.
    pub(crate) fn corrupt(table: &'static str, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            table,
            detail: detail.into(),
        }
    }

    /// Whether the same call may succeed later, once the database recovers: it was away,
    /// read-only or without a writer, full, overloaded, or the transaction lost a race or timed out — every case
    /// a node rides out (not ready, retry with backoff) rather than stopping on. The rest are
    /// definite answers: fencing (demote), a conflict of data, corrupt rows or a database
    /// error the node does not know (stop and say so: retrying cannot help).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::ReadOnly
                | StoreError::NoWriter(_)
                | StoreError::Unavailable(_)
                | StoreError::DiskFull(_)
                | StoreError::OutOfResources(_)
                | StoreError::Conflict(_)
                | StoreError::Canceled(_)
        )
    }
}

/// What a database error code says, on either backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    ReadOnly,
    Unavailable,
    DiskFull,
    OutOfResources,
    Conflict,
    Canceled,
    Other,
}

/// Classifies a PostgreSQL SQLSTATE.
fn postgres_class(code: &str) -> Class {
    match code {
        // read_only_sql_transaction
        "25006" => Class::ReadOnly,
        // admin_shutdown, crash_shutdown, cannot_connect_now; idle-in-transaction and idle
        // session timeouts end the session like a terminated backend.
        "57P01" | "57P02" | "57P03" | "25P03" | "57P05" => Class::Unavailable,
        "53100" => Class::DiskFull,
        // serialization_failure, deadlock_detected, lock_not_available
        "40001" | "40P01" | "55P03" => Class::Conflict,
        // query_canceled: statement_timeout or pg_cancel_backend
        "57014" => Class::Canceled,
        // class 08: connection exception
        _ if code.starts_with("08") => Class::Unavailable,
        // class 53: insufficient resources
        _ if code.starts_with("53") => Class::OutOfResources,
        _ => Class::Other,
    }
}

/// Classifies a SQLite result code as sqlx reports it: the extended code, in decimal; its low
/// byte is the primary code.
fn sqlite_class(code: &str) -> Class {
    const SQLITE_BUSY: i64 = 5;
    const SQLITE_LOCKED: i64 = 6;
    const SQLITE_READONLY: i64 = 8;
    const SQLITE_FULL: i64 = 13;
    let Ok(extended) = code.parse::<i64>() else {
        return Class::Other;
    };
    match extended & 0xff {
        SQLITE_BUSY | SQLITE_LOCKED => Class::Conflict,
        SQLITE_READONLY => Class::ReadOnly,
        SQLITE_FULL => Class::DiskFull,
        _ => Class::Other,
    }
}

/// What an sqlx error says, on either backend.
fn class_of(error: &sqlx::Error) -> Class {
    match error {
        // A connection that broke mid-conversation (a terminated backend can show as an
        // unexpected message rather than an I/O error) is dropped from the pool; the next
        // call gets a new one.
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Class::Unavailable,
        sqlx::Error::Database(db) => match (
            db.code(),
            db.try_downcast_ref::<sqlx::sqlite::SqliteError>(),
        ) {
            (Some(code), Some(_)) => sqlite_class(&code),
            (Some(code), None) => postgres_class(&code),
            (None, _) => Class::Other,
        },
        _ => Class::Other,
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    /// A migration that failed on the connection — the server went away, terminated the
    /// session, is read-only — is that failure, as transient as any call's: a store migrates
    /// whenever it finds a new writer, and must ride that out. What the schema itself refuses
    /// stays [`StoreError::Migration`].
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        use sqlx::migrate::MigrateError;
        match error {
            MigrateError::Execute(inner) | MigrateError::ExecuteMigration(inner, _)
                if class_of(&inner) != Class::Other =>
            {
                StoreError::from(inner)
            }
            other => StoreError::Migration(other),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match class_of(&error) {
            Class::ReadOnly => StoreError::ReadOnly,
            Class::Unavailable => StoreError::Unavailable(error),
            Class::DiskFull => StoreError::DiskFull(error),
            Class::OutOfResources => StoreError::OutOfResources(error),
            Class::Conflict => StoreError::Conflict(error),
            Class::Canceled => StoreError::Canceled(error),
            Class::Other => StoreError::Database(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::error::Error as StdError;

    use sqlx::error::{DatabaseError, ErrorKind};
    use sqlx::{Connection, Executor, SqliteConnection};

    use super::*;

    /// A PostgreSQL error as the server reports it: just a SQLSTATE and a message.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl StdError for Sqlstate {}

    impl DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            self.0
        }

        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }

        fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
            self
        }

        fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
            self
        }

        fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
            self
        }

        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    fn postgres(code: &'static str) -> StoreError {
        StoreError::from(sqlx::Error::Database(Box::new(Sqlstate(code))))
    }

    #[test]
    fn postgres_codes_map_to_variants_a_caller_can_tell_apart() {
        assert!(matches!(postgres("25006"), StoreError::ReadOnly));
        for code in [
            "57P01", "57P02", "57P03", "08006", "08003", "08001", "25P03",
        ] {
            assert!(
                matches!(postgres(code), StoreError::Unavailable(_)),
                "{code}"
            );
        }
        assert!(matches!(postgres("53100"), StoreError::DiskFull(_)));
        for code in ["53200", "53300", "53400"] {
            assert!(
                matches!(postgres(code), StoreError::OutOfResources(_)),
                "{code}"
            );
        }
        for code in ["40001", "40P01", "55P03"] {
            assert!(matches!(postgres(code), StoreError::Conflict(_)), "{code}");
        }
        assert!(matches!(postgres("57014"), StoreError::Canceled(_)));
    }

    /// A store migrates whenever it finds a new writer, so a migration cut short by the
    /// connection must be ridden out like any call; a schema history it does not know must not.
    #[test]
    fn a_migration_failed_on_the_connection_is_transient() {
        use sqlx::migrate::MigrateError;
        let terminated = sqlx::Error::Database(Box::new(Sqlstate("57P01")));
        let error = StoreError::from(MigrateError::Execute(terminated));
        assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
        assert!(error.is_transient());
        let read_only = sqlx::Error::Database(Box::new(Sqlstate("25006")));
        let error = StoreError::from(MigrateError::ExecuteMigration(read_only, 3));
        assert!(matches!(error, StoreError::ReadOnly), "{error:?}");
        let syntax = sqlx::Error::Database(Box::new(Sqlstate("42601")));
        let error = StoreError::from(MigrateError::ExecuteMigration(syntax, 3));
        assert!(matches!(error, StoreError::Migration(_)), "{error:?}");
        assert!(!error.is_transient());
        let error = StoreError::from(MigrateError::VersionMissing(7));
        assert!(matches!(error, StoreError::Migration(_)), "{error:?}");
        assert!(!error.is_transient());
    }

    #[test]
    fn recoverable_errors_are_transient_and_the_rest_are_not() {
        for code in [
            "25006", "57P01", "57P02", "57P03", "08006", "53100", "53200", "40001", "40P01",
            "57014",
        ] {
            assert!(postgres(code).is_transient(), "{code} is recoverable");
        }
        for io in [
            sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
            sqlx::Error::PoolTimedOut,
        ] {
            assert!(StoreError::from(io).is_transient());
        }
        // A conflict of data, a broken constraint, a missing table, corruption (XX001:
        // data_corrupted) and fencing are definite: retrying cannot change them.
        for code in ["23505", "23503", "42P01", "XX001", "XX002"] {
            let error = postgres(code);
            assert!(matches!(error, StoreError::Database(_)), "{code}");
            assert!(!error.is_transient(), "{code} is definite");
        }
        let definite = [
            StoreError::Corrupt {
                table: "t",
                detail: "bad".into(),
            },
            StoreError::LeaseLost {
                node: "n".into(),
                epoch: 1,
            },
            StoreError::Passive { node: "n".into() },
            StoreError::Fenced(InstanceIndex(0)),
            // A URL does not mend itself.
            StoreError::BadUrl(crate::postgres_url::UrlError::NoHost),
        ];
        let no_writer = StoreError::NoWriter(Box::new(crate::follow::NoWriter {
            tried: vec![(
                crate::postgres_url::HostAddr {
                    host: "db1".into(),
                    port: 5432,
                },
                crate::follow::PassedOver::Standby,
            )],
        }));
        assert!(no_writer.is_transient(), "a standby may be promoted");
        for error in definite {
            assert!(!error.is_transient(), "{error}");
        }
    }

    async fn sqlite_file(dir: &std::path::Path) -> SqliteConnection {
        let url = format!("sqlite://{}?mode=rwc", dir.join("t.db").display());
        SqliteConnection::connect(&url).await.expect("open SQLite")
    }

    /// Real SQLite failures, so the mapping follows the extended codes sqlx really reports.
    #[tokio::test]
    async fn sqlite_busy_read_only_and_full_are_recoverable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut first = sqlite_file(dir.path()).await;
        first
            .execute("CREATE TABLE t (x BLOB)")
            .await
            .expect("create");

        // Another connection holds the write lock, and this one does not wait for it.
        let mut second = sqlite_file(dir.path()).await;
        second
            .execute("PRAGMA busy_timeout = 0")
            .await
            .expect("pragma");
        first.execute("BEGIN IMMEDIATE").await.expect("lock");
        let busy = StoreError::from(
            second
                .execute("BEGIN IMMEDIATE")
                .await
                .expect_err("the file is locked"),
        );
        assert!(matches!(busy, StoreError::Conflict(_)), "{busy:?}");
        assert!(busy.is_transient());
        first.execute("ROLLBACK").await.expect("unlock");

        second
            .execute("PRAGMA query_only = ON")
            .await
            .expect("pragma");
        let read_only = StoreError::from(
            second
                .execute("INSERT INTO t VALUES (x'00')")
                .await
                .expect_err("query_only refuses writes"),
        );
        assert!(matches!(read_only, StoreError::ReadOnly), "{read_only:?}");

        // A page limit stands in for a full disk: SQLite answers SQLITE_FULL to both.
        first
            .execute("PRAGMA max_page_count = 8")
            .await
            .expect("pragma");
        let full = first
            .execute("INSERT INTO t VALUES (zeroblob(1000000))")
            .await
            .expect_err("beyond the page limit");
        let full = StoreError::from(full);
        assert!(matches!(full, StoreError::DiskFull(_)), "{full:?}");
        assert!(full.is_transient());
    }
}
