//! Writes the chart's markup: the canvas laid out top to bottom (title, legend, fault label
//! lanes, throughput panel, latency panel, time axis), then each layer in paint order.

use super::canvas::*;
use super::chart::TimelineChart;
use super::faults::{place_faults, PlacedFault, LABEL_PADDING_PX};
use super::series::{
    downsample, fmt_count, group_thousands, throughput_points, time_ticks, value_ticks, Group,
    Ticks,
};

const FAILED_BAR_MIN_PX: f64 = 2.0;
const SWATCH_WIDTH_PX: f64 = 18.0;
const LEGEND_ITEM_GAP_PX: f64 = 16.0;

/// The markup under construction, one element a line. Every text passes through [`escape`];
/// `style` arguments are attribute lists written by this module, never input.
struct Doc(String);

impl Doc {
    fn raw(&mut self, markup: &str) {
        self.0.push_str(markup);
        self.0.push('\n');
    }

    fn open(&mut self, attributes: &str) {
        self.raw(&format!("<g {attributes}>"));
    }

    /// A group whose hover text is `tooltip`.
    fn open_titled(&mut self, class: &str, tooltip: &str) {
        self.raw(&format!(
            "<g class=\"{class}\"><title>{}</title>",
            escape(tooltip)
        ));
    }

    fn close(&mut self) {
        self.raw("</g>");
    }

    fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), style: &str) {
        self.raw(&format!(
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\"{}/>",
            spaced(style)
        ));
    }

    fn rect(&mut self, (x, y): (f64, f64), (width, height): (f64, f64), style: &str) {
        self.raw(&format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{height:.1}\"{}/>",
            spaced(style)
        ));
    }

    fn text(&mut self, (x, y): (f64, f64), style: &str, content: &str) {
        self.raw(&format!(
            "<text x=\"{x:.1}\" y=\"{y:.1}\"{}>{}</text>",
            spaced(style),
            escape(content)
        ));
    }

    /// A `polyline` or `polygon` through `points`.
    fn shape(&mut self, tag: &str, style: &str, points: &[(f64, f64)]) {
        let points: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        self.raw(&format!("<{tag} {style} points=\"{}\"/>", points.join(" ")));
    }

    /// Says in the middle of a panel that it has nothing to draw.
    fn placeholder(&mut self, panel: Panel, message: &str) {
        let at = ((PLOT_LEFT_PX + PLOT_RIGHT_PX) / 2.0, panel.middle_px());
        let style = format!("text-anchor=\"middle\" fill=\"{MUTED_COLOUR}\" stroke=\"none\"");
        self.text(at, &style, message);
    }
}

fn spaced(style: &str) -> String {
    if style.is_empty() {
        String::new()
    } else {
        format!(" {style}")
    }
}

/// The data resolved against the canvas: downsampled series and the three axes.
struct Plot {
    bucket_ms: f64,
    bucket_count: usize,
    scale: TimeScale,
    groups: Vec<Group>,
    throughput: Vec<(f64, u64)>,
    throughput_ticks: Ticks,
    latency_ticks: Ticks,
    time_ticks: Ticks,
}

impl Plot {
    fn new(chart: &TimelineChart) -> Self {
        // A zero-width bucket would divide by zero; 1 ms keeps whatever data there is visible.
        let bucket_ms = count_f64(chart.bucket_ms.max(1));
        let bucket_count = chart
            .committed_per_bucket
            .len()
            .max(chart.failed_per_bucket.len())
            .max(chart.latency_p99_ms.len());
        let duration_ms = len_f64(bucket_count) * bucket_ms;
        // With no data there is still an axis to draw (and faults to pin to it).
        let domain_ms = Some(duration_ms).filter(|ms| *ms > 0.0).unwrap_or(1000.0);
        let groups = downsample(chart, bucket_count);
        let throughput = throughput_points(&chart.committed_per_bucket, bucket_count);
        let rate = |count: u64| count_f64(count) * 1000.0 / bucket_ms;
        let throughput_max = throughput
            .iter()
            .map(|(_, committed)| rate(*committed))
            .chain(groups.iter().map(|group| rate(group.failed_max)))
            .fold(0.0, f64::max);
        let latency_max = groups.iter().filter_map(|group| group.p99_max_ms);
        Plot {
            bucket_ms,
            bucket_count,
            scale: TimeScale { domain_ms },
            throughput_ticks: value_ticks(throughput_max),
            latency_ticks: value_ticks(latency_max.fold(0.0, f64::max)),
            time_ticks: time_ticks(domain_ms / 1000.0),
            groups,
            throughput,
        }
    }

