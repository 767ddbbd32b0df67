//! `meridian lb config` as an operator runs it: the shipped example's configuration passes
//! `haproxy -c` (plaintext and with mutual TLS), and every bad input — no `[load_balancer]`,
//! a replica without fixed ports, a port clash with HAProxy's own, no participant, an unknown
//! region, HAProxy missing from the machine — is refused with one clear line, nothing written
//! and nothing started.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_meridian");

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/load-balanced.toml")
}

fn meridian(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(EXE);
    command.args(args);
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn lb_config(file: &Path, data_dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "lb",
        "config",
        "--deployment",
        file.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    meridian(&args, &[])
}

#[test]
fn the_example_configuration_passes_haproxy_check_in_plaintext_and_with_mutual_tls() {
    if meridian_testkit::haproxy::binary().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plain.cfg");
    let output = lb_config(
        &example(),
        dir.path(),
        &["--plaintext", "--out", out.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("haproxy -c accepts it"),
        "{}",
        text(&output)
    );
    let config = std::fs::read_to_string(&out).unwrap();
    for (participant, port) in [
        ("participant1", 24001),
        ("participant2", 24002),
        ("participant3", 24003),
    ] {
        assert!(
            config.contains(&format!(
                "frontend {participant}\n    mode http\n    bind 127.0.0.1:{port} proto h2"
            )),
            "{participant} on {port}:\n{config}"
        );
    }
    let server = |name: &str| {
        config
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("server {name} ")))
            .unwrap()
            .to_owned()
    };
    assert!(
        server("participant1-a").contains("check port 24119"),
        "{config}"
    );
    assert!(!server("participant1-a").contains("backup"));
    assert!(server("participant1-c").ends_with(" backup"), "{config}");

    // The other region first, on request.
    let output = lb_config(
        &example(),
        dir.path(),
        &["--plaintext", "--region", "region-2"],
    );
    assert!(output.status.success(), "{}", text(&output));
    let moved = String::from_utf8_lossy(&output.stdout);
    assert!(moved.contains("active region region-2"), "{moved}");

    // Mutual TLS, with a certificate issued for the load balancer.
    let tls = dir.path().join("tls");
    let output = meridian(
        &[
            "certs",
            "--out",
            tls.to_str().unwrap(),
            "--node",
            "load-balancer",
        ],
        &[],
    );
    assert!(output.status.success(), "{}", text(&output));
    let out = dir.path().join("tls.cfg");
    let output = lb_config(&example(), dir.path(), &["--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let config = std::fs::read_to_string(&out).unwrap();
    assert!(config.contains("verify required alpn h2"), "{config}");
    assert!(tls.join("load-balancer.pem").exists());
}

#[test]
fn bad_inputs_are_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let example_text = std::fs::read_to_string(example()).unwrap();
    let write = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let refused = |file: &Path, extra: &[&str], expected: &str| {
        let output = lb_config(file, dir.path(), extra);
        assert!(!output.status.success(), "{}", text(&output));
        assert!(
            text(&output).contains(expected),
            "{expected:?} missing in:\n{}",
            text(&output)
        );
        assert!(
            output.stdout.is_empty(),
            "nothing printed: {}",
            text(&output)
        );
    };

    let no_table = write(
        "no-table.toml",
        example_text.split("[load_balancer]").next().unwrap(),
    );
    refused(&no_table, &["--plaintext"], "has no [load_balancer] table");

    let no_ports = write(
        "no-ports.toml",
        &example_text.replacen("ports = { grpc = 24118, admin = 24119 }\n", "", 1),
    );
    refused(
        &no_ports,
        &["--plaintext"],
        "participant1-a (participants[0]) has no fixed ports",
    );

    let clash = write(
        "clash.toml",
        &example_text.replace("first_port = 24000", "first_port = 24117"),
    );
    refused(
        &clash,
        &["--plaintext"],
        "load_balancer.first_port + 1 (participant1's frontend) = 24118: port 24118 is already used by participants[0].replicas[0].ports.grpc (participant1-a)",
    );

    refused(
        &example(),
        &["--plaintext", "--region", "region-9"],
        "--region region-9",
    );

    let no_cert = dir.path().join("elsewhere");
    let output = lb_config(&example(), &no_cert, &[]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("no certificate for the load balancer"),
        "{}",
        text(&output)
    );

    // A deployment file without a participant.
    let mut no_participant = String::new();
    let mut skipping = false;
    for line in example_text.lines() {
        if line.starts_with("[[participants") {
            skipping = true;
        } else if line.starts_with('[') {
            skipping = false;
        }
        if !skipping {
            no_participant.push_str(line);
            no_participant.push('\n');
        }
    }
    let no_participant = no_participant.replace(
        "lease_timeout_ms = 700\n",
        "lease_timeout_ms = 700\nparticipants = []\n",
    );
    let no_participant = write("no-participant.toml", &no_participant);
    refused(
        &no_participant,
        &["--plaintext"],
        "load_balancer: the deployment has no participant for it to front",
    );
}

#[test]
fn a_deployment_with_a_load_balancer_but_no_haproxy_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let output = meridian(
        &[
            "up",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--load-balancer",
            "haproxy",
        ],
        &[("MERIDIAN_HAPROXY", "/nonexistent/haproxy")],
    );
    assert!(!output.status.success());
    let said = text(&output);
    assert!(said.contains("HAProxy is not installed"), "{said}");
    assert!(said.contains("apt-get install -y haproxy"), "{said}");
    assert!(!said.contains("Meridian is up"), "{said}");
    assert!(
        !data_dir.join("sequencer").exists(),
        "no node was started: {said}"
    );
}
