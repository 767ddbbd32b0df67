//! The mediator's Prometheus metrics, registered once into the node's registry. Handles are
//! cheap clones (Arc inside) shared by the event loop and the sender task.

use meridian_core::protocol::{RejectionCode, VerdictOutcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// approved, or the rejection code: timeout, topology, inactive_contracts, ...
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug)]
pub struct MediatorMetrics {
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
    pub commit_latency_seconds: Histogram,
    pub last_event_us: Gauge,
}

impl MediatorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            verdicts: Family::default(),
            verdicts_sent: Counter::default(),
            verdicts_abandoned: Counter::default(),
            pending_requests: Gauge::default(),
            invalid_responses: Family::default(),
            ignored_messages: Family::default(),
            events: Counter::default(),
            time_proofs: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_latency_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            last_event_us: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("mediator");
        r.register(
            "verdicts",
            "Verdicts decided, by outcome",
            metrics.verdicts.clone(),
        );
        r.register(
            "verdicts_sent",
            "Verdicts the sequencer acknowledged",
            metrics.verdicts_sent.clone(),
        );
        r.register(
            "verdicts_abandoned",
            "Verdicts the sequencer refused definitely and that are not retried",
            metrics.verdicts_abandoned.clone(),
        );
        r.register(
            "pending_requests",
            "Requests waiting for responses",
            metrics.pending_requests.clone(),
        );
        r.register(
            "invalid_responses",
            "Confirmation responses ignored because they failed validation, by reason",
            metrics.invalid_responses.clone(),
        );
        r.register(
            "ignored_messages",
            "Messages that changed nothing (invalid, late, duplicate, malformed), by reason",
            metrics.ignored_messages.clone(),
        );
        r.register(
            "events",
            "Sequenced events processed",
            metrics.events.clone(),
        );
        r.register(
            "time_proofs",
            "Time proofs requested while waiting for deadlines",
            metrics.time_proofs.clone(),
        );
        r.register(
            "batch_size",
            "Events persisted per database transaction",
            metrics.batch_size.clone(),
        );
        r.register(
            "commit_latency_seconds",
            "Time to persist one run of events",
            metrics.commit_latency_seconds.clone(),
        );
        r.register(
            "last_event_us",
            "Timestamp of the last processed event (microseconds since the epoch)",
            metrics.last_event_us.clone(),
        );
        metrics
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
