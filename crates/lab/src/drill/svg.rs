//! Renders a failover drill's timeline (throughput, failed requests and p99 latency per
//! bucket, with every injected fault marked on it) as one standalone SVG document that opens
//! in any browser and can be attached to a drill report as it is. The SVG is written by hand
//! with `std::fmt::Write` rather than through a plotting crate: the chart has one fixed
//! shape, the markup it needs is small, and a report should not pull a graphics stack into
//! the binary. Input comes from measurements, so nothing here trusts it: non-finite numbers
//! are dropped, times are clamped into the chart and long runs are downsampled.

use std::fmt::{self, Write as _};

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

/// Renders the chart as a complete SVG document (starts with `<svg`, has xmlns, a viewBox).
pub fn render(chart: &TimelineChart) -> String {
    let mut svg = String::with_capacity(64 * 1024);
    if write_document(&mut svg, chart).is_err() {
        // Writing into a String cannot fail; this only keeps `render` infallible without an
        // unwrap, and still hands back a valid (empty) document.
        svg.clear();
        svg.push_str(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1000\" height=\"560\" \
             viewBox=\"0 0 1000 560\"></svg>",
        );
    }
    svg
}

const WIDTH_PX: f64 = 1000.0;
const HEIGHT_PX: f64 = 560.0;
// Wide enough on the left for compact tick labels ("12.5k") plus the rotated axis title.
const PLOT_LEFT_PX: f64 = 80.0;
const PLOT_RIGHT_PX: f64 = 970.0;
const PLOT_BOTTOM_PX: f64 = 496.0;
const PANEL_GAP_PX: f64 = 28.0;
// The throughput panel carries the fault story, so it gets the larger share.
const THROUGHPUT_SHARE: f64 = 0.56;

const FONT_PX: f64 = 11.0;
const TITLE_FONT_PX: f64 = 18.0;
// Average advance of a sans-serif glyph in ems, rounded up: we cannot measure text, so we
// over-estimate and truncate rather than let a label run off the canvas.
const CHAR_WIDTH_EM: f64 = 0.6;
const BOLD_CHAR_WIDTH_EM: f64 = 0.66;

const LEGEND_TOP_PX: f64 = 54.0;
const LEGEND_ROW_PX: f64 = 16.0;
const LANE_HEIGHT_PX: f64 = 15.0;
// Beyond three lanes the labels would eat the plot; past that an earlier label is trimmed to
// make room (its full text stays in the tooltip).
const MAX_LABEL_LANES: usize = 3;
const MAX_LABEL_WIDTH_PX: f64 = 340.0;
const LABEL_PADDING_PX: f64 = 6.0;
const LABEL_GAP_PX: f64 = 4.0;
const FAILED_BAR_MIN_PX: f64 = 2.0;

/// About one point per horizontal pixel: more could not be seen, and an hour of 100 ms
/// buckets would otherwise be a 36,000-point path.
const MAX_POINTS: usize = 1000;

const TEXT_COLOUR: &str = "#222222";
const MUTED_COLOUR: &str = "#666666";
const GRID_COLOUR: &str = "#e6e6e6";
const AXIS_COLOUR: &str = "#555555";
const THROUGHPUT_COLOUR: &str = "#1f5fa8";
const FAILED_COLOUR: &str = "#d62728";
const LATENCY_COLOUR: &str = "#6a3d9a";
const INJECTED_COLOUR: &str = "#d62728";
const DETECTED_COLOUR: &str = "#f28e00";
const RECOVERED_COLOUR: &str = "#2ca02c";
const LABEL_COLOUR: &str = "#a31515";

/// Counts and lengths become coordinates. The conversion is exact below 2^53 and can only
/// lose precision, never range, above it, which no chart gets near.
fn count_f64(count: u64) -> f64 {
    count as f64
}

fn len_f64(len: usize) -> f64 {
    len as f64
}

/// One downsampled point of failures and latency: the maxima over a run of buckets, so a
/// one-bucket latency spike or burst of failures survives downsampling.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Group {
    first_bucket: usize,
    end_bucket: usize,
    failed_max: u64,
    p99_max_ms: Option<f64>,
}

fn window<T>(values: &[T], start: usize, end: usize) -> &[T] {
    values.get(start..end.min(values.len())).unwrap_or(&[])
}

