//! The participant's effectful half: one writer task that owns every state change, feeding the
//! [`ParticipantEngine`] with sequencer events and local submission steps and persisting the
//! resulting effects, plus the background chores (time proofs, dedup pruning).
//!
//! Batching is where throughput comes from: the writer takes everything already available
//! (events from the subscription, queued commands), runs the engine over all of it, and writes
//! the effects *and the new checkpoint* in one database transaction — one fsync per batch.
//! Confirmation responses go out before that commit, all of a batch's in one submission (a
//! replay would produce the identical messages: the sequencer deduplicates a retried
//! submission on its message id, and the mediator ignores a second copy of a response grouped
//! differently); waiters and streams are woken only after it, so nothing reported to an
//! application can be lost by a crash. The commits are pipelined: while one batch is written,
//! the engine already runs over the next (at most [`QUEUED_BATCHES`] wait, and are then written
//! in one commit), and batches are written and answered in the order they were processed.
//!
//! A local submission has one door, [`Core::submit`]: the writer takes the deduplication
//! decision, interprets the commands and records the submission as in flight in one step
//! ([`ParticipantEngine::submit`]), and answers once that is persisted; the caller then sends
//! it and waits for its completion.
//!
//! A [`Core`] lives for one *term*: from start-up (or promotion of a replica) until shutdown
//! (or demotion). Its `shutdown` token ends the term; after that it sends nothing more, so a
//! demoted replica cannot act on the sequencer, and the fenced store refuses its writes.
//!
//! A term begins by settling the submissions it inherited in flight
//! ([`Core::settle_inherited`]): a frozen or killed replica may have recorded one and then
//! sent it or not, and the stream alone tells only once sequencer time passes its max
//! sequencing time (10 s by default), which every retry of that command would wait out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use meridian_client::{ClientError, SequencerClient, Subscription};
use meridian_core::coalesce::{coalesce, CoalesceLimits, Coalesced, Outgoing};
use meridian_core::crypto::SigningKey;
use meridian_core::protocol::{ChangeId, ProtocolMessage};
use meridian_core::sequencing::{Envelope, ForkError, SequencedEvent, Submission};
use meridian_core::template::transaction_seed;
use meridian_core::topology::SignedTopologyTransaction;
use meridian_core::{LedgerOffset, MessageId, ParticipantId, Timestamp, TransactionId};
use meridian_node::commit_queue::{CommitQueue, Mergeable};
use meridian_node::fork::ForkAlarm;
use meridian_node::forward::advance_to;
use meridian_node::replica::LeaseGuard;
use meridian_node::replication::is_fenced;
use meridian_node::retry::{Retry, WHILE_SERVING};
use meridian_node::Conditions;
use meridian_proto::convert::ledger::CommandSubmission;
use meridian_store::{
    CompletionRecord, DedupRecord, DedupState, ParticipantBatch, ParticipantStore, PendingRecord,
    StoreError, StoredContract, TransactionRecord,
};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::ParticipantConfig;
use crate::engine::{
    Begin, CommitRecord, Completion, DedupStatus, Effect, LocalSubmission, Outcome,
    OutgoingMessage, ParticipantEngine, SequencedInput, StatusCode, SubmitError, SubmitRequest,
};
use crate::metrics::{OutcomeLabel, ParticipantMetrics};
use crate::stages::{Stage, StageClock};

/// Events and commands per batch the engine runs over, and per database transaction, at most.
const MAX_BATCH: usize = 2_000;
/// Commands queued for the writer before submitters wait.
pub(crate) const COMMAND_QUEUE: usize = 10_000;
/// Confirmation responses and time proofs being sent concurrently.
pub(crate) const MAX_CONCURRENT_SENDS: usize = 512;
const TIME_PROOF_INTERVAL: Duration = Duration::from_millis(500);
const DEDUP_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// How often at most the writer forgets the deduplication entries older than
/// `dedup_memory_window_s` (a shorter window: as often as the window). A change is
/// deduplicated from memory for that window after its commit, then (within its period, 10
/// minutes by default) from the store, read when a submission of it arrives: at 1,500
/// commits a second a whole period's entries would take some 100 MiB, issue 14's bound for
/// the whole node.
const DEDUP_FORGET_INTERVAL: Duration = Duration::from_secs(5);
/// Wait before resubscribing after the subscription broke. Short: a sequencer whose database
/// failed for a moment ends every subscription at once and serves again as soon as the
/// database does; a resubscription a sequencer cannot serve yet costs it next to nothing.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(250);

/// Work for the writer besides the sequencer stream.
pub(crate) enum WriterCommand {
    /// Decide on a local submission ([`ParticipantEngine::submit`]); answered once the batch
    /// that took the decision is persisted and its ledger end published.
    Submit {
        request: SubmitRequest,
        now: Timestamp,
        reply: oneshot::Sender<Admission>,
    },
    /// Topology learnt from the topology manager out of band.
    Topology(Vec<(Timestamp, SignedTopologyTransaction)>),
    /// An inherited submission whose message id this term's placeholder took, sequenced at
    /// `at`: the submission never will be sequenced ([`Core::settle_inherited`]).
    NeverSequenced {
        submission_id: String,
        at: Timestamp,
    },
}

/// The writer's decision on a submission.
pub(crate) enum Admission {
    /// Recorded (and persisted) as in flight: send it, then wait for the completion.
    Started {
        submission: Box<Submission>,
        completion: oneshot::Receiver<Completion>,
    },
    /// The change is in flight under another submission, whose completion answers this one.
    InFlight(oneshot::Receiver<Completion>),
    /// The change committed within its deduplication period.
    Duplicate {
        transaction_id: TransactionId,
        offset: LedgerOffset,
    },
    /// Refused before anything was recorded.
    Refused(SubmitError),
}

/// The one answer to a submission, from [`Core::submit`].
#[derive(Debug)]
pub(crate) enum SubmitAnswer {
    /// This call's submission completed: committed or rejected.
    Completed(Box<Completion>),
    /// The change was in flight under an earlier submission, which completed so.
    CompletedEarlier(Box<Completion>),
    /// The change committed within its deduplication period; that commit is published (the
    /// ledger end reached its offset), so the caller can read it.
    Duplicate {
        transaction_id: TransactionId,
        offset: LedgerOffset,
    },
    /// Refused before anything was recorded or sent: nothing happened.
    Refused(SubmitError),
}

/// Why a submission got no answer; in every case the outcome is unknown to the caller and a
/// retry with the same command id learns it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubmitFailure {
    /// The term ended (shutdown, or this replica stopped being the active one).
    #[error("the term ended while the submission waited")]
    TermEnded,
    #[error("no outcome within {waited_ms} ms; the outcome is unknown, retry with the same command id to learn it")]
    NoOutcome { waited_ms: u128 },
    #[error("command {} was committed at offset {offset}, which is not yet written after {waited_ms} ms; retry with the same command id", .change.command_id)]
    NotYetWritten {
        change: Box<ChangeId>,
        offset: LedgerOffset,
        waited_ms: u128,
    },
}

