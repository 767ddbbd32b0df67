//! A scripted controller loop for the HTTP API's tests: it owns the [`ControllerSide`] of a
//! handle, answers commands the way the engine's contract says (unknown region or plan, one
//! open plan at a time, a region loss needs the acknowledgement, a passive replica refuses
//! with `NotActive`), runs an approved plan's steps one by one on a timer, and publishes the
//! status and audit records as it goes. Every command it receives is also handed to the test.

#![allow(dead_code)] // each test binary uses part of it

use std::sync::Arc;
use std::time::Duration;

use meridian_controller::api::{
    AuditKind, AuditRecord, Command, CommandError, CommandOutcome, ControllerInfo, RegionStatus,
    ReplicaRole, ReplicaStatus, ServerStatus, Status, ZoneStatus,
};
use meridian_controller::handle::{ControllerHandle, ControllerSide};
use meridian_controller::model::{DatabaseRole, Temperature};
use meridian_controller::plan::{
    Actor, DataLoss, Decision, Plan, PlanId, PlanKind, PlanState, Step, StepAction, StepOutcome,
    StepState,
};
use meridian_core::placement::{NodeKind, NodeName, RegionName, ReplicaName, ServerName};
use meridian_core::Timestamp;
use tokio::sync::{broadcast, mpsc, watch, Mutex};

pub const ADMIN_TOKEN: &str = "s3cret-admin-token";

/// What a test sees of the loop.
pub struct Scripted {
    pub handle: ControllerHandle,
    /// Every command the loop received, in order.
    pub received: mpsc::UnboundedReceiver<Command>,
}

fn replica(name: &str, node: &str, kind: NodeKind, role: ReplicaRole, cold: bool) -> ReplicaStatus {
    let ready = role == ReplicaRole::Active;
    ReplicaStatus {
        name: ReplicaName::from(name),
        node: NodeName::from(node),
        kind,
        temperature: if cold {
            Temperature::Cold
        } else {
            Temperature::Warm
        },
        role,
        ready,
        reason: (!ready).then(|| format!("{role:?}").to_lowercase()),
        restarts: 0,
        pid: (!cold).then_some(4242),
    }
}

/// Two regions of two zones; region-1 active, region-2 cold, one PostgreSQL cluster.
pub fn sample_status(active: bool) -> Status {
    let zone = |name: &str, replicas: Vec<ReplicaStatus>, servers: Vec<ServerStatus>| ZoneStatus {
        name: name.into(),
        replicas,
        servers,
    };
    let server = |name: &str, placed_as, role, lag| ServerStatus {
        name: ServerName::from(name),
        cluster: "main".into(),
        placed_as,
        role: Some(role),
        reachable: true,
        lag_bytes: lag,
    };
    let region_1 = RegionStatus {
        name: "region-1".into(),
        failed_since: None,
        zones: vec![
            zone(
                "zone-1a",
                vec![
                    replica(
                        "sequencer-a",
                        "sequencer",
                        NodeKind::Sequencer,
                        ReplicaRole::Active,
                        false,
                    ),
                    replica(
                        "participant1-a",
                        "participant1",
                        NodeKind::Participant,
                        ReplicaRole::Active,
                        false,
                    ),
                ],
                vec![server(
                    "pg-1a",
                    DatabaseRole::Primary,
                    DatabaseRole::Primary,
                    None,
                )],
            ),
            zone(
                "zone-1b",
                vec![replica(
                    "participant1-b",
                    "participant1",
                    NodeKind::Participant,
                    ReplicaRole::Passive,
                    false,
                )],
                vec![server(
                    "pg-1b",
                    DatabaseRole::SyncStandby,
                    DatabaseRole::SyncStandby,
                    Some(0),
                )],
            ),
        ],
    };
    let region_2 = RegionStatus {
        name: "region-2".into(),
        failed_since: None,
        zones: vec![zone(
            "zone-2a",
            vec![
                replica(
                    "sequencer-c",
                    "sequencer",
                    NodeKind::Sequencer,
                    ReplicaRole::Cold,
                    true,
                ),
                replica(
                    "participant1-c",
                    "participant1",
                    NodeKind::Participant,
                    ReplicaRole::Cold,
                    true,
                ),
            ],
            vec![server(
                "pg-2a",
                DatabaseRole::AsyncStandby,
                DatabaseRole::AsyncStandby,
                Some(2048),
            )],
        )],
    };
    Status {
        controller: ControllerInfo {
            replica: if active {
                "controller-a"
            } else {
                "controller-b"
            }
            .to_owned(),
            active,
            active_replica: Some("controller-a".to_owned()),
        },
        regions: vec![region_1, region_2],
        plans: Vec::new(),
        cooldown_until: None,
        automatic_actions_last_hour: 0,
        events: Vec::new(),
    }
}

