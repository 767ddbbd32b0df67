//! The replica lease on an SQLite file shared by the replicas of one node (on one machine).
//!
//! The row decides; an exclusive `flock` on the sidecar file `<db>.lease-<node>` only makes a
//! takeover fast. The active holds the flock and writes its epoch into the sidecar. The kernel
//! drops a flock when its process dies, so a passive that gets the flock *and* finds the row's
//! epoch in the sidecar knows the holder of that epoch is gone (or stepped down) and takes over
//! at once. Otherwise it takes over only after the row went `lease_timeout` without renewal:
//! a stopped (SIGSTOP) or stuck holder keeps its flock but not its epoch, and the fencing check
//! refuses its writes when it resumes.
//!
//! Why the epoch in the sidecar and not just "flock free ⇒ take over": an active that took over
//! by timeout has no flock (its stuck predecessor held it). When the predecessor resumes, loses
//! its renewal and drops the flock, a free flock no longer says anything about the live active;
//! the sidecar's stale epoch says exactly that. The active picks up the flock at its next renewal
//! and writes its own epoch, so the fast path works again from then on. A passive never keeps
//! the flock: it releases it unless it takes over.
//!
//! Limitation: a holder stopped *inside* a write transaction keeps SQLite's write lock, which no
//! other process can break, so nobody (not even a taker) can write until it resumes or dies; the
//! takeover's `BEGIN IMMEDIATE` fails after the busy timeout (`pool::SQLITE_BUSY_TIMEOUT`,
//! 5 s) and the passive keeps polling. A supervisor that kills stuck processes (kill -9 frees
//! the write lock and the flock at once) is the remedy; PostgreSQL terminates such sessions
//! itself.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use meridian_core::Timestamp;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sqlx::sqlite::SqlitePool;

use super::{lease_state, Epoch, LeaseRow, LeaseState, LeaseStore, CURRENT, RELEASE, RENEW, TAKE};
use crate::{pool, StoreError};

#[derive(Debug)]
pub struct SqliteLeaseStore {
    node: String,
    pool: SqlitePool,
    sidecar: PathBuf,
    /// The flock on the sidecar, held only while this instance is (or is becoming) active.
    flock: Mutex<Option<Flock<File>>>,
}

impl SqliteLeaseStore {
    /// Opens (creating and migrating if needed) the database file that holds `node`'s lease
    /// row; the sidecar lock file is `<path>.lease-<node>`.
    pub async fn open(path: &Path, node: &str) -> Result<Self, StoreError> {
        let pool =
            pool::open_sqlite_writer(&pool::sqlite_options(path), pool::MIGRATE_ONCE).await?;
        Ok(Self {
            node: node.to_owned(),
            pool,
            sidecar: sidecar_path(path, node),
            flock: Mutex::new(None),
        })
    }

    /// The sidecar lock file of this node.
    pub fn sidecar(&self) -> &Path {
        &self.sidecar
    }

    fn flock_guard(&self) -> std::sync::MutexGuard<'_, Option<Flock<File>>> {
        // A panic while holding the guard cannot leave the Option half-written.
        self.flock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the flock unless another open file description holds it. `Ok(true)` if this
    /// instance holds it afterwards (including when it already did).
    fn take_flock(&self) -> Result<bool, StoreError> {
        let mut guard = self.flock_guard();
        if guard.is_some() {
            return Ok(true);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.sidecar)
            .map_err(|error| self.file_error("opening", error))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                *guard = Some(lock);
                Ok(true)
            }
            Err((_, Errno::EWOULDBLOCK)) => Ok(false),
            Err((_, errno)) => Err(self.file_error("locking", errno.into())),
        }
    }

    fn drop_flock(&self) {
        // Dropping the `Flock` unlocks it (and closes the file).
        self.flock_guard().take();
    }

    /// The epoch the last flock holder wrote, if this instance holds the flock and the file
    /// holds a number. Anything else is "unknown", which only disables the fast path.
    fn flocked_epoch(&self) -> Option<i64> {
        let mut guard = self.flock_guard();
        let file: &mut File = guard.as_mut()?;
        let mut text = String::new();
        file.seek(SeekFrom::Start(0)).ok()?;
        file.read_to_string(&mut text).ok()?;
        text.trim().parse().ok()
    }

    /// Records under the flock that the holder of `epoch` holds it. No fsync: after a machine
    /// crash no process holds anything, and a stale or torn number only disables the fast path.
    fn write_flocked_epoch(&self, epoch: Epoch) -> Result<(), StoreError> {
        let mut guard = self.flock_guard();
        let Some(file) = guard.as_mut() else {
            return Ok(());
        };
        let file: &mut File = file;
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(epoch.0.to_string().as_bytes()))
            .map_err(|error| self.file_error("writing", error))
    }

    fn file_error(&self, action: &str, error: std::io::Error) -> StoreError {
        StoreError::Unavailable(sqlx::Error::Io(std::io::Error::new(
            error.kind(),
            format!(
                "{action} the lease lock file {}: {error}",
                self.sidecar.display()
            ),
        )))
    }

    /// The row decision, in one `BEGIN IMMEDIATE` transaction so that two passives cannot both
    /// bump the epoch from the same row.
    async fn take_row(
        &self,
        holder: &str,
        holder_endpoint: &str,
        lease_timeout: Duration,
        now: Timestamp,
        flocked: bool,
    ) -> Result<Option<Epoch>, StoreError> {
        let mut tx = pool::begin(&self.pool, "BEGIN IMMEDIATE").await?;
        let row: Option<(i64, Option<String>, i64)> = sqlx::query_as(
            "SELECT epoch, holder, renewed_at_us FROM replica_lease WHERE node = $1",
        )
        .bind(&self.node)
        .fetch_optional(&mut *tx)
        .await?;
        let free = match &row {
            None => true,
            Some((epoch, holder, renewed_at)) => {
                holder.is_none()
                    || (flocked && self.flocked_epoch() == Some(*epoch))
                    || now.duration_since(Timestamp::from_i64(*renewed_at)) >= lease_timeout
            }
        };
        if !free {
            tx.rollback().await?;
            return Ok(None);
        }
        let epoch: i64 = sqlx::query_scalar(TAKE)
            .bind(&self.node)
            .bind(holder)
            .bind(holder_endpoint)
            .bind(now.as_i64())
            .fetch_one(&mut *tx)
            .await?;
        if flocked {
            // Before the commit, not after it: a call dropped between the two (its caller
            // cancelled) would leave the row's epoch unrecorded, and every later flock holder,
            // this instance included, would wait out the timeout. A commit that fails instead
            // leaves a number the row does not hold, which only disables the fast path.
            if let Err(error) = self.write_flocked_epoch(Epoch(epoch)) {
                // The lease is ours regardless; only a fast takeover after our death is lost.
                tracing::warn!(node = %self.node, %error, "cannot record the epoch in the lease lock file");
            }
        }
        tx.commit().await?;
        if let Some((previous, Some(previous_holder), renewed_at)) = row {
            tracing::info!(
                node = %self.node, previous_epoch = previous, %previous_holder,
                stale_for = ?now.duration_since(Timestamp::from_i64(renewed_at)),
                fast = flocked, "took over the replica lease"
            );
        }
        Ok(Some(Epoch(epoch)))
    }
}