/// What the writer, the Ledger API and the chores share once the node is running.
pub(crate) struct Core {
    pub config: ParticipantConfig,
    pub participant: ParticipantId,
    /// The participant's member key: it signs the hosting requests this participant makes
    /// to the topology manager (AllocateParty), which checks them against the topology.
    pub key: SigningKey,
    pub engine: Mutex<ParticipantEngine>,
    pub store: Arc<dyn ParticipantStore>,
    pub client: SequencerClient,
    pub commands: mpsc::Sender<WriterCommand>,
    /// Waiters for the completion of a change, by change key.
    pub waiters: Mutex<HashMap<String, Vec<oneshot::Sender<Completion>>>>,
    pub ledger_end: watch::Sender<LedgerOffset>,
    /// Bumped whenever the topology changes.
    pub topology_version: watch::Sender<u64>,
    pub in_flight: Arc<Semaphore>,
    pub sends: Arc<Semaphore>,
    pub metrics: ParticipantMetrics,
    pub readiness: Conditions,
    pub fork: ForkAlarm,
    /// Ends this term: process shutdown, or this replica stopped being active.
    pub shutdown: CancellationToken,
    /// Whether this replica holds the lease at this moment: every send waits for it (see
    /// [`LeaseGuard`]: a replica woken from a stop must not answer for the participant before
    /// its lease is confirmed; the term's token ends only when a renewal fails).
    pub lease: LeaseGuard,
    /// Set when the term ended because this replica was demoted (lease lost, step-down), so
    /// answers can say "retry on the active replica" rather than "shutting down".
    pub demoted: AtomicBool,
    /// The SubmitAndWait calls this term accepted and has not answered yet; a step-down closes
    /// it and waits for them before the lease goes (see [`SubmissionGate`]).
    pub submissions: SubmissionGate,
    /// Times this term's own submissions stage by stage.
    pub stages: StageClock,
}

/// Admits SubmitAndWait calls into a term until it is closed, and counts the admitted ones
/// still running, so that a step-down can let them finish: close the gate (every later call
/// is refused, UNAVAILABLE), then [`drained`](Self::drained) resolves once the last admitted
/// call has been answered.
#[derive(Debug)]
pub(crate) struct SubmissionGate {
    /// (closed, admitted calls not yet answered)
    state: Arc<watch::Sender<(bool, usize)>>,
}

impl Default for SubmissionGate {
    fn default() -> Self {
        Self {
            state: Arc::new(watch::channel((false, 0)).0),
        }
    }
}

impl SubmissionGate {
    /// Admits one call, or `None` once the gate is closed. The call counts as running until
    /// the returned guard is dropped.
    pub fn enter(&self) -> Option<Admitted> {
        let mut admitted = false;
        // Admitting never wakes anyone: only leaving a closed gate can complete a drain.
        self.state.send_if_modified(|(closed, running)| {
            if !*closed {
                *running += 1;
                admitted = true;
            }
            false
        });
        admitted.then(|| Admitted {
            state: self.state.clone(),
        })
    }

    /// Refuses every later call. Returns how many admitted calls are still running.
    pub fn close(&self) -> usize {
        let mut running = 0;
        self.state.send_modify(|state| {
            state.0 = true;
            running = state.1;
        });
        running
    }

    pub fn is_closed(&self) -> bool {
        self.state.borrow().0
    }

    /// Admitted calls not answered yet.
    pub fn running(&self) -> usize {
        self.state.borrow().1
    }

    /// Resolves once the gate is closed and every admitted call has been answered.
    pub async fn drained(&self) {
        let mut state = self.state.subscribe();
        let _ = state
            .wait_for(|(closed, running)| *closed && *running == 0)
            .await;
    }
}

/// One admitted SubmitAndWait call; dropping it (the call answered) lets a drain complete.
#[derive(Debug)]
pub(crate) struct Admitted {
    state: Arc<watch::Sender<(bool, usize)>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.state.send_if_modified(|(closed, running)| {
            *running = running.saturating_sub(1);
            *closed && *running == 0
        });
    }
}

