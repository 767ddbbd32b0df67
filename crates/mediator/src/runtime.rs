//! The mediator's runtime while active: the event loop that owns the engine, and the sender
//! that delivers its verdicts. [`crate::node`] wires a term (store, topology, restored engine,
//! sequencer client) and hands it to [`Runtime::run`].
//!
//! One task owns the engine and processes events strictly in order. It takes whatever run of
//! events the subscription has buffered (up to [`MAX_EVENTS_PER_COMMIT`]), feeds them to the
//! engine, hands the run's verdicts to the sender task and the run to the commit loop, which
//! stores every resulting change with the new checkpoint in one transaction (the runs
//! processed while a commit was in progress together, in the next one), while the engine goes
//! on with the next run. The verdicts do not wait for that commit: each is a
//! function of the sequenced stream up to the run (the engine keeps time by sequenced events
//! only), so a crash before the commit loses a run that its replay from the checkpoint
//! decides again, to the same verdicts, whose re-sends the sequencer deduplicates by message
//! id or — grouped differently — the participants ignore (they act on the first verdict for
//! a request). What the commit still orders is the store's own record: a verdict is marked
//! sent only once the run that decided it is committed, so the mark never precedes the row.
//! The sender task coalesces every verdict queued at once into one submission
//! ([`meridian_core::coalesce`]), sends with bounded concurrency and marks verdicts sent in
//! batches. Every wait — the database, the sequencer, a resubscription — backs off through
//! [`meridian_node::retry`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};
use meridian_client::{ClientError, SequencerClient};
use meridian_core::coalesce::{self, CoalesceLimits, Coalesced};
use meridian_core::crypto::{SigningKey, SigningPurpose};
use meridian_core::protocol::{ProtocolMessage, Signed, Verdict};
use meridian_core::sequencing::{Envelope, SequencedEvent, Submission};
use meridian_core::{MemberId, MessageId, ParticipantId, Timestamp};
use meridian_node::commit_queue::{CommitQueue, Mergeable};
use meridian_node::conditions::Conditions;
use meridian_node::fork::ForkAlarm;
use meridian_node::metrics::set_timestamp_micros;
use meridian_node::replication;
use meridian_node::retry::{Retry, WHILE_SERVING};
use meridian_store::mediator::{MediatorChange, MediatorStore, VerdictRecord};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::engine::{Effect, MediatorEngine};
use crate::metrics::MediatorMetrics;
use crate::persist;

/// Events per run, and stored per database transaction, at most. At ~3,000 events/s and a
/// commit of a few milliseconds, runs stay far below this; the bound keeps one transaction's
/// size in check after a long outage, when the subscription delivers a backlog.
pub const MAX_EVENTS_PER_COMMIT: usize = 1_000;
/// Verdicts and time proofs waiting for the sender task. When full, the event loop waits:
/// back-pressure instead of unbounded memory.
const OUTGOING_QUEUE: usize = 4_096;
/// Sends in flight at once. The sequencer batches concurrent sends into one commit, so
/// throughput needs concurrency; the bound keeps a slow sequencer from drowning in retries.
const MAX_IN_FLIGHT_SENDS: usize = 64;
/// How long a verdict may wait to be sequenced. Retries of the same submission reuse its
/// message id, so the sequencer deduplicates them within this window (plus its retention).
const VERDICT_SEND_WINDOW: Duration = Duration::from_secs(30);
const TIME_PROOF_SEND_WINDOW: Duration = Duration::from_secs(5);
/// Spacing of resubscriptions after the subscription broke. Short: a sequencer whose database
/// failed for a moment ends every subscription at once and serves again as soon as the
/// database does, and the verdicts of all pending requests wait on this one.
const RESUBSCRIBE: meridian_core::Backoff = WHILE_SERVING;
/// How often sent verdicts are marked in the store (one small transaction each).
const MARK_SENT_INTERVAL: Duration = Duration::from_millis(200);
/// Sent-verdict ids kept for marking while the database is away; beyond this the oldest are
/// dropped, which only means they are re-sent (and deduplicated) after a restart.
const MAX_UNMARKED_SENT: usize = 100_000;
/// Sent verdicts are kept this long in sequencer time for inspection, then pruned.
const VERDICT_RETENTION: Duration = Duration::from_secs(600);
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// What `/status` shows; updated by the event loop, read by the admin server.
#[derive(Debug, Default)]
pub(crate) struct StatusState {
    pub(crate) pending_requests: AtomicU64,
    pub(crate) last_event_us: AtomicU64,
    pub(crate) verdicts_decided: AtomicU64,
    pub(crate) verdicts_sent: AtomicU64,
}