/// A switchover plan from region-1 to region-2, awaiting approval.
pub fn sample_plan(n: u64, kind: PlanKind, by: Actor) -> Plan {
    let now = Timestamp::now();
    let replicas = |names: &[&str]| names.iter().map(|n| ReplicaName::from(*n)).collect();
    let step = |action| Step {
        action,
        state: StepState::Pending,
    };
    Plan {
        id: PlanId::numbered(n),
        kind,
        from_region: "region-1".into(),
        to_region: "region-2".into(),
        components: Vec::new(),
        proposed_by: by,
        created_at: now,
        expires_at: now.saturating_add(Duration::from_secs(600)),
        data_loss: (kind == PlanKind::RegionLoss).then(|| DataLoss {
            lag_bytes: vec![("main".into(), 2048)],
            read_at: Some(now),
        }),
        steps: vec![
            step(StepAction::FenceRegion {
                region: "region-1".into(),
                replicas: replicas(&["participant1-a", "participant1-b"]),
            }),
            step(StepAction::WaitForCatchUp {
                servers: vec!["pg-2a".into()],
            }),
            step(StepAction::PromoteDatabases {
                servers: vec!["pg-2a".into()],
            }),
            step(StepAction::StartReplicas {
                kind: NodeKind::Participant,
                replicas: replicas(&["participant1-c"]),
            }),
            step(StepAction::WaitReady {
                replicas: replicas(&["participant1-c"]),
            }),
            step(StepAction::MoveLoadBalancer {
                region: "region-2".into(),
            }),
        ],
        state: PlanState::AwaitingApproval,
    }
}

struct Shared {
    status: watch::Sender<Status>,
    events: broadcast::Sender<AuditRecord>,
    seq: Mutex<u64>,
    step_ms: u64,
}

impl Shared {
    async fn audit(
        &self,
        kind: AuditKind,
        actor: Actor,
        plan: Option<&PlanId>,
        step: Option<usize>,
        detail: String,
    ) {
        let seq = {
            let mut seq = self.seq.lock().await;
            *seq += 1;
            *seq
        };
        let record = AuditRecord {
            seq,
            at: Timestamp::now(),
            kind,
            actor,
            plan: plan.cloned(),
            step,
            replica: None,
            region: None,
            detail,
        };
        self.status.send_modify(|status| {
            status.events.push(record.clone());
            let excess = status.events.len().saturating_sub(50);
            status.events.drain(..excess);
        });
        let _ = self.events.send(record);
    }

    fn update_plan(&self, id: &PlanId, change: impl FnOnce(&mut Plan)) -> Option<Plan> {
        let mut updated = None;
        self.status.send_modify(|status| {
            if let Some(plan) = status.plans.iter_mut().find(|p| &p.id == id) {
                change(plan);
                updated = Some(plan.clone());
            }
        });
        updated
    }

    fn plan(&self, id: &PlanId) -> Option<Plan> {
        self.status
            .borrow()
            .plans
            .iter()
            .find(|p| &p.id == id)
            .cloned()
    }

