//! Keycloak Admin REST adapter: revokes the user's consent for the client
//! (`DELETE /admin/realms/{realm}/users/{id}/consents/{clientId}`, which also revokes the
//! client's offline tokens) and ends the user's sessions the client takes part in
//! (`DELETE /admin/realms/{realm}/sessions/{id}`), or all of them
//! (`POST /admin/realms/{realm}/users/{id}/logout`), per configuration.
//!
//! Idempotent: a consent already gone (`404 Consent nor offline token not found`) counts as
//! revoked, so a retry after a lost answer is harmless. Path segments are percent-encoded by
//! the URL builder; the subject never appears in logs or error details.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode, Url};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::push::{Outcome, Verdict};

/// Which sessions to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logout {
    /// Sessions the client is part of.
    Client,
    /// Every session of the user.
    User,
    /// None (consent and offline tokens only).
    None,
}

impl Logout {
    /// Parses `client`, `user` or `none`.
    pub fn parse(s: &str) -> Logout {
        match s {
            "user" => Logout::User,
            "none" => Logout::None,
            _ => Logout::Client,
        }
    }
}

/// How the adapter authenticates.
#[derive(Clone)]
pub enum AdminCredentials {
    /// Resource-owner password grant (e.g. the bootstrap admin with `admin-cli`).
    Password {
        /// User.
        user: String,
        /// Password.
        password: String,
    },
    /// Client-credentials grant of a service account with `manage-users`.
    ClientSecret(String),
}

impl std::fmt::Debug for AdminCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminCredentials::Password { user, .. } => {
                write!(f, "Password {{ user: {user:?}, password: <redacted> }}")
            }
            AdminCredentials::ClientSecret(_) => f.write_str("ClientSecret(<redacted>)"),
        }
    }
}

/// The adapter.
#[derive(Debug)]
pub struct KeycloakAdapter {
    base: Url,
    admin_realm: String,
    admin_client_id: String,
    credentials: AdminCredentials,
    logout: Logout,
    http: Client,
    token: Mutex<Option<(String, Instant)>>,
    realms: Mutex<HashMap<String, String>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: u64,
}

#[derive(Deserialize)]
struct RealmRep {
    id: String,
    realm: String,
}

#[derive(Deserialize)]
struct SessionRep {
    id: String,
    #[serde(default)]
    clients: HashMap<String, String>,
}

enum Step<T> {
    Ok(T),
    Stop(Outcome),
}

macro_rules! step {
    ($e:expr) => {
        match $e {
            Step::Ok(v) => v,
            Step::Stop(o) => return o,
        }
    };
}

impl KeycloakAdapter {
    /// A new adapter for the Keycloak at `base` (e.g. `http://127.0.0.1:18080`).
    pub fn new(
        base: &str,
        admin_realm: &str,
        admin_client_id: &str,
        credentials: AdminCredentials,
        logout: Logout,
        timeout: Duration,
    ) -> Result<KeycloakAdapter, String> {
        let base = Url::parse(base.trim_end_matches('/'))
            .map_err(|_| "CUSTOS_KEYCLOAK_URL is not a URL".to_owned())?;
        // Never follow a redirect: it would re-send the SET or the admin token to another
        // address. A 3xx is a failed delivery, recorded with its status.
        let http = Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(KeycloakAdapter {
            base,
            admin_realm: admin_realm.to_owned(),
            admin_client_id: admin_client_id.to_owned(),
            credentials,
            logout,
            http,
            token: Mutex::new(None),
            realms: Mutex::new(HashMap::new()),
        })
    }

    /// The realm an issuer names, if the issuer is this Keycloak: `keycloak:{realm id or
    /// name}` (Keycloak event JSON) or `{base}/realms/{name}`.
    pub fn realm_of(&self, issuer: &str) -> Option<String> {
        if let Some(r) = issuer.strip_prefix("keycloak:") {
            return (!r.is_empty()).then(|| r.to_owned());
        }
        let prefix = format!("{}/realms/", self.base.as_str().trim_end_matches('/'));
        issuer
            .strip_prefix(&prefix)
            .map(|r| r.trim_end_matches('/').to_owned())
            .filter(|r| !r.is_empty() && !r.contains('/'))
    }

