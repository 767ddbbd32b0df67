//! The IOU transfer workload and the ledger audit, shared by `meridian demo`, `meridian bench
//! ledger` and the black-box tests.
//!
//! Parties: `bank` on participant 1 issues IOUs; `alice` on participant 2 and `bob` on
//! participant 3 own them. Each *lane* owns one IOU and transfers it back and forth between
//! alice and bob, so every transfer involves all three participants (bank signs, the owner
//! acts, the new owner observes). Lanes never share a contract, so a rejection is a real
//! failure, not contention. Each lane's IOU has a unique amount, which lets a lane whose
//! outcome was unknown find its IOU again from the ACS instead of guessing.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use meridian_client::{ClientError, LedgerClient, SubmitOutcome};
use meridian_core::ledger::{Command, Contract};
use meridian_core::template::{Iou, IouPayload};
use meridian_core::{CommandId, ContractId, PartyId, TemplateId, UserId};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::deployment::Deployment;
use crate::machine_cpu::{self, CpuJiffies};
use crate::stats::quantile_ms;

pub const CURRENCY: &str = "USD";
/// How long and how often a lane waits for its IOU to appear on the new owner's participant.
const VISIBILITY_RETRY_DELAY: Duration = Duration::from_millis(10);
const MAX_VISIBILITY_RETRIES: u32 = 1_000;
/// A party allocated on one participant reaches the others through the topology broadcast;
/// an IOU issued before it arrived is refused `NOT_FOUND` and retried this often, 20 ms apart.
const MAX_PARTY_RETRIES: u32 = 500;
const PARTY_RETRY_DELAY: Duration = Duration::from_millis(20);

/// The participant (index into [`Parties::clients`]) hosting the bank, which signs every
/// transfer.
pub const BANK_PARTICIPANT: usize = 0;
/// The participants hosting alice and bob, by owner index: transfers are submitted there.
pub const OWNER_PARTICIPANTS: [usize; 2] = [1, 2];

/// Clients and parties of a deployment with at least three participants.
#[derive(Clone)]
pub struct Parties {
    pub bank: PartyId,
    /// alice, bob.
    pub owners: [PartyId; 2],
    /// Ledger clients for participants 1, 2, 3.
    pub clients: [LedgerClient; 3],
}

fn party(name: &str) -> PartyId {
    PartyId::new(name).expect("static party names are valid")
}

impl Parties {
    /// Allocates (idempotently) bank on participant 1, alice on 2 and bob on 3.
    pub async fn allocate(deployment: &Deployment, user: &UserId) -> anyhow::Result<Parties> {
        Self::allocate_with(deployment, user, meridian_client::Backoff::default()).await
    }

    /// As [`Parties::allocate`], with the clients' retry backoff (failover measurements use a
    /// short one so that backoff sleeps do not inflate the recovery time).
    pub async fn allocate_with(
        deployment: &Deployment,
        user: &UserId,
        backoff: meridian_client::Backoff,
    ) -> anyhow::Result<Parties> {
        if deployment.participants.len() < 3 {
            bail!("the workload needs three participants");
        }
        let endpoints: Vec<Vec<String>> = (0..3).map(|i| deployment.ledger_endpoints(i)).collect();
        let ids: Vec<&str> = deployment.participant_ids[..3]
            .iter()
            .map(|id| id.as_str())
            .collect();
        Self::allocate_on(
            &endpoints,
            &ids,
            deployment.ledger_auth.as_ref(),
            user,
            backoff,
        )
        .await
    }

    /// As [`Parties::allocate_with`], for a deployment this process did not start (the
    /// controller's): each participant's Ledger API endpoints, its id, and the deployment's
    /// Ledger API signing key when the participants verify tokens.
    pub async fn allocate_on(
        endpoints: &[Vec<String>],
        participant_ids: &[&str],
        ledger_auth: Option<&crate::secrets::LedgerAuth>,
        user: &UserId,
        backoff: meridian_client::Backoff,
    ) -> anyhow::Result<Parties> {
        if endpoints.len() < 3 || participant_ids.len() < 3 {
            bail!("the workload needs three participants");
        }
        let client = |i: usize| {
            let client =
                LedgerClient::new(&endpoints[i], user.clone()).map(|c| c.with_backoff(backoff))?;
            // With `[ledger_auth]`, each client acts as the workload's parties and may
            // allocate them, with tokens renewed before they expire.
            Ok::<_, anyhow::Error>(match ledger_auth {
                Some(auth) => {
                    client.with_token_source(auth.token_source(crate::secrets::lab_grant(
                        participant_ids[i],
                        user.as_str(),
                        &["bank", "alice", "bob"],
                    )))
                }
                None => client,
            })
        };
        let clients = [client(0)?, client(1)?, client(2)?];
        let parties = Parties {
            bank: party("bank"),
            owners: [party("alice"), party("bob")],
            clients,
        };
        parties.clients[0].allocate_party(&parties.bank).await?;
        parties.clients[1]
            .allocate_party(&parties.owners[0])
            .await?;
        parties.clients[2]
            .allocate_party(&parties.owners[1])
            .await?;
        Ok(parties)
    }

    fn owner_client(&self, owner: usize) -> &LedgerClient {
        &self.clients[OWNER_PARTICIPANTS[owner]]
    }
}

