//! Turns buckets into what the chart draws: at most about [`MAX_POINTS`] points per series,
//! chosen so that neither an outage nor a spike disappears, and axis ticks with short labels.

use super::canvas::len_f64;
use super::chart::TimelineChart;

/// About one point per horizontal pixel: more could not be seen, and an hour of 100 ms
/// buckets would otherwise be a 36,000-point path.
pub(super) const MAX_POINTS: usize = 1000;

/// One downsampled point of failures and latency: the maxima over a run of buckets, so a
/// one-bucket latency spike or burst of failures survives downsampling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Group {
    pub(super) first_bucket: usize,
    pub(super) end_bucket: usize,
    pub(super) failed_max: u64,
    pub(super) p99_max_ms: Option<f64>,
}

fn window<T>(values: &[T], start: usize, end: usize) -> &[T] {
    values.get(start..end.min(values.len())).unwrap_or(&[])
}

pub(super) fn downsample(chart: &TimelineChart, bucket_count: usize) -> Vec<Group> {
    let group_len = bucket_count.div_ceil(MAX_POINTS).max(1);
    (0..bucket_count)
        .step_by(group_len)
        .map(|start| {
            let end = start.saturating_add(group_len).min(bucket_count);
            let failed = window(&chart.failed_per_bucket, start, end);
            let p99 = window(&chart.latency_p99_ms, start, end);
            Group {
                first_bucket: start,
                end_bucket: end,
                failed_max: failed.iter().copied().max().unwrap_or(0),
                p99_max_ms: p99
                    .iter()
                    .filter_map(|p99| p99.filter(|ms| ms.is_finite()).map(|ms| ms.max(0.0)))
                    .reduce(f64::max),
            }
        })
        .collect()
}

/// The throughput line as (position in buckets, commits in the bucket), at most
/// `MAX_POINTS` of them. Unlike latency, throughput matters for its dips (the outage is the
/// point of the chart) as much as its peaks, and a maximum per group would erase a seconds
/// long outage from an hour-long run. So past `MAX_POINTS` buckets each group of half as
/// many keeps both its lowest and highest bucket, in the order they happened.
pub(super) fn throughput_points(committed: &[u64], bucket_count: usize) -> Vec<(f64, u64)> {
    let count_at = |bucket: usize| committed.get(bucket).copied().unwrap_or(0);
    let centre = |bucket: usize| len_f64(bucket) + 0.5;
    let mut points: Vec<(f64, u64)> = Vec::new();
    if bucket_count <= MAX_POINTS {
        points.extend((0..bucket_count).map(|bucket| (centre(bucket), count_at(bucket))));
    } else {
        let group_len = bucket_count.div_ceil(MAX_POINTS / 2);
        for start in (0..bucket_count).step_by(group_len) {
            let end = start.saturating_add(group_len).min(bucket_count);
            let buckets = || (start..end).map(|bucket| (bucket, count_at(bucket)));
            // Ties go to the earliest bucket, so a flat group yields one point.
            let low = buckets().min_by_key(|(_, count)| *count);
            let high = buckets().rev().max_by_key(|(_, count)| *count);
            let (Some(low), Some(high)) = (low, high) else {
                continue;
            };
            // In time order: the tuples compare by bucket first.
            let (first, second) = (low.min(high), low.max(high));
            points.push((centre(first.0), first.1));
            if second.0 != first.0 {
                points.push((centre(second.0), second.1));
            }
        }
    }
    // The ends reach the chart's edges so the area spans the whole run, and a single bucket
    // draws as a plateau rather than an invisible dot.
    if let [(_, only)] = *points.as_slice() {
        points.push((0.0, only));
    }
    if let Some(first) = points.first_mut() {
        first.0 = 0.0;
    }
    if let Some(last) = points.last_mut() {
        last.0 = len_f64(bucket_count);
    }
    points
}

/// How axis values are printed: one unit suffix for the whole axis so labels stay short.
#[derive(Debug, Clone, Copy)]
pub(super) struct AxisFormat {
    divisor: f64,
    suffix: &'static str,
    decimals: usize,
}

