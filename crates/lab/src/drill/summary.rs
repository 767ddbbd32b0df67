//! A drill's figures per scenario over its trials: RTO p50/p99/max, and the failed requests
//! and lost transactions of every trial's window. `--trials N` runs each scenario N times in
//! one deployment; this is what the table's summary lines and the JSON's `scenarios` show.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::experiment::FaultReport;
use crate::fault::Fault;
use crate::stats::quantiles;

/// One scenario over its trials.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSummary {
    pub scenario: Fault,
    pub trials: usize,
    /// Over the trials that recovered (0 when none did).
    pub rto_first_success_ms_p50: f64,
    pub rto_first_success_ms_p99: f64,
    pub rto_first_success_ms_max: f64,
    pub failed_requests: u64,
    pub rpo_transactions: usize,
    /// Trials that did not recover or could not undo the fault.
    pub problems: usize,
    /// For database failovers: the promoter's share (fault to the new primary accepting
    /// writes) and Meridian's (from then to the first commit), p50 and max over the trials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promoter_ms_p50_max: Option<[f64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meridian_ms_p50_max: Option<[f64; 2]>,
    /// For region moves: each part of the RTO (`drain`, `catch_up`, ..., `first_commit`),
    /// p50 and max over the trials that had it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub region_parts_ms_p50_max: BTreeMap<&'static str, [f64; 2]>,
}

/// Each part of a region move's RTO by name, where the move had it.
fn region_parts(report: &crate::region::RegionReport) -> [(&'static str, Option<f64>); 8] {
    [
        ("drain", report.drain_ms),
        ("catch_up", report.catch_up_ms),
        ("stop_servers", report.stop_servers_ms),
        ("kill", report.kill_ms),
        ("detection_delay", report.detection_delay_ms),
        ("promote", Some(report.promote_ms)),
        ("start", Some(report.start_ms)),
        ("first_commit", report.first_commit_ms),
    ]
}

/// p50 and max of every region-move part over `trials`.
fn region_parts_p50_max(trials: &[&FaultReport]) -> BTreeMap<&'static str, [f64; 2]> {
    let mut values: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for region in trials.iter().filter_map(|f| f.region.as_ref()) {
        for (part, value) in region_parts(region) {
            if let Some(value) = value {
                values.entry(part).or_default().push(value);
            }
        }
    }
    values
        .into_iter()
        .filter_map(|(part, values)| Some((part, p50_max(values)?)))
        .collect()
}

/// p50 and max of `values`, `None` when there are none.
fn p50_max(values: Vec<f64>) -> Option<[f64; 2]> {
    if values.is_empty() {
        return None;
    }
    let [p50, max] = quantiles(values, [0.5, 1.0]);
    Some([p50, max])
}

/// Each scenario of `faults`, in the order it first ran.
pub fn by_scenario(faults: &[FaultReport]) -> Vec<ScenarioSummary> {
    let mut scenarios: Vec<Fault> = Vec::new();
    for fault in faults {
        if !scenarios.contains(&fault.scenario) {
            scenarios.push(fault.scenario);
        }
    }
    scenarios
        .into_iter()
        .map(|scenario| {
            let trials: Vec<&FaultReport> =
                faults.iter().filter(|f| f.scenario == scenario).collect();
            let rtos = trials
                .iter()
                .filter_map(|f| f.rto_first_success_ms)
                .collect();
            let [p50, p99, max] = quantiles(rtos, [0.5, 0.99, 1.0]);
            ScenarioSummary {
                scenario,
                trials: trials.len(),
                rto_first_success_ms_p50: p50,
                rto_first_success_ms_p99: p99,
                rto_first_success_ms_max: max,
                failed_requests: trials.iter().map(|f| f.failed_requests).sum(),
                rpo_transactions: trials.iter().map(|f| f.rpo_transactions).sum(),
                problems: trials.iter().filter(|f| f.problem.is_some()).count(),
                promoter_ms_p50_max: p50_max(
                    trials
                        .iter()
                        .filter_map(|f| f.promotion.as_ref()?.promoter_ms)
                        .collect(),
                ),
                meridian_ms_p50_max: p50_max(
                    trials
                        .iter()
                        .filter_map(|f| f.promotion.as_ref()?.meridian_ms)
                        .collect(),
                ),
                region_parts_ms_p50_max: region_parts_p50_max(&trials),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(scenario: Fault, rto_ms: Option<f64>, failed: u64) -> FaultReport {
        FaultReport {
            scenario,
            target: "participant2".into(),
            action: "kill -9".into(),
            faulted: None,
            injected_at_ms: 0.0,
            window_end_ms: 0.0,
            detection_ms: None,
            rto_first_success_ms: rto_ms,
            rto_throughput_90_ms: None,
            rpo_transactions: 0,
            failed_requests: failed,
            timed_out_requests: 0,
            retried_requests: 0,
            throughput_before_tx_per_s: 0.0,
            throughput_per_100ms: Vec::new(),
            resumed_replica_passive: None,
            promotion: None,
            region: None,
            lost_transactions: Vec::new(),
            problem: rto_ms.is_none().then(|| "not recovered".to_owned()),
        }
    }

    #[test]
    fn trials_of_a_scenario_are_summarised_together_in_first_run_order() {
        let faults = [
            trial(Fault::MediatorCrash, Some(300.0), 1),
            trial(Fault::ParticipantCrash, Some(100.0), 0),
            trial(Fault::MediatorCrash, Some(100.0), 2),
            trial(Fault::MediatorCrash, None, 0),
            trial(Fault::MediatorCrash, Some(200.0), 0),
        ];
        let summary = by_scenario(&faults);
        assert_eq!(summary.len(), 2);
        let mediator = &summary[0];
        assert_eq!(mediator.scenario, Fault::MediatorCrash);
        assert_eq!(mediator.trials, 4);
        assert_eq!(mediator.rto_first_success_ms_p50, 200.0);
        assert_eq!(mediator.rto_first_success_ms_p99, 300.0);
        assert_eq!(mediator.rto_first_success_ms_max, 300.0);
        assert_eq!(mediator.failed_requests, 3);
        assert_eq!(mediator.problems, 1);
        assert_eq!(summary[1].rto_first_success_ms_p50, 100.0);
    }

    #[test]
    fn a_region_moves_parts_are_summarised_where_the_trials_had_them() {
        let moved = |drain_ms: f64, first_commit_ms: Option<f64>| {
            let mut fault = trial(Fault::RegionSwitchover, Some(9_000.0), 0);
            fault.region = Some(crate::region::RegionReport {
                drain_ms: Some(drain_ms),
                promote_ms: 300.0,
                first_commit_ms,
                ..Default::default()
            });
            fault
        };
        let summary = by_scenario(&[
            moved(5_000.0, Some(1_000.0)),
            moved(1_000.0, None),
            moved(3_000.0, Some(2_000.0)),
        ]);
        let parts = &summary[0].region_parts_ms_p50_max;
        assert_eq!(parts["drain"], [3_000.0, 5_000.0]);
        assert_eq!(parts["promote"], [300.0, 300.0]);
        // Only the two trials that committed count for the first commit.
        assert_eq!(parts["first_commit"][1], 2_000.0);
        // Parts no trial had (a loss's kill) are absent, not zero.
        assert!(!parts.contains_key("kill"), "{parts:?}");
        // No region move, no parts.
        let crash = by_scenario(&[trial(Fault::MediatorCrash, Some(1.0), 0)]);
        assert!(crash[0].region_parts_ms_p50_max.is_empty());
    }
}