/// Why the writer stopped with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriterError {
    /// The store refused a write because this replica no longer holds the lease (or was
    /// already marked passive): it must demote itself, not stop the process.
    #[error("this replica may no longer write: {0}")]
    Fenced(#[source] StoreError),
    /// The term ended while a batch was still being retried; it was not written, and nothing
    /// of it was reported, so a replay from the checkpoint redoes it.
    #[error("the term ended before a batch could be written")]
    Interrupted,
    /// A fork in the sequencer stream, or a database error no retry can change (corrupt data,
    /// a broken invariant); an outage, however long, is ridden out instead.
    #[error(transparent)]
    Fatal(#[from] anyhow::Error),
}

impl Core {
    pub fn engine(&self) -> MutexGuard<'_, ParticipantEngine> {
        // A panic inside the engine leaves it mid-update; the writer then fails the node, so
        // reads through a poisoned lock only serve the last requests before the restart.
        self.engine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<String, Vec<oneshot::Sender<Completion>>>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a waiter for `change_key`. Call with the engine lock held, after seeing the
    /// change in flight, so the completion cannot slip in between.
    pub fn wait_for(&self, change_key: &str) -> oneshot::Receiver<Completion> {
        let (sender, receiver) = oneshot::channel();
        self.waiters()
            .entry(change_key.to_owned())
            .or_default()
            .push(sender);
        receiver
    }

    /// Ends the term's waiters: every SubmitAndWait still waiting gets UNAVAILABLE with the
    /// outcome unknown (dropping the sender wakes it), and retries with the same command id on
    /// whichever replica is active, whose deduplication answers with the original outcome.
    pub fn end_term(&self, demoted: bool) {
        if demoted {
            self.demoted.store(true, Ordering::SeqCst);
        }
        self.shutdown.cancel();
        self.waiters().clear();
    }

    /// Whether the term ended by demotion (rather than by process shutdown).
    pub fn is_demoted(&self) -> bool {
        self.demoted.load(Ordering::SeqCst)
    }

    fn notify(&self, completion: &Completion) {
        let waiters = self.waiters().remove(&completion.submission.change_key());
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(completion.clone());
        }
    }

    /// The one door of a local submission: the writer decides (deduplication, interpretation,
    /// in-flight marker, persisted), then the submission goes to the sequencer, then the
    /// completion answers. The waits for a duplicate's publication and for the completion are
    /// bounded by the submit timeout; the writer's answer is dropped, and every later wait
    /// cut short, when the term ends.
    pub async fn submit(&self, command: CommandSubmission) -> Result<SubmitAnswer, SubmitFailure> {
        let received = std::time::Instant::now();
        let now = Timestamp::now();
        let mut random = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut random);
        let seed = transaction_seed(now, random);
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let submission_id = submission_id(now, nonce);
        let request = SubmitRequest {
            change: command.change,
            commands: command.commands,
            dedup_period_us: command.dedup_period_s.saturating_mul(1_000_000),
            seed,
            submission_id: submission_id.clone(),
            mediator: self.config.mediator_id.clone(),
            max_sequencing_time: now.saturating_add(self.config.max_sequencing_delay()),
        };
        self.stages.start(submission_id.as_str(), received);
        let answer = self.admit_and_wait(request, now, &submission_id).await;
        // Answered one way or another: a submission that did not complete is not timed.
        self.stages.forget(submission_id.as_str());
        answer
    }

    async fn admit_and_wait(
        &self,
        request: SubmitRequest,
        now: Timestamp,
        submission_id: &MessageId,
    ) -> Result<SubmitAnswer, SubmitFailure> {
        let change = request.change.clone();
        let (reply, admission) = oneshot::channel();
        self.commands
            .send(WriterCommand::Submit {
                request,
                now,
                reply,
            })
            .await
            .map_err(|_| SubmitFailure::TermEnded)?;
        match admission.await.map_err(|_| SubmitFailure::TermEnded)? {
            Admission::Refused(error) => Ok(SubmitAnswer::Refused(error)),
            Admission::Duplicate {
                transaction_id,
                offset,
            } => {
                self.published(&change, offset).await?;
                Ok(SubmitAnswer::Duplicate {
                    transaction_id,
                    offset,
                })
            }
            Admission::InFlight(completion) => self.completion(completion, None).await,
            Admission::Started {
                submission,
                completion,
            } => {
                self.stages.mark(
                    submission_id.as_str(),
                    Stage::Admitted,
                    std::time::Instant::now(),
                );
                self.send_submission(*submission).await?;
                self.completion(completion, Some(submission_id.as_str()))
                    .await
            }
        }
    }

    /// Resolves once the ledger end reached `offset`. The writer answers a duplicate after
    /// publishing its batch, so this holds at once; it is the guard that a caller told
    /// "committed at offset N" can read N through GetTransactions right away.
    async fn published(
        &self,
        change: &ChangeId,
        offset: LedgerOffset,
    ) -> Result<(), SubmitFailure> {
        let mut published = self.ledger_end.subscribe();
        let timeout = self.config.submit_timeout();
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(SubmitFailure::TermEnded),
            waited = tokio::time::timeout(timeout, published.wait_for(|end| *end >= offset)) => match waited {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(SubmitFailure::TermEnded),
                Err(_) => Err(SubmitFailure::NotYetWritten {
                    change: Box::new(change.clone()),
                    offset,
                    waited_ms: timeout.as_millis(),
                }),
            },
        }
    }

    /// Sends a submission whose in-flight marker is persisted (under this replica's epoch);
    /// but not once the term ended: the new active replica owns the participant then, and
    /// learns the marker's fate from the stream or its max sequencing time. A failed send
    /// leaves the outcome to the stream as well.
    async fn send_submission(&self, submission: Submission) -> Result<(), SubmitFailure> {
        let submission_id = submission.message_id.clone();
        let sent = tokio::select! {
            _ = self.shutdown.cancelled() => return Err(SubmitFailure::TermEnded),
            sent = async {
                if self.may_send().await {
                    Some(self.client.send(submission).await)
                } else {
                    None
                }
            } => match sent {
                Some(sent) => sent,
                None => return Err(SubmitFailure::TermEnded),
            },
        };
        match sent {
            Ok(receipt) => {
                self.stages.mark(
                    submission_id.as_str(),
                    Stage::Sequenced,
                    std::time::Instant::now(),
                );
                tracing::debug!(%submission_id, ts = %receipt.timestamp, "submission sequenced")
            }
            Err(ClientError::Rejected { code, message }) => {
                // Not a definite "never sequenced": the client retries lost answers with the
                // same message id, so a refusal (say, max sequencing time passed) can answer a
                // retry of an attempt that *was* sequenced. Completing the command now could
                // tell the application ABORTED for a transaction that then commits (see the
                // `abandoned_submission_of_a_multi_hosted_party_commits` simulation). So the
                // stream decides, as for any unknown outcome: the request shows up, or
                // sequencer time passes its max sequencing time and the engine aborts it.
                tracing::warn!(%submission_id, ?code, %message, "the sequencer refused the submission; waiting for the stream to settle its fate");
            }
            Err(error) => {
                // Outcome unknown: the stream tells. Once sequencer time passes the max
                // sequencing time without the request, the engine completes it as ABORTED.
                tracing::warn!(%submission_id, %error, "sending a submission failed; waiting for the sequencer stream to tell its fate");
            }
        }
        Ok(())
    }

    /// Waits for a change's completion. `own` is this call's submission id: a completion of
    /// another submission of the same change answers a duplicate.
    async fn completion(
        &self,
        waiter: oneshot::Receiver<Completion>,
        own: Option<&str>,
    ) -> Result<SubmitAnswer, SubmitFailure> {
        let timeout = self.config.submit_timeout();
        let waited = tokio::select! {
            // The term's waiters are dropped when it ends; this also covers a waiter that was
            // registered just after that.
            _ = self.shutdown.cancelled() => return Err(SubmitFailure::TermEnded),
            waited = tokio::time::timeout(timeout, waiter) => waited,
        };
        let completion = match waited {
            Ok(Ok(completion)) => Box::new(completion),
            Ok(Err(_)) => return Err(SubmitFailure::TermEnded),
            Err(_) => {
                return Err(SubmitFailure::NoOutcome {
                    waited_ms: timeout.as_millis(),
                })
            }
        };
        if own.is_some_and(|id| id == completion.submission.submission_id) {
            Ok(SubmitAnswer::Completed(completion))
        } else {
            Ok(SubmitAnswer::CompletedEarlier(completion))
        }
    }

    /// One of the term's [`MAX_CONCURRENT_SENDS`] slots for a background send, held until it
    /// ends; `None` once the term ended.
    async fn send_permit(&self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            _ = self.shutdown.cancelled() => None,
            permit = self.sends.clone().acquire_owned() => permit.ok(),
        }
    }

    /// Sends messages through the sequencer in the background, coalesced into as few
    /// submissions as [`CoalesceLimits::DEFAULT`] allows (see [`meridian_core::coalesce`]), each
    /// bounded by `sends`. Once the term ended nothing more goes out (a retrying send is
    /// abandoned too): a demoted replica must not act for the participant. Whatever it did not
    /// send, the new active replica sends after replaying from the checkpoint; the receivers
    /// ignore a second copy.
    pub async fn send_in_background(self: &Arc<Self>, messages: Vec<OutgoingMessage>) {
        let mut outgoing = Vec::with_capacity(messages.len());
        for message in messages {
            match MessageId::new(message.message_id) {
                Ok(message_id) => outgoing.push(Outgoing {
                    message_id,
                    envelope: Envelope {
                        recipients: message.recipients,
                        payload: message.payload.into_bytes(),
                    },
                }),
                // The engine makes these ids; a bad one is a bug, not input.
                Err(error) => tracing::error!(%error, "not sending a message with an invalid id"),
            }
        }
        for group in coalesce(outgoing, CoalesceLimits::DEFAULT) {
            let Some(permit) = self.send_permit().await else {
                return;
            };
            self.metrics
                .messages_per_send
                .observe(group.envelopes.len() as f64);
            let core = Arc::clone(self);
            tokio::spawn(async move {
                let _permit = permit;
                let message_id = group.message_id.clone();
                let messages = group.members.len();
                tokio::select! {
                    _ = core.shutdown.cancelled() => {
                        tracing::debug!(%message_id, messages, "term ended; not sending");
                    }
                    sent = core.send_group(group) => if let Err(error) = sent {
                        tracing::warn!(%message_id, messages, %error, "sending protocol messages failed");
                    },
                }
            });
        }
    }

    async fn send_group(&self, group: Coalesced) -> anyhow::Result<()> {
        let submission = Submission {
            sender: self.participant.as_member(),
            message_id: group.message_id,
            envelopes: group.envelopes,
            max_sequencing_time: Timestamp::now()
                .saturating_add(self.config.max_sequencing_delay()),
        };
        if !self.may_send().await {
            anyhow::bail!("this replica no longer holds the lease");
        }
        self.client.send(submission).await?;
        Ok(())
    }

    /// Waits until this replica may send for the participant ([`LeaseGuard`]); false once it
    /// may not in this term. Every caller also ends with the term's token.
    async fn may_send(&self) -> bool {
        if self.lease.held_now() {
            return true;
        }
        self.metrics.sends_held_for_lease.inc();
        tracing::debug!("the lease is not known to be held (this process was stopped?): holding a send until it is renewed");
        self.lease.clone().held().await
    }

    /// Settles the submissions this term found in flight, without waiting out their max
    /// sequencing time. For each, a placeholder (a time proof to ourselves) is sent under the
    /// submission's own message id with the same deadline. The sequencer sequences a (sender,
    /// message id) once, atomically across its instances, so its answer decides:
    /// - it sequenced the placeholder: the original never will be (a late send by the old
    ///   replica is a duplicate), so the submission completes ABORTED at once and its command
    ///   can be resubmitted;
    /// - it answers "duplicate": the original was sequenced, and the stream brings it;
    /// - no answer: the stream decides, as before.
    ///
    /// Only submissions whose deadline is still ahead are settled so: the sequencer keeps a
    /// message id at least until its deadline, so a placeholder cannot slip into the slot of an
    /// original whose entry was pruned. The others expire with the stream's next event.
    pub async fn settle_inherited(self: &Arc<Self>) {
        let now = Timestamp::now();
        let inherited: Vec<(MessageId, Timestamp)> = self
            .engine()
            .in_flight()
            .filter(|submission| submission.max_sequencing_time > now)
            .filter_map(|submission| {
                let id = MessageId::new(submission.submission_id.clone()).ok()?;
                Some((id, submission.max_sequencing_time))
            })
            .collect();
        if inherited.is_empty() {
            return;
        }
        tracing::info!(
            submissions = inherited.len(),
            "settling the submissions inherited in flight"
        );
        for (message_id, deadline) in inherited {
            let Some(permit) = self.send_permit().await else {
                return;
            };
            let core = Arc::clone(self);
            tokio::spawn(async move {
                let _permit = permit;
                tokio::select! {
                    _ = core.shutdown.cancelled() => {}
                    () = core.settle_one(message_id, deadline) => {}
                }
            });
        }
    }

    async fn settle_one(&self, message_id: MessageId, deadline: Timestamp) {
        let me = self.participant.as_member();
        let placeholder = Submission {
            sender: me.clone(),
            message_id: message_id.clone(),
            envelopes: vec![Envelope {
                recipients: vec![me],
                payload: ProtocolMessage::TimeProof.encode(),
            }],
            max_sequencing_time: deadline,
        };
        if !self.may_send().await {
            return;
        }
        let settled = match self.client.send(placeholder).await {
            Ok(receipt) if receipt.deduplicated => {
                tracing::info!(%message_id, sequenced_at = %receipt.timestamp, "an inherited submission was sequenced; the stream brings it");
                "sequenced"
            }
            Ok(receipt) => {
                tracing::info!(%message_id, placeholder_at = %receipt.timestamp, "an inherited submission was never sequenced; aborting it");
                let command = WriterCommand::NeverSequenced {
                    submission_id: message_id.to_string(),
                    at: receipt.timestamp,
                };
                if self.commands.send(command).await.is_err() {
                    return;
                }
                "never_sequenced"
            }
            Err(error) => {
                tracing::warn!(%message_id, %error, "could not settle an inherited submission; the stream decides by its max sequencing time");
                "unknown"
            }
        };
        self.metrics
            .inherited_submissions
            .get_or_create(&OutcomeLabel { outcome: settled })
            .inc();
    }

    /// Asks the sequencer for an event addressed to ourselves, so that sequencer time passes
    /// the deadline of a submission whose fate is otherwise unknown.
    async fn request_time_proof(self: &Arc<Self>) {
        let now = Timestamp::now();
        let message = OutgoingMessage {
            message_id: format!("tp-{}-{}", self.participant, now.as_micros()),
            recipients: vec![self.participant.as_member()],
            payload: String::from_utf8_lossy(&ProtocolMessage::TimeProof.encode()).into_owned(),
        };
        self.send_in_background(vec![message]).await;
    }
}

