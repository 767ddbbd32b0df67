//! What the caller hands in: the measured buckets and the faults, in chart time.

/// One fault on the chart, times in ms relative to the chart's start (t = 0 is the first bucket).
#[derive(Debug, Clone)]
pub struct FaultMark {
    pub label: String, // e.g. "participant-crash: kill -9 participant2-a"
    pub injected_at_ms: f64,
    pub detected_at_ms: Option<f64>, // when the system noticed (new active etc.)
    pub recovered_at_ms: Option<f64>, // first successful transaction after the fault
    pub throughput_back_at_ms: Option<f64>, // throughput back at 90 % of before
}

#[derive(Debug, Clone)]
pub struct TimelineChart {
    pub title: String,
    pub bucket_ms: u64,                   // width of one bucket, e.g. 100
    pub committed_per_bucket: Vec<u64>,   // commits acknowledged in each bucket
    pub failed_per_bucket: Vec<u64>,      // application-visible failed requests per bucket
    pub latency_p99_ms: Vec<Option<f64>>, // per bucket; None when nothing committed in it
    pub faults: Vec<FaultMark>,
}
