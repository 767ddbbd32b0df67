//! One Patroni cluster: a Patroni process per member, each with its own data directory,
//! PostgreSQL port and REST port, all registered under one scope in one etcd. Patroni does
//! everything a production cluster's Patroni does — the first member to win the initialise
//! race runs initdb, the others clone it with `pg_basebackup`, the leader keeps the leader key
//! and picks the synchronous standby — and this module only starts, watches, asks and kills.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::future::join_all;
use sqlx::postgres::PgConnection;

use crate::config::{MemberConfig, SUPERUSER};
use crate::etcd::EtcdServer;
use crate::process::{self, RunAs};
use crate::rest::{MemberRole, MemberView, Rest};
use crate::{check_identifier, probe, MemberName, MemberSpec, NoWriter, PatroniError, Timing};

/// How often the waits below look again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// After `pg_ctl`'s immediate shutdown a server is gone within milliseconds; past this it is
/// killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of each member's log quoted in a start-up error.
const LOG_LINES: usize = 15;

/// How a cluster is set up beyond its members.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub timing: Timing,
    /// `synchronous_mode_strict`: with no synchronous standby left, commits wait instead of
    /// going on unreplicated. Off by default, like Patroni: see `docs/operations.md`.
    pub strict: bool,
    /// Bound on the bootstrap: initdb on one member, `pg_basebackup` on the others, and the
    /// synchronous standby picked.
    pub start_timeout: Duration,
    /// Where the cluster's directory goes; the system temp directory by default. The server
    /// user (`postgres` when we are root) must be able to enter it.
    pub parent_dir: PathBuf,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            timing: Timing::TUNED,
            strict: false,
            start_timeout: Duration::from_secs(180),
            parent_dir: std::env::temp_dir(),
        }
    }
}

/// One member: its ports, directory, and its Patroni process while it runs.
#[derive(Debug)]
pub struct Member {
    spec: MemberSpec,
    api_port: u16,
    pg_port: u16,
    dir: PathBuf,
    /// `None` once killed (until restarted).
    patroni: Mutex<Option<Child>>,
}

impl Member {
    pub fn name(&self) -> &MemberName {
        &self.spec.name
    }

    pub fn spec(&self) -> &MemberSpec {
        &self.spec
    }

    /// Patroni's REST API port.
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// The member's PostgreSQL port.
    pub fn pg_port(&self) -> u16 {
        self.pg_port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Patroni's log, with its PostgreSQL server's log interleaved.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("patroni.log")
    }

    /// Whether its Patroni process runs (it was not killed, or was restarted).
    pub fn is_running(&self) -> bool {
        self.process().is_some()
    }

    fn process(&self) -> MutexGuard<'_, Option<Child>> {
        self.patroni.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running Patroni cluster. Dropping it kills every Patroni, stops every server and removes
/// the directory; a watchdog does the same if this process dies first. The [`EtcdServer`] it
/// was started with must outlive it.
#[derive(Debug)]
pub struct PatroniCluster {
    scope: String,
    members: Vec<Member>,
    password: String,
    patroni_program: PathBuf,
    run_as: RunAs,
    rest: Rest,
    options: ClusterOptions,
    watchdog: Option<Child>,
    /// Removes the directory on drop, after the processes are gone.
    tempdir: tempfile::TempDir,
}

impl PatroniCluster {
    /// Starts one Patroni per member with [`ClusterOptions::default`] and waits until the
    /// cluster is healthy: one leader that commits, every member streaming, a synchronous
    /// standby.
    pub async fn start(
        etcd: &EtcdServer,
        scope: &str,
        members: &[MemberSpec],
    ) -> Result<PatroniCluster, PatroniError> {
        Self::start_with(etcd, scope, members, ClusterOptions::default()).await
    }

