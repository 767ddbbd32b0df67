//! The dashboard in real headless Chromium against a real `meridian controller` (two-regions
//! preset on SQLite, real node processes): a switchover to region two is proposed through the
//! API (by a proposer whose name is markup: shown as text, no element made of it) and appears
//! in the open page live; Reject without the token shows the server's 401 and changes
//! nothing; with the admin token typed in, Reject rejects it (both buttons disabled while it
//! is on its way). A second plan is proposed with the page's form (a second Propose meanwhile
//! shows the controller's 409, one plan at a time); Approve runs it, and the page follows it to
//! done with region two's replicas active — no reload; proposing back then shows the
//! cooldown's 409. The API and the replicas' pidfiles confirm what the page shows: region two
//! runs, region one is stopped. A second test approves a region loss with its loss checkbox.
//! The page is served over TLS with the deployment's `controller` certificate, which Chromium
//! is told to accept by its public key hash (the deployment's CA is not in its trust store).
//!
//! Skipped with a message when Chromium or chromedriver is missing, unless
//! `MERIDIAN_REQUIRE_BROWSER` is set. With `MERIDIAN_UPDATE_SCREENSHOT=1` the screenshot of
//! the finished switchover replaces docs/img/dashboard.png.

#![allow(clippy::unwrap_used)]

mod controller_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use controller_common::{all_up, replica, ControllerProcess, NodesGuard};
use meridian_controller::api::{Command, ReplicaRole, Status};
use meridian_controller::plan::{Actor, Plan, PlanId, PlanState};
use meridian_lab::controller::ControlledDeployment;
use meridian_testkit::browser::{spki_sha256_base64, Browser};

const ARGS: [&str; 4] = ["--preset", "two-regions", "--backend", "sqlite"];
/// A proposer's name that would become an element if the page inserted it as HTML.
const MARKUP: &str = "<b id=\"injected\">eve</b>";
/// How long the page may take to show what the controller did (the plan itself takes a few
/// seconds: stop region one, start region two's cold replicas, wait until they are ready).
const WAIT: Duration = Duration::from_secs(30);

fn plan<'a>(status: &'a Status, id: &PlanId) -> Option<&'a Plan> {
    status.plans.iter().find(|p| &p.id == id)
}

fn admin_token(data: &Path) -> String {
    std::fs::read_to_string(data.join("secrets").join("admin-token"))
        .unwrap()
        .trim()
        .to_owned()
}

fn screenshot_paths() -> Vec<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![std::env::temp_dir().join("meridian-controller-dashboard.png")];
    if std::env::var_os("MERIDIAN_UPDATE_SCREENSHOT").is_some() {
        paths.push(manifest.join("../../docs/img/dashboard.png"));
    }
    paths
}

async fn propose(controller: &ControllerProcess, data: &Path, by: &str) -> PlanId {
    let propose = Command::ProposeSwitchover {
        to: "region-2".into(),
        components: Vec::new(),
        by: Actor::Operator(by.into()),
    };
    controller.command(data, &propose).await.unwrap().plan.id
}

fn plan_selector(id: &PlanId, state: &str) -> String {
    format!("#plans [data-plan=\"{id}\"][data-plan-state=\"{state}\"]")
}

fn button(id: &PlanId, action: &str) -> String {
    format!("#plans [data-plan=\"{id}\"] [data-action=\"{action}\"]")
}

