//! `custos-alerts run` runs the detectors over the input topics and writes alerts until
//! SIGTERM or SIGINT.

use clap::{Parser, Subcommand};
use custos_alerts::config::AlertsConfig;
use custos_runtime::{metrics, shutdown, telemetry};

#[derive(Parser)]
#[command(
    name = "custos-alerts",
    version,
    about = "Custos misuse detectors, alerts and SIEM outputs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run until SIGTERM or SIGINT.
    Run(Box<AlertsConfig>),
}

fn main() -> anyhow::Result<()> {
    telemetry::init_tracing(telemetry::KAFKA_SERVICE_FILTER);
    let cli = Cli::parse();
    let runtime = custos_runtime::async_runtime(Some(2))?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(cfg) => {
                let metrics = metrics::install()?;
                let cancel = shutdown::cancel_on_signal()?;
                custos_alerts::service::run(*cfg, Some(metrics), cancel).await?;
            }
        }
        Ok(())
    })
}
