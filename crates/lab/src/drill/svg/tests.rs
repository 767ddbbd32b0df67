//! The chart's tests: the information a drill report needs is present (series, fault marks,
//! labels, totals), the document is well-formed XML whatever the input, and the data
//! preparation keeps what matters.

use super::canvas::*;
use super::faults::*;
use super::series::*;
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
    assert_eq!(svg.matches("<svg").count(), 1);
    assert_xml_nesting(svg);
    for bad in ["NaN", "inf", "\0"] {
        if let Some(at) = svg.find(bad) {
            let tail = svg.get(at.saturating_sub(80)..).unwrap_or(svg);
            let context: String = tail.chars().take(160).collect();
            panic!("output contains {bad:?}: …{context}…");
        }
    }
}

/// A small XML reader, enough for what the chart writes (no comments, CDATA or processing
/// instructions): every tag is closed in order, attribute values are quoted, `&` starts one
/// of the five predefined entities and no control character appears.
fn assert_xml_nesting(svg: &str) {
    let entity_ok = |rest: &str| {
        ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
            .iter()
            .any(|entity| rest.starts_with(entity))
    };
    for (at, _) in svg.match_indices('&') {
        let rest = svg.get(at..).unwrap_or_default();
        assert!(
            entity_ok(rest),
            "bare & at {at}: {}",
            rest.chars().take(20).collect::<String>()
        );
    }
    assert!(
        !svg.chars().any(|c| c.is_control() && c != '\n'),
        "control character"
    );
    let mut open: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let text = rest.get(..start).unwrap_or_default();
        assert!(!text.contains('>'), "stray > in text {text:?}");
        let after = rest.get(start + 1..).unwrap_or_default();
        let end = after.find('>').expect("every tag is closed");
        let tag = after.get(..end).unwrap_or_default();
        assert!(!tag.contains('<'), "< inside tag {tag:?}");
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unquoted attribute in {tag:?}"
        );
        let name = tag
            .trim_start_matches('/')
            .split([' ', '/'])
            .next()
            .unwrap_or_default();
        assert!(!name.is_empty(), "nameless tag {tag:?}");
        if tag.starts_with('/') {
            assert_eq!(open.pop(), Some(name), "</{name}> closes the wrong element");
        } else if !tag.ends_with('/') {
            open.push(name);
        }
        rest = after.get(end + 1..).unwrap_or_default();
    }
    assert!(open.is_empty(), "unclosed: {open:?}");
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
}

/// What the group of `class` holds up to its first nested `</g>`.
fn group_body<'a>(svg: &'a str, class: &str) -> &'a str {
    let start = svg.split(&format!("<g class=\"{class}\"")).nth(1);
    let body = start.unwrap_or_else(|| panic!("a {class} group"));
    body.split("</g>").next().unwrap_or_default()
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
    assert_eq!(group_body(&svg, "failed").matches("<rect").count(), 3);
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
    assert!(!group_body(&svg, "fault-bands").contains("<rect"));
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
    let labels = |ticks: Ticks| -> Vec<String> {
        ticks
            .values
            .iter()
            .map(|v| ticks.format.label(*v))
            .collect()
    };
    assert_eq!(labels(value_ticks(1_234.0)), ["0", "500", "1,000", "1,500"]);
    assert_eq!(
        labels(value_ticks(23_000.0)),
        ["0", "5k", "10k", "15k", "20k", "25k"]
    );
    assert_eq!(labels(value_ticks(0.7)), ["0", "0.2", "0.4", "0.6", "0.8"]);
    assert_eq!(
        labels(time_ticks(15.0)),
        ["0", "2", "4", "6", "8", "10", "12", "14"]
    );
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

/// 30 s of a drill with three faults in a row, as `meridian drill` draws it; with
/// `MERIDIAN_DRILL_SVG_EXAMPLE=path` the chart is written there to be looked at.
fn representative() -> TimelineChart {
    let faults = [
        (
            "participant-crash: kill -9 participant2-a",
            6_000u64,
            Some(350.0),
            Some(800.0),
            Some(1_200.0),
        ),
        (
            "sequencer-freeze: SIGSTOP sequencer-a for 3 s",
            14_000,
            Some(1_500.0),
            Some(1_900.0),
            Some(3_400.0),
        ),
        (
            "mediator-crash: kill -9 mediator-a",
            23_000,
            Some(400.0),
            None,
            None,
        ),
    ];
    let outage_of = |bucket: u64| {
        faults.iter().any(|(_, at_ms, _, recovered_ms, _)| {
            let start = at_ms / 100;
            let end = start + recovered_ms.map_or(70, |ms: f64| (ms / 100.0) as u64);
            (start..end).contains(&bucket)
        })
    };
    let committed = (0..300u64)
        .map(|bucket| {
            if outage_of(bucket) {
                0
            } else {
                90 + (bucket.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) % 21
            }
        })
        .collect();
    let failed = (0..300u64)
        .map(|bucket| {
            if outage_of(bucket) && bucket % 3 == 0 {
                1 + bucket % 7
            } else {
                0
            }
        })
        .collect();
    let p99 = (0..300u64)
        .map(|bucket| {
            if outage_of(bucket) {
                None
            } else if outage_of(bucket.saturating_sub(1)) {
                Some(640.0)
            } else {
                Some(15.0 + f64::from(u32::try_from(bucket % 7).unwrap_or(0)) * 2.0)
            }
        })
        .collect();
    TimelineChart {
        title: "meridian drill — 3 fault(s), Postgres, RPO 0, duplicates 0".to_owned(),
        bucket_ms: 100,
        committed_per_bucket: committed,
        failed_per_bucket: failed,
        latency_p99_ms: p99,
        faults: faults
            .iter()
            .map(|(label, at_ms, detected, recovered, back)| {
                let at = *at_ms as f64;
                FaultMark {
                    label: (*label).to_owned(),
                    injected_at_ms: at,
                    detected_at_ms: detected.map(|ms: f64| at + ms),
                    recovered_at_ms: recovered.map(|ms: f64| at + ms),
                    throughput_back_at_ms: back.map(|ms: f64| at + ms),
                }
            })
            .collect(),
    }
}

#[test]
fn representative_drill_renders() {
    let chart = representative();
    let svg = render(&chart);
    assert_well_formed(&svg);
    for fault in &chart.faults {
        assert!(svg.contains(&fault.label), "{} is labelled", fault.label);
    }
    assert!(svg.contains("mediator-crash: kill -9 mediator-a (not recovered)"));
    assert!(svg.contains("detected +0.35 s; recovered +0.80 s; throughput back +1.20 s"));
    assert_eq!(svg.matches("class=\"fault\"").count(), 3);
    assert_eq!(
        svg.matches(&format!("stroke=\"{DETECTED_COLOUR}\"/>"))
            .count(),
        3
    );
    assert_eq!(
        svg.matches(&format!("stroke=\"{RECOVERED_COLOUR}\"/>"))
            .count(),
        2
    );
    // The two recovered faults are shaded; the unrecovered one is not.
    assert_eq!(group_body(&svg, "fault-bands").matches("<rect").count(), 2);
    for text in [
        "throughput (tx/s)",
        "p99 latency (ms)",
        "time (s)",
        "failed requests (/s)",
    ] {
        assert!(svg.contains(text), "{text}");
    }
    if let Some(path) = std::env::var_os("MERIDIAN_DRILL_SVG_EXAMPLE") {
        std::fs::write(path, &svg).expect("write the example");
    }
}
