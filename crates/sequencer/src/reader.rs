//! Delivery: one task per subscription streams the member's events in timestamp order, up to
//! the safe point, from the instance's shared tail ([`crate::tail`]) when its position is
//! inside the tail's ring, and from the store otherwise.
//!
//! The task sleeps on the tail's progress, so a commit wakes every subscriber once the tail
//! has read the new events (one store query for all of them); each then picks its member's
//! events out of the ring. A subscriber behind the ring (a resume from an old timestamp, a
//! client slow enough for the ring to move past it) reads its member's events from the store
//! with paged queries, up to where the tail has read, and rejoins the ring from there: the
//! store is the source of truth, so every instance delivers the same history and a subscriber
//! can resume from any timestamp. [`crate::tail::next_step`] decides, without I/O, which of
//! the two serves next; this task only carries the decision out. Only the envelopes addressed
//! to the member are delivered; the message id only to the sender itself.
//!
//! A subscriber may ask for keep-alives: after `keep_alive` without sending anything, the task
//! sends an empty `keep_alive` message. That lets a client with several sequencer endpoints
//! tell an idle stream from a paused or wedged instance (which sends nothing at all) within a
//! bound and resume on another instance.

use std::sync::Arc;
use std::time::Duration;

use meridian_core::{MemberId, MessageId, Timestamp};
use meridian_proto::v1;
use meridian_store::{MemberRecord, MemberSeq, SequencerStore};
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::directory::MemberDirectory;
use crate::metrics::SequencerMetrics;
use crate::tail::{next_step, Cursor, ReaderTail, Step, RING_SCAN_EVENTS};

/// Events fetched per query; bounds memory per subscriber while catching up.
pub const READ_PAGE_EVENTS: u32 = 500;
/// Events buffered towards a slow client before the reader waits for it.
pub const STREAM_BUFFER_EVENTS: usize = 1_024;
/// Bounds on the keep-alive interval a subscriber may ask for: more often would be a load of
/// its own, less often is no better than none.
pub const MIN_KEEP_ALIVE: Duration = Duration::from_millis(50);
pub const MAX_KEEP_ALIVE: Duration = Duration::from_secs(60);

pub struct Subscription {
    pub member: MemberRecord,
    pub after: Option<Timestamp>,
    /// Send a keep-alive after this long without sending anything; `None` sends none.
    pub keep_alive: Option<Duration>,
}

/// The wire keep-alive: no event, just proof that this instance is alive and streaming.
fn keep_alive_message() -> v1::SequencedEvent {
    v1::SequencedEvent {
        keep_alive: true,
        ..Default::default()
    }
}

/// What a subscription needs besides its own request: the store, the member directory, the
/// instance's shared tail, metrics and the shutdown token.
#[derive(Clone)]
pub struct ReaderContext {
    pub store: Arc<dyn SequencerStore>,
    pub directory: Arc<MemberDirectory>,
    pub tail: Arc<ReaderTail>,
    pub metrics: SequencerMetrics,
    pub shutdown: CancellationToken,
}

/// Why a subscription's task stops.
enum Stop {
    /// The client went away, or the node shuts down (already told).
    Quietly,
    /// Tell the client, then stop.
    With(tonic::Status),
    /// Reading events failed: log it, tell the client UNAVAILABLE (it resubscribes), stop.
    ReadFailed(String),
}

fn read_failed(error: &dyn std::fmt::Display) -> Stop {
    Stop::ReadFailed(error.to_string())
}

/// Starts streaming; the returned receiver ends when the client goes away, the node shuts
/// down, or the store fails (with an UNAVAILABLE status, after which the client resumes).
pub fn spawn_subscription(
    context: ReaderContext,
    subscription: Subscription,
) -> mpsc::Receiver<Result<v1::SequencedEvent, tonic::Status>> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER_EVENTS);
    tokio::spawn(async move {
        let _counted = SubscriberGauge::enter(&context.metrics);
        let member = subscription.member.id.clone();
        let status = match stream(&context, subscription, &tx).await {
            Stop::Quietly => return,
            Stop::With(status) => status,
            Stop::ReadFailed(error) => {
                tracing::warn!(%member, %error, "reading events failed; ending the stream");
                tonic::Status::unavailable(format!("reading events failed: {error}; resubscribe"))
            }
        };
        let _ = tx.send(Err(status)).await;
    });
    rx
}

type Sink = mpsc::Sender<Result<v1::SequencedEvent, tonic::Status>>;

