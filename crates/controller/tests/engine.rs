//! The controller engine driven by a fake clock and a simulated one-machine runtime: every
//! supervision, cold-standby, anti-flapping and plan rule of issue 12, each test failing when
//! its rule breaks.

use std::collections::{BTreeMap, BTreeSet};

use meridian_controller::api::{
    AuditKind, AuditRecord, Command, CommandError, ControllerInfo, ReplicaRole, ReplicaStatus,
    Status,
};
use meridian_controller::engine::{Effect, Engine, Restored, StartReason};
use meridian_controller::model::{
    DatabaseFact, DatabaseRole, Inventory, Observation, ProbeOutcome, RegionSpec, ReplicaSpec,
    ServerSpec, ServingRole, Temperature,
};
use meridian_controller::plan::{
    Actor, Plan, PlanId, PlanKind, PlanState, StepAction, StepOutcome, StepState,
};
use meridian_controller::settings::ControllerSettings;
use meridian_core::placement::{NodeKind, NodeName, RegionName, ReplicaName, ServerName};
use meridian_core::Timestamp;
use proptest::prelude::*;

const START_MS: u64 = 1_700_000_000_000;

fn ms(t: u64) -> Timestamp {
    Timestamp::from_micros(t * 1_000)
}

fn r(name: &str) -> ReplicaName {
    ReplicaName::from(name)
}

fn spec(
    name: &str,
    node: &str,
    kind: NodeKind,
    region: &str,
    zone: &str,
    temperature: Temperature,
) -> ReplicaSpec {
    ReplicaSpec {
        name: r(name),
        node: NodeName::from(node),
        kind,
        region: RegionName::from(region),
        zone: zone.into(),
        temperature,
        active_active: kind == NodeKind::Sequencer,
    }
}

/// Two regions as the lab's preset places them (region-1 warm in two zones, region-2 cold),
/// participant1 with a second cold replica, and a third region holding only a cold replica of
/// participant2.
fn inventory() -> Inventory {
    use NodeKind::*;
    use Temperature::*;
    let mut replicas = vec![
        spec(
            "sequencer-a",
            "sequencer",
            Sequencer,
            "region-1",
            "zone-1a",
            Warm,
        ),
        spec(
            "sequencer-b",
            "sequencer",
            Sequencer,
            "region-1",
            "zone-1b",
            Warm,
        ),
        spec(
            "sequencer-c",
            "sequencer",
            Sequencer,
            "region-2",
            "zone-2a",
            Cold,
        ),
    ];
    for (node, kind) in [
        ("topology", TopologyManager),
        ("mediator", Mediator),
        ("participant1", Participant),
        ("participant2", Participant),
    ] {
        replicas.push(spec(
            &format!("{node}-a"),
            node,
            kind,
            "region-1",
            "zone-1a",
            Warm,
        ));
        replicas.push(spec(
            &format!("{node}-b"),
            node,
            kind,
            "region-1",
            "zone-1b",
            Warm,
        ));
        replicas.push(spec(
            &format!("{node}-c"),
            node,
            kind,
            "region-2",
            "zone-2a",
            Cold,
        ));
        if node == "participant1" {
            replicas.push(spec(
                "participant1-d",
                node,
                kind,
                "region-2",
                "zone-2a",
                Cold,
            ));
        }
        if node == "participant2" {
            replicas.push(spec(
                "participant2-z",
                node,
                kind,
                "region-3",
                "zone-3a",
                Cold,
            ));
        }
    }
    Inventory {
        regions: vec![
            RegionSpec {
                name: "region-1".into(),
                zones: vec!["zone-1a".into(), "zone-1b".into()],
            },
            RegionSpec {
                name: "region-2".into(),
                zones: vec!["zone-2a".into()],
            },
            RegionSpec {
                name: "region-3".into(),
                zones: vec!["zone-3a".into()],
            },
        ],
        replicas,
        servers: Vec::new(),
    }
}

fn postgres_inventory() -> Inventory {
    let mut inventory = inventory();
    inventory.servers = vec![
        ServerSpec {
            name: "pg-1a".into(),
            cluster: "main".into(),
            region: "region-1".into(),
            zone: "zone-1a".into(),
            placed_as: DatabaseRole::Primary,
        },
        ServerSpec {
            name: "pg-1b".into(),
            cluster: "main".into(),
            region: "region-1".into(),
            zone: "zone-1b".into(),
            placed_as: DatabaseRole::SyncStandby,
        },
        ServerSpec {
            name: "pg-2a".into(),
            cluster: "main".into(),
            region: "region-2".into(),
            zone: "zone-2a".into(),
            placed_as: DatabaseRole::AsyncStandby,
        },
    ];
    inventory
}

fn info() -> ControllerInfo {
    ControllerInfo {
        replica: "controller-a".into(),
        active: true,
        active_replica: Some("controller-a".into()),
    }
}

/// The engine with a simulated runtime around it: processes (running, frozen, broken), probes
/// derived from them, effects carried out in order, plan steps run (or held for the test).
struct Sim {
    engine: Engine,
    settings: ControllerSettings,
    inventory: Inventory,
    now_ms: u64,
    running: BTreeMap<ReplicaName, u32>,
    frozen: BTreeSet<ReplicaName>,
    /// Processes that exit right after they start.
    broken: BTreeSet<ReplicaName>,
    /// Replicas whose host is gone: a start runs no process at all.
    lost: BTreeSet<ReplicaName>,
    next_pid: u32,
    /// Every effect, in order.
    log: Vec<Effect>,
    /// Run plan steps as soon as they are asked for (else they wait in `pending_steps`).
    run_steps: bool,
    /// What a step answers (Done by default).
    step_outcome: Box<dyn Fn(&StepAction) -> StepOutcome>,
    pending_steps: Vec<(PlanId, usize, StepAction)>,
}

impl Sim {
    fn new(settings: ControllerSettings) -> Self {
        Self::with(settings, inventory(), Restored::default(), None)
    }

