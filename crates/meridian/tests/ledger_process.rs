//! Black-box tests of the transaction protocol with every node a real process: the demo
//! workload and its audit (twice on one data directory), bad commands, double spends,
//! deduplication, a confirming participant down during a request, a command retried after
//! the submitting participant crashed, and responses and verdicts coalesced under load.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeSet;
use std::time::Duration;

use meridian_client::{ClientError, LedgerClient, SubmitOutcome};
use meridian_core::ledger::{Command, Contract};
use meridian_core::template::Iou;
use meridian_core::{CommandId, PartyId, TemplateId, UserId};
use meridian_lab::deployment::{Deployment, DeploymentSpec};
use meridian_lab::workload::{self, Live, Parties, WorkloadSpec};
use meridian_proto::v1;
use meridian_proto::v1::ledger_service_client::LedgerServiceClient;
use tokio_util::sync::CancellationToken;

mod common;
use common::{iou_create, party, transfer};

/// Three unreplicated participants on SQLite, one sequencer instance.
fn spec(dir: &std::path::Path) -> DeploymentSpec {
    DeploymentSpec {
        exe: common::EXE.into(),
        ..DeploymentSpec::local(dir.to_path_buf(), 3).unwrap()
    }
}

/// Starts `spec` and allocates the demo parties for user `test`.
async fn start(spec: &DeploymentSpec) -> (Deployment, Parties) {
    let deployment = common::start_deployment(spec).await;
    let parties = Parties::allocate(&deployment, &UserId::new("test").unwrap())
        .await
        .unwrap();
    (deployment, parties)
}

/// [`spec`] started in a fresh directory, which lives as long as the returned `TempDir`.
async fn start_fresh() -> (tempfile::TempDir, Deployment, Parties) {
    start_fresh_with(|_| {}).await
}

/// [`start_fresh`] with the spec changed by `adjust` first.
async fn start_fresh_with(
    adjust: impl FnOnce(&mut DeploymentSpec),
) -> (tempfile::TempDir, Deployment, Parties) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path());
    adjust(&mut spec);
    let (deployment, parties) = start(&spec).await;
    (dir, deployment, parties)
}

/// Starts participant `index` (from 0) again after a kill and waits until it is ready.
async fn restart_participant(deployment: &mut Deployment, index: usize) {
    let exe = deployment.exe().to_path_buf();
    deployment.participants[index].start(&exe).unwrap();
    deployment.participants[index]
        .wait_ready(Duration::from_secs(60))
        .await
        .unwrap();
}

/// The `act_as` set of a command acting for `name` alone.
fn acting_for(name: &str) -> BTreeSet<PartyId> {
    BTreeSet::from([party(name)])
}

fn command_id(name: &str) -> CommandId {
    CommandId::new(name).unwrap()
}

/// How long `issue` waits for alice's participant to see a freshly issued IOU.
const ISSUE_VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Issues an IOU from the bank to alice, and returns once alice's participant (participant 2)
/// has processed it too: the submitting participant reports the commit first, and a command
/// of alice's on participant 2 before then would be rejected with NotFound.
async fn issue(parties: &Parties, id: &str, amount: u64) -> Contract {
    let iou = match parties.clients[0]
        .submit_and_wait(
            &command_id(id),
            &acting_for("bank"),
            &[iou_create("alice", amount)],
        )
        .await
        .unwrap()
    {
        SubmitOutcome::Committed(c) => c.created.into_iter().next().unwrap(),
        other => panic!("unexpected {other:?}"),
    };
    let deadline = tokio::time::Instant::now() + ISSUE_VISIBLE_TIMEOUT;
    while !ious(&parties.clients[1], "alice")
        .await
        .iter()
        .any(|(c, _)| c.id == iou.id)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "IOU {id} not visible to alice within {ISSUE_VISIBLE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    iou
}

/// How many IOUs of `amount` the bank's participant sees: every IOU has the bank as issuer,
/// so this counts the copies anywhere in the ledger.
async fn bank_copies_of(parties: &Parties, amount: u64) -> usize {
    ious(&parties.clients[0], "bank")
        .await
        .iter()
        .filter(|(_, a)| *a == amount)
        .count()
}

