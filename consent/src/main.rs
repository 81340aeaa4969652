//! `custos-consent run` consumes consent events and pushes revocations;
//! `custos-consent keygen` writes an SSF signing key.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use custos_consent::config::ConsentConfig;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "custos-consent",
    version,
    about = "Custos consent state and revocation push"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run until SIGTERM or SIGINT.
    Run(Box<ConsentConfig>),
    /// Write a new PKCS#8 PEM P-256 SET signing key (mode 0600).
    Keygen {
        /// Output file (must not exist).
        #[arg(long)]
        out: std::path::PathBuf,
    },
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
                info!(path = %out.display(), "SSF signing key written");
                Ok(())
            }
            Command::Run(cfg) => {
                let metrics = PrometheusBuilder::new()
                    .set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                        &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
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
                custos_consent::service::run(*cfg, Some(metrics), cancel).await?;
                Ok(())
            }
        }
    })
}
