//! The replica lease on PostgreSQL: a session advisory lock decides who is active, the row
//! carries the fencing epoch.
//!
//! Each store instance keeps one *dedicated* connection (a `PgConnection`, never a pool's, so no
//! one else can run statements in its session). While active, that session holds
//! `pg_try_advisory_lock(hashtext('meridian-lease:' || node))`; the server releases it the moment
//! the session ends, so a killed process frees the lease at once. Every lease statement of an
//! instance runs on its session, so a renewal can only succeed on the session that holds the
//! lock: if the connection broke, the lock went with it, and the renewal re-takes the lock on a
//! fresh connection (if it is still free and the row still names this epoch, nothing happened
//! in between) or fails with [`StoreError::LeaseLost`]. Any error on the session discards it,
//! because its lock state is then unknown; closing it releases whatever it held.
//!
//! A holder that is alive but stuck keeps its lock; once its row has gone `lease_timeout`
//! without renewal, a passive looks up the holder's backend in `pg_locks`, terminates it
//! (`pg_terminate_backend`, then looking every 2 ms, for up to `TERMINATE_WAIT` (2 s), until its
//! backend has exited) and tries the lock once more.
//!
//! The epoch bump is one transaction that first locks the lease row `FOR UPDATE`, which
//! conflicts with the `FOR KEY SHARE` of the fencing check (`crate::fencing`), so a takeover
//! waits for the deposed active's in-flight write transactions to end, up to the session's
//! `lock_timeout`; except that once the lease is stale, the sessions blocking the bump (a
//! stopped holder's open write transaction) are terminated as well, looked for every
//! `BLOCKED_CHECK` (50 ms) while it waits.
//!
//! A renewal only moves the row's time: an `UPDATE` of a non-key column, which does not
//! conflict with the fencing check's lock, so it never waits for the node's own write
//! transactions; and it commits with `synchronous_commit = off`, so it does not wait for a WAL
//! flush either. Both waits grow with the node's write load and the disk's, and a renewal
//! that lags while the passives' reads stay prompt looks to them exactly like a stopped holder
//! (`meridian_node::lease_watch`): they made a saturated deployment depose healthy actives.
//! Losing the last renewals in a server crash is harmless: every session, and with it every
//! lock, is gone then too, and the passives watch the row change, not its time.
//!
//! With several hosts in the URL every new session is opened on the server that is the writer
//! at that moment (`crate::follow`). After a database failover the old session fails (its
//! server is gone, or refuses the renewal as read-only), and the renewal's second attempt runs
//! on the promoted server: advisory locks are not replicated, so the lock is free there and
//! whichever replica takes it first wins — the active re-taking it keeps its epoch (the row,
//! replicated, still carries it), a passive taking it bumps the epoch and the old active's next
//! write fails the fencing check. Fencing never rested on the lock: the epoch is checked inside
//! every write transaction, on whichever server the write lands.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use meridian_core::Timestamp;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use tokio::sync::Mutex;

use super::{lease_state, Epoch, LeaseRow, LeaseState, LeaseStore, CURRENT, RELEASE, RENEW, TAKE};
use crate::follow::{self, FollowingPools, PoolShape};
use crate::pool::on_postgres;
use crate::postgres_url::PostgresUrl;
use crate::StoreError;

/// How long a terminated holder's backend is given to exit (and release its lock).
const TERMINATE_WAIT: Duration = Duration::from_secs(2);
/// How often to look whether it has: each look is one query, and the exit takes about a
/// millisecond unless the server is very busy.
const TERMINATE_POLL: Duration = Duration::from_millis(2);
/// While an epoch bump waits, how often to look at what blocks it. Short: a takeover from a
/// holder stopped inside a write transaction waits this long at least, and the look is one
/// cheap query on the read pool.
const BLOCKED_CHECK: Duration = Duration::from_millis(50);
/// A bound on one whole lease call: connect, a few statements, and a termination wait. Past it
/// the session is discarded (its lock released) and the call fails as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Session settings of the dedicated connection: the epoch bump waits for in-flight fenced
/// writes (their `FOR KEY SHARE`), but not forever.
const LOCK_TIMEOUT: &str = "5s";
const STATEMENT_TIMEOUT: &str = "10s";

/// The advisory lock key of a node (`$1`); an `int4` widened to the one-`bigint` lock form.
const KEY: &str = "hashtext('meridian-lease:' || $1)::bigint";
/// Locks the lease row of node `$1` for the epoch bump (no row yet: nothing to wait for).
const LOCK_ROW: &str = "SELECT 1 FROM replica_lease WHERE node = $1 FOR UPDATE";

