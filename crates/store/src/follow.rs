//! Following the PostgreSQL writer. A store's URL may list several servers (a primary and its
//! standbys, see [`crate::postgres_url`]); the store finds the one that takes writes itself —
//! probing every host at once, each within the URL's `connect_timeout`, and keeping the first
//! in the URL's order that is neither in recovery nor read-only nor refused by the fence
//! against a second writer ([`crate::writer_fence`]: an old primary back on an older timeline)
//! — and opens its pools there
//! ([`FollowingPools`]). When a call fails because the connection was lost or the server
//! refused a write as read-only (SQLSTATE 25006), the store drops those pools and searches
//! again before its next call, so after a failover it writes on the promoted server and never
//! keeps serving from a demoted or read-only one (the failure mode of nodes whose pooled
//! connections outlive a managed database's failover). The failed call still fails, with the
//! same transient error, and callers retry as they always did; a search runs at most every
//! [`MIN_SEARCH_INTERVAL`], so a flapping server costs a bounded number of connections.
//!
//! When no server takes writes, the failure says why for every host
//! ([`NoWriter`]: refused, no answer, a standby, read-only), which is what a node reports as
//! its not-ready reason; each later call searches again (at most every interval), so the node
//! serves again by itself once a server is promoted. Meanwhile the pools stay on the first
//! reachable read-only server, so reads — a status check, the owner record — still work.
//!
//! A call does not wait out [`POSTGRES_ACQUIRE_TIMEOUT`] on a server that is gone: sqlx keeps
//! retrying a refused connection until that deadline, which after a kill -9 of the primary
//! would hold every call (and the replica lease's renewal) for seconds before the search
//! could start. Instead a call that has waited [`STALL_CHECK_AFTER`] has the store check that
//! its server still accepts connections ([`FollowingPools::watching`]); if it does not, the
//! call fails at once as unavailable, which starts the search.
//!
//! A search that finds the writer also migrates it: a no-op on a promoted replica, which has
//! the schema already, and what makes a server that never had the schema usable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;

use crate::migrations::POSTGRES_MIGRATOR;
use crate::postgres_url::{HostAddr, PostgresUrl, TargetSessionAttrs};
use crate::writer_fence::{self, Fenced, ServerFacts, SystemId, Timeline};
use crate::StoreError;

/// An error type a store function returns: [`StoreError`], or one that wraps it beside
/// errors of its own (the topology store's). A PostgreSQL call's failure is shown to
/// [`FollowingPools::failed_as`] as the store error inside, and the answer put back.
pub(crate) trait StoreFailure: From<StoreError> {
    /// The store error inside, or `self` back if it is none.
    fn into_store(self) -> Result<StoreError, Self>;
}

impl StoreFailure for StoreError {
    fn into_store(self) -> Result<StoreError, Self> {
        Ok(self)
    }
}

/// How long a call waits for a PostgreSQL connection before reporting the database
/// unavailable. Short, because callers retry transient errors themselves and report
/// not-ready meanwhile.
pub const POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The least time between two searches for the writer: a bound on the connections a store
/// opens while its database flaps or is away, short enough that a node notices a promotion
/// within a fraction of a second.
pub const MIN_SEARCH_INTERVAL: Duration = Duration::from_millis(200);

/// How long closing a probe connection may take; it is only a courtesy to the server.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a call may wait before the store checks that its server still accepts
/// connections: longer than a call takes on a healthy server under load, far shorter than
/// [`POSTGRES_ACQUIRE_TIMEOUT`].
pub const STALL_CHECK_AFTER: Duration = Duration::from_millis(300);

/// Between two checks of a server while calls wait on it; one check serves every call that
/// waits meanwhile, so a busy store opens at most one check connection per interval.
const STALL_CHECK_EVERY: Duration = Duration::from_millis(250);

/// How long a check may take to connect before the server counts as gone: a frozen server
/// (SIGSTOP, a dead machine behind a live route) accepts nothing and answers nothing.
const STALL_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// SQLSTATE `too_many_connections`: the server is there, only full.
const TOO_MANY_CONNECTIONS: &str = "53300";

