//! `custos-feed-bench`: throughput of the FHIR audit feed (issue 15 item 6).
//!
//! 1. Creates a topic of its own (`--partitions`, default 4) on the dev stack's Kafka.
//! 2. Starts the release `custos-feed` on loopback, writing to that topic, with bearer tokens
//!    checked against a JWKS served by this process (a token with the `audit_source` role).
//! 3. Builds, untimed, a pool of batch Bundles of `--bundle` (100) IHE BALP AuditEvents made
//!    from the schema fixtures (`schemas/tests/fixtures/fhir/`: read, search, create, update,
//!    delete, denied read, break-the-glass read), each with its own id, sent as compact JSON.
//! 4. For each `--clients` level, posts `--events` events in Bundles from that many concurrent
//!    clients (each Bundle answered only after the broker acknowledged every entry) and
//!    reports events/s, request latency, and CPU seconds per 1,000 events of the feed, of
//!    Kafka and of this process (the clients), from /proc.
//!
//! At the end it checks that the topic's high watermark equals every event sent, and deletes
//! the topic (`--keep` keeps it).
//!
//! ```sh
//! cargo build --release -p custos-feed -p custos-bench --bin custos-feed --bin custos-feed-bench
//! target/release/custos-feed-bench --feed-bin target/release/custos-feed
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use custos_tests::{brokers, free_port, workspace};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use serde_json::{json, Value};

const AUDIENCE: &str = "custos-feed";
const FIXTURES: [&str; 7] = [
    "patient_read.json",
    "patient_search.json",
    "patient_create.json",
    "patient_update.json",
    "patient_delete.json",
    "read_denied.json",
    "btg_read.json",
];

#[derive(Parser)]
#[command(
    name = "custos-feed-bench",
    about = "Custos FHIR audit feed throughput (batch Bundles of AuditEvents)"
)]
struct Args {
    /// AuditEvents per concurrency level.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// AuditEvents per batch Bundle.
    #[arg(long, default_value_t = 100)]
    bundle: usize,
    /// Concurrent clients, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    clients: Vec<usize>,
    /// Distinct Bundles built before the timer and posted round-robin.
    #[arg(long, default_value_t = 64)]
    pool: usize,
    /// Partitions of the bench topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Rounds of each concurrency level (the levels alternate between rounds).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Keep the bench topic afterwards.
    #[arg(long)]
    keep: bool,
    /// Extra environment of the feed, KEY=VALUE (repeatable).
    #[arg(long = "feed-env")]
    feed_env: Vec<String>,
    /// A `custos-feed` binary (default: built with `cargo build --release`).
    #[arg(long)]
    feed_bin: Option<PathBuf>,
}

// ------------------------------------------------------------------ the feed under test

/// A client-credentials-like token of an audit source: `audit_source` role, no user.
fn bearer(issuer: &str) -> Result<String> {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": issuer, "aud": AUDIENCE, "sub": "feed-bench", "azp": "feed-bench",
        "iat": now, "nbf": now - 5, "exp": now + 7200, "roles": ["audit_source"]});
    custos_bench::sign(&claims)
}

/// The spawned `custos-feed`, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_feed(args: &Args, issuer: &str, topic: &str) -> Result<(Server, String)> {
    let addr = format!("127.0.0.1:{}", free_port());
    let log = workspace().join("target").join("feed-bench.log");
    let file = std::fs::File::create(&log)?;
    let mut cmd = Command::new(custos_bench::release_binary(
        "custos-feed",
        args.feed_bin.as_ref(),
    )?);
    cmd.env("CUSTOS_FEED_HTTP_ADDR", &addr)
        // Its own /metrics port: a dev stack's custos-feed holds the default one.
        .env(
            "CUSTOS_FEED_ADMIN_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("CUSTOS_FEED_PUBLIC_URL", format!("http://{addr}/fhir"))
        .env("CUSTOS_FEED_TOPIC", topic)
        .env("CUSTOS_KAFKA_BROKERS", brokers())
        .env("CUSTOS_OIDC_ISSUER", issuer)
        .env("CUSTOS_OIDC_JWKS_URL", format!("{issuer}/jwks"))
        .env("CUSTOS_OIDC_AUDIENCE", AUDIENCE)
        .env("CUSTOS_LOG", "warn")
        .env("NO_COLOR", "1");
    for kv in &args.feed_env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--feed-env {kv}: expected KEY=VALUE"))?;
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .spawn()
        .context("spawning custos-feed")?;
    let server = Server(child);
    let base = format!("http://{addr}");
    custos_bench::wait_ready(&base, "custos-feed", &log).await?;
    Ok((server, base))
}

