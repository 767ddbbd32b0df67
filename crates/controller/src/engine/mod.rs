//! Every decision the controller makes, sans I/O: observations, commands and the clock go in,
//! effects come out, in the order the runtime must carry them out (persist before act).
//! Replaying the same inputs gives the same effects, so every policy is unit-tested without a
//! process or a socket.
//!
//! The jobs, one module each: [`probe`] (rise/fall), [`supervise`] (restart backoff, crash
//! loops, what a replica is meant to do), [`regions`] (region health with dwell), [`plans`]
//! (plan building and the plan state machine), [`policy`] (cooldown, hourly cap); this module
//! ties them together and holds the node-level rules (cold standby, region-loss proposals,
//! auto-approval); [`status`] renders the state for the API.
//!
//! The cold-standby rule, exactly. A node gets ONE cold replica started when, at an
//! observation or a tick:
//! - no replica of it (fenced ones aside) is up by the probes,
//! - no cold replica of it is already starting (or has a restart pending),
//! - no plan moving it is running (the plan starts what it needs),
//! - and no warm replica can come back: none is starting (a (re)started process within one
//!   maximal backoff, `restart_backoff_max_ms`), has a restart pending, or has no verdict yet —
//!   or the node has been without an up replica for longer than that one maximal backoff, after
//!   which the controller stops waiting for the warm ones.
//!
//! The cold replica is picked in the region of the node's last active replica, else the first
//! in the file. One in another region is held back (audited once) while the node's own region
//! is down or going down as a whole — no replica there both up and answering its latest probe:
//! a region outage is the region-loss plan's decision, with its approval, not a cold start's.
//! The decision is taken on ticks (after each round of probes), so within one probe interval
//! of the fall threshold. The start counts against the hourly cap; at the cap it is held
//! (audited once per outage).

mod plans;
mod policy;
mod probe;
mod regions;
mod status;
mod supervise;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meridian_core::placement::{NodeName, RegionName, ReplicaName, ServerName};
use meridian_core::Timestamp;

use crate::api::{
    AuditKind, AuditRecord, Command, CommandError, CommandOutcome, ControllerInfo, Status,
};
use crate::model::{DatabaseFact, Inventory, Observation, ServingRole, Temperature};
use crate::plan::{
    Actor, Decision, Plan, PlanId, PlanKind, PlanState, StepAction, StepOutcome, StepState,
};
use crate::settings::ControllerSettings;

use plans::Progress;
use policy::Policy;
use probe::{ProbeClass, Transition, Verdict};
use regions::{Presence, RegionEvent, RegionState};
use supervise::{comeback_grace, Intent, ReplicaState, Scheduled};

/// How many finished plans the engine keeps in memory (the store keeps them all).
const KEPT_FINISHED_PLANS: usize = 100;

/// Why the engine wants a process started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartReason {
    /// A warm replica's process exited (or never came up); the n-th restart in the window.
    Restart { attempt: u32 },
    /// The node has no replica left that could serve, and no warm one to take over.
    ColdStandby,
}

/// What the runtime must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Persist the plan (upsert by id) before any later effect of the same batch.
    SavePlan(Plan),
    /// Append to the audit log (persisted), then publish it to event subscribers.
    Audit(AuditRecord),
    /// Start the replica's process (idempotent: a running one is left alone).
    Start {
        replica: ReplicaName,
        reason: StartReason,
    },
    /// Run one step of a plan; the runtime answers with [`Engine::step_finished`].
    RunStep {
        plan: PlanId,
        step: usize,
        action: StepAction,
    },
}

/// What a controller taking over restores from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Every plan, any state.
    pub plans: Vec<Plan>,
    /// The audit records of the last hour at least (the hourly cap counts them) and the last
    /// finished switchover (the cooldown starts there).
    pub recent_audit: Vec<AuditRecord>,
}

/// What the engine remembers of a node.
#[derive(Debug, Clone, Default)]
struct NodeState {
    /// Where its active replica was last seen (or where the last plan moved it).
    last_active_region: Option<RegionName>,
    /// Since when no replica of it has been up.
    unserved_since: Option<Timestamp>,
    /// This outage's held cold start was audited (once).
    hold_audited: bool,
}

/// The controller's whole decision state.
#[derive(Debug)]
pub struct Engine {
    settings: ControllerSettings,
    inventory: Inventory,
    /// Open plans and the most recent finished ones, in id order.
    plans: Vec<Plan>,
    next_plan: u64,
    /// One per inventory replica, same order.
    replicas: Vec<ReplicaState>,
    nodes: BTreeMap<NodeName, NodeState>,
    regions: BTreeMap<RegionName, RegionState>,
    policy: Policy,
    databases: BTreeMap<ServerName, DatabaseFact>,
    /// Plans whose held auto-approval was audited (once each).
    auto_approval_held: BTreeSet<PlanId>,
    /// The latest time the engine was given.
    now: Timestamp,
}

