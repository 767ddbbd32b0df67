//! Headless Chromium for browser tests: starts Debian's `chromedriver` on a free loopback port
//! and opens one WebDriver session (through the `fantoccini` crate) with Chromium headless and
//! a fresh profile, then offers the few things a dashboard test does — go to a page, wait
//! (bounded) for a selector, click, type, read text and attributes, save a screenshot.
//!
//! A machine without `chromedriver` skips the test with a clear message ([`Browser::start`]
//! returns `None`), unless `MERIDIAN_REQUIRE_BROWSER` is set (CI sets it through
//! `scripts/test.sh`), where a missing browser is a failure rather than a silent pass.
//!
//! Chromium's flags are the ones this machine needs: no sandbox (tests run as root), no GPU,
//! and no background networking, component updates, sync or QUIC — the network is closed and
//! Chromium would otherwise keep trying to reach Google's hosts.
//!
//! Pages served over TLS with a test CA ([`Browser::start_trusting`]): Chromium is told to
//! accept exactly the certificates whose public key hashes are given
//! (`--ignore-certificate-errors-spki-list`, [`spki_sha256_base64`]) — not every certificate,
//! so a page that answered with another one would still fail. The fresh profile keeps that
//! flag effective (Chromium honours it only with `--user-data-dir`).
//!
//! chromedriver runs in its own process group, and dropping the [`Browser`] kills that group:
//! a test that fails halfway leaves neither chromedriver nor Chromium behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::process::{free_port, ChildGuard};

/// Set (to anything) to make a missing browser fail the test instead of skipping it.
pub const REQUIRE_BROWSER_ENV: &str = "MERIDIAN_REQUIRE_BROWSER";
/// Where Debian's `chromium-driver` installs chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Where Debian's `chromium` installs the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// How long chromedriver may take to accept a session.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Browser::wait_for`] waits when the caller gives no bound.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The window size, so screenshots are the same size everywhere.
const WINDOW: (u32, u32) = (1280, 900);

/// One headless Chromium session.
pub struct Browser {
    client: Option<Client>,
    /// chromedriver (and, in its process group, Chromium).
    driver: ChildGuard,
    _profile: tempfile::TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("chromedriver_pid", &self.driver.id())
            .finish()
    }
}

/// Whether a missing browser must fail the test.
pub fn browser_required() -> bool {
    std::env::var_os(REQUIRE_BROWSER_ENV).is_some()
}

impl Browser {
    /// A headless Chromium session, or `None` (after printing why) when chromedriver or
    /// Chromium is not installed and [`REQUIRE_BROWSER_ENV`] is not set.
    pub async fn start() -> anyhow::Result<Option<Self>> {
        Self::start_trusting(&[]).await
    }

    /// [`Self::start`], accepting the TLS certificates whose public keys hash to
    /// `spki_sha256` (base64 SHA-256 of the SubjectPublicKeyInfo, see [`spki_sha256_base64`]).
    pub async fn start_trusting(spki_sha256: &[String]) -> anyhow::Result<Option<Self>> {
        if !Self::installed()? {
            return Ok(None);
        }
        Self::start_with(Path::new(CHROMEDRIVER), Path::new(CHROMIUM), spki_sha256)
            .await
            .map(Some)
    }

