//! The Keycloak of the dev stack (`scripts/keycloak up`, http://127.0.0.1:18080 by default)
//! driven through its Admin REST API: realms, roles, clients, users, tokens, the browser-like
//! authorization-code flow with the consent screen, introspection and a user's consents.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

/// `aud` the consent service accepts (`CUSTOS_OIDC_AUDIENCE`), added by an audience mapper
/// of the privacy API's clients.
pub const PRIVACY_AUDIENCE: &str = "custos-privacy-api";
/// Service-account clients of the privacy API and the realm role each holds.
pub const PRIVACY_CLIENTS: [(&str, Option<&str>); 3] = [
    ("custos-privacy-officer", Some("privacy_officer")),
    ("custos-auditor", Some("auditor")),
    ("custos-no-role", None),
];
const PRIVACY_SECRET: &str = "privacy-client-secret-0123456789";
/// The SMART app patients consent to (consent required).
pub const CLIENT: &str = "growth-chart-app";
const CLIENT_SECRET: &str = "growth-chart-secret";
const REDIRECT: &str = "http://127.0.0.1:1/callback";
const PATIENT_PASSWORD: &str = "Patient-pass-0123456789";

/// Keycloak as `scripts/keycloak` runs it: `CUSTOS_KEYCLOAK_URL`, else port `CUSTOS_KC_PORT`.
pub fn kc_url() -> String {
    std::env::var("CUSTOS_KEYCLOAK_URL").unwrap_or_else(|_| {
        let port = std::env::var("CUSTOS_KC_PORT").unwrap_or_else(|_| "18080".into());
        format!("http://127.0.0.1:{port}")
    })
}

/// The bootstrap admin's password (`scripts/keycloak`'s `CUSTOS_KC_ADMIN_PASSWORD`).
pub fn kc_admin_password() -> String {
    std::env::var("CUSTOS_KEYCLOAK_ADMIN_PASSWORD")
        .or_else(|_| std::env::var("CUSTOS_KC_ADMIN_PASSWORD"))
        .unwrap_or_else(|_| "custos_kc_admin_pw".into())
}

/// An HTTP client that does not follow redirects (the login flow reads them), 30 s timeout.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// A client's protocol mapper adding `audience` to its access tokens (and to its ID tokens
/// when `id_token`).
pub fn audience_mapper(audience: &str, id_token: bool) -> Value {
    json!({
        "name": format!("{audience}-audience"), "protocol": "openid-connect",
        "protocolMapper": "oidc-audience-mapper",
        "config": {"included.custom.audience": audience,
                   "access.token.claim": "true", "id.token.claim": id_token.to_string()}
    })
}

/// Keycloak's Admin REST API and token endpoints.
pub struct Kc {
    http: reqwest::Client,
    base: String,
}

/// Tokens of the authorization-code flow.
pub struct Tokens {
    /// Access token.
    pub access: String,
    /// Refresh token (offline).
    pub refresh: String,
}

/// Access tokens of the privacy API's service-account clients.
pub struct PrivacyTokens {
    /// `privacy_officer`.
    pub officer: String,
    /// `auditor`.
    pub auditor: String,
    /// No Custos role.
    pub no_role: String,
}

/// A minimal cookie jar for the browser-like login.
#[derive(Default)]
struct Jar(HashMap<String, String>);

