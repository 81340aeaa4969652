//! `custos-consent run` consumes consent events and pushes revocations;
//! `custos-consent keygen` writes an SSF signing key.

use clap::{Parser, Subcommand};
use custos_consent::config::ConsentConfig;
use custos_runtime::keygen::{self, KeygenArgs};
use custos_runtime::{metrics, shutdown, telemetry};
use tracing::info;

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
    Keygen(KeygenArgs),
}

fn main() -> anyhow::Result<()> {
    telemetry::init_tracing(telemetry::KAFKA_SERVICE_FILTER);
    let cli = Cli::parse();
    let runtime = custos_runtime::async_runtime(Some(2))?;
    runtime.block_on(async move {
        match cli.command {
            Command::Keygen(args) => {
                keygen::write_p256_key(&args.out)?;
                info!(path = %args.out.display(), "SSF signing key written");
            }
            Command::Run(cfg) => {
                let metrics = metrics::install()?;
                let cancel = shutdown::cancel_on_signal()?;
                custos_consent::service::run(*cfg, Some(metrics), cancel).await?;
            }
        }
        Ok(())
    })
}
