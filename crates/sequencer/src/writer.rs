//! The writer: the one task per instance that turns queued submissions into durable events.
//!
//! Throughput comes from batching: while one transaction commits, new submissions queue up,
//! and the next loop takes all of them (up to `max_batch_events`) into a single transaction —
//! one fsync for hundreds of sends. A send is answered only after its transaction committed.
//! When idle, the writer still advances its watermark so the readers' safe point keeps moving,
//! and when a peer's event waits for this instance's watermark (the node's peer poll sees it
//! above the safe point) the writer advances it at once rather than at its next heartbeat.
//! Every commit also reads the safe point, in its own transaction (see
//! [`meridian_store::Committed`]), and the writer publishes it to the readers through a watch
//! channel once the commit returned, after handing the commit's events to the reader tail
//! ([`crate::tail::own`]), which needs no store read for them while no other instance writes.
//!
//! Every write carries this process's incarnation of the instance. When the store refuses one:
//! - [`StoreError::Fenced`] (the peers marked the instance offline, e.g. after a pause longer
//!   than `offline_after`): the writer **rejoins** — it claims the row again with
//!   [`InstanceClaim::Rejoin`], which bumps the incarnation and restarts timestamps above every
//!   watermark. Nothing of the old incarnation is ever written; the refused batch's senders get
//!   UNAVAILABLE and retry (on any instance) with the same message id.
//! - [`StoreError::Superseded`] (another process claimed the index — a restart of this instance
//!   while this process was paused, or a second process configured with the same index): the
//!   writer **stops the instance** (the process exits with an error). Rejoining would take the
//!   index back from a live process, and the two would fence each other in turn.
//!
//! While the [`ClockGate`] is closed (this instance's clock is off, see [`crate::clock`]) the
//! writer issues nothing: queued sends are answered UNAVAILABLE (the client retries on another
//! instance) and no heartbeat moves the watermark, so the peers mark this instance offline
//! instead of waiting for it; it rejoins through the fencing path above once the gate opens.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_core::{InstanceIndex, Timestamp};
use meridian_store::{
    Committed, Incarnation, InstanceClaim, RoutedEvent, SequencerStore, StoreError, WriteResult,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::ClockGate;
use crate::engine::{OrderingEngine, Refusal, ValidatedSubmission};
use crate::error::SendError;
use crate::metrics::SequencerMetrics;
use crate::tail::{OwnCommit, ReaderTail};
use meridian_node::conditions::Conditions;
use meridian_node::forward::advance_to;
use meridian_node::metrics::set_timestamp_micros;

/// The answer to a successful send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    pub timestamp: Timestamp,
    pub deduplicated: bool,
}

struct WriteRequest {
    submission: ValidatedSubmission,
    received_at: Instant,
    reply: oneshot::Sender<Result<SendOutcome, SendError>>,
}

/// Queues validated submissions for the writer. Cloneable; the queue is bounded and a full
/// queue is an immediate, retryable RESOURCE_EXHAUSTED rather than unbounded memory.
#[derive(Clone)]
pub struct WriterHandle {
    queue: mpsc::Sender<WriteRequest>,
    capacity: usize,
}

impl WriterHandle {
    pub async fn submit(&self, submission: ValidatedSubmission) -> Result<SendOutcome, SendError> {
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            submission,
            received_at: Instant::now(),
            reply,
        };
        match self.queue.try_send(request) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(SendError::Overloaded {
                    queued: self.capacity,
                })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(SendError::Unavailable(
                    "the sequencer is shutting down".into(),
                ))
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(SendError::Unavailable(
                "the writer stopped before answering".into(),
            ))
        })
    }
}

#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub index: InstanceIndex,
    pub max_batch_events: usize,
    pub queue_capacity: usize,
    /// How often an idle instance advances its watermark.
    pub watermark_interval: Duration,
    /// How long deduplication entries outlive their max sequencing time before pruning.
    pub dedup_retention: Duration,
}

