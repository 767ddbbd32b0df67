//! The nemesis (`meridian drill --scenario random`): a seeded random schedule of overlapping
//! faults under load, Jepsen-style, and what each did to the applications.
//!
//! [`plan`] draws the schedule from the seed alone — the same seed and duration give the same
//! schedule on the same deployment shape, so a run that found something replays — and leaves
//! out the kinds the storage cannot run (a read-only PostgreSQL on SQLite). Faults overlap
//! across nodes and the database, never on one node (or the database) twice at once, so every
//! fault can be undone and the deployment ends whole for the audit. [`play`] strikes and
//! undoes them on time while the load runs, watches which replica is active on every
//! replicated node, and at the end restarts anything that died by itself (and says so).
//! [`NemesisRun::attribute`] then gives each fault the failed requests, lost transactions and
//! replica changes of its window (`crate::attribution`).
//!
//! A new fault kind is one variant of [`NemesisKind`] and its arm in `strike` and `undo`.
//! Clock skew needs the sequencer instances started under the clock-shift shim
//! ([`NemesisPlan::needs_shiftable_clocks`] tells the drill to ask for it), so that an
//! instance's clock moves while it runs rather than across a restart, which would be a
//! second fault.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::attribution::{self, Window};
use crate::deployment::{Backend, Deployment};
use crate::drill::plan::PlanView;
use crate::fault::{process_named, restart, Node, Stage, TOPOLOGY_NODE};
use crate::replicas;
use crate::workload::{FailureAt, Live};

/// The kinds of fault the nemesis draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NemesisKind {
    /// kill -9 the active replica (or a sequencer instance); restarted after the hold.
    Crash,
    /// SIGSTOP it for the hold, then SIGCONT.
    Freeze,
    /// SIGTERM it (a graceful stop: it hands over first); restarted after the hold.
    Sigterm,
    /// Stop PostgreSQL for the hold, then start it.
    DatabaseRestart,
    /// `ALTER SYSTEM SET default_transaction_read_only = on` for the hold, then reset.
    DatabaseReadOnly,
    /// `pg_terminate_backend` on every client connection (instantaneous).
    BackendTermination,
    /// One sequencer instance's wall clock shifted by the event's offset for the hold (the
    /// clock-shift shim), then set right.
    ClockSkew,
}

impl NemesisKind {
    pub const ALL: [NemesisKind; 7] = [
        NemesisKind::Crash,
        NemesisKind::Freeze,
        NemesisKind::Sigterm,
        NemesisKind::DatabaseRestart,
        NemesisKind::DatabaseReadOnly,
        NemesisKind::BackendTermination,
        NemesisKind::ClockSkew,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::Crash => "crash",
            NemesisKind::Freeze => "freeze",
            NemesisKind::Sigterm => "sigterm",
            NemesisKind::DatabaseRestart => "database-restart",
            NemesisKind::DatabaseReadOnly => "database-read-only",
            NemesisKind::BackendTermination => "backend-termination",
            NemesisKind::ClockSkew => "clock-skew",
        }
    }

    /// Whether it hits the database server rather than a node.
    fn on_database(self) -> bool {
        matches!(
            self,
            NemesisKind::DatabaseRestart
                | NemesisKind::DatabaseReadOnly
                | NemesisKind::BackendTermination
        )
    }

    /// Why it cannot run on `backend`, if it cannot.
    pub fn unsupported_on(self, backend: Backend) -> Option<&'static str> {
        match (self, backend) {
            (kind, Backend::Sqlite) if kind.on_database() => {
                Some("SQLite is embedded: there is no database server to break")
            }
            // See `Fault::ParticipantFreeze`: nobody can break a frozen SQLite writer's lock.
            (NemesisKind::Freeze, Backend::Sqlite) => {
                Some("on SQLite a frozen process can keep the database file's write lock")
            }
            _ => None,
        }
    }

    /// How long the fault lasts, in ms: drawn between these bounds.
    fn hold_ms(self) -> (u64, u64) {
        match self {
            NemesisKind::BackendTermination => (0, 0),
            NemesisKind::Crash | NemesisKind::Sigterm => (1_000, 5_000),
            NemesisKind::Freeze => (1_000, 6_000),
            NemesisKind::DatabaseRestart => (1_000, 5_000),
            NemesisKind::DatabaseReadOnly | NemesisKind::ClockSkew => (2_000, 10_000),
        }
    }
}