/// One lane's IOU and who owns it now (0 = alice, 1 = bob).
#[derive(Debug, Clone)]
pub struct Lane {
    pub index: usize,
    pub amount: u64,
    pub contract: Contract,
    pub owner: usize,
}

/// Issues one IOU per lane to alice. Amounts are unique per lane and run.
pub async fn issue_lanes(parties: &Parties, lanes: usize, run: &str) -> anyhow::Result<Vec<Lane>> {
    let base = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        % 1_000_000)
        * 100_000;
    let mut out = Vec::with_capacity(lanes);
    let template = TemplateId::new("Iou").expect("static template id");
    let issue_tasks: Vec<_> = (0..lanes)
        .map(|index| {
            let parties = parties.clone();
            let template = template.clone();
            let run = run.to_owned();
            tokio::spawn(async move {
                let amount = base + index as u64 + 1;
                let payload = IouPayload {
                    issuer: parties.bank.clone(),
                    owner: parties.owners[0].clone(),
                    amount,
                    currency: CURRENCY.into(),
                };
                let command_id = CommandId::new(format!("{run}-issue-{index}"))?;
                let commands = [Command::Create {
                    template,
                    payload: payload.to_value(),
                }];
                let act_as = BTreeSet::from([parties.bank.clone()]);
                let mut attempts = 0;
                let outcome = loop {
                    attempts += 1;
                    match parties.clients[0]
                        .submit_and_wait(&command_id, &act_as, &commands)
                        .await
                    {
                        Err(ClientError::Rejected {
                            code: tonic::Code::NotFound,
                            ..
                        }) if attempts < MAX_PARTY_RETRIES => {
                            tokio::time::sleep(PARTY_RETRY_DELAY).await;
                        }
                        other => {
                            break other
                                .with_context(|| format!("issuing the IOU of lane {index}"))?
                        }
                    }
                };
                let contract = match outcome {
                    SubmitOutcome::Committed(committed) => committed.created.into_iter().next(),
                    SubmitOutcome::AlreadyProcessed { .. } => None,
                };
                let contract = match contract {
                    Some(contract) => contract,
                    None => {
                        find_lane_iou(&parties, amount)
                            .await?
                            .context("an issued IOU is not in the bank's active contracts")?
                            .0
                    }
                };
                anyhow::Ok(Lane {
                    index,
                    amount,
                    contract,
                    owner: 0,
                })
            })
        })
        .collect();
    for task in issue_tasks {
        out.push(task.await??);
    }
    Ok(out)
}

/// Finds the lane's IOU in the bank's ACS on participant 1: (contract, owner index).
async fn find_lane_iou(
    parties: &Parties,
    amount: u64,
) -> anyhow::Result<Option<(Contract, usize)>> {
    let (_, contracts) = parties.clients[0]
        .active_contracts(&BTreeSet::from([parties.bank.clone()]))
        .await?;
    for contract in contracts {
        if let Ok(iou) = Iou::payload(&contract) {
            if iou.amount == amount {
                let owner = usize::from(iou.owner == parties.owners[1]);
                return Ok(Some((contract, owner)));
            }
        }
    }
    Ok(None)
}

#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub duration: Duration,
    /// Target transfers per second in total; `None` = as fast as the lanes go.
    pub rate: Option<u64>,
    pub run: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct WorkloadReport {
    pub committed: u64,
    pub tx_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// Failed attempts by status code name, e.g. `Aborted`.
    pub rejections: BTreeMap<String, u64>,
    /// Attempts retried by the client with the same command id (outcome was unknown).
    pub retried_submissions: u64,
    /// Transfers re-tried because the new owner's participant had not yet committed the
    /// previous transfer (NOT_FOUND right after a commit elsewhere).
    pub visibility_waits: u64,
    /// The first few failures' messages (at most [`MAX_FAILURE_SAMPLES`]), to say why.
    pub failure_samples: Vec<String>,
    /// Transaction ids the application was told are committed.
    #[serde(skip)]
    pub committed_transactions: Vec<String>,
    /// When each of `committed_transactions` was acknowledged, in µs since [`Live::epoch`].
    #[serde(skip)]
    pub committed_at_us: Vec<u64>,
}

/// Bound on [`WorkloadReport::failure_samples`].
pub const MAX_FAILURE_SAMPLES: usize = 10;

/// Width of one [`Timeline`] bucket.
pub const TIMELINE_BUCKET_MS: u64 = 100;
/// Buckets a timeline keeps: one hour. Later events are counted in the totals but not charted.
const TIMELINE_BUCKETS: usize = 36_000;
/// Latency samples kept per bucket; at the workload's rates a bucket holds far fewer.
const LATENCY_SAMPLES_PER_BUCKET: usize = 4_096;

/// What happened in each 100 ms since [`Live::epoch`]: commits, failures and the latencies of
/// the commits, so drills can show throughput around a fault and find when it recovered.
pub struct Timeline {
    committed: Box<[AtomicU64]>,
    failed: Box<[AtomicU64]>,
    latencies_us: Mutex<Vec<Vec<u32>>>,
    /// What the machine's CPUs did, by bucket (from [`machine_cpu::sample_into`]).
    cpu: Mutex<Vec<CpuJiffies>>,
}

