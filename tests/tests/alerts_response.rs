//! The opt-in automatic response to token theft, end to end on the real Kafka, ClickHouse and
//! Keycloak: a patient signs in to a consent-required client (a real Keycloak consent and
//! tokens), the consent service folds the consent, and alert revisions are produced to the
//! alerts topic as `custos-alerts` writes them (`Answered<AlertRow>`, keyed by alert id):
//!
//! - a message without the header `custos-response: revoke-session` does nothing;
//! - the same kind of message with the header makes the consent service resolve the user's
//!   raw AS subject from the consent (the alert holds the audit row's pseudonym), revoke the
//!   consent and the client's sessions at Keycloak and push a SET to the receiver; Keycloak's
//!   introspection then answers `active: false`, and the alert has an `auto_revoke` receipt
//!   naming the revocation;
//! - the same message again, and a later revision of the alert, plan nothing new;
//! - an alert whose subject has no consent gets a receipt saying why nothing was revoked.
//!
//! It needs the `custos_consent` account's grant on `custos.alert_actions`
//! (`config/clickhouse/users.xml`), which a running ClickHouse only takes on restart.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use custos_schemas::records::{AlertRow, Answered};
use custos_schemas::{KeyRing, PseudonymKind};
use custos_tests::*;
use serde_json::{json, Value};

mod support;

use support::consent::*;
use support::keycloak::*;
use support::ssf::Receiver;

const HEADER: (&str, &str) = ("custos-response", "revoke-session");

/// An alert revision as `custos-alerts` writes it for `subject` (the audit row's value) at
/// [`CLIENT`].
fn alert(tenant: &str, alert_id: &str, revision: u32, subject: &str) -> AlertRow {
    let now = chrono_now_ms();
    AlertRow {
        alert_id: alert_id.to_owned(),
        revision,
        tenant: tenant.to_owned(),
        detector: "refresh_reuse".to_owned(),
        severity: "high".to_owned(),
        dedup_key: format!("refresh:{alert_id}"),
        subject: subject.to_owned(),
        user_kind: "patient".to_owned(),
        client_id: CLIENT.to_owned(),
        session_id: String::new(),
        token_jti: format!("jti-{alert_id}"),
        patient: String::new(),
        first_seen: now - 60_000,
        last_seen: now - 1_000 + i64::from(revision),
        evidence: vec![format!("ek-{alert_id}-{revision}")],
        evidence_count: revision,
        summary: "A refresh token was presented again after rotation.".to_owned(),
        token_theft: true,
    }
}

fn message(row: &AlertRow, header: bool) -> Result<Msg> {
    let value = serde_json::to_value(Answered(row.clone()))?;
    let mut m = Msg::json(&value);
    m.key = Some(row.alert_id.clone());
    if header {
        m.headers = vec![(HEADER.0.to_owned(), HEADER.1.to_owned())];
    }
    Ok(m)
}