    /// The issuer URL of a realm as Keycloak publishes it.
    pub fn issuer_url(&self, realm_name: &str) -> String {
        format!(
            "{}/realms/{realm_name}",
            self.base.as_str().trim_end_matches('/')
        )
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop_if_empty();
            for s in segments {
                p.push(s);
            }
        }
        url
    }

    async fn admin_token(&self) -> Step<String> {
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Step::Ok(t.clone());
            }
        }
        let url = self.url(&[
            "realms",
            &self.admin_realm,
            "protocol",
            "openid-connect",
            "token",
        ]);
        let mut form: Vec<(&str, &str)> = vec![("client_id", &self.admin_client_id)];
        match &self.credentials {
            AdminCredentials::Password { user, password } => {
                form.extend([
                    ("grant_type", "password"),
                    ("username", user.as_str()),
                    ("password", password.as_str()),
                ]);
            }
            AdminCredentials::ClientSecret(secret) => {
                form.extend([
                    ("grant_type", "client_credentials"),
                    ("client_secret", secret.as_str()),
                ]);
            }
        }
        let resp = match self.http.post(url).form(&form).send().await {
            Ok(r) => r,
            Err(e) => return Step::Stop(Outcome::transport("admin token", &e)),
        };
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            // The token endpoint's error body names the error, never the credentials.
            return Step::Stop(Outcome::http("admin token", status.as_u16(), &body));
        }
        let Ok(tok) = serde_json::from_str::<TokenResponse>(&body) else {
            return Step::Stop(Outcome::failure(
                Verdict::Retry,
                status.as_u16(),
                "admin_token_body",
                "admin token: unexpected response",
                "",
            ));
        };
        let life = Duration::from_secs(tok.expires_in.max(10).saturating_sub(5));
        *cached = Some((tok.access_token.clone(), Instant::now() + life));
        Step::Ok(tok.access_token)
    }

    async fn realm_name(&self, token: &str, realm_ref: &str) -> Step<String> {
        if let Some(name) = self.realms.lock().await.get(realm_ref) {
            return Step::Ok(name.clone());
        }
        let resp = match self
            .http
            .get(self.url(&["admin", "realms"]))
            .bearer_auth(token)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Step::Stop(Outcome::transport("list realms", &e)),
        };
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Step::Stop(self.refused("list realms", status.as_u16(), &body).await);
        }
        let realms: Vec<RealmRep> = serde_json::from_str(&body).unwrap_or_default();
        let mut map = self.realms.lock().await;
        for r in &realms {
            map.insert(r.id.clone(), r.realm.clone());
            map.insert(r.realm.clone(), r.realm.clone());
        }
        match map.get(realm_ref) {
            Some(n) => Step::Ok(n.clone()),
            None => Step::Stop(Outcome::failure(
                Verdict::Failed,
                404,
                "realm_not_found",
                "the consent's realm does not exist at Keycloak",
                "",
            )),
        }
    }

    /// Revokes `client_id`'s consent and offline tokens for `subject` in the issuer's
    /// realm, then ends the configured sessions.
    pub async fn deliver(&self, issuer: &str, subject: &str, client_id: &str) -> Outcome {
        let Some(realm_ref) = self.realm_of(issuer) else {
            return Outcome::failure(
                Verdict::Failed,
                0,
                "not_this_as",
                "the consent's issuer is not the configured Keycloak",
                "",
            );
        };
        if [subject, client_id]
            .iter()
            .any(|s| s.is_empty() || *s == "." || *s == "..")
        {
            return Outcome::failure(
                Verdict::Failed,
                0,
                "bad_identifier",
                "empty or dot-segment subject or client id",
                "",
            );
        }
        let token = step!(self.admin_token().await);
        // An issuer URL names its realm. Only `keycloak:{realmId}` needs the realms listed,
        // which a realm's own service account (manage-users there, nothing server-wide) may
        // not do.
        let realm = if issuer.starts_with("keycloak:") {
            step!(self.realm_name(&token, &realm_ref).await)
        } else {
            realm_ref
        };
        // The consent (with its offline tokens) and the sessions are ended concurrently.
        let (consent, sessions) = tokio::join!(
            self.revoke_consent(&token, &realm, subject, client_id),
            self.end_sessions(&token, &realm, subject, client_id),
        );
        let (status, note, body) = step!(consent);
        let ended = step!(sessions);
        Outcome::delivered(status, format!("{note}; {ended} session(s) ended"), &body)
    }

    async fn revoke_consent(
        &self,
        token: &str,
        realm: &str,
        subject: &str,
        client_id: &str,
    ) -> Step<(u16, &'static str, String)> {
        let url = self.url(&[
            "admin", "realms", realm, "users", subject, "consents", client_id,
        ]);
        let resp = match self.http.delete(url).bearer_auth(token).send().await {
            Ok(r) => r,
            Err(e) => return Step::Stop(Outcome::transport("revoke consent", &e)),
        };
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        match status {
            200..=299 => Step::Ok((status, "consent and offline tokens revoked", body)),
            // Keycloak: "Consent nor offline token not found": already revoked.
            404 if body.contains("Consent nor offline token") => {
                Step::Ok((status, "no consent left at the AS", body))
            }
            s => Step::Stop(self.refused("revoke consent", s, &body).await),
        }
    }

    /// A non-success answer; a 401 means the cached admin token went stale: drop it, retry.
    async fn refused(&self, step: &str, status: u16, body: &str) -> Outcome {
        if status == 401 {
            *self.token.lock().await = None;
            return Outcome::failure(
                Verdict::Retry,
                401,
                "http_401",
                format!("{step}: admin token rejected; renewing"),
                body,
            );
        }
        Outcome::http(step, status, body)
    }

    async fn end_sessions(
        &self,
        token: &str,
        realm: &str,
        subject: &str,
        client_id: &str,
    ) -> Step<usize> {
        match self.logout {
            Logout::None => Step::Ok(0),
            Logout::User => {
                let url = self.url(&["admin", "realms", realm, "users", subject, "logout"]);
                match self.http.post(url).bearer_auth(token).send().await {
                    Ok(r) if r.status().is_success() => Step::Ok(1),
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let body = r.text().await.unwrap_or_default();
                        Step::Stop(self.refused("logout user", s, &body).await)
                    }
                    Err(e) => Step::Stop(Outcome::transport("logout user", &e)),
                }
            }
            Logout::Client => {
                let url = self.url(&["admin", "realms", realm, "users", subject, "sessions"]);
                let sessions: Vec<SessionRep> =
                    match self.http.get(url).bearer_auth(token).send().await {
                        Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
                        Ok(r) => {
                            let s = r.status().as_u16();
                            let body = r.text().await.unwrap_or_default();
                            return Step::Stop(self.refused("list sessions", s, &body).await);
                        }
                        Err(e) => return Step::Stop(Outcome::transport("list sessions", &e)),
                    };
                let mut ended = 0;
                for s in sessions
                    .iter()
                    .filter(|s| s.clients.values().any(|c| c == client_id))
                {
                    let url = self.url(&["admin", "realms", realm, "sessions", &s.id]);
                    match self.http.delete(url).bearer_auth(token).send().await {
                        Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {
                            ended += 1
                        }
                        Ok(r) => {
                            let st = r.status().as_u16();
                            let body = r.text().await.unwrap_or_default();
                            return Step::Stop(self.refused("end session", st, &body).await);
                        }
                        Err(e) => return Step::Stop(Outcome::transport("end session", &e)),
                    }
                }
                Step::Ok(ended)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realms_from_issuers_and_encoded_paths() {
        let a = KeycloakAdapter::new(
            "http://127.0.0.1:18080/",
            "master",
            "admin-cli",
            AdminCredentials::ClientSecret("s3cret".into()),
            Logout::Client,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(a.realm_of("keycloak:custos").as_deref(), Some("custos"));
        assert_eq!(
            a.realm_of("http://127.0.0.1:18080/realms/custos")
                .as_deref(),
            Some("custos")
        );
        assert_eq!(a.realm_of("https://other.example/realms/custos"), None);
        assert_eq!(a.realm_of("keycloak:"), None);
        let url = a.url(&["admin", "realms", "r", "users", "../x?y", "consents", "a/b"]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:18080/admin/realms/r/users/..%2Fx%3Fy/consents/a%2Fb"
        );
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn admin_calls_never_follow_redirects() {
        use axum::http::{header, StatusCode};
        use axum::response::IntoResponse;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        // Where a redirect would lead: it must never see the admin credentials.
        let elsewhere_hits = Arc::new(AtomicUsize::new(0));
        let hits = elsewhere_hits.clone();
        let elsewhere = axum::Router::new().fallback(move || {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                StatusCode::OK.into_response()
            }
        });
        let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!("http://{}/steal", l2.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(l2, elsewhere).await;
        });
        let kc =
            axum::Router::new().fallback(move || {
                let target = target.clone();
                async move {
                    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]).into_response()
                }
            });
        let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l1.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(l1, kc).await;
        });
        let a = KeycloakAdapter::new(
            &base,
            "master",
            "admin-cli",
            AdminCredentials::ClientSecret("s3cret".into()),
            Logout::Client,
            Duration::from_secs(5),
        )
        .unwrap();
        let out = a.deliver("keycloak:custos", "user-1", "app").await;
        assert_eq!(out.verdict, Verdict::Failed, "{out:?}");
        assert_eq!(out.http_status, 307);
        assert_eq!(
            elsewhere_hits.load(Ordering::SeqCst),
            0,
            "redirect followed"
        );
    }

    #[tokio::test]
    async fn a_realm_service_account_revokes_consents_of_its_issuer() {
        use axum::http::StatusCode;
        use axum::routing::{delete, get, post};
        // Keycloak as a realm's own service account sees it: no server-wide realm list.
        let kc = axum::Router::new()
            .route(
                "/realms/custos/protocol/openid-connect/token",
                post(|| async {
                    axum::Json(serde_json::json!({"access_token": "t", "expires_in": 60}))
                }),
            )
            .route("/admin/realms", get(|| async { StatusCode::FORBIDDEN }))
            .route(
                "/admin/realms/custos/users/u-1/consents/app",
                delete(|| async { StatusCode::NO_CONTENT }),
            )
            .route(
                "/admin/realms/custos/users/u-1/sessions",
                get(|| async {
                    axum::Json(serde_json::json!([
                        {"id": "s-1", "clients": {"c-9": "app"}},
                        {"id": "s-2", "clients": {"c-8": "other"}}
                    ]))
                }),
            )
            .route(
                "/admin/realms/custos/sessions/s-1",
                delete(|| async { StatusCode::NO_CONTENT }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(l, kc).await;
        });
        let a = KeycloakAdapter::new(
            &base,
            "custos",
            "custos-consent",
            AdminCredentials::ClientSecret("s3cret".into()),
            Logout::Client,
            Duration::from_secs(5),
        )
        .unwrap();
        let out = a
            .deliver(&format!("{base}/realms/custos"), "u-1", "app")
            .await;
        assert_eq!(out.verdict, Verdict::Delivered, "{out:?}");
        assert!(out.detail.contains("1 session(s) ended"), "{out:?}");
        // A realm id still needs the list, and the refusal is reported.
        let out = a.deliver("keycloak:realm-uuid", "u-1", "app").await;
        assert_eq!(
            (out.verdict, out.http_status),
            (Verdict::Failed, 403),
            "{out:?}"
        );
    }
}
