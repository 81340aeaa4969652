//! `custos-query-bench`: query API latency over a large audit store (issue 4 item 5).
//!
//! 1. Seeds `--rows` (default 10M) synthetic audit rows into a dedicated tenant with the
//!    writer account, server-side (`INSERT ... SELECT ... FROM numbers()` in chunks): clinician
//!    sessions of 20 events (a token issuance and 19 FHIR accesses, one `jti` each) spread
//!    over one year (2024, months no test uses) and `--patients` patients. The first
//!    `--hot-patients` patients carry the real pseudonyms of raw ids `bench-pat-<i>` under
//!    the test key ring, so the API finds them; the others carry look-alike pseudonyms.
//!    Seeding is skipped when the tenant already holds the rows.
//! 2. Starts the real `custos-query` binary (release) on loopback, with bearer tokens checked
//!    against a JWKS served by this process.
//! 3. Measures `/v1/reports/patient-access` (by raw patient id) and `/v1/reports/token-trace`
//!    (by `jti`) at each `--clients` level: latency p50/p99 and throughput over HTTP, and the
//!    raw ClickHouse time of the same SQL (built with the same `custos_query` builders, run
//!    as the reader account) in the same run.
//!
//! A cell whose requests fail (the API and the raw queries share
//! `CUSTOS_CLICKHOUSE_TIMEOUT_SECS`, default 30 s) as many times as it has clients is
//! stopped and reported with its error count: the store is saturated at that load.
//! `--cleanup` removes the tenant's rows afterwards with the admin account.
//!
//! ```sh
//! cargo run --release -p custos-bench --bin custos-query-bench -- --cleanup
//! ```

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use custos_query::params::{Common, Format, Window};
use custos_query::reports::token_trace::{self, Found, KeyRow, Selector, SummaryRow};
use custos_query::reports::{self, EventFilter, EventRow};
use custos_schemas::{KeyRing, PseudonymKind};
use custos_tests::{admin, clickhouse_url, client_as, free_port, workspace, TEST_KEYS};
use serde_json::{json, Value};

/// 2024-01-01T00:00:00Z.
const BASE_MS: i64 = 1_704_067_200_000;
const YEAR_MS: i64 = 366 * 86_400_000;
const FROM: &str = "2024-01-01T00:00:00Z";
const TO: &str = "2025-01-01T00:00:00Z";
const SESSION: u64 = 20;
const CHUNK: u64 = 1_000_000;
const AUDIENCE: &str = "custos-query";

