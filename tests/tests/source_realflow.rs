//! A real sign-in and a real FHIR read through Custos, end to end:
//!
//! - a demo patient signs in at the dev stack's Keycloak through the authorization code flow
//!   with PKCE on the real login form (a fresh realm made from `deploy/keycloak/realm-custos.json`,
//!   whose events go through the `custos-kafka` listener to the stack's `custos.as-events`); the
//!   real ingest stores its LOGIN and CODE_TO_TOKEN events in `custos.audit_events` within 10 s
//!   of the token response, under the realm's tenant and issuer, the token row with the access
//!   token's `jti`;
//! - the demo FHIR server (trusting that realm, `CUSTOS_FHIR_TENANT` = the realm) serves a read
//!   with that token, its BALP AuditEvent goes through the real audit feed, Kafka and the ingest
//!   into a FHIR access row with the token's `jti`;
//! - the query API's token trace, asked by an incident responder of the realm, shows the issued
//!   token and the read together, and the trace of the token's session adds the login.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use custos_tests::{admin, create_topics, tail, unique, Ingest, Topics};
use rand_core::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};

use support::feed::feed_app;
use support::fhir_server::{
    claims, DemoRealm, FhirProcess, APP, DEMO_PASSWORD, FEED_SOURCE_SECRET, PATIENT_USER,
};
use support::keycloak::http;
use support::{app_for, ensure_schema, get};

/// The topic the stack Keycloak's `custos-kafka` listener publishes to (`scripts/keycloak`).
const AS_TOPIC: &str = "custos.as-events";
/// A redirect URI registered for the demo SMART client; nothing listens there: the code is
/// read from the `Location` header.
const REDIRECT: &str = "http://127.0.0.1:8765/callback";
/// The longest a sign-in may take to reach the audit table.
const LOGIN_TO_ROW: Duration = Duration::from_secs(10);

/// An audit row of the realm's tenant.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Stored {
    event_type: String,
    issuer: String,
    client_id: String,
    session_id: String,
    token_jti: String,
    decision: String,
    resource_type: String,
    kafka_topic: String,
}

/// The realm's audit rows (tenant = realm name), oldest first.
async fn rows_of(realm: &str) -> Result<Vec<Stored>> {
    Ok(admin()
        .query(
            "SELECT ?fields FROM custos.audit_events FINAL WHERE tenant = ? \
             ORDER BY event_time, kafka_offset",
        )
        .bind(realm)
        .fetch_all::<Stored>()
        .await?)
}