/// The first fault strikes this long after the load started (its steady state).
const FIRST_FAULT_AFTER: Duration = Duration::from_secs(2);
/// Time between one fault's start and the next's, in ms: drawn between these bounds. Most
/// holds are longer than the mean gap, so faults overlap.
const GAP_MS: (u64, u64) = (300, 4_000);
/// A node (or the database) takes no new fault until this long after its last one ended, so
/// the restarted replica is back before its node is hit again.
const RECOVERY_MARGIN: Duration = Duration::from_secs(3);
/// Every fault has ended this long before the run's end: the deployment recovers under load.
const QUIET_END: Duration = Duration::from_secs(3);
/// A fault's window lasts this long after it was undone: failures it causes come late (a
/// resubmission waits out a max sequencing time of 10 s).
const WINDOW_TAIL: Duration = Duration::from_secs(10);
/// How often the replica roles are polled.
const ROLE_POLL: Duration = Duration::from_millis(250);

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NemesisEvent {
    /// When it strikes, from the start of the schedule.
    #[serde(rename = "at_ms", serialize_with = "as_ms")]
    pub at: Duration,
    pub kind: NemesisKind,
    /// The node it hits; `None` for a database fault.
    #[serde(serialize_with = "node_name")]
    pub node: Option<Node>,
    /// How long it lasts before it is undone.
    #[serde(rename = "hold_ms", serialize_with = "as_ms")]
    pub hold: Duration,
    /// A clock skew's offset: the instance's clock runs this far ahead (behind if negative).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
}

fn as_ms<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u128(duration.as_millis())
}

fn node_name<S: serde::Serializer>(node: &Option<Node>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&target_name(*node))
}

/// What a fault is aimed at, as printed: a node's name, a sequencer instance, or the database.
fn target_name(node: Option<Node>) -> String {
    match node {
        None => "postgres".to_owned(),
        Some(Node::Sequencer { instance }) => format!("sequencer instance {instance}"),
        Some(node) => node.name(),
    }
}

impl NemesisEvent {
    /// One line of the printed schedule.
    pub fn describe(&self) -> String {
        let kind = match self.clock_offset_ms {
            Some(offset_ms) => format!("{} {offset_ms:+} ms", self.kind.name()),
            None => self.kind.name().to_owned(),
        };
        format!(
            "+{:>7.1} s  {:<20} {:<22} for {:.1} s",
            self.at.as_secs_f64(),
            kind,
            target_name(self.node),
            self.hold.as_secs_f64()
        )
    }

    /// What it keeps busy: its node (every sequencer instance counts as the sequencer) or the
    /// database.
    fn resource(&self) -> String {
        self.node.map_or_else(|| "database".to_owned(), Node::name)
    }
}

/// A seeded schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NemesisPlan {
    pub seed: u64,
    #[serde(rename = "duration_ms", serialize_with = "as_ms")]
    pub duration: Duration,
    pub events: Vec<NemesisEvent>,
    /// Kinds left out, with the reason.
    pub skipped: Vec<String>,
}

impl NemesisPlan {
    /// Whether the deployment must start its sequencer instances under the clock-shift shim.
    pub fn needs_shiftable_clocks(&self) -> bool {
        self.events.iter().any(|e| e.kind == NemesisKind::ClockSkew)
    }
}