#[derive(Parser)]
#[command(
    name = "custos-query-bench",
    about = "Custos query API latency over a large store"
)]
struct Args {
    /// Rows to seed into the bench tenant.
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Patients the rows are spread over.
    #[arg(long, default_value_t = 200_000)]
    patients: u64,
    /// Patients with real pseudonyms (the ones the benchmark asks for).
    #[arg(long, default_value_t = 1000)]
    hot_patients: u64,
    /// Tenant the rows go to.
    #[arg(long, default_value = "bench-query")]
    tenant: String,
    /// Requests per endpoint, mode and concurrency level.
    #[arg(long, default_value_t = 600)]
    requests: usize,
    /// Concurrent clients, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    clients: Vec<usize>,
    /// Seed anew even when the tenant already holds the rows.
    #[arg(long)]
    reseed: bool,
    /// Remove the tenant's rows afterwards (admin account).
    #[arg(long)]
    cleanup: bool,
    /// A `custos-query` binary (default: built with `cargo build --release`).
    #[arg(long)]
    query_bin: Option<std::path::PathBuf>,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn writer() -> clickhouse::Client {
    client_as(
        &env_or("CUSTOS_CLICKHOUSE_WRITER_USER", "custos_writer"),
        &custos_tests::ch_password("writer"),
    )
}

/// The reader account, with the API's default per-query time limit.
fn reader() -> clickhouse::Client {
    client_as(
        &env_or("CUSTOS_QUERY_READER_USER", "custos_reader"),
        &custos_tests::ch_password("reader"),
    )
    .with_setting(
        "max_execution_time",
        env_or("CUSTOS_CLICKHOUSE_TIMEOUT_SECS", "30"),
    )
}

fn keys() -> Result<KeyRing> {
    KeyRing::parse(TEST_KEYS, None).context("test key ring")
}

fn hot_patient(i: u64) -> String {
    format!("bench-pat-{i}")
}

/// Seeds the rows server-side; returns the tenant's row count.
async fn seed(args: &Args) -> Result<u64> {
    let count = |c: clickhouse::Client| {
        let tenant = args.tenant.clone();
        async move {
            c.query("SELECT count() FROM custos.audit_events WHERE tenant = ?")
                .bind(tenant)
                .fetch_one::<u64>()
                .await
        }
    };
    let have = count(writer()).await?;
    if have >= args.rows && !args.reseed {
        eprintln!(
            "tenant {} already holds {have} rows: not seeding",
            args.tenant
        );
        return Ok(have);
    }
    let ring = keys()?;
    let hot: Vec<String> = (0..args.hot_patients)
        .map(|i| ring.pseudonymize(&args.tenant, PseudonymKind::Patient, &hot_patient(i)))
        .collect();
    let step_ms = (YEAR_MS - 86_400_000) / i64::try_from(args.rows.max(1))?;
    let sql = "INSERT INTO custos.audit_events (event_key, event_id, event_source, event_type, \
source_format, tenant, event_time, ingested_at, outcome, issuer, user_sub, user_kind, fhir_user, \
client_id, session_id, token_jti, token_type, scopes, interaction, resource_type, resource_id, patient, \
encounter, consent_id, purpose_of_use, break_glass_reason, decision, http_status, source_ip, user_agent, \
returned_ids, error, reason, actor, request_id, active, period_start, expires_at, kafka_topic, \
kafka_partition, kafka_offset, chain_prev_offset, record_hash) \
SELECT lower(hex(substring(SHA256(concat(t, '/', toString(number))), 1, 16))), \
concat('bench-', toString(number)), '//bench.custos/synthetic', \
if(number % 20 = 0, 'custos.token.issued', 'custos.fhir.access'), 'cloudevents', t, \
fromUnixTimestamp64Milli(toInt64(base + number * step), 'UTC'), now64(3), 'success', \
'https://auth.bench.example/realms/bench', concat('dr-bench-', toString(s % 500)), 'workforce', \
concat('Practitioner/pr-', toString(s % 500)), \
['ehr-cardiology-app', 'ehr-oncology-viewer', 'ehr-med-rec'][(s % 3) + 1], \
concat('ses-', toString(s)), concat('bench-jti-', toString(s)), 'access', \
['openid', 'fhirUser', 'launch', 'user/Observation.rs', 'user/Condition.rs', 'user/Patient.rs'], \
if(number % 20 = 0, '', if(number % 2 = 0, 'read', 'search-type')), \
if(number % 20 = 0, '', ['Observation', 'Condition', 'MedicationRequest', 'Encounter'][(number % 4) + 1]), \
if(number % 2 = 0 AND number % 20 != 0, concat('ps1.bench.', lower(hex(substring(SHA256(concat('r', toString(number))), 1, 16)))), ''), \
if(p < length(hot), hot[p + 1], concat('ps1.bench.', lower(hex(substring(SHA256(concat('p', toString(p))), 1, 16))))), \
'', '', ['TREAT'], '', if(number % 20 = 0, '', 'permit'), if(number % 20 = 0, 0, 200), \
concat('10.20.', toString(s % 4), '.', toString(1 + s % 250)), 'SimBrowser/1.0', [], '', '', '', \
concat('req-', toString(number)), NULL, NULL, \
if(number % 20 = 0, fromUnixTimestamp64Milli(toInt64(base + number * step + 3600000), 'UTC'), NULL), \
'bench.synthetic', 0, toInt64(number), -1, '' \
FROM (SELECT number, intDiv(number, 20) AS s, (intDiv(number, 20) * 7919) % ? AS p, \
? AS t, ? AS hot, toInt64(?) AS base, toInt64(?) AS step FROM numbers(?, ?))";
    let started = Instant::now();
    let mut from = 0;
    while from < args.rows {
        let n = CHUNK.min(args.rows - from);
        writer()
            .query(sql)
            .bind(args.patients)
            .bind(&args.tenant)
            .bind(&hot)
            .bind(BASE_MS)
            .bind(step_ms)
            .bind(from)
            .bind(n)
            .with_setting("max_execution_time", "600")
            .execute()
            .await
            .context("seeding insert")?;
        from += n;
        eprintln!(
            "seeded {from} of {} rows ({:.0} rows/s)",
            args.rows,
            from as f64 / started.elapsed().as_secs_f64()
        );
    }
    let have = count(writer()).await?;
    eprintln!(
        "tenant {} holds {have} rows (seeded in {:.1} s)",
        args.tenant,
        started.elapsed().as_secs_f64()
    );
    Ok(have)
}

/// Removes the tenant's rows: its 2024 partitions are dropped when they hold nothing
/// else, otherwise a DELETE mutation.
async fn cleanup(tenant: &str) -> Result<()> {
    let others: u64 = admin()
        .query("SELECT count() FROM custos.audit_events WHERE toYear(event_time) = 2024 AND tenant != ?")
        .bind(tenant)
        .fetch_one()
        .await?;
    if others == 0 {
        for month in 1..=12 {
            admin()
                .query("ALTER TABLE custos.audit_events DROP PARTITION ?")
                .bind(202_400 + month)
                .execute()
                .await
                .context("drop partition")?;
        }
    } else {
        admin()
            .query("ALTER TABLE custos.audit_events DELETE WHERE tenant = ?")
            .bind(tenant)
            .with_setting("mutations_sync", "2")
            .execute()
            .await
            .context("delete mutation")?;
    }
    eprintln!("removed the rows of tenant {tenant}");
    Ok(())
}

// ------------------------------------------------------------------ the API under test

fn bearer(issuer: &str) -> Result<String> {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": issuer, "aud": AUDIENCE, "sub": "query-bench", "azp": "query-bench",
        "iat": now, "nbf": now - 5, "exp": now + 7200,
        "roles": ["compliance_officer", "incident_responder"]});
    custos_bench::sign(&claims)
}

