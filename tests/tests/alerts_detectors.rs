//! End-to-end: events built by the test go through Kafka to the real `custos-alerts` (and the
//! real ingest), and each detector raises its alert in `custos.alerts` while its near miss
//! stays quiet (break-glass: past its time limit, and with a placeholder reason, since the
//! decoders refuse an empty one); the alerts name the stored audit rows (evidence keys, pseudonyms); a tenant's
//! webhook gets the alert signed with HMAC-SHA256 and its SSF receiver a signed SET, each
//! delivery recorded as a `notify` action.

#[path = "support/detection.rs"]
mod detection;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use custos_tests::*;
use detection::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const ISS: &str = "https://as.test/realms/r";
const WEBHOOK_SECRET: &str = "test-webhook-secret-0123456789";

type Got = Arc<Mutex<Vec<(HeaderMap, String)>>>;

/// A receiver on loopback recording every POST to /hook and /ssf.
async fn receiver() -> Result<(String, Got, Got)> {
    let hooks: Got = Arc::default();
    let sets: Got = Arc::default();
    let (h, s) = (hooks.clone(), sets.clone());
    let app = Router::new()
        .route(
            "/hook",
            post(move |headers: HeaderMap, body: String| async move {
                h.lock().expect("lock").push((headers, body));
                axum::http::StatusCode::OK
            }),
        )
        .route(
            "/ssf",
            post(move |headers: HeaderMap, body: String| async move {
                s.lock().expect("lock").push((headers, body));
                axum::http::StatusCode::ACCEPTED
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((base, hooks, sets))
}

fn patient_access(client: &str, patient: &str, jti: &str, decision: &str) -> Value {
    json!({"requestId": format!("q-{jti}"), "iss": ISS, "sub": format!("sub-{patient}"),
        "fhirUser": format!("Patient/{patient}"), "client_id": client, "jti": jti,
        "scope": "patient/Observation.rs", "interaction": "search-type", "resourceType": "Observation",
        "patient": format!("Patient/{patient}"), "decision": decision,
        "httpStatus": if decision == "permit" { 200 } else { 403 }, "sourceIp": "203.0.113.5"})
}

fn btg(jti: &str) -> Value {
    json!({"requestId": format!("q-{jti}"), "iss": ISS, "sub": "dr-3", "fhirUser": "Practitioner/pr-3",
        "client_id": "ehr-app", "jti": jti, "scope": "user/*.rs", "interaction": "search-type",
        "resourceType": "Condition", "patient": "Patient/RAWPAT-bg", "purposeOfUse": ["BTG"],
        "decision": "permit", "httpStatus": 200, "sourceIp": "10.1.1.3",
        "breakGlassReason": "cardiac arrest"})
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The scenario: per detector, a tenant where it fires and one with its near miss. Returns
/// (messages per topic kind, expected detector per firing tenant, quiet tenants).
struct Scenario {
    gateway: Vec<Msg>,
    as_events: Vec<Msg>,
    consent: Vec<Msg>,
    fires: BTreeMap<String, &'static str>,
    quiet: Vec<String>,
}

fn scenario() -> Scenario {
    let b = now_minute_ms() - 240 * MIN;
    let mut s = Scenario {
        gateway: Vec::new(),
        as_events: Vec::new(),
        consent: Vec::new(),
        fires: BTreeMap::new(),
        quiet: Vec::new(),
    };
    let mut n = 0;
    let mut id = |t: &str| {
        n += 1;
        format!("{t}-{n}")
    };
    let pair = |s: &mut Scenario, tag: &str, detector: &'static str| {
        let (f, q) = (tenant(&format!("{tag}f")), tenant(&format!("{tag}q")));
        s.fires.insert(f.clone(), detector);
        s.quiet.push(q.clone());
        (f, q)
    };
    // An access token from two origins (another network) / twice from one /24.
    let (f, q) = pair(&mut s, "tok", "token_multi_origin");
    for (t, second_ip) in [(&f, "198.51.100.7"), (&q, "10.1.1.9")] {
        s.gateway.push(ce_at(
            &id(t),
            "custos.fhir.access",
            t,
            b,
            access("dr-1", "J-tok", "10.1.1.5", "Observation", "permit"),
        ));
        s.gateway.push(ce_at(
            &id(t),
            "custos.fhir.access",
            t,
            b + MIN,
            access("dr-1", "J-tok", second_ip, "Observation", "permit"),
        ));
    }
    // A refresh token presented again after its session rotated it (invalid_grant) / an
    // invalid_grant without a rotation (an expired refresh token).
    let (f, q) = pair(&mut s, "ref", "refresh_reuse");
    for (t, rotated) in [(&f, true), (&q, false)] {
        let refresh = |token_type: &str, error: Option<&str>| {
            let mut v = json!({"iss": ISS, "sub": "sub-1", "fhirUser": "Patient/RAWPAT-r",
                "client_id": "app", "jti": format!("{token_type}-1"), "tokenType": token_type,
                "sid": "ses-1", "sourceIp": "203.0.113.9"});
            if let Some(e) = error {
                v["error"] = json!(e);
                v["reason"] = json!(if rotated {
                    "invalid refresh token"
                } else {
                    "refresh token expired"
                });
            }
            v
        };
        if rotated {
            s.as_events.push(ce_at(
                &id(t),
                "custos.token.refreshed",
                t,
                b + MIN,
                refresh("access", None),
            ));
        }
        s.as_events.push(ce_at(
            &id(t),
            "custos.token.refreshed",
            t,
            b + 2 * MIN,
            refresh("refresh", Some("invalid_grant")),
        ));
    }
    // A break-glass opening with a placeholder reason / with a real one.
    let (f, q) = pair(&mut s, "bgr", "break_glass");
    for (t, reason) in [(&f, "n/a"), (&q, "suspected sepsis")] {
        s.as_events.push(ce_at(
            &id(t),
            "custos.breakglass.opened",
            t,
            b + 5 * MIN,
            json!({"iss": ISS, "sub": "dr-4",
            "fhirUser": "Practitioner/pr-4", "client_id": "ehr-app", "patient": "RAWPAT-bgr",
            "reason": reason, "expiresAt": rfc3339(b + 65 * MIN), "sourceIp": "10.1.1.4"}),
        ));
    }
    // Access after the consent was revoked, beyond the grace / within it.
    let (f, q) = pair(&mut s, "con", "access_after_consent_revocation");
    for (t, after) in [(&f, 7 * MIN), (&q, 4 * MIN)] {
        s.consent.push(ce_at(&id(t), "custos.consent.revoked", t, b + 10 * MIN, json!({"consentId": "c-1",
            "patient": "RAWPAT-c", "client_id": "app", "iss": ISS, "sub": "sub-RAWPAT-c", "actor": "patient",
            "reason": "patient request"})));
        s.gateway.push(ce_at(
            &id(t),
            "custos.fhir.access",
            t,
            b + 10 * MIN + after,
            patient_access("app", "RAWPAT-c", "J-con", "permit"),
        ));
    }
    // A read outside the token's scopes / inside them.
    let (f, q) = pair(&mut s, "sco", "scope_escalation");
    for (t, rtype) in [(&f, "AllergyIntolerance"), (&q, "Observation")] {
        s.gateway.push(ce_at(
            &id(t),
            "custos.fhir.access",
            t,
            b + 20 * MIN,
            access("dr-2", "J-sco", "10.1.1.5", rtype, "permit"),
        ));
    }
    // A break-glass access after the opening's time limit / just before it.
    let (f, q) = pair(&mut s, "bg", "break_glass");
    for (t, at) in [(&f, 61 * MIN), (&q, 59 * MIN)] {
        s.as_events.push(ce_at(&id(t), "custos.breakglass.opened", t, b + 30 * MIN, json!({"iss": ISS, "sub": "dr-3",
            "fhirUser": "Practitioner/pr-3", "client_id": "ehr-app", "patient": "RAWPAT-bg",
            "reason": "cardiac arrest", "expiresAt": rfc3339(b + 90 * MIN), "sourceIp": "10.1.1.3"})));
        s.gateway.push(ce_at(
            &id(t),
            "custos.fhir.access",
            t,
            b + 30 * MIN + at,
            btg("J-bg"),
        ));
    }
    // Five failed sign-ins then a success / four.
    let (f, q) = pair(&mut s, "cs", "credential_stuffing");
    for (t, failures) in [(&f, 5), (&q, 4)] {
        for i in 0..failures {
            s.as_events.push(ce_at(
                &id(t),
                "custos.auth.login_failed",
                t,
                b + 100 * MIN + i * 10_000,
                json!({"iss": ISS, "sub": "u-1", "client_id": "portal", "sourceIp": "198.51.100.1",
                       "error": "invalid_user_credentials"}),
            ));
        }
        s.as_events.push(ce_at(
            &id(t),
            "custos.auth.login",
            t,
            b + 102 * MIN,
            json!({"iss": ISS, "sub": "u-1", "client_id": "portal", "sourceIp": "198.51.100.1"}),
        ));
    }
    // Moves the watermark past every window.
    let tick = tenant("tick");
    s.quiet.push(tick.clone());
    s.as_events.push(ce_at(
        &id(&tick),
        "custos.auth.login",
        &tick,
        b + 200 * MIN,
        json!({"iss": ISS, "sub": "u-9", "client_id": "portal", "sourceIp": "10.9.9.9"}),
    ));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_detector_fires_and_its_near_miss_stays_quiet() -> Result<()> {
    migrate()?;
    let s = scenario();
    let mut setup = AlertsSetup::create("alerts-det", 1).await?;
    // The token tenant's SIEM outputs: a webhook and an SSF receiver on loopback.
    let (base, hooks, sets) = receiver().await?;
    let token_tenant = s
        .fires
        .iter()
        .find(|(_, d)| **d == "token_multi_origin")
        .map(|(t, _)| t.clone())
        .expect("token tenant");
    let dir = workspace().join("target").join("e2e-logs");
    std::fs::create_dir_all(&dir)?;
    let tenants_file = dir.join(format!("{}-tenants.json", setup.topics.group));
    std::fs::write(
        &tenants_file,
        serde_json::to_vec(&json!({ token_tenant.clone(): {
            "webhook": {"url": format!("{base}/hook"), "secret": WEBHOOK_SECRET},
            "ssf": {"endpoint": format!("{base}/ssf"), "audience": "urn:test:siem"}}}))?,
    )?;
    let key_file = dir.join(format!("{}-ssf.pem", setup.topics.group));
    let _ = std::fs::remove_file(&key_file);
    custos_runtime::keygen::write_p256_key(&key_file)?;
    setup.env = vec![
        (
            "CUSTOS_ALERTS_TENANTS_FILE".into(),
            tenants_file.display().to_string(),
        ),
        (
            "CUSTOS_ALERTS_SSF_KEY_FILE".into(),
            key_file.display().to_string(),
        ),
    ];

    let mut ingest = Ingest::spawn(&setup.topics, &[])?;
    let mut alerts = AlertsProc::spawn(&setup)?;
    ingest.wait_ready(Duration::from_secs(120)).await?;
    alerts.wait_ready(Duration::from_secs(120)).await?;
    let p = producer()?;
    produce(&p, &setup.topics.consent, None, &s.consent).await?;
    produce(&p, &setup.topics.gateway, None, &s.gateway).await?;
    produce(&p, &setup.topics.as_events, None, &s.as_events).await?;
    let total = (s.consent.len() + s.gateway.len() + s.as_events.len()) as u64;

    let fire_tenants: Vec<String> = s.fires.keys().cloned().collect();
    let seen = wait_alerts(&fire_tenants, Duration::from_secs(60), |seen| {
        let tenants: BTreeSet<&str> = seen.iter().map(|a| a.tenant.as_str()).collect();
        tenants.len() == fire_tenants.len()
    })
    .await?;
    // Every revision is in, and nothing more comes: wait for the inputs to be consumed.
    wait_stored(&setup.topics.input_list(), total, Duration::from_secs(90)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = alerts_of(&fire_tenants).await.unwrap_or(seen);
    let mut by_tenant: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for a in &seen {
        by_tenant.entry(&a.tenant).or_default().insert(&a.detector);
    }
    for (t, detector) in &s.fires {
        assert_eq!(
            by_tenant.get(t.as_str()).cloned().unwrap_or_default(),
            BTreeSet::from([*detector]),
            "tenant {t}: {seen:#?}"
        );
    }
    let quiet = alerts_of(&s.quiet).await?;
    assert!(quiet.is_empty(), "near misses raised alerts: {quiet:#?}");

    // The evidence keys are the stored audit rows' keys, and no raw identifier is in an alert.
    let keys: BTreeSet<String> = seen.iter().flat_map(|a| a.evidence.clone()).collect();
    let stored: u64 = admin()
        .query("SELECT uniqExact(event_key) FROM custos.audit_events FINAL WHERE event_key IN ? AND tenant IN ?")
        .bind(keys.iter().collect::<Vec<_>>())
        .bind(&fire_tenants)
        .fetch_one()
        .await?;
    assert_eq!(
        stored,
        keys.len() as u64,
        "every evidence key is a stored audit row"
    );
    let raw: u64 = admin()
        .query("SELECT count() FROM custos.alerts WHERE tenant IN ? AND \
                positionCaseInsensitive(concat(patient, subject, summary, dedup_key), 'RAWPAT') > 0")
        .bind(&fire_tenants)
        .fetch_one()
        .await?;
    assert_eq!(raw, 0, "a raw patient id reached custos.alerts");

    // Each revision was published to the alerts topic (key = alert id).
    let published = consume_all(&setup.alerts_topic, seen.len(), Duration::from_secs(20))?;
    let mut on_topic = BTreeSet::new();
    for (payload, _) in &published {
        let v: Value = serde_json::from_slice(payload)?;
        on_topic.insert((
            v["alert_id"].as_str().unwrap_or_default().to_owned(),
            v["revision"].as_u64().unwrap_or(0),
        ));
    }
    let in_table: BTreeSet<(String, u64)> = seen
        .iter()
        .map(|a| (a.alert_id.clone(), u64::from(a.revision)))
        .collect();
    assert!(
        in_table.is_subset(&on_topic),
        "table {in_table:?} topic {on_topic:?}"
    );

    // The token tenant's webhook and SSF receiver, and their notify actions.
    let token_alert = seen
        .iter()
        .find(|a| a.tenant == token_tenant)
        .expect("token alert")
        .clone();
    let revisions = seen.iter().filter(|a| a.tenant == token_tenant).count();
    let start = std::time::Instant::now();
    while (hooks.lock().expect("lock").len() < revisions
        || sets.lock().expect("lock").len() < revisions)
        && start.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (headers, body) in hooks.lock().expect("lock").iter() {
        let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes())?;
        mac.update(body.as_bytes());
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            headers
                .get("x-custos-signature")
                .and_then(|v| v.to_str().ok()),
            Some(expected.as_str())
        );
        let v: Value = serde_json::from_str(body)?;
        assert_eq!(v["alert_id"], token_alert.alert_id.as_str());
        assert_eq!(v["detector"], "token_multi_origin");
    }
    let pem = std::fs::read_to_string(&key_file)?;
    let jwks = custos_integrity::jws::Es256Signer::from_pem(&pem, "custos-alerts-1")?.jwks();
    for (headers, set) in sets.lock().expect("lock").iter() {
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/secevent+jwt")
        );
        let claims: Value = custos_integrity::jws::verify(set, "secevent+jwt", &jwks)?;
        assert_eq!(claims["aud"], "urn:test:siem");
        assert!(claims["txn"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&token_alert.alert_id));
        let event = &claims["events"]
            ["https://schemas.openid.net/secevent/caep/event-type/risk-level-change"];
        assert_eq!(event["risk_reason"], "token_multi_origin");
        assert_eq!(event["current_level"], "HIGH");
    }
    assert_eq!(
        hooks.lock().expect("lock").len(),
        revisions,
        "one webhook call per revision"
    );
    assert_eq!(
        sets.lock().expect("lock").len(),
        revisions,
        "one SET per revision"
    );
    let mut notes: Vec<String> = Vec::new();
    let start = std::time::Instant::now();
    while notes.len() < 2 * revisions && start.elapsed() < Duration::from_secs(30) {
        notes = alerts_account()
            .query("SELECT detail FROM custos.alert_actions FINAL WHERE tenant = ? AND alert_id = ? AND action = 'notify' ORDER BY detail")
            .bind(&token_tenant)
            .bind(&token_alert.alert_id)
            .fetch_all::<String>()
            .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(notes.len(), 2 * revisions, "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("ssf delivered: HTTP 202")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("webhook delivered: HTTP 200")),
        "{notes:?}"
    );

    assert!(alerts.metric("custos_alerts_events_observed_total").await? >= total as f64);
    // Alerts raised by a message have a produce-to-written latency.
    assert!(
        alerts
            .metric("custos_alerts_detection_latency_seconds_count")
            .await?
            >= 1.0
    );
    assert!(alerts.metric("custos_alerts_raised_total").await? >= seen.len() as f64);
    assert_eq!(
        alerts.terminate(Duration::from_secs(30))?,
        0,
        "clean shutdown"
    );
    ingest.terminate(Duration::from_secs(60))?;
    let log = alerts.log_text();
    assert!(
        !log.contains("RAWPAT") && !log.contains(WEBHOOK_SECRET),
        "secrets or raw ids logged"
    );
    Ok(())
}