/// A small, fixed pseudo-random generator (SplitMix64): the schedule of a seed must not change
/// with a dependency's version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high` (near enough: the modulo bias is negligible at these ranges).
    fn between(&mut self, (low, high): (u64, u64)) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Offsets a clock skew draws from, in ms: just past the sequencers' default bound of 250 ms,
/// the 2 s and 15 s the issue that asked for the clock gate measured, ahead and behind.
const CLOCK_OFFSETS_MS: [i64; 6] = [-15_000, -2_000, -400, 400, 2_000, 15_000];

/// The nodes a process fault of `kind` can hit: those with something to fail over to (for a
/// clock skew, a sequencer instance with a peer).
fn process_targets(view: &PlanView, kind: NemesisKind) -> Vec<Node> {
    let mut nodes = Vec::new();
    if view.warm_replicas >= 2 && kind != NemesisKind::ClockSkew {
        nodes.extend((0..view.participants).map(Node::Participant));
        nodes.extend([Node::Mediator, Node::TopologyManager]);
    }
    if view.warm_sequencers >= 2 {
        nodes.extend((0..view.warm_sequencers).map(|instance| Node::Sequencer { instance }));
    }
    nodes
}

/// The schedule of `seed` for a run of `duration` on `view`'s deployment.
pub fn plan(seed: u64, duration: Duration, view: &PlanView) -> anyhow::Result<NemesisPlan> {
    let mut skipped = Vec::new();
    let mut kinds = Vec::new();
    for kind in NemesisKind::ALL {
        match kind.unsupported_on(view.backend) {
            Some(reason) => skipped.push(format!("{}: {reason}", kind.name())),
            None if !kind.on_database() && process_targets(view, kind).is_empty() => {
                skipped.push(format!(
                    "{}: no node has a replica or sequencer instance to fail over to",
                    kind.name()
                ))
            }
            None => kinds.push(kind),
        }
    }
    if kinds.is_empty() {
        bail!("no fault kind can run on this deployment");
    }
    let Some(last_end) = duration.checked_sub(QUIET_END) else {
        bail!("--duration must be longer than {} s", QUIET_END.as_secs());
    };
    let mut rng = SplitMix64(seed);
    let mut busy_until: BTreeMap<String, Duration> = BTreeMap::new();
    let mut events = Vec::new();
    let mut at = FIRST_FAULT_AFTER;
    while at < last_end {
        let kind = rng.pick(&kinds);
        let hold = Duration::from_millis(rng.between(kind.hold_ms()));
        let free = |node: Option<Node>| {
            let event = NemesisEvent {
                at,
                kind,
                node,
                hold,
                clock_offset_ms: None,
            };
            busy_until
                .get(&event.resource())
                .is_none_or(|until| *until <= at)
        };
        let candidates: Vec<Option<Node>> = if kind.on_database() {
            vec![None]
        } else {
            process_targets(view, kind).into_iter().map(Some).collect()
        };
        let candidates: Vec<Option<Node>> = candidates.into_iter().filter(|n| free(*n)).collect();
        if !candidates.is_empty() && at + hold <= last_end {
            let node = rng.pick(&candidates);
            let clock_offset_ms =
                (kind == NemesisKind::ClockSkew).then(|| rng.pick(&CLOCK_OFFSETS_MS));
            let event = NemesisEvent {
                at,
                kind,
                node,
                hold,
                clock_offset_ms,
            };
            busy_until.insert(event.resource(), at + hold + RECOVERY_MARGIN);
            events.push(event);
        }
        at += Duration::from_millis(rng.between(GAP_MS));
    }
    Ok(NemesisPlan {
        seed,
        duration,
        events,
        skipped,
    })
}

