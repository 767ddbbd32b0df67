//! The fencing check every write transaction of a replicated node's store runs first (see
//! [`crate::lease`]): one helper per backend, shared by the participant, mediator and topology
//! stores, so the check cannot differ between them.
//!
//! The check runs *inside* the caller's write transaction. On SQLite that transaction already
//! holds the file's write lock (`BEGIN IMMEDIATE`), so no epoch bump can commit between the
//! check and the caller's commit. On PostgreSQL `FOR SHARE` locks the lease row until the
//! caller commits, and a takeover's epoch bump is an `UPDATE` of that row, so it waits for
//! every in-flight fenced write to finish; writes that start after the bump see the new epoch.

use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;

use crate::lease::{Epoch, FenceSlot};
use crate::StoreError;

/// Checks the fence on an SQLite write transaction (call it right after `BEGIN IMMEDIATE`).
pub(crate) async fn check_sqlite(
    connection: &mut SqliteConnection,
    fence: &FenceSlot,
) -> Result<(), StoreError> {
    let Some((node, expected)) = fence.expected() else {
        return Ok(());
    };
    let Some(epoch) = expected else {
        return Err(StoreError::Passive { node });
    };
    let found: Option<i64> = sqlx::query_scalar("SELECT epoch FROM replica_lease WHERE node = ?1")
        .bind(&node)
        .fetch_optional(&mut *connection)
        .await?;
    verdict(node, epoch, found)
}

/// Checks the fence on a PostgreSQL write transaction (call it right after `BEGIN`).
pub(crate) async fn check_postgres(
    connection: &mut PgConnection,
    fence: &FenceSlot,
) -> Result<(), StoreError> {
    let Some((node, expected)) = fence.expected() else {
        return Ok(());
    };
    let Some(epoch) = expected else {
        return Err(StoreError::Passive { node });
    };
    let found: Option<i64> =
        sqlx::query_scalar("SELECT epoch FROM replica_lease WHERE node = $1 FOR SHARE")
            .bind(&node)
            .fetch_optional(&mut *connection)
            .await?;
    verdict(node, epoch, found)
}

/// A missing row means nobody ever took the lease, so this replica's epoch cannot be current
/// either: refused like any other mismatch.
fn verdict(node: String, epoch: Epoch, found: Option<i64>) -> Result<(), StoreError> {
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
