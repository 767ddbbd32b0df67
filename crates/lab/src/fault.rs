//! Faults as a model: what the lab can break in a running deployment, and for each fault how
//! it is injected, how the deployment is seen to notice it, what proves it recovered and how
//! it is undone. A fault is a kind ([`Fault`]) aimed at a node chosen by its role in the
//! deployment ([`Node`]); the process it hits is whichever replica is active when it strikes,
//! never a process name written here. Adding a fault is one variant of [`Fault`] and its arm
//! in each step ([`PlannedFault::inject`], [`Injected::detected`], [`Injected::recovered`],
//! [`Injected::restore`]).
//!
//! The steps only act and observe; timing them (detection, RTO, throughput back) is the
//! experiment runner's job (`crate::experiment`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::ValueEnum;
use meridian_client::LedgerClient;
use meridian_core::PartyId;
use meridian_pgserver::PostgresServer;
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::deployment::Deployment;
use crate::deployment::{Backend, Databases};
use crate::launch::NodeProcess;
use crate::promotion::{Promotion, PromotionReport};
use crate::region::{Move, RegionMove, RegionReport};
use crate::workload::{Live, Parties, BANK_PARTICIPANT, OWNER_PARTICIPANTS};
use crate::{admin, replicas};

/// The sequencer's node name in a deployment (its instances are `<name>-a`, ...).
pub const SEQUENCER_NODE: &str = "sequencer";
/// The topology manager's node name in a deployment (its replicas are `<name>-a`, ...).
pub const TOPOLOGY_NODE: &str = "topology-manager";

/// How long the database stays down in [`Fault::DatabaseRestart`].
const DATABASE_OUTAGE: Duration = Duration::from_secs(3);
/// How long a switchover may take before it counts as failed.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a killed or stopped process may take to exit, and then to come back.
const EXIT_GRACE: Duration = Duration::from_secs(15);
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a resumed replica has to report itself passive.
const PASSIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A poll of one admin endpoint may take this long; a node that answers slower counts as not
/// answering this time.
const POLL_HTTP_TIMEOUT: Duration = Duration::from_millis(500);

/// The kinds of fault, one drill scenario each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// kill -9 the active replica of a participant.
    ParticipantCrash,
    /// SIGSTOP the active participant replica until a passive took over, then SIGCONT.
    ParticipantFreeze,
    /// Graceful stop (SIGTERM) of the active participant replica, as in a rolling upgrade.
    ParticipantStop,
    /// kill -9 the active mediator replica.
    MediatorCrash,
    /// kill -9 the active topology manager replica.
    TopologyCrash,
    /// kill -9 one sequencer instance: by default the one the members use.
    SequencerCrash,
    /// Stop the PostgreSQL server for a few seconds, then start it again.
    DatabaseRestart,
    /// `meridian admin switchover` of a participant under load.
    Switchover,
    /// kill -9 the PostgreSQL primary; the lab promotes the synchronous standby after its
    /// detection delay and re-points the other standbys.
    DatabaseFailover,
    /// kill -9 every process and database server of the primary's zone at once; the other
    /// zone's replicas take over on the promoted synchronous standby.
    ZoneLoss,
    /// Planned: stop region one's processes, wait until the asynchronous standby in region
    /// two replayed everything, promote it, start region two's cold replicas. One-shot.
    RegionSwitchover,
    /// kill -9 every process and database server of region one at once, promote the
    /// asynchronous standby, start region two's cold replicas. One-shot.
    RegionLoss,
}

/// A node of the deployment, by its role rather than by a process name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// The sequencer; a crash hits instance `instance` (every instance is active).
    Sequencer {
        instance: usize,
    },
    /// The sequencer instance with the most open subscriptions when the fault strikes: the
    /// one the members use, since they subscribe and send at one instance and the others are
    /// spares (`meridian_client::sequencer`). After a kill they move to a survivor, so a
    /// fixed instance would hit an idle spare from the second trial on.
    BusiestSequencer,
    TopologyManager,
    Mediator,
    /// Participant `index`, counted from 0 as in the workload's `Parties::clients`.
    Participant(usize),
}

impl Node {
    /// The node's name in the deployment: its directory, and its processes' prefix.
    pub fn name(self) -> String {
        match self {
            Node::Sequencer { .. } | Node::BusiestSequencer => SEQUENCER_NODE.to_owned(),
            Node::TopologyManager => TOPOLOGY_NODE.to_owned(),
            Node::Mediator => Deployment::mediator_id().to_string(),
            Node::Participant(index) => format!("participant{}", index + 1),
        }
    }
}

