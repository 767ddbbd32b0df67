//! The sequencer's Prometheus metrics. Registered once into the node's registry; cloned
//! handles are cheap (Arc inside) and shared by the writer, readers and the gRPC service.

pub use meridian_node::metrics::OutcomeLabel;
use meridian_node::metrics::{RoleRegistry, TimestampGauge};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug)]
pub struct SequencerMetrics {
    /// By outcome: sequenced, deduplicated, rejected, refused_deadline, unavailable.
    pub submissions: Family<OutcomeLabel, Counter>,
    pub events_delivered: Counter,
    pub batch_size: Histogram,
    pub send_latency_seconds: Histogram,
    /// Time from an event's sequencing timestamp to its delivery to a subscriber.
    pub delivery_lag_seconds: Histogram,
    pub subscribers: Gauge,
    /// Paged store reads of subscribers behind the shared tail's ring (the tail's own reads
    /// are not counted).
    pub store_reads: Counter,
    /// This instance's committed watermark, seconds since the epoch.
    pub watermark_timestamp_seconds: TimestampGauge,
    /// The delivery safe point, seconds since the epoch.
    pub safe_point_timestamp_seconds: TimestampGauge,
    /// Peers this instance marked offline, by evidence: `lock_released` (a dead process's
    /// presence lock) or `watermark_still` (the age fallback, for a stopped or stalled one).
    pub peers_marked_offline: Family<EvidenceLabel, Counter>,
    /// Watermarks written at once because a peer's event waited for this instance's, instead
    /// of at its next commit or heartbeat.
    pub watermark_catch_ups: Counter,
    /// Advances of the shared reader tail by where their events came from: `store` (read
    /// back) or `own_writes` (this instance's commits, handed over by its writer while no
    /// other instance had written since).
    pub tail_advances: Family<TailSourceLabel, Counter>,
}

/// The label of [`SequencerMetrics::tail_advances`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TailSourceLabel {
    pub source: &'static str,
}

/// The label of [`SequencerMetrics::peers_marked_offline`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvidenceLabel {
    pub evidence: &'static str,
}

impl SequencerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let mut r = RoleRegistry::new(registry, "sequencer");
        Self {
            submissions: r.family("submissions", "Send requests by outcome"),
            events_delivered: r.counter("events_delivered", "Events delivered to subscribers"),
            batch_size: r.batch_sizes("batch_size", "Events written per database transaction"),
            send_latency_seconds: r.latencies_seconds(
                "send_latency_seconds",
                "Time from receiving a send to replying, including the durable write",
            ),
            delivery_lag_seconds: r.latencies_seconds(
                "delivery_lag_seconds",
                "Subscriber lag: time from an event's timestamp to its delivery",
            ),
            subscribers: r.gauge("subscribers", "Open subscriptions"),
            store_reads: r.counter(
                "subscriber_store_reads",
                "Store reads by subscribers behind the shared reader tail",
            ),
            watermark_timestamp_seconds: r.timestamp(
                "watermark_timestamp_seconds",
                "This instance's committed watermark (seconds since the epoch)",
            ),
            safe_point_timestamp_seconds: r.timestamp(
                "safe_point_timestamp_seconds",
                "Delivery safe point: the minimum watermark of online instances (seconds since the epoch)",
            ),
            peers_marked_offline: r.family(
                "peers_marked_offline",
                "Peer instances this instance marked offline, by evidence (lock_released, watermark_still)",
            ),
            watermark_catch_ups: r.counter(
                "watermark_catch_ups",
                "Watermarks written at once because a peer's event waited for this instance's",
            ),
            tail_advances: r.family(
                "tail_advances",
                "Reader tail advances by where their events came from (store, own_writes)",
            ),
        }
    }

    pub fn count(&self, outcome: &'static str) {
        self.submissions
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}
