//! End-to-end: the consent service against the real Kafka, ClickHouse and Keycloak
//! (`scripts/keycloak up`, http://127.0.0.1:18080 by default).
//!
//! Each test creates its own realm, confidential client (consent required) and patient user
//! through the Keycloak Admin REST API, then obtains tokens with `offline_access` through
//! the real authorization-code flow: the login form and the consent screen are posted like a
//! browser would (cookies kept by hand), so Keycloak stores a real user consent. The
//! `GRANT_CONSENT` user event Keycloak would emit is produced to the test's AS-events topic
//! (Keycloak has no Kafka event listener built in). Revocations go through Custos (privacy
//! API or consent topic) and their effect is asserted through Keycloak itself: token
//! introspection answers `active: false` and the user's consent list is empty. A SET
//! receiver in the test verifies the SETs' ES256 signatures against the JWKS the consent
//! service publishes.
//!
//! The privacy API is called with real Keycloak access tokens: each realm also gets
//! confidential clients with a service account holding the `privacy_officer` or `auditor`
//! realm role (or none) and an audience mapper adding `PRIVACY_AUDIENCE`; the consent service
//! validates them against the realm's JWKS (`CUSTOS_OIDC_*`, the query API's settings).

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use custos_tests::*;
use serde_json::{json, Value};

mod support;

