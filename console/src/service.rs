//! Running the console: the pages on the HTTP address, the operations endpoints on the admin
//! address, the issuer's keys loaded in the background (readiness waits for them).

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tracing::{info, warn};

use crate::app::{self, BuildError, Console};
use crate::config::ConsoleConfig;

/// Errors running the console.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A listener could not be bound.
    #[error(transparent)]
    Listen(#[from] custos_runtime::ops::ListenError),
}

/// Loads the issuer's keys, retrying every 5 s until they are in; then marks the console
/// ready.
pub async fn load_keys(console: Arc<Console>) {
    loop {
        match console.auth.refresh(true).await {
            Ok(()) => {
                console.health.set_loaded();
                info!("issuer keys loaded; console ready");
                return;
            }
            Err(e) => warn!(error = %e, "issuer keys not loaded yet; retrying in 5 s"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Serves the console until `shutdown` resolves.
pub async fn run(
    cfg: ConsoleConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let console = Console::new(cfg)?;
    let (http_addr, admin_addr) = (console.cfg.http_addr, console.cfg.admin_addr);
    let keys = tokio::spawn(load_keys(console.clone()));
    let admin = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|source| custos_runtime::ops::ListenError {
            addr: admin_addr,
            source,
        })?;
    let admin_app = app::admin_app(&console, metrics);
    let admin_task = tokio::spawn(async move { axum::serve(admin, admin_app).await });
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .map_err(|source| custos_runtime::ops::ListenError {
            addr: http_addr,
            source,
        })?;
    info!(addr = %http_addr, admin = %admin_addr, "custos-console listening");
    let health = console.health.clone();
    if let Err(e) = axum::serve(listener, app::app(console))
        .with_graceful_shutdown(shutdown)
        .await
    {
        warn!(error = %e, "HTTP server failed");
    }
    health.set_stopping();
    keys.abort();
    admin_task.abort();
    Ok(())
}