    /// A controller taking over: the processes that run (`adopt`, else every warm one, as
    /// `prepare` starts them) are adopted, then the engine resumes.
    fn with(
        settings: ControllerSettings,
        inventory: Inventory,
        restored: Restored,
        adopt: Option<BTreeMap<ReplicaName, u32>>,
    ) -> Self {
        let now_ms = START_MS;
        let engine = Engine::new(settings.clone(), inventory.clone(), restored, ms(now_ms));
        let mut sim = Self {
            engine,
            settings,
            inventory,
            now_ms,
            running: BTreeMap::new(),
            frozen: BTreeSet::new(),
            broken: BTreeSet::new(),
            lost: BTreeSet::new(),
            next_pid: 100,
            log: Vec::new(),
            run_steps: true,
            step_outcome: Box::new(|action| StepOutcome::Done(action.describe())),
            pending_steps: Vec::new(),
        };
        let adopt = adopt.unwrap_or_else(|| {
            sim.inventory
                .replicas
                .iter()
                .filter(|s| s.temperature == Temperature::Warm)
                .zip(1_u32..)
                .map(|(s, pid)| (s.name.clone(), pid))
                .collect()
        });
        for (name, pid) in adopt {
            sim.running.insert(name.clone(), pid);
            let effects = sim
                .engine
                .observe(sim.now(), Observation::Started { replica: name, pid });
            sim.carry(effects);
        }
        let effects = sim.engine.resume(sim.now());
        sim.carry(effects);
        sim
    }

    fn now(&self) -> Timestamp {
        ms(self.now_ms)
    }

    fn spawn(&mut self, name: &ReplicaName) -> u32 {
        self.next_pid += 1;
        self.running.insert(name.clone(), self.next_pid);
        self.next_pid
    }

