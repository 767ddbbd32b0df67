//! `meridian bench compare`: runs one bench with two `meridian` binaries (a baseline and a
//! candidate) round after round, alternating which goes first, and prints each round's figures,
//! the candidate/baseline ratio and the medians — so a claim such as "3 × main" is a ratio
//! measured in one run on the same noisy machine, not two figures from different hours.
//!
//! This module is the sans-I/O part: the arguments and their checks (every refusal happens
//! before any bench starts), the metrics each bench reports, the order of the runs, the ratios
//! and medians, and the output. Running a bench as a child process is [`child`]'s job.

mod child;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::BenchCommand;
use crate::stats::quantiles;

pub use child::BinaryInfo;

/// Upper bound on `--rounds`: each round runs the bench twice, so 50 rounds of a 15 s ledger
/// run are already about an hour with deployment start-up.
pub const MAX_ROUNDS: u64 = 50;
/// Upper bound on `--timeout-s`: the longest bench run (`--duration 3600`) plus start-up.
pub const MAX_TIMEOUT_S: u64 = 7_200;

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The `meridian` binary to measure against (e.g. a release build of main).
    #[arg(long)]
    pub baseline: PathBuf,
    /// The `meridian` binary under test.
    #[arg(long)]
    pub candidate: PathBuf,
    /// Rounds; each runs the bench once with each binary, the order alternating (baseline
    /// first in odd rounds, candidate first in even ones).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=MAX_ROUNDS))]
    pub rounds: u64,
    /// The field of the bench's JSON report to compare (default: `tx_per_s` for `ledger`,
    /// `submissions_per_s` for `sequencer`; docs/benchmarks.md lists the others).
    #[arg(long)]
    pub metric: Option<String>,
    /// Seconds one bench run may take, start-up included, before it is stopped (SIGTERM,
    /// then SIGKILL of its process group) and the comparison fails.
    #[arg(long = "timeout-s", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_S))]
    pub timeout_s: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The bench and its arguments, after `--`: e.g. `-- ledger --duration 15`. Each run is
    /// `<binary> bench <these> --json`.
    #[arg(last = true, required = true, value_name = "BENCH ARGS")]
    pub bench: Vec<String>,
}

/// Why a comparison was refused or stopped. The refusals (everything up to
/// [`CompareError::TimeoutTooShort`]) happen before any bench starts.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("--{flag} {path}: {problem}")]
    Binary {
        flag: &'static str,
        path: String,
        problem: String,
    },
    #[error("--rounds {0}: must be between 1 and {MAX_ROUNDS}")]
    Rounds(u64),
    #[error("the bench arguments after `--` do not parse: {0}")]
    BenchArgs(String),
    #[error(
        "bench compare reads one figure per run from `bench ledger` or `bench sequencer`, \
         not `bench {0}`"
    )]
    UnsupportedBench(String),
    #[error(
        "bench compare reads one figure per run; `bench ledger --replication` prints a table \
         of cells: compare one cell at a time (e.g. `-- ledger --backend postgres`)"
    )]
    Sweep,
    #[error(
        "--metric {given}: `bench {bench}` reports none; choose one of: {}",
        names(bench)
    )]
    UnknownMetric { bench: BenchKind, given: String },
    #[error(
        "--timeout-s {timeout_s}: a bench run of --duration {duration_s} s cannot finish \
         within it; give a larger --timeout-s"
    )]
    TimeoutTooShort { timeout_s: u64, duration_s: u64 },
    #[error("could not start {side} {path}: {source}")]
    Spawn {
        side: Side,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "round {round}: the {side} bench failed ({status}); its stderr ended with:\n{stderr_tail}"
    )]
    BenchFailed {
        round: u64,
        side: Side,
        status: String,
        stderr_tail: String,
    },
    #[error(
        "round {round}: the {side} bench ran longer than --timeout-s {timeout_s} and was \
         stopped; its stderr ended with:\n{stderr_tail}"
    )]
    TimedOut {
        round: u64,
        side: Side,
        timeout_s: u64,
        stderr_tail: String,
    },
    #[error("round {round}: interrupted while the {side} bench ran; it was stopped")]
    Interrupted { round: u64, side: Side },
    #[error("round {round}: the {side} bench printed no JSON object on stdout ({detail})")]
    NoReport {
        round: u64,
        side: Side,
        detail: String,
    },
    #[error(
        "round {round}: the {side} bench's report has no number `{metric}` (its fields: {fields})"
    )]
    MetricMissing {
        round: u64,
        side: Side,
        metric: String,
        fields: String,
    },
    #[error(
        "round {round}: the baseline's `{metric}` is {value}, so there is no ratio \
         (did its run measure anything?)"
    )]
    NoRatio {
        round: u64,
        metric: String,
        value: f64,
    },
    #[error("reading the {side} bench's output: {source}")]
    Output { side: Side, source: std::io::Error },
}