/// What the sender task sends.
#[derive(Debug)]
enum Outgoing {
    Verdict {
        request_id: Timestamp,
        recipients: Vec<MemberId>,
        verdict: Verdict,
        /// The checkpoint of the run that decided it, to be committed before the verdict is
        /// marked sent; `None` for a verdict read back from the store.
        decided_in: Option<Timestamp>,
    },
    TimeProof,
}

/// A verdict the sequencer took (or refused for good), waiting to be marked sent.
#[derive(Debug, Clone, Copy)]
struct SentVerdict {
    request_id: Timestamp,
    decided_in: Option<Timestamp>,
}

impl SentVerdict {
    /// Whether its row is in the store, given the last committed checkpoint.
    fn is_stored(&self, committed: Option<Timestamp>) -> bool {
        match self.decided_in {
            None => true,
            Some(decided_in) => committed.is_some_and(|committed| committed >= decided_in),
        }
    }
}

/// One term's runtime, as the wiring restored and connected it.
pub(crate) struct Runtime {
    /// Restored from the store: the pending requests and the checkpoint.
    pub(crate) engine: MediatorEngine,
    /// Verdicts decided but not known to be sent; re-sent first.
    pub(crate) unsent: Vec<VerdictRecord>,
    pub(crate) store: Arc<dyn MediatorStore>,
    pub(crate) client: SequencerClient,
    pub(crate) key: SigningKey,
    pub(crate) member: MemberId,
    pub(crate) readiness: Conditions,
    pub(crate) metrics: MediatorMetrics,
    pub(crate) status: Arc<StatusState>,
    pub(crate) time_proof_interval: Duration,
    pub(crate) fork: ForkAlarm,
}

impl Runtime {
    /// Re-sends the unsent verdicts, then processes events until `shutdown` (for a replica:
    /// until it stops being active) or a fatal error. `serving` is called once the event loop
    /// is about to start: the mediator does its work from then on.
    pub(crate) async fn run(
        self,
        shutdown: &CancellationToken,
        serving: impl FnOnce(),
    ) -> anyhow::Result<()> {
        let Runtime {
            engine,
            unsent,
            store,
            client,
            key,
            member,
            readiness,
            metrics,
            status,
            time_proof_interval,
            fork,
        } = self;
        let (outgoing, outgoing_rx) = mpsc::channel(OUTGOING_QUEUE);
        let (committed, committed_rx) = watch::channel(engine.last_event());
        let sender_task = tokio::spawn(
            Sender {
                committed: committed_rx,
                client: client.clone(),
                key,
                member: member.clone(),
                store: store.clone(),
                readiness: readiness.clone(),
                metrics: metrics.clone(),
                status: status.clone(),
                shutdown: shutdown.clone(),
            }
            .run(outgoing_rx),
        );
        let result = async move {
            for record in unsent {
                let job = Outgoing::Verdict {
                    verdict: persist::verdict(&record)?,
                    request_id: record.request_id,
                    recipients: record.recipients,
                    decided_in: None,
                };
                if outgoing.send(job).await.is_err() {
                    return Ok(());
                }
            }
            let (runs, runs_rx) = mpsc::channel(QUEUED_RUNS);
            let event_loop = EventLoop {
                engine,
                client,
                outgoing,
                runs,
                readiness: readiness.clone(),
                metrics: metrics.clone(),
                status: status.clone(),
                time_proof_interval,
                fork,
                member,
            };
            let commit_loop = CommitLoop {
                store,
                committed,
                readiness,
                metrics,
                status,
            };
            serving();
            // Joined, not spawned: each stops the other (the event loop when the commit loop
            // went away, the commit loop once the event loop's runs are written), and a
            // term's end stops both.
            let (processed, stored) =
                tokio::join!(event_loop.run(shutdown), commit_loop.run(runs_rx, shutdown));
            stored.and(processed)
        }
        .await;
        shutdown.cancel();
        let _ = sender_task.await;
        result
    }
}

