//! One active term of a controller replica: prepare, restore, adopt, resume, then the loop —
//! probe, observe, tick, answer commands, carry out effects (persist, then act) — until the
//! term ends. Every wait is bounded: probes by the probe interval, steps by the actuator,
//! queues by their capacity.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_core::placement::ReplicaName;
use meridian_core::Timestamp;
use meridian_node::replication::is_fenced;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    last_events, persist, ControllerStore, Shared, DATABASE_INTERVAL, STATUS_EVENTS, STEP_RESULTS,
};
use crate::actuator::{Actuator, Started};
use crate::api::{AuditRecord, CommandError, ControllerInfo};
use crate::engine::{Effect, Engine};
use crate::handle::{CommandRequest, ControllerSide};
use crate::model::{Observation, ProbeOutcome, Temperature};
use crate::plan::{PlanId, StepOutcome};

/// A finished step, on its way back to the loop.
type StepResult = (PlanId, usize, StepOutcome);

/// How many times the effects of carrying out effects are carried out in one go.
const FOLLOW_UP_ROUNDS: usize = 8;

/// Why a batch of effects could not be carried out: the term is over.
#[derive(Debug)]
struct TermOver(String);

struct Term<A: ?Sized, S: ?Sized> {
    shared: Arc<Shared<A, S>>,
    engine: Engine,
    /// The newest audit records, for the status.
    events: VecDeque<AuditRecord>,
    /// The pid of every replica whose process this term knows to run.
    running: HashMap<ReplicaName, u32>,
    steps: JoinSet<()>,
    step_results: mpsc::Sender<StepResult>,
    databases_read: Option<Instant>,
}

