//! End-to-end through the real parts: an audit source authenticates at the dev stack's
//! Keycloak (`scripts/keycloak up`) with OAuth client credentials, its service account holding
//! the write-only realm role `audit_source`; the feed (in-process, trusting that realm) writes
//! its AuditEvents to Kafka, and the real ingest stores them in `custos.audit_events`. A
//! resend of the same AuditEvent is stored once. The same token is refused by the report API
//! and by the consent service's privacy API (403): a source can write, never read.

use std::time::Duration;

use anyhow::{Context, Result};
use axum::http::{Method, StatusCode};
use custos_tests::*;
use serde_json::{json, Value};

mod support;

use support::consent::{Service, Setup};
use support::feed::{audit_event, bundle, call, feed_app, post, FHIR_JSON};
use support::keycloak::{audience_mapper, kc_url, Kc, PRIVACY_AUDIENCE};
use support::{app_for, ensure_schema, get, AUDIENCE};

const CLIENT: &str = "custos-audit-source";
const SECRET: &str = "audit-source-secret-0123456789";
const FEED_AUDIENCE: &str = "custos-feed";

/// The realm with the `audit_source` role and the source client, whose service account holds
/// the role and whose tokens name every Custos audience (so that only the role decides).
async fn setup(kc: &Kc, realm: &str) -> Result<String> {
    kc.create_realm_with_roles(realm, 600, &["audit_source"])
        .await?;
    kc.post(
        &format!("/{realm}/clients"),
        json!({
            "clientId": CLIENT, "secret": SECRET, "publicClient": false,
            "serviceAccountsEnabled": true, "standardFlowEnabled": false,
            "directAccessGrantsEnabled": false,
            "protocolMappers": [audience_mapper(FEED_AUDIENCE, false)]
        }),
    )
    .await?;
    let clients = kc
        .get_json(&format!("/{realm}/clients?clientId={CLIENT}"))
        .await?;
    let uuid = clients[0]["id"].as_str().context("client uuid")?;
    for (i, aud) in [AUDIENCE, PRIVACY_AUDIENCE].into_iter().enumerate() {
        let mut mapper = audience_mapper(aud, false);
        mapper["name"] = json!(format!("extra-audience-{i}"));
        kc.post(
            &format!("/{realm}/clients/{uuid}/protocol-mappers/models"),
            mapper,
        )
        .await?;
    }
    let sa = kc
        .get_json(&format!("/{realm}/clients/{uuid}/service-account-user"))
        .await?;
    let sa_id = sa["id"].as_str().context("service account user")?;
    kc.grant_role(realm, sa_id, "audit_source").await?;
    let v = kc
        .openid_post(
            realm,
            "token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT),
                ("client_secret", SECRET),
            ],
        )
        .await?;
    v["access_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no client-credentials token: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_token_writes_through_kafka_into_the_audit_table_once() -> Result<()> {
    ensure_schema()?;
    let kc = Kc::new();
    let realm = unique("feedkc").replace('-', "");
    let source = setup(&kc, &realm).await?;
    let result = async {
        let issuer = format!("{}/realms/{realm}", kc_url());
        let topics = Topics::create("feedkc", 1).await?;
        let feed = feed_app(&issuer, FEED_AUDIENCE, &topics.gateway, &[]);

        // One AuditEvent: 201 with its Location, and the very bytes on the topic.
        let first = audit_event("ae-kc-1", "RAWPAT-feedkc-1");
        let bytes = serde_json::to_vec(&first)?;
        let (r, h) = call(&feed, Method::POST, "/fhir/AuditEvent", Some(&source), Some(FHIR_JSON), bytes.clone()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        assert_eq!(h["location"], "http://feed.test/fhir/AuditEvent/ae-kc-1");
        let got = consume_all(&topics.gateway, 1, Duration::from_secs(20))?;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, bytes, "the record is the AuditEvent as validated");

        // The same AuditEvent again (a source retrying), then two more in a batch.
        let r = post(&feed, "/fhir/AuditEvent", Some(&source), &first).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let batch = bundle("batch", &[audit_event("ae-kc-2", "RAWPAT-feedkc-2"), audit_event("ae-kc-3", "RAWPAT-feedkc-1")]);
        let r = post(&feed, "/fhir", Some(&source), &batch).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());

        // The ingest stores them like any gateway event: three rows, the resend once.
        let mut ingest = Ingest::spawn(&topics, &[])?;
        ingest.wait_ready(Duration::from_secs(60)).await?;
        wait_stored(&topics.input_list(), 3, Duration::from_secs(90)).await?;
        // Every one of the four records was handled (the resend too), none rejected.
        let start = std::time::Instant::now();
        while ingest.metric("custos_ingest_consumed_total").await.unwrap_or(0.0) < 4.0 {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "the resend was not consumed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(ingest.metric("custos_ingest_rejected_total").await?, 0.0);
        ingest.terminate(Duration::from_secs(60))?;
        let rows = admin()
            .query("SELECT event_id FROM custos.audit_events FINAL WHERE kafka_topic = ? ORDER BY event_id")
            .bind(&topics.gateway)
            .fetch_all::<String>()
            .await?;
        assert_eq!(rows, ["ae-kc-1", "ae-kc-2", "ae-kc-3"]);
        let raw = admin()
            .query("SELECT count() FROM custos.audit_events FINAL WHERE kafka_topic = ? AND position(toString(patient), 'RAWPAT') > 0")
            .bind(&topics.gateway)
            .fetch_one::<u64>()
            .await?;
        assert_eq!(raw, 0, "patient ids are pseudonymized as for any gateway event");

        // A source can write, never read: the report API refuses its token...
        let query = app_for(&issuer, &[]);
        for path in ["/v1/reports/patient-access?patient=RAWPAT-feedkc-1", "/fhir/AuditEvent?patient=RAWPAT-feedkc-1"] {
            let r = get(&query, path, Some(&source)).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text());
        }
        // ...and so does the consent service's privacy API.
        let consent = Setup::create("feedkc-consent", &realm, &source, json!([])).await?;
        let mut svc = Service::spawn(&consent, &unique("feedkc-cg"), &[])?;
        svc.wait_ready().await?;
        for path in ["/v1/consents?patient=RAWPAT-feedkc-1", "/v1/revocations"] {
            let (status, _, body): (u16, String, Value) = svc.call(reqwest::Method::GET, path, Some(&source), None).await?;
            assert_eq!(status, 403, "{path}: {body}");
        }
        let (status, _, body) = svc
            .call(reqwest::Method::POST, "/v1/consents/revoke", Some(&source),
                Some(&json!({"tenant": realm, "patient": "RAWPAT-feedkc-1", "client_id": "x", "reason": "r"})))
            .await?;
        assert_eq!(status, 403, "{body}");
        svc.stop()?;
        Ok(())
    }
    .await;
    kc.delete_realm(&realm).await;
    result
}