    /// Commits or failures per bucket as a per-second rate.
    fn rate(&self, count: u64) -> f64 {
        count_f64(count) * 1000.0 / self.bucket_ms
    }

    fn bucket_x_px(&self, position_in_buckets: f64) -> f64 {
        self.scale.x_px(position_in_buckets * self.bucket_ms)
    }

    fn time_tick_xs(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        let values = self.time_ticks.values.iter();
        values.map(|second| (*second, self.scale.x_px(second * 1000.0)))
    }
}

/// Where everything goes vertically: the legend's rows and the fault lanes push the panels down.
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

    /// From the top of the throughput panel to the bottom of the latency panel.
    fn plot_span_px(&self) -> (f64, f64) {
        (self.throughput.top_px, self.latency.bottom_px)
    }
}

/// The two value panels, each with its name, grid, axis and axis title.
type ValuePanel<'a> = (&'static str, Panel, &'a Ticks, &'static str);

fn panels<'a>(plot: &'a Plot, layout: &Layout) -> [ValuePanel<'a>; 2] {
    let throughput = (layout.throughput, &plot.throughput_ticks);
    let latency = (layout.latency, &plot.latency_ticks);
    [
        (
            "throughput",
            throughput.0,
            throughput.1,
            "throughput (tx/s)",
        ),
        ("latency", latency.0, latency.1, "p99 latency (ms)"),
    ]
}

pub(super) fn document(chart: &TimelineChart) -> String {
    let plot = Plot::new(chart);
    let (faults, lanes) = place_faults(&chart.faults, plot.scale);
    let mut doc = Doc(String::with_capacity(64 * 1024));
    doc.raw(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH_PX}\" height=\"{HEIGHT_PX}\" \
         viewBox=\"0 0 {WIDTH_PX} {HEIGHT_PX}\" font-family=\"sans-serif\" font-size=\"{FONT_PX}\" \
         fill=\"{TEXT_COLOUR}\">"
    ));
    doc.raw(&format!("<title>{}</title>", escape(&chart.title)));
    doc.rect((0.0, 0.0), (WIDTH_PX, HEIGHT_PX), "fill=\"#ffffff\"");
    write_header(&mut doc, chart, &plot);
    let layout = Layout::new(write_legend(&mut doc), lanes);
    for (name, panel, ticks, _) in panels(&plot, &layout) {
        write_grid(&mut doc, name, panel, ticks, &plot);
    }
    write_fault_bands(&mut doc, &faults, &plot, &layout);
    write_throughput(&mut doc, &plot, layout.throughput);
    write_latency(&mut doc, &plot, layout.latency);
    write_fault_lines(&mut doc, &faults, &plot, &layout);
    write_axes(&mut doc, &plot, &layout);
    write_fault_labels(&mut doc, &faults, &layout);
    doc.raw("</svg>");
    doc.0
}