pub(super) async fn run<A, S>(
    shared: Arc<Shared<A, S>>,
    side: Arc<tokio::sync::Mutex<ControllerSide>>,
    token: CancellationToken,
) -> anyhow::Result<()>
where
    A: Actuator + ?Sized,
    S: ControllerStore + ?Sized,
{
    let mut side = side.lock().await;
    let name = shared.replica.name.clone();
    tracing::info!(replica = %name, "this controller replica is active");
    shared.actuator.prepare().await?;
    let restored = match persist::restore(&*shared.store).await {
        Ok(restored) => restored,
        Err(error) if error.downcast_ref::<meridian_store::StoreError>().is_some() => {
            // The store is away: give the lease back and try again later.
            tracing::warn!(error = %error, "cannot restore from the controller store; ending the term");
            token.cancel();
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    let events = last_events(&restored.recent_audit).into_iter().collect();
    let now = Timestamp::now();
    let engine = Engine::new(
        shared.replica.settings.clone(),
        shared.replica.inventory.clone(),
        restored,
        now,
    );
    let (step_results, mut finished) = mpsc::channel(STEP_RESULTS);
    let mut term = Term {
        shared,
        engine,
        events,
        running: HashMap::new(),
        steps: JoinSet::new(),
        step_results,
        databases_read: None,
    };
    let result = term.serve(&mut side, &mut finished, &token).await;
    // A step of a term that ended must not act on: the next term runs it again (steps are
    // idempotent).
    term.steps.abort_all();
    if let Err(TermOver(why)) = result {
        tracing::warn!(replica = %name, why, "the controller's term ends");
        token.cancel();
    }
    Ok(())
}

impl<A, S> Term<A, S>
where
    A: Actuator + ?Sized,
    S: ControllerStore + ?Sized,
{
    async fn serve(
        &mut self,
        side: &mut ControllerSide,
        finished: &mut mpsc::Receiver<StepResult>,
        token: &CancellationToken,
    ) -> Result<(), TermOver> {
        let mut effects = self.adopt().await;
        effects.extend(self.engine.resume(Timestamp::now()));
        self.carry_out(effects, side).await?;
        self.shared.replication.serving();
        self.publish(side);
        let interval = Duration::from_millis(self.shared.replica.settings.probe_interval_ms);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = token.cancelled() => return Ok(()),
                Some((plan, step, outcome)) = finished.recv() => {
                    tracing::info!(%plan, step, ?outcome, "plan step finished");
                    let effects = self.engine.step_finished(Timestamp::now(), &plan, step, outcome);
                    self.carry_out(effects, side).await?;
                    // A step may have started or stopped processes.
                    let effects = self.adopt().await;
                    self.carry_out(effects, side).await?;
                    self.publish(side);
                }
                request = side.commands.recv() => {
                    let Some(request) = request else { return Ok(()) };
                    self.command(request, side).await?;
                    self.publish(side);
                }
                _ = ticks.tick() => {
                    // Reap the step tasks that ended (their outcomes came through `finished`).
                    while self.steps.try_join_next().is_some() {}
                    let mut effects = self.observe(interval).await;
                    effects.extend(self.engine.tick(Timestamp::now()));
                    self.carry_out(effects, side).await?;
                    self.publish(side);
                }
            }
        }
    }

    /// The processes that run now, as observations: at takeover every one the last controller
    /// left running, later those a step started. A pid that changed is a new process.
    async fn adopt(&mut self) -> Vec<Effect> {
        let running = match self.shared.actuator.running().await {
            Ok(running) => running,
            Err(error) => {
                tracing::warn!(error = %error, "cannot list the running processes");
                return Vec::new();
            }
        };
        let mut effects = Vec::new();
        for (replica, pid) in running {
            if self.running.get(&replica) == Some(&pid) {
                continue;
            }
            self.running.insert(replica.clone(), pid);
            effects.extend(
                self.engine
                    .observe(Timestamp::now(), Observation::Started { replica, pid }),
            );
        }
        effects
    }

    /// One round of observations: every replica that should run probed (each bounded by the
    /// probe interval, all at once), the processes that exited, and the databases (at most
    /// once a second).
    async fn observe(&mut self, interval: Duration) -> Vec<Effect> {
        let actuator = &self.shared.actuator;
        let inventory = self.engine.inventory();
        let probed: Vec<_> = inventory
            .replicas
            .iter()
            .filter(|spec| {
                spec.temperature == Temperature::Warm || self.running.contains_key(&spec.name)
            })
            .collect();
        let outcomes = futures::future::join_all(probed.iter().map(|spec| async move {
            match tokio::time::timeout(interval, actuator.probe(spec)).await {
                Ok(outcome) => outcome,
                Err(_) => ProbeOutcome::unreachable(format!(
                    "no answer within the probe interval ({} ms)",
                    interval.as_millis()
                )),
            }
        }))
        .await;
        let mut observations: Vec<Observation> = probed
            .iter()
            .zip(outcomes)
            .map(|(spec, outcome)| Observation::Probe {
                replica: spec.name.clone(),
                outcome,
            })
            .collect();
        for (replica, code) in actuator.exited().await {
            self.running.remove(&replica);
            observations.push(Observation::Exited { replica, code });
        }
        if self
            .databases_read
            .is_none_or(|at| at.elapsed() >= DATABASE_INTERVAL)
        {
            self.databases_read = Some(Instant::now());
            match actuator.databases().await {
                Ok(facts) if facts.is_empty() => {}
                Ok(facts) => observations.push(Observation::Databases(facts)),
                Err(error) => tracing::debug!(error = %error, "cannot read the databases"),
            }
        }
        let mut effects = Vec::new();
        for observation in observations {
            effects.extend(self.engine.observe(Timestamp::now(), observation));
        }
        effects
    }

    /// An operator's command: answered once its effects are persisted (and acted on).
    async fn command(
        &mut self,
        request: CommandRequest,
        side: &ControllerSide,
    ) -> Result<(), TermOver> {
        let CommandRequest { command, reply } = request;
        tracing::info!(?command, "command");
        let (answer, effects) = self.engine.command(Timestamp::now(), command);
        match self.carry_out(effects, side).await {
            Ok(()) => {
                let _ = reply.send(answer);
                Ok(())
            }
            Err(over) => {
                // Not persisted: nothing happened, and this replica is active no more.
                let _ = reply.send(Err(CommandError::NotActive {
                    active: format!("unknown ({}: {})", self.shared.replica.name, over.0),
                }));
                Err(over)
            }
        }
    }

    /// Carries out `effects`: every plan and audit record persisted in one fenced commit
    /// first, then published, then the actions in their order. What the engine answers to an
    /// action's observation (a start that failed) is carried out the same way after it, for a
    /// bounded number of rounds.
    async fn carry_out(
        &mut self,
        mut effects: Vec<Effect>,
        side: &ControllerSide,
    ) -> Result<(), TermOver> {
        for _ in 0..FOLLOW_UP_ROUNDS {
            if effects.is_empty() {
                return Ok(());
            }
            let actions = self.persist(effects, side).await?;
            let mut follow_ups = Vec::new();
            for action in actions {
                follow_ups.extend(self.act(action).await);
            }
            effects = follow_ups;
        }
        if !effects.is_empty() {
            tracing::error!(
                count = effects.len(),
                "the engine kept answering its own effects; the rest waits for the next round"
            );
        }
        Ok(())
    }

    /// Commits the plans and audit records of `effects` (one transaction) and publishes the
    /// records; returns the other effects, in order.
    async fn persist(
        &mut self,
        effects: Vec<Effect>,
        side: &ControllerSide,
    ) -> Result<Vec<Effect>, TermOver> {
        let now = Timestamp::now();
        let mut batch = persist::ControllerBatch::default();
        let mut records = Vec::new();
        let mut actions = Vec::new();
        for effect in effects {
            match effect {
                Effect::SavePlan(plan) => batch.plans.push(
                    persist::stored_plan(&plan, now)
                        .map_err(|e| TermOver(format!("cannot serialize a plan: {e}")))?,
                ),
                Effect::Audit(record) => {
                    batch.audit.push(
                        persist::new_audit(&record)
                            .map_err(|e| TermOver(format!("cannot serialize a record: {e}")))?,
                    );
                    records.push(record);
                }
                action => actions.push(action),
            }
        }
        if batch.plans.is_empty() && batch.audit.is_empty() {
            return Ok(actions);
        }
        let seqs = self.shared.store.commit(&batch).await.map_err(|error| {
            TermOver(if is_fenced(&error) {
                format!("another controller replica is active (a commit was fenced: {error})")
            } else {
                format!("the controller store refused a commit: {error}")
            })
        })?;
        for (mut record, seq) in records.into_iter().zip(seqs) {
            record.seq = seq;
            if self.events.len() == STATUS_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(record.clone());
            // No subscriber is fine.
            let _ = side.events.send(record);
        }
        Ok(actions)
    }

    /// Does one action; returns what the engine answers to its observation.
    async fn act(&mut self, action: Effect) -> Vec<Effect> {
        match action {
            Effect::Start { replica, reason } => {
                let Some(spec) = self.engine.inventory().replica(&replica).cloned() else {
                    tracing::error!(%replica, "the engine asked to start a replica the inventory does not have");
                    return Vec::new();
                };
                tracing::info!(%replica, ?reason, "starting");
                let observation = match self.shared.actuator.start(&spec).await {
                    Ok(Started::Now { pid } | Started::AlreadyRunning { pid }) => {
                        self.running.insert(replica.clone(), pid);
                        Observation::Started { replica, pid }
                    }
                    Err(error) => {
                        let error = format!("{error:#}");
                        tracing::warn!(%replica, %error, "cannot start");
                        Observation::StartFailed { replica, error }
                    }
                };
                self.engine.observe(Timestamp::now(), observation)
            }
            Effect::RunStep { plan, step, action } => {
                tracing::info!(%plan, step, action = %action.describe(), "running a plan step");
                let actuator = self.shared.actuator.clone();
                let results = self.step_results.clone();
                self.steps.spawn(async move {
                    let outcome = actuator.run_step(&action).await;
                    let _ = results.send((plan, step, outcome)).await;
                });
                Vec::new()
            }
            Effect::SavePlan(_) | Effect::Audit(_) => Vec::new(),
        }
    }

    /// The engine's status on the watch.
    fn publish(&self, side: &ControllerSide) {
        let info = ControllerInfo {
            replica: self.shared.replica.name.clone(),
            active: true,
            active_replica: Some(self.shared.replica.name.clone()),
        };
        side.publish(
            self.engine
                .status(info, self.events.iter().cloned().collect()),
        );
    }
}
