//! The delaying proxy against real loopback sockets: bytes pass unchanged both ways, a round
//! trip takes twice the delay (and little more), a new delay applies to open connections, a
//! direction holds no more than its limit, a partition cuts and refuses until healed, and a
//! missing or vanishing upstream closes the client's connection.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meridian_netdelay::{DelayProxy, ProxyConfig};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Slack allowed above twice the delay for a round trip's median: the proxy's own work, the
/// timer's millisecond granularity and a loaded two-core machine.
const RTT_SLACK: Duration = Duration::from_millis(20);
/// How long a peer may take to notice its connection was closed or reset.
const NOTICE_WITHIN: Duration = Duration::from_secs(2);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An upstream that echoes every connection until it ends.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_echo(listener));
    addr
}

async fn serve_echo(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            stream.set_nodelay(true).unwrap();
            let (mut read, mut write) = stream.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
        });
    }
}

async fn connect(proxy: &DelayProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// `count` one-byte ping-pongs on `stream`, each round trip's duration, sorted.
async fn round_trips(stream: &mut TcpStream, count: usize) -> Vec<Duration> {
    let mut rtts = Vec::with_capacity(count);
    let mut byte = [0u8; 1];
    for i in 0..count {
        let started = Instant::now();
        stream.write_all(&[i as u8]).await.unwrap();
        stream.read_exact(&mut byte).await.unwrap();
        rtts.push(started.elapsed());
        assert_eq!(byte[0], i as u8);
    }
    rtts.sort();
    rtts
}

/// Asserts the round trips at one-way `delay`: none shorter than twice the delay, the median
/// within [`RTT_SLACK`] of it. Returns (min, median, max) for the report.
fn check_round_trips(delay: Duration, rtts: &[Duration]) -> (Duration, Duration, Duration) {
    let (min, median, max) = (rtts[0], rtts[rtts.len() / 2], rtts[rtts.len() - 1]);
    println!(
        "one-way delay {delay:?}: round trip min {min:?}, median {median:?}, max {max:?} \
         ({} pings)",
        rtts.len()
    );
    assert!(
        min >= 2 * delay,
        "a round trip shorter than 2 x {delay:?}: {min:?}"
    );
    assert!(
        median < 2 * delay + RTT_SLACK,
        "median round trip {median:?} at {delay:?} one way"
    );
    (min, median, max)
}

/// Reads until the peer closes or resets; `true` if that happened within [`NOTICE_WITHIN`].
async fn closes_soon(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 1024];
    let ended = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(NOTICE_WITHIN, ended).await.is_ok()
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < NOTICE_WITHIN,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

#[tokio::test]
async fn payloads_pass_unchanged_both_ways() {
    let to_upstream = random_bytes(8 * 1024 * 1024 + 17);
    let to_client = random_bytes(5 * 1024 * 1024 + 3);
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let upstream = listener.local_addr().unwrap();
    // A small limit, so back-pressure is exercised all along the transfer.
    let config = ProxyConfig {
        max_in_flight_bytes: 256 * 1024,
        ..ProxyConfig::default()
    };
    let proxy = DelayProxy::start_with(any_port(), upstream, Duration::from_millis(2), config)
        .await
        .unwrap();

    let server_sends = to_client.clone();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (mut read, mut write) = stream.split();
        let mut received = Vec::new();
        let receiving = read.read_to_end(&mut received);
        let sending = async {
            write.write_all(&server_sends).await?;
            write.shutdown().await
        };
        let (received_len, sent) = tokio::join!(receiving, sending);
        received_len.unwrap();
        sent.unwrap();
        received
    });
    let mut client = connect(&proxy).await;
    let (mut read, mut write) = client.split();
    let mut received = Vec::new();
    let sending = async {
        write.write_all(&to_upstream).await?;
        write.shutdown().await
    };
    let (received_len, sent) = tokio::join!(read.read_to_end(&mut received), sending);
    received_len.unwrap();
    sent.unwrap();

    let server_received = server.await.unwrap();
    assert!(server_received == to_upstream, "client to upstream differs");
    assert!(received == to_client, "upstream to client differs");
    wait_until("the connection to end", || proxy.active_connections() == 0).await;
    assert_eq!(proxy.in_flight_bytes(), 0);
    assert_eq!(
        proxy.forwarded_bytes(),
        (to_upstream.len() + to_client.len()) as u64,
        "every byte both ways is counted once"
    );
}

/// The 1 ms round trip between two zones is 0.5 ms one way: the added round trip, measured
/// against the same echo server reached directly, must be about 1 ms — not the 2-3 ms that
/// tokio's millisecond timer would make of it (the precise timer, `timer.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_millisecond_one_way_adds_about_one_millisecond_per_round_trip() {
    let upstream = echo_server().await;
    let delay = Duration::from_micros(500);
    let proxy = DelayProxy::start(any_port(), upstream, delay)
        .await
        .unwrap();
    let mut direct = TcpStream::connect(upstream).await.unwrap();
    direct.set_nodelay(true).unwrap();
    let mut delayed = connect(&proxy).await;
    round_trips(&mut direct, 10).await; // warm-up
    round_trips(&mut delayed, 10).await;
    let direct_rtts = round_trips(&mut direct, 200).await;
    let delayed_rtts = round_trips(&mut delayed, 200).await;
    let median = |rtts: &[Duration]| rtts[rtts.len() / 2];
    let added = median(&delayed_rtts).saturating_sub(median(&direct_rtts));
    println!(
        "0.5 ms one way: direct median {:?}, through the proxy median {:?} (min {:?}), added {added:?}",
        median(&direct_rtts),
        median(&delayed_rtts),
        delayed_rtts[0],
    );
    assert!(delayed_rtts[0] >= 2 * delay, "a round trip under 1 ms");
    assert!(
        added < Duration::from_micros(1_600),
        "the proxy adds {added:?} per round trip at 0.5 ms one way, not about 1 ms"
    );
}