fn write_header(doc: &mut Doc, chart: &TimelineChart, plot: &Plot) {
    let total = |counts: &[u64]| counts.iter().fold(0u64, |sum, n| sum.saturating_add(*n));
    let plural = |count: usize, noun: &str| match count {
        1 => format!("1 {noun}"),
        count => format!("{} {noun}s", group_thousands(&count.to_string())),
    };
    let duration_s = len_f64(plot.bucket_count) * plot.bucket_ms / 1000.0;
    let subtitle = format!(
        "{} committed · {} failed · {} · {} s in {} of {} ms",
        fmt_count(total(&chart.committed_per_bucket)),
        fmt_count(total(&chart.failed_per_bucket)),
        plural(chart.faults.len(), "fault"),
        group_thousands(&format!("{duration_s:.1}")),
        plural(plot.bucket_count, "bucket"),
        chart.bucket_ms,
    );
    let width_px = PLOT_RIGHT_PX - PLOT_LEFT_PX;
    let title = fit_text(&chart.title, width_px, TITLE_FONT_PX, BOLD_CHAR_WIDTH_EM);
    let subtitle = fit_text(&subtitle, width_px, SUBTITLE_FONT_PX, CHAR_WIDTH_EM);
    doc.open("class=\"header\"");
    let style = format!("font-size=\"{TITLE_FONT_PX}\" font-weight=\"bold\"");
    doc.text((PLOT_LEFT_PX, 26.0), &style, &title);
    let style =
        format!("class=\"subtitle\" font-size=\"{SUBTITLE_FONT_PX}\" fill=\"{MUTED_COLOUR}\"");
    doc.text((PLOT_LEFT_PX, 44.0), &style, &subtitle);
    doc.close();
}

/// Flows the legend left to right across the plot width, wrapping onto new rows; returns
/// how many rows it took.
fn write_legend(doc: &mut Doc) -> usize {
    let line = |colour: &str| format!("stroke=\"{colour}\" stroke-width=\"2\"");
    let area = format!(
        "fill=\"{THROUGHPUT_COLOUR}\" fill-opacity=\"0.2\" stroke=\"{THROUGHPUT_COLOUR}\" \
         stroke-width=\"1.5\""
    );
    let band = format!("fill=\"{INJECTED_COLOUR}\" fill-opacity=\"0.12\"");
    let dashed = format!("{} stroke-dasharray=\"4 3\"", line(INJECTED_COLOUR));
    // Each sample is a rectangle (its inset and width within the swatch) or else a line.
    let whole = Some((0.0, SWATCH_WIDTH_PX));
    let entries = [
        (whole, area, "throughput (tx/s)"),
        (
            Some((6.0, 6.0)),
            format!("fill=\"{FAILED_COLOUR}\""),
            "failed requests (/s)",
        ),
        (None, line(LATENCY_COLOUR), "p99 latency (ms)"),
        (None, dashed, "fault injected"),
        (None, line(DETECTED_COLOUR), "detected"),
        (None, line(RECOVERED_COLOUR), "recovered (first commit)"),
        (whole, band, "until throughput back to 90 %"),
    ];
    doc.open("class=\"legend\"");
    let (mut left, mut row) = (PLOT_LEFT_PX, 0);
    for (rect, style, text) in entries {
        let width_px = SWATCH_WIDTH_PX + 5.0 + text_width_px(text, FONT_PX, CHAR_WIDTH_EM);
        if left > PLOT_LEFT_PX && left + width_px > PLOT_RIGHT_PX {
            row += 1;
            left = PLOT_LEFT_PX;
        }
        let middle = LEGEND_TOP_PX + len_f64(row) * LEGEND_ROW_PX + 7.0;
        let right = left + SWATCH_WIDTH_PX;
        match rect {
            Some((inset, width)) => doc.rect((left + inset, middle - 5.0), (width, 10.0), &style),
            None => doc.line((left, middle), (right, middle), &style),
        }
        doc.text((right + 5.0, middle + 4.0), "", text);
        left += width_px + LEGEND_ITEM_GAP_PX;
    }
    doc.close();
    row + 1
}

fn write_grid(doc: &mut Doc, name: &str, panel: Panel, ticks: &Ticks, plot: &Plot) {
    doc.open(&format!(
        "class=\"{name}-grid\" data-axis-max=\"{}\" stroke=\"{GRID_COLOUR}\" stroke-width=\"1\"",
        ticks.top
    ));
    for value in &ticks.values {
        let y = panel.y_px(*value, ticks.top);
        doc.line((PLOT_LEFT_PX, y), (PLOT_RIGHT_PX, y), "");
    }
    for (_, x) in plot.time_tick_xs() {
        doc.line((x, panel.top_px), (x, panel.bottom_px), "");
    }
    doc.close();
}

