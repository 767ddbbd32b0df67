//! What the machine's CPUs did while a load ran: the kernel's counters of busy, idle and
//! stolen time (`/proc/stat`), sampled into the load's timeline every bucket. A drill whose
//! throughput does not come back names from them whether the CPUs were saturated, whether the
//! host took time from this machine and what a commit cost in CPU before and after the fault,
//! which is what tells "the deployment got slower" from "the machine got slower" in a CI log
//! that holds nothing else. A process's own CPU time ([`crate::proc_stat`]) is converted here
//! too, for what a transfer costs each node.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The unit of `/proc/stat`: USER_HZ, which the kernel's ABI fixes at 100 per second whatever
/// its own tick rate.
const JIFFIES_PER_S: u64 = 100;

/// CPU time over all of the machine's CPUs, in jiffies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuJiffies {
    /// Running code: user, nice, system, interrupts.
    pub busy: u64,
    /// Idle, or waiting for I/O with nothing else to run.
    pub idle: u64,
    /// Wanted to run, but the hypervisor ran another guest.
    pub steal: u64,
}

impl CpuJiffies {
    /// The counters since boot; `None` where `/proc/stat` is missing or unreadable.
    pub fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// From the `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq steal
    /// (guest time is already in user and nice, so it is not added again).
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        if fields.len() < 4 {
            return None;
        }
        Some(Self {
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            idle: field(3) + field(4),
            steal: field(7),
        })
    }

    /// What the counters advanced from `earlier` to `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            busy: self.busy.saturating_sub(earlier.busy),
            idle: self.idle.saturating_sub(earlier.idle),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }

    pub fn plus(self, other: Self) -> Self {
        Self {
            busy: self.busy + other.busy,
            idle: self.idle + other.idle,
            steal: self.steal + other.steal,
        }
    }

    fn total(&self) -> u64 {
        self.busy + self.idle + self.steal
    }

    /// Shares of the CPUs' time busy and stolen, in per cent; `None` for an empty window.
    fn shares_percent(&self) -> Option<(f64, f64)> {
        let total = self.total() as f64;
        (total > 0.0).then(|| {
            (
                100.0 * self.busy as f64 / total,
                100.0 * self.steal as f64 / total,
            )
        })
    }
}

/// What the whole machine's CPUs did over a load: every process on it (the nodes, the load's
/// client, a PostgreSQL server, HAProxy) and the kernel's own work (interrupts, I/O), which a
/// sum over the nodes' processes leaves out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineLoad {
    /// Busy CPU time per committed transfer, in ms.
    pub cpu_ms_per_transfer: f64,
    /// The share of the CPUs' time they were busy, in per cent: near 100 means the load
    /// queued for CPU, and latencies measured then include that queueing.
    pub busy_percent: f64,
    /// The share the host took for other guests, in per cent.
    pub steal_percent: f64,
}

impl MachineLoad {
    /// From what the counters advanced over the load (`spent`) and the transfers it committed;
    /// `None` for an empty window or no transfer.
    pub fn of(spent: CpuJiffies, transfers: u64) -> Option<Self> {
        let (busy_percent, steal_percent) = spent.shares_percent()?;
        Some(Self {
            cpu_ms_per_transfer: ms_per(spent.busy, transfers as f64)?,
            busy_percent,
            steal_percent,
        })
    }
}

/// CPU time (user and system) process `pid` has used so far, in jiffies; `None` once it is
/// gone or where `/proc` is missing.
pub fn process_jiffies(pid: u32) -> Option<u64> {
    crate::proc_stat::ProcStat::read(pid)?.cpu_jiffies()
}

/// Milliseconds of CPU per unit of work (a commit, a transfer) from `jiffies` spent on
/// `units`; `None` without work.
pub fn ms_per(jiffies: u64, units: f64) -> Option<f64> {
    (units > 0.0).then(|| jiffies as f64 * 1_000.0 / JIFFIES_PER_S as f64 / units)
}

/// Hands `record` what the CPUs did in each `interval` until `stop`; a machine without
/// `/proc/stat` records nothing. The caller decides where a sample goes (a load's timeline),
/// so this module knows nothing of loads.
pub async fn sample_into(
    interval: Duration,
    mut record: impl FnMut(CpuJiffies) + Send,
    stop: CancellationToken,
) {
    let Some(mut previous) = CpuJiffies::read() else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(now) = CpuJiffies::read() else {
            return;
        };
        record(now.since(previous));
        previous = now;
    }
}

