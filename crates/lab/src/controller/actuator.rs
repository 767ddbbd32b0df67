//! [`LabActuator`]: the controller's hands on a deployment that runs on this machine. It
//! starts the deployment the first time ([`Actuator::prepare`]), starts and adopts node
//! processes that outlive it ([`super::process`]), probes each replica's admin port over the
//! deployment's TLS, reads the PostgreSQL servers it runs, and carries out plan steps — each
//! bounded, each idempotent (a step whose effect holds already answers `AlreadyDone`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use meridian_controller::actuator::{Actuator, Started};
use meridian_controller::model::{DatabaseFact, Inventory, ProbeOutcome, ReplicaSpec, ServingRole};
use meridian_controller::plan::{StepAction, StepOutcome};
use meridian_core::placement::{NodeKind, ReplicaName, ServerName};
use meridian_core::Timestamp;
use nix::sys::signal::Signal;

use super::bootstrap;
use super::process::{is_alive, is_stopped, signal, Processes, ReplicaFiles, Watched};
use crate::deployment::description::{Backend, ServerRole};
use crate::deployment::{Databases, Description};

/// How long a fenced replica gets to stop after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long `WaitReady` waits.
pub const READY_WAIT: Duration = Duration::from_secs(60);
/// How long `WaitForCatchUp` waits for each standby.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
/// One probe request's bound (the runtime bounds the whole probe by its interval too).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest readiness reason kept from a replica's `/readyz`.
const REASON_CHARS: usize = 300;

/// The controller's actuator for a deployment on this machine.
pub struct LabActuator {
    exe: PathBuf,
    data_dir: PathBuf,
    description: Description,
    inventory: Inventory,
    files: HashMap<ReplicaName, ReplicaFiles>,
    processes: Mutex<Processes>,
    /// The PostgreSQL clusters this process started (they live as long as it does).
    databases: Mutex<Option<Databases>>,
    /// Each replica's admin address, read from its config once.
    admin: Mutex<HashMap<ReplicaName, SocketAddr>>,
    /// `Bearer <admin token>`, read once the deployment exists.
    bearer: Mutex<Option<String>>,
}

