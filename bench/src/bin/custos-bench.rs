//! `custos-bench`: throughput benchmark of the ingest path against the real dev stack
//! (`scripts/stack up`). One run measures, over the same N realistic FHIR access
//! CloudEvents (`events::bulk`, about 800 bytes each):
//!
//! 1. the **consume-only ceiling**: a plain rdkafka `BaseConsumer` with the ingest's fetch
//!    settings reading all N messages and touching every payload byte, no decode;
//! 2. the **insert-only ceiling**: N `AuditRow`s, built beforehand (untimed) through the real
//!    `custos_schemas::decode` + `RowContext::audit_row`, inserted into
//!    `custos.audit_events` with the writer account in sequential batches of the ingest's
//!    batch size, the way the ingest writer does;
//! 3. **end to end**: the release `custos-ingest run` binary over the topics, timed from
//!    spawn until `count()` of its rows reaches N, with its peak RSS (VmHWM) and a CPU
//!    breakdown per process and per thread.
//!
//! Production of the events is not timed. Everything stays on 127.0.0.1. Only processes
//! this program spawned are signalled (by PID). Prints a summary table and writes a JSON
//! result file. See BENCHMARKS.md.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use custos_integrity::chain;
use custos_schemas::row::RowContext;
use custos_schemas::{decode, AuditRow, DecodeLimits, KafkaPosition, KeyRing};
use custos_tests::{
    admin, brokers, clickhouse_url, events, free_port, http_get, produce, producer, sum_metric,
    tail, workspace, Topics, TEST_KEYS,
};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "custos-bench",
    about = "Custos ingest throughput benchmark (consume ceiling, insert ceiling, end to end)"
)]
struct Args {
    /// Number of events.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Partitions of each input topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Rows per INSERT of the insert-only ceiling (the ingest's CUSTOS_BATCH_MAX_ROWS default).
    #[arg(long, default_value_t = 50_000)]
    batch_rows: usize,
    /// Skip the consume-only ceiling.
    #[arg(long)]
    skip_consume: bool,
    /// Skip the insert-only ceiling.
    #[arg(long)]
    skip_insert: bool,
    /// Skip the end-to-end run of custos-ingest.
    #[arg(long)]
    skip_e2e: bool,
    /// Only time decode + row conversion on one thread (no Kafka, no ClickHouse).
    #[arg(long)]
    decode_only: bool,
    /// Also measure the insert ceiling with the clickhouse crate's schema validation off
    /// (plain RowBinary instead of RowBinaryWithNamesAndTypes); inserts another N rows.
    #[arg(long)]
    insert_no_validation: bool,
    /// Extra environment for custos-ingest, `KEY=VALUE` (repeatable), e.g.
    /// `--ingest-env CUSTOS_BATCH_MAX_ROWS=100000`.
    #[arg(long = "ingest-env", value_parser = parse_kv)]
    ingest_env: Vec<(String, String)>,
    /// The custos-ingest binary (default: target/release/custos-ingest, built first).
    #[arg(long)]
    ingest_bin: Option<PathBuf>,
    /// Do not run `cargo build --release -p custos-ingest` first.
    #[arg(long)]
    no_build: bool,
    /// Where to write the JSON result (default: target/bench/custos-bench-<unix time>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Give up on the end-to-end run after this many seconds.
    #[arg(long, default_value_t = 900)]
    e2e_timeout_secs: u64,
    /// Interval of the end-to-end progress polls, in milliseconds.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// Follow end-to-end progress with `count()` queries on ClickHouse (the rows stored)
    /// instead of the ingest's `custos_ingest_inserted_rows_total` (the rows ClickHouse
    /// acknowledged). A count() scans the `kafka_topic` column of the whole table, so on a
    /// large dev table frequent polls take ClickHouse CPU from the run being measured.
    #[arg(long)]
    poll_count: bool,
    /// Record a `perf record` profile of custos-ingest during the end-to-end run to this file
    /// (profiling only: perf's overhead skews the figures of that run).
    #[arg(long)]
    perf_out: Option<PathBuf>,
    /// Run without the hash chain: CUSTOS_CHAIN=false for the ingest, unchained rows for
    /// the insert ceiling (to measure the chain's cost).
    #[arg(long)]
    no_chain: bool,
    /// Run the ingest without checkpoint signing (by default it signs checkpoints with a
    /// fresh key, as in production).
    #[arg(long)]
    no_checkpoints: bool,
    /// Keep the benchmark's rows in ClickHouse and its topics in Kafka (default: removed).
    #[arg(long)]
    keep: bool,
    /// Before each timed phase, wait up to this many seconds for the machine to be idle
    /// (busy share at most --quiet-pct over 2 s); 0 disables the wait.
    #[arg(long, default_value_t = 30)]
    quiet_wait_secs: u64,
    /// Before the insert and end-to-end phases, wait up to this long for ClickHouse to
    /// finish the merges of custos tables (the previous phase's parts), so that they are
    /// not charged to the phase measured next. 0: do not wait.
    #[arg(long, default_value_t = 180)]
    merge_wait_secs: u64,
    /// Busy share (%) of both cores counted as idle by --quiet-wait-secs.
    #[arg(long, default_value_t = 15.0)]
    quiet_pct: f64,
    /// Free-form label stored in the JSON result.
    #[arg(long, default_value = "")]
    label: String,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// The ingest's consumer settings (the same profile, from `custos-runtime`).
fn ingest_consumer_config(group: &str) -> ClientConfig {
    custos_runtime::kafka::consumer_config(
        &brokers(),
        group,
        "custos-bench",
        custos_runtime::kafka::Fetch::Bulk,
    )
}

// ---------------------------------------------------------------------------------------
// CPU accounting from /proc (no perf needed).

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// (comm, utime + stime in ticks) of a /proc/.../stat file.
fn read_stat(path: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    // Fields after the comm start at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Cumulative CPU ticks of a process (all its threads, living and exited).
fn proc_ticks(pid: u32) -> Option<u64> {
    read_stat(Path::new(&format!("/proc/{pid}/stat"))).map(|(_, t)| t)
}

/// CPU ticks per live thread (tid -> (name, ticks)).
fn thread_ticks(pid: u32) -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(s) = read_stat(&e.path().join("stat")) {
                out.insert(tid, s);
            }
        }
    }
    out
}