fn write_fault_bands(doc: &mut Doc, faults: &[PlacedFault], plot: &Plot, layout: &Layout) {
    doc.open(&format!(
        "class=\"fault-bands\" fill=\"{INJECTED_COLOUR}\" fill-opacity=\"0.09\""
    ));
    let (top, bottom) = layout.plot_span_px();
    for fault in faults {
        let Some(band_end_ms) = fault.band_end_ms else {
            continue;
        };
        let left = plot.scale.x_px(fault.injected_ms);
        let width = plot.scale.x_px(band_end_ms) - left;
        if width > 0.0 {
            doc.raw(&format!(
                "<rect x=\"{left:.1}\" y=\"{top:.1}\" width=\"{width:.1}\" height=\"{:.1}\">\
                 <title>{}</title></rect>",
                bottom - top,
                escape(&fault.tooltip)
            ));
        }
    }
    doc.close();
}

fn write_throughput(doc: &mut Doc, plot: &Plot, panel: Panel) {
    doc.open("class=\"throughput\"");
    let points: Vec<(f64, f64)> = plot
        .throughput
        .iter()
        .map(|(position, committed)| {
            let y = panel.y_px(plot.rate(*committed), plot.throughput_ticks.top);
            (plot.bucket_x_px(*position), y)
        })
        .collect();
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        let mut area = Vec::with_capacity(points.len() + 2);
        area.push((first.0, panel.bottom_px));
        area.extend_from_slice(&points);
        area.push((last.0, panel.bottom_px));
        let fill = format!(
            "class=\"throughput-area\" fill=\"{THROUGHPUT_COLOUR}\" fill-opacity=\"0.18\" \
             stroke=\"none\""
        );
        doc.shape("polygon", &fill, &area);
        let stroke = format!(
            "class=\"throughput-line\" fill=\"none\" stroke=\"{THROUGHPUT_COLOUR}\" \
             stroke-width=\"1.5\" stroke-linejoin=\"round\""
        );
        doc.shape("polyline", &stroke, &points);
    } else {
        doc.placeholder(panel, "no data");
    }

    // Failures are usually few against thousands of commits; a minimum height keeps a single
    // failed request visible instead of rounding it away to nothing.
    doc.open(&format!("class=\"failed\" fill=\"{FAILED_COLOUR}\""));
    let panel_height_px = panel.bottom_px - panel.top_px;
    for group in plot.groups.iter().filter(|group| group.failed_max > 0) {
        let left = plot.bucket_x_px(len_f64(group.first_bucket));
        let right = plot.bucket_x_px(len_f64(group.end_bucket));
        let top = panel.y_px(plot.rate(group.failed_max), plot.throughput_ticks.top);
        let height = (panel.bottom_px - top)
            .max(FAILED_BAR_MIN_PX)
            .min(panel_height_px);
        let width = (right - left - 1.0).max(1.0);
        doc.rect((left, panel.bottom_px - height), (width, height), "");
    }
    doc.close();
    doc.close();
}

const LATENCY_LINE: &str = "class=\"latency-line\" stroke-linejoin=\"round\"";

