//! The real HAProxy (Debian's package) on plans of this crate: the configuration passes
//! `haproxy -c`, health checks follow `/readyz`, and a reload swaps the worker while a client
//! keeps its connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meridian_lb::haproxy::{self, server_states, worker_pid};
use meridian_lb::{Frontend, Haproxy, HaproxyFiles, HealthChecks, LbPlan, LbTls, Server, Traffic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A stand-in replica admin port: `/readyz` answers 200 while `ready` is true, else 503.
async fn readyz_server(ready: watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let ready = *ready.borrow();
            tokio::spawn(async move {
                let mut request = [0_u8; 1024];
                let _ = stream.read(&mut request).await;
                let status = if ready {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = stream
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    address
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

async fn wait_for(
    socket: &std::path::Path,
    what: &str,
    pred: impl Fn(&[haproxy::ServerState]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states = server_states(socket).await.expect("show stat");
        if pred(&states) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {states:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_up(states: &[haproxy::ServerState], server: &str) -> bool {
    states.iter().any(|s| s.server == server && s.is_up())
}

#[tokio::test]
async fn health_checks_follow_readyz_and_a_reload_moves_the_region_without_a_restart() {
    let Some(binary) = meridian_testkit::haproxy::binary() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_ready, a_rx) = watch::channel(true);
    let (b_ready, b_rx) = watch::channel(false);
    let a_admin = readyz_server(a_rx).await;
    let b_admin = readyz_server(b_rx).await;
    let files = HaproxyFiles::new(dir.path());
    let mut plan = LbPlan {
        active_region: "region-1".to_owned(),
        runtime_socket: files.socket(),
        tls: LbTls::Plaintext,
        checks: HealthChecks::default(),
        frontends: vec![Frontend {
            name: "participant1".to_owned(),
            traffic: Traffic::Ledger,
            bind: free_port(),
            servers: vec![
                Server {
                    name: "participant1-a".to_owned(),
                    region: "region-1".to_owned(),
                    grpc: free_port(),
                    admin: a_admin,
                },
                Server {
                    name: "participant1-c".to_owned(),
                    region: "region-2".to_owned(),
                    grpc: free_port(),
                    admin: b_admin,
                },
            ],
        }],
    };
    haproxy::write_config(&binary, &files, &plan).expect("HAProxy accepts the configuration");
    let lb = Haproxy::start(&binary, &files, false)
        .await
        .expect("starts");
    let socket = files.socket();
    wait_for(&socket, "a up, c down", |s| {
        is_up(s, "participant1-a") && !is_up(s, "participant1-c")
    })
    .await;

    // The active replica fails over to the other region's: checks follow /readyz.
    a_ready.send_replace(false);
    b_ready.send_replace(true);
    wait_for(&socket, "a down, c up", |s| {
        !is_up(s, "participant1-a") && is_up(s, "participant1-c")
    })
    .await;

    // A client connected to the frontend keeps its connection across the reload.
    let mut client = tokio::net::TcpStream::connect(plan.frontends[0].bind)
        .await
        .expect("connects to the frontend");
    let worker_before = worker_pid(&socket).await.expect("worker pid");
    plan.active_region = "region-2".to_owned();
    haproxy::write_config(&binary, &files, &plan).expect("writes the moved plan");
    lb.reload().await.expect("reloads");
    let worker_after = worker_pid(&socket).await.expect("worker pid");
    assert_ne!(worker_before, worker_after, "a new worker took over");
    // The new worker starts from the saved states (`server-state-file`): the down replica
    // stays down and the up one stays fully up. A worker starting afresh would show the up one
    // as "UP 1/4", on its way down until checks confirm it.
    let states = server_states(&socket).await.expect("show stat");
    let status = |name: &str| {
        states
            .iter()
            .find(|s| s.server == name)
            .map(|s| s.status.clone())
    };
    assert_eq!(
        status("participant1-a").as_deref(),
        Some("DOWN"),
        "{states:?}"
    );
    assert_eq!(
        status("participant1-c").as_deref(),
        Some("UP"),
        "{states:?}"
    );
    assert!(
        files.running_pid() == Some(lb.master_pid()),
        "the master is the same process"
    );
    wait_for(&socket, "c is no backup any more", |s| {
        s.iter()
            .any(|s| s.server == "participant1-c" && !s.backup && s.is_up())
            && s.iter().any(|s| s.server == "participant1-a" && s.backup)
    })
    .await;
    // The old worker still serves the connection it accepted: a write does not fail.
    client
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("the connection accepted before the reload is still open");
    let saved = files
        .load_plan()
        .expect("the plan is saved beside the configuration");
    assert_eq!(saved, plan);
}

#[tokio::test]
async fn a_configuration_haproxy_refuses_leaves_the_running_one_in_place() {
    let Some(binary) = meridian_testkit::haproxy::binary() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let files = HaproxyFiles::new(dir.path());
    let plan = LbPlan {
        active_region: "region-1".to_owned(),
        runtime_socket: files.socket(),
        tls: LbTls::Mutual {
            ca_file: dir.path().join("missing-ca.crt"),
            identity_pem: dir.path().join("missing.pem"),
        },
        checks: HealthChecks::default(),
        frontends: vec![Frontend {
            name: "participant1".to_owned(),
            traffic: Traffic::Ledger,
            bind: free_port(),
            servers: vec![Server {
                name: "participant1-a".to_owned(),
                region: "region-1".to_owned(),
                grpc: free_port(),
                admin: free_port(),
            }],
        }],
    };
    let error = haproxy::write_config(&binary, &files, &plan).expect_err("missing certificate");
    let message = error.to_string();
    assert!(
        message.contains("HAProxy refuses the configuration"),
        "{message}"
    );
    assert!(message.contains("missing.pem"), "{message}");
    assert!(!files.config().exists(), "nothing was written");
    assert!(!files.plan().exists(), "nothing was written");
}