use support::consent::*;
use support::keycloak::*;
use support::proxy::Proxy;
use support::ssf::*;

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_reaches_keycloak_and_receivers_and_replay_pushes_nothing_twice() -> Result<()> {
    migrate()?;
    let kc = Kc::new();
    let realm = unique("kc").replace('-', "");
    let user_id = kc.setup(&realm, "patient-one").await?;
    let tokens = kc.login_with_consent(&realm, "patient-one").await?;
    ensure!(
        kc.active(&realm, &tokens.access).await?,
        "fresh access token inactive"
    );
    ensure!(
        kc.active(&realm, &tokens.refresh).await?,
        "fresh offline token inactive"
    );
    let before = kc.consents(&realm, &user_id).await?;
    ensure!(
        before.iter().any(|c| c["clientId"] == CLIENT),
        "Keycloak holds no consent: {before:?}"
    );

    let privacy = kc.privacy_tokens(&realm).await?;
    let (consent_topic, as_topic, rev_topic) = topics("consent-kc").await?;
    let (receiver, endpoint) = Receiver::start(false).await?;
    let setup = Setup {
        realm: realm.clone(),
        token: privacy.officer.clone(),
        consent_topic: consent_topic.clone(),
        as_topic: as_topic.clone(),
        revocations_topic: rev_topic.clone(),
        keycloak_url: kc_url(),
        admin_password: kc_admin_password(),
        receivers: json!([{"name": "gw", "endpoint": endpoint, "audience": "https://gateway.example"}]),
    };
    let mut svc = Service::spawn(&setup, &unique("cg"), &[])?;
    svc.wait_ready().await?;

    let producer = producer()?;
    produce(
        &producer,
        &as_topic,
        None,
        &[Msg::json(&grant_consent_event(&realm, &user_id))],
    )
    .await?;
    let v = svc
        .wait_consents(&realm, &user_id, "the consent", |v| {
            v["consents"][0]["current"]["status"] == "active"
        })
        .await?;
    let consent_id = v["consents"][0]["current"]["consent_id"]
        .as_str()
        .context("consent id")?
        .to_owned();
    assert_eq!(
        consent_id,
        custos_schemas::keycloak::keycloak_consent_id(&realm, &user_id, CLIENT)
    );
    // SMART scopes are parsed, filters kept.
    let smart = &v["consents"][0]["smart"]["scopes"];
    assert!(
        smart
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x["filters"][0][1] == "laboratory")),
        "{smart}"
    );

    // The privacy API takes the query API's OIDC bearer tokens, here issued by Keycloak.
    let revoke = json!({"tenant": realm, "patient": user_id, "client_id": CLIENT, "reason": "patient withdrew consent by phone"});
    let read = format!("/v1/consents?tenant={realm}&patient={user_id}");
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;
    // No token, a garbage token, the patient's own SMART token (right realm, not this
    // audience): 401 problems.
    for token in [None, Some("not-a-token"), Some(tokens.access.as_str())] {
        for (m, path, body) in [
            (&post, "/v1/consents/revoke", Some(&revoke)),
            (&get, read.as_str(), None),
        ] {
            let (s, ct, v) = svc.call(m.clone(), path, token, body).await?;
            assert_eq!(s, 401, "{m} {path}: {v}");
            assert_eq!(ct, "application/problem+json");
            assert_eq!(v["status"], 401);
        }
    }
    // An auditor reads but may not revoke; a token without a Custos role does neither.
    let (s, ct, v) = svc
        .call(
            post.clone(),
            "/v1/consents/revoke",
            Some(&privacy.auditor),
            Some(&revoke),
        )
        .await?;
    assert_eq!((s, ct.as_str()), (403, "application/problem+json"), "{v}");
    let (s, _, v) = svc
        .call(get.clone(), &read, Some(&privacy.auditor), None)
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["consents"][0]["current"]["status"], "active");
    for (m, path, body) in [
        (&post, "/v1/consents/revoke", Some(&revoke)),
        (&get, read.as_str(), None),
    ] {
        let (s, _, v) = svc
            .call(m.clone(), path, Some(&privacy.no_role), body)
            .await?;
        assert_eq!(s, 403, "{m} {path}: {v}");
    }
    assert!(
        !svc.log_text().contains(&tokens.access),
        "a bearer token was logged"
    );

    // Revoke through the privacy API as the privacy officer (by patient + client); it goes
    // through Kafka.
    let (status, body) = svc.post("/v1/consents/revoke", revoke.clone()).await?;
    assert_eq!(status, 202, "{body}");
    let v = svc
        .wait_consents(&realm, &user_id, "the pushes", |v| all_final(v, 3))
        .await?;
    let states = target_states(&v);
    assert_eq!(
        states.get("keycloak").map(String::as_str),
        Some("delivered"),
        "{v:#}"
    );
    assert_eq!(
        states.get("ssf:gw").map(String::as_str),
        Some("delivered"),
        "{v:#}"
    );
    assert_eq!(
        states.get("kafka").map(String::as_str),
        Some("delivered"),
        "{v:#}"
    );
    assert_eq!(v["consents"][0]["current"]["status"], "revoked");
    // The revocation names the officer who asked for it.
    let revoked = v["consents"][0]["history"]
        .as_array()
        .and_then(|h| {
            h.iter()
                .find(|r| r["event_type"] == "custos.consent.revoked")
        })
        .cloned()
        .context("revocation in the history")?;
    assert_eq!(
        revoked["actor"],
        format!("service-account-{}", PRIVACY_CLIENTS[0].0),
        "{revoked}"
    );

    // Through Keycloak itself: the tokens are dead and the consent is gone.
    assert!(
        !kc.active(&realm, &tokens.refresh).await?,
        "offline token still active"
    );
    assert!(
        !kc.active(&realm, &tokens.access).await?,
        "access token still active"
    );
    let after = kc.consents(&realm, &user_id).await?;
    assert!(after.is_empty(), "consent still at Keycloak: {after:?}");

    // Latency from the revoke request to the AS acknowledgement is stored.
    let kc_row = v["consents"][0]["revocations"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["target"] == "keycloak"))
        .cloned()
        .context("keycloak row")?;
    let latency = kc_row["latency_ms"].as_i64().context("latency")?;
    assert!((0..30_000).contains(&latency), "latency {latency}");

    // The SET: signed with a published key, CAEP session-revoked about the user.
    let jwks: Value = svc
        .http
        .get(format!("{}/jwks.json", svc.url))
        .send()
        .await?
        .json()
        .await?;
    let config: Value = svc
        .http
        .get(format!("{}/.well-known/ssf-configuration", svc.url))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(config["jwks_uri"], format!("{}/jwks.json", svc.url));
    let sets = receiver.received();
    assert_eq!(sets.len(), 1, "exactly one SET");
    let (header, claims) = verify_set(&sets[0], &jwks)?;
    assert_eq!(header["typ"], "secevent+jwt");
    assert_eq!(claims["iss"], config["issuer"]);
    assert_eq!(claims["aud"], "https://gateway.example");
    assert_eq!(claims["sub_id"]["format"], "iss_sub");
    assert_eq!(claims["sub_id"]["sub"], user_id.as_str());
    assert_eq!(
        claims["sub_id"]["iss"],
        format!("{}/realms/{realm}", kc_url())
    );
    let ev =
        &claims["events"]["https://schemas.openid.net/secevent/caep/event-type/session-revoked"];
    assert_eq!(ev["initiating_entity"], "admin");
    assert_eq!(
        ev["reason_admin"]["en"],
        "patient withdrew consent by phone"
    );
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() == 32));

    // The gateway notice on Kafka: pseudonymous.
    let notices = consume_all(&rev_topic, 1, Duration::from_secs(20))?;
    assert_eq!(notices.len(), 1);
    let notice: Value = serde_json::from_slice(&notices[0].0)?;
    assert_eq!(notice["consentId"], consent_id.as_str());
    assert!(!String::from_utf8_lossy(&notices[0].0).contains(&user_id));

    // No raw user id in any stored row nor in the log.
    let stored = stored_text(&consent_id).await?;
    assert!(!stored.is_empty());
    assert!(!stored.contains(&user_id), "raw subject stored");
    assert!(!svc.log_text().contains(&user_id), "raw subject logged");

    // Restart with a new consumer group: the whole topic is read again, nothing is pushed twice.
    let rev_ids = revocation_ids(&v);
    assert_eq!(rev_ids.len(), 1);
    let attempts_before = attempts_of(&svc, &rev_ids[0]).await?.len();
    assert_eq!(svc.stop()?, 0, "SIGTERM exit code");
    let svc2 = Service::spawn(&setup, &unique("cg2"), &[])?;
    svc2.wait_ready().await?;
    // Let it consume the topics from the beginning.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let v2 = svc2
        .get(&format!("/v1/consents?tenant={realm}&patient={user_id}"))
        .await?;
    assert_eq!(v2["consents"][0]["current"]["status"], "revoked");
    assert_eq!(revocation_ids(&v2), rev_ids);
    assert_eq!(
        attempts_of(&svc2, &rev_ids[0]).await?.len(),
        attempts_before
    );
    assert_eq!(receiver.received().len(), 1, "a SET was pushed twice");
    assert_eq!(consume_all(&rev_topic, 2, Duration::from_secs(5))?.len(), 1);
    kc.delete_realm(&realm).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keycloak_down_then_back_is_delivered_after_retries() -> Result<()> {
    migrate()?;
    let kc = Kc::new();
    let realm = unique("kcdown").replace('-', "");
    let user_id = kc.setup(&realm, "patient-two").await?;
    let tokens = kc.login_with_consent(&realm, "patient-two").await?;
    let (consent_topic, as_topic, rev_topic) = topics("consent-down").await?;
    // Custos reaches Keycloak's admin API only through a proxy that starts down (tokens
    // are checked against the realm's JWKS directly).
    let mut proxy = Proxy::new(&kc_url());
    let setup = Setup {
        realm: realm.clone(),
        token: kc.privacy_tokens(&realm).await?.officer,
        consent_topic,
        as_topic: as_topic.clone(),
        revocations_topic: rev_topic,
        keycloak_url: proxy.url(),
        admin_password: kc_admin_password(),
        receivers: json!([]),
    };
    let svc = Service::spawn(
        &setup,
        &unique("cg"),
        &[("CUSTOS_REVOCATION_MAX_ATTEMPTS", "40")],
    )?;
    svc.wait_ready().await?;
    produce(
        &producer()?,
        &as_topic,
        None,
        &[Msg::json(&grant_consent_event(&realm, &user_id))],
    )
    .await?;
    let consent_id = custos_schemas::keycloak::keycloak_consent_id(&realm, &user_id, CLIENT);
    svc.wait_consents(&realm, &user_id, "the consent", |v| {
        v["consents"][0]["current"]["status"] == "active"
    })
    .await?;
    let (status, body) = svc
        .post(
            &format!("/v1/consents/{consent_id}/revoke"),
            json!({"tenant": realm, "reason": "app decommissioned"}),
        )
        .await?;
    assert_eq!(status, 202, "{body}");
    // Wait for failed attempts while the AS is unreachable.
    let start = Instant::now();
    let rev_id = loop {
        let v = svc
            .get(&format!("/v1/consents?tenant={realm}&patient={user_id}"))
            .await
            .unwrap_or_default();
        if let Some(id) = revocation_ids(&v).first() {
            let a = attempts_of(&svc, id).await.unwrap_or_default();
            let kc_retries = a
                .iter()
                .filter(|x| x["target"] == "keycloak" && x["outcome"] == "retry")
                .count();
            if kc_retries >= 3 {
                assert!(a.iter().any(|x| x["error_code"] == "connect"), "{a:?}");
                break id.clone();
            }
        }
        ensure!(
            start.elapsed() < Duration::from_secs(90),
            "no retries recorded"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    ensure!(
        kc.active(&realm, &tokens.refresh).await?,
        "revoked while the AS was down?"
    );
    proxy.up().await?;
    let v = svc
        .wait_consents(&realm, &user_id, "delivery after the outage", |v| {
            target_states(v).get("keycloak").map(String::as_str) == Some("delivered")
        })
        .await?;
    let a = attempts_of(&svc, &rev_id).await?;
    let kc_attempts: Vec<&Value> = a.iter().filter(|x| x["target"] == "keycloak").collect();
    assert!(kc_attempts.len() >= 4, "{kc_attempts:?}");
    assert_eq!(
        kc_attempts.last().map(|x| &x["outcome"]),
        Some(&json!("delivered"))
    );
    let row = v["consents"][0]["revocations"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["target"] == "keycloak"))
        .cloned()
        .context("row")?;
    assert_eq!(row["attempts"].as_u64(), Some(kc_attempts.len() as u64));
    // Asserted through Keycloak.
    assert!(
        !kc.active(&realm, &tokens.refresh).await?,
        "offline token still active"
    );
    assert!(kc.consents(&realm, &user_id).await?.is_empty());
    kc.delete_realm(&realm).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_are_recorded_failures_and_expiry_deprovisioning_and_fhir_consents_revoke(
) -> Result<()> {
    migrate()?;
    // A realm for the privacy API's tokens only.
    let kc = Kc::new();
    let realm = unique("kcfail").replace('-', "");
    kc.create_realm(&realm).await?;
    let (consent_topic, as_topic, rev_topic) = topics("consent-fail").await?;
    let (receiver, endpoint) = Receiver::start(true).await?;
    let setup = Setup {
        realm: realm.clone(),
        token: kc.privacy_tokens(&realm).await?.officer,
        consent_topic: consent_topic.clone(),
        as_topic: as_topic.clone(),
        revocations_topic: rev_topic,
        keycloak_url: kc_url(),
        // Keycloak answers the admin token request with 401.
        admin_password: "not-the-admin-password".into(),
        receivers: json!([{"name": "strict", "endpoint": endpoint}]),
    };
    let svc = Service::spawn(&setup, &unique("cg"), &[])?;
    svc.wait_ready().await?;
    let tenant = "acme";
    let now = chrono_now_ms();
    let iso = format_rfc3339;
    let ce = |id: &str, ty: &str, data: Value| {
        json!({"specversion": "1.0", "id": id, "source": "//e2e", "type": ty,
               "time": iso(now), "tenant": tenant, "data": data})
    };
    let p1 = unique("PAT-A");
    let p2 = unique("PAT-B");
    let p3 = unique("PAT-C");
    let fhir = json!({
        "resourceType": "Consent", "id": unique("fc"), "status": "active",
        "meta": {"versionId": "1", "lastUpdated": iso(now), "tag": [{"system": "urn:custos:tenant", "code": tenant}]},
        "patient": {"reference": format!("Patient/{p3}")},
        "extension": [
            {"url": "urn:custos:fhir:extension:oauth-scope", "valueString": "patient/*.rs"},
            {"url": "urn:custos:fhir:extension:as-subject", "valueString": format!("sub-{p3}")},
            {"url": "urn:custos:fhir:extension:as-issuer", "valueUri": "keycloak:acme"}
        ],
        "provision": {"type": "permit", "actor": [{"reference": {"identifier": {"system": "urn:ietf:params:oauth:client-id", "value": "fhir-app"}}}]}
    });
    // One partition: a consent's events are ordered (producers key them by consent id).
    produce(
        &producer()?,
        &consent_topic,
        Some(0),
        &[
            Msg::json(&ce("g1", "custos.consent.granted", json!({"consentId": format!("c-{p1}"), "patient": p1,
                "client_id": "app1", "iss": "keycloak:acme", "sub": format!("sub-{p1}"), "scope": "user/*.read"}))),
            Msg::json(&ce("g2", "custos.consent.granted", json!({"consentId": format!("c-{p2}"), "patient": p2,
                "client_id": "app2", "iss": "keycloak:acme", "sub": format!("sub-{p2}"),
                "periodEnd": iso(now + 2_000)}))),
            Msg::json(&fhir),
            Msg::json(&ce("r1", "custos.consent.revoked", json!({"consentId": format!("c-{p1}"), "patient": p1,
                "client_id": "app1", "reason": "patient request"}))),
        ],
    )
    .await?;
    // The deprovisioning of the FHIR consent's user, on the AS topic (once it is granted).
    svc.wait_consents(tenant, &p3, "the FHIR consent", |v| {
        v["consents"][0]["current"]["status"] == "active"
    })
    .await?;
    produce(
        &producer()?,
        &as_topic,
        None,
        &[Msg::json(&ce(
            "d1",
            "custos.user.deprovisioned",
            json!({"iss": "keycloak:acme", "sub": format!("sub-{p3}")}),
        ))],
    )
    .await?;

    for (patient, cause) in [(&p1, "revoke"), (&p2, "expiry"), (&p3, "deprovision")] {
        let v = svc
            .wait_consents(tenant, patient, cause, |v| all_final(v, 3))
            .await?;
        let st = target_states(&v);
        assert_eq!(
            st.get("keycloak").map(String::as_str),
            Some("failed"),
            "{cause}: {v:#}"
        );
        assert_eq!(
            st.get("ssf:strict").map(String::as_str),
            Some("failed"),
            "{cause}: {v:#}"
        );
        assert_eq!(
            st.get("kafka").map(String::as_str),
            Some("delivered"),
            "{cause}: {v:#}"
        );
        let revs = v["consents"][0]["revocations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(revs.iter().all(|r| r["cause"] == cause), "{revs:?}");
        let kc_row = revs
            .iter()
            .find(|r| r["target"] == "keycloak")
            .context("kc row")?;
        assert!(
            kc_row["detail"]
                .as_str()
                .is_some_and(|d| d.contains("HTTP 401")),
            "{kc_row}"
        );
        let ssf_row = revs
            .iter()
            .find(|r| r["target"] == "ssf:strict")
            .context("ssf row")?;
        assert!(
            ssf_row["detail"]
                .as_str()
                .is_some_and(|d| d.contains("invalid_audience")),
            "{ssf_row}"
        );
        // One attempt each: 4xx is final, not retried.
        let id = kc_row["revocation_id"].as_str().context("id")?;
        let a = attempts_of(&svc, id).await?;
        let kc_a: Vec<&Value> = a.iter().filter(|x| x["target"] == "keycloak").collect();
        assert_eq!(kc_a.len(), 1, "{a:?}");
        assert_eq!(kc_a[0]["http_status"], 401);
        let ssf_a: Vec<&Value> = a.iter().filter(|x| x["target"] == "ssf:strict").collect();
        assert_eq!(ssf_a.len(), 1);
        assert_eq!(ssf_a[0]["http_status"], 400);
        assert_eq!(ssf_a[0]["error_code"], "ssf_invalid_audience");
        assert!(ssf_a[0]["receipt"]
            .as_str()
            .is_some_and(|r| r.contains("\"err\"")));
    }
    // FHIR consent state kept its SMART scopes.
    let v = svc
        .get(&format!(
            "/v1/consents?tenant={tenant}&patient=Patient/{p3}"
        ))
        .await?;
    assert_eq!(v["consents"][0]["current"]["client_id"], "fhir-app");
    assert_eq!(v["consents"][0]["current"]["scopes"][0], "patient/*.rs");
    // The failure report lists them.
    let report = svc.get("/v1/revocations?state=failed&limit=10000").await?;
    let failed = report["revocations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(failed.len() >= 6, "{failed:?}");
    assert_eq!(receiver.received().len(), 3);
    // Bad bearer tokens are refused.
    let (s, ct, _) = svc
        .call(reqwest::Method::GET, "/v1/revocations", Some("wrong"), None)
        .await?;
    assert_eq!((s, ct.as_str()), (401, "application/problem+json"));
    kc.delete_realm(&realm).await;
    Ok(())
}

/// RFC 3339 with milliseconds, UTC, from epoch milliseconds.
fn format_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Revocation propagation benchmark (revoke request → Keycloak acknowledgement), with ingest
/// and the consent service consuming simulated traffic at the same time. Ignored by default:
/// `cargo test -p custos-tests --test consent_keycloak -- --ignored --nocapture bench`.
/// `CUSTOS_BENCH_REVOCATIONS` (default 100), `CUSTOS_BENCH_SIM_RATE` (default 2000 msg/s),
/// `CUSTOS_BENCH_SPACING_MS` (default 250: one revoke request every 250 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run explicitly"]
async fn bench_revocation_propagation() -> Result<()> {
    let n: usize = std::env::var("CUSTOS_BENCH_REVOCATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let rate: u64 = std::env::var("CUSTOS_BENCH_SIM_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let spacing: u64 = std::env::var("CUSTOS_BENCH_SPACING_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    migrate()?;
    let kc = Kc::new();
    let realm = unique("kcbench").replace('-', "");
    let user_ids = {
        // One user per revocation, each with a real consent (authorization-code flow).
        let first = kc.setup(&realm, "bench-0").await?;
        let mut ids = vec![first];
        for i in 1..n {
            ids.push(kc.add_patient(&realm, &format!("bench-{i}")).await?);
        }
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let realm = realm.clone();
            set.spawn(async move {
                Kc::new()
                    .login_with_consent(&realm, &format!("bench-{i}"))
                    .await
            });
            if set.len() >= 6 {
                if let Some(r) = set.join_next().await {
                    r??;
                }
            }
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        ids
    };
    let topics = Topics::create("cbench", 4).await?;
    let rev_topic = format!("{}.revocations", topics.group);
    create_topics(&[(&rev_topic, 2)]).await?;
    let ingest = Ingest::spawn(&topics, &[])?;
    ingest.wait_ready(Duration::from_secs(60)).await?;
    let setup = Setup {
        realm: realm.clone(),
        token: kc.privacy_tokens(&realm).await?.officer,
        consent_topic: topics.consent.clone(),
        as_topic: topics.as_events.clone(),
        revocations_topic: rev_topic,
        keycloak_url: kc_url(),
        admin_password: kc_admin_password(),
        receivers: json!([]),
    };
    let svc = Service::spawn(&setup, &unique("cgbench"), &[("CUSTOS_LOG", "info")])?;
    svc.wait_ready().await?;
    // Load: the simulator feeds both services' input topics during the whole run.
    let mut sim = Command::new(workspace_binary("custos-sim", "custos-sim"))
        .args([
            "--events",
            "100000000",
            "--duration",
            "600",
            "--rate",
            &rate.to_string(),
        ])
        .args([
            "--as-topic",
            &topics.as_events,
            "--gateway-topic",
            &topics.gateway,
        ])
        .args(["--consent-topic", &topics.consent, "--tenant", "benchload"])
        .env("CUSTOS_KAFKA_BROKERS", brokers())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let p = producer()?;
    let grants: Vec<Msg> = user_ids
        .iter()
        .map(|u| Msg::json(&grant_consent_event(&realm, u)))
        .collect();
    produce(&p, &topics.as_events, None, &grants).await?;
    for u in &user_ids {
        svc.wait_consents(&realm, u, "bench consent", |v| {
            v["consents"][0]["current"]["status"] == "active"
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t0 = Instant::now();
    for u in &user_ids {
        let (s, b) = svc
            .post(
                "/v1/consents/revoke",
                json!({"tenant": realm, "patient": u, "client_id": CLIENT, "reason": "benchmark"}),
            )
            .await?;
        ensure!(s == 202, "{b}");
        tokio::time::sleep(Duration::from_millis(spacing)).await;
    }
    let mut latencies: Vec<i64> = Vec::new();
    let start = Instant::now();
    while latencies.len() < n && start.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A busy ClickHouse (the stack is shared) is asked again next second.
        let body = admin_sql(
            "SELECT latency_ms FROM custos.revocations FINAL WHERE tenant = {t:String} \
             AND target = 'keycloak' AND state = 'delivered' FORMAT TSV",
            &[("t", realm.as_str())],
        )
        .await
        .unwrap_or_default();
        latencies = body.lines().filter_map(|l| l.trim().parse().ok()).collect();
    }
    let elapsed = t0.elapsed();
    let _ = sim.kill();
    let _ = sim.wait();
    let consumed = ingest
        .metric("custos_ingest_consumed_total")
        .await
        .unwrap_or(0.0);
    ensure!(
        latencies.len() == n,
        "only {} of {n} delivered",
        latencies.len()
    );
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    println!(
        "revocation propagation (revoke request -> Keycloak ack) n={n} sim_rate={rate}/s \
         spacing={spacing}ms: p50={} ms p90={} ms p99={} ms max={} ms; \
         ingest consumed {consumed} msgs; wall {:.1}s",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        latencies[n - 1],
        elapsed.as_secs_f64()
    );
    // Every token's consent is gone at Keycloak.
    for u in user_ids.iter().take(5) {
        ensure!(kc.consents(&realm, u).await?.is_empty());
    }
    kc.delete_realm(&realm).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn privacy_api_is_audited_idempotent_and_fails_closed_without_its_audit() -> Result<()> {
    migrate()?;
    let kc = Kc::new();
    let realm = unique("kcaud").replace('-', "");
    let user_id = kc.setup(&realm, "patient-audit").await?;
    let privacy = kc.privacy_tokens(&realm).await?;
    let officer_sub = token_sub(&privacy.officer)?;
    let (consent_topic, as_topic, rev_topic) = topics("consent-audit").await?;
    // The only SSF receiver redirects to another one, which must never see a SET.
    let (second_rx, second_url) = Receiver::start(false).await?;
    let (redirect_url, redirect_hits) = redirecting_receiver(second_url).await?;
    let setup = Setup {
        realm: realm.clone(),
        token: privacy.officer.clone(),
        consent_topic: consent_topic.clone(),
        as_topic: as_topic.clone(),
        revocations_topic: rev_topic.clone(),
        keycloak_url: kc_url(),
        admin_password: kc_admin_password(),
        receivers: json!([{"name": "redir", "endpoint": redirect_url}]),
    };
    let group = unique("cgaud");
    let mut svc = Service::spawn(&setup, &group, &[])?;
    svc.wait_ready().await?;
    let producer = producer()?;
    produce(
        &producer,
        &as_topic,
        None,
        &[Msg::json(&grant_consent_event(&realm, &user_id))],
    )
    .await?;
    let v = svc
        .wait_consents(&realm, &user_id, "the consent", |v| {
            v["consents"][0]["current"]["status"] == "active"
        })
        .await?;
    let consent_id = v["consents"][0]["current"]["consent_id"]
        .as_str()
        .context("consent id")?
        .to_owned();

    // Revoke by patient with an Idempotency-Key, then retry the identical request.
    let revoke = json!({"tenant": realm, "patient": user_id, "client_id": CLIENT,
        "reason": "patient withdrew consent by phone"});
    let send = |key: &'static str| {
        svc.http
            .post(format!("{}/v1/consents/revoke", svc.url))
            .bearer_auth(&privacy.officer)
            .header("Idempotency-Key", key)
            .json(&revoke)
            .send()
    };
    let first = send("retry-key-1").await?;
    ensure!(first.status() == 202, "first: {}", first.status());
    let first: Value = first.json().await?;
    let ids = |v: &Value| -> Vec<(String, String)> {
        v["revocations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["eventId"].as_str().unwrap_or_default().to_owned(),
                    r["revocationId"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let first_ids = ids(&first);
    ensure!(
        first_ids.len() == 1 && !first_ids[0].1.is_empty(),
        "{first}"
    );
    // Immediately (the revocation may not be folded yet) and again once it is.
    for _ in 0..2 {
        let again = send("retry-key-1").await?;
        ensure!(again.status() == 200, "retry: {}", again.status());
        let again: Value = again.json().await?;
        assert_eq!(ids(&again), first_ids, "{again}");
        assert_eq!(again["replayed"], true);
        svc.wait_consents(&realm, &user_id, "the revocation", |v| {
            v["consents"][0]["current"]["status"] == "revoked"
        })
        .await?;
    }
    let v = svc
        .wait_consents(&realm, &user_id, "the pushes", |v| all_final(v, 3))
        .await?;
    assert_eq!(revocation_ids(&v), vec![first_ids[0].1.clone()], "{v:#}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(revoked_rows(&consent_id).await?, 1, "one revocation only");

    // The redirect is a failed delivery with its status; the redirect target got nothing.
    let states = target_states(&v);
    assert_eq!(states.get("ssf:redir").map(String::as_str), Some("failed"));
    assert_eq!(
        states.get("keycloak").map(String::as_str),
        Some("delivered")
    );
    let attempts = attempts_of(&svc, &first_ids[0].1).await?;
    let redir: Vec<&Value> = attempts
        .iter()
        .filter(|a| a["target"] == "ssf:redir")
        .collect();
    ensure!(
        redir.len() == 1 && redir[0]["http_status"] == 307,
        "{attempts:?}"
    );
    assert_eq!(redirect_hits.load(Ordering::SeqCst), 1);
    assert!(second_rx.received().is_empty(), "the redirect was followed");

    // Every call left its record: caller, call, pseudonymized patient, never the raw id.
    let pseudonym = custos_schemas::KeyRing::parse(TEST_KEYS, None)?.pseudonymize(
        &realm,
        custos_schemas::PseudonymKind::Patient,
        &user_id,
    );
    let start = Instant::now();
    let records = loop {
        let r = privacy_audit_of(&officer_sub).await?;
        let settled = r.iter().all(|x| x["status"] != "answering");
        let calls = |name: &str| r.iter().filter(|x| x["report"] == name).count();
        if settled
            && calls("privacy.revoke-patient") == 3
            && calls("privacy.revocation-attempts") == 1
        {
            break r;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(20),
            "audit records incomplete: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for r in &records {
        let text = r.to_string();
        assert!(!text.contains(&user_id), "raw patient id recorded: {text}");
        assert_eq!(r["caller_client"], PRIVACY_CLIENTS[0].0, "{text}");
        // Reads polled while ClickHouse was busy (the stack is shared) may have failed.
        assert!(
            r["status"] == "answered" || r["status"] == "failed",
            "{text}"
        );
        let params: Value = serde_json::from_str(r["parameters"].as_str().unwrap_or("{}"))?;
        assert_eq!(
            params["actor"],
            format!("service-account-{}", PRIVACY_CLIENTS[0].0),
            "{text}"
        );
        if r["report"] == "privacy.revoke-patient" || r["report"] == "privacy.consents" {
            assert_eq!(params["patient"], pseudonym, "{text}");
            assert_eq!(r["tenant"], realm.as_str());
        }
        if r["report"] == "privacy.revoke-patient" {
            assert_eq!(r["status"], "answered", "{text}");
            // UInt64 comes quoted in JSONEachRow.
            assert_eq!(
                r["rows_returned"].to_string().trim_matches('"'),
                "1",
                "{text}"
            );
        }
    }
    ensure!(
        records.iter().any(|r| r["report"] == "privacy.consents"),
        "no record of the reads"
    );
    // A refusal is recorded too.
    let (s, _, _) = svc
        .call(
            reqwest::Method::GET,
            &format!("/v1/consents?tenant={realm}&patient={user_id}"),
            Some(&privacy.no_role),
            None,
        )
        .await?;
    assert_eq!(s, 403);
    let no_role_sub = token_sub(&privacy.no_role)?;
    let start = Instant::now();
    loop {
        let r = privacy_audit_of(&no_role_sub).await?;
        if r.iter().any(|x| x["status"] == "forbidden") {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(20),
            "refusal not recorded: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Re-grant, then run the service with an audit writer ClickHouse refuses: every call is
    // a 503 and nothing is revoked.
    let mut regrant = grant_consent_event(&realm, &user_id);
    regrant["id"] = json!(format!("kc-ev-{}", unique("regrant")));
    produce(&producer, &as_topic, None, &[Msg::json(&regrant)]).await?;
    svc.wait_consents(&realm, &user_id, "the re-grant", |v| {
        v["consents"][0]["current"]["status"] == "active"
    })
    .await?;
    ensure!(svc.stop()? == 0, "stop");
    let svc = Service::spawn(
        &setup,
        &group,
        &[("CUSTOS_CONSENT_AUDIT_PASSWORD", "not-the-password")],
    )?;
    svc.wait_ready().await?;
    let revoke2 = json!({"tenant": realm, "patient": user_id, "client_id": CLIENT,
        "reason": "second withdrawal"});
    for (m, path, body) in [
        (
            reqwest::Method::POST,
            "/v1/consents/revoke".to_owned(),
            Some(&revoke2),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/consents/{consent_id}/revoke"),
            Some(&revoke2),
        ),
        (
            reqwest::Method::GET,
            format!("/v1/consents?tenant={realm}&patient={user_id}"),
            None,
        ),
        (reqwest::Method::GET, "/v1/revocations".to_owned(), None),
    ] {
        let (s, ct, v) = svc.call(m, &path, Some(&privacy.officer), body).await?;
        assert_eq!(s, 503, "{path}: {v}");
        assert_eq!(ct, "application/problem+json");
        assert_eq!(v["type"], "https://custos.dev/problems/audit-unavailable");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        revoked_rows(&consent_id).await?,
        1,
        "a revocation happened without its audit record"
    );
    kc.delete_realm(&realm).await;
    Ok(())
}

#[tokio::test]
async fn a_plain_http_push_url_off_loopback_is_refused_at_start() -> Result<()> {
    let setup = Setup {
        realm: "unused".into(),
        token: String::new(),
        consent_topic: "unused.consent".into(),
        as_topic: String::new(),
        revocations_topic: String::new(),
        keycloak_url: "http://keycloak.example:8080".into(),
        admin_password: "pw".into(),
        receivers: json!([]),
    };
    let mut svc = Service::spawn(&setup, &unique("cgplain"), &[])?;
    let mut child = svc.take_child().context("child")?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            bail!("the service started with a plain-http Keycloak URL");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let log = svc.log_text();
    assert!(
        log.contains("CUSTOS_KEYCLOAK_URL") && log.contains("https"),
        "{log}"
    );
    Ok(())
}
