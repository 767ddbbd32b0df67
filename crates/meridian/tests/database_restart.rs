//! Black-box test of losing the database under load (issue 4, "Database trouble"): a replicated
//! deployment (two sequencer instances, two replicas of every other node, every node a real
//! process) runs on its own throwaway PostgreSQL server, which is stopped for a few seconds and
//! started again while IOU transfers run. Every node must stay alive, report not-ready while
//! the database is gone, become ready again once it is back, and commit new transfers; the
//! ledger audit afterwards finds nothing acknowledged lost and the amounts conserved.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_client::SubmitOutcome;
use meridian_core::ledger::Command;
use meridian_core::template::IouPayload;
use meridian_core::{CommandId, PartyId, TemplateId};
use meridian_lab::deployment::{Deployment, DeploymentSpec};
use meridian_lab::launch::NodeProcess;
use meridian_lab::workload::{self, BackgroundLoad, FinishedLoad, Live};
use meridian_testkit::PostgresServer;

mod common;
use common::{assert_all_running, replicated_spec, start_deployment, start_load};

/// How long the server stays stopped between its shutdown and its start. With the shutdown
/// itself (sessions are terminated at once, then new connections are refused while the
/// shutdown checkpoint is written, about a second or several on a busy disk) and the start,
/// the nodes are a few seconds without a database.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// By when, counted from the start of the shutdown, the sequencers and the active participants
/// must report not ready: they touch the database all the time under load, and a call stalled
/// for `meridian_node::conditions::DATABASE_STALL` (1 s) counts as an outage.
const DETECTION_BOUND: Duration = Duration::from_secs(3);
/// How long the nodes get to be ready and commit again once the database is back. Generous for
/// a shared two-core machine; the test prints the real figures.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the test polls every node's `/readyz`.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// The kinds of node whose recovery the test times separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Sequencer,
    TopologyManager,
    Mediator,
    Participant,
}

/// One logical node: a sequencer instance (all are active), or the replicas of one replicated
/// node, of which exactly one is active at a time.
struct Node {
    kind: Kind,
    name: String,
    /// (process name, admin address) of each replica.
    replicas: Vec<(String, std::net::SocketAddr)>,
}

fn nodes(deployment: &Deployment) -> Vec<Node> {
    // A node is its primary process followed by its standbys.
    let group = |kind, name: &str, primary: &NodeProcess, standbys: &[NodeProcess]| Node {
        kind,
        name: name.to_owned(),
        replicas: std::iter::once(primary)
            .chain(standbys)
            .map(|p| (p.name().to_owned(), p.admin_address))
            .collect(),
    };
    let mut out: Vec<Node> = deployment
        .sequencers
        .iter()
        .map(|s| group(Kind::Sequencer, s.name(), s, &[]))
        .collect();
    let topology = (&deployment.topology, &deployment.topology_standbys);
    let mediator = (&deployment.mediator, &deployment.mediator_standbys);
    for (kind, name, (primary, standbys)) in [
        (Kind::TopologyManager, "topology-manager", topology),
        (Kind::Mediator, "mediator", mediator),
    ] {
        out.push(group(kind, name, primary, standbys));
    }
    for (index, id) in deployment.participant_ids.iter().enumerate() {
        out.push(group(
            Kind::Participant,
            id.as_str(),
            &deployment.participants[index],
            &deployment.participant_standbys[index],
        ));
    }
    out
}

/// `/readyz` of one process: `Some((ready, body))`, or `None` if it did not answer in time.
async fn readyz(client: &reqwest::Client, admin: std::net::SocketAddr) -> Option<(bool, String)> {
    let response = client
        .get(format!("{}/readyz", meridian_lab::tls::url(admin)))
        .send()
        .await
        .ok()?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    // 503 is the only "not ready" answer the admin server gives; anything else is a bug.
    assert!(
        status.is_success() || status == reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "{admin}: /readyz answered {status}: {body}"
    );
    Some((status.is_success(), body))
}

/// `/readyz` of every replica of every node, probed concurrently, by node then replica.
async fn probe_all(client: &reqwest::Client, nodes: &[Node]) -> Vec<Vec<Option<(bool, String)>>> {
    futures::future::join_all(nodes.iter().map(|node| {
        futures::future::join_all(
            node.replicas
                .iter()
                .map(|(_, admin)| readyz(client, *admin)),
        )
    }))
    .await
}