/// The benches compare can read one figure from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchKind {
    Ledger,
    Sequencer,
}

impl std::fmt::Display for BenchKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BenchKind::Ledger => "ledger",
            BenchKind::Sequencer => "sequencer",
        })
    }
}

/// A figure of a bench's JSON report, and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Metric {
    pub name: &'static str,
    pub higher_is_better: bool,
}

const fn higher(name: &'static str) -> Metric {
    Metric {
        name,
        higher_is_better: true,
    }
}

const fn lower(name: &'static str) -> Metric {
    Metric {
        name,
        higher_is_better: false,
    }
}

/// `bench ledger --json`'s numbers; the first is the default.
const LEDGER_METRICS: &[Metric] = &[
    higher("tx_per_s"),
    lower("latency_p50_ms"),
    lower("latency_p99_ms"),
    lower("latency_max_ms"),
    higher("committed"),
    lower("node_cpu_ms_per_transfer"),
    lower("machine_cpu_ms_per_transfer"),
];

/// `bench sequencer --json`'s numbers; the first is the default.
const SEQUENCER_METRICS: &[Metric] = &[
    higher("submissions_per_s"),
    higher("delivered_per_s"),
    lower("latency_p50_ms"),
    lower("latency_p99_ms"),
    lower("latency_max_ms"),
    lower("send_ack_p50_ms"),
    lower("send_ack_p99_ms"),
    lower("sequencer_peak_rss_mib"),
];

impl BenchKind {
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            BenchKind::Ledger => LEDGER_METRICS,
            BenchKind::Sequencer => SEQUENCER_METRICS,
        }
    }

    /// `--metric`'s figure, or the bench's default without one.
    pub fn metric(self, given: Option<&str>) -> Result<Metric, CompareError> {
        let metrics = self.metrics();
        match given {
            None => Ok(metrics[0]),
            Some(given) => metrics
                .iter()
                .find(|m| m.name == given)
                .copied()
                .ok_or_else(|| CompareError::UnknownMetric {
                    bench: self,
                    given: given.to_owned(),
                }),
        }
    }
}

fn names(bench: &BenchKind) -> String {
    bench
        .metrics()
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One of the two binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Baseline,
    Candidate,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Baseline => "baseline",
            Side::Candidate => "candidate",
        })
    }
}

/// The order of round `round` (1-based): baseline first in odd rounds, candidate first in even
/// ones, so that a machine getting slower (or faster) over the run favours neither side.
pub fn order(round: u64) -> [Side; 2] {
    if round % 2 == 1 {
        [Side::Baseline, Side::Candidate]
    } else {
        [Side::Candidate, Side::Baseline]
    }
}

/// What was checked before anything started: the bench, its figure and the full arguments of
/// each run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub bench: BenchKind,
    pub metric: Metric,
    /// After `bench`: the given arguments, with `--json` appended unless given.
    pub child_args: Vec<String>,
    pub rounds: u64,
    pub timeout: Duration,
}