/// How a window's CPU use compares with the one before a fault, for a drill's problem line:
/// the shares busy and stolen, the CPU time per commit, and which of them changed. `None`
/// when either window has no samples or no commits.
pub fn describe_change(
    before: CpuJiffies,
    before_commits: f64,
    after: CpuJiffies,
    after_commits: f64,
) -> Option<String> {
    let (busy_before, steal_before) = before.shares_percent()?;
    let (busy_after, steal_after) = after.shares_percent()?;
    let per_commit_before = ms_per(before.busy, before_commits)?;
    let per_commit_after = ms_per(after.busy, after_commits)?;
    let verdict = if steal_after - steal_before >= STEAL_RISE_PERCENT {
        "the host took CPU time from this machine"
    } else if per_commit_after >= PER_COMMIT_RISE * per_commit_before {
        "each commit cost more CPU time: more work per commit (in the deployment or a process beside it) or slower CPUs"
    } else if busy_after <= busy_before - IDLE_RISE_PERCENT {
        "the CPUs idled more: the commits waited on something other than CPU (disk, a lock, a timer)"
    } else {
        "the CPUs were as busy and each commit cost about the same CPU time as before"
    };
    Some(format!(
        "the machine's CPUs were {busy_after:.0} % busy and {steal_after:.0} % stolen by the host against {busy_before:.0} % and {steal_before:.0} % before, {per_commit_after:.1} ms of CPU per commit against {per_commit_before:.1} ms: {verdict}"
    ))
}

/// A rise in the stolen share, in percentage points, that counts as the host taking time.
const STEAL_RISE_PERCENT: f64 = 5.0;
/// A rise in CPU time per commit that counts as each commit costing more.
const PER_COMMIT_RISE: f64 = 1.2;
/// A fall in the busy share, in percentage points, that counts as the CPUs idling more.
const IDLE_RISE_PERCENT: f64 = 10.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_of_proc_stat_is_read_and_bad_text_is_none() {
        let stat = "cpu  3053838 7047 930814 1829913 60269 0 97914 1302 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(
            CpuJiffies::parse(stat),
            Some(CpuJiffies {
                busy: 3_053_838 + 7_047 + 930_814 + 97_914,
                idle: 1_829_913 + 60_269,
                steal: 1_302,
            })
        );
        // Older kernels print fewer columns: what is missing counts as zero.
        assert_eq!(
            CpuJiffies::parse("cpu 10 0 5 85\n"),
            Some(CpuJiffies {
                busy: 15,
                idle: 85,
                steal: 0
            })
        );
        assert_eq!(CpuJiffies::parse("cpu 10 x 5 85\n"), None);
        assert_eq!(CpuJiffies::parse("cpu 10 0\n"), None);
        assert_eq!(CpuJiffies::parse("intr 1 2 3\n"), None);
    }

    #[test]
    fn counters_only_go_forward() {
        let earlier = CpuJiffies {
            busy: 10,
            idle: 20,
            steal: 3,
        };
        let later = CpuJiffies {
            busy: 15,
            idle: 19,
            steal: 5,
        };
        assert_eq!(
            later.since(earlier),
            CpuJiffies {
                busy: 5,
                idle: 0,
                steal: 2
            }
        );
    }

    fn window(busy: u64, idle: u64, steal: u64) -> CpuJiffies {
        CpuJiffies { busy, idle, steal }
    }

    #[test]
    fn the_change_names_what_moved() {
        // 5 s on 2 CPUs: 1,000 jiffies; before, 1,000 commits at 95 % busy.
        let before = window(950, 50, 0);
        let stolen = describe_change(before, 1_000.0, window(850, 50, 100), 700.0).unwrap();
        assert!(
            stolen.starts_with("the machine's CPUs were 85 % busy and 10 % stolen by the host against 95 % and 0 % before, 12.1 ms of CPU per commit against 9.5 ms"),
            "{stolen}"
        );
        assert!(stolen.ends_with("the host took CPU time from this machine"));

        let costlier = describe_change(before, 1_000.0, window(960, 40, 0), 700.0).unwrap();
        assert!(
            costlier.contains("each commit cost more CPU time"),
            "{costlier}"
        );

        let idler = describe_change(before, 1_000.0, window(600, 400, 0), 650.0).unwrap();
        assert!(idler.contains("the CPUs idled more"), "{idler}");

        let same = describe_change(before, 1_000.0, window(940, 60, 0), 980.0).unwrap();
        assert!(same.contains("as busy"), "{same}");

        assert_eq!(
            describe_change(before, 1_000.0, window(0, 0, 0), 10.0),
            None
        );
        assert_eq!(describe_change(before, 0.0, before, 10.0), None);
    }

    #[test]
    fn cpu_time_converts_to_ms_per_unit_of_work() {
        assert_eq!(ms_per(250, 1_000.0), Some(2.5));
        assert_eq!(ms_per(250, 0.0), None);
    }

    #[tokio::test]
    async fn the_sampler_records_what_the_cpus_did_each_interval() {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let sampler = {
            let samples = samples.clone();
            tokio::spawn(sample_into(
                Duration::from_millis(100),
                move |spent| samples.lock().unwrap().push(spent),
                stop.clone(),
            ))
        };
        tokio::time::sleep(Duration::from_millis(450)).await;
        stop.cancel();
        sampler.await.unwrap();
        let samples = samples.lock().unwrap();
        assert!((3..=6).contains(&samples.len()), "{samples:?}");
        let seen = samples
            .iter()
            .fold(CpuJiffies::default(), |sum, s| sum.plus(*s));
        // Four samples 100 ms apart on two or more CPUs: at least 80 jiffies, give or take
        // the tick of each counter.
        assert!(seen.total() >= 60, "{seen:?}");
    }
}