/// Thread name with trailing digits and separators removed, so pools group together.
fn thread_group(name: &str) -> String {
    let t = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == ':');
    if t.is_empty() {
        name.to_owned()
    } else {
        t.to_owned()
    }
}

/// CPU seconds per thread group between two snapshots.
fn thread_delta(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
    tck: f64,
) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for (tid, (name, ticks)) in after {
        let base = before.get(tid).map(|(_, t)| *t).unwrap_or(0);
        let d = ticks.saturating_sub(base) as f64 / tck;
        if d > 0.0 {
            *out.entry(thread_group(name)).or_insert(0.0) += d;
        }
    }
    out
}

/// System-wide (busy, total) jiffies from /proc/stat.
fn system_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = text.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The stack's own processes (read from scripts/stack's pid files), observed read-only.
fn stack_pids() -> Vec<(&'static str, u32)> {
    let dir = std::env::var_os("CUSTOS_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".stack"))
        .join("run");
    let mut out = Vec::new();
    for (name, file) in [("kafka", "kafka.pid"), ("clickhouse", "clickhouse.pid")] {
        if let Some(pid) = std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            if proc_ticks(pid).is_some() {
                out.push((name, pid));
            }
        }
    }
    out
}

/// A CPU snapshot of the machine, this process and the stack's processes.
#[allow(clippy::type_complexity)]
struct CpuSnap {
    at: Instant,
    system: (u64, u64),
    procs: Vec<(String, u32, u64)>,
    threads: Vec<(&'static str, u32, HashMap<u32, (String, u64)>)>,
}

impl CpuSnap {
    fn take(extra: &[(&str, u32)]) -> CpuSnap {
        let mut procs = vec![(
            "bench".to_owned(),
            std::process::id(),
            proc_ticks(std::process::id()).unwrap_or(0),
        )];
        for (name, pid) in stack_pids().into_iter().chain(extra.iter().copied()) {
            procs.push((name.to_owned(), pid, proc_ticks(pid).unwrap_or(0)));
        }
        let threads = stack_pids()
            .into_iter()
            .map(|(name, pid)| (name, pid, thread_ticks(pid)))
            .collect();
        CpuSnap {
            at: Instant::now(),
            system: system_ticks(),
            procs,
            threads,
        }
    }

    /// CPU seconds used per process since `self`, the machine's busy share and the CPU used
    /// by processes that are not ours ("other": anything else running on the machine).
    fn since(&self, tck: f64, extra: &[(&str, u32)]) -> Value {
        let now = CpuSnap::take(extra);
        let wall = now.at.duration_since(self.at).as_secs_f64();
        let busy = now.system.0.saturating_sub(self.system.0) as f64 / tck;
        let total = now.system.1.saturating_sub(self.system.1) as f64 / tck;
        let mut per = serde_json::Map::new();
        let mut ours = 0.0;
        for (name, pid, ticks) in &now.procs {
            let base = self
                .procs
                .iter()
                .find(|(_, p, _)| p == pid)
                .map(|(_, _, t)| *t)
                .unwrap_or(0);
            let s = ticks.saturating_sub(base) as f64 / tck;
            ours += s;
            per.insert(name.clone(), json!(round(s, 2)));
        }
        per.insert("other".into(), json!(round((busy - ours).max(0.0), 2)));
        let mut stack = serde_json::Map::new();
        for (name, pid, before) in &self.threads {
            let mut top: Vec<(String, f64)> = thread_delta(before, &thread_ticks(*pid), tck)
                .into_iter()
                .collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1));
            top.truncate(8);
            stack.insert(
                (*name).to_owned(),
                Value::Object(
                    top.into_iter()
                        .map(|(k, v)| (k, json!(round(v, 2))))
                        .collect(),
                ),
            );
        }
        json!({
            "wall_s": round(wall, 3),
            "machine_busy_pct": round(if total > 0.0 { 100.0 * busy / total } else { 0.0 }, 1),
            "cpu_s": Value::Object(per),
            "stack_thread_cpu_s": Value::Object(stack),
        })
    }
}

/// Waits (up to `max`) until the machine is mostly idle over a 2 s window, so a timed phase
/// does not start on top of someone else's build. Returns the last busy share seen (%).
fn wait_quiet(max: Duration, threshold_pct: f64) -> f64 {
    let start = Instant::now();
    loop {
        let a = system_ticks();
        std::thread::sleep(Duration::from_secs(2));
        let b = system_ticks();
        let total = b.1.saturating_sub(a.1).max(1) as f64;
        let busy = 100.0 * b.0.saturating_sub(a.0) as f64 / total;
        if busy <= threshold_pct || start.elapsed() >= max {
            if busy > threshold_pct {
                eprintln!("bench: machine still {busy:.0}% busy after {max:?}; measuring anyway");
            }
            return round(busy, 1);
        }
        eprintln!("bench: machine {busy:.0}% busy (others); waiting for quiet");
    }
}

