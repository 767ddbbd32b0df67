//! Black-box test of issue 11, items 2 and 7: Ledger API authorization with JWTs. A local
//! deployment (SQLite, three participants) with `[ledger_auth]` on, as `up` runs it: the
//! workload's clients (tokens minted with the deployment's key) allocate bank, alice and bob
//! and the bank issues an IOU. Then a plain gRPC client tries every Ledger API route of
//! participant1 without a token, with a forged token (signed by another key under the real key
//! id), an expired token, a token for participant2, and a valid token for the wrong party (and
//! user, and without admin): UNAUTHENTICATED for the first four, PERMISSION_DENIED for the
//! last (ListParties, open to any valid token, answers). Nothing changed: the same parties and
//! active contracts, no completion for the refused command. Finally no node's log file holds a
//! token or the private key.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use meridian_auth::keys::generate_ed25519;
use meridian_auth::mint::{TokenGrant, TokenMinter};
use meridian_client::{ClientError, SubmitOutcome};
use meridian_core::{CommandId, UserId};
use meridian_lab::deployment::DeploymentSpec;
use meridian_lab::workload::Parties;
use meridian_proto::v1;
use meridian_proto::v1::ledger_service_client::LedgerServiceClient;
use tonic::transport::Channel;
use tonic::Code;

mod common;
use common::{iou_create, party, EXE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    AllocateParty,
    ListParties,
    SubmitAndWait,
    GetTransactions,
    GetActiveContracts,
    CompletionStream,
}

const ROUTES: [Route; 6] = [
    Route::AllocateParty,
    Route::ListParties,
    Route::SubmitAndWait,
    Route::GetTransactions,
    Route::GetActiveContracts,
    Route::CompletionStream,
];

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// The route's answer code: what the bank's application would call, as user `test` acting
/// and reading as bank, allocating `mallory`, streaming the completions of `test`.
async fn call(
    ledger: &mut LedgerServiceClient<Channel>,
    route: Route,
    token: Option<&str>,
) -> Code {
    let result = match route {
        Route::AllocateParty => ledger
            .allocate_party(with_token(
                v1::AllocatePartyRequest {
                    party: "mallory".into(),
                },
                token,
            ))
            .await
            .map(drop),
        Route::ListParties => ledger
            .list_parties(with_token(v1::ListPartiesRequest {}, token))
            .await
            .map(drop),
        Route::SubmitAndWait => {
            let command = meridian_client::ledger::command_to_wire(&iou_create("alice", 7));
            ledger
                .submit_and_wait(with_token(
                    v1::SubmitAndWaitRequest {
                        user_id: "test".into(),
                        command_id: "refused-issue".into(),
                        act_as: vec!["bank".into()],
                        commands: vec![command],
                        deduplication_period_s: None,
                    },
                    token,
                ))
                .await
                .map(drop)
        }
        Route::GetTransactions => ledger
            .get_transactions(with_token(
                v1::GetTransactionsRequest {
                    begin_offset: 0,
                    parties: vec!["bank".into()],
                },
                token,
            ))
            .await
            .map(drop),
        Route::GetActiveContracts => ledger
            .get_active_contracts(with_token(
                v1::GetActiveContractsRequest {
                    parties: vec!["bank".into()],
                },
                token,
            ))
            .await
            .map(drop),
        Route::CompletionStream => ledger
            .completion_stream(with_token(
                v1::CompletionStreamRequest {
                    user_id: "test".into(),
                    begin_offset: 0,
                },
                token,
            ))
            .await
            .map(drop),
    };
    match result {
        Ok(()) => Code::Ok,
        Err(status) => {
            if let Some(token) = token {
                assert!(
                    !status.message().contains(token),
                    "{route:?}: the message echoes the token"
                );
            }
            status.code()
        }
    }
}

fn grant(participant: &str, act_as: &[&str], admin: bool) -> TokenGrant {
    TokenGrant {
        participant: participant.into(),
        user: "test".into(),
        act_as: act_as.iter().map(|p| (*p).to_owned()).collect(),
        read_as: Vec::new(),
        admin,
        lifetime_s: 600,
    }
}

