//! The FHIR audit feed in-process ([`custos_feed::app`]) for the feed tests: its state for an
//! issuer and a topic, requests with a body, AuditEvents and Bundles made from the BALP
//! fixture, and the topic's high watermark (what reached Kafka).

use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use clap::Parser;
use custos_feed::config::FeedConfig;
use custos_tests::{brokers, workspace};
use http_body_util::BodyExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::Resp;

/// The FHIR media type.
pub const FHIR_JSON: &str = "application/fhir+json";

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    config: FeedConfig,
}

/// The feed for `issuer` (tokens with `audience`, roles in `realm_access.roles`) writing to
/// `topic` of the test stack's brokers (unless `extra` names `--brokers`), then the extra
/// command-line arguments.
pub fn feed_app(issuer: &str, audience: &str, topic: &str, extra: &[&str]) -> Router {
    let brokers = brokers();
    let mut args = vec![
        "custos-feed",
        "--oidc-issuer",
        issuer,
        "--oidc-audience",
        audience,
        "--oidc-roles-claim",
        "realm_access.roles",
        "--oidc-jwks-refresh-min-secs",
        "1",
        "--topic",
        topic,
        "--public-url",
        "http://feed.test/fhir",
    ];
    if !extra.contains(&"--brokers") {
        args.extend(["--brokers", &brokers]);
    }
    args.extend_from_slice(extra);
    let cli = Cli::try_parse_from(args).expect("feed config");
    custos_feed::app(custos_feed::AppState::new(&cli.config, None).expect("feed state"))
}

/// A request through the in-process feed with a bearer token, a content type and a body.
pub async fn call(
    app: &Router,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (Resp, axum::http::HeaderMap) {
    call_with(app, method, path, bearer, content_type, body, &[]).await
}

/// POST of FHIR JSON `body` to `path` with `bearer` and `Prefer: <prefer>`.
pub async fn post_prefer(
    app: &Router,
    path: &str,
    bearer: &str,
    body: &Value,
    prefer: &str,
) -> Resp {
    let bytes = serde_json::to_vec(body).expect("json");
    call_with(
        app,
        Method::POST,
        path,
        Some(bearer),
        Some("application/json"),
        bytes,
        &[("prefer", prefer)],
    )
    .await
    .0
}

/// [`call`] with extra headers.
pub async fn call_with(
    app: &Router,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (Resp, axum::http::HeaderMap) {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(c) = content_type {
        req = req.header("content-type", c);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (
        Resp {
            status,
            content_type,
            body,
        },
        headers,
    )
}

/// POST of FHIR JSON `body` to `path` with `bearer`.
pub async fn post(app: &Router, path: &str, bearer: Option<&str>, body: &Value) -> Resp {
    let bytes = serde_json::to_vec(body).expect("json");
    call(app, Method::POST, path, bearer, Some(FHIR_JSON), bytes)
        .await
        .0
}

/// The BALP PatientRead fixture with `id` and the patient `Patient/<patient>`.
pub fn audit_event(id: &str, patient: &str) -> Value {
    let path = workspace().join("schemas/tests/fixtures/fhir/patient_read.json");
    let text = std::fs::read_to_string(path).expect("fixture");
    let text = text.replace("Patient/pat-5501", &format!("Patient/{patient}"));
    let mut v: Value = serde_json::from_str(&text).expect("fixture JSON");
    v["id"] = json!(id);
    v
}

/// A Bundle of `kind` (`batch`, `transaction`, ...) posting each resource to AuditEvent.
pub fn bundle(kind: &str, resources: &[Value]) -> Value {
    let entry: Vec<Value> = resources
        .iter()
        .map(|r| json!({"resource": r, "request": {"method": "POST", "url": "AuditEvent"}}))
        .collect();
    json!({"resourceType": "Bundle", "type": kind, "entry": entry})
}

pub use custos_tests::high_watermark;

/// The issue codes of an `OperationOutcome`.
pub fn issue_codes(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| i["code"].as_str().unwrap_or_default().to_owned())
        .collect()
}