    /// Carries out effects like the runtime: starts answer with `Started`, steps run.
    fn carry(&mut self, effects: Vec<Effect>) {
        let mut queue: std::collections::VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            self.log.push(effect.clone());
            match effect {
                Effect::Start { replica, .. } if self.lost.contains(&replica) => {
                    let more = self.engine.observe(
                        self.now(),
                        Observation::StartFailed {
                            replica,
                            error: "its host is gone".to_owned(),
                        },
                    );
                    queue.extend(more);
                }
                Effect::Start { replica, .. } => {
                    let pid = match self.running.get(&replica) {
                        Some(pid) => *pid,
                        None => self.spawn(&replica),
                    };
                    let more = self
                        .engine
                        .observe(self.now(), Observation::Started { replica, pid });
                    queue.extend(more);
                }
                Effect::RunStep { plan, step, action } => {
                    if self.run_steps {
                        let more = self.run_step(&plan, step, &action);
                        queue.extend(more);
                    } else {
                        self.pending_steps.push((plan, step, action));
                    }
                }
                Effect::SavePlan(_) | Effect::Audit(_) => {}
            }
        }
    }

    /// Does what the step says to the simulated processes, then reports its outcome.
    fn run_step(&mut self, plan: &PlanId, step: usize, action: &StepAction) -> Vec<Effect> {
        let mut effects = Vec::new();
        let outcome = (self.step_outcome)(action);
        if !matches!(outcome, StepOutcome::Failed(_)) {
            match action {
                StepAction::FenceRegion { replicas, .. } => {
                    for name in replicas {
                        if self.running.remove(name).is_some() {
                            self.frozen.remove(name);
                            effects.extend(self.engine.observe(
                                self.now(),
                                Observation::Exited {
                                    replica: name.clone(),
                                    code: None,
                                },
                            ));
                        }
                    }
                }
                StepAction::StartReplicas { replicas, .. } => {
                    for name in replicas {
                        if !self.running.contains_key(name) {
                            let pid = self.spawn(name);
                            effects.extend(self.engine.observe(
                                self.now(),
                                Observation::Started {
                                    replica: name.clone(),
                                    pid,
                                },
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        effects.extend(self.engine.step_finished(self.now(), plan, step, outcome));
        effects
    }

    /// What a probe of `spec` answers now: live when its process runs and is not frozen;
    /// the first live replica of a node answers active, the others passive.
    fn probe_of(&self, spec: &ReplicaSpec) -> ProbeOutcome {
        let alive =
            |name: &ReplicaName| self.running.contains_key(name) && !self.frozen.contains(name);
        if !alive(&spec.name) {
            return ProbeOutcome::unreachable("connection refused");
        }
        if spec.active_active {
            return ProbeOutcome {
                live: true,
                ready: true,
                reason: None,
                role: Some(ServingRole::Single),
            };
        }
        let first_alive = self
            .inventory
            .replicas_of(&spec.node)
            .find(|other| alive(&other.name))
            .map(|other| other.name.clone());
        if first_alive.as_ref() == Some(&spec.name) {
            ProbeOutcome {
                live: true,
                ready: true,
                reason: None,
                role: Some(ServingRole::Active),
            }
        } else {
            ProbeOutcome {
                live: true,
                ready: false,
                reason: Some("passive: waiting for the lease".into()),
                role: Some(ServingRole::Passive),
            }
        }
    }

    /// One probe interval: broken processes exit, every warm or running replica is probed
    /// (as the runtime does), then the engine ticks.
    fn round(&mut self) {
        self.now_ms += self.settings.probe_interval_ms;
        let broken: Vec<ReplicaName> = self
            .broken
            .iter()
            .filter(|name| self.running.contains_key(*name))
            .cloned()
            .collect();
        for name in broken {
            self.running.remove(&name);
            let effects = self.engine.observe(
                self.now(),
                Observation::Exited {
                    replica: name,
                    code: Some(1),
                },
            );
            self.carry(effects);
        }
        let probed: Vec<ReplicaSpec> = self
            .inventory
            .replicas
            .iter()
            .filter(|s| s.temperature == Temperature::Warm || self.running.contains_key(&s.name))
            .cloned()
            .collect();
        for spec in probed {
            let outcome = self.probe_of(&spec);
            let effects = self.engine.observe(
                self.now(),
                Observation::Probe {
                    replica: spec.name.clone(),
                    outcome,
                },
            );
            self.carry(effects);
        }
        let effects = self.engine.tick(self.now());
        self.carry(effects);
    }

    fn run_for(&mut self, duration_ms: u64) {
        let end = self.now_ms + duration_ms;
        while self.now_ms < end {
            self.round();
        }
    }

    fn kill(&mut self, name: &str) {
        self.running.remove(&r(name));
        let effects = self.engine.observe(
            self.now(),
            Observation::Exited {
                replica: r(name),
                code: None,
            },
        );
        self.carry(effects);
    }

    fn command(&mut self, command: Command) -> Result<Plan, CommandError> {
        let (answer, effects) = self.engine.command(self.now(), command);
        if answer.is_err() {
            assert!(
                effects.is_empty() || matches!(answer, Err(CommandError::Expired { .. })),
                "a refused command had effects: {effects:?}"
            );
        }
        self.carry(effects);
        answer.map(|outcome| outcome.plan)
    }

    fn status(&self) -> Status {
        self.engine.status(info(), Vec::new())
    }

    fn replica(&self, name: &str) -> ReplicaStatus {
        self.status()
            .regions
            .into_iter()
            .flat_map(|region| region.zones)
            .flat_map(|zone| zone.replicas)
            .find(|replica| replica.name.as_str() == name)
            .expect("the replica is in the status")
    }

    fn starts(&self) -> Vec<(ReplicaName, StartReason)> {
        self.log
            .iter()
            .filter_map(|effect| match effect {
                Effect::Start { replica, reason } => Some((replica.clone(), reason.clone())),
                _ => None,
            })
            .collect()
    }

    fn starts_of(&self, name: &str) -> usize {
        self.starts()
            .iter()
            .filter(|(n, _)| n.as_str() == name)
            .count()
    }

    fn cold_starts(&self) -> Vec<ReplicaName> {
        self.starts()
            .into_iter()
            .filter(|(_, reason)| *reason == StartReason::ColdStandby)
            .map(|(name, _)| name)
            .collect()
    }

    fn records(&self, kind: AuditKind) -> Vec<AuditRecord> {
        self.log
            .iter()
            .filter_map(|effect| match effect {
                Effect::Audit(record) if record.kind == kind => Some(record.clone()),
                _ => None,
            })
            .collect()
    }

    fn run_steps_log(&self) -> Vec<(PlanId, usize)> {
        self.log
            .iter()
            .filter_map(|effect| match effect {
                Effect::RunStep { plan, step, .. } => Some((plan.clone(), *step)),
                _ => None,
            })
            .collect()
    }

    /// The last saved version of every plan and every audit record: what the store holds.
    fn stored(&self) -> Restored {
        let mut plans: BTreeMap<PlanId, Plan> = BTreeMap::new();
        let mut recent_audit = Vec::new();
        for effect in &self.log {
            match effect {
                Effect::SavePlan(plan) => {
                    plans.insert(plan.id.clone(), plan.clone());
                }
                Effect::Audit(record) => recent_audit.push(record.clone()),
                _ => {}
            }
        }
        Restored {
            plans: plans.into_values().collect(),
            recent_audit,
        }
    }

    fn freeze_region(&mut self, region: &str) {
        for spec in self
            .inventory
            .replicas
            .iter()
            .filter(|s| s.region.as_str() == region)
        {
            self.frozen.insert(spec.name.clone());
        }
    }

    fn thaw_all(&mut self) {
        self.frozen.clear();
    }
}

fn switchover(to: &str, components: &[&str]) -> Command {
    Command::ProposeSwitchover {
        to: to.into(),
        components: components.iter().map(|c| NodeName::from(*c)).collect(),
        by: Actor::Operator("ops".into()),
    }
}

fn approve(plan: &PlanId, acknowledge_loss: bool) -> Command {
    Command::Approve {
        plan: plan.clone(),
        by: Actor::Operator("ops".into()),
        acknowledge_loss,
    }
}

fn settings() -> ControllerSettings {
    ControllerSettings::default()
}

// ---- probes and supervision --------------------------------------------------------------

#[test]
fn rise_and_fall_thresholds_and_one_audit_per_transition() {
    let mut sim = Sim::new(settings());
    sim.round();
    // One good probe is not enough (rise = 2).
    assert_eq!(sim.replica("mediator-a").role, ReplicaRole::Starting);
    sim.round();
    assert_eq!(sim.replica("mediator-a").role, ReplicaRole::Active);
    assert_eq!(sim.replica("mediator-b").role, ReplicaRole::Passive);
    sim.run_for(10_000);
    sim.frozen.insert(r("mediator-b"));
    sim.round();
    sim.round();
    assert_eq!(
        sim.replica("mediator-b").role,
        ReplicaRole::Passive,
        "2 < fall"
    );
    sim.round();
    assert_eq!(sim.replica("mediator-b").role, ReplicaRole::Down);
    sim.run_for(5_000);
    let down = sim.records(AuditKind::ReplicaDown);
    assert_eq!(down.len(), 1, "one record per transition: {down:?}");
    assert_eq!(down[0].replica, Some(r("mediator-b")));
    // Frozen (alive, not live): never restarted, and the node still has its active.
    assert_eq!(sim.starts_of("mediator-b"), 0);
    assert!(sim.cold_starts().is_empty());
    sim.thaw_all();
    sim.run_for(1_000);
    assert_eq!(sim.replica("mediator-b").role, ReplicaRole::Passive);
    assert_eq!(sim.records(AuditKind::ReplicaUp).len(), 1);
}

#[test]
fn an_exit_is_restarted_at_once_then_with_doubling_backoff() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    sim.kill("participant1-a");
    // The decision comes with the exit itself, no tick needed.
    assert_eq!(
        sim.starts(),
        vec![(r("participant1-a"), StartReason::Restart { attempt: 1 })]
    );
    sim.run_for(1_000);
    sim.kill("participant1-a");
    assert_eq!(sim.starts_of("participant1-a"), 1, "second restart waits");
    let killed_at = sim.now_ms;
    while sim.starts_of("participant1-a") < 2 {
        sim.round();
    }
    // restart_backoff_initial_ms = 200; the round after the due time.
    let waited = sim.now_ms - killed_at;
    assert!((200..300).contains(&waited), "waited {waited} ms");
    sim.run_for(1_000);
    sim.kill("participant1-a");
    let killed_at = sim.now_ms;
    while sim.starts_of("participant1-a") < 3 {
        sim.round();
    }
    let waited = sim.now_ms - killed_at;
    assert!((400..500).contains(&waited), "waited {waited} ms");
    assert_eq!(
        sim.starts().last(),
        Some(&(r("participant1-a"), StartReason::Restart { attempt: 3 }))
    );
    sim.run_for(1_000);
    assert_eq!(sim.replica("participant1-a").restarts, 3);
    // The warm passive served meanwhile; no cold start.
    assert!(sim.cold_starts().is_empty());
}

#[test]
fn a_crash_loop_is_failed_and_never_restarted_again() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    sim.broken.insert(r("topology-b"));
    sim.run_for(30_000);
    let restarts = sim.starts_of("topology-b");
    assert_eq!(restarts, 5, "crash_loop_restarts = 5");
    let status = sim.replica("topology-b");
    assert_eq!(status.role, ReplicaRole::Failed);
    assert!(
        status
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("crash loop"),
        "{status:?}"
    );
    assert_eq!(sim.records(AuditKind::CrashLoop).len(), 1);
    // Beyond the crash-loop window too.
    sim.run_for(120_000);
    assert_eq!(sim.starts_of("topology-b"), 5);
}

#[test]
fn restarts_through_a_broken_start_count_towards_the_crash_loop() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    // A start that fails comes back as an exit (the runtime's rule).
    sim.broken.insert(r("mediator-a"));
    sim.run_for(60_000);
    assert_eq!(sim.replica("mediator-a").role, ReplicaRole::Failed);
}

// ---- cold standby ---------------------------------------------------------------------------

#[test]
fn a_cold_replica_starts_once_when_the_warm_ones_are_gone() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    sim.frozen.insert(r("participant1-a"));
    sim.frozen.insert(r("participant1-b"));
    // fall = 3 probes of 100 ms: the decision comes with the third failed probe.
    let frozen_at = sim.now_ms;
    while sim.cold_starts().is_empty() && sim.now_ms < frozen_at + 5_000 {
        sim.round();
    }
    assert_eq!(sim.cold_starts(), vec![r("participant1-c")]);
    assert_eq!(
        sim.now_ms - frozen_at,
        300,
        "decided right at the fall threshold"
    );
    assert_eq!(sim.records(AuditKind::ColdStart).len(), 1);
    // It comes up and serves; no second one, ever.
    sim.run_for(60_000);
    assert_eq!(sim.cold_starts().len(), 1);
    assert_eq!(sim.replica("participant1-c").role, ReplicaRole::Active);
    assert_eq!(sim.status().automatic_actions_last_hour, 1);
}

#[test]
fn no_second_cold_replica_while_one_is_starting() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    // The cold replica starts but does not answer yet (a slow replay).
    sim.frozen.insert(r("participant1-c"));
    sim.frozen.insert(r("participant1-a"));
    sim.frozen.insert(r("participant1-b"));
    sim.run_for(1_000);
    assert_eq!(sim.cold_starts(), vec![r("participant1-c")]);
    assert_eq!(sim.replica("participant1-c").role, ReplicaRole::Starting);
    // Within one maximal backoff (5 s) it counts as starting: participant1-d waits.
    sim.run_for(3_500);
    assert_eq!(sim.cold_starts(), vec![r("participant1-c")]);
    sim.thaw_all();
    sim.run_for(10_000);
    assert_eq!(sim.cold_starts().len(), 1);
}

#[test]
fn no_cold_start_while_the_warm_replicas_restart() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    sim.kill("participant2-a");
    sim.kill("participant2-b");
    sim.run_for(10_000);
    assert!(sim.cold_starts().is_empty(), "{:?}", sim.cold_starts());
    assert_eq!(sim.starts_of("participant2-a"), 1);
    assert_eq!(sim.starts_of("participant2-b"), 1);
    assert_eq!(sim.replica("participant2-a").role, ReplicaRole::Active);
}

