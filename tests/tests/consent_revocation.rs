//! End-to-end: a revocation through the consent service reaches the real Keycloak and the
//! SET receivers (signed SETs, CAEP session-revoked), a replay pushes nothing twice, and a
//! Keycloak that is down when the revocation arrives gets it after retries. The set-up
//! (realm, clients, real consents, the service process) is described in `support::consent`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use custos_tests::*;
use serde_json::{json, Value};

mod support;

use support::consent::*;
use support::keycloak::*;
use support::proxy::Proxy;
use support::ssf::*;

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
    let (receiver, endpoint) = Receiver::start(false).await?;
    let receivers =
        json!([{"name": "gw", "endpoint": endpoint, "audience": "https://gateway.example"}]);
    let setup = Setup::create("consent-kc", &realm, &privacy.officer, receivers).await?;
    let rev_topic = setup.revocations_topic.clone();
    let mut svc = Service::spawn(&setup, &unique("cg"), &[])?;
    svc.wait_ready().await?;

    let (v, consent_id) = grant_and_wait(&svc, &setup, &user_id).await?;
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

    // Both service processes wrote the history, the revocation states and the privacy API's
    // audit through their ledger chains: every row of the tenant verifies, the replay's too.
    let scope = custos_integrity::ledger::Scope {
        tenant: Some(realm.clone()),
        ..custos_integrity::ledger::Scope::all(30)
    };
    let ledger = custos_integrity::ledger::verify(&account("reader"), &scope).await?;
    assert!(ledger.ok, "{ledger:#?}");
    // The tables this test writes (the alert tables have no row of its tenant).
    for t in ledger.tables.iter().filter(|t| {
        ["report_queries", "consent_history", "revocations"].contains(&t.table.as_str())
    }) {
        assert!(
            t.rows_checked > 0,
            "no {} row of the tenant checked",
            t.table
        );
    }
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
    // Custos reaches Keycloak's admin API only through a proxy that starts down (tokens
    // are checked against the realm's JWKS directly).
    let mut proxy = Proxy::new(&kc_url());
    let officer = kc.privacy_tokens(&realm).await?.officer;
    let setup = Setup {
        keycloak_url: proxy.url(),
        ..Setup::create("consent-down", &realm, &officer, json!([])).await?
    };
    let svc = Service::spawn(
        &setup,
        &unique("cg"),
        &[("CUSTOS_REVOCATION_MAX_ATTEMPTS", "40")],
    )?;
    svc.wait_ready().await?;
    let consent_id = custos_schemas::keycloak::keycloak_consent_id(&realm, &user_id, CLIENT);
    grant_and_wait(&svc, &setup, &user_id).await?;
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