/// What a fault fails over to; the deployment must have two of it or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redundancy {
    /// Another replica of the node.
    Replicas,
    /// Another sequencer instance.
    Sequencers,
}

/// Why a fault cannot run on a deployment's storage.
#[derive(Debug, Clone)]
pub struct Unsupported {
    /// Said when `all` skips it.
    pub reason: &'static str,
    /// Said when it was asked for by name.
    pub refusal: String,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::ParticipantCrash => "participant-crash",
            Fault::ParticipantFreeze => "participant-freeze",
            Fault::ParticipantStop => "participant-stop",
            Fault::MediatorCrash => "mediator-crash",
            Fault::TopologyCrash => "topology-crash",
            Fault::SequencerCrash => "sequencer-crash",
            Fault::DatabaseRestart => "database-restart",
            Fault::Switchover => "switchover",
            Fault::DatabaseFailover => "database-failover",
            Fault::ZoneLoss => "zone-loss",
            Fault::RegionSwitchover => "region-switchover",
            Fault::RegionLoss => "region-loss",
        }
    }

    /// Whether the fault kills a process (RTO targets apply to these).
    pub fn is_crash(self) -> bool {
        matches!(
            self,
            Fault::ParticipantCrash
                | Fault::MediatorCrash
                | Fault::TopologyCrash
                | Fault::SequencerCrash
        )
    }

    /// The node it is aimed at unless told otherwise. A participant fault hits alice's
    /// participant, through which half of the transfers are submitted.
    pub fn default_node(self) -> Node {
        match self {
            Fault::ParticipantCrash
            | Fault::ParticipantFreeze
            | Fault::ParticipantStop
            | Fault::Switchover => Node::Participant(OWNER_PARTICIPANTS[0]),
            Fault::MediatorCrash => Node::Mediator,
            Fault::TopologyCrash => Node::TopologyManager,
            Fault::SequencerCrash => Node::BusiestSequencer,
            Fault::DatabaseRestart
            | Fault::DatabaseFailover
            | Fault::ZoneLoss
            | Fault::RegionSwitchover
            | Fault::RegionLoss => Node::Sequencer { instance: 0 },
        }
    }

    /// The fault aimed at its default node.
    pub fn planned(self) -> PlannedFault {
        PlannedFault {
            fault: self,
            node: self.default_node(),
        }
    }

    /// Every node of a deployment of `participants` participants it can be aimed at.
    pub fn nodes(self, participants: usize) -> Vec<Node> {
        match self.default_node() {
            Node::Participant(_) => (0..participants).map(Node::Participant).collect(),
            node => vec![node],
        }
    }

    /// What it fails over to, if it needs anything to (a database restart does not).
    pub fn fails_over_to(self) -> Option<Redundancy> {
        match self {
            Fault::SequencerCrash => Some(Redundancy::Sequencers),
            // The database fails over to its synchronous standby (`needs_sync_standby`); a
            // zone loss also to the other zone's replicas.
            // A region move fails over to the other region's cold replicas and database
            // (`is_region_move`).
            Fault::DatabaseRestart
            | Fault::DatabaseFailover
            | Fault::RegionSwitchover
            | Fault::RegionLoss => None,
            _ => Some(Redundancy::Replicas),
        }
    }

    /// Whether it needs a PostgreSQL primary with a synchronous standby to promote.
    pub fn needs_sync_standby(self) -> bool {
        matches!(self, Fault::DatabaseFailover | Fault::ZoneLoss)
    }

    /// Whether it moves the deployment to another region: it needs an asynchronous standby
    /// and cold replicas there, and it can run once per deployment (region one is gone
    /// afterwards).
    pub fn is_region_move(self) -> bool {
        matches!(self, Fault::RegionSwitchover | Fault::RegionLoss)
    }

    /// Why it cannot run on `backend`, if it cannot.
    pub fn unsupported_on(self, backend: Backend) -> Option<Unsupported> {
        match (self, backend) {
            (Fault::RegionSwitchover | Fault::RegionLoss, Backend::Sqlite) => Some(Unsupported {
                reason: "SQLite is embedded, there is no database to replicate to another region (use --preset two-regions --backend postgres)",
                refusal: format!(
                    "{} promotes a PostgreSQL standby in another region; run it with --preset two-regions --backend postgres",
                    self.name()
                ),
            }),
            (Fault::DatabaseFailover | Fault::ZoneLoss, Backend::Sqlite) => Some(Unsupported {
                reason: "SQLite is embedded, there is no database server to fail over (use --backend postgres with a synchronous standby)",
                refusal: format!(
                    "{} fails a PostgreSQL primary over to its synchronous standby; run it with --backend postgres",
                    self.name()
                ),
            }),
            (Fault::DatabaseRestart, Backend::Sqlite) => Some(Unsupported {
                reason: "SQLite is embedded, there is no database server to restart (use --backend postgres)",
                refusal: "database-restart restarts a PostgreSQL server; run it with --backend postgres"
                    .to_owned(),
            }),
            (Fault::ParticipantFreeze, Backend::Sqlite) => {
                // A process stopped inside a write transaction keeps the SQLite file's write
                // lock, and no other process can break it: the passive could never write.
                // PostgreSQL terminates the frozen holder's session instead
                // (docs/high-availability.md).
                let reason = "on SQLite a frozen process can keep the database file's write lock, which no other process can break (use --backend postgres)";
                Some(Unsupported {
                    reason,
                    refusal: format!("{}: {reason}", self.name()),
                })
            }
            _ => None,
        }
    }
}