#[test]
fn warm_replicas_that_crash_loop_give_way_to_a_cold_one_within_one_backoff() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    sim.broken.insert(r("participant2-a"));
    sim.broken.insert(r("participant2-b"));
    let broken_at = sim.now_ms;
    while sim.cold_starts().is_empty() && sim.now_ms < broken_at + 20_000 {
        sim.round();
    }
    assert_eq!(sim.cold_starts(), vec![r("participant2-c")]);
    // At most one maximal backoff (5 s) of waiting for the warm ones, plus a probe.
    assert!(
        sim.now_ms - broken_at <= 5_100,
        "{} ms",
        sim.now_ms - broken_at
    );
}

#[test]
fn a_warm_replica_whose_host_is_gone_does_not_hold_up_the_cold_one() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    // participant1-b is passive and stays; take the node down to participant1-a alone first.
    sim.lost.insert(r("participant1-b"));
    sim.kill("participant1-b");
    sim.run_for(1_000);
    assert!(sim.cold_starts().is_empty(), "participant1-a still serves");
    sim.lost.insert(r("participant1-a"));
    let lost_at = sim.now_ms;
    sim.kill("participant1-a");
    while sim.cold_starts().is_empty() && sim.now_ms < lost_at + 20_000 {
        sim.round();
    }
    assert_eq!(sim.cold_starts(), vec![r("participant1-c")]);
    // A crash-looping warm replica is waited for up to one maximal backoff (the test above);
    // one whose start runs no process at all is not.
    assert!(
        sim.now_ms - lost_at <= 2 * sim.settings.probe_interval_ms,
        "decided {} ms after the loss",
        sim.now_ms - lost_at
    );
    let status = sim.replica("participant1-a");
    assert_eq!(status.role, ReplicaRole::Down);
    assert!(
        status
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("the last start failed: its host is gone")),
        "{status:?}"
    );
    // Its restarts go on with the backoff (the host may come back), and the crash-loop limit
    // still ends them.
    sim.run_for(60_000);
    assert!(sim.starts_of("participant1-a") > 1);
    assert_eq!(sim.replica("participant1-a").role, ReplicaRole::Failed);
    assert_eq!(sim.cold_starts().len(), 1);
}

