//! The demo FHIR server of `connectors/fhir-server` for the tests: a fresh realm made from
//! `deploy/keycloak/realm-custos.json` in the dev stack's Keycloak ([`DemoRealm`]), the server
//! jar (built by `scripts/fhir build`) run as a child process against it ([`FhirProcess`]), and
//! an in-test audit feed that speaks the feed's contract (client-credentials bearer token,
//! `POST [base]` with a batch Bundle of AuditEvents, batch-response Bundle) and decodes every
//! AuditEvent with the ingest's own decoder ([`TestFeed`]).

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use custos_schemas::event::{FhirAccessData, Payload};
use custos_schemas::{decode, DecodeLimits};
use custos_tests::{unique, workspace};
use serde_json::{json, Value};

use super::keycloak::{http, kc_url, Kc};

/// The demo users' password in test realms (the realm's policy wants 12 characters).
pub const DEMO_PASSWORD: &str = "Demo-user-pass-0123456789";
/// The introspection client's secret in test realms.
pub const FHIR_CLIENT_SECRET: &str = "fhir-server-secret-0123456789";
/// The secret of the realm's audit source client `custos-audit-source` in test realms.
pub const FEED_SOURCE_SECRET: &str = "audit-source-secret-0123456789";
/// The secret of the realm's staff client `custos-query` in test realms.
pub const QUERY_CLIENT_SECRET: &str = "query-client-secret-0123456789";
/// The secret of the realm's console client `custos-console` in test realms.
pub const CONSOLE_CLIENT_SECRET: &str = "console-client-secret-0123456789";
/// The public SMART client of the demo users.
pub const APP: &str = "smart-demo-app";
/// The demo patient user and the patient id its `patient` claim carries.
pub const PATIENT_USER: (&str, &str) = ("pat.patient", "demo-pat-2001");
/// The demo clinician user (`fhirUser` Practitioner/demo-prac-1).
pub const CLINICIAN_USER: &str = "dora.doctor";

/// A realm made from the demo realm file, deleted by [`DemoRealm::delete`].
pub struct DemoRealm {
    /// Realm name.
    pub name: String,
    kc: Kc,
}

/// The tokens of a password grant.
pub struct Tokens {
    /// Access token.
    pub access: String,
    /// Refresh token.
    pub refresh: String,
}

/// The claims of a JWT (not verified: the tests compare them with what the server saw).
pub fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap_or_default();
    serde_json::from_slice(&B64.decode(payload).unwrap_or_default()).unwrap_or(Value::Null)
}

impl DemoRealm {
    /// Creates a realm named after `prefix` from the realm file, placeholders filled with
    /// test values.
    pub async fn create(prefix: &str) -> Result<DemoRealm> {
        let name = unique(prefix).replace('-', "");
        let file = std::fs::read_to_string(workspace().join("deploy/keycloak/realm-custos.json"))?;
        let mut text = String::with_capacity(file.len());
        let mut rest = file.as_str();
        while let Some(at) = rest.find("${") {
            text.push_str(&rest[..at]);
            let end = rest[at..].find('}').context("unclosed placeholder")? + at;
            let value = match &rest[at + 2..end] {
                "CUSTOS_DEMO_USER_PASSWORD" => DEMO_PASSWORD,
                "CUSTOS_FHIR_CLIENT_SECRET" => FHIR_CLIENT_SECRET,
                "CUSTOS_FEED_CLIENT_SECRET" => FEED_SOURCE_SECRET,
                "CUSTOS_QUERY_CLIENT_SECRET" => QUERY_CLIENT_SECRET,
                "CUSTOS_CONSOLE_CLIENT_SECRET" => CONSOLE_CLIENT_SECRET,
                _ => "unused-test-secret-0123456789",
            };
            text.push_str(value);
            rest = &rest[end + 1..];
        }
        text.push_str(rest);
        let mut rep: Value = serde_json::from_str(&text)?;
        rep["realm"] = json!(name);
        let kc = Kc::new();
        kc.post("", rep).await.context("creating the demo realm")?;
        Ok(DemoRealm { name, kc })
    }

    /// The issuer of the realm's tokens.
    pub fn issuer(&self) -> String {
        format!("{}/realms/{}", kc_url(), self.name)
    }