/// One fault aimed at one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedFault {
    pub fault: Fault,
    pub node: Node,
}

/// What a fault acts on: the running deployment, its database server if it has one, and
/// the workload's parties (the topology probe allocates a party through them).
pub(crate) struct Stage<'a> {
    pub deployment: &'a mut Deployment,
    pub postgres: Option<&'a Databases>,
    pub parties: &'a Parties,
}

impl Stage<'_> {
    /// The running primary the nodes write to now (it changes with a database failover);
    /// `None` on SQLite, on a server the caller runs, or while no primary runs.
    pub fn primary(&self) -> Option<Arc<PostgresServer>> {
        self.postgres.and_then(|databases| databases.primary(None))
    }
}

/// What an injected fault changed, which its restore step undoes.
enum Effect {
    /// The process was killed or stopped: it is started again, and comes back passive.
    Stopped(String),
    /// The process was frozen: it is resumed, and must come back passive.
    Frozen(String),
    /// A switchover is under way; its outcome is collected when it is over.
    Switchover(JoinHandle<anyhow::Result<(String, String, Duration)>>),
    /// The database server is down until `back_at`, then started again.
    DatabaseDown { back_at: Instant },
    /// Database servers (and for a zone loss, the processes named) were killed; the lab
    /// promotes the synchronous standby, and afterwards rebuilds the servers and restarts
    /// the processes.
    Promoting {
        promotion: Box<Promotion>,
        processes: Vec<String>,
    },
    /// The deployment moved to another region; nothing is undone (one-shot).
    Region(Box<RegionMove>),
}

/// Whether the first success that proves the faulted node serves again has happened.
pub(crate) enum Recovery {
    NotYet,
    At(Instant),
    /// The proof itself failed: the node will not be seen to recover.
    Failed(String),
}

/// When [`Injected::restore`] is asked to undo the fault.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Moment {
    /// While the recovery is measured, with what was seen so far.
    Measuring { detected: bool, served: bool },
    /// The measurement is over (recovered or given up).
    Over,
}

/// A fault that was injected: what it did, and what its remaining steps need.
pub(crate) struct Injected {
    pub planned: PlannedFault,
    /// What was done, e.g. "kill -9 participant2-a".
    pub action: String,
    pub injected_at: Instant,
    /// The replica that was active before the fault: detection means another one is.
    active_before: Option<String>,
    /// Per sequencer instance, the peers it had marked offline before the fault.
    offline_marks_before: BTreeMap<String, u64>,
    effect: Effect,
    /// The party allocation that proves the topology manager serves again.
    probe: Option<JoinHandle<anyhow::Result<Instant>>>,
    restored: bool,
    /// What went wrong while undoing the fault.
    problem: Option<String>,
}