/// A submission's message id: `sub-`, the participant's clock in 16 hex digits, then 128
/// random bits. The sequencer's deduplication index is keyed by sender and message id, and
/// ids in clock order go in at the sender's end of it instead of on one random page each
/// (a third of the sequencer's WAL frames were that index's pages); the random part keeps
/// ids apart.
fn submission_id(now: Timestamp, nonce: [u8; 16]) -> MessageId {
    MessageId::new(format!(
        "sub-{:016x}-{}",
        now.as_micros(),
        hex::encode(nonce)
    ))
    .expect("`sub-`, hex digits and a dash form a valid id")
}

/// Turns a delivered event into the engine's input.
fn input(event: SequencedEvent) -> SequencedInput {
    SequencedInput {
        timestamp: event.timestamp,
        sender: event.sender,
        payloads: event.envelopes.into_iter().map(|e| e.payload).collect(),
    }
}

/// Runs the writer until the term ends, the store fences it off, or a fatal error (a fork, a
/// database error no retry can change).
///
/// Two halves run side by side: [`process_batches`] runs the engine over each batch and sends
/// its messages, [`persist_batches`] writes the batches in the order they were processed and
/// only then answers the callers. So the engine works on the next batch while the database
/// writes the last one (the database works on its own thread), instead of every event waiting
/// for the previous batch's commit. At most [`QUEUED_BATCHES`] batches wait for a commit.
pub(crate) async fn run_writer(
    core: Arc<Core>,
    commands: mpsc::Receiver<WriterCommand>,
) -> Result<(), WriterError> {
    let (staged_tx, staged_rx) = mpsc::channel(QUEUED_BATCHES);
    let (persisted_tx, persisted_rx) = watch::channel(0);
    // Joined, not spawned: a term's end (or an abort of the writer) stops both, and neither
    // drops a write attempt half-way while the other runs on.
    let (processed, persisted) = tokio::join!(
        process_batches(
            &core,
            commands,
            PersistQueue {
                staged: staged_tx,
                persisted: persisted_rx,
                sent: 0,
            }
        ),
        persist_batches(&core, staged_rx, persisted_tx),
    );
    // The processing half stops quietly when the persisting half failed; that failure is the
    // cause. The persisting half stops quietly once the processing half stopped.
    persisted.and(processed)
}

