//! End-to-end: who may read which report: the role matrix, the tenant claim binding every
//! tenant-scoped endpoint, and forged or altered JWTs (the query API in-process, the in-test
//! issuer of `support::issuer`).

use anyhow::{Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use custos_tests::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

mod support;

use support::reports::*;
use support::{claims, ensure_schema, fixture, get, now, sign, token, url};

const ROLES: [&str; 5] = [
    "compliance_officer",
    "privacy_officer",
    "incident_responder",
    "auditor",
    "none",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix() -> Result<()> {
    ensure_schema()?;
    let app = app();
    let ten = unique("qr");
    let t = ten.as_str();
    let endpoints: Vec<(String, &[&str])> = vec![
        (
            url(
                "/v1/reports/patient-access",
                &[("tenant", t), ("patient", "x")],
            ),
            &["compliance_officer", "auditor"],
        ),
        (
            url("/v1/reports/user-activity", &[("tenant", t), ("user", "x")]),
            &["compliance_officer", "incident_responder", "auditor"],
        ),
        (
            url(
                "/v1/reports/disclosures",
                &[("tenant", t), ("patient", "x")],
            ),
            &["compliance_officer", "auditor"],
        ),
        (
            url("/v1/reports/break-glass", &[("tenant", t)]),
            &["compliance_officer", "auditor"],
        ),
        (
            url("/fhir/AuditEvent", &[("tenant", t), ("patient", "x")]),
            &["compliance_officer", "auditor"],
        ),
        (
            url("/v1/reports/token-trace", &[("tenant", t), ("jti", "x")]),
            &["incident_responder", "auditor"],
        ),
        (
            url("/v1/reports/revocation-violations", &[("tenant", t)]),
            &["privacy_officer", "auditor"],
        ),
        (
            url(
                "/v1/reports/consent-history",
                &[("tenant", t), ("patient", "x")],
            ),
            &["privacy_officer", "auditor"],
        ),
        (
            url("/v1/reports/query-audit", &[("tenant", t)]),
            &["auditor"],
        ),
    ];
    for (path, allowed) in &endpoints {
        for role in ROLES {
            let tok = token(&format!("matrix-{role}"), &[role]);
            let r = get(&app, path, Some(&tok)).await;
            let want = if allowed.contains(&role) { 200 } else { 403 };
            assert_eq!(r.status.as_u16(), want, "{role} on {path}: {}", r.text());
            if want == 403 && path.starts_with("/fhir/") {
                // FHIR clients get an OperationOutcome (query_fhir.rs covers the rest).
                assert_eq!(r.content_type, "application/fhir+json");
                assert_eq!(r.json()["issue"][0]["code"], "forbidden");
            } else if want == 403 {
                assert_eq!(r.content_type, "application/problem+json");
                assert_eq!(r.json()["status"], 403);
            }
        }
        let r = get(&app, path, None).await;
        assert_eq!(r.status, 401, "anonymous on {path}");
    }
    // Unauthenticated operational endpoints.
    assert_eq!(get(&app, "/healthz", None).await.status, 200);
    let r = get(&app, "/readyz", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = get(&app, "/openapi.json", None).await.json();
    for p in [
        "/v1/reports/patient-access",
        "/v1/reports/token-trace",
        "/fhir/AuditEvent",
        "/v1/reports/query-audit",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing from OpenAPI");
    }
    // `/metrics` is served on the admin address only (see query_hardening.rs).
    assert_eq!(get(&app, "/metrics", None).await.status, 404);
    assert_eq!(get(&app, "/nope", None).await.status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_claim_binds_every_tenant_scoped_endpoint() -> Result<()> {
    ensure_schema()?;
    let app = app_with(&["--oidc-tenants-claim", "custos.tenants"]);
    let mine = unique("qtm");
    let other = unique("qto");
    let bound = |sub: &str, tenants: Value| {
        let mut c = claims(sub, &["auditor"]);
        c["custos"] = json!({ "tenants": tenants });
        sign(Algorithm::RS256, "rsa-1", &c)
    };
    let mine_only = bound("tenant-bound", json!([mine]));
    let unbound = token("no-tenant-claim", &["auditor"]);
    for t in [mine.as_str(), other.as_str()] {
        let paths = [
            url(
                "/v1/reports/patient-access",
                &[("tenant", t), ("patient", "x")],
            ),
            url("/v1/reports/user-activity", &[("tenant", t), ("user", "x")]),
            url(
                "/v1/reports/disclosures",
                &[("tenant", t), ("patient", "x")],
            ),
            url("/v1/reports/break-glass", &[("tenant", t)]),
            url("/v1/reports/token-trace", &[("tenant", t), ("jti", "x")]),
            url("/v1/reports/revocation-violations", &[("tenant", t)]),
            url(
                "/v1/reports/consent-history",
                &[("tenant", t), ("patient", "x")],
            ),
            url("/v1/reports/query-audit", &[("tenant", t)]),
            url("/fhir/AuditEvent", &[("tenant", t), ("patient", "x")]),
        ];
        for path in &paths {
            let want = if t == mine { 200 } else { 403 };
            let r = get(&app, path, Some(&mine_only)).await;
            assert_eq!(r.status.as_u16(), want, "{path}: {}", r.text());
            // A token without the claim reads no tenant once the claim is configured.
            let r = get(&app, path, Some(&unbound)).await;
            assert_eq!(r.status, 403, "{path} without the claim: {}", r.text());
            let want_type = if path.starts_with("/fhir/") {
                "application/fhir+json"
            } else {
                "application/problem+json"
            };
            assert_eq!(r.content_type, want_type);
        }
    }
    // Integrity chains span every tenant: refused to a tenant-bound token.
    let r = get(&app, "/v1/integrity/verify", Some(&mine_only)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // A space-separated claim works like an array.
    let spaced = bound("tenant-bound-2", json!(format!("{other} {mine}")));
    let r = get(
        &app,
        &url("/v1/reports/break-glass", &[("tenant", &other)]),
        Some(&spaced),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_attacks_are_rejected() -> Result<()> {
    ensure_schema()?;
    let app = app();
    let ten = unique("qj");
    let path = url("/v1/reports/break-glass", &[("tenant", &ten)]);
    let good = claims("jwt-tester", &["auditor"]);
    // Controls: RS256 and ES256 tokens from the JWKS keys pass.
    assert_eq!(
        get(&app, &path, Some(&sign(Algorithm::RS256, "rsa-1", &good)))
            .await
            .status,
        200
    );
    assert_eq!(
        get(&app, &path, Some(&sign(Algorithm::ES256, "ec-1", &good)))
            .await
            .status,
        200
    );

    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"));
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"})),
        b64(&good)
    );
    let hs_with_public = jsonwebtoken::encode(
        &Header {
            kid: Some("rsa-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &good,
        &EncodingKey::from_secret(&fixture("rsa_public.pem")),
    )?;
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 3600);
    expired["nbf"] = json!(now() - 7200);
    let mut not_yet = good.clone();
    not_yet["nbf"] = json!(now() + 3600);
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.example/realms/general");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("some-other-api");
    let mut no_exp = good.clone();
    no_exp.as_object_mut().context("claims")?.remove("exp");
    let valid = sign(Algorithm::RS256, "rsa-1", &good);
    let (head, sig) = valid.rsplit_once('.').context("jwt")?;
    let mut sig_bytes = URL_SAFE_NO_PAD.decode(sig)?;
    sig_bytes[10] ^= 0x01;
    let altered_sig = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&sig_bytes));
    let (h, rest) = valid.split_once('.').context("jwt")?;
    let (_, s) = rest.split_once('.').context("jwt")?;
    let mut elevated = good.clone();
    elevated["sub"] = json!("someone-else");
    let altered_claims = format!("{h}.{}.{s}", b64(&elevated));
    let attacks = [
        ("alg none", none),
        ("HS256 keyed with the RSA public key", hs_with_public),
        ("expired", sign(Algorithm::RS256, "rsa-1", &expired)),
        ("not yet valid", sign(Algorithm::RS256, "rsa-1", &not_yet)),
        ("wrong iss", sign(Algorithm::RS256, "rsa-1", &wrong_iss)),
        ("wrong aud", sign(Algorithm::RS256, "rsa-1", &wrong_aud)),
        ("no exp", sign(Algorithm::RS256, "rsa-1", &no_exp)),
        ("unknown kid", sign(Algorithm::RS256, "rotated-away", &good)),
        (
            "EC kid with an RSA signature",
            sign(Algorithm::RS256, "ec-1", &good),
        ),
        ("altered signature", altered_sig),
        ("altered claims", altered_claims),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (name, tok) in attacks {
        let r = get(&app, &path, Some(&tok)).await;
        assert_eq!(r.status, 401, "{name} was not rejected: {}", r.text());
        assert_eq!(r.content_type, "application/problem+json", "{name}");
        assert!(!r.text().contains(&tok), "{name}: token echoed");
    }
    Ok(())
}
