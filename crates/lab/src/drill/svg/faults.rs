//! Places the faults on the chart: times clamped onto the axis, a label that fits the canvas
//! in one of a few lanes above the plot, and a tooltip that keeps the caller's exact times.

use super::canvas::{
    fit_text, text_width_px, TimeScale, CHAR_WIDTH_EM, FONT_PX, PLOT_LEFT_PX, PLOT_RIGHT_PX,
    WIDTH_PX,
};
use super::chart::FaultMark;

// Beyond three lanes the labels would eat the plot; past that an earlier label is trimmed to
// make room (its full text stays in the tooltip).
pub(super) const MAX_LABEL_LANES: usize = 3;
pub(super) const MAX_LABEL_WIDTH_PX: f64 = 340.0;
pub(super) const LABEL_PADDING_PX: f64 = 6.0;
const LABEL_GAP_PX: f64 = 4.0;

/// A fault resolved against the chart: clamped times and a label position that stays on
/// the canvas and out of the way of earlier labels.
#[derive(Debug, Clone)]
pub(super) struct PlacedFault {
    label: String,
    /// Appended after truncation, so it is never the part cut off.
    label_suffix: &'static str,
    pub(super) shown_label: String,
    pub(super) tooltip: String,
    pub(super) injected_ms: f64,
    pub(super) detected_ms: Option<f64>,
    pub(super) recovered_ms: Option<f64>,
    pub(super) band_end_ms: Option<f64>,
    pub(super) label_left_px: f64,
    pub(super) label_width_px: f64,
    pub(super) lane: usize,
}

impl PlacedFault {
    fn place(fault: &FaultMark, scale: TimeScale) -> Option<Self> {
        let injected_ms = scale.clamp_ms(fault.injected_at_ms)?;
        let clamp = |at_ms: Option<f64>| at_ms.and_then(|ms| scale.clamp_ms(ms));
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
            detected_ms: clamp(fault.detected_at_ms),
            recovered_ms,
            band_end_ms,
            label_left_px,
            label_width_px,
            lane: 0,
        })
    }

    /// Shortens the shown label to end `LABEL_GAP_PX` before `next_left_px`.
    fn trim_before(&mut self, next_left_px: f64) {
        let room_px = next_left_px - LABEL_GAP_PX - self.label_left_px;
        self.shown_label = fit_label(&self.label, self.label_suffix, room_px);
        self.label_width_px = label_box_width_px(&self.shown_label);
    }
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

fn tooltip(fault: &FaultMark) -> String {
    let injected_ms = fault.injected_at_ms;
    let mut text = format!("{} (injected at {})", fault.label, fmt_seconds(injected_ms));
    for (name, at_ms) in [
        ("detected", fault.detected_at_ms),
        ("recovered", fault.recovered_at_ms),
        ("throughput back", fault.throughput_back_at_ms),
    ] {
        let Some(ms) = at_ms.filter(|ms| ms.is_finite()) else {
            continue;
        };
        let delay_ms = ms - injected_ms;
        text.push_str(&if delay_ms.is_finite() {
            format!("; {name} +{}", fmt_seconds(delay_ms))
        } else {
            format!("; {name} at {}", fmt_seconds(ms))
        });
    }
    // Same rule as the label's "(not recovered)": NaN is no observation.
    let observed = |at_ms: Option<f64>| at_ms.is_some_and(|ms| !ms.is_nan());
    if !observed(fault.recovered_at_ms) && !observed(fault.throughput_back_at_ms) {
        text.push_str("; no recovery observed");
    }
    text
}

/// Places every fault with a time on the axis and returns them in time order with the
/// number of label lanes used.
pub(super) fn place_faults(faults: &[FaultMark], scale: TimeScale) -> (Vec<PlacedFault>, usize) {
    let mut placed: Vec<PlacedFault> = faults
        .iter()
        .filter_map(|fault| PlacedFault::place(fault, scale))
        .collect();
    placed.sort_by(|a, b| a.injected_ms.total_cmp(&b.injected_ms));

    // Greedy lanes in time order. Each lane remembers the right edge and index of its last
    // label: when every lane is taken, the lane freed first gives up the tail of its label
    // (with an ellipsis) rather than having it silently painted over.
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
                let (lane, previous) = lanes
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
                    .map_or((0, None), |(lane, (_, previous))| (lane, Some(*previous)));
                if let Some(previous) = previous.and_then(|previous| placed.get_mut(previous)) {
                    previous.trim_before(left_px);
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