/// Processed batches waiting for the commit in progress, at most; the commit after it writes
/// them together, so a slow commit does not multiply the commits. With the batches of the
/// commit in progress (as many at most), this bounds the work a crash replays and the memory
/// of waiting batches.
const QUEUED_BATCHES: usize = 8;

/// The processing half's end of the queue to [`persist_batches`].
struct PersistQueue {
    staged: mpsc::Sender<Staged>,
    /// How many batches the persisting half has written.
    persisted: watch::Receiver<u64>,
    /// How many batches went into the queue.
    sent: u64,
}

impl PersistQueue {
    /// Hands a processed batch over; `false` when the persisting half stopped.
    async fn send(&mut self, staged: Staged) -> bool {
        if self.staged.send(staged).await.is_err() {
            return false;
        }
        self.sent += 1;
        true
    }

    /// Waits until every batch handed over is written: `false` when the persisting half
    /// stopped first.
    async fn flush(&mut self) -> bool {
        let sent = self.sent;
        self.persisted
            .wait_for(|written| *written >= sent)
            .await
            .is_ok()
    }
}

async fn process_batches(
    core: &Arc<Core>,
    mut commands: mpsc::Receiver<WriterCommand>,
    mut queue: PersistQueue,
) -> Result<(), WriterError> {
    let mut subscription: Subscription = core.client.subscribe(core.engine().last_event());
    core.readiness.clear("sequencer");
    let memory_window = core.config.dedup_memory_window();
    let forget_interval = DEDUP_FORGET_INTERVAL.min(memory_window);
    let mut last_forget = std::time::Instant::now();
    loop {
        let mut events: Vec<SequencedEvent> = Vec::new();
        let mut batch_commands: Vec<WriterCommand> = Vec::new();
        let mut stream_error: Option<ClientError> = None;
        tokio::select! {
            _ = core.shutdown.cancelled() => return Ok(()),
            // The persisting half failed: its error ends the writer.
            _ = queue.staged.closed() => return Ok(()),
            command = commands.recv() => match command {
                Some(command) => batch_commands.push(command),
                None => return Ok(()),
            },
            item = subscription.next() => match item {
                Some(Ok(event)) => events.push(event),
                Some(Err(error)) => stream_error = Some(error),
                None => stream_error = Some(ClientError::Protocol("the subscription ended".into())),
            },
        }
        while stream_error.is_none() && events.len() + batch_commands.len() < MAX_BATCH {
            if let Ok(command) = commands.try_recv() {
                batch_commands.push(command);
                continue;
            }
            match subscription.next().now_or_never() {
                Some(Some(Ok(event))) => events.push(event),
                Some(Some(Err(error))) => stream_error = Some(error),
                Some(None) => {
                    stream_error = Some(ClientError::Protocol("the subscription ended".into()))
                }
                None => break,
            }
        }
        if !events.is_empty() || !batch_commands.is_empty() {
            if !recall_dedup(core, &batch_commands).await? {
                return Ok(());
            }
            let staged = process(core, events, batch_commands).await;
            if !queue.send(staged).await {
                return Ok(());
            }
        }
        // Forgetting an entry needs everything the engine processed also stored: a submission
        // of a forgotten change is looked up in the store (`recall_dedup`), and a replay after
        // a long outage commits changes older than the horizon.
        if last_forget.elapsed() >= forget_interval {
            if !queue.flush().await {
                return Ok(());
            }
            last_forget = std::time::Instant::now();
            let horizon = Timestamp::now().saturating_sub(memory_window);
            let (forgotten, kept, fingerprints) = {
                let mut engine = core.engine();
                let forgotten = engine.forget_committed_before(horizon);
                (forgotten, engine.dedup_len(), engine.forgotten_len())
            };
            core.metrics
                .dedup_memory_entries
                .set(i64::try_from(kept).unwrap_or(i64::MAX));
            tracing::debug!(
                forgotten,
                kept,
                fingerprints,
                "deduplication entries left to the store"
            );
        }
        if let Some(error) = stream_error {
            if let ClientError::Fork(fork) = &error {
                // The fork's record lists the transactions committed past the fork point,
                // read from the store: the processed ones must be there.
                if queue.flush().await {
                    halt_on_fork(core, fork).await;
                }
                return Ok(());
            }
            core.readiness
                .fail("sequencer", format!("subscription broke: {error}"));
            tracing::warn!(%error, "sequencer subscription broke; resubscribing");
            tokio::select! {
                _ = core.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
            }
            subscription = core.client.subscribe(core.engine().last_event());
            core.readiness.clear("sequencer");
        }
    }
}

/// Writes the processed batches in order, each followed by its answers ([`finish`]), and counts
/// them in `persisted`. Returns once the processing half stopped and every batch it handed
/// over is written, or at the first batch that cannot be.
async fn persist_batches(
    core: &Arc<Core>,
    staged: mpsc::Receiver<Staged>,
    persisted: watch::Sender<u64>,
) -> Result<(), WriterError> {
    // What was processed while the last commit ran goes into one commit, as it went into one
    // batch before the commits were pipelined.
    let mut commits = CommitQueue::new(staged, MAX_BATCH);
    while let Some((batch, merged)) = commits.next().await {
        finish(core, batch).await?;
        persisted.send_modify(|written| *written += merged);
    }
    Ok(())
}