/// Waits at most `max` until ClickHouse runs no merge of a `custos` table; returns the
/// seconds waited.
async fn wait_merges(max: Duration) -> f64 {
    let start = Instant::now();
    let client = admin();
    while start.elapsed() < max {
        let running = client
            .query("SELECT count() FROM system.merges WHERE database = 'custos'")
            .fetch_one::<u64>()
            .await
            .unwrap_or(0);
        if running == 0 {
            break;
        }
        if start.elapsed() < Duration::from_secs(1) {
            eprintln!("bench: waiting for {running} ClickHouse merge(s) to finish");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if start.elapsed() >= max {
        eprintln!("bench: merges still running after {max:?}; measuring anyway");
    }
    round(start.elapsed().as_secs_f64(), 1)
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs).round()
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------
// Phases.

/// Builds and locates the release ingest binary.
fn ingest_binary(args: &Args) -> Result<PathBuf> {
    if let Some(p) = &args.ingest_bin {
        return Ok(p.clone());
    }
    if !args.no_build {
        eprintln!("bench: cargo build --release -p custos-ingest");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-q",
                "-p",
                "custos-ingest",
                "--bin",
                "custos-ingest",
            ])
            .current_dir(workspace())
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --release -p custos-ingest failed");
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let bin = target.join("release").join("custos-ingest");
    if !bin.exists() {
        bail!("{} not found", bin.display());
    }
    Ok(bin)
}

/// Produces N bulk FHIR access events to the gateway topic (untimed for the figures).
async fn produce_events(topics: &Topics, prefix: &str, n: u64) -> Result<(f64, u64)> {
    let p = producer()?;
    let start = Instant::now();
    let mut bytes = 0u64;
    let chunk = 50_000u64;
    let mut i = 0;
    while i < n {
        let end = (i + chunk).min(n);
        let msgs: Vec<_> = (i..end).map(|k| events::bulk(prefix, k)).collect();
        bytes += msgs.iter().map(|m| m.payload.len() as u64).sum::<u64>();
        produce(&p, &topics.gateway, None, &msgs).await?;
        i = end;
        eprint!("\rbench: produced {i}/{n}");
    }
    eprintln!();
    Ok((start.elapsed().as_secs_f64(), bytes))
}

/// Consume-only ceiling: poll all N messages with the ingest's settings, touching every byte.
fn consume_ceiling(topics: &Topics, n: u64, tck: f64) -> Result<Value> {
    let consumer: BaseConsumer =
        ingest_consumer_config(&format!("{}.consume-ceiling", topics.group)).create()?;
    let inputs = topics.input_list();
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let cpu = CpuSnap::take(&[]);
    let start = Instant::now();
    consumer.subscribe(&refs)?;
    let mut first: Option<Instant> = None;
    let mut count = 0u64;
    let mut bytes = 0u64;
    let mut checksum = 0u64;
    let deadline = start + Duration::from_secs(600);
    while count < n {
        if Instant::now() > deadline {
            bail!("consume ceiling: only {count} of {n} messages after 600 s");
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => eprintln!("bench: consume error: {e}"),
            Some(Ok(m)) => {
                if first.is_none() {
                    first = Some(Instant::now());
                }
                let payload = m.payload().unwrap_or_default();
                bytes += payload.len() as u64;
                checksum = payload
                    .iter()
                    .fold(checksum, |a, b| a.rotate_left(5) ^ u64::from(*b));
                count += 1;
            }
        }
    }
    let done = Instant::now();
    let cpu = cpu.since(tck, &[]);
    std::hint::black_box(checksum);
    consumer.unsubscribe();
    let first = first.unwrap_or(done);
    let total = done.duration_since(start).as_secs_f64();
    let steady = done.duration_since(first).as_secs_f64();
    Ok(json!({
        "messages": count,
        "payload_bytes": bytes,
        "total_s": round(total, 3),
        "first_message_s": round(first.duration_since(start).as_secs_f64(), 3),
        "steady_s": round(steady, 3),
        "events_per_s": rate(n, steady),
        "events_per_s_incl_startup": rate(n, total),
        "mb_per_s": round(bytes as f64 / 1e6 / steady.max(1e-9), 1),
        "cpu": cpu,
    }))
}

/// Builds N rows through the real decode + row conversion, chained per partition like the
/// ingest does unless `chain` is false (untimed for the insert rate).
fn build_rows(
    prefix: &str,
    topic: &str,
    n: u64,
    partitions: i32,
    chain: bool,
) -> Result<(Vec<AuditRow>, f64)> {
    let keys = KeyRing::parse(TEST_KEYS, None)?;
    let ctx = RowContext {
        keys: &keys,
        default_tenant: "default",
    };
    let limits = DecodeLimits::default();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let parts = u64::try_from(partitions.max(1)).unwrap_or(1);
    let mut rows = Vec::with_capacity(usize::try_from(n)?);
    let mut heads: HashMap<i32, Option<chain::Head>> = HashMap::new();
    let mut decode_s = 0.0;
    for k in 0..n {
        let msg = events::bulk(prefix, k);
        let t = Instant::now();
        let event = decode(&msg.payload, &[], &limits)
            .map_err(|e| anyhow::anyhow!("decoding bench event {k}: {e}"))?;
        let pos = KafkaPosition {
            topic: topic.to_owned(),
            partition: i32::try_from(k % parts)?,
            offset: i64::try_from(k / parts)?,
        };
        let partition = pos.partition;
        // As the ingest's consumer does: the event and position move into the row, and the
        // partition's chain head advances in place.
        let mut row = ctx.audit_row_owned(event, pos, now_ms);
        if chain {
            chain::advance(&mut row, heads.entry(partition).or_default());
        }
        rows.push(row);
        decode_s += t.elapsed().as_secs_f64();
    }
    Ok((rows, decode_s))
}

/// Insert-only ceiling: sequential INSERTs of `batch` rows, as the ingest writer does them.
async fn insert_ceiling(
    rows: &[AuditRow],
    batch: usize,
    validation: bool,
    tag: &str,
    tck: f64,
) -> Result<Value> {
    let client = custos_tests::client_as(
        &std::env::var("CUSTOS_CLICKHOUSE_WRITER_USER").unwrap_or_else(|_| "custos_writer".into()),
        &custos_tests::ch_password("writer"),
    )
    .with_database("custos")
    .with_setting("max_execution_time", "30")
    .with_validation(validation)
    .with_setting("log_comment", format!("{tag}-insert"));
    let from_us = unix_micros();
    let cpu = CpuSnap::take(&[]);
    let start = Instant::now();
    let mut per_batch = Vec::new();
    for chunk in rows.chunks(batch.max(1)) {
        let t = Instant::now();
        let mut insert = client.insert::<AuditRow>("audit_events").await?;
        for row in chunk {
            insert.write(row).await?;
        }
        insert.end().await?;
        per_batch.push(t.elapsed().as_secs_f64());
    }
    let total = start.elapsed().as_secs_f64();
    let cpu = cpu.since(tck, &[]);
    let queries = query_cpu(from_us, tag).await;
    let mut sorted = per_batch.clone();
    sorted.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        round(sorted.get(i).copied().unwrap_or(0.0), 3)
    };
    Ok(json!({
        "rows": rows.len(),
        "batch_rows": batch,
        "batches": per_batch.len(),
        "validation": validation,
        "total_s": round(total, 3),
        "rows_per_s": rate(rows.len() as u64, total),
        "batch_s": {"min": pick(0.0), "p50": pick(0.5), "max": pick(1.0)},
        "cpu": cpu,
        "clickhouse_queries": queries,
    }))
}