/// What one scheduled fault did.
#[derive(Debug, Clone, Serialize)]
pub struct NemesisFault {
    #[serde(flatten)]
    pub event: NemesisEvent,
    /// What was done, e.g. "kill -9 participant2-a"; `None` when it was skipped.
    pub action: Option<String>,
    /// Why it did not strike (no active replica at the time, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// When it struck and when it was undone, ms since the workload started.
    pub struck_at_ms: Option<f64>,
    pub restored_at_ms: Option<f64>,
    /// The end of its window: failures until then count against it.
    pub window_end_ms: Option<f64>,
    #[serde(flatten)]
    pub in_window: WindowCounts,
    /// What went wrong while undoing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// What happened in one fault's window, counted by `NemesisRun::attribute`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WindowCounts {
    pub failed_requests: u64,
    pub timed_out_requests: u64,
    /// Acknowledged transactions of the window missing afterwards on an informee.
    pub rpo_transactions: u64,
    /// Times a replicated node's active replica changed in the window.
    pub replica_changes: u64,
}

impl NemesisFault {
    fn window(&self) -> Window {
        match (self.struck_at_ms, self.window_end_ms) {
            (Some(from), Some(until)) => Window::from_ms(from, until),
            _ => Window {
                from_us: 0,
                until_us: 0,
            },
        }
    }
}

/// A replicated node's active replica changed (µs since the workload started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaChange {
    pub at_us: u64,
    pub node: String,
    pub active: String,
}

/// Everything a nemesis run saw.
#[derive(Debug, Clone, Serialize)]
pub struct NemesisRun {
    pub plan: NemesisPlan,
    pub faults: Vec<NemesisFault>,
    pub replica_changes: Vec<ReplicaChange>,
    /// Processes found dead at the end that no fault had left down (then restarted).
    pub unexpected_exits: Vec<String>,
    #[serde(flatten)]
    pub between_faults: BetweenFaults,
}

/// What a nemesis run saw outside every fault's window; its keys in the JSON keep the
/// `_between_faults` names the report has always had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BetweenFaults {
    #[serde(rename = "failed_between_faults")]
    pub failed_requests: u64,
    #[serde(rename = "rpo_between_faults")]
    pub rpo_transactions: u64,
    #[serde(rename = "replica_changes_between_faults")]
    pub replica_changes: u64,
}

impl NemesisRun {
    /// Gives each fault what happened in its window: `failures`, the acknowledgement times of
    /// the transactions the audit found missing (`lost_at_us`), and the replica changes.
    pub fn attribute(&mut self, failures: &[FailureAt], lost_at_us: &[u64]) {
        let windows: Vec<Window> = self.faults.iter().map(NemesisFault::window).collect();
        let failed = attribution::count(&windows, failures.iter().map(|f| f.at_us));
        let timed_out = attribution::count(
            &windows,
            failures.iter().filter(|f| f.timed_out).map(|f| f.at_us),
        );
        let lost = attribution::count(&windows, lost_at_us.iter().copied());
        let changes = attribution::count(&windows, self.replica_changes.iter().map(|c| c.at_us));
        for (index, fault) in self.faults.iter_mut().enumerate() {
            fault.in_window = WindowCounts {
                failed_requests: failed.per_window[index],
                timed_out_requests: timed_out.per_window[index],
                rpo_transactions: lost.per_window[index],
                replica_changes: changes.per_window[index],
            };
        }
        self.between_faults = BetweenFaults {
            failed_requests: failed.between_faults,
            rpo_transactions: lost.between_faults,
            replica_changes: changes.between_faults,
        };
    }
}

/// What a struck fault left to undo.
enum Effect {
    /// Killed or stopped: restarted (it comes back passive).
    Stopped(String),
    Frozen(String),
    DatabaseDown,
    ReadOnly,
    /// Sequencer instance `.0`'s clock is shifted.
    ClockShifted(usize),
    /// Nothing to undo (terminated backends reconnect by themselves).
    Nothing,
}

/// One step of the timetable: strike or undo fault `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Action {
    at: Duration,
    /// Undo before strike at the same moment.
    strike: bool,
    index: usize,
}