/// Processed runs waiting for the commit in progress, at most; the next commit writes them
/// together. With the runs of the commit in progress (as many at most), this bounds what a
/// crash replays and the memory of waiting changes.
const QUEUED_RUNS: usize = 8;

/// The one task that owns the engine: events in sequencer order, a run at a time, each handed
/// to the [`CommitLoop`] once processed.
struct EventLoop {
    engine: MediatorEngine,
    client: SequencerClient,
    outgoing: mpsc::Sender<Outgoing>,
    /// Processed runs, to the commit loop.
    runs: mpsc::Sender<ProcessedRun>,
    readiness: Conditions,
    metrics: MediatorMetrics,
    status: Arc<StatusState>,
    time_proof_interval: Duration,
    fork: ForkAlarm,
    member: MemberId,
}

/// The effects of a run of events, to carry out after its commit.
#[derive(Default)]
struct RunOutput {
    changes: Vec<MediatorChange>,
    verdicts: Vec<Outgoing>,
}

/// A processed run on its way to the store.
struct ProcessedRun {
    changes: Vec<MediatorChange>,
    /// The run's last event.
    checkpoint: Timestamp,
    events: usize,
    /// Requests pending once the run was processed.
    pending: usize,
}

impl Mergeable for ProcessedRun {
    fn size(&self) -> usize {
        self.events
    }

    /// One commit then writes both, as if they had been one run ([`MediatorStore::apply`]
    /// takes the changes of any number of events).
    fn merge(&mut self, later: ProcessedRun) {
        self.changes.extend(later.changes);
        self.checkpoint = later.checkpoint;
        self.events += later.events;
        self.pending = later.pending;
    }
}

