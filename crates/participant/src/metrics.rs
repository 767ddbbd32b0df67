//! The participant's Prometheus metrics, registered once into the node's registry. Handles are
//! cheap clones shared by the writer task and the Ledger API.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// committed, or the lower-case gRPC code of the answer (already_exists, aborted, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug)]
pub struct ParticipantMetrics {
    pub submissions: Family<OutcomeLabel, Counter>,
    /// SubmitAndWait latency of committed submissions, from receipt to answer.
    pub commit_latency_seconds: Histogram,
    pub pending_requests: Gauge,
    pub in_flight_submissions: Gauge,
    pub ledger_end: Gauge,
    pub transactions_committed: Counter,
    pub events_processed: Counter,
    /// Sequencer events and local commands handled per database transaction.
    pub batch_size: Histogram,
}

impl ParticipantMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            submissions: Family::default(),
            commit_latency_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            pending_requests: Gauge::default(),
            in_flight_submissions: Gauge::default(),
            ledger_end: Gauge::default(),
            transactions_committed: Counter::default(),
            events_processed: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
        };
        let r = registry.sub_registry_with_prefix("participant");
        r.register(
            "submissions",
            "SubmitAndWait calls by outcome",
            metrics.submissions.clone(),
        );
        r.register(
            "commit_latency_seconds",
            "SubmitAndWait latency of committed submissions",
            metrics.commit_latency_seconds.clone(),
        );
        r.register(
            "pending_requests",
            "Validated requests awaiting their verdict",
            metrics.pending_requests.clone(),
        );
        r.register(
            "in_flight_submissions",
            "Own submissions not yet seen sequenced",
            metrics.in_flight_submissions.clone(),
        );
        r.register(
            "ledger_end",
            "The last assigned ledger offset",
            metrics.ledger_end.clone(),
        );
        r.register(
            "transactions_committed",
            "Transactions committed on this participant",
            metrics.transactions_committed.clone(),
        );
        r.register(
            "events_processed",
            "Sequencer events processed",
            metrics.events_processed.clone(),
        );
        r.register(
            "batch_size",
            "Events and commands handled per database transaction",
            metrics.batch_size.clone(),
        );
        metrics
    }

    pub fn count(&self, outcome: &'static str) {
        self.submissions
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}
