//! `meridian drill` as an operator runs it: the real binary against deployments it starts
//! itself. The scenario runs assert what CI gates on — RPO 0, no duplicate, a clean audit and
//! every fault recovered — and the bad-input tests assert that a wrong request is refused
//! with a clear message before anything starts.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;
use std::process::{Command, Output};

use meridian_lab::deployment::description::ServerRole;
use meridian_lab::deployment::{Description, NodePorts, Preset, Standby};

const EXE: &str = env!("CARGO_BIN_EXE_meridian");

fn drill(args: &[&str]) -> Output {
    Command::new(EXE).arg("drill").args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Short enough for CI, long enough for every objective to be measured.
const SHORT_TIMINGS: [&str; 6] = ["--settle-s", "2", "--observe-s", "1", "--lanes", "8"];

/// Runs `args` with `SHORT_TIMINGS` plus JSON and SVG output; returns the parsed JSON report.
fn run_drill(args: &[&str], dir: &Path) -> serde_json::Value {
    let json = dir.join("drill.json");
    let svg = dir.join("drill.svg");
    let mut all = args.to_vec();
    all.extend(SHORT_TIMINGS);
    let (json_arg, svg_arg) = (json.display().to_string(), svg.display().to_string());
    all.extend(["--json", &json_arg, "--svg", &svg_arg]);
    let output = drill(&all);
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "drill failed: {}\n{}",
        stdout,
        stderr(&output)
    );
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn assert_objectives(report: &serde_json::Value, scenarios: &[&str]) {
    assert_eq!(report["rpo_transactions"], 0, "{report}");
    assert_eq!(report["duplicate_transactions"], 0, "{report}");
    assert_eq!(report["audit_ok"], true, "{report}");
    let faults = report["faults"].as_array().unwrap();
    let ran: Vec<&str> = faults
        .iter()
        .map(|f| f["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(ran, scenarios);
    for fault in faults {
        assert!(fault.get("problem").is_none(), "{fault}");
        assert_eq!(fault["rpo_transactions"], 0, "{fault}");
        assert!(fault["detection_ms"].as_f64().is_some(), "{fault}");
        assert!(fault["rto_first_success_ms"].as_f64().is_some(), "{fault}");
        assert!(fault["rto_throughput_90_ms"].as_f64().is_some(), "{fault}");
        assert!(
            !fault["throughput_per_100ms"].as_array().unwrap().is_empty(),
            "{fault}"
        );
    }
    assert!(report["committed"].as_u64().unwrap() > 0);
    assert!(!report["timeline"].as_array().unwrap().is_empty());
    assert_failures_add_up(report, faults);
}

/// Every failed request is in one row or "between faults": the rows and the summary agree.
fn assert_failures_add_up(report: &serde_json::Value, rows: &[serde_json::Value]) {
    let in_rows: u64 = rows
        .iter()
        .map(|f| f["failed_requests"].as_u64().unwrap())
        .sum();
    let between = report["failed_between_faults"].as_u64().unwrap();
    assert_eq!(
        in_rows + between,
        report["failed_requests"].as_u64().unwrap(),
        "{report}"
    );
}

#[test]
fn every_scenario_on_the_embedded_default_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_drill(&["--scenario", "all"], dir.path());
    assert_objectives(
        &report,
        &[
            "participant-crash",
            "participant-stop",
            "mediator-crash",
            "topology-crash",
            "sequencer-crash",
            "switchover",
        ],
    );
    let skipped = report["skipped"].to_string();
    assert!(skipped.contains("participant-freeze") && skipped.contains("database-restart"));
}

#[test]
fn freeze_and_database_restart_on_postgres_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for scenario in ["participant-freeze", "database-restart"] {
        let report = run_drill(
            &["--scenario", scenario, "--backend", "postgres"],
            dir.path(),
        );
        assert_objectives(&report, &[scenario]);
        if scenario == "participant-freeze" {
            assert_eq!(report["faults"][0]["resumed_replica_passive"], true);
        }
    }
}

/// SIGTERM to the active participant replica under load drains it: the submissions it
/// accepted are answered before the passive takes over, so no application request fails —
/// not even one answered long after the fault (failures count until the end of the run).
/// Twice, to exercise `--trials` and its per-scenario summary.
#[test]
fn a_graceful_stop_of_the_active_participant_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_drill(
        &["--scenario", "participant-stop", "--trials", "2"],
        dir.path(),
    );
    assert_objectives(&report, &["participant-stop", "participant-stop"]);
    assert_eq!(report["failed_requests"], 0, "{report}");
    let scenario = &report["scenarios"][0];
    assert_eq!(scenario["scenario"], "participant-stop", "{report}");
    assert_eq!(scenario["trials"], 2, "{report}");
    let rto = |key: &str| scenario[key].as_f64().unwrap();
    assert!(rto("rto_first_success_ms_p50") > 0.0, "{scenario}");
    assert!(rto("rto_first_success_ms_p50") <= rto("rto_first_success_ms_p99"));
    assert!(rto("rto_first_success_ms_p99") <= rto("rto_first_success_ms_max"));
}

