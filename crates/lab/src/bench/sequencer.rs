//! `meridian bench sequencer`: throughput and latency of a real sequencer process.
//!
//! The bench starts `meridian sequencer` as a child (SQLite in a temp dir, or PostgreSQL — a
//! throwaway server unless `--postgres-url` is given), registers sender and subscriber members,
//! and runs `senders × in_flight` send loops that address each submission to one subscriber.
//! Every payload carries its send instant, so subscribers measure send→delivery latency. The
//! first 20 % of the run (at most 2 s) is warm-up and is excluded from every figure.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use hdrhistogram::Histogram;
use meridian_client::{register_member, SequencerClient, SequencerClientConfig};
use meridian_core::crypto::SigningKey;
use meridian_core::sequencing::{Envelope, Submission};
use meridian_core::{MemberId, MessageId, Timestamp};
use meridian_store::StorageConfig;
use serde::Serialize;

use crate::launch::SequencerProcess;
use crate::stats::quantile_ms;

/// The storage choice lives with the deployment; re-exported for the benchmarks' callers.
pub use crate::deployment::Backend;

#[derive(Debug, Clone, Args)]
pub struct SequencerBenchArgs {
    /// Storage backend of the sequencer under test.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: Backend,
    /// Use this PostgreSQL database instead of starting a throwaway server.
    #[arg(long)]
    pub postgres_url: Option<String>,
    /// Length of the run in seconds, warm-up included.
    #[arg(long = "duration", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration_s: u64,
    /// Sending members (one connection each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub senders: u64,
    /// Concurrent sends per sender.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub in_flight: u64,
    /// Subscribing members; each submission goes to one of them, round robin.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub subscribers: u64,
    /// Target submissions per second in total; absent means as fast as possible.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Payload bytes per submission (at least 8: the send instant).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(8..=1_048_576))]
    pub payload_bytes: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Run the sequencer and its clients in plaintext (`[tls] plaintext = true`) instead of
    /// TLS, to measure what TLS costs.
    #[arg(long)]
    pub plaintext: bool,
}

#[derive(Debug, Serialize)]
pub struct SequencerBenchReport {
    pub backend: Backend,
    pub duration_s: f64,
    pub senders: u64,
    pub in_flight_per_sender: u64,
    pub subscribers: u64,
    pub target_rate_per_s: Option<u64>,
    pub submissions: u64,
    pub submissions_per_s: f64,
    pub delivered_events: u64,
    pub delivered_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub send_ack_p50_ms: f64,
    pub send_ack_p99_ms: f64,
    pub sequencer_peak_rss_mib: f64,
    pub failed_sends: u64,
    pub first_error: Option<String>,
    pub undelivered_after_drain: u64,
}

/// Shared counters; histograms behind a mutex are fine at these rates (one lock per event).
struct Counters {
    measure_from: Instant,
    acked: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    delivery_us: Mutex<Histogram<u64>>,
    ack_us: Mutex<Histogram<u64>>,
    measured_acked: AtomicU64,
    measured_delivered: AtomicU64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")
}