/// Heartbeat intervals without events after which an instance counts as idle and promises a
/// lead: long enough that an instance serving a steady trickle of sends is not idle.
const IDLE_AFTER_INTERVALS: u32 = 4;

/// How often expired deduplication entries are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

/// Why the writer stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterExit {
    /// The node is shutting down.
    Shutdown,
    /// Another process claimed this instance's index; this one must not write again. The node
    /// stops and reports this as an error.
    Superseded(String),
}

/// This process's incarnation of its instance, readable by `/status` while the writer owns
/// the authoritative copy.
#[derive(Debug, Clone, Default)]
pub struct IncarnationGauge(Arc<AtomicI64>);

impl IncarnationGauge {
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, incarnation: Incarnation) {
        self.0.store(incarnation.0, Ordering::Relaxed);
    }
}

pub struct Writer {
    store: Arc<dyn SequencerStore>,
    engine: OrderingEngine,
    incarnation: Incarnation,
    incarnation_gauge: IncarnationGauge,
    /// Set once another process claimed the index; the run loop then ends.
    superseded: Option<String>,
    /// Cancelled when this instance must stop (superseded): ends the whole node.
    stop: CancellationToken,
    settings: WriterSettings,
    queue: mpsc::Receiver<WriteRequest>,
    safe_point: watch::Sender<Timestamp>,
    metrics: SequencerMetrics,
    readiness: Conditions,
    clock: ClockGate,
    last_commit: Instant,
    /// When this instance last wrote events; an instance idle for `IDLE_AFTER_INTERVALS`
    /// heartbeat intervals promises a lead in its heartbeats.
    last_events: Instant,
    last_prune: Instant,
    /// The latest peer event waiting above the safe point, as the node's peer poll last saw it.
    peers_waiting: watch::Receiver<Timestamp>,
    /// False once the poll is gone (shutdown): the branch that follows it is then disabled.
    peers_waiting_open: bool,
    /// Where the commits' events go besides the store.
    tail: Arc<ReaderTail>,
    /// The watermark of the last commit when nothing of this instance can have been committed
    /// since; `None` after a failed write or advance, whose outcome is unknown (see
    /// [`OwnCommit::after`]).
    chain_after: Option<Timestamp>,
}