impl PlannedFault {
    /// Observes what detection compares against, then strikes.
    pub(crate) async fn inject(&self, stage: &mut Stage<'_>) -> anyhow::Result<Injected> {
        let node = self.node.name();
        let active_before = match self.fault {
            Fault::SequencerCrash
            | Fault::DatabaseRestart
            | Fault::DatabaseFailover
            | Fault::ZoneLoss
            | Fault::RegionSwitchover
            | Fault::RegionLoss => None,
            _ => replicas::active_replica(&stage.deployment.data_dir, &node).await?,
        };
        let offline_marks_before = if self.fault == Fault::SequencerCrash {
            peers_marked_offline(stage.deployment).await
        } else {
            BTreeMap::new()
        };
        let injected_at = Instant::now();
        let (action, effect) = self
            .strike(stage, active_before.as_deref(), injected_at)
            .await?;
        let probe = (self.node == Node::TopologyManager).then(|| {
            let client = stage.parties.clients[BANK_PARTICIPANT].clone();
            tokio::spawn(allocate_probe_party(client))
        });
        Ok(Injected {
            planned: *self,
            action,
            injected_at,
            active_before,
            offline_marks_before,
            effect,
            probe,
            restored: false,
            problem: None,
        })
    }

    /// Does the harm, to `active` (the replica that was active) where the fault hits a
    /// replica; says what was done.
    async fn strike(
        &self,
        stage: &mut Stage<'_>,
        active: Option<&str>,
        injected_at: Instant,
    ) -> anyhow::Result<(String, Effect)> {
        let node = self.node.name();
        let active = || {
            active
                .map(str::to_owned)
                .with_context(|| format!("no active replica of {node}"))
        };
        Ok(match self.fault {
            Fault::ParticipantCrash | Fault::MediatorCrash | Fault::TopologyCrash => {
                let name = active()?;
                process_named(stage.deployment, &name)?.kill9()?;
                (format!("kill -9 {name}"), Effect::Stopped(name))
            }
            Fault::ParticipantStop => {
                let name = active()?;
                // SIGTERM: the replica drains, releases its lease and exits; the passive takes
                // over without waiting for the lease to expire.
                process_named(stage.deployment, &name)?.signal(Signal::SIGTERM)?;
                (
                    format!("SIGTERM {name} (graceful stop)"),
                    Effect::Stopped(name),
                )
            }
            Fault::ParticipantFreeze => {
                let name = active()?;
                process_named(stage.deployment, &name)?.signal(Signal::SIGSTOP)?;
                (
                    format!("SIGSTOP {name} until a passive took over, then SIGCONT"),
                    Effect::Frozen(name),
                )
            }
            Fault::SequencerCrash => {
                let instance = match self.node {
                    Node::Sequencer { instance } => instance,
                    Node::BusiestSequencer => busiest_sequencer(stage.deployment).await,
                    _ => anyhow::bail!("sequencer-crash aims at the sequencer, not {node}"),
                };
                let sequencer =
                    stage
                        .deployment
                        .sequencers
                        .get_mut(instance)
                        .with_context(|| {
                            format!("the deployment runs no sequencer instance {instance}")
                        })?;
                sequencer.kill9()?;
                let name = sequencer.name().to_owned();
                (format!("kill -9 {name}"), Effect::Stopped(name))
            }
            Fault::Switchover => {
                let dir = stage.deployment.data_dir.clone();
                let target = node.clone();
                let task = tokio::spawn(async move {
                    admin::switch_over(&dir, &target, SWITCHOVER_TIMEOUT).await
                });
                (
                    format!("meridian admin switchover --node {node}"),
                    Effect::Switchover(task),
                )
            }
            Fault::DatabaseRestart => {
                let server = stage
                    .primary()
                    .context("database-restart needs the PostgreSQL backend")?;
                // pg_ctl blocks for a moment; keep the runtime's other tasks (the load) running.
                tokio::task::block_in_place(|| server.stop_fast())
                    .context("stopping PostgreSQL")?;
                (
                    format!(
                        "stop PostgreSQL for {} s, then start it",
                        DATABASE_OUTAGE.as_secs()
                    ),
                    Effect::DatabaseDown {
                        back_at: injected_at + DATABASE_OUTAGE,
                    },
                )
            }
            Fault::DatabaseFailover | Fault::ZoneLoss => {
                strike_database_loss(self.fault, stage, injected_at)?
            }
            Fault::RegionSwitchover | Fault::RegionLoss => {
                strike_region(self.fault, stage, injected_at).await?
            }
        })
    }
}