/// Polls the realm's rows until `done` holds for them; fails after `timeout`.
async fn wait_rows(
    realm: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[Stored]) -> bool,
) -> Result<Vec<Stored>> {
    let start = Instant::now();
    loop {
        let rows = rows_of(realm).await?;
        if done(&rows) {
            return Ok(rows);
        }
        if start.elapsed() > timeout {
            bail!("{what}: not stored within {timeout:?}; rows of the realm: {rows:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cookie jar for one browser session: the `name=value` pairs Keycloak set.
#[derive(Default)]
struct Cookies(HashMap<String, String>);

impl Cookies {
    /// Keeps the cookies of `resp` (an expired one removes its name).
    fn take(&mut self, resp: &reqwest::Response) {
        for v in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let Some(pair) = v.to_str().ok().and_then(|s| s.split(';').next()) else {
                continue;
            };
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() {
                    self.0.remove(name.trim());
                } else {
                    self.0.insert(name.trim().to_owned(), value.to_owned());
                }
            }
        }
    }

    /// The `Cookie` header value.
    fn header(&self) -> String {
        let pairs: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join("; ")
    }
}

/// 32 random bytes, base64url.
fn random_b64() -> String {
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    B64.encode(bytes)
}

/// The value of query parameter `name` in `url`.
fn query_param(url: &str, name: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    parsed
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The `action` of the login form in Keycloak's login page, HTML entities undone.
fn form_action(html: &str) -> Result<String> {
    let form = html
        .find("id=\"kc-form-login\"")
        .context("no login form on the page")?;
    let start = html[..form].rfind("<form").context("no <form")?;
    let tag = &html[start..];
    let at = tag.find("action=\"").context("form without action")? + "action=\"".len();
    let end = tag[at..].find('"').context("unclosed action")? + at;
    Ok(tag[at..end].replace("&amp;", "&"))
}

/// The token response of an authorization code sign-in with PKCE of `user` at the demo SMART
/// client, through the realm's login form; and the instant the token response arrived.
async fn sign_in(realm: &DemoRealm, user: &str, scope: &str) -> Result<(Value, Instant)> {
    let client = http();
    let mut jar = Cookies::default();
    let verifier = random_b64();
    let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
    let state = random_b64();
    let base = format!("{}/protocol/openid-connect", realm.issuer());
    let page = client
        .get(format!("{base}/auth"))
        .query(&[
            ("response_type", "code"),
            ("client_id", APP),
            ("redirect_uri", REDIRECT),
            ("scope", scope),
            ("state", &state),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await?;
    ensure!(page.status() == 200, "login page: HTTP {}", page.status());
    jar.take(&page);
    let action = form_action(&page.text().await?)?;
    let posted = client
        .post(&action)
        .header(reqwest::header::COOKIE, jar.header())
        .form(&[
            ("username", user),
            ("password", DEMO_PASSWORD),
            ("credentialId", ""),
        ])
        .send()
        .await?;
    ensure!(
        posted.status() == 302,
        "login form answered HTTP {}: {}",
        posted.status(),
        tail(&posted.text().await.unwrap_or_default(), 5)
    );
    let location = posted
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("no Location after the login form")?
        .to_owned();
    ensure!(
        location.starts_with(REDIRECT),
        "redirected elsewhere: {location}"
    );
    ensure!(
        query_param(&location, "state").as_deref() == Some(state.as_str()),
        "state changed"
    );
    let code = query_param(&location, "code").context("no code in the redirect")?;
    let resp = client
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", APP),
            ("code_verifier", &verifier),
        ])
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    let at = Instant::now();
    ensure!(
        status == 200 && body["access_token"].is_string(),
        "code exchange: HTTP {status} {}",
        body["error"]
    );
    Ok((body, at))
}

/// The events of a token trace page (its rows: the event's columns and the two flags).
fn trace_events(page: &Value) -> Vec<Value> {
    page["rows"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_code_sign_in_and_a_fhir_read_are_audited_and_traced() -> Result<()> {
    ensure_schema()?;
    let realm = Arc::new(DemoRealm::create("realflow").await?);
    // The flow runs as a task so that a failed assertion still lets the realm be deleted.
    let joined = tokio::spawn(flow(Arc::clone(&realm))).await;
    match Arc::try_unwrap(realm) {
        Ok(realm) => realm.delete().await,
        Err(realm) => eprintln!("realm {} still in use; not deleted", realm.name),
    }
    match joined {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(e.into()),
    }
}

/// Sign-in, read and trace in `realm`, with the ingest and the FHIR server of the test.
async fn flow(realm: Arc<DemoRealm>) -> Result<()> {
    let realm = realm.as_ref();
    let issuer = realm.issuer();
    let tenant = realm.name.as_str();
    // The AS events come from the stack's topic; the others are the test's own.
    let p = unique("realflow");
    let topics = Topics {
        as_events: AS_TOPIC.to_owned(),
        gateway: format!("{p}.gateway-events"),
        consent: format!("{p}.consent-events"),
        dlq: format!("{p}.dlq"),
        checkpoints: format!("{p}.checkpoints"),
        group: format!("{p}.group"),
    };
    create_topics(&[
        (&topics.gateway, 1),
        (&topics.consent, 1),
        (&topics.dlq, 1),
        (&topics.checkpoints, 1),
    ])
    .await?;
    let mut ingest = Ingest::spawn(&topics, &[])?;
    ingest.wait_ready(Duration::from_secs(60)).await?;

    // Warm-up: a staff sign-in of the realm, stored once the ingest has caught up with the
    // stack topic's earlier records (it reads the topic from its start, as a new group).
    let incident = realm.staff_token("ingrid.incident").await?;
    wait_rows(
        tenant,
        Duration::from_secs(180),
        "the warm-up login",
        |rows| rows.iter().any(|r| r.client_id == "custos-query"),
    )
    .await
    .with_context(|| tail(&ingest.log_text(), 30))?;
    // That sign-in is a password grant: its LOGIN event carries the token it issued.
    let staff_jti = claims(&incident)["jti"]
        .as_str()
        .context("staff token without jti")?
        .to_owned();
    wait_rows(
        tenant,
        Duration::from_secs(30),
        "the warm-up login's token",
        |rows| {
            rows.iter().any(|r| {
                r.client_id == "custos-query"
                    && r.event_type == "custos.auth.login"
                    && r.token_jti == staff_jti
            })
        },
    )
    .await?;

    // 1. The authorization code sign-in, measured from the token response to its rows.
    let (user, patient) = PATIENT_USER;
    let scope = "openid fhirUser launch/patient patient/Patient.rs patient/Observation.rs";
    let (tokens, got_token) = sign_in(realm, user, scope).await?;
    let access = tokens["access_token"].as_str().unwrap_or_default();
    let claims = claims(access);
    let jti = claims["jti"]
        .as_str()
        .context("access token without jti")?
        .to_owned();
    let sid = claims["sid"]
        .as_str()
        .context("access token without sid")?
        .to_owned();
    let ours = |r: &Stored| r.client_id == APP && r.kafka_topic == AS_TOPIC;
    let rows = wait_rows(
        tenant,
        LOGIN_TO_ROW * 3,
        "LOGIN and CODE_TO_TOKEN",
        |rows| {
            let has = |t: &str| rows.iter().any(|r| ours(r) && r.event_type == t);
            has("custos.auth.login") && has("custos.token.issued")
        },
    )
    .await?;
    let latency = got_token.elapsed();
    eprintln!("sign-in to audit rows: {latency:?}");
    ensure!(
        latency <= LOGIN_TO_ROW,
        "the sign-in's rows took {latency:?} (limit {LOGIN_TO_ROW:?})"
    );
    let login = rows
        .iter()
        .find(|r| ours(r) && r.event_type == "custos.auth.login")
        .context("login row")?;
    let issued = rows
        .iter()
        .find(|r| ours(r) && r.event_type == "custos.token.issued")
        .context("token row")?;
    assert_eq!(login.issuer, issuer, "{login:?}");
    assert_eq!(issued.issuer, issuer, "{issued:?}");
    assert_eq!(
        issued.token_jti, jti,
        "the token row carries the access token's jti"
    );
    assert_eq!(
        login.session_id, sid,
        "the login row carries the token's session"
    );
    assert_eq!(issued.session_id, sid, "{issued:?}");

    // 2. A FHIR read with that token, audited through the feed.
    let feed = feed_app(&issuer, "custos-feed", &topics.gateway, &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let feed_url = format!("http://{}/fhir", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, feed).await;
    });
    let fhir = FhirProcess::start(
        realm,
        (
            &feed_url,
            &realm.token_url(),
            "custos-audit-source",
            FEED_SOURCE_SECRET,
        ),
        &[("CUSTOS_FHIR_TENANT", tenant)],
    )
    .await?;
    let (status, body, _) = fhir
        .get(&format!("Patient/{patient}"), Some(access))
        .await?;
    ensure!(status == 200, "FHIR read: {status} {body}");
    let rows = wait_rows(tenant, Duration::from_secs(60), "the FHIR read", |rows| {
        rows.iter()
            .any(|r| r.event_type == "custos.fhir.access" && r.token_jti == jti)
    })
    .await?;
    let read = rows
        .iter()
        .find(|r| r.event_type == "custos.fhir.access" && r.token_jti == jti)
        .context("read row")?;
    assert_eq!(
        (
            read.decision.as_str(),
            read.resource_type.as_str(),
            read.client_id.as_str()
        ),
        ("permit", "Patient", APP),
        "{read:?}"
    );
    assert_eq!(read.kafka_topic, topics.gateway, "{read:?}");
    drop(fhir);
    server.abort();
    // The stack topic's history may hold events of other realms the ingest refuses (admin
    // event types it has no mapping for); the feed's events must all be stored.
    let refused: u64 = admin()
        .query("SELECT count() FROM custos.ingest_rejections WHERE kafka_topic = ?")
        .bind(&topics.gateway)
        .fetch_one()
        .await?;
    assert_eq!(refused, 0, "the feed's events were refused by the ingest");
    ingest.terminate(Duration::from_secs(60))?;

    // 3. Token trace: the issued token and the read under one jti; the session adds the login.
    let query = app_for(&issuer, &[]);
    let r = get(
        &query,
        &format!("/v1/reports/token-trace?jti={jti}&tenant={tenant}&limit=100"),
        Some(&incident),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let page = r.json();
    let events = trace_events(&page);
    let by_type = |t: &str| {
        events
            .iter()
            .any(|e| e["event_type"] == t && e["token_jti"] == jti.as_str())
    };
    assert!(
        by_type("custos.token.issued"),
        "no issued token in the trace: {page:#}"
    );
    assert!(
        by_type("custos.fhir.access"),
        "no FHIR read in the trace: {page:#}"
    );
    let summary = page["tokens"]
        .as_array()
        .and_then(|t| t.iter().find(|s| s["jti"] == jti.as_str()))
        .with_context(|| format!("no summary of the token: {page:#}"))?;
    assert!(summary["issued_at"].is_string(), "{summary:#}");
    assert_eq!(summary["accesses"], 1, "{summary:#}");
    assert_eq!(summary["session_id"], sid.as_str(), "{summary:#}");
    // The token's client, not the resource server that introspected it.
    assert_eq!(summary["client_id"], APP, "{summary:#}");
    // Keycloak's rows and the FHIR server's rows store the user's one address the same way
    // (row::tests::keycloak_and_fhir_rows_of_one_user_agree covers both user kinds).
    assert_eq!(
        summary["ips"].as_array().map(Vec::len),
        Some(1),
        "{summary:#}"
    );

    // The password grant's token: issued at its sign-in, with the scopes it was given.
    let r = get(
        &query,
        &format!("/v1/reports/token-trace?jti={staff_jti}&tenant={tenant}&limit=100"),
        Some(&incident),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let page = r.json();
    let staff = &page["tokens"][0];
    assert_eq!(staff["jti"], staff_jti.as_str(), "{page:#}");
    assert!(staff["issued_at"].is_string(), "{page:#}");
    assert!(
        staff["scopes_granted"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{page:#}"
    );

    let r = get(
        &query,
        &format!("/v1/reports/token-trace?session={sid}&tenant={tenant}&limit=100"),
        Some(&incident),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let page = r.json();
    let events = trace_events(&page);
    for t in [
        "custos.auth.login",
        "custos.token.issued",
        "custos.fhir.access",
    ] {
        assert!(
            events.iter().any(|e| e["event_type"] == t),
            "no {t} in the session's trace: {page:#}"
        );
    }
    Ok(())
}