#[test]
fn the_hourly_cap_holds_a_cold_start_and_says_so_once() {
    let mut sim = Sim::new(ControllerSettings {
        max_automatic_actions_per_hour: 1,
        ..settings()
    });
    sim.run_for(1_000);
    sim.frozen
        .extend([r("participant1-a"), r("participant1-b")]);
    sim.run_for(2_000);
    assert_eq!(sim.cold_starts(), vec![r("participant1-c")]);
    sim.frozen
        .extend([r("participant2-a"), r("participant2-b")]);
    sim.run_for(60_000);
    assert_eq!(sim.cold_starts(), vec![r("participant1-c")], "the cap is 1");
    let held = sim.records(AuditKind::ActionHeld);
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0].detail.contains("cap"), "{}", held[0].detail);
    assert_eq!(sim.replica("participant2-c").role, ReplicaRole::Cold);
    // An hour after the first action, the cap allows it.
    sim.run_for(3_600_000);
    assert_eq!(sim.cold_starts().len(), 2);
}

#[test]
fn a_cold_start_across_regions_waits_for_the_plan_when_the_whole_region_is_down() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    sim.freeze_region("region-1");
    sim.run_for(2_000);
    assert!(sim.cold_starts().is_empty(), "{:?}", sim.cold_starts());
    // One held record per node, not one per probe.
    assert_eq!(sim.records(AuditKind::ActionHeld).len(), 5);
}

// ---- flapping --------------------------------------------------------------------------------

fn flapping_periods() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((100_u64..=500, 100_u64..=500), 200..400)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    /// A node whose warm replicas go up and down every few hundred ms for minutes: at most one
    /// cold start (the first outage longer than the fall threshold) and never a plan.
    #[test]
    fn a_flapping_node_gets_at_most_one_cold_start_and_never_a_plan(periods in flapping_periods()) {
        let mut sim = Sim::new(settings());
        sim.run_for(1_000);
        let mut outages_past_fall = 0;
        for (down_ms, up_ms) in periods {
            sim.frozen.extend([r("participant1-a"), r("participant1-b")]);
            sim.run_for(down_ms);
            if down_ms >= 3 * sim.settings.probe_interval_ms {
                outages_past_fall += 1;
            }
            sim.thaw_all();
            sim.run_for(up_ms);
        }
        let cold = sim.cold_starts();
        prop_assert!(cold.len() <= 1, "{:?}", cold);
        prop_assert!(cold.len() <= outages_past_fall);
        prop_assert!(sim.records(AuditKind::PlanProposed).is_empty());
        prop_assert!(sim.records(AuditKind::PlanApproved).is_empty());
        prop_assert!(sim.records(AuditKind::RegionFailed).is_empty());
    }

    /// A region that goes down for less than the dwell, up, down, … for ten minutes, with
    /// auto-approval on: no plan at all, no cold start across regions.
    #[test]
    fn a_flapping_region_gets_no_plan(
        periods in prop::collection::vec((300_u64..2_900, 300_u64..2_000), 150..250)
    ) {
        let mut sim = Sim::new(ControllerSettings {
            auto_approve: true,
            auto_approve_min_dwell_ms: 0,
            ..settings()
        });
        sim.run_for(1_000);
        let mut elapsed = 0;
        for (down_ms, up_ms) in periods {
            if elapsed > 600_000 {
                break;
            }
            sim.freeze_region("region-1");
            sim.run_for(down_ms);
            sim.thaw_all();
            sim.run_for(up_ms);
            elapsed += down_ms + up_ms;
        }
        prop_assert!(sim.records(AuditKind::PlanProposed).is_empty());
        prop_assert!(sim.records(AuditKind::RegionFailed).is_empty());
        prop_assert!(sim.cold_starts().is_empty(), "{:?}", sim.cold_starts());
    }
}

#[test]
fn a_region_down_past_the_dwell_gets_exactly_one_switchover_in_an_hour_of_flapping() {
    let mut sim = Sim::new(ControllerSettings {
        auto_approve: true,
        auto_approve_min_dwell_ms: 2_000,
        max_automatic_actions_per_hour: 1,
        ..settings()
    });
    sim.run_for(1_000);
    sim.freeze_region("region-1");
    // fall (300 ms) + dwell (3 s) + auto-approval dwell (2 s).
    sim.run_for(6_000);
    assert_eq!(sim.records(AuditKind::RegionFailed).len(), 1);
    let proposed = sim.records(AuditKind::PlanProposed);
    assert_eq!(proposed.len(), 1);
    let approved = sim.records(AuditKind::PlanApproved);
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0].actor, Actor::Controller);
    assert_eq!(sim.records(AuditKind::PlanDone).len(), 1);
    sim.thaw_all();
    sim.run_for(2_000);
    for name in [
        "sequencer-c",
        "topology-c",
        "mediator-c",
        "participant1-c",
        "participant2-c",
    ] {
        let role = sim.replica(name).role;
        assert!(
            matches!(role, ReplicaRole::Active | ReplicaRole::Passive),
            "{name}: {role:?}"
        );
    }
    assert_eq!(sim.replica("participant1-d").role, ReplicaRole::Passive);
    assert_eq!(sim.replica("mediator-a").role, ReplicaRole::Stopped);
    // An hour in which region-2 flaps — sometimes for longer than the dwell.
    let mut rng = 7_u64;
    let hour_end = sim.now_ms + 3_600_000;
    while sim.now_ms < hour_end {
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let down_ms = 300 + (rng >> 33) % 8_000;
        let up_ms = 300 + (rng >> 40) % 20_000;
        sim.freeze_region("region-2");
        sim.run_for(down_ms);
        sim.thaw_all();
        sim.run_for(up_ms);
    }
    assert_eq!(
        sim.records(AuditKind::PlanApproved).len(),
        1,
        "one switchover: the cooldown and the cap hold the rest"
    );
    let runs: BTreeSet<PlanId> = sim.run_steps_log().into_iter().map(|(p, _)| p).collect();
    assert_eq!(runs.len(), 1);
    // Whatever region-2 did, no region-loss plan during the cooldown.
    let cooldown_end = sim.records(AuditKind::PlanDone)[0].at.as_micros() / 1_000 + 60_000;
    assert!(sim
        .records(AuditKind::PlanProposed)
        .iter()
        .skip(1)
        .all(|record| record.at.as_micros() / 1_000 >= cooldown_end));
}

