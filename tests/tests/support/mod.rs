//! Support shared by the end-to-end tests. Here: the query API in-process for the in-test
//! OIDC issuer ([`issuer::TestIssuer`]), JWTs signed with the fixture keys, request helpers,
//! seeding through the real ingest. In the modules: the report and FHIR scenarios
//! ([`reports`], [`fhir`]), the dev stack's Keycloak ([`keycloak`]), the demo FHIR server
//! with an in-test audit feed ([`fhir_server`]), the consent service process ([`consent`]),
//! the audit feed in-process ([`feed`]), fake SET receivers ([`ssf`]), a switchable TCP proxy ([`proxy`]),
//! the readers of the deployment files ([`deploy`], [`xml`]), and headless Chromium over
//! WebDriver ([`browser`]) with the console it drives ([`console_stack`]).
//!
//! Each test binary uses a part of it, so unused items are expected.
#![allow(dead_code, unused_imports)]

pub mod alerts;
pub mod browser;
pub mod consent;
pub mod console;
pub mod console_stack;
pub mod deploy;
pub mod feed;
pub mod fhir;
pub mod fhir_server;
pub mod issuer;
pub mod kc_source;
pub mod keycloak;
pub mod proxy;
pub mod reports;
pub mod ssf;
pub mod xml;

pub use issuer::TestIssuer;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::OnceLock;

use anyhow::Result;
use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode};
use axum::Router;
use clap::Parser;
use custos_query::config::QueryConfig;
use custos_tests::{
    ch_password, clickhouse_url, ingest_until_stored, migrate, produce, producer, workspace, Msg,
    Topics, TEST_KEYS,
};
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tower::ServiceExt;

/// Audience of the test tokens.
pub const AUDIENCE: &str = "custos-query";

/// A file of `tests/fixtures/jwt`.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(workspace().join("tests/fixtures/jwt").join(name)).expect("jwt fixture")
}

/// Base URL of the in-test OIDC issuer ([`TestIssuer`]), started once per process.
pub fn issuer() -> &'static str {
    static ISSUER: OnceLock<TestIssuer> = OnceLock::new();
    &ISSUER.get_or_init(|| TestIssuer::start(|_| json!({}))).base
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    config: QueryConfig,
}

/// The query API's state for `issuer`: its audience and roles claim, the test keys, the
/// test ClickHouse with the dev accounts' passwords (unless `extra` sets its own), then
/// the extra command-line arguments.
pub fn state_for(issuer: &str, extra: &[&str]) -> custos_query::AppState {
    let url = clickhouse_url();
    let (reader_pw, audit_pw) = (ch_password("reader"), ch_password("query"));
    let mut args = vec![
        "custos-query",
        "--oidc-issuer",
        issuer,
        "--oidc-audience",
        AUDIENCE,
        "--oidc-roles-claim",
        "realm_access.roles",
        "--pseudonym-keys",
        TEST_KEYS,
        "--clickhouse-url",
        &url,
    ];
    for (flag, pw) in [
        ("--reader-password", &reader_pw),
        ("--writer-password", &audit_pw),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, pw.as_str()]);
        }
    }
    args.extend_from_slice(extra);
    let cli = Cli::try_parse_from(args).expect("config");
    custos_query::AppState::new(&cli.config, None).expect("state")
}

/// The query API in-process for `issuer` ([`state_for`]).
pub fn app_for(issuer: &str, extra: &[&str]) -> Router {
    custos_query::app(state_for(issuer, extra))
}

/// The query API in-process for `issuer`, answering at `public_url`, fetching keys at most
/// once a second, with extra command-line arguments.
pub fn app_at(issuer: &str, public_url: &str, extra: &[&str]) -> Router {
    let mut args = vec![
        "--oidc-jwks-refresh-min-secs",
        "1",
        "--public-url",
        public_url,
    ];
    args.extend_from_slice(extra);
    app_for(issuer, &args)
}

/// The query API in-process for the in-test [`issuer`], with extra command-line arguments.
pub fn app(extra: &[&str]) -> Router {
    app_at(issuer(), "http://127.0.0.1:8088", extra)
}