/// A short nemesis run with a fixed seed: random overlapping faults of every kind the backend
/// runs (on SQLite: crashes and graceful stops), under load; nothing acknowledged is lost or
/// duplicated, every fault is undone, no node exits by itself, and the per-fault figures add
/// up to the run's. (On PostgreSQL the schedule adds freezes and database faults; a
/// read-only database still stops participants for good until they ride database errors
/// out, issue 9 item 1.)
#[test]
fn a_short_nemesis_run_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_drill(
        &["--scenario", "random", "--duration", "25s", "--seed", "9"],
        dir.path(),
    );
    assert_eq!(report["rpo_transactions"], 0, "{report}");
    assert_eq!(report["duplicate_transactions"], 0, "{report}");
    assert_eq!(report["audit_ok"], true, "{report}");
    let nemesis = &report["nemesis"];
    assert_eq!(nemesis["plan"]["seed"], 9);
    let faults = nemesis["faults"].as_array().unwrap();
    assert!(
        faults.iter().filter(|f| f["action"].is_string()).count() >= 3,
        "{nemesis}"
    );
    for fault in faults {
        assert!(fault.get("problem").is_none(), "{fault}");
    }
    assert!(nemesis["unexpected_exits"].as_array().unwrap().is_empty());
    let in_rows: u64 = faults
        .iter()
        .map(|f| f["failed_requests"].as_u64().unwrap())
        .sum();
    assert_eq!(
        in_rows + nemesis["failed_between_faults"].as_u64().unwrap(),
        report["failed_requests"].as_u64().unwrap(),
        "{report}"
    );
}

/// A planned region switchover under load: region one drained, the asynchronous standby
/// caught up and promoted, region two's cold replicas started; nothing acknowledged is lost,
/// and the RTO comes with its parts.
#[test]
fn a_region_switchover_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let report = run_drill(
        &[
            "--scenario",
            "region-switchover",
            "--preset",
            "two-regions",
            "--backend",
            "postgres",
            "--data-dir",
            &data_arg,
        ],
        dir.path(),
    );
    assert_objectives(&report, &["region-switchover"]);
    let fault = &report["faults"][0];
    assert!(
        fault["rto_first_success_ms"].as_f64().unwrap() > 0.0,
        "{fault}"
    );
    let region = &fault["region"];
    assert_eq!(region["from_region"], "region-1", "{region}");
    assert_eq!(region["to_region"], "region-2", "{region}");
    assert_eq!(region["promoted"], "pg-2a", "{region}");
    for part in [
        "drain_ms",
        "catch_up_ms",
        "stop_servers_ms",
        "promote_ms",
        "start_ms",
        "first_commit_ms",
    ] {
        assert!(
            region[part].as_f64().is_some_and(|ms| ms >= 0.0),
            "{part}: {region}"
        );
    }
    // The parts add up to no more than the RTO (the first commit is seen by polling).
    let parts: f64 = [
        "drain_ms",
        "catch_up_ms",
        "stop_servers_ms",
        "promote_ms",
        "start_ms",
        "first_commit_ms",
    ]
    .iter()
    .map(|part| region[part].as_f64().unwrap())
    .sum();
    let rto = fault["rto_first_success_ms"].as_f64().unwrap();
    assert!(
        parts <= rto + 1.0,
        "parts {parts} ms > RTO {rto} ms: {region}"
    );
    // Every cold replica of region two was started and every running node is ready.
    let started: Vec<&str> = region["started"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(started.len(), 6, "{started:?}");
    assert!(started.contains(&"participant2-c"), "{started:?}");
    let readiness = region["readiness"].as_array().unwrap();
    assert_eq!(readiness.len(), 6, "{region}");
    assert!(readiness.iter().all(|r| r["ready"] == true), "{region}");
    // Region two's replicas were known from the start: a region-one member lists the cold
    // sequencer instance's endpoint after the warm ones.
    let cold = std::fs::read_to_string(data.join("sequencer/sequencer-c.toml")).unwrap();
    let listen = cold
        .lines()
        .find(|l| l.starts_with("listen_address"))
        .and_then(|l| l.split('"').nth(1))
        .unwrap()
        .to_owned();
    let member = std::fs::read_to_string(data.join("participant2/participant2-a.toml")).unwrap();
    assert!(member.contains(&meridian_lab::tls::url(listen)), "{member}");
}