    /// A password grant of `user` at the demo SMART client with `scope`.
    pub async fn login(&self, user: &str, scope: &str) -> Result<Tokens> {
        let v = self
            .kc
            .openid_post(
                &self.name,
                "token",
                &[
                    ("grant_type", "password"),
                    ("client_id", APP),
                    ("username", user),
                    ("password", DEMO_PASSWORD),
                    ("scope", scope),
                ],
            )
            .await?;
        let access = v["access_token"].as_str();
        ensure!(access.is_some(), "no token for {user}: {v}");
        Ok(Tokens {
            access: access.unwrap_or_default().to_owned(),
            refresh: v["refresh_token"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// A password grant of staff user `user` at the realm's `custos-query` client (tokens for
    /// the report API: aud custos-query, realm roles).
    pub async fn staff_token(&self, user: &str) -> Result<String> {
        let v = self
            .kc
            .openid_post(
                &self.name,
                "token",
                &[
                    ("grant_type", "password"),
                    ("client_id", "custos-query"),
                    ("client_secret", QUERY_CLIENT_SECRET),
                    ("username", user),
                    ("password", DEMO_PASSWORD),
                    ("scope", "openid"),
                ],
            )
            .await?;
        v["access_token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no staff token for {user}: {v}"))
    }

    /// The token endpoint of the realm.
    pub fn token_url(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer())
    }

    /// Revokes `token` at the realm's RFC 7009 endpoint (as the public client that got it).
    pub async fn revoke(&self, token: &str, hint: &str) -> Result<()> {
        let resp = http()
            .post(format!("{}/protocol/openid-connect/revoke", self.issuer()))
            .form(&[
                ("client_id", APP),
                ("token", token),
                ("token_type_hint", hint),
            ])
            .send()
            .await?;
        ensure!(resp.status().is_success(), "revocation: {}", resp.status());
        Ok(())
    }

    /// Deletes the realm (best effort: a failure is reported, not raised).
    pub async fn delete(self) {
        match self
            .kc
            .admin(reqwest::Method::DELETE, &format!("/{}", self.name), None)
            .await
        {
            Ok((204, _)) => {}
            Ok((status, body)) => eprintln!("deleting realm {}: HTTP {status} {body}", self.name),
            Err(e) => eprintln!("deleting realm {}: {e:#}", self.name),
        }
    }
}

/// The server jar, built once per test binary by `scripts/fhir build`.
pub fn jar() -> Result<PathBuf> {
    static JAR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    JAR.get_or_init(|| {
        let out = Command::new(workspace().join("scripts/fhir"))
            .arg("build")
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("scripts/fhir build: {e}"))?;
        if !out.status.success() {
            return Err(format!("scripts/fhir build failed: {}", out.status));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The FHIR server as a child process (killed on drop).
pub struct FhirProcess {
    child: Child,
    /// The FHIR base URL (`http://127.0.0.1:PORT/fhir`).
    pub base: String,
    /// The health URL (audit counters).
    pub health: String,
}

impl FhirProcess {
    /// Starts the server for `realm`, posting its AuditEvents to `feed` (base URL, token URL,
    /// client id, secret), with extra environment; waits until `/fhir/metadata` answers.
    pub async fn start(
        realm: &DemoRealm,
        feed: (&str, &str, &str, &str),
        env: &[(&str, &str)],
    ) -> Result<FhirProcess> {
        let port = free_port()?;
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("custos-fhir-{}.log", realm.name)),
        )?;
        let mut cmd = Command::new("java");
        cmd.args([
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-jar",
        ])
        .arg(jar()?)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CUSTOS_FHIR_PORT", port.to_string())
        .env("CUSTOS_FHIR_ISSUER", realm.issuer())
        .env("CUSTOS_FHIR_CLIENT_SECRET", FHIR_CLIENT_SECRET)
        .env("CUSTOS_FEED_URL", feed.0)
        .env("CUSTOS_FEED_TOKEN_URL", feed.1)
        .env("CUSTOS_FEED_CLIENT_ID", feed.2)
        .env("CUSTOS_FEED_CLIENT_SECRET", feed.3)
        .envs(env.iter().copied())
        .stdout(log.try_clone()?)
        .stderr(log);
        let child = cmd.spawn().context("starting java")?;
        let mut p = FhirProcess {
            child,
            base: format!("http://127.0.0.1:{port}/fhir"),
            health: format!("http://127.0.0.1:{port}/healthz"),
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = http().get(format!("{}/metadata", p.base)).send().await {
                if r.status().is_success() {
                    return Ok(p);
                }
            }
            if let Some(status) = p.child.try_wait()? {
                bail!("the FHIR server exited: {status} (log in the temp dir)");
            }
            ensure!(
                Instant::now() < deadline,
                "the FHIR server did not start in 90 s"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// GET `path` (below the base) with an optional bearer token: status, JSON body and the
    /// `WWW-Authenticate` header.
    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Result<(u16, Value, String)> {
        let mut req = http().get(format!("{}/{path}", self.base));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body, challenge))
    }

    /// The audit counters of `/healthz`.
    pub async fn audit_stats(&self) -> Result<Value> {
        Ok(http()
            .get(&self.health)
            .send()
            .await?
            .json::<Value>()
            .await?["audit"]
            .clone())
    }
}

impl Drop for FhirProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One AuditEvent the feed received: its id and what the ingest's decoder made of it.
#[derive(Clone, Debug)]
pub struct Received {
    /// `AuditEvent.id`.
    pub id: String,
    /// The decoded access, or the decode error.
    pub access: std::result::Result<FhirAccessData, String>,
}

/// An audit feed on 127.0.0.1 following the feed's contract: `POST /token` (client
/// credentials) and `POST /fhir` (batch Bundle of AuditEvents, bearer token required). The
/// first `fail_first` feed requests are answered 503 (an outage).
#[derive(Clone, Default)]
pub struct TestFeed {
    received: Arc<Mutex<Vec<Received>>>,
    requests: Arc<AtomicUsize>,
    fail_first: Arc<AtomicUsize>,
}

const FEED_TOKEN: &str = "test-feed-access-token";
/// The feed client's id and secret the test feed accepts.
pub const FEED_CLIENT: (&str, &str) = ("custos-audit-source", "feed-secret-0123456789");

impl TestFeed {
    /// Starts the feed; returns it, its base URL and its token URL.
    pub async fn start(fail_first: usize) -> Result<(TestFeed, String, String)> {
        let feed = TestFeed::default();
        feed.fail_first.store(fail_first, Ordering::SeqCst);
        let state = feed.clone();
        let app = axum::Router::new()
            .route(
                "/token",
                axum::routing::post(|headers: axum::http::HeaderMap| async move {
                    let basic = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("{}:{}", FEED_CLIENT.0, FEED_CLIENT.1))
                    );
                    let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
                        == Some(basic.as_str());
                    if ok {
                        (
                            axum::http::StatusCode::OK,
                            json!({"access_token": FEED_TOKEN, "expires_in": 300}).to_string(),
                        )
                    } else {
                        (
                            axum::http::StatusCode::UNAUTHORIZED,
                            json!({"error": "invalid_client"}).to_string(),
                        )
                    }
                }),
            )
            .route(
                "/fhir",
                axum::routing::post(
                    |axum::extract::State(s): axum::extract::State<TestFeed>,
                     headers: axum::http::HeaderMap,
                     body: axum::body::Bytes| async move { s.take(&headers, &body) },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((
            feed,
            format!("http://{addr}/fhir"),
            format!("http://{addr}/token"),
        ))
    }

    fn take(
        &self,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> (axum::http::StatusCode, String) {
        use axum::http::StatusCode;
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        if n < self.fail_first.load(Ordering::SeqCst) {
            return (StatusCode::SERVICE_UNAVAILABLE, "{}".into());
        }
        let bearer = format!("Bearer {FEED_TOKEN}");
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(bearer.as_str()) {
            return (StatusCode::UNAUTHORIZED, "{}".into());
        }
        let Ok(bundle) = serde_json::from_slice::<Value>(body) else {
            return (StatusCode::BAD_REQUEST, "{}".into());
        };
        let mut out = Vec::new();
        for entry in bundle["entry"].as_array().cloned().unwrap_or_default() {
            let resource = &entry["resource"];
            let bytes = serde_json::to_vec(resource).unwrap_or_default();
            let access = match decode(&bytes, &[], &DecodeLimits::default()) {
                Ok(ev) => match ev.payload {
                    Payload::FhirAccess(a) => Ok(a),
                    other => Err(format!("not a FHIR access: {other:?}")),
                },
                Err(e) => Err(e.to_string()),
            };
            let status = if access.is_ok() {
                "201 Created"
            } else {
                "400 Bad Request"
            };
            out.push(json!({"response": {"status": status}}));
            self.received.lock().expect("lock").push(Received {
                id: resource["id"].as_str().unwrap_or_default().to_owned(),
                access,
            });
        }
        (
            StatusCode::OK,
            json!({"resourceType": "Bundle", "type": "batch-response", "entry": out}).to_string(),
        )
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// Feed requests so far (including refused ones).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits up to `secs` until an access matching `pred` arrived; returns it.
    pub async fn wait_for(
        &self,
        secs: u64,
        what: &str,
        pred: impl Fn(&FhirAccessData) -> bool,
    ) -> Result<FhirAccessData> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.received();
            for r in &got {
                if let Ok(a) = &r.access {
                    if pred(a) {
                        return Ok(a.clone());
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("no AuditEvent for {what} within {secs}s; received: {got:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