/// The rows of `table` (FINAL) of one alert or revocation, as JSON.
async fn rows(table: &str, column: &str, value: &str) -> Result<Vec<Value>> {
    let sql = format!(
        "SELECT * FROM custos.{table} FINAL WHERE {column} = {{v:String}} FORMAT JSONEachRow"
    );
    admin_sql(&sql, &[("v", value)])
        .await?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// Waits (up to 60 s) until `alert_id` has an action row.
async fn wait_action(svc: &Service, alert_id: &str) -> Result<Vec<Value>> {
    let start = Instant::now();
    loop {
        let found = rows("alert_actions", "alert_id", alert_id).await?;
        if !found.is_empty() {
            return Ok(found);
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "no action on alert {alert_id} within 60 s; log:\n{}",
                tail(&svc.log_text(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits (up to 60 s) until every target of `revocation_id` ended; returns the attempts.
async fn wait_pushed(svc: &Service, revocation_id: &str, targets: usize) -> Result<Vec<Value>> {
    let start = Instant::now();
    loop {
        let attempts = attempts_of(svc, revocation_id).await?;
        let ended: std::collections::HashSet<&str> = attempts
            .iter()
            .filter(|a| a["outcome"] != "retry")
            .filter_map(|a| a["target"].as_str())
            .collect();
        if ended.len() >= targets {
            return Ok(attempts);
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "revocation {revocation_id} not pushed within 60 s: {attempts:#?}; log:\n{}",
                tail(&svc.log_text(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_marked_token_theft_alert_revokes_the_session_once_with_a_receipt() -> Result<()> {
    migrate()?;
    let kc = Kc::new();
    let realm = unique("ar").replace('-', "");
    let result = flow(&kc, &realm).await;
    kc.delete_realm(&realm).await;
    result
}

async fn flow(kc: &Kc, realm: &str) -> Result<()> {
    let user_id = kc.setup(realm, "patient-ar").await?;
    let tokens = kc.login_with_consent(realm, "patient-ar").await?;
    ensure!(
        kc.active(realm, &tokens.access).await?,
        "fresh token inactive"
    );

    let privacy = kc.privacy_tokens(realm).await?;
    let (receiver, endpoint) = Receiver::start(false).await?;
    let receivers =
        json!([{"name": "gw", "endpoint": endpoint, "audience": "https://gateway.example"}]);
    let setup = Setup::create("alert-resp", realm, &privacy.officer, receivers).await?;
    let alerts_topic = format!("{}.alerts", unique("alert-resp"));
    create_topics(&[(&alerts_topic, 1)]).await?;
    let svc = Service::spawn(
        &setup,
        &unique("cg"),
        &[
            ("CUSTOS_CONSENT_ALERTS_TOPIC", alerts_topic.as_str()),
            ("CUSTOS_CONSENT_ALERTS_GROUP", &unique("resp")),
        ],
    )?;
    svc.wait_ready().await?;
    let (_, consent_id) = grant_and_wait(&svc, &setup, &user_id).await?;

    // The alert holds the audit row's value of a patient's subject: its pseudonym under the
    // ingest's key ring, the same the consent history holds.
    let keys = KeyRing::parse(TEST_KEYS, None)?;
    let subject = keys.pseudonymize(realm, PseudonymKind::Subject, &user_id);
    let history = rows("consent_history", "consent_id", &consent_id).await?;
    ensure!(
        history.iter().all(|h| h["subject"] == subject.as_str()),
        "the consent history's subject pseudonym differs from the audit row's: {history:#?}"
    );

    // 1. Without the header: nothing. With it (later on the same partition, so the first is
    // handled when the second's effects show): the session is revoked.
    let quiet = alert(realm, &unique("quiet").replace('-', ""), 1, &subject);
    let theft = alert(realm, &unique("theft").replace('-', ""), 1, &subject);
    let producer = producer()?;
    produce(
        &producer,
        &alerts_topic,
        None,
        &[message(&quiet, false)?, message(&theft, true)?],
    )
    .await?;
    let actions = wait_action(&svc, &theft.alert_id).await?;
    assert_eq!(actions.len(), 1, "{actions:#?}");
    let action = &actions[0];
    assert_eq!(
        (&action["action"], &action["actor"], &action["tenant"]),
        (
            &json!("auto_revoke"),
            &json!("custos-consent"),
            &json!(realm)
        ),
        "{action:#}"
    );
    let receipt: Value = serde_json::from_str(action["detail"].as_str().unwrap_or_default())?;
    let rid = receipt["revocation_id"]
        .as_str()
        .context("receipt without revocation id")?
        .to_owned();
    let targets: Vec<&str> = receipt["targets"]
        .as_array()
        .context("receipt without targets")?
        .iter()
        .map(|t| t["target"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(targets, ["keycloak", "ssf:gw", "kafka"], "{receipt:#}");
    assert_eq!(receipt["revision"], 1);
    let first_seen = action["alert_first_seen"].as_str().unwrap_or_default();
    assert!(
        first_seen.starts_with(
            &chrono::DateTime::from_timestamp_millis(theft.first_seen)
                .context("time")?
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        ),
        "{action:#}"
    );

    // The planned rows: cause, initiator and reason name the alert, not the user.
    let planned = rows("revocations", "revocation_id", &rid).await?;
    let requested: Vec<&Value> = planned.iter().filter(|r| r["seq"] == 0).collect();
    assert_eq!(requested.len(), 3, "{planned:#?}");
    for r in &requested {
        assert_eq!(r["state"], "requested", "{r:#}");
        assert_eq!(r["cause"], "alert");
        assert_eq!(r["initiator"], "custos-alerts");
        assert_eq!(
            r["reason"],
            format!("alert {}: refresh_reuse", theft.alert_id).as_str()
        );
        assert_eq!(
            (&r["consent_id"], &r["subject"]),
            (&json!(consent_id), &json!(subject))
        );
    }

    // 2. Delivered to every target; Keycloak no longer accepts the token; the SET arrived.
    let attempts = wait_pushed(&svc, &rid, 3).await?;
    for target in ["keycloak", "ssf:gw", "kafka"] {
        assert!(
            attempts
                .iter()
                .any(|a| a["target"] == target && a["outcome"] == "delivered"),
            "{target} not delivered: {attempts:#?}"
        );
    }
    ensure!(
        !kc.active(realm, &tokens.access).await?,
        "Keycloak still accepts the stolen token's session"
    );
    ensure!(
        !kc.active(realm, &tokens.refresh).await?,
        "Keycloak still accepts the session's refresh token"
    );
    assert!(
        !kc.consents(realm, &user_id)
            .await?
            .iter()
            .any(|c| c["clientId"] == CLIENT),
        "the consent is still at Keycloak"
    );
    assert_eq!(receiver.received().len(), 1, "one SET");
    assert!(
        rows(
            "revocations",
            "cause_event_key",
            &format!("alert:{}", quiet.alert_id)
        )
        .await?
        .is_empty()
            && rows("alert_actions", "alert_id", &quiet.alert_id)
                .await?
                .is_empty(),
        "an alert without the header was acted on"
    );

    // 3. A replay and a later revision plan nothing; an alert whose subject has no consent
    // gets a receipt saying so (and, behind the others on the partition, shows they were
    // handled).
    let mut later = theft.clone();
    later.revision = 2;
    later.evidence_count = 2;
    let unknown = alert(
        realm,
        &unique("unknown").replace('-', ""),
        1,
        &keys.pseudonymize(realm, PseudonymKind::Subject, "nobody-known"),
    );
    produce(
        &producer,
        &alerts_topic,
        None,
        &[
            message(&theft, true)?,
            message(&later, true)?,
            message(&unknown, true)?,
        ],
    )
    .await?;
    let refused = wait_action(&svc, &unknown.alert_id).await?;
    assert_eq!(refused.len(), 1, "{refused:#?}");
    let detail: Value = serde_json::from_str(refused[0]["detail"].as_str().unwrap_or_default())?;
    assert_eq!(detail["error"], "no_consent", "{refused:#?}");
    assert!(
        rows(
            "revocations",
            "cause_event_key",
            &format!("alert:{}", unknown.alert_id)
        )
        .await?
        .is_empty(),
        "a revocation without a subject was planned"
    );
    // Let any push a replay would have started finish before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = rows("revocations", "revocation_id", &rid).await?;
    assert_eq!(
        again.iter().filter(|r| r["seq"] == 0).count(),
        3,
        "the replay planned again: {again:#?}"
    );
    assert_eq!(attempts_of(&svc, &rid).await?.len(), attempts.len());
    assert_eq!(
        rows("alert_actions", "alert_id", &theft.alert_id)
            .await?
            .len(),
        1
    );
    assert_eq!(receiver.received().len(), 1, "a replay pushed a second SET");

    // Nothing raw in the log: neither the token nor the AS subject.
    let log = svc.log_text();
    assert!(!log.contains(&tokens.access) && !log.contains(&tokens.refresh));
    assert!(!log.contains(&user_id), "the raw subject was logged");
    Ok(())
}
