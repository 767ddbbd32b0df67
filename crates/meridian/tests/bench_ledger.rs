//! `meridian bench ledger` end to end, on the embedded default: a short saturation run of the
//! replicated preset reports what issue 14 bounds besides throughput — each role's peak RSS and
//! how many sequencer instances were marked offline (in a run without faults, every mark is a
//! wrongful one) — and what a transfer cost each role in CPU, next to a clean audit.

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_meridian");

#[test]
fn a_short_run_reports_throughput_rss_and_cpu_by_role_and_offline_marks_with_a_clean_audit() {
    let output = Command::new(EXE)
        .args([
            "bench",
            "ledger",
            "--preset",
            "replicated",
            "--duration",
            "3",
            "--json",
        ])
        .output()
        .expect("run meridian bench ledger");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON report on stdout");
    assert_eq!(report["audit_ok"], true, "{report}");
    assert!(
        report["tx_per_s"].as_f64().expect("tx_per_s") > 0.0,
        "{report}"
    );
    for role in ["participant", "sequencer", "mediator", "topology"] {
        let mib = report["peak_rss_mib_by_role"][role]
            .as_f64()
            .unwrap_or_else(|| panic!("no peak RSS for {role}: {report}"));
        assert!(mib > 1.0, "{role}: {mib} MiB");
    }
    // Standbys stand by, the active processes work: every role that carries a transfer
    // (the topology manager does not) spent CPU on it, and the nodes' figure is their sum.
    let cpu = &report["cpu_ms_per_transfer_by_role"];
    let mut roles_ms = 0.0;
    for role in ["participant", "sequencer", "mediator"] {
        let ms = cpu[role]
            .as_f64()
            .unwrap_or_else(|| panic!("no CPU per transfer for {role}: {report}"));
        assert!(ms > 0.0 && ms < 1_000.0, "{role}: {ms} ms per transfer");
        roles_ms += ms;
    }
    assert!(
        cpu["load client"].as_f64().is_some_and(|ms| ms > 0.0),
        "{report}"
    );
    let nodes = report["node_cpu_ms_per_transfer"]
        .as_f64()
        .unwrap_or_else(|| panic!("no node CPU per transfer: {report}"));
    let topology = cpu["topology"].as_f64().unwrap_or(0.0);
    assert!(
        (nodes - roles_ms - topology).abs() < 1e-6,
        "nodes {nodes} ms is the roles' sum: {report}"
    );
    // The machine's figure holds the nodes' and the load client's CPU, and more (the
    // kernel's own work), over the same window.
    let machine = report["machine_cpu_ms_per_transfer"]
        .as_f64()
        .unwrap_or_else(|| panic!("no machine CPU per transfer: {report}"));
    let load_client = cpu["load client"].as_f64().unwrap_or(0.0);
    assert!(
        machine >= 0.8 * (nodes + load_client),
        "the machine's {machine} ms per transfer holds the processes' {} ms: {report}",
        nodes + load_client
    );
    let busy = report["machine_busy_percent"]
        .as_f64()
        .unwrap_or_else(|| panic!("no machine busy share: {report}"));
    assert!(busy > 0.0 && busy <= 100.0, "{busy} % busy: {report}");
    let marks = report["sequencer_peers_marked_offline"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offline marks figure: {report}"));
    println!("sequencer instances marked offline in a fault-free run: {marks}");
}