/// Why a server was passed over in a search for the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassedOver {
    /// Nothing listens there.
    Refused,
    /// It did not connect and answer within the URL's `connect_timeout`.
    TimedOut(Duration),
    /// It answered and is in recovery: a standby.
    Standby,
    /// It answered and is not in recovery, but its transactions are read-only
    /// (`default_transaction_read_only`).
    ReadOnly,
    /// Any other failure to connect: authentication, a missing database, a server starting
    /// up or shutting down, name resolution.
    Failed(String),
    /// It takes writes, but the fence refuses it: an old primary, or one of two writers
    /// ([`crate::writer_fence`]).
    Fenced(Fenced),
}

/// No server of the URL takes writes: each host tried and why it was passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoWriter {
    pub tried: Vec<(HostAddr, PassedOver)>,
}

impl std::fmt::Display for NoWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no writable PostgreSQL server: ")?;
        for (index, (host, why)) in self.tried.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            match why {
                PassedOver::Refused => write!(f, "{host} refused the connection")?,
                PassedOver::TimedOut(after) => {
                    write!(f, "{host} did not answer within {} ms", after.as_millis())?
                }
                PassedOver::Standby => {
                    write!(f, "the database is a standby (in recovery) at {host}")?
                }
                PassedOver::ReadOnly => write!(
                    f,
                    "the database is read-only (default_transaction_read_only) at {host}"
                )?,
                PassedOver::Failed(error) => write!(f, "{host}: {error}")?,
                PassedOver::Fenced(fence) => write!(f, "{}", fence.about(host))?,
            }
        }
        Ok(())
    }
}

/// What a search found: the server to settle on (per `target_session_attrs`, never one the
/// fence refuses, see [`crate::writer_fence`]) with the connection that checked it, else every
/// host's reason and the first one that answered and may be read from.
struct Search {
    found: Option<Found>,
    /// The first host that answered, takes no writes, and is not fenced: its index and facts.
    fallback: Option<(usize, ServerFacts)>,
    passed_over: Vec<(HostAddr, PassedOver)>,
}

struct Found {
    index: usize,
    connection: PgConnection,
    /// What the server said about itself; its pools' connections check they reach the same.
    facts: ServerFacts,
    /// Only with `target_session_attrs=any`: the server answered but takes no writes.
    read_only: bool,
}

/// One host's answer to a probe: its connection, what it is, and why it takes no writes.
type Probed = (PgConnection, ServerFacts, Option<PassedOver>);

/// Probes every host at once (so a host that does not answer costs one `connect_timeout`, not
/// one per host), then lets the fence choose among those that answered; see [`Search`].
async fn search(url: &PostgresUrl) -> Search {
    let probes: Vec<_> = url
        .hosts()
        .iter()
        .map(|(_, options)| tokio::spawn(probe(options.clone(), url.connect_timeout())))
        .collect();
    let mut outcomes: Vec<Result<Probed, PassedOver>> = Vec::with_capacity(probes.len());
    for probe in probes {
        outcomes.push(match probe.await {
            Ok(outcome) => outcome,
            Err(join) => Err(PassedOver::Failed(format!("the probe task failed: {join}"))),
        });
    }
    let answered: Vec<(HostAddr, ServerFacts)> = url
        .hosts()
        .iter()
        .zip(&outcomes)
        .filter_map(|((host, _), outcome)| {
            outcome
                .as_ref()
                .ok()
                .map(|(_, facts, _)| (host.clone(), facts.clone()))
        })
        .collect();
    let choice = writer_fence::choose(&answered, writer_fence::highest_seen);
    for (host, facts) in &answered {
        writer_fence::remember(facts.system_id, facts.timeline, host);
    }
    // Back from indexes among the servers that answered to indexes among all hosts.
    let answered_hosts: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(index, outcome)| outcome.is_ok().then_some(index))
        .collect();
    let writer = choice.writer.map(|i| answered_hosts[i]);
    let fenced: Vec<(usize, Fenced)> = choice
        .fenced
        .into_iter()
        .map(|(i, why)| (answered_hosts[i], why))
        .collect();
    let mut search = Search {
        found: None,
        fallback: None,
        passed_over: Vec::new(),
    };
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let host = &url.hosts()[index].0;
        match outcome {
            Err(why) => search.passed_over.push((host.clone(), why)),
            Ok((connection, facts, why)) => {
                let refused = fenced.iter().find(|(at, _)| *at == index);
                let settles = search.found.is_none()
                    && match url.target() {
                        TargetSessionAttrs::ReadWrite => writer == Some(index),
                        // The first that answers, unless the fence refuses it.
                        TargetSessionAttrs::Any => refused.is_none(),
                    };
                if settles {
                    search.found = Some(Found {
                        index,
                        connection,
                        facts,
                        read_only: why.is_some(),
                    });
                    continue;
                }
                close(connection).await;
                match (refused, why) {
                    (Some((_, fence)), _) => {
                        // Said even when another server takes the writes: an operator must
                        // rewind or stop this one.
                        tracing::warn!("{}", fence.about(host));
                        search
                            .passed_over
                            .push((host.clone(), PassedOver::Fenced(fence.clone())));
                    }
                    (None, Some(why)) => {
                        search.fallback.get_or_insert((index, facts));
                        search.passed_over.push((host.clone(), why));
                    }
                    // Writable and not fenced, but another was chosen first (only with
                    // servers of different clusters, which the fence does not compare).
                    (None, None) => {}
                }
            }
        }
    }
    search
}