pub async fn run(args: SequencerBenchArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn postgres_storage(url: String) -> StorageConfig {
    StorageConfig::Postgres {
        url,
        max_connections: crate::deployment::configs::POSTGRES_POOL_CONNECTIONS,
    }
}

/// Runs the benchmark and returns its figures (also used by tests).
pub async fn measure(args: &SequencerBenchArgs) -> anyhow::Result<SequencerBenchReport> {
    if args.plaintext {
        crate::tls::set_plaintext()?;
    }
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    // The server (if any) runs for as long as the sequencer.
    let (storage, _postgres) = storage(args, dir.path())?;
    let exe = std::env::current_exe().context("locating the meridian binary")?;
    let mut sequencer = SequencerProcess::spawn(&exe, dir.path(), "sequencer", &storage, |_| {})?;
    sequencer.wait_ready(Duration::from_secs(30)).await?;
    let endpoint = sequencer.grpc_endpoint();

    let subscriber_ids: Vec<MemberId> = (0..args.subscribers)
        .map(|i| MemberId::new(format!("bench-subscriber-{i}")))
        .collect::<Result<_, _>>()?;
    let mut subscribers = Vec::new();
    for id in &subscriber_ids {
        subscribers.push(connect(&endpoint, id.clone()).await?);
    }
    let mut senders = Vec::new();
    for i in 0..args.senders {
        senders.push(connect(&endpoint, MemberId::new(format!("bench-sender-{i}"))?).await?);
    }

    let start = Instant::now();
    let duration = Duration::from_secs(args.duration_s);
    let warmup = (duration / 5).min(Duration::from_secs(2));
    let counters = Arc::new(Counters::new(start + warmup));
    let subscriber_tasks: Vec<_> = subscribers
        .into_iter()
        .map(|client| tokio::spawn(subscribe(client, counters.clone(), start)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let send_tasks = spawn_send_loops(args, &senders, &subscriber_ids, &counters, &stop, start);

    show_progress(args, &counters, start, duration).await;
    stop.store(true, Ordering::Relaxed);
    let measured_window = start.elapsed().saturating_sub(warmup);
    for task in send_tasks {
        let _ = task.await;
    }
    // Let deliveries catch up with the last acknowledged sends.
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while counters.delivered.load(Ordering::Relaxed) < counters.acked.load(Ordering::Relaxed)
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peak_rss = sequencer.peak_rss_bytes().unwrap_or(0);
    for task in &subscriber_tasks {
        task.abort();
    }
    sequencer.terminate(Duration::from_secs(10)).await?;
    Ok(counters.report(args, measured_window, peak_rss))
}

/// The sequencer's storage: SQLite in `dir`, the given PostgreSQL database, or one on a
/// throwaway server returned with it.
fn storage(
    args: &SequencerBenchArgs,
    dir: &std::path::Path,
) -> anyhow::Result<(StorageConfig, Option<meridian_pgserver::PostgresServer>)> {
    Ok(match (args.backend, &args.postgres_url) {
        (Backend::Sqlite, _) => (
            StorageConfig::Sqlite {
                path: dir.join("sequencer.db"),
            },
            None,
        ),
        (Backend::Postgres, Some(url)) => (postgres_storage(url.clone()), None),
        (Backend::Postgres, None) => {
            let server = meridian_pgserver::PostgresServer::start()
                .context("starting a throwaway PostgreSQL (or pass --postgres-url)")?;
            let url = server.create_database("bench")?;
            (postgres_storage(url), Some(server))
        }
    })
}

impl Counters {
    fn new(measure_from: Instant) -> Self {
        Self {
            measure_from,
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: Mutex::new(None),
            delivery_us: Mutex::new(histogram()),
            ack_us: Mutex::new(histogram()),
            measured_acked: AtomicU64::new(0),
            measured_delivered: AtomicU64::new(0),
        }
    }

    fn report(
        &self,
        args: &SequencerBenchArgs,
        measured_window: Duration,
        peak_rss_bytes: u64,
    ) -> SequencerBenchReport {
        let acked = self.acked.load(Ordering::Relaxed);
        let delivered = self.delivered.load(Ordering::Relaxed);
        let window_s = measured_window.as_secs_f64().max(1e-3);
        let delivery = lock(&self.delivery_us).clone();
        let ack = lock(&self.ack_us).clone();
        SequencerBenchReport {
            backend: args.backend,
            duration_s: args.duration_s as f64,
            senders: args.senders,
            in_flight_per_sender: args.in_flight,
            subscribers: args.subscribers,
            target_rate_per_s: args.rate,
            submissions: acked,
            submissions_per_s: self.measured_acked.load(Ordering::Relaxed) as f64 / window_s,
            delivered_events: delivered,
            delivered_per_s: self.measured_delivered.load(Ordering::Relaxed) as f64 / window_s,
            latency_p50_ms: quantile_ms(&delivery, 0.50),
            latency_p99_ms: quantile_ms(&delivery, 0.99),
            latency_max_ms: delivery.max() as f64 / 1_000.0,
            send_ack_p50_ms: quantile_ms(&ack, 0.50),
            send_ack_p99_ms: quantile_ms(&ack, 0.99),
            sequencer_peak_rss_mib: peak_rss_bytes as f64 / (1024.0 * 1024.0),
            failed_sends: self.failed.load(Ordering::Relaxed),
            first_error: lock(&self.first_error).clone(),
            undelivered_after_drain: acked.saturating_sub(delivered),
        }
    }
}

/// Counts what `client`'s subscription delivers, and its send→delivery latency.
async fn subscribe(client: SequencerClient, counters: Arc<Counters>, start: Instant) {
    let mut events = client.subscribe(None);
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                record_error(&counters, format!("subscription: {error}"));
                return;
            }
        };
        let received = Instant::now();
        for envelope in event.envelopes {
            let Some(sent) = decode_send_instant(start, &envelope.payload) else {
                continue;
            };
            counters.delivered.fetch_add(1, Ordering::Relaxed);
            if sent >= counters.measure_from {
                counters.measured_delivered.fetch_add(1, Ordering::Relaxed);
                let micros = received.saturating_duration_since(sent).as_micros();
                let _ = lock(&counters.delivery_us).record(micros.max(1) as u64);
            }
        }
    }
}