    pub async fn start_with(
        etcd: &EtcdServer,
        scope: &str,
        members: &[MemberSpec],
        options: ClusterOptions,
    ) -> Result<PatroniCluster, PatroniError> {
        options.timing.check()?;
        check_identifier(scope)?;
        check_members(members)?;
        let patroni_program = process::find_program("patroni")?;
        let bin_dir = meridian_pgserver::find_bin_dir()?;
        let run_as = RunAs::detect()?;
        let tempdir = tempfile::Builder::new()
            .prefix(&format!("meridian-patroni-{scope}-"))
            .tempdir_in(&options.parent_dir)
            .context("creating the cluster directory")?;
        let password = random_password();
        let replication_password = random_password();
        let mut built = Vec::with_capacity(members.len());
        for spec in members {
            let dir = tempdir.path().join(spec.name.as_str());
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let config = MemberConfig {
                scope,
                member: spec,
                etcd_endpoint: &etcd.endpoint(),
                api_port: meridian_node::ports::free_loopback_port()
                    .context("picking a REST port")?,
                pg_port: meridian_node::ports::free_loopback_port()
                    .context("picking a PostgreSQL port")?,
                dir: dir.clone(),
                bin_dir: bin_dir.clone(),
                superuser_password: &password,
                replication_password: &replication_password,
                timing: options.timing,
                strict: options.strict,
            };
            let text = serde_json::to_string_pretty(&config.to_value())
                .context("encoding the Patroni config")?;
            std::fs::write(dir.join("patroni.yml"), text).context("writing patroni.yml")?;
            built.push(Member {
                spec: spec.clone(),
                api_port: config.api_port,
                pg_port: config.pg_port,
                dir,
                patroni: Mutex::new(None),
            });
        }
        run_as.own(tempdir.path())?;
        let watchdog = process::spawn_watchdog(tempdir.path(), Some(&bin_dir), run_as)?;
        let cluster = PatroniCluster {
            scope: scope.to_owned(),
            members: built,
            password,
            patroni_program,
            run_as,
            rest: Rest::new(),
            options,
            watchdog: Some(watchdog),
            tempdir,
        };
        for member in &cluster.members {
            cluster.spawn_patroni(member)?;
        }
        let timeout = cluster.options.start_timeout;
        cluster
            .wait_healthy(timeout)
            .await
            .map_err(|error| anyhow!("{error:#}\n{}", cluster.log_tails()))?;
        tracing::info!(scope, members = cluster.members.len(), timing = %cluster.options.timing, "Patroni cluster started");
        Ok(cluster)
    }

    fn spawn_patroni(&self, member: &Member) -> anyhow::Result<()> {
        let mut slot = member.process();
        if slot.is_some() {
            bail!("{} runs already", member.name());
        }
        let mut command =
            self.run_as
                .command(&self.patroni_program, &member.dir, &member.log_file())?;
        command.arg(member.dir.join("patroni.yml"));
        *slot = Some(process::spawn_recorded(&mut command, &member.dir)?);
        Ok(())
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, name: &MemberName) -> Result<&Member, PatroniError> {
        self.members
            .iter()
            .find(|member| member.name() == name)
            .ok_or_else(|| PatroniError::UnknownMember(name.clone()))
    }

    pub fn timing(&self) -> Timing {
        self.options.timing
    }

    /// The password of the `meridian` superuser.
    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn dir(&self) -> &Path {
        self.tempdir.path()
    }