/// A region loss under load on `docs/examples/two-regions-split.toml`: the synchronizer and
/// the participants on separate clusters, the synchronizer's standby lagging 300 ms. The
/// drill reports exactly the acknowledged transactions the new history lacks; a participant
/// whose promoted database is ahead of the promoted sequencer's halts on the fork (it never
/// goes on) and is repaired as `docs/operations.md` says, after which every node is ready and
/// the audit finds every ledger consistent with the new history.
#[test]
fn a_region_loss_reports_its_losses_exactly_and_repairs_the_forked_participants() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/examples/two-regions-split.toml"
    );
    let report = run_drill(
        &["--scenario", "region-loss", "--deployment", deployment],
        dir.path(),
    );
    assert_eq!(report["duplicate_transactions"], 0, "{report}");
    assert_eq!(report["audit_ok"], true, "{report}");
    let fault = &report["faults"][0];
    assert!(fault.get("problem").is_none(), "{fault}");
    // The list is left out of the report when nothing acknowledged was lost (the region
    // can die between a commit and its acknowledgement, so RPO 0 is a possible outcome).
    let lost = fault["lost_transactions"].as_array().map_or(0, Vec::len);
    assert_eq!(
        report["rpo_transactions"].as_u64().unwrap(),
        lost as u64,
        "the RPO is the listed transactions: {fault}"
    );
    let region = &fault["region"];
    assert_eq!(region["promoted"], "sync-2a, part-2a", "{region}");
    let forked = region["forked"].as_array().cloned().unwrap_or_default();
    eprintln!("forked members: {forked:?}");
    for member in &forked {
        let reason = member["reason"].as_str().unwrap();
        assert!(reason.contains("fork detected"), "{member}");
        assert!(
            member["process"]
                .as_str()
                .unwrap()
                .starts_with("participant"),
            "only participants may fork here (the synchronizer shares one cluster): {member}"
        );
        assert!(
            member["lost_transactions"].as_u64().is_some(),
            "not repaired: {member}"
        );
    }
    if !forked.is_empty() {
        assert!(region["repair_ms"].as_f64().is_some(), "{region}");
    }
    let readiness = region["readiness"].as_array().unwrap();
    assert!(readiness.iter().all(|r| r["ready"] == true), "{region}");
}

/// Patroni (with etcd) runs the two-region preset's cluster: kill -9 of the leader's Patroni
/// and PostgreSQL under load; Patroni promotes the synchronous standby by itself and the nodes
/// follow the new writer. Nothing acknowledged is lost, and the report shows Patroni's share
/// of the outage (no lab detection delay, no `pg_ctl promote`) apart from Meridian's.
#[test]
fn a_database_failover_under_patroni_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_drill(
        &[
            "--scenario",
            "database-failover",
            "--preset",
            "two-regions",
            "--promoter",
            "patroni",
        ],
        dir.path(),
    );
    assert_objectives(&report, &["database-failover"]);
    let fault = &report["faults"][0];
    let killed = fault["action"]
        .as_str()
        .unwrap()
        .strip_prefix("kill -9 primary ")
        .unwrap_or_else(|| panic!("{fault}"));
    let promotion = &fault["promotion"];
    assert_eq!(promotion["promoter"], "patroni", "{promotion}");
    let promoted = promotion["promoted"].as_str().unwrap();
    assert!(
        ["pg-1a", "pg-1b"].contains(&promoted) && promoted != killed,
        "Patroni must promote the other server of region one: {fault}"
    );
    assert!(promotion["detection_delay_ms"].is_null(), "{promotion}");
    assert!(promotion["promote_command_ms"].is_null(), "{promotion}");
    let promoter_ms = promotion["promoter_ms"].as_f64().unwrap();
    let meridian_ms = promotion["meridian_ms"].as_f64().unwrap();
    assert!(promoter_ms > 0.0 && meridian_ms >= 0.0, "{promotion}");
}