/// `in_flight` send loops per sender, until `stop`.
fn spawn_send_loops(
    args: &SequencerBenchArgs,
    senders: &[SequencerClient],
    recipients: &[MemberId],
    counters: &Arc<Counters>,
    stop: &Arc<AtomicBool>,
    start: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let loops = args.senders * args.in_flight;
    let interval = args
        .rate
        .filter(|&rate| rate > 0)
        .map(|rate| Duration::from_secs_f64(loops as f64 / rate as f64));
    let mut tasks = Vec::new();
    for (sender_index, client) in senders.iter().enumerate() {
        for loop_index in 0..args.in_flight {
            let send_loop = SendLoop {
                client: client.clone(),
                counters: counters.clone(),
                stop: stop.clone(),
                recipients: recipients.to_vec(),
                payload_bytes: args.payload_bytes as usize,
                start,
                sender_index: sender_index as u64,
                loop_index,
            };
            // Stagger the loops' phases: aligned tickers would send in bursts of `loops`
            // submissions and measure queueing behind the burst, not a steady rate.
            let phase = sender_index as u64 * args.in_flight + loop_index;
            let ticker = interval.map(|every| {
                let offset = every.mul_f64(phase as f64 / loops as f64);
                let mut ticker =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker
            });
            tasks.push(tokio::spawn(send_loop.run(ticker)));
        }
    }
    tasks
}

/// One loop of sends, each to the next subscriber in turn.
struct SendLoop {
    client: SequencerClient,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    recipients: Vec<MemberId>,
    payload_bytes: usize,
    start: Instant,
    sender_index: u64,
    loop_index: u64,
}

impl SendLoop {
    async fn run(self, mut ticker: Option<tokio::time::Interval>) {
        let (counters, loop_index) = (&self.counters, self.loop_index);
        let mut sequence: u64 = 0;
        while !self.stop.load(Ordering::Relaxed) {
            if let Some(ticker) = ticker.as_mut() {
                ticker.tick().await;
            }
            sequence += 1;
            let slot = (self.sender_index + loop_index + sequence) as usize;
            let recipient = self.recipients[slot % self.recipients.len()].clone();
            let sent = Instant::now();
            let submission = Submission {
                sender: self.client.member().clone(),
                message_id: MessageId::new(format!("l{loop_index}-{sequence}"))
                    .expect("generated message ids are valid"),
                envelopes: vec![Envelope {
                    recipients: vec![recipient],
                    payload: encode_payload(self.start, sent, self.payload_bytes),
                }],
                max_sequencing_time: Timestamp::now().saturating_add(Duration::from_secs(60)),
            };
            match self.client.send(submission).await {
                Ok(_) => {
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                    if sent >= counters.measure_from {
                        counters.measured_acked.fetch_add(1, Ordering::Relaxed);
                        let micros = sent.elapsed().as_micros();
                        let _ = lock(&counters.ack_us).record(micros.max(1) as u64);
                    }
                }
                Err(error) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    record_error(counters, format!("send: {error}"));
                }
            }
        }
    }
}