    /// Runs the plan's steps, `step_ms` each, then marks it done.
    async fn run(self: Arc<Self>, id: PlanId, approved: Decision) {
        let steps = self.plan(&id).map_or(0, |p| p.steps.len());
        for index in 0..steps {
            let started_at = Timestamp::now();
            self.update_plan(&id, |plan| {
                plan.steps[index].state = StepState::Running { started_at }
            });
            self.audit(
                AuditKind::StepStarted,
                Actor::Controller,
                Some(&id),
                Some(index),
                "started".into(),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(self.step_ms)).await;
            let detail = format!("step {} done", index + 1);
            self.update_plan(&id, |plan| {
                plan.steps[index].state = StepState::Finished {
                    started_at,
                    finished_at: Timestamp::now(),
                    outcome: StepOutcome::Done(detail.clone()),
                }
            });
            self.audit(
                AuditKind::StepFinished,
                Actor::Controller,
                Some(&id),
                Some(index),
                detail,
            )
            .await;
        }
        // The move took effect: region-1's replicas are stopped, region-2's serve.
        self.status.send_modify(|status| {
            for region in &mut status.regions {
                let target = region.name.as_str() == "region-2";
                for zone in &mut region.zones {
                    for replica in &mut zone.replicas {
                        replica.role = if target {
                            ReplicaRole::Active
                        } else {
                            ReplicaRole::Stopped
                        };
                        replica.ready = target;
                        replica.reason = (!target).then(|| format!("fenced by {id}"));
                    }
                    for server in &mut zone.servers {
                        if target {
                            server.role = Some(DatabaseRole::Primary);
                            server.lag_bytes = None;
                        }
                    }
                }
            }
        });
        self.update_plan(&id, |plan| {
            plan.state = PlanState::Done {
                approved: approved.clone(),
                at: Timestamp::now(),
            }
        });
        self.audit(
            AuditKind::PlanDone,
            Actor::Controller,
            Some(&id),
            None,
            "switched to region-2".into(),
        )
        .await;
    }

