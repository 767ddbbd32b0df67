//! Regions on the network: the `two-regions` deployment with `[network]` round trips (1 ms
//! between zones, 20 ms between regions) runs its links that cross a boundary through the
//! lab's `meridian netdelay` process — the nodes' configs name the proxies, not the targets;
//! node-to-node, node-to-database and client-to-replica links carry the nodes' own traffic;
//! a round trip over a database link from region two to region one's primary takes at least
//! the 20 ms, one from the next zone at least 1 ms; and the standby links have their delays.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meridian_lab::deployment::network::{self, LinkKind, LinkStatus};
use meridian_lab::deployment::{DeploymentSpec, Description, Preset};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{start_deployment, EXE};

/// How long the nodes may take to send traffic over every kind of link after the start.
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(30);

/// The median of `count` PostgreSQL SSLRequest round trips (8 bytes out, 1 byte back) to
/// `address`, each on a fresh connection after its connect.
async fn postgres_round_trip(address: SocketAddr, count: usize) -> Duration {
    // Int32 length 8, then the SSLRequest code 80877103.
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut rtts = Vec::new();
    for _ in 0..count {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let started = Instant::now();
        stream.write_all(&SSL_REQUEST).await.unwrap();
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await.unwrap();
        rtts.push(started.elapsed());
        assert!(matches!(answer[0], b'S' | b'N'), "answer {answer:?}");
    }
    rtts.sort();
    rtts[rtts.len() / 2]
}

fn link<'a>(
    status: &'a [LinkStatus],
    kind: LinkKind,
    from: &str,
    to: SocketAddr,
) -> &'a LinkStatus {
    status
        .iter()
        .find(|s| s.link.kind == kind && s.link.from_zone.as_str() == from && s.link.upstream == to)
        .unwrap_or_else(|| panic!("no {kind:?} link from {from} to {to}: {status:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_across_zones_and_regions_run_through_delaying_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let mut description = Description::preset(Preset::TwoRegions);
    description.network.cross_zone_rtt_ms = 1;
    description.network.cross_region_rtt_ms = 20;
    let mut spec = DeploymentSpec {
        exe: EXE.into(),
        ..DeploymentSpec::new(dir.path().to_path_buf(), description).unwrap()
    };
    let databases = spec.start_postgres().unwrap().expect("PostgreSQL clusters");
    let deployment = start_deployment(&spec).await;
    let server = |name: &str| {
        databases
            .servers()
            .iter()
            .find(|s| s.name.as_str() == name)
            .and_then(|s| s.address)
            .unwrap()
    };
    let (pg_1a, pg_2a) = (server("pg-1a"), server("pg-2a"));

    // Configs name the proxies: a zone-1b replica reaches pg-1a (zone-1a) through its link,
    // the zone-1a replica directly; the cold region-two replica reaches pg-2a from zone-2b
    // through a link too (participant2-c is in zone-2b).
    let plan = &deployment.network.as_ref().expect("links run").network;
    let config = |path: &str| std::fs::read_to_string(dir.path().join(path)).unwrap();
    let via_1b = plan.dial(&"zone-1b".into(), pg_1a);
    assert_ne!(via_1b, pg_1a);
    assert!(config("participant1/participant1-b.toml").contains(&format!("@{via_1b},")));
    assert!(config("participant1/participant1-a.toml").contains(&format!("@{pg_1a},")));
    let sequencer_b = deployment.sequencers[1].grpc_address;
    let to_sequencer_b = plan.dial(&"zone-1a".into(), sequencer_b);
    assert!(config("participant1/participant1-a.toml").contains(&to_sequencer_b.to_string()));
    assert!(!config("participant1/participant1-a.toml").contains(&sequencer_b.to_string()));
    // Clients sit in zone-1a: participant1-b (zone-1b) is dialed through the client link.
    let endpoints = deployment.ledger_endpoints(0);
    let standby = deployment.participant_standbys[0][0].grpc_address;
    assert_eq!(
        endpoints[1],
        meridian_lab::tls::url(deployment.client_address(standby))
    );
    assert_ne!(deployment.client_address(standby), standby);

    // The nodes' own traffic flows over node and database links; a client reaching the
    // zone-1b replica crosses its client link.
    let channel = meridian_client::tls::endpoint(&endpoints[1], None, "ledger endpoint")
        .unwrap()
        .connect()
        .await;
    drop(channel);
    let started = Instant::now();
    let mut status;
    loop {
        status = network::read_status(dir.path()).unwrap();
        let carried = |kind: LinkKind| {
            status
                .iter()
                .any(|s| s.link.kind == kind && s.forwarded_bytes > 0)
        };
        // The passive zone-1b replicas poll their lease on pg-1a over this one.
        let zone_1b_to_primary = status.iter().any(|s| {
            s.link.kind == LinkKind::Database
                && s.link.from_zone.as_str() == "zone-1b"
                && s.link.upstream == pg_1a
                && s.forwarded_bytes > 0
        });
        if [LinkKind::Node, LinkKind::Database, LinkKind::Client]
            .into_iter()
            .all(carried)
            && zone_1b_to_primary
        {
            break;
        }
        assert!(
            started.elapsed() < TRAFFIC_TIMEOUT,
            "not every kind of link carried traffic: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(link(&status, LinkKind::Database, "zone-1b", pg_1a).forwarded_connections > 0);

    // The delays are on the links: region two to region one 20 ms per round trip, the next
    // zone 1 ms (0.5 ms each way), the same zone none.
    let direct = postgres_round_trip(pg_1a, 9).await;
    let from_1b = postgres_round_trip(via_1b, 9).await;
    let from_2a = postgres_round_trip(plan.dial(&"zone-2a".into(), pg_1a), 9).await;
    let to_2a = postgres_round_trip(plan.dial(&"zone-1a".into(), pg_2a), 9).await;
    eprintln!(
        "PostgreSQL round trip to pg-1a: direct {direct:?}, from zone-1b {from_1b:?}, from \
         zone-2a {from_2a:?}; to pg-2a from zone-1a {to_2a:?}"
    );
    assert!(from_1b >= Duration::from_millis(1), "{from_1b:?}");
    assert!(
        from_1b < from_2a,
        "the next zone is nearer than the next region"
    );
    assert!(from_2a >= Duration::from_millis(20), "{from_2a:?}");
    assert!(to_2a >= Duration::from_millis(20), "{to_2a:?}");

    // The synchronous standby in the next zone streams through its own 0.5 ms link, the
    // async one in region two through 10 ms: both stream.
    let started = Instant::now();
    loop {
        let reports = databases.standby_reports().unwrap();
        if reports.iter().all(|r| r.streaming) {
            break;
        }
        assert!(
            started.elapsed() < TRAFFIC_TIMEOUT,
            "every standby streams through its link: {reports:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