async fn stored(client: &clickhouse::Client, topics: &[String]) -> Result<u64> {
    Ok(client
        .query("SELECT count() FROM custos.audit_events WHERE kafka_topic IN ?")
        .bind(topics)
        .fetch_one::<u64>()
        .await?)
}

/// Rows the ingest on `port` reports ClickHouse acknowledged.
async fn acknowledged(port: u16) -> Result<u64> {
    let (_, body) = http_get(&format!("http://127.0.0.1:{port}/metrics")).await?;
    Ok(sum_metric(&body, "custos_ingest_inserted_rows_total") as u64)
}

fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct QueryCpu {
    what: String,
    queries: u64,
    cpu_s: f64,
    wall_s: f64,
    written_rows: u64,
}

/// ClickHouse-side CPU (user + system, from system.query_log) of the queries finished since
/// `from_us`: this benchmark's polls and inserts (tagged with `log_comment`), every INSERT
/// of the writer account (the ingest's, plus any other writer on the shared stack), and the
/// rest by user and kind. Background merges are not queries: see `stack_thread_cpu_s`.
async fn query_cpu(from_us: i64, tag: &str) -> Value {
    let client = admin();
    if client.query("SYSTEM FLUSH LOGS").execute().await.is_err() {
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let rows = client
        .query(
            "SELECT multiIf(log_comment = ?, 'bench poll', log_comment = ?, 'bench insert', \
                    query_kind = 'Insert' AND user = 'custos_writer', 'writer insert', \
                    concat(user, ' ', query_kind)) AS what, \
                count() AS queries, \
                sum(ProfileEvents['UserTimeMicroseconds'] + ProfileEvents['SystemTimeMicroseconds']) / 1e6 AS cpu_s, \
                sum(query_duration_ms) / 1e3 AS wall_s, \
                sum(written_rows) AS written_rows \
             FROM system.query_log \
             WHERE type = 'QueryFinish' AND event_time_microseconds >= fromUnixTimestamp64Micro(?) \
             GROUP BY what ORDER BY cpu_s DESC",
        )
        .bind(format!("{tag}-poll"))
        .bind(format!("{tag}-insert"))
        .bind(from_us)
        .fetch_all::<QueryCpu>()
        .await;
    match rows {
        Ok(rows) => Value::Object(
            rows.into_iter()
                .map(|r| {
                    (
                        r.what,
                        json!({"queries": r.queries, "cpu_s": round(r.cpu_s, 2),
                               "wall_s": round(r.wall_s, 2), "written_rows": r.written_rows}),
                    )
                })
                .collect(),
        ),
        Err(e) => json!({"error": e.to_string()}),
    }
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Result<Option<i32>> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s.code().unwrap_or(-1)));
        }
        if start.elapsed() > timeout {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Histogram buckets (`le` -> cumulative count) of a Prometheus metric.
fn buckets(body: &str, name: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}_bucket{{");
    body.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?.to_owned();
            let v = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((le, v))
        })
        .collect()
}

