//! `meridian-netdelay`: a delaying TCP proxy, so that zones and regions launched on one machine
//! see real round trips. The kernel here has no `netem`, so the delay sits on the link itself:
//! a [`DelayProxy`] listens on one address and forwards every connection to an upstream
//! address, holding each chunk it reads, in either direction, for the current one-way delay
//! before writing it on (so a round trip grows by twice the delay). Order is preserved, an end
//! of stream is delayed like data, and each direction of a connection holds at most
//! [`ProxyConfig::max_in_flight_bytes`]: beyond that the proxy stops reading, and TCP flow
//! control pushes back on the sender. The delay can change at run time, and the proxy can cut
//! every connection and refuse new ones (a partition) until healed. Dropping the handle stops
//! the proxy and closes its connections.
//!
//! Only tokio and std: holds are timed by one thread per proxy rather than by tokio's
//! millisecond timer, which would add up to about two milliseconds to every hold (`timer`).

mod timer;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::timer::PreciseTimer;

/// The most one read takes from a socket; a chunk is never larger.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// The most chunks one direction of a connection holds, whatever their size: small chunks must
/// not make the queue long even when their bytes stay under the byte limit.
const MAX_CHUNKS_IN_FLIGHT: usize = 4096;
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Limits of a [`DelayProxy`].
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Bytes one direction of one connection may hold (read, not yet written). At the delay
    /// `d`, a direction carries at most this much per `d`: 4 MiB at 15 ms is about 270 MiB/s.
    pub max_in_flight_bytes: usize,
    /// How long a new connection waits for the upstream to accept before it is closed.
    pub connect_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            max_in_flight_bytes: 4 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("binding the delaying proxy's listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("starting the delaying proxy's timer thread: {0}")]
    Timer(#[source] io::Error),
    #[error("invalid proxy config: {0}")]
    InvalidConfig(&'static str),
}

/// What the handle and every connection task share.
#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    /// Times every hold; its thread ends with the last reference to this.
    timer: PreciseTimer,
    config: ProxyConfig,
    /// The current one-way delay, read once per chunk when the chunk is read.
    delay_us: AtomicU64,
    /// `true` while partitioned; connection tasks watch it to cut themselves.
    partitioned: watch::Sender<bool>,
    active_connections: AtomicUsize,
    /// Connections accepted and forwarded (refused ones not counted).
    forwarded_connections: AtomicU64,
    refused_connections: AtomicU64,
    /// Bytes written on, both directions, since the start: shows a link carried traffic.
    forwarded_bytes: AtomicU64,
    /// Bytes held by all connections, both directions.
    in_flight_bytes: AtomicUsize,
}

impl Shared {
    fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }
}

