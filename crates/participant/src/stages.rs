//! Where a local submission's time goes, stage by stage: the submitting participant times each
//! of its own submissions from the Ledger API's receipt to the answer, split at the points
//! it sees anyway (its writer's admission, the sequencer's receipt, the request coming back
//! on its stream, the verdict, the commit persisted). One transfer's latency is otherwise a
//! single number that says nothing of whether the sequencer, the mediator's round trip or a
//! database commit is the slow part.
//!
//! The clock of a term is a bounded map from submission id to the submission's last mark;
//! the durations go to a histogram family (`meridian_participant_submission_stage_seconds`),
//! to running sums, and to an HDR histogram per stage; `/status` shows each stage's mean, p50
//! and p99, and `meridian bench ledger` prints them. The Prometheus buckets double from one to
//! the next, too coarse to tell which stage makes a 30 ms p99; the HDR histograms keep two
//! significant digits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use meridian_node::metrics::RoleRegistry;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::engine::Effect;

/// The slowest stage duration the HDR histograms tell apart; longer ones count as this.
const MAX_RECORDED_US: u64 = 60_000_000;

/// At most this many submissions are timed at once. The Ledger API lets `limits.max_in_flight`
/// (default 5,000) submissions wait at once; a submission over this limit goes untimed rather
/// than growing the map.
pub const MAX_TIMED_SUBMISSIONS: usize = 16_384;

/// A timed submission not marked for this long is forgotten when the map is full: its call
/// ended without a completion (a timeout, a term that ended), which no stage should count.
const STALE_AFTER: Duration = Duration::from_secs(120);

/// The stages in the order a submission passes them. Each one's duration runs from the
/// previous stage's mark (the receipt, for the first) to its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The writer's answer: the wait for the writer, deduplication, interpretation and the
    /// in-flight marker persisted.
    Admitted,
    /// The sequencer's receipt of the submission: sent, ordered and persisted there.
    Sequenced,
    /// The request processed by this participant's writer when it came back on the stream:
    /// the sequencer's delivery (its safe point, on a replicated sequencer) and the wait for
    /// the writer.
    Delivered,
    /// The verdict processed: the request's pending state persisted, the confirmation
    /// responses sent, the other participants' responses and the mediator's verdict back
    /// through the sequencer.
    Decided,
    /// The commit (or rejection) persisted and the waiting call told.
    Completed,
}

impl EncodeLabelValue for Stage {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.name(), encoder)
    }
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Admitted,
        Stage::Sequenced,
        Stage::Delivered,
        Stage::Decided,
        Stage::Completed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Admitted => "admitted",
            Stage::Sequenced => "sequenced",
            Stage::Delivered => "delivered",
            Stage::Decided => "decided",
            Stage::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: Stage,
}

type StageHistograms = Family<StageLabel, Histogram, fn() -> Histogram>;