/// Now, in seconds since the epoch.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The claims of a valid access token for `sub` with `roles` (ten minutes).
pub fn claims(sub: &str, roles: &[&str]) -> Value {
    claims_of(issuer(), "compliance-console", sub, roles)
}

/// The claims of a valid access token of `iss` for client `azp`, `sub` and `roles` (ten
/// minutes).
pub fn claims_of(iss: &str, azp: &str, sub: &str, roles: &[&str]) -> Value {
    json!({"iss": iss, "aud": AUDIENCE, "sub": sub, "azp": azp,
        "iat": now(), "nbf": now() - 5, "exp": now() + 600,
        "realm_access": {"roles": roles}})
}

/// `claims` signed with the fixture key of `alg` (ES256 or else RSA) under `kid`.
pub fn sign(alg: Algorithm, kid: &str, claims: &Value) -> String {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture("ec_private.pem")).expect("ec key"),
        _ => EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).expect("rsa key"),
    };
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&h, claims, &key).expect("sign")
}

/// An RS256 access token for `sub` with `roles`, valid for ten minutes.
pub fn token(sub: &str, roles: &[&str]) -> String {
    sign(Algorithm::RS256, "rsa-1", &claims(sub, roles))
}

/// A response.
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Content type.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON (panics with the body otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not JSON ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// A request through the in-process app, with a bearer token and extra headers; the
/// response with its body not read (an export keeps streaming).
pub async fn open(
    app: &Router,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
) -> Response<Body> {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    app.clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible")
}

/// A request through the in-process app, with a bearer token and extra headers.
pub async fn send(
    app: &Router,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
) -> Resp {
    let resp = open(app, method, path, bearer, headers).await;
    let status = resp.status();
    let content_type = header(&resp, "content-type");
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Resp {
        status,
        content_type,
        body,
    }
}

/// GET through the in-process app.
pub async fn get(app: &Router, path_and_query: &str, bearer: Option<&str>) -> Resp {
    send(app, Method::GET, path_and_query, bearer, &[]).await
}

/// The value of header `name` of `resp`, empty when absent or not text.
pub fn header(resp: &Response<Body>, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn enc(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `path?k=v&...` with values percent-encoded.
pub fn url(path: &str, params: &[(&str, &str)]) -> String {
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", q.join("&"))
    }
}

/// The resource ids of the entries of a FHIR Bundle.
pub fn entry_ids(bundle: &Value) -> BTreeSet<String> {
    bundle["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The `rows` of a report page.
pub fn rows(v: &Value) -> Vec<Value> {
    v["rows"].as_array().cloned().unwrap_or_default()
}

/// Applies the migrations. If a migration another change is still adding fails, the
/// tables these tests need (versions up to 4) may still be there: then go on, else fail.
pub fn ensure_schema() -> Result<()> {
    match migrate() {
        Ok(()) => Ok(()),
        Err(e) => {
            let n: u64 = std::thread::spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?
                    .block_on(async {
                        custos_tests::admin()
                            .query("SELECT countDistinct(version) FROM custos.schema_migrations WHERE version <= 4")
                            .fetch_one::<u64>()
                            .await
                            .ok()
                    })
            })
            .join()
            .ok()
            .flatten()
            .unwrap_or(0);
            if n == 4 {
                eprintln!("warning: migrate failed after version 4 ({e}); continuing");
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// The value `seed` makes, run to completion on a runtime of its own thread (so that a
/// `OnceLock` shared by the tests of a binary can hold it); panics if seeding fails.
pub fn seeded<T, F>(seed: fn() -> F) -> T
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(seed())
            .expect("seeding the scenario")
    })
    .join()
    .expect("seed thread")
}

/// Stores `msgs` through the real ingest (with `env`) from fresh topics named after
/// `name`, waits until all are stored and stops the ingest.
pub async fn ingest_all(name: &str, env: &[(&str, &str)], msgs: &[Msg]) -> Result<()> {
    let topics = Topics::create(name, 1).await?;
    produce(&producer()?, &topics.gateway, None, msgs).await?;
    ingest_until_stored(&topics, env, msgs.len() as u64).await?;
    Ok(())
}