#[derive(Debug)]
pub struct PgLeaseStore {
    node: String,
    /// The storage URL with the session settings below; every new session is opened on the
    /// server that is the writer then.
    url: PostgresUrl,
    /// The dedicated session; `None` until first used and after it failed.
    session: Mutex<Option<Session>>,
    /// For [`LeaseStore::current`] and watching a takeover, so a status read never disturbs
    /// the lock's session; kept on the writer like every store's pools.
    readers: FollowingPools,
}

#[derive(Debug)]
struct Session {
    connection: PgConnection,
    /// The session's backend process id, to find what blocks it.
    pid: i32,
    /// Whether this session holds the node's advisory lock (at most once: it is never taken
    /// again while held, so one unlock frees it).
    locked: bool,
}

impl PgLeaseStore {
    /// Connects, migrates, and prepares the dedicated session for `node`'s lease.
    pub async fn connect(url: &str, node: &str) -> Result<Self, StoreError> {
        let url = PostgresUrl::parse(url)?.map_options(|options| {
            options.options([
                ("lock_timeout", LOCK_TIMEOUT),
                ("statement_timeout", STATEMENT_TIMEOUT),
            ])
        });
        // Opening the read pool finds the writer and migrates it.
        let readers = FollowingPools::open(
            url.clone(),
            PoolShape::Shared { connections: 1 },
            false,
            "lease",
        )
        .await?;
        let store = Self {
            node: node.to_owned(),
            url,
            session: Mutex::new(None),
            readers,
        };
        // Connect the session now, so a passive is warm and a bad URL fails at start-up.
        let mut session = store.session.lock().await;
        store.open(&mut session).await?;
        drop(session);
        Ok(store)
    }

