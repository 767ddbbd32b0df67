//! End to end through the Ledger API, in one process: a real sequencer, topology manager,
//! mediator and three participants (SQLite), talking gRPC over loopback. Covers the happy path
//! and the documented errors (docs/ledger-api.md); process-level crash tests live with the
//! binary.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use meridian_core::{ContractId, PartyId};
use meridian_proto::v1;
use meridian_proto::v1::ledger_service_client::LedgerServiceClient;
use meridian_testkit::cancel::SqliteWriteLock;
use support::{logged, retry, sqlite, synchronizer, Synchronizer};
use tonic::transport::Channel;
use tonic::Code;

struct Cluster {
    ledgers: Vec<LedgerServiceClient<Channel>>,
    /// The participants' admin HTTP addresses (`/status`, `/metrics`), in `ledgers` order.
    admins: Vec<std::net::SocketAddr>,
    /// Owns the synchronizer's nodes (dropping it stops the mediator) and its directory.
    sync: Synchronizer,
}

async fn start() -> Cluster {
    start_with(|_| {}).await
}

/// Starts the cluster with `adjust` applied to every participant's config.
async fn start_with(adjust: impl Fn(&mut meridian_participant::ParticipantConfig)) -> Cluster {
    let sync = synchronizer().await;
    let (d, mut admin) = (sync.dir.path(), sync.admin.clone());
    let mut ledgers = Vec::new();
    let mut admins = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let key =
            meridian_node::keys::load_or_create_key(&d.join(format!("{name}.key"))).expect("key");
        admin
            .add_participant(v1::AddParticipantRequest {
                participant: name.into(),
                public_key: key.public_key().to_bytes().to_vec(),
            })
            .await
            .expect("add participant");
        let mut config = sync.participant_config(name, sqlite(d, name));
        adjust(&mut config);
        let endpoint = format!("http://{}", config.listen_address);
        admins.push(config.admin_address);
        tokio::spawn(logged(
            "participant",
            meridian_participant::run(config, sync.shutdown.clone()),
        ));
        let ledger = retry("participant ready", || {
            let endpoint = endpoint.clone();
            async move {
                let mut client = LedgerServiceClient::connect(endpoint)
                    .await
                    .map_err(|e| e.to_string())?;
                client
                    .list_parties(v1::ListPartiesRequest {})
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(client)
            }
        })
        .await;
        ledgers.push(ledger);
    }
    Cluster {
        ledgers,
        admins,
        sync,
    }
}

fn submit(
    user: &str,
    command_id: &str,
    act_as: &[&str],
    commands: Vec<v1::Command>,
) -> v1::SubmitAndWaitRequest {
    v1::SubmitAndWaitRequest {
        user_id: user.into(),
        command_id: command_id.into(),
        act_as: act_as.iter().map(|p| p.to_string()).collect(),
        commands,
        deduplication_period_s: None,
    }
}

fn create_iou(owner: &str, amount: u64) -> v1::Command {
    v1::Command {
        command: Some(v1::command::Command::Create(v1::CreateCommand {
            template: "Iou".into(),
            payload_json: format!(
                r#"{{"issuer":"bank","owner":"{owner}","amount":{amount},"currency":"USD"}}"#
            ),
        })),
    }
}

fn exercise(contract: &str, choice: &str, argument: &str) -> v1::Command {
    v1::Command {
        command: Some(v1::command::Command::Exercise(v1::ExerciseCommand {
            contract_id: contract.into(),
            choice: choice.into(),
            argument_json: argument.into(),
        })),
    }
}

