//! End-to-end: the query API's key handling while the authorization server misbehaves.
//!
//! Each test runs its own test issuer on 127.0.0.1 (`support::issuer`: discovery + the fixture
//! JWKS) that can be switched to *hung*: it accepts the request and never answers, the worst case for a
//! client (every fetch lasts the whole `CUSTOS_OIDC_HTTP_TIMEOUT_SECS`). The API runs
//! in-process against the real ClickHouse.

use std::time::{Duration, Instant};

use anyhow::Result;
use axum::Router;
use custos_tests::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

mod support;

use support::{claims_of, ensure_schema, fixture, get, sign, url, TestIssuer, AUDIENCE};

/// An access token of `issuer` for the console with `roles`, signed under `kid`.
fn token_of(issuer: &TestIssuer, kid: &str, roles: &[&str]) -> String {
    let claims = claims_of(&issuer.base, "console", "jwks-tester", roles);
    sign(Algorithm::RS256, kid, &claims)
}

fn app(issuer: &TestIssuer, extra: &[&str]) -> Router {
    let mut args = vec!["--oidc-http-timeout-secs", "1"];
    args.extend_from_slice(extra);
    support::app_for(&issuer.base, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_do_not_storm_a_hung_issuer() -> Result<()> {
    ensure_schema()?;
    let issuer = TestIssuer::start(|_| json!({}));
    // Room for all 200 at once (the default concurrency limit would shed most of them).
    let app = app(
        &issuer,
        &[
            "--oidc-jwks-refresh-min-secs",
            "2",
            "--max-concurrent-requests",
            "500",
        ],
    );
    let tenant = unique("qjw");
    let path = url("/v1/reports/break-glass", &[("tenant", &tenant)]);
    let good = token_of(&issuer, "rsa-1", &["auditor"]);
    let r = get(&app, &path, Some(&good)).await;
    assert_eq!(r.status, 200, "{}", r.text());

    issuer.hang();
    // Past the attempt spacing: the next unknown kid may fetch once.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = issuer.hits();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (app, path) = (app.clone(), path.clone());
        let tok = token_of(
            &issuer,
            &format!("random-kid-{i}-{}", unique("k")),
            &["auditor"],
        );
        tasks.push(tokio::spawn(async move {
            get(&app, &path, Some(&tok)).await.status.as_u16()
        }));
    }
    // A known key verifies meanwhile, without waiting for the hung fetch.
    let known = Instant::now();
    let r = get(&app, &path, Some(&good)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        known.elapsed() < Duration::from_millis(900),
        "a known kid waited {:?}",
        known.elapsed()
    );
    for t in tasks {
        assert_eq!(t.await?, 401);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "200 unknown kids took {took:?}"
    );
    let fetches = issuer.hits() - before;
    assert!(fetches <= 2, "{fetches} fetches for 200 unknown kids");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_does_not_fetch_per_probe() -> Result<()> {
    ensure_schema()?;
    let issuer = TestIssuer::start(|_| json!({}));
    issuer.hang();
    let app = app(&issuer, &["--oidc-jwks-refresh-min-secs", "60"]);
    let started = Instant::now();
    for _ in 0..20 {
        let r = get(&app, "/readyz", None).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["jwks"], false);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "20 probes took {took:?}");
    assert!(
        issuer.hits() <= 1,
        "{} fetches for 20 probes",
        issuer.hits()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_keys_stop_verifying_after_the_configured_age() -> Result<()> {
    ensure_schema()?;
    let issuer = TestIssuer::start(|_| json!({}));
    let app = app(
        &issuer,
        &[
            "--oidc-jwks-refresh-min-secs",
            "1",
            "--oidc-jwks-ttl-secs",
            "1",
            "--oidc-jwks-stale-max-secs",
            "3",
        ],
    );
    let path = url("/v1/reports/break-glass", &[("tenant", &unique("qst"))]);
    let good = token_of(&issuer, "rsa-1", &["auditor"]);
    assert_eq!(get(&app, &path, Some(&good)).await.status, 200);
    issuer.hang();
    // Past the TTL, within the stale limit: the cached key still verifies.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = get(&app, &path, Some(&good)).await;
    assert_eq!(r.status, 200, "stale key within the limit: {}", r.text());
    // Past the stale limit: nothing verifies until the issuer answers again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = get(&app, &path, Some(&good)).await;
    assert_eq!(r.status, 401, "stale key past the limit: {}", r.text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_non_access_tokens_are_401() -> Result<()> {
    ensure_schema()?;
    let issuer = TestIssuer::start(|_| json!({}));
    let app = app(&issuer, &[]);
    let path = url("/v1/reports/break-glass", &[("tenant", &unique("qtt"))]);
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": issuer.base, "aud": AUDIENCE, "sub": "typ-tester",
        "iat": now, "exp": now + 600, "realm_access": {"roles": ["auditor"]}});
    assert_eq!(
        get(&app, &path, Some(&sign(Algorithm::RS256, "rsa-1", &claims)))
            .await
            .status,
        200
    );
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&fixture("rsa_private.pem"))?;
    let with_typ = |typ: Option<&str>, claims: &Value| {
        let mut h = jsonwebtoken::Header::new(Algorithm::RS256);
        h.kid = Some("rsa-1".into());
        h.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(&h, claims, &key).expect("sign")
    };
    assert_eq!(
        get(&app, &path, Some(&with_typ(Some("at+jwt"), &claims)))
            .await
            .status,
        200,
        "RFC 9068 access token"
    );
    let mut id = claims.clone();
    id["typ"] = json!("ID");
    let mut big = claims.clone();
    big["padding"] = json!("x".repeat(9 * 1024));
    for (name, tok) in [
        ("payload typ ID", with_typ(Some("JWT"), &id)),
        ("header typ id+jwt", with_typ(Some("id+jwt"), &claims)),
        ("no header typ", with_typ(None, &claims)),
        ("over 8 KiB", with_typ(Some("JWT"), &big)),
    ] {
        let r = get(&app, &path, Some(&tok)).await;
        assert_eq!(r.status, 401, "{name}: {}", r.text());
        assert_eq!(r.content_type, "application/problem+json", "{name}");
    }
    Ok(())
}