impl Default for Timeline {
    fn default() -> Self {
        let counters = || (0..TIMELINE_BUCKETS).map(|_| AtomicU64::new(0)).collect();
        Self {
            committed: counters(),
            failed: counters(),
            latencies_us: Mutex::new(Vec::new()),
            cpu: Mutex::new(Vec::new()),
        }
    }
}

/// The index of the 100 ms bucket `elapsed` falls in.
fn bucket_index(elapsed: Duration) -> usize {
    usize::try_from(elapsed.as_millis() / u128::from(TIMELINE_BUCKET_MS)).unwrap_or(usize::MAX)
}

/// One bucket of a [`Timeline`] snapshot.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TimelineBucket {
    pub committed: u64,
    pub failed: u64,
    /// p99 latency of the commits acknowledged in this bucket; `None` if there were none.
    pub latency_p99_ms: Option<f64>,
}

impl Timeline {
    /// The bucket `elapsed` (since [`Live::epoch`]) falls in, if the timeline still has it.
    fn bucket(elapsed: Duration) -> Option<usize> {
        Some(bucket_index(elapsed)).filter(|b| *b < TIMELINE_BUCKETS)
    }

    /// A commit acknowledged `elapsed` after the epoch, `latency` after it was sent.
    pub(crate) fn record_commit(&self, elapsed: Duration, latency: Duration) {
        let Some(bucket) = Self::bucket(elapsed) else {
            return;
        };
        self.committed[bucket].fetch_add(1, Ordering::Relaxed);
        let latency_us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let mut latencies = lock(&self.latencies_us);
        if latencies.len() <= bucket {
            latencies.resize_with(bucket + 1, Vec::new);
        }
        if latencies[bucket].len() < LATENCY_SAMPLES_PER_BUCKET {
            latencies[bucket].push(latency_us);
        }
    }

    fn record_failure(&self, elapsed: Duration) {
        if let Some(bucket) = Self::bucket(elapsed) {
            self.failed[bucket].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// CPU time the machine spent in the bucket `elapsed` after the epoch falls in.
    pub(crate) fn record_cpu(&self, elapsed: Duration, spent: CpuJiffies) {
        let Some(bucket) = Self::bucket(elapsed) else {
            return;
        };
        let mut cpu = lock(&self.cpu);
        if cpu.len() <= bucket {
            cpu.resize(bucket + 1, CpuJiffies::default());
        }
        cpu[bucket] = cpu[bucket].plus(spent);
    }

    /// CPU time the machine spent in buckets `from..to` (clamped).
    pub fn cpu_between(&self, from: usize, to: usize) -> CpuJiffies {
        let cpu = lock(&self.cpu);
        let to = to.min(cpu.len());
        cpu[from.min(to)..to]
            .iter()
            .fold(CpuJiffies::default(), |sum, spent| sum.plus(*spent))
    }

    /// The commit counters of buckets `from..to`, clamped to the timeline.
    fn committed_range(&self, from: usize, to: usize) -> impl Iterator<Item = u64> + '_ {
        let to = to.min(TIMELINE_BUCKETS);
        self.committed[from.min(to)..to]
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
    }

    /// Commits in each of buckets `from..to` (clamped to the timeline).
    pub fn committed_per_bucket(&self, from: usize, to: usize) -> Vec<u64> {
        self.committed_range(from, to).collect()
    }

    /// Commits in buckets `from..to` (clamped to the timeline).
    pub fn committed_between(&self, from: usize, to: usize) -> u64 {
        self.committed_range(from, to).sum()
    }

    /// The mean latency of the commits acknowledged in buckets `from..to` (clamped; from the
    /// samples each bucket keeps), or `None` if there were none.
    pub fn mean_latency_ms(&self, from: usize, to: usize) -> Option<f64> {
        let latencies = lock(&self.latencies_us);
        let to = to.min(latencies.len());
        let samples = latencies[from.min(to)..to].iter().flatten();
        let (count, sum_us) = samples.fold((0u64, 0u64), |(count, sum), latency| {
            (count + 1, sum.saturating_add(u64::from(*latency)))
        });
        (count > 0).then(|| sum_us as f64 / count as f64 / 1_000.0)
    }

    /// Buckets `0..up_to` (clamped), with each bucket's latency p99.
    pub fn snapshot(&self, up_to: usize) -> Vec<TimelineBucket> {
        let up_to = up_to.min(TIMELINE_BUCKETS);
        let latencies = lock(&self.latencies_us);
        (0..up_to)
            .map(|b| {
                let latency_p99_ms = latencies.get(b).filter(|l| !l.is_empty()).map(|l| {
                    let mut sorted = l.clone();
                    sorted.sort_unstable();
                    let rank = (sorted.len() * 99).div_ceil(100).saturating_sub(1);
                    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1_000.0
                });
                TimelineBucket {
                    committed: self.committed[b].load(Ordering::Relaxed),
                    failed: self.failed[b].load(Ordering::Relaxed),
                    latency_p99_ms,
                }
            })
            .collect()
    }
}

/// Shared live counters, also read by the progress display.
#[derive(Default)]
pub struct Live {
    pub committed: AtomicU64,
    pub failed: AtomicU64,
    /// Attempts the client retried with the same command id (outcome was unknown).
    pub retried: AtomicU64,
    pub timeline: Timeline,
    /// Per submitting participant (index 0..3): when its last commit was acknowledged, in
    /// microseconds since [`Live::epoch`]. Failover measurements read it.
    pub last_commit_us: [AtomicU64; 3],
    /// Per submitting participant: the latest submission start among its acknowledged
    /// commits, in microseconds since [`Live::epoch`]. Past a fault, it says that a request
    /// *sent after* the fault has committed, which a request merely finishing late does not.
    pub last_committed_send_us: [AtomicU64; 3],
    /// Failed attempts whose message mentions a timeout (mediator TIMEOUT verdicts).
    pub timeouts: AtomicU64,
    /// Every failure, when it happened (µs since [`Live::epoch`]) and whether it was a
    /// timeout, so that each can be attributed to the fault it falls under after the run.
    /// Bounded: past [`MAX_RECORDED_FAILURES`] only the counters go on.
    failures: Mutex<Vec<FailureAt>>,
    epoch: std::sync::OnceLock<Instant>,
}

/// Bound on the failures a [`Live`] keeps one by one (a broken run fails far fewer requests
/// than this; the counters keep counting past it).
pub const MAX_RECORDED_FAILURES: usize = 1_000_000;

/// One failed request: when (µs since [`Live::epoch`]), and whether it was a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureAt {
    pub at_us: u64,
    pub timed_out: bool,
}

