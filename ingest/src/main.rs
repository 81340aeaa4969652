//! `custos-ingest run` consumes, `custos-ingest migrate` applies the ClickHouse DDL; see
//! [`custos_ingest::cli`] for every subcommand.

use clap::Parser;
use custos_ingest::cli::{Cli, Command};
use custos_runtime::{keygen, metrics, shutdown, telemetry};
use tracing::info;

fn main() -> anyhow::Result<()> {
    telemetry::init_tracing(telemetry::KAFKA_SERVICE_FILTER);
    let cli = Cli::parse();
    let runtime = custos_runtime::async_runtime(Some(2))?;
    runtime.block_on(async move {
        match cli.command {
            Command::Migrate(cfg) => {
                let applied = custos_ingest::migrate::migrate(&cfg).await?;
                info!(?applied, "migrations up to date");
            }
            Command::Verify(args) => {
                let report = custos_ingest::cli::verify(&args).await?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                if !report.clean {
                    std::process::exit(1);
                }
            }
            Command::VerifyLedger(args) => {
                let report = custos_ingest::cli::verify_ledger(&args).await?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                if !report.ok {
                    std::process::exit(1);
                }
            }
            Command::Keygen(args) => {
                keygen::write_p256_key(&args.out)?;
                info!(path = %args.out.display(), "checkpoint key written");
            }
            Command::Jwks { key_file, kid } => {
                let jwks = custos_ingest::cli::jwks(&key_file, &kid)?;
                println!("{}", serde_json::to_string_pretty(&jwks)?);
            }
            Command::Run(cfg) => {
                let metrics = metrics::install()?;
                let cancel = shutdown::cancel_on_signal()?;
                custos_ingest::pipeline::run(*cfg, metrics, cancel).await?;
            }
        }
        Ok(())
    })
}
