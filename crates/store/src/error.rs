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
    #[error("the database is unreachable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("migrating the database failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
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

    /// Whether retrying later may succeed (the database was away), as opposed to a definite
    /// answer.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // read_only_sql_transaction
                Some("25006") => StoreError::ReadOnly,
                // admin_shutdown, crash_shutdown, cannot_connect_now
                Some("57P01") | Some("57P02") | Some("57P03") => StoreError::Unavailable(error),
                _ => StoreError::Database(error),
            },
            _ => StoreError::Database(error),
        }
    }
}
