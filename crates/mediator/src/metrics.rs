//! The mediator's Prometheus metrics, registered once into the node's registry. Handles are
//! cheap clones (Arc inside) shared by the event loop and the sender task.

use meridian_core::protocol::{RejectionCode, VerdictOutcome};
pub use meridian_node::metrics::OutcomeLabel;
use meridian_node::metrics::{RoleRegistry, TimestampGauge};
use meridian_node::replica::LeaseMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug)]
pub struct MediatorMetrics {
    /// By outcome: approved, or the rejection code: timeout, topology, inactive_contracts, ...
    pub verdicts: Family<OutcomeLabel, Counter>,
    pub verdicts_sent: Counter,
    /// Verdict sends the sequencer refused definitely; those verdicts are given up.
    pub verdicts_abandoned: Counter,
    pub pending_requests: Gauge,
    pub invalid_responses: Family<ReasonLabel, Counter>,
    pub ignored_messages: Family<ReasonLabel, Counter>,
    pub events: Counter,
    pub time_proofs: Counter,
    /// Events persisted per database transaction.
    pub batch_size: Histogram,
    /// Verdicts coalesced into one submission to the sequencer.
    pub verdicts_per_send: Histogram,
    pub commit_latency_seconds: Histogram,
    /// The last processed event's timestamp, seconds since the epoch.
    pub last_event_timestamp_seconds: TimestampGauge,
    /// Replica lease terms begun and lost (`lease_acquired_total{how}`, `lease_lost_total`).
    pub lease: LeaseMetrics,
}

impl MediatorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let mut r = RoleRegistry::new(registry, "mediator");
        Self {
            verdicts: r.family("verdicts", "Verdicts decided, by outcome"),
            verdicts_sent: r.counter("verdicts_sent", "Verdicts the sequencer acknowledged"),
            verdicts_abandoned: r.counter(
                "verdicts_abandoned",
                "Verdicts the sequencer refused definitely and that are not retried",
            ),
            pending_requests: r.gauge("pending_requests", "Requests waiting for responses"),
            invalid_responses: r.family(
                "invalid_responses",
                "Confirmation responses ignored because they failed validation, by reason",
            ),
            ignored_messages: r.family(
                "ignored_messages",
                "Messages that changed nothing (invalid, late, duplicate, malformed), by reason",
            ),
            events: r.counter("events", "Sequenced events processed"),
            time_proofs: r.counter(
                "time_proofs",
                "Time proofs requested while waiting for deadlines",
            ),
            batch_size: r.batch_sizes("batch_size", "Events persisted per database transaction"),
            verdicts_per_send: r.batch_sizes(
                "verdicts_per_send",
                "Verdicts coalesced into one submission to the sequencer",
            ),
            commit_latency_seconds: r.latencies_seconds(
                "commit_latency_seconds",
                "Time to persist one run of events",
            ),
            last_event_timestamp_seconds: r.timestamp(
                "last_event_timestamp_seconds",
                "Timestamp of the last processed event (seconds since the epoch)",
            ),
            lease: LeaseMetrics::register(&mut r),
        }
    }

    pub fn count_verdict(&self, outcome: &VerdictOutcome) {
        self.verdicts
            .get_or_create(&OutcomeLabel {
                outcome: outcome_label(outcome),
            })
            .inc();
    }

    pub fn count_ignored(&self, reason: &'static str, invalid_response: bool) {
        self.ignored_messages
            .get_or_create(&ReasonLabel { reason })
            .inc();
        if invalid_response {
            self.invalid_responses
                .get_or_create(&ReasonLabel { reason })
                .inc();
        }
    }
}

pub fn outcome_label(outcome: &VerdictOutcome) -> &'static str {
    match outcome {
        VerdictOutcome::Approved => "approved",
        VerdictOutcome::Rejected { code, .. } => match code {
            RejectionCode::Timeout => "timeout",
            RejectionCode::InactiveContracts => "inactive_contracts",
            RejectionCode::LockedContracts => "locked_contracts",
            RejectionCode::NotAuthorized => "not_authorized",
            RejectionCode::ModelConformance => "model_conformance",
            RejectionCode::Topology => "topology",
            RejectionCode::Malformed => "malformed",
        },
    }
}
