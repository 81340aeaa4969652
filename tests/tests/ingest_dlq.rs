//! End-to-end tests of what leaves the pipeline through the dead-letter queue: credentials
//! never rest there, and rows that ClickHouse refuses are dead-lettered instead of stalling
//! every partition.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use custos_tests::events::{self, Raw};
use custos_tests::*;
use serde_json::json;

/// A bearer token that must never be readable after it was rejected.
const CANARY_SIG: &str = "Q2FuYXJ5LXNpZ25hdHVyZS1kby1ub3QtbGVhaw";
const CANARY_SECRET: &str = "canary-opaque-refresh-7f3e9a";
const CANARY_PASSWORD: &str = "canary-Passw0rd-2b8d";

fn canary_jwt() -> String {
    format!(
        "eyJhbGciOiJSUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJjYW5hcnkiLCJqdGkiOiJ4In0.{CANARY_SIG}"
    )
}

/// Every byte of `table`'s rows for `topics`, as TabSeparated text.
async fn dump(table: &str, topics: &[String]) -> Result<String> {
    let mut out = Vec::new();
    let mut cursor = admin()
        .query(&format!(
            "SELECT * FROM custos.{table} WHERE kafka_topic IN ?"
        ))
        .bind(topics)
        .fetch_bytes("TabSeparated")?;
    while let Some(chunk) = cursor.next().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_are_redacted_before_the_dlq() -> Result<()> {
    migrate()?;
    let topics = Topics::create("dlq-canary", 1).await?;
    let raw = Raw::new(&unique("c"));
    let p = unique("cv");
    let jwt = canary_jwt();

    let mut in_field = events::fhir_access(&format!("{p}-field"), &raw);
    in_field["data"]["access_token"] = json!(jwt);
    let mut in_text = events::fhir_access(&format!("{p}-text"), &raw);
    in_text["data"]["userAgent"] = json!(format!("agent {jwt}"));
    let mut refresh = events::fhir_access(&format!("{p}-refresh"), &raw);
    refresh["data"]["refresh_token"] = json!(CANARY_SECRET);
    let keycloak_admin = json!({
        "id": format!("{p}-kc"), "time": 1_700_000_000_000_i64, "realmId": "r",
        "operationType": "CREATE", "resourcePath": "users/1",
        "representation": format!("{{\"username\":\"u\",\"credentials\":[{{\"type\":\"password\",\"value\":\"{CANARY_PASSWORD}\"}}],\"token\":\"{jwt}\"}}"),
        "authDetails": {"realmId": "r", "clientId": "c", "userId": "u", "ipAddress": "10.0.0.1"},
        "Authorization": format!("Bearer {CANARY_SECRET}")
    });
    let broken = format!("{{\"not json\": \"{jwt}\", \"password\": \"{CANARY_PASSWORD}\"");
    let mut header_msg = Msg::json(&events::fhir_access(&format!("{p}-header"), &raw));
    header_msg
        .headers
        .push(("Authorization".into(), format!("Bearer {jwt}")));
    let clean = Msg::json(&events::fhir_access(&format!("{p}-clean"), &raw));

    let sequence = vec![
        Msg::json(&in_field),
        Msg::json(&in_text),
        Msg::json(&refresh),
        Msg::json(&keycloak_admin),
        Msg::raw(broken.into_bytes()),
        header_msg,
        clean,
    ];
    produce(&producer()?, &topics.gateway, Some(0), &sequence).await?;
    let ingest = Ingest::spawn(&topics, &[])?;
    ingest.wait_ready(Duration::from_secs(60)).await?;
    wait_stored(&topics.input_list(), 1, Duration::from_secs(60)).await?;

    let dlq = consume_all(&topics.dlq, 6, Duration::from_secs(60))?;
    ensure!(dlq.len() == 6, "six dead letters, got {}", dlq.len());
    let needles = [CANARY_SIG, CANARY_SECRET, CANARY_PASSWORD, &jwt[..40]];
    for (n, (payload, headers)) in dlq.iter().enumerate() {
        let body = String::from_utf8_lossy(payload);
        for needle in needles {
            ensure!(
                !body.contains(needle),
                "dead letter {n} keeps {needle}: {body}"
            );
            for (k, v) in headers {
                ensure!(
                    !String::from_utf8_lossy(v).contains(needle),
                    "dead letter {n}'s header {k} keeps {needle}"
                );
            }
        }
        // The header-borne token (the last letter) is redacted in its header.
        ensure!(
            n == 5 || body.contains("[redacted]"),
            "dead letter {n} marks what it redacted: {body}"
        );
        // The reason and the position stay, so the message can be found and repaired.
        let reason = headers.get("custos-reason").context("reason header")?;
        ensure!(!reason.is_empty());
        let offset = String::from_utf8_lossy(
            headers
                .get("custos-source-offset")
                .context("offset header")?,
        )
        .to_string();
        ensure!(
            offset == n.to_string(),
            "offset {offset} for dead letter {n}"
        );
    }
    // A dead letter that was valid JSON is still valid JSON after redaction.
    let first: serde_json::Value = serde_json::from_slice(&dlq[0].0)?;
    ensure!(first["data"]["access_token"] == "[redacted]");
    ensure!(first["id"] == format!("{p}-field"));
    ensure!(dlq[5].1.get("Authorization").map(Vec::as_slice) == Some(&b"[redacted]"[..]));

    for table in ["ingest_rejections", "audit_events"] {
        let text = dump(table, &topics.input_list()).await?;
        for needle in needles {
            ensure!(!text.contains(needle), "custos.{table} keeps {needle}");
        }
    }
    let stored: Vec<String> = admin()
        .query("SELECT event_id FROM custos.audit_events FINAL WHERE kafka_topic = ?")
        .bind(&topics.gateway)
        .fetch_all()
        .await?;
    ensure!(stored == vec![format!("{p}-clean")], "{stored:?}");
    let log = ingest.log_text();
    for needle in needles {
        ensure!(!log.contains(needle), "the ingest log keeps {needle}");
    }
    Ok(())
}

/// The rows of a refused-row scenario: `n` valid events, the one at `poison` refused.
async fn refused_row_scenario(topics: &Topics, p: &str, poison_id: &str) -> Result<()> {
    let raw = Raw::new(&unique("r"));
    let msgs: Vec<Msg> = (0..20)
        .map(|n| {
            let id = if n == 10 {
                poison_id.to_owned()
            } else {
                format!("{p}-{n}")
            };
            Msg::json(&events::fhir_access(&id, &raw))
        })
        .collect();
    produce(&producer()?, &topics.gateway, Some(0), &msgs).await?;
    let ingest = Ingest::spawn(topics, &[("CUSTOS_BATCH_MAX_ROWS", "100")])?;
    ingest.wait_ready(Duration::from_secs(60)).await?;
    wait_stored(&topics.input_list(), 19, Duration::from_secs(60)).await?;

    // The refused row is dead-lettered with ClickHouse's reason, at its position.
    let dlq = consume_all(&topics.dlq, 1, Duration::from_secs(60))?;
    ensure!(dlq.len() == 1, "one dead letter, got {}", dlq.len());
    let (payload, headers) = &dlq[0];
    let h = |k: &str| String::from_utf8_lossy(headers.get(k).map_or(&[][..], |v| v)).to_string();
    ensure!(
        h("custos-reason") == "store_refused",
        "{}",
        h("custos-reason")
    );
    ensure!(
        h("custos-detail").contains("469"),
        "ClickHouse's error: {}",
        h("custos-detail")
    );
    ensure!(h("custos-source-offset") == "10");
    let row: serde_json::Value = serde_json::from_slice(payload)?;
    ensure!(row["event_id"] == poison_id, "the refused row: {row}");
    let (reason, kept): (String, u64) = admin()
        .query(
            "SELECT reason, length(refused_row) FROM custos.ingest_rejections FINAL \
             WHERE kafka_topic = ? AND kafka_offset = 10",
        )
        .bind(&topics.gateway)
        .fetch_one()
        .await?;
    ensure!(reason == "store_refused" && kept > 0, "{reason} {kept}");
    ensure!(ingest.metric("custos_ingest_store_refused_total").await? == 1.0);

    // The partition goes on.
    let more: Vec<Msg> = (20..25)
        .map(|n| Msg::json(&events::fhir_access(&format!("{p}-{n}"), &raw)))
        .collect();
    produce(&producer()?, &topics.gateway, Some(0), &more).await?;
    wait_stored(&topics.input_list(), 24, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The chain runs through the refused row, proven from its recorded content.
    let (code, report) = verify_chains(&["--topic", &topics.gateway])?;
    ensure!(code == 0, "chain through a refused row: {report:#}");
    let records: u64 = report["chains"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["records"].as_u64()).sum())
        .unwrap_or(0);
    ensure!(
        records == 25,
        "every record, the refused one too: {report:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_store_refuses_is_dead_lettered_and_the_partition_goes_on() -> Result<()> {
    migrate()?;
    let topics = Topics::create("refused", 1).await?;
    let p = unique("rf");
    let poison = format!("{p}-poison");
    // A real refusal by ClickHouse of a row that decodes fine: a constraint that only this
    // test's poison event violates (other tests' inserts pass it).
    let constraint = format!(
        "custos_test_{}",
        p.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    admin()
        .query(&format!(
            "ALTER TABLE custos.audit_events ADD CONSTRAINT {constraint} CHECK event_id != ?"
        ))
        .bind(&poison)
        .execute()
        .await?;
    let outcome = refused_row_scenario(&topics, &p, &poison).await;
    admin()
        .query(&format!(
            "ALTER TABLE custos.audit_events DROP CONSTRAINT IF EXISTS {constraint}"
        ))
        .execute()
        .await?;
    outcome
}
