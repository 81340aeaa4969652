//! `custos-feed`: serves the FHIR audit feed until SIGTERM or SIGINT, and `/metrics` on the
//! separate admin address (`CUSTOS_FEED_ADMIN_ADDR`).

use clap::Parser;
use custos_feed::config::FeedConfig;
use custos_runtime::{metrics, shutdown::Signals, telemetry};
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "custos-feed",
    version,
    about = "Custos FHIR audit feed (IHE BALP)"
)]
struct Cli {
    #[command(flatten)]
    config: FeedConfig,
}

fn main() -> anyhow::Result<()> {
    telemetry::init_tracing(telemetry::KAFKA_SERVICE_FILTER);
    let cli = Cli::parse();
    let runtime = custos_runtime::async_runtime(None)?;
    runtime.block_on(async move {
        let metrics = metrics::install()?;
        custos_feed::describe_metrics();
        let state = custos_feed::AppState::new(&cli.config, Some(metrics))?;
        if let Err(e) = state.auth.refresh(true).await {
            warn!(error = %e, "JWKS not loaded yet; retrying on first request");
        }
        let listener = tokio::net::TcpListener::bind(cli.config.http_addr).await?;
        info!(addr = %cli.config.http_addr, topic = %cli.config.topic, "custos-feed listening");
        let admin = tokio::net::TcpListener::bind(cli.config.admin_addr).await?;
        info!(addr = %cli.config.admin_addr, "custos-feed admin endpoints (/metrics) listening");
        let admin_app = custos_feed::admin_app(state.clone());
        let admin_task = tokio::spawn(async move { axum::serve(admin, admin_app).await });
        let signals = Signals::install()?;
        axum::serve(listener, custos_feed::app(state))
            .with_graceful_shutdown(signals.recv())
            .await?;
        admin_task.abort();
        Ok(())
    })
}