impl Engine {
    /// A controller that became active at `now`, with what the store held. A plan found
    /// running continues with its first unfinished step (the step running when the last
    /// controller died runs again: steps are idempotent).
    pub fn new(
        settings: ControllerSettings,
        inventory: Inventory,
        restored: Restored,
        now: Timestamp,
    ) -> Self {
        let replicas = inventory
            .replicas
            .iter()
            .map(|spec| {
                let intent = match spec.temperature {
                    Temperature::Warm => Intent::Supervised,
                    Temperature::Cold => Intent::Idle,
                };
                ReplicaState::new(intent, now)
            })
            .collect();
        let nodes = inventory
            .nodes()
            .into_iter()
            .map(|node| (node.clone(), NodeState::default()))
            .collect();
        let regions = inventory
            .regions
            .iter()
            .map(|region| (region.name.clone(), RegionState::default()))
            .collect();
        let mut plans = restored.plans;
        plans.sort_by_key(|plan| (plans::number(&plan.id), plan.created_at));
        let next_plan = plans
            .iter()
            .filter_map(|plan| plans::number(&plan.id))
            .max()
            .map_or(1, |n| n.saturating_add(1));
        let policy = Policy::restore(&restored.recent_audit, &plans);
        let mut engine = Self {
            settings,
            inventory,
            plans: Vec::new(),
            next_plan,
            replicas,
            nodes,
            regions,
            policy,
            databases: BTreeMap::new(),
            auto_approval_held: BTreeSet::new(),
            now,
        };
        // What the plans did to the replicas, in the order they did it: fenced ones stay
        // stopped, started ones are supervised.
        for plan in &plans {
            for step in &plan.steps {
                match (&step.action, &step.state) {
                    (StepAction::FenceRegion { replicas, .. }, StepState::Running { .. })
                    | (StepAction::FenceRegion { replicas, .. }, StepState::Finished { .. }) => {
                        engine.stop_replicas(replicas);
                    }
                    (
                        StepAction::StartReplicas { replicas, .. },
                        StepState::Finished {
                            outcome: StepOutcome::Done(_) | StepOutcome::AlreadyDone(_),
                            ..
                        },
                    ) => engine.supervise_replicas(replicas),
                    _ => {}
                }
            }
            if matches!(plan.state, PlanState::Done { .. }) {
                engine.moved(plan);
            }
        }
        engine.plans = plans;
        engine.prune_plans();
        engine
    }

