//! The consent service as a process of the end-to-end tests (`custos-consent run` against
//! the real Kafka, ClickHouse and Keycloak), its per-test topics and the checks the consent
//! tests share: revocation states, the consent events Keycloak would emit, what ClickHouse
//! holds about a consent, the privacy API's audit.
//!
//! The consent tests (`consent_*.rs`) run the service against the real Kafka, ClickHouse and
//! Keycloak (`scripts/keycloak up`, http://127.0.0.1:18080 by default). Each test creates its
//! own realm, confidential client (consent required) and patient user through the Keycloak
//! Admin REST API ([`super::keycloak::Kc::setup`]), then obtains tokens with
//! `offline_access` through the real authorization-code flow: the login form and the consent
//! screen are posted like a browser would (cookies kept by hand), so Keycloak stores a real
//! user consent. The `GRANT_CONSENT` user event Keycloak would emit ([`grant_consent_event`])
//! is produced to the test's AS-events topic (Keycloak has no Kafka event listener built in).
//! Revocations go through Custos (privacy API or consent topic) and their effect is asserted
//! through Keycloak itself: token introspection answers `active: false` and the user's
//! consent list is empty. A SET receiver in the test ([`super::ssf::Receiver`]) verifies the
//! SETs' ES256 signatures against the JWKS the consent service publishes.
//!
//! The privacy API is called with real Keycloak access tokens: each realm also gets
//! confidential clients with a service account holding the `privacy_officer` or `auditor`
//! realm role (or none) and an audience mapper adding
//! [`PRIVACY_AUDIENCE`](super::keycloak::PRIVACY_AUDIENCE); the consent service validates
//! them against the realm's JWKS (`CUSTOS_OIDC_*`, the query API's settings).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use custos_tests::*;
use serde_json::{json, Value};

use super::keycloak::{http, kc_admin_password, kc_url, CLIENT, PRIVACY_AUDIENCE};

/// The consent service's seal keys in the tests (test-only material).
pub const SEAL_KEYS: &str = "ts1=6b6579206f6620746865207465737420636f6e73656e74207365616c696e6721";

/// The consent service binary (built once per test process).
pub fn consent_binary() -> PathBuf {
    workspace_binary("custos-consent", "custos-consent")
}

/// A running `custos-consent run` with its log file and an HTTP client for its API.
pub struct Service {
    child: Option<Child>,
    /// Its API's base URL.
    pub url: String,
    log: PathBuf,
    /// The HTTP client its helpers use.
    pub http: reqwest::Client,
    /// A `privacy_officer` access token.
    pub token: String,
}

/// What a consent service of one test is started with.
pub struct Setup {
    /// Realm whose tokens the privacy API accepts (`CUSTOS_OIDC_ISSUER`).
    pub realm: String,
    /// A `privacy_officer` access token of that realm.
    pub token: String,
    /// `CUSTOS_CONSENT_TOPIC`.
    pub consent_topic: String,
    /// `CUSTOS_AS_TOPIC`.
    pub as_topic: String,
    /// `CUSTOS_REVOCATIONS_TOPIC`.
    pub revocations_topic: String,
    /// `CUSTOS_KEYCLOAK_URL`.
    pub keycloak_url: String,
    /// `CUSTOS_KEYCLOAK_ADMIN_PASSWORD`.
    pub admin_password: String,
    /// `CUSTOS_SSF_RECEIVERS`.
    pub receivers: Value,
}

impl Setup {
    /// A service whose privacy API accepts the tokens of `realm` (`token`: a
    /// `privacy_officer`'s) on fresh topics named after `name`, revoking at the dev stack's
    /// Keycloak as its admin and pushing SETs to `receivers`.
    pub async fn create(name: &str, realm: &str, token: &str, receivers: Value) -> Result<Setup> {
        let (consent_topic, as_topic, revocations_topic) = topics(name).await?;
        Ok(Setup {
            realm: realm.to_owned(),
            token: token.to_owned(),
            consent_topic,
            as_topic,
            revocations_topic,
            keycloak_url: kc_url(),
            admin_password: kc_admin_password(),
            receivers,
        })
    }
}

/// Produces the `GRANT_CONSENT` event Keycloak would emit for `user_id` of `setup`'s realm
/// to its AS topic and waits until `svc` shows the consent active; returns the
/// `/v1/consents` answer and the consent's id.
pub async fn grant_and_wait(
    svc: &Service,
    setup: &Setup,
    user_id: &str,
) -> Result<(Value, String)> {
    let grant = Msg::json(&grant_consent_event(&setup.realm, user_id));
    produce(&producer()?, &setup.as_topic, None, &[grant]).await?;
    let v = svc
        .wait_consents(&setup.realm, user_id, "the consent", |v| {
            v["consents"][0]["current"]["status"] == "active"
        })
        .await?;
    let consent_id = v["consents"][0]["current"]["consent_id"]
        .as_str()
        .context("consent id")?
        .to_owned();
    Ok((v, consent_id))
}

