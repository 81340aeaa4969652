//! The operational routes, as every service serves them: `GET /healthz` (the process
//! answers: `{"status":"ok"}`), `GET /readyz` (200 `{"status":"ready"}` or 503
//! `{"status":"not ready","reason":...}`) and `GET /metrics` (Prometheus text format 0.0.4;
//! empty without a recorder), and serving a router until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use thiserror::Error;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::health::Health;

/// Content type of the Prometheus text exposition.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The `/readyz` answer for a readiness result.
pub fn readiness(result: Result<(), &str>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": why})),
        )
            .into_response(),
    }
}

/// The `/metrics` answer: the recorder's exposition, empty without one.
pub fn metrics_text(handle: Option<&PrometheusHandle>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        handle.map(PrometheusHandle::render).unwrap_or_default(),
    )
        .into_response()
}

#[derive(Clone)]
struct Ops {
    health: Arc<Health>,
    metrics: Option<PrometheusHandle>,
}

/// `/healthz` and `/readyz` on `health`, for any router state.
pub fn probes<S: Clone + Send + Sync + 'static>(health: Arc<Health>) -> Router<S> {
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get(|State(ops): State<Ops>| async move { readiness(ops.health.ready()) }),
        )
        .with_state(Ops {
            health,
            metrics: None,
        })
}

/// `/healthz`, `/readyz` and `/metrics`: the admin address of a service.
pub fn router<S: Clone + Send + Sync + 'static>(
    health: Arc<Health>,
    metrics: Option<PrometheusHandle>,
) -> Router<S> {
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get(|State(ops): State<Ops>| async move { readiness(ops.health.ready()) }),
        )
        .route(
            "/metrics",
            get(|State(ops): State<Ops>| async move { metrics_text(ops.metrics.as_ref()) }),
        )
        .with_state(Ops { health, metrics })
}

/// A listener could not be bound.
#[derive(Debug, Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    /// The address.
    pub addr: SocketAddr,
    /// Cause.
    pub source: std::io::Error,
}

/// Binds `addr` and serves `app` on it in the background until `cancel` fires (graceful:
/// requests in flight finish). A failing server is logged as `failed` (e.g. "HTTP server
/// failed") with the error.
pub async fn serve(
    failed: &'static str,
    addr: SocketAddr,
    app: Router,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, ListenError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { addr, source })?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await
        {
            warn!(error = %e, "{failed}");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_json(app: Router, path: &str) -> (StatusCode, String, Vec<u8>) {
        let resp = app
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, ctype, body.to_vec())
    }

    #[tokio::test]
    async fn readyz_follows_health_with_the_reason() {
        let health = Arc::new(Health::new());
        let app: Router = router(health.clone(), None);
        let (s, _, body) = get_json(app.clone(), "/readyz").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            json!({"status": "not ready", "reason": "Kafka consumer not subscribed"})
        );
        health.set_subscribed();
        health.set_clickhouse(true);
        let (s, _, body) = get_json(app.clone(), "/readyz").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            serde_json::from_slice::<Value>(&body).expect("json"),
            json!({"status": "ready"})
        );
        let (s, _, body) = get_json(app, "/healthz").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            serde_json::from_slice::<Value>(&body).expect("json"),
            json!({"status": "ok"})
        );
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_and_only_on_the_admin_router() {
        let recorder = crate::metrics::builder().expect("builder").build_recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, || {
            ::metrics::counter!("custos_test_total").increment(3);
        });
        let app: Router = router(Arc::new(Health::new()), Some(handle));
        let (s, ctype, body) = get_json(app, "/metrics").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(ctype, METRICS_CONTENT_TYPE);
        let text = String::from_utf8(body).expect("utf-8");
        assert!(text.contains("custos_test_total 3"), "{text}");
        let probes: Router = probes(Arc::new(Health::new()));
        let (s, _, _) = get_json(probes, "/metrics").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}
