//! The sequencer's Prometheus metrics. Registered once into the node's registry; cloned
//! handles are cheap (Arc inside) and shared by the writer, readers and the gRPC service.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// sequenced, deduplicated, rejected, refused_deadline, unavailable
    pub outcome: &'static str,
}

#[derive(Clone, Debug)]
pub struct SequencerMetrics {
    pub submissions: Family<OutcomeLabel, Counter>,
    pub events_delivered: Counter,
    pub batch_size: Histogram,
    pub send_latency_seconds: Histogram,
    /// Time from an event's sequencing timestamp to its delivery to a subscriber.
    pub delivery_lag_seconds: Histogram,
    pub subscribers: Gauge,
    pub watermark_us: Gauge,
    pub safe_point_us: Gauge,
}

impl SequencerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            submissions: Family::default(),
            events_delivered: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            send_latency_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            delivery_lag_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            subscribers: Gauge::default(),
            watermark_us: Gauge::default(),
            safe_point_us: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("sequencer");
        r.register(
            "submissions",
            "Send requests by outcome",
            metrics.submissions.clone(),
        );
        r.register(
            "events_delivered",
            "Events delivered to subscribers",
            metrics.events_delivered.clone(),
        );
        r.register(
            "batch_size",
            "Events written per database transaction",
            metrics.batch_size.clone(),
        );
        r.register(
            "send_latency_seconds",
            "Time from receiving a send to replying, including the durable write",
            metrics.send_latency_seconds.clone(),
        );
        r.register(
            "delivery_lag_seconds",
            "Subscriber lag: time from an event's timestamp to its delivery",
            metrics.delivery_lag_seconds.clone(),
        );
        r.register(
            "subscribers",
            "Open subscriptions",
            metrics.subscribers.clone(),
        );
        r.register(
            "watermark_us",
            "This instance's committed watermark (microseconds since the epoch)",
            metrics.watermark_us.clone(),
        );
        r.register(
            "safe_point_us",
            "Delivery safe point: the minimum watermark of online instances",
            metrics.safe_point_us.clone(),
        );
        metrics
    }

    pub fn count(&self, outcome: &'static str) {
        self.submissions
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}