/// Parses the bench arguments as this binary's own `meridian bench` would, so that a typo is
/// refused before anything runs (both binaries are expected to accept the same arguments).
#[derive(Parser)]
#[command(name = "meridian bench", no_binary_name = true)]
struct BenchLine {
    #[command(subcommand)]
    bench: BenchCommand,
}

impl Plan {
    /// Checks everything but the binaries: rounds, the bench and its arguments, the metric,
    /// the timeout against the run's duration.
    pub fn new(args: &CompareArgs) -> Result<Self, CompareError> {
        if !(1..=MAX_ROUNDS).contains(&args.rounds) {
            return Err(CompareError::Rounds(args.rounds));
        }
        let mut child_args = args.bench.clone();
        if !child_args.iter().any(|a| a == "--json") {
            child_args.push("--json".into());
        }
        let parsed = BenchLine::try_parse_from(&child_args)
            .map_err(|e| CompareError::BenchArgs(e.render().to_string().trim().to_owned()))?;
        let (bench, duration_s) = match parsed.bench {
            BenchCommand::Ledger(ledger) => {
                if ledger.sweep.replication.is_some() {
                    return Err(CompareError::Sweep);
                }
                (BenchKind::Ledger, ledger.workload.duration_s)
            }
            BenchCommand::Sequencer(sequencer) => (BenchKind::Sequencer, sequencer.duration_s),
            _ => {
                return Err(CompareError::UnsupportedBench(
                    child_args.first().cloned().unwrap_or_default(),
                ))
            }
        };
        let metric = bench.metric(args.metric.as_deref())?;
        if args.timeout_s <= duration_s {
            return Err(CompareError::TimeoutTooShort {
                timeout_s: args.timeout_s,
                duration_s,
            });
        }
        Ok(Self {
            bench,
            metric,
            child_args,
            rounds: args.rounds,
            timeout: Duration::from_secs(args.timeout_s),
        })
    }
}

/// Refuses a binary that is missing, not a file or not executable, naming the flag.
pub fn check_binary(flag: &'static str, path: &Path) -> Result<PathBuf, CompareError> {
    use std::os::unix::fs::PermissionsExt;
    let refuse = |problem: String| CompareError::Binary {
        flag,
        path: path.display().to_string(),
        problem,
    };
    let metadata = std::fs::metadata(path).map_err(|e| refuse(e.to_string()))?;
    if !metadata.is_file() {
        return Err(refuse("not a file".into()));
    }
    if metadata.permissions().mode() & 0o111 == 0 {
        return Err(refuse("not executable".into()));
    }
    std::fs::canonicalize(path).map_err(|e| refuse(e.to_string()))
}

/// The figure `metric` of one run's JSON report.
pub fn metric_value(
    report: &serde_json::Value,
    metric: Metric,
    round: u64,
    side: Side,
) -> Result<f64, CompareError> {
    report
        .get(metric.name)
        .and_then(serde_json::Value::as_f64)
        .filter(|v| v.is_finite())
        .ok_or_else(|| CompareError::MetricMissing {
            round,
            side,
            metric: metric.name.to_owned(),
            fields: report
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
        })
}

/// One round's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub round: u64,
    /// Which ran first.
    pub order: [Side; 2],
    pub baseline: f64,
    pub candidate: f64,
    /// candidate / baseline.
    pub ratio: f64,
    /// `audit_ok` of each side's report, where the bench audits (`ledger`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_audit_ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_audit_ok: Option<bool>,
    /// Each side's whole JSON report, for the figures the table leaves out.
    pub baseline_report: serde_json::Value,
    pub candidate_report: serde_json::Value,
}

impl Round {
    /// The round from both sides' reports: the metric read from each, and the ratio (refused
    /// when the baseline's figure is not positive: a run that measured nothing).
    pub fn new(
        round: u64,
        metric: Metric,
        baseline_report: serde_json::Value,
        candidate_report: serde_json::Value,
    ) -> Result<Self, CompareError> {
        let baseline = metric_value(&baseline_report, metric, round, Side::Baseline)?;
        let candidate = metric_value(&candidate_report, metric, round, Side::Candidate)?;
        if baseline <= 0.0 {
            return Err(CompareError::NoRatio {
                round,
                metric: metric.name.to_owned(),
                value: baseline,
            });
        }
        let audit = |report: &serde_json::Value| report.get("audit_ok").and_then(|v| v.as_bool());
        Ok(Self {
            round,
            order: order(round),
            baseline,
            candidate,
            ratio: candidate / baseline,
            baseline_audit_ok: audit(&baseline_report),
            candidate_audit_ok: audit(&candidate_report),
            baseline_report,
            candidate_report,
        })
    }