static LOG_SEQ: AtomicU16 = AtomicU16::new(0);

impl Service {
    /// Spawns the service for `s` in consumer group `group`, with extra environment.
    pub fn spawn(s: &Setup, group: &str, extra: &[(&str, &str)]) -> Result<Service> {
        let port = free_port();
        let mut cmd = Command::new(consent_binary());
        cmd.arg("run")
            .env("CUSTOS_KAFKA_BROKERS", brokers())
            .env("CUSTOS_CLICKHOUSE_URL", clickhouse_url())
            .env("CUSTOS_CONSENT_GROUP", group)
            .env("CUSTOS_CONSENT_TOPIC", &s.consent_topic)
            .env("CUSTOS_AS_TOPIC", &s.as_topic)
            .env("CUSTOS_REVOCATIONS_TOPIC", &s.revocations_topic)
            .env("CUSTOS_PSEUDONYM_KEYS", TEST_KEYS)
            .env("CUSTOS_CONSENT_SEAL_KEYS", SEAL_KEYS)
            .env("CUSTOS_CONSENT_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "CUSTOS_CONSENT_ADMIN_ADDR",
                format!("127.0.0.1:{}", free_port()),
            )
            .env(
                "CUSTOS_OIDC_ISSUER",
                format!("{}/realms/{}", kc_url(), s.realm),
            )
            .env("CUSTOS_OIDC_AUDIENCE", PRIVACY_AUDIENCE)
            .env("CUSTOS_OIDC_ROLES_CLAIM", "realm_access.roles")
            .env("CUSTOS_KEYCLOAK_URL", &s.keycloak_url)
            .env("CUSTOS_KEYCLOAK_ADMIN_PASSWORD", &s.admin_password)
            .env("CUSTOS_SSF_RECEIVERS", s.receivers.to_string())
            .env("CUSTOS_REVOCATION_BACKOFF_MS", "200")
            .env("CUSTOS_REVOCATION_BACKOFF_MAX_MS", "1000")
            .env("CUSTOS_CONSENT_EXPIRY_SCAN_SECS", "1")
            .env("CUSTOS_LOG", "info,custos_consent=debug");
        let name = format!("consent-{group}-{}", LOG_SEQ.fetch_add(1, Ordering::SeqCst));
        let (child, log) = spawn_logged(cmd, &name, extra)?;
        Ok(Service {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            log,
            http: http(),
            token: s.token.clone(),
        })
    }