/// Connects to one server and asks what it is: the connection, its facts, and `None` if it
/// takes writes or the reason if not; all within `timeout`.
async fn probe(options: PgConnectOptions, timeout: Duration) -> Result<Probed, PassedOver> {
    let attempt = async {
        let mut connection = PgConnection::connect_with(&options).await?;
        // transaction_read_only shows default_transaction_read_only for a new transaction, so
        // this catches a primary configured read-only as well as a standby. The timeline of a
        // server not in recovery is its current WAL file's (the first 8 hex digits): the
        // checkpoint's lags behind a promotion until the next checkpoint. A standby cannot
        // name a current WAL file; the restartpoint's or the received timeline is a lower
        // bound (pg_stat_wal_receiver shows NULL to an unprivileged role: GREATEST skips it).
        let row: (bool, String, i64, Option<String>, Option<i32>, String) = sqlx::query_as(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'), \
                    (SELECT system_identifier FROM pg_control_system()), \
                    CASE WHEN pg_is_in_recovery() THEN NULL \
                         ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
                    GREATEST((SELECT timeline_id FROM pg_control_checkpoint()), \
                             (SELECT received_tli FROM pg_stat_wal_receiver)), \
                    pg_postmaster_start_time()::text",
        )
        .fetch_one(&mut connection)
        .await?;
        Ok::<_, sqlx::Error>((connection, row))
    };
    let (connection, (in_recovery, read_only, system_id, wal_file, standby_timeline, started)) =
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => return Err(PassedOver::TimedOut(timeout)),
            Ok(Ok(found)) => found,
            Ok(Err(sqlx::Error::Io(error)))
                if error.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                return Err(PassedOver::Refused)
            }
            Ok(Err(error)) => return Err(PassedOver::Failed(error.to_string())),
        };
    let timeline = match (&wal_file, standby_timeline) {
        (Some(name), _) => name
            .get(..8)
            .and_then(|digits| u32::from_str_radix(digits, 16).ok()),
        (None, Some(timeline)) => u32::try_from(timeline).ok(),
        (None, None) => None,
    };
    let Some(timeline) = timeline else {
        close(connection).await;
        return Err(PassedOver::Failed(format!(
            "cannot tell its timeline (WAL file {wal_file:?}, standby timeline \
             {standby_timeline:?})"
        )));
    };
    let why = if in_recovery {
        Some(PassedOver::Standby)
    } else if read_only == "on" {
        Some(PassedOver::ReadOnly)
    } else {
        None
    };
    let facts = ServerFacts {
        system_id: SystemId(system_id),
        timeline: Timeline(timeline),
        started,
        writable: why.is_none(),
    };
    Ok((connection, facts, why))
}

async fn close(connection: PgConnection) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close()).await;
}

/// A connection of its own to the server a search settles on (the writer, or with
/// `target_session_attrs=any` the first that answers); [`StoreError::NoWriter`] if none.
/// For the replica lease's dedicated session, which must live on the writer.
pub(crate) async fn connect_writer(url: &PostgresUrl) -> Result<PgConnection, StoreError> {
    let search = search(url).await;
    match search.found {
        Some(found) => Ok(found.connection),
        None => Err(StoreError::NoWriter(Box::new(NoWriter {
            tried: search.passed_over,
        }))),
    }
}

