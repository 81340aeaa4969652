//! A real browser for the end-to-end tests: headless Chromium (Debian's `chromium`) driven
//! through Debian's `chromedriver` over WebDriver (`fantoccini`), both installed by
//! `scripts/browser`.
//!
//! [`Browser::start`] runs chromedriver on a free loopback port in a process group of its own
//! and opens a session with a fresh profile directory; Chromium gets the switches that keep
//! it off the network (no sync, no component updates, no QUIC, no background lookups), which
//! a closed hospital network or CI would otherwise make it wait on. Every wait is bounded
//! ([`WAIT`]). When a test fails, the page as it was is kept: a PNG screenshot and the page
//! source under `target/e2e-screenshots/` ([`Browser::finish`] for a test that returns an
//! error, the [`Drop`] guard for one that panics). Dropping the browser ends the session and
//! chromedriver's process group by its PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use custos_tests::{free_port, workspace};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// The longest any single wait of the harness takes (an element, a URL, a page load).
pub const WAIT: Duration = Duration::from_secs(20);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(100);

/// Chromium's switches: headless, no sandbox (root in CI), and nothing that reaches for the
/// network on its own.
const CHROMIUM_ARGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
];

/// `/usr/bin/chromium` unless `CUSTOS_CHROMIUM` names another.
fn chromium() -> PathBuf {
    std::env::var_os("CUSTOS_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into())
}

/// `/usr/bin/chromedriver` unless `CUSTOS_CHROMEDRIVER` names another.
fn chromedriver() -> PathBuf {
    std::env::var_os("CUSTOS_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromedriver".into())
}

/// Where failure screenshots and page sources go.
pub fn failure_dir() -> PathBuf {
    workspace().join("target/e2e-screenshots")
}

/// A headless Chromium session; see the module documentation.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    /// chromedriver's base URL.
    driver_url: String,
    /// The session's id at chromedriver (for the raw calls of the drop guard).
    session: String,
    driver: Child,
    /// The profile directory (removed on drop) with its downloads folder.
    profile: PathBuf,
    name: String,
    finished: bool,
}