/// Gives the engine the stored deduplication entries of the batch's submissions whose changes
/// memory forgot (see [`DEDUP_FORGET_INTERVAL`]), so that
/// [`ParticipantEngine::submit`] decides as if it held all of the period. One read for the
/// batch; a database outage is ridden out as a write's is. `Ok(false)` when the term ended.
async fn recall_dedup(core: &Core, commands: &[WriterCommand]) -> Result<bool, WriterError> {
    let unknown: Vec<String> = {
        let engine = core.engine();
        let now = Timestamp::now();
        commands
            .iter()
            .filter_map(|command| match command {
                WriterCommand::Submit { request, .. } => Some(request.change.key()),
                _ => None,
            })
            // Only a change memory forgot can be in the store: a fresh one costs no read.
            .filter(|key| engine.dedup_status(key, now).is_none() && engine.may_have_forgotten(key))
            .collect()
    };
    if unknown.is_empty() {
        return Ok(true);
    }
    let retry = Retry::new(&core.readiness, &core.shutdown).with_backoff(WHILE_SERVING);
    let found = retry
        .until("database", "cannot read deduplication entries", || {
            core.store.dedup_entries(&unknown)
        })
        .await;
    let records = match found {
        Ok(Some(records)) => records,
        Ok(None) => return Ok(false),
        Err(gave_up) => {
            return Err(anyhow::Error::new(gave_up)
                .context("stopping: reading deduplication entries kept failing")
                .into())
        }
    };
    let mut engine = core.engine();
    for record in records {
        if let Some(status) = committed_status(&record.state) {
            engine.recall_committed(&record.change_key, status);
        }
    }
    Ok(true)
}

/// The status of a committed entry as the store keeps it; `None` for an in-flight marker (the
/// store's marker carries the whole submission, which the engine tracks apart).
fn committed_status(state: &DedupState) -> Option<DedupStatus> {
    match state {
        DedupState::Committed {
            transaction_id,
            offset,
            expires_at,
        } => Some(DedupStatus::Committed {
            transaction_id: transaction_id.clone(),
            offset: *offset,
            expires_at: *expires_at,
        }),
        DedupState::InFlight => None,
    }
}

/// A fork: records it, lists the lost transactions, raises the alarm and processes nothing
/// more until the term ends. Not an exit: the admin endpoint must keep showing the alarm, and
/// this replica keeps the lease, so no passive takes over to resume on the forked history
/// either (one that did would meet the same fork at its first subscription).
async fn halt_on_fork(core: &Core, fork: &ForkError) {
    let details = crate::fork::on_fork(core.store.as_ref(), fork).await;
    core.fork.raise(core.participant.as_str(), fork, details);
    core.readiness.clear("sequencer");
    core.fork.halt(&core.shutdown).await;
}

/// The engine's decision on a submission, with the waiter its caller needs. Runs under the
/// engine lock, so a completion cannot slip in before the waiter is registered.
fn admit(
    core: &Core,
    engine: &mut ParticipantEngine,
    request: SubmitRequest,
    now: Timestamp,
) -> Admission {
    let key = request.change.key();
    match engine.submit(request, now) {
        Ok(Begin::Started(submission)) => Admission::Started {
            submission,
            completion: core.wait_for(&key),
        },
        Ok(Begin::InFlight { .. }) => Admission::InFlight(core.wait_for(&key)),
        Ok(Begin::Duplicate {
            transaction_id,
            offset,
        }) => Admission::Duplicate {
            transaction_id,
            offset,
        },
        Err(error) => Admission::Refused(error),
    }
}

/// What one batch changed, taken from the engine under its lock.
struct Processed {
    effects: Vec<Effect>,
    checkpoint: Option<Timestamp>,
    ledger_end: LedgerOffset,
    pending: usize,
    in_flight: usize,
    admissions: Vec<(oneshot::Sender<Admission>, Admission)>,
}

/// Runs the engine over a batch: commands first (so a submission decides against what earlier
/// batches persisted and published), then the events.
fn run_engine(core: &Core, events: Vec<SequencedEvent>, commands: Vec<WriterCommand>) -> Processed {
    let mut admissions = Vec::new();
    let mut engine = core.engine();
    for command in commands {
        match command {
            WriterCommand::Submit {
                request,
                now,
                reply,
            } => admissions.push((reply, admit(core, &mut engine, request, now))),
            WriterCommand::Topology(entries) => {
                engine.add_topology(&entries);
            }
            WriterCommand::NeverSequenced { submission_id, at } => {
                let message = format!(
                    "{}: the replica now active sequenced a placeholder under its message id at {at}, so it never will be; nothing was committed, resubmit",
                    meridian_core::protocol::NOT_SEQUENCED_REJECTION
                );
                engine.abandon_submission(&submission_id, StatusCode::Aborted, message, at);
            }
        }
    }
    for event in events {
        engine.handle_event(&input(event));
    }
    Processed {
        effects: engine.drain_effects(),
        checkpoint: engine.last_event(),
        ledger_end: engine.ledger_end(),
        pending: engine.pending_count(),
        in_flight: engine.in_flight_count(),
        admissions,
    }
}

/// A processed batch on its way to the store, with what is answered once it is written.
struct Staged {
    effects: Vec<Effect>,
    /// The last event processed, if the batch had any.
    checkpoint: Option<Timestamp>,
    admissions: Vec<(oneshot::Sender<Admission>, Admission)>,
    event_count: usize,
    command_count: usize,
    outgoing_count: usize,
    ledger_end: LedgerOffset,
    pending: usize,
    in_flight: usize,
}

/// Runs the engine over a batch and sends its messages: everything up to the commit.
async fn process(
    core: &Arc<Core>,
    events: Vec<SequencedEvent>,
    commands: Vec<WriterCommand>,
) -> Staged {
    let event_count = events.len();
    let command_count = commands.len();
    let Processed {
        effects,
        checkpoint,
        ledger_end,
        pending,
        in_flight,
        admissions,
    } = run_engine(core, events, commands);
    core.stages
        .mark_processed(&effects, std::time::Instant::now());

    let outgoing: Vec<OutgoingMessage> = effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Send(message) => Some(message.clone()),
            _ => None,
        })
        .collect();
    let outgoing_count = outgoing.len();
    if !outgoing.is_empty() {
        core.send_in_background(outgoing).await;
    }
    Staged {
        effects,
        checkpoint: (event_count > 0).then_some(checkpoint).flatten(),
        admissions,
        event_count,
        command_count,
        outgoing_count,
        ledger_end,
        pending,
        in_flight,
    }
}

impl Mergeable for Staged {
    /// Events and commands.
    fn size(&self) -> usize {
        self.event_count + self.command_count
    }