    async fn answer(self: &Arc<Self>, command: Command) -> Result<CommandOutcome, CommandError> {
        let status = self.status.borrow().clone();
        if !status.controller.active {
            return Err(CommandError::NotActive {
                active: status
                    .controller
                    .active_replica
                    .unwrap_or_else(|| "unknown".into()),
            });
        }
        match command {
            Command::ProposeSwitchover { to, by, .. } => {
                let known: Vec<&RegionName> = status.regions.iter().map(|r| &r.name).collect();
                if !known.contains(&&to) {
                    return Err(CommandError::UnknownRegion {
                        region: to.to_string(),
                        known: known
                            .iter()
                            .map(|r| r.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                if let Some(open) = status.plans.iter().find(|p| p.state.is_open()) {
                    return Err(CommandError::PlanOpen {
                        plan: open.id.to_string(),
                        state: open.state.name().into(),
                    });
                }
                let plan = sample_plan(
                    status.plans.len() as u64 + 1,
                    PlanKind::Switchover,
                    by.clone(),
                );
                self.status
                    .send_modify(|status| status.plans.insert(0, plan.clone()));
                self.audit(
                    AuditKind::PlanProposed,
                    by,
                    Some(&plan.id),
                    None,
                    "proposed".into(),
                )
                .await;
                Ok(CommandOutcome { plan })
            }
            Command::Approve {
                plan: id,
                by,
                acknowledge_loss,
            } => {
                let plan = self.plan(&id).ok_or_else(|| CommandError::UnknownPlan {
                    plan: id.to_string(),
                })?;
                if plan.state != PlanState::AwaitingApproval {
                    return Err(CommandError::NotAwaitingApproval {
                        plan: id.to_string(),
                        state: plan.state.name().into(),
                    });
                }
                if plan.kind == PlanKind::RegionLoss && !acknowledge_loss {
                    return Err(CommandError::LossNotAcknowledged {
                        plan: id.to_string(),
                        lag: "2048 bytes of main".into(),
                    });
                }
                let approved = Decision {
                    by: by.clone(),
                    at: Timestamp::now(),
                };
                let plan = self
                    .update_plan(&id, |plan| {
                        plan.state = PlanState::Running {
                            approved: approved.clone(),
                        }
                    })
                    .ok_or_else(|| CommandError::UnknownPlan {
                        plan: id.to_string(),
                    })?;
                self.audit(
                    AuditKind::PlanApproved,
                    by,
                    Some(&id),
                    None,
                    "approved".into(),
                )
                .await;
                tokio::spawn(Arc::clone(self).run(id, approved));
                Ok(CommandOutcome { plan })
            }
            Command::Reject { plan: id, by } => {
                let plan = self.plan(&id).ok_or_else(|| CommandError::UnknownPlan {
                    plan: id.to_string(),
                })?;
                if plan.state != PlanState::AwaitingApproval {
                    return Err(CommandError::NotAwaitingApproval {
                        plan: id.to_string(),
                        state: plan.state.name().into(),
                    });
                }
                let rejected = Decision {
                    by: by.clone(),
                    at: Timestamp::now(),
                };
                let plan = self
                    .update_plan(&id, |plan| plan.state = PlanState::Rejected { rejected })
                    .ok_or_else(|| CommandError::UnknownPlan {
                        plan: id.to_string(),
                    })?;
                self.audit(
                    AuditKind::PlanRejected,
                    by,
                    Some(&id),
                    None,
                    "rejected".into(),
                )
                .await;
                Ok(CommandOutcome { plan })
            }
        }
    }
}

/// Starts the loop over `initial`; an approved plan's steps take `step_ms` each.
pub fn start(initial: Status, step_ms: u64) -> Scripted {
    let (handle, side) = ControllerHandle::new(initial);
    let ControllerSide {
        status,
        events,
        mut commands,
    } = side;
    let (seen, received) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        status,
        events,
        seq: Mutex::new(0),
        step_ms,
    });
    tokio::spawn(async move {
        while let Some(request) = commands.recv().await {
            let _ = seen.send(request.command.clone());
            let answer = shared.answer(request.command).await;
            let _ = request.reply.send(answer);
        }
    });
    Scripted { handle, received }
}

/// [`start`] with a plan (`kind`) already awaiting approval.
pub fn start_with_plan(kind: PlanKind, step_ms: u64) -> Scripted {
    let mut status = sample_status(true);
    status.plans.push(sample_plan(1, kind, Actor::Controller));
    start(status, step_ms)
}

/// The API served on a loopback port over TLS, as `meridian controller` serves it: a fresh
/// development CA and a `controller` certificate for `127.0.0.1`.
pub struct TlsServer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// A client that trusts the test CA and nothing else.
    pub http: reqwest::Client,
    /// The CA, PEM.
    pub ca_pem: String,
    /// The controller certificate's key, PEM (a browser test accepts it by its public key).
    pub key_pem: String,
    /// Stops the server.
    pub stop: tokio_util::sync::CancellationToken,
}

/// Serves `app` over TLS through [`meridian_controller::http::serve`].
pub async fn serve_tls(app: axum::Router) -> TlsServer {
    let ca = meridian_node::certs::DevCa::generate().expect("a CA");
    let issued = ca
        .issue(&"controller".parse().expect("a node name"))
        .expect("a certificate");
    let tls = meridian_node::tls::ServerTls::new(
        issued.cert_pem.clone().into_bytes(),
        issued.key_pem.clone().into_bytes(),
        None,
    )
    .expect("server TLS");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("https://{}", listener.local_addr().expect("bound"));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(meridian_controller::http::serve(
        listener,
        app,
        Some(Arc::new(tls)),
        "controller-test".to_owned(),
        stop.clone(),
    ));
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).expect("CA"))
        .build()
        .expect("an HTTP client");
    TlsServer {
        url,
        http,
        ca_pem: ca.cert_pem(),
        key_pem: issued.key_pem,
        stop,
    }
}