/// The lab's promoter, as an operator would do it (`docs/operations.md`): after a kill -9 of
/// the two-region preset's primary it waits its detection delay, runs `pg_ctl promote` on the
/// killed primary's synchronous standby and the nodes follow the new writer. Nothing
/// acknowledged is lost or duplicated, no request fails, and the report shows the lab's
/// detection delay and `pg_ctl promote` as the promoter's share apart from Meridian's.
#[test]
fn a_database_failover_by_the_lab_promotes_the_synchronous_standby_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_drill(
        &[
            "--scenario",
            "database-failover",
            "--preset",
            "two-regions",
            "--backend",
            "postgres",
            "--promoter",
            "lab",
            "--trials",
            "1",
        ],
        dir.path(),
    );
    assert_objectives(&report, &["database-failover"]);
    assert_eq!(report["failed_requests"], 0, "{report}");
    let fault = &report["faults"][0];
    let killed = fault["action"]
        .as_str()
        .unwrap()
        .strip_prefix("kill -9 primary ")
        .unwrap_or_else(|| panic!("{fault}"));
    assert_eq!(fault["faulted"], killed, "{fault}");
    assert_lab_promoted_the_sync_standby_of(killed, fault);
}

/// A zone loss under load on the two-region preset: every node process of the primary's zone
/// and its database server are killed at once; the lab promotes the synchronous standby (in
/// the other zone) and the other zone's replicas carry the load. Nothing acknowledged is lost
/// or duplicated and no request fails.
#[test]
fn a_zone_loss_kills_the_whole_zone_and_the_other_zone_takes_over_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let report = run_drill(
        &[
            "--scenario",
            "zone-loss",
            "--preset",
            "two-regions",
            "--backend",
            "postgres",
            "--trials",
            "1",
            "--data-dir",
            &data_arg,
        ],
        dir.path(),
    );
    assert_objectives(&report, &["zone-loss"]);
    assert_eq!(report["failed_requests"], 0, "{report}");
    let fault = &report["faults"][0];
    // "kill -9 zone ZONE: SERVERS and PROCESSES"
    let (zone, killed) = fault["action"]
        .as_str()
        .unwrap()
        .strip_prefix("kill -9 zone ")
        .and_then(|rest| rest.split_once(": "))
        .unwrap_or_else(|| panic!("{fault}"));
    let (servers, processes) = killed
        .split_once(" and ")
        .unwrap_or_else(|| panic!("no process killed: {fault}"));
    let description = Description::preset(Preset::TwoRegions);
    let in_zone = |wanted: &str| -> Vec<String> {
        let keys = description.node_keys();
        description
            .nodes(&keys)
            .iter()
            .flat_map(|node| node.warm().filter(|r| r.zone.as_str() == wanted))
            .map(|r| r.name.to_string())
            .collect()
    };
    // The lost zone is the primary's, and all of it went: its server and every node
    // process placed there.
    let servers_in_zone: Vec<String> = description
        .postgres_clusters
        .iter()
        .flat_map(|c| &c.servers)
        .filter(|s| s.zone.as_str() == zone)
        .map(|s| s.name.to_string())
        .collect();
    let primary = description.postgres_clusters[0]
        .servers
        .iter()
        .find(|s| s.role == ServerRole::Primary)
        .unwrap();
    assert_eq!(zone, primary.zone.as_str(), "{fault}");
    let mut killed_servers: Vec<String> = servers.split(", ").map(str::to_owned).collect();
    killed_servers.sort();
    assert_eq!(killed_servers, servers_in_zone, "{fault}");
    let mut killed_processes: Vec<String> = processes.split(", ").map(str::to_owned).collect();
    killed_processes.sort();
    let mut expected = in_zone(zone);
    expected.sort();
    assert!(
        expected.len() >= 4,
        "the preset puts a replica of every node there: {expected:?}"
    );
    assert_eq!(killed_processes, expected, "{fault}");
    assert_eq!(
        fault["faulted"],
        format!("{servers}, {processes}"),
        "{fault}"
    );
    assert_lab_promoted_the_sync_standby_of(servers, fault);
    // The other zone took over: the lost zone's processes come back only once the
    // measurement is over, so the transfers that committed after the fault (the RTO above,
    // through both submitting participants) went through the other zone's replicas — and
    // every replicated node's replica there says it became the active one.
    let other_zone: Vec<&str> = description.regions[0]
        .zones
        .iter()
        .map(|z| z.as_str())
        .filter(|z| *z != zone)
        .collect();
    assert_eq!(other_zone.len(), 1, "{other_zone:?}");
    let keys = description.node_keys();
    for node in description.nodes(&keys) {
        if node.name == meridian_lab::deployment::description::SEQUENCER_NODE {
            continue; // every instance is active; the survivors kept serving
        }
        for replica in node.warm().filter(|r| r.zone.as_str() == other_zone[0]) {
            let log = data.join(node.name).join(format!("{}.log", replica.name));
            let text =
                std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
            assert!(
                text.contains("this replica is now active"),
                "{} never became active after its zone's twin was lost: {}",
                replica.name,
                log.display()
            );
        }
    }
}