/// A running delaying proxy; see the crate documentation. Dropping it stops the proxy: the
/// listener closes and every connection is cut.
#[derive(Debug)]
pub struct DelayProxy {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on `listen` (port 0 picks a free one; see [`Self::local_addr`]) and forwards
    /// every connection to `upstream`, each chunk held `one_way_delay`, with the default limits.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        one_way_delay: Duration,
    ) -> Result<DelayProxy, ProxyError> {
        Self::start_with(listen, upstream, one_way_delay, ProxyConfig::default()).await
    }

    /// [`Self::start`] with explicit limits.
    pub async fn start_with(
        listen: SocketAddr,
        upstream: SocketAddr,
        one_way_delay: Duration,
        config: ProxyConfig,
    ) -> Result<DelayProxy, ProxyError> {
        // Permits are taken a chunk at a time and the semaphore counts in u32 per acquire.
        if config.max_in_flight_bytes == 0 || u32::try_from(config.max_in_flight_bytes).is_err() {
            return Err(ProxyError::InvalidConfig(
                "max_in_flight_bytes must be between 1 and 4 GiB",
            ));
        }
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ProxyError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ProxyError::Bind {
            addr: listen,
            source,
        })?;
        let timer = PreciseTimer::start().map_err(ProxyError::Timer)?;
        let shared = Arc::new(Shared {
            upstream,
            timer,
            config,
            delay_us: AtomicU64::new(duration_us(one_way_delay)),
            partitioned: watch::Sender::new(false),
            active_connections: AtomicUsize::new(0),
            forwarded_connections: AtomicU64::new(0),
            refused_connections: AtomicU64::new(0),
            forwarded_bytes: AtomicU64::new(0),
            in_flight_bytes: AtomicUsize::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        tracing::debug!(%local_addr, %upstream, ?one_way_delay, "delaying proxy started");
        Ok(DelayProxy {
            local_addr,
            shared,
            accept_task,
        })
    }

    /// Where the proxy listens: what clients connect to instead of the upstream.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    pub fn one_way_delay(&self) -> Duration {
        self.shared.delay()
    }

    /// Changes the one-way delay for every chunk read from now on, on open connections too.
    /// Chunks already held keep their time; as order is preserved, after a decrease new chunks
    /// still wait for the older ones ahead of them.
    pub fn set_delay(&self, one_way_delay: Duration) {
        self.shared
            .delay_us
            .store(duration_us(one_way_delay), Ordering::Relaxed);
        tracing::debug!(local_addr = %self.local_addr, ?one_way_delay, "proxy delay changed");
    }

    /// Cuts every open connection (both sides see a reset) and refuses new ones (accepted and
    /// reset at once, so a client fails fast) until [`Self::heal`]. The listening socket stays
    /// bound, so healing cannot lose the port to another process.
    pub fn partition(&self) {
        self.shared.partitioned.send_replace(true);
        tracing::debug!(local_addr = %self.local_addr, "proxy partitioned");
    }

    /// Ends a partition: new connections are forwarded again (cut ones stay cut).
    pub fn heal(&self) {
        self.shared.partitioned.send_replace(false);
        tracing::debug!(local_addr = %self.local_addr, "proxy healed");
    }

    pub fn is_partitioned(&self) -> bool {
        *self.shared.partitioned.borrow()
    }

    /// Connections open through the proxy now (connecting to the upstream included).
    pub fn active_connections(&self) -> usize {
        self.shared.active_connections.load(Ordering::Relaxed)
    }

    /// Connections forwarded since the start.
    pub fn forwarded_connections(&self) -> u64 {
        self.shared.forwarded_connections.load(Ordering::Relaxed)
    }

    /// Connections refused because of a partition since the start.
    pub fn refused_connections(&self) -> u64 {
        self.shared.refused_connections.load(Ordering::Relaxed)
    }

    /// Bytes forwarded (written on after their delay) since the start, both directions.
    pub fn forwarded_bytes(&self) -> u64 {
        self.shared.forwarded_bytes.load(Ordering::Relaxed)
    }

    /// Bytes read and not yet written on, all connections and directions together.
    pub fn in_flight_bytes(&self) -> usize {
        self.shared.in_flight_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet), which go with it.
        self.accept_task.abort();
    }
}

fn duration_us(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Accepts until aborted. Connection tasks live in a `JoinSet` owned here, so aborting this
/// task (dropping the handle) aborts them all and closes their sockets.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _peer)) if *shared.partitioned.borrow() => {
                    shared.refused_connections.fetch_add(1, Ordering::Relaxed);
                    reset(&client);
                }
                Ok((client, _peer)) => {
                    shared.forwarded_connections.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(forward(client, shared.clone()));
                }
                Err(error) => {
                    tracing::debug!(%error, "delaying proxy: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            // Reaps finished connections so the set does not grow with every one ever made.
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = finished {
                    if error.is_panic() {
                        tracing::error!(%error, "delaying proxy: a connection task panicked");
                    }
                }
            }
        }
    }
}

/// Closes with a reset (RST) instead of an orderly end (FIN) when the socket is dropped.
fn reset(stream: &TcpStream) {
    if let Err(error) = stream.set_zero_linger() {
        tracing::debug!(%error, "delaying proxy: setting SO_LINGER 0");
    }
}

/// Counts a connection as active for as long as its task lives (an abort included).
struct ActiveConnection<'a>(&'a Shared);

