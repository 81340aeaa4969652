//! The demo FHIR server (`connectors/fhir-server`) against the real Keycloak of the dev stack:
//! SMART bearer tokens of the demo users (password grant at the demo app, in a fresh realm made
//! from the demo realm file), scope enforcement, and its IHE BALP AuditEvents as the audit feed
//! receives them, decoded by the ingest's own decoder (the in-test feed of
//! `support::fhir_server`): permitted reads carry the token's `jti`, client, `fhirUser` and
//! scopes; refusals (401, 403, a revoked token) are audited as `deny`.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use custos_schemas::event::Decision;
use support::fhir_server::{
    claims, DemoRealm, FhirProcess, TestFeed, CLINICIAN_USER, FEED_CLIENT, PATIENT_USER,
};

const PATIENT_SCOPES: &str =
    "openid fhirUser launch/patient patient/Patient.rs patient/Observation.rs";

/// A realm, a feed failing its first `fail_first` requests, and the server wired to both.
async fn setup(
    name: &str,
    fail_first: usize,
    env: &[(&str, &str)],
) -> Result<(DemoRealm, TestFeed, FhirProcess)> {
    let realm = DemoRealm::create(name).await?;
    let (feed, feed_url, token_url) = TestFeed::start(fail_first).await?;
    let server = FhirProcess::start(
        &realm,
        (&feed_url, &token_url, FEED_CLIENT.0, FEED_CLIENT.1),
        env,
    )
    .await;
    match server {
        Ok(server) => Ok((realm, feed, server)),
        Err(e) => {
            realm.delete().await;
            Err(e)
        }
    }
}