/// The node's collaborators a writer reports to and asks before issuing timestamps.
pub struct WriterGates {
    pub readiness: Conditions,
    pub clock: ClockGate,
    /// Cancelled when this instance must stop (superseded): ends the whole node.
    pub stop: CancellationToken,
    /// The latest event above the safe point, published by the peer poll: a peer's event that
    /// may be waiting for this instance's watermark.
    pub peers_waiting: watch::Receiver<Timestamp>,
    /// The instance's reader tail, told of every commit.
    pub tail: Arc<ReaderTail>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)] // wiring: each is a distinct collaborator
    pub fn new(
        store: Arc<dyn SequencerStore>,
        engine: OrderingEngine,
        incarnation: Incarnation,
        incarnation_gauge: IncarnationGauge,
        settings: WriterSettings,
        safe_point: watch::Sender<Timestamp>,
        metrics: SequencerMetrics,
        gates: WriterGates,
    ) -> (Self, WriterHandle) {
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let handle = WriterHandle {
            queue: tx,
            capacity: settings.queue_capacity,
        };
        incarnation_gauge.set(incarnation);
        let chain_after = Some(engine.watermark());
        let writer = Self {
            store,
            engine,
            incarnation,
            incarnation_gauge,
            superseded: None,
            stop: gates.stop,
            settings,
            queue: rx,
            safe_point,
            metrics,
            readiness: gates.readiness,
            clock: gates.clock,
            last_commit: Instant::now(),
            last_events: Instant::now(),
            last_prune: Instant::now(),
            peers_waiting: gates.peers_waiting,
            peers_waiting_open: true,
            tail: gates.tail,
            chain_after,
        };
        (writer, handle)
    }

    /// Runs until the stop token is cancelled (shutdown) or another process claims the index.
    pub async fn run(mut self) -> WriterExit {
        let mut tick = tokio::time::interval(self.settings.watermark_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(self.settings.max_batch_events);
        let stop = self.stop.clone();
        while self.superseded.is_none() {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                received = self.queue.recv_many(&mut batch, self.settings.max_batch_events) => {
                    if received == 0 {
                        break;
                    }
                    self.write(std::mem::take(&mut batch)).await;
                }
                changed = self.peers_waiting.changed(), if self.peers_waiting_open => {
                    if changed.is_err() {
                        self.peers_waiting_open = false;
                        continue;
                    }
                    let waiting = *self.peers_waiting.borrow_and_update();
                    self.catch_up(waiting).await;
                }
                _ = tick.tick() => {
                    if self.last_commit.elapsed() >= self.settings.watermark_interval {
                        self.heartbeat().await;
                    }
                }
            }
        }
        // Answer whatever is still queued so no client waits for a timeout.
        self.queue.close();
        while let Ok(request) = self.queue.try_recv() {
            let _ = request.reply.send(Err(SendError::Unavailable(
                "the sequencer is shutting down".into(),
            )));
        }
        tracing::info!("sequencer writer stopped");
        match self.superseded {
            Some(reason) => WriterExit::Superseded(reason),
            None => WriterExit::Shutdown,
        }
    }

    async fn write(&mut self, requests: Vec<WriteRequest>) {
        let now = Timestamp::now();
        if let Err(reason) = self.clock.check(now, Instant::now()) {
            for request in requests {
                self.metrics.count("unavailable");
                let _ = request
                    .reply
                    .send(Err(SendError::Unavailable(reason.clone())));
            }
            return;
        }
        let submissions: Vec<ValidatedSubmission> =
            requests.iter().map(|r| r.submission.clone()).collect();
        let plan = self.engine.plan(now, &submissions);
        let mut replies: Vec<Option<Result<SendOutcome, SendError>>> =
            (0..requests.len()).map(|_| None).collect();
        for (slot, refusal) in &plan.refused {
            let Refusal::MaxSequencingTimeExceeded { would_be } = *refusal;
            self.metrics.count("refused_deadline");
            replies[*slot] = Some(Err(SendError::MaxSequencingTimeExceeded {
                max_sequencing_time: submissions[*slot].max_sequencing_time,
                would_be,
            }));
        }
        let mut committed = None;
        if !plan.events.is_empty() {
            let write = self.store.write_events(
                self.settings.index,
                self.incarnation,
                &plan.events,
                plan.watermark,
            );
            // The batch's senders wait on this write: while it stalls, /readyz says so.
            match self.readiness.watch_database_call(write).await {
                Ok(written) => {
                    self.last_events = Instant::now();
                    self.metrics.batch_size.observe(plan.events.len() as f64);
                    for ((event, slot), result) in plan
                        .events
                        .iter()
                        .zip(&plan.slots)
                        .zip(written.results.iter().copied())
                    {
                        let outcome = match result {
                            WriteResult::Sequenced => {
                                self.metrics.count("sequenced");
                                SendOutcome {
                                    timestamp: event.timestamp,
                                    deduplicated: false,
                                }
                            }
                            WriteResult::Duplicate { original } => {
                                self.metrics.count("deduplicated");
                                SendOutcome {
                                    timestamp: original,
                                    deduplicated: true,
                                }
                            }
                        };
                        replies[*slot] = Some(Ok(outcome));
                    }
                    committed = Some((plan.watermark, written));
                }
                Err(error) => {
                    let reason = self.handle_store_error(&error).await;
                    for slot in &plan.slots {
                        self.metrics.count("unavailable");
                        replies[*slot] = Some(Err(SendError::Unavailable(reason.clone())));
                    }
                }
            }
        }
        for (request, reply) in requests.into_iter().zip(replies) {
            let reply = reply.unwrap_or_else(|| {
                Err(SendError::Unavailable(
                    "internal: submission left unanswered".into(),
                ))
            });
            self.metrics
                .send_latency_seconds
                .observe(request.received_at.elapsed().as_secs_f64());
            // The client may have gone; its submission is sequenced regardless.
            let _ = request.reply.send(reply);
        }
        // Answered first: a sender needs the commit, not the safe point.
        if let Some((watermark, written)) = committed {
            let events = own_events(plan.events, &written.results);
            self.committed(watermark, &written, events);
        }
    }

    async fn heartbeat(&mut self) {
        let now = Timestamp::now();
        // Neither a watermark nor a pruning horizon from a clock that is off.
        if self.clock.check(now, Instant::now()).is_err() {
            return;
        }
        let watermark = self.engine.heartbeat_watermark(now, self.heartbeat_lead());
        self.advance_watermark(watermark).await;
        if self.last_prune.elapsed() >= PRUNE_INTERVAL {
            self.last_prune = Instant::now();
            let expired_before = now.saturating_sub(self.settings.dedup_retention);
            let prune = self.store.prune_message_ids(expired_before);
            match self.readiness.watch_database_call(prune).await {
                Ok(pruned) if pruned > 0 => tracing::debug!(pruned, "pruned message ids"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "pruning message ids failed; will retry"),
            }
        }
    }

    /// A peer's event stamped `waiting` may wait for this instance's watermark: advance it now
    /// if it does (see [`OrderingEngine::catch_up_watermark`]), promising at most one watermark
    /// interval ahead of the clock, or an idle instance's heartbeat lead.
    async fn catch_up(&mut self, waiting: Timestamp) {
        let now = Timestamp::now();
        if self.clock.check(now, Instant::now()).is_err() {
            return;
        }
        let Some(watermark) = self.engine.catch_up_watermark(
            now,
            waiting,
            self.settings.watermark_interval,
            self.heartbeat_lead(),
        ) else {
            return;
        };
        self.metrics.watermark_catch_ups.inc();
        self.advance_watermark(watermark).await;
    }

    /// Commits `watermark` without events (an idle instance's only database access, so it
    /// notices an outage first).
    async fn advance_watermark(&mut self, watermark: Timestamp) {
        let advance =
            self.store
                .advance_watermark(self.settings.index, self.incarnation, watermark);
        match self.readiness.watch_database_call(advance).await {
            Ok(committed) => self.committed(watermark, &committed, Vec::new()),
            Err(error) => {
                self.handle_store_error(&error).await;
            }
        }
    }

    /// The lead an idle instance promises ahead of its clock (see
    /// [`OrderingEngine::heartbeat_watermark`]): two heartbeat intervals, so its watermark stays
    /// ahead of the clock between heartbeats and a busy peer's events never wait for it. An
    /// instance that wrote events recently promises none, since its own next events would
    /// wait out the lead.
    fn heartbeat_lead(&self) -> Duration {
        let interval = self.settings.watermark_interval;
        if self.last_events.elapsed() >= interval * IDLE_AFTER_INTERVALS {
            interval * 2
        } else {
            Duration::ZERO
        }
    }

    /// After a commit: hand its events to the reader tail, publish the safe point it read and
    /// mark the database healthy.
    fn committed<T>(
        &mut self,
        watermark: Timestamp,
        committed: &Committed<T>,
        events: Vec<RoutedEvent>,
    ) {
        self.last_commit = Instant::now();
        set_timestamp_micros(
            &self.metrics.watermark_timestamp_seconds,
            watermark.as_i64(),
        );
        self.readiness.clear("database");
        self.tail.own_commit(OwnCommit {
            after: self.chain_after,
            watermark,
            events,
            safe_point: committed.safe_point,
            others_latest_event: committed.others_latest_event,
        });
        self.chain_after = Some(watermark);
        self.publish_safe_point(committed.safe_point);
    }

    fn publish_safe_point(&self, safe_point: Timestamp) {
        set_timestamp_micros(
            &self.metrics.safe_point_timestamp_seconds,
            safe_point.as_i64(),
        );
        advance_to(&self.safe_point, safe_point);
    }

    pub async fn refresh_safe_point(&self) {
        // The writer waits for this too (after every commit): a stall must show as well.
        match self
            .readiness
            .watch_database_call(self.store.safe_point())
            .await
        {
            Ok(Some(safe_point)) => self.publish_safe_point(safe_point),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "reading the safe point failed"),
        }
    }

    /// Reports a failed write and, if this instance was fenced, rejoins (or stops, if another
    /// process has claimed the index). Returns the reason given to the clients of the failed
    /// batch.
    async fn handle_store_error(&mut self, error: &StoreError) -> String {
        // Whether anything of the failed call was committed is unknown: the tail reads the
        // store until the next commit.
        self.chain_after = None;
        match error {
            StoreError::Fenced(index) => {
                tracing::error!(
                    instance = %index,
                    incarnation = %self.incarnation,
                    "this instance was marked offline by its peers; rejoining above the safe point with a new incarnation"
                );
                self.readiness
                    .fail("instance", "marked offline by peers; rejoining");
                match self
                    .store
                    .start_instance(
                        self.settings.index,
                        self.engine.watermark(),
                        InstanceClaim::Rejoin(self.incarnation),
                    )
                    .await
                {
                    Ok(start) => {
                        self.engine = OrderingEngine::new(self.engine.partition(), start.watermark);
                        self.incarnation = start.incarnation;
                        // Everything of the earlier incarnations lies at or below it.
                        self.chain_after = Some(start.watermark);
                        self.incarnation_gauge.set(start.incarnation);
                        self.readiness.clear("instance");
                        tracing::info!(watermark = %start.watermark, incarnation = %start.incarnation, "rejoined");
                    }
                    Err(superseded @ StoreError::Superseded { .. }) => {
                        self.superseded_by(&superseded);
                    }
                    Err(error) => tracing::warn!(%error, "rejoining failed; will retry"),
                }
                "this sequencer instance was fenced and is rejoining".into()
            }
            StoreError::Superseded { .. } => {
                self.superseded_by(error);
                "this sequencer instance was superseded by another process and is stopping".into()
            }
            StoreError::ReadOnly => {
                if self
                    .readiness
                    .fail("database", "the database is read-only (a standby?)")
                {
                    tracing::error!("write refused: the database is read-only");
                }
                "the database is read-only".into()
            }
            StoreError::NoWriter(no_writer) => {
                // Names every server of the URL and what it is; logged once per change.
                let reason = no_writer.to_string();
                if self.readiness.fail("database", reason.clone()) {
                    tracing::error!("write refused: {reason}");
                }
                reason
            }
            other => {
                let reason = format!("database error: {other}");
                // Logged once per outage, not once per heartbeat.
                if self.readiness.fail("database", reason.clone()) {
                    tracing::warn!(%other, "write failed; reporting not-ready until it succeeds");
                }
                reason
            }
        }
    }

    /// Another process holds the index now: never write again, and stop the node. Rejoining
    /// would take the index back from a live process and the two would fence each other.
    fn superseded_by(&mut self, error: &StoreError) {
        let reason = error.to_string();
        tracing::error!(%reason, "stopping: another process claimed this sequencer instance");
        self.readiness.fail("instance", reason.clone());
        self.superseded = Some(reason);
        self.stop.cancel();
    }
}

/// The events of a commit that were sequenced (not the duplicates; `results` in the order of
/// `events`), as the reader tail keeps them.
fn own_events(events: Vec<meridian_store::NewEvent>, results: &[WriteResult]) -> Vec<RoutedEvent> {
    events
        .into_iter()
        .zip(results)
        .filter(|(_, result)| **result == WriteResult::Sequenced)
        .map(|(event, _)| event.into())
        .collect()
}