#[tokio::test]
async fn round_trip_is_twice_the_delay_and_follows_set_delay() {
    let upstream = echo_server().await;
    let proxy = DelayProxy::start(any_port(), upstream, Duration::ZERO)
        .await
        .unwrap();
    let mut stream = connect(&proxy).await;
    round_trips(&mut stream, 5).await; // warm-up
    for delay_ms in [0, 1, 5, 15] {
        let delay = Duration::from_millis(delay_ms);
        // The same open connection: a new delay applies to chunks read from now on.
        proxy.set_delay(delay);
        assert_eq!(proxy.one_way_delay(), delay);
        let rtts = round_trips(&mut stream, 20).await;
        check_round_trips(delay, &rtts);
    }
    // And down again: once the held chunks are gone, new ones take the shorter delay.
    proxy.set_delay(Duration::from_millis(2));
    let rtts = round_trips(&mut stream, 20).await;
    check_round_trips(Duration::from_millis(2), &rtts);
}

#[tokio::test]
async fn a_direction_holds_no_more_than_its_limit() {
    const LIMIT_BYTES: usize = 128 * 1024;
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let config = ProxyConfig {
        max_in_flight_bytes: LIMIT_BYTES,
        ..ProxyConfig::default()
    };
    let proxy = DelayProxy::start_with(any_port(), upstream, Duration::from_millis(1), config)
        .await
        .unwrap();
    // The upstream accepts and never reads.
    let _stalled = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(stream);
    });
    let mut client = connect(&proxy).await;
    let writing = tokio::spawn(async move {
        let payload = vec![7u8; 64 * 1024 * 1024];
        client.write_all(&payload).await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !writing.is_finished(),
        "64 MiB went into an upstream that reads nothing: nothing pushed back"
    );
    let held = proxy.in_flight_bytes();
    println!("the proxy holds {held} bytes for an upstream that does not read");
    assert!(
        held > 0 && held <= LIMIT_BYTES,
        "held {held}, limit {LIMIT_BYTES}"
    );
    writing.abort();
}

#[tokio::test]
async fn a_partition_cuts_and_refuses_until_healed() {
    let upstream = echo_server().await;
    let proxy = DelayProxy::start(any_port(), upstream, Duration::from_millis(1))
        .await
        .unwrap();
    let mut before = connect(&proxy).await;
    round_trips(&mut before, 3).await;
    assert_eq!(proxy.active_connections(), 1);

    proxy.partition();
    assert!(proxy.is_partitioned());
    assert!(
        closes_soon(&mut before).await,
        "an open connection survived the partition"
    );
    wait_until("the cut connection to go", || {
        proxy.active_connections() == 0
    })
    .await;
    let mut during = connect(&proxy).await;
    let _ = during.write_all(b"x").await;
    assert!(
        closes_soon(&mut during).await,
        "a new connection got through"
    );
    assert!(proxy.refused_connections() >= 1);

    proxy.heal();
    let mut after = connect(&proxy).await;
    round_trips(&mut after, 3).await;
    assert_eq!(proxy.forwarded_connections(), 2);
}

#[tokio::test]
async fn a_missing_or_vanishing_upstream_closes_the_client() {
    // An address nobody listens on (yet).
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let upstream = listener.local_addr().unwrap();
    drop(listener);
    let proxy = DelayProxy::start(any_port(), upstream, Duration::from_millis(1))
        .await
        .unwrap();
    let mut client = connect(&proxy).await;
    assert!(
        closes_soon(&mut client).await,
        "no upstream, yet the connection stayed"
    );

    // The upstream comes up, takes one connection and goes away in the middle of it.
    let listener = TcpListener::bind(upstream).await.unwrap();
    let vanishing = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        listener
    });
    let mut client = connect(&proxy).await;
    client.write_all(b"x").await.unwrap();
    let listener = vanishing.await.unwrap();
    assert!(
        closes_soon(&mut client).await,
        "the upstream went, the client stayed"
    );

    // The proxy itself lives on: the next connection is served.
    tokio::spawn(serve_echo(listener));
    let mut client = connect(&proxy).await;
    round_trips(&mut client, 3).await;
}

#[tokio::test]
async fn dropping_the_proxy_closes_everything() {
    let upstream = echo_server().await;
    let proxy = DelayProxy::start(any_port(), upstream, Duration::from_millis(1))
        .await
        .unwrap();
    let addr = proxy.local_addr();
    let mut client = connect(&proxy).await;
    round_trips(&mut client, 1).await;
    drop(proxy);
    assert!(
        closes_soon(&mut client).await,
        "a connection outlived its proxy"
    );
    let started = Instant::now();
    loop {
        if TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(started.elapsed() < NOTICE_WITHIN, "the proxy still listens");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
