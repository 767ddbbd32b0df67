//! Renders a failover drill's timeline (throughput, failed requests and p99 latency per
//! bucket, with every injected fault marked on it) as one standalone SVG document that opens
//! in any browser and can be attached to a drill report as it is.
//!
//! The markup is written by hand rather than through `plotters`. Its SVG backend draws only
//! primitives (lines, rectangles, paths, circles, text): it has no `<title>` hover text, so
//! each fault's exact detection, recovery and throughput-back delays and its untruncated
//! label would be lost; and what makes up most of this module, choosing points that keep
//! both outages and spikes, placing fault labels in lanes, and defending against corrupt
//! numbers, is data preparation a plotting crate does not do. The markup that remains is a
//! handful of element helpers in `draw`, and the report needs no graphics stack.
//!
//! Input comes from measurements, so nothing here trusts it: non-finite numbers are
//! dropped, times are clamped into the chart, long runs are downsampled and every text is
//! escaped. `series` prepares the data and axes, `faults` places the faults, `canvas` holds
//! the geometry they share and `draw` writes the document.

mod canvas;
mod chart;
mod draw;
mod faults;
mod series;
#[cfg(test)]
mod tests;

pub use chart::{FaultMark, TimelineChart};

/// Renders the chart as a complete SVG document (starts with `<svg`, has xmlns, a viewBox).
pub fn render(chart: &TimelineChart) -> String {
    draw::document(chart)
}