/// Kills the primary (a database failover) or every process and server of the primary's zone
/// (a zone loss), and plans the promotion of the synchronous standby.
fn strike_database_loss(
    fault: Fault,
    stage: &mut Stage<'_>,
    injected_at: Instant,
) -> anyhow::Result<(String, Effect)> {
    let databases = stage
        .postgres
        .context("a database failover needs the PostgreSQL backend")?;
    let primary = databases
        .with_role(None, crate::deployment::description::ServerRole::Primary)
        .into_iter()
        .find(|s| s.running)
        .context("no running primary to fail over")?;
    let (killed, processes) = if fault == Fault::ZoneLoss {
        let zone = primary.zone.clone();
        let killed = tokio::task::block_in_place(|| databases.kill9_zone(&zone))?;
        let keys = stage.deployment.description.node_keys();
        let in_zone: Vec<String> = stage
            .deployment
            .description
            .nodes(&keys)
            .iter()
            .flat_map(|node| node.warm().filter(|r| r.zone == zone))
            .map(|r| r.name.to_string())
            .collect();
        let mut processes = Vec::new();
        for name in in_zone {
            let process = process_named(stage.deployment, &name)?;
            if process.is_running() {
                process.kill9()?;
                processes.push(name);
            }
        }
        (killed, processes)
    } else {
        (
            tokio::task::block_in_place(|| databases.kill9_primaries())?,
            Vec::new(),
        )
    };
    let promotion = Promotion::plan(databases, killed.clone(), injected_at)?;
    let killed: Vec<&str> = killed.iter().map(|s| s.as_str()).collect();
    let action = if processes.is_empty() {
        format!("kill -9 primary {}", killed.join(", "))
    } else {
        format!(
            "kill -9 zone {}: {} and {}",
            primary.zone,
            killed.join(", "),
            processes.join(", ")
        )
    };
    Ok((
        action,
        Effect::Promoting {
            promotion: Box::new(promotion),
            processes,
        },
    ))
}

/// Moves the deployment to the asynchronous standby's region, planned or after a loss.
async fn strike_region(
    fault: Fault,
    stage: &mut Stage<'_>,
    injected_at: Instant,
) -> anyhow::Result<(String, Effect)> {
    let databases = stage
        .postgres
        .context("a region move needs the PostgreSQL backend")?;
    let kind = if fault == Fault::RegionLoss {
        Move::Loss
    } else {
        Move::Switchover
    };
    let moved = RegionMove::run(kind, stage.deployment, databases, injected_at).await?;
    let report = &moved.report;
    let action = match kind {
        Move::Switchover => format!(
            "switch {} over to {}: SIGTERM {}, lag 0, promote {}, start {}",
            report.from_region,
            report.to_region,
            report.region_one.join(", "),
            report.promoted,
            report.started.join(", ")
        ),
        Move::Loss => format!(
            "kill -9 region {}: {}; promote {}, start {}",
            report.from_region,
            report.region_one.join(", "),
            report.promoted,
            report.started.join(", ")
        ),
    };
    Ok((action, Effect::Region(Box::new(moved))))
}

/// What a fault left behind once it was restored.
pub(crate) struct Restored {
    /// For a freeze: whether the resumed replica came back passive.
    pub resumed_replica_passive: Option<bool>,
    /// For a region move: its parts and every node's readiness afterwards.
    pub region: Option<RegionReport>,
    /// What went wrong while undoing the fault.
    pub problem: Option<String>,
}

