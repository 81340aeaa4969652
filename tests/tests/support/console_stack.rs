//! The console and what it reads, for the browser tests: a realm made from the demo realm file
//! in the dev stack's Keycloak (its `custos-console` client pointed at this console's port),
//! the query API in-process on a loopback port trusting that realm, and the `custos-console`
//! binary as a child process against both; plus audit rows of a unique tenant seeded through
//! Kafka and the real ingest.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use custos_tests::{
    checkpoint_jwks, free_port, ingest_until_stored, produce, producer, spawn_logged,
    terminate_child, unique, workspace_binary, Msg, Topics, TEST_KEYS,
};
use serde_json::{json, Value};

use fantoccini::Locator;

use super::browser::{xpath_literal, Browser};
use super::fhir_server::{DemoRealm, DEMO_PASSWORD};
use super::keycloak::{http, Kc};
use super::reports::ce;
use super::{app_at, ensure_schema};

/// The demo users' password in the test realm.
pub const PASSWORD: &str = DEMO_PASSWORD;

/// The running console with its realm and query API.
pub struct ConsoleStack {
    /// The realm (a copy of the demo realm); `None` once stopped.
    realm: Option<DemoRealm>,
    /// The realm's name (the tenant of its own sign-in events).
    pub realm_name: String,
    /// The console's origin, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// The query API's base URL.
    pub query_url: String,
    console: Option<Child>,
    /// The console's log.
    pub log: PathBuf,
    query: Option<tokio::task::JoinHandle<()>>,
}

impl ConsoleStack {
    /// Starts it all; `env` adds `CUSTOS_CONSOLE_*` settings (e.g. a short session).
    pub async fn start(name: &str, env: &[(&str, &str)]) -> Result<ConsoleStack> {
        let mut stack = ConsoleStack::create().await?;
        stack.run(name, env).await?;
        Ok(stack)
    }

    /// The realm only: set more up in it, then [`ConsoleStack::run`] the console.
    pub async fn create() -> Result<ConsoleStack> {
        ensure_schema()?;
        let realm = DemoRealm::create("console").await?;
        Ok(ConsoleStack {
            realm_name: realm.name.clone(),
            realm: Some(realm),
            url: String::new(),
            query_url: String::new(),
            console: None,
            log: PathBuf::new(),
            query: None,
        })
    }

