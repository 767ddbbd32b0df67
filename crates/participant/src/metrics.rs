//! The participant's Prometheus metrics, registered once into the node's registry. Handles are
//! cheap clones shared by the writer task and the Ledger API.

pub use meridian_node::metrics::OutcomeLabel;
use meridian_node::metrics::RoleRegistry;
use meridian_node::replica::LeaseMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::stages::StageMetrics;

#[derive(Clone, Debug)]
pub struct ParticipantMetrics {
    /// By outcome: committed, or the lower-case gRPC code of the answer (already_exists,
    /// aborted, ...).
    pub submissions: Family<OutcomeLabel, Counter>,
    /// SubmitAndWait latency of committed submissions, from receipt to answer.
    pub commit_latency_seconds: Histogram,
    pub pending_requests: Gauge,
    pub in_flight_submissions: Gauge,
    /// Deduplication entries in memory (in flight, and committed within
    /// `dedup_memory_window_s`); older ones are read from the store.
    pub dedup_memory_entries: Gauge,
    pub ledger_end: Gauge,
    pub transactions_committed: Counter,
    pub events_processed: Counter,
    /// Sequencer events and local commands handled per database transaction.
    pub batch_size: Histogram,
    /// Protocol messages (envelopes) per submission sent to the sequencer: how much
    /// coalescing saves.
    pub messages_per_send: Histogram,
    /// Submissions a term found in flight when it began, by how their message ids were
    /// settled: `never_sequenced` (this term's placeholder took the id), `sequenced` (the
    /// sequencer had the original), `unknown` (no answer: the stream decides).
    pub inherited_submissions: Family<OutcomeLabel, Counter>,
    /// Sends that waited because the replica's lease was not known to be held at that moment
    /// (`meridian_node::replica::LeaseGuard`): after this process was stopped, or while its
    /// renewals lag. Zero on a healthy replica.
    pub sends_held_for_lease: Counter,
    /// Replica lease terms begun and lost (`lease_acquired_total{how}`, `lease_lost_total`).
    pub lease: LeaseMetrics,
    /// `submission_stage_seconds{stage}`: where local submissions spend their time.
    pub stages: StageMetrics,
}

impl ParticipantMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let mut r = RoleRegistry::new(registry, "participant");
        Self {
            submissions: r.family("submissions", "SubmitAndWait calls by outcome"),
            commit_latency_seconds: r.histogram(
                "commit_latency_seconds",
                "SubmitAndWait latency of committed submissions",
                exponential_buckets(0.000_5, 2.0, 16),
            ),
            pending_requests: r.gauge(
                "pending_requests",
                "Validated requests awaiting their verdict",
            ),
            in_flight_submissions: r.gauge(
                "in_flight_submissions",
                "Own submissions not yet seen sequenced",
            ),
            dedup_memory_entries: r.gauge(
                "dedup_memory_entries",
                "Deduplication entries held in memory; older committed ones are read from the database",
            ),
            ledger_end: r.gauge("ledger_end", "The last assigned ledger offset"),
            transactions_committed: r.counter(
                "transactions_committed",
                "Transactions committed on this participant",
            ),
            events_processed: r.counter("events_processed", "Sequencer events processed"),
            batch_size: r.batch_sizes(
                "batch_size",
                "Events and commands handled per database transaction",
            ),
            messages_per_send: r.batch_sizes(
                "messages_per_send",
                "Protocol messages coalesced into one submission to the sequencer",
            ),
            inherited_submissions: r.family(
                "inherited_submissions",
                "Submissions found in flight at the start of a term, by how they were settled",
            ),
            sends_held_for_lease: r.counter(
                "sends_held_for_lease",
                "Sends that waited for the replica's lease to be confirmed",
            ),
            lease: LeaseMetrics::register(&mut r),
            stages: StageMetrics::register(&mut r),
        }
    }

    pub fn count(&self, outcome: &'static str) {
        self.submissions
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}
