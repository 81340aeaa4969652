//! A privacy officer's consent revocation on the real sources, end to end:
//!
//! - the demo patient signs in to the patient app `smart-patient-app` (consent required) of a
//!   fresh realm made from `deploy/keycloak/realm-custos.json`, through the real login form and
//!   the real consent screen (authorization code with PKCE); the stack Keycloak's `custos-kafka`
//!   listener publishes the `LOGIN` that carries the consent screen's outcome to
//!   `custos.as-events`, and the consent service folds it into an active consent;
//! - the realm's privacy officer lists the patient's consents through the privacy API and
//!   revokes that one with a reason; the consent service deletes the consent at Keycloak and
//!   ends the app's session;
//! - the demo FHIR server, which introspects every token, refuses the app's token (401) within
//!   6 s of the push's delivery, and its audit of the refusal goes through the real audit feed,
//!   Kafka and the ingest into `custos.audit_events` as a `deny` row with the token's `jti`.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use custos_tests::{admin, brokers, tail, unique, Ingest, Topics};
use rand_core::RngCore;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use support::consent::{attempts_of, Service, Setup};
use support::ensure_schema;
use support::feed::feed_app;
use support::fhir_server::{
    claims, DemoRealm, FhirProcess, CONSENT_CLIENT_SECRET, DEMO_PASSWORD, FEED_SOURCE_SECRET,
    PATIENT_USER,
};
use support::keycloak::http;

/// The topic the stack Keycloak's `custos-kafka` listener publishes to (`scripts/keycloak`).
const AS_TOPIC: &str = "custos.as-events";
/// The realm file's patient-facing SMART client: public, PKCE, consent required.
const PATIENT_APP: &str = "smart-patient-app";
/// A redirect URI registered for it; nothing listens there: the code is read from `Location`.
const REDIRECT: &str = "http://127.0.0.1:8765/callback";
/// The longest the FHIR server may accept a token after its consent's revocation was
/// delivered to Keycloak (the introspection cache is at most 5 s).
const REVOKED_TO_REFUSED: Duration = Duration::from_secs(6);

/// A refusal row of the test's gateway topic.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Stored {
    token_jti: String,
    client_id: String,
    decision: String,
    http_status: u16,
    resource_type: String,
    issuer: String,
    tenant: String,
}

/// The `name=value` cookies Keycloak set during one browser session.
#[derive(Default)]
struct Cookies(HashMap<String, String>);

impl Cookies {
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

/// The `action` of the first `<form>` whose action contains `marker`, made absolute against
/// `base` and with HTML entities undone.
fn form_action(html: &str, marker: &str, base: &str) -> Result<String> {
    let at = html
        .find(marker)
        .with_context(|| format!("no form posting to {marker} on the page"))?;
    let start = html[..at].rfind('"').context("unquoted action")? + 1;
    let end = html[at..].find('"').context("unclosed action")? + at;
    let action = html[start..end].replace("&amp;", "&");
    Ok(if action.starts_with('/') {
        format!("{base}{action}")
    } else {
        action
    })
}

/// The value of the hidden input `name` on the page.
fn hidden_input(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let rest = &html[at..];
    let start = rest.find("value=\"")? + "value=\"".len();
    let end = rest[start..].find('"')? + start;
    Some(rest[start..end].to_owned())
}

/// The `Location` of a redirect.
fn location(resp: &reqwest::Response) -> Result<String> {
    resp.headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .with_context(|| format!("HTTP {} without Location", resp.status()))
}

/// Sign-in of `user` at the patient app through the login form and the consent screen
/// (accepted), authorization code with PKCE; returns the token response.
async fn sign_in_with_consent(realm: &DemoRealm, user: &str, scope: &str) -> Result<Value> {
    let client = http();
    let mut jar = Cookies::default();
    let verifier = random_b64();
    let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
    let state = random_b64();
    let kc_base = realm
        .issuer()
        .split("/realms/")
        .next()
        .unwrap_or_default()
        .to_owned();
    let oidc = format!("{}/protocol/openid-connect", realm.issuer());
    let page = client
        .get(format!("{oidc}/auth"))
        .query(&[
            ("response_type", "code"),
            ("client_id", PATIENT_APP),
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
    let action = form_action(&page.text().await?, "login-actions/authenticate", &kc_base)?;
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
    jar.take(&posted);
    let next = location(&posted)?;
    // A fresh realm: the app has no consent yet, so the consent screen must come.
    ensure!(
        !next.starts_with(REDIRECT),
        "the patient app got a code without the consent screen"
    );
    let screen = client
        .get(&next)
        .header(reqwest::header::COOKIE, jar.header())
        .send()
        .await?;
    jar.take(&screen);
    let html = screen.text().await?;
    let action = form_action(&html, "login-actions/consent", &kc_base)?;
    let code = hidden_input(&html, "code").context("no code on the consent screen")?;
    let accepted = client
        .post(&action)
        .header(reqwest::header::COOKIE, jar.header())
        .form(&[("code", code.as_str()), ("accept", "Yes")])
        .send()
        .await?;
    let back = location(&accepted)?;
    ensure!(back.starts_with(REDIRECT), "redirected elsewhere: {back}");
    let params: HashMap<String, String> = reqwest::Url::parse(&back)?
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    ensure!(params.get("state") == Some(&state), "state changed");
    let code = params.get("code").context("no code in the redirect")?;
    let resp = client
        .post(format!("{oidc}/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("client_id", PATIENT_APP),
            ("code_verifier", &verifier),
        ])
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    ensure!(
        status == 200 && body["access_token"].is_string(),
        "code exchange: HTTP {status} {}",
        body["error"]
    );
    Ok(body)
}

/// Commits `group`'s offsets of `topic` at its end, so a consent service of that new group
/// reads only what comes after (the stack topic holds every earlier test's events).
fn start_group_at_end(group: &str, topic: &str) -> Result<()> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (_, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(high))?;
        }
    }
    ensure!(tpl.count() > 0, "topic {topic} has no partitions");
    c.commit(&tpl, CommitMode::Sync)?;
    Ok(())
}