impl EventLoop {
    async fn run(mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut subscription = self.client.subscribe(self.engine.last_event());
        self.readiness.clear("subscription");
        // Restarted after every run processed: the spacing grows only while nothing arrives.
        let mut resubscribe_delays = RESUBSCRIBE.delays();
        let mut quiet_until = tokio::time::Instant::now() + self.time_proof_interval;
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                // The commit loop stopped: its error, if any, ends the term.
                () = self.runs.closed() => return Ok(()),
                next = subscription.next() => next,
                () = tokio::time::sleep_until(quiet_until) => {
                    quiet_until = tokio::time::Instant::now() + self.time_proof_interval;
                    self.on_quiet();
                    continue;
                }
            };
            let mut run = Vec::new();
            let mut ended = None;
            match next {
                Some(Ok(event)) => run.push(event),
                Some(Err(error)) => ended = Some(error),
                None => {
                    ended = Some(ClientError::Protocol(
                        "the subscription ended without an error".to_owned(),
                    ))
                }
            }
            // Whatever else is buffered already joins this run: one commit for all of it.
            while ended.is_none() && !run.is_empty() && run.len() < MAX_EVENTS_PER_COMMIT {
                match subscription.next().now_or_never() {
                    Some(Some(Ok(event))) => run.push(event),
                    Some(Some(Err(error))) => ended = Some(error),
                    Some(None) => {
                        ended = Some(ClientError::Protocol(
                            "the subscription ended without an error".to_owned(),
                        ))
                    }
                    None => break,
                }
            }
            if !run.is_empty() {
                quiet_until = tokio::time::Instant::now() + self.time_proof_interval;
                if !self.process_run(run).await? {
                    return Ok(());
                }
                resubscribe_delays = RESUBSCRIBE.delays();
            }
            let Some(error) = ended else { continue };
            if let ClientError::Fork(fork) = &error {
                // Never continue past a fork: the history we decided on is not the sequencer's.
                // Halt, not exit, so the alarm stays visible on the admin endpoint.
                self.fork
                    .raise(self.member.as_str(), fork, serde_json::Value::Null);
                self.readiness.clear("subscription");
                self.fork.halt(shutdown).await;
                return Ok(());
            }
            if self
                .readiness
                .fail("subscription", format!("subscription interrupted: {error}"))
            {
                tracing::warn!(%error, after = ?self.engine.last_event(), "subscription ended; resubscribing");
            }
            drop(subscription);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(resubscribe_delays.next().unwrap_or(RESUBSCRIBE.max)) => {}
            }
            // The engine's last event, committed or not: the chain check starts where the
            // engine is (a crash replays from the stored checkpoint, with a fresh check).
            subscription = self.client.subscribe(self.engine.last_event());
            self.readiness.clear("subscription");
        }
    }

    /// Feeds a run of events to the engine, hands its verdicts to the sender and the run to the
    /// commit loop. `Ok(false)` when either of them stopped.
    async fn process_run(&mut self, run: Vec<SequencedEvent>) -> anyhow::Result<bool> {
        let events = run.len();
        let mut output = RunOutput::default();
        let mut checkpoint = None;
        for event in run {
            checkpoint = Some(event.timestamp);
            let mut fed = false;
            for envelope in &event.envelopes {
                match ProtocolMessage::decode(&envelope.payload) {
                    Ok(message) => {
                        fed = true;
                        let effects =
                            self.engine
                                .on_event(event.timestamp, event.sender.clone(), message);
                        self.collect(effects, &mut output);
                    }
                    Err(error) => {
                        tracing::warn!(timestamp = %event.timestamp, sender = %event.sender, %error, "ignoring a malformed envelope");
                        self.metrics.count_ignored("malformed_envelope", false);
                    }
                }
            }
            if !fed {
                let effects = self.engine.on_time(event.timestamp);
                self.collect(effects, &mut output);
            }
        }
        let Some(checkpoint) = checkpoint else {
            return Ok(true);
        };
        // Before the commit: a verdict waiting on the mediator's fsync would add it to every
        // request's latency, and the replay of a lost run sends the same verdicts.
        for mut job in output.verdicts {
            if let Outgoing::Verdict {
                verdict,
                decided_in,
                ..
            } = &mut job
            {
                self.metrics.count_verdict(&verdict.outcome);
                self.status.verdicts_decided.fetch_add(1, Ordering::Relaxed);
                *decided_in = Some(checkpoint);
            }
            if self.outgoing.send(job).await.is_err() {
                // The sender stops only at shutdown; the replay decides these again.
                return Ok(false);
            }
        }

        let run = ProcessedRun {
            changes: output.changes,
            checkpoint,
            events,
            pending: self.engine.pending_count(),
        };
        // Waits while the commit loop is `QUEUED_RUNS` behind; fails once it stopped.
        Ok(self.runs.send(run).await.is_ok())
    }

    fn collect(&self, effects: Vec<Effect>, output: &mut RunOutput) {
        for effect in effects {
            match effect {
                Effect::Persist(change) => output.changes.push(persist::to_store(&change)),
                Effect::SendVerdict {
                    request_id,
                    informee_participants,
                    verdict,
                } => output.verdicts.push(Outgoing::Verdict {
                    request_id,
                    recipients: informee_participants
                        .iter()
                        .map(ParticipantId::as_member)
                        .collect(),
                    verdict,
                    decided_in: None,
                }),
                Effect::RequestTimeProof => self.request_time_proof(),
                Effect::Ignored(ignored) => {
                    if ignored.is_suspicious() {
                        tracing::warn!(reason = ignored.reason(), "ignored: {ignored}");
                    } else {
                        tracing::debug!(reason = ignored.reason(), "ignored: {ignored}");
                    }
                    self.metrics
                        .count_ignored(ignored.reason(), ignored.is_invalid_response());
                }
            }
        }
    }

    fn on_quiet(&mut self) {
        let effects = self.engine.on_quiet();
        let mut output = RunOutput::default();
        self.collect(effects, &mut output);
        debug_assert!(output.changes.is_empty() && output.verdicts.is_empty());
    }

    fn request_time_proof(&self) {
        // Never wait for queue space here: a full queue means traffic, and traffic moves time.
        match self.outgoing.try_send(Outgoing::TimeProof) {
            Ok(()) => {
                self.metrics.time_proofs.inc();
            }
            Err(error) => tracing::debug!(%error, "time proof not queued"),
        }
    }
}

