//! End-to-end crash tests: SIGKILL mid-run and consumer-group takeover lose nothing and
//! show no duplicate in what reports read.

use std::time::Duration;

use anyhow::Result;
use custos_tests::events;
use custos_tests::*;

/// Checks that the deduplicated rows of `topics` are exactly ids `{prefix}-0..n`.
async fn assert_exact_set(topics: &[String], prefix: &str, n: u64) -> Result<()> {
    let (rows, distinct, in_range, sum): (u64, u64, u64, u64) = admin()
        .query(
            "SELECT count(), uniqExact(event_id), \
                    countIf(startsWith(event_id, ?) AND toUInt64OrZero(substring(event_id, ?)) < ?), \
                    sum(toUInt64OrZero(substring(event_id, ?))) \
             FROM custos.audit_events FINAL WHERE kafka_topic IN ?",
        )
        .bind(format!("{prefix}-"))
        .bind(prefix.len() as u64 + 2)
        .bind(n)
        .bind(prefix.len() as u64 + 2)
        .bind(topics)
        .fetch_one()
        .await?;
    assert_eq!(rows, n, "rows a report sees");
    assert_eq!(distinct, n, "distinct events");
    assert_eq!(in_range, n, "every stored id was produced");
    assert_eq!(sum, n * (n - 1) / 2, "the stored set is the produced set");
    Ok(())
}

/// Records a verify report checked, over all its chains.
fn chained(report: &serde_json::Value) -> u64 {
    report["chains"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["records"].as_u64()).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_then_restart_loses_and_duplicates_nothing() -> Result<()> {
    const N: u64 = 100_000;
    migrate()?;
    let topics = Topics::create("sigkill", 4).await?;
    let p = unique("k");
    let msgs: Vec<Msg> = (0..N).map(|n| events::bulk(&p, n)).collect();
    produce(&producer()?, &topics.gateway, None, &msgs).await?;

    let batch = [("CUSTOS_BATCH_MAX_ROWS", "4000")];
    let mut first = Ingest::spawn(&topics, &batch)?;
    first.wait_ready(Duration::from_secs(60)).await?;
    let at_kill = wait_stored(&topics.input_list(), 15_000, Duration::from_secs(120)).await?;
    first.kill9()?;
    let after_kill = stored_count(&topics.input_list()).await?;
    assert!(
        after_kill < N,
        "killed too late to prove anything ({after_kill} stored)"
    );
    eprintln!("stored at kill: {at_kill}..{after_kill} of {N}");

    let second = Ingest::spawn(&topics, &batch)?;
    second.wait_ready(Duration::from_secs(60)).await?;
    wait_stored(&topics.input_list(), N, Duration::from_secs(300)).await?;
    // Let any replayed tail land, then verify the set.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_exact_set(&topics.input_list(), &p, N).await?;
    // The replay re-chained the same positions to the same hashes: every chain verifies
    // clean, checkpoints of both processes included.
    let (code, report) = verify_chains(&["--topic", &topics.gateway])?;
    anyhow::ensure!(code == 0, "chains after the crash and replay: {report:#}");
    anyhow::ensure!(chained(&report) == N, "every record chained: {report:#}");
    let physical: u64 = admin()
        .query("SELECT count() FROM custos.audit_events WHERE kafka_topic IN ?")
        .bind(topics.input_list())
        .fetch_one()
        .await?;
    eprintln!(
        "physical rows before merges: {physical} (replayed: {})",
        physical - N
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_partitions_and_one_takes_over() -> Result<()> {
    const HALF: u64 = 20_000;
    migrate()?;
    let topics = Topics::create("group", 4).await?;
    let p = unique("g");
    let producer = producer()?;
    let batch = [("CUSTOS_BATCH_MAX_ROWS", "2000")];
    let mut a = Ingest::spawn(&topics, &batch)?;
    let b = Ingest::spawn(&topics, &batch)?;
    a.wait_ready(Duration::from_secs(60)).await?;
    b.wait_ready(Duration::from_secs(60)).await?;
    // Wait until both hold partitions (the log says so) before producing.
    let start = std::time::Instant::now();
    while !(a.log_text().contains("partitions assigned")
        && b.log_text().contains("partitions assigned"))
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "group never balanced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first: Vec<Msg> = (0..HALF).map(|n| events::bulk(&p, n)).collect();
    produce(&producer, &topics.gateway, None, &first).await?;
    wait_stored(&topics.input_list(), HALF, Duration::from_secs(120)).await?;
    // The counters move once a batch's checkpoint step is done, just after its rows are
    // visible: wait (bounded) for the last batch's count.
    let counted = std::time::Instant::now();
    let (ca, cb) = loop {
        let (ca, cb) = (
            a.metric("custos_ingest_consumed_total").await?,
            b.metric("custos_ingest_consumed_total").await?,
        );
        if (ca + cb) as u64 >= HALF || counted.elapsed() > Duration::from_secs(30) {
            break (ca, cb);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(ca > 0.0 && cb > 0.0, "both consume: a={ca} b={cb}");
    assert_eq!((ca + cb) as u64, HALF);

    a.kill9()?;
    let second: Vec<Msg> = (HALF..2 * HALF).map(|n| events::bulk(&p, n)).collect();
    produce(&producer, &topics.gateway, None, &second).await?;
    // b takes over a's partitions after the session timeout.
    wait_stored(&topics.input_list(), 2 * HALF, Duration::from_secs(180)).await?;
    assert_exact_set(&topics.input_list(), &p, 2 * HALF).await?;
    // b continued a's chains from their durable heads.
    let (code, report) = verify_chains(&["--topic", &topics.gateway])?;
    anyhow::ensure!(code == 0, "chains after the takeover: {report:#}");
    anyhow::ensure!(
        chained(&report) == 2 * HALF,
        "every record chained: {report:#}"
    );
    let cb_after = b.metric("custos_ingest_consumed_total").await?;
    assert!(
        cb_after - cb >= (HALF / 2) as f64,
        "b consumed a's share too: {cb} -> {cb_after}"
    );
    Ok(())
}