impl Live {
    /// The reference instant of `last_commit_us`.
    pub fn epoch(&self) -> Instant {
        *self.epoch.get_or_init(Instant::now)
    }

    /// Microseconds from [`Live::epoch`] to `at` (0 before it).
    pub fn micros_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch()).as_micros()).unwrap_or(u64::MAX)
    }

    /// Which timeline bucket `at` falls in (possibly past the timeline's end).
    pub fn bucket_of(&self, at: Instant) -> usize {
        bucket_index(at.saturating_duration_since(self.epoch()))
    }

    fn record_failure(&self, timed_out: bool) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if timed_out {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        let elapsed = self.epoch().elapsed();
        self.timeline.record_failure(elapsed);
        let mut failures = lock(&self.failures);
        if failures.len() < MAX_RECORDED_FAILURES {
            failures.push(FailureAt {
                at_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                timed_out,
            });
        }
    }

    /// Every failure so far, in the order they happened.
    pub fn failures(&self) -> Vec<FailureAt> {
        lock(&self.failures).clone()
    }

    /// An outcome that took `attempts` attempts: all but the first were retries.
    fn record_retries(&self, attempts: u32) {
        self.retried
            .fetch_add(u64::from(attempts.saturating_sub(1)), Ordering::Relaxed);
    }

    fn record_commit(&self, participant: usize, sent: Instant) {
        self.timeline
            .record_commit(self.epoch().elapsed(), sent.elapsed());
        let now = self.micros_since_epoch(Instant::now());
        let sent = self.micros_since_epoch(sent).max(1);
        if let Some(slot) = self.last_commit_us.get(participant) {
            slot.fetch_max(now, Ordering::Relaxed);
        }
        if let Some(slot) = self.last_committed_send_us.get(participant) {
            slot.fetch_max(sent, Ordering::Relaxed);
        }
    }

    /// Whether a request submitted through participant `index` after `since` has committed.
    pub fn committed_a_request_sent_after(&self, index: usize, since: Instant) -> bool {
        self.last_committed_send_us
            .get(index)
            .map(|slot| slot.load(Ordering::Relaxed))
            .is_some_and(|sent| sent > 0 && self.epoch() + Duration::from_micros(sent) > since)
    }

    /// When participant `index` last acknowledged a commit, if ever.
    pub fn last_commit(&self, index: usize) -> Option<Instant> {
        let micros = self.last_commit_us.get(index)?.load(Ordering::Relaxed);
        (micros > 0).then(|| self.epoch() + Duration::from_micros(micros))
    }
}

/// How long a [`BackgroundLoad`] runs if nobody stops it: a bound, not a plan.
const BACKGROUND_LOAD_LIMIT: Duration = Duration::from_secs(24 * 3_600);

/// What load a [`BackgroundLoad`] puts on a deployment.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The application user of the clients.
    pub user: UserId,
    /// The clients' retry backoff (failover measurements use a short one so that backoff
    /// sleeps do not inflate the recovery time).
    pub backoff: meridian_client::Backoff,
    /// Concurrent transfer lanes, each owning one IOU.
    pub lanes: usize,
    /// Tags the run's command ids, so a second run on the same ledger does not collide.
    pub run: String,
    /// Target transfers per second in total; `None` = as fast as the lanes go.
    pub rate: Option<u64>,
    /// How long the load runs by itself; `None` = until it is stopped (bounded by a day).
    pub duration: Option<Duration>,
}

impl LoadSpec {
    /// Transfers as fast as `lanes` go until stopped, by `user`, whose name and this
    /// process's id tag the run.
    pub fn until_stopped(
        user: &str,
        backoff: meridian_client::Backoff,
        lanes: u64,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            user: UserId::new(user)?,
            backoff,
            lanes: usize::try_from(lanes)?,
            run: format!("{user}{}", std::process::id()),
            rate: None,
            duration: None,
        })
    }
}