/// Writes the processed runs in order, each with its checkpoint, and then publishes that
/// checkpoint (the sender's marks, `/status`, metrics).
struct CommitLoop {
    store: Arc<dyn MediatorStore>,
    /// The checkpoint of the last committed run, for the sender's marks.
    committed: watch::Sender<Option<Timestamp>>,
    readiness: Conditions,
    metrics: MediatorMetrics,
    status: Arc<StatusState>,
}

impl CommitLoop {
    /// Until the event loop stopped and its runs are written, the term ends, or a write fails
    /// for good.
    async fn run(
        self,
        runs: mpsc::Receiver<ProcessedRun>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        // What was processed while the last commit ran goes into one commit, as it went into
        // one run before the commits were pipelined.
        let mut commits = CommitQueue::new(runs, MAX_EVENTS_PER_COMMIT);
        while let Some((run, _)) = commits.next().await {
            if !self.commit(run, shutdown).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Stores a run's changes with its checkpoint. `Ok(false)` on shutdown.
    async fn commit(
        &self,
        run: ProcessedRun,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let ProcessedRun {
            changes,
            checkpoint,
            events,
            pending,
        } = run;
        let started = Instant::now();
        let store = &self.store;
        // A short cap: verdicts are marked sent only after this write, so it must notice a
        // recovered database soon.
        let retry = Retry::new(&self.readiness, shutdown).with_backoff(WHILE_SERVING);
        // Set once an attempt failed in a way that may still have committed (the connection
        // lost during COMMIT): the batch's rows cannot be inserted twice, so a retry first
        // asks the store. Every batch moves the checkpoint forward, so a stored checkpoint at
        // or past this batch's says it is written.
        let in_doubt = &AtomicBool::new(false);
        let changes = &changes;
        let persisted = retry_store("storing processed events", &retry, move || {
            Box::pin(async move {
                if in_doubt.load(Ordering::Relaxed)
                    && store.load().await?.checkpoint >= Some(checkpoint)
                {
                    tracing::info!(%checkpoint, "a batch whose commit was in doubt turned out written");
                    return Ok(());
                }
                let applied = store.apply(changes, checkpoint).await;
                if applied.as_ref().is_err_and(|error| error.is_transient()) {
                    in_doubt.store(true, Ordering::Relaxed);
                }
                applied
            })
        })
        .await?;
        if persisted.is_none() {
            return Ok(false);
        }
        self.committed.send_replace(Some(checkpoint));
        self.metrics
            .commit_latency_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(events as f64);
        self.metrics.events.inc_by(events as u64);
        set_timestamp_micros(
            &self.metrics.last_event_timestamp_seconds,
            i64::try_from(checkpoint.as_micros()).unwrap_or(i64::MAX),
        );
        self.metrics.pending_requests.set(pending as i64);
        // The pending count first, and the checkpoint released after it: a `/status` that
        // reads a checkpoint reads the pending count of that checkpoint or a later one.
        self.status
            .pending_requests
            .store(pending as u64, Ordering::Relaxed);
        self.status
            .last_event_us
            .store(checkpoint.as_micros(), Ordering::Release);
        Ok(true)
    }
}

/// Sends verdicts and time proofs, marks verdicts sent, prunes old ones.
struct Sender {
    /// The checkpoint of the last committed run: a verdict is marked sent only once its run
    /// is stored.
    committed: watch::Receiver<Option<Timestamp>>,
    client: SequencerClient,
    key: SigningKey,
    member: MemberId,
    store: Arc<dyn MediatorStore>,
    readiness: Conditions,
    metrics: MediatorMetrics,
    status: Arc<StatusState>,
    shutdown: CancellationToken,
}

impl Sender {
    async fn run(self, mut jobs: mpsc::Receiver<Outgoing>) {
        let this = Arc::new(self);
        let mut in_flight: JoinSet<Vec<SentVerdict>> = JoinSet::new();
        let mut unmarked: Vec<SentVerdict> = Vec::new();
        let mut mark = tokio::time::interval(MARK_SENT_INTERVAL);
        mark.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut time_proof_seq: u64 = 0;
        loop {
            tokio::select! {
                () = this.shutdown.cancelled() => break,
                job = jobs.recv(), if in_flight.len() < MAX_IN_FLIGHT_SENDS => {
                    let Some(job) = job else { break };
                    // Every verdict already queued goes out with this one, in one submission.
                    let mut verdicts = Vec::new();
                    let mut time_proofs = 0usize;
                    let mut next = Some(job);
                    while let Some(job) = next.take() {
                        match job {
                            Outgoing::Verdict { request_id, recipients, verdict, decided_in } => {
                                verdicts.push((SentVerdict { request_id, decided_in }, recipients, verdict));
                            }
                            Outgoing::TimeProof => time_proofs += 1,
                        }
                        if verdicts.len() < CoalesceLimits::DEFAULT.max_envelopes {
                            next = jobs.try_recv().ok();
                        }
                    }
                    if !verdicts.is_empty() {
                        let sender = this.clone();
                        in_flight.spawn(async move { sender.send_verdicts(verdicts).await });
                    }
                    // One time proof answers every request for one queued meanwhile.
                    if time_proofs > 0 {
                        time_proof_seq = time_proof_seq.wrapping_add(1);
                        let seq = time_proof_seq;
                        let sender = this.clone();
                        in_flight.spawn(async move {
                            sender.send_time_proof(seq).await;
                            Vec::new()
                        });
                    }
                }
                Some(done) = in_flight.join_next() => {
                    if let Ok(sent) = done {
                        for verdict in sent {
                            if unmarked.len() >= MAX_UNMARKED_SENT {
                                unmarked.remove(0);
                            }
                            unmarked.push(verdict);
                        }
                    }
                }
                _ = mark.tick() => this.mark_sent(&mut unmarked).await,
                _ = prune.tick() => this.prune().await,
            }
        }
        in_flight.abort_all();
        // What was acknowledged is worth recording; the rest is re-sent after a restart.
        while let Some(done) = in_flight.join_next().await {
            if let Ok(sent) = done {
                unmarked.extend(sent);
            }
        }
        this.mark_sent(&mut unmarked).await;
    }

    /// Sends verdicts, coalesced into as few submissions as [`CoalesceLimits::DEFAULT`] allows,
    /// each until the sequencer acknowledges it or refuses it definitely, or shutdown. Returns
    /// the verdicts to mark as sent (also after a definite refusal: retrying it forever
    /// would not help); on shutdown, only those of the submissions acknowledged before it.
    async fn send_verdicts(
        &self,
        verdicts: Vec<(SentVerdict, Vec<MemberId>, Verdict)>,
    ) -> Vec<SentVerdict> {
        let mut request_ids = Vec::with_capacity(verdicts.len());
        let mut outgoing = Vec::with_capacity(verdicts.len());
        // One signature per group of verdicts that can go out in one submission: its
        // recipients then check one signature per group instead of one per verdict
        // (`meridian_core::signed_batch`).
        for chunk in verdicts.chunks(CoalesceLimits::DEFAULT.max_envelopes) {
            let values: Vec<&Verdict> = chunk.iter().map(|(_, _, verdict)| verdict).collect();
            let signed =
                Signed::sign_all(&values, &self.member, &self.key, SigningPurpose::Verdict);
            for ((sent, recipients, _), signed) in chunk.iter().zip(signed) {
                let request_id = sent.request_id;
                // The same message id on every attempt and after restarts: alone, the
                // sequencer deduplicates it; in a group, the group's id is derived from it.
                let message_id = MessageId::new(format!("verdict-{}", request_id.as_micros()))
                    .expect("digits make a valid message id");
                request_ids.push(*sent);
                outgoing.push(coalesce::Outgoing {
                    message_id,
                    envelope: Envelope {
                        recipients: recipients.clone(),
                        payload: ProtocolMessage::Verdict(signed).encode(),
                    },
                });
            }
        }
        let mut sent = Vec::with_capacity(request_ids.len());
        let mut ids = request_ids.into_iter();
        for group in coalesce::coalesce(outgoing, CoalesceLimits::DEFAULT) {
            let group_ids: Vec<SentVerdict> = ids.by_ref().take(group.members.len()).collect();
            match self.send_group(group).await {
                Some(_) => sent.extend(group_ids),
                None => break,
            }
        }
        sent
    }

    /// One coalesced submission of verdicts. `Some(true)` when sequenced, `Some(false)` when
    /// refused definitely, `None` on shutdown or when the retries gave up (then it is re-sent
    /// after a restart or promotion, and deduplicated or ignored by its recipients).
    async fn send_group(&self, group: Coalesced) -> Option<bool> {
        let verdicts = group.members.len();
        let group = &group;
        self.metrics.verdicts_per_send.observe(verdicts as f64);
        // A short cap: the requests' participants wait on these verdicts.
        let retry = Retry::new(&self.readiness, &self.shutdown).with_backoff(WHILE_SERVING);
        let sent = retry
            .until("sequencer", "cannot send verdicts", || {
                let submission = Submission {
                    sender: self.member.clone(),
                    message_id: group.message_id.clone(),
                    envelopes: group.envelopes.clone(),
                    max_sequencing_time: Timestamp::now().saturating_add(VERDICT_SEND_WINDOW),
                };
                async move {
                    match self.client.send(submission).await {
                        Ok(receipt) => Ok(Some(receipt)),
                        // A refusal that a retry cannot change: stop retrying.
                        Err(ClientError::Rejected { code, message }) if is_definite(code) => {
                            tracing::error!(message_id = %group.message_id, verdicts, ?code, %message, "the sequencer refused verdicts; giving them up");
                            Ok(None)
                        }
                        Err(error) => Err(error),
                    }
                }
            })
            .await;
        match sent {
            Ok(Some(Some(receipt))) => {
                tracing::debug!(message_id = %group.message_id, verdicts, sequenced = %receipt.timestamp, deduplicated = receipt.deduplicated, "verdicts sent");
                self.metrics.verdicts_sent.inc_by(verdicts as u64);
                self.status
                    .verdicts_sent
                    .fetch_add(verdicts as u64, Ordering::Relaxed);
                Some(true)
            }
            Ok(Some(None)) => {
                self.metrics.verdicts_abandoned.inc_by(verdicts as u64);
                Some(false)
            }
            Ok(None) => None,
            // Not marked sent: re-sent after a restart or promotion.
            Err(gave_up) => {
                tracing::error!(message_id = %group.message_id, verdicts, "{gave_up}");
                None
            }
        }
    }

    /// One attempt (with the client's own retries): the engine asks again if it gets lost.
    async fn send_time_proof(&self, seq: u64) {
        let now = Timestamp::now();
        let Ok(message_id) = MessageId::new(format!("time-proof-{}-{seq}", now.as_micros())) else {
            return;
        };
        let submission = Submission {
            sender: self.member.clone(),
            message_id,
            envelopes: vec![Envelope {
                recipients: vec![self.member.clone()],
                payload: ProtocolMessage::TimeProof.encode(),
            }],
            max_sequencing_time: now.saturating_add(TIME_PROOF_SEND_WINDOW),
        };
        if let Err(error) = self.client.send(submission).await {
            tracing::debug!(%error, "time proof not sent");
        }
    }

    /// Marks the sent verdicts whose rows are committed; the rest wait for their run's commit
    /// (a mark before the row would leave it unsent, to be re-sent after every restart).
    async fn mark_sent(&self, unmarked: &mut Vec<SentVerdict>) {
        let committed = *self.committed.borrow();
        let stored: Vec<Timestamp> = unmarked
            .iter()
            .filter(|verdict| verdict.is_stored(committed))
            .map(|verdict| verdict.request_id)
            .collect();
        if stored.is_empty() {
            return;
        }
        match self.store.mark_verdicts_sent(&stored).await {
            Ok(()) => unmarked.retain(|verdict| !verdict.is_stored(committed)),
            // Demoted: the new active re-sends these (deduplicated) and marks them itself.
            Err(error) if replication::is_fenced(&error) => {
                tracing::debug!(%error, "not marking verdicts sent: this replica is fenced");
                unmarked.clear();
                self.shutdown.cancel();
            }
            // Kept for the next tick; the event loop reports the database's state.
            Err(error) => tracing::debug!(%error, "marking verdicts sent failed"),
        }
    }

    async fn prune(&self) {
        let last = self.status.last_event_us.load(Ordering::Relaxed);
        if last == 0 {
            return;
        }
        let before = Timestamp::from_micros(last).saturating_sub(VERDICT_RETENTION);
        match self.store.prune_verdicts(before).await {
            Ok(pruned) if pruned > 0 => tracing::debug!(pruned, "pruned sent verdicts"),
            Ok(_) => {}
            Err(error) if replication::is_fenced(&error) => self.shutdown.cancel(),
            Err(error) => tracing::debug!(%error, "pruning verdicts failed"),
        }
    }
}

/// A refusal that a retry cannot change: the submission itself is wrong.
fn is_definite(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
    )
}

/// A store call's future, boxed as the store trait returns it. Taking this concrete type
/// (rather than any `Future`) keeps the mediator's futures provably `Send`.
pub(crate) type StoreCall<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, meridian_store::StoreError>> + Send + 'a>>;

/// Runs a store call until it succeeds, reporting the database not ready meanwhile (also while
/// a call stalls). `Ok(None)` on shutdown. Every error is retried — the mediator cannot go on
/// without its state, and a database failing over (even to a read-only standby for a while)
/// comes back — except a fenced write: then this replica is no longer the active one, so the
/// retry's stop token (the active work's) is cancelled and `Ok(None)` returned.
pub(crate) async fn retry_store<'a, T>(
    what: &'static str,
    retry: &Retry,
    mut call: impl FnMut() -> StoreCall<'a, T>,
) -> anyhow::Result<Option<T>> {
    let (readiness, stop) = (retry.readiness(), retry.stop_token());
    let stored = retry
        .until("database", what, || {
            // Verdicts wait on this call: while it stalls, /readyz says so.
            let call = readiness.watch_database_call(call());
            async move {
                let result = call.await;
                if let Err(error) = &result {
                    if replication::is_fenced(error) {
                        // The database answered: a stall reported meanwhile is over.
                        readiness.clear("database");
                        // Another replica is active: stop this one's work; the role loop
                        // demotes it.
                        tracing::warn!(%error, "{what}: this replica may no longer write; stopping");
                        stop.cancel();
                    }
                }
                result
            }
        })
        .await?;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(decided_in: Option<u64>) -> SentVerdict {
        SentVerdict {
            request_id: Timestamp::from_micros(10),
            decided_in: decided_in.map(Timestamp::from_micros),
        }
    }

    #[test]
    fn a_verdict_is_marked_sent_only_once_the_run_that_decided_it_is_committed() {
        // Decided in the run ending at 20: not stored before a commit reaches 20.
        assert!(!sent(Some(20)).is_stored(None));
        assert!(!sent(Some(20)).is_stored(Some(Timestamp::from_micros(19))));
        assert!(sent(Some(20)).is_stored(Some(Timestamp::from_micros(20))));
        assert!(sent(Some(20)).is_stored(Some(Timestamp::from_micros(35))));
        // Read back from the store: stored already.
        assert!(sent(None).is_stored(None));
    }
}