impl Browser {
    /// chromedriver and a Chromium session for the test `name` (names the failure files).
    pub async fn start(name: &str) -> Result<Browser> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        for bin in [chromium(), chromedriver()] {
            ensure!(
                bin.exists(),
                "{} missing: run scripts/browser install",
                bin.display()
            );
        }
        let port = free_port();
        let logs = workspace().join("target/e2e-logs");
        std::fs::create_dir_all(&logs)?;
        let log = std::fs::File::create(logs.join(format!("chromedriver-{name}.log")))?;
        let mut cmd = Command::new(chromedriver());
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd.spawn().context("starting chromedriver")?;
        let profile = workspace().join(format!(
            "target/e2e-browser/{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(profile.join("downloads"))?;
        let driver_url = format!("http://127.0.0.1:{port}");
        // The guard ends chromedriver from here on, whatever fails below.
        let mut guard = DriverGuard {
            driver: Some(driver),
            profile: profile.clone(),
        };
        wait_driver(&driver_url).await?;

        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!(
            "--user-data-dir={}",
            profile.join("profile").display()
        ));
        let caps = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": args,
                "prefs": {
                    "download.default_directory": profile.join("downloads"),
                    "download.prompt_for_download": false,
                    "safebrowsing.enabled": false
                }
            }
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!("an object literal"),
        };
        let client = tokio::time::timeout(
            Duration::from_secs(60),
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&driver_url),
        )
        .await
        .context("Chromium did not start within 60 s")?
        .context("opening a WebDriver session")?;
        let session = client
            .session_id()
            .await?
            .context("WebDriver session without an id")?;
        Ok(Browser {
            client,
            driver_url,
            session,
            driver: guard.driver.take().context("driver")?,
            profile,
            name: name.to_owned(),
            finished: false,
        })
    }

    /// The folder the browser downloads into.
    pub fn downloads(&self) -> PathBuf {
        self.profile.join("downloads")
    }

    /// Opens `url` (waits for the page load, bounded by the driver's page-load timeout).
    pub async fn goto(&self, url: &str) -> Result<()> {
        tokio::time::timeout(WAIT * 2, self.client.goto(url))
            .await
            .with_context(|| format!("loading {url} took over {:?}", WAIT * 2))?
            .with_context(|| format!("loading {url}"))
    }

    /// The current URL.
    pub async fn url(&self) -> Result<String> {
        Ok(self.client.current_url().await?.to_string())
    }

    /// The first element matching the CSS selector `css`, waited for.
    pub async fn wait_for(&self, css: &str) -> Result<Element> {
        self.client
            .wait()
            .at_most(WAIT)
            .every(POLL)
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("no element `{css}` within {WAIT:?}"))
    }

    /// The element found by XPath `xpath`, waited for.
    pub async fn wait_xpath(&self, xpath: &str) -> Result<Element> {
        self.client
            .wait()
            .at_most(WAIT)
            .every(POLL)
            .for_element(Locator::XPath(xpath))
            .await
            .with_context(|| format!("no element `{xpath}` within {WAIT:?}"))
    }

    /// Waits until the URL satisfies `done`; returns it.
    pub async fn wait_url(&self, what: &str, done: impl Fn(&str) -> bool) -> Result<String> {
        let start = Instant::now();
        loop {
            let url = self.url().await?;
            if done(&url) {
                return Ok(url);
            }
            if start.elapsed() > WAIT {
                bail!("the URL is still {url} after {WAIT:?}: expected {what}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The visible text of the page's body.
    pub async fn body_text(&self) -> Result<String> {
        Ok(self.client.find(Locator::Css("body")).await?.text().await?)
    }

    /// Waits until the page's visible text contains `needle`; returns the text.
    pub async fn wait_text(&self, needle: &str) -> Result<String> {
        let start = Instant::now();
        loop {
            let text = self.body_text().await.unwrap_or_default();
            if text.contains(needle) {
                return Ok(text);
            }
            if start.elapsed() > WAIT {
                bail!("the page does not show {needle:?} within {WAIT:?}:\n{text}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The input labelled `label` (its `<label for>` text, or its `aria-label`), waited for.
    pub async fn field(&self, label: &str) -> Result<Element> {
        let l = xpath_literal(label);
        self.wait_xpath(&format!(
            "//*[@id=//label[normalize-space()={l} or normalize-space(text())={l}]/@for] \
             | //label[normalize-space(text())={l}]//*[self::input or self::select or self::textarea] \
             | //*[(self::input or self::select or self::textarea) and @aria-label={l}]"
        ))
        .await
    }

    /// Types `value` into the field labelled `label` (cleared first).
    pub async fn fill(&self, label: &str, value: &str) -> Result<()> {
        let f = self.field(label).await?;
        f.clear().await?;
        f.send_keys(value).await?;
        Ok(())
    }

    /// Clicks the button or link whose accessible text is `text`, waited for.
    pub async fn click_named(&self, text: &str) -> Result<()> {
        let t = xpath_literal(text);
        self.wait_xpath(&format!(
            "(//button[normalize-space()={t} or @aria-label={t}] \
             | //input[(@type='submit' or @type='button') and @value={t}] \
             | //a[normalize-space()={t} or @aria-label={t}])[1]"
        ))
        .await?
        .click()
        .await?;
        Ok(())
    }

    /// Signs in at Keycloak's login page, which the browser must be on or be on its way to:
    /// fills username and password, submits, and waits until the browser has left the login
    /// page for a URL that `back` accepts.
    pub async fn keycloak_sign_in(
        &self,
        user: &str,
        password: &str,
        back: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let username = self.wait_for("input#username").await?;
        ensure!(
            self.url().await?.contains("/protocol/openid-connect/auth")
                || self.url().await?.contains("/login-actions/"),
            "not Keycloak's login page: {}",
            self.url().await?
        );
        username.clear().await?;
        username.send_keys(user).await?;
        let pw = self.wait_for("input#password").await?;
        pw.clear().await?;
        pw.send_keys(password).await?;
        self.wait_for("#kc-login").await?.click().await?;
        self.wait_url("back from the sign-in", |u| {
            !u.contains("/login-actions/")
                && !u.contains("/protocol/openid-connect/auth")
                && back(u)
        })
        .await
    }

    /// The value of cookie `name` of the current page's site (HttpOnly ones included).
    pub async fn cookie(&self, name: &str) -> Result<String> {
        Ok(self
            .client
            .get_named_cookie(name)
            .await
            .with_context(|| format!("no cookie {name}"))?
            .value()
            .to_owned())
    }

    /// Every cookie of the current page's site as one `Cookie` header value.
    pub async fn cookie_header(&self) -> Result<String> {
        Ok(self
            .client
            .get_all_cookies()
            .await?
            .iter()
            .map(|c| format!("{}={}", c.name(), c.value()))
            .collect::<Vec<_>>()
            .join("; "))
    }

    /// Waits until the downloads folder holds a finished file; returns its path.
    pub async fn wait_download(&self) -> Result<PathBuf> {
        let start = Instant::now();
        loop {
            let done: Vec<PathBuf> = std::fs::read_dir(self.downloads())?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
                    ext != "crdownload" && ext != "tmp"
                })
                .collect();
            if let Some(p) = done.into_iter().next() {
                return Ok(p);
            }
            if start.elapsed() > WAIT {
                bail!("no download finished within {WAIT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot_to(&self, path: &Path) -> Result<()> {
        let png = self.client.screenshot().await?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// When `CUSTOS_SCREENSHOTS` names a folder (the README's pictures: `docs/screenshots`),
    /// saves the page as `<folder>/<name>.png`; otherwise nothing (CI leaves the tree clean).
    pub async fn doc_screenshot(&self, name: &str) -> Result<()> {
        let Some(dir) = std::env::var_os("CUSTOS_SCREENSHOTS") else {
            return Ok(());
        };
        let dir = PathBuf::from(dir);
        let dir = if dir.is_absolute() {
            dir
        } else {
            workspace().join(dir)
        };
        // A taller window for the picture, so that the results below the form are in it.
        let (w, h) = self.client.get_window_size().await?;
        self.client.set_window_size(1280, 1700).await?;
        let saved = self.screenshot_to(&dir.join(format!("{name}.png"))).await;
        self.client.set_window_size(w as u32, h as u32).await?;
        saved
    }

    /// Ends the test: on `Err`, saves the screenshot and the page source first; then closes
    /// the session. Returns `outcome`.
    pub async fn finish<T>(mut self, outcome: Result<T>) -> Result<T> {
        self.finished = true;
        if let Err(e) = &outcome {
            match self.save_failure().await {
                Ok(png) => eprintln!(
                    "browser test {} failed ({e:#}); page kept at {}",
                    self.name,
                    png.display()
                ),
                Err(se) => eprintln!("browser test {} failed; no screenshot: {se:#}", self.name),
            }
        }
        let _ = tokio::time::timeout(WAIT, self.client.clone().close()).await;
        outcome
    }

    /// Saves a screenshot and the page source of the failing test; returns the PNG's path.
    async fn save_failure(&self) -> Result<PathBuf> {
        let (png, html) = failure_paths(&self.name);
        self.screenshot_to(&png).await?;
        let source = self.client.source().await.unwrap_or_default();
        std::fs::write(&html, source)?;
        Ok(png)
    }
}

fn failure_paths(name: &str) -> (PathBuf, PathBuf) {
    let dir = failure_dir();
    let _ = std::fs::create_dir_all(&dir);
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    (
        dir.join(format!("{name}-{stamp}.png")),
        dir.join(format!("{name}-{stamp}.html")),
    )
}

/// An XPath string literal of `s` (with `concat` when it holds both quote kinds).
pub fn xpath_literal(s: &str) -> String {
    if !s.contains('\'') {
        format!("'{s}'")
    } else if !s.contains('"') {
        format!("\"{s}\"")
    } else {
        let parts: Vec<String> = s.split('\'').map(|p| format!("'{p}'")).collect();
        format!("concat({})", parts.join(", \"'\", "))
    }
}

/// Waits until chromedriver answers `/status` ready.
async fn wait_driver(url: &str) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let start = Instant::now();
    loop {
        if let Ok(resp) = http.get(format!("{url}/status")).send().await {
            if let Ok(v) = resp.json::<Value>().await {
                if v["value"]["ready"] == true {
                    return Ok(());
                }
            }
        }
        if start.elapsed() > WAIT {
            bail!("chromedriver not ready at {url} within {WAIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Ends chromedriver's process group (by its PID) and removes the profile, for a start that
/// failed half-way.
struct DriverGuard {
    driver: Option<Child>,
    profile: PathBuf,
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(child) = self.driver.as_mut() {
            end_group(child);
            let _ = std::fs::remove_dir_all(&self.profile);
        }
    }
}

/// SIGKILL to the process group led by `child` (chromedriver and the Chromium it started),
/// then reaps it.
fn end_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Raw WebDriver calls on a thread and runtime of their own, so the drop guard works whatever
/// state the test's runtime is in: on a panic, the screenshot and the source; then the
/// session's end.
fn raw_teardown(driver_url: &str, session: &str, keep: Option<(PathBuf, PathBuf)>) {
    let base = format!("{driver_url}/session/{session}");
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .ok()?;
            if let Some((png, html)) = keep {
                let shot: Value = http
                    .get(format!("{base}/screenshot"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                if let Some(b64) = shot["value"].as_str() {
                    if let Ok(bytes) = B64.decode(b64) {
                        let _ = std::fs::write(&png, bytes);
                        eprintln!("browser test failed; page kept at {}", png.display());
                    }
                }
                if let Ok(resp) = http.get(format!("{base}/source")).send().await {
                    if let Ok(v) = resp.json::<Value>().await {
                        let _ = std::fs::write(&html, v["value"].as_str().unwrap_or_default());
                    }
                }
            }
            let _ = http.delete(&base).send().await;
            Some(())
        })
    })
    .join();
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.finished {
            let keep = std::thread::panicking().then(|| failure_paths(&self.name));
            raw_teardown(&self.driver_url, &self.session, keep);
        }
        end_group(&mut self.driver);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
