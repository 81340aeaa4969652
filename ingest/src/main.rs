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
