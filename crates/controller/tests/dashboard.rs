//! The dashboard in real headless Chromium (Debian's chromium + chromium-driver, driven
//! through `meridian_testkit::browser`) against the HTTP API served over TLS on a loopback
//! port (Chromium accepts that one test certificate by its public key hash), with
//! the scripted controller loop behind it: the page shows the regions and the pending plan;
//! Approve without the token shows the server's refusal; with the token typed in, the loop
//! receives the Approve, runs the plan, and the page follows it to done live — no reload.
//!
//! A screenshot of the finished page is written to the temporary directory. The picture in
//! the docs comes from the real controller instead (`crates/meridian/tests/
//! controller_dashboard.rs`).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use meridian_controller::api::Command;
use meridian_controller::http::router;
use meridian_controller::plan::{Actor, PlanId, PlanKind};
use meridian_node::admin_token::AdminToken;
use meridian_testkit::browser::{spki_sha256_base64, Browser};
use support::{serve_tls, start_with_plan, ADMIN_TOKEN};

const WAIT: Duration = Duration::from_secs(15);

fn screenshot_paths() -> Vec<PathBuf> {
    vec![std::env::temp_dir().join("meridian-dashboard.png")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_in_the_browser_and_watch_the_switchover_finish() -> anyhow::Result<()> {
    if !Browser::installed()? {
        return Ok(());
    }
    let mut scripted = start_with_plan(PlanKind::Switchover, 250);
    let app = router(
        scripted.handle.clone(),
        AdminToken::new(Some(ADMIN_TOKEN), "from the test"),
    );
    let server = serve_tls(app).await;
    let url = server.url.clone();
    let Some(browser) = Browser::start_trusting(&[spki_sha256_base64(&server.key_pem)?]).await?
    else {
        return Ok(());
    };

    browser.goto(&format!("{url}/")).await?;
    browser
        .wait_for("#connection[data-state=\"live\"]", WAIT)
        .await?;
    // The map: both regions, their zones and replicas with roles, the database servers.
    for selector in [
        "[data-region=\"region-1\"] [data-zone=\"zone-1a\"] [data-replica=\"participant1-a\"][data-role=\"active\"][data-ready=\"true\"]",
        "[data-region=\"region-1\"] [data-zone=\"zone-1b\"] [data-replica=\"participant1-b\"][data-role=\"passive\"]",
        "[data-region=\"region-2\"] [data-replica=\"participant1-c\"][data-role=\"cold\"]",
        "[data-region=\"region-2\"] [data-server=\"pg-2a\"][data-db-role=\"async-standby\"]",
        "[data-plan=\"plan-1\"][data-plan-state=\"awaiting-approval\"] [data-step=\"5\"][data-step-state=\"pending\"]",
    ] {
        browser.wait_for(selector, WAIT).await?;
    }
    let hover = browser
        .wait_for("[data-replica=\"participant1-b\"]", WAIT)
        .await?
        .attr("title")
        .await?
        .unwrap_or_default();
    assert!(hover.contains("passive"), "the reason on hover: {hover}");
    // Marks this page load: it must survive until the end (live updates, no reload).
    browser
        .execute("window.__sameLoad = 'yes'; return true;", vec![])
        .await?;

    // Without the token the server refuses, and the page says why; nothing reaches the loop.
    browser
        .click("[data-plan=\"plan-1\"] [data-action=\"approve\"]")
        .await?;
    let refusal = browser
        .wait_for("[data-plan-message=\"plan-1\"].error", WAIT)
        .await?
        .text()
        .await?;
    assert!(refusal.contains("Authorization"), "{refusal}");
    assert!(scripted.received.try_recv().is_err());

    browser.type_into("#token", ADMIN_TOKEN).await?;
    browser
        .click("[data-plan=\"plan-1\"] [data-action=\"approve\"]")
        .await?;
    let received = tokio::time::timeout(WAIT, scripted.received.recv()).await?;
    assert_eq!(
        received,
        Some(Command::Approve {
            plan: PlanId("plan-1".into()),
            by: Actor::Operator("admin-token".into()),
            acknowledge_loss: false,
        })
    );

    // Step progress while it runs, then done — pushed by the event stream.
    browser
        .wait_for("[data-plan=\"plan-1\"][data-plan-state=\"running\"]", WAIT)
        .await?;
    browser
        .wait_for("[data-plan=\"plan-1\"][data-plan-state=\"done\"]", WAIT)
        .await?;
    let steps = browser
        .find_all("[data-plan=\"plan-1\"] [data-step-state=\"done\"]")
        .await?;
    assert_eq!(steps.len(), 6, "every step shows done");
    browser
        .wait_for(
            "[data-region=\"region-2\"] [data-replica=\"participant1-c\"][data-role=\"active\"]",
            WAIT,
        )
        .await?;
    browser
        .wait_for("#events [data-kind=\"plan-done\"]", WAIT)
        .await?;
    browser
        .wait_for("#events [data-kind=\"plan-approved\"]", WAIT)
        .await?;
    assert!(
        browser
            .find_all("[data-plan=\"plan-1\"] [data-action=\"approve\"]")
            .await?
            .is_empty(),
        "a finished plan has no buttons"
    );
    let same = browser.execute("return window.__sameLoad;", vec![]).await?;
    assert_eq!(same, serde_json::json!("yes"), "the page was not reloaded");

    for path in screenshot_paths() {
        let written = browser.screenshot(&path).await?;
        let png = std::fs::read(&written)?;
        assert!(png.starts_with(b"\x89PNG"), "{}", written.display());
    }
    browser.close().await
}
