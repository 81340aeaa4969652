//! `custos-login-latency`: time from a Keycloak login to its audit row (issue 15 item 6).
//!
//! Against a Keycloak of its own with the `custos-kafka` listener installed (its topic set at
//! Keycloak's start with `CUSTOS_EVENTS_TOPIC`, given here as `--as-topic`):
//!
//! 1. Creates (or reuses) the realm `--realm` with the listener on, a public client with
//!    direct access grants and one user. The realm's password policy is a single PBKDF2
//!    iteration (`--hash-iterations`): the hash is not what is measured.
//! 2. Starts the release `custos-ingest run` over `--as-topic` and fresh gateway, consent,
//!    dead-letter and checkpoint topics, with a new consumer group, signed checkpoints and
//!    `CUSTOS_BATCH_LINGER_MS` = `--linger-ms` (the production default, 2000, unless set).
//! 3. Warms up: a few logins, each awaited as a row, so the ingest has caught up with what
//!    the topic held before.
//! 4. Runs `--logins` password-grant logins at `--rate` per second (on a fixed schedule, not
//!    waiting for one another) and, every `--poll-ms`, one ClickHouse query (bound
//!    parameters) for the rows of the sessions still outstanding, by tenant (the realm) and
//!    `session_id` (the token response's `session_state`).
//!
//! Reported, over the logins whose row appeared within `--timeout-secs`: from the login's HTTP
//! answer to the row's first sighting, and from the Keycloak event time (`event_time`) to it;
//! and the two legs of the latter: event time to `ingested_at` (listener, Kafka, the ingest's
//! decode) and `ingested_at` to the sighting (the batch linger, the INSERT, the poll). The
//! sighting is late by up to one poll interval plus one query.
//!
//! At the end it deletes the topics it created (not `--as-topic`); the rows stay, in the
//! realm's tenant.
//!
//! ```sh
//! cargo build --release -p custos-ingest -p custos-bench --bin custos-ingest --bin custos-login-latency
//! target/release/custos-login-latency --kc-base http://127.0.0.1:18380 --as-topic kcbench.as-events \
//!   --ingest-bin target/release/custos-ingest
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use custos_tests::{admin, brokers, clickhouse_url, create_topics, free_port, unique, workspace};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use serde::Deserialize;
use serde_json::{json, Value};

const CLIENT: &str = "bench-cli";
const USER: &str = "bench-user";
const LISTENER: &str = "custos-kafka";

#[derive(Parser)]
#[command(
    name = "custos-login-latency",
    about = "Time from a Keycloak login to its audit row in ClickHouse"
)]
struct Args {
    /// Keycloak base URL (an instance of its own, with the custos-kafka provider).
    #[arg(long, default_value = "http://127.0.0.1:18380")]
    kc_base: String,
    /// Keycloak bootstrap admin (master realm).
    #[arg(long, default_value = "admin")]
    admin: String,
    /// Its password.
    #[arg(
        long,
        env = "CUSTOS_KC_ADMIN_PASSWORD",
        default_value = "custos_kc_admin_pw"
    )]
    admin_password: String,
    /// The bench realm (also the rows' tenant).
    #[arg(long, default_value = "bench-latency")]
    realm: String,
    /// Password of the bench user.
    #[arg(long, default_value = "bench-user-pw-1")]
    user_password: String,
    /// PBKDF2 iterations of the realm's password policy (0: Keycloak's default policy).
    #[arg(long, default_value_t = 1)]
    hash_iterations: u32,
    /// The topic the Keycloak listener writes to (its `CUSTOS_EVENTS_TOPIC`).
    #[arg(long)]
    as_topic: String,
    /// Timed logins.
    #[arg(long, default_value_t = 200)]
    logins: usize,
    /// Logins per second.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Untimed logins first, each awaited as a row.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Interval between two ClickHouse polls, in milliseconds.
    #[arg(long, default_value_t = 50)]
    poll_ms: u64,
    /// How long after the last login a row may take before it counts as missing, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// The ingest's `CUSTOS_BATCH_LINGER_MS`.
    #[arg(long, default_value_t = 2000)]
    linger_ms: u64,
    /// Extra environment of the ingest, KEY=VALUE (repeatable).
    #[arg(long = "ingest-env")]
    ingest_env: Vec<String>,
    /// A `custos-ingest` binary (default: built with `cargo build --release`).
    #[arg(long)]
    ingest_bin: Option<PathBuf>,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// ------------------------------------------------------------------ Keycloak