    /// Starts the query API and the console (`env`: extra `CUSTOS_CONSOLE_*` settings); on
    /// failure the realm is deleted.
    pub async fn run(&mut self, name: &str, env: &[(&str, &str)]) -> Result<()> {
        match self.launch(name, env).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                self.end();
                if let Some(realm) = self.realm.take() {
                    realm.delete().await;
                }
                Err(e.context(format!("console log:\n{log}")))
            }
        }
    }

    async fn launch(&mut self, name: &str, env: &[(&str, &str)]) -> Result<()> {
        let port = free_port();
        self.url = format!("http://127.0.0.1:{port}");
        let secret = point_client(&self.realm_name, &self.url).await?;
        let issuer = self.realm.as_ref().context("realm")?.issuer();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        self.query_url = format!("http://{}", listener.local_addr()?);
        // The checkpoint keys of the test ingest: the auditor's verification checks signatures.
        let jwks = checkpoint_jwks();
        let app = app_at(
            &issuer,
            &self.query_url,
            &["--checkpoint-jwks-file", jwks.to_str().context("path")?],
        );
        self.query = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
        let admin = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(workspace_binary("custos-console", "custos-console"));
        cmd.env("CUSTOS_CONSOLE_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("CUSTOS_CONSOLE_ADMIN_ADDR", &admin)
            .env("CUSTOS_CONSOLE_PUBLIC_URL", &self.url)
            .env("CUSTOS_CONSOLE_ISSUER", &issuer)
            .env("CUSTOS_CONSOLE_CLIENT_SECRET", &secret)
            .env("CUSTOS_CONSOLE_QUERY_URL", &self.query_url)
            // No consent service unless `env` names one (the privacy officer's test does).
            .env("CUSTOS_CONSOLE_CONSENT_URL", "http://127.0.0.1:9");
        let (child, log) = spawn_logged(cmd, &unique(&format!("console-{name}")), env)?;
        self.console = Some(child);
        self.log = log;
        let start = Instant::now();
        loop {
            if let Some(child) = self.console.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("custos-console exited: {status}");
                }
            }
            if let Ok(r) = http().get(format!("http://{admin}/readyz")).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("custos-console not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the console and the query API, then deletes the realm.
    pub async fn stop(mut self) {
        self.end();
        if let Some(realm) = self.realm.take() {
            realm.delete().await;
        }
    }

    fn end(&mut self) {
        if let Some(child) = self.console.take() {
            let _ = terminate_child(child, "custos-console", Duration::from_secs(10));
        }
        if let Some(q) = self.query.take() {
            q.abort();
        }
    }

    /// The realm's issuer URL.
    pub fn issuer(&self) -> String {
        self.realm
            .as_ref()
            .map(DemoRealm::issuer)
            .unwrap_or_default()
    }

    /// A page of the console.
    pub fn page(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// An access token of staff user `user` for the query API (password grant at the realm's
    /// `custos-query` client): what the API answers without the console in between.
    pub async fn staff_token(&self, user: &str) -> Result<String> {
        self.realm
            .as_ref()
            .context("realm")?
            .staff_token(user)
            .await
    }

    /// GET from the query API with `token`: status, content type and body.
    pub async fn api_get(&self, path: &str, token: &str) -> Result<(u16, String, String)> {
        let resp = http()
            .get(format!("{}{path}", self.query_url))
            .bearer_auth(token)
            .send()
            .await?;
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok((resp.status().as_u16(), ct, resp.text().await?))
    }
}

impl Drop for ConsoleStack {
    fn drop(&mut self) {
        self.end();
    }
}

/// Opens `path` of the console signed out, signs in as `user` at Keycloak's login page and
/// waits until the browser is back on `path`.
pub async fn sign_in_to(
    browser: &Browser,
    stack: &ConsoleStack,
    user: &str,
    path: &str,
) -> Result<()> {
    let page = stack.page(path);
    browser.goto(&page).await?;
    browser
        .keycloak_sign_in(user, PASSWORD, |u| u.starts_with(&stack.url))
        .await?;
    browser
        .wait_url(&format!("back on {path}"), |u| u.starts_with(&page))
        .await?;
    Ok(())
}

/// The number of body rows of the table captioned `caption`.
pub async fn table_rows(browser: &Browser, caption: &str) -> Result<Vec<String>> {
    let table = browser
        .wait_xpath(&format!(
            "//table[caption[contains(normalize-space(), {})]]",
            xpath_literal(caption)
        ))
        .await?;
    let mut out = Vec::new();
    for row in table.find_all(Locator::Css("tbody tr")).await? {
        out.push(row.text().await?);
    }
    Ok(out)
}

/// Points the realm's `custos-console` client at a console on `origin`; returns its secret.
async fn point_client(realm: &str, origin: &str) -> Result<String> {
    let kc = Kc::new();
    let clients = kc
        .get_json(&format!("/{realm}/clients?clientId=custos-console"))
        .await?;
    let mut rep = clients[0].clone();
    let id = rep["id"]
        .as_str()
        .context("the demo realm has no custos-console client")?
        .to_owned();
    rep["redirectUris"] = json!([format!("{origin}/console/callback")]);
    rep["webOrigins"] = json!([origin]);
    rep["attributes"]["post.logout.redirect.uris"] = json!(format!("{origin}/console/signed-out"));
    let (s, b) = kc
        .admin(
            reqwest::Method::PUT,
            &format!("/{realm}/clients/{id}"),
            Some(rep),
        )
        .await?;
    anyhow::ensure!(s == 204, "updating custos-console: {s} {b}");
    let secret = kc
        .get_json(&format!("/{realm}/clients/{id}/client-secret"))
        .await?;
    secret["value"]
        .as_str()
        .map(str::to_owned)
        .context("client secret")
}

/// A patient's record accesses, seeded under a unique tenant.
pub struct Seeded {
    /// The tenant.
    pub tenant: String,
    /// The raw patient id.
    pub patient: String,
    /// The users who accessed it, in order of their number of accesses (most first).
    pub users: Vec<String>,
    /// Start of the seeded window (inclusive).
    pub from: &'static str,
    /// End of the seeded window (exclusive).
    pub to: &'static str,
    /// The jti of the token the first user read with.
    pub jti: String,
    /// The input topic the events went through (one partition: one hash chain).
    pub topic: String,
}

/// Seeds record accesses of one patient (three by one clinician, one by another, one denied
/// read by an app) and the token's issue, through Kafka and the real ingest.
pub async fn seed_accesses() -> Result<Seeded> {
    ensure_schema()?;
    let tag = unique("cb");
    let tenant = tag.clone();
    let patient = format!("RAWPAT-{tag}");
    let jti = format!("JTI-{tag}");
    let iss = "https://as.test/realms/browser";
    let users = ["dr-alice", "dr-bob"];
    let mut events: Vec<Value> = vec![ce(
        &tenant,
        &format!("{tag}-issued"),
        "custos.token.issued",
        "2026-03-01T09:00:00Z",
        json!({"iss": iss, "sub": "dr-alice", "fhirUser": "Practitioner/alice",
            "client_id": "ehr-app", "jti": jti, "tokenType": "access", "sid": format!("SID-{tag}"),
            "scope": "launch user/Observation.rs user/Patient.r", "sourceIp": "10.0.0.5",
            "expiresAt": "2026-03-01T16:00:00Z"}),
    )];
    let accesses = [
        ("A1", "09:05:00", users[0], "Observation", "permit"),
        ("A2", "10:10:00", users[0], "Patient", "permit"),
        ("A3", "11:15:00", users[1], "Observation", "permit"),
        ("A4", "13:20:00", users[0], "Condition", "permit"),
        ("A5", "15:25:00", users[1], "Condition", "deny"),
    ];
    for (name, hms, who, rtype, decision) in accesses {
        let mut d = json!({"requestId": format!("{tag}-{name}"), "iss": iss, "sub": who,
            "fhirUser": format!("Practitioner/{}", who.trim_start_matches("dr-")),
            "client_id": "ehr-app", "scope": "launch user/Observation.rs user/Patient.r",
            "interaction": "read", "resourceType": rtype, "resourceId": format!("{rtype}-{name}"),
            "patient": format!("Patient/{patient}"), "purposeOfUse": ["TREAT"],
            "decision": decision, "httpStatus": if decision == "permit" { 200 } else { 403 },
            "sourceIp": "10.0.0.5", "userAgent": "Browser-test/1"});
        if who == users[0] {
            d["jti"] = json!(jti);
        }
        events.push(ce(
            &tenant,
            &format!("{tag}-{name}"),
            "custos.fhir.access",
            &format!("2026-03-01T{hms}Z"),
            d,
        ));
    }
    let msgs: Vec<Msg> = events.iter().map(Msg::json).collect();
    let topics = Topics::create(&tag, 1).await?;
    produce(&producer()?, &topics.gateway, None, &msgs).await?;
    ingest_until_stored(
        &topics,
        &[("CUSTOS_PSEUDONYM_KEYS", TEST_KEYS)],
        msgs.len() as u64,
    )
    .await?;
    Ok(Seeded {
        tenant,
        patient,
        users: users.iter().map(|u| (*u).to_owned()).collect(),
        from: "2026-03-01T00:00:00Z",
        to: "2026-03-02T00:00:00Z",
        jti,
        topic: topics.gateway.clone(),
    })
}
