//! The demo FHIR server through the real pipeline: a demo patient's Keycloak token reads at
//! the FHIR server, whose BALP AuditEvents go to the real audit feed (in-process, served on a
//! socket, trusting the same realm, client-credentials token of the realm's
//! `custos-audit-source`), through Kafka and the real ingest into `custos.audit_events`: the
//! rows carry the token's `jti` and client, a revoked token's refusal is stored as `deny`, and
//! the patient-access report (query API, a compliance officer's token of the same realm) shows
//! the read with its `jti`.

mod support;

use std::time::Duration;

use anyhow::{Context, Result};
use custos_tests::*;
use serde_json::Value;

use support::feed::feed_app;
use support::fhir_server::{claims, DemoRealm, FhirProcess, FEED_SOURCE_SECRET, PATIENT_USER};
use support::{app_for, ensure_schema, get};

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Stored {
    token_jti: String,
    client_id: String,
    decision: String,
    http_status: u16,
    interaction: String,
    resource_type: String,
    issuer: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_a_revoked_token_reach_the_audit_table_with_the_tokens_jti() -> Result<()> {
    ensure_schema()?;
    let realm = DemoRealm::create("fhirpipe").await?;
    let result = async {
        let issuer = realm.issuer();
        let topics = Topics::create("fhirpipe", 1).await?;
        let feed = feed_app(&issuer, "custos-feed", &topics.gateway, &[]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let feed_url = format!("http://{}/fhir", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, feed).await;
        });
        let token_url = realm.token_url();
        let fhir = FhirProcess::start(
            &realm,
            (&feed_url, &token_url, "custos-audit-source", FEED_SOURCE_SECRET),
            &[],
        )
        .await?;
        let (user, patient) = PATIENT_USER;
        let scopes = "openid fhirUser launch/patient patient/Patient.rs patient/Observation.rs";
        let reader = realm.login(user, scopes).await?.access;
        let jti = claims(&reader)["jti"].as_str().context("jti")?.to_owned();
        let (s, body, _) = fhir.get(&format!("Patient/{patient}"), Some(&reader)).await?;
        anyhow::ensure!(s == 200, "read: {s} {body}");

        let revoked = realm.login(user, scopes).await?.access;
        let revoked_jti = claims(&revoked)["jti"].as_str().context("jti")?.to_owned();
        realm.revoke(&revoked, "access_token").await?;
        let (s, body, _) = fhir.get("Observation/demo-pat-2001-hr", Some(&revoked)).await?;
        assert_eq!(s, 401, "a token revoked before its first use: {body}");

        let mut ingest = Ingest::spawn(&topics, &[])?;
        ingest.wait_ready(Duration::from_secs(60)).await?;
        wait_stored(&topics.input_list(), 2, Duration::from_secs(90)).await?;
        let rows = admin()
            .query("SELECT ?fields FROM custos.audit_events FINAL WHERE kafka_topic = ? ORDER BY decision")
            .bind(&topics.gateway)
            .fetch_all::<Stored>()
            .await?;
        assert_eq!(rows.len(), 2, "{rows:#?}");
        let (deny, permit) = (&rows[0], &rows[1]);
        assert_eq!(
            (permit.decision.as_str(), permit.http_status, permit.interaction.as_str(), permit.resource_type.as_str()),
            ("permit", 200, "read", "Patient"),
            "{permit:?}"
        );
        assert_eq!(permit.token_jti, jti);
        assert_eq!(permit.client_id, "smart-demo-app");
        assert_eq!(permit.issuer, issuer);
        assert_eq!(
            (deny.decision.as_str(), deny.http_status, deny.resource_type.as_str()),
            ("deny", 401, "Observation"),
            "{deny:?}"
        );
        assert_eq!(deny.token_jti, revoked_jti, "the refusal names the revoked token");
        assert_eq!(ingest.metric("custos_ingest_rejected_total").await?, 0.0);
        ingest.terminate(Duration::from_secs(60))?;

        // The compliance officer's patient-access report shows the read with its jti.
        let officer = realm.staff_token("carol.compliance").await?;
        let query = app_for(&issuer, &[]);
        let r = get(&query, &format!("/v1/reports/patient-access?patient={patient}&limit=1000"), Some(&officer)).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.text());
        let found = r.json()["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .any(|row: &Value| row["token_jti"] == jti.as_str());
        assert!(found, "no patient-access row with the read's jti: {}", r.text());
        Ok(())
    }
    .await;
    realm.delete().await;
    result
}