    fn audit_failed(&self) -> bool {
        self.baseline_audit_ok == Some(false) || self.candidate_audit_ok == Some(false)
    }
}

/// The medians over the rounds (the lower middle one of an even count, as everywhere in the
/// benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Medians {
    pub baseline: f64,
    pub candidate: f64,
    /// The median of the per-round ratios (not the ratio of the medians).
    pub ratio: f64,
}

impl Medians {
    pub fn of(rounds: &[Round]) -> Self {
        let median = |f: fn(&Round) -> f64| {
            let [m] = quantiles(rounds.iter().map(f).collect(), [0.5]);
            m
        };
        Self {
            baseline: median(|r| r.baseline),
            candidate: median(|r| r.candidate),
            ratio: median(|r| r.ratio),
        }
    }
}

/// The whole comparison, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub bench: BenchKind,
    /// The arguments after `bench` each run was given.
    pub bench_args: Vec<String>,
    pub metric: &'static str,
    pub higher_is_better: bool,
    pub baseline: BinaryInfo,
    pub candidate: BinaryInfo,
    pub rounds: Vec<Round>,
    pub median: Medians,
    /// Rounds in which either side's ledger audit failed (must be 0 for a claim).
    pub audit_failed_rounds: usize,
}

impl Comparison {
    pub fn new(
        plan: &Plan,
        baseline: BinaryInfo,
        candidate: BinaryInfo,
        rounds: Vec<Round>,
    ) -> Self {
        Self {
            bench: plan.bench,
            bench_args: plan.child_args.clone(),
            metric: plan.metric.name,
            higher_is_better: plan.metric.higher_is_better,
            baseline,
            candidate,
            median: Medians::of(&rounds),
            audit_failed_rounds: rounds.iter().filter(|r| r.audit_failed()).count(),
            rounds,
        }
    }

    /// The table printed without `--json`.
    pub fn table(&self) -> String {
        let mut out = format!(
            "meridian bench compare: bench {}, {} ({} is better), {} round(s)\n",
            self.bench_args.join(" "),
            self.metric,
            if self.higher_is_better {
                "higher"
            } else {
                "lower"
            },
            self.rounds.len()
        );
        out += &format!("  baseline   {}\n", self.baseline);
        out += &format!("  candidate  {}\n", self.candidate);
        out += &format!(
            "  {:>5}  {:<15} {:>12} {:>12} {:>19}\n",
            "round", "first", "baseline", "candidate", "candidate/baseline"
        );
        for round in &self.rounds {
            out += &format!(
                "  {:>5}  {:<15} {:>12} {:>12} {:>19.3}{}\n",
                round.round,
                round.order[0].to_string(),
                figure(round.baseline),
                figure(round.candidate),
                round.ratio,
                if round.audit_failed() {
                    "  AUDIT FAILED"
                } else {
                    ""
                }
            );
        }
        out += &format!(
            "  {:>5}  {:<15} {:>12} {:>12} {:>19.3}\n",
            "median",
            "",
            figure(self.median.baseline),
            figure(self.median.candidate),
            self.median.ratio
        );
        if self.audit_failed_rounds > 0 {
            out += &format!(
                "  the ledger audit FAILED in {} round(s): see --json for the reports\n",
                self.audit_failed_rounds
            );
        }
        out
    }
}