/// How a [`BackgroundLoad`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadEnd {
    /// Stop the transfers now.
    Stop,
    /// Let the load run for its [`LoadSpec::duration`].
    RunOut,
}

/// The transfer workload running in the background while faults are injected — by the
/// experiments (demo, benchmarks, drills) and the HA tests — and what its audit needs
/// afterwards.
pub struct BackgroundLoad {
    pub parties: Parties,
    /// Commits, failures and latencies as they happen, from [`Live::epoch`] (set at start).
    pub live: Arc<Live>,
    /// When the transfers started (after the parties, the IOUs and the audit baseline).
    pub started: Instant,
    baseline: AuditBaseline,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<WorkloadReport>>,
    /// Stops the sampling of the machine's CPUs into `live` when the load is ended or dropped.
    _sampling: tokio_util::sync::DropGuard,
}

/// A [`BackgroundLoad`] whose transfers ended, not audited yet.
pub struct EndedLoad {
    pub report: WorkloadReport,
    pub parties: Parties,
    /// When the transfers started.
    pub started: Instant,
    baseline: AuditBaseline,
}

/// A stopped [`BackgroundLoad`]: its report, and the ledgers' audit against it.
pub struct FinishedLoad {
    pub report: WorkloadReport,
    pub audit: Audit,
    pub parties: Parties,
}

impl BackgroundLoad {
    /// Allocates the parties (their clients retrying with `backoff`), issues `lanes` IOUs
    /// tagged `run`, takes the audit baseline and starts transferring, until [`finish`] or
    /// `shutdown`.
    ///
    /// [`finish`]: BackgroundLoad::finish
    pub async fn start(
        deployment: &Deployment,
        user: &UserId,
        backoff: meridian_client::Backoff,
        lanes: usize,
        run: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let spec = LoadSpec {
            user: user.clone(),
            backoff,
            lanes,
            run: run.to_owned(),
            rate: None,
            duration: None,
        };
        Self::start_with(deployment, &spec, shutdown).await
    }

    /// As [`BackgroundLoad::start`], for any [`LoadSpec`].
    pub async fn start_with(
        deployment: &Deployment,
        spec: &LoadSpec,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let parties = Parties::allocate_with(deployment, &spec.user, spec.backoff).await?;
        let lane_states = issue_lanes(&parties, spec.lanes, &spec.run).await?;
        let baseline = baseline(&parties).await?;
        let live = Arc::new(Live::default());
        live.epoch();
        let stop = shutdown.child_token();
        let transfers = WorkloadSpec {
            duration: spec.duration.unwrap_or(BACKGROUND_LOAD_LIMIT),
            rate: spec.rate,
            run: spec.run.clone(),
        };
        let started = Instant::now();
        let sampling = stop.child_token();
        tokio::spawn(machine_cpu::sample_into(
            Duration::from_millis(TIMELINE_BUCKET_MS),
            {
                let live = live.clone();
                move |spent| live.timeline.record_cpu(live.epoch().elapsed(), spent)
            },
            sampling.clone(),
        ));
        let task = {
            let (parties, live, stop) = (parties.clone(), live.clone(), stop.clone());
            tokio::spawn(async move {
                run_transfers(&parties, lane_states, &transfers, live, stop).await
            })
        };
        Ok(Self {
            parties,
            live,
            started,
            baseline,
            stop,
            task,
            _sampling: sampling.drop_guard(),
        })
    }

    /// Ends the transfers as `how` says and waits for every lane to finish.
    pub async fn end(self, how: LoadEnd) -> anyhow::Result<EndedLoad> {
        if how == LoadEnd::Stop {
            self.stop.cancel();
        }
        let report = self.task.await.context("the workload task panicked")??;
        Ok(EndedLoad {
            report,
            parties: self.parties,
            started: self.started,
            baseline: self.baseline,
        })
    }

    /// Stops the transfers and audits the ledgers against what the application was told.
    pub async fn finish(self) -> anyhow::Result<FinishedLoad> {
        self.end(LoadEnd::Stop).await?.audit().await
    }
}

impl EndedLoad {
    /// Audits the ledgers against what the application was told.
    pub async fn audit(self) -> anyhow::Result<FinishedLoad> {
        let audit = audit(
            &self.parties,
            &self.baseline,
            &self.report.committed_transactions,
        )
        .await?;
        Ok(FinishedLoad {
            report: self.report,
            audit,
            parties: self.parties,
        })
    }
}

/// Runs the transfer workload until `duration` passes or `stop` is cancelled.
pub async fn run_transfers(
    parties: &Parties,
    lanes: Vec<Lane>,
    spec: &WorkloadSpec,
    live: Arc<Live>,
    stop: CancellationToken,
) -> anyhow::Result<WorkloadReport> {
    let started = Instant::now();
    let tally = Arc::new(Tally::new(live));
    let lane_count = lanes.len().max(1) as u64;
    let pace = Pace {
        deadline: started + spec.duration,
        interval: spec
            .rate
            .filter(|r| *r > 0)
            .map(|rate| Duration::from_secs_f64(lane_count as f64 / rate as f64)),
        lane_count,
    };
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let driver = LaneDriver {
                parties: parties.clone(),
                tally: tally.clone(),
                run: spec.run.clone(),
                stop: stop.clone(),
            };
            tokio::spawn(driver.drive(lane, pace))
        })
        .collect();
    for task in tasks {
        task.await.context("a workload lane panicked")?;
    }
    Ok(tally.report(started.elapsed()))
}

