//! `ControllerClient` against the HTTP API served on a loopback port with the scripted loop:
//! propose, approve and wait for the plan to finish; refusals come back as the server's own
//! `CommandError` (or its message and status code), and a bounded wait says where the plan is.

mod support;

use std::time::Duration;

use meridian_controller::api::CommandError;
use meridian_controller::client::{ClientError, ControllerClient};
use meridian_controller::http::router;
use meridian_controller::plan::{Actor, PlanId, PlanState};
use meridian_node::admin_token::AdminToken;
use support::{sample_status, start, ADMIN_TOKEN};

/// The API over TLS (as `meridian controller` serves it) and a client that trusts its CA.
async fn serve(scripted: &support::Scripted) -> (String, reqwest::Client) {
    let app = router(
        scripted.handle.clone(),
        AdminToken::new(Some(ADMIN_TOKEN), "from the test"),
    );
    let server = support::serve_tls(app).await;
    (server.url, server.http)
}

#[tokio::test]
async fn propose_approve_and_wait_until_done() {
    let scripted = start(sample_status(true), 20);
    let (url, http) = serve(&scripted).await;
    let client = ControllerClient::new(http.clone(), format!("{url}/")).with_token(ADMIN_TOKEN);

    let status = client.status().await.expect("status");
    assert_eq!(status.regions.len(), 2);
    assert!(client.readiness().await.expect("readyz").active);

    let plan = client
        .propose(
            "region-2".into(),
            vec!["participant1".into()],
            Some("alice".into()),
        )
        .await
        .expect("proposed");
    assert_eq!(plan.state, PlanState::AwaitingApproval);
    assert_eq!(plan.proposed_by, Actor::Operator("alice".into()));

    let running = client
        .approve(&plan.id, false, None)
        .await
        .expect("approved");
    assert_eq!(running.state.name(), "running");
    let done = client
        .wait_for_plan(&plan.id, |p| !p.state.is_open(), Duration::from_secs(10))
        .await
        .expect("finished");
    assert_eq!(done.state.name(), "done");

    // Approving twice: the server's own error, with its message.
    let refusal = client
        .approve(&plan.id, false, None)
        .await
        .expect_err("twice");
    assert!(
        matches!(
            refusal,
            ClientError::Command(CommandError::NotAwaitingApproval { .. })
        ),
        "{refusal}"
    );
    assert_eq!(refusal.http_status(), Some(409));
    assert_eq!(
        refusal.to_string(),
        "plan plan-1 is done, not awaiting approval"
    );
}

#[tokio::test]
async fn refusals_carry_the_servers_message() {
    let scripted = start(sample_status(true), 20);
    let (url, http) = serve(&scripted).await;
    let anonymous = ControllerClient::new(http.clone(), url.clone());
    let refusal = anonymous
        .propose("region-2".into(), Vec::new(), None)
        .await
        .expect_err("no token");
    assert_eq!(refusal.http_status(), Some(401));
    assert!(
        refusal.to_string().contains("Authorization: Bearer"),
        "{refusal}"
    );

    let client = anonymous.with_token(ADMIN_TOKEN);
    let refusal = client
        .propose("region-9".into(), Vec::new(), None)
        .await
        .expect_err("unknown region");
    assert!(matches!(
        refusal,
        ClientError::Command(CommandError::UnknownRegion { .. })
    ));
    assert!(
        refusal.to_string().contains("region-1, region-2"),
        "{refusal}"
    );

    let refusal = client
        .wait_for_plan(
            &PlanId("plan-9".into()),
            |_| true,
            Duration::from_millis(300),
        )
        .await
        .expect_err("no such plan");
    assert!(
        matches!(refusal, ClientError::WaitTimedOut { .. }),
        "{refusal}"
    );

    let unreachable = ControllerClient::new(reqwest::Client::new(), "http://127.0.0.1:1");
    let refusal = unreachable.status().await.expect_err("nobody there");
    assert!(
        refusal
            .to_string()
            .contains("cannot reach the controller at http://127.0.0.1:1"),
        "{refusal}"
    );
}
