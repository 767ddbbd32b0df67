//! The topology manager's Prometheus metrics: change requests by outcome and the serial
//! published last, so an operator sees both refused requests and a manager that stopped
//! publishing.

pub use meridian_node::metrics::OutcomeLabel;
use meridian_node::metrics::RoleRegistry;
use meridian_node::replica::LeaseMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug)]
pub struct TopologyMetrics {
    /// By outcome: changed, unchanged, invalid, refused, failed.
    pub changes: Family<OutcomeLabel, Counter>,
    pub published_serial: Gauge,
    pub pending: Gauge,
    /// Replica lease terms begun and lost (`lease_acquired_total{how}`, `lease_lost_total`).
    pub lease: LeaseMetrics,
}

impl TopologyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let mut r = RoleRegistry::new(registry, "topology");
        Self {
            changes: r.family("changes", "Topology change requests by outcome"),
            published_serial: r.gauge(
                "published_serial",
                "Highest topology serial with an effective time",
            ),
            pending: r.gauge(
                "pending",
                "1 while a recorded topology transaction awaits the sequencer's confirmation",
            ),
            lease: LeaseMetrics::register(&mut r),
        }
    }

    pub fn count(&self, outcome: &'static str) {
        self.changes.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}