/// `meridian bench compare`: checks everything, then runs the rounds and prints the result.
pub async fn run(args: CompareArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let plan = Plan::new(&args)?;
    let baseline_path = check_binary("baseline", &args.baseline)?;
    let candidate_path = check_binary("candidate", &args.candidate)?;
    let baseline = BinaryInfo::probe(&baseline_path).await;
    let candidate = BinaryInfo::probe(&candidate_path).await;
    eprintln!("baseline:  {baseline}\ncandidate: {candidate}");
    let run_side = |round: u64, side: Side| {
        let path = match side {
            Side::Baseline => &baseline_path,
            Side::Candidate => &candidate_path,
        };
        let (plan, shutdown) = (&plan, &shutdown);
        async move {
            eprintln!(
                "round {round}/{}: {side}: {} bench {}",
                plan.rounds,
                path.display(),
                plan.child_args.join(" ")
            );
            let report = child::run_bench(path, plan, round, side, shutdown).await?;
            let value = metric_value(&report, plan.metric, round, side)?;
            eprintln!(
                "round {round}/{}: {side}: {} {}",
                plan.rounds,
                plan.metric.name,
                figure(value)
            );
            Ok::<_, CompareError>(report)
        }
    };
    let mut rounds = Vec::new();
    for round in 1..=plan.rounds {
        let [first, second] = order(round);
        let first_report = run_side(round, first).await?;
        let second_report = run_side(round, second).await?;
        let (baseline_report, candidate_report) = match first {
            Side::Baseline => (first_report, second_report),
            Side::Candidate => (second_report, first_report),
        };
        let measured = Round::new(round, plan.metric, baseline_report, candidate_report)?;
        eprintln!(
            "round {round}/{}: candidate/baseline {:.3}",
            plan.rounds, measured.ratio
        );
        rounds.push(measured);
    }
    let comparison = Comparison::new(&plan, baseline, candidate, rounds);
    if args.json {
        println!("{}", serde_json::to_string(&comparison)?);
    } else {
        print!("{}", comparison.table());
    }
    Ok(())
}

