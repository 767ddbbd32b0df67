//! The replica lease: which replica of a replicated node (participant, mediator, topology
//! manager) is active, and the fencing epoch that makes a deposed active harmless.
//!
//! Contract (DESIGN.md §5):
//! - One row per node: `replica_lease(node, epoch, holder, holder_endpoint, renewed_at_us)`.
//! - **Acquire**: a replica becomes active only if no other live holder exists; taking the lease
//!   bumps `epoch` in the same transaction. PostgreSQL: the active holds a *session advisory
//!   lock* (keyed by the node name) on a dedicated connection, so the lock is released the
//!   moment its session dies (kill -9 of the process); if the holder is alive but stuck (not
//!   renewed for `lease_timeout`), a passive may terminate the holder's backend
//!   (`pg_terminate_backend`) and take over. SQLite: the row's `renewed_at_us` decides (expired
//!   after `lease_timeout`), plus an exclusive `flock` on a sidecar file `<db>.lease-<node>` held
//!   by the active process, so the lease frees at once when that process dies.
//! - **Renew**: the active renews every `lease_timeout / 4` or so; a renewal that finds another
//!   epoch fails with [`StoreError::LeaseLost`]. On PostgreSQL a renewal waits neither for the
//!   node's write transactions (their fencing lock does not conflict with it) nor for a WAL
//!   flush (it commits with `synchronous_commit = off`: a renewal lost in a server crash only
//!   makes the row look older, and the passives watch the row's changes, not its time).
//! - **Fencing**: every write transaction of the node's store runs [`FenceSlot`]'s check first,
//!   inside the transaction: `SELECT epoch FROM replica_lease WHERE node = ?` (PostgreSQL:
//!   `FOR KEY SHARE`, and the epoch bump locks the row `FOR UPDATE` first, so it waits for
//!   in-flight writes to finish) must equal the epoch this replica holds, else the transaction
//!   fails with [`StoreError::LeaseLost`] and writes nothing. A resumed zombie therefore cannot
//!   write after a takeover.
//! - **Release** (switchover): the active clears `holder` and drops its lock/flock so a passive
//!   can take over at its next poll without waiting for `lease_timeout`.

//!
//! The two backends take the lease by different means (`sqlite`: the row's age plus a flock;
//! `postgres`: an advisory lock on a dedicated session), but read and write the row with the
//! same statements, kept here.

pub mod postgres;
pub mod sqlite;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use meridian_core::Timestamp;

pub use postgres::PgLeaseStore;
pub use sqlite::SqliteLeaseStore;

use crate::StoreError;

/// A fencing epoch: strictly increasing per node, bumped on every takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub i64);

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who holds a node's lease, as last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub epoch: Epoch,
    /// `None` after a release.
    pub holder: Option<String>,
    /// The holder's advertised endpoint (for "UNAVAILABLE: the active replica is X").
    pub holder_endpoint: Option<String>,
    pub renewed_at: Timestamp,
}

#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Tries to become the active replica. Returns the new epoch on success, `None` if another
    /// live replica holds the lease. A free lease (released, never taken, its holder's process
    /// gone) is taken at once; a holder whose row has gone `lease_timeout` without renewal as of
    /// `now` is deposed. `Duration::MAX` takes only a free lease: the replica manager passes it
    /// until it has itself watched the holder stop renewing (`meridian_node::lease_watch`).
    async fn try_acquire(
        &self,
        holder: &str,
        holder_endpoint: &str,
        lease_timeout: Duration,
        now: Timestamp,
    ) -> Result<Option<Epoch>, StoreError>;

    /// Renews the lease; [`StoreError::LeaseLost`] if `epoch` is no longer current.
    async fn renew(&self, holder: &str, epoch: Epoch, now: Timestamp) -> Result<(), StoreError>;

    /// Steps down: frees the lease for a passive replica right away.
    async fn release(&self, holder: &str, epoch: Epoch) -> Result<(), StoreError>;

    async fn current(&self) -> Result<Option<LeaseState>, StoreError>;
}

/// Takes the lease for holder $2 (endpoint $3) at $4 (µs), bumping the epoch; returns it.
const TAKE: &str =
    "INSERT INTO replica_lease (node, epoch, holder, holder_endpoint, renewed_at_us) \
     VALUES ($1, 1, $2, $3, $4) \
     ON CONFLICT (node) DO UPDATE SET epoch = replica_lease.epoch + 1, \
     holder = excluded.holder, holder_endpoint = excluded.holder_endpoint, \
     renewed_at_us = excluded.renewed_at_us \
     RETURNING epoch";

/// Renews at $1 (µs) the lease of node $2, if still held at epoch $3 by holder $4.
const RENEW: &str = "UPDATE replica_lease SET renewed_at_us = $1 \
     WHERE node = $2 AND epoch = $3 AND holder = $4";

/// Frees the lease of node $1, if still held at epoch $2 by holder $3.
const RELEASE: &str = "UPDATE replica_lease SET holder = NULL, holder_endpoint = NULL \
     WHERE node = $1 AND epoch = $2 AND holder = $3";

/// The lease row of node $1, as [`LeaseRow`].
const CURRENT: &str = "SELECT epoch, holder, holder_endpoint, renewed_at_us FROM replica_lease \
     WHERE node = $1";

type LeaseRow = (i64, Option<String>, Option<String>, i64);

fn lease_state(row: LeaseRow) -> LeaseState {
    let (epoch, holder, holder_endpoint, renewed_at) = row;
    LeaseState {
        epoch: Epoch(epoch),
        holder,
        holder_endpoint,
        renewed_at: Timestamp::from_i64(renewed_at),
    }
}

/// The epoch this process writes under, shared between the replica manager (which sets it on
/// promotion and clears it on demotion) and the node's store (which checks it inside every
/// write transaction). Unset means the node is not replicated and no check runs.
#[derive(Debug, Clone, Default)]
pub struct FenceSlot {
    inner: Arc<RwLock<Fence>>,
}

#[derive(Debug, Clone, Default)]
enum Fence {
    /// Not replicated: writes are not fenced.
    #[default]
    Unfenced,
    /// Active under this epoch.
    Active { node: String, epoch: Epoch },
    /// Replicated but not active: every write is refused.
    Passive { node: String },
}

impl FenceSlot {
    pub fn activate(&self, node: &str, epoch: Epoch) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Fence::Active {
            node: node.to_owned(),
            epoch,
        };
    }

    pub fn deactivate(&self, node: &str) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Fence::Passive {
            node: node.to_owned(),
        };
    }

    /// What a write transaction must verify: `None` = nothing (unreplicated node),
    /// `Some((node, Some(epoch)))` = the lease row must still carry `epoch`,
    /// `Some((node, None))` = refuse (this replica is passive).
    pub fn expected(&self) -> Option<(String, Option<Epoch>)> {
        match &*self.inner.read().unwrap_or_else(|p| p.into_inner()) {
            Fence::Unfenced => None,
            Fence::Active { node, epoch } => Some((node.clone(), Some(*epoch))),
            Fence::Passive { node } => Some((node.clone(), None)),
        }
    }
}