/// Kills the child (SIGKILL) if it is still running when dropped.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// End to end: the release ingest over the topics until N rows are stored.
async fn end_to_end(
    args: &Args,
    bin: &Path,
    topics: &Topics,
    tag: &str,
    tck: f64,
) -> Result<Value> {
    let n = args.events;
    let port = free_port();
    let logs = workspace().join("target").join("bench");
    std::fs::create_dir_all(&logs)?;
    let log = logs.join(format!("{}-ingest.log", topics.group));
    let file = std::fs::File::create(&log)?;
    let mut cmd = Command::new(bin);
    cmd.envs(custos_tests::ch_env());
    cmd.arg("run")
        .env("CUSTOS_KAFKA_BROKERS", brokers())
        .env("CUSTOS_CLICKHOUSE_URL", clickhouse_url())
        .env("CUSTOS_INPUT_TOPICS", topics.inputs())
        .env("CUSTOS_DLQ_TOPIC", &topics.dlq)
        .env("CUSTOS_INGEST_GROUP", &topics.group)
        .env("CUSTOS_PSEUDONYM_KEYS", TEST_KEYS)
        .env("CUSTOS_INGEST_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("CUSTOS_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file));
    let key = logs.join(format!("{}-ck.pem", topics.group));
    if args.no_chain {
        cmd.env("CUSTOS_CHAIN", "false");
    } else if !args.no_checkpoints {
        // Signed checkpoints as in production (a fresh key per run, like the harness).
        let _ = std::fs::remove_file(&key);
        let out = Command::new(bin)
            .arg("keygen")
            .arg("--out")
            .arg(&key)
            .output()?;
        if !out.status.success() {
            bail!("keygen failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        cmd.env("CUSTOS_CHECKPOINT_KEY_FILE", &key)
            .env("CUSTOS_CHECKPOINT_KID", "bench-ck")
            .env("CUSTOS_CHECKPOINT_TOPIC", &topics.checkpoints);
    }
    for (k, v) in &args.ingest_env {
        cmd.env(k, v);
    }
    let inputs = topics.input_list();
    let poller = admin().with_setting("log_comment", format!("{tag}-poll"));
    let from_us = unix_micros();
    let cpu = CpuSnap::take(&[]);
    let start = Instant::now();
    let mut guard = Guard(Some(cmd.spawn().context("spawning custos-ingest")?));
    let pid = guard.0.as_ref().map(Child::id).unwrap_or_default();
    let me = [("ingest", pid)];
    let mut perf = match &args.perf_out {
        Some(out) => Some(Guard(Some(
            Command::new("perf")
                .args(["record", "-F", "999", "-g", "-o"])
                .arg(out)
                .args(["-p", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawning perf")?,
        ))),
        None => None,
    };
    let mut first: Option<(f64, u64)> = None;
    let mut timeline = Vec::new();
    let mut last_mark = 0.0;
    let mut count = 0u64;
    let mut poll_s = Vec::new();
    let deadline = start + Duration::from_secs(args.e2e_timeout_secs);
    while count < n {
        tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
        if let Some(c) = guard.0.as_mut() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "custos-ingest exited early ({status}); log:\n{}",
                    tail(&std::fs::read_to_string(&log).unwrap_or_default(), 30)
                );
            }
        }
        let q = Instant::now();
        count = if args.poll_count {
            stored(&poller, &inputs).await.unwrap_or(count)
        } else {
            acknowledged(port).await.unwrap_or(count)
        };
        poll_s.push(q.elapsed().as_secs_f64());
        let t = start.elapsed().as_secs_f64();
        if count > 0 && first.is_none() {
            first = Some((t, count));
        }
        if t - last_mark >= 1.0 {
            timeline.push(json!([round(t, 1), count]));
            last_mark = t;
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let done = start.elapsed().as_secs_f64();
    // Acknowledged is not yet proven stored: the run is complete when count() shows all
    // the rows (after `done`, so this check is not timed).
    let mut complete = count >= n && args.poll_count;
    while count >= n && !complete && Instant::now() < deadline {
        complete = stored(&poller, &inputs).await? >= n;
        if !complete {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Samples before the shutdown.
    let cpu = cpu.since(tck, &me);
    let hwm_kb = vm_hwm_kb(pid);
    let ingest_threads = thread_delta(&HashMap::new(), &thread_ticks(pid), tck);
    let metrics = http_get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let batch_sum = sum_metric(&metrics, "custos_ingest_batch_seconds_sum");
    let batch_count = sum_metric(&metrics, "custos_ingest_batch_seconds_count");
    let batch_rows_sum = sum_metric(&metrics, "custos_ingest_batch_rows_sum");
    let hist = buckets(&metrics, "custos_ingest_batch_seconds");
    if let Some(p) = perf.as_mut().and_then(|g| g.0.take()) {
        let mut p = p;
        signal(p.id(), "INT")?;
        let _ = wait_exit(&mut p, Duration::from_secs(60));
    }
    let stop = Instant::now();
    let mut child = guard.0.take().context("ingest gone")?;
    signal(pid, "TERM")?;
    let exit = wait_exit(&mut child, Duration::from_secs(60))?;
    if exit.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let shutdown_s = stop.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&key);
    let queries = query_cpu(from_us, tag).await;
    let (t_first, rows_at_first) = first.unwrap_or((done, 0));
    let steady = done - t_first;
    // All rows seen at the first poll: no steady interval to speak of.
    let measurable = complete && rows_at_first < n && steady > 0.0;
    let steady_rate = |k: u64| {
        if measurable {
            json!(rate(k, steady))
        } else {
            Value::Null
        }
    };
    let poll_mean = poll_s.iter().sum::<f64>() / poll_s.len().max(1) as f64;
    Ok(json!({
        "complete": complete,
        "rows": count,
        "ingest_env": args.ingest_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "time_to_first_row_s": round(t_first, 3),
        "rows_at_first_sighting": rows_at_first,
        "total_s": round(done, 3),
        "steady_s": round(steady, 3),
        "events_per_s_steady": steady_rate(n),
        "events_per_s_steady_strict": steady_rate(n.saturating_sub(rows_at_first)),
        "events_per_s_total": if complete { json!(rate(n, done)) } else { Value::Null },
        "progress": if args.poll_count { "count()" } else { "custos_ingest_inserted_rows_total" },
        "count_polls": poll_s.len(),
        "count_poll_mean_s": round(poll_mean, 4),
        "peak_rss_mb": hwm_kb.map(|k| round(k as f64 / 1024.0, 1)),
        "shutdown_s": round(shutdown_s, 3),
        "exit_code": exit,
        "batches": batch_count,
        "batch_rows_mean": round(batch_rows_sum / batch_count.max(1.0), 0),
        "batch_seconds_mean": round(batch_sum / batch_count.max(1.0), 3),
        "batch_seconds_sum": round(batch_sum, 3),
        "batch_seconds_buckets": hist.into_iter().map(|(le, v)| json!([le, v])).collect::<Vec<_>>(),
        "cpu": cpu,
        "clickhouse_queries": queries,
        "ingest_thread_cpu_s": ingest_threads.into_iter().map(|(k, v)| (k, json!(round(v, 2)))).collect::<serde_json::Map<_, _>>(),
        "timeline": timeline,
        "log": log.display().to_string(),
    }))
}

/// Removes the benchmark's rows (admin mutation) and its topics (every topic named
/// `<prefix>.*`, whatever the harness creates).
async fn cleanup(row_topics: &[String], prefix: &str) {
    if !row_topics.is_empty() {
        // Lightweight deletes, waited for, so that no mutation of ours runs into the next
        // measurement.
        let client = admin()
            .with_setting("lightweight_deletes_sync", "2")
            .with_setting("mutations_sync", "2");
        for table in ["custos.audit_events", "custos.chain_checkpoints"] {
            if let Err(e) = client
                .query(&format!("DELETE FROM {table} WHERE kafka_topic IN ?"))
                .bind(row_topics)
                .execute()
                .await
            {
                eprintln!("bench: cleanup of {table} failed: {e}");
            }
        }
    }
    let own = format!("{prefix}.");
    let names: Vec<String> = match ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create::<BaseConsumer>()
        .and_then(|c| c.fetch_metadata(None, Duration::from_secs(10)))
    {
        Ok(md) => md
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|n| n.starts_with(&own))
            .collect(),
        Err(e) => {
            eprintln!("bench: listing topics failed: {e}");
            return;
        }
    };
    let client: Result<AdminClient<DefaultClientContext>, _> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create();
    if let Ok(client) = client {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        if let Err(e) = client.delete_topics(&refs, &AdminOptions::new()).await {
            eprintln!("bench: deleting topics failed: {e}");
        }
    }
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_gib": round(mem_kb as f64 / 1024.0 / 1024.0, 1),
        "loadavg_at_start": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}

fn fmt_rate(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{:>9.0}", x))
        .unwrap_or_else(|| "        -".into())
}

fn summary(result: &Value) {
    let n = &result["events"];
    println!();
    println!(
        "custos-bench: {} events, {} partitions",
        n, result["partitions"]
    );
    println!("{:<44} {:>9} {:>9}", "measure", "events/s", "seconds");
    println!("{}", "-".repeat(64));
    let c = &result["consume_ceiling"];
    if !c.is_null() {
        println!(
            "{:<44} {} {:>9}",
            "consume-only ceiling (steady)",
            fmt_rate(&c["events_per_s"]),
            c["steady_s"]
        );
        println!(
            "{:<44} {} {:>9}",
            "consume-only incl. group join",
            fmt_rate(&c["events_per_s_incl_startup"]),
            c["total_s"]
        );
    }
    let i = &result["insert_ceiling"];
    if !i.is_null() {
        println!(
            "{:<44} {} {:>9}",
            format!("insert-only ceiling ({} rows/INSERT)", i["batch_rows"]),
            fmt_rate(&i["rows_per_s"]),
            i["total_s"]
        );
        println!(
            "{:<44} {:>9} {:>9}",
            "  INSERT seconds min/p50/max",
            "",
            format!(
                "{}/{}/{}",
                i["batch_s"]["min"], i["batch_s"]["p50"], i["batch_s"]["max"]
            )
        );
    }
    let nv = &result["insert_ceiling_no_validation"];
    if !nv.is_null() {
        println!(
            "{:<44} {} {:>9}",
            "insert-only, validation off",
            fmt_rate(&nv["rows_per_s"]),
            nv["total_s"]
        );
    }
    let d = &result["decode"];
    if !d.is_null() {
        println!(
            "{:<44} {} {:>9}",
            "decode+pseudonymize+row, 1 thread",
            fmt_rate(&d["events_per_s"]),
            d["seconds"]
        );
    }
    let e = &result["e2e"];
    if !e.is_null() {
        println!(
            "{:<44} {} {:>9}",
            "end to end, N/(done - first row)",
            fmt_rate(&e["events_per_s_steady"]),
            e["steady_s"]
        );
        println!(
            "{:<44} {} {:>9}",
            "end to end, strict (rows after first seen)",
            fmt_rate(&e["events_per_s_steady_strict"]),
            e["steady_s"]
        );
        println!(
            "{:<44} {} {:>9}",
            "end to end, N/total (from spawn)",
            fmt_rate(&e["events_per_s_total"]),
            e["total_s"]
        );
        println!(
            "{:<44} {:>9} {:>9}",
            "  time to first row", "", e["time_to_first_row_s"]
        );
        println!(
            "{:<44} {:>9}",
            "  peak RSS of custos-ingest (MB)", e["peak_rss_mb"]
        );
        println!("  ingest threads CPU s:   {}", e["ingest_thread_cpu_s"]);
    }
    for (name, key) in [
        ("consume", "consume_ceiling"),
        ("insert", "insert_ceiling"),
        ("e2e", "e2e"),
    ] {
        let c = &result[key]["cpu"];
        if !c.is_null() {
            println!(
                "  {name:<8} machine busy {:>5}%, busy before start {:>5}%, CPU s {}",
                c["machine_busy_pct"], result[key]["busy_pct_before"], c["cpu_s"]
            );
        }
    }
    let c = &result["cpu_per_event_us"];
    if !c.is_null() {
        println!(
            "  CPU us/event: ingest {}, ClickHouse {} (INSERT queries {}, merges {}), Kafka {}; \
             total {} -> projected max {} events/s on all cores (excluded: count() polls {} us)",
            c["ingest"],
            c["clickhouse"],
            c["clickhouse_insert_queries"],
            c["clickhouse_merges"],
            c["kafka"],
            c["pipeline_total"],
            c["projected_max_events_per_s"],
            c["excluded_bench_count_polls"]
        );
    }
    let r = &result["ratio_to_lower_ceiling"];
    if !r.is_null() {
        println!("{:<44} {:>9}", "e2e steady / lower ceiling", r);
    }
    println!(
        "{:<44} {:>9}",
        "target >= 100k/s end to end met", result["targets"]["e2e_100k"]
    );
    println!(
        "{:<44} {:>9}",
        "target >= 70% of lower ceiling met", result["targets"]["ratio_70pct"]
    );
    println!("JSON: {}", result["json_path"].as_str().unwrap_or_default());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tck = clk_tck();
    if args.decode_only {
        let prefix = format!("decode{}", std::process::id());
        let (_, secs) = build_rows(
            &prefix,
            "decode-only",
            args.events,
            args.partitions,
            !args.no_chain,
        )?;
        let n = args.events;
        println!(
            "custos-bench: decode + pseudonymize{} + AuditRow, 1 thread: {} events in {:.2} s = {} events/s ({:.2} us/event)",
            if args.no_chain { "" } else { " + chain" },
            n,
            secs,
            rate(n, secs),
            secs * 1e6 / n.max(1) as f64
        );
        return Ok(());
    }
    let bin = if args.skip_e2e {
        None
    } else {
        Some(ingest_binary(&args)?)
    };
    if let Some(bin) = &bin {
        let out = Command::new(bin)
            .envs(custos_tests::ch_env())
            .arg("migrate")
            .env("CUSTOS_CLICKHOUSE_URL", clickhouse_url())
            .output()?;
        if !out.status.success() {
            // The tables the benchmark writes exist from earlier migrations; a pending
            // migration that fails (someone's work in progress) need not stop it.
            eprintln!(
                "bench: WARNING: `custos-ingest migrate` failed; continuing with the schema as is: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .find(|l| l.contains("Error"))
                    .unwrap_or_default()
            );
        }
    }
    let n = args.events;
    let mut result = json!({
        "label": args.label,
        "started_unix": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "events": n,
        "partitions": args.partitions,
        "machine": machine(),
        "git_head": Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(workspace()).output().ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        "ingest_binary": bin.as_ref().map(|b| b.display().to_string()),
        "ingest_binary_sha256": bin.as_ref().and_then(|b| {
            Command::new("sha256sum").arg(b).output().ok().and_then(|o| {
                String::from_utf8_lossy(&o.stdout).split_whitespace().next().map(str::to_owned)
            })
        }),
        "chain": !args.no_chain,
        "checkpoints": !args.no_chain && !args.no_checkpoints,
        "ingest_env": args.ingest_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
    });
    let topics = Topics::create("bench", args.partitions).await?;
    let prefix = topics.group.trim_end_matches(".group").to_owned();
    eprintln!("bench: topics {}.*", prefix);
    let (produce_s, bytes) = produce_events(&topics, &prefix, n).await?;
    result["produce"] = json!({
        "seconds": round(produce_s, 2),
        "mean_event_bytes": round(bytes as f64 / n.max(1) as f64, 0),
        "note": "not timed for any figure",
    });
    let mut row_topics = Vec::new();

    let quiet = |args: &Args| {
        if args.quiet_wait_secs == 0 {
            Value::Null
        } else {
            json!(wait_quiet(
                Duration::from_secs(args.quiet_wait_secs),
                args.quiet_pct
            ))
        }
    };
    if !args.skip_consume {
        let busy = quiet(&args);
        eprintln!("bench: consume-only ceiling");
        result["consume_ceiling"] = consume_ceiling(&topics, n, tck)?;
        result["consume_ceiling"]["busy_pct_before"] = busy;
    }
    if !args.skip_insert {
        let topic = format!("{prefix}.insert-ceiling");
        eprintln!(
            "bench: building {n} rows (decode + row conversion, untimed for the insert rate)"
        );
        let (rows, decode_s) = build_rows(
            &format!("{prefix}-ins"),
            &topic,
            n,
            args.partitions,
            !args.no_chain,
        )?;
        result["decode"] = json!({
            "seconds": round(decode_s, 2),
            "events_per_s": rate(n, decode_s),
            "note": "decode + pseudonymize + AuditRow on one thread (what the consumer thread does per message)",
        });
        row_topics.push(topic);
        let merges_wait = wait_merges(Duration::from_secs(args.merge_wait_secs)).await;
        let busy = quiet(&args);
        eprintln!("bench: insert-only ceiling");
        result["insert_ceiling"] =
            insert_ceiling(&rows, args.batch_rows, true, &prefix, tck).await?;
        result["insert_ceiling"]["busy_pct_before"] = busy;
        result["insert_ceiling"]["merges_wait_s"] = json!(merges_wait);
        drop(rows);
        if args.insert_no_validation {
            let topic = format!("{prefix}.insert-ceiling-nv");
            let (rows, _) = build_rows(
                &format!("{prefix}-insnv"),
                &topic,
                n,
                args.partitions,
                !args.no_chain,
            )?;
            row_topics.push(topic);
            let busy = quiet(&args);
            eprintln!("bench: insert-only ceiling, validation off");
            result["insert_ceiling_no_validation"] =
                insert_ceiling(&rows, args.batch_rows, false, &format!("{prefix}-nv"), tck).await?;
            result["insert_ceiling_no_validation"]["busy_pct_before"] = busy;
        }
    }
    if let Some(bin) = &bin {
        eprintln!("bench: end to end ({})", bin.display());
        row_topics.extend(topics.input_list());
        let merges_wait = wait_merges(Duration::from_secs(args.merge_wait_secs)).await;
        let busy = quiet(&args);
        let e2e = end_to_end(&args, bin, &topics, &prefix, tck).await;
        match e2e {
            Ok(v) => {
                result["e2e"] = v;
                result["e2e"]["busy_pct_before"] = busy;
                result["e2e"]["merges_wait_s"] = json!(merges_wait);
            }
            Err(e) => {
                if !args.keep {
                    cleanup(&row_topics, &prefix).await;
                }
                return Err(e);
            }
        }
    }

    // CPU cost per event of each part during the end-to-end run: unlike the wall-clock
    // rates, it hardly depends on what else runs on the machine. ClickHouse's process CPU
    // also serves other clients of the shared stack, so its share is taken from
    // system.query_log (the writer's INSERTs, per written row) plus the merge threads.
    // The projection assumes the machine serves only this pipeline with every core busy.
    if !result["e2e"].is_null() {
        let e = &result["e2e"];
        let cpu = |k: &str| e["cpu"]["cpu_s"][k].as_f64().unwrap_or(0.0);
        let q = |k: &str, f: &str| e["clickhouse_queries"][k][f].as_f64().unwrap_or(0.0);
        let written = q("writer insert", "written_rows").max(1.0);
        let insert_us = q("writer insert", "cpu_s") * 1e6 / written;
        let merges = e["cpu"]["stack_thread_cpu_s"]["clickhouse"]["MergeMutate"]
            .as_f64()
            .unwrap_or(0.0);
        let per = |x: f64| round(x * 1e6 / n.max(1) as f64, 1);
        let clickhouse_us = insert_us + merges * 1e6 / n.max(1) as f64;
        let total_us = (cpu("ingest") + cpu("kafka")) * 1e6 / n.max(1) as f64 + clickhouse_us;
        let cores = result["machine"]["nproc"].as_f64().unwrap_or(1.0);
        let others_queries: f64 = e["clickhouse_queries"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| *k != "writer insert" && *k != "bench poll")
                    .filter_map(|(_, v)| v["cpu_s"].as_f64())
                    .sum()
            })
            .unwrap_or(0.0);
        result["cpu_per_event_us"] = json!({
            "ingest": per(cpu("ingest")),
            "clickhouse": round(clickhouse_us, 1),
            "clickhouse_insert_queries": round(insert_us, 1),
            "clickhouse_merges": per(merges),
            "kafka": per(cpu("kafka")),
            "pipeline_total": round(total_us, 1),
            "projected_max_events_per_s": if total_us > 0.0 {
                json!((cores * 1e6 / total_us).round())
            } else {
                Value::Null
            },
            "excluded_bench_count_polls": per(q("bench poll", "cpu_s")),
            "excluded_other_clickhouse_queries_cpu_s": round(others_queries, 2),
            "writer_rows_written_in_window": written,
        });
    }
    let consume = result["consume_ceiling"]["events_per_s"].as_f64();
    let insert = result["insert_ceiling"]["rows_per_s"].as_f64();
    let lower = match (consume, insert) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let e2e = result["e2e"]["events_per_s_steady"].as_f64();
    if let (Some(lower), Some(e2e)) = (lower, e2e) {
        result["lower_ceiling"] = json!(lower);
        result["ratio_to_lower_ceiling"] = json!(round(e2e / lower, 3));
    }
    result["targets"] = json!({
        "e2e_100k": e2e.map(|e| e >= 100_000.0),
        "ratio_70pct": result["ratio_to_lower_ceiling"].as_f64().map(|r| r >= 0.7),
    });
    let path = args.json.clone().unwrap_or_else(|| {
        workspace().join("target").join("bench").join(format!(
            "custos-bench-{}.json",
            result["started_unix"].as_u64().unwrap_or(0)
        ))
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    result["json_path"] = json!(path.display().to_string());
    std::fs::write(&path, serde_json::to_vec_pretty(&result)?)?;
    summary(&result);
    if !args.keep {
        eprintln!("bench: removing the benchmark's rows and topics (--keep to keep them)");
        cleanup(&row_topics, &prefix).await;
    }
    Ok(())
}