/// Plays `plan` on the running deployment while the load runs: strikes and undoes each fault
/// on time (`say` gets a line for each), then restarts whatever died by itself.
pub(crate) async fn play(
    plan: &NemesisPlan,
    stage: &mut Stage<'_>,
    live: &Live,
    say: &mut dyn FnMut(String),
    shutdown: &CancellationToken,
) -> anyhow::Result<NemesisRun> {
    let watcher = RoleWatcher::start(stage.deployment, live);
    let running_at_start: Vec<String> = stage
        .deployment
        .processes_mut()
        .into_iter()
        .filter_map(|p| p.is_running().then(|| p.name().to_owned()))
        .collect();
    let mut timetable: Vec<Action> = plan
        .events
        .iter()
        .enumerate()
        .flat_map(|(index, event)| {
            [
                Action {
                    at: event.at,
                    strike: true,
                    index,
                },
                Action {
                    at: event.at + event.hold,
                    strike: false,
                    index,
                },
            ]
        })
        .collect();
    timetable.sort();
    let mut faults: Vec<NemesisFault> = plan.events.iter().map(unstruck).collect();
    let mut effects: Vec<Option<Effect>> = plan.events.iter().map(|_| None).collect();
    let started = Instant::now();
    let ms = |at: Instant| live.micros_since_epoch(at) as f64 / 1_000.0;
    for action in timetable {
        tokio::select! {
            () = tokio::time::sleep_until((started + action.at).into()) => {}
            () = shutdown.cancelled() => break,
        }
        let fault = &mut faults[action.index];
        if action.strike {
            match strike(&fault.event, stage).await {
                Ok((what, effect)) => {
                    say(format!("{}  {what}", fault.event.describe()));
                    fault.action = Some(what);
                    fault.struck_at_ms = Some(ms(Instant::now()));
                    effects[action.index] = Some(effect);
                }
                Err(error) => {
                    say(format!("{}  skipped: {error:#}", fault.event.describe()));
                    fault.skipped = Some(format!("{error:#}"));
                }
            }
        } else if let Some(effect) = effects[action.index].take() {
            finish(fault, undo(effect, stage).await, ms(Instant::now()));
        }
    }
    // Interrupted: undo what is still in force.
    for (fault, effect) in faults.iter_mut().zip(&mut effects) {
        if let Some(effect) = effect.take() {
            finish(fault, undo(effect, stage).await, ms(Instant::now()));
        }
    }
    let unexpected_exits = revive(stage.deployment, &running_at_start).await?;
    if !unexpected_exits.is_empty() {
        say(format!(
            "{} had exited by itself; restarted for the audit",
            unexpected_exits.join(", ")
        ));
        // The audit needs every node served again, and the load a moment to find it.
        await_active(&stage.deployment.data_dir, &watcher.nodes).await;
        tokio::time::sleep(QUIET_END).await;
    }
    Ok(NemesisRun {
        plan: plan.clone(),
        faults,
        replica_changes: watcher.stop().await,
        unexpected_exits,
        between_faults: BetweenFaults::default(),
    })
}

fn unstruck(event: &NemesisEvent) -> NemesisFault {
    NemesisFault {
        event: event.clone(),
        action: None,
        skipped: None,
        struck_at_ms: None,
        restored_at_ms: None,
        window_end_ms: None,
        in_window: WindowCounts::default(),
        problem: None,
    }
}

/// Records that `fault` was undone at `now_ms` (with `undone`'s error as its problem).
fn finish(fault: &mut NemesisFault, undone: anyhow::Result<()>, now_ms: f64) {
    if let Err(error) = undone {
        fault.problem = Some(format!("undoing it failed: {error:#}"));
    }
    fault.restored_at_ms = Some(now_ms);
    fault.window_end_ms = Some(now_ms + WINDOW_TAIL.as_secs_f64() * 1_000.0);
}