/// What participant1 shows of the ledger to a valid bank/alice/bob token: its parties and the
/// active contracts.
async fn ledger_state(
    ledger: &mut LedgerServiceClient<Channel>,
    token: &str,
) -> (Vec<String>, Vec<String>) {
    let mut parties: Vec<String> = ledger
        .list_parties(with_token(v1::ListPartiesRequest {}, Some(token)))
        .await
        .unwrap()
        .into_inner()
        .parties
        .into_iter()
        .map(|p| p.party)
        .collect();
    parties.sort();
    let mut contracts: Vec<String> = ledger
        .get_active_contracts(with_token(
            v1::GetActiveContractsRequest {
                parties: vec!["bank".into(), "alice".into(), "bob".into()],
            },
            Some(token),
        ))
        .await
        .unwrap()
        .into_inner()
        .contracts
        .into_iter()
        .map(|c| c.contract_id)
        .collect();
    contracts.sort();
    (parties, contracts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ledger_route_refuses_calls_outside_a_valid_token_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DeploymentSpec {
        exe: EXE.into(),
        ledger_auth: true,
        ..DeploymentSpec::local(dir.path().to_path_buf(), 3).unwrap()
    };
    let mut deployment = common::start_deployment(&spec).await;
    let auth = deployment
        .ledger_auth
        .clone()
        .expect("ledger auth configured");
    let key_text = std::fs::read_to_string(&auth.files.private_key).unwrap();

    // The lab's own clients carry tokens: allocation and an issue work.
    let user = UserId::new("test").unwrap();
    let parties = Parties::allocate(&deployment, &user).await.unwrap();
    let started = Instant::now();
    loop {
        match parties.clients[0]
            .submit_and_wait(
                &CommandId::new("issue-to-alice").unwrap(),
                &BTreeSet::from([party("bank")]),
                &[iou_create("alice", 100)],
            )
            .await
        {
            Ok(SubmitOutcome::Committed(_)) => break,
            Err(ClientError::Rejected {
                code: Code::NotFound,
                ..
            }) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("issuing alice's IOU: {other:?}"),
        }
    }

    let minter = TokenMinter::from_file(&auth.files.private_key).unwrap();
    let now_s = meridian_auth::now_s();
    let reader = minter
        .mint(
            &grant("participant1", &["bank", "alice", "bob"], false),
            now_s,
        )
        .unwrap();
    let forged = generate_ed25519().unwrap();
    let forged = TokenMinter::from_pem(&forged.private_pem)
        .unwrap()
        .with_key_id(auth.files.kid.clone())
        .mint(&grant("participant1", &["bank"], true), now_s)
        .unwrap();
    let expired = minter
        .mint(&grant("participant1", &["bank"], true), now_s - 7_200)
        .unwrap();
    let other_participant = minter
        .mint(&grant("participant2", &["bank"], true), now_s)
        .unwrap();
    // Valid for participant1, but acting as alice only, without admin; the completion stream
    // asks for user `test` while this token's user is someone else.
    let mut wrong_party = grant("participant1", &["alice"], false);
    wrong_party.user = "alice-app".into();
    let wrong_party = minter.mint(&wrong_party, now_s).unwrap();

    let mut ledger = common::grpc(LedgerServiceClient::new, deployment.ledger_endpoint(0))
        .await
        .unwrap();
    let before = ledger_state(&mut ledger, &reader).await;
    assert!(before.0.contains(&"bank".to_owned()), "{before:?}");
    assert_eq!(before.1.len(), 1, "alice's IOU: {before:?}");

    let cases = [
        ("no token", None, Code::Unauthenticated),
        ("forged", Some(forged.as_str()), Code::Unauthenticated),
        ("expired", Some(expired.as_str()), Code::Unauthenticated),
        (
            "wrong participant",
            Some(other_participant.as_str()),
            Code::Unauthenticated,
        ),
        (
            "wrong party",
            Some(wrong_party.as_str()),
            Code::PermissionDenied,
        ),
    ];
    let mut answers = Vec::new();
    for (case, token, expected) in cases {
        for route in ROUTES {
            let code = call(&mut ledger, route, token).await;
            // ListParties needs any valid token, nothing more.
            let expected = if case == "wrong party" && route == Route::ListParties {
                Code::Ok
            } else {
                expected
            };
            answers.push((case, route, code, expected));
        }
    }
    let wrong: Vec<_> = answers
        .iter()
        .filter(|(_, _, code, expected)| code != expected)
        .collect();
    assert!(
        wrong.is_empty(),
        "unexpected answers (case, route, got, want): {wrong:?}"
    );

    // A user id that is not the token's is refused too; an empty one is the token's.
    let mut submit = v1::SubmitAndWaitRequest {
        user_id: "mallory".into(),
        command_id: "refused-as-mallory".into(),
        act_as: vec!["bank".into()],
        commands: vec![meridian_client::ledger::command_to_wire(&iou_create(
            "alice", 9,
        ))],
        deduplication_period_s: None,
    };
    let bank_token = minter
        .mint(&grant("participant1", &["bank"], false), now_s)
        .unwrap();
    let refused = ledger
        .submit_and_wait(with_token(submit.clone(), Some(&bank_token)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("mallory"), "{refused:?}");

    // Nothing changed: no mallory, the same contracts (no refused issue committed).
    assert_eq!(ledger_state(&mut ledger, &reader).await, before);

    // The same token acting within its claims works, with the user filled in.
    submit.user_id = String::new();
    submit.command_id = "allowed-issue".into();
    ledger
        .submit_and_wait(with_token(submit, Some(&bank_token)))
        .await
        .unwrap();
    assert_eq!(ledger_state(&mut ledger, &reader).await.1.len(), 2);

    deployment.stop().await.unwrap();

    // No token and no private key in any node's log.
    let tokens = [
        &reader,
        &forged,
        &expired,
        &other_participant,
        &wrong_party,
        &bank_token,
    ];
    let key_lines: Vec<&str> = key_text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let mut logs = 0;
    for process in deployment.processes() {
        let log = std::fs::read_to_string(&process.log_path).unwrap();
        logs += 1;
        for token in tokens {
            assert!(
                !log.contains(token.as_str()),
                "a token in {}",
                process.log_path.display()
            );
            // Nor its signature on its own.
            let signature = token.rsplit('.').next().unwrap();
            assert!(
                !log.contains(signature),
                "a signature in {}",
                process.log_path.display()
            );
        }
        for line in &key_lines {
            assert!(
                !log.contains(line),
                "the private key in {}",
                process.log_path.display()
            );
        }
        if process
            .log_path
            .display()
            .to_string()
            .contains("participant")
        {
            assert!(
                log.contains("Ledger API authorization on"),
                "{}",
                process.log_path.display()
            );
            assert!(
                !log.contains("Ledger API is OPEN"),
                "{}",
                process.log_path.display()
            );
        }
    }
    assert!(logs >= 6, "{logs} logs");
}