fn stage_histogram() -> Histogram {
    // 100 µs to about 3.3 s, as every latency histogram of the node.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

/// The node's stage metrics: shared by every term's [`StageClock`].
#[derive(Debug, Clone)]
pub struct StageMetrics {
    histograms: StageHistograms,
    /// Per stage (in [`Stage::ALL`] order): the durations' sum in µs, and their count.
    sums: Arc<[(AtomicU64, AtomicU64); Stage::ALL.len()]>,
    /// Per stage: the durations in µs, for quantiles (about 20 KiB each, whatever the count).
    quantiles: Arc<[Mutex<hdrhistogram::Histogram<u64>>; Stage::ALL.len()]>,
    /// Submissions not timed because the map was full.
    untimed: Arc<AtomicU64>,
}

impl StageMetrics {
    pub fn register(r: &mut RoleRegistry<'_>) -> Self {
        let histograms: StageHistograms = Family::new_with_constructor(stage_histogram);
        Self {
            histograms: r.metric(
                "submission_stage_seconds",
                "Time a local submission spent in each stage, from the previous stage's end \
                 (admitted, sequenced, delivered, decided, completed)",
                histograms,
            ),
            sums: Arc::new(Default::default()),
            quantiles: Arc::new(std::array::from_fn(|_| {
                Mutex::new(
                    hdrhistogram::Histogram::new_with_bounds(1, MAX_RECORDED_US, 2)
                        .expect("1 µs to 60 s at two significant digits is a valid histogram"),
                )
            })),
            untimed: Arc::new(AtomicU64::new(0)),
        }
    }

    fn quantiles(&self, stage: Stage) -> std::sync::MutexGuard<'_, hdrhistogram::Histogram<u64>> {
        // A histogram holds counts only: a panic elsewhere leaves nothing inconsistent in it.
        self.quantiles[stage as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn observe(&self, stage: Stage, duration: Duration) {
        self.histograms
            .get_or_create(&StageLabel { stage })
            .observe(duration.as_secs_f64());
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let (sum_us, count) = &self.sums[stage as usize];
        sum_us.fetch_add(micros, Ordering::Relaxed);
        count.fetch_add(1, Ordering::Relaxed);
        self.quantiles(stage)
            .saturating_record(micros.clamp(1, MAX_RECORDED_US));
    }

    /// The `submission_stages` object of `/status`: per stage, how many submissions passed it
    /// and their mean, median and 99th percentile time in it; and how many went untimed.
    pub fn status(&self) -> serde_json::Value {
        let mut stages = serde_json::Map::new();
        for stage in Stage::ALL {
            let (sum_us, count) = &self.sums[stage as usize];
            let (sum_us, count) = (
                sum_us.load(Ordering::Relaxed),
                count.load(Ordering::Relaxed),
            );
            let mean_ms = if count == 0 {
                0.0
            } else {
                sum_us as f64 / count as f64 / 1000.0
            };
            let (p50_ms, p99_ms) = {
                let quantiles = self.quantiles(stage);
                let ms = |quantile| quantiles.value_at_quantile(quantile) as f64 / 1000.0;
                (ms(0.5), ms(0.99))
            };
            stages.insert(
                stage.name().into(),
                serde_json::json!({
                    "count": count,
                    "mean_ms": mean_ms,
                    "p50_ms": p50_ms,
                    "p99_ms": p99_ms,
                }),
            );
        }
        serde_json::json!({
            "stages": stages,
            "untimed": self.untimed.load(Ordering::Relaxed),
        })
    }
}

/// Where one timed submission is.
#[derive(Debug, Clone, Copy)]
struct LastMark {
    stage: Option<Stage>,
    at: Instant,
}

/// One term's timed submissions, by submission id.
#[derive(Debug)]
pub struct StageClock {
    metrics: StageMetrics,
    timed: Mutex<HashMap<String, LastMark>>,
}

impl StageClock {
    pub fn new(metrics: StageMetrics) -> Self {
        Self {
            metrics,
            timed: Mutex::new(HashMap::new()),
        }
    }

    fn timed(&self) -> std::sync::MutexGuard<'_, HashMap<String, LastMark>> {
        // The map holds timings only: a panic elsewhere leaves nothing inconsistent in it.
        self.timed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts timing a submission received at `at`.
    pub fn start(&self, submission_id: &str, at: Instant) {
        let mut timed = self.timed();
        if timed.len() >= MAX_TIMED_SUBMISSIONS {
            timed.retain(|_, mark| at.saturating_duration_since(mark.at) < STALE_AFTER);
        }
        if timed.len() >= MAX_TIMED_SUBMISSIONS {
            self.metrics.untimed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        timed.insert(submission_id.to_owned(), LastMark { stage: None, at });
    }

    /// Marks the end of `stage` at `at`. A mark out of order (the request came back on the
    /// stream before the sequencer's receipt did) is skipped: the next stage then covers it.
    /// The last stage forgets the submission.
    pub fn mark(&self, submission_id: &str, stage: Stage, at: Instant) {
        let mut timed = self.timed();
        let Some(last) = timed.get_mut(submission_id) else {
            return;
        };
        if last.stage.is_some_and(|done| done >= stage) {
            return;
        }
        self.metrics
            .observe(stage, at.saturating_duration_since(last.at));
        *last = LastMark {
            stage: Some(stage),
            at,
        };
        if stage == Stage::Completed {
            timed.remove(submission_id);
        }
    }

    /// Marks what a writer batch processed at `at`: an own request back on the stream
    /// (its pending state names the local submission) ends `delivered`; a completion ends
    /// `decided`.
    pub fn mark_processed(&self, effects: &[Effect], at: Instant) {
        for effect in effects {
            match effect {
                Effect::Pending(pending) => {
                    if let Some(local) = &pending.local {
                        self.mark(&local.submission_id, Stage::Delivered, at);
                    }
                }
                Effect::Complete(completion) => {
                    self.mark(&completion.submission.submission_id, Stage::Decided, at);
                }
                _ => {}
            }
        }
    }

    /// Stops timing a submission that was answered without a completion (refused, a
    /// duplicate, no outcome in time).
    pub fn forget(&self, submission_id: &str) {
        self.timed().remove(submission_id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.timed().len()
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    fn clock() -> StageClock {
        let mut registry = Registry::default();
        StageClock::new(StageMetrics::register(&mut RoleRegistry::new(
            &mut registry,
            "participant",
        )))
    }

    fn mean_ms(clock: &StageClock, stage: Stage) -> (u64, f64) {
        let status = clock.metrics.status();
        let stage = &status["stages"][stage.name()];
        (
            stage["count"].as_u64().expect("a count"),
            stage["mean_ms"].as_f64().expect("a mean"),
        )
    }

    #[test]
    fn each_stage_counts_from_the_previous_mark() {
        let clock = clock();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        clock.start("sub-1", t0);
        clock.mark("sub-1", Stage::Admitted, t0 + ms(2));
        clock.mark("sub-1", Stage::Sequenced, t0 + ms(5));
        clock.mark("sub-1", Stage::Delivered, t0 + ms(9));
        clock.mark("sub-1", Stage::Decided, t0 + ms(20));
        clock.mark("sub-1", Stage::Completed, t0 + ms(24));
        assert_eq!(mean_ms(&clock, Stage::Admitted), (1, 2.0));
        assert_eq!(mean_ms(&clock, Stage::Sequenced), (1, 3.0));
        assert_eq!(mean_ms(&clock, Stage::Delivered), (1, 4.0));
        assert_eq!(mean_ms(&clock, Stage::Decided), (1, 11.0));
        assert_eq!(mean_ms(&clock, Stage::Completed), (1, 4.0));
        assert_eq!(clock.len(), 0, "the last stage forgets the submission");
    }

    #[test]
    fn each_stage_has_its_own_quantiles() {
        let clock = clock();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // 98 quick admissions, two slow ones: the median stays quick, the p99 is slow.
        for i in 0..100u64 {
            let id = format!("sub-{i}");
            clock.start(&id, t0);
            let admitted = if i < 98 { ms(2) } else { ms(40) };
            clock.mark(&id, Stage::Admitted, t0 + admitted);
            clock.mark(&id, Stage::Sequenced, t0 + admitted + ms(3));
        }
        let status = clock.metrics.status();
        let figure = |stage: Stage, name: &str| {
            status["stages"][stage.name()][name]
                .as_f64()
                .expect("a figure")
        };
        // Two significant digits: within 1 %.
        let near = |got: f64, want: f64| (got - want).abs() <= want / 100.0;
        assert!(near(figure(Stage::Admitted, "p50_ms"), 2.0), "{status}");
        assert!(near(figure(Stage::Admitted, "p99_ms"), 40.0), "{status}");
        assert!(near(figure(Stage::Sequenced, "p50_ms"), 3.0), "{status}");
        assert!(near(figure(Stage::Sequenced, "p99_ms"), 3.0), "{status}");
        assert_eq!(figure(Stage::Decided, "p99_ms"), 0.0, "no durations yet");
    }

    #[test]
    fn a_late_mark_is_skipped_and_the_next_stage_covers_it() {
        let clock = clock();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        clock.start("sub-1", t0);
        clock.mark("sub-1", Stage::Admitted, t0 + ms(1));
        // Delivered before the sequencer's receipt reached the caller.
        clock.mark("sub-1", Stage::Delivered, t0 + ms(6));
        clock.mark("sub-1", Stage::Sequenced, t0 + ms(7));
        clock.mark("sub-1", Stage::Decided, t0 + ms(10));
        assert_eq!(mean_ms(&clock, Stage::Sequenced), (0, 0.0));
        assert_eq!(mean_ms(&clock, Stage::Delivered), (1, 5.0));
        assert_eq!(mean_ms(&clock, Stage::Decided), (1, 4.0));
    }

    #[test]
    fn unknown_and_forgotten_submissions_are_not_counted() {
        let clock = clock();
        let t0 = Instant::now();
        clock.mark("never-started", Stage::Admitted, t0);
        clock.start("sub-1", t0);
        clock.forget("sub-1");
        clock.mark("sub-1", Stage::Admitted, t0);
        assert_eq!(mean_ms(&clock, Stage::Admitted), (0, 0.0));
        assert_eq!(clock.len(), 0);
    }

    #[test]
    fn the_map_is_bounded_and_stale_entries_make_room() {
        let clock = clock();
        let t0 = Instant::now();
        for i in 0..MAX_TIMED_SUBMISSIONS {
            clock.start(&format!("sub-{i}"), t0);
        }
        clock.start("one-too-many", t0 + Duration::from_secs(1));
        assert_eq!(clock.len(), MAX_TIMED_SUBMISSIONS);
        assert_eq!(clock.metrics.status()["untimed"], 1);
        // Once the old ones are stale, a new submission evicts them.
        clock.start("later", t0 + STALE_AFTER + Duration::from_secs(1));
        assert_eq!(clock.len(), 1);
    }
}
