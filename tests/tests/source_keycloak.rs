//! End-to-end: the `custos-kafka` Keycloak event listener (`connectors/keycloak`) in a real
//! Keycloak, against a throw-away Kafka broker of its own (the shared one is never stopped)
//! and the real ingest and ClickHouse:
//!
//! - password-grant logins, a failed login and admin changes reach the topic as Keycloak
//!   event JSON, keyed by realm and user, each event id exactly once, no canary value (user
//!   name, password, attribute, representation) on the topic;
//! - a 60 s Kafka outage during logins: no login waits, the spool shows in Keycloak's metrics,
//!   every event arrives after the broker returns, none twice;
//! - Keycloak stopped with a non-empty spool and started again: nothing lost, nothing doubled;
//! - the ingest stores the logins in `custos.audit_events` under the realm's tenant.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use custos_tests::{admin, migrate, unique, Ingest, Topics};
use serde_json::{json, Value};
use support::kc_source::{stack_dir, Admin, TmpKafka, TmpKeycloak, PASSWORD};

/// A value that must never leave Keycloak.
const CANARY: &str = "canary-kc-7d1f0b";

/// Waits until every event Keycloak stored for `realm` is on `topic`; then checks that each
/// event id on the topic is there once, and that no canary or token left Keycloak. Returns
/// the records by event id.
async fn all_arrived(
    kafka: &TmpKafka,
    topic: &str,
    admin: &Admin,
    realm: &str,
    timeout: Duration,
) -> Result<BTreeMap<String, (String, Value)>> {
    let start = Instant::now();
    loop {
        let stored: BTreeSet<String> = admin.stored_event_ids(realm).await?.into_iter().collect();
        let records = kafka.read_all(topic)?;
        let mut by_id: BTreeMap<String, (String, Value)> = BTreeMap::new();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (key, value) in &records {
            let id = value["id"]
                .as_str()
                .context("record without id")?
                .to_owned();
            *counts.entry(id.clone()).or_default() += 1;
            by_id.insert(id, (key.clone(), value.clone()));
        }
        let missing: Vec<&String> = stored
            .iter()
            .filter(|id| !by_id.contains_key(*id))
            .collect();
        if missing.is_empty() {
            let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
            ensure!(
                doubled.is_empty(),
                "events on the topic more than once: {doubled:?}"
            );
            for (_, v) in by_id.values() {
                let text = v.to_string();
                ensure!(!text.contains(CANARY), "the canary left Keycloak: {text}");
                ensure!(!text.contains("eyJ"), "a token left Keycloak: {text}");
            }
            return Ok(by_id);
        }
        ensure!(
            start.elapsed() < timeout,
            "{} of {} stored events not on {topic} after {timeout:?}: {missing:?}",
            missing.len(),
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A password-grant login that must succeed; returns how long it took.
async fn login(admin: &Admin, realm: &str, user: &str) -> Result<Duration> {
    let t = Instant::now();
    let status = admin.login(realm, user, PASSWORD).await?;
    ensure!(status == 200, "login of {user} answered {status}");
    Ok(t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_events_survive_an_outage_and_a_restart_and_reach_clickhouse() -> Result<()> {
    migrate()?;
    let dir = stack_dir("kc-source")?;
    let kafka = TmpKafka::start(&dir)?;
    let prefix = unique("kcsrc");
    let topics = Topics {
        as_events: format!("{prefix}.as-events"),
        gateway: format!("{prefix}.gateway-events"),
        consent: format!("{prefix}.consent-events"),
        dlq: format!("{prefix}.dlq"),
        checkpoints: format!("{prefix}.checkpoints"),
        group: format!("{prefix}.group"),
    };
    kafka
        .create_topics(&[
            (&topics.as_events, 3),
            (&topics.gateway, 1),
            (&topics.consent, 1),
            (&topics.dlq, 1),
            (&topics.checkpoints, 1),
        ])
        .await?;
    let kc = TmpKeycloak::start(&dir, &kafka.brokers, &topics.as_events)?;
    let admin = Admin::connect(&kc.url).await?;
    ensure!(
        admin.has_listener().await?,
        "Keycloak has no custos-kafka listener"
    );
    let realm = unique("kc-source");
    let user = "dr.source";
    let realm_id = admin.realm(&realm, user).await?;
    let mut logins = 0;

    // Kafka up: logins, a failed login whose user name and password are the canary, and admin
    // changes whose representations carry it (representations are off by default).
    for _ in 0..3 {
        login(&admin, &realm, user).await?;
        logins += 1;
    }
    let failed = admin.login(&realm, CANARY, CANARY).await?;
    ensure!(failed == 401, "a wrong password answered {failed}");
    let created = admin
        .call(
            reqwest::Method::POST,
            &format!("/{realm}/users"),
            Some(json!({
                "username": "canary-holder", "enabled": true,
                "attributes": {"note": [CANARY]},
                "credentials": [{"type": "password", "value": CANARY, "temporary": false}]
            })),
        )
        .await?;
    ensure!(created.0 == 201, "creating a user: {created:?}");
    let role = admin
        .call(
            reqwest::Method::POST,
            &format!("/{realm}/roles"),
            Some(json!({"name": "canary-role", "description": CANARY})),
        )
        .await?;
    ensure!(role.0 == 201, "creating a role: {role:?}");
    let first = all_arrived(
        &kafka,
        &topics.as_events,
        &admin,
        &realm,
        Duration::from_secs(60),
    )
    .await?;
    let user_id = first
        .values()
        .find(|(_, v)| v["type"] == "LOGIN")
        .and_then(|(_, v)| v["userId"].as_str())
        .context("no LOGIN event")?
        .to_owned();
    for (key, v) in first.values() {
        assert_eq!(v["realmId"], realm_id.as_str(), "{v}");
        assert_eq!(v["realmName"], realm.as_str(), "{v}");
        assert!(v["time"].is_i64(), "{v}");
        assert!(v.get("representation").is_none(), "{v}");
        if v["type"] == "LOGIN" {
            // The realm's issuer, as in the `iss` of the tokens it issues.
            assert_eq!(v["issuer"], format!("{}/realms/{realm}", kc.url), "{v}");
            assert_eq!(key, &format!("{realm_id}/{user_id}"));
            assert!(v["details"]["token_id"].is_string(), "{v}");
            assert!(v["details"].get("username").is_none(), "{v}");
        }
        if v["operationType"].is_string() {
            assert!(v["authDetails"]["userId"].is_string(), "{v}");
            assert!(v["resourcePath"].is_string(), "{v}");
        }
    }
    assert!(
        first.values().any(|(_, v)| v["type"] == "LOGIN_ERROR"),
        "no LOGIN_ERROR"
    );
    assert!(
        first
            .values()
            .any(|(_, v)| v["operationType"] == "CREATE" && v["resourceType"] == "USER"),
        "no admin event"
    );

    // A 60 s outage during logins: no login waits on Kafka; the events wait in the spool.
    kafka.stop()?;
    let outage = Instant::now();
    let mut slowest = Duration::ZERO;
    while outage.elapsed() < Duration::from_secs(60) {
        slowest = slowest.max(login(&admin, &realm, user).await?);
        logins += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    ensure!(
        slowest < Duration::from_secs(3),
        "a login took {slowest:?} while Kafka was down"
    );
    let spooled = kc.metric("custos_kafka_spool_events").await?;
    ensure!(spooled >= 20.0, "spool gauge {spooled} after the outage");
    assert_eq!(kc.metric("custos_kafka_up").await?, 0.0, "Kafka shown up");
    kafka.up()?;
    all_arrived(
        &kafka,
        &topics.as_events,
        &admin,
        &realm,
        Duration::from_secs(120),
    )
    .await?;
    assert!(
        kc.log().contains("Kafka at") && kc.log().contains("is reachable again"),
        "no recovery line in Keycloak's log"
    );

    // Keycloak stopped with a non-empty spool, started again after Kafka returned.
    kafka.stop()?;
    for _ in 0..5 {
        login(&admin, &realm, user).await?;
        logins += 1;
    }
    kc.down()?;
    kafka.up()?;
    kc.up()?;
    let admin = Admin::connect(&kc.url).await?;
    let all = all_arrived(
        &kafka,
        &topics.as_events,
        &admin,
        &realm,
        Duration::from_secs(120),
    )
    .await?;
    assert!(
        kc.log()
            .contains("from before the start will be sent first"),
        "the restart found no spool"
    );
    let login_events = all.values().filter(|(_, v)| v["type"] == "LOGIN").count();
    assert_eq!(login_events, logins, "LOGIN events on the topic");

    // Through the real ingest into ClickHouse, under the realm's tenant.
    let brokers = kafka.brokers.clone();
    let mut ingest = Ingest::spawn(&topics, &[("CUSTOS_KAFKA_BROKERS", &brokers)])?;
    ingest.wait_ready(Duration::from_secs(60)).await?;
    let start = Instant::now();
    let stored = loop {
        let rows: Vec<(String, String, u64)> = admin_rows(&topics.as_events).await?;
        let stored = rows
            .iter()
            .find(|(ty, _, _)| ty == "custos.auth.login")
            .map(|r| r.2)
            .unwrap_or(0);
        if stored as usize >= logins {
            break rows;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(90),
            "only {stored} of {logins} logins stored: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ingest.terminate(Duration::from_secs(60))?;
    for (ty, tenant, _) in &stored {
        // The listener adds the realm's name, which the decoder takes as the tenant.
        assert_eq!(tenant, &realm, "tenant of {ty}");
    }
    assert!(
        stored
            .iter()
            .any(|(ty, _, n)| ty == "custos.auth.login" && *n as usize == logins),
        "{stored:?}"
    );
    assert!(
        stored
            .iter()
            .any(|(ty, _, _)| ty == "custos.auth.login_failed"),
        "{stored:?}"
    );
    // Passed: stop both and drop their directory (kept on failure for the logs).
    drop(kc);
    drop(kafka);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// (event type, tenant, rows) of the deduplicated audit rows read from `topic`.
async fn admin_rows(topic: &str) -> Result<Vec<(String, String, u64)>> {
    Ok(admin()
        .query(
            "SELECT event_type, tenant, count() FROM custos.audit_events FINAL \
             WHERE kafka_topic = ? GROUP BY event_type, tenant ORDER BY event_type",
        )
        .bind(topic)
        .fetch_all()
        .await?)
}