/// Starts `spec` under the background load (run `run`) and waits for transfers flowing
/// through both submitting participants, so that "commits again" after a fault means something.
async fn loaded_deployment(spec: &DeploymentSpec, run: &str) -> (Deployment, BackgroundLoad) {
    let deployment = start_deployment(spec).await;
    let load = start_load(&deployment, &format!("{run}-test"), run).await;
    commits_through_both(
        &load.live,
        Instant::now(),
        Duration::from_secs(15),
        "before the fault",
    )
    .await;
    (deployment, load)
}

/// Waits until transfers sent after `since` committed through both submitting participants.
async fn commits_through_both(live: &Live, since: Instant, timeout: Duration, when: &str) {
    while !(live.committed_a_request_sent_after(1, since)
        && live.committed_a_request_sent_after(2, since))
    {
        assert!(since.elapsed() < timeout, "no commits {when}");
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Every replicated node's lease epoch, `node=epoch`, over all databases of `server`: an epoch
/// changes exactly when another replica takes over.
fn lease_epochs(server: &PostgresServer) -> BTreeSet<String> {
    let databases = server
        .psql(
            "postgres",
            "SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')",
        )
        .unwrap();
    let mut epochs = BTreeSet::new();
    for database in databases.lines() {
        let rows = server
            .psql(
                database,
                "SELECT node || '=' || epoch FROM replica_lease WHERE to_regclass('replica_lease') IS NOT NULL",
            )
            .unwrap_or_default();
        epochs.extend(rows.lines().map(str::to_owned));
    }
    epochs
}

/// Keeps every node's log for a post-mortem (the data directory goes with the test), printing
/// where and the end of each.
fn keep_logs(deployment: &mut Deployment) {
    let keep =
        std::env::temp_dir().join(format!("meridian-database-restart-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&keep);
    for process in deployment.processes_mut() {
        let _ = std::fs::copy(
            &process.log_path,
            keep.join(format!("{}.log", process.name())),
        );
        eprintln!("--- {}:\n{}", process.name(), process.log_tail(15));
    }
    eprintln!("full logs in {}", keep.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_under_load_crashes_nothing_and_loses_nothing() {
    // Its own server, not the shared one: this test stops it. Declared first, so dropped last,
    // after the nodes using it.
    let server = Arc::new(PostgresServer::start().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let spec = replicated_spec(dir.path(), Some(&*server));
    let started = Instant::now();
    let (mut deployment, load) = loaded_deployment(&spec, "db").await;
    let (live, parties) = (load.live.clone(), load.parties.clone());
    eprintln!(
        "deployment up and under load after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let nodes = nodes(&deployment);
    let http = meridian_lab::tls::http_builder()
        .unwrap()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    // Every node serves before the fault through exactly one replica, its active; otherwise
    // "not ready during the outage" proves nothing. Passive replicas are never ready, so only
    // the active's answers count below.
    // One round first to open the (mutual) TLS connections, which the client then keeps:
    // a handshake under this load can take longer than the probe's 500 ms budget, and what
    // the probes below measure is the node's answer, not the handshake.
    let _ = probe_all(&http, &nodes).await;
    let mut active = Vec::new();
    for (node, answers) in nodes.iter().zip(probe_all(&http, &nodes).await) {
        let ready: Vec<usize> = (0..answers.len())
            .filter(|i| answers[*i].as_ref().is_some_and(|(ready, _)| *ready))
            .collect();
        assert_eq!(
            ready.len(),
            1,
            "{} must have one ready replica before the outage: {answers:?}",
            node.name
        );
        active.push(ready[0]);
    }
    let committed_before = live.committed.load(Ordering::Relaxed);
    let failed_before = live.failed.load(Ordering::Relaxed);
    // A topology change right before the outage: participant 3's passive replica has not
    // polled the topology manager since, and the manager fails over too, so if that replica
    // is the one promoted afterwards, only the sequenced history can tell it about carol.
    let carol = PartyId::new("carol").unwrap();
    parties.clients[2].allocate_party(&carol).await.unwrap();

    // The outage: a clean shutdown (`pg_ctl restart`'s first half: sessions are terminated,
    // then connections refused), a pause, and a start on the same port and data. Driven on a
    // blocking thread (pg_ctl waits) while this task watches the nodes.
    let down_at = Instant::now();
    let outage = {
        let server = server.clone();
        // Returns how long the shutdown took and when the server accepted connections again.
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Duration, Instant)> {
            let stopping = Instant::now();
            server.stop_fast()?;
            let stopped = stopping.elapsed();
            std::thread::sleep(DOWN_FOR);
            server.resume()?;
            Ok((stopped, Instant::now()))
        })
    };
    // Per node: the first not-ready answer of its active replica (when, reason).
    let mut not_ready_seen: BTreeMap<String, (Duration, String)> = BTreeMap::new();
    while !outage.is_finished() {
        assert_all_running(&mut deployment);
        let answers = probe_all(&http, &nodes).await;
        for ((node, answers), active) in nodes.iter().zip(answers).zip(&active) {
            if let Some(Some((false, reason))) = answers.into_iter().nth(*active) {
                not_ready_seen
                    .entry(node.name.clone())
                    .or_insert((down_at.elapsed(), reason));
            }
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    let (stop_took, up_at) = outage.await.unwrap().unwrap();
    eprintln!(
        "database down for {:.2} s (shutdown {:.2} s, stopped {:.2} s, start {:.2} s)",
        (up_at - down_at).as_secs_f64(),
        stop_took.as_secs_f64(),
        DOWN_FOR.as_secs_f64(),
        (up_at - down_at - stop_took - DOWN_FOR).as_secs_f64()
    );
    for (node, (after, reason)) in &not_ready_seen {
        eprintln!(
            "{node}: not ready {:.2} s into the outage: {reason}",
            after.as_secs_f64()
        );
    }
    // The sequencers and the active participants touch the database all the time (heartbeats,
    // lease renewals, the workload's writes): they must notice, and soon. The topology manager
    // has nothing to write between changes, so only its lease tells it; it and the mediator
    // are only required to recover (and are printed above).
    let late: Vec<String> = nodes
        .iter()
        .filter(|n| matches!(n.kind, Kind::Sequencer | Kind::Participant))
        .filter(|n| {
            not_ready_seen
                .get(&n.name)
                .is_none_or(|(after, _)| *after > DETECTION_BOUND)
        })
        .map(|n| format!("{} ({:?})", n.name, not_ready_seen.get(&n.name)))
        .collect();
    if !late.is_empty() {
        keep_logs(&mut deployment);
        panic!(
            "not reported not ready within {DETECTION_BOUND:?} of the database going down: \
             {late:?}"
        );
    }

    // Recovery: every node has a ready replica again, and transfers sent after the database
    // came back commit through both submitting participants.
    let mut ready_after: BTreeMap<String, Duration> = BTreeMap::new();
    let mut commits_after: Option<Duration> = None;
    loop {
        assert_all_running(&mut deployment);
        for (node, answers) in nodes.iter().zip(probe_all(&http, &nodes).await) {
            if answers.iter().flatten().any(|(ready, _)| *ready) {
                ready_after
                    .entry(node.name.clone())
                    .or_insert_with(|| up_at.elapsed());
            }
        }
        if commits_after.is_none()
            && live.committed_a_request_sent_after(1, up_at)
            && live.committed_a_request_sent_after(2, up_at)
        {
            commits_after = Some(up_at.elapsed());
        }
        if commits_after.is_some() && ready_after.len() == nodes.len() {
            break;
        }
        if up_at.elapsed() > RECOVERY_TIMEOUT {
            keep_logs(&mut deployment);
            eprintln!(
                "workload: {} committed, {} failed; last commit through participant 2 {:?} \
                 ago, through participant 3 {:?} ago",
                live.committed.load(Ordering::Relaxed),
                live.failed.load(Ordering::Relaxed),
                live.last_commit(1).map(|t| t.elapsed()),
                live.last_commit(2).map(|t| t.elapsed()),
            );
            let not_ready: Vec<&str> = nodes
                .iter()
                .filter(|n| !ready_after.contains_key(&n.name))
                .map(|n| n.name.as_str())
                .collect();
            panic!(
                "no recovery within {RECOVERY_TIMEOUT:?} of the database's return: not ready: \
                 {not_ready:?}; new transfers committed: {}",
                commits_after.is_some()
            );
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    let mut by_kind: BTreeMap<Kind, Duration> = BTreeMap::new();
    for node in &nodes {
        let took = ready_after[&node.name];
        eprintln!(
            "{}: ready {:.2} s after the database returned",
            node.name,
            took.as_secs_f64()
        );
        let slowest = by_kind.entry(node.kind).or_default();
        *slowest = (*slowest).max(took);
    }
    for (kind, took) in &by_kind {
        eprintln!(
            "recovery of {kind:?} (slowest): {:.2} s",
            took.as_secs_f64()
        );
    }
    if let Some(took) = commits_after {
        eprintln!(
            "new transfers committed {:.2} s after the database returned",
            took.as_secs_f64()
        );
    }
    // A replicated node whose active lost its lease during the outage may have switched
    // replicas, but never ends up with two actives serving.
    let answers = probe_all(&http, &nodes).await;
    for (node, answers) in nodes.iter().zip(&answers) {
        let ready: Vec<&str> = node
            .replicas
            .iter()
            .zip(answers)
            .filter(|(_, a)| a.as_ref().is_some_and(|(ready, _)| *ready))
            .map(|((name, _), _)| name.as_str())
            .collect();
        assert!(
            ready.len() <= 1 || node.kind == Kind::Sequencer,
            "{}: {ready:?}",
            node.name
        );
        eprintln!("{}: active after the outage: {ready:?}", node.name);
    }
    // Whichever replica of participant 3 is active now knows carol, allocated just before the
    // outage: she can act.
    let payload = IouPayload {
        issuer: carol.clone(),
        owner: carol.clone(),
        amount: 1,
        currency: workload::CURRENCY.into(),
    };
    let outcome = parties.clients[2]
        .submit_and_wait(
            &CommandId::new("db-carol-after-outage").unwrap(),
            &BTreeSet::from([carol.clone()]),
            &[Command::Create {
                template: TemplateId::new("Iou").unwrap(),
                payload: payload.to_value(),
            }],
        )
        .await;
    if !matches!(outcome, Ok(SubmitOutcome::Committed(_))) {
        keep_logs(&mut deployment);
        panic!("carol, allocated just before the outage, cannot act after it: {outcome:?}");
    }

    // Keep the load on a little longer, then check the ledgers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_all_running(&mut deployment);
    let FinishedLoad { report, audit, .. } = load.finish().await.unwrap();
    let failed = live.failed.load(Ordering::Relaxed);
    eprintln!(
        "{} transfers committed ({} before the outage); {} failed ({} before the outage): \
         {:?}",
        report.committed, committed_before, failed, failed_before, report.rejections
    );
    for sample in &report.failure_samples {
        eprintln!("  failure: {sample}");
    }
    eprintln!("{audit:?}");
    assert!(report.committed > committed_before);
    assert_eq!(
        audit.acknowledged_missing, 0,
        "nothing acknowledged is lost"
    );
    assert!(audit.amounts_conserved, "{audit:?}");
    assert!(audit.audit_ok, "{audit:?}");
    deployment.stop().await.unwrap();
    eprintln!("test took {:.1} s", started.elapsed().as_secs_f64());
}

/// How long the stall test freezes the server: ten lease timeouts.
const FROZEN_FOR: Duration = Duration::from_secs(10);

/// Issue 9: a database stall far longer than the lease timeout fails over nothing by itself.
/// Every PostgreSQL process is stopped (SIGSTOP) for 10 s under load: connections stay open and
/// nothing answers, so no active can renew its lease. Afterwards every replicated node still has
/// the same active at the same epoch, no process exited, transfers commit again and the audit
/// finds nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_database_fails_over_nothing() {
    let server = Arc::new(PostgresServer::start().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let spec = replicated_spec(dir.path(), Some(&*server));
    let (mut deployment, load) = loaded_deployment(&spec, "stall").await;
    let live = load.live.clone();
    let before = lease_epochs(&server);
    // The topology manager, the mediator and three participants are replicated.
    assert_eq!(before.len(), 5, "{before:?}");

    server.freeze().unwrap();
    tokio::time::sleep(FROZEN_FOR).await;
    server.thaw().unwrap();
    let thawed = Instant::now();
    commits_through_both(&live, thawed, RECOVERY_TIMEOUT, "after the stall").await;
    eprintln!(
        "transfers committed again {:.2} s after the thaw",
        thawed.elapsed().as_secs_f64()
    );
    // A few lease timeouts more, for a late takeover to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_all_running(&mut deployment);
    let after = lease_epochs(&server);
    if after != before {
        keep_logs(&mut deployment);
    }
    assert_eq!(after, before, "a database stall made replicas take over");
    let FinishedLoad { report, audit, .. } = load.finish().await.unwrap();
    eprintln!(
        "{} transfers committed; failures: {:?}",
        report.committed, report.rejections
    );
    assert_eq!(
        audit.acknowledged_missing, 0,
        "nothing acknowledged is lost"
    );
    assert!(audit.audit_ok, "{audit:?}");
    deployment.stop().await.unwrap();
}