async fn stream(context: &ReaderContext, subscription: Subscription, tx: &Sink) -> Stop {
    let member = subscription.member;
    let keep_alive = subscription
        .keep_alive
        .map(|interval| interval.clamp(MIN_KEEP_ALIVE, MAX_KEEP_ALIVE));
    let mut progress = context.tail.progress();
    // Failures of the tail before this subscription started are not its concern.
    let failures_seen = progress.borrow().failures;
    let mut cursor = Cursor::new(subscription.after);
    let mut last_sent = tokio::time::Instant::now();
    loop {
        let tail_state = progress.borrow_and_update().clone();
        if tail_state.failures > failures_seen {
            let error = tail_state.last_error.as_deref().unwrap_or("unknown error");
            return read_failed(&error);
        }
        let step = next_step(&cursor, &context.tail.ring(), member.seq, RING_SCAN_EVENTS);
        match step {
            Step::Wait => {}
            Step::ReadStore { after, up_to } => {
                let page = match context
                    .store
                    .read_events(member.seq, after, up_to, READ_PAGE_EVENTS)
                    .await
                {
                    Ok(page) => page,
                    Err(error) => return read_failed(&error),
                };
                context.metrics.store_reads.inc();
                for event in &page {
                    let view = EventView {
                        timestamp: event.timestamp,
                        previous_timestamp: event.previous_timestamp,
                        sender: event.sender,
                        message_id: &event.message_id,
                        batch: &event.batch,
                    };
                    if let Err(stop) = send(context, tx, &member.id, view).await {
                        return stop;
                    }
                    last_sent = tokio::time::Instant::now();
                }
                cursor.store_page_done(&page, READ_PAGE_EVENTS, up_to);
                continue;
            }
            Step::LookUpPrevious { at } => {
                match context.store.member_history_at(member.seq, at).await {
                    Ok(history) => cursor.set_previous(history.at_or_before),
                    Err(error) => return read_failed(&error),
                }
                continue;
            }
            Step::Deliver { events, through } => {
                for event in &events {
                    let Some(previous_timestamp) = cursor.previous() else {
                        // next_step asks for the previous event first; not reachable.
                        return read_failed(&"the member's previous event is unknown");
                    };
                    let view = EventView {
                        timestamp: event.timestamp,
                        previous_timestamp,
                        sender: event.sender,
                        message_id: &event.message_id,
                        batch: &event.batch,
                    };
                    if let Err(stop) = send(context, tx, &member.id, view).await {
                        return stop;
                    }
                    cursor.delivered(event.timestamp);
                    last_sent = tokio::time::Instant::now();
                }
                cursor.advance_to(through);
                continue;
            }
        }
        let keep_alive_due = last_sent + keep_alive.unwrap_or(MAX_KEEP_ALIVE);
        tokio::select! {
            changed = progress.changed() => if changed.is_err() {
                return Stop::With(tonic::Status::unavailable("the sequencer is shutting down"));
            },
            _ = tokio::time::sleep_until(keep_alive_due), if keep_alive.is_some() => {
                if tx.send(Ok(keep_alive_message())).await.is_err() {
                    return Stop::Quietly;
                }
                last_sent = tokio::time::Instant::now();
            }
            _ = tx.closed() => return Stop::Quietly,
            _ = context.shutdown.cancelled() => {
                return Stop::With(tonic::Status::unavailable("the sequencer is shutting down"));
            }
        }
    }
}

/// Encodes one event for `member` and sends it (or the error encoding it), counting it and
/// its lag.
async fn send(
    context: &ReaderContext,
    tx: &Sink,
    member: &MemberId,
    event: EventView<'_>,
) -> Result<(), Stop> {
    let timestamp = event.timestamp;
    let wire = to_wire(event, member, &context.directory).await;
    let lag = Timestamp::now().duration_since(timestamp);
    let wire = wire.map_err(Stop::With)?;
    if tx.send(Ok(wire)).await.is_err() {
        return Err(Stop::Quietly);
    }
    context.metrics.events_delivered.inc();
    context
        .metrics
        .delivery_lag_seconds
        .observe(lag.as_secs_f64());
    Ok(())
}

/// Counts an open subscription for as long as it lives, whichever way its task ends.
struct SubscriberGauge(prometheus_client::metrics::gauge::Gauge);

impl SubscriberGauge {
    fn enter(metrics: &SequencerMetrics) -> Self {
        metrics.subscribers.inc();
        Self(metrics.subscribers.clone())
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One event of the member's stream, from the store or the ring.
struct EventView<'a> {
    timestamp: Timestamp,
    previous_timestamp: Option<Timestamp>,
    sender: MemberSeq,
    message_id: &'a MessageId,
    batch: &'a [u8],
}

async fn to_wire(
    event: EventView<'_>,
    member: &MemberId,
    directory: &MemberDirectory,
) -> Result<v1::SequencedEvent, tonic::Status> {
    let batch = v1::Batch::decode(event.batch).map_err(|error| {
        tracing::error!(timestamp = %event.timestamp, %error, "stored batch does not decode");
        tonic::Status::data_loss(format!(
            "stored event {} does not decode: {error}",
            event.timestamp
        ))
    })?;
    let sender = match directory.id_of(event.sender) {
        Some(id) => id,
        None => {
            let _ = directory.reload().await;
            directory.id_of(event.sender).ok_or_else(|| {
                tonic::Status::data_loss(format!(
                    "event {} names an unknown sender {:?}",
                    event.timestamp, event.sender
                ))
            })?
        }
    };
    let envelopes = batch
        .envelopes
        .into_iter()
        .filter(|e| e.recipients.iter().any(|r| r == member.as_str()))
        .collect();
    Ok(v1::SequencedEvent {
        timestamp_us: event.timestamp.as_micros(),
        previous_timestamp_us: event.previous_timestamp.map(Timestamp::as_micros),
        message_id: if &sender == member {
            event.message_id.to_string()
        } else {
            String::new()
        },
        sender: sender.to_string(),
        envelopes,
        keep_alive: false,
    })
}