/// When the lanes send: until `deadline`, each every `interval` (staggered over the lanes)
/// or, without one, as fast as its answers come.
#[derive(Debug, Clone, Copy)]
struct Pace {
    deadline: Instant,
    interval: Option<Duration>,
    lane_count: u64,
}

/// What the lanes of one run record together.
struct Tally {
    live: Arc<Live>,
    latencies: Mutex<Histogram<u64>>,
    rejections: Mutex<BTreeMap<String, u64>>,
    /// Acknowledged transaction ids, each with when it was acknowledged (µs since the epoch).
    committed_ids: Mutex<Vec<(String, u64)>>,
    visibility_waits: AtomicU64,
    failure_samples: Mutex<Vec<String>>,
}

impl Tally {
    fn new(live: Arc<Live>) -> Self {
        Self {
            live,
            latencies: Mutex::new(
                Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("static bounds"),
            ),
            rejections: Mutex::default(),
            committed_ids: Mutex::default(),
            visibility_waits: AtomicU64::new(0),
            failure_samples: Mutex::default(),
        }
    }

    /// A transfer sent at `sent` through `participant` committed after `attempts` attempts.
    fn committed(&self, participant: usize, sent: Instant, attempts: u32, transaction_id: String) {
        let micros = sent.elapsed().as_micros().max(1) as u64;
        let _ = lock(&self.latencies).record(micros);
        self.live.record_retries(attempts);
        self.live.record_commit(participant, sent);
        self.live.committed.fetch_add(1, Ordering::Relaxed);
        lock(&self.committed_ids)
            .push((transaction_id, self.live.micros_since_epoch(Instant::now())));
    }

    /// A transfer that an earlier attempt had committed already.
    fn already_committed(&self, attempts: u32) {
        self.live.record_retries(attempts);
        self.live.committed.fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self, lane: usize, error: &ClientError) {
        tracing::debug!(lane, %error, "transfer failed");
        self.live
            .record_failure(error.to_string().to_lowercase().contains("timeout"));
        *lock(&self.rejections)
            .entry(error_label(error))
            .or_default() += 1;
        let mut samples = lock(&self.failure_samples);
        if samples.len() < MAX_FAILURE_SAMPLES {
            samples.push(format!("lane {lane}: {error}"));
        }
    }

    fn report(&self, elapsed: Duration) -> WorkloadReport {
        let elapsed = elapsed.as_secs_f64().max(1e-3);
        let latencies = lock(&self.latencies).clone();
        let committed = self.live.committed.load(Ordering::Relaxed);
        let (committed_transactions, committed_at_us) =
            lock(&self.committed_ids).iter().cloned().unzip();
        WorkloadReport {
            committed,
            tx_per_s: committed as f64 / elapsed,
            latency_p50_ms: quantile_ms(&latencies, 0.5),
            latency_p99_ms: quantile_ms(&latencies, 0.99),
            latency_max_ms: latencies.max() as f64 / 1_000.0,
            rejections: lock(&self.rejections).clone(),
            retried_submissions: self.live.retried.load(Ordering::Relaxed),
            visibility_waits: self.visibility_waits.load(Ordering::Relaxed),
            failure_samples: lock(&self.failure_samples).clone(),
            committed_transactions,
            committed_at_us,
        }
    }
}

/// One lane's transfers, back and forth between alice and bob.
struct LaneDriver {
    parties: Parties,
    tally: Arc<Tally>,
    run: String,
    stop: CancellationToken,
}