/// Waits (bounded) until the element matching `selector` shows text containing `needle`.
async fn wait_text(browser: &Browser, selector: &str, needle: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(element) = browser.find_all(selector).await?.into_iter().next() {
            last = element.text().await.unwrap_or_default();
            if last.contains(needle) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("`{selector}` did not say {needle:?} within {WAIT:?}; it said {last:?}")
}

/// Headless Chromium that accepts the controller's certificate (the deployment's CA is not in
/// its trust store): by its public key hash, so only that certificate is accepted.
async fn browser_for(data: &Path) -> anyhow::Result<Browser> {
    let key = std::fs::read_to_string(data.join("tls").join("controller.key"))?;
    Browser::start_trusting(&[spki_sha256_base64(&key)?])
        .await?
        .ok_or_else(|| anyhow::anyhow!("the browser was installed a moment ago"))
}

/// How many `status` events `/api/events` sends in `window` (the first, the current status,
/// included).
async fn status_events_during(controller: &ControllerProcess, window: Duration) -> usize {
    let mut response = controller
        .http
        .get(format!("{}/api/events", controller.url))
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.lines().filter(|l| *l == "event: status").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_and_approve_in_the_browser_against_a_real_controller() -> anyhow::Result<()> {
    if !Browser::installed()? {
        return Ok(());
    }
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let _nodes = NodesGuard(data.clone());
    let controller = ControllerProcess::start(&data, "controller-a", &ARGS).await;
    // The certificate is there once the API is; Chromium starts while the deployment does.
    let browser = browser_for(&data).await?;
    let up = controller
        .wait_for("up", Duration::from_secs(60), all_up)
        .await;
    let region_two: Vec<String> = up
        .regions
        .iter()
        .filter(|r| r.name.as_str() == "region-2")
        .flat_map(|r| &r.zones)
        .flat_map(|z| &z.replicas)
        .map(|r| r.name.as_str().to_owned())
        .collect();
    assert!(!region_two.is_empty(), "region two has replicas: {up:?}");
    eprintln!("deployment up after {:?}", started.elapsed());

    browser.goto(&format!("{}/", controller.url)).await?;
    browser
        .wait_for("#connection[data-state=\"live\"]", WAIT)
        .await?;
    browser
        .wait_for("#controller[data-active=\"true\"]", WAIT)
        .await?;
    for name in &region_two {
        browser
            .wait_for(
                &format!(
                    "[data-region=\"region-2\"] [data-replica=\"{name}\"][data-role=\"cold\"]"
                ),
                WAIT,
            )
            .await?;
    }
    // Marks this page load: it must survive until the end (live updates, no reload).
    browser
        .execute("window.__sameLoad = 'yes'; return true;", vec![])
        .await?;

    // A plan proposed through the API appears in the open page.
    // Its proposer's name is markup: the page shows it as text and makes no element of it.
    let first = propose(&controller, &data, MARKUP).await;
    browser
        .wait_for(&plan_selector(&first, "awaiting-approval"), WAIT)
        .await?;
    let meta = browser
        .text(&format!("#plans [data-plan=\"{first}\"] .meta"))
        .await?;
    assert!(meta.contains(MARKUP), "the name shown as text: {meta}");
    assert!(
        browser.find_all("#injected").await?.is_empty(),
        "markup from the server became an element"
    );

    // At rest the page is not rebuilt under the pointer: the button is the same node a
    // second later (a rebuilt one loses a click whose mousedown hit the old node), and the
    // event stream sends no status that did not change.
    let mark = format!(
        "document.querySelector('{}').__mark = 'kept'; return true;",
        button(&first, "reject")
    );
    browser.execute(&mark, vec![]).await?;
    let statuses = status_events_during(&controller, Duration::from_millis(1500)).await;
    let kept = browser
        .execute(
            &format!(
                "return document.querySelector('{}').__mark || null;",
                button(&first, "reject")
            ),
            vec![],
        )
        .await?;
    assert_eq!(
        kept,
        serde_json::json!("kept"),
        "the plan was redrawn at rest"
    );
    assert!(
        statuses <= 2,
        "{statuses} status events in 1.5 s at rest: an unchanged status was sent again"
    );

    // Without the token the controller refuses (401 JSON) and the page shows its message.
    browser.click(&button(&first, "reject")).await?;
    let refusal = browser
        .wait_for(&format!("[data-plan-message=\"{first}\"].error"), WAIT)
        .await?
        .text()
        .await?;
    assert!(refusal.contains("Authorization"), "{refusal}");
    assert!(
        matches!(
            plan(&controller.status().await, &first).map(|p| &p.state),
            Some(PlanState::AwaitingApproval)
        ),
        "a refused command changes nothing"
    );

    // With the token: Reject. While the command is on its way (held up 1 s here) both
    // buttons are disabled and the page says it was sent: no second command by a second click.
    browser.type_into("#token", &admin_token(&data)).await?;
    browser
        .execute(
            "const real = window.fetch; \
             window.fetch = (...args) => new Promise((done) => setTimeout(done, 1000)) \
               .then(() => { window.fetch = real; return real(...args); }); \
             return true;",
            vec![],
        )
        .await?;
    browser.click(&button(&first, "reject")).await?;
    let disabled = browser
        .find_all(&format!(
            "#plans [data-plan=\"{first}\"] button[data-action]:disabled"
        ))
        .await?;
    assert_eq!(
        disabled.len(),
        2,
        "Approve and Reject disabled while Reject runs"
    );
    let sent = browser
        .text(&format!("[data-plan-message=\"{first}\"]"))
        .await?;
    assert!(sent.contains("sent"), "{sent}");
    browser
        .wait_for(&plan_selector(&first, "rejected"), WAIT)
        .await?;
    assert!(
        browser
            .find_all(&button(&first, "approve"))
            .await?
            .is_empty(),
        "a rejected plan has no buttons"
    );
    let rejected = controller.status().await;
    assert!(
        matches!(
            plan(&rejected, &first).map(|p| &p.state),
            Some(PlanState::Rejected { rejected: decision }) if decision.by == Actor::Operator("admin-token".into())
        ),
        "rejected by the token's holder: {:?}",
        plan(&rejected, &first)
    );

    // A second plan, proposed in the page (its form offers region two, where nothing is
    // active), approved there and followed to done.
    let offered = browser
        .execute(
            "return document.getElementById('propose-to').value;",
            vec![],
        )
        .await?;
    assert_eq!(offered, serde_json::json!("region-2"));
    browser.click("#propose-button").await?;
    let second = PlanId(
        browser
            .wait_for(
                "#plans [data-plan][data-plan-state=\"awaiting-approval\"]",
                WAIT,
            )
            .await?
            .attr("data-plan")
            .await?
            .expect("a plan names its id"),
    );
    assert_ne!(first, second);
    wait_text(
        &browser,
        "#propose-message:not(.error)",
        &format!("proposed {second}"),
    )
    .await?;
    // One plan at a time: the controller's 409 is shown under the form.
    browser.click("#propose-button").await?;
    wait_text(&browser, "#propose-message.error", "one plan at a time").await?;
    browser.click(&button(&second, "approve")).await?;
    let approved_at = Instant::now();
    browser
        .wait_for(&plan_selector(&second, "done"), WAIT)
        .await?;
    eprintln!(
        "the page showed the plan done {:?} after the click",
        approved_at.elapsed()
    );
    let steps = browser
        .find_all(&format!("#plans [data-plan=\"{second}\"] [data-step]"))
        .await?;
    let done_steps = browser
        .find_all(&format!(
            "#plans [data-plan=\"{second}\"] :is([data-step-state=\"done\"], [data-step-state=\"already-done\"])"
        ))
        .await?;
    assert!(!steps.is_empty());
    assert_eq!(done_steps.len(), steps.len(), "every step shows finished");
    for name in &region_two {
        browser
            .wait_for(
                &format!(
                    "[data-region=\"region-2\"] [data-replica=\"{name}\"]:is([data-role=\"active\"], [data-role=\"passive\"])[data-ready=\"true\"]"
                ),
                WAIT,
            )
            .await?;
    }
    browser
        .wait_for(
            &format!("#events [data-kind=\"plan-approved\"][data-event-plan=\"{second}\"]"),
            WAIT,
        )
        .await?;
    browser
        .wait_for(
            &format!("#events [data-kind=\"plan-done\"][data-event-plan=\"{second}\"]"),
            WAIT,
        )
        .await?;
    browser
        .wait_for(
            &format!("#events [data-kind=\"plan-rejected\"][data-event-plan=\"{first}\"]"),
            WAIT,
        )
        .await?;
    // The form's refusal was about plan two awaiting approval: stale now, it is gone.
    assert!(
        browser.find_all("#propose-message[hidden]").await?.len() == 1,
        "a stale answer under the form: {}",
        browser.text("#propose-message").await?
    );
    let same = browser.execute("return window.__sameLoad;", vec![]).await?;
    assert_eq!(same, serde_json::json!("yes"), "the page was not reloaded");

    // The screenshot from the top of the page (the clicks scrolled it).
    browser
        .execute("window.scrollTo(0, 0); return true;", vec![])
        .await?;
    for path in screenshot_paths() {
        let written = browser.screenshot(&path).await?;
        let png = std::fs::read(&written)?;
        assert!(png.starts_with(b"\x89PNG"), "{}", written.display());
    }

    // After the switchover (and after the screenshot) the cooldown holds: proposing back is
    // refused (409), and the page says so.
    browser
        .click("#propose-to option[value=\"region-1\"]")
        .await?;
    browser.click("#propose-button").await?;
    wait_text(&browser, "#propose-message.error", "cooldown").await?;
    // What the page showed is what the controller and the processes say.
    let done = controller.status().await;
    assert!(
        matches!(
            plan(&done, &second).map(|p| &p.state),
            Some(PlanState::Done { approved, .. }) if approved.by == Actor::Operator("admin-token".into())
        ),
        "{:?}",
        plan(&done, &second)
    );
    let deployment = ControlledDeployment::open(&data)?;
    for name in &region_two {
        let status = replica(&done, name).unwrap();
        assert!(
            matches!(status.role, ReplicaRole::Active | ReplicaRole::Passive) && status.ready,
            "{name}: {status:?}"
        );
        assert!(deployment.pid(name).is_some(), "{name} runs");
    }
    for name in deployment
        .replicas()
        .iter()
        .filter(|r| !region_two.contains(r))
    {
        assert_eq!(
            deployment.pid(name),
            None,
            "{name} in region one is stopped"
        );
    }
    eprintln!("the whole test took {:?}", started.elapsed());
    browser.close().await
}

/// A region loss in the page: region one's processes are frozen (SIGSTOP: they run but never
/// answer, so the controller does not restart them); after the dwell the page shows the
/// region failed and the plan the controller proposed itself, with the loss it states and
/// the checkbox. Approve without the box ticked shows the controller's 400 and changes
/// nothing; ticked, Approve runs the plan to done (the frozen processes need SIGKILL after
/// the fence's grace, so this takes the longest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_loss_is_approved_in_the_browser_only_with_the_loss_acknowledged(
) -> anyhow::Result<()> {
    if !Browser::installed()? {
        return Ok(());
    }
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let _nodes = NodesGuard(data.clone());
    let controller = ControllerProcess::start(&data, "controller-a", &ARGS).await;
    // The certificate is there once the API is; Chromium starts while the deployment does.
    let browser = browser_for(&data).await?;
    let up = controller
        .wait_for("up", Duration::from_secs(60), all_up)
        .await;
    let in_region = |name: &str| -> Vec<String> {
        up.regions
            .iter()
            .filter(|r| r.name.as_str() == name)
            .flat_map(|r| &r.zones)
            .flat_map(|z| &z.replicas)
            .map(|r| r.name.as_str().to_owned())
            .collect()
    };
    let (region_one, region_two) = (in_region("region-1"), in_region("region-2"));
    let deployment = ControlledDeployment::open(&data)?;

    browser.goto(&format!("{}/", controller.url)).await?;
    browser
        .wait_for("#connection[data-state=\"live\"]", WAIT)
        .await?;
    browser.type_into("#token", &admin_token(&data)).await?;
    browser
        .wait_for("[data-region=\"region-1\"][data-failed=\"false\"]", WAIT)
        .await?;

    for name in &region_one {
        let pid = deployment
            .pid(name)
            .unwrap_or_else(|| panic!("{name} runs"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid)?),
            nix::sys::signal::Signal::SIGSTOP,
        )?;
    }
    let frozen_at = Instant::now();
    browser
        .wait_for("[data-region=\"region-1\"][data-failed=\"true\"]", WAIT)
        .await?;
    let loss = browser
        .wait_for(
            "#plans [data-plan][data-plan-state=\"awaiting-approval\"] [data-ack-loss]",
            WAIT,
        )
        .await?;
    eprintln!(
        "the page showed the region-loss plan {:?} after the freeze",
        frozen_at.elapsed()
    );
    let id = PlanId(
        loss.attr("data-ack-loss")
            .await?
            .expect("the checkbox names its plan"),
    );
    let proposed = controller.status().await;
    let proposed_plan = plan(&proposed, &id).expect("the plan the page shows");
    assert_eq!(proposed_plan.proposed_by, Actor::Controller);
    assert_eq!(
        proposed_plan.kind,
        meridian_controller::plan::PlanKind::RegionLoss
    );
    let text = browser
        .text(&format!("#plans [data-plan=\"{id}\"] .loss"))
        .await?;
    assert!(text.contains("Data loss"), "{text}");

    // Not acknowledged: the controller answers 400 and the page shows why; nothing changes.
    browser.click(&button(&id, "approve")).await?;
    let refusal = browser
        .wait_for(&format!("[data-plan-message=\"{id}\"].error"), WAIT)
        .await?
        .text()
        .await?;
    assert!(refusal.contains("acknowledge"), "{refusal}");
    assert!(
        matches!(
            plan(&controller.status().await, &id).map(|p| &p.state),
            Some(PlanState::AwaitingApproval)
        ),
        "a refused approval changes nothing"
    );

    // Acknowledged: the plan runs to done and region two takes over.
    browser
        .click(&format!("#plans [data-ack-loss=\"{id}\"]"))
        .await?;
    browser.click(&button(&id, "approve")).await?;
    browser
        .wait_for(&plan_selector(&id, "running"), WAIT)
        .await?;
    browser.wait_for(&plan_selector(&id, "done"), WAIT).await?;
    for name in &region_two {
        browser
            .wait_for(
                &format!(
                    "[data-region=\"region-2\"] [data-replica=\"{name}\"]:is([data-role=\"active\"], [data-role=\"passive\"])[data-ready=\"true\"]"
                ),
                WAIT,
            )
            .await?;
    }
    let done = controller.status().await;
    assert!(
        matches!(
            plan(&done, &id).map(|p| &p.state),
            Some(PlanState::Done { .. })
        ),
        "{:?}",
        plan(&done, &id)
    );
    for name in &region_two {
        assert!(deployment.pid(name).is_some(), "{name} runs");
    }
    for name in &region_one {
        assert_eq!(deployment.pid(name), None, "{name} was fenced");
    }
    eprintln!("the whole test took {:?}", started.elapsed());
    browser.close().await
}