    /// The session, connecting it if there is none.
    async fn open<'s>(&self, slot: &'s mut Option<Session>) -> Result<&'s mut Session, StoreError> {
        let session = match slot.take() {
            Some(session) => session,
            None => {
                // On the writer as it is now: after a database failover the lock and the row
                // that count are the promoted server's.
                let mut connection = follow::connect_writer(&self.url).await?;
                let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut connection)
                    .await?;
                Session {
                    connection,
                    pid,
                    locked: false,
                }
            }
        };
        Ok(slot.insert(session))
    }

    async fn acquire_in(
        &self,
        slot: &mut Option<Session>,
        holder: &str,
        holder_endpoint: &str,
        lease_timeout: Duration,
        now: Timestamp,
    ) -> Result<Option<Epoch>, StoreError> {
        let session = self.open(slot).await?;
        if !session.locked {
            session.locked = try_lock(&mut session.connection, &self.node).await?;
        }
        if !session.locked {
            // A plain read first: this is every passive's poll, and it should cost nothing.
            if stale_for(&mut session.connection, &self.node, "", lease_timeout, now)
                .await?
                .is_none()
            {
                return Ok(None);
            }
            // Confirm under `FOR SHARE`, which waits for an epoch bump or renewal in flight, so
            // a replica that has just taken the lock is not mistaken for a stale holder.
            let Some(stale_for) = stale_for(
                &mut session.connection,
                &self.node,
                "FOR SHARE",
                lease_timeout,
                now,
            )
            .await?
            else {
                return Ok(None);
            };
            self.depose(&mut session.connection, stale_for).await?;
            session.locked = try_lock(&mut session.connection, &self.node).await?;
            if !session.locked {
                return Ok(None);
            }
        }
        // The lock is ours: bump the epoch. On an error the caller discards the session, which
        // releases the lock.
        let pid = session.pid;
        let node = &self.node;
        let connection = &mut session.connection;
        let bump = async move {
            let mut transaction = connection.begin().await?;
            // `FOR UPDATE` first: the one row lock that waits for the fencing check's
            // `FOR KEY SHARE`, i.e. for every fenced write transaction still running.
            sqlx::query(LOCK_ROW)
                .bind(node)
                .fetch_optional(&mut *transaction)
                .await?;
            let epoch: i64 = sqlx::query_scalar(TAKE)
                .bind(node)
                .bind(holder)
                .bind(holder_endpoint)
                .bind(now.as_i64())
                .fetch_one(&mut *transaction)
                .await?;
            transaction.commit().await?;
            Ok::<_, sqlx::Error>(epoch)
        };
        let epoch: i64 = self
            .clearing_stale_blockers(bump, pid, lease_timeout, now)
            .await?;
        Ok(Some(Epoch(epoch)))
    }

    /// Runs the epoch bump while watching, from the read pool, what it waits for. It waits for
    /// the fencing check's `FOR KEY SHARE` of in-flight writes, which is the point; but a holder
    /// stopped in the middle of a write transaction (SIGSTOP) would make it wait forever, and
    /// terminating its lease session does not end its writer's. So once the lease is stale,
    /// whoever blocks the bump is the deposed holder's, and is terminated too.
    async fn clearing_stale_blockers<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, sqlx::Error>>,
        pid: i32,
        lease_timeout: Duration,
        now: Timestamp,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        tokio::pin!(work);
        loop {
            tokio::select! {
                result = &mut work => return Ok(result?),
                () = tokio::time::sleep(BLOCKED_CHECK) => {
                    let now = now.saturating_add(started.elapsed());
                    let stale_before = now.saturating_sub(lease_timeout).as_i64();
                    let terminated = self.terminate_blockers(pid, stale_before).await;
                    match terminated {
                        Ok(pids) if !pids.is_empty() => tracing::warn!(
                            node = %self.node, ?pids,
                            "terminated the deposed lease holder's sessions that blocked the takeover"
                        ),
                        Ok(_) => {}
                        Err(error) => tracing::warn!(
                            node = %self.node, %error, "cannot look for sessions blocking the takeover"
                        ),
                    }
                }
            }
        }
    }

    /// Terminates the sessions that block the backend `pid`, if the lease row was last renewed
    /// at or before `stale_before` (µs); returns their process ids.
    async fn terminate_blockers(
        &self,
        pid: i32,
        stale_before: i64,
    ) -> Result<Vec<i32>, StoreError> {
        Ok(on_postgres!(&self.readers, |_, readers| {
            sqlx::query_scalar(
                "SELECT blocker FROM unnest(pg_blocking_pids($1)) AS blocker \
                         WHERE EXISTS (SELECT 1 FROM replica_lease \
                                       WHERE node = $2 AND renewed_at_us <= $3) \
                         AND pg_terminate_backend(blocker)",
            )
            .bind(pid)
            .bind(&self.node)
            .bind(stale_before)
            .fetch_all(readers)
            .await?
        }))
    }

    /// Terminates the backend holding the node's lock (a stuck active's session).
    async fn depose(
        &self,
        connection: &mut PgConnection,
        stale_for: Duration,
    ) -> Result<(), StoreError> {
        let holders: Vec<i32> = sqlx::query_scalar(&format!(
            "SELECT pid FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND ((classid::bigint << 32) | objid::bigint) = {KEY}"
        ))
        .bind(&self.node)
        .fetch_all(&mut *connection)
        .await?;
        for pid in holders {
            tracing::warn!(
                node = %self.node, pid, ?stale_for,
                "the replica lease holder stopped renewing; terminating its database session"
            );
            // Not `pg_terminate_backend(pid, timeout)`: the server checks for the exit every
            // 100 ms, and the first check comes before the backend had a chance to exit, so
            // every takeover paid 100 ms for an exit that takes about one.
            sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .execute(&mut *connection)
                .await?;
            let deadline = tokio::time::Instant::now() + TERMINATE_WAIT;
            loop {
                let alive: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                )
                .bind(pid)
                .fetch_one(&mut *connection)
                .await?;
                if !alive {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(node = %self.node, pid, "the lease holder's session did not exit in time");
                    break;
                }
                tokio::time::sleep(TERMINATE_POLL).await;
            }
        }
        Ok(())
    }

    async fn renew_in(
        &self,
        slot: &mut Option<Session>,
        holder: &str,
        epoch: Epoch,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let reused = slot.is_some();
        match self.renew_once(slot, holder, epoch, now).await {
            Err(lost @ StoreError::LeaseLost { .. }) => Err(lost),
            Err(error) if reused => {
                // The session broke (a passive terminated it, the server restarted, ...): its
                // lock is gone. Try once on a fresh session; `renew_once` re-takes the lock only
                // if nobody else has it and the row still carries our epoch.
                tracing::warn!(node = %self.node, %error, "lease session failed; renewing on a new one");
                *slot = None;
                self.renew_once(slot, holder, epoch, now).await
            }
            other => other,
        }
    }

    async fn renew_once(
        &self,
        slot: &mut Option<Session>,
        holder: &str,
        epoch: Epoch,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let lost = || StoreError::LeaseLost {
            node: self.node.clone(),
            epoch: epoch.0,
        };
        let session = self.open(slot).await?;
        if !session.locked {
            session.locked = try_lock(&mut session.connection, &self.node).await?;
            if !session.locked {
                // Another session holds the lock: a passive is taking over.
                return Err(lost());
            }
        }
        // Its own transaction, only to commit without waiting for a WAL flush (see the module
        // doc); the statement is the one both backends renew with.
        let mut transaction = session.connection.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *transaction)
            .await?;
        let renewed = sqlx::query(RENEW)
            .bind(now.as_i64())
            .bind(&self.node)
            .bind(epoch.0)
            .bind(holder)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        transaction.commit().await?;
        if renewed == 0 {
            unlock(session, &self.node).await?;
            return Err(lost());
        }
        Ok(())
    }

    async fn release_in(
        &self,
        slot: &mut Option<Session>,
        holder: &str,
        epoch: Epoch,
    ) -> Result<(), StoreError> {
        let session = self.open(slot).await?;
        sqlx::query(RELEASE)
            .bind(&self.node)
            .bind(epoch.0)
            .bind(holder)
            .execute(&mut session.connection)
            .await?;
        unlock(session, &self.node).await
    }
}