fn downsample(chart: &TimelineChart, bucket_count: usize) -> Vec<Group> {
    let group_len = bucket_count.div_ceil(MAX_POINTS).max(1);
    (0..bucket_count)
        .step_by(group_len)
        .map(|start| {
            let end = start.saturating_add(group_len).min(bucket_count);
            Group {
                first_bucket: start,
                end_bucket: end,
                failed_max: window(&chart.failed_per_bucket, start, end)
                    .iter()
                    .copied()
                    .max()
                    .unwrap_or(0),
                p99_max_ms: window(&chart.latency_p99_ms, start, end)
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
fn throughput_points(committed: &[u64], bucket_count: usize) -> Vec<(f64, u64)> {
    let count_at = |bucket: usize| committed.get(bucket).copied().unwrap_or(0);
    let centre = |bucket: usize| len_f64(bucket) + 0.5;
    let mut points: Vec<(f64, u64)> = Vec::new();
    if bucket_count <= MAX_POINTS {
        points.extend((0..bucket_count).map(|bucket| (centre(bucket), count_at(bucket))));
    } else {
        let group_len = bucket_count.div_ceil(MAX_POINTS / 2);
        for start in (0..bucket_count).step_by(group_len) {
            let end = start.saturating_add(group_len).min(bucket_count);
            let mut low = (start, count_at(start));
            let mut high = low;
            for bucket in start + 1..end {
                let count = count_at(bucket);
                if count < low.1 {
                    low = (bucket, count);
                }
                if count > high.1 {
                    high = (bucket, count);
                }
            }
            let (first, second) = if low.0 <= high.0 {
                (low, high)
            } else {
                (high, low)
            };
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
struct AxisFormat {
    divisor: f64,
    suffix: &'static str,
    decimals: usize,
}

impl AxisFormat {
    fn for_axis(top: f64, step: f64) -> Self {
        // Plain numbers up to 9,999 read best; past that the suffix keeps labels in the margin.
        let (divisor, suffix) = if top >= 1e13 {
            (1e12, "T")
        } else if top >= 1e10 {
            (1e9, "G")
        } else if top >= 1e7 {
            (1e6, "M")
        } else if top >= 1e4 {
            (1e3, "k")
        } else {
            (1.0, "")
        };
        AxisFormat {
            divisor,
            suffix,
            decimals: decimals_for(step / divisor),
        }
    }

    fn label(&self, value: f64) -> String {
        // "0" reads as the baseline; "0k" or "0.0" read as a measurement.
        if value == 0.0 {
            return "0".to_owned();
        }
        let scaled = value / self.divisor;
        format!(
            "{}{}",
            group_thousands(&format!("{scaled:.*}", self.decimals)),
            self.suffix
        )
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
fn group_thousands(number: &str) -> String {
    let (integer, fraction) = match number.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (number, None),
    };
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
    if let Some(fraction) = fraction {
        grouped.push('.');
        grouped.push_str(fraction);
    }
    grouped
}

fn fmt_count(count: u64) -> String {
    group_thousands(&count.to_string())
}

/// A "nice" step (1, 2 or 5 × 10^k) that splits `span` into at most `max_intervals`.
fn nice_step(span: f64, max_intervals: f64) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf((span / max_intervals).log10().floor());
    for multiple in [1.0, 2.0, 5.0, 10.0, 20.0] {
        let step = magnitude * multiple;
        if step.is_finite() && step > 0.0 && (span / step).ceil() <= max_intervals {
            return step;
        }
    }
    // Only reachable when `span` is so small or large that powers of ten underflow or
    // overflow; one interval is still a correct axis.
    span
}

#[derive(Debug, Clone)]
struct Ticks {
    values: Vec<f64>,
    top: f64,
    format: AxisFormat,
}

/// The largest axis we draw. Nothing real comes near it (10^15 ms is 30,000 years), but
/// corrupt input can (u64::MAX commits, f64::MAX latency); capping keeps tick arithmetic
/// finite and labels short, and such data is simply pinned to the top of its panel.
const AXIS_LIMIT: f64 = 1e15;

/// Value-axis ticks from zero: 4–6 nice values, the last one at or above `data_max`.
fn value_ticks(data_max: f64) -> Ticks {
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
    let values = (0..=7u32)
        .map(|index| f64::from(index) * step)
        .take_while(|value| *value <= top * (1.0 + 1e-9))
        .collect();
    Ticks {
        values,
        top,
        format: AxisFormat::for_axis(top, step),
    }
}

/// Time-axis ticks in seconds, never past the end of the data.
fn time_ticks(domain_s: f64) -> Ticks {
    let step = nice_step(domain_s, 10.0);
    let values = (0..=11u32)
        .map(|index| f64::from(index) * step)
        .take_while(|value| *value <= domain_s * (1.0 + 1e-9))
        .collect();
    Ticks {
        values,
        top: domain_s,
        format: AxisFormat {
            divisor: 1.0,
            suffix: "",
            decimals: decimals_for(step),
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Panel {
    top_px: f64,
    bottom_px: f64,
}

impl Panel {
    fn y_px(&self, value: f64, axis_top: f64) -> f64 {
        let fraction = if axis_top > 0.0 && value.is_finite() {
            (value / axis_top).clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.bottom_px - fraction * (self.bottom_px - self.top_px)
    }

    fn middle_px(&self) -> f64 {
        (self.top_px + self.bottom_px) / 2.0
    }
}

/// Maps chart time to x; times outside the chart are pinned to its edges.
#[derive(Debug, Clone, Copy)]
struct TimeScale {
    domain_ms: f64,
}

impl TimeScale {
    fn x_px(&self, ms: f64) -> f64 {
        let fraction = if ms.is_nan() {
            0.0
        } else {
            (ms / self.domain_ms).clamp(0.0, 1.0)
        };
        PLOT_LEFT_PX + fraction * (PLOT_RIGHT_PX - PLOT_LEFT_PX)
    }

    /// NaN has no place on the axis; everything else (±inf included) is clamped onto it.
    fn clamp_ms(&self, ms: f64) -> Option<f64> {
        if ms.is_nan() {
            None
        } else {
            Some(ms.clamp(0.0, self.domain_ms))
        }
    }
}

/// XML-escapes text for both element content and attribute values. Control characters are
/// not allowed in XML 1.0 at all (one would make the whole document unreadable), so they
/// become spaces.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            '\t' | '\n' | '\r' => escaped.push(' '),
            c if c.is_control() => escaped.push(' '),
            c => escaped.push(c),
        }
    }
    escaped
}

fn text_width_px(text: &str, font_px: f64, char_width_em: f64) -> f64 {
    len_f64(text.chars().count()) * font_px * char_width_em
}

/// Cuts `text` so its estimated width fits `max_px`, marking the cut with an ellipsis.
fn fit_text(text: &str, max_px: f64, font_px: f64, char_width_em: f64) -> String {
    if text_width_px(text, font_px, char_width_em) <= max_px {
        return text.to_owned();
    }
    let char_px = font_px * char_width_em;
    let mut fitted = String::new();
    let mut used_px = char_px; // the ellipsis
    for c in text.chars() {
        if used_px + char_px > max_px {
            break;
        }
        fitted.push(c);
        used_px += char_px;
    }
    let mut fitted = fitted.trim_end().to_owned();
    fitted.push('…');
    fitted
}

/// For tooltips, which show the caller's times as given (unclamped); a non-finite time
/// is a measurement bug worth seeing, but not as "NaN s" in a report.
fn fmt_seconds(ms: f64) -> String {
    if ms.is_finite() {
        format!("{:.2} s", ms / 1000.0)
    } else {
        "an unknown time".to_owned()
    }
}

#[derive(Debug, Clone, Copy)]
enum Swatch {
    Area,
    Bar,
    Line(&'static str),
    Dashed(&'static str),
    Band,
}

const LEGEND: [(Swatch, &str); 7] = [
    (Swatch::Area, "throughput (tx/s)"),
    (Swatch::Bar, "failed requests (/s)"),
    (Swatch::Line(LATENCY_COLOUR), "p99 latency (ms)"),
    (Swatch::Dashed(INJECTED_COLOUR), "fault injected"),
    (Swatch::Line(DETECTED_COLOUR), "detected"),
    (Swatch::Line(RECOVERED_COLOUR), "recovered (first commit)"),
    (Swatch::Band, "until throughput back to 90 %"),
];
const SWATCH_WIDTH_PX: f64 = 18.0;
const LEGEND_ITEM_GAP_PX: f64 = 16.0;

#[derive(Debug, Clone, Copy)]
struct LegendItem {
    swatch: Swatch,
    text: &'static str,
    left_px: f64,
    row: usize,
}

/// Flows the legend left to right across the plot width, wrapping onto new rows.
fn layout_legend() -> (Vec<LegendItem>, usize) {
    let mut items = Vec::with_capacity(LEGEND.len());
    let mut left_px = PLOT_LEFT_PX;
    let mut row = 0;
    for (swatch, text) in LEGEND {
        let width_px = SWATCH_WIDTH_PX + 5.0 + text_width_px(text, FONT_PX, CHAR_WIDTH_EM);
        if left_px > PLOT_LEFT_PX && left_px + width_px > PLOT_RIGHT_PX {
            row += 1;
            left_px = PLOT_LEFT_PX;
        }
        items.push(LegendItem {
            swatch,
            text,
            left_px,
            row,
        });
        left_px += width_px + LEGEND_ITEM_GAP_PX;
    }
    (items, row + 1)
}

/// A fault resolved against the chart: clamped times and a label position that stays on
/// the canvas and out of the way of earlier labels.
#[derive(Debug, Clone)]
struct PlacedFault {
    label: String,
    /// Appended after truncation, so it is never the part cut off.
    label_suffix: &'static str,
    shown_label: String,
    tooltip: String,
    injected_ms: f64,
    detected_ms: Option<f64>,
    recovered_ms: Option<f64>,
    band_end_ms: Option<f64>,
    label_left_px: f64,
    label_width_px: f64,
    lane: usize,
}

fn tooltip(fault: &FaultMark) -> String {
    let mut text = format!(
        "{} (injected at {})",
        fault.label,
        fmt_seconds(fault.injected_at_ms)
    );
    let after = |name: &str, at_ms: Option<f64>| {
        at_ms.filter(|ms| ms.is_finite()).map(|ms| {
            let delay_ms = ms - fault.injected_at_ms;
            if delay_ms.is_finite() {
                format!("; {name} +{}", fmt_seconds(delay_ms))
            } else {
                format!("; {name} at {}", fmt_seconds(ms))
            }
        })
    };
    for part in [
        after("detected", fault.detected_at_ms),
        after("recovered", fault.recovered_at_ms),
        after("throughput back", fault.throughput_back_at_ms),
    ]
    .into_iter()
    .flatten()
    {
        text.push_str(&part);
    }
    // Same rule as the label's "(not recovered)": NaN is no observation.
    let observed = |at_ms: Option<f64>| at_ms.is_some_and(|ms| !ms.is_nan());
    if !observed(fault.recovered_at_ms) && !observed(fault.throughput_back_at_ms) {
        text.push_str("; no recovery observed");
    }
    text
}

fn place_faults(faults: &[FaultMark], scale: TimeScale) -> (Vec<PlacedFault>, usize) {
    let mut placed: Vec<PlacedFault> = faults
        .iter()
        .filter_map(|fault| {
            let injected_ms = scale.clamp_ms(fault.injected_at_ms)?;
            let clamp = |at_ms: Option<f64>| at_ms.and_then(|ms| scale.clamp_ms(ms));
            let detected_ms = clamp(fault.detected_at_ms);
            let recovered_ms = clamp(fault.recovered_at_ms);
            let band_end_ms = clamp(fault.throughput_back_at_ms)
                .or(recovered_ms)
                .map(|end_ms| end_ms.max(injected_ms));
            // A band to the end of the chart would bury every later fault under it; an
            // unrecovered fault says so in its label instead.
            let label_suffix = if band_end_ms.is_none() {
                " (not recovered)"
            } else {
                ""
            };
            let shown_label = fit_label(&fault.label, label_suffix, MAX_LABEL_WIDTH_PX);
            let label_width_px = label_box_width_px(&shown_label);
            // Right of its line unless that would run off the canvas; then slide left.
            let label_left_px = (scale.x_px(injected_ms) + 3.0)
                .min(WIDTH_PX - 6.0 - label_width_px)
                .max(6.0);
            Some(PlacedFault {
                label: fault.label.clone(),
                label_suffix,
                shown_label,
                tooltip: tooltip(fault),
                injected_ms,
                detected_ms,
                recovered_ms,
                band_end_ms,
                label_left_px,
                label_width_px,
                lane: 0,
            })
        })
        .collect();
    placed.sort_by(|a, b| a.injected_ms.total_cmp(&b.injected_ms));

    // Greedy lanes in time order. Each lane remembers its last label: when every lane is
    // taken, the lane freed first gives up the tail of its label (with an ellipsis) rather
    // than having it silently painted over; the full text stays in the tooltip.
    let mut lanes: Vec<(f64, usize)> = Vec::new();
    for index in 0..placed.len() {
        let Some(left_px) = placed.get(index).map(|fault| fault.label_left_px) else {
            continue;
        };
        let free = lanes
            .iter()
            .position(|(right_px, _)| *right_px + LABEL_GAP_PX <= left_px);
        let lane = match free {
            Some(lane) => lane,
            None if lanes.len() < MAX_LABEL_LANES => {
                lanes.push((f64::NEG_INFINITY, index));
                lanes.len() - 1
            }
            None => {
                let lane = lanes
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
                    .map_or(0, |(lane, _)| lane);
                let previous = lanes.get(lane).map(|(_, previous)| *previous);
                if let Some(previous) = previous.and_then(|previous| placed.get_mut(previous)) {
                    let room_px = left_px - LABEL_GAP_PX - previous.label_left_px;
                    previous.shown_label =
                        fit_label(&previous.label, previous.label_suffix, room_px);
                    previous.label_width_px = label_box_width_px(&previous.shown_label);
                }
                lane
            }
        };
        if let (Some(slot), Some(fault)) = (lanes.get_mut(lane), placed.get_mut(index)) {
            *slot = (fault.label_left_px + fault.label_width_px, index);
            fault.lane = lane;
        }
    }
    let lane_count = lanes.len();
    (placed, lane_count)
}

/// The label as shown within `max_box_px` (box padding included), the suffix kept whole.
fn fit_label(label: &str, suffix: &str, max_box_px: f64) -> String {
    let max_text_px = max_box_px.min(PLOT_RIGHT_PX - PLOT_LEFT_PX) - LABEL_PADDING_PX;
    let suffix_px = text_width_px(suffix, FONT_PX, CHAR_WIDTH_EM);
    let mut shown = fit_text(label, max_text_px - suffix_px, FONT_PX, CHAR_WIDTH_EM);
    shown.push_str(suffix);
    shown
}

fn label_box_width_px(shown_label: &str) -> f64 {
    text_width_px(shown_label, FONT_PX, CHAR_WIDTH_EM) + LABEL_PADDING_PX
}

#[derive(Debug, Clone, Copy)]
struct Layout {
    lanes_top_px: f64,
    throughput: Panel,
    latency: Panel,
}

impl Layout {
    fn new(legend_rows: usize, lanes: usize) -> Self {
        let lanes_top_px = LEGEND_TOP_PX + len_f64(legend_rows) * LEGEND_ROW_PX + 4.0;
        let plot_top_px = lanes_top_px + len_f64(lanes) * LANE_HEIGHT_PX + 6.0;
        let panels_px = PLOT_BOTTOM_PX - plot_top_px - PANEL_GAP_PX;
        let throughput_bottom_px = plot_top_px + panels_px * THROUGHPUT_SHARE;
        Layout {
            lanes_top_px,
            throughput: Panel {
                top_px: plot_top_px,
                bottom_px: throughput_bottom_px,
            },
            latency: Panel {
                top_px: throughput_bottom_px + PANEL_GAP_PX,
                bottom_px: PLOT_BOTTOM_PX,
            },
        }
    }

    fn lane_top_px(&self, lane: usize) -> f64 {
        self.lanes_top_px + len_f64(lane) * LANE_HEIGHT_PX
    }
}

fn write_document(out: &mut String, chart: &TimelineChart) -> fmt::Result {
    // A zero-width bucket would divide by zero; 1 ms keeps whatever data there is visible.
    let bucket_ms = count_f64(chart.bucket_ms.max(1));
    let bucket_count = chart
        .committed_per_bucket
        .len()
        .max(chart.failed_per_bucket.len())
        .max(chart.latency_p99_ms.len());
    let groups = downsample(chart, bucket_count);
    let throughput = throughput_points(&chart.committed_per_bucket, bucket_count);
    let duration_ms = len_f64(bucket_count) * bucket_ms;
    // With no data there is still an axis to draw (and faults to pin to it).
    let scale = TimeScale {
        domain_ms: if duration_ms > 0.0 {
            duration_ms
        } else {
            1000.0
        },
    };
    let rate = |count: u64| count_f64(count) * 1000.0 / bucket_ms;

    let throughput_max = throughput
        .iter()
        .map(|(_, committed)| rate(*committed))
        .chain(groups.iter().map(|group| rate(group.failed_max)))
        .fold(0.0, f64::max);
    let throughput_ticks = value_ticks(throughput_max);
    let latency_ticks = value_ticks(
        groups
            .iter()
            .filter_map(|group| group.p99_max_ms)
            .fold(0.0, f64::max),
    );
    let time_ticks = time_ticks(scale.domain_ms / 1000.0);

    let (legend, legend_rows) = layout_legend();
    let (faults, lanes) = place_faults(&chart.faults, scale);
    let layout = Layout::new(legend_rows, lanes);

    writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH_PX}\" height=\"{HEIGHT_PX}\" \
         viewBox=\"0 0 {WIDTH_PX} {HEIGHT_PX}\" font-family=\"sans-serif\" font-size=\"{FONT_PX}\" \
         fill=\"{TEXT_COLOUR}\">"
    )?;
    writeln!(out, "<title>{}</title>", escape(&chart.title))?;
    writeln!(
        out,
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH_PX}\" height=\"{HEIGHT_PX}\" fill=\"#ffffff\"/>"
    )?;
    write_header(out, chart, bucket_count, duration_ms)?;
    write_legend(out, &legend)?;

    write_grid(
        out,
        "throughput-grid",
        layout.throughput,
        &throughput_ticks,
        &time_ticks,
    )?;
    write_grid(
        out,
        "latency-grid",
        layout.latency,
        &latency_ticks,
        &time_ticks,
    )?;
    write_fault_bands(out, &faults, scale, &layout)?;
    let throughput_px = |(position, committed): &(f64, u64)| {
        (
            scale.x_px(position * bucket_ms),
            layout
                .throughput
                .y_px(rate(*committed), throughput_ticks.top),
        )
    };
    let throughput_px: Vec<(f64, f64)> = throughput.iter().map(throughput_px).collect();
    write_throughput(
        out,
        &throughput_px,
        &groups,
        scale,
        bucket_ms,
        layout.throughput,
        &throughput_ticks,
    )?;
    write_latency(
        out,
        &groups,
        scale,
        bucket_ms,
        layout.latency,
        &latency_ticks,
    )?;
    write_fault_lines(out, &faults, scale, &layout)?;
    write_axes(out, &layout, &throughput_ticks, &latency_ticks, &time_ticks)?;
    write_fault_labels(out, &faults, &layout)?;
    out.push_str("</svg>\n");
    Ok(())
}

fn write_header(
    out: &mut String,
    chart: &TimelineChart,
    bucket_count: usize,
    duration_ms: f64,
) -> fmt::Result {
    let committed = chart
        .committed_per_bucket
        .iter()
        .fold(0u64, |sum, count| sum.saturating_add(*count));
    let failed = chart
        .failed_per_bucket
        .iter()
        .fold(0u64, |sum, count| sum.saturating_add(*count));
    let title = fit_text(
        &chart.title,
        PLOT_RIGHT_PX - PLOT_LEFT_PX,
        TITLE_FONT_PX,
        BOLD_CHAR_WIDTH_EM,
    );
    let plural = |count: usize, noun: &str| match count {
        1 => format!("1 {noun}"),
        count => format!("{} {noun}s", group_thousands(&count.to_string())),
    };
    let subtitle = format!(
        "{} committed · {} failed · {} · {} s in {} of {} ms",
        fmt_count(committed),
        fmt_count(failed),
        plural(chart.faults.len(), "fault"),
        group_thousands(&format!("{:.1}", duration_ms / 1000.0)),
        plural(bucket_count, "bucket"),
        chart.bucket_ms,
    );
    let subtitle = fit_text(&subtitle, PLOT_RIGHT_PX - PLOT_LEFT_PX, 12.0, CHAR_WIDTH_EM);
    writeln!(out, "<g class=\"header\">")?;
    writeln!(
        out,
        "<text x=\"{PLOT_LEFT_PX}\" y=\"26\" font-size=\"{TITLE_FONT_PX}\" \
         font-weight=\"bold\">{}</text>",
        escape(&title)
    )?;
    writeln!(
        out,
        "<text class=\"subtitle\" x=\"{PLOT_LEFT_PX}\" y=\"44\" font-size=\"12\" \
         fill=\"{MUTED_COLOUR}\">{}</text>",
        escape(&subtitle)
    )?;
    writeln!(out, "</g>")
}

fn write_legend(out: &mut String, legend: &[LegendItem]) -> fmt::Result {
    writeln!(out, "<g class=\"legend\">")?;
    for item in legend {
        let top_px = LEGEND_TOP_PX + len_f64(item.row) * LEGEND_ROW_PX;
        let middle_px = top_px + 7.0;
        let (left, right) = (item.left_px, item.left_px + SWATCH_WIDTH_PX);
        match item.swatch {
            Swatch::Area => writeln!(
                out,
                "<rect x=\"{left:.1}\" y=\"{:.1}\" width=\"{SWATCH_WIDTH_PX}\" height=\"10\" \
                 fill=\"{THROUGHPUT_COLOUR}\" fill-opacity=\"0.2\" stroke=\"{THROUGHPUT_COLOUR}\" \
                 stroke-width=\"1.5\"/>",
                middle_px - 5.0
            )?,
            Swatch::Bar => writeln!(
                out,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"6\" height=\"10\" fill=\"{FAILED_COLOUR}\"/>",
                left + 6.0,
                middle_px - 5.0
            )?,
            Swatch::Line(colour) => writeln!(
                out,
                "<line x1=\"{left:.1}\" y1=\"{middle_px:.1}\" x2=\"{right:.1}\" y2=\"{middle_px:.1}\" \
                 stroke=\"{colour}\" stroke-width=\"2\"/>"
            )?,
            Swatch::Dashed(colour) => writeln!(
                out,
                "<line x1=\"{left:.1}\" y1=\"{middle_px:.1}\" x2=\"{right:.1}\" y2=\"{middle_px:.1}\" \
                 stroke=\"{colour}\" stroke-width=\"2\" stroke-dasharray=\"4 3\"/>"
            )?,
            Swatch::Band => writeln!(
                out,
                "<rect x=\"{left:.1}\" y=\"{:.1}\" width=\"{SWATCH_WIDTH_PX}\" height=\"10\" \
                 fill=\"{INJECTED_COLOUR}\" fill-opacity=\"0.12\"/>",
                middle_px - 5.0
            )?,
        }
        writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            right + 5.0,
            middle_px + 4.0,
            escape(item.text)
        )?;
    }
    writeln!(out, "</g>")
}

fn write_grid(
    out: &mut String,
    class: &str,
    panel: Panel,
    value_ticks: &Ticks,
    time_ticks: &Ticks,
) -> fmt::Result {
    writeln!(
        out,
        "<g class=\"{class}\" data-axis-max=\"{}\" stroke=\"{GRID_COLOUR}\" stroke-width=\"1\">",
        value_ticks.top
    )?;
    for value in &value_ticks.values {
        let y = panel.y_px(*value, value_ticks.top);
        writeln!(
            out,
            "<line x1=\"{PLOT_LEFT_PX}\" y1=\"{y:.1}\" x2=\"{PLOT_RIGHT_PX}\" y2=\"{y:.1}\"/>"
        )?;
    }
    let scale = TimeScale {
        domain_ms: time_ticks.top * 1000.0,
    };
    for second in &time_ticks.values {
        let x = scale.x_px(second * 1000.0);
        writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>",
            panel.top_px, panel.bottom_px
        )?;
    }
    writeln!(out, "</g>")
}

fn write_fault_bands(
    out: &mut String,
    faults: &[PlacedFault],
    scale: TimeScale,
    layout: &Layout,
) -> fmt::Result {
    writeln!(
        out,
        "<g class=\"fault-bands\" fill=\"{INJECTED_COLOUR}\" fill-opacity=\"0.09\">"
    )?;
    for fault in faults {
        let Some(band_end_ms) = fault.band_end_ms else {
            continue;
        };
        let left = scale.x_px(fault.injected_ms);
        let width = (scale.x_px(band_end_ms) - left).max(0.0);
        if width <= 0.0 {
            continue;
        }
        writeln!(
            out,
            "<rect x=\"{left:.1}\" y=\"{:.1}\" width=\"{width:.1}\" height=\"{:.1}\">\
             <title>{}</title></rect>",
            layout.throughput.top_px,
            layout.latency.bottom_px - layout.throughput.top_px,
            escape(&fault.tooltip)
        )?;
    }
    writeln!(out, "</g>")
}

fn write_points(out: &mut String, points: &[(f64, f64)]) -> fmt::Result {
    for (index, (x, y)) in points.iter().enumerate() {
        if index > 0 {
            out.push(' ');
        }
        write!(out, "{x:.1},{y:.1}")?;
    }
    Ok(())
}

fn write_throughput(
    out: &mut String,
    points: &[(f64, f64)],
    groups: &[Group],
    scale: TimeScale,
    bucket_ms: f64,
    panel: Panel,
    ticks: &Ticks,
) -> fmt::Result {
    writeln!(out, "<g class=\"throughput\">")?;
    let rate = |count: u64| count_f64(count) * 1000.0 / bucket_ms;
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        write!(
            out,
            "<polygon class=\"throughput-area\" fill=\"{THROUGHPUT_COLOUR}\" fill-opacity=\"0.18\" \
             stroke=\"none\" points=\"{:.1},{:.1} ",
            first.0, panel.bottom_px
        )?;
        write_points(out, points)?;
        writeln!(out, " {:.1},{:.1}\"/>", last.0, panel.bottom_px)?;
        write!(
            out,
            "<polyline class=\"throughput-line\" fill=\"none\" stroke=\"{THROUGHPUT_COLOUR}\" \
             stroke-width=\"1.5\" stroke-linejoin=\"round\" points=\""
        )?;
        write_points(out, points)?;
        writeln!(out, "\"/>")?;
    } else {
        writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{MUTED_COLOUR}\">\
             no data</text>",
            (PLOT_LEFT_PX + PLOT_RIGHT_PX) / 2.0,
            panel.middle_px()
        )?;
    }

    // Failures are usually few against thousands of commits; a minimum height keeps a single
    // failed request visible instead of rounding it away to nothing.
    writeln!(out, "<g class=\"failed\" fill=\"{FAILED_COLOUR}\">")?;
    let panel_height_px = panel.bottom_px - panel.top_px;
    for group in groups.iter().filter(|group| group.failed_max > 0) {
        let left = scale.x_px(len_f64(group.first_bucket) * bucket_ms);
        let right = scale.x_px(len_f64(group.end_bucket) * bucket_ms);
        let width = (right - left - 1.0).max(1.0);
        let height = (panel.bottom_px - panel.y_px(rate(group.failed_max), ticks.top))
            .max(FAILED_BAR_MIN_PX)
            .min(panel_height_px);
        writeln!(
            out,
            "<rect x=\"{left:.1}\" y=\"{:.1}\" width=\"{width:.1}\" height=\"{height:.1}\"/>",
            panel.bottom_px - height
        )?;
    }
    writeln!(out, "</g>")?;
    writeln!(out, "</g>")
}

fn write_latency(
    out: &mut String,
    groups: &[Group],
    scale: TimeScale,
    bucket_ms: f64,
    panel: Panel,
    ticks: &Ticks,
) -> fmt::Result {
    writeln!(
        out,
        "<g class=\"latency\" stroke=\"{LATENCY_COLOUR}\" fill=\"none\" stroke-width=\"1.5\">"
    )?;
    // A bucket without commits has no latency, not zero latency: the line breaks there.
    let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    for group in groups {
        match group.p99_max_ms {
            Some(p99_ms) => {
                let centre_ms = len_f64(group.first_bucket + group.end_bucket) * bucket_ms / 2.0;
                current.push((scale.x_px(centre_ms), panel.y_px(p99_ms, ticks.top)));
            }
            None if !current.is_empty() => segments.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    for segment in &segments {
        match segment.as_slice() {
            // A lone sample between gaps would be an invisible zero-length line.
            [(x, y)] => writeln!(
                out,
                "<circle class=\"latency-dot\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2\" \
                 fill=\"{LATENCY_COLOUR}\" stroke=\"none\"/>"
            )?,
            points => {
                write!(
                    out,
                    "<polyline class=\"latency-line\" stroke-linejoin=\"round\" points=\""
                )?;
                write_points(out, points)?;
                writeln!(out, "\"/>")?;
            }
        }
    }
    if segments.is_empty() {
        writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{MUTED_COLOUR}\" \
             stroke=\"none\">no latency samples</text>",
            (PLOT_LEFT_PX + PLOT_RIGHT_PX) / 2.0,
            panel.middle_px()
        )?;
    }
    writeln!(out, "</g>")
}

fn write_fault_lines(
    out: &mut String,
    faults: &[PlacedFault],
    scale: TimeScale,
    layout: &Layout,
) -> fmt::Result {
    writeln!(out, "<g class=\"fault-lines\" stroke-width=\"1.5\">")?;
    let (top, bottom) = (layout.throughput.top_px, layout.latency.bottom_px);
    for fault in faults {
        writeln!(
            out,
            "<g class=\"fault\"><title>{}</title>",
            escape(&fault.tooltip)
        )?;
        for (at_ms, colour) in [
            (fault.detected_ms, DETECTED_COLOUR),
            (fault.recovered_ms, RECOVERED_COLOUR),
        ] {
            if let Some(at_ms) = at_ms {
                let x = scale.x_px(at_ms);
                writeln!(
                    out,
                    "<line x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" \
                     stroke=\"{colour}\"/>"
                )?;
            }
        }
        // Drawn last so it stays on top where detection is instantaneous; it rises into the
        // label lanes to tie the line to its label.
        let x = scale.x_px(fault.injected_ms);
        writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" \
             stroke=\"{INJECTED_COLOUR}\" stroke-dasharray=\"5 3\"/>",
            layout.lane_top_px(fault.lane) + 2.0
        )?;
        writeln!(out, "</g>")?;
    }
    writeln!(out, "</g>")
}

fn write_axes(
    out: &mut String,
    layout: &Layout,
    throughput_ticks: &Ticks,
    latency_ticks: &Ticks,
    time_ticks: &Ticks,
) -> fmt::Result {
    writeln!(out, "<g class=\"axes\">")?;
    write_value_axis(
        out,
        "throughput-axis",
        layout.throughput,
        throughput_ticks,
        "throughput (tx/s)",
    )?;
    write_value_axis(
        out,
        "latency-axis",
        layout.latency,
        latency_ticks,
        "p99 latency (ms)",
    )?;
    // The panels share the time axis, so only the bottom one carries its labels.
    let scale = TimeScale {
        domain_ms: time_ticks.top * 1000.0,
    };
    let bottom = layout.latency.bottom_px;
    writeln!(out, "<g class=\"time-axis\" text-anchor=\"middle\">")?;
    for second in &time_ticks.values {
        let x = scale.x_px(second * 1000.0);
        writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{bottom:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" \
             stroke=\"{AXIS_COLOUR}\"/>",
            bottom + 4.0
        )?;
        writeln!(
            out,
            "<text class=\"x-tick\" x=\"{x:.1}\" y=\"{:.1}\">{}</text>",
            bottom + 16.0,
            escape(&time_ticks.format.label(*second))
        )?;
    }
    writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{MUTED_COLOUR}\">time (s)</text>",
        (PLOT_LEFT_PX + PLOT_RIGHT_PX) / 2.0,
        bottom + 36.0
    )?;
    writeln!(out, "</g>")?;
    writeln!(out, "</g>")
}

fn write_value_axis(
    out: &mut String,
    class: &str,
    panel: Panel,
    ticks: &Ticks,
    title: &str,
) -> fmt::Result {
    writeln!(out, "<g class=\"{class}\">")?;
    writeln!(
        out,
        "<line x1=\"{PLOT_LEFT_PX}\" y1=\"{:.1}\" x2=\"{PLOT_LEFT_PX}\" y2=\"{:.1}\" \
         stroke=\"{AXIS_COLOUR}\"/>",
        panel.top_px, panel.bottom_px
    )?;
    writeln!(
        out,
        "<line x1=\"{PLOT_LEFT_PX}\" y1=\"{:.1}\" x2=\"{PLOT_RIGHT_PX}\" y2=\"{:.1}\" \
         stroke=\"{AXIS_COLOUR}\"/>",
        panel.bottom_px, panel.bottom_px
    )?;
    for value in &ticks.values {
        let y = panel.y_px(*value, ticks.top);
        writeln!(
            out,
            "<text class=\"y-tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            PLOT_LEFT_PX - 6.0,
            y + 4.0,
            escape(&ticks.format.label(*value))
        )?;
    }
    writeln!(
        out,
        "<text x=\"0\" y=\"0\" transform=\"translate(20 {:.1}) rotate(-90)\" \
         text-anchor=\"middle\" fill=\"{MUTED_COLOUR}\">{}</text>",
        panel.middle_px(),
        escape(title)
    )?;
    writeln!(out, "</g>")
}

fn write_fault_labels(out: &mut String, faults: &[PlacedFault], layout: &Layout) -> fmt::Result {
    writeln!(out, "<g class=\"fault-labels\">")?;
    for fault in faults {
        let top = layout.lane_top_px(fault.lane);
        writeln!(
            out,
            "<g class=\"fault-label\"><title>{}</title>",
            escape(&fault.tooltip)
        )?;
        writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#ffffff\" \
             fill-opacity=\"0.92\" stroke=\"{INJECTED_COLOUR}\" stroke-opacity=\"0.35\" rx=\"2\"/>",
            fault.label_left_px,
            top,
            fault.label_width_px,
            LANE_HEIGHT_PX - 2.0
        )?;
        writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{LABEL_COLOUR}\">{}</text>",
            fault.label_left_px + LABEL_PADDING_PX / 2.0,
            top + 10.5,
            escape(&fault.shown_label)
        )?;
        writeln!(out, "</g>")?;
    }
    writeln!(out, "</g>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(committed: Vec<u64>, failed: Vec<u64>, p99: Vec<Option<f64>>) -> TimelineChart {
        TimelineChart {
            title: "drill".to_owned(),
            bucket_ms: 100,
            committed_per_bucket: committed,
            failed_per_bucket: failed,
            latency_p99_ms: p99,
            faults: Vec::new(),
        }
    }

    fn fault(label: &str, injected_at_ms: f64) -> FaultMark {
        FaultMark {
            label: label.to_owned(),
            injected_at_ms,
            detected_at_ms: Some(injected_at_ms + 400.0),
            recovered_at_ms: Some(injected_at_ms + 800.0),
            throughput_back_at_ms: Some(injected_at_ms + 1200.0),
        }
    }

    /// 15 s of ~1000 tx/s with a 0.8 s outage after a crash at 7 s: what a drill report shows.
    fn sample() -> TimelineChart {
        let outage = 70..78;
        let committed = (0..150u64)
            .map(|bucket| match bucket {
                b if outage.contains(&b) => 0,
                78 => 40,
                79 => 75,
                b => 95 + (b.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) % 11,
            })
            .collect();
        let failed = (0..150u64)
            .map(|bucket| match bucket {
                70 => 9,
                71 => 4,
                72 => 1,
                _ => 0,
            })
            .collect();
        let p99 = (0..150u64)
            .map(|bucket| match bucket {
                b if outage.contains(&b) => None,
                78 => Some(850.0),
                79 => Some(120.0),
                b => Some(18.0 + f64::from(u32::try_from(b % 5).unwrap_or(0))),
            })
            .collect();
        TimelineChart {
            title: "Failover drill: participant-crash <sample> & friends".to_owned(),
            bucket_ms: 100,
            committed_per_bucket: committed,
            failed_per_bucket: failed,
            latency_p99_ms: p99,
            faults: vec![FaultMark {
                label: "participant-crash: kill -9 participant2-a".to_owned(),
                injected_at_ms: 7000.0,
                detected_at_ms: Some(7350.0),
                recovered_at_ms: Some(7800.0),
                throughput_back_at_ms: Some(8000.0),
            }],
        }
    }

    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("viewBox=\"0 0 1000 560\""));
        let opened = svg.matches("<g ").count() + svg.matches("<g>").count();
        assert_eq!(opened, svg.matches("</g>").count(), "unbalanced <g>");
        for tag in ["text", "title"] {
            assert_eq!(
                svg.matches(&format!("<{tag}")).count(),
                svg.matches(&format!("</{tag}>")).count(),
                "unbalanced <{tag}>"
            );
        }
        assert_eq!(svg.matches("<svg").count(), 1);
        for bad in ["NaN", "inf", "\0"] {
            if let Some(at) = svg.find(bad) {
                let tail = svg.get(at.saturating_sub(80)..).unwrap_or(svg);
                let context: String = tail.chars().take(160).collect();
                panic!("output contains {bad:?}: …{context}…");
            }
        }
    }

    /// Coordinate pairs of every element with `class`.
    fn point_counts(svg: &str, class: &str) -> Vec<usize> {
        let marker = format!("class=\"{class}\"");
        svg.lines()
            .filter(|line| line.contains(&marker))
            .filter_map(|line| line.split("points=\"").nth(1))
            .filter_map(|rest| rest.split('"').next())
            .map(|points| points.split_whitespace().count())
            .collect()
    }

    /// Every number in a geometry attribute or point list.
    fn geometry(svg: &str) -> Vec<f64> {
        let mut values = Vec::new();
        for attribute in [
            "x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "width", "height",
        ] {
            let marker = format!(" {attribute}=\"");
            for rest in svg.split(&marker).skip(1) {
                let value = rest.split('"').next().unwrap_or_default();
                values.push(value.parse().unwrap_or(f64::NAN));
            }
        }
        for rest in svg.split(" points=\"").skip(1) {
            let points = rest.split('"').next().unwrap_or_default();
            for number in points.split([' ', ',']) {
                values.push(number.parse().unwrap_or(f64::NAN));
            }
        }
        values
    }

    fn axis_max(svg: &str, class: &str) -> f64 {
        let marker = format!("class=\"{class}\" data-axis-max=\"");
        let rest = svg.split(&marker).nth(1).expect("grid group present");
        rest.split('"')
            .next()
            .expect("quoted")
            .parse()
            .expect("a number")
    }

    #[test]
    fn sample_renders_a_complete_document() {
        let chart = sample();
        let svg = render(&chart);
        assert_well_formed(&svg);
        assert!(svg.contains("font-family=\"sans-serif\""));
        assert!(svg.contains("participant-crash: kill -9 participant2-a"));
        let committed: u64 = chart.committed_per_bucket.iter().sum();
        assert!(committed > 10_000);
        let totals = format!("{} committed · 14 failed", fmt_count(committed));
        assert!(svg.contains(&totals), "{totals} in the subtitle: {svg}");
        // Red dashed injection line, orange detection, green recovery, one band.
        assert!(svg.contains(&format!("stroke=\"{INJECTED_COLOUR}\" stroke-dasharray")));
        assert!(svg.contains(&format!("stroke=\"{DETECTED_COLOUR}\"/>")));
        assert!(svg.contains(&format!("stroke=\"{RECOVERED_COLOUR}\"/>")));
        // The outage splits the latency line in two.
        assert_eq!(point_counts(&svg, "latency-line").len(), 2);
        // Three failing buckets, three bars.
        let failed = svg
            .split("<g class=\"failed\"")
            .nth(1)
            .expect("failed group");
        let failed = failed.split("</g>").next().expect("closed");
        assert_eq!(failed.matches("<rect").count(), 3);
        if let Some(path) = std::env::var_os("MERIDIAN_DRILL_SVG_OUT") {
            std::fs::write(path, &svg).expect("write the sample");
        }
    }

    #[test]
    fn text_is_escaped_everywhere() {
        let mut chart = sample();
        chart.title = "title <&> \"q\" 'a'".to_owned();
        chart.faults = vec![fault("kill <&> \"node\" 'x'\u{1b}", 1000.0)];
        let svg = render(&chart);
        assert_well_formed(&svg);
        assert!(svg.contains("title &lt;&amp;&gt; &quot;q&quot; &apos;a&apos;"));
        assert!(svg.contains("kill &lt;&amp;&gt; &quot;node&quot; &apos;x&apos;"));
        assert!(!svg.contains("<&>"));
        assert!(!svg.contains("\"node\""));
        assert!(!svg.contains('\u{1b}'));
        assert_eq!(escape("a&b<c>d\"e'f"), "a&amp;b&lt;c&gt;d&quot;e&apos;f");
    }

    #[test]
    fn degenerate_inputs_render_without_panicking() {
        let nan_fault = FaultMark {
            label: "nan".to_owned(),
            injected_at_ms: f64::NAN,
            detected_at_ms: Some(f64::INFINITY),
            recovered_at_ms: Some(f64::NAN),
            throughput_back_at_ms: Some(f64::NEG_INFINITY),
        };
        let cases = vec![
            chart(Vec::new(), Vec::new(), Vec::new()),
            chart(vec![0; 50], vec![0; 50], vec![None; 50]),
            chart(vec![0; 50], vec![0; 50], vec![Some(0.0); 50]),
            chart(vec![7], vec![1], vec![Some(3.0)]),
            chart(vec![7], Vec::new(), Vec::new()),
            chart(Vec::new(), vec![3, 0, 2], vec![None, Some(5.0)]),
            chart(
                vec![u64::MAX, 0, u64::MAX],
                vec![u64::MAX; 3],
                vec![Some(f64::NAN), Some(f64::INFINITY), Some(-5.0)],
            ),
            chart(vec![1, 2], vec![0, 0], vec![Some(f64::MAX), Some(1e-300)]),
        ];
        for (index, mut chart) in cases.into_iter().enumerate() {
            if index % 2 == 0 {
                chart.bucket_ms = 0;
            }
            chart.title = String::new();
            chart.faults = vec![
                fault("before the start", -5_000.0),
                fault("after the end", 1e12),
                fault("at +∞", f64::INFINITY),
                nan_fault.clone(),
                FaultMark {
                    label: "never recovered".to_owned(),
                    injected_at_ms: 10.0,
                    detected_at_ms: None,
                    recovered_at_ms: None,
                    throughput_back_at_ms: None,
                },
            ];
            let svg = render(&chart);
            assert_well_formed(&svg);
            assert!(svg.contains("after the end"), "case {index}");
            for value in geometry(&svg) {
                assert!((0.0..=WIDTH_PX).contains(&value), "case {index}: {value}");
            }
        }
    }

    #[test]
    fn downsampling_bounds_points_and_keeps_spikes() {
        let buckets = 36_000;
        let mut committed = vec![100u64; buckets];
        let mut p99 = vec![Some(20.0); buckets];
        let spike = 17_777;
        if let Some(count) = committed.get_mut(spike) {
            *count = 1_000;
        }
        if let Some(latency) = p99.get_mut(spike) {
            *latency = Some(900.0);
        }
        let svg = render(&chart(committed, vec![0; buckets], p99));
        assert_well_formed(&svg);
        let throughput = point_counts(&svg, "throughput-line");
        assert_eq!(throughput.len(), 1);
        assert!(throughput
            .iter()
            .all(|count| *count <= MAX_POINTS && *count > 400));
        let latency: usize = point_counts(&svg, "latency-line").iter().sum();
        assert!(latency <= MAX_POINTS && latency > 500, "{latency}");
        // A single-bucket spike to 10,000 tx/s and 900 ms still sets the axes.
        assert!(axis_max(&svg, "throughput-grid") >= 10_000.0);
        assert!(axis_max(&svg, "latency-grid") >= 900.0);
        assert!(svg.len() < 200_000, "{} bytes", svg.len());
    }

    #[test]
    fn long_runs_keep_throughput_dips_and_peaks() {
        let buckets = 36_000;
        let mut committed = vec![100u64; buckets];
        for bucket in 20_000..20_005 {
            if let Some(count) = committed.get_mut(bucket) {
                *count = 0;
            }
        }
        if let Some(count) = committed.get_mut(30_001) {
            *count = 900;
        }
        let points = throughput_points(&committed, buckets);
        assert!(points.len() <= MAX_POINTS, "{}", points.len());
        assert!(
            points.iter().any(|(_, count)| *count == 0),
            "the outage survives"
        );
        assert!(
            points.iter().any(|(_, count)| *count == 900),
            "the peak survives"
        );
        assert!(points.windows(2).all(|pair| match pair {
            [a, b] => a.0 <= b.0,
            _ => true,
        }));
        assert_eq!(points.first().map(|p| p.0), Some(0.0));
        assert_eq!(points.last().map(|p| p.0), Some(36_000.0));
        // Short runs are drawn bucket by bucket; one bucket is a plateau across the chart.
        assert_eq!(throughput_points(&[1, 2, 3], 3).len(), 3);
        assert_eq!(throughput_points(&[7], 1), [(0.0, 7), (1.0, 7)]);
        assert!(throughput_points(&[], 0).is_empty());
        assert_eq!(throughput_points(&[], 2), [(0.0, 0), (2.0, 0)]);
    }

    #[test]
    fn an_unrecovered_fault_is_labelled_not_shaded() {
        let mut chart = sample();
        chart.faults = vec![FaultMark {
            label: "database-restart: stop PostgreSQL".to_owned(),
            injected_at_ms: 3_000.0,
            detected_at_ms: Some(3_200.0),
            recovered_at_ms: None,
            throughput_back_at_ms: None,
        }];
        let svg = render(&chart);
        assert_well_formed(&svg);
        assert!(svg.contains("database-restart: stop PostgreSQL (not recovered)"));
        assert!(svg.contains("no recovery observed"));
        let bands = svg
            .split("<g class=\"fault-bands\"")
            .nth(1)
            .expect("band group");
        let bands = bands.split("</g>").next().expect("closed");
        assert!(!bands.contains("<rect"));
    }

    #[test]
    fn crowded_labels_are_trimmed_not_painted_over() {
        let scale = TimeScale {
            domain_ms: 100_000.0,
        };
        let faults: Vec<FaultMark> = (0..5)
            .map(|index| {
                fault(
                    &format!("crash-{index}: {}", "z".repeat(60)),
                    f64::from(index) * 1_000.0,
                )
            })
            .collect();
        let (placed, lanes) = place_faults(&faults, scale);
        assert_eq!(lanes, MAX_LABEL_LANES);
        for lane in 0..lanes {
            let mut in_lane: Vec<&PlacedFault> =
                placed.iter().filter(|fault| fault.lane == lane).collect();
            in_lane.sort_by(|a, b| a.label_left_px.total_cmp(&b.label_left_px));
            for pair in in_lane.windows(2) {
                if let [a, b] = pair {
                    assert!(
                        a.label_left_px + a.label_width_px <= b.label_left_px,
                        "{lane}"
                    );
                    assert!(a.shown_label.ends_with('…'));
                }
            }
        }
    }

    #[test]
    fn throughput_axis_covers_the_data() {
        for peak in [1u64, 3, 99, 100, 101, 123, 999, 1_000, 1_001, 4_321, 65_432] {
            let svg = render(&chart(vec![0, peak, 1], vec![0, 0, 0], Vec::new()));
            // 100 ms buckets: tx/s is ten times the count.
            let max_tx_per_s = count_f64(peak) * 10.0;
            assert!(
                axis_max(&svg, "throughput-grid") >= max_tx_per_s,
                "peak {peak}"
            );
        }
        // Failures above commits (everything failing) must fit too.
        let svg = render(&chart(vec![1, 1], vec![50, 0], Vec::new()));
        assert!(axis_max(&svg, "throughput-grid") >= 500.0);
    }

    #[test]
    fn value_ticks_are_nice() {
        let mut value = 1e-4;
        while value < 1e12 {
            let ticks = value_ticks(value);
            let count = ticks.values.len();
            assert!((4..=6).contains(&count), "{value}: {:?}", ticks.values);
            assert!(ticks.top >= value, "{value}: top {}", ticks.top);
            assert_eq!(ticks.values.first().copied(), Some(0.0));
            let step = ticks.values.get(1).copied().unwrap_or(0.0);
            let mantissa = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-9),
                "{value}: step {step}"
            );
            value *= 1.37;
        }
        assert_eq!(value_ticks(0.0).values.len(), 6);
        assert_eq!(value_ticks(f64::NAN).top, 1.0);
        assert!(value_ticks(f64::MAX).top.is_finite());
    }

    #[test]
    fn axis_labels_are_short() {
        let ticks = value_ticks(1_234.0);
        let labels: Vec<String> = ticks
            .values
            .iter()
            .map(|v| ticks.format.label(*v))
            .collect();
        assert_eq!(labels, ["0", "500", "1,000", "1,500"]);
        let ticks = value_ticks(23_000.0);
        let labels: Vec<String> = ticks
            .values
            .iter()
            .map(|v| ticks.format.label(*v))
            .collect();
        assert_eq!(labels, ["0", "5k", "10k", "15k", "20k", "25k"]);
        let ticks = value_ticks(0.7);
        let labels: Vec<String> = ticks
            .values
            .iter()
            .map(|v| ticks.format.label(*v))
            .collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8"]);
        let ticks = time_ticks(15.0);
        let labels: Vec<String> = ticks
            .values
            .iter()
            .map(|v| ticks.format.label(*v))
            .collect();
        assert_eq!(labels, ["0", "2", "4", "6", "8", "10", "12", "14"]);
        assert_eq!(time_ticks(3_600.0).values.len(), 8);
    }

    #[test]
    fn fault_labels_stay_on_the_canvas_and_apart() {
        let scale = TimeScale {
            domain_ms: 15_000.0,
        };
        let long = "x".repeat(500);
        let faults = vec![
            fault(&long, 14_900.0),
            fault("participant-crash: kill -9 participant2-a", 7_000.0),
            fault("sequencer-freeze: SIGSTOP sequencer-b", 7_100.0),
            fault("a", 0.0),
        ];
        let (placed, lanes) = place_faults(&faults, scale);
        assert_eq!(placed.len(), 4);
        assert!(lanes <= MAX_LABEL_LANES);
        for fault in &placed {
            assert!(fault.label_left_px >= 0.0);
            assert!(fault.label_left_px + fault.label_width_px <= WIDTH_PX);
            assert!(fault.label_width_px <= MAX_LABEL_WIDTH_PX);
        }
        assert!(placed.iter().any(|fault| fault.shown_label.ends_with('…')));
        // The two faults 100 ms apart cannot share a lane.
        let lane_of = |prefix: &str| {
            placed
                .iter()
                .find(|fault| fault.shown_label.starts_with(prefix))
                .map(|fault| fault.lane)
        };
        assert_ne!(lane_of("participant-crash"), lane_of("sequencer-freeze"));
    }

    #[test]
    fn many_faults_never_take_more_than_the_lane_limit() {
        let mut chart = sample();
        chart.faults = (0..40)
            .map(|index| fault("crash", f64::from(index) * 300.0))
            .collect();
        let svg = render(&chart);
        assert_well_formed(&svg);
        assert_eq!(svg.matches("class=\"fault-label\"").count(), 40);
    }
}