/// The server a store's pools were opened on, as the search found it.
#[derive(Debug)]
struct Chosen {
    url: PostgresUrl,
    facts: ServerFacts,
    /// Set when a new connection found the server restarted and no longer the one to use:
    /// the store searches before its next call, reads included.
    left: AtomicBool,
    /// Where the pools connect, for [`Chosen::answers`].
    host: HostAddr,
    options: PgConnectOptions,
    /// The last [`Chosen::answers`] check: when, and why the server did not answer.
    last_check: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Chosen {
    /// Whether the server still accepts a connection, checked at most once per
    /// [`STALL_CHECK_EVERY`] however many calls ask; `Err` says why not.
    async fn answers(&self) -> Result<(), String> {
        let mut last = self.last_check.lock().await;
        if let Some((at, outcome)) = &*last {
            if at.elapsed() < STALL_CHECK_EVERY {
                return outcome.clone();
            }
        }
        let connect = PgConnection::connect_with(&self.options);
        let outcome = match tokio::time::timeout(STALL_CHECK_TIMEOUT, connect).await {
            Ok(Ok(connection)) => {
                close(connection).await;
                Ok(())
            }
            Ok(Err(sqlx::Error::Database(error)))
                if error.code().as_deref() == Some(TOO_MANY_CONNECTIONS) =>
            {
                Ok(())
            }
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!(
                "no connection within {} ms",
                STALL_CHECK_TIMEOUT.as_millis()
            )),
        };
        *last = Some((Instant::now(), outcome.clone()));
        outcome
    }

    /// Returns once the server no longer answers (never while it does), checking from
    /// [`STALL_CHECK_AFTER`] on: the error a stalled call fails with.
    async fn gone(&self) -> StoreError {
        tokio::time::sleep(STALL_CHECK_AFTER).await;
        loop {
            if let Err(why) = self.answers().await {
                return StoreError::Unavailable(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    format!(
                        "the PostgreSQL server at {} stopped answering while a call waited: {why}",
                        self.host
                    ),
                )));
            }
            tokio::time::sleep(STALL_CHECK_EVERY).await;
        }
    }
}

/// A pool of at most `connections` on the `server` the search chose, connecting on first use
/// (so opening a store neither waits for nor fails on connections it may not need yet;
/// [`POSTGRES_ACQUIRE_TIMEOUT`] bounds each call's wait instead).
///
/// Every new connection first checks that it reached that same server (system identifier and
/// postmaster start time). Pooled connections are opened long after the search, and the server
/// behind the address may have restarted meanwhile — possibly as an old primary come back on
/// its old data directory while a standby was promoted elsewhere, all between two calls of an
/// idle store. So a connection to a restarted server runs the search again (the fence compares
/// every host, see [`crate::writer_fence`]); unless the search settles on that same server, the
/// connection is made read-only for its whole session: no write lands there, and the refusal
/// (SQLSTATE 25006) makes the store move its pools, as any read-only refusal does.
fn pool_on(options: PgConnectOptions, connections: u32, server: &Arc<Chosen>) -> PgPool {
    let server = Arc::clone(server);
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
        .after_connect(move |connection, _| {
            let server = Arc::clone(&server);
            Box::pin(async move { hold_to_chosen(connection, &server).await })
        })
        .connect_lazy_with(options)
}