// ---- plans -----------------------------------------------------------------------------------

/// Every refusal: its error, no effect, no change.
#[test]
fn every_refused_command_changes_nothing() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    let check = |sim: &mut Sim, command: Command, expected: fn(&CommandError) -> bool| {
        let before = sim.status();
        let (answer, effects) = sim.engine.command(sim.now(), command.clone());
        let error = answer.expect_err("refused");
        assert!(expected(&error), "{command:?}: {error}");
        assert!(effects.is_empty(), "{command:?}: {effects:?}");
        assert_eq!(sim.status(), before, "{command:?} changed the status");
        error
    };
    let error = check(&mut sim, switchover("region-9", &[]), |e| {
        matches!(e, CommandError::UnknownRegion { .. })
    });
    assert!(
        error.to_string().contains("region-1, region-2, region-3"),
        "{error}"
    );
    let error = check(&mut sim, switchover("region-2", &["participant7"]), |e| {
        matches!(e, CommandError::UnknownComponent { .. })
    });
    assert!(error.to_string().contains("participant1"), "{error}");
    check(&mut sim, switchover("region-1", &[]), |e| {
        matches!(e, CommandError::AlreadyThere { .. })
    });
    let error = check(&mut sim, switchover("region-3", &["participant1"]), |e| {
        matches!(e, CommandError::NoReplicaThere { .. })
    });
    assert!(error.to_string().contains("participant1"), "{error}");
    check(&mut sim, approve(&PlanId::numbered(42), false), |e| {
        matches!(e, CommandError::UnknownPlan { .. })
    });
    let plan = sim
        .command(switchover("region-2", &["participant1"]))
        .expect("proposed");
    check(&mut sim, switchover("region-2", &["participant2"]), |e| {
        matches!(e, CommandError::PlanOpen { .. })
    });
    sim.run_steps = false;
    sim.command(approve(&plan.id, false)).expect("approved");
    check(&mut sim, approve(&plan.id, false), |e| {
        matches!(e, CommandError::NotAwaitingApproval { .. })
    });
    check(
        &mut sim,
        Command::Reject {
            plan: plan.id.clone(),
            by: Actor::Operator("ops".into()),
        },
        |e| matches!(e, CommandError::NotAwaitingApproval { .. }),
    );
    // The plan runs to the end; the cooldown refuses the next one.
    sim.run_steps = true;
    for (plan, step, action) in std::mem::take(&mut sim.pending_steps) {
        let effects = sim.run_step(&plan, step, &action);
        sim.carry(effects);
    }
    assert_eq!(sim.records(AuditKind::PlanDone).len(), 1);
    sim.run_for(1_000);
    check(&mut sim, switchover("region-2", &["participant2"]), |e| {
        matches!(e, CommandError::Cooldown { .. })
    });
    sim.run_for(60_000);
    sim.command(switchover("region-2", &["participant2"]))
        .expect("after the cooldown");
}

#[test]
fn approving_twice_fails_and_runs_nothing_twice() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    sim.run_steps = false;
    let plan = sim.command(switchover("region-2", &[])).expect("proposed");
    sim.command(approve(&plan.id, false)).expect("approved");
    let error = sim.command(approve(&plan.id, false)).expect_err("twice");
    assert!(
        matches!(error, CommandError::NotAwaitingApproval { .. }),
        "{error}"
    );
    assert_eq!(error.http_status(), 409);
    assert_eq!(sim.run_steps_log(), vec![(plan.id.clone(), 0)]);
    assert_eq!(sim.records(AuditKind::PlanApproved).len(), 1);
}

#[test]
fn an_expired_plan_cannot_be_approved_and_expires_on_a_tick_too() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    let plan = sim.command(switchover("region-2", &[])).expect("proposed");
    sim.now_ms += 600_000;
    let error = sim.command(approve(&plan.id, false)).expect_err("expired");
    assert!(matches!(error, CommandError::Expired { .. }), "{error}");
    assert_eq!(sim.records(AuditKind::PlanExpired).len(), 1);
    assert!(sim.run_steps_log().is_empty());
    let error = sim.command(approve(&plan.id, false)).expect_err("expired");
    assert!(
        matches!(error, CommandError::NotAwaitingApproval { .. }),
        "{error}"
    );
    // Another one expires by the clock alone.
    let plan = sim.command(switchover("region-2", &[])).expect("proposed");
    sim.run_for(600_000);
    assert_eq!(sim.records(AuditKind::PlanExpired).len(), 2);
    let status = sim.status();
    let listed = status
        .plans
        .iter()
        .find(|p| p.id == plan.id)
        .expect("listed");
    assert!(matches!(listed.state, PlanState::Expired { .. }));
    assert!(sim.run_steps_log().is_empty());
}

