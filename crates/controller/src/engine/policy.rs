//! The anti-flapping policy: the cooldown after a finished switchover and the cap on
//! automatic actions per hour. Both are recomputed from the audit log by a controller taking
//! over, so that a controller failover neither resets the cooldown nor refills the cap.
//!
//! - Cooldown: no switchover (proposed by an operator or by the controller) until
//!   `cooldown_s` after the last plan that finished, done or failed (a rejected or expired plan
//!   never acted, so it starts none).
//! - Hourly cap: automatic actions — a cold-standby start, an approval by the controller
//!   itself — within the last hour are counted; at `max_automatic_actions_per_hour` the next
//!   one is held (audited once). Restarts are not counted: the crash-loop limit bounds them.

use std::collections::VecDeque;
use std::time::Duration;

use meridian_core::Timestamp;

use crate::api::{AuditKind, AuditRecord};
use crate::plan::{Actor, Plan, PlanState};
use crate::settings::ControllerSettings;

const HOUR: Duration = Duration::from_secs(3_600);

/// Whether an audit record is an automatic action the hourly cap counts.
pub fn is_automatic_action(record: &AuditRecord) -> bool {
    match record.kind {
        AuditKind::ColdStart => true,
        AuditKind::PlanApproved => record.actor == Actor::Controller,
        _ => false,
    }
}

/// When a plan finished (done or failed), if it did.
pub fn finished_at(plan: &Plan) -> Option<Timestamp> {
    match &plan.state {
        PlanState::Done { at, .. } | PlanState::Failed { at, .. } => Some(*at),
        _ => None,
    }
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The automatic actions of the last hour, oldest first.
    automatic: VecDeque<Timestamp>,
    /// When the last plan finished.
    last_finished: Option<Timestamp>,
}

impl Policy {
    /// The policy as the audit log and the plans left it.
    pub fn restore(recent_audit: &[AuditRecord], plans: &[Plan]) -> Self {
        let mut automatic: Vec<Timestamp> = recent_audit
            .iter()
            .filter(|record| is_automatic_action(record))
            .map(|record| record.at)
            .collect();
        automatic.sort();
        let from_audit = recent_audit
            .iter()
            .filter(|record| matches!(record.kind, AuditKind::PlanDone | AuditKind::PlanFailed))
            .map(|record| record.at);
        let last_finished = plans.iter().filter_map(finished_at).chain(from_audit).max();
        Self {
            automatic: automatic.into(),
            last_finished,
        }
    }

    pub fn plan_finished(&mut self, at: Timestamp) {
        self.last_finished = Some(self.last_finished.map_or(at, |last| last.max(at)));
    }

    /// When the cooldown ends, if a plan ever finished.
    pub fn cooldown_until(&self, settings: &ControllerSettings) -> Option<Timestamp> {
        self.last_finished
            .map(|at| at.saturating_add(Duration::from_secs(settings.cooldown_s)))
    }

    /// The cooldown runs at `now`: (finished_at, until).
    pub fn cooling_down(
        &self,
        now: Timestamp,
        settings: &ControllerSettings,
    ) -> Option<(Timestamp, Timestamp)> {
        let finished = self.last_finished?;
        let until = self.cooldown_until(settings)?;
        (now < until).then_some((finished, until))
    }

    /// The automatic actions within the hour before `now`.
    pub fn actions_last_hour(&self, now: Timestamp) -> u32 {
        let since = now.saturating_sub(HOUR);
        let count = self.automatic.iter().filter(|at| **at > since).count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Another automatic action is allowed at `now`.
    pub fn may_act(&self, now: Timestamp, settings: &ControllerSettings) -> bool {
        self.actions_last_hour(now) < settings.max_automatic_actions_per_hour
    }

    /// Counts an automatic action; forgets those older than an hour (bounded).
    pub fn acted(&mut self, now: Timestamp) {
        let since = now.saturating_sub(HOUR);
        while self.automatic.front().is_some_and(|at| *at <= since) {
            self.automatic.pop_front();
        }
        self.automatic.push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: AuditKind, actor: Actor, at_s: u64) -> AuditRecord {
        AuditRecord {
            seq: 0,
            at: Timestamp::from_micros(at_s * 1_000_000),
            kind,
            actor,
            plan: None,
            step: None,
            replica: None,
            region: None,
            detail: String::new(),
        }
    }

    #[test]
    fn the_cap_and_the_cooldown_come_back_from_the_audit_log() {
        let settings = ControllerSettings {
            max_automatic_actions_per_hour: 2,
            cooldown_s: 60,
            ..ControllerSettings::default()
        };
        let audit = [
            record(AuditKind::ColdStart, Actor::Controller, 10),
            // An operator's approval is not automatic.
            record(AuditKind::PlanApproved, Actor::Operator("ops".into()), 20),
            record(AuditKind::PlanApproved, Actor::Controller, 30),
            record(AuditKind::PlanDone, Actor::Controller, 100),
        ];
        let policy = Policy::restore(&audit, &[]);
        let at = |s: u64| Timestamp::from_micros(s * 1_000_000);
        assert_eq!(policy.actions_last_hour(at(200)), 2);
        assert!(!policy.may_act(at(200), &settings));
        // An hour after the first, it no longer counts.
        assert!(policy.may_act(at(3_611), &settings));
        assert_eq!(
            policy.cooling_down(at(159), &settings),
            Some((at(100), at(160)))
        );
        assert_eq!(policy.cooling_down(at(160), &settings), None);
    }
}
