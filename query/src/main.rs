//! `custos-query`: serves the report API until SIGTERM or SIGINT, and `/metrics` on the
//! separate admin address (`CUSTOS_QUERY_ADMIN_ADDR`).

use std::io::IsTerminal;

use clap::Parser;
use custos_query::config::QueryConfig;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "custos-query", version, about = "Custos audited report API")]
struct Cli {
    #[command(flatten)]
    config: QueryConfig,
}

fn init_tracing() {
    let filter = EnvFilter::try_from_env("CUSTOS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
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
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let metrics = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                &[0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )?
            .install_recorder()?;
        let mut state = custos_query::AppState::new(&cli.config, Some(metrics))?;
        match state.enable_optional_settings().await {
            Ok(applied) => info!(?applied, "optional ClickHouse reader settings"),
            Err(e) => tracing::warn!(error = %e, "ClickHouse not reachable; optional reader settings not applied"),
        }
        if let Err(e) = state.auth.refresh(true).await {
            tracing::warn!(error = %e, "JWKS not loaded yet; retrying on first request");
        }
        let listener = tokio::net::TcpListener::bind(cli.config.http_addr).await?;
        info!(addr = %cli.config.http_addr, "custos-query listening");
        let admin = tokio::net::TcpListener::bind(cli.config.admin_addr).await?;
        info!(addr = %cli.config.admin_addr, "custos-query admin endpoints (/metrics) listening");
        let admin_app = custos_query::admin_app(state.clone());
        let admin_task = tokio::spawn(async move { axum::serve(admin, admin_app).await });
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let audit = state.audit.clone();
        axum::serve(listener, custos_query::app(state))
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM received"),
                    _ = int.recv() => info!("SIGINT received"),
                }
            })
            .await?;
        admin_task.abort();
        // Final query-audit records still queued are written before exiting.
        if tokio::time::timeout(std::time::Duration::from_secs(10), audit.flush())
            .await
            .is_err()
        {
            tracing::warn!("query-audit queue not flushed within 10 s");
        }
        Ok(())
    })
}