/// The spawned `custos-query`, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_server(args: &Args, issuer: &str) -> Result<(Server, String)> {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = workspace().join("target").join("query-bench.log");
    let file = std::fs::File::create(&log)?;
    let child = Command::new(custos_bench::release_binary(
        "custos-query",
        args.query_bin.as_ref(),
    )?)
    .envs(custos_tests::ch_env())
    .env("CUSTOS_QUERY_HTTP_ADDR", &addr)
    // Its own /metrics port: a dev stack's custos-query holds the default one.
    .env(
        "CUSTOS_QUERY_ADMIN_ADDR",
        format!("127.0.0.1:{}", free_port()),
    )
    .env("CUSTOS_QUERY_PUBLIC_URL", format!("http://{addr}"))
    .env("CUSTOS_CLICKHOUSE_URL", clickhouse_url())
    .env("CUSTOS_OIDC_ISSUER", issuer)
    .env("CUSTOS_OIDC_JWKS_URL", format!("{issuer}/jwks"))
    .env("CUSTOS_OIDC_AUDIENCE", AUDIENCE)
    .env("CUSTOS_PSEUDONYM_KEYS", TEST_KEYS)
    .env("CUSTOS_LOG", "warn")
    .stdout(Stdio::from(file.try_clone()?))
    .stderr(Stdio::from(file))
    .spawn()
    .context("spawning custos-query")?;
    let server = Server(child);
    let base = format!("http://{addr}");
    custos_bench::wait_ready(&base, "custos-query", &log).await?;
    Ok((server, base))
}

// ------------------------------------------------------------------ measuring

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    PatientAccess,
    TokenTrace,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::PatientAccess => "patient-access",
            Endpoint::TokenTrace => "token-trace",
        }
    }
}

struct Ctx {
    http: reqwest::Client,
    base: String,
    token: String,
    reader: clickhouse::Client,
    ring: KeyRing,
    tenant: String,
    hot_patients: u64,
    tokens: u64,
}

/// Deterministic xorshift for picking ids.
fn pick(state: &mut u64, n: u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x % n.max(1)
}

impl Ctx {
    fn common(&self) -> Result<Common> {
        let ms = |s: &str| -> Result<i64> {
            Ok(chrono::DateTime::parse_from_rfc3339(s)?.timestamp_millis())
        };
        Ok(Common {
            tenant: self.tenant.clone(),
            window: Window {
                from_ms: ms(FROM)?,
                to_ms: ms(TO)?,
            },
            limit: 100,
            after: None,
            format: Format::Json,
        })
    }

    /// One request through the API; returns the rows of the page.
    async fn api(&self, ep: Endpoint, id: &str) -> Result<usize> {
        let (path, param) = match ep {
            Endpoint::PatientAccess => ("/v1/reports/patient-access", "patient"),
            Endpoint::TokenTrace => ("/v1/reports/token-trace", "jti"),
        };
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .query(&[
                ("tenant", self.tenant.as_str()),
                (param, id),
                ("from", FROM),
                ("to", TO),
            ])
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        if !status.is_success() {
            bail!("{path}: {status} {body}");
        }
        Ok(body["rows"].as_array().map_or(0, Vec::len))
    }

    /// The same SQL straight to ClickHouse as the reader; returns the rows fetched.
    async fn raw(&self, ep: Endpoint, id: &str) -> Result<usize> {
        let c = self.common()?;
        match ep {
            Endpoint::PatientAccess => {
                let filter = EventFilter {
                    patients: Some(self.ring.lookup_all(&c.tenant, PseudonymKind::Patient, id)),
                    ..EventFilter::default()
                };
                let sql = reports::events(&c, reports::patient_access::BASE, &filter, c.limit + 1);
                let rows: Vec<EventRow> = sql.query(&self.reader).fetch_all().await?;
                Ok(rows.len())
            }
            Endpoint::TokenTrace => {
                // As the API does: the index once, then the summary and the page together.
                let sel = Selector::Jti(id.to_owned());
                let keys = sel.keys(&c).context("a jti is indexed")?;
                let found = Found::new(Some(keys.query(&self.reader).fetch_all::<KeyRow>().await?));
                let summary = token_trace::summary(&c, &sel, &found);
                let events = token_trace::events(&c, &sel, &found, c.limit + 1);
                let (_summary, rows) = tokio::try_join!(
                    summary.query(&self.reader).fetch_all::<SummaryRow>(),
                    events.query(&self.reader).fetch_all::<EventRow>()
                )?;
                Ok(rows.len())
            }
        }
    }