fn is_outcome(body: &serde_json::Value) -> bool {
    body["resourceType"] == "OperationOutcome" && body["issue"][0]["severity"] == "error"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_reads_own_record_is_refused_outside_scopes_and_every_access_is_audited(
) -> Result<()> {
    let (realm, feed, fhir) = setup("fhirpat", 0, &[]).await?;
    let (user, patient) = PATIENT_USER;
    let token = realm.login(user, PATIENT_SCOPES).await?.access;
    let c = claims(&token);
    assert_eq!(
        c["patient"], patient,
        "the patient claim of the demo patient"
    );
    let jti = c["jti"].as_str().unwrap_or_default().to_owned();
    let sub = c["sub"].as_str().unwrap_or_default().to_owned();
    ensure!(
        !jti.is_empty() && !sub.is_empty(),
        "token without jti or sub: {c}"
    );

    // In scope: the own Patient and Observations.
    let (s, body, _) = fhir
        .get(&format!("Patient/{patient}"), Some(&token))
        .await?;
    assert_eq!((s, body["id"].as_str()), (200, Some(patient)), "{body}");
    let (s, body, _) = fhir
        .get(&format!("Observation?patient={patient}"), Some(&token))
        .await?;
    assert_eq!(s, 200, "{body}");
    let subjects: BTreeSet<String> = body["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            e["resource"]["subject"]["reference"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        subjects,
        BTreeSet::from([format!("Patient/{patient}")]),
        "{body}"
    );

    // Outside the scopes: another patient, a type without a scope.
    let (s, body, _) = fhir.get("Patient/demo-pat-2002", Some(&token)).await?;
    assert!(s == 403 && is_outcome(&body), "other patient: {s} {body}");
    let (s, body, _) = fhir
        .get("Observation?patient=demo-pat-2002", Some(&token))
        .await?;
    assert!(
        s == 403 && is_outcome(&body),
        "other patient's search: {s} {body}"
    );
    let (s, body, _) = fhir
        .get(&format!("Condition?patient={patient}"), Some(&token))
        .await?;
    assert!(
        s == 403 && is_outcome(&body),
        "Condition without a scope: {s} {body}"
    );

    // No token and a forged token: 401 with a Bearer challenge.
    let (s, body, challenge) = fhir.get(&format!("Patient/{patient}"), None).await?;
    assert!(
        s == 401 && is_outcome(&body) && challenge.starts_with("Bearer"),
        "no token: {s} {body} {challenge}"
    );
    let forged = format!(
        "{}.{}",
        token.rsplit_once('.').map(|x| x.0).unwrap_or_default(),
        "AAAA"
    );
    let (s, body, challenge) = fhir
        .get("Observation/demo-pat-2001-hr", Some(&forged))
        .await?;
    assert!(
        s == 401 && is_outcome(&body) && challenge.contains("invalid_token"),
        "forged: {s} {body}"
    );
    // The capability statement is public.
    assert_eq!(fhir.get("metadata", None).await?.0, 200);

    // The audit, as the ingest decodes it.
    let read = feed
        .wait_for(20, "the permitted read", |a| {
            a.interaction == "read"
                && a.decision == Decision::Permit
                && a.resource_type == "Patient"
        })
        .await?;
    assert_eq!(read.jti.as_deref(), Some(jti.as_str()));
    assert_eq!(read.sub, sub);
    assert_eq!(read.iss, realm.issuer());
    assert_eq!(read.client_id, "smart-demo-app");
    assert_eq!(
        read.fhir_user.as_deref(),
        Some(format!("Patient/{patient}").as_str())
    );
    assert_eq!(read.resource_id.as_deref(), Some(patient));
    assert!(
        read.patient
            .as_deref()
            .is_some_and(|p| p.ends_with(patient)),
        "{read:?}"
    );
    assert!(
        read.scope
            .as_deref()
            .is_some_and(|s| s.contains("patient/Observation.rs")),
        "{read:?}"
    );
    assert_eq!(read.http_status, 200);
    let search = feed
        .wait_for(20, "the permitted search", |a| {
            a.interaction == "search-type"
                && a.decision == Decision::Permit
                && a.resource_type == "Observation"
        })
        .await?;
    assert_eq!(search.jti.as_deref(), Some(jti.as_str()));
    let denied = feed
        .wait_for(20, "the refused read of another patient", |a| {
            a.decision == Decision::Deny
                && a.http_status == 403
                && a.resource_id.as_deref() == Some("demo-pat-2002")
        })
        .await?;
    assert_eq!(denied.jti.as_deref(), Some(jti.as_str()));
    assert_eq!(denied.sub, sub);
    feed.wait_for(20, "the refused Condition search", |a| {
        a.decision == Decision::Deny && a.http_status == 403 && a.resource_type == "Condition"
    })
    .await?;
    let anonymous = feed
        .wait_for(20, "the request without a token", |a| {
            a.decision == Decision::Deny && a.http_status == 401 && a.resource_type == "Patient"
        })
        .await?;
    assert_eq!(anonymous.jti, None);
    feed.wait_for(20, "the forged token", |a| {
        a.decision == Decision::Deny && a.http_status == 401 && a.resource_type == "Observation"
    })
    .await?;
    let bad: Vec<_> = feed
        .received()
        .into_iter()
        .filter(|r| r.access.is_err())
        .collect();
    assert!(bad.is_empty(), "AuditEvents the decoder refuses: {bad:#?}");
    realm.delete().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clinician_user_scopes_and_smart_v1_patient_scopes() -> Result<()> {
    let (realm, feed, fhir) = setup("fhirdoc", 0, &[]).await?;
    let doctor = realm
        .login(CLINICIAN_USER, "openid fhirUser user/*.rs")
        .await?
        .access;
    assert_eq!(claims(&doctor)["fhirUser"], "Practitioner/demo-prac-1");
    for path in [
        "Patient/demo-pat-2003",
        "Observation?patient=demo-pat-2002",
        "Condition/demo-pat-2001-cond",
        "MedicationRequest?subject=Patient/demo-pat-2003",
        "AllergyIntolerance?patient=demo-pat-2001",
        "Encounter/demo-enc-2002",
        "Consent?patient=demo-pat-2002",
    ] {
        let (s, body, _) = fhir.get(path, Some(&doctor)).await?;
        assert_eq!(s, 200, "{path}: {body}");
    }
    // A read-only scope: no writes.
    let resp = support::keycloak::http()
        .delete(format!("{}/Patient/demo-pat-2003", fhir.base))
        .bearer_auth(&doctor)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 403);
    let access = feed
        .wait_for(20, "the clinician's read", |a| {
            a.fhir_user.as_deref() == Some("Practitioner/demo-prac-1")
                && a.resource_type == "Patient"
        })
        .await?;
    assert_eq!(access.decision, Decision::Permit);

    // SMART v1: patient/*.read reaches every type of the own record, nothing of others'.
    let v1 = realm
        .login(PATIENT_USER.0, "openid launch/patient patient/*.read")
        .await?
        .access;
    let (s, body, _) = fhir
        .get("Condition?patient=demo-pat-2001", Some(&v1))
        .await?;
    assert!(s == 200 && body["total"] == 1, "{body}");
    let (s, _, _) = fhir
        .get("MedicationRequest/demo-pat-2002-med", Some(&v1))
        .await?;
    assert_eq!(s, 403);
    // user/ scopes need the realm role clinician: a patient asking for one does not get it.
    let greedy = realm
        .login(PATIENT_USER.0, "openid launch/patient user/*.rs")
        .await?
        .access;
    let scope = claims(&greedy)["scope"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!scope.contains("user/"), "a patient got {scope}");
    let (s, _, _) = fhir.get("Patient/demo-pat-2003", Some(&greedy)).await?;
    assert_eq!(s, 403);
    // Without the launch patient a patient scope grants nothing.
    let no_context = realm
        .login(PATIENT_USER.0, "openid patient/Observation.rs")
        .await?
        .access;
    let (s, _, _) = fhir
        .get("Observation/demo-pat-2001-hr", Some(&no_context))
        .await?;
    assert_eq!(s, 403);
    realm.delete().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_refused_at_once_and_the_refusal_is_audited() -> Result<()> {
    let (realm, feed, fhir) = setup("fhirrev", 0, &[]).await?;
    let tokens = realm.login(PATIENT_USER.0, PATIENT_SCOPES).await?;
    let jti = claims(&tokens.access)["jti"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (s, _, _) = fhir
        .get("Observation/demo-pat-2001-hr", Some(&tokens.access))
        .await?;
    assert_eq!(s, 200);
    realm.revoke(&tokens.access, "access_token").await?;
    // Introspection answers are reused for 2 s at most (the default); the JWT itself is
    // still unexpired and correctly signed.
    let deadline = Instant::now() + Duration::from_secs(6);
    let status = loop {
        let (s, body, challenge) = fhir
            .get("Observation/demo-pat-2001-hr", Some(&tokens.access))
            .await?;
        if s != 200 {
            assert!(
                is_outcome(&body) && challenge.contains("invalid_token"),
                "{s} {body}"
            );
            break s;
        }
        ensure!(
            Instant::now() < deadline,
            "the revoked token still reads after 6 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(status, 401);
    let refusal = feed
        .wait_for(20, "the refused revoked token", |a| {
            a.decision == Decision::Deny
                && a.http_status == 401
                && a.jti.as_deref() == Some(jti.as_str())
        })
        .await?;
    assert_eq!(refusal.resource_type, "Observation");
    assert_eq!(refusal.client_id, "smart-demo-app");
    assert!(
        refusal.fhir_user.as_deref() == Some("Patient/demo-pat-2001"),
        "{refusal:?}"
    );
    realm.delete().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_outage_neither_fails_reads_nor_loses_or_doubles_audit() -> Result<()> {
    // The feed answers 503 to its first four requests (about 7 s of backoff).
    let (realm, feed, fhir) = setup("fhirout", 4, &[("CUSTOS_FHIR_AUDIT_BATCH", "5")]).await?;
    let token = realm.login(PATIENT_USER.0, PATIENT_SCOPES).await?.access;
    let started = Instant::now();
    for i in 0..12 {
        let path = if i % 2 == 0 {
            "Patient/demo-pat-2001"
        } else {
            "Observation/demo-pat-2001-glucose"
        };
        let (s, body, _) = fhir.get(path, Some(&token)).await?;
        assert_eq!(s, 200, "{body}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "reads waited on the feed: {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while feed.received().len() < 12 {
        ensure!(
            Instant::now() < deadline,
            "only {} of 12 AuditEvents after the outage",
            feed.received().len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = feed.received();
    let ids: BTreeSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        (got.len(), ids.len()),
        (12, 12),
        "every event once: {got:#?}"
    );
    assert!(feed.requests() > 4, "the outage was seen");
    let stats = fhir.audit_stats().await?;
    assert_eq!(
        (
            stats["sent"].as_i64(),
            stats["dropped"].as_i64(),
            stats["queued"].as_i64()
        ),
        (Some(12), Some(0), Some(0)),
        "{stats}"
    );
    assert!(stats["failed_attempts"].as_i64() >= Some(4), "{stats}");
    realm.delete().await;
    Ok(())
}
