//! End-to-end: the overdue break-glass review sweep with a fixed clock, over openings stored
//! by the real ingest: before due nothing; after due one alert per opening without a
//! decision; an opening with a decision never; a second sweep raises nothing again.

#[path = "support/detection.rs"]
mod detection;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use custos_alerts::config::{ReviewDue, Tenants};
use custos_alerts::outputs::{self, NotifySettings};
use custos_alerts::review::{FixedClock, Sweep};
use custos_alerts::sink::Sink;
use custos_alerts::store::Store;
use custos_integrity::jws::Es256Signer;
use custos_runtime::kafka::{producer_config, Send};
use custos_schemas::records::ReviewDecisionRow;
use custos_tests::*;
use detection::*;
use rdkafka::producer::FutureProducer;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const HOUR: i64 = 3_600_000;

fn opening(id: &str, tenant: &str, t: i64, patient: &str) -> Msg {
    ce_at(
        id,
        "custos.breakglass.opened",
        tenant,
        t,
        json!({"iss": "https://as.test/realms/r",
        "sub": "dr-3", "fhirUser": "Practitioner/pr-3", "client_id": "ehr-app", "patient": patient,
        "reason": "unconscious patient in ED", "sourceIp": "10.1.1.3"}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overdue_reviews_raise_one_alert_each_never_twice_and_not_after_a_decision() -> Result<()> {
    migrate()?;
    let tenant = tenant("review");
    let setup = AlertsSetup::create("alerts-review", 1).await?;
    let opened = now_minute_ms() - HOUR;
    let msgs = vec![
        opening(&format!("{tenant}-a"), &tenant, opened, "RAWPAT-rev-a"),
        opening(
            &format!("{tenant}-b"),
            &tenant,
            opened + 1_000,
            "RAWPAT-rev-b",
        ),
    ];
    produce(&producer()?, &setup.topics.as_events, None, &msgs).await?;
    ingest_until_stored(&setup.topics, &[], 2).await?;
    let keys: Vec<(String, i64)> = admin()
        .query(
            "SELECT event_key, toUnixTimestamp64Milli(event_time) FROM custos.audit_events FINAL \
                WHERE tenant = ? ORDER BY event_time",
        )
        .bind(&tenant)
        .fetch_all()
        .await?;
    assert_eq!(keys.len(), 2);
    let (key_a, key_b) = (keys[0].0.clone(), keys[1].0.clone());

    // The sweep in-process, with the service's own account and a fixed clock; this tenant's
    // items are due after 2 h.
    let cancel = CancellationToken::new();
    let store = Arc::new(Store::new(client_as("custos_alerts", &alerts_password())));
    let tenants = Arc::new(Tenants(BTreeMap::new()));
    let (notifier, _deliveries) = outputs::start(
        NotifySettings {
            attempts: 1,
            backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(1),
            queue: 16,
            issuer: "urn:test".into(),
        },
        tenants.clone(),
        Arc::new(Es256Signer::random("k")),
        store.clone(),
        cancel.clone(),
    )?;
    let producer: FutureProducer =
        producer_config(&brokers(), "custos-tests", Send::Immediate).create()?;
    let sweep = Sweep {
        sink: Arc::new(Sink {
            store,
            producer,
            topic: setup.alerts_topic.clone(),
            notifier,
            params: Default::default(),
        }),
        due: ReviewDue::parse(24, &format!("{tenant}=2"))?,
    };
    let mine = |rows: Vec<custos_schemas::records::AlertRow>| -> Vec<_> {
        rows.into_iter().filter(|r| r.tenant == tenant).collect()
    };

    let clock = FixedClock::at(opened + 2 * HOUR - 1);
    assert!(
        mine(sweep.once(&clock, &cancel).await?).is_empty(),
        "not due yet"
    );
    assert!(alerts_of(std::slice::from_ref(&tenant)).await?.is_empty());

    // B is decided before its due time.
    let decision = ReviewDecisionRow {
        review_id: key_b.clone(),
        decision_id: format!("d-{tenant}"),
        tenant: tenant.clone(),
        decision: "justified".into(),
        note: "reviewed".into(),
        actor: "carol".into(),
        decided_at: opened + HOUR,
        opened_at: keys[1].1,
    };
    let mut insert = admin()
        .with_database("custos")
        .insert::<ReviewDecisionRow>("break_glass_reviews")
        .await?;
    insert.write(&decision).await?;
    insert.end().await?;

    clock.set(opened + 2 * HOUR + 2_000);
    let raised = mine(sweep.once(&clock, &cancel).await?);
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0].dedup_key, format!("review:{key_a}"));
    let stored = alerts_of(std::slice::from_ref(&tenant)).await?;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        (
            stored[0].detector.as_str(),
            stored[0].severity.as_str(),
            stored[0].evidence.clone()
        ),
        ("break_glass_review_overdue", "medium", vec![key_a.clone()])
    );

    clock.set(opened + 30 * HOUR);
    assert!(
        mine(sweep.once(&clock, &cancel).await?).is_empty(),
        "never twice"
    );
    let rows: u64 = admin()
        .query("SELECT count() FROM custos.alerts WHERE tenant = ?")
        .bind(&tenant)
        .fetch_one()
        .await?;
    assert_eq!(rows, 1, "one row written, once");
    let published = consume_all(&setup.alerts_topic, 10, Duration::from_secs(5))?;
    let mine_published = published
        .iter()
        .filter(|(p, _)| String::from_utf8_lossy(p).contains(&tenant))
        .count();
    assert_eq!(mine_published, 1);
    cancel.cancel();
    Ok(())
}