/// The consent of `app` in a `/v1/consents` answer.
fn consent_of<'a>(v: &'a Value, app: &str) -> Option<&'a Value> {
    v["consents"]
        .as_array()?
        .iter()
        .find(|c| c["current"]["client_id"] == app)
}

/// The state of revocation `id`'s push to Keycloak in a `/v1/consents` answer: only this
/// revocation counts (another consent service reading the same Keycloak's events may record
/// its own for the same consent).
fn keycloak_state<'a>(v: &'a Value, id: &str) -> Option<&'a str> {
    v["consents"]
        .as_array()?
        .iter()
        .flat_map(|c| c["revocations"].as_array().into_iter().flatten())
        .find(|r| r["revocation_id"] == id && r["target"] == "keycloak")?["state"]
        .as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privacy_officers_revocation_makes_the_fhir_server_refuse_the_token_and_is_audited(
) -> Result<()> {
    ensure_schema()?;
    let realm = Arc::new(DemoRealm::create("revoke").await?);
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

async fn flow(realm: Arc<DemoRealm>) -> Result<()> {
    let realm = realm.as_ref();
    let issuer = realm.issuer();
    let tenant = realm.name.as_str();

    // The consent service reads the stack's AS topic from now on and revokes at the stack
    // Keycloak as the realm's own `custos-consent` service account, as `scripts/run` runs it;
    // the privacy API trusts the realm's staff tokens (aud custos-consent).
    let officer = realm.staff_token("paul.privacy").await?;
    let mut setup = Setup::create("revoke", tenant, &officer, json!([])).await?;
    setup.as_topic = AS_TOPIC.to_owned();
    let group = unique("revoke-consent");
    start_group_at_end(&group, AS_TOPIC)?;
    let svc = Service::spawn(
        &setup,
        &group,
        &[
            ("CUSTOS_OIDC_AUDIENCE", "custos-consent"),
            ("CUSTOS_KEYCLOAK_ADMIN_REALM", tenant),
            ("CUSTOS_KEYCLOAK_ADMIN_CLIENT_ID", "custos-consent"),
            ("CUSTOS_KEYCLOAK_ADMIN_CLIENT_SECRET", CONSENT_CLIENT_SECRET),
        ],
    )?;
    svc.wait_ready().await?;

    // The audit side: the FHIR server's AuditEvents through the real feed, Kafka and ingest.
    let topics = Topics::create("revoke", 1).await?;
    let mut ingest = Ingest::spawn(&topics, &[])?;
    ingest.wait_ready(Duration::from_secs(60)).await?;
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

    // 1. The patient consents to the app on the consent screen; the app reads.
    let (user, patient) = PATIENT_USER;
    let tokens = sign_in_with_consent(
        realm,
        user,
        "openid fhirUser launch/patient patient/Patient.rs patient/Observation.rs",
    )
    .await?;
    let access = tokens["access_token"].as_str().unwrap_or_default();
    let jwt = claims(access);
    let jti = jwt["jti"].as_str().context("access token without jti")?;
    let subject = jwt["sub"].as_str().context("access token without sub")?;
    let (status, body, _) = fhir
        .get(&format!("Patient/{patient}"), Some(access))
        .await?;
    ensure!(
        status == 200,
        "the app's read before the revocation: {status} {body}"
    );

    // 2. The privacy officer finds the patient's consent to the app (known from Keycloak's
    // event alone, filed under the patient id of the user's `fhirUser`) and revokes it.
    let v = svc
        .wait_consents(tenant, patient, "the consent given at sign-in", |v| {
            consent_of(v, PATIENT_APP).is_some_and(|c| c["current"]["status"] == "active")
        })
        .await?;
    let consent = consent_of(&v, PATIENT_APP).context("the app's consent")?;
    let consent_id = consent["current"]["consent_id"]
        .as_str()
        .context("consent id")?
        .to_owned();
    assert_eq!(consent["current"]["issuer"], issuer.as_str(), "{consent:#}");
    let (status, answer) = svc
        .post(
            &format!("/v1/consents/{consent_id}/revoke"),
            json!({"tenant": tenant, "reason": "patient withdrew consent at the front desk"}),
        )
        .await?;
    assert_eq!(status, 202, "{answer:#}");
    let revocation_id = answer["revocations"][0]["revocationId"]
        .as_str()
        .context("revocation id")?
        .to_owned();

    // 3. The push to Keycloak is delivered; then the FHIR server refuses the token.
    let v = svc
        .wait_consents(tenant, patient, "the Keycloak push", |v| {
            keycloak_state(v, &revocation_id).is_some_and(|s| s != "requested")
        })
        .await?;
    assert_eq!(
        keycloak_state(&v, &revocation_id),
        Some("delivered"),
        "{v:#}"
    );
    let delivered = Instant::now();
    let attempts = attempts_of(&svc, &revocation_id).await?;
    assert!(
        attempts
            .iter()
            .any(|a| a["target"] == "keycloak" && a["outcome"] == "delivered"),
        "no delivered Keycloak attempt: {attempts:#?}"
    );
    let refused_after = loop {
        let (status, body, _) = fhir
            .get("Observation?patient=demo-pat-2001", Some(access))
            .await?;
        if status == 401 {
            break delivered.elapsed();
        }
        ensure!(
            status == 200,
            "the app's read after the revocation: {status} {body}"
        );
        if delivered.elapsed() > REVOKED_TO_REFUSED {
            bail!("the FHIR server still accepts the revoked consent's token after {REVOKED_TO_REFUSED:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("revocation delivered to refused read: {refused_after:?}");

    // 4. The refusal is an audit row with the token's jti.
    let start = Instant::now();
    let deny = loop {
        let rows = admin()
            .query(
                "SELECT ?fields FROM custos.audit_events FINAL \
                 WHERE kafka_topic = ? AND token_jti = ? AND decision = 'deny'",
            )
            .bind(&topics.gateway)
            .bind(jti)
            .fetch_all::<Stored>()
            .await?;
        if let Some(row) = rows.into_iter().next() {
            break row;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "no deny row for the revoked token within 60 s; ingest log:\n{}",
                tail(&ingest.log_text(), 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        (
            deny.decision.as_str(),
            deny.http_status,
            deny.resource_type.as_str(),
            deny.client_id.as_str(),
            deny.token_jti.as_str()
        ),
        ("deny", 401, "Observation", PATIENT_APP, jti),
        "{deny:?}"
    );
    assert_eq!(
        (deny.issuer.as_str(), deny.tenant.as_str()),
        (issuer.as_str(), tenant)
    );

    // Keycloak holds no consent of the patient for the app any more.
    let (s, granted) = http()
        .get(format!(
            "{}/admin/realms/{tenant}/users/{subject}/consents",
            issuer.split("/realms/").next().unwrap_or_default()
        ))
        .bearer_auth(support::keycloak::Kc::new().admin_token().await?)
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))?;
    ensure!(s == 200, "consents of the patient: HTTP {s}");
    let granted: Value = granted.json().await?;
    assert!(
        !granted
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["clientId"] == PATIENT_APP)),
        "the consent is still at Keycloak: {granted:#}"
    );

    drop(fhir);
    server.abort();
    ingest.terminate(Duration::from_secs(60))?;
    Ok(())
}