/// See [`pool_on`].
async fn hold_to_chosen(connection: &mut PgConnection, server: &Chosen) -> Result<(), sqlx::Error> {
    let (system_id, started): (i64, String) = sqlx::query_as(
        "SELECT (SELECT system_identifier FROM pg_control_system()), \
                pg_postmaster_start_time()::text",
    )
    .fetch_one(&mut *connection)
    .await?;
    let expected = &server.facts;
    if system_id == expected.system_id.0 && started == expected.started {
        return Ok(());
    }
    let search = search(&server.url).await;
    let still_chosen = match search.found {
        Some(found) => {
            let same = found.facts.system_id.0 == system_id && found.facts.started == started;
            close(found.connection).await;
            same
        }
        None => false,
    };
    if !still_chosen {
        server.left.store(true, Ordering::Relaxed);
        tracing::warn!(
            url = %server.url,
            "the PostgreSQL server the store's pools are on restarted and is no longer the one \
             to write on; its new connection is made read-only"
        );
        sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

/// How a store's pools are laid out on whichever server they are on.
#[derive(Debug, Clone)]
pub(crate) enum PoolShape {
    /// A writer of one connection, which the server ends when it idles inside a transaction
    /// for `idle_in_transaction_timeout_ms` (if set), and `readers` reader connections.
    WriterAndReaders {
        idle_in_transaction_timeout_ms: Option<u64>,
        readers: u32,
    },
    /// One pool of `connections` for reads and writes.
    Shared { connections: u32 },
}

/// A store's PostgreSQL pools, kept on the writer (see the module documentation).
#[derive(Debug)]
pub(crate) struct FollowingPools {
    url: PostgresUrl,
    shape: PoolShape,
    /// Names the store in log lines.
    store: &'static str,
    state: Mutex<State>,
    /// Held while searching, so concurrent callers wait for one search instead of each
    /// starting their own.
    searching: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct State {
    current: Option<Current>,
    /// Bumped whenever `current` is replaced, so a failure on pools already replaced does not
    /// start another search.
    generation: u64,
    /// Why the last search found no writer; `None` after one that found it.
    no_writer: Option<NoWriter>,
    /// A call on the current pools lost its connection or met a read-only server.
    suspect: bool,
    last_search: Instant,
}

#[derive(Debug)]
struct Current {
    host: HostAddr,
    writer: PgPool,
    readers: PgPool,
    /// Whether the server took writes when the pools were opened on it.
    writable: bool,
    server: Arc<Chosen>,
}

/// The pools a call runs on, and their generation (for [`FollowingPools::failed`]).
#[derive(Debug)]
pub(crate) struct Checkout {
    pub writer: PgPool,
    pub readers: PgPool,
    pub generation: u64,
    /// The server the pools are on, for [`FollowingPools::watching`].
    server: Arc<Chosen>,
}

impl Checkout {
    /// Runs `call` on these pools, failing it as unavailable as soon as their server is found
    /// gone while it waits (see the module documentation); the call is dropped then, which
    /// rolls back whatever transaction it had open.
    pub(crate) async fn watching<T, E: From<StoreError>>(
        &self,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        tokio::select! {
            outcome = call => outcome,
            gone = self.server.gone() => Err(E::from(gone)),
        }
    }
}

impl FollowingPools {
    /// Finds the writer and opens the pools on it (migrating it). With `opens_read_only`, a
    /// database without a writer still opens, on its first reachable read-only server, so the
    /// store can report why its node must not serve; otherwise that is [`StoreError::NoWriter`].
    pub(crate) async fn open(
        url: PostgresUrl,
        shape: PoolShape,
        opens_read_only: bool,
        store: &'static str,
    ) -> Result<Self, StoreError> {
        let pools = Self {
            url,
            shape,
            store,
            state: Mutex::new(State {
                current: None,
                generation: 0,
                no_writer: None,
                suspect: false,
                last_search: Instant::now(),
            }),
            searching: tokio::sync::Mutex::new(()),
        };
        pools.search_now().await?;
        {
            let state = pools.lock();
            if let Some(no_writer) = &state.no_writer {
                if !opens_read_only || state.current.is_none() {
                    return Err(StoreError::NoWriter(Box::new(no_writer.clone())));
                }
                tracing::warn!(
                    store,
                    "{no_writer}; opened on a read-only server, not migrating"
                );
            }
        }
        Ok(pools)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pools for one call: searching for the writer first if the last call failed on the
    /// current ones, or there is no writer, and the last search is [`MIN_SEARCH_INTERVAL`] old.
    pub(crate) async fn checkout(&self) -> Result<Checkout, StoreError> {
        if self.search_due() {
            let _searching = self.searching.lock().await;
            // Someone else may have searched while this call waited.
            if self.search_due() {
                self.search_now().await?;
            }
        }
        let state = self.lock();
        match &state.current {
            Some(current) => Ok(Checkout {
                writer: current.writer.clone(),
                readers: current.readers.clone(),
                generation: state.generation,
                server: Arc::clone(&current.server),
            }),
            None => Err(state.no_writer_error()),
        }
    }

    fn search_due(&self) -> bool {
        let state = self.lock();
        let left = state
            .current
            .as_ref()
            .is_some_and(|current| current.server.left.load(Ordering::Relaxed));
        (state.suspect || state.no_writer.is_some() || left)
            && state.last_search.elapsed() >= MIN_SEARCH_INTERVAL
    }

    /// Told that a call on the pools of `generation` failed with `error`; returns the error
    /// the caller should see. A lost connection or a read-only refusal makes the pools
    /// suspect: the writer is searched for now (unless a search ran within
    /// [`MIN_SEARCH_INTERVAL`]; then before a later call), so the caller's retry lands on it.
    /// If there is no writer, the caller sees [`StoreError::NoWriter`], naming every host.
    pub(crate) async fn failed(&self, generation: u64, error: StoreError) -> StoreError {
        if !matches!(error, StoreError::ReadOnly | StoreError::Unavailable(_)) {
            return error;
        }
        {
            let mut state = self.lock();
            if state.generation != generation {
                // Those pools are gone already (closed by the search that replaced them).
                return error;
            }
            // On pools kept on a read-only server for want of a writer, a refused write is
            // what is expected; the search runs anyway (`no_writer` is set), without churning
            // those pools.
            let expected = matches!(error, StoreError::ReadOnly)
                && state
                    .current
                    .as_ref()
                    .is_some_and(|current| !current.writable);
            if !expected {
                if !state.suspect {
                    tracing::info!(store = self.store, %error, "a database call failed; looking for the PostgreSQL writer");
                }
                state.suspect = true;
            }
        }
        if let Err(search_failed) = self.checkout().await {
            tracing::debug!(store = self.store, %search_failed, "looking for the writer failed");
        }
        match &self.lock().no_writer {
            Some(no_writer) => StoreError::NoWriter(Box::new(no_writer.clone())),
            None => error,
        }
    }

    /// [`Self::failed`] for an error type that may wrap a store error (see
    /// [`StoreFailure`]); any other error is returned as it is.
    pub(crate) async fn failed_as<E: StoreFailure>(&self, generation: u64, error: E) -> E {
        match error.into_store() {
            Ok(error) => E::from(self.failed(generation, error).await),
            Err(other) => other,
        }
    }

    /// Why there is no writer, if the last search found none.
    pub(crate) fn no_writer(&self) -> Option<NoWriter> {
        self.lock().no_writer.clone()
    }

    /// Closes the pools (waiting for calls in progress to return their connections).
    pub(crate) async fn close(&self) {
        let current = self.lock().current.take();
        if let Some(current) = current {
            current.writer.close().await;
            current.readers.close().await;
        }
    }

    /// Searches for the writer and moves the pools onto it (or, without one, onto the first
    /// server that answered, or drops them if none did).
    async fn search_now(&self) -> Result<(), StoreError> {
        let search = search(&self.url).await;
        let (index, no_writer) = match search.found {
            Some(mut found) => {
                let migrated = if found.read_only {
                    Ok(())
                } else {
                    // `run_direct`, not `run`: awaiting `run(&mut connection)` makes every
                    // enclosing future's `Send` proof fail ("Acquire is not general enough"),
                    // so callers could not spawn the node; `run` on a connection only forwards
                    // to `run_direct`.
                    POSTGRES_MIGRATOR.run_direct(&mut found.connection).await
                };
                close(found.connection).await;
                if let Err(error) = migrated {
                    // Searched, but the pools stay suspect: the next due call searches again.
                    self.lock().last_search = Instant::now();
                    return Err(error.into());
                }
                (Some((found.index, found.facts)), None)
            }
            None => (
                search.fallback,
                Some(NoWriter {
                    tried: search.passed_over,
                }),
            ),
        };
        let mut state = self.lock();
        state.last_search = Instant::now();
        let keep = match (&state.current, &index) {
            // Without a writer the fallback's pools stay as long as nothing failed on them.
            (Some(current), Some((index, _))) => {
                no_writer.is_some()
                    && !state.suspect
                    && !current.writable
                    && current.host == self.url.hosts()[*index].0
            }
            _ => false,
        };
        if !keep {
            let next = index.map(|(index, facts)| self.pools_on(index, no_writer.is_none(), facts));
            self.log_move(&state, next.as_ref(), no_writer.as_ref());
            if let Some(old) = std::mem::replace(&mut state.current, next) {
                // In the background: closing waits for the calls still holding a connection.
                tokio::spawn(async move {
                    old.writer.close().await;
                    old.readers.close().await;
                });
            }
            state.generation += 1;
        }
        state.suspect = false;
        state.no_writer = no_writer;
        Ok(())
    }

    /// Lazy pools on host `index` (the server `facts` describe), shaped as this store wants
    /// them.
    fn pools_on(&self, index: usize, writable: bool, facts: ServerFacts) -> Current {
        let (host, options) = &self.url.hosts()[index];
        let server = Arc::new(Chosen {
            url: self.url.clone(),
            facts,
            left: AtomicBool::new(false),
            host: host.clone(),
            options: options.clone(),
            last_check: tokio::sync::Mutex::new(None),
        });
        let lazy_pool =
            |options: PgConnectOptions, connections: u32| pool_on(options, connections, &server);
        let (writer, readers) = match self.shape {
            PoolShape::WriterAndReaders {
                idle_in_transaction_timeout_ms,
                readers,
            } => {
                let writer_options = match idle_in_transaction_timeout_ms {
                    Some(ms) => options
                        .clone()
                        .options([("idle_in_transaction_session_timeout", ms)]),
                    None => options.clone(),
                };
                (
                    lazy_pool(writer_options, 1),
                    lazy_pool(options.clone(), readers),
                )
            }
            PoolShape::Shared { connections } => {
                let shared = lazy_pool(options.clone(), connections);
                (shared.clone(), shared)
            }
        };
        Current {
            host: host.clone(),
            writer,
            readers,
            writable,
            server,
        }
    }

    /// One line when the pools move to another server or the writer is gone; nothing when a
    /// search settles where the store already was.
    fn log_move(&self, state: &State, next: Option<&Current>, no_writer: Option<&NoWriter>) {
        let from = state.current.as_ref().map(|current| &current.host);
        let store = self.store;
        match (no_writer, next) {
            (None, Some(next)) if from.is_some_and(|from| *from != next.host) => {
                tracing::warn!(store, from = %from.map(ToString::to_string).unwrap_or_default(), to = %next.host, "following the PostgreSQL writer to another server")
            }
            (None, Some(next)) if state.no_writer.is_some() => {
                tracing::info!(store, writer = %next.host, "found the PostgreSQL writer again")
            }
            (None, _) => tracing::debug!(store, "the PostgreSQL writer is where it was"),
            (Some(no_writer), _) => {
                if state.no_writer.as_ref() != Some(no_writer) {
                    tracing::warn!(store, "{no_writer}");
                }
            }
        }
    }
}

impl State {
    fn no_writer_error(&self) -> StoreError {
        match &self.no_writer {
            Some(no_writer) => StoreError::NoWriter(Box::new(no_writer.clone())),
            // Not reached: pools are only ever missing after a search that found no server.
            None => StoreError::Unavailable(sqlx::Error::PoolClosed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(port: u16) -> HostAddr {
        HostAddr {
            host: "127.0.0.1".into(),
            port,
        }
    }

    #[test]
    fn no_writer_names_every_host_and_why() {
        let report = NoWriter {
            tried: vec![
                (host(5433), PassedOver::Standby),
                (host(5434), PassedOver::ReadOnly),
                (host(5435), PassedOver::Refused),
                (host(5436), PassedOver::TimedOut(Duration::from_secs(2))),
                (
                    host(5437),
                    PassedOver::Failed("password authentication failed".into()),
                ),
            ],
        };
        assert_eq!(
            report.to_string(),
            "no writable PostgreSQL server: the database is a standby (in recovery) at \
             127.0.0.1:5433; the database is read-only (default_transaction_read_only) at \
             127.0.0.1:5434; 127.0.0.1:5435 refused the connection; 127.0.0.1:5436 did not \
             answer within 2000 ms; 127.0.0.1:5437: password authentication failed"
        );
    }
}
