//! `custos-ingest run` consumes, `custos-ingest migrate` applies the ClickHouse DDL.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use custos_ingest::config::{IngestConfig, MigrateConfig};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "custos-ingest", version, about = "Custos audit ingest")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the input topics into ClickHouse until SIGTERM or SIGINT.
    Run(Box<IngestConfig>),
    /// Apply pending ClickHouse migrations with the admin account.
    Migrate(MigrateConfig),
    /// Recompute every hash chain and check the signed checkpoints; exits 1 on any break.
    Verify(VerifyArgs),
    /// Write a new PKCS#8 PEM P-256 checkpoint signing key (mode 0600).
    Keygen {
        /// Output file (must not exist).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Print the JWKS of a checkpoint key (public part only).
    Jwks {
        /// The key file.
        #[arg(long, env = "CUSTOS_CHECKPOINT_KEY_FILE")]
        key_file: std::path::PathBuf,
        /// Key id.
        #[arg(long, env = "CUSTOS_CHECKPOINT_KID", default_value = "custos-ck-1")]
        kid: String,
    },
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// ClickHouse HTTP endpoint.
    #[arg(
        long,
        env = "CUSTOS_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:18123"
    )]
    clickhouse_url: String,
    /// Account to read with (SELECT is enough).
    #[arg(
        long,
        env = "CUSTOS_CLICKHOUSE_READER_USER",
        default_value = "custos_reader"
    )]
    user: String,
    /// Its password (required: no password is built in).
    #[arg(
        long,
        env = "CUSTOS_CLICKHOUSE_READER_PASSWORD",
        hide_env_values = true
    )]
    password: String,
    /// JWKS file with the checkpoint public keys.
    #[arg(long, env = "CUSTOS_CHECKPOINT_JWKS_FILE")]
    jwks: Option<std::path::PathBuf>,
    /// Only this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// Only records with event time at or after this RFC 3339 instant.
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only records with event time before this RFC 3339 instant.
    #[arg(long)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// Retention of audit rows in days: records older than this may be gone (pruned).
    #[arg(long, env = "CUSTOS_RETENTION_DAYS", default_value_t = custos_schemas::migrations::DEFAULT_RETENTION_DAYS,
        value_parser = clap::value_parser!(u32).range(1..))]
    retention_days: u32,
    /// The instant the retention horizon is counted back from (RFC 3339; default: now).
    #[arg(long)]
    now: Option<chrono::DateTime<chrono::Utc>>,
    /// Kafka bootstrap servers: when set, the checkpoint topic is read and cross-checked.
    #[arg(long, env = "CUSTOS_KAFKA_BROKERS")]
    brokers: Option<String>,
    /// Topic the checkpoints are published to.
    #[arg(
        long,
        env = "CUSTOS_CHECKPOINT_TOPIC",
        default_value = "custos.checkpoints"
    )]
    checkpoints_topic: String,
    /// Do not read the checkpoint topic even when brokers are configured.
    #[arg(long)]
    no_checkpoints_topic: bool,
    /// Seconds allowed to read the checkpoint topic to its end.
    #[arg(long, default_value_t = 60)]
    kafka_timeout_secs: u64,
    /// JSON list of checkpoints kept by an auditor (compact JWS strings or objects with a
    /// `jws` field), cross-checked like the topic's.
    #[arg(long)]
    anchors: Option<std::path::PathBuf>,
}

fn init_tracing() {
    let filter = EnvFilter::try_from_env("CUSTOS_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if std::env::var("CUSTOS_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Migrate(cfg) => {
                let applied = custos_ingest::migrate::migrate(&cfg).await?;
                info!(?applied, "migrations up to date");
                Ok(())
            }
            Command::Verify(args) => {
                let client = clickhouse::Client::default()
                    .with_url(&args.clickhouse_url)
                    .with_user(&args.user)
                    .with_password(&args.password);
                let jwks = match &args.jwks {
                    Some(p) => Some(serde_json::from_str(&std::fs::read_to_string(p)?)?),
                    None => None,
                };
                let now = args.now.unwrap_or_else(chrono::Utc::now);
                let horizon = now - chrono::Duration::days(i64::from(args.retention_days));
                let scope = custos_ingest::verify::Scope {
                    topic: args.topic.clone(),
                    partition: args.partition,
                    since_ms: args.since.map(|t| t.timestamp_millis()),
                    until_ms: args.until.map(|t| t.timestamp_millis()),
                    retention_horizon_ms: Some(horizon.timestamp_millis()),
                };
                let mut external = Vec::new();
                if let Some(path) = &args.anchors {
                    external.extend(custos_ingest::checkpoints::read_anchor_file(path)?);
                }
                if let (Some(brokers), false) = (args.brokers.clone(), args.no_checkpoints_topic) {
                    let topic = args.checkpoints_topic.clone();
                    let timeout = std::time::Duration::from_secs(args.kafka_timeout_secs);
                    external.extend(
                        tokio::task::spawn_blocking(move || {
                            custos_ingest::checkpoints::read_topic(&brokers, &topic, timeout)
                        })
                        .await??,
                    );
                }
                let report =
                    custos_ingest::verify::verify_with(&client, &scope, jwks.as_ref(), &external)
                        .await?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                if !report.clean {
                    std::process::exit(1);
                }
                Ok(())
            }
            Command::Keygen { out } => {
                use p256::pkcs8::{EncodePrivateKey, LineEnding};
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| anyhow::anyhow!("encoding the key: {e}"))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&out)?;
                f.write_all(pem.as_bytes())?;
                info!(path = %out.display(), "checkpoint key written");
                Ok(())
            }
            Command::Jwks { key_file, kid } => {
                let pem = std::fs::read_to_string(&key_file)?;
                let signer = custos_schemas::checkpoint::Signer256::from_pem(&pem, &kid)?;
                println!("{}", serde_json::to_string_pretty(&signer.jwks())?);
                Ok(())
            }
            Command::Run(cfg) => {
                let metrics = PrometheusBuilder::new()
                    .set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                        &[
                            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                        ],
                    )?
                    .install_recorder()?;
                let cancel = CancellationToken::new();
                let on_signal = cancel.clone();
                let mut term = signal(SignalKind::terminate())?;
                let mut int = signal(SignalKind::interrupt())?;
                tokio::spawn(async move {
                    tokio::select! {
                        _ = term.recv() => info!("SIGTERM received"),
                        _ = int.recv() => info!("SIGINT received"),
                    }
                    on_signal.cancel();
                });
                custos_ingest::pipeline::run(*cfg, metrics, cancel).await?;
                Ok(())
            }
        }
    })
}