/// A measured figure with the precision its size needs: a rate in transfers per second to a
/// tenth, a figure below 10 (CPU milliseconds per transfer) to a thousandth.
fn figure(value: f64) -> String {
    if value.abs() < 10.0 {
        format!("{value:.3}")
    } else {
        format!("{value:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rates_print_to_a_tenth_and_cpu_per_transfer_to_a_thousandth() {
        assert_eq!(figure(2_951.84), "2951.8");
        assert_eq!(figure(0.5823), "0.582");
        assert_eq!(figure(33.14), "33.1");
    }

    fn args(bench: &[&str]) -> CompareArgs {
        CompareArgs {
            baseline: "/bin/true".into(),
            candidate: "/bin/true".into(),
            rounds: 3,
            metric: None,
            timeout_s: 600,
            json: false,
            bench: bench.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_order_alternates_starting_with_the_baseline() {
        let orders: Vec<_> = (1..=4).map(order).collect();
        use Side::*;
        assert_eq!(
            orders,
            [
                [Baseline, Candidate],
                [Candidate, Baseline],
                [Baseline, Candidate],
                [Candidate, Baseline]
            ]
        );
    }

    #[test]
    fn ratios_are_candidate_over_baseline_and_medians_are_per_side() {
        let metric = BenchKind::Ledger.metric(None).unwrap();
        let rounds: Vec<Round> = [(100.0, 300.0), (200.0, 300.0), (150.0, 600.0)]
            .into_iter()
            .zip(1..)
            .map(|((b, c), round)| {
                Round::new(
                    round,
                    metric,
                    json!({ "tx_per_s": b }),
                    json!({ "tx_per_s": c }),
                )
                .unwrap()
            })
            .collect();
        assert_eq!(
            rounds.iter().map(|r| r.ratio).collect::<Vec<_>>(),
            [3.0, 1.5, 4.0]
        );
        assert_eq!(
            Medians::of(&rounds),
            Medians {
                baseline: 150.0,
                candidate: 300.0,
                ratio: 3.0
            }
        );
        // An even count: the lower middle, as every bench's median.
        assert_eq!(Medians::of(&rounds[..2]).ratio, 1.5);
    }

    #[test]
    fn a_missing_metric_or_a_zero_baseline_is_an_error() {
        let metric = BenchKind::Ledger.metric(None).unwrap();
        let missing = Round::new(2, metric, json!({ "other": 1 }), json!({ "tx_per_s": 1 }));
        assert!(
            matches!(&missing, Err(CompareError::MetricMissing { round: 2, side: Side::Baseline, fields, .. }) if fields == "other"),
            "{missing:?}"
        );
        let zero = Round::new(
            1,
            metric,
            json!({ "tx_per_s": 0 }),
            json!({ "tx_per_s": 1 }),
        );
        assert!(
            matches!(zero, Err(CompareError::NoRatio { .. })),
            "{zero:?}"
        );
    }

    #[test]
    fn the_default_metric_depends_on_the_bench_and_an_unknown_one_lists_the_names() {
        let plan = Plan::new(&args(&["ledger", "--duration", "15"])).unwrap();
        assert_eq!(plan.metric.name, "tx_per_s");
        assert_eq!(plan.child_args, ["ledger", "--duration", "15", "--json"]);
        let plan = Plan::new(&args(&["sequencer", "--json"])).unwrap();
        assert_eq!(plan.metric.name, "submissions_per_s");
        assert_eq!(plan.child_args, ["sequencer", "--json"]);
        let mut unknown = args(&["ledger"]);
        unknown.metric = Some("speed".into());
        let error = Plan::new(&unknown).unwrap_err().to_string();
        assert!(
            error.contains("--metric speed") && error.contains("tx_per_s, latency_p50_ms"),
            "{error}"
        );
        let mut p99 = args(&["ledger"]);
        p99.metric = Some("latency_p99_ms".into());
        assert!(!Plan::new(&p99).unwrap().metric.higher_is_better);
    }

    #[test]
    fn bad_bench_arguments_are_refused_before_anything_runs() {
        for (bench, expected) in [
            (&["lb", "--rate", "100"][..], "not `bench lb`"),
            (&["ledger", "--replication", "sync"][..], "prints a table"),
            (&["ledger", "--no-such-flag"][..], "do not parse"),
            (&["nonsense"][..], "do not parse"),
            (&["compare"][..], "do not parse"),
        ] {
            let error = Plan::new(&args(bench)).unwrap_err().to_string();
            assert!(error.contains(expected), "{bench:?}: {error}");
        }
        let mut rounds = args(&["ledger"]);
        rounds.rounds = 51;
        assert!(matches!(Plan::new(&rounds), Err(CompareError::Rounds(51))));
        let mut short = args(&["ledger", "--duration", "30"]);
        short.timeout_s = 30;
        assert!(matches!(
            Plan::new(&short),
            Err(CompareError::TimeoutTooShort { .. })
        ));
    }

    #[test]
    fn the_table_names_both_sides_every_round_and_the_median() {
        let metric = BenchKind::Sequencer.metric(None).unwrap();
        let plan = Plan::new(&args(&["sequencer", "--duration", "2"])).unwrap();
        let rounds = (1..=2)
            .map(|round| {
                Round::new(
                    round,
                    metric,
                    json!({ "submissions_per_s": 1000.0 }),
                    json!({ "submissions_per_s": 1500.0 }),
                )
                .unwrap()
            })
            .collect();
        let info = |path: &str| BinaryInfo {
            path: path.into(),
            version: Some("meridian 0.1.0".into()),
            checkout_head: None,
        };
        let table =
            Comparison::new(&plan, info("/old/meridian"), info("/new/meridian"), rounds).table();
        assert!(
            table.contains("baseline   /old/meridian (meridian 0.1.0)"),
            "{table}"
        );
        assert!(table.contains("candidate  /new/meridian"), "{table}");
        assert!(table.contains("candidate    "), "{table}");
        assert!(table.contains("median"), "{table}");
        assert_eq!(table.matches("1.500").count(), 3, "{table}");
    }
}