    /// One commit then writes both, as if the engine had run over both at once.
    fn merge(&mut self, later: Staged) {
        self.effects.extend(later.effects);
        self.checkpoint = later.checkpoint.or(self.checkpoint);
        self.admissions.extend(later.admissions);
        self.event_count += later.event_count;
        self.command_count += later.command_count;
        self.outgoing_count += later.outgoing_count;
        self.ledger_end = later.ledger_end;
        self.pending = later.pending;
        self.in_flight = later.in_flight;
    }
}

/// Persists a processed batch, then publishes its ledger end and answers its callers.
async fn finish(core: &Arc<Core>, staged: Staged) -> Result<(), WriterError> {
    let Staged {
        effects,
        checkpoint,
        admissions,
        event_count,
        command_count,
        outgoing_count,
        ledger_end,
        pending,
        in_flight,
    } = staged;
    let mut batch = batch_of(&effects);
    if checkpoint.is_some() {
        batch.checkpoint = checkpoint;
        // A fork repair can rewind to this boundary: nothing awaits a verdict here.
        batch.quiet = pending == 0;
    }
    if !batch.completions.is_empty() || !batch.transactions.is_empty() {
        batch.ledger_end = Some(ledger_end);
    }
    let persist_started = std::time::Instant::now();
    persist(core, &batch).await?;
    tracing::debug!(
        events = event_count,
        commands = command_count,
        checkpoint = ?batch.checkpoint,
        outgoing = outgoing_count,
        persist_ms = persist_started.elapsed().as_millis(),
        "batch persisted"
    );

    // Published before anyone is answered: a caller told "committed at offset N" (or
    // ALREADY_EXISTS naming N) must find N readable through GetTransactions right away.
    advance_to(&core.ledger_end, ledger_end);

    for (reply, admission) in admissions {
        let _ = reply.send(admission);
    }
    let mut topology_changed = false;
    let completed_at = std::time::Instant::now();
    for effect in &effects {
        match effect {
            Effect::Complete(completion) => {
                core.notify(completion);
                core.stages.mark(
                    &completion.submission.submission_id,
                    Stage::Completed,
                    completed_at,
                );
            }
            Effect::Commit(_) => {
                core.metrics.transactions_committed.inc();
            }
            Effect::TopologyChanged => topology_changed = true,
            _ => {}
        }
    }
    if topology_changed {
        core.topology_version.send_modify(|v| *v += 1);
    }
    let m = &core.metrics;
    m.events_processed.inc_by(event_count as u64);
    m.batch_size.observe((event_count + command_count) as f64);
    m.pending_requests
        .set(i64::try_from(pending).unwrap_or(i64::MAX));
    m.in_flight_submissions
        .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
    m.ledger_end
        .set(i64::try_from(ledger_end.0).unwrap_or(i64::MAX));
    Ok(())
}

/// Writes a batch, riding out every database error that passes (read-only, disk full,
/// connection loss, a lost race, a statement timeout; [`StoreError::is_transient`]): not ready
/// with the reason meanwhile, retried with the [`WHILE_SERVING`] backoff for as long as the
/// term lasts. Nobody waits on a lasting outage forever because of this: the submitters' own
/// timeouts answer them, and a replica that cannot renew its lease loses its term, which stops
/// the retry. Only a fenced write (demote) or an error no retry can change (corrupt data, a
/// broken invariant) ends it.
///
/// A retry first asks whether an earlier attempt committed after all ([`ParticipantStore::applied`]):
/// a connection lost during `COMMIT` leaves that unknown, and the batch's rows at fresh offsets
/// must not be inserted twice.
async fn persist(core: &Core, batch: &ParticipantBatch) -> Result<(), WriterError> {
    let in_doubt = &AtomicBool::new(false);
    // Not the term's token: an attempt in progress must run to its end, since a write
    // transaction dropped half-way can keep SQLite's write lock after the term ended. Each
    // attempt checks the term first instead; a wait between attempts is 250 ms at most.
    let attempts_stop = CancellationToken::new();
    let retry = Retry::new(&core.readiness, &attempts_stop).with_backoff(WHILE_SERVING);
    let written = retry
        .until("database", "cannot write", move || async move {
            if core.shutdown.is_cancelled() {
                return Ok(Written::TermEnded);
            }
            let attempt = async {
                if in_doubt.load(Ordering::Relaxed) && core.store.applied(batch).await? {
                    tracing::info!("a batch whose commit was in doubt turned out written");
                    return Ok(());
                }
                core.store.apply(batch).await
            };
            // Waiters are answered only after this commit; while it stalls, say so at /readyz.
            match core.readiness.watch_database_call(attempt).await {
                Ok(()) => Ok(Written::Done),
                Err(error) if error.is_transient() => {
                    in_doubt.store(true, Ordering::Relaxed);
                    Err(error)
                }
                // Fenced, or definite: no retry changes it; the caller decides.
                Err(error) => Ok(Written::Refused(error)),
            }
        })
        .await;
    match written {
        Ok(Some(Written::Done)) => Ok(()),
        // The term ended while retrying: nothing of the batch was reported, so the next active
        // term (or the restart) redoes it from the checkpoint.
        Ok(None | Some(Written::TermEnded)) => {
            core.readiness.clear("database");
            Err(WriterError::Interrupted)
        }
        // The one definition of "fenced" every role shares, so they all demote alike.
        Ok(Some(Written::Refused(error))) if is_fenced(&error) => {
            // The database answered: a stall reported meanwhile is over.
            core.readiness.clear("database");
            Err(WriterError::Fenced(error))
        }
        Ok(Some(Written::Refused(error))) => {
            core.readiness
                .fail("database", format!("cannot write: {error}"));
            Err(anyhow::Error::new(error)
                .context(
                    "stopping: persisting processed events failed with an error no retry can \
                     change (corrupt data or a broken invariant, not an outage); a restart \
                     replays from the checkpoint",
                )
                .into())
        }
        // `WHILE_SERVING` allows more attempts than a term can make; kept definite anyway.
        Err(gave_up) => Err(anyhow::Error::new(gave_up)
            .context("stopping: persisting processed events kept failing")
            .into()),
    }
}

/// How a write attempt of [`persist`] ended, when no retry follows.
enum Written {
    Done,
    /// The term had ended before the attempt: nothing was tried.
    TermEnded,
    /// Fenced, or an error no retry changes.
    Refused(StoreError),
}