    /// Whether chromedriver and Chromium are installed; `false` after printing why the test
    /// is skipped, an error when [`REQUIRE_BROWSER_ENV`] makes that a failure. For tests that
    /// want to know before starting what the browser will look at.
    pub fn installed() -> anyhow::Result<bool> {
        for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            if !Path::new(path).exists() {
                let message = format!(
                    "{path} is not installed (Debian package {package}: \
                     apt-get install -y chromium chromium-driver)"
                );
                if browser_required() {
                    bail!("{message}; {REQUIRE_BROWSER_ENV} is set, so the browser test cannot be skipped");
                }
                eprintln!("SKIPPED: {message}; set {REQUIRE_BROWSER_ENV} to make this a failure");
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A session through the chromedriver and Chromium at the given paths, accepting the TLS
    /// certificates whose public keys hash to `spki_sha256`.
    pub async fn start_with(
        chromedriver: &Path,
        chromium: &Path,
        spki_sha256: &[String],
    ) -> anyhow::Result<Self> {
        let profile = tempfile::Builder::new()
            .prefix("meridian-chromium-")
            .tempdir()
            .context("creating a fresh Chromium profile directory")?;
        let port = free_port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log"))
            .context("creating chromedriver's log")?;
        let mut command = Command::new(chromedriver);
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("chromedriver's log")?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = ChildGuard::new(
            command
                .spawn()
                .with_context(|| format!("starting {}", chromedriver.display()))?,
        );
        let mut browser = Self {
            client: None,
            driver,
            _profile: profile,
        };
        let capabilities = capabilities(chromium, browser._profile.path(), spki_sha256);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(error) => {
                    if let Ok(Some(exit)) = browser.driver.try_wait() {
                        bail!(
                            "chromedriver exited ({exit}) before a session opened; its log: {}",
                            browser.log_tail()
                        );
                    }
                    if tokio::time::Instant::now() > deadline {
                        bail!(
                            "no Chromium session within {STARTUP_TIMEOUT:?}: {error}; \
                             chromedriver's log: {}",
                            browser.log_tail()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        client
            .set_window_size(WINDOW.0, WINDOW.1)
            .await
            .context("sizing the window")?;
        browser.client = Some(client);
        Ok(browser)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self._profile.path().join("chromedriver.log"))
            .unwrap_or_default();
        let start = log.len().saturating_sub(2000);
        log.get(start..).unwrap_or_default().to_owned()
    }

    /// The WebDriver client, for anything the helpers below do not cover.
    pub fn client(&self) -> anyhow::Result<&Client> {
        self.client
            .as_ref()
            .ok_or_else(|| anyhow!("the browser session is closed"))
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client()?
            .goto(url)
            .await
            .with_context(|| format!("opening {url}"))
    }

    /// The first element matching the CSS `selector`, waiting at most `timeout` for it.
    pub async fn wait_for(&self, selector: &str, timeout: Duration) -> anyhow::Result<Element> {
        self.client()?
            .wait()
            .at_most(timeout)
            .every(Duration::from_millis(50))
            .for_element(Locator::Css(selector))
            .await
            .with_context(|| format!("no element matches `{selector}` within {timeout:?}"))
    }

    /// Every element matching `selector` now (none is not an error).
    pub async fn find_all(&self, selector: &str) -> anyhow::Result<Vec<Element>> {
        self.client()?
            .find_all(Locator::Css(selector))
            .await
            .with_context(|| format!("finding `{selector}`"))
    }

    /// Clicks the element matching `selector` (waiting for it, bounded).
    pub async fn click(&self, selector: &str) -> anyhow::Result<()> {
        self.wait_for(selector, DEFAULT_WAIT)
            .await?
            .click()
            .await
            .with_context(|| format!("clicking `{selector}`"))
    }

    /// Types `text` into the element matching `selector` (waiting for it, bounded).
    pub async fn type_into(&self, selector: &str, text: &str) -> anyhow::Result<()> {
        self.wait_for(selector, DEFAULT_WAIT)
            .await?
            .send_keys(text)
            .await
            .with_context(|| format!("typing into `{selector}`"))
    }

    /// The visible text of the element matching `selector` (waiting for it, bounded).
    pub async fn text(&self, selector: &str) -> anyhow::Result<String> {
        self.wait_for(selector, DEFAULT_WAIT)
            .await?
            .text()
            .await
            .with_context(|| format!("reading the text of `{selector}`"))
    }

    /// Runs `script` in the page and returns what it returns.
    pub async fn execute(
        &self,
        script: &str,
        args: Vec<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        self.client()?
            .execute(script, args)
            .await
            .context("running a script in the page")
    }

    /// Saves a PNG of the viewport to `path` (its directory is created).
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<PathBuf> {
        let png = self
            .client()?
            .screenshot()
            .await
            .context("taking a screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_owned())
    }

    /// Ends the session (Chromium quits); chromedriver is stopped on drop.
    pub async fn close(mut self) -> anyhow::Result<()> {
        if let Some(client) = self.client.take() {
            client
                .close()
                .await
                .context("closing the browser session")?;
        }
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver leads its own process group and Chromium runs in it: end them all, so a
        // failed test leaves no browser behind. The pid is positive and the group ours.
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The base64 SHA-256 of the SubjectPublicKeyInfo of the PEM private key `key_pem`'s public
/// key: what `--ignore-certificate-errors-spki-list` names a certificate by (the hash of its
/// public key, the same for the certificate and its key pair).
pub fn spki_sha256_base64(key_pem: &str) -> anyhow::Result<String> {
    use base64::Engine as _;
    let key = rcgen::KeyPair::from_pem(key_pem).context("not a PEM private key")?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &key.public_key_der());
    Ok(base64::engine::general_purpose::STANDARD.encode(digest.as_ref()))
}

/// The session's capabilities: headless Chromium with this machine's flags, a fresh profile,
/// and the certificates to accept by public key hash.
fn capabilities(
    chromium: &Path,
    profile: &Path,
    spki_sha256: &[String],
) -> fantoccini::wd::Capabilities {
    let mut args = vec![
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        format!("--window-size={},{}", WINDOW.0, WINDOW.1),
        format!("--user-data-dir={}", profile.join("chromium").display()),
    ];
    if !spki_sha256.is_empty() {
        args.push(format!(
            "--ignore-certificate-errors-spki-list={}",
            spki_sha256.join(",")
        ));
    }
    let mut capabilities = fantoccini::wd::Capabilities::new();
    capabilities.insert("browserName".to_owned(), serde_json::json!("chrome"));
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({ "binary": chromium.display().to_string(), "args": args }),
    );
    capabilities
}