fn code(result: Result<SubmitOutcome, ClientError>) -> (tonic::Code, String) {
    match result {
        Err(ClientError::Rejected { code, message }) => (code, message),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

async fn ious(client: &LedgerClient, owner: &str) -> Vec<(Contract, u64)> {
    let (_, contracts) = client
        .active_contracts(&BTreeSet::from([party(owner)]))
        .await
        .unwrap();
    contracts
        .into_iter()
        .filter_map(|c| Iou::payload(&c).ok().map(|p| (c.clone(), p.amount)))
        .collect()
}

/// Runs `lanes` transfer lanes for `seconds` as run `run`, asserts that nothing was rejected
/// and that the audit finds every acknowledged transfer exactly once; returns how many
/// committed.
async fn transfer_and_audit(parties: &Parties, lanes: usize, run: &str, seconds: u64) -> u64 {
    let lanes = workload::issue_lanes(parties, lanes, run).await.unwrap();
    let baseline = workload::baseline(parties).await.unwrap();
    let report = workload::run_transfers(
        parties,
        lanes,
        &WorkloadSpec {
            duration: Duration::from_secs(seconds),
            rate: None,
            run: run.to_owned(),
        },
        std::sync::Arc::new(Live::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(report.rejections.is_empty(), "{run}: {report:?}");
    let audit = workload::audit(parties, &baseline, &report.committed_transactions)
        .await
        .unwrap();
    assert!(audit.audit_ok, "{run}: {audit:?}");
    assert_eq!(audit.acknowledged_checked as u64, report.committed);
    report.committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_workload_audits_clean_and_a_second_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    for round in 0..2 {
        let (mut deployment, parties) = start(&spec).await;
        let committed = transfer_and_audit(&parties, 8, &format!("round{round}"), 3).await;
        assert!(committed > 8, "round {round}: {committed} committed");
        deployment.stop().await.unwrap();
    }
}

/// The sum and count of histogram `name` in a Prometheus text exposition.
fn histogram_sum_and_count(text: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}_{suffix} ")))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .unwrap_or_else(|| panic!("no {name}_{suffix} in:\n{text}"))
    };
    (value("sum"), value("count"))
}

/// Under concurrent transfers, a participant sends the confirmation responses of one batch,
/// and the mediator the verdicts queued at one moment, as one submission each — and nothing
/// is lost or committed twice for it (the audit checks every acknowledged transfer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_coalesce_responses_and_verdicts_and_audit_clean() {
    let (_dir, mut deployment, parties) = start_fresh().await;
    let committed = transfer_and_audit(&parties, 32, "coalesce", 4).await;
    assert!(committed > 32, "{committed} committed");

    let http = meridian_lab::tls::http().unwrap();
    let (mut responses, mut response_sends) = (0.0, 0.0);
    let (mut verdicts, mut verdict_sends) = (0.0, 0.0);
    for process in deployment.processes() {
        let text = common::admin_metrics(&http, process.admin_address).await;
        match process.role_command() {
            "participant" => {
                let (sum, count) =
                    histogram_sum_and_count(&text, "meridian_participant_messages_per_send");
                responses += sum;
                response_sends += count;
            }
            "mediator" => {
                (verdicts, verdict_sends) =
                    histogram_sum_and_count(&text, "meridian_mediator_verdicts_per_send");
            }
            _ => {}
        }
    }
    // Every committed transfer needed two responses and one verdict at least.
    assert!(responses >= 2.0 * committed as f64, "{responses} responses");
    assert!(verdicts >= committed as f64, "{verdicts} verdicts");
    // With 32 lanes in flight, batches hold several: fewer submissions than messages.
    assert!(
        response_sends < responses,
        "{response_sends} submissions for {responses} responses"
    );
    assert!(
        verdict_sends < verdicts,
        "{verdict_sends} submissions for {verdicts} verdicts"
    );
    deployment.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_documented_errors() {
    let (_dir, mut deployment, parties) = start_fresh().await;
    let bank = acting_for("bank");
    let alice = acting_for("alice");
    let p1 = &parties.clients[0];
    let p2 = &parties.clients[1];

    // Malformed payload JSON and unknown template: raw gRPC, as a sloppy client would send.
    let mut raw = common::grpc(LedgerServiceClient::new, deployment.ledger_endpoint(0))
        .await
        .unwrap();
    let status = raw
        .submit_and_wait(v1::SubmitAndWaitRequest {
            user_id: "test".into(),
            command_id: "malformed".into(),
            act_as: vec!["bank".into()],
            commands: vec![v1::Command {
                command: Some(v1::command::Command::Create(v1::CreateCommand {
                    template: "Iou".into(),
                    payload_json: "{not json".into(),
                })),
            }],
            deduplication_period_s: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = raw
        .submit_and_wait(v1::SubmitAndWaitRequest {
            user_id: "test".into(),
            command_id: "no-commands".into(),
            act_as: vec!["bank".into()],
            commands: vec![],
            deduplication_period_s: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let (code_, message) = code(
        p1.submit_and_wait(
            &command_id("unknown-template"),
            &bank,
            &[Command::Create {
                template: TemplateId::new("Nope").unwrap(),
                payload: serde_json::json!({}),
            }],
        )
        .await,
    );
    assert_eq!(code_, tonic::Code::InvalidArgument, "{message}");
    let (code_, message) = code(
        p1.submit_and_wait(&command_id("zero"), &bank, &[iou_create("alice", 0)])
            .await,
    );
    assert_eq!(code_, tonic::Code::InvalidArgument, "{message}");
    assert!(message.contains("positive"), "{message}");

    // Unknown party, and a party hosted elsewhere.
    let (code_, message) = code(
        p1.submit_and_wait(
            &command_id("ghost"),
            &acting_for("ghost"),
            &[iou_create("alice", 1)],
        )
        .await,
    );
    assert!(
        matches!(code_, tonic::Code::NotFound | tonic::Code::PermissionDenied),
        "{code_:?} {message}"
    );
    let (code_, message) = code(
        p1.submit_and_wait(&command_id("not-here"), &alice, &[iou_create("alice", 1)])
            .await,
    );
    assert_eq!(code_, tonic::Code::PermissionDenied, "{message}");

    // Bad choice argument, unknown choice.
    let iou = issue(&parties, "bad-args-iou", 50).await;
    let (code_, message) = code(
        p2.submit_and_wait(
            &command_id("bad-arg"),
            &alice,
            &[Command::Exercise {
                contract_id: iou.id.clone(),
                choice: "Transfer".into(),
                argument: serde_json::json!({ "owner": "bob" }),
            }],
        )
        .await,
    );
    assert_eq!(code_, tonic::Code::InvalidArgument, "{message}");
    let (code_, _) = code(
        p2.submit_and_wait(
            &command_id("bad-choice"),
            &alice,
            &[Command::Exercise {
                contract_id: iou.id.clone(),
                choice: "Steal".into(),
                argument: serde_json::json!({}),
            }],
        )
        .await,
    );
    assert_eq!(code_, tonic::Code::InvalidArgument);

    // A transfer, then the same command again (duplicate), then the archived contract again.
    let first = p2
        .submit_and_wait(&command_id("move-1"), &alice, &[transfer(&iou, "bob")])
        .await
        .unwrap();
    let SubmitOutcome::Committed(first) = first else {
        panic!("{first:?}")
    };
    let (code_, message) = code(
        p2.submit_and_wait(&command_id("move-1"), &alice, &[transfer(&iou, "bob")])
            .await,
    );
    assert_eq!(code_, tonic::Code::AlreadyExists, "{message}");
    assert!(
        message.contains(&first.transaction_id),
        "the original outcome: {message}"
    );
    let (code_, message) = code(
        p2.submit_and_wait(&command_id("move-again"), &alice, &[transfer(&iou, "bob")])
            .await,
    );
    assert!(
        matches!(
            code_,
            tonic::Code::NotFound | tonic::Code::FailedPrecondition
        ),
        "{code_:?} {message}"
    );

    // Nothing above changed the ledger except the one transfer. Bob is hosted on another
    // participant, which applies the commit on its own schedule: wait for it (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut bob = ious(&parties.clients[2], "bob").await;
    while bob.iter().all(|(_, a)| *a != 50) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        bob = ious(&parties.clients[2], "bob").await;
    }
    assert_eq!(bob.iter().filter(|(_, a)| *a == 50).count(), 1);
    assert!(ious(p2, "alice").await.iter().all(|(_, a)| *a != 50));
    deployment.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_spend_commits_exactly_once() {
    let (_dir, mut deployment, parties) = start_fresh().await;
    let alice = acting_for("alice");
    for round in 0..5 {
        let iou = issue(&parties, &format!("ds-iou-{round}"), 77 + round).await;
        // Alice transfers the IOU through participant 2 as `command`; run twice at once.
        let transfer_as = |command: String, new_owner: &'static str| {
            let (client, iou, alice) = (parties.clients[1].clone(), iou.clone(), alice.clone());
            async move {
                client
                    .submit_and_wait(&command_id(&command), &alice, &[transfer(&iou, new_owner)])
                    .await
            }
        };
        let (a, b) = tokio::join!(
            transfer_as(format!("ds-a-{round}"), "bob"),
            transfer_as(format!("ds-b-{round}"), "bank"),
        );
        let successes = [&a, &b]
            .iter()
            .filter(|r| matches!(r, Ok(SubmitOutcome::Committed(_))))
            .count();
        assert_eq!(successes, 1, "round {round}: {a:?} / {b:?}");
        for result in [a, b] {
            if let Err(error) = result {
                let ClientError::Rejected { code, .. } = &error else {
                    panic!("{error:?}")
                };
                assert!(
                    matches!(
                        code,
                        tonic::Code::Aborted
                            | tonic::Code::NotFound
                            | tonic::Code::FailedPrecondition
                    ),
                    "{error:?}"
                );
            }
        }
        // Exactly one IOU of that amount exists anywhere, on every participant's view.
        assert_eq!(
            bank_copies_of(&parties, 77 + round).await,
            1,
            "round {round}"
        );
    }
    deployment.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirming_participant_down_times_out_and_nobody_commits() {
    let (_dir, mut deployment, parties) =
        start_fresh_with(|spec| spec.mediator.response_timeout_ms = 2_000).await;
    let iou = issue(&parties, "timeout-iou", 99).await;
    // The bank (participant 1) must confirm every transfer; it is gone.
    deployment.participants[0].kill9().unwrap();
    let result = parties.clients[1]
        .submit_and_wait(
            &command_id("during-outage"),
            &acting_for("alice"),
            &[transfer(&iou, "bob")],
        )
        .await;
    let (code_, message) = code(result);
    assert_eq!(code_, tonic::Code::Aborted, "{message}");
    assert!(message.to_lowercase().contains("timeout"), "{message}");
    // Participant 1 comes back, replays the request and the TIMEOUT verdict.
    restart_participant(&mut deployment, 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (client, owner) in [
        (&parties.clients[0], "bank"),
        (&parties.clients[1], "alice"),
    ] {
        let view = ious(client, owner).await;
        assert!(
            view.iter().any(|(c, _)| c.id == iou.id),
            "{owner}'s participant still has the original IOU"
        );
    }
    assert!(ious(&parties.clients[2], "bob")
        .await
        .iter()
        .all(|(_, a)| *a != 99));
    // And the IOU is still usable.
    let retry = parties.clients[1]
        .submit_and_wait(
            &command_id("after-outage"),
            &acting_for("alice"),
            &[transfer(&iou, "bob")],
        )
        .await
        .unwrap();
    assert!(matches!(retry, SubmitOutcome::Committed(_)), "{retry:?}");
    deployment.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_retried_after_a_crash_commits_once() {
    // A short max sequencing time bounds how long an in-flight submission's fate stays open.
    let (_dir, mut deployment, parties) =
        start_fresh_with(|spec| spec.participant.max_sequencing_delay_ms = 2_000).await;
    let alice = acting_for("alice");
    for round in 0..3u64 {
        let amount = 500 + round;
        let iou = issue(&parties, &format!("crash-iou-{round}"), amount).await;
        let id = command_id(&format!("crash-move-{round}"));
        // Submit, and kill the submitting participant while the request is in flight.
        let client = parties.clients[1].clone();
        let (iou2, alice2, id2) = (iou.clone(), alice.clone(), id.clone());
        let pending = tokio::spawn(async move {
            client
                .submit_and_wait(&id2, &alice2, &[transfer(&iou2, "bob")])
                .await
        });
        tokio::time::sleep(Duration::from_millis(5 * round)).await;
        deployment.participants[1].kill9().unwrap();
        restart_participant(&mut deployment, 1).await;
        // The client library retried the interrupted call with the same command id against
        // the restarted participant; it ends in one definite outcome.
        let first = pending.await.unwrap();
        match &first {
            Ok(_) => {}
            Err(ClientError::Rejected { code, .. }) if *code == tonic::Code::Aborted => {}
            other => panic!("round {round}: {other:?}"),
        }
        // The application retries once more with the same command id: the original outcome.
        let outcome = parties.clients[1]
            .submit_and_wait(&id, &alice, &[transfer(&iou, "bob")])
            .await;
        match (&first, &outcome) {
            (Ok(_), Err(ClientError::Rejected { code, .. })) => {
                assert_eq!(
                    *code,
                    tonic::Code::AlreadyExists,
                    "round {round}: {outcome:?}"
                )
            }
            // Only commits deduplicate: after a definite rejection a resubmission may commit.
            (Err(_), Ok(_)) => {}
            other => panic!("round {round}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Never two transactions: exactly one IOU of this amount, wherever it is.
        assert_eq!(
            bank_copies_of(&parties, amount).await,
            1,
            "round {round}: {first:?} then {outcome:?}"
        );
    }
    deployment.stop().await.unwrap();
}
