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

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use custos_tests::*;
use serde_json::{json, Value};

mod support;

use support::{app_for, ensure_schema, get, url, AUDIENCE};

const CLIENT: &str = "custos-query-console";
const CLIENT_SECRET: &str = "query-console-secret-0123456789";
const PASSWORD: &str = "Officer-pass-0123456789";

/// Keycloak as `scripts/keycloak` runs it: `CUSTOS_KEYCLOAK_URL`, else port `CUSTOS_KC_PORT`.
fn kc_url() -> String {
    std::env::var("CUSTOS_KEYCLOAK_URL").unwrap_or_else(|_| {
        let port = std::env::var("CUSTOS_KC_PORT").unwrap_or_else(|_| "18080".into());
        format!("http://127.0.0.1:{port}")
    })
}

fn kc_admin_password() -> String {
    std::env::var("CUSTOS_KEYCLOAK_ADMIN_PASSWORD")
        .or_else(|_| std::env::var("CUSTOS_KC_ADMIN_PASSWORD"))
        .unwrap_or_else(|_| "custos_kc_admin_pw".into())
}

struct Kc {
    http: reqwest::Client,
    base: String,
}

impl Kc {
    fn new() -> Kc {
        Kc {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            base: kc_url(),
        }
    }

    async fn admin_token(&self) -> Result<String> {
        let v: Value = self
            .http
            .post(format!(
                "{}/realms/master/protocol/openid-connect/token",
                self.base
            ))
            .form(&[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", "admin"),
                ("password", &kc_admin_password()),
            ])
            .send()
            .await
            .context("Keycloak is not reachable: run scripts/keycloak up")?
            .json()
            .await?;
        v["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("no admin token")
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, String)> {
        let mut req = self
            .http
            .request(method, format!("{}/admin/realms{path}", self.base))
            .bearer_auth(self.admin_token().await?);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    async fn post(&self, path: &str, body: Value) -> Result<()> {
        let (s, b) = self.admin(reqwest::Method::POST, path, Some(body)).await?;
        ensure!(s == 201 || s == 204, "POST {path}: {s} {b}");
        Ok(())
    }

    async fn get_json(&self, path: &str) -> Result<Value> {
        let (s, b) = self.admin(reqwest::Method::GET, path, None).await?;
        ensure!(s == 200, "GET {path}: {s} {b}");
        Ok(serde_json::from_str(&b)?)
    }

    /// The realm, its role, the client and the users `officer` (with the role) and
    /// `clerk` (without).
    async fn setup(&self, realm: &str) -> Result<()> {
        self.post(
            "",
            json!({"id": realm, "realm": realm, "enabled": true, "accessTokenLifespan": 600}),
        )
        .await?;
        self.post(
            &format!("/{realm}/roles"),
            json!({"name": "compliance_officer"}),
        )
        .await?;
        self.post(
            &format!("/{realm}/clients"),
            json!({
                "clientId": CLIENT, "secret": CLIENT_SECRET, "publicClient": false,
                "standardFlowEnabled": false, "directAccessGrantsEnabled": true,
                "protocolMappers": [{
                    "name": "custos-query-audience", "protocol": "openid-connect",
                    "protocolMapper": "oidc-audience-mapper",
                    // In the ID token too: the ID token must be refused for its type, not
                    // for its audience.
                    "config": {"included.custom.audience": AUDIENCE,
                               "access.token.claim": "true", "id.token.claim": "true"}
                }]
            }),
        )
        .await?;
        let role = self
            .get_json(&format!("/{realm}/roles/compliance_officer"))
            .await?;
        for (user, with_role) in [("officer", true), ("clerk", false)] {
            self.post(
                &format!("/{realm}/users"),
                json!({
                    "username": user, "enabled": true, "email": format!("{user}@example.org"),
                    "emailVerified": true, "firstName": "Test", "lastName": user,
                    "credentials": [{"type": "password", "value": PASSWORD, "temporary": false}]
                }),
            )
            .await?;
            if with_role {
                let users = self
                    .get_json(&format!("/{realm}/users?username={user}&exact=true"))
                    .await?;
                let id = users[0]["id"].as_str().context("user id")?;
                self.post(
                    &format!("/{realm}/users/{id}/role-mappings/realm"),
                    json!([role]),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// A password-grant token response (access and ID token).
    async fn password_grant(&self, realm: &str, user: &str) -> Result<Value> {
        let v: Value = self
            .http
            .post(format!(
                "{}/realms/{realm}/protocol/openid-connect/token",
                self.base
            ))
            .form(&[
                ("grant_type", "password"),
                ("client_id", CLIENT),
                ("client_secret", CLIENT_SECRET),
                ("username", user),
                ("password", PASSWORD),
                ("scope", "openid"),
            ])
            .send()
            .await?
            .json()
            .await?;
        ensure!(v["access_token"].is_string(), "no token for {user}: {v}");
        Ok(v)
    }

    async fn delete_realm(&self, realm: &str) {
        let _ = self
            .admin(reqwest::Method::DELETE, &format!("/{realm}"), None)
            .await;
    }
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
    kc.setup(&realm).await?;
    let result = async {
        let issuer = format!("{}/realms/{realm}", kc.base);
        let app = app_for(&issuer, &[]);

        let officer = kc.password_grant(&realm, "officer").await?;
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

        let clerk = kc.password_grant(&realm, "clerk").await?;
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
