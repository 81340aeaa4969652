//! End-to-end rebalance test: a partition that moves to another ingest process and comes
//! back continues its hash chain from the other process's records, so `verify` stays clean.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use custos_tests::events;
use custos_tests::*;

/// Waits until the log of `ingest` has said "partitions assigned" more than `seen` times.
async fn wait_assigned(ingest: &Ingest, seen: usize) -> Result<usize> {
    let start = Instant::now();
    loop {
        let n = ingest.log_text().matches("partitions assigned").count();
        if n > seen {
            return Ok(n);
        }
        ensure!(
            start.elapsed() < Duration::from_secs(90),
            "no new assignment; log:\n{}",
            tail(&ingest.log_text(), 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_moves_away_and_back_keeps_one_chain() -> Result<()> {
    const STEP: u64 = 3_000;
    migrate()?;
    let topics = Topics::create("rebalance", 2).await?;
    let p = unique("rb");
    let producer = producer()?;
    let batch = [("CUSTOS_BATCH_MAX_ROWS", "500")];
    let msgs =
        |from: u64, to: u64| -> Vec<Msg> { (from..to).map(|n| events::bulk(&p, n)).collect() };

    // A alone: it chains every partition and keeps their heads in memory.
    let a = Ingest::spawn(&topics, &batch)?;
    a.wait_ready(Duration::from_secs(60)).await?;
    let seen_a = wait_assigned(&a, 0).await?;
    produce(&producer, &topics.gateway, None, &msgs(0, STEP)).await?;
    wait_stored(&topics.input_list(), STEP, Duration::from_secs(120)).await?;

    // B joins: some partitions move to B, which writes the next records of their chains,
    // while events keep arriving.
    let mut b = Ingest::spawn(&topics, &batch)?;
    b.wait_ready(Duration::from_secs(60)).await?;
    let during_join = tokio::spawn({
        let producer = producer.clone();
        let gateway = topics.gateway.clone();
        let m = msgs(STEP, 2 * STEP);
        async move { produce(&producer, &gateway, None, &m).await }
    });
    wait_assigned(&b, 0).await?;
    let seen_a = wait_assigned(&a, seen_a).await?;
    during_join.await??;
    produce(&producer, &topics.gateway, None, &msgs(2 * STEP, 3 * STEP)).await?;
    wait_stored(&topics.input_list(), 3 * STEP, Duration::from_secs(120)).await?;
    let by_b = b.metric("custos_ingest_consumed_total").await?;
    ensure!(by_b > 0.0, "B never consumed: the partitions did not move");

    // B leaves: its partitions come back to A, which must link to B's last records, not to
    // the heads it remembered from before.
    let leaving = tokio::spawn({
        let producer = producer.clone();
        let gateway = topics.gateway.clone();
        let m = msgs(3 * STEP, 4 * STEP);
        async move { produce(&producer, &gateway, None, &m).await }
    });
    ensure!(
        b.terminate(Duration::from_secs(60))? == 0,
        "B exits cleanly"
    );
    wait_assigned(&a, seen_a).await?;
    leaving.await??;
    produce(&producer, &topics.gateway, None, &msgs(4 * STEP, 5 * STEP)).await?;
    wait_stored(&topics.input_list(), 5 * STEP, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (code, report) = verify_chains(&["--topic", &topics.gateway])?;
    ensure!(code == 0, "chains after A -> B -> A: {report:#}");
    let records: u64 = report["chains"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["records"].as_u64()).sum())
        .unwrap_or(0);
    ensure!(records == 5 * STEP, "every record chained: {report:#}");
    Ok(())
}