/// The process `node`'s fault hits now: the active replica, or the sequencer instance.
async fn victim(node: Node, deployment: &Deployment) -> anyhow::Result<String> {
    let name = match node {
        Node::Sequencer { instance } => deployment
            .sequencers
            .get(instance)
            .map(|s| s.name().to_owned())
            .with_context(|| format!("the deployment runs no sequencer instance {instance}"))?,
        node => replicas::active_replica(&deployment.data_dir, &node.name())
            .await?
            .with_context(|| format!("no active replica of {} right now", node.name()))?,
    };
    Ok(name)
}

/// Does the harm; says what was done and what is left to undo.
async fn strike(event: &NemesisEvent, stage: &mut Stage<'_>) -> anyhow::Result<(String, Effect)> {
    if event.kind.on_database() {
        return strike_database(event.kind, stage);
    }
    let node = event.node.context("a process fault needs a node")?;
    if event.kind == NemesisKind::ClockSkew {
        return shift_clock(event, node, stage.deployment);
    }
    let name = victim(node, stage.deployment).await?;
    let process = process_named(stage.deployment, &name)?;
    if !process.is_running() {
        bail!("{name} is not running");
    }
    Ok(match event.kind {
        NemesisKind::Crash => {
            process.kill9()?;
            (format!("kill -9 {name}"), Effect::Stopped(name))
        }
        NemesisKind::Sigterm => {
            process.signal(Signal::SIGTERM)?;
            (format!("SIGTERM {name}"), Effect::Stopped(name))
        }
        NemesisKind::Freeze => {
            process.signal(Signal::SIGSTOP)?;
            (format!("SIGSTOP {name}"), Effect::Frozen(name))
        }
        other => bail!("{} is not a process fault", other.name()),
    })
}

/// Shifts a sequencer instance's clock by the event's offset; the instance keeps running.
fn shift_clock(
    event: &NemesisEvent,
    node: Node,
    deployment: &Deployment,
) -> anyhow::Result<(String, Effect)> {
    let Node::Sequencer { instance } = node else {
        bail!(
            "a clock skew hits a sequencer instance, not {}",
            node.name()
        );
    };
    let offset_ms = event
        .clock_offset_ms
        .context("a clock skew needs an offset")?;
    let clock = deployment.sequencer_clocks.get(instance).with_context(|| {
        format!("sequencer instance {instance} was not started under the clock-shift shim")
    })?;
    clock.set_offset_ms(offset_ms)?;
    let name = deployment.sequencers[instance].name();
    Ok((
        format!("{name} {offset_ms:+} ms"),
        Effect::ClockShifted(instance),
    ))
}

/// SQL run through `psql` on the server's maintenance database.
fn sql(stage: &Stage<'_>, statement: &str) -> anyhow::Result<String> {
    let server = stage
        .primary()
        .context("database faults need the PostgreSQL backend")?;
    // psql blocks for a moment; keep the runtime's other tasks (the load) running.
    tokio::task::block_in_place(|| server.psql("postgres", statement))
}

fn strike_database(kind: NemesisKind, stage: &Stage<'_>) -> anyhow::Result<(String, Effect)> {
    Ok(match kind {
        NemesisKind::DatabaseRestart => {
            let server = stage
                .primary()
                .context("database faults need the PostgreSQL backend")?;
            tokio::task::block_in_place(|| server.stop_fast()).context("stopping PostgreSQL")?;
            ("stop PostgreSQL".to_owned(), Effect::DatabaseDown)
        }
        NemesisKind::DatabaseReadOnly => {
            // ALTER SYSTEM cannot run inside a transaction block: one statement per call.
            sql(stage, "ALTER SYSTEM SET default_transaction_read_only = on")?;
            sql(stage, "SELECT pg_reload_conf()")?;
            (
                "PostgreSQL read-only (default_transaction_read_only)".to_owned(),
                Effect::ReadOnly,
            )
        }
        NemesisKind::BackendTermination => {
            let terminated = sql(
                stage,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )?;
            (
                format!("pg_terminate_backend on {terminated} connection(s)"),
                Effect::Nothing,
            )
        }
        other => bail!("{} is not a database fault", other.name()),
    })
}