// ------------------------------------------------------------------ topic and payloads

async fn create_topic(name: &str, partitions: i32) -> Result<()> {
    custos_tests::create_topics(&[(name, partitions)]).await
}

async fn delete_topic(name: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()?;
    for r in admin.delete_topics(&[name], &AdminOptions::new()).await? {
        if let Err((n, code)) = r {
            bail!("deleting topic {n}: {code:?}");
        }
    }
    Ok(())
}

fn load_fixtures() -> Result<Vec<Value>> {
    let dir = workspace().join("schemas/tests/fixtures/fhir");
    FIXTURES
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(dir.join(f)).with_context(|| f.to_string())?;
            serde_json::from_str(&text).with_context(|| f.to_string())
        })
        .collect()
}

/// `pool` batch Bundles of `size` AuditEvents each, compact JSON, every event with its
/// own id; returns them with the mean size of one event in bytes. The bodies live as long as
/// the program, so posting one copies nothing.
fn bundles(fixtures: &[Value], pool: usize, size: usize) -> Result<(Vec<&'static [u8]>, f64)> {
    let tag = std::process::id();
    let mut out = Vec::with_capacity(pool);
    let mut event_bytes = 0usize;
    for b in 0..pool {
        let mut entry = Vec::with_capacity(size);
        for i in 0..size {
            let mut ev = fixtures[(b * size + i) % fixtures.len()].clone();
            ev["id"] = json!(format!("feed-bench-{tag}-{b}-{i}"));
            event_bytes += serde_json::to_vec(&ev)?.len();
            entry.push(json!({"resource": ev, "request": {"method": "POST", "url": "AuditEvent"}}));
        }
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": entry});
        out.push(&*Box::leak(serde_json::to_vec(&bundle)?.into_boxed_slice()));
    }
    Ok((out, event_bytes as f64 / (pool * size).max(1) as f64))
}

// ------------------------------------------------------------------ CPU from /proc

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in ticks.
fn proc_ticks(pid: u32) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(close) = text.rfind(')') else {
        return 0;
    };
    let f: Vec<&str> = text[close + 2..].split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    t(11) + t(12)
}

