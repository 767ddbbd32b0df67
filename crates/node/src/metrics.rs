//! The node's one Prometheus registry, shared between the role crates that register their
//! metric families at startup and the admin server that encodes them on every scrape. It stays
//! thin on purpose: each role defines its own metrics with `prometheus_client` types and keeps
//! its own handles to update them.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry, Unit};

/// The one label of the roles' "by outcome" counter families; each role documents the values
/// it uses where it declares the family.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// A point in time as a gauge: seconds since the Unix epoch, fractional. Prometheus wants base
/// units (`promtool check metrics` flags `_us`), and `time() - metric` then reads as an age.
pub type TimestampGauge = Gauge<f64, AtomicU64>;

/// Sets `gauge` to `micros` microseconds since the Unix epoch. An `f64` holds every microsecond
/// count up to the year 2255 exactly; the division rounds in the last microsecond at worst.
pub fn set_timestamp_micros(gauge: &TimestampGauge, micros: i64) {
    gauge.set(micros as f64 / 1_000_000.0);
}

/// One role's metrics under its prefix (`sequencer` gives `meridian_sequencer_…`): each method
/// registers a metric and hands back the handle the role keeps to update it
/// (`prometheus_client` metrics share state between clones).
pub struct RoleRegistry<'a> {
    registry: &'a mut Registry,
}

impl<'a> RoleRegistry<'a> {
    pub fn new(registry: &'a mut Registry, role: &str) -> Self {
        RoleRegistry {
            registry: registry.sub_registry_with_prefix(role),
        }
    }

    pub fn metric<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.registry.register(name, help, metric.clone());
        metric
    }

    pub fn counter(&mut self, name: &str, help: &str) -> Counter {
        self.metric(name, help, Counter::default())
    }

    pub fn gauge(&mut self, name: &str, help: &str) -> Gauge {
        self.metric(name, help, Gauge::default())
    }

    /// A point in time, `name` ending in `_timestamp_seconds` (see [`TimestampGauge`]).
    pub fn timestamp(&mut self, name: &str, help: &str) -> TimestampGauge {
        debug_assert!(name.ends_with("_timestamp_seconds"), "{name}");
        self.metric(name, help, TimestampGauge::default())
    }

    /// A family of counters or gauges, one per label set.
    pub fn family<S, M>(&mut self, name: &str, help: &str) -> Family<S, M>
    where
        Family<S, M>: Metric + Clone + Default,
    {
        self.metric(name, help, Family::default())
    }

    /// Sizes of batches (events or commands per database transaction), 1 to 2048: the one
    /// bucket layout of every role's batch size, so dashboards compare them.
    pub fn batch_sizes(&mut self, name: &str, help: &str) -> Histogram {
        self.histogram(name, help, exponential_buckets(1.0, 2.0, 12))
    }

    /// Latencies of a durable write or a round trip, 100 µs to about 3.3 s.
    pub fn latencies_seconds(&mut self, name: &str, help: &str) -> Histogram {
        self.histogram(name, help, exponential_buckets(0.000_1, 2.0, 16))
    }

    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: impl Iterator<Item = f64>,
    ) -> Histogram {
        self.metric(name, help, Histogram::new(buckets))
    }
}

/// Why a metric could not be registered or the registry could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// Two families with one name make the whole exposition invalid, and `prometheus_client`
    /// does not check for it.
    #[error("metric `{name}` is already registered")]
    Duplicate { name: String },
    /// Not `[a-zA-Z_][a-zA-Z0-9_]*`.
    #[error(
        "invalid metric name `{name}`: use letters, digits and `_`, not starting with a digit"
    )]
    InvalidName { name: String },
    /// A metric or collector failed to encode itself.
    #[error("cannot encode metrics")]
    Encode,
}

/// A registry every metric name of which starts with a fixed prefix (`meridian` gives
/// `meridian_…`).
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    /// Names registered through [`Metrics::register`], with unit suffixes, without prefix.
    names: HashSet<String>,
}

impl Metrics {
    /// An empty registry; `prefix` and `_` are prepended to every name. An empty prefix adds
    /// nothing.
    pub fn new(prefix: &str) -> Self {
        let registry = if prefix.is_empty() {
            Registry::default()
        } else {
            Registry::with_prefix(prefix)
        };
        Metrics {
            inner: Mutex::new(Inner {
                registry,
                names: HashSet::new(),
            }),
        }
    }