    /// The log text so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to a minute) until /readyz answers 200.
    pub async fn wait_ready(&self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.url)).send().await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "consent service not ready; log:\n{}",
                    tail(&self.log_text(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// GET with the `privacy_officer` token; 200 expected.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await?;
        ensure!(r.status() == 200, "GET {path}: {}", r.status());
        Ok(r.json().await?)
    }

    /// POST with the `privacy_officer` token: status and JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let s = r.status().as_u16();
        Ok((s, r.json().await.unwrap_or(Value::Null)))
    }

    /// A request with an explicit bearer token (or none): status, content type, JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, String, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok((status, ct, r.json().await.unwrap_or(Value::Null)))
    }

    /// Waits until `pred` holds for the consents of (tenant, patient).
    pub async fn wait_consents<F: Fn(&Value) -> bool>(
        &self,
        tenant: &str,
        patient: &str,
        what: &str,
        pred: F,
    ) -> Result<Value> {
        let start = Instant::now();
        loop {
            // A 503 (ClickHouse busy: the stack is shared) is retried like a negative answer.
            let v = self
                .get(&format!("/v1/consents?tenant={tenant}&patient={patient}"))
                .await
                .unwrap_or_else(|e| json!({"unavailable": e.to_string()}));
            if pred(&v) {
                return Ok(v);
            }
            if start.elapsed() > Duration::from_secs(90) {
                bail!(
                    "timed out waiting for {what}: {v:#}\nlog:\n{}",
                    tail(&self.log_text(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The process, no longer stopped when the `Service` is dropped.
    pub fn take_child(&mut self) -> Option<Child> {
        self.child.take()
    }

    /// SIGTERMs the service and waits (up to 30 s) for its exit code.
    pub fn stop(&mut self) -> Result<i32> {
        let child = self.child.take().context("stopped")?;
        terminate_child(child, "consent service", Duration::from_secs(30))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Latest state per target of the revocations in a `/v1/consents` answer.
pub fn target_states(v: &Value) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for c in v["consents"].as_array().into_iter().flatten() {
        for r in c["revocations"].as_array().into_iter().flatten() {
            out.insert(
                r["target"].as_str().unwrap_or_default().to_owned(),
                r["state"].as_str().unwrap_or_default().to_owned(),
            );
        }
    }
    out
}

/// Whether the revocations in a `/v1/consents` answer reached `n` targets, none pending.
pub fn all_final(v: &Value, n: usize) -> bool {
    let s = target_states(v);
    s.len() == n && s.values().all(|x| x != "requested")
}

/// Fresh topics of one test: consent events and AS events (2 partitions), revocations (1).
pub async fn topics(name: &str) -> Result<(String, String, String)> {
    let p = unique(name);
    let t = (
        format!("{p}.consent-events"),
        format!("{p}.as-events"),
        format!("{p}.revocations"),
    );
    create_topics(&[(&t.0, 2), (&t.1, 2), (&t.2, 1)]).await?;
    Ok(t)
}

/// The `GRANT_CONSENT` user event Keycloak would emit for `user_id` and [`CLIENT`].
pub fn grant_consent_event(realm: &str, user_id: &str) -> Value {
    json!({
        "id": format!("kc-ev-{}", unique("grant")),
        "time": chrono_now_ms(),
        "type": "GRANT_CONSENT",
        "realmId": realm,
        "clientId": CLIENT,
        "userId": user_id,
        "ipAddress": "127.0.0.1",
        "details": {"granted_client": CLIENT, "scope": "openid offline_access launch/patient patient/Observation.rs?category=laboratory"}
    })
}

/// Now, in milliseconds since the epoch.
pub fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Runs `sql` on ClickHouse as the admin over HTTP with query parameters `params`
/// (`{name:Type}` in the SQL, `param_<name>` on the wire); returns the body.
pub async fn admin_sql(sql: &str, params: &[(&str, &str)]) -> Result<String> {
    let params: Vec<(String, &str)> = params
        .iter()
        .map(|(k, v)| (format!("param_{k}"), *v))
        .collect();
    Ok(reqwest::Client::new()
        .post(clickhouse_url())
        .basic_auth("custos_admin", Some(ch_password("admin")))
        .query(&params)
        .body(sql.to_owned())
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Every row ClickHouse holds about a consent, as text (for leak checks).
pub async fn stored_text(consent_id: &str) -> Result<String> {
    let mut out = String::new();
    for table in ["consent_history", "revocations", "consent_sealed"] {
        let sql = format!(
            "SELECT * FROM custos.{table} WHERE consent_id = {{c:String}} FORMAT JSONEachRow"
        );
        out.push_str(&admin_sql(&sql, &[("c", consent_id)]).await?);
    }
    Ok(out)
}

/// The delivery attempts of a revocation, read through the service's API.
pub async fn attempts_of(svc: &Service, revocation_id: &str) -> Result<Vec<Value>> {
    let v = svc
        .get(&format!("/v1/revocations/{revocation_id}/attempts"))
        .await?;
    Ok(v["attempts"].as_array().cloned().unwrap_or_default())
}

/// The distinct revocation ids in a `/v1/consents` answer, sorted.
pub fn revocation_ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["consents"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["revocations"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["revocation_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The `sub` of a JWT (not verified: the test's own token).
pub fn token_sub(token: &str) -> Result<String> {
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let claims: Value = serde_json::from_slice(&B64.decode(payload)?)?;
    claims["sub"].as_str().map(str::to_owned).context("no sub")
}

/// The privacy-API audit records (`custos.report_queries`, latest version) of `caller_sub`.
pub async fn privacy_audit_of(caller_sub: &str) -> Result<Vec<Value>> {
    let body = admin_sql(
        "SELECT * FROM custos.report_queries FINAL WHERE caller_sub = {s:String} \
         AND startsWith(report, 'privacy.') ORDER BY asked_at FORMAT JSONEachRow",
        &[("s", caller_sub)],
    )
    .await?;
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// The consent's history rows that revoke it (read as the admin).
pub async fn revoked_rows(consent_id: &str) -> Result<usize> {
    let body = admin_sql(
        "SELECT count() FROM custos.consent_history WHERE consent_id = {c:String} \
         AND effect = 'revoked' FORMAT TabSeparated",
        &[("c", consent_id)],
    )
    .await?;
    Ok(body.trim().parse()?)
}