/// The live progress line until `duration` has passed since `start`.
async fn show_progress(
    args: &SequencerBenchArgs,
    counters: &Counters,
    start: Instant,
    duration: Duration,
) {
    let progress = indicatif::ProgressBar::new(args.duration_s);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed}/{len}s {wide_msg}")
            .expect("static progress template is valid"),
    );
    let mut last = (Instant::now(), 0u64, 0u64);
    while start.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        let acked = counters.acked.load(Ordering::Relaxed);
        let delivered = counters.delivered.load(Ordering::Relaxed);
        let seconds = now.duration_since(last.0).as_secs_f64().max(1e-3);
        progress.set_position(start.elapsed().as_secs());
        progress.set_message(format!(
            "{:>8.0} sends/s {:>8.0} delivered/s  failed {}",
            (acked - last.1) as f64 / seconds,
            (delivered - last.2) as f64 / seconds,
            counters.failed.load(Ordering::Relaxed)
        ));
        last = (now, acked, delivered);
    }
    progress.finish_and_clear();
}

async fn connect(endpoint: &str, member: MemberId) -> anyhow::Result<SequencerClient> {
    let key = SigningKey::generate();
    register_member(endpoint, &member, &key.public_key())
        .await
        .with_context(|| format!("registering {member}"))?;
    SequencerClient::connect(SequencerClientConfig::new(endpoint, member.clone(), key))
        .await
        .with_context(|| format!("connecting {member}"))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn record_error(counters: &Counters, message: String) {
    let mut first = lock(&counters.first_error);
    if first.is_none() {
        *first = Some(message);
    }
}

/// The payload starts with the send instant as nanoseconds since the bench started.
fn encode_payload(start: Instant, sent: Instant, payload_bytes: usize) -> Vec<u8> {
    let nanos = u64::try_from(sent.duration_since(start).as_nanos()).unwrap_or(u64::MAX);
    let mut payload = vec![0u8; payload_bytes.max(8)];
    payload[..8].copy_from_slice(&nanos.to_le_bytes());
    payload
}

fn decode_send_instant(start: Instant, payload: &[u8]) -> Option<Instant> {
    let nanos = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    Some(start + Duration::from_nanos(nanos))
}

fn print_table(report: &SequencerBenchReport) {
    let rate = report
        .target_rate_per_s
        .map(|r| format!("target {r}/s"))
        .unwrap_or_else(|| "saturation".into());
    println!(
        "meridian bench sequencer: {:?}, {} senders x {} in flight, {} subscribers, {} s, {rate}",
        report.backend,
        report.senders,
        report.in_flight_per_sender,
        report.subscribers,
        report.duration_s
    );
    println!(
        "  submissions/s           {:>10.0}",
        report.submissions_per_s
    );
    println!("  delivered events/s      {:>10.0}", report.delivered_per_s);
    println!(
        "  send->delivery latency  p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        report.latency_p50_ms, report.latency_p99_ms, report.latency_max_ms
    );
    println!(
        "  send->ack latency       p50 {:.2} ms   p99 {:.2} ms",
        report.send_ack_p50_ms, report.send_ack_p99_ms
    );
    println!(
        "  sequencer peak RSS      {:>10.1} MiB",
        report.sequencer_peak_rss_mib
    );
    println!(
        "  failed sends            {:>10}{}",
        report.failed_sends,
        report
            .first_error
            .as_deref()
            .map(|e| format!("  (first: {e})"))
            .unwrap_or_default()
    );
    if report.undelivered_after_drain > 0 {
        println!(
            "  WARNING: {} acknowledged submissions were not delivered within 10 s",
            report.undelivered_after_drain
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_the_send_instant() {
        let start = Instant::now();
        let sent = start + Duration::from_millis(1234);
        let payload = encode_payload(start, sent, 64);
        assert_eq!(payload.len(), 64);
        assert_eq!(decode_send_instant(start, &payload), Some(sent));
        assert_eq!(decode_send_instant(start, &[1, 2]), None);
    }
}
