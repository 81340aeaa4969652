//! End-to-end: ClickHouse stopped for 20 s mid-run and started again loses nothing; the
//! ingest retries, reports not-ready meanwhile, and resumes by itself.
//! Alone in its test binary because it stops the shared ClickHouse.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use custos_tests::events;
use custos_tests::*;

fn stack(args: &[&str]) -> Result<()> {
    let status = Command::new(workspace().join("scripts/stack"))
        .args(args)
        .status()?;
    ensure!(status.success(), "scripts/stack {args:?} failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_for_20s_mid_run_loses_nothing() -> Result<()> {
    const N: u64 = 30_000;
    migrate()?;
    let topics = Topics::create("outage", 4).await?;
    let p = unique("o");
    let producer = producer()?;
    let ingest = Ingest::spawn(&topics, &[("CUSTOS_BATCH_MAX_ROWS", "2000")])?;
    ingest.wait_ready(Duration::from_secs(60)).await?;

    let first: Vec<Msg> = (0..N / 3).map(|n| events::bulk(&p, n)).collect();
    produce(&producer, &topics.gateway, None, &first).await?;
    wait_stored(&topics.input_list(), N / 3, Duration::from_secs(120)).await?;

    stack(&["stop", "clickhouse"])?;
    let down_at = Instant::now();
    let rest: Vec<Msg> = (N / 3..N).map(|n| events::bulk(&p, n)).collect();
    produce(&producer, &topics.gateway, None, &rest).await?;
    // While ClickHouse is down the ingest keeps running and says it is not ready.
    let mut saw_not_ready = false;
    while down_at.elapsed() < Duration::from_secs(20) {
        if let Ok((503, _)) = http_get(&format!("{}/readyz", ingest.http)).await {
            saw_not_ready = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(saw_not_ready, "readyz should report ClickHouse unavailable");
    let retries = ingest.metric("custos_ingest_insert_retries_total").await?;
    assert!(retries > 0.0, "inserts were retried");
    stack(&["start", "clickhouse"])?;

    wait_stored(&topics.input_list(), N, Duration::from_secs(180)).await?;
    let (rows, distinct): (u64, u64) = admin()
        .query("SELECT count(), uniqExact(event_id) FROM custos.audit_events FINAL WHERE kafka_topic IN ?")
        .bind(topics.input_list())
        .fetch_one()
        .await?;
    assert_eq!((rows, distinct), (N, N));
    ingest.wait_ready(Duration::from_secs(30)).await?;
    Ok(())
}