impl LaneDriver {
    async fn drive(self, mut lane: Lane, pace: Pace) {
        let mut ticker = pace.interval.map(|every| {
            let offset = every.mul_f64(lane.index as f64 / pace.lane_count as f64);
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut sequence = 0u64;
        let mut not_yet_visible = 0u32;
        while Instant::now() < pace.deadline && !self.stop.is_cancelled() {
            if let Some(ticker) = ticker.as_mut() {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = self.stop.cancelled() => break,
                }
            }
            sequence += 1;
            let (from, to) = (lane.owner, 1 - lane.owner);
            let sent = Instant::now();
            match self.transfer(&lane, sequence, to).await {
                Ok(SubmitOutcome::Committed(committed)) => {
                    self.tally.committed(
                        OWNER_PARTICIPANTS[from],
                        sent,
                        committed.attempts,
                        committed.transaction_id,
                    );
                    not_yet_visible = 0;
                    match committed.created.into_iter().next() {
                        Some(next) => {
                            lane.contract = next;
                            lane.owner = to;
                        }
                        // Not in the acting party's view (a retry's answer read from the
                        // transaction stream): the IOU was consumed all the same, so wait
                        // for its successor as for `AlreadyProcessed`.
                        None => {
                            let consumed = lane.contract.id.clone();
                            resync_past(&self.parties, &mut lane, &consumed).await;
                        }
                    }
                }
                Ok(SubmitOutcome::AlreadyProcessed { attempts, .. }) => {
                    self.tally.already_committed(attempts);
                    // The earlier attempt consumed the lane's IOU; the bank's participant may
                    // not have applied that commit yet, so wait until it shows the successor
                    // rather than transferring the archived one again.
                    let consumed = lane.contract.id.clone();
                    resync_past(&self.parties, &mut lane, &consumed).await;
                }
                // The new owner's participant commits the previous transfer a moment after
                // the submitter's did: until then the IOU is unknown there. An application
                // waits for it, as this lane does (bounded).
                Err(ClientError::Rejected {
                    code: tonic::Code::NotFound,
                    ..
                }) if not_yet_visible < MAX_VISIBILITY_RETRIES => {
                    not_yet_visible += 1;
                    self.tally.visibility_waits.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(VISIBILITY_RETRY_DELAY).await;
                }
                Err(error) => {
                    self.tally.failed(lane.index, &error);
                    // The outcome may be unknown: find the IOU where it really is.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    resync(&self.parties, &mut lane).await;
                }
            }
        }
    }

    /// Transfers the lane's IOU from its owner to owner `to`, as transfer `sequence`.
    async fn transfer(
        &self,
        lane: &Lane,
        sequence: u64,
        to: usize,
    ) -> Result<SubmitOutcome, ClientError> {
        let parties = &self.parties;
        let command_id = CommandId::new(format!("{}-lane{}-{sequence}", self.run, lane.index))
            .expect("generated command ids are valid");
        let command = Command::Exercise {
            contract_id: lane.contract.id.clone(),
            choice: "Transfer".into(),
            argument: serde_json::json!({ "new_owner": parties.owners[to].as_str() }),
        };
        parties
            .owner_client(lane.owner)
            .submit_and_wait(
                &command_id,
                &BTreeSet::from([parties.owners[lane.owner].clone()]),
                std::slice::from_ref(&command),
            )
            .await
    }
}

/// How long [`resync_past`] waits for the bank's participant to show a lane's new IOU.
const RESYNC_ATTEMPTS: u32 = 100;
const RESYNC_DELAY: Duration = Duration::from_millis(50);

/// Like [`resync`], but only accepts an IOU other than `consumed` (bounded wait).
async fn resync_past(parties: &Parties, lane: &mut Lane, consumed: &ContractId) {
    for _ in 0..RESYNC_ATTEMPTS {
        match find_lane_iou(parties, lane.amount).await {
            Ok(Some((contract, owner))) if contract.id != *consumed => {
                lane.contract = contract;
                lane.owner = owner;
                return;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(lane = lane.index, %error, "cannot look the lane IOU up yet")
            }
        }
        tokio::time::sleep(RESYNC_DELAY).await;
    }
    tracing::warn!(
        lane = lane.index,
        "the lane's new IOU did not appear; keeping the last known one"
    );
}

async fn resync(parties: &Parties, lane: &mut Lane) {
    match find_lane_iou(parties, lane.amount).await {
        Ok(Some((contract, owner))) => {
            lane.contract = contract;
            lane.owner = owner;
        }
        Ok(None) => tracing::warn!(
            lane = lane.index,
            "lane IOU not found; keeping the last known one"
        ),
        Err(error) => tracing::warn!(lane = lane.index, %error, "cannot look the lane IOU up"),
    }
}

fn error_label(error: &ClientError) -> String {
    match error {
        ClientError::Rejected { code, .. } => format!("{code:?}"),
        ClientError::Unavailable { .. } => "Unavailable".into(),
        ClientError::Timeout { .. } => "Timeout".into(),
        other => format!("{other}"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The ledger audit after a workload.
#[derive(Debug, Clone, Serialize)]
pub struct Audit {
    /// Sum of all IOU amounts in the bank's view before and after the workload.
    pub total_before: u128,
    pub total_after: u128,
    pub amounts_conserved: bool,
    /// The same set of IOUs on the issuer's participant as on the owners' participants.
    pub views_agree: bool,
    /// Acknowledged transactions checked on each of the three informee participants.
    pub acknowledged_checked: usize,
    /// Acknowledged transactions missing on some informee participant (must be 0).
    pub acknowledged_missing: usize,
    /// Their ids.
    pub missing_transactions: Vec<String>,
    pub audit_ok: bool,
}

/// The bank's total and each participant's ledger end, taken before the workload.
#[derive(Debug, Clone)]
pub struct AuditBaseline {
    pub total: u128,
    pub offsets: [u64; 3],
}

/// The ledger end and the IOUs (id → amount) that `party` sees through `client`.
async fn iou_view(
    (client, party): (&LedgerClient, &PartyId),
) -> anyhow::Result<(u64, BTreeMap<String, u64>)> {
    let (offset, contracts) = client
        .active_contracts(&BTreeSet::from([party.clone()]))
        .await?;
    let ious = contracts
        .iter()
        .filter_map(|c| {
            Iou::payload(c)
                .ok()
                .map(|iou| (c.id.to_string(), iou.amount))
        })
        .collect();
    Ok((offset, ious))
}

/// Each informee participant's client with the party whose view is audited there: the
/// bank's, alice's and bob's.
fn informees(parties: &Parties) -> [(&LedgerClient, &PartyId); 3] {
    [
        (&parties.clients[BANK_PARTICIPANT], &parties.bank),
        (&parties.clients[OWNER_PARTICIPANTS[0]], &parties.owners[0]),
        (&parties.clients[OWNER_PARTICIPANTS[1]], &parties.owners[1]),
    ]
}

/// Each informee's ledger end and IOUs (id → amount), in [`informees`] order.
async fn iou_views(parties: &Parties) -> anyhow::Result<[(u64, BTreeMap<String, u64>); 3]> {
    let [bank, alice, bob] = informees(parties);
    Ok([
        iou_view(bank).await?,
        iou_view(alice).await?,
        iou_view(bob).await?,
    ])
}

pub async fn baseline(parties: &Parties) -> anyhow::Result<AuditBaseline> {
    let [(o1, bank), (o2, _), (o3, _)] = iou_views(parties).await?;
    Ok(AuditBaseline {
        total: bank.values().map(|a| u128::from(*a)).sum(),
        offsets: [o1, o2, o3],
    })
}

/// How often the audit looks again before it concludes: participants commit a verdict
/// independently, and a replica promoted just before (a drill restarts nodes right up to its
/// end) may drop a stream or refuse a call for a moment.
const AUDIT_ATTEMPTS: u32 = 10;
const AUDIT_RETRY_DELAY: Duration = Duration::from_millis(300);

/// Checks conservation, agreement between the participants' views, and that every
/// acknowledged transaction is on every informee participant.
pub async fn audit(
    parties: &Parties,
    baseline: &AuditBaseline,
    acknowledged: &[String],
) -> anyhow::Result<Audit> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match audit_once(parties, baseline, acknowledged).await {
            Ok(audit) if audit.audit_ok || attempt >= AUDIT_ATTEMPTS => return Ok(audit),
            Ok(_) => {}
            Err(error) if attempt < AUDIT_ATTEMPTS => {
                tracing::warn!(attempt, "auditing failed; trying again: {error:#}");
            }
            Err(error) => return Err(error),
        }
        tokio::time::sleep(AUDIT_RETRY_DELAY).await;
    }
}

/// One look at the participants' views for [`audit`].
async fn audit_once(
    parties: &Parties,
    baseline: &AuditBaseline,
    acknowledged: &[String],
) -> anyhow::Result<Audit> {
    let [(end1, bank), (end2, alice), (end3, bob)] = iou_views(parties).await?;
    let total_after: u128 = bank.values().map(|a| u128::from(*a)).sum();
    let owned: BTreeMap<String, u64> = alice.into_iter().chain(bob).collect();
    let bank_owned: BTreeMap<String, u64> = bank.into_iter().collect();
    let views_agree = owned == bank_owned;

    let mut present = Vec::new();
    let ends = [end1, end2, end3];
    for (index, (client, party)) in informees(parties).into_iter().enumerate() {
        let (begin, end) = (baseline.offsets[index], ends[index]);
        let transactions = client
            .transactions(&BTreeSet::from([party.clone()]), begin, end)
            .await
            .with_context(|| format!("reading participant {}'s transactions", index + 1))?;
        present.push(
            transactions
                .into_iter()
                .map(|t| t.transaction_id)
                .collect::<HashSet<String>>(),
        );
    }
    let missing_transactions: Vec<String> = acknowledged
        .iter()
        .filter(|id| !present.iter().all(|set| set.contains(*id)))
        .cloned()
        .collect();
    let missing = missing_transactions.len();
    let amounts_conserved = total_after == baseline.total;
    let audit = Audit {
        total_before: baseline.total,
        total_after,
        amounts_conserved,
        views_agree,
        acknowledged_checked: acknowledged.len(),
        acknowledged_missing: missing,
        missing_transactions,
        audit_ok: amounts_conserved && views_agree && missing == 0,
    };
    Ok(audit)
}

/// IOUs whose (lane-unique) amount exists more than once: a transfer committed twice.
pub async fn duplicate_ious(parties: &Parties) -> anyhow::Result<usize> {
    let (_, contracts) = parties.clients[0]
        .active_contracts(&BTreeSet::from([parties.bank.clone()]))
        .await?;
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for contract in &contracts {
        if let Ok(iou) = Iou::payload(contract) {
            *counts.entry(iou.amount).or_default() += 1;
        }
    }
    Ok(counts.values().filter(|&&n| n > 1).map(|n| n - 1).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_latency_is_over_the_commits_of_the_window_only() {
        let timeline = Timeline::default();
        let at = |bucket: u64, latency_ms: u64| {
            timeline.record_commit(
                Duration::from_millis(bucket * TIMELINE_BUCKET_MS + 1),
                Duration::from_millis(latency_ms),
            );
        };
        at(0, 1_000);
        at(2, 100);
        at(2, 200);
        at(3, 600);
        assert_eq!(timeline.mean_latency_ms(2, 4), Some(300.0));
        assert_eq!(timeline.mean_latency_ms(0, 1), Some(1_000.0));
        assert_eq!(
            timeline.mean_latency_ms(1, 2),
            None,
            "no commit in bucket 1"
        );
        assert_eq!(timeline.mean_latency_ms(3, 99), Some(600.0), "clamped");
        assert_eq!(timeline.mean_latency_ms(7, 5), None);
    }
}
