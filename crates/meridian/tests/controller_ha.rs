//! The controller is highly available: two replicas share a lease; the passive one serves the
//! status naming the active one and refuses commands. The active one is killed with SIGKILL
//! in the middle of a region switchover (two-regions preset on SQLite: region one's replicas
//! are stopped, region two's cold ones started on the same files); the other takes over and
//! finishes the plan without repeating a step that took effect — processes started before the
//! takeover keep their pids, each step finished once as done (a step re-run after the
//! takeover finishes as already done). With no controller running at all, transfers still
//! commit: the controller is never on the transaction path. Real binary, real processes.

#![allow(clippy::unwrap_used)]

mod controller_common;

use std::collections::BTreeMap;
use std::time::Duration;

use controller_common::{all_up, ControllerProcess, NodesGuard};
use meridian_controller::api::{AuditKind, AuditRecord, Command, CommandError, Status};
use meridian_controller::plan::{
    Actor, Plan, PlanId, PlanState, StepAction, StepOutcome, StepState,
};
use meridian_controller::runtime::persist;
use meridian_lab::controller::ControlledDeployment;
use meridian_store::controller::{default_storage, ControllerStore, SqlControllerStore};

const ARGS: [&str; 4] = ["--preset", "two-regions", "--backend", "sqlite"];

fn plan<'a>(status: &'a Status, id: &PlanId) -> Option<&'a Plan> {
    status.plans.iter().find(|p| &p.id == id)
}

fn operator() -> Actor {
    Actor::Operator("test".into())
}

/// The whole audit log, from the controller's database.
async fn audit(data: &std::path::Path) -> Vec<AuditRecord> {
    let store = SqlControllerStore::open_config(&default_storage(data))
        .await
        .unwrap();
    store
        .audit_after(0, 1_000)
        .await
        .unwrap()
        .iter()
        .map(|stored| persist::audit_record(stored).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_killed_mid_plan_is_replaced_and_the_plan_finishes_each_step_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _nodes = NodesGuard(data.clone());
    let mut a = ControllerProcess::start(&data, "controller-a", &ARGS).await;
    a.wait_for("up", Duration::from_secs(120), all_up).await;
    let b = ControllerProcess::start(&data, "controller-b", &ARGS).await;
    b.wait_for(
        "passive naming controller-a",
        Duration::from_secs(30),
        |s| !s.controller.active && s.controller.active_replica.as_deref() == Some("controller-a"),
    )
    .await;
    let propose = Command::ProposeSwitchover {
        to: "region-2".into(),
        components: Vec::new(),
        by: operator(),
    };
    match b.command(&data, &propose).await {
        Err((503, CommandError::NotActive { active })) => assert_eq!(active, "controller-a"),
        other => panic!("the passive replica must refuse, naming the active: {other:?}"),
    }

    let id = a.command(&data, &propose).await.unwrap().plan.id;
    a.command(
        &data,
        &Command::Approve {
            plan: id.clone(),
            by: operator(),
            acknowledge_loss: false,
        },
    )
    .await
    .unwrap();
    // Kill the active controller once the plan has started replicas in region two and has
    // more to do.
    let at_kill = a
        .wait_for("in the middle of the plan", Duration::from_secs(90), |s| {
            plan(s, &id).is_some_and(|p| {
                matches!(p.state, PlanState::Running { .. })
                    && p.steps.iter().any(|step| {
                        matches!(step.action, StepAction::StartReplicas { .. })
                            && matches!(step.state, StepState::Finished { .. })
                    })
            })
        })
        .await;
    a.kill9();
    let deployment = ControlledDeployment::open(&data).unwrap();
    let region_two: Vec<String> = deployment
        .replicas()
        .into_iter()
        .filter(|r| r.ends_with("-c"))
        .collect();
    let pids_at_kill: BTreeMap<String, u32> = region_two
        .iter()
        .filter_map(|r| deployment.pid(r).map(|pid| (r.clone(), pid)))
        .collect();
    assert!(
        !pids_at_kill.is_empty(),
        "replicas were started before the kill: {:?}",
        plan(&at_kill, &id)
    );

    let done = b
        .wait_for(
            "the plan done by controller-b",
            Duration::from_secs(120),
            |s| {
                s.controller.active
                    && plan(s, &id).is_some_and(|p| matches!(p.state, PlanState::Done { .. }))
            },
        )
        .await;
    let finished = plan(&done, &id).unwrap().clone();
    for (name, pid) in &pids_at_kill {
        assert_eq!(
            deployment.pid(name),
            Some(*pid),
            "{name} was started once, before the takeover"
        );
    }
    for name in &region_two {
        assert!(deployment.pid(name).is_some(), "{name} runs");
    }
    for name in deployment.replicas().iter().filter(|r| !r.ends_with("-c")) {
        assert_eq!(
            deployment.pid(name),
            None,
            "{name} in region one is stopped"
        );
    }
    // Each step finished once as done; a re-run after the takeover as already done.
    let audit = audit(&data).await;
    for (index, step) in finished.steps.iter().enumerate() {
        let StepState::Finished { outcome, .. } = &step.state else {
            panic!("step {index} did not finish: {step:?}");
        };
        assert!(
            !matches!(outcome, StepOutcome::Failed(_)),
            "step {index}: {outcome:?}"
        );
        let finishes = audit
            .iter()
            .filter(|r| {
                r.kind == AuditKind::StepFinished
                    && r.plan.as_ref() == Some(&id)
                    && r.step == Some(index)
            })
            .count();
        assert!(
            finishes == 1 || (finishes == 2 && matches!(outcome, StepOutcome::AlreadyDone(_))),
            "step {index} ({}) finished {finishes} times, last {outcome:?}",
            step.action.describe()
        );
    }
    assert!(
        audit
            .iter()
            .filter(|r| r.kind == AuditKind::ControllerActive)
            .count()
            >= 2,
        "each term, controller-a's and controller-b's, is in the audit log"
    );

    // No controller at all: the deployment serves.
    drop(b);
    let report = deployment
        .transfers("no-controller", Duration::from_secs(3))
        .await
        .unwrap();
    assert!(
        report.committed > 0,
        "transfers commit without a controller: {report:?}"
    );
}