/// The store rows for a list of effects.
pub(crate) fn batch_of(effects: &[Effect]) -> ParticipantBatch {
    let mut batch = ParticipantBatch::default();
    for effect in effects {
        match effect {
            Effect::InFlight(submission) => batch
                .dedup_upserts
                .push(dedup_record(submission, DedupState::InFlight)),
            Effect::Send(_) | Effect::TopologyChanged => {}
            Effect::Pending(pending) => {
                // The engine's own types always serialize.
                if let Ok(record) = serde_json::to_string(pending) {
                    batch.pending_upserts.push(PendingRecord {
                        request_id: pending.request_id,
                        record,
                    });
                }
            }
            Effect::Decided { request_id } => {
                batch
                    .pending_upserts
                    .retain(|p| p.request_id != *request_id);
                batch.pending_deletes.push(*request_id);
            }
            Effect::Commit(commit) => add_commit(&mut batch, commit),
            Effect::Complete(completion) => add_completion(&mut batch, completion),
        }
    }
    batch
}

fn dedup_record(submission: &LocalSubmission, state: DedupState) -> DedupRecord {
    DedupRecord {
        change_key: submission.change_key(),
        user_id: submission.change.user_id.clone(),
        command_id: submission.change.command_id.clone(),
        act_as: submission.change.act_as.clone(),
        submission_id: submission.submission_id.clone(),
        max_sequencing_time: submission.max_sequencing_time,
        dedup_period_us: submission.dedup_period_us,
        state,
    }
}

fn add_commit(batch: &mut ParticipantBatch, commit: &CommitRecord) {
    let archived: std::collections::BTreeSet<_> = commit.archived.iter().collect();
    // A contract created and archived within one batch never needs an update.
    batch.archived.extend(
        commit
            .archived
            .iter()
            .filter(|id| !batch.created.iter().any(|c| &c.contract.id == *id))
            .map(|id| (id.clone(), commit.offset)),
    );
    for stored in batch.created.iter_mut() {
        if archived.contains(&stored.contract.id) {
            stored.archived_offset = Some(commit.offset);
        }
    }
    batch
        .created
        .extend(commit.created.iter().map(|contract| StoredContract {
            contract: contract.clone(),
            created_offset: commit.offset,
            archived_offset: None,
        }));
    batch.transactions.push(TransactionRecord {
        offset: commit.offset,
        transaction_id: commit.transaction_id.clone(),
        request_id: commit.request_id,
        committed_at: commit.committed_at,
        user_id: commit.local.as_ref().map(|l| l.change.user_id.clone()),
        command_id: commit.local.as_ref().map(|l| l.change.command_id.clone()),
        informees: commit.informees.clone(),
        transaction: commit.transaction.clone(),
    });
}

fn add_completion(batch: &mut ParticipantBatch, completion: &Completion) {
    let submission = &completion.submission;
    let key = submission.change_key();
    let (status_code, message, transaction_id) = match &completion.outcome {
        Outcome::Committed { transaction_id, .. } => {
            batch.dedup_deletes.retain(|k| k != &key);
            batch.dedup_upserts.retain(|d| d.change_key != key);
            batch.dedup_upserts.push(dedup_record(
                submission,
                DedupState::Committed {
                    transaction_id: transaction_id.clone(),
                    offset: completion.offset,
                    expires_at: completion.dedup_expires_at(),
                },
            ));
            (0, String::new(), Some(transaction_id.clone()))
        }
        Outcome::Rejected { code, message } => {
            // Only this submission's marker goes: a newer submission of the same change may
            // have started since (after an abandon).
            let same = |d: &DedupRecord| {
                d.change_key == key && d.submission_id == submission.submission_id
            };
            let queued = batch.dedup_upserts.iter().any(same);
            batch.dedup_upserts.retain(|d| !same(d));
            if !queued {
                batch.dedup_deletes.push(key);
            }
            (code.as_i32(), message.clone(), None)
        }
    };
    batch.completions.push(CompletionRecord {
        offset: completion.offset,
        user_id: submission.change.user_id.clone(),
        command_id: submission.change.command_id.clone(),
        act_as: submission.change.act_as.clone(),
        submission_id: submission.submission_id.clone(),
        status_code,
        message,
        transaction_id,
        record_time: completion.record_time,
    });
}

/// Background chores: time proofs for submissions of unknown fate, dedup pruning.
pub(crate) async fn run_chores(core: Arc<Core>) {
    let mut proofs = tokio::time::interval(TIME_PROOF_INTERVAL);
    proofs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(DEDUP_PRUNE_INTERVAL);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = core.shutdown.cancelled() => return,
            _ = proofs.tick() => {
                let deadline = core.engine().earliest_unsequenced_deadline();
                if deadline.is_some_and(|d| d < Timestamp::now()) {
                    core.request_time_proof().await;
                }
            }
            _ = prune.tick() => {
                let now = Timestamp::now();
                let pruned = core.engine().prune_dedup(now);
                match core.store.prune_dedup(now).await {
                    Ok(rows) => tracing::debug!(pruned, rows, "pruned expired deduplication entries"),
                    Err(error) => tracing::warn!(%error, "pruning deduplication entries failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;

    use meridian_core::Timestamp;

    use super::{submission_id, SubmissionGate};

    #[test]
    fn submission_ids_sort_by_the_clock_and_differ_by_their_nonce() {
        let earlier = submission_id(Timestamp::from_micros(1_700_000_000_000_000), [0xff; 16]);
        let later = submission_id(Timestamp::from_micros(1_700_000_000_000_001), [0; 16]);
        let same_moment = submission_id(Timestamp::from_micros(1_700_000_000_000_001), [1; 16]);
        assert!(earlier < later, "{earlier} {later}");
        assert_ne!(later, same_moment);
        // Fixed width, so the text sorts as the number does (a clock passing a power of 16).
        let short = submission_id(Timestamp::from_micros(0xf), [0; 16]);
        let long = submission_id(Timestamp::from_micros(0x10), [0; 16]);
        assert!(short < long, "{short} {long}");
        assert_eq!(earlier.as_str().len(), "sub-".len() + 16 + 1 + 32);
    }

    #[tokio::test]
    async fn a_closed_gate_refuses_and_drains_once_the_admitted_calls_are_answered() {
        let gate = SubmissionGate::default();
        let first = gate.enter().expect("open gate admits");
        let second = gate.enter().expect("open gate admits");
        assert_eq!(gate.running(), 2);
        // Not closed: never drained, however few calls run.
        drop(second);
        assert!(gate.drained().now_or_never().is_none());

        assert_eq!(gate.close(), 1);
        assert!(gate.is_closed());
        assert!(gate.enter().is_none(), "a closed gate admits nothing");
        let drained = tokio::spawn({
            let state = gate.state.clone();
            async move { SubmissionGate { state }.drained().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drained.is_finished(), "one admitted call still runs");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), drained)
            .await
            .expect("drained once the last call was answered")
            .expect("no panic");
        assert_eq!(gate.running(), 0);
    }

    #[tokio::test]
    async fn closing_an_idle_gate_is_drained_at_once() {
        let gate = SubmissionGate::default();
        assert_eq!(gate.close(), 0);
        assert!(gate.drained().now_or_never().is_some());
    }
}