/// The lab promoted the synchronous standby of the killed primary `killed`, and its report
/// shows the lab's detection delay and `pg_ctl promote` time apart from Meridian's share.
fn assert_lab_promoted_the_sync_standby_of(killed: &str, fault: &serde_json::Value) {
    let description = Description::preset(Preset::TwoRegions);
    let cluster = description
        .postgres_clusters
        .iter()
        .find(|c| {
            c.servers
                .iter()
                .any(|s| s.name.as_str() == killed && s.role == ServerRole::Primary)
        })
        .unwrap_or_else(|| panic!("{killed} is no primary of the preset: {fault}"));
    let sync_standby = cluster
        .servers
        .iter()
        .find(|s| s.role == ServerRole::SyncStandby)
        .unwrap()
        .name
        .to_string();
    let promotion = &fault["promotion"];
    assert_eq!(promotion["promoter"], "lab", "{promotion}");
    assert_eq!(promotion["promoted"], sync_standby.as_str(), "{fault}");
    for part in [
        "detection_delay_ms",
        "promote_command_ms",
        "promoter_ms",
        "meridian_ms",
    ] {
        assert!(
            promotion[part].as_f64().is_some_and(|ms| ms > 0.0),
            "{part}: {promotion}"
        );
    }
    // The promoter's share holds its detection delay and its promote command.
    let share = |part: &str| promotion[part].as_f64().unwrap();
    assert!(
        share("promoter_ms") >= share("detection_delay_ms") + share("promote_command_ms"),
        "{promotion}"
    );
}

#[test]
fn bad_requests_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("never-created");
    let data_arg = data_dir.display().to_string();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let unknown_key = write("unknown.toml", "replicaz = 2\n");
    let mut description = Description::preset(Preset::Replicated);
    for replica in &mut description.mediator.replicas {
        replica.standby = Standby::Cold;
    }
    let no_active = write("no-active.toml", &description.to_toml().unwrap());
    let mut description = Description::preset(Preset::Replicated);
    description.participants[0].replicas[0].ports = Some(NodePorts {
        grpc: 24501,
        admin: 24601,
    });
    description.sequencer.instances[0].ports = Some(NodePorts {
        grpc: 24601,
        admin: 24701,
    });
    let same_port = write("same-port.toml", &description.to_toml().unwrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--scenario", "meteor-strike"],
            "invalid value 'meteor-strike'",
        ),
        (
            vec!["--deployment", &unknown_key],
            "unknown field `replicaz`",
        ),
        (vec!["--deployment", &no_active], "has no warm replica"),
        (
            vec!["--deployment", &same_port],
            "port 24601 is already used",
        ),
        (
            vec![
                "--scenario",
                "participant-crash",
                "--target",
                "participant7",
            ],
            "no \"participant7\"",
        ),
        (vec!["--scenario", "database-restart"], "--backend postgres"),
        (
            vec!["--scenario", "database-failover"],
            "--backend postgres",
        ),
        (
            vec!["--scenario", "zone-loss", "--backend", "postgres"],
            "no PostgreSQL cluster with a synchronous standby",
        ),
        (
            vec!["--scenario", "region-loss", "--backend", "postgres"],
            "no second region with an asynchronous PostgreSQL standby",
        ),
        (
            vec!["--scenario", "region-switchover"],
            "--preset two-regions --backend postgres",
        ),
        (
            vec![
                "--scenario",
                "region-loss",
                "--preset",
                "two-regions",
                "--promoter",
                "patroni",
            ],
            "Patroni fails over only inside a region",
        ),
        (
            vec!["--promoter", "patroni"],
            "Patroni runs PostgreSQL clusters; set storage.backend",
        ),
        (vec!["--json", "/no/such/dir/drill.json"], "does not exist"),
        (vec!["--seed", "7"], "--scenario random"),
        (
            vec!["--scenario", "random", "--trials", "2"],
            "do not apply",
        ),
        (
            vec!["--scenario", "random", "--duration", "soon"],
            "not a duration",
        ),
    ];
    for (args, expected) in cases {
        let mut all = args.clone();
        all.extend(["--data-dir", &data_arg]);
        let output = drill(&all);
        let message = stderr(&output);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(message.contains(expected), "{args:?}: {message}");
        assert!(
            !message.contains("starting the deployment"),
            "{args:?} started something: {message}"
        );
        assert!(!data_dir.exists(), "{args:?} created the data directory");
    }
}