    fn id(&self, ep: Endpoint, state: &mut u64) -> String {
        match ep {
            Endpoint::PatientAccess => hot_patient(pick(state, self.hot_patients)),
            Endpoint::TokenTrace => format!("bench-jti-{}", pick(state, self.tokens)),
        }
    }
}

struct Stats {
    p50: f64,
    p99: f64,
    per_sec: f64,
    rows: f64,
    errors: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// `requests` requests split over `clients` concurrent workers.
async fn run(
    ctx: Arc<Ctx>,
    ep: Endpoint,
    raw: bool,
    clients: usize,
    requests: usize,
) -> Result<Stats> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    // A saturated store times every request out: stop the cell once each client failed
    // once on average instead of piling more work on it.
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for w in 0..clients {
        let ctx = ctx.clone();
        let failed = failed.clone();
        let n = requests / clients + usize::from(w < requests % clients);
        tasks.spawn(async move {
            let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ ((w as u64 + 1) * 0x1000_0001);
            let mut lat = Vec::with_capacity(n);
            let mut rows = 0usize;
            let mut errors = 0usize;
            for _ in 0..n {
                if failed.load(std::sync::atomic::Ordering::Relaxed) >= clients {
                    break;
                }
                let id = ctx.id(ep, &mut state);
                let t = Instant::now();
                let answer = if raw {
                    ctx.raw(ep, &id).await
                } else {
                    ctx.api(ep, &id).await
                };
                match answer {
                    Ok(r) => {
                        rows += r;
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    Err(e) => {
                        if errors == 0 {
                            eprintln!(
                                "{} ({}): {e:#}",
                                ep.name(),
                                if raw { "ClickHouse" } else { "API" }
                            );
                        }
                        errors += 1;
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            (lat, rows, errors)
        });
    }
    let mut all = Vec::with_capacity(requests);
    let mut rows = 0;
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (lat, n, e) = r?;
        all.extend(lat);
        rows += n;
        errors += e;
    }
    let wall = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(Stats {
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        per_sec: all.len() as f64 / wall,
        rows: rows as f64 / all.len().max(1) as f64,
        errors,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.hot_patients == 0 || args.hot_patients > args.patients || args.rows < SESSION {
        bail!("need 0 < --hot-patients <= --patients and --rows >= {SESSION}");
    }
    let rows = seed(&args).await?;
    let issuer = custos_bench::jwks_server().await?;
    let (_server, base) = start_server(&args, &issuer).await?;
    let ctx = Arc::new(Ctx {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?,
        base,
        token: bearer(&issuer)?,
        reader: reader(),
        ring: keys()?,
        tenant: args.tenant.clone(),
        hot_patients: args.hot_patients,
        tokens: args.rows / SESSION,
    });

    // Sanity and warm-up: both paths answer the same rows.
    for ep in [Endpoint::PatientAccess, Endpoint::TokenTrace] {
        let mut state = 42;
        for _ in 0..20 {
            let id = ctx.id(ep, &mut state);
            let (a, r) = (ctx.api(ep, &id).await?, ctx.raw(ep, &id).await?);
            if a == 0 || a != r.min(100) {
                bail!("{}: API answered {a} rows, ClickHouse {r}", ep.name());
            }
        }
    }

    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nquery API vs ClickHouse: {rows} rows in tenant {}, {} requests per cell, {cpus} CPUs, load average {}\n",
        args.tenant,
        args.requests,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("| report | clients | API p50 ms | API p99 ms | API req/s | ClickHouse p50 ms | ClickHouse p99 ms | ClickHouse q/s | rows/answer | errors API/CH |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for ep in [Endpoint::PatientAccess, Endpoint::TokenTrace] {
        for &clients in &args.clients {
            let clients = clients.max(1);
            let raw = run(ctx.clone(), ep, true, clients, args.requests).await?;
            let api = run(ctx.clone(), ep, false, clients, args.requests).await?;
            println!(
                "| {} | {clients} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {}/{} |",
                ep.name(),
                api.p50,
                api.p99,
                api.per_sec,
                raw.p50,
                raw.p99,
                raw.per_sec,
                api.rows,
                api.errors,
                raw.errors
            );
        }
    }
    if args.cleanup {
        cleanup(&args.tenant).await?;
    }
    Ok(())
}