fn transfer_to(contract: &str, new_owner: &str) -> v1::Command {
    exercise(
        contract,
        "Transfer",
        &format!(r#"{{"new_owner":"{new_owner}"}}"#),
    )
}

/// The bank issues an IOU to alice through `bank_ledger`; returns the new contract's id.
async fn issue_to_alice(
    bank_ledger: &LedgerServiceClient<Channel>,
    command_id: &str,
    amount: u64,
) -> String {
    let issued = bank_ledger
        .clone()
        .submit_and_wait(submit(
            "bank-app",
            command_id,
            &["bank"],
            vec![create_iou("alice", amount)],
        ))
        .await
        .expect("issue")
        .into_inner();
    created_id(&issued)
}

/// Submits `command` acting for alice (user "u", command "c"), which `ledger` must refuse.
async fn refused_for_alice(
    ledger: &mut LedgerServiceClient<Channel>,
    command: v1::Command,
) -> tonic::Status {
    ledger
        .submit_and_wait(submit("u", "c", &["alice"], vec![command]))
        .await
        .expect_err("a command the participant must refuse")
}

fn created_id(response: &v1::SubmitAndWaitResponse) -> String {
    let transaction = response.transaction.as_ref().expect("transaction view");
    transaction
        .events
        .iter()
        .find_map(|e| match &e.event {
            Some(v1::event::Event::Created(c)) => Some(c.contract_id.clone()),
            _ => None,
        })
        .expect("a created event")
}

/// Allocates alice on p1, bob on p2 and bank on p3, and waits until every participant knows
/// all three.
async fn allocate_parties(cluster: &Cluster) {
    let [p1, p2, p3] = [0, 1, 2].map(|i| cluster.ledgers[i].clone());
    for (ledger, party) in [(&p1, "alice"), (&p2, "bob"), (&p3, "bank")] {
        let allocated = ledger
            .clone()
            .allocate_party(v1::AllocatePartyRequest {
                party: party.into(),
            })
            .await
            .expect("allocate")
            .into_inner();
        assert_eq!(allocated.party, party);
    }
    // Every participant learns every party (through the sequencer).
    for ledger in [&p1, &p2, &p3] {
        retry("parties visible", || {
            let mut ledger = ledger.clone();
            async move {
                let parties = ledger
                    .list_parties(v1::ListPartiesRequest {})
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .parties;
                (parties.len() == 3)
                    .then_some(())
                    .ok_or_else(|| format!("{} parties", parties.len()))
            }
        })
        .await;
    }
}

/// bank (p3) issues an IOU of 100 to alice, who (on p1) transfers it to bob: the IOU's id,
/// the transfer command and its answer.
async fn issue_and_transfer(
    cluster: &Cluster,
) -> (String, v1::SubmitAndWaitRequest, v1::SubmitAndWaitResponse) {
    let iou = issue_to_alice(&cluster.ledgers[2], "issue-1", 100).await;
    let transfer = submit(
        "alice-app",
        "transfer-1",
        &["alice"],
        vec![transfer_to(&iou, "bob")],
    );
    let transferred = cluster.ledgers[0]
        .clone()
        .submit_and_wait(transfer.clone())
        .await
        .expect("transfer")
        .into_inner();
    (iou, transfer, transferred)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_api_end_to_end() {
    let cluster = start().await;
    let [p1, p2, p3] = [0, 1, 2].map(|i| cluster.ledgers[i].clone());
    allocate_parties(&cluster).await;

    // Issue and transfer.
    let (iou, transfer, transferred) = issue_and_transfer(&cluster).await;
    assert!(transferred.offset > 0);
    the_transfer_was_timed_stage_by_stage(cluster.admins[0]).await;
    let bobs = retry("bob sees the IOU", || {
        let mut p2 = p2.clone();
        async move {
            let acs = p2
                .get_active_contracts(v1::GetActiveContractsRequest {
                    parties: vec!["bob".into()],
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            (!acs.contracts.is_empty())
                .then_some(acs.contracts)
                .ok_or_else(|| "no contract yet".to_owned())
        }
    })
    .await;
    assert_eq!(bobs.len(), 1);
    assert!(bobs[0].payload_json.contains("\"amount\":100"));

    // A retry of the same command: the original outcome, never a second transaction.
    let duplicate = p1.clone().submit_and_wait(transfer).await.unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");
    assert!(
        duplicate.message().contains(&transferred.transaction_id),
        "{duplicate:?}"
    );

    // The same command twice at once: one submission, whose outcome answers both calls (the
    // second as ALREADY_EXISTS naming the transaction), never a second transaction.
    let issue_twice = submit(
        "bank-app",
        "issue-twice",
        &["bank"],
        vec![create_iou("alice", 5)],
    );
    let (mut once, mut twice) = (p3.clone(), p3.clone());
    let (first, second) = tokio::join!(
        once.submit_and_wait(issue_twice.clone()),
        twice.submit_and_wait(issue_twice),
    );
    let (committed, duplicate) = match (first, second) {
        (Ok(committed), Err(duplicate)) | (Err(duplicate), Ok(committed)) => {
            (committed.into_inner(), duplicate)
        }
        other => panic!("expected one commit and one duplicate: {other:?}"),
    };
    assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");
    let named = duplicate
        .metadata()
        .get("meridian-transaction-id")
        .and_then(|value| value.to_str().ok());
    assert_eq!(
        named,
        Some(committed.transaction_id.as_str()),
        "{duplicate:?}"
    );

    // Errors, each with its documented code.
    let mut p1c = p1.clone();
    let err = p1c
        .submit_and_wait(submit("", "c", &["alice"], vec![create_iou("alice", 1)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("user_id"), "{err:?}");
    let err = refused_for_alice(
        &mut p1c,
        v1::Command {
            command: Some(v1::command::Command::Create(v1::CreateCommand {
                template: "Iou".into(),
                payload_json: "{not json".into(),
            })),
        },
    )
    .await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("commands[0].create.payload_json"),
        "{err:?}"
    );
    let err = p1c
        .submit_and_wait(submit("u", "c", &["bob"], vec![create_iou("bob", 1)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = p1c
        .submit_and_wait(submit("u", "c", &["mallory"], vec![create_iou("alice", 1)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = refused_for_alice(&mut p1c, transfer_to(&iou, "bob")).await;
    assert_eq!(err.code(), Code::FailedPrecondition, "archived: {err:?}");
    let err = refused_for_alice(&mut p1c, transfer_to("no-such-contract", "bob")).await;
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // A double spend: exactly one of two concurrent transfers commits.
    let second = issue_to_alice(&p3, "issue-2", 50).await;
    let err = refused_for_alice(&mut p1c, exercise(&second, "Split", r#"{"amount":500}"#)).await;
    assert_eq!(err.code(), Code::InvalidArgument, "bad argument: {err:?}");
    let race = |command_id: &str, new_owner: &str| {
        let mut p1 = p1.clone();
        let request = submit(
            "alice-app",
            command_id,
            &["alice"],
            vec![transfer_to(&second, new_owner)],
        );
        tokio::spawn(async move { p1.submit_and_wait(request).await })
    };
    let (a, b) = (race("race-a", "bob"), race("race-b", "bank"));
    let results = [a.await.expect("join"), b.await.expect("join")];
    let committed = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(committed, 1, "{results:?}");
    for result in &results {
        if let Err(status) = result {
            assert!(
                matches!(status.code(), Code::Aborted | Code::FailedPrecondition),
                "{status:?}"
            );
        }
    }

    // Streams: bob's transactions at p2, alice-app's completions at p1.
    let mut stream = p2
        .clone()
        .get_transactions(v1::GetTransactionsRequest {
            begin_offset: 0,
            parties: vec!["bob".into()],
        })
        .await
        .expect("stream")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a transaction")
        .expect("item")
        .expect("ok");
    assert!(first
        .events
        .iter()
        .any(|e| matches!(&e.event, Some(v1::event::Event::Created(c)) if c.contract_id != iou)));
    let mut completions = p1
        .clone()
        .completion_stream(v1::CompletionStreamRequest {
            user_id: "alice-app".into(),
            begin_offset: 0,
        })
        .await
        .expect("completions")
        .into_inner();
    let mut seen = BTreeSet::new();
    while seen.len() < 3 {
        let completion = tokio::time::timeout(Duration::from_secs(10), completions.next())
            .await
            .expect("a completion")
            .expect("item")
            .expect("ok");
        seen.insert(completion.command_id);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["transfer-1".into(), "race-a".into(), "race-b".into()])
    );
    let _ = (PartyId::new("x"), ContractId::new("y"));
    cluster.sync.shutdown.cancel();
}

/// p1 submitted one transfer so far: its `/status` and `/metrics` time it stage by stage, and
/// the stages add up to no more than the call took.
async fn the_transfer_was_timed_stage_by_stage(admin: std::net::SocketAddr) {
    let status: serde_json::Value = reqwest::get(format!("http://{admin}/status"))
        .await
        .expect("GET /status")
        .json()
        .await
        .expect("a JSON status");
    let stages = &status["submissions"]["stages"];
    let mut total_ms = 0.0;
    for stage in ["admitted", "sequenced", "delivered", "decided", "completed"] {
        let count = stages[stage]["count"].as_u64().expect("a count");
        // The sequencer's receipt can reach the caller after the request came back on the
        // stream; that mark is then skipped, and `delivered` covers it.
        let expected = if stage == "sequenced" { 0..=1 } else { 1..=1 };
        assert!(expected.contains(&count), "{stage}: {count} in {status}");
        let mean_ms = stages[stage]["mean_ms"].as_f64().expect("a mean");
        total_ms += mean_ms;
        // One duration: its median and p99 are itself, to the histogram's two digits.
        for quantile in ["p50_ms", "p99_ms"] {
            let figure = stages[stage][quantile].as_f64().expect("a quantile");
            let want = if count == 1 { mean_ms } else { 0.0 };
            assert!(
                (figure - want).abs() <= want / 100.0 + 0.001,
                "{stage} {quantile}: {figure} against {want} in {status}"
            );
        }
    }
    assert!(total_ms > 0.0, "{status}");
    assert!(total_ms < 15_000.0, "{status}");
    assert_eq!(status["submissions"]["untimed"], 0, "{status}");
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains(
            r#"meridian_participant_submission_stage_seconds_count{stage="completed"} 1"#
        ),
        "{metrics}"
    );
}

/// A participant that keeps no committed change in memory (`dedup_memory_window_s = 0`)
/// still answers a retry within the deduplication period with the original outcome: the
/// writer reads the entry back from the database before deciding.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_is_deduplicated_from_the_database_once_memory_let_go() {
    let cluster = start_with(|config| config.dedup_memory_window_s = 0).await;
    let p1 = cluster.ledgers[0].clone();
    allocate_parties(&cluster).await;
    let (iou, transfer, transferred) = issue_and_transfer(&cluster).await;

    // Memory let go of the committed change (the gauge counts what it holds).
    let admin = cluster.admins[0];
    retry("p1 holds no deduplication entry in memory", || async move {
        let metrics = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        metrics
            .contains("meridian_participant_dedup_memory_entries 0")
            .then_some(())
            .ok_or_else(|| "entries still in memory".to_owned())
    })
    .await;

    // The retry is the same duplicate as with the entry in memory: ALREADY_EXISTS naming the
    // original transaction, never a second one (nor an error about the archived IOU).
    let duplicate = p1.clone().submit_and_wait(transfer).await.unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");
    assert!(
        duplicate.message().contains(&transferred.transaction_id),
        "{duplicate:?}"
    );
    // A new command is not mistaken for one: the store lookup finds nothing for it.
    let other = issue_to_alice(&cluster.ledgers[2], "issue-2", 7).await;
    assert_ne!(other, iou);
}

/// A participant whose commit stalls goes on processing the stream: bank's participant (p3)
/// confirms both transfers of bank's IOUs while its database's write lock is held elsewhere
/// (each of its commits waits for it), yet answers none of its own callers before the commit
/// that records the answer, and writes everything it processed once the lock is released.
/// With one batch at a time it would confirm at most the first transfer: the second request
/// would wait behind the stalled commit until the mediator timed it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_participant_keeps_confirming_while_its_commit_waits() {
    let cluster = start().await;
    allocate_parties(&cluster).await;
    let first = issue_to_alice(&cluster.ledgers[2], "issue-1", 1).await;
    let second = issue_to_alice(&cluster.ledgers[2], "issue-2", 2).await;

    let lock = SqliteWriteLock::take(&cluster.sync.dir.path().join("p3.db")).await;

    // A command of p3's own: admitted by its engine, answered only after the commit.
    let mut p3 = cluster.ledgers[2].clone();
    let issue = tokio::spawn(async move {
        p3.submit_and_wait(submit(
            "bank-app",
            "issue-3",
            &["bank"],
            vec![create_iou("alice", 3)],
        ))
        .await
    });
    for (n, iou) in [&first, &second].into_iter().enumerate() {
        let transfer = submit(
            "alice-app",
            &format!("transfer-{n}"),
            &["alice"],
            vec![transfer_to(iou, "bob")],
        );
        cluster.ledgers[0]
            .clone()
            .submit_and_wait(transfer)
            .await
            .unwrap_or_else(|status| panic!("transfer {n} while p3's commit waits: {status:?}"));
    }
    assert!(
        !issue.is_finished(),
        "p3 answered a command before its commit: {:?}",
        issue.await
    );

    lock.release().await;
    issue
        .await
        .expect("the issuing task")
        .expect("p3 answers once its commit is through");
    // What p3 processed while it waited is written: bank's IOUs as p3 tells them.
    let owners = retry("p3 shows both transfers and the new IOU", || {
        let mut p3 = cluster.ledgers[2].clone();
        async move {
            let acs = p3
                .get_active_contracts(v1::GetActiveContractsRequest {
                    parties: vec!["bank".into()],
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let mut owners: Vec<String> = acs
                .contracts
                .iter()
                .map(|c| {
                    let payload: serde_json::Value =
                        serde_json::from_str(&c.payload_json).expect("an IOU's payload");
                    format!("{}:{}", payload["owner"], payload["amount"])
                })
                .collect();
            owners.sort();
            (owners.len() == 3)
                .then_some(owners.clone())
                .ok_or_else(|| format!("bank's IOUs so far: {owners:?}"))
        }
    })
    .await;
    assert_eq!(owners, ["\"alice\":3", "\"bob\":1", "\"bob\":2"]);
}
