//! The fixed canvas the chart is drawn on: its size, fonts and colours, how chart time and
//! values map to pixels, and how text is measured (estimated: an SVG has no font metrics
//! until a viewer renders it) and escaped.

pub(super) const WIDTH_PX: f64 = 1000.0;
pub(super) const HEIGHT_PX: f64 = 560.0;
// Wide enough on the left for compact tick labels ("12.5k") plus the rotated axis title.
pub(super) const PLOT_LEFT_PX: f64 = 80.0;
pub(super) const PLOT_RIGHT_PX: f64 = 970.0;
pub(super) const PLOT_BOTTOM_PX: f64 = 496.0;
pub(super) const PANEL_GAP_PX: f64 = 28.0;
// The throughput panel carries the fault story, so it gets the larger share.
pub(super) const THROUGHPUT_SHARE: f64 = 0.56;

pub(super) const FONT_PX: f64 = 11.0;
pub(super) const TITLE_FONT_PX: f64 = 18.0;
pub(super) const SUBTITLE_FONT_PX: f64 = 12.0;
// Average advance of a sans-serif glyph in ems, rounded up: we cannot measure text, so we
// over-estimate and truncate rather than let a label run off the canvas.
pub(super) const CHAR_WIDTH_EM: f64 = 0.6;
pub(super) const BOLD_CHAR_WIDTH_EM: f64 = 0.66;

pub(super) const LEGEND_TOP_PX: f64 = 54.0;
pub(super) const LEGEND_ROW_PX: f64 = 16.0;
pub(super) const LANE_HEIGHT_PX: f64 = 15.0;

pub(super) const TEXT_COLOUR: &str = "#222222";
pub(super) const MUTED_COLOUR: &str = "#666666";
pub(super) const GRID_COLOUR: &str = "#e6e6e6";
pub(super) const AXIS_COLOUR: &str = "#555555";
pub(super) const THROUGHPUT_COLOUR: &str = "#1f5fa8";
pub(super) const FAILED_COLOUR: &str = "#d62728";
pub(super) const LATENCY_COLOUR: &str = "#6a3d9a";
pub(super) const INJECTED_COLOUR: &str = "#d62728";
pub(super) const DETECTED_COLOUR: &str = "#f28e00";
pub(super) const RECOVERED_COLOUR: &str = "#2ca02c";
pub(super) const LABEL_COLOUR: &str = "#a31515";

/// Counts and lengths become coordinates. The conversion is exact below 2^53 and can only
/// lose precision, never range, above it, which no chart gets near.
pub(super) fn count_f64(count: u64) -> f64 {
    count as f64
}

pub(super) fn len_f64(len: usize) -> f64 {
    len as f64
}

/// A horizontal band of the plot (throughput or latency) and its value-to-y mapping.
#[derive(Debug, Clone, Copy)]
pub(super) struct Panel {
    pub(super) top_px: f64,
    pub(super) bottom_px: f64,
}

impl Panel {
    /// Values outside `0..=axis_top` are pinned to the panel's edges.
    pub(super) fn y_px(&self, value: f64, axis_top: f64) -> f64 {
        let fraction = if axis_top > 0.0 && value.is_finite() {
            (value / axis_top).clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.bottom_px - fraction * (self.bottom_px - self.top_px)
    }

    pub(super) fn middle_px(&self) -> f64 {
        (self.top_px + self.bottom_px) / 2.0
    }
}

/// Maps chart time to x; times outside the chart are pinned to its edges.
#[derive(Debug, Clone, Copy)]
pub(super) struct TimeScale {
    pub(super) domain_ms: f64,
}

impl TimeScale {
    pub(super) fn x_px(&self, ms: f64) -> f64 {
        let fraction = if ms.is_nan() {
            0.0
        } else {
            (ms / self.domain_ms).clamp(0.0, 1.0)
        };
        PLOT_LEFT_PX + fraction * (PLOT_RIGHT_PX - PLOT_LEFT_PX)
    }

    /// NaN has no place on the axis; everything else (±inf included) is clamped onto it.
    pub(super) fn clamp_ms(&self, ms: f64) -> Option<f64> {
        (!ms.is_nan()).then(|| ms.clamp(0.0, self.domain_ms))
    }
}

/// XML-escapes text for both element content and attribute values. Control characters are
/// not allowed in XML 1.0 at all (one would make the whole document unreadable), so they
/// become spaces.
pub(super) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            c if c.is_control() => escaped.push(' '),
            c => escaped.push(c),
        }
    }
    escaped
}

pub(super) fn text_width_px(text: &str, font_px: f64, char_width_em: f64) -> f64 {
    len_f64(text.chars().count()) * font_px * char_width_em
}

/// Cuts `text` so its estimated width fits `max_px`, marking the cut with an ellipsis.
pub(super) fn fit_text(text: &str, max_px: f64, font_px: f64, char_width_em: f64) -> String {
    if text_width_px(text, font_px, char_width_em) <= max_px {
        return text.to_owned();
    }
    let char_px = font_px * char_width_em;
    // One character's room goes to the ellipsis.
    let room = ((max_px - char_px) / char_px).floor().max(0.0);
    let mut fitted: String = text.chars().take(room as usize).collect();
    fitted.truncate(fitted.trim_end().len());
    fitted.push('…');
    fitted
}
