//! The revocation propagation benchmark of the consent service against the real Keycloak,
//! ingest and the simulator (ignored by default). The set-up is described in
//! `support::consent`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use custos_tests::*;
use serde_json::json;

mod support;

use support::consent::*;
use support::keycloak::*;

/// Revocation propagation benchmark (revoke request → Keycloak acknowledgement), with ingest
/// and the consent service consuming simulated traffic at the same time. Ignored by default:
/// `cargo test -p custos-tests --test consent_bench -- --ignored --nocapture`.
/// `CUSTOS_BENCH_REVOCATIONS` (default 100), `CUSTOS_BENCH_SIM_RATE` (default 2000 msg/s),
/// `CUSTOS_BENCH_SPACING_MS` (default 250: one revoke request every 250 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run explicitly"]
async fn bench_revocation_propagation() -> Result<()> {
    let n: usize = std::env::var("CUSTOS_BENCH_REVOCATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let rate: u64 = std::env::var("CUSTOS_BENCH_SIM_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let spacing: u64 = std::env::var("CUSTOS_BENCH_SPACING_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    migrate()?;
    let kc = Kc::new();
    let realm = unique("kcbench").replace('-', "");
    let user_ids = {
        // One user per revocation, each with a real consent (authorization-code flow).
        let first = kc.setup(&realm, "bench-0").await?;
        let mut ids = vec![first];
        for i in 1..n {
            ids.push(kc.add_patient(&realm, &format!("bench-{i}")).await?);
        }
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let realm = realm.clone();
            set.spawn(async move {
                Kc::new()
                    .login_with_consent(&realm, &format!("bench-{i}"))
                    .await
            });
            if set.len() >= 6 {
                if let Some(r) = set.join_next().await {
                    r??;
                }
            }
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        ids
    };
    let topics = Topics::create("cbench", 4).await?;
    let rev_topic = format!("{}.revocations", topics.group);
    create_topics(&[(&rev_topic, 2)]).await?;
    let ingest = Ingest::spawn(&topics, &[])?;
    ingest.wait_ready(Duration::from_secs(60)).await?;
    let setup = Setup {
        realm: realm.clone(),
        token: kc.privacy_tokens(&realm).await?.officer,
        consent_topic: topics.consent.clone(),
        as_topic: topics.as_events.clone(),
        revocations_topic: rev_topic,
        keycloak_url: kc_url(),
        admin_password: kc_admin_password(),
        receivers: json!([]),
    };
    let svc = Service::spawn(&setup, &unique("cgbench"), &[("CUSTOS_LOG", "info")])?;
    svc.wait_ready().await?;
    // Load: the simulator feeds both services' input topics during the whole run.
    let mut sim = Command::new(workspace_binary("custos-sim", "custos-sim"))
        .args([
            "--events",
            "100000000",
            "--duration",
            "600",
            "--rate",
            &rate.to_string(),
        ])
        .args([
            "--as-topic",
            &topics.as_events,
            "--gateway-topic",
            &topics.gateway,
        ])
        .args(["--consent-topic", &topics.consent, "--tenant", "benchload"])
        .env("CUSTOS_KAFKA_BROKERS", brokers())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let p = producer()?;
    let grants: Vec<Msg> = user_ids
        .iter()
        .map(|u| Msg::json(&grant_consent_event(&realm, u)))
        .collect();
    produce(&p, &topics.as_events, None, &grants).await?;
    for u in &user_ids {
        svc.wait_consents(&realm, u, "bench consent", |v| {
            v["consents"][0]["current"]["status"] == "active"
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t0 = Instant::now();
    for u in &user_ids {
        let (s, b) = svc
            .post(
                "/v1/consents/revoke",
                json!({"tenant": realm, "patient": u, "client_id": CLIENT, "reason": "benchmark"}),
            )
            .await?;
        ensure!(s == 202, "{b}");
        tokio::time::sleep(Duration::from_millis(spacing)).await;
    }
    let mut latencies: Vec<i64> = Vec::new();
    let start = Instant::now();
    while latencies.len() < n && start.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A busy ClickHouse (the stack is shared) is asked again next second.
        let body = admin_sql(
            "SELECT latency_ms FROM custos.revocations FINAL WHERE tenant = {t:String} \
             AND target = 'keycloak' AND state = 'delivered' FORMAT TSV",
            &[("t", realm.as_str())],
        )
        .await
        .unwrap_or_default();
        latencies = body.lines().filter_map(|l| l.trim().parse().ok()).collect();
    }
    let elapsed = t0.elapsed();
    let _ = sim.kill();
    let _ = sim.wait();
    let consumed = ingest
        .metric("custos_ingest_consumed_total")
        .await
        .unwrap_or(0.0);
    ensure!(
        latencies.len() == n,
        "only {} of {n} delivered",
        latencies.len()
    );
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    println!(
        "revocation propagation (revoke request -> Keycloak ack) n={n} sim_rate={rate}/s \
         spacing={spacing}ms: p50={} ms p90={} ms p99={} ms max={} ms; \
         ingest consumed {consumed} msgs; wall {:.1}s",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        latencies[n - 1],
        elapsed.as_secs_f64()
    );
    // Every token's consent is gone at Keycloak.
    for u in user_ids.iter().take(5) {
        ensure!(kc.consents(&realm, u).await?.is_empty());
    }
    kc.delete_realm(&realm).await;
    Ok(())
}
