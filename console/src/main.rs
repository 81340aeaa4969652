//! `custos-console`: serves the compliance console until SIGTERM or SIGINT, and `/metrics`
//! on the separate admin address (`CUSTOS_CONSOLE_ADMIN_ADDR`).

use clap::Parser;
use custos_console::config::ConsoleConfig;
use custos_runtime::{metrics, shutdown::Signals, telemetry};

#[derive(Parser)]
#[command(name = "custos-console", version, about = "Custos compliance console")]
struct Cli {
    #[command(flatten)]
    config: ConsoleConfig,
}

fn main() -> anyhow::Result<()> {
    telemetry::init_tracing(telemetry::DEFAULT_FILTER);
    let cli = Cli::parse();
    let runtime = custos_runtime::async_runtime(Some(2))?;
    runtime.block_on(async move {
        let metrics = metrics::install()?;
        let signals = Signals::install()?;
        custos_console::service::run(cli.config, Some(metrics), signals.recv()).await?;
        Ok(())
    })
}
