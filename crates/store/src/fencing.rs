//! The fencing check every write transaction of a replicated node's store runs first (see
//! [`crate::lease`]): one body for both backends, shared by the participant, mediator and topology
//! stores, so the check cannot differ between them.
//!
//! The check runs *inside* the caller's write transaction. On SQLite that transaction already
//! holds the file's write lock (`BEGIN IMMEDIATE`), so no epoch bump can commit between the
//! check and the caller's commit. On PostgreSQL `FOR KEY SHARE` locks the lease row until the
//! caller commits, and a takeover's epoch bump first locks that row `FOR UPDATE`, the one
//! row lock that conflicts with it, so the bump waits for every in-flight fenced write to
//! finish; writes that start after the bump see the new epoch. A renewal (an `UPDATE` of the
//! row's time only, which locks `FOR NO KEY UPDATE`) does not conflict with `FOR KEY SHARE`:
//! it never queues behind the node's own write transactions, which under load — a commit
//! waiting seconds for a contended disk — made renewals late enough for a passive to depose a
//! healthy active (the lock was `FOR SHARE` until issue 14).

use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;

use crate::lease::{Epoch, FenceSlot};
use crate::StoreError;

/// A connection a fenced write transaction runs on; call [`FencedConnection::check_fence`]
/// right after the dialect's `write_begin`.
pub(crate) trait FencedConnection {
    /// Fails with [`StoreError::Passive`] or [`StoreError::LeaseLost`] unless `fence` is unset
    /// or the lease row still carries its epoch.
    async fn check_fence(&mut self, fence: &FenceSlot) -> Result<(), StoreError> {
        let Some((node, expected)) = fence.expected() else {
            return Ok(());
        };
        let Some(epoch) = expected else {
            return Err(StoreError::Passive { node });
        };
        self.check_epoch(node, epoch).await
    }

    /// Fails with [`StoreError::LeaseLost`] unless `node`'s lease row carries `epoch`.
    async fn check_epoch(&mut self, node: String, epoch: Epoch) -> Result<(), StoreError>;
}

/// One body for both backends; only the epoch query differs (PostgreSQL's `FOR KEY SHARE`).
macro_rules! fenced_connection {
    ($connection:ty, $epoch_query:literal) => {
        impl FencedConnection for $connection {
            async fn check_epoch(&mut self, node: String, epoch: Epoch) -> Result<(), StoreError> {
                let found: Option<i64> = sqlx::query_scalar($epoch_query)
                    .bind(&node)
                    .fetch_optional(&mut *self)
                    .await?;
                verdict(node, epoch, found)
            }
        }
    };
}

// The write transaction already holds the file's write lock (`BEGIN IMMEDIATE`).
fenced_connection!(
    SqliteConnection,
    "SELECT epoch FROM replica_lease WHERE node = $1"
);
fenced_connection!(
    PgConnection,
    "SELECT epoch FROM replica_lease WHERE node = $1 FOR KEY SHARE"
);

/// A missing row means nobody ever took the lease, so this replica's epoch cannot be current
/// either: refused like any other mismatch.
pub(crate) fn verdict(node: String, epoch: Epoch, found: Option<i64>) -> Result<(), StoreError> {
    if found == Some(epoch.0) {
        Ok(())
    } else {
        Err(StoreError::LeaseLost {
            node,
            epoch: epoch.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_held_epoch_passes() {
        assert!(verdict("n".into(), Epoch(3), Some(3)).is_ok());
        assert!(matches!(
            verdict("n".into(), Epoch(3), Some(4)),
            Err(StoreError::LeaseLost { epoch: 3, .. })
        ));
        assert!(matches!(
            verdict("n".into(), Epoch(3), None),
            Err(StoreError::LeaseLost { .. })
        ));
    }
}
