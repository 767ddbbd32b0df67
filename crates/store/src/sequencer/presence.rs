//! Presence: whether a sequencer instance's process is alive, told by the operating system or
//! the database server instead of by the instance itself. Each live instance holds a lock for
//! as long as its process lives — on SQLite an exclusive `flock` on a file beside the database
//! (`<database>-instance-<n>.lock`), on PostgreSQL a session advisory lock on a connection of
//! its own — and the kernel or the server releases it the moment the process dies. Peers that
//! look see a killed instance gone at once, instead of after its watermark has stood still
//! for `offline_after`.
//!
//! A stopped (SIGSTOP) or stalled process keeps its lock; for it the watermark's age stays
//! the test. Presence is evidence, never authority: nothing is fenced by it (fencing rests on
//! the instance row's incarnation), and the caller marks a peer offline on a missing lock only
//! once its watermark has stood still as well, because a live instance whose database session
//! broke (a failover) holds no lock until it takes it again.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_core::InstanceIndex;
use sqlx::postgres::PgConnection;
use sqlx::Connection;

use crate::follow;
use crate::postgres_url::PostgresUrl;
use crate::StoreError;

/// Whether this process holds its instance's presence lock after [`SequencerStore::hold_presence`](super::SequencerStore::hold_presence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceHold {
    Held,
    /// Another process holds it: a stopped predecessor with the same index (this process
    /// claimed the row from it) that has not died yet. Taken when it does.
    HeldElsewhere,
}

/// Attempts at taking the file lock: a peer's probe holds a shared lock on it for the moment
/// of a system call, which must not look like a live holder.
const FILE_LOCK_ATTEMPTS: u32 = 20;
const FILE_LOCK_PAUSE: Duration = Duration::from_millis(5);

/// The first key of the two-key advisory lock form, naming "a sequencer instance's presence";
/// the second key is the instance index. Advisory locks are per database, so deployments on
/// different databases of one server do not meet.
const ADVISORY_CLASS: i32 = 0x4d53_5052;
/// Bounds one presence statement or connection attempt, so a hung server cannot stall the
/// peer checks that call it.
const SESSION_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The presence lock file of instance `index` of the database at `database`.
pub fn lock_file_path(database: &Path, index: InstanceIndex) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(format!("-instance-{}.lock", index.0));
    PathBuf::from(name)
}

fn io_error(error: std::io::Error) -> StoreError {
    StoreError::Unavailable(sqlx::Error::Io(error))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|joined| io_error(std::io::Error::other(joined)))?
        .map_err(io_error)
}

/// Presence on SQLite: `flock` on a file per instance beside the database file.
#[derive(Debug)]
pub(super) struct FilePresence {
    database: PathBuf,
    /// The locked file while this process holds its instance's lock; closing it releases it.
    held: tokio::sync::Mutex<Option<(InstanceIndex, File)>>,
}

impl FilePresence {
    pub(super) fn new(database: &Path) -> Self {
        Self {
            database: database.to_owned(),
            held: tokio::sync::Mutex::new(None),
        }
    }

    pub(super) async fn hold(&self, index: InstanceIndex) -> Result<PresenceHold, StoreError> {
        let mut held = self.held.lock().await;
        if matches!(&*held, Some((holding, _)) if *holding == index) {
            return Ok(PresenceHold::Held);
        }
        let path = lock_file_path(&self.database, index);
        let taken = blocking(move || {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            for _ in 0..FILE_LOCK_ATTEMPTS {
                match file.try_lock() {
                    Ok(()) => return Ok(Some(file)),
                    Err(TryLockError::WouldBlock) => std::thread::sleep(FILE_LOCK_PAUSE),
                    Err(TryLockError::Error(error)) => return Err(error),
                }
            }
            Ok(None)
        })
        .await?;
        Ok(match taken {
            Some(file) => {
                *held = Some((index, file));
                PresenceHold::Held
            }
            None => PresenceHold::HeldElsewhere,
        })
    }

    pub(super) async fn present(
        &self,
        among: &[InstanceIndex],
    ) -> Result<Vec<InstanceIndex>, StoreError> {
        let database = self.database.clone();
        let among = among.to_vec();
        blocking(move || {
            let mut present = Vec::with_capacity(among.len());
            for index in among {
                let file = match File::open(lock_file_path(&database, index)) {
                    Ok(file) => file,
                    // Never held (or an instance of a version without presence): absent.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                };
                match file.try_lock_shared() {
                    // Nobody holds it exclusively: the instance's process is gone. Closing the
                    // file releases the shared lock at once.
                    Ok(()) => {}
                    Err(TryLockError::WouldBlock) => present.push(index),
                    Err(TryLockError::Error(error)) => return Err(error),
                }
            }
            Ok(present)
        })
        .await
    }
}

/// Presence on PostgreSQL: a session advisory lock on a connection of this process's own,
/// always on the server that is the writer when it connects.
#[derive(Debug)]
pub(super) struct SessionPresence {
    url: PostgresUrl,
    session: tokio::sync::Mutex<Option<(InstanceIndex, PgConnection)>>,
}

impl SessionPresence {
    pub(super) fn new(url: PostgresUrl) -> Self {
        Self {
            url,
            session: tokio::sync::Mutex::new(None),
        }
    }

    /// Takes the lock, or checks that the session holding it is still there (after a
    /// database failover it is not: the lock, never replicated, is taken again on the
    /// promoted server).
    pub(super) async fn hold(&self, index: InstanceIndex) -> Result<PresenceHold, StoreError> {
        let mut session = self.session.lock().await;
        if let Some((holding, connection)) = session.as_mut() {
            if *holding == index
                && tokio::time::timeout(SESSION_CALL_TIMEOUT, connection.ping())
                    .await
                    .is_ok_and(|pinged| pinged.is_ok())
            {
                return Ok(PresenceHold::Held);
            }
            // Broken or for another index: its lock state is unknown, so it goes (closing a
            // session releases whatever it held).
            *session = None;
        }
        let attempt = async {
            let mut connection = follow::connect_writer(&self.url).await?;
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(ADVISORY_CLASS)
                .bind(index_key(index)?)
                .fetch_one(&mut connection)
                .await?;
            Ok::<_, StoreError>((locked, connection))
        };
        let (locked, connection) = tokio::time::timeout(SESSION_CALL_TIMEOUT, attempt)
            .await
            .map_err(|_| {
                io_error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "taking the sequencer instance's presence lock timed out",
                ))
            })??;
        if locked {
            *session = Some((index, connection));
            Ok(PresenceHold::Held)
        } else {
            let _ = tokio::time::timeout(SESSION_CALL_TIMEOUT, connection.close()).await;
            Ok(PresenceHold::HeldElsewhere)
        }
    }
}

fn index_key(index: InstanceIndex) -> Result<i32, StoreError> {
    i32::try_from(index.0).map_err(|_| {
        StoreError::corrupt(
            "sequencer_instances",
            format!("instance index {} does not fit a lock key", index.0),
        )
    })
}

/// The instance indexes whose presence lock some session of this database holds.
pub(super) const PRESENT_INSTANCES: &str = "SELECT objid::bigint FROM pg_locks \
     WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid::bigint = $1 \
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

pub(super) fn advisory_class() -> i64 {
    i64::from(ADVISORY_CLASS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_file_sits_beside_the_database_and_names_the_instance() {
        assert_eq!(
            lock_file_path(Path::new("/data/sequencer.db"), InstanceIndex(3)),
            PathBuf::from("/data/sequencer.db-instance-3.lock")
        );
    }
}