    pub fn settings(&self) -> &ControllerSettings {
        &self.settings
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The effects a controller must run right after it became active (resume a running
    /// plan's step, an audit record that it took over).
    pub fn resume(&mut self, now: Timestamp) -> Vec<Effect> {
        self.clock(now);
        let mut effects = vec![Effect::Audit(AuditRecord {
            seq: 0,
            at: now,
            kind: AuditKind::ControllerActive,
            actor: Actor::Controller,
            plan: None,
            step: None,
            replica: None,
            region: None,
            detail: format!(
                "this controller replica is active; {} plan(s) open",
                self.plans.iter().filter(|p| p.state.is_open()).count()
            ),
        })];
        for index in 0..self.plans.len() {
            let plan = &mut self.plans[index];
            if !matches!(plan.state, PlanState::Running { .. }) {
                continue;
            }
            let mut records = Vec::new();
            let run = match plans::first_unfinished(plan) {
                Some(step) => {
                    let again = matches!(plan.steps[step].state, StepState::Running { .. });
                    plans::start_step(plan, step, now, &mut records, again)
                }
                None => {
                    // Every step finished but the plan was not closed: close it now.
                    if let PlanState::Running { approved } = &plan.state {
                        plan.state = PlanState::Done {
                            approved: approved.clone(),
                            at: now,
                        };
                    }
                    records.push(plans::record(
                        now,
                        AuditKind::PlanDone,
                        Actor::Controller,
                        plan,
                        "every step had finished".to_owned(),
                    ));
                    None
                }
            };
            let plan = plan.clone();
            if matches!(plan.state, PlanState::Done { .. }) {
                self.policy.plan_finished(now);
                self.moved(&plan);
            }
            effects.push(Effect::SavePlan(plan));
            effects.extend(records.into_iter().map(Effect::Audit));
            effects.extend(run);
        }
        self.fence_started_steps(&effects);
        effects
    }

    /// Takes in one observation.
    pub fn observe(&mut self, now: Timestamp, observation: Observation) -> Vec<Effect> {
        self.clock(now);
        let mut effects = Vec::new();
        match observation {
            Observation::Probe { replica, outcome } => {
                let Some(index) = self.index(&replica) else {
                    return Vec::new();
                };
                let grace = comeback_grace(&self.settings);
                let spec = &self.inventory.replicas[index];
                let state = &mut self.replicas[index];
                let class = ProbeClass::of(&outcome);
                let starting = state.starting(now, grace);
                let was = state.health.verdict;
                let transition = state.health.probe(
                    now,
                    class,
                    self.settings.rise,
                    self.settings.fall,
                    starting,
                );
                let active = outcome.live
                    && (outcome.role == Some(ServingRole::Active)
                        || (outcome.role == Some(ServingRole::Single) && outcome.ready));
                if active && state.intent != Intent::Stopped {
                    if let Some(node) = self.nodes.get_mut(&spec.node) {
                        node.last_active_region = Some(spec.region.clone());
                    }
                }
                let detail = outcome
                    .reason
                    .clone()
                    .unwrap_or_else(|| "no reason given".to_owned());
                state.last_probe = Some(outcome);
                match transition {
                    Some(Transition::Up) if was == Verdict::Down => {
                        effects.push(self.replica_record(
                            now,
                            index,
                            AuditKind::ReplicaUp,
                            format!("up after {} good probes", self.settings.rise),
                        ));
                    }
                    Some(Transition::Down { .. }) => {
                        effects.push(self.replica_record(
                            now,
                            index,
                            AuditKind::ReplicaDown,
                            format!("down after {} failed probes: {detail}", self.settings.fall),
                        ));
                    }
                    _ => {}
                }
            }
            Observation::Exited { replica, code } => {
                let how = match code {
                    Some(code) => format!("its process exited with code {code}"),
                    None => "its process was ended by a signal".to_owned(),
                };
                effects.extend(self.process_gone(now, &replica, code, None, how));
            }
            Observation::StartFailed { replica, error } => {
                let how = format!("its process could not be started: {error}");
                effects.extend(self.process_gone(now, &replica, None, Some(error), how));
            }
            Observation::Started { replica, pid } => {
                let Some(index) = self.index(&replica) else {
                    return Vec::new();
                };
                let state = &mut self.replicas[index];
                if state.pid != Some(pid) {
                    state.started_at = Some(now);
                }
                state.pid = Some(pid);
                state.start_in_flight = false;
                state.restart_due = None;
                state.unstartable = None;
                if state.intent == Intent::Idle {
                    // A cold replica that runs was started by a controller (this one's plan
                    // step, or the one before it): supervised from now on.
                    state.intent = Intent::Supervised;
                }
            }
            Observation::Databases(facts) => {
                for fact in facts {
                    if self.inventory.servers.iter().any(|s| s.name == fact.server) {
                        self.databases.insert(fact.server.clone(), fact);
                    }
                }
            }
        }
        effects.extend(self.evaluate(now, false));
        effects
    }

    /// Timers: restarts whose backoff elapsed, dwell times, plan expiry.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Effect> {
        self.clock(now);
        self.evaluate(now, true)
    }

    /// An operator's command: its answer, and the effects (nothing on an error).
    pub fn command(
        &mut self,
        now: Timestamp,
        command: Command,
    ) -> (Result<CommandOutcome, CommandError>, Vec<Effect>) {
        self.clock(now);
        match command {
            Command::ProposeSwitchover { to, components, by } => {
                match self.propose(now, PlanKind::Switchover, to, components, by) {
                    Ok((plan, effects)) => (Ok(CommandOutcome { plan }), effects),
                    Err(error) => (Err(error), Vec::new()),
                }
            }
            Command::Approve {
                plan,
                by,
                acknowledge_loss,
            } => self.decide(now, &plan, by, Some(acknowledge_loss)),
            Command::Reject { plan, by } => self.decide(now, &plan, by, None),
        }
    }

    /// A step's outcome: the plan moves on (next step, done, or failed).
    pub fn step_finished(
        &mut self,
        now: Timestamp,
        plan: &PlanId,
        step: usize,
        outcome: StepOutcome,
    ) -> Vec<Effect> {
        self.clock(now);
        let Some(index) = self.plans.iter().position(|p| &p.id == plan) else {
            return Vec::new();
        };
        let target = &mut self.plans[index];
        let Some(progress) = plans::finish_step(target, step, outcome.clone(), now) else {
            // Stale: another step, a plan no longer running, a step reported twice.
            return Vec::new();
        };
        let action = target.steps[step].action.clone();
        let mut records = vec![crate::api::AuditRecord {
            step: Some(step),
            ..plans::record(
                now,
                AuditKind::StepFinished,
                Actor::Controller,
                target,
                format!(
                    "{}: {}",
                    action.describe(),
                    plans::describe_outcome(&outcome)
                ),
            )
        }];
        let mut run = None;
        match &progress {
            Progress::Next(next) => {
                run = plans::start_step(target, *next, now, &mut records, false);
            }
            Progress::Done => records.push(plans::record(
                now,
                AuditKind::PlanDone,
                Actor::Controller,
                target,
                format!("{} now in {}", plans::plan_scope(target), target.to_region),
            )),
            Progress::Failed(error) => records.push(plans::record(
                now,
                AuditKind::PlanFailed,
                Actor::Controller,
                target,
                format!("step {step} failed: {error}"),
            )),
        }
        let saved = target.clone();
        if !matches!(progress, Progress::Failed(_)) {
            if let StepAction::StartReplicas { replicas, .. } = &action {
                self.supervise_replicas(replicas);
            }
        }
        match progress {
            Progress::Done => {
                self.policy.plan_finished(now);
                self.moved(&saved);
            }
            Progress::Failed(_) => self.policy.plan_finished(now),
            Progress::Next(_) => {}
        }
        let mut effects = vec![Effect::SavePlan(saved)];
        effects.extend(records.into_iter().map(Effect::Audit));
        effects.extend(run);
        self.fence_started_steps(&effects);
        self.prune_plans();
        effects
    }

    /// The status the API serves (regions → zones → replicas, plans, cooldown, cap), for
    /// the controller replica `controller`; `events` are the latest audit records.
    pub fn status(&self, controller: ControllerInfo, events: Vec<AuditRecord>) -> Status {
        status::render(self, controller, events)
    }

    // ---- internals -------------------------------------------------------------------

    fn clock(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
    }

    fn index(&self, replica: &ReplicaName) -> Option<usize> {
        self.inventory
            .replicas
            .iter()
            .position(|spec| &spec.name == replica)
    }

    fn replica_record(
        &self,
        now: Timestamp,
        index: usize,
        kind: AuditKind,
        detail: String,
    ) -> Effect {
        let spec = &self.inventory.replicas[index];
        Effect::Audit(AuditRecord {
            seq: 0,
            at: now,
            kind,
            actor: Actor::Controller,
            plan: None,
            step: None,
            replica: Some(spec.name.clone()),
            region: Some(spec.region.clone()),
            detail,
        })
    }

    fn region_record(
        now: Timestamp,
        region: &RegionName,
        kind: AuditKind,
        detail: String,
    ) -> Effect {
        Effect::Audit(AuditRecord {
            seq: 0,
            at: now,
            kind,
            actor: Actor::Controller,
            plan: None,
            step: None,
            replica: None,
            region: Some(region.clone()),
            detail,
        })
    }

    fn stop_replicas(&mut self, names: &[ReplicaName]) {
        for name in names {
            if let Some(index) = self.index(name) {
                self.replicas[index].stop();
            }
        }
    }

    fn supervise_replicas(&mut self, names: &[ReplicaName]) {
        for name in names {
            if let Some(index) = self.index(name) {
                self.replicas[index].supervise_afresh();
            }
        }
    }

    /// A fence step that starts stops its replicas at once, so that their exits while it
    /// runs are not answered with restarts.
    fn fence_started_steps(&mut self, effects: &[Effect]) {
        for effect in effects {
            if let Effect::RunStep {
                action: StepAction::FenceRegion { replicas, .. },
                ..
            } = effect
            {
                self.stop_replicas(replicas);
            }
        }
    }

    /// A plan is done: its nodes are active in its target region now.
    fn moved(&mut self, plan: &Plan) {
        for node in &plan.components {
            if let Some(state) = self.nodes.get_mut(node) {
                state.last_active_region = Some(plan.to_region.clone());
            }
        }
    }

    /// Keeps the open plans and the most recent finished ones.
    fn prune_plans(&mut self) {
        let finished = self.plans.iter().filter(|p| !p.state.is_open()).count();
        let mut excess = finished.saturating_sub(KEPT_FINISHED_PLANS);
        if excess == 0 {
            return;
        }
        self.plans.retain(|plan| {
            if excess > 0 && !plan.state.is_open() {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }

    /// The region `node` is active in: an up replica answering active, else where it was
    /// last seen active (or moved by a plan), else its first supervised replica, else its
    /// first warm one.
    fn active_region(&self, node: &NodeName) -> Option<RegionName> {
        let replicas = || {
            self.inventory
                .replicas
                .iter()
                .zip(&self.replicas)
                .filter(move |(spec, _)| &spec.node == node)
        };
        let serving = replicas().find(|(_, state)| {
            state.intent != Intent::Stopped
                && state.health.is_up()
                && state.last_probe.as_ref().is_some_and(|probe| {
                    probe.role == Some(ServingRole::Active)
                        || (probe.role == Some(ServingRole::Single) && probe.ready)
                })
        });
        if let Some((spec, _)) = serving {
            return Some(spec.region.clone());
        }
        if let Some(region) = self
            .nodes
            .get(node)
            .and_then(|state| state.last_active_region.clone())
        {
            return Some(region);
        }
        replicas()
            .find(|(_, state)| state.intent == Intent::Supervised)
            .or_else(|| replicas().find(|(spec, _)| spec.temperature == Temperature::Warm))
            .map(|(spec, _)| spec.region.clone())
    }

    fn region_presence(&self, region: &RegionName) -> Presence {
        Presence::of(
            self.inventory
                .replicas
                .iter()
                .zip(&self.replicas)
                .filter(|(spec, state)| {
                    &spec.region == region && state.intent == Intent::Supervised
                })
                .map(|(_, state)| state),
        )
    }

    /// Some supervised replica in `region` is up and its latest probe was good: the region
    /// is not going down as a whole.
    fn region_serving(&self, region: &RegionName) -> bool {
        self.inventory
            .replicas
            .iter()
            .zip(&self.replicas)
            .any(|(spec, state)| {
                &spec.region == region
                    && state.intent == Intent::Supervised
                    && state.health.is_up()
                    && !state.health.failing()
            })
    }

    fn running_plan_moves(&self, node: &NodeName) -> bool {
        self.plans.iter().any(|plan| {
            matches!(plan.state, PlanState::Running { .. }) && plan.components.contains(node)
        })
    }

    fn open_plan(&self) -> Option<&Plan> {
        self.plans.iter().find(|plan| plan.state.is_open())
    }

    /// Every timer and rule, after an input. Cold standbys are decided on ticks only: the
    /// runtime ticks after each round of probes, so the decision sees the whole round (a
    /// region going down is seen as one, not node by node) and still comes within one tick.
    fn evaluate(&mut self, now: Timestamp, tick: bool) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.restarts(now, &mut effects);
        self.region_health(now, &mut effects);
        if tick {
            self.cold_standbys(now, &mut effects);
        }
        self.region_loss_proposals(now, &mut effects);
        self.auto_approvals(now, &mut effects);
        self.expiries(now, &mut effects);
        effects
    }

    fn restarts(&mut self, now: Timestamp, effects: &mut Vec<Effect>) {
        for index in 0..self.replicas.len() {
            if self.replicas[index].needs_restart() {
                if let Scheduled::CrashLoop(why) =
                    self.replicas[index].schedule_restart(now, &self.settings)
                {
                    effects.push(self.replica_record(
                        now,
                        index,
                        AuditKind::CrashLoop,
                        format!("{why}: failed, no longer restarted"),
                    ));
                    continue;
                }
            }
            if let Some(attempt) = self.replicas[index].take_due_restart(now, &self.settings) {
                let state = &self.replicas[index];
                let why = match state.last_exit {
                    Some(Some(code)) => format!("exited with code {code}"),
                    Some(None) => "ended by a signal or could not start".to_owned(),
                    None => "down with no process running".to_owned(),
                };
                effects.push(self.replica_record(
                    now,
                    index,
                    AuditKind::Restart,
                    format!("restart {attempt} within the crash-loop window ({why})"),
                ));
                effects.push(Effect::Start {
                    replica: self.inventory.replicas[index].name.clone(),
                    reason: StartReason::Restart { attempt },
                });
            }
        }
    }

    fn region_health(&mut self, now: Timestamp, effects: &mut Vec<Effect>) {
        let dwell = Duration::from_millis(self.settings.region_failure_dwell_ms);
        let names: Vec<RegionName> = self.regions.keys().cloned().collect();
        for name in names {
            let presence = self.region_presence(&name);
            let Some(region) = self.regions.get_mut(&name) else {
                continue;
            };
            match region.update(now, presence, dwell) {
                Some(RegionEvent::Failed { down_since }) => effects.push(Self::region_record(
                    now,
                    &name,
                    AuditKind::RegionFailed,
                    format!(
                        "every replica that should run here has been down since {down_since} \
                         ({} ms dwell)",
                        self.settings.region_failure_dwell_ms
                    ),
                )),
                Some(RegionEvent::Recovered) => effects.push(Self::region_record(
                    now,
                    &name,
                    AuditKind::RegionRecovered,
                    "a replica here is up again".to_owned(),
                )),
                None => {}
            }
        }
    }

    /// `replica`'s process exited, or never started (`unstartable` says why): down at once,
    /// with the record `how` when that changed its verdict.
    fn process_gone(
        &mut self,
        now: Timestamp,
        replica: &ReplicaName,
        code: Option<i32>,
        unstartable: Option<String>,
        how: String,
    ) -> Option<Effect> {
        let index = self.index(replica)?;
        let state = &mut self.replicas[index];
        state.pid = None;
        state.started_at = None;
        state.start_in_flight = false;
        state.last_exit = Some(code);
        state.unstartable = unstartable;
        let transition = state.health.exited(now);
        transition.map(|_| self.replica_record(now, index, AuditKind::ReplicaDown, how))
    }

    fn cold_standbys(&mut self, now: Timestamp, effects: &mut Vec<Effect>) {
        let grace = comeback_grace(&self.settings);
        let nodes: Vec<NodeName> = self.inventory.nodes().into_iter().cloned().collect();
        for node in nodes {
            let mine: Vec<usize> = (0..self.replicas.len())
                .filter(|&i| self.inventory.replicas[i].node == node)
                .collect();
            let served = mine.iter().any(|&i| {
                self.replicas[i].intent != Intent::Stopped && self.replicas[i].health.is_up()
            });
            let Some(state) = self.nodes.get_mut(&node) else {
                continue;
            };
            if served {
                state.unserved_since = None;
                state.hold_audited = false;
                continue;
            }
            let since = *state.unserved_since.get_or_insert(now);
            if self.running_plan_moves(&node) {
                continue;
            }
            let is_cold = |i: usize| self.inventory.replicas[i].temperature == Temperature::Cold;
            if mine
                .iter()
                .any(|&i| is_cold(i) && self.replicas[i].coming_back(now, grace))
            {
                continue;
            }
            let warm_may_return = mine.iter().any(|&i| {
                let replica = &self.replicas[i];
                replica.coming_back(now, grace)
                    || (replica.intent == Intent::Supervised
                        && replica.failed.is_none()
                        && replica.unstartable.is_none()
                        && replica.health.verdict == Verdict::Unknown)
            });
            if warm_may_return && now < since.saturating_add(grace) {
                continue;
            }
            let home = self.active_region(&node);
            let candidates: Vec<usize> = mine
                .iter()
                .copied()
                .filter(|&i| {
                    is_cold(i)
                        && self.replicas[i].intent == Intent::Idle
                        && self.replicas[i].failed.is_none()
                        && self.replicas[i].pid.is_none()
                })
                .collect();
            let Some(&chosen) = candidates
                .iter()
                .find(|&&i| Some(&self.inventory.replicas[i].region) == home.as_ref())
                .or_else(|| candidates.first())
            else {
                continue;
            };
            let region = self.inventory.replicas[chosen].region.clone();
            let hold = match &home {
                Some(home) if home != &region && !self.region_serving(home) => Some(format!(
                    "a cold start of {node} in {region} is held: its region {home} is down \
                         as a whole, and moving a region is a plan's decision"
                )),
                _ if !self.policy.may_act(now, &self.settings) => Some(format!(
                    "a cold start of {node} is held: {} automatic actions in the last hour \
                     (the cap)",
                    self.policy.actions_last_hour(now)
                )),
                _ => None,
            };
            if let Some(why) = hold {
                let state = self.nodes.entry(node.clone()).or_default();
                if !state.hold_audited {
                    state.hold_audited = true;
                    effects.push(self.replica_record(now, chosen, AuditKind::ActionHeld, why));
                }
                continue;
            }
            self.policy.acted(now);
            let replica = &mut self.replicas[chosen];
            replica.supervise_afresh();
            replica.start_in_flight = true;
            let name = self.inventory.replicas[chosen].name.clone();
            effects.push(self.replica_record(
                now,
                chosen,
                AuditKind::ColdStart,
                format!(
                    "{node} has no replica up since {since} and no warm one coming back: \
                     starting the cold replica {name}"
                ),
            ));
            effects.push(Effect::Start {
                replica: name,
                reason: StartReason::ColdStandby,
            });
        }
    }

    fn region_loss_proposals(&mut self, now: Timestamp, effects: &mut Vec<Effect>) {
        let failed: Vec<RegionName> = self
            .regions
            .iter()
            .filter(|(_, state)| state.failed_since.is_some() && !state.proposed)
            .map(|(name, _)| name.clone())
            .collect();
        for region in failed {
            let moving: Vec<(NodeName, RegionName)> = self
                .inventory
                .nodes()
                .into_iter()
                .filter_map(|node| {
                    let active = self.active_region(node)?;
                    (active == region).then(|| (node.clone(), active))
                })
                .collect();
            if moving.is_empty() {
                continue;
            }
            let target = self
                .inventory
                .regions
                .iter()
                .map(|spec| &spec.name)
                .filter(|name| {
                    **name != region
                        && self
                            .regions
                            .get(*name)
                            .is_some_and(|state| state.failed_since.is_none())
                })
                .find(|name| {
                    moving.iter().all(|(node, _)| {
                        self.inventory
                            .replicas_of(node)
                            .any(|spec| &spec.region == *name)
                    })
                })
                .cloned();
            let hold = if let Some(open) = self.open_plan() {
                Some(format!(
                    "no region-loss plan for {region}: plan {} is {}",
                    open.id,
                    open.state.name()
                ))
            } else if let Some((_, until)) = self.policy.cooling_down(now, &self.settings) {
                Some(format!(
                    "no region-loss plan for {region}: the cooldown lasts until {until}"
                ))
            } else if target.is_none() {
                Some(format!(
                    "no region-loss plan for {region}: no other healthy region has a replica of \
                     every node active there"
                ))
            } else {
                None
            };
            let (Some(to), None) = (target, hold.clone()) else {
                if let Some(state) = self.regions.get_mut(&region) {
                    if !state.hold_audited {
                        state.hold_audited = true;
                        effects.push(Self::region_record(
                            now,
                            &region,
                            AuditKind::ActionHeld,
                            hold.unwrap_or_default(),
                        ));
                    }
                }
                continue;
            };
            let plan = self.build(now, PlanKind::RegionLoss, to, moving, Actor::Controller);
            if let Some(state) = self.regions.get_mut(&region) {
                state.proposed = true;
            }
            effects.extend(self.proposed(now, plan));
        }
    }

    fn auto_approvals(&mut self, now: Timestamp, effects: &mut Vec<Effect>) {
        if !self.settings.auto_approve {
            return;
        }
        let min_dwell = Duration::from_millis(self.settings.auto_approve_min_dwell_ms);
        for index in 0..self.plans.len() {
            let plan = &self.plans[index];
            if plan.state != PlanState::AwaitingApproval
                || plan.proposed_by != Actor::Controller
                || plan.kind != PlanKind::RegionLoss
                || now >= plan.expires_at
            {
                continue;
            }
            let Some(failed_since) = self
                .regions
                .get(&plan.from_region)
                .and_then(|state| state.failed_since)
            else {
                continue;
            };
            if now < failed_since.saturating_add(min_dwell) {
                continue;
            }
            if !self.policy.may_act(now, &self.settings) {
                if self.auto_approval_held.insert(plan.id.clone()) {
                    effects.push(Effect::Audit(plans::record(
                        now,
                        AuditKind::ActionHeld,
                        Actor::Controller,
                        plan,
                        format!(
                            "auto-approval held: {} automatic actions in the last hour (the cap); \
                             an operator may approve",
                            self.policy.actions_last_hour(now)
                        ),
                    )));
                }
                continue;
            }
            self.policy.acted(now);
            let approved = plans::approve(&mut self.plans[index], Actor::Controller, now);
            self.fence_started_steps(&approved);
            effects.extend(approved);
        }
    }

    fn expiries(&mut self, now: Timestamp, effects: &mut Vec<Effect>) {
        for index in 0..self.plans.len() {
            let plan = &self.plans[index];
            if plan.state == PlanState::AwaitingApproval && now >= plan.expires_at {
                effects.extend(self.expire(index, now));
            }
        }
    }

    fn expire(&mut self, index: usize, now: Timestamp) -> Vec<Effect> {
        let plan = &mut self.plans[index];
        plan.state = PlanState::Expired { at: now };
        let record = plans::record(
            now,
            AuditKind::PlanExpired,
            Actor::Controller,
            plan,
            format!("not approved by {}", plan.expires_at),
        );
        vec![Effect::SavePlan(plan.clone()), Effect::Audit(record)]
    }

    /// A new plan with the next id.
    fn build(
        &mut self,
        now: Timestamp,
        kind: PlanKind,
        to: RegionName,
        moving: Vec<(NodeName, RegionName)>,
        by: Actor,
    ) -> Plan {
        let id = PlanId::numbered(self.next_plan);
        self.next_plan = self.next_plan.saturating_add(1);
        plans::build(
            plans::Proposal {
                id,
                kind,
                to,
                moving,
                by,
                inventory: &self.inventory,
                databases: &self.databases,
            },
            now,
            &self.settings,
        )
    }

    /// Keeps a new plan; its effects.
    fn proposed(&mut self, now: Timestamp, plan: Plan) -> Vec<Effect> {
        let loss = match plan.kind {
            PlanKind::RegionLoss => format!(
                "; approving it loses {}",
                plans::describe_loss(&plan, &self.inventory)
            ),
            PlanKind::Switchover => String::new(),
        };
        let record = plans::record(
            now,
            AuditKind::PlanProposed,
            plan.proposed_by.clone(),
            &plan,
            format!(
                "{} of {} from {} to {}, {} steps{loss}",
                match plan.kind {
                    PlanKind::Switchover => "switchover",
                    PlanKind::RegionLoss => "region loss",
                },
                plans::plan_scope(&plan),
                plan.from_region,
                plan.to_region,
                plan.steps.len()
            ),
        );
        let effects = vec![Effect::SavePlan(plan.clone()), Effect::Audit(record)];
        self.plans.push(plan);
        self.prune_plans();
        effects
    }

    /// An operator's switchover; every check before any change.
    fn propose(
        &mut self,
        now: Timestamp,
        kind: PlanKind,
        to: RegionName,
        components: Vec<NodeName>,
        by: Actor,
    ) -> Result<(Plan, Vec<Effect>), CommandError> {
        if self.inventory.region(&to).is_none() {
            return Err(CommandError::UnknownRegion {
                region: to.to_string(),
                known: join(self.inventory.regions.iter().map(|r| r.name.as_str())),
            });
        }
        let nodes: Vec<NodeName> = self.inventory.nodes().into_iter().cloned().collect();
        if let Some(unknown) = components.iter().find(|c| !nodes.contains(c)) {
            return Err(CommandError::UnknownComponent {
                component: unknown.to_string(),
                known: join(nodes.iter().map(NodeName::as_str)),
            });
        }
        let requested: Vec<NodeName> = nodes
            .into_iter()
            .filter(|node| components.is_empty() || components.contains(node))
            .collect();
        if let Some(open) = self.open_plan() {
            return Err(CommandError::PlanOpen {
                plan: open.id.to_string(),
                state: open.state.name().to_owned(),
            });
        }
        if let Some((finished_at, until)) = self.policy.cooling_down(now, &self.settings) {
            return Err(CommandError::Cooldown { finished_at, until });
        }
        let moving: Vec<(NodeName, RegionName)> = requested
            .iter()
            .filter_map(|node| {
                let active = self.active_region(node)?;
                (active != to).then(|| (node.clone(), active))
            })
            .collect();
        if moving.is_empty() {
            return Err(CommandError::AlreadyThere {
                components: join(requested.iter().map(NodeName::as_str)),
                region: to.to_string(),
            });
        }
        if let Some((node, _)) = moving
            .iter()
            .find(|(node, _)| !self.inventory.replicas_of(node).any(|r| r.region == to))
        {
            return Err(CommandError::NoReplicaThere {
                node: node.to_string(),
                region: to.to_string(),
            });
        }
        let plan = self.build(now, kind, to, moving, by);
        let effects = self.proposed(now, plan.clone());
        Ok((plan, effects))
    }

    /// Approve (`acknowledge_loss` given) or reject (`None`) a plan.
    fn decide(
        &mut self,
        now: Timestamp,
        id: &PlanId,
        by: Actor,
        acknowledge_loss: Option<bool>,
    ) -> (Result<CommandOutcome, CommandError>, Vec<Effect>) {
        let Some(index) = self.plans.iter().position(|p| &p.id == id) else {
            return (
                Err(CommandError::UnknownPlan {
                    plan: id.to_string(),
                }),
                Vec::new(),
            );
        };
        let plan = &self.plans[index];
        if plan.state != PlanState::AwaitingApproval {
            return (
                Err(CommandError::NotAwaitingApproval {
                    plan: id.to_string(),
                    state: plan.state.name().to_owned(),
                }),
                Vec::new(),
            );
        }
        if now >= plan.expires_at {
            // The one refusal that changes something: the plan is expired from now on.
            let at = plan.expires_at;
            let effects = self.expire(index, now);
            return (
                Err(CommandError::Expired {
                    plan: id.to_string(),
                    at,
                }),
                effects,
            );
        }
        let effects = match acknowledge_loss {
            Some(acknowledged) => {
                if plan.kind == PlanKind::RegionLoss && !acknowledged {
                    return (
                        Err(CommandError::LossNotAcknowledged {
                            plan: id.to_string(),
                            lag: plans::describe_loss(plan, &self.inventory),
                        }),
                        Vec::new(),
                    );
                }
                let effects = plans::approve(&mut self.plans[index], by, now);
                self.fence_started_steps(&effects);
                effects
            }
            None => {
                let plan = &mut self.plans[index];
                plan.state = PlanState::Rejected {
                    rejected: Decision {
                        by: by.clone(),
                        at: now,
                    },
                };
                let record = plans::record(
                    now,
                    AuditKind::PlanRejected,
                    by.clone(),
                    plan,
                    format!("rejected by {by}"),
                );
                vec![Effect::SavePlan(plan.clone()), Effect::Audit(record)]
            }
        };
        let plan = self.plans[index].clone();
        (Ok(CommandOutcome { plan }), effects)
    }
}

fn join<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}