/// How long the row has gone without renewal, if at least `lease_timeout` (`None`: fresh, or no
/// row yet, which means someone is taking the lease for the first time right now).
async fn stale_for(
    connection: &mut PgConnection,
    node: &str,
    lock_clause: &str,
    lease_timeout: Duration,
    now: Timestamp,
) -> Result<Option<Duration>, StoreError> {
    let renewed_at: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT renewed_at_us FROM replica_lease WHERE node = $1 {lock_clause}"
    ))
    .bind(node)
    .fetch_optional(connection)
    .await?;
    Ok(renewed_at
        .map(|renewed_at| now.duration_since(Timestamp::from_i64(renewed_at)))
        .filter(|stale_for| *stale_for >= lease_timeout))
}

async fn try_lock(connection: &mut PgConnection, node: &str) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar(&format!("SELECT pg_try_advisory_lock({KEY})"))
            .bind(node)
            .fetch_one(connection)
            .await?,
    )
}

async fn unlock(session: &mut Session, node: &str) -> Result<(), StoreError> {
    if session.locked {
        let _held: bool = sqlx::query_scalar(&format!("SELECT pg_advisory_unlock({KEY})"))
            .bind(node)
            .fetch_one(&mut session.connection)
            .await?;
        session.locked = false;
    }
    Ok(())
}

fn timed_out(what: &str) -> StoreError {
    StoreError::Unavailable(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} timed out"),
    )))
}

/// The session slot for the length of one lease call. A call that did not settle, because it
/// failed without a definite answer or because its caller dropped it midway (a shutdown, a
/// step-down), leaves the session in a state nobody knows: an advisory lock taken or not, or a
/// transaction begun and never ended, which would keep the lease row's `FOR UPDATE` lock and
/// so hold up every fenced write of the node. Such a session is discarded; closing it makes
/// the server release whatever it held.
struct SessionCall<'a> {
    slot: tokio::sync::MutexGuard<'a, Option<Session>>,
    settled: bool,
}

impl Drop for SessionCall<'_> {
    fn drop(&mut self) {
        if !self.settled {
            *self.slot = None;
        }
    }
}

/// Runs one lease call on the session under [`CALL_TIMEOUT`]; see [`SessionCall`] for when
/// the session is discarded.
macro_rules! on_session {
    ($store:expr, $what:literal, |$slot:ident| $call:expr) => {{
        let mut call = SessionCall {
            slot: $store.session.lock().await,
            settled: false,
        };
        let result = {
            let $slot: &mut Option<Session> = &mut call.slot;
            match tokio::time::timeout(CALL_TIMEOUT, $call).await {
                Ok(result) => result,
                Err(_) => Err(timed_out($what)),
            }
        };
        call.settled =
            !matches!(result, Err(ref error) if !matches!(error, StoreError::LeaseLost { .. }));
        result
    }};
}

#[async_trait]
impl LeaseStore for PgLeaseStore {
    async fn try_acquire(
        &self,
        holder: &str,
        holder_endpoint: &str,
        lease_timeout: Duration,
        now: Timestamp,
    ) -> Result<Option<Epoch>, StoreError> {
        on_session!(self, "taking the lease", |slot| self.acquire_in(
            slot,
            holder,
            holder_endpoint,
            lease_timeout,
            now
        ))
    }

    async fn renew(&self, holder: &str, epoch: Epoch, now: Timestamp) -> Result<(), StoreError> {
        on_session!(self, "renewing the lease", |slot| self
            .renew_in(slot, holder, epoch, now))
    }

    async fn release(&self, holder: &str, epoch: Epoch) -> Result<(), StoreError> {
        on_session!(self, "releasing the lease", |slot| self
            .release_in(slot, holder, epoch))
    }

    async fn current(&self) -> Result<Option<LeaseState>, StoreError> {
        let row: Option<LeaseRow> = on_postgres!(&self.readers, |_, readers| {
            sqlx::query_as(CURRENT)
                .bind(&self.node)
                .fetch_optional(readers)
                .await?
        });
        Ok(row.map(lease_state))
    }
}