/// System-wide (busy, total) ticks from /proc/stat.
fn system_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Kafka's process id from the stack's pid file, if it runs.
fn kafka_pid() -> Option<u32> {
    let dir = std::env::var_os("CUSTOS_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".stack"));
    std::fs::read_to_string(Path::new(&dir).join("run").join("kafka.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------------ measuring

struct Ctx {
    http: reqwest::Client,
    url: String,
    auth: String,
    bodies: Vec<&'static [u8]>,
}

impl Ctx {
    async fn post(&self, i: usize) -> Result<()> {
        let resp = self
            .http
            .post(&self.url)
            .header("authorization", &self.auth)
            .header("content-type", "application/fhir+json")
            .body(self.bodies[i % self.bodies.len()])
            .send()
            .await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if status != reqwest::StatusCode::OK {
            bail!(
                "feed answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(400)])
            );
        }
        Ok(())
    }
}

struct Cell {
    events: usize,
    wall: f64,
    p50: f64,
    p99: f64,
    feed_cpu: f64,
    kafka_cpu: f64,
    bench_cpu: f64,
    busy_pct: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// `requests` Bundles split over `clients` concurrent workers.
async fn run(ctx: Arc<Ctx>, clients: usize, requests: usize, feed_pid: u32) -> Result<Cell> {
    let tck = clk_tck();
    let kafka = kafka_pid();
    let me = std::process::id();
    let (feed0, kafka0, me0, sys0) = (
        proc_ticks(feed_pid),
        kafka.map_or(0, proc_ticks),
        proc_ticks(me),
        system_ticks(),
    );
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..clients {
        let ctx = ctx.clone();
        let n = requests / clients + usize::from(w < requests % clients);
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for k in 0..n {
                let t = Instant::now();
                ctx.post(w + k * clients).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::with_capacity(requests);
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    let wall = started.elapsed().as_secs_f64();
    let sys1 = system_ticks();
    all.sort_by(f64::total_cmp);
    let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / tck;
    Ok(Cell {
        events: 0,
        wall,
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        feed_cpu: secs(feed0, proc_ticks(feed_pid)),
        kafka_cpu: kafka.map_or(0.0, |p| secs(kafka0, proc_ticks(p))),
        bench_cpu: secs(me0, proc_ticks(me)),
        busy_pct: 100.0 * (sys1.0 - sys0.0) as f64 / (sys1.1 - sys0.1).max(1) as f64,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.bundle == 0 || args.events < args.bundle || args.pool == 0 {
        bail!("need --bundle > 0, --events >= --bundle and --pool > 0");
    }
    let topic = custos_tests::unique("feed-bench");
    create_topic(&topic, args.partitions).await?;
    let result = bench(&args, &topic).await;
    if !args.keep {
        if let Err(e) = delete_topic(&topic).await {
            eprintln!("could not delete topic {topic}: {e:#}");
        }
    }
    result
}

async fn bench(args: &Args, topic: &str) -> Result<()> {
    let issuer = custos_bench::jwks_server().await?;
    let (server, base) = start_feed(args, &issuer, topic).await?;
    let feed_pid = server.0.id();
    let (bodies, event_bytes) = bundles(&load_fixtures()?, args.pool, args.bundle)?;
    let ctx = Arc::new(Ctx {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?,
        url: format!("{base}/fhir"),
        auth: format!("Bearer {}", bearer(&issuer)?),
        bodies,
    });
    let requests = args.events / args.bundle;
    let events = requests * args.bundle;

    // Warm-up: connections, JWKS, producer metadata; also proves the Bundles are accepted.
    let mut sent = run(ctx.clone(), 4, 40, feed_pid).await.map(|_| 40)?;

    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "\nfeed: {events} AuditEvents per cell in batch Bundles of {} ({:.0} bytes per event, compact JSON), topic of {} partitions, {cpus} CPUs, load average {}\n",
        args.bundle, event_bytes, args.partitions, load_average()
    );
    println!("| clients | events/s | Bundles/s | request p50 ms | request p99 ms | feed CPU ms / 1k ev | Kafka CPU ms / 1k ev | clients CPU ms / 1k ev | machine busy % |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for _ in 0..args.rounds.max(1) {
        for &clients in &args.clients {
            let clients = clients.max(1);
            let mut c = run(ctx.clone(), clients, requests, feed_pid).await?;
            c.events = events;
            sent += requests;
            let per_k = |s: f64| s * 1000.0 * 1000.0 / c.events as f64;
            println!(
                "| {clients} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0} |",
                c.events as f64 / c.wall,
                requests as f64 / c.wall,
                c.p50,
                c.p99,
                per_k(c.feed_cpu),
                per_k(c.kafka_cpu),
                per_k(c.bench_cpu),
                c.busy_pct
            );
        }
    }
    let expected = i64::try_from(sent * args.bundle)?;
    let have = custos_tests::high_watermark(topic)?;
    println!("\ntopic {topic}: {have} records, {expected} events sent");
    if have != expected {
        bail!("the topic holds {have} records, {expected} were acknowledged");
    }
    drop(server);
    Ok(())
}
