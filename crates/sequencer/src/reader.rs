//! Delivery: one task per subscription reads the member's events from the store, up to the
//! safe point, and streams them in timestamp order.
//!
//! The task sleeps on the safe-point watch channel, so a commit wakes every subscriber at once
//! and each catches up with one paged query. Reading from the store (rather than from an
//! in-memory fan-out) makes every instance deliver the same history and lets a subscriber
//! resume from any timestamp. Only the envelopes addressed to the member are delivered; the
//! message id only to the sender itself.
//!
//! A subscriber may ask for keep-alives: after `keep_alive` without sending anything, the task
//! sends an empty `keep_alive` message. That lets a client with several sequencer endpoints
//! tell an idle stream from a paused or wedged instance (which sends nothing at all) within a
//! bound and resume on another instance.

use std::sync::Arc;
use std::time::Duration;

use meridian_core::{MemberId, Timestamp};
use meridian_proto::v1;
use meridian_store::{MemberRecord, SequencerStore, StoredEvent};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::directory::MemberDirectory;
use crate::metrics::SequencerMetrics;

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

/// Starts streaming; the returned receiver ends when the client goes away, the node shuts
/// down, or the store fails (with an UNAVAILABLE status, after which the client resumes).
pub fn spawn_subscription(
    store: Arc<dyn SequencerStore>,
    directory: Arc<MemberDirectory>,
    subscription: Subscription,
    mut safe_point: watch::Receiver<Timestamp>,
    metrics: SequencerMetrics,
    shutdown: CancellationToken,
) -> mpsc::Receiver<Result<v1::SequencedEvent, tonic::Status>> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER_EVENTS);
    tokio::spawn(async move {
        let _counted = SubscriberGauge::enter(&metrics);
        let member = subscription.member;
        let keep_alive = subscription
            .keep_alive
            .map(|interval| interval.clamp(MIN_KEEP_ALIVE, MAX_KEEP_ALIVE));
        // `read_until`: everything up to here has been read (whether or not it was ours).
        let mut read_until = subscription.after;
        let mut last_sent = tokio::time::Instant::now();
        loop {
            let up_to = *safe_point.borrow_and_update();
            if read_until.is_none_or(|r| r < up_to) {
                match store
                    .read_events(member.seq, read_until, up_to, READ_PAGE_EVENTS)
                    .await
                {
                    Ok(events) => {
                        let full_page = events.len() == READ_PAGE_EVENTS as usize;
                        let last = events.last().map(|e| e.timestamp);
                        for event in events {
                            let lag = Timestamp::now().duration_since(event.timestamp);
                            let wire = match to_wire(event, &member.id, &directory).await {
                                Ok(wire) => wire,
                                Err(status) => {
                                    let _ = tx.send(Err(status)).await;
                                    return;
                                }
                            };
                            if tx.send(Ok(wire)).await.is_err() {
                                return;
                            }
                            last_sent = tokio::time::Instant::now();
                            metrics.events_delivered.inc();
                            metrics.delivery_lag_seconds.observe(lag.as_secs_f64());
                        }
                        read_until = if full_page { last } else { Some(up_to) };
                        if full_page {
                            continue;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(member = %member.id, %error, "reading events failed; ending the stream");
                        let _ = tx
                            .send(Err(tonic::Status::unavailable(format!(
                                "reading events failed: {error}; resubscribe"
                            ))))
                            .await;
                        break;
                    }
                }
            }
            let keep_alive_due = last_sent + keep_alive.unwrap_or(MAX_KEEP_ALIVE);
            tokio::select! {
                changed = safe_point.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(keep_alive_due), if keep_alive.is_some() => {
                    if tx.send(Ok(keep_alive_message())).await.is_err() {
                        break;
                    }
                    last_sent = tokio::time::Instant::now();
                }
                _ = tx.closed() => break,
                _ = shutdown.cancelled() => {
                    let _ = tx.send(Err(tonic::Status::unavailable("the sequencer is shutting down"))).await;
                    break;
                }
            }
        }
    });
    rx
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

async fn to_wire(
    event: StoredEvent,
    member: &MemberId,
    directory: &MemberDirectory,
) -> Result<v1::SequencedEvent, tonic::Status> {
    let batch = v1::Batch::decode(event.batch.as_slice()).map_err(|error| {
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