    /// Registers `metric` (keep a clone to update it: `prometheus_client` metrics share state
    /// between clones). Do not add type suffixes: a `Counter` named `submissions` is exposed as
    /// `<prefix>_submissions_total`.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl Metric,
    ) -> Result<(), MetricsError> {
        let mut inner = self.lock();
        inner.claim(name, name)?;
        inner.registry.register(name, help, metric);
        Ok(())
    }

    /// Like [`register`](Self::register) with a unit, which `prometheus_client` appends to the
    /// name: `latency` with [`Unit::Seconds`] is exposed as `<prefix>_latency_seconds`.
    pub fn register_with_unit(
        &self,
        name: &str,
        help: &str,
        unit: Unit,
        metric: impl Metric,
    ) -> Result<(), MetricsError> {
        let mut inner = self.lock();
        inner.claim(name, &format!("{name}_{}", unit.as_str()))?;
        inner.registry.register_with_unit(name, help, unit, metric);
        Ok(())
    }

    /// Runs `f` with the underlying registry, for what [`register`](Self::register) does not
    /// cover (collectors, sub-registries with labels). Names registered this way are not checked
    /// for duplicates. A closure rather than a guard, so the lock cannot be held across an
    /// `.await` and stall scrapes.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.lock().registry)
    }

    /// The whole registry in the OpenMetrics text format, ending with `# EOF`.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let inner = self.lock();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &inner.registry)
            .map_err(|_| MetricsError::Encode)?;
        Ok(text)
    }

    /// The whole registry in the Prometheus text format 0.0.4, for scrapers that do not ask
    /// for OpenMetrics (`curl`, `promtool check metrics`, older Prometheus servers). See
    /// [`openmetrics_to_prometheus_text`].
    pub fn encode_prometheus_text(&self) -> Result<String, MetricsError> {
        self.encode()
            .map(|text| openmetrics_to_prometheus_text(&text))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while registering leaves at worst one metric missing; scrapes must go on.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn claim(&mut self, name: &str, exposed: &str) -> Result<(), MetricsError> {
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(MetricsError::InvalidName {
                name: name.to_owned(),
            });
        }
        if !self.names.insert(exposed.to_owned()) {
            return Err(MetricsError::Duplicate {
                name: exposed.to_owned(),
            });
        }
        Ok(())
    }
}

/// Rewrites what `prometheus_client` writes (OpenMetrics) as Prometheus text 0.0.4. The two
/// differ, for what Meridian registers, in counters only: OpenMetrics names the family `x`
/// and its sample `x_total`, while the text format wants `# HELP`/`# TYPE` on the sample's
/// name; read as text, every counter would otherwise be a metric with no help and a family
/// with no samples (`promtool check metrics`: "no help text"). `# UNIT` and `# EOF` are not
/// part of the text format; an `unknown` type is `untyped` there.
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let mut rewritten = None;
        for keyword in ["# HELP ", "# TYPE "] {
            if let Some(rest) = line.strip_prefix(keyword) {
                let name = rest.split(' ').next().unwrap_or_default();
                if counters.contains(name) {
                    rewritten = Some(format!("{keyword}{name}_total{}", &rest[name.len()..]));
                } else if keyword == "# TYPE " && rest.ends_with(" unknown") {
                    rewritten = Some(format!("# TYPE {name} untyped"));
                }
            }
        }
        text.push_str(rewritten.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn encodes_registered_metrics_with_prefix() {
        let metrics = Metrics::new("meridian");
        let counter: Counter = Counter::default();
        metrics
            .register("submissions", "Submissions accepted", counter.clone())
            .unwrap();
        let lag: Gauge = Gauge::default();
        metrics
            .register_with_unit("lag", "Reader lag", Unit::Seconds, lag.clone())
            .unwrap();
        counter.inc_by(3);
        lag.set(7);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("# TYPE meridian_submissions counter"),
            "{text}"
        );
        assert!(text.contains("meridian_submissions_total 3"), "{text}");
        assert!(text.contains("meridian_lag_seconds 7"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn timestamps_are_float_seconds_since_the_epoch() {
        let metrics = Metrics::new("m");
        let gauge = metrics.with_registry(|registry| {
            RoleRegistry::new(registry, "role").timestamp("last_timestamp_seconds", "Last")
        });
        set_timestamp_micros(&gauge, 1_700_000_000_250_000);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("# TYPE m_role_last_timestamp_seconds gauge"),
            "{text}"
        );
        assert!(
            text.contains("m_role_last_timestamp_seconds 1700000000.25"),
            "{text}"
        );
    }

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let metrics = Metrics::new("m");
        let counter: Counter = Counter::default();
        metrics
            .register("events", "Events seen", counter.clone())
            .unwrap();
        metrics
            .register_with_unit("lag", "Lag", Unit::Seconds, Gauge::<i64>::default())
            .unwrap();
        counter.inc_by(2);
        let text = metrics.encode_prometheus_text().unwrap();
        assert_eq!(
            text,
            "# HELP m_events_total Events seen.\n\
             # TYPE m_events_total counter\n\
             m_events_total 2\n\
             # HELP m_lag_seconds Lag.\n\
             # TYPE m_lag_seconds gauge\n\
             m_lag_seconds 0\n"
        );
    }

    #[test]
    fn rejects_duplicates_and_bad_names() {
        let metrics = Metrics::new("");
        metrics
            .register("a", "A", Counter::<u64>::default())
            .unwrap();
        assert_eq!(
            metrics.register("a", "A again", Gauge::<i64>::default()),
            Err(MetricsError::Duplicate { name: "a".into() })
        );
        for bad in ["", "1a", "a-b", "a.b", "é"] {
            assert!(
                matches!(
                    metrics.register(bad, "bad", Counter::<u64>::default()),
                    Err(MetricsError::InvalidName { .. })
                ),
                "{bad:?} accepted"
            );
        }
        let text = metrics.encode().unwrap();
        assert_eq!(text.matches("# TYPE").count(), 1, "{text}");
    }

    #[test]
    fn with_registry_reaches_the_registry() {
        let metrics = Metrics::new("m");
        metrics.with_registry(|registry| {
            registry.sub_registry_with_prefix("store").register(
                "ops",
                "Ops",
                Counter::<u64>::default(),
            );
        });
        assert!(metrics.encode().unwrap().contains("m_store_ops_total 0"));
    }
}