impl std::fmt::Debug for LabActuator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabActuator")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl LabActuator {
    /// The actuator for `description` in `data_dir` (absolute), its nodes run by `exe`.
    /// Nothing is started or read until the controller is active.
    pub fn new(exe: PathBuf, data_dir: PathBuf, description: Description) -> Self {
        let inventory = super::inventory::inventory(&description);
        let files = inventory
            .replicas
            .iter()
            .map(|spec| {
                let node_dir = data_dir.join(spec.node.as_str());
                (
                    spec.name.clone(),
                    ReplicaFiles::new(&node_dir, &spec.name, spec.kind.command()),
                )
            })
            .collect();
        Self {
            exe,
            data_dir,
            description,
            inventory,
            files,
            processes: Mutex::default(),
            databases: Mutex::default(),
            admin: Mutex::default(),
            bearer: Mutex::default(),
        }
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn processes(&self) -> std::sync::MutexGuard<'_, Processes> {
        self.processes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn files(&self, replica: &ReplicaName) -> anyhow::Result<&ReplicaFiles> {
        self.files
            .get(replica)
            .with_context(|| format!("{replica} is not a replica of the deployment"))
    }

    /// The pid of `replica`'s running process, adopting it by pidfile if needed.
    fn pid_of(&self, replica: &ReplicaName) -> Option<u32> {
        let files = self.files.get(replica)?;
        self.processes().find(replica, files)
    }

    /// The admin address of `replica`, from its config.
    fn admin_address(&self, replica: &ReplicaName) -> anyhow::Result<SocketAddr> {
        if let Some(address) = self
            .admin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(replica)
        {
            return Ok(*address);
        }
        let files = self.files(replica)?;
        let path = if files.config.exists() {
            &files.config
        } else {
            &files.cold_config
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let address: SocketAddr = config
            .get("admin_address")
            .and_then(toml::Value::as_str)
            .with_context(|| format!("{} has no admin_address", path.display()))?
            .parse()
            .with_context(|| format!("admin_address of {}", path.display()))?;
        self.admin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(replica.clone(), address);
        Ok(address)
    }

    fn bearer(&self) -> Option<String> {
        let mut slot = self.bearer.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let path = crate::secrets::admin_token_path(&self.data_dir);
            *slot = crate::secrets::bearer(&path).ok();
        }
        slot.clone()
    }

    /// Whether the deployment keeps its state on PostgreSQL servers this process runs.
    fn owned_databases(&self) -> Option<Databases> {
        self.databases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn spec(&self, replica: &ReplicaName) -> anyhow::Result<&ReplicaSpec> {
        self.inventory
            .replica(replica)
            .with_context(|| format!("{replica} is not a replica of the deployment"))
    }

    fn start_replica(&self, replica: &ReplicaName) -> anyhow::Result<Started> {
        let files = self.files(replica)?;
        let mut processes = self.processes();
        if let Some(pid) = processes.find(replica, files) {
            return Ok(Started::AlreadyRunning { pid });
        }
        let child = files.spawn(&self.exe)?;
        let pid = child.id();
        tracing::info!(%replica, pid, "started");
        processes.watch(replica.clone(), Watched::Child(child));
        Ok(Started::Now { pid })
    }

    async fn fence(&self, replicas: &[ReplicaName]) -> StepOutcome {
        let running: Vec<(ReplicaName, u32)> = replicas
            .iter()
            .filter_map(|r| self.pid_of(r).map(|pid| (r.clone(), pid)))
            .collect();
        if running.is_empty() {
            return StepOutcome::AlreadyDone(format!("none of {} runs", names(replicas.iter())));
        }
        // In waves, in reverse start order: the participants first, so that they finish their
        // in-flight submissions while the mediator and the sequencer still serve (stopped all
        // at once, a participant waits out its hand-over for verdicts that never come), then
        // the mediator, the topology manager, the sequencer instances.
        let mut details = Vec::new();
        for kind in NodeKind::START_ORDER.iter().rev() {
            let wave: Vec<(ReplicaName, u32)> = running
                .iter()
                .filter(|(replica, _)| self.spec(replica).is_ok_and(|spec| spec.kind == *kind))
                .cloned()
                .collect();
            if wave.is_empty() {
                continue;
            }
            if *kind == NodeKind::Participant {
                if let Some(detail) = self.quiesce(&wave).await {
                    details.push(detail);
                }
            }
            match fence_processes(&wave, STOP_GRACE).await {
                StepOutcome::Done(detail) | StepOutcome::AlreadyDone(detail) => {
                    details.push(detail)
                }
                failed @ StepOutcome::Failed(_) => return failed,
            }
        }
        StepOutcome::Done(details.join("; "))
    }

    /// Quiesces the wave's participants before they are stopped (see
    /// [`crate::replicas::quiesce_participants`]); a frozen one is skipped (it is killed at
    /// once). What it saw, for the step's detail.
    async fn quiesce(&self, wave: &[(ReplicaName, u32)]) -> Option<String> {
        let targets: Vec<(String, SocketAddr)> = wave
            .iter()
            .filter(|(_, pid)| !is_stopped(*pid))
            .filter_map(|(replica, _)| {
                let address = self.admin_address(replica).ok()?;
                Some((replica.to_string(), address))
            })
            .collect();
        crate::replicas::quiesce_participants(&targets, self.bearer().as_deref()).await
    }

    fn start_all(&self, replicas: &[ReplicaName]) -> StepOutcome {
        let mut started = Vec::new();
        let mut already = Vec::new();
        for replica in replicas {
            match self.start_replica(replica) {
                Ok(Started::Now { pid }) => started.push(format!("{replica} (pid {pid})")),
                Ok(Started::AlreadyRunning { pid }) => {
                    already.push(format!("{replica} (pid {pid})"))
                }
                Err(error) => {
                    return StepOutcome::Failed(format!("cannot start {replica}: {error:#}"))
                }
            }
        }
        if started.is_empty() {
            StepOutcome::AlreadyDone(format!("already running: {}", already.join(", ")))
        } else if already.is_empty() {
            StepOutcome::Done(format!("started {}", started.join(", ")))
        } else {
            StepOutcome::Done(format!(
                "started {}; already running: {}",
                started.join(", "),
                already.join(", ")
            ))
        }
    }

    /// Until one listed replica of every node is ready (each listed sequencer instance:
    /// they are active-active), bounded by [`READY_WAIT`].
    async fn wait_ready(&self, replicas: &[ReplicaName]) -> StepOutcome {
        let started = Instant::now();
        let mut first = true;
        loop {
            // Per node: (needs every replica, the ready ones, why the others are not).
            let mut nodes: BTreeMap<String, (bool, usize, Vec<String>)> = BTreeMap::new();
            for replica in replicas {
                let Ok(spec) = self.spec(replica) else {
                    return StepOutcome::Failed(format!("{replica} is not in the deployment"));
                };
                let outcome = self.probe(spec).await;
                let node = nodes.entry(spec.node.to_string()).or_insert((
                    spec.kind == NodeKind::Sequencer,
                    0,
                    Vec::new(),
                ));
                if outcome.ready {
                    node.1 += 1;
                } else {
                    node.2.push(format!(
                        "{replica}: {}",
                        outcome.reason.unwrap_or_else(|| "not ready".to_owned())
                    ));
                }
            }
            let not_ready: Vec<String> = nodes
                .iter()
                .filter(|(_, (every, ready, waiting))| {
                    if *every {
                        !waiting.is_empty()
                    } else {
                        *ready == 0
                    }
                })
                .map(|(node, (_, _, waiting))| format!("{node} ({})", waiting.join("; ")))
                .collect();
            if not_ready.is_empty() && first {
                // Run again after a controller failover: nothing was waited for.
                return StepOutcome::AlreadyDone(format!(
                    "already ready: {}",
                    names(replicas.iter())
                ));
            }
            first = false;
            if not_ready.is_empty() {
                return StepOutcome::Done(format!(
                    "ready after {} ms: {}",
                    started.elapsed().as_millis(),
                    names(replicas.iter())
                ));
            }
            if started.elapsed() >= READY_WAIT {
                return StepOutcome::Failed(format!(
                    "not ready within {} s: {}",
                    READY_WAIT.as_secs(),
                    not_ready.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for_catch_up(&self, servers: &[ServerName]) -> StepOutcome {
        if self.description.storage.backend == Backend::Sqlite {
            return StepOutcome::AlreadyDone("SQLite: no database replicates".to_owned());
        }
        let Some(databases) = self.owned_databases() else {
            return StepOutcome::Failed(
                "the PostgreSQL servers were started by another process; this controller \
                 cannot read their replication"
                    .to_owned(),
            );
        };
        let servers = servers.to_vec();
        let result = tokio::task::spawn_blocking(move || {
            for server in &servers {
                databases.wait_for_catch_up(server, CATCH_UP_WAIT)?;
            }
            anyhow::Ok(servers)
        })
        .await;
        match result {
            Ok(Ok(servers)) => StepOutcome::Done(format!(
                "{} replayed everything (lag 0)",
                names(servers.iter())
            )),
            Ok(Err(error)) => StepOutcome::Failed(format!("{error:#}")),
            Err(error) => StepOutcome::Failed(format!("the catch-up wait panicked: {error}")),
        }
    }

    async fn promote(&self, servers: &[ServerName]) -> StepOutcome {
        if self.description.storage.backend == Backend::Sqlite {
            return StepOutcome::AlreadyDone("SQLite: no database to promote".to_owned());
        }
        let Some(databases) = self.owned_databases() else {
            return StepOutcome::Failed(
                "the PostgreSQL servers were started by another process; this controller \
                 cannot promote them"
                    .to_owned(),
            );
        };
        let servers = servers.to_vec();
        let result = tokio::task::spawn_blocking(move || {
            let views = databases.servers();
            let mut promoted = Vec::new();
            let mut already = Vec::new();
            for server in &servers {
                let view = views
                    .iter()
                    .find(|v| &v.name == server)
                    .with_context(|| format!("no database server {server}"))?;
                if view.role == ServerRole::Primary {
                    already.push(server.clone());
                } else {
                    let took = databases.promote(server)?;
                    promoted.push(format!("{server} ({} ms)", took.as_millis()));
                }
            }
            anyhow::Ok((promoted, already))
        })
        .await;
        match result {
            Ok(Ok((promoted, already))) if promoted.is_empty() => {
                StepOutcome::AlreadyDone(format!("already primaries: {}", names(already.iter())))
            }
            Ok(Ok((promoted, _))) => StepOutcome::Done(format!("promoted {}", promoted.join(", "))),
            Ok(Err(error)) => StepOutcome::Failed(format!("{error:#}")),
            Err(error) => StepOutcome::Failed(format!("the promotion panicked: {error}")),
        }
    }
}

/// Stops `running` (replica, pid) for good: SIGTERM, then SIGKILL after `grace`. A stopped
/// (SIGSTOPped, frozen) process cannot act on SIGTERM until it is continued, and continuing
/// it would let a replica of a lost region write again, so it is killed at once instead of
/// after the grace — a region lost by freezing is fenced without waiting for nothing.
pub(crate) async fn fence_processes(
    running: &[(ReplicaName, u32)],
    grace: Duration,
) -> StepOutcome {
    let mut frozen = Vec::new();
    for (replica, pid) in running {
        let (sent, what) = if is_stopped(*pid) {
            frozen.push(replica.clone());
            (signal(*pid, Signal::SIGKILL), "killing")
        } else {
            (signal(*pid, Signal::SIGTERM), "stopping")
        };
        if let Err(error) = sent {
            return StepOutcome::Failed(format!("{what} {replica}: {error:#}"));
        }
    }
    let gone = |pid: u32| !is_alive(pid);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && !running.iter().all(|(_, pid)| gone(*pid)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut killed = Vec::new();
    for (replica, pid) in running {
        if !gone(*pid) {
            if let Err(error) = signal(*pid, Signal::SIGKILL) {
                return StepOutcome::Failed(format!("killing {replica}: {error:#}"));
            }
            killed.push(replica.clone());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !running.iter().all(|(_, pid)| gone(*pid)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some((replica, pid)) = running.iter().find(|(_, pid)| !gone(*pid)) {
        return StepOutcome::Failed(format!("{replica} (pid {pid}) survived SIGKILL"));
    }
    let mut detail = format!("stopped {}", names(running.iter().map(|(r, _)| r)));
    if !frozen.is_empty() {
        detail.push_str(&format!(
            " ({} frozen: SIGKILL at once)",
            names(frozen.iter())
        ));
    }
    if !killed.is_empty() {
        detail.push_str(&format!(
            " ({} needed SIGKILL after {} s)",
            names(killed.iter()),
            grace.as_secs()
        ));
    }
    StepOutcome::Done(detail)
}

fn names<'a, T: std::fmt::Display + 'a>(items: impl Iterator<Item = &'a T>) -> String {
    items
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl Actuator for LabActuator {
    async fn prepare(&self) -> anyhow::Result<()> {
        let started = bootstrap::prepare(&self.exe, &self.data_dir, &self.description)?;
        if let Some(started) = started {
            let mut processes = self.processes();
            for (replica, child) in started.processes {
                let files = self.files(&replica)?;
                files.record(child.id())?;
                processes.watch(replica, Watched::Child(child));
            }
            *self.databases.lock().unwrap_or_else(|p| p.into_inner()) = started.databases;
        }
        Ok(())
    }

    async fn probe(&self, replica: &ReplicaSpec) -> ProbeOutcome {
        let address = match self.admin_address(&replica.name) {
            Ok(address) => address,
            Err(error) => return ProbeOutcome::unreachable(format!("{error:#}")),
        };
        let client = match crate::tls::http() {
            Ok(client) => client,
            Err(error) => return ProbeOutcome::unreachable(format!("{error:#}")),
        };
        let base = crate::tls::url(address);
        let bearer = self.bearer();
        let get = |path: &str| {
            let mut request = client.get(format!("{base}{path}")).timeout(PROBE_TIMEOUT);
            if let Some(bearer) = &bearer {
                request = request.header("authorization", bearer);
            }
            request.send()
        };
        let (livez, readyz, status) = tokio::join!(get("/livez"), get("/readyz"), get("/status"));
        let live = livez.as_ref().is_ok_and(|r| r.status().is_success());
        let (ready, reason) = match readyz {
            Ok(response) if response.status().is_success() => (true, None),
            Ok(response) => {
                let text = response.text().await.unwrap_or_default();
                (
                    false,
                    Some(text.trim().chars().take(REASON_CHARS).collect()),
                )
            }
            Err(error) => (false, Some(format!("no answer: {error}"))),
        };
        let role = match status {
            Ok(response) if response.status().is_success() => {
                let json: serde_json::Value = response.json().await.unwrap_or_default();
                Some(
                    match json
                        .pointer("/replication/role")
                        .and_then(serde_json::Value::as_str)
                    {
                        Some("active") => ServingRole::Active,
                        Some("passive") => ServingRole::Passive,
                        _ => ServingRole::Single,
                    },
                )
            }
            _ => None,
        };
        ProbeOutcome {
            live,
            ready,
            reason,
            role,
        }
    }

    async fn running(&self) -> anyhow::Result<Vec<(ReplicaName, u32)>> {
        Ok(self
            .inventory
            .replicas
            .iter()
            .filter_map(|spec| self.pid_of(&spec.name).map(|pid| (spec.name.clone(), pid)))
            .collect())
    }

    async fn start(&self, replica: &ReplicaSpec) -> anyhow::Result<Started> {
        self.start_replica(&replica.name)
    }

    async fn exited(&self) -> Vec<(ReplicaName, Option<i32>)> {
        self.processes().take_exits()
    }

    async fn databases(&self) -> anyhow::Result<Vec<DatabaseFact>> {
        let Some(databases) = self.owned_databases() else {
            return Ok(Vec::new());
        };
        let facts = tokio::task::spawn_blocking(move || {
            let views = databases.servers();
            let reports = databases.standby_reports().unwrap_or_default();
            let read_at = Timestamp::now();
            views
                .into_iter()
                .map(|view| {
                    let report = reports.iter().find(|r| r.server == view.name);
                    DatabaseFact {
                        server: view.name,
                        reachable: view.running,
                        role: view
                            .running
                            .then_some(super::inventory::database_role(view.role)),
                        lag_bytes: report.and_then(|r| r.lag_bytes),
                        read_at,
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .context("reading the database servers")?;
        Ok(facts)
    }

    async fn run_step(&self, action: &StepAction) -> StepOutcome {
        match action {
            StepAction::FenceRegion { replicas, .. } => self.fence(replicas).await,
            StepAction::WaitForCatchUp { servers } => self.wait_for_catch_up(servers).await,
            StepAction::PromoteDatabases { servers } if servers.is_empty() => {
                StepOutcome::AlreadyDone("no database to promote".to_owned())
            }
            StepAction::PromoteDatabases { servers } => self.promote(servers).await,
            StepAction::StartReplicas { replicas, .. } => self.start_all(replicas),
            StepAction::WaitReady { replicas } => self.wait_ready(replicas).await,
            StepAction::MoveLoadBalancer { region } => {
                use crate::lb::Moved;
                match crate::lb::move_to_region(&self.data_dir, region).await {
                    Ok(Moved::Reloaded(detail)) => StepOutcome::Done(detail),
                    Ok(Moved::AlreadyThere(detail)) => StepOutcome::AlreadyDone(detail),
                    Ok(Moved::NoLoadBalancer) => {
                        StepOutcome::AlreadyDone("no load balancer configured".to_owned())
                    }
                    Err(error) => StepOutcome::Failed(format!("{error:#}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    /// A frozen replica (SIGSTOP, as a lost region is emulated) is fenced by SIGKILL at once,
    /// not after the grace a SIGTERM gets: SIGTERM cannot reach it while it is stopped.
    #[tokio::test]
    async fn a_frozen_process_is_fenced_at_once_not_after_the_grace() {
        let mut frozen = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawns sleep");
        let pid = frozen.id();
        signal(pid, Signal::SIGSTOP).expect("stops it");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_stopped(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(is_stopped(pid), "sleep is stopped");
        let started = Instant::now();
        let outcome = fence_processes(&[("r-a".into(), pid)], Duration::from_secs(10)).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "fenced after {:?}: waited for a SIGTERM a stopped process cannot act on",
            started.elapsed()
        );
        match outcome {
            StepOutcome::Done(detail) => assert!(detail.contains("frozen"), "{detail}"),
            other => panic!("{other:?}"),
        }
        frozen.wait().expect("reaps");
        assert!(!is_alive(pid));
    }
}