#[test]
fn a_switchover_runs_its_steps_in_order_to_done() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    let plan = sim.command(switchover("region-2", &[])).expect("proposed");
    let actions: Vec<&StepAction> = plan.steps.iter().map(|s| &s.action).collect();
    let fence = StepAction::FenceRegion {
        region: "region-1".into(),
        replicas: sim
            .inventory
            .replicas
            .iter()
            .filter(|s| s.region.as_str() == "region-1")
            .map(|s| s.name.clone())
            .collect(),
    };
    assert_eq!(actions[0], &fence);
    assert_eq!(
        actions[1],
        &StepAction::PromoteDatabases { servers: vec![] }
    );
    let kinds: Vec<NodeKind> = actions
        .iter()
        .filter_map(|a| match a {
            StepAction::StartReplicas { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, NodeKind::START_ORDER);
    assert_eq!(
        actions[6],
        &StepAction::WaitReady {
            replicas: [
                "sequencer-c",
                "topology-c",
                "mediator-c",
                "participant1-c",
                "participant1-d",
                "participant2-c"
            ]
            .map(r)
            .to_vec()
        }
    );
    assert_eq!(
        actions[7],
        &StepAction::MoveLoadBalancer {
            region: "region-2".into()
        }
    );
    assert_eq!(plan.from_region.as_str(), "region-1");
    assert_eq!(plan.expires_at, ms(sim.now_ms + 600_000));
    sim.command(approve(&plan.id, false)).expect("approved");
    let steps: Vec<usize> = sim
        .run_steps_log()
        .into_iter()
        .map(|(_, step)| step)
        .collect();
    assert_eq!(steps, (0..8).collect::<Vec<_>>());
    assert_eq!(sim.records(AuditKind::StepFinished).len(), 8);
    assert_eq!(sim.records(AuditKind::PlanDone).len(), 1);
    // The SavePlan of each step's start precedes its RunStep.
    let first_run = sim
        .log
        .iter()
        .position(|e| matches!(e, Effect::RunStep { .. }))
        .expect("ran");
    assert!(matches!(
        &sim.log[first_run - 2..first_run],
        [Effect::Audit(_), Effect::Audit(_)]
    ));
    let saved = sim.log[..first_run]
        .iter()
        .rev()
        .find_map(|e| match e {
            Effect::SavePlan(plan) => Some(plan.clone()),
            _ => None,
        })
        .expect("saved before running");
    assert!(matches!(saved.steps[0].state, StepState::Running { .. }));
    assert!(matches!(saved.state, PlanState::Running { .. }));
    // Fenced processes exited during the plan: none restarted.
    sim.run_for(30_000);
    for spec in sim.inventory.replicas.clone() {
        if spec.region.as_str() == "region-1" {
            assert_eq!(sim.starts_of(spec.name.as_str()), 0, "{}", spec.name);
            assert_eq!(sim.replica(spec.name.as_str()).role, ReplicaRole::Stopped);
        }
    }
    assert!(sim.cold_starts().is_empty());
    assert!(sim.status().cooldown_until.is_some());
    // The region-2 replicas a plan started are supervised: an exit is restarted.
    sim.kill("mediator-c");
    assert_eq!(sim.starts_of("mediator-c"), 1);
    // And the deployment is where it went.
    let error = sim.command(switchover("region-2", &[])).expect_err("there");
    assert!(matches!(
        error,
        CommandError::Cooldown { .. } | CommandError::AlreadyThere { .. }
    ));
    sim.run_for(60_000);
    let error = sim.command(switchover("region-2", &[])).expect_err("there");
    assert!(
        matches!(error, CommandError::AlreadyThere { .. }),
        "{error}"
    );
}

#[test]
fn a_failed_step_fails_the_plan_and_runs_no_further_step() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    sim.step_outcome = Box::new(|action| match action {
        StepAction::StartReplicas {
            kind: NodeKind::Mediator,
            ..
        } => StepOutcome::Failed("mediator-c did not start".into()),
        other => StepOutcome::Done(other.describe()),
    });
    let plan = sim.command(switchover("region-2", &[])).expect("proposed");
    sim.command(approve(&plan.id, false)).expect("approved");
    let steps: Vec<usize> = sim
        .run_steps_log()
        .into_iter()
        .map(|(_, step)| step)
        .collect();
    assert_eq!(steps, vec![0, 1, 2, 3, 4]);
    let failed = sim.records(AuditKind::PlanFailed);
    assert_eq!(failed.len(), 1);
    assert!(failed[0].detail.contains("mediator-c did not start"));
    let status = sim.status();
    assert!(matches!(status.plans[0].state, PlanState::Failed { .. }));
    // The cooldown runs after a failed plan too.
    let error = sim
        .command(switchover("region-1", &[]))
        .expect_err("cooldown");
    assert!(matches!(error, CommandError::Cooldown { .. }), "{error}");
    // A stale report of the failed step changes nothing.
    let effects =
        sim.engine
            .step_finished(sim.now(), &plan.id, 4, StepOutcome::Done("late".into()));
    assert!(effects.is_empty());
}

#[test]
fn a_component_plan_moves_only_that_component() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    let plan = sim
        .command(switchover("region-2", &["participant2"]))
        .expect("proposed");
    assert_eq!(plan.components, vec![NodeName::from("participant2")]);
    for step in &plan.steps {
        let names: Vec<ReplicaName> = match &step.action {
            StepAction::FenceRegion { replicas, .. }
            | StepAction::StartReplicas { replicas, .. }
            | StepAction::WaitReady { replicas } => replicas.clone(),
            _ => Vec::new(),
        };
        assert!(
            names
                .iter()
                .all(|n| n.as_str().starts_with("participant2-")),
            "{:?}",
            step.action
        );
    }
    assert!(plan.steps.iter().any(|s| matches!(
        &s.action,
        StepAction::StartReplicas { kind: NodeKind::Participant, replicas } if replicas == &vec![r("participant2-c")]
    )));
    sim.command(approve(&plan.id, false)).expect("approved");
    sim.run_for(2_000);
    assert_eq!(sim.replica("participant2-a").role, ReplicaRole::Stopped);
    assert_eq!(sim.replica("participant2-c").role, ReplicaRole::Active);
    assert_eq!(sim.replica("participant1-a").role, ReplicaRole::Active);
    // region-1 still has its other nodes: not failed, no plan of the controller's own.
    sim.run_for(10_000);
    assert!(sim.records(AuditKind::RegionFailed).is_empty());
}

