//! The topology manager's Prometheus metrics: change requests by outcome and the serial
//! published last, so an operator sees both refused requests and a manager that stopped
//! publishing.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// changed, unchanged, invalid, refused, failed
    pub outcome: &'static str,
}

#[derive(Clone, Debug)]
pub struct TopologyMetrics {
    pub changes: Family<OutcomeLabel, Counter>,
    pub published_serial: Gauge,
    pub pending: Gauge,
}

impl TopologyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            changes: Family::default(),
            published_serial: Gauge::default(),
            pending: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("topology");
        r.register(
            "changes",
            "Topology change requests by outcome",
            metrics.changes.clone(),
        );
        r.register(
            "published_serial",
            "Highest topology serial with an effective time",
            metrics.published_serial.clone(),
        );
        r.register(
            "pending",
            "1 while a recorded topology transaction awaits the sequencer's confirmation",
            metrics.pending.clone(),
        );
        metrics
    }

    pub fn count(&self, outcome: &'static str) {
        self.changes.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}