fn write_latency(doc: &mut Doc, plot: &Plot, panel: Panel) {
    doc.open(&format!(
        "class=\"latency\" stroke=\"{LATENCY_COLOUR}\" fill=\"none\" stroke-width=\"1.5\""
    ));
    // A bucket without commits has no latency, not zero latency: the line breaks there.
    let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current = Vec::new();
    for group in &plot.groups {
        if let Some(p99_ms) = group.p99_max_ms {
            let centre = len_f64(group.first_bucket + group.end_bucket) / 2.0;
            let y = panel.y_px(p99_ms, plot.latency_ticks.top);
            current.push((plot.bucket_x_px(centre), y));
        } else if !current.is_empty() {
            segments.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    for segment in &segments {
        match segment.as_slice() {
            // A lone sample between gaps would be an invisible zero-length line.
            [(x, y)] => doc.raw(&format!(
                "<circle class=\"latency-dot\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2\" \
                 fill=\"{LATENCY_COLOUR}\" stroke=\"none\"/>"
            )),
            points => doc.shape("polyline", LATENCY_LINE, points),
        }
    }
    if segments.is_empty() {
        doc.placeholder(panel, "no latency samples");
    }
    doc.close();
}

fn write_fault_lines(doc: &mut Doc, faults: &[PlacedFault], plot: &Plot, layout: &Layout) {
    doc.open("class=\"fault-lines\" stroke-width=\"1.5\"");
    let (top, bottom) = layout.plot_span_px();
    for fault in faults {
        doc.open_titled("fault", &fault.tooltip);
        for (at_ms, colour) in [
            (fault.detected_ms, DETECTED_COLOUR),
            (fault.recovered_ms, RECOVERED_COLOUR),
        ] {
            if let Some(x) = at_ms.map(|ms| plot.scale.x_px(ms)) {
                doc.line((x, top), (x, bottom), &format!("stroke=\"{colour}\""));
            }
        }
        // Drawn last so it stays on top where detection is instantaneous; it rises into the
        // label lanes to tie the line to its label.
        let x = plot.scale.x_px(fault.injected_ms);
        let lane_px = layout.lane_top_px(fault.lane) + 2.0;
        let style = format!("stroke=\"{INJECTED_COLOUR}\" stroke-dasharray=\"5 3\"");
        doc.line((x, lane_px), (x, bottom), &style);
        doc.close();
    }
    doc.close();
}

fn write_axes(doc: &mut Doc, plot: &Plot, layout: &Layout) {
    let axis = format!("stroke=\"{AXIS_COLOUR}\"");
    let muted = format!("fill=\"{MUTED_COLOUR}\"");
    doc.open("class=\"axes\"");
    for (name, panel, ticks, title) in panels(plot, layout) {
        doc.open(&format!("class=\"{name}-axis\""));
        let (left, right, bottom) = (PLOT_LEFT_PX, PLOT_RIGHT_PX, panel.bottom_px);
        doc.line((left, panel.top_px), (left, bottom), &axis);
        doc.line((left, bottom), (right, bottom), &axis);
        for value in &ticks.values {
            let at = (PLOT_LEFT_PX - 6.0, panel.y_px(*value, ticks.top) + 4.0);
            let label = ticks.format.label(*value);
            doc.text(at, "class=\"y-tick\" text-anchor=\"end\"", &label);
        }
        let rotate = format!(
            "transform=\"translate(20 {:.1}) rotate(-90)\" text-anchor=\"middle\" {muted}",
            panel.middle_px()
        );
        doc.text((0.0, 0.0), &rotate, title);
        doc.close();
    }
    // The panels share the time axis, so only the bottom one carries its labels.
    let bottom = layout.latency.bottom_px;
    doc.open("class=\"time-axis\" text-anchor=\"middle\"");
    for (second, x) in plot.time_tick_xs() {
        doc.line((x, bottom), (x, bottom + 4.0), &axis);
        let label = plot.time_ticks.format.label(second);
        doc.text((x, bottom + 16.0), "class=\"x-tick\"", &label);
    }
    let centre = (PLOT_LEFT_PX + PLOT_RIGHT_PX) / 2.0;
    doc.text((centre, bottom + 36.0), &muted, "time (s)");
    doc.close();
    doc.close();
}

fn write_fault_labels(doc: &mut Doc, faults: &[PlacedFault], layout: &Layout) {
    doc.open("class=\"fault-labels\"");
    let box_style = format!(
        "fill=\"#ffffff\" fill-opacity=\"0.92\" stroke=\"{INJECTED_COLOUR}\" \
         stroke-opacity=\"0.35\" rx=\"2\""
    );
    let text_style = format!("fill=\"{LABEL_COLOUR}\"");
    for fault in faults {
        let top = layout.lane_top_px(fault.lane);
        doc.open_titled("fault-label", &fault.tooltip);
        let size = (fault.label_width_px, LANE_HEIGHT_PX - 2.0);
        doc.rect((fault.label_left_px, top), size, &box_style);
        let at = (fault.label_left_px + LABEL_PADDING_PX / 2.0, top + 10.5);
        doc.text(at, &text_style, &fault.shown_label);
        doc.close();
    }
    doc.close();
}