/// Lets go of the flock when dropped, unless the call it guards took the lease.
struct FlockUnlessTaken<'a> {
    store: &'a SqliteLeaseStore,
    taken: bool,
}

impl Drop for FlockUnlessTaken<'_> {
    fn drop(&mut self) {
        if !self.taken {
            self.store.drop_flock();
        }
    }
}

/// `<db path>.lease-<node>`, with every character of the node name that is not
/// alphanumeric, `-`, `_` or `.` replaced, so a name cannot point elsewhere.
fn sidecar_path(path: &Path, node: &str) -> PathBuf {
    let safe: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".lease-{safe}"));
    PathBuf::from(name)
}

#[async_trait]
impl LeaseStore for SqliteLeaseStore {
    async fn try_acquire(
        &self,
        holder: &str,
        holder_endpoint: &str,
        lease_timeout: Duration,
        now: Timestamp,
    ) -> Result<Option<Epoch>, StoreError> {
        let flocked = self.take_flock()?;
        // A passive never keeps the flock, the live active may need it; nor does a call
        // dropped midway, whose caller cannot know whether it took the lease.
        let mut flock = FlockUnlessTaken {
            store: self,
            taken: false,
        };
        let taken = self
            .take_row(holder, holder_endpoint, lease_timeout, now, flocked)
            .await;
        flock.taken = matches!(taken, Ok(Some(_)));
        taken
    }

    async fn renew(&self, holder: &str, epoch: Epoch, now: Timestamp) -> Result<(), StoreError> {
        let renewed = sqlx::query(RENEW)
            .bind(now.as_i64())
            .bind(&self.node)
            .bind(epoch.0)
            .bind(holder)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if renewed == 0 {
            // Let the new active pick up the flock (and with it the fast path).
            self.drop_flock();
            return Err(StoreError::LeaseLost {
                node: self.node.clone(),
                epoch: epoch.0,
            });
        }
        // Took over by timeout from a stuck holder that kept the flock: pick it up once that
        // holder let go, so our own death is detected at once.
        let had_flock = self.flock_guard().is_some();
        if !had_flock {
            match self.take_flock() {
                Ok(true) => {
                    if let Err(error) = self.write_flocked_epoch(epoch) {
                        tracing::warn!(node = %self.node, %error, "cannot record the epoch in the lease lock file");
                    }
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(node = %self.node, %error, "cannot take the lease lock file")
                }
            }
        }
        Ok(())
    }

    async fn release(&self, holder: &str, epoch: Epoch) -> Result<(), StoreError> {
        let result = sqlx::query(RELEASE)
            .bind(&self.node)
            .bind(epoch.0)
            .bind(holder)
            .execute(&self.pool)
            .await;
        // Drop the flock even if the update failed: the sidecar still names our epoch, so a
        // passive takes over at once instead of waiting for the timeout.
        self.drop_flock();
        result?;
        Ok(())
    }

    async fn current(&self) -> Result<Option<LeaseState>, StoreError> {
        let row: Option<LeaseRow> = sqlx::query_as(CURRENT)
            .bind(&self.node)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(lease_state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_names_cannot_escape_the_directory() {
        assert_eq!(
            sidecar_path(Path::new("/d/p.db"), "participant1"),
            PathBuf::from("/d/p.db.lease-participant1")
        );
        assert_eq!(
            sidecar_path(Path::new("/d/p.db"), "../x/y::z"),
            PathBuf::from("/d/p.db.lease-.._x_y__z")
        );
    }
}
