//! TLS as an operator meets it at the command line: `meridian certs` writes a CA and private
//! keys only the owner can read, and a node refuses to start with a key others can read or
//! with neither TLS nor explicit plaintext configured, saying how to fix it.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_meridian");

fn meridian(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn certs_writes_a_ca_and_private_node_keys_and_says_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let output = meridian(&[
        "certs",
        "--out",
        out.to_str().unwrap(),
        "--node",
        "sequencer",
        "--node",
        "participant1=p1.example,10.0.0.5",
    ]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for file in [
        "ca.crt",
        "ca.key",
        "sequencer.crt",
        "sequencer.key",
        "participant1.crt",
        "participant1.key",
    ] {
        let path = out.join(file);
        assert!(path.exists(), "{file} written");
        assert!(
            stdout.contains(&path.display().to_string()),
            "{file} named: {stdout}"
        );
        if file.ends_with(".key") {
            assert_eq!(mode(&path), 0o600, "{file} is private");
        }
    }
    assert!(stdout.contains("-cacert"), "{stdout}");
}

/// A sequencer config with `[tls]` as given, in `dir`.
fn sequencer_config(dir: &Path, tls: &str) -> std::path::PathBuf {
    let path = dir.join("sequencer.toml");
    std::fs::write(
        &path,
        format!(
            "listen_address = \"127.0.0.1:0\"\nadmin_address = \"127.0.0.1:0\"\n\
             [storage]\nbackend = \"sqlite\"\npath = \"{}\"\n{tls}",
            dir.join("s.db").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_node_refuses_a_key_file_others_can_read_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    assert!(meridian(&[
        "certs",
        "--out",
        out.to_str().unwrap(),
        "--node",
        "sequencer"
    ])
    .status
    .success());
    let key = out.join("sequencer.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = sequencer_config(
        dir.path(),
        &format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
            out.join("sequencer.crt").display(),
            key.display(),
            out.join("ca.crt").display()
        ),
    );
    let output = meridian(&["sequencer", "--config", config.to_str().unwrap()]);
    assert!(!output.status.success(), "refused: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&key.display().to_string()) && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(!dir.path().join("s.db").exists(), "nothing was created");
}

#[test]
fn a_node_with_neither_tls_nor_explicit_plaintext_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let config = sequencer_config(dir.path(), "");
    let output = meridian(&["sequencer", "--config", config.to_str().unwrap()]);
    assert!(!output.status.success(), "refused: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cert_file") && stderr.contains("plaintext = true"),
        "{stderr}"
    );
}