    /// The libpq URL the nodes use: every member, in order, and only a server that takes
    /// writes will do (`target_session_attrs=read-write`), so a client that lost its server
    /// finds the new writer by trying the list again.
    pub fn url(&self, db: &str) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|member| format!("127.0.0.1:{}", member.pg_port))
            .collect();
        format!(
            "postgres://{SUPERUSER}:{}@{}/{db}?target_session_attrs=read-write",
            self.password,
            hosts.join(",")
        )
    }

    /// One member's server, whatever its role.
    pub fn member_url(&self, name: &MemberName, db: &str) -> Result<String, PatroniError> {
        let member = self.member(name)?;
        Ok(format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{db}",
            self.password, member.pg_port
        ))
    }

    /// A connection to one member's server.
    pub async fn connect(&self, name: &MemberName, db: &str) -> Result<PgConnection, PatroniError> {
        let member = self.member(name)?;
        Ok(probe::connect(member.pg_port, &self.password, db).await?)
    }

    /// The member that holds the leader key, as the members themselves say (`GET /leader`).
    /// It may not accept writes: see [`Self::leader`].
    pub async fn leader_key_holder(&self) -> Option<MemberName> {
        let running: Vec<&Member> = self.members.iter().filter(|m| m.is_running()).collect();
        let answers = join_all(
            running
                .iter()
                .map(|member| self.rest.holds_leader_key(member.api_port)),
        )
        .await;
        running
            .into_iter()
            .zip(answers)
            .find(|(_, answer)| *answer == Some(true))
            .map(|(member, _)| member.name().clone())
    }

    /// The writer: the leader-key holder whose server commits a probe transaction. Patroni's
    /// `/primary` and `/leader` answer 200 on the key holder even while its PostgreSQL is down
    /// (issue 10 measured up to ~11 s), so the key alone does not make a writer.
    pub async fn leader(&self) -> Result<MemberName, NoWriter> {
        let Some(holder) = self.leader_key_holder().await else {
            return Err(NoWriter::NoLeaderKey);
        };
        let member = self.member(&holder).map_err(|_| NoWriter::NoLeaderKey)?;
        match probe::commits(member.pg_port, &self.password).await {
            Ok(()) => Ok(holder),
            Err(error) => Err(NoWriter::NotWritable {
                member: holder,
                reason: format!("{error:#}"),
            }),
        }
    }

    /// Polls [`Self::leader`] until there is a writer, at most `timeout`.
    pub async fn wait_for_writer(&self, timeout: Duration) -> Result<MemberName, PatroniError> {
        let started = Instant::now();
        loop {
            let last = match self.leader().await {
                Ok(writer) => return Ok(writer),
                Err(why) => why,
            };
            if started.elapsed() >= timeout {
                return Err(PatroniError::NoWriter {
                    waited_ms: started.elapsed().as_millis(),
                    last,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// A connection to whichever member's server takes writes, found like libpq's
    /// `target_session_attrs=read-write` does: try every member in order, keep the first that
    /// is not in recovery. No Patroni involved, so it is what a node sees.
    pub async fn connect_writer(
        &self,
        db: &str,
    ) -> Result<(MemberName, PgConnection), PatroniError> {
        let mut tried = Vec::new();
        for member in &self.members {
            match writable_connection(member.pg_port, &self.password, db).await {
                Ok(connection) => return Ok((member.name().clone(), connection)),
                Err(error) => tried.push(format!("{}: {error:#}", member.name())),
            }
        }
        Err(anyhow!("no member's server takes writes ({})", tried.join("; ")).into())
    }

    /// Creates a database on the writer; standbys get it through replication.
    pub async fn create_database(&self, db: &str) -> Result<(), PatroniError> {
        check_identifier(db)?;
        let writer = self.wait_for_writer(Duration::from_secs(30)).await?;
        let mut connection = self.connect(&writer, "postgres").await?;
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut connection)
            .await
            .with_context(|| format!("CREATE DATABASE {db}"))?;
        Ok(())
    }

    /// The cluster as the DCS has it, from the first running member that answers.
    pub async fn cluster_view(&self) -> Result<Vec<MemberView>, PatroniError> {
        let mut last_error = anyhow!("no member is running");
        for member in self.members.iter().filter(|m| m.is_running()) {
            match self.rest.cluster(member.api_port).await {
                Ok(view) => return Ok(view),
                Err(error) => last_error = error.context(format!("asking {}", member.name())),
            }
        }
        Err(last_error.into())
    }

    /// The synchronous standbys Patroni has recorded in the DCS (at most one here).
    pub async fn sync_standbys(&self) -> Result<Vec<MemberName>, PatroniError> {
        self.cluster_view()
            .await?
            .into_iter()
            .filter(|view| view.role == MemberRole::SyncStandby)
            .map(|view| MemberName::new(view.name))
            .collect()
    }

    /// Hands the leader role over (`POST /switchover` to the leader): to `to`, or to the
    /// synchronous standby when `None` (in synchronous mode only it may take over). Returns the
    /// new writer once it commits.
    pub async fn switchover(&self, to: Option<&MemberName>) -> Result<MemberName, PatroniError> {
        let old = self.wait_for_writer(Duration::from_secs(30)).await?;
        if let Some(to) = to {
            self.member(to)?;
        }
        let answer = self
            .rest
            .switchover(self.member(&old)?.api_port, &old, to)
            .await?;
        tracing::info!(from = %old, answer, "switchover answered");
        let deadline = Duration::from_secs(30);
        let started = Instant::now();
        loop {
            let writer = self
                .wait_for_writer(deadline.saturating_sub(started.elapsed()))
                .await?;
            if writer != old {
                return Ok(writer);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Kills the leader-key holder like a lost machine: SIGKILL to its Patroni and to its
    /// PostgreSQL server with every backend, back to back. Returns whom it killed.
    pub async fn kill_leader(&self) -> Result<MemberName, PatroniError> {
        let leader = self
            .leader_key_holder()
            .await
            .ok_or(PatroniError::NoWriter {
                waited_ms: 0,
                last: NoWriter::NoLeaderKey,
            })?;
        self.kill_member(&leader)?;
        Ok(leader)
    }

    /// Kills one member like a lost machine (see [`Self::kill_leader`]).
    pub fn kill_member(&self, name: &MemberName) -> Result<(), PatroniError> {
        let member = self.member(name)?;
        // Patroni first: it would restart a server it saw die.
        if let Some(mut child) = member.process().take() {
            process::kill_group(&mut child, &member.dir);
        }
        process::kill_server(&member.data_dir())?;
        tracing::info!(member = %name, "killed (Patroni and PostgreSQL)");
        Ok(())
    }

    /// Kills only the member's PostgreSQL server (kill -9, every process); its Patroni lives on,
    /// still holds the leader key if it had it, and starts the server again within a loop or
    /// two — a crashed database, not a lost machine.
    pub fn kill_postgres(&self, name: &MemberName) -> Result<(), PatroniError> {
        let member = self.member(name)?;
        process::kill_server(&member.data_dir())?;
        tracing::info!(member = %name, "killed its PostgreSQL");
        Ok(())
    }

    /// Starts a killed member's Patroni again on the same directory and ports. It rejoins as a
    /// standby (rewinding what it wrote after the others moved on); [`Self::wait_healthy`]
    /// waits for that.
    pub fn restart_member(&self, name: &MemberName) -> Result<(), PatroniError> {
        let member = self.member(name)?;
        self.spawn_patroni(member)?;
        Ok(())
    }

    /// Waits until every running member streams on the leader's timeline, one of them is the
    /// synchronous standby (when any may be), and the leader commits.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), PatroniError> {
        let started = Instant::now();
        loop {
            let why = match self.health().await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if started.elapsed() >= timeout {
                return Err(anyhow!(
                    "cluster {} not healthy after {} ms: {why}",
                    self.scope,
                    started.elapsed().as_millis()
                )
                .into());
            }
            self.check_processes()?;
            tokio::time::sleep(POLL_INTERVAL * 2).await;
        }
    }

    /// `Ok` if healthy, else what is missing.
    async fn health(&self) -> Result<(), String> {
        let view = self.cluster_view().await.map_err(|e| format!("{e:#}"))?;
        let leaders: Vec<&MemberView> = view
            .iter()
            .filter(|v| v.role == MemberRole::Leader)
            .collect();
        let [leader] = leaders.as_slice() else {
            return Err(format!("{} leaders in {view:?}", leaders.len()));
        };
        let running: Vec<&Member> = self.members.iter().filter(|m| m.is_running()).collect();
        for member in &running {
            let Some(seen) = view.iter().find(|v| v.name == member.name().as_str()) else {
                return Err(format!("{} not registered yet", member.name()));
            };
            if !matches!(seen.state.as_str(), "running" | "streaming")
                || seen.timeline != leader.timeline
            {
                return Err(format!("{} is not streaming yet: {seen:?}", member.name()));
            }
        }
        let may_be_sync = running
            .iter()
            .any(|m| m.name().as_str() != leader.name && !m.spec.nosync);
        if may_be_sync && !view.iter().any(|v| v.role == MemberRole::SyncStandby) {
            return Err("no synchronous standby yet".to_owned());
        }
        self.leader()
            .await
            .map(|_| ())
            .map_err(|why| why.to_string())
    }

    /// Fails fast when a Patroni process exited by itself (bad config, missing binary).
    fn check_processes(&self) -> anyhow::Result<()> {
        for member in &self.members {
            if let Some(child) = member.process().as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "Patroni of {} exited ({status}):\n{}",
                        member.name(),
                        process::log_tail(&member.log_file(), LOG_LINES)
                    );
                }
            }
        }
        Ok(())
    }

    /// The end of every member's log, for error messages.
    pub fn log_tails(&self) -> String {
        self.members
            .iter()
            .map(|member| {
                format!(
                    "--- {} ({}) ---\n{}",
                    member.name(),
                    member.log_file().display(),
                    process::log_tail(&member.log_file(), LOG_LINES)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // Every Patroni first, so that none restarts a server or promotes one.
        for member in &self.members {
            if let Some(mut child) = member.process().take() {
                process::kill_group(&mut child, &member.dir);
            }
        }
        for member in &self.members {
            process::stop_server(&member.data_dir(), STOP_TIMEOUT);
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

fn check_members(members: &[MemberSpec]) -> Result<(), PatroniError> {
    if members.is_empty() {
        return Err(anyhow!("a cluster needs at least one member").into());
    }
    for (i, member) in members.iter().enumerate() {
        if members[..i].iter().any(|m| m.name == member.name) {
            return Err(anyhow!("member {} is listed twice", member.name).into());
        }
    }
    Ok(())
}

/// A connection to the server on `pg_port` if it is a primary.
async fn writable_connection(
    pg_port: u16,
    password: &str,
    db: &str,
) -> anyhow::Result<PgConnection> {
    let mut connection = probe::connect(pg_port, password, db).await?;
    let in_recovery: bool = tokio::time::timeout(
        probe::PROBE_TIMEOUT,
        sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut connection),
    )
    .await
    .map_err(|_| anyhow!("no answer within {:?}", probe::PROBE_TIMEOUT))??;
    if in_recovery {
        bail!("a standby");
    }
    Ok(connection)
}

/// 128 random bits as hex: the lab's passwords never leave the machine, but they must not be
/// guessable by other local users either.
fn random_password() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}
