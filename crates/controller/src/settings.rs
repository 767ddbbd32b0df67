//! The controller's timings and limits: the `[controller]` table of a deployment file. Every
//! number has a default that suits one machine, and every one is bounded (see
//! [`ControllerSettings::check`]).
//!
//! ```toml
//! [controller]
//! probe_interval_ms = 100          # each replica's /livez, /readyz and /status
//! rise = 2                         # consecutive good probes before a replica counts as up
//! fall = 3                         # consecutive bad probes before it counts as down
//! restart_backoff_initial_ms = 200 # first restart delay of a crashed process, doubling
//! restart_backoff_max_ms = 5000
//! crash_loop_restarts = 5          # this many restarts within the window: failed, not restarted
//! crash_loop_window_s = 60
//! region_failure_dwell_ms = 3000   # every replica of a region down this long: region failed
//! cooldown_s = 60                  # no switchover for this long after one finished
//! max_automatic_actions_per_hour = 10  # restarts excluded; cold starts and auto-approvals
//! auto_approve = false             # approve the controller's own plans by itself
//! auto_approve_min_dwell_ms = 10000    # ... only after the region was failed this long
//! plan_expiry_s = 600              # an unapproved plan expires
//! ```

use serde::{Deserialize, Serialize};

/// See the module documentation for each field's meaning and default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerSettings {
    pub probe_interval_ms: u64,
    pub rise: u32,
    pub fall: u32,
    pub restart_backoff_initial_ms: u64,
    pub restart_backoff_max_ms: u64,
    pub crash_loop_restarts: u32,
    pub crash_loop_window_s: u64,
    pub region_failure_dwell_ms: u64,
    pub cooldown_s: u64,
    pub max_automatic_actions_per_hour: u32,
    pub auto_approve: bool,
    pub auto_approve_min_dwell_ms: u64,
    pub plan_expiry_s: u64,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        Self {
            probe_interval_ms: 100,
            rise: 2,
            fall: 3,
            restart_backoff_initial_ms: 200,
            restart_backoff_max_ms: 5_000,
            crash_loop_restarts: 5,
            crash_loop_window_s: 60,
            region_failure_dwell_ms: 3_000,
            cooldown_s: 60,
            max_automatic_actions_per_hour: 10,
            auto_approve: false,
            auto_approve_min_dwell_ms: 10_000,
            plan_expiry_s: 600,
        }
    }
}

/// A setting out of its bounds: the key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[controller] {key}: {problem}")]
pub struct SettingError {
    pub key: &'static str,
    pub problem: String,
}

impl ControllerSettings {
    /// Every value within its bounds, or the first key that is not, named.
    pub fn check(&self) -> Result<(), SettingError> {
        let within = |key: &'static str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                Err(SettingError {
                    key,
                    problem: format!("{value} is outside {min}..={max}"),
                })
            } else {
                Ok(())
            }
        };
        within("probe_interval_ms", self.probe_interval_ms, 10, 60_000)?;
        within("rise", self.rise.into(), 1, 100)?;
        within("fall", self.fall.into(), 1, 100)?;
        within(
            "restart_backoff_initial_ms",
            self.restart_backoff_initial_ms,
            10,
            600_000,
        )?;
        within(
            "restart_backoff_max_ms",
            self.restart_backoff_max_ms,
            self.restart_backoff_initial_ms,
            3_600_000,
        )?;
        within(
            "crash_loop_restarts",
            self.crash_loop_restarts.into(),
            1,
            1_000,
        )?;
        within("crash_loop_window_s", self.crash_loop_window_s, 1, 86_400)?;
        within(
            "region_failure_dwell_ms",
            self.region_failure_dwell_ms,
            0,
            3_600_000,
        )?;
        within("cooldown_s", self.cooldown_s, 0, 86_400)?;
        within(
            "max_automatic_actions_per_hour",
            self.max_automatic_actions_per_hour.into(),
            0,
            10_000,
        )?;
        within(
            "auto_approve_min_dwell_ms",
            self.auto_approve_min_dwell_ms,
            0,
            3_600_000,
        )?;
        within("plan_expiry_s", self.plan_expiry_s, 1, 7 * 86_400)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_each_bound_is_named() {
        assert_eq!(ControllerSettings::default().check(), Ok(()));
        let settings = ControllerSettings {
            fall: 0,
            ..ControllerSettings::default()
        };
        assert_eq!(settings.check().map_err(|e| e.key), Err("fall"));
        let settings = ControllerSettings {
            restart_backoff_max_ms: 10,
            ..ControllerSettings::default()
        };
        assert_eq!(
            settings.check().map_err(|e| e.key),
            Err("restart_backoff_max_ms")
        );
    }
}