async fn undo(effect: Effect, stage: &mut Stage<'_>) -> anyhow::Result<()> {
    match effect {
        Effect::Stopped(name) => restart(stage.deployment, &name).await?,
        Effect::Frozen(name) => process_named(stage.deployment, &name)?.signal(Signal::SIGCONT)?,
        Effect::DatabaseDown => {
            let server = stage
                .primary()
                .context("database faults need the PostgreSQL backend")?;
            tokio::task::block_in_place(|| server.resume()).context("starting PostgreSQL")?;
        }
        Effect::ReadOnly => {
            sql(stage, "ALTER SYSTEM RESET default_transaction_read_only")?;
            sql(stage, "SELECT pg_reload_conf()")?;
        }
        Effect::ClockShifted(instance) => {
            stage
                .deployment
                .sequencer_clocks
                .get(instance)
                .context("the shifted clock is gone")?
                .set_offset_ms(0)?;
        }
        Effect::Nothing => {}
    }
    Ok(())
}

/// Restarts every process of `running_at_start` that is no longer running (no fault is in
/// force any more): a node that exited by itself. Returns their names.
async fn revive(
    deployment: &mut Deployment,
    running_at_start: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut exited = Vec::new();
    for process in deployment.processes_mut() {
        if running_at_start.iter().any(|n| n == process.name()) && !process.is_running() {
            tracing::warn!(process = process.name(), log = %process.log_tail(20), "exited by itself during the nemesis run");
            exited.push(process.name().to_owned());
        }
    }
    for name in &exited {
        restart(deployment, name).await?;
    }
    Ok(exited)
}

/// How long the deployment may take to have an active replica of every node again after
/// nodes that had exited were restarted.
const REVIVED_ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits (bounded) until every node of `nodes` has an active replica.
async fn await_active(data_dir: &std::path::Path, nodes: &[String]) {
    let deadline = Instant::now() + REVIVED_ACTIVE_TIMEOUT;
    for node in nodes {
        while !matches!(replicas::active_replica(data_dir, node).await, Ok(Some(_))) {
            if Instant::now() >= deadline {
                tracing::warn!(node, "no active replica after the restart; auditing anyway");
                break;
            }
            tokio::time::sleep(ROLE_POLL).await;
        }
    }
}

/// Polls which replica is active on every replicated node and records each change.
struct RoleWatcher {
    /// The replicated nodes it watches.
    nodes: Vec<String>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<ReplicaChange>>,
}

impl RoleWatcher {
    fn start(deployment: &Deployment, live: &Live) -> Self {
        let data_dir = deployment.data_dir.clone();
        let mut nodes: Vec<String> = (0..deployment.participants.len())
            .map(|index| Node::Participant(index).name())
            .collect();
        nodes.extend([Node::Mediator.name(), TOPOLOGY_NODE.to_owned()]);
        let epoch = live.epoch();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let watched = nodes.clone();
        let task = tokio::spawn(async move {
            let nodes = watched;
            let mut active: BTreeMap<String, String> = BTreeMap::new();
            let mut changes = Vec::new();
            loop {
                for node in &nodes {
                    let Ok(Some(now)) = replicas::active_replica(&data_dir, node).await else {
                        continue;
                    };
                    let at_us = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                    match active.insert(node.clone(), now.clone()) {
                        Some(before) if before != now => changes.push(ReplicaChange {
                            at_us,
                            node: node.clone(),
                            active: now,
                        }),
                        _ => {}
                    }
                }
                tokio::select! {
                    () = stopped.cancelled() => return changes,
                    () = tokio::time::sleep(ROLE_POLL) => {}
                }
            }
        });
        Self { nodes, stop, task }
    }

    async fn stop(self) -> Vec<ReplicaChange> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// The seed when none was given: the clock's nanoseconds, printed so the run replays.
pub fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::{Description, Preset};