struct Keycloak {
    http: reqwest::Client,
    base: String,
}

impl Keycloak {
    async fn admin_token(&self, args: &Args) -> Result<String> {
        let r: Value = self
            .http
            .post(format!(
                "{}/realms/master/protocol/openid-connect/token",
                self.base
            ))
            .form(&[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", &args.admin),
                ("password", &args.admin_password),
            ])
            .send()
            .await?
            .error_for_status()
            .context("Keycloak admin login")?
            .json()
            .await?;
        r["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("no admin access_token")
    }

    /// Creates the realm (or brings an existing one to the policy and listeners wanted).
    async fn ensure_realm(&self, args: &Args) -> Result<()> {
        let token = self.admin_token(args).await?;
        let admin = format!("{}/admin/realms", self.base);
        let policy = if args.hash_iterations == 0 {
            String::new()
        } else {
            format!(
                "hashAlgorithm(pbkdf2-sha256) and hashIterations({})",
                args.hash_iterations
            )
        };
        let realm = &args.realm;
        let exists = self
            .http
            .get(format!("{admin}/{realm}"))
            .bearer_auth(&token)
            .send()
            .await?
            .status()
            .is_success();
        if !exists {
            self.http
                .post(&admin)
                .bearer_auth(&token)
                .json(&json!({
                    "realm": realm, "enabled": true, "passwordPolicy": policy,
                    "clients": [{"clientId": CLIENT, "publicClient": true,
                                 "directAccessGrantsEnabled": true, "standardFlowEnabled": false}],
                    "users": [{"username": USER, "enabled": true,
                               "email": format!("{USER}@bench.invalid"), "emailVerified": true,
                               "firstName": "Bench", "lastName": "User",
                               "credentials": [{"type": "password", "value": args.user_password,
                                                "temporary": false}]}],
                }))
                .send()
                .await?
                .error_for_status()
                .context("creating the bench realm")?;
        } else {
            self.http
                .put(format!("{admin}/{realm}"))
                .bearer_auth(&token)
                .json(&json!({"passwordPolicy": policy}))
                .send()
                .await?
                .error_for_status()
                .context("setting the password policy")?;
            // The stored hash follows the policy only when the password is set again.
            let users: Vec<Value> = self
                .http
                .get(format!("{admin}/{realm}/users"))
                .query(&[("username", USER), ("exact", "true")])
                .bearer_auth(&token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let id = users
                .first()
                .and_then(|u| u["id"].as_str())
                .context("bench user not found")?;
            self.http
                .put(format!("{admin}/{realm}/users/{id}/reset-password"))
                .bearer_auth(&token)
                .json(&json!({"type": "password", "value": args.user_password,
                              "temporary": false}))
                .send()
                .await?
                .error_for_status()
                .context("resetting the bench user's password")?;
        }
        let events = format!("{admin}/{realm}/events/config");
        let mut cfg: Value = self
            .http
            .get(&events)
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        cfg["eventsEnabled"] = json!(true);
        cfg["eventsListeners"] = json!(["jboss-logging", LISTENER]);
        self.http
            .put(&events)
            .bearer_auth(&token)
            .json(&cfg)
            .send()
            .await?
            .error_for_status()
            .context("switching the listener on")?;
        Ok(())
    }

    /// One password-grant login: its session id.
    async fn login(&self, args: &Args) -> Result<String> {
        let r: Value = self
            .http
            .post(format!(
                "{}/realms/{}/protocol/openid-connect/token",
                self.base, args.realm
            ))
            .form(&[
                ("grant_type", "password"),
                ("client_id", CLIENT),
                ("username", USER),
                ("password", &args.user_password),
                ("scope", "openid"),
            ])
            .send()
            .await?
            .error_for_status()
            .context("login")?
            .json()
            .await?;
        r["session_state"]
            .as_str()
            .map(str::to_owned)
            .context("no session_state in the token response")
    }
}

// ------------------------------------------------------------------ the ingest

/// The spawned ingest, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Topics {
    others: Vec<String>,
    inputs: String,
    dlq: String,
    checkpoints: String,
    group: String,
}

async fn ingest_topics(as_topic: &str) -> Result<Topics> {
    let p = unique("kclat");
    let gateway = format!("{p}.gateway-events");
    let consent = format!("{p}.consent-events");
    let dlq = format!("{p}.dlq");
    let checkpoints = format!("{p}.checkpoints");
    // The listener's topic too, in case Keycloak has not written to it yet (kept if it exists).
    create_topics(&[
        (as_topic, 1),
        (&gateway, 1),
        (&consent, 1),
        (&dlq, 1),
        (&checkpoints, 1),
    ])
    .await?;
    Ok(Topics {
        inputs: format!("{as_topic},{gateway},{consent}"),
        others: vec![gateway, consent, dlq.clone(), checkpoints.clone()],
        dlq,
        checkpoints,
        group: format!("{p}.group"),
    })
}

fn start_ingest(args: &Args, topics: &Topics) -> Result<(Server, PathBuf)> {
    let bin = custos_bench::release_binary("custos-ingest", args.ingest_bin.as_ref())?;
    let dir = workspace().join("target").join("bench");
    std::fs::create_dir_all(&dir)?;
    let log = dir.join(format!("{}-ingest.log", topics.group));
    let key = dir.join(format!("{}-ck.pem", topics.group));
    let out = Command::new(&bin)
        .arg("keygen")
        .arg("--out")
        .arg(&key)
        .output()?;
    if !out.status.success() {
        bail!("keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let file = std::fs::File::create(&log)?;
    let mut cmd = Command::new(&bin);
    cmd.envs(custos_tests::ch_env());
    cmd.arg("run")
        .env("CUSTOS_KAFKA_BROKERS", brokers())
        .env("CUSTOS_CLICKHOUSE_URL", clickhouse_url())
        .env("CUSTOS_INPUT_TOPICS", &topics.inputs)
        .env("CUSTOS_DLQ_TOPIC", &topics.dlq)
        .env("CUSTOS_INGEST_GROUP", &topics.group)
        .env("CUSTOS_PSEUDONYM_KEYS", custos_tests::TEST_KEYS)
        .env("CUSTOS_CHECKPOINT_KEY_FILE", &key)
        .env("CUSTOS_CHECKPOINT_KID", "bench-ck")
        .env("CUSTOS_CHECKPOINT_TOPIC", &topics.checkpoints)
        .env(
            "CUSTOS_INGEST_HTTP_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("CUSTOS_BATCH_LINGER_MS", args.linger_ms.to_string())
        .env("CUSTOS_LOG", "info")
        .env("NO_COLOR", "1");
    for kv in &args.ingest_env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--ingest-env {kv}: expected KEY=VALUE"))?;
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .spawn()
        .context("spawning custos-ingest")?;
    Ok((Server(child), log))
}

async fn delete_topics(names: &[String]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for r in admin.delete_topics(&names, &AdminOptions::new()).await? {
        if let Err((n, code)) = r {
            bail!("deleting topic {n}: {code:?}");
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ rows

#[derive(clickhouse::Row, Deserialize)]
struct Seen {
    session_id: String,
    event_time_ms: i64,
    ingested_ms: i64,
}

/// One login: when it was answered, and when (if) its row was seen.
#[derive(Clone)]
struct Login {
    answered: Instant,
    answered_unix_ms: i64,
    seen: Option<(Instant, i64, i64, i64)>,
}

/// The rows, among `sessions`, now in ClickHouse.
async fn poll(ch: &clickhouse::Client, realm: &str, sessions: Vec<String>) -> Result<Vec<Seen>> {
    Ok(ch
        .query(
            "SELECT session_id, min(toUnixTimestamp64Milli(event_time)) AS event_time_ms, \
             min(toUnixTimestamp64Milli(ingested_at)) AS ingested_ms \
             FROM custos.audit_events WHERE tenant = ? AND has(?, session_id) \
             GROUP BY session_id",
        )
        .bind(realm)
        .bind(sessions)
        .fetch_all::<Seen>()
        .await?)
}

/// Polls until every session of `logins` is seen or `until` passes.
async fn watch(
    ch: &clickhouse::Client,
    args: &Args,
    logins: &Arc<Mutex<HashMap<String, Login>>>,
    done: impl Fn() -> bool,
    until: impl Fn() -> Option<Instant>,
    queries: &mut Vec<f64>,
) -> Result<()> {
    loop {
        let outstanding: Vec<String> = logins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, l)| l.seen.is_none())
            .map(|(s, _)| s.clone())
            .collect();
        if outstanding.is_empty() && done() {
            return Ok(());
        }
        if until().is_some_and(|u| Instant::now() > u) {
            return Ok(());
        }
        if !outstanding.is_empty() {
            let t = Instant::now();
            let rows = poll(ch, &args.realm, outstanding).await?;
            let now = Instant::now();
            let now_ms = unix_ms();
            queries.push(now.duration_since(t).as_secs_f64() * 1000.0);
            let mut map = logins
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for r in rows {
                if let Some(l) = map.get_mut(&r.session_id) {
                    l.seen
                        .get_or_insert((now, now_ms, r.event_time_ms, r.ingested_ms));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
    }
}

fn percentiles(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "| {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
        v[0],
        p(0.50),
        p(0.90),
        p(0.99),
        v[v.len() - 1]
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.rate <= 0.0 || args.logins == 0 {
        bail!("--rate and --logins must be positive");
    }
    let kc = Arc::new(Keycloak {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        base: args.kc_base.trim_end_matches('/').to_owned(),
    });
    kc.ensure_realm(&args).await?;
    let topics = ingest_topics(&args.as_topic).await?;
    let (ingest, log) = start_ingest(&args, &topics)?;
    let ch = admin().with_setting("log_comment", "custos-login-latency");
    let args = Arc::new(args);
    let logins: Arc<Mutex<HashMap<String, Login>>> = Arc::default();
    let mut queries = Vec::new();

    // Warm-up: the ingest catches up with the topic's backlog before anything is timed.
    for _ in 0..args.warmup {
        let sid = kc.login(&args).await?;
        logins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                sid,
                Login {
                    answered: Instant::now(),
                    answered_unix_ms: unix_ms(),
                    seen: None,
                },
            );
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    watch(
        &ch,
        &args,
        &logins,
        || true,
        || Some(deadline),
        &mut queries,
    )
    .await?;
    let warm = logins
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .drain()
        .filter(|(_, l)| l.seen.is_some())
        .count();
    if warm < args.warmup {
        bail!(
            "warm-up: {warm} of {} logins reached ClickHouse within 300 s; ingest log {}",
            args.warmup,
            log.display()
        );
    }
    queries.clear();

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "\ncustos-login-latency: {} logins at {}/s, realm {}, topic {}, linger {} ms, poll {} ms, load average {} before\n",
        args.logins,
        args.rate,
        args.realm,
        args.as_topic,
        args.linger_ms,
        args.poll_ms,
        load.join(" ")
    );

    // The timed logins, on a fixed schedule.
    let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let login_ms: Arc<Mutex<Vec<f64>>> = Arc::default();
    let start = Instant::now();
    let schedule = {
        let (kc, args, logins, issued, failed, login_ms) = (
            kc.clone(),
            args.clone(),
            logins.clone(),
            issued.clone(),
            failed.clone(),
            login_ms.clone(),
        );
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for i in 0..args.logins {
                let at = start + Duration::from_secs_f64(i as f64 / args.rate);
                tokio::time::sleep_until(at.into()).await;
                let (kc, args, logins, failed, login_ms) = (
                    kc.clone(),
                    args.clone(),
                    logins.clone(),
                    failed.clone(),
                    login_ms.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    match kc.login(&args).await {
                        Ok(sid) => {
                            let answered = Instant::now();
                            login_ms
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(answered.duration_since(sent).as_secs_f64() * 1000.0);
                            logins
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .insert(
                                    sid,
                                    Login {
                                        answered,
                                        answered_unix_ms: unix_ms(),
                                        seen: None,
                                    },
                                );
                        }
                        Err(_) => {
                            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            issued.store(args.logins, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let last_login: Arc<Mutex<Option<Instant>>> = Arc::default();
    {
        let issued = issued.clone();
        let last = last_login.clone();
        let n = args.logins;
        let timeout = Duration::from_secs(args.timeout_secs);
        watch(
            &ch,
            &args,
            &logins,
            || issued.load(std::sync::atomic::Ordering::SeqCst) == n,
            || {
                let mut l = last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if issued.load(std::sync::atomic::Ordering::SeqCst) == n {
                    Some(*l.get_or_insert_with(|| Instant::now() + timeout))
                } else {
                    None
                }
            },
            &mut queries,
        )
        .await?;
    }
    schedule.await?;
    let wall = start.elapsed().as_secs_f64();
    drop(ingest);
    delete_topics(&topics.others).await?;

    let all: Vec<Login> = logins
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
        .cloned()
        .collect();
    let seen: Vec<&Login> = all.iter().filter(|l| l.seen.is_some()).collect();
    let from_answer: Vec<f64> = seen
        .iter()
        .filter_map(|l| {
            l.seen
                .map(|(at, ..)| at.duration_since(l.answered).as_secs_f64() * 1e3)
        })
        .collect();
    let from_event: Vec<f64> = seen
        .iter()
        .filter_map(|l| l.seen.map(|(_, ms, ev, _)| (ms - ev) as f64))
        .collect();
    let to_ingested: Vec<f64> = seen
        .iter()
        .filter_map(|l| l.seen.map(|(_, _, ev, ing)| (ing - ev) as f64))
        .collect();
    let ingested_to_seen: Vec<f64> = seen
        .iter()
        .filter_map(|l| l.seen.map(|(_, ms, _, ing)| (ms - ing) as f64))
        .collect();
    let answer_after_event: Vec<f64> = seen
        .iter()
        .filter_map(|l| l.seen.map(|(_, _, ev, _)| (l.answered_unix_ms - ev) as f64))
        .collect();
    println!("| from | to | min ms | p50 ms | p90 ms | p99 ms | max ms |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for (from, to, v) in [
        ("login answered", "row seen", from_answer),
        ("Keycloak event time", "row seen", from_event),
        ("Keycloak event time", "ingested_at", to_ingested),
        ("ingested_at", "row seen", ingested_to_seen),
        ("Keycloak event time", "login answered", answer_after_event),
        (
            "login sent",
            "login answered",
            login_ms
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        ),
        ("poll query sent", "answered", queries.clone()),
    ] {
        println!("| {from} | {to} {}", percentiles(v));
    }
    println!(
        "\n{} logins answered ({} failed), {} rows seen, {} missing after {} s; {:.1} s wall; ingest log {}; topics {} (deleted)",
        all.len(),
        failed.load(std::sync::atomic::Ordering::Relaxed),
        seen.len(),
        all.len() - seen.len(),
        args.timeout_secs,
        wall,
        log.display(),
        topics.others.join(",")
    );
    if seen.len() < all.len() || all.len() < args.logins {
        bail!("not every login reached ClickHouse");
    }
    Ok(())
}