impl Jar {
    fn take(&mut self, resp: &reqwest::Response) {
        for v in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            if let Some((pair, _)) = v.to_str().unwrap_or_default().split_once(';') {
                if let Some((k, val)) = pair.split_once('=') {
                    self.0.insert(k.trim().to_owned(), val.trim().to_owned());
                }
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn html_attr_after(html: &str, anchor: &str, attr: &str) -> Option<String> {
    let at = html.find(anchor)?;
    let rest = &html[at..];
    let start = rest.find(&format!("{attr}=\""))? + attr.len() + 2;
    let end = rest[start..].find('"')? + start;
    Some(rest[start..end].replace("&amp;", "&"))
}

impl Kc {
    /// A client of the dev stack's Keycloak.
    pub fn new() -> Kc {
        Kc {
            http: http(),
            base: kc_url(),
        }
    }

    /// An access token of the bootstrap admin (realm master).
    pub async fn admin_token(&self) -> Result<String> {
        let resp = self
            .openid_post(
                "master",
                "token",
                &[
                    ("grant_type", "password"),
                    ("client_id", "admin-cli"),
                    ("username", "admin"),
                    ("password", &kc_admin_password()),
                ],
            )
            .await?;
        resp["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("no admin token (is CUSTOS_KEYCLOAK_ADMIN_PASSWORD right?)")
    }

    /// A request to the Admin REST API (`path` below `/admin/realms`): status and body.
    pub async fn admin(
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

    /// POSTs a form to endpoint `endpoint` (`token`, `token/introspect`) of `realm`'s
    /// OpenID Connect protocol; returns the JSON answer.
    pub async fn openid_post(
        &self,
        realm: &str,
        endpoint: &str,
        form: &[(&str, &str)],
    ) -> Result<Value> {
        Ok(self
            .http
            .post(format!(
                "{}/realms/{realm}/protocol/openid-connect/{endpoint}",
                self.base
            ))
            .form(form)
            .send()
            .await
            .context("Keycloak is not reachable: run scripts/keycloak up")?
            .json()
            .await?)
    }

    /// POST to the Admin REST API (`path` below `/admin/realms`); 201 or 204 expected.
    pub async fn post(&self, path: &str, body: Value) -> Result<()> {
        let (s, b) = self.admin(reqwest::Method::POST, path, Some(body)).await?;
        ensure!(s == 201 || s == 204, "POST {path}: {s} {b}");
        Ok(())
    }

    /// GET from the Admin REST API (`path` below `/admin/realms`); 200 expected.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let (s, b) = self.admin(reqwest::Method::GET, path, None).await?;
        ensure!(s == 200, "GET {path}: {s} {b}");
        Ok(serde_json::from_str(&b)?)
    }

    /// A realm (id = name, so Keycloak events' realmId names it) whose access tokens live
    /// `token_secs` seconds, with realm roles `roles`.
    pub async fn create_realm_with_roles(
        &self,
        realm: &str,
        token_secs: u32,
        roles: &[&str],
    ) -> Result<()> {
        self.post(
            "",
            json!({"id": realm, "realm": realm, "enabled": true, "accessTokenLifespan": token_secs}),
        )
        .await?;
        for role in roles {
            self.post(&format!("/{realm}/roles"), json!({"name": role}))
                .await?;
        }
        Ok(())
    }

    /// The id of user `username` of `realm`.
    pub async fn user_id(&self, realm: &str, username: &str) -> Result<String> {
        let users = self
            .get_json(&format!("/{realm}/users?username={username}&exact=true"))
            .await?;
        users[0]["id"]
            .as_str()
            .map(str::to_owned)
            .context("user id")
    }

    /// Grants realm role `role` to user `user_id`.
    pub async fn grant_role(&self, realm: &str, user_id: &str, role: &str) -> Result<()> {
        let rep = self.get_json(&format!("/{realm}/roles/{role}")).await?;
        self.post(
            &format!("/{realm}/users/{user_id}/role-mappings/realm"),
            json!([rep]),
        )
        .await
    }

    /// A realm (see [`Kc::create_realm_with_roles`]) whose access tokens live an hour (a
    /// benchmark outlasts the 5-minute default), with the privacy API's clients.
    pub async fn create_realm(&self, realm: &str) -> Result<()> {
        self.create_realm_with_roles(realm, 3600, &["privacy_officer", "auditor"])
            .await?;
        for (client, role) in PRIVACY_CLIENTS {
            self.post(
                &format!("/{realm}/clients"),
                json!({
                    "clientId": client, "secret": PRIVACY_SECRET, "publicClient": false,
                    "serviceAccountsEnabled": true, "standardFlowEnabled": false,
                    "directAccessGrantsEnabled": false,
                    "protocolMappers": [audience_mapper(PRIVACY_AUDIENCE, false)]
                }),
            )
            .await?;
            let Some(role) = role else { continue };
            let clients = self
                .get_json(&format!("/{realm}/clients?clientId={client}"))
                .await?;
            let uuid = clients[0]["id"].as_str().context("client uuid")?;
            let sa = self
                .get_json(&format!("/{realm}/clients/{uuid}/service-account-user"))
                .await?;
            let sa_id = sa["id"].as_str().context("service account user")?;
            self.grant_role(realm, sa_id, role).await?;
        }
        Ok(())
    }

    /// A client-credentials access token of a privacy API client.
    pub async fn client_token(&self, realm: &str, client: &str) -> Result<String> {
        let v = self
            .openid_post(
                realm,
                "token",
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", client),
                    ("client_secret", PRIVACY_SECRET),
                ],
            )
            .await?;
        v["access_token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no token for {client}: {v}"))
    }

    /// Tokens of the three privacy API clients of `realm`.
    pub async fn privacy_tokens(&self, realm: &str) -> Result<PrivacyTokens> {
        Ok(PrivacyTokens {
            officer: self.client_token(realm, PRIVACY_CLIENTS[0].0).await?,
            auditor: self.client_token(realm, PRIVACY_CLIENTS[1].0).await?,
            no_role: self.client_token(realm, PRIVACY_CLIENTS[2].0).await?,
        })
    }

    /// Realm (see [`Kc::create_realm`]), the SMART client and a patient user; returns the
    /// user's id.
    pub async fn setup(&self, realm: &str, user: &str) -> Result<String> {
        self.create_realm(realm).await?;
        self.add_consent_client(realm).await?;
        self.add_patient(realm, user).await
    }

    /// The SMART client patients consent to ([`CLIENT`], consent required) in `realm`.
    pub async fn add_consent_client(&self, realm: &str) -> Result<()> {
        self.post(
            &format!("/{realm}/clients"),
            json!({
                "clientId": CLIENT, "secret": CLIENT_SECRET, "publicClient": false,
                "standardFlowEnabled": true, "directAccessGrantsEnabled": false,
                "consentRequired": true, "redirectUris": [REDIRECT]
            }),
        )
        .await
    }

    /// Another patient user of a realm [`Kc::setup`] made; returns the user's id.
    pub async fn add_patient(&self, realm: &str, user: &str) -> Result<String> {
        self.create_user(realm, user, "Pat", "Ient", PATIENT_PASSWORD)
            .await?;
        self.user_id(realm, user).await
    }

    /// An enabled user with a verified e-mail and a permanent password.
    pub async fn create_user(
        &self,
        realm: &str,
        user: &str,
        first: &str,
        last: &str,
        password: &str,
    ) -> Result<()> {
        self.post(
            &format!("/{realm}/users"),
            json!({
                "username": user, "enabled": true, "email": format!("{user}@example.org"),
                "emailVerified": true, "firstName": first, "lastName": last,
                "credentials": [{"type": "password", "value": password, "temporary": false}]
            }),
        )
        .await
    }

    /// A password-grant token response (access and ID token) of confidential client `client`.
    pub async fn password_grant(
        &self,
        realm: &str,
        (client, secret): (&str, &str),
        user: &str,
        password: &str,
    ) -> Result<Value> {
        let v = self
            .openid_post(
                realm,
                "token",
                &[
                    ("grant_type", "password"),
                    ("client_id", client),
                    ("client_secret", secret),
                    ("username", user),
                    ("password", password),
                    ("scope", "openid"),
                ],
            )
            .await?;
        ensure!(v["access_token"].is_string(), "no token for {user}: {v}");
        Ok(v)
    }

    /// Deletes a realm (best effort: cleanup).
    pub async fn delete_realm(&self, realm: &str) {
        let _ = self
            .admin(reqwest::Method::DELETE, &format!("/{realm}"), None)
            .await;
    }

    /// The authorization-code flow with the login form and the consent screen.
    pub async fn login_with_consent(&self, realm: &str, user: &str) -> Result<Tokens> {
        let mut jar = Jar::default();
        let auth = format!(
            "{}/realms/{realm}/protocol/openid-connect/auth?client_id={CLIENT}&response_type=code\
             &scope=openid%20offline_access&redirect_uri={REDIRECT}&state=e2e",
            self.base
        );
        let resp = self.http.get(&auth).send().await?;
        jar.take(&resp);
        let html = resp.text().await?;
        let action = html_attr_after(&html, "kc-form-login", "action")
            .or_else(|| html_attr_after(&html, "<form", "action"))
            .context("no login form")?;
        let resp = self
            .http
            .post(&action)
            .header("Cookie", jar.header())
            .form(&[
                ("username", user),
                ("password", PATIENT_PASSWORD),
                ("credentialId", ""),
            ])
            .send()
            .await?;
        jar.take(&resp);
        // Keycloak redirects to the OAUTH_GRANT required action (the consent screen).
        let mut location = resp
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned)
            .context("login did not redirect (wrong password or an extra required action?)")?;
        if !location.contains("code=") {
            let resp = self
                .http
                .get(&location)
                .header("Cookie", jar.header())
                .send()
                .await?;
            jar.take(&resp);
            let html = resp.text().await?;
            // The consent form posts to .../login-actions/consent?...
            let action = html
                .find("/login-actions/consent")
                .and_then(|at| {
                    let start = html[..at].rfind('"')? + 1;
                    let end = html[at..].find('"')? + at;
                    Some(html[start..end].replace("&amp;", "&"))
                })
                .context("no consent form")?;
            let action = if action.starts_with('/') {
                format!("{}{action}", self.base)
            } else {
                action
            };
            let code = html_attr_after(&html, "name=\"code\"", "value").context("consent code")?;
            let resp = self
                .http
                .post(&action)
                .header("Cookie", jar.header())
                .form(&[("code", code.as_str()), ("accept", "Yes")])
                .send()
                .await?;
            location = resp
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned)
                .context("consent did not redirect")?;
        }
        let code = location
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("code="))
            .context("no authorization code")?
            .to_owned();
        let tok = self
            .openid_post(
                realm,
                "token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("client_id", CLIENT),
                    ("client_secret", CLIENT_SECRET),
                ],
            )
            .await?;
        Ok(Tokens {
            access: tok["access_token"]
                .as_str()
                .context("access token")?
                .to_owned(),
            refresh: tok["refresh_token"]
                .as_str()
                .context("refresh token")?
                .to_owned(),
        })
    }

    /// RFC 7662 introspection by the client itself.
    pub async fn active(&self, realm: &str, token: &str) -> Result<bool> {
        let v = self
            .openid_post(
                realm,
                "token/introspect",
                &[
                    ("token", token),
                    ("client_id", CLIENT),
                    ("client_secret", CLIENT_SECRET),
                ],
            )
            .await?;
        v["active"]
            .as_bool()
            .context("introspection without `active`")
    }

    /// The consents user `user_id` gave.
    pub async fn consents(&self, realm: &str, user_id: &str) -> Result<Vec<Value>> {
        let v = self
            .get_json(&format!("/{realm}/users/{user_id}/consents"))
            .await?;
        Ok(serde_json::from_value(v)?)
    }
}
