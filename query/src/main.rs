//! `custos-query`: serves the report API until SIGTERM or SIGINT, and `/metrics` on the
//! separate admin address (`CUSTOS_QUERY_ADMIN_ADDR`).

use std::time::Duration;

use clap::Parser;
use custos_query::config::QueryConfig;
use custos_runtime::{metrics, shutdown::Signals, telemetry};
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "custos-query", version, about = "Custos audited report API")]
struct Cli {
    #[command(flatten)]
    config: QueryConfig,
}

fn main() -> anyhow::Result<()> {
    telemetry::init_tracing(telemetry::DEFAULT_FILTER);
    let cli = Cli::parse();
    let runtime = custos_runtime::async_runtime(None)?;
    runtime.block_on(async move {
        let metrics = metrics::install()?;
        let mut state = custos_query::AppState::new(&cli.config, Some(metrics))?;
        match state.enable_optional_settings().await {
            Ok(applied) => info!(?applied, "optional ClickHouse reader settings"),
            Err(e) => {
                warn!(error = %e, "ClickHouse not reachable; optional reader settings not applied")
            }
        }
        if let Err(e) = state.auth.refresh(true).await {
            warn!(error = %e, "JWKS not loaded yet; retrying on first request");
        }
        let listener = tokio::net::TcpListener::bind(cli.config.http_addr).await?;
        info!(addr = %cli.config.http_addr, "custos-query listening");
        let admin = tokio::net::TcpListener::bind(cli.config.admin_addr).await?;
        info!(addr = %cli.config.admin_addr, "custos-query admin endpoints (/metrics) listening");
        let admin_app = custos_query::admin_app(state.clone());
        let admin_task = tokio::spawn(async move { axum::serve(admin, admin_app).await });
        let signals = Signals::install()?;
        let audit = state.audit.clone();
        axum::serve(listener, custos_query::app(state))
            .with_graceful_shutdown(signals.recv())
            .await?;
        admin_task.abort();
        // Final query-audit records still queued are written before exiting.
        if tokio::time::timeout(Duration::from_secs(10), audit.flush())
            .await
            .is_err()
        {
            warn!("query-audit queue not flushed within 10 s");
        }
        Ok(())
    })
}
