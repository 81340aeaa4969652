//! Harness for the end-to-end tests: talks to the real Kafka and ClickHouse started by
//! `scripts/stack up`, creates per-test topics and consumer groups, spawns the real
//! `custos-ingest` binary, and generates events in every accepted source format.
//!
//! Every test gets its own topics (`t-<name>-<nonce>.*`), so tests can share one stack;
//! rows are told apart by their `kafka_topic` column.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

pub mod events;

pub use custos_sim::{produce, Msg};

/// Kafka bootstrap servers of the test stack.
pub fn brokers() -> String {
    std::env::var("CUSTOS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// ClickHouse HTTP URL of the test stack.
pub fn clickhouse_url() -> String {
    std::env::var("CUSTOS_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

/// Pseudonymization keys used by the tests (test-only material).
pub const TEST_KEYS: &str = "t1=5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e,t2=0ddba11c0ddba11c0ddba11c0ddba11c0ddba11c0ddba11c0ddba11c0ddba11c";

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The password of ClickHouse account `custos_<account>` (`admin`, `writer`, `reader`,
/// `query`, `consent`): `$CUSTOS_CH_<ACCOUNT>_PASSWORD` (`scripts/stack env` prints them), else
/// the development secret `scripts/stack` generated under `.stack/secrets`. No password is
/// built in anywhere.
pub fn ch_password(account: &str) -> String {
    let var = format!("CUSTOS_CH_{}_PASSWORD", account.to_ascii_uppercase());
    if let Ok(v) = std::env::var(&var) {
        return v;
    }
    let dir = std::env::var_os("CUSTOS_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".stack"));
    let file = dir.join("secrets").join(format!("ch_{account}_password"));
    std::fs::read_to_string(&file)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| {
            panic!("no ClickHouse password for custos_{account}: set {var} or run scripts/stack up")
        })
}

/// The environment a Custos service needs to reach ClickHouse with the dev accounts.
pub fn ch_env() -> Vec<(&'static str, String)> {
    vec![
        ("CUSTOS_CLICKHOUSE_ADMIN_PASSWORD", ch_password("admin")),
        ("CUSTOS_CLICKHOUSE_WRITER_PASSWORD", ch_password("writer")),
        ("CUSTOS_CLICKHOUSE_READER_PASSWORD", ch_password("reader")),
        ("CUSTOS_QUERY_READER_PASSWORD", ch_password("reader")),
        ("CUSTOS_QUERY_AUDIT_PASSWORD", ch_password("query")),
        ("CUSTOS_CONSENT_CLICKHOUSE_PASSWORD", ch_password("consent")),
    ]
}

/// A ClickHouse client with the admin account (tests read every table, and tamper).
pub fn admin() -> clickhouse::Client {
    client_as("custos_admin", &ch_password("admin"))
}

/// A ClickHouse client with account `custos_<account>` and its dev password.
pub fn account(account: &str) -> clickhouse::Client {
    client_as(&format!("custos_{account}"), &ch_password(account))
}

/// A ClickHouse client with the given account.
pub fn client_as(user: &str, password: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_user(user)
        .with_password(password)
}

/// A unique, valid topic prefix for one test.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("t-{name}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Creates topics (name, partitions) and waits until they exist.
pub async fn create_topics(topics: &[(&str, i32)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in results {
        if let Err((name, code)) = r {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                bail!("creating topic {name}: {code:?}");
            }
        }
    }
    Ok(())
}

/// Topics of one test: three inputs and a DLQ.
#[derive(Debug, Clone)]
pub struct Topics {
    /// AS events.
    pub as_events: String,
    /// Gateway events.
    pub gateway: String,
    /// Consent events.
    pub consent: String,
    /// Dead-letter queue.
    pub dlq: String,
    /// Signed chain checkpoints.
    pub checkpoints: String,
    /// Consumer group.
    pub group: String,
}

impl Topics {
    /// Creates a fresh set of topics with `partitions` partitions each (DLQ: 1).
    pub async fn create(name: &str, partitions: i32) -> Result<Topics> {
        let p = unique(name);
        let t = Topics {
            as_events: format!("{p}.as-events"),
            gateway: format!("{p}.gateway-events"),
            consent: format!("{p}.consent-events"),
            dlq: format!("{p}.dlq"),
            checkpoints: format!("{p}.checkpoints"),
            group: format!("{p}.group"),
        };
        create_topics(&[
            (&t.as_events, partitions),
            (&t.gateway, partitions),
            (&t.consent, partitions),
            (&t.dlq, 1),
            (&t.checkpoints, 1),
        ])
        .await?;
        Ok(t)
    }

    /// The input topics, comma separated.
    pub fn inputs(&self) -> String {
        format!("{},{},{}", self.as_events, self.gateway, self.consent)
    }

    /// The input topics.
    pub fn input_list(&self) -> Vec<String> {
        vec![
            self.as_events.clone(),
            self.gateway.clone(),
            self.consent.clone(),
        ]
    }
}

/// A producer for the test stack's brokers ([`custos_sim::producer`]: acks=all, fast batching).
pub fn producer() -> Result<FutureProducer> {
    Ok(custos_sim::producer(&brokers())?)
}

/// Path of binary `bin` of workspace package `package`, built in the debug profile once per
/// test process (the services the tests spawn, the simulator).
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(bin) {
        return path.clone();
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", package, "--bin", bin])
        .current_dir(workspace())
        .status()
        .expect("cargo build");
    assert!(status.success(), "building {bin} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let path = target.join("debug").join(bin);
    built.insert(bin.to_owned(), path.clone());
    path
}

/// Path of the built ingest binary (built once per test process).
pub fn ingest_binary() -> PathBuf {
    workspace_binary("custos-ingest", "custos-ingest")
}

/// SIGTERMs `child` and waits (up to `timeout`) for its exit code; SIGKILLs it after that.
/// `what` names the process in the error.
pub fn terminate_child(mut child: Child, what: &str, timeout: Duration) -> Result<i32> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -TERM {what} failed");
    }
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code().unwrap_or(-1));
        }
        if start.elapsed() > timeout {
            child.kill()?;
            child.wait()?;
            bail!("{what} did not exit within {timeout:?} after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A checkpoint signing key for this test process (made by `custos-ingest keygen`).
pub fn checkpoint_key() -> PathBuf {
    static KEY: OnceLock<PathBuf> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = workspace().join("target").join("e2e-keys");
        std::fs::create_dir_all(&dir).expect("key dir");
        let path = dir.join(format!("ck-{}.pem", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let status = Command::new(ingest_binary())
            .envs(ch_env())
            .args(["keygen", "--out"])
            .arg(&path)
            .status()
            .expect("keygen");
        assert!(status.success(), "keygen failed");
        path
    })
    .clone()
}

/// The JWKS of [`checkpoint_key`], written to a file; returns its path.
pub fn checkpoint_jwks() -> PathBuf {
    let key = checkpoint_key();
    let out = Command::new(ingest_binary())
        .envs(ch_env())
        .args(["jwks", "--kid", "test-ck", "--key-file"])
        .arg(&key)
        .output()
        .expect("jwks");
    assert!(out.status.success(), "jwks failed");
    let path = key.with_extension("jwks.json");
    std::fs::write(&path, &out.stdout).expect("write jwks");
    path
}

/// Runs `custos-ingest verify` with extra arguments; returns (exit code, JSON report).
pub fn verify_chains(args: &[&str]) -> Result<(i32, serde_json::Value)> {
    let out = Command::new(ingest_binary())
        .envs(ch_env())
        .arg("verify")
        .arg("--jwks")
        .arg(checkpoint_jwks())
        .args(args)
        .env("CUSTOS_CLICKHOUSE_URL", clickhouse_url())
        .output()?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "verify printed no report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status.code().unwrap_or(-1), report))
}

/// The (kind, position) of each finding of every chain of a `custos-ingest verify`
/// report: `list` names the chains' array of findings (`findings`,
/// `checkpoint_findings`), `position` the finding's offset field (`offset`, `last_offset`).
pub fn verify_findings(
    report: &serde_json::Value,
    list: &str,
    position: &str,
) -> Vec<(String, i64)> {
    report["chains"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c[list].as_array().cloned().unwrap_or_default())
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or_default().to_owned(),
                f[position].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Spawns a Custos program: the dev accounts' ClickHouse passwords ([`ch_env`]) and colours
/// off before `cmd`'s own environment, `extra` after it (overrides); stdout and stderr go to
/// `target/e2e-logs/<name>.log`. Returns the process and its log file.
pub fn spawn_logged(
    mut cmd: Command,
    name: &str,
    extra: &[(&str, &str)],
) -> Result<(Child, PathBuf)> {
    let logs = workspace().join("target").join("e2e-logs");
    std::fs::create_dir_all(&logs)?;
    let log = logs.join(format!("{name}.log"));
    let file = std::fs::File::create(&log)?;
    for (k, v) in ch_env() {
        if cmd.get_envs().all(|(set, _)| set != k) {
            cmd.env(k, v);
        }
    }
    cmd.env("NO_COLOR", "1")
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file));
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd.spawn().with_context(|| format!("spawning {program}"))?;
    Ok((child, log))
}

/// A running `custos-ingest run` process with its log file.
pub struct Ingest {
    child: Option<Child>,
    /// Its /metrics and /readyz address.
    pub http: String,
    /// Its log file.
    pub log: PathBuf,
}

impl Ingest {
    /// Spawns ingest over `topics` with extra environment overrides.
    pub fn spawn(topics: &Topics, extra: &[(&str, &str)]) -> Result<Ingest> {
        let port = free_port();
        let mut cmd = Command::new(ingest_binary());
        cmd.arg("run")
            .env("CUSTOS_KAFKA_BROKERS", brokers())
            .env("CUSTOS_CLICKHOUSE_URL", clickhouse_url())
            .env("CUSTOS_INPUT_TOPICS", topics.inputs())
            .env("CUSTOS_DLQ_TOPIC", &topics.dlq)
            .env("CUSTOS_INGEST_GROUP", &topics.group)
            .env("CUSTOS_PSEUDONYM_KEYS", TEST_KEYS)
            .env("CUSTOS_CHECKPOINT_KEY_FILE", checkpoint_key())
            .env("CUSTOS_CHECKPOINT_KID", "test-ck")
            .env("CUSTOS_CHECKPOINT_TOPIC", &topics.checkpoints)
            .env("CUSTOS_INGEST_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("CUSTOS_BATCH_LINGER_MS", "200")
            .env("CUSTOS_LOG", "info,custos_ingest=debug");
        let (child, log) = spawn_logged(cmd, &format!("{}-{port}", topics.group), extra)?;
        Ok(Ingest {
            child: Some(child),
            http: format!("http://127.0.0.1:{port}"),
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Sends a signal (by PID) to the process.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -{sig} failed");
        }
        Ok(())
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERMs the process and waits (up to `timeout`) for its exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Result<i32> {
        let child = self.child.take().context("already stopped")?;
        terminate_child(child, "ingest", timeout)
    }

    /// The log text so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fetches /metrics and returns the sum of the samples of `name` (all label sets).
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let body = http_get(&format!("{}/metrics", self.http)).await?.1;
        Ok(sum_metric(&body, name))
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = http_get(&format!("{}/readyz", self.http)).await {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "ingest not ready after {timeout:?}; log:\n{}",
                    tail(&self.log_text(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Sums every sample of a Prometheus metric in an exposition text.
pub fn sum_metric(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A minimal HTTP/1.1 GET over loopback (status, body).
pub async fn http_get(url: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("http only")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
        .await??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("bad status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Applies the migrations with the real `custos-ingest migrate` (idempotent).
pub fn migrate() -> Result<()> {
    let out = Command::new(ingest_binary())
        .envs(ch_env())
        .arg("migrate")
        .env("CUSTOS_CLICKHOUSE_URL", clickhouse_url())
        .output()?;
    if !out.status.success() {
        bail!("migrate failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Counts deduplicated audit rows read from `topics` (what a report would see).
pub async fn stored_count(topics: &[String]) -> Result<u64> {
    Ok(admin()
        .query("SELECT count() FROM custos.audit_events FINAL WHERE kafka_topic IN ?")
        .bind(topics)
        .fetch_one::<u64>()
        .await?)
}

/// Waits until `stored_count(topics) >= n`, returning the count.
pub async fn wait_stored(topics: &[String], n: u64, timeout: Duration) -> Result<u64> {
    let start = Instant::now();
    loop {
        let c = stored_count(topics).await.unwrap_or(0);
        if c >= n {
            return Ok(c);
        }
        if start.elapsed() > timeout {
            bail!("only {c} of {n} rows stored after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs the real ingest on `topics` with `env` until `n` records of their inputs are
/// stored, then stops it (shutdown signs the checkpoints of the tails); returns its exit
/// code.
pub async fn ingest_until_stored(topics: &Topics, env: &[(&str, &str)], n: u64) -> Result<i32> {
    let mut ingest = Ingest::spawn(topics, env)?;
    ingest.wait_ready(Duration::from_secs(60)).await?;
    wait_stored(&topics.input_list(), n, Duration::from_secs(90)).await?;
    ingest.terminate(Duration::from_secs(60))
}

/// A consumed message: payload and headers.
pub type Consumed = (Vec<u8>, HashMap<String, Vec<u8>>);

/// Consumes every message currently in `topic` (from the beginning) until `n` arrived
/// or `timeout` passed. Returns (payload, headers) pairs.
pub fn consume_all(topic: &str, n: usize, timeout: Duration) -> Result<Vec<Consumed>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.message.max.bytes", "8388608")
        .create()?;
    c.subscribe(&[topic])?;
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < n && start.elapsed() < timeout {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m?;
            let mut h = HashMap::new();
            if let Some(hs) = m.headers() {
                for x in hs.iter() {
                    h.insert(x.key.to_owned(), x.value.unwrap_or_default().to_vec());
                }
            }
            out.push((m.payload().unwrap_or_default().to_vec(), h));
        }
    }
    Ok(out)
}

/// The sum of the high watermarks of `topic`'s partitions: how many records it ever got.
pub fn high_watermark(topic: &str) -> Result<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("wm"))
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut total = 0;
    for t in md.topics() {
        for p in t.partitions() {
            let (_, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            total += high;
        }
    }
    Ok(total)
}
