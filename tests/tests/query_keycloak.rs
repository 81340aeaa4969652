//! End-to-end: the query API's authentication against the real Keycloak
//! (`scripts/keycloak up`, http://127.0.0.1:18080 by default), not the in-test issuer.
//!
//! The test creates its own realm with the `compliance_officer` realm role, a confidential
//! client allowed the password grant whose audience mapper adds `custos-query` to access
//! *and* ID tokens, and two users (with and without the role). The query API runs
//! in-process with `CUSTOS_OIDC_ISSUER` = that realm (discovery and JWKS from Keycloak) and
//! `CUSTOS_OIDC_ROLES_CLAIM=realm_access.roles`. A password-grant access token of the officer
//! reads a report (200), the other user's is refused (403), and the officer's ID token,
//! although signed by the realm with the right `iss` and `aud`, is refused (401).

use anyhow::{Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use custos_tests::*;
use serde_json::{json, Value};

mod support;

use support::keycloak::{audience_mapper, kc_url, Kc};
use support::{app_for, ensure_schema, get, url, AUDIENCE};

const CLIENT: &str = "custos-query-console";
const CLIENT_SECRET: &str = "query-console-secret-0123456789";
const PASSWORD: &str = "Officer-pass-0123456789";

/// The realm, its role, the client and the users `officer` (with the role) and `clerk`
/// (without).
async fn setup(kc: &Kc, realm: &str) -> Result<()> {
    kc.create_realm_with_roles(realm, 600, &["compliance_officer"])
        .await?;
    kc.post(
        &format!("/{realm}/clients"),
        json!({
            "clientId": CLIENT, "secret": CLIENT_SECRET, "publicClient": false,
            "standardFlowEnabled": false, "directAccessGrantsEnabled": true,
            // In the ID token too: the ID token must be refused for its type, not for its
            // audience.
            "protocolMappers": [audience_mapper(AUDIENCE, true)]
        }),
    )
    .await?;
    for (user, with_role) in [("officer", true), ("clerk", false)] {
        kc.create_user(realm, user, "Test", user, PASSWORD).await?;
        if with_role {
            let id = kc.user_id(realm, user).await?;
            kc.grant_role(realm, &id, "compliance_officer").await?;
        }
    }
    Ok(())
}

fn part(jwt: &str, i: usize) -> Value {
    let seg = jwt.split('.').nth(i).expect("jwt segment");
    serde_json::from_slice(&B64.decode(seg).expect("base64url")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_access_tokens_authenticate_and_id_tokens_do_not() -> Result<()> {
    ensure_schema()?;
    let kc = Kc::new();
    let realm = unique("qkc");
    setup(&kc, &realm).await?;
    let result = async {
        let issuer = format!("{}/realms/{realm}", kc_url());
        let app = app_for(&issuer, &[]);

        let officer = kc
            .password_grant(&realm, (CLIENT, CLIENT_SECRET), "officer", PASSWORD)
            .await?;
        let access = officer["access_token"].as_str().context("access token")?;
        let id_token = officer["id_token"].as_str().context("id token")?;
        // What the type rule relies on: Keycloak's header and payload `typ`.
        assert_eq!(part(access, 0)["typ"], "JWT");
        assert_eq!(part(access, 1)["typ"], "Bearer");
        assert_eq!(part(id_token, 1)["typ"], "ID");
        let aud = part(id_token, 1)["aud"].clone();
        assert!(
            aud == AUDIENCE || aud.as_array().is_some_and(|a| a.contains(&json!(AUDIENCE))),
            "the ID token carries the API audience: {aud}"
        );

        let tenant = unique("qkct");
        let path = url("/v1/reports/break-glass", &[("tenant", &tenant)]);
        let r = get(&app, &path, Some(access)).await;
        assert_eq!(r.status, 200, "officer access token: {}", r.text());
        assert_eq!(r.json()["tenant"], tenant.as_str());

        let clerk = kc
            .password_grant(&realm, (CLIENT, CLIENT_SECRET), "clerk", PASSWORD)
            .await?;
        let r = get(
            &app,
            &path,
            Some(clerk["access_token"].as_str().context("clerk token")?),
        )
        .await;
        assert_eq!(r.status, 403, "access token without the role: {}", r.text());
        assert_eq!(r.content_type, "application/problem+json");

        let r = get(&app, &path, Some(id_token)).await;
        assert_eq!(r.status, 401, "ID token: {}", r.text());
        assert_eq!(r.content_type, "application/problem+json");
        Ok::<(), anyhow::Error>(())
    }
    .await;
    kc.delete_realm(&realm).await;
    result
}
