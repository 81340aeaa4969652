//! End-to-end: `custos-alerts` SIGKILLed mid-stream and restarted gives exactly the alerts an
//! uninterrupted run gives (the pure engine over the same messages): the same alert ids and
//! revisions, each once, none missing.

#[path = "support/detection.rs"]
mod detection;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use custos_detect::{Engine, ParamSet};
use custos_schemas::{DecodeLimits, KafkaPosition, KeyRing};
use custos_tests::*;
use detection::*;

const TOKENS: usize = 60;

/// Per token: a read from one network, one from another (opens, medium), one back from the
/// first (alternation: high, revision 2).
fn messages(tenant: &str, base: i64) -> Vec<Msg> {
    let mut out = Vec::new();
    for i in 0..TOKENS {
        let jti = format!("J-crash-{i}");
        let t = base + i as i64 * 1_000;
        for (k, ip) in ["10.1.1.5", "10.2.2.5", "10.1.1.6"].iter().enumerate() {
            out.push(ce_at(
                &format!("crash-{i}-{k}"),
                "custos.fhir.access",
                tenant,
                t + k as i64 * 100,
                access("dr-1", &jti, ip, "Observation", "permit"),
            ));
        }
    }
    out
}

/// What an uninterrupted run raises: the engine over the messages in order.
fn expected(msgs: &[Msg], topic: &str) -> Result<BTreeSet<(String, u32, String, u32)>> {
    let keys = KeyRing::parse(TEST_KEYS, None)?;
    let mut engine = Engine::new(ParamSet::default());
    let mut out = BTreeSet::new();
    for (offset, m) in msgs.iter().enumerate() {
        let pos = KafkaPosition {
            topic: topic.to_owned(),
            partition: 0,
            offset: offset as i64,
        };
        let Some((event, row)) = custos_alerts::pipeline::decode_message(
            &m.payload,
            &[],
            pos,
            &keys,
            "default",
            &DecodeLimits::default(),
        ) else {
            bail!("a test message does not decode");
        };
        for u in engine.observe(&event, &row) {
            out.insert((
                u.alert_id,
                u.revision,
                u.severity.as_str().to_owned(),
                u.evidence_count,
            ));
        }
    }
    Ok(out)
}

async fn stored(tenant: &str) -> Result<(u64, BTreeSet<(String, u32, String, u32)>)> {
    let rows: Vec<(String, u32, String, u32)> = admin()
        .query("SELECT alert_id, revision, severity, evidence_count FROM custos.alerts FINAL WHERE tenant = ?")
        .bind(tenant)
        .fetch_all()
        .await?;
    Ok((rows.len() as u64, rows.into_iter().collect()))
}

async fn wait_count(tenant: &str, n: usize, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while stored(tenant).await?.0 < n as u64 {
        if start.elapsed() > timeout {
            bail!("fewer than {n} alert rows after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_and_restart_give_the_same_alerts_none_doubled_none_missing() -> Result<()> {
    migrate()?;
    let tenant = tenant("crash");
    let mut setup = AlertsSetup::create("alerts-crash", 1).await?;
    setup.env = vec![("CUSTOS_ALERTS_SNAPSHOT_SECS".into(), "5".into())];
    let msgs = messages(&tenant, now_minute_ms() - 60 * MIN);
    let want = expected(&msgs, &setup.topics.gateway)?;
    assert_eq!(want.len(), 2 * TOKENS, "two revisions per token: {want:?}");
    let (first, rest) = msgs.split_at(60);
    let (second, third) = rest.split_at(60);
    let p = producer()?;

    let mut alerts = AlertsProc::spawn(&setup)?;
    alerts.wait_ready(Duration::from_secs(120)).await?;
    produce(&p, &setup.topics.gateway, Some(0), first).await?;
    wait_count(&tenant, 40, Duration::from_secs(60)).await?;
    // A snapshot covers part of the stream; then more arrives and the process dies.
    let start = Instant::now();
    let mut snapshots = 0.0;
    while snapshots < 1.0 {
        snapshots = alerts.metric("custos_alerts_snapshots_total").await?;
        if snapshots < 1.0 && start.elapsed() > Duration::from_secs(30) {
            bail!("no snapshot saved; log:\n{}", tail(&alerts.log_text(), 30));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(&p, &setup.topics.gateway, Some(0), second).await?;
    wait_count(&tenant, 50, Duration::from_secs(60)).await?;
    // Killed with alerts written after the last snapshot: the restart replays them.
    let unsaved = alerts.metric("custos_alerts_snapshots_total").await? == snapshots;
    alerts.kill9()?;
    produce(&p, &setup.topics.gateway, Some(0), third).await?;

    let alerts = AlertsProc::spawn(&setup)?;
    alerts.wait_ready(Duration::from_secs(120)).await?;
    assert!(
        alerts.log_text().contains("restoring detector state"),
        "{}",
        tail(&alerts.log_text(), 20)
    );
    wait_count(&tenant, want.len(), Duration::from_secs(90)).await?;
    // Anything doubled or extra would arrive with the rest: give it time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rows, got) = stored(&tenant).await?;
    assert_eq!(rows, want.len() as u64, "each (alert_id, revision) once");
    assert_eq!(got, want, "the same alerts as an uninterrupted run");
    let written: u64 = admin()
        .query("SELECT count() FROM custos.ledger WHERE table_name = 'alerts' AND tenant = ?")
        .bind(&tenant)
        .fetch_one()
        .await?;
    if unsaved {
        assert!(written > rows, "the replay wrote revisions again ({written} ledger entries), collapsed into {rows} rows");
    }
    Ok(())
}