impl Injected {
    /// The process the fault hit (a replica or a sequencer instance), when it hit one.
    pub fn faulted(&self) -> Option<String> {
        match &self.effect {
            Effect::Stopped(name) | Effect::Frozen(name) => Some(name.clone()),
            Effect::Switchover(_) => self.active_before.clone(),
            Effect::DatabaseDown { .. } => None,
            Effect::Region(moved) => Some(moved.report.region_one.join(", ")),
            Effect::Promoting {
                promotion,
                processes,
            } => Some(
                promotion
                    .killed()
                    .iter()
                    .map(ToString::to_string)
                    .chain(processes.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        }
    }

    /// The promoter's figures of a database failover, with the first committed transfer
    /// sent after the fault at `first_success`.
    pub fn promotion_report(&self, first_success: Option<Instant>) -> Option<PromotionReport> {
        match &self.effect {
            Effect::Promoting { promotion, .. } => Some(promotion.report(first_success)),
            _ => None,
        }
    }

    /// Whether the deployment noticed the fault: another replica is active, a surviving
    /// sequencer instance marked the dead one offline, a node reports not ready, the
    /// switchover finished.
    pub async fn detected(&self, deployment: &Deployment) -> bool {
        match &self.effect {
            Effect::DatabaseDown { .. } => any_not_ready(deployment).await,
            Effect::Promoting { processes, .. } => {
                any_not_ready_except(deployment, processes).await
            }
            Effect::Switchover(task) => task.is_finished(),
            Effect::Region(moved) => moved.detected(deployment).await,
            Effect::Stopped(_) if self.planned.fault == Fault::SequencerCrash => {
                marked_another_offline(
                    &self.offline_marks_before,
                    &peers_marked_offline(deployment).await,
                )
            }
            Effect::Stopped(_) | Effect::Frozen(_) => another_replica_active(
                &deployment.data_dir,
                &self.planned.node.name(),
                self.active_before.as_deref(),
            )
            .await
            .unwrap_or(false),
        }
    }

    /// Whether the faulted node serves again, proven by a success that needs it: a transfer
    /// *sent after* the fault committing through the participant it hit; for a sequencer
    /// instance, through every submitting participant (each resumed its subscription); for
    /// the topology manager, which transfers do not use, a party allocated through the
    /// bank's participant; otherwise through any participant.
    pub async fn recovered(&mut self, live: &Live) -> anyhow::Result<Recovery> {
        if let Some(probe) = self.probe.as_mut() {
            if !probe.is_finished() {
                return Ok(Recovery::NotYet);
            }
            let allocated = probe.await.context("the topology probe task")?;
            self.probe = None;
            return Ok(match allocated {
                Ok(at) => Recovery::At(at),
                Err(error) => Recovery::Failed(format!("allocating a party failed: {error:#}")),
            });
        }
        let fresh = |index: &usize| live.committed_a_request_sent_after(*index, self.injected_at);
        let back = match (self.planned.fault, self.planned.node) {
            (
                Fault::SequencerCrash
                | Fault::DatabaseFailover
                | Fault::ZoneLoss
                | Fault::RegionSwitchover
                | Fault::RegionLoss,
                _,
            ) => OWNER_PARTICIPANTS.iter().all(fresh),
            (_, Node::Participant(index)) if OWNER_PARTICIPANTS.contains(&index) => fresh(&index),
            _ => OWNER_PARTICIPANTS.iter().any(fresh),
        };
        Ok(if back {
            Recovery::At(Instant::now())
        } else {
            Recovery::NotYet
        })
    }

    /// Whether recovery counts only once the fault was undone (the database must be back).
    pub fn recovery_needs_restore(&self) -> bool {
        match &self.effect {
            Effect::DatabaseDown { .. } => !self.restored,
            // The lab promotes during the measurement; a success before that is impossible.
            Effect::Promoting { promotion, .. } => !promotion.is_promoted(),
            _ => false,
        }
    }

    /// Undoes the fault once its moment came: a frozen replica resumes once a passive took
    /// over and served, the database starts after its outage; a killed process restarts (as
    /// a passive) and a switchover's outcome is collected when the measurement is over. Does
    /// nothing the second time.
    pub async fn restore(&mut self, stage: &mut Stage<'_>, moment: Moment) -> anyhow::Result<()> {
        if let Effect::Promoting {
            promotion,
            processes,
        } = &mut self.effect
        {
            let databases = stage
                .postgres
                .context("a database failover needs the PostgreSQL backend")?;
            let over = matches!(moment, Moment::Over);
            promotion.advance(over).await?;
            if over && !self.restored {
                self.restored = true;
                promotion.rebuild(databases).await;
                for name in processes.iter() {
                    restart(stage.deployment, name).await?;
                }
                if let Some(problem) = promotion.problem.clone() {
                    self.problem.get_or_insert(problem);
                }
            }
            return Ok(());
        }
        let due = match (&self.effect, moment) {
            _ if self.restored => false,
            (_, Moment::Over) => true,
            (Effect::Frozen(_), Moment::Measuring { detected, served }) => detected && served,
            (Effect::DatabaseDown { back_at }, Moment::Measuring { .. }) => {
                Instant::now() >= *back_at
            }
            (Effect::Stopped(_) | Effect::Switchover(_), Moment::Measuring { .. }) => false,
            (Effect::Promoting { .. }, _) => false,
            (Effect::Region(_), Moment::Measuring { .. }) => false,
        };
        if !due {
            return Ok(());
        }
        self.restored = true;
        match &mut self.effect {
            Effect::Stopped(name) => restart(stage.deployment, name).await?,
            Effect::Frozen(name) => {
                process_named(stage.deployment, name)?.signal(Signal::SIGCONT)?
            }
            Effect::Switchover(task) => {
                if let Err(error) = task.await.context("switchover task")? {
                    self.problem = Some(format!("switchover failed: {error:#}"));
                }
            }
            Effect::DatabaseDown { .. } => {
                if let Some(server) = stage.primary() {
                    tokio::task::block_in_place(|| server.resume())
                        .context("starting PostgreSQL again")?;
                }
            }
            // Region one is gone: nothing to restore.
            Effect::Promoting { .. } | Effect::Region(_) => {}
        }
        Ok(())
    }

    /// Restores the fault if that is still due, and checks what the restore left: a resumed
    /// replica must come back passive.
    pub async fn finish(
        mut self,
        stage: &mut Stage<'_>,
        first_success: Option<Instant>,
    ) -> anyhow::Result<Restored> {
        self.restore(stage, Moment::Over).await?;
        let mut region = None;
        if let Effect::Region(moved) = &mut self.effect {
            moved.record_readiness(stage.deployment).await;
            // After a loss the forked participants were repaired during the move; every node
            // must be ready now, as after a planned switchover.
            if let Some(not_ready) = moved.not_ready() {
                self.problem.get_or_insert(not_ready);
            }
            region = Some(moved.report(first_success));
        }
        let mut resumed_replica_passive = None;
        if let Effect::Frozen(name) = &self.effect {
            let node = self.planned.node.name();
            let passive = became_passive(&stage.deployment.data_dir, &node, name).await;
            if !passive {
                self.problem
                    .get_or_insert(format!("{name} did not come back passive after SIGCONT"));
            }
            resumed_replica_passive = Some(passive);
        }
        Ok(Restored {
            resumed_replica_passive,
            region,
            problem: self.problem,
        })
    }
}

/// Allocates a fresh party through `client` (which retries UNAVAILABLE while no topology
/// manager replica serves) and says when that succeeded.
async fn allocate_probe_party(client: LedgerClient) -> anyhow::Result<Instant> {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let party = PartyId::new(format!(
        "drill-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ))?;
    client.allocate_party(&party).await?;
    Ok(Instant::now())
}

/// Whether a replica of `node` other than `faulted` reports itself active. The faulted one
/// is not asked: frozen, it would hold every poll up by the HTTP timeout and blur the timing.
async fn another_replica_active(
    data_dir: &Path,
    node: &str,
    faulted: Option<&str>,
) -> anyhow::Result<bool> {
    Ok(replicas::replica_roles(data_dir, node, faulted)
        .await?
        .iter()
        .any(|(_, role)| role.as_deref() == Some("active")))
}

/// A node's `/status` as JSON; `None` when it is down or answers something else.
pub(crate) async fn admin_status(address: std::net::SocketAddr) -> Option<serde_json::Value> {
    get_admin(address, "/status").await?.json().await.ok()
}

async fn get_admin(address: std::net::SocketAddr, path: &str) -> Option<reqwest::Response> {
    replicas::http()
        .ok()?
        .get(format!("{}{path}", crate::tls::url(address)))
        .timeout(POLL_HTTP_TIMEOUT)
        .send()
        .await
        .ok()
}

/// The index of the running sequencer instance with the most open subscriptions (the first
/// one on a tie, or when none answers).
async fn busiest_sequencer(deployment: &Deployment) -> usize {
    let mut busiest = (0, 0);
    for (index, sequencer) in deployment.sequencers.iter().enumerate() {
        if let Some(status) = admin_status(sequencer.admin_address).await {
            let subscribers = status["subscribers"].as_i64().unwrap_or(0);
            if subscribers > busiest.1 {
                busiest = (index, subscribers);
            }
        }
    }
    busiest.0
}

/// How many peers each reachable sequencer instance has marked offline since it started. Per
/// instance, because a sum would hide a new mark behind the killed instance's own count
/// dropping out (it marked the other one offline in an earlier fault).
pub(crate) async fn peers_marked_offline(deployment: &Deployment) -> BTreeMap<String, u64> {
    let mut marks = BTreeMap::new();
    for sequencer in &deployment.sequencers {
        if let Some(status) = admin_status(sequencer.admin_address).await {
            let count = status["peers_marked_offline"].as_u64().unwrap_or(0);
            marks.insert(sequencer.name().to_owned(), count);
        }
    }
    marks
}

/// Whether an instance marked a peer offline since `before` was taken: a killed instance is
/// detected when a survivor does.
fn marked_another_offline(before: &BTreeMap<String, u64>, now: &BTreeMap<String, u64>) -> bool {
    now.iter()
        .any(|(name, count)| *count > before.get(name).copied().unwrap_or(0))
}

async fn any_not_ready(deployment: &Deployment) -> bool {
    for process in deployment.sequencers.iter().chain(&deployment.participants) {
        match get_admin(process.admin_address, "/readyz").await {
            Some(response) if response.status().is_success() => {}
            _ => return true,
        }
    }
    false
}

/// Whether a sequencer instance or participant replica other than the `killed` ones reports
/// itself not ready (the killed ones cannot answer and would count at once).
async fn any_not_ready_except(deployment: &Deployment, killed: &[String]) -> bool {
    let processes = deployment
        .sequencers
        .iter()
        .chain(&deployment.participants)
        .chain(deployment.participant_standbys.iter().flatten())
        .filter(|p| !killed.iter().any(|k| k == p.name()));
    for process in processes {
        match get_admin(process.admin_address, "/readyz").await {
            Some(response) if response.status().is_success() => {}
            _ => return true,
        }
    }
    false
}

/// Whether the resumed `replica` of `node` reports itself passive while another is active.
async fn became_passive(data_dir: &Path, node: &str, replica: &str) -> bool {
    let deadline = Instant::now() + PASSIVE_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(roles) = replicas::replica_roles(data_dir, node, None).await {
            let role_of = |name: &str| {
                roles
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, role)| role.as_deref())
            };
            let other_active = roles
                .iter()
                .any(|(n, role)| n != replica && role.as_deref() == Some("active"));
            if other_active && role_of(replica) == Some("passive") {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Starts the stopped process `name` again (it comes back passive) once it has exited: a
/// killed one is already reaped; a gracefully stopped one is waited for, not signalled again,
/// which would cut its hand-over short.
pub(crate) async fn restart(deployment: &mut Deployment, name: &str) -> anyhow::Result<()> {
    let exe = deployment.exe().to_path_buf();
    let process = process_named(deployment, name)?;
    process.wait_exit(EXIT_GRACE).await?;
    process.start(&exe)?;
    process.wait_alive(RESTART_TIMEOUT).await
}

pub(crate) fn process_named<'a>(
    deployment: &'a mut Deployment,
    name: &str,
) -> anyhow::Result<&'a mut NodeProcess> {
    deployment
        .processes_mut()
        .into_iter()
        .find(|p| p.name() == name)
        .with_context(|| format!("the deployment runs no process named {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
        entries.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
    }

    #[test]
    fn a_new_offline_mark_is_seen_even_when_the_killed_instance_drops_out() {
        // b marked a offline in an earlier fault; now b is killed and a marks it.
        let before = marks(&[("sequencer-a", 0), ("sequencer-b", 1)]);
        assert!(!marked_another_offline(
            &before,
            &marks(&[("sequencer-a", 0)])
        ));
        assert!(marked_another_offline(
            &before,
            &marks(&[("sequencer-a", 1)])
        ));
        // A restarted instance counts from zero again: no false detection.
        let restarted = marks(&[("sequencer-a", 0), ("sequencer-b", 0)]);
        assert!(!marked_another_offline(&before, &restarted));
    }

    #[test]
    fn every_fault_names_itself_as_its_command_line_value() {
        for fault in Fault::value_variants() {
            let value = fault.to_possible_value().expect("no fault is hidden");
            assert_eq!(value.get_name(), fault.name());
            assert_eq!(
                serde_json::to_value(fault).expect("serializes"),
                serde_json::json!(fault.name())
            );
        }
    }

    #[test]
    fn participant_faults_hit_alices_participant_unless_aimed_elsewhere() {
        assert_eq!(
            Fault::ParticipantCrash.default_node().name(),
            "participant2"
        );
        assert_eq!(Fault::Switchover.nodes(4).len(), 4);
        assert_eq!(Fault::TopologyCrash.nodes(4), vec![Node::TopologyManager]);
        assert_eq!(Fault::DatabaseRestart.default_node().name(), "sequencer");
    }
}
