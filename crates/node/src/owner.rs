//! The start-up check every role runs first: that the database its `[storage]` names is its
//! own (see `meridian_store::owner`). It waits, like every start-up step, while the database
//! is away, but a database that belongs to another node is a definite answer: the node
//! reports it on `/readyz`, logs it and returns the error, so the process exits with it
//! before it takes a lease, loads state or writes anything.

use std::fmt::Display;
use std::future::Future;

use meridian_store::{DatabaseOwner, OwnerClaim, StorageConfig, StoreError};

use crate::retry::Retry;

/// Claims the database `storage` names for `owner`, or checks that it is `owner`'s.
/// `Ok(false)` if the node was stopped while waiting for the database.
async fn claim_database(
    storage: &StorageConfig,
    owner: &DatabaseOwner,
    retry: &Retry,
) -> anyhow::Result<bool> {
    let claimed = retry
        .until("database", "checking whose database this is", || async {
            match meridian_store::claim_database(storage, owner).await {
                Ok(claim) => Ok(Ok(claim)),
                // Definite: waiting would not change whose database it is, nor mend a URL.
                Err(
                    definite @ (StoreError::ForeignDatabase(_)
                    | StoreError::Corrupt { .. }
                    | StoreError::BadUrl(_)),
                ) => Ok(Err(definite)),
                Err(error) => Err(error),
            }
        })
        .await?;
    match claimed {
        None => Ok(false),
        Some(Ok(claim)) => {
            match claim {
                OwnerClaim::Recorded => {
                    tracing::info!(%owner, "the database had no owner; recorded this node as its owner")
                }
                OwnerClaim::Confirmed => tracing::debug!(%owner, "the database is this node's"),
            }
            Ok(true)
        }
        Some(Err(refused)) => {
            retry.readiness().fail("database", refused.to_string());
            tracing::error!(%refused, "refusing to start");
            Err(anyhow::Error::new(refused).context("refusing to start"))
        }
    }
}

/// Opens a node's store on a database that is its own: claims it for `owner` first
/// ([`claim_database`]), then runs `open` until it succeeds, retrying while the database is
/// away (`what` says what failed). `Ok(None)` if the node was stopped while waiting.
pub async fn open_own_store<T, E, F, Fut>(
    storage: &StorageConfig,
    owner: &DatabaseOwner,
    retry: &Retry,
    what: &str,
    open: F,
) -> anyhow::Result<Option<T>>
where
    E: Display + std::fmt::Debug + Send + Sync + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    if !claim_database(storage, owner, retry).await? {
        return Ok(None);
    }
    Ok(retry.until("database", what, open).await?)
}