impl<'a> ActiveConnection<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.active_connections.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for ActiveConnection<'_> {
    fn drop(&mut self) {
        self.0.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One client connection: connect to the upstream, then pipe both directions until both ended,
/// either failed, or a partition cuts it. A failure or a cut resets both sockets, so each peer
/// learns the connection broke rather than seeing an orderly end.
async fn forward(mut client: TcpStream, shared: Arc<Shared>) {
    let _active = ActiveConnection::new(&shared);
    let mut partitioned = shared.partitioned.subscribe();
    let connect = tokio::time::timeout(
        shared.config.connect_timeout,
        TcpStream::connect(shared.upstream),
    );
    let mut upstream = tokio::select! {
        connected = connect => match connected {
            Ok(Ok(upstream)) => upstream,
            // The client learns at once that there is nobody behind the proxy.
            Ok(Err(error)) => {
                tracing::debug!(upstream = %shared.upstream, %error, "delaying proxy: upstream refused");
                reset(&client);
                return;
            }
            Err(_elapsed) => {
                tracing::debug!(upstream = %shared.upstream, "delaying proxy: upstream connect timed out");
                reset(&client);
                return;
            }
        },
        _ = partitioned.wait_for(|cut| *cut) => {
            reset(&client);
            return;
        }
    };
    // Chunks go on as soon as their delay is over; Nagle would add its own.
    for stream in [&client, &upstream] {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "delaying proxy: setting TCP_NODELAY");
        }
    }
    let outcome = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let both = async {
            tokio::try_join!(
                pipe(client_read, upstream_write, &shared),
                pipe(upstream_read, client_write, &shared),
            )
        };
        tokio::select! {
            piped = both => piped.map(|_| ()),
            _ = partitioned.wait_for(|cut| *cut) => {
                Err(io::Error::new(io::ErrorKind::ConnectionAborted, "partitioned"))
            }
        }
    };
    if let Err(error) = outcome {
        tracing::debug!(%error, "delaying proxy: connection cut");
        reset(&client);
        reset(&upstream);
    }
}

/// One chunk on its way through one direction of a connection.
enum Chunk {
    Data {
        bytes: Vec<u8>,
        release_at: Instant,
    },
    /// The sender finished writing; passed on (as a FIN) after the delay like data.
    End {
        release_at: Instant,
    },
}

/// Bytes one direction holds, added to the proxy-wide gauge; whatever is still held when the
/// direction ends (a cut) is taken off the gauge on drop.
struct Held<'a> {
    shared: &'a Shared,
    bytes: AtomicUsize,
}

impl Held<'_> {
    fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.shared
            .in_flight_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    fn remove(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.shared
            .in_flight_bytes
            .fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let bytes = self.bytes.load(Ordering::Relaxed);
        self.shared
            .in_flight_bytes
            .fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Copies `from` to `to`, each chunk held until its delay is over. The reader takes byte
/// permits before it reads and the writer returns them once written, so a direction never
/// holds more than `max_in_flight_bytes`; when it is full the reader stops reading.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    shared: &Shared,
) -> io::Result<()> {
    let limit = shared.config.max_in_flight_bytes;
    let read_size = READ_CHUNK_BYTES.min(limit);
    let permits_per_read = u32::try_from(read_size).expect("checked at start: fits in u32");
    let budget = Semaphore::new(limit);
    let held = Held {
        shared,
        bytes: AtomicUsize::new(0),
    };
    let (queue, mut queued) = mpsc::channel(MAX_CHUNKS_IN_FLIGHT);
    let read_side = async {
        let mut buffer = vec![0; read_size];
        loop {
            let permits = budget
                .acquire_many(permits_per_read)
                .await
                .expect("the semaphore is never closed");
            permits.forget();
            let read = from.read(&mut buffer).await?;
            // Only what was read stays taken.
            budget.add_permits(read_size - read);
            let release_at = Instant::now() + shared.delay();
            let chunk = if read == 0 {
                Chunk::End { release_at }
            } else {
                held.add(read);
                Chunk::Data {
                    bytes: buffer[..read].to_vec(),
                    release_at,
                }
            };
            let end = matches!(chunk, Chunk::End { .. });
            if queue.send(chunk).await.is_err() {
                return Err(io::Error::other("the writing side is gone"));
            }
            if end {
                return Ok(());
            }
        }
    };
    let write_side = async {
        while let Some(chunk) = queued.recv().await {
            match chunk {
                Chunk::Data { bytes, release_at } => {
                    shared.timer.sleep_until(release_at).await;
                    to.write_all(&bytes).await?;
                    shared
                        .forwarded_bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    held.remove(bytes.len());
                    budget.add_permits(bytes.len());
                }
                Chunk::End { release_at } => {
                    shared.timer.sleep_until(release_at).await;
                    return to.shutdown().await;
                }
            }
        }
        Ok(())
    };
    tokio::try_join!(read_side, write_side).map(|_| ())
}