    fn view(backend: Backend) -> PlanView {
        PlanView {
            backend,
            ..PlanView::of(&Description::preset(Preset::Replicated))
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let duration = Duration::from_secs(600);
        let postgres = view(Backend::Postgres);
        let first = plan(7, duration, &postgres).expect("plan");
        assert_eq!(first, plan(7, duration, &postgres).expect("plan"));
        assert_ne!(
            first.events,
            plan(8, duration, &postgres).expect("plan").events
        );
        // Ten minutes hold well over a hundred faults, of every kind the backend runs.
        assert!(first.events.len() > 100, "{}", first.events.len());
        for kind in NemesisKind::ALL {
            assert!(first.events.iter().any(|e| e.kind == kind), "{kind:?}");
        }
        assert!(first.needs_shiftable_clocks());
        for event in &first.events {
            let skew = event.kind == NemesisKind::ClockSkew;
            assert_eq!(event.clock_offset_ms.is_some(), skew, "{event:?}");
            if skew {
                assert!(
                    matches!(event.node, Some(Node::Sequencer { .. })),
                    "{event:?}"
                );
            }
        }
    }

    #[test]
    fn faults_overlap_but_never_on_one_node_and_all_end_before_the_run() {
        let duration = Duration::from_secs(300);
        let schedule = plan(42, duration, &view(Backend::Postgres)).expect("plan");
        let mut overlapping = 0;
        for (index, event) in schedule.events.iter().enumerate() {
            assert!(event.at + event.hold + QUIET_END <= duration, "{event:?}");
            for later in &schedule.events[index + 1..] {
                if later.at < event.at + event.hold {
                    overlapping += 1;
                    assert_ne!(later.resource(), event.resource(), "{event:?} {later:?}");
                }
            }
        }
        assert!(overlapping > 10, "{overlapping} overlaps");
    }

    #[test]
    fn faults_the_backend_cannot_run_are_left_out_and_named() {
        let schedule = plan(1, Duration::from_secs(120), &view(Backend::Sqlite)).expect("plan");
        assert!(schedule.events.iter().all(|e| matches!(
            e.kind,
            NemesisKind::Crash | NemesisKind::Sigterm | NemesisKind::ClockSkew
        )));
        let skipped = schedule.skipped.join("; ");
        for kind in [
            "freeze",
            "database-restart",
            "database-read-only",
            "backend-termination",
        ] {
            assert!(skipped.contains(kind), "{skipped}");
        }
    }

    #[test]
    fn rows_and_between_faults_add_up_to_every_failure() {
        let event = |at_s: u64| NemesisEvent {
            at: Duration::from_secs(at_s),
            kind: NemesisKind::Crash,
            node: Some(Node::Mediator),
            hold: Duration::from_secs(1),
            clock_offset_ms: None,
        };
        let mut faults = vec![unstruck(&event(1)), unstruck(&event(2))];
        faults[0].struck_at_ms = Some(1_000.0);
        finish(&mut faults[0], Ok(()), 2_000.0);
        let mut run = NemesisRun {
            plan: plan(3, Duration::from_secs(60), &view(Backend::Sqlite)).expect("plan"),
            faults,
            replica_changes: vec![ReplicaChange {
                at_us: 1_500_000,
                node: "mediator".into(),
                active: "mediator-b".into(),
            }],
            unexpected_exits: Vec::new(),
            between_faults: BetweenFaults::default(),
        };
        let at = |at_us: u64| FailureAt {
            at_us,
            timed_out: false,
        };
        // Before the fault, in its window (which runs on after the restore), long after.
        let failures = [at(500_000), at(1_200_000), at(11_000_000), at(13_000_000)];
        run.attribute(&failures, &[]);
        assert_eq!(run.faults[0].in_window.failed_requests, 2);
        assert_eq!(
            run.faults[1].in_window.failed_requests, 0,
            "skipped: an empty window"
        );
        assert_eq!(run.between_faults.failed_requests, 2);
        assert_eq!(run.faults[0].in_window.replica_changes, 1);
    }
}
