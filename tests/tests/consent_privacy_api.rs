//! End-to-end: the consent service's privacy API with real Keycloak access tokens: every
//! call is audited (and refused when its audit cannot be written), revocations are
//! idempotent, receivers that redirect are not followed, and a plain-http push URL off
//! loopback stops the service at start. The set-up is described in `support::consent`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use custos_tests::*;
use serde_json::{json, Value};

mod support;

use support::consent::*;
use support::keycloak::*;
use support::ssf::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn privacy_api_is_audited_idempotent_and_fails_closed_without_its_audit() -> Result<()> {
    migrate()?;
    let kc = Kc::new();
    let realm = unique("kcaud").replace('-', "");
    let user_id = kc.setup(&realm, "patient-audit").await?;
    let privacy = kc.privacy_tokens(&realm).await?;
    let officer_sub = token_sub(&privacy.officer)?;
    // The only SSF receiver redirects to another one, which must never see a SET.
    let (second_rx, second_url) = Receiver::start(false).await?;
    let (redirect_url, redirect_hits) = redirecting_receiver(second_url).await?;
    let receivers = json!([{"name": "redir", "endpoint": redirect_url}]);
    let setup = Setup::create("consent-audit", &realm, &privacy.officer, receivers).await?;
    let group = unique("cgaud");
    let mut svc = Service::spawn(&setup, &group, &[])?;
    svc.wait_ready().await?;
    let (_, consent_id) = grant_and_wait(&svc, &setup, &user_id).await?;

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
    produce(&producer()?, &setup.as_topic, None, &[Msg::json(&regrant)]).await?;
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