#[test]
fn a_region_loss_needs_the_loss_acknowledged_and_states_the_lag() {
    let mut sim = Sim::with(settings(), postgres_inventory(), Restored::default(), None);
    sim.run_for(1_000);
    let fact = |server: &str, role, lag| DatabaseFact {
        server: ServerName::from(server),
        reachable: true,
        role: Some(role),
        lag_bytes: lag,
        read_at: ms(START_MS + 900),
    };
    let effects = sim.engine.observe(
        sim.now(),
        Observation::Databases(vec![
            fact("pg-1a", DatabaseRole::Primary, None),
            fact("pg-1b", DatabaseRole::SyncStandby, Some(0)),
            fact("pg-2a", DatabaseRole::AsyncStandby, Some(4_096)),
        ]),
    );
    sim.carry(effects);
    sim.freeze_region("region-1");
    sim.run_for(4_000);
    let proposed = sim.records(AuditKind::PlanProposed);
    assert_eq!(proposed.len(), 1, "{proposed:?}");
    let plan = sim.status().plans[0].clone();
    assert_eq!(plan.kind, PlanKind::RegionLoss);
    assert_eq!(plan.proposed_by, Actor::Controller);
    let loss = plan
        .data_loss
        .clone()
        .expect("a region loss states its loss");
    assert_eq!(loss.lag_bytes, vec![("main".into(), 4_096)]);
    // No catch-up on a region loss; the standby in the target region is promoted.
    assert!(!plan
        .steps
        .iter()
        .any(|s| matches!(s.action, StepAction::WaitForCatchUp { .. })));
    assert!(plan.steps.iter().any(|s| s.action
        == StepAction::PromoteDatabases {
            servers: vec!["pg-2a".into()]
        }));
    let before = sim.status();
    let error = sim
        .command(approve(&plan.id, false))
        .expect_err("needs the acknowledgement");
    assert!(matches!(error, CommandError::LossNotAcknowledged { .. }));
    assert!(error.to_string().contains("4096 bytes"), "{error}");
    assert_eq!(sim.status(), before);
    sim.command(approve(&plan.id, true)).expect("acknowledged");
    assert_eq!(sim.records(AuditKind::PlanDone).len(), 1);
    // A planned switchover on PostgreSQL waits for the catch-up first.
    sim.thaw_all();
    sim.run_for(61_000);
    let back = sim.command(switchover("region-1", &[])).expect("proposed");
    let actions: Vec<&StepAction> = back.steps.iter().map(|s| &s.action).collect();
    assert!(matches!(actions[0], StepAction::FenceRegion { .. }));
    assert!(matches!(actions[1], StepAction::WaitForCatchUp { .. }));
    assert!(matches!(actions[2], StepAction::PromoteDatabases { .. }));
}

#[test]
fn without_auto_approval_the_controller_proposes_once_and_waits() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    sim.freeze_region("region-1");
    sim.run_for(60_000);
    assert_eq!(sim.records(AuditKind::PlanProposed).len(), 1);
    assert!(sim.run_steps_log().is_empty());
    assert!(sim.records(AuditKind::PlanApproved).is_empty());
    let plan = &sim.status().plans[0];
    assert_eq!(plan.to_region.as_str(), "region-2");
    assert_eq!(plan.components.len(), 5);
}

// ---- controller failover -----------------------------------------------------------------------

#[test]
fn a_new_controller_resumes_the_unfinished_step_and_never_repeats_a_finished_one() {
    let mut first = Sim::new(settings());
    first.run_for(1_000);
    first.run_steps = false;
    let plan = first
        .command(switchover("region-2", &[]))
        .expect("proposed");
    first.command(approve(&plan.id, false)).expect("approved");
    // Steps 0..3 finish; step 3 is running when the controller dies.
    for _ in 0..3 {
        let (id, step, action) = first.pending_steps.remove(0);
        let effects = first.run_step(&id, step, &action);
        first.carry(effects);
    }
    assert_eq!(first.pending_steps.len(), 1);
    assert_eq!(first.pending_steps[0].1, 3);
    let stored = first.stored();

    // The processes the first one left: region-2's sequencer and topology manager.
    let mut second = Sim::with(settings(), inventory(), stored, Some(first.running.clone()));
    assert_eq!(second.run_steps_log().first(), Some(&(plan.id.clone(), 3)));
    let resumed = second.log.iter().find_map(|e| match e {
        Effect::Audit(record) if record.kind == AuditKind::StepStarted => Some(record.clone()),
        _ => None,
    });
    assert!(resumed
        .expect("step 3 started again")
        .detail
        .contains("again"));
    assert_eq!(second.records(AuditKind::ControllerActive).len(), 1);
    second.run_for(2_000);
    let steps: Vec<usize> = second.run_steps_log().into_iter().map(|(_, s)| s).collect();
    assert_eq!(
        steps,
        vec![3, 4, 5, 6, 7],
        "each step once across both controllers"
    );
    assert_eq!(second.records(AuditKind::PlanDone).len(), 1);
    // The fenced region stays stopped under the new controller.
    for name in ["mediator-a", "participant1-b"] {
        assert_eq!(second.replica(name).role, ReplicaRole::Stopped);
        assert_eq!(second.starts_of(name), 0);
    }
    // Plan ids continue; the cooldown came back from the audit log.
    let stored = second.stored();
    let mut third = Sim::with(
        settings(),
        inventory(),
        stored,
        Some(second.running.clone()),
    );
    third.run_for(1_000);
    assert!(third.run_steps_log().is_empty());
    let error = third
        .command(switchover("region-1", &[]))
        .expect_err("cooldown");
    assert!(matches!(error, CommandError::Cooldown { .. }), "{error}");
    third.run_for(60_000);
    let next = third
        .command(switchover("region-1", &[]))
        .expect("proposed");
    assert_eq!(next.id, PlanId::numbered(2));
}

#[test]
fn a_stale_step_report_is_ignored() {
    let mut sim = Sim::new(settings());
    sim.run_for(1_000);
    sim.run_steps = false;
    let plan = sim.command(switchover("region-2", &[])).expect("proposed");
    sim.command(approve(&plan.id, false)).expect("approved");
    let before = sim.status();
    for (id, step) in [(plan.id.clone(), 1), (PlanId::numbered(9), 0)] {
        let effects = sim
            .engine
            .step_finished(sim.now(), &id, step, StepOutcome::Done("x".into()));
        assert!(effects.is_empty());
    }
    assert_eq!(sim.status(), before);
    let effects = sim.engine.step_finished(
        sim.now(),
        &plan.id,
        0,
        StepOutcome::AlreadyDone("fenced".into()),
    );
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::RunStep { step: 1, .. })));
    let again = sim
        .engine
        .step_finished(sim.now(), &plan.id, 0, StepOutcome::Done("twice".into()));
    assert!(again.is_empty(), "a step reported twice moves nothing");
}