impl AxisFormat {
    fn for_axis(top: f64, step: f64) -> Self {
        // Plain numbers up to 9,999 read best; past that the suffix keeps labels in the margin.
        let units = [
            (1e13, 1e12, "T"),
            (1e10, 1e9, "G"),
            (1e7, 1e6, "M"),
            (1e4, 1e3, "k"),
        ];
        let (divisor, suffix) = units
            .into_iter()
            .find(|(from, _, _)| top >= *from)
            .map_or((1.0, ""), |(_, divisor, suffix)| (divisor, suffix));
        AxisFormat {
            divisor,
            suffix,
            decimals: decimals_for(step / divisor),
        }
    }

    pub(super) fn label(&self, value: f64) -> String {
        // "0" reads as the baseline; "0k" or "0.0" read as a measurement.
        if value == 0.0 {
            return "0".to_owned();
        }
        let scaled = value / self.divisor;
        let digits = format!("{scaled:.*}", self.decimals);
        format!("{}{}", group_thousands(&digits), self.suffix)
    }
}

/// The fewest decimals that print every multiple of `step` exactly (steps are 1, 2 or 5
/// times a power of ten, so this is 0 for steps ≥ 1 and at most a handful below).
fn decimals_for(step: f64) -> usize {
    let mut scaled = step;
    let mut decimals = 0;
    while decimals < 6 && scaled.is_finite() && (scaled - scaled.round()).abs() > 1e-6 {
        scaled *= 10.0;
        decimals += 1;
    }
    decimals
}

/// Inserts thousands separators into a formatted non-negative number ("12345.5" → "12,345.5").
pub(super) fn group_thousands(number: &str) -> String {
    let (integer, fraction) = number.split_once('.').unwrap_or((number, ""));
    if !integer.chars().all(|c| c.is_ascii_digit()) {
        return number.to_owned();
    }
    let mut grouped = String::with_capacity(number.len() + integer.len() / 3);
    for (index, digit) in integer.chars().enumerate() {
        if index > 0 && (integer.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if number.contains('.') {
        grouped.push('.');
        grouped.push_str(fraction);
    }
    grouped
}

pub(super) fn fmt_count(count: u64) -> String {
    group_thousands(&count.to_string())
}

/// A "nice" step (1, 2 or 5 × 10^k) that splits `span` into at most `max_intervals`.
fn nice_step(span: f64, max_intervals: f64) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf((span / max_intervals).log10().floor());
    [1.0, 2.0, 5.0, 10.0, 20.0]
        .into_iter()
        .map(|multiple| magnitude * multiple)
        .find(|step| step.is_finite() && *step > 0.0 && (span / step).ceil() <= max_intervals)
        // Only when `span` is so small or large that powers of ten underflow or overflow;
        // one interval is still a correct axis.
        .unwrap_or(span)
}

/// An axis: tick values from zero, the value at its far end and how labels are printed.
#[derive(Debug, Clone)]
pub(super) struct Ticks {
    pub(super) values: Vec<f64>,
    pub(super) top: f64,
    pub(super) format: AxisFormat,
}

/// Multiples of `step` from zero up to `limit`, allowing for rounding in the last one.
fn multiples(step: f64, limit: f64, most: u32) -> Vec<f64> {
    (0..=most)
        .map(|index| f64::from(index) * step)
        .take_while(|value| *value <= limit * (1.0 + 1e-9))
        .collect()
}

/// The largest axis we draw. Nothing real comes near it (10^15 ms is 30,000 years), but
/// corrupt input can (u64::MAX commits, f64::MAX latency); capping keeps tick arithmetic
/// finite and labels short, and such data is simply pinned to the top of its panel.
const AXIS_LIMIT: f64 = 1e15;

/// Value-axis ticks from zero: 4–6 nice values, the last one at or above `data_max`.
pub(super) fn value_ticks(data_max: f64) -> Ticks {
    let max = if data_max.is_finite() && data_max > 0.0 {
        data_max.min(AXIS_LIMIT)
    } else {
        1.0
    };
    let step = nice_step(max, 5.0);
    let mut top = (max / step).ceil() * step;
    if top < max {
        // Rounding in the division can land one ulp short of the data.
        top += step;
    }
    Ticks {
        values: multiples(step, top, 7),
        top,
        format: AxisFormat::for_axis(top, step),
    }
}

/// Time-axis ticks in seconds, never past the end of the data.
pub(super) fn time_ticks(domain_s: f64) -> Ticks {
    let step = nice_step(domain_s, 10.0);
    Ticks {
        values: multiples(step, domain_s, 11),
        top: domain_s,
        format: AxisFormat {
            divisor: 1.0,
            suffix: "",
            decimals: decimals_for(step),
        },
    }
}
