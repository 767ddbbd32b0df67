//! The writer: the one task per instance that turns queued submissions into durable events.
//!
//! Throughput comes from batching: while one transaction commits, new submissions queue up,
//! and the next loop takes all of them (up to `max_batch_events`) into a single transaction —
//! one fsync for hundreds of sends. A send is answered only after its transaction committed.
//! When idle, the writer still advances its watermark so the readers' safe point keeps moving.
//! After every commit it reads the safe point fresh from the database and publishes it to the
//! readers through a watch channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_core::{InstanceIndex, Timestamp};
use meridian_store::{SequencerStore, StoreError, WriteResult};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::engine::{OrderingEngine, Refusal, ValidatedSubmission};
use crate::error::SendError;
use crate::metrics::SequencerMetrics;
use meridian_node::conditions::Conditions;

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

/// How often expired deduplication entries are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

pub struct Writer {
    store: Arc<dyn SequencerStore>,
    engine: OrderingEngine,
    settings: WriterSettings,
    queue: mpsc::Receiver<WriteRequest>,
    safe_point: watch::Sender<Timestamp>,
    metrics: SequencerMetrics,
    readiness: Conditions,
    last_commit: Instant,
    last_prune: Instant,
}

impl Writer {
    pub fn new(
        store: Arc<dyn SequencerStore>,
        engine: OrderingEngine,
        settings: WriterSettings,
        safe_point: watch::Sender<Timestamp>,
        metrics: SequencerMetrics,
        readiness: Conditions,
    ) -> (Self, WriterHandle) {
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let handle = WriterHandle {
            queue: tx,
            capacity: settings.queue_capacity,
        };
        let writer = Self {
            store,
            engine,
            settings,
            queue: rx,
            safe_point,
            metrics,
            readiness,
            last_commit: Instant::now(),
            last_prune: Instant::now(),
        };
        (writer, handle)
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.watermark_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(self.settings.max_batch_events);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                received = self.queue.recv_many(&mut batch, self.settings.max_batch_events) => {
                    if received == 0 {
                        break;
                    }
                    self.write(std::mem::take(&mut batch)).await;
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
    }

    async fn write(&mut self, requests: Vec<WriteRequest>) {
        let submissions: Vec<ValidatedSubmission> =
            requests.iter().map(|r| r.submission.clone()).collect();
        let plan = self.engine.plan(Timestamp::now(), &submissions);
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
        if !plan.events.is_empty() {
            match self
                .store
                .write_events(self.settings.index, &plan.events, plan.watermark)
                .await
            {
                Ok(results) => {
                    self.metrics.batch_size.observe(plan.events.len() as f64);
                    for ((event, slot), result) in plan.events.iter().zip(&plan.slots).zip(results)
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
                    self.committed(plan.watermark).await;
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
    }

    async fn heartbeat(&mut self) {
        let watermark = self.engine.idle_watermark(Timestamp::now());
        match self
            .store
            .advance_watermark(self.settings.index, watermark)
            .await
        {
            Ok(()) => self.committed(watermark).await,
            Err(error) => {
                self.handle_store_error(&error).await;
            }
        }
        if self.last_prune.elapsed() >= PRUNE_INTERVAL {
            self.last_prune = Instant::now();
            let expired_before = Timestamp::now().saturating_sub(self.settings.dedup_retention);
            match self.store.prune_message_ids(expired_before).await {
                Ok(pruned) if pruned > 0 => tracing::debug!(pruned, "pruned message ids"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "pruning message ids failed; will retry"),
            }
        }
    }

    /// After a commit: publish the new safe point and mark the database healthy.
    async fn committed(&mut self, watermark: Timestamp) {
        self.last_commit = Instant::now();
        self.metrics.watermark_us.set(watermark.as_i64());
        self.readiness.clear("database");
        self.refresh_safe_point().await;
    }

    pub async fn refresh_safe_point(&self) {
        match self.store.safe_point().await {
            Ok(Some(safe_point)) => {
                self.metrics.safe_point_us.set(safe_point.as_i64());
                self.safe_point.send_if_modified(|current| {
                    if safe_point > *current {
                        *current = safe_point;
                        true
                    } else {
                        false
                    }
                });
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "reading the safe point failed"),
        }
    }

    /// Reports a failed write and, if this instance was fenced, rejoins. Returns the reason
    /// given to the clients of the failed batch.
    async fn handle_store_error(&mut self, error: &StoreError) -> String {
        match error {
            StoreError::Fenced(index) => {
                tracing::error!(
                    instance = %index,
                    "this instance was marked offline by its peers; rejoining above the safe point"
                );
                self.readiness
                    .fail("instance", "marked offline by peers; rejoining");
                match self
                    .store
                    .start_instance(self.settings.index, self.engine.watermark())
                    .await
                {
                    Ok(watermark) => {
                        self.engine = OrderingEngine::new(self.engine.partition(), watermark);
                        self.readiness.clear("instance");
                        tracing::info!(%watermark, "rejoined");
                    }
                    Err(error) => tracing::warn!(%error, "rejoining failed; will retry"),
                }
                "this sequencer instance was fenced and is rejoining".into()
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
}
