//! The console as an OpenID Connect relying party (confidential client): discovery, the
//! authorization request (code, PKCE `S256`, `state`, `nonce`), the code exchange and the
//! refresh at the token endpoint with the client secret, and the RP-initiated logout URL.
//! Tokens never leave the server and are never logged.

use std::sync::RwLock;
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use thiserror::Error;

/// Errors talking to the AS.
#[derive(Debug, Error)]
pub enum OidcError {
    /// The AS could not be reached or answered garbage.
    #[error("authorization server unavailable: {0}")]
    Unavailable(String),
    /// The AS refused the grant (`invalid_grant`: a used code, an expired refresh token).
    #[error("grant refused: {0}")]
    Refused(String),
}

/// The endpoints of the issuer's discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct Endpoints {
    /// `issuer`.
    pub issuer: String,
    /// `authorization_endpoint`.
    pub authorization_endpoint: String,
    /// `token_endpoint`.
    pub token_endpoint: String,
    /// `end_session_endpoint` (RP-initiated logout), when the AS has one.
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

/// A token endpoint answer.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    /// Access token.
    pub access_token: String,
    /// Lifetime of the access token in seconds.
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// Refresh token.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// ID token (code exchange).
    #[serde(default)]
    pub id_token: Option<String>,
}

impl TokenResponse {
    /// The access token's lifetime (60 s when the AS did not say).
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.expires_in.unwrap_or(60))
    }
}

#[derive(Deserialize)]
struct TokenError {
    #[serde(default)]
    error: String,
}

/// The relying party.
pub struct RelyingParty {
    issuer: String,
    client_id: String,
    client_secret: String,
    redirect_uri: String,
    http: reqwest::Client,
    endpoints: RwLock<Option<Endpoints>>,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelyingParty")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The authorization request URL: code flow, PKCE S256, state and nonce.
pub fn authorization_url(
    endpoint: &str,
    client_id: &str,
    redirect_uri: &str,
    state: &str,
    nonce: &str,
    challenge: &str,
) -> Result<String, OidcError> {
    let mut url = Url::parse(endpoint)
        .map_err(|e| OidcError::Unavailable(format!("authorization endpoint: {e}")))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", "openid profile")
        .append_pair("state", state)
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    Ok(url.into())
}

impl RelyingParty {
    /// A relying party of `issuer` (no I/O: discovery happens on first use).
    pub fn new(
        issuer: &str,
        client_id: &str,
        client_secret: &str,
        redirect_uri: String,
        timeout: Duration,
    ) -> Result<RelyingParty, OidcError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OidcError::Unavailable(e.to_string()))?;
        Ok(RelyingParty {
            issuer: issuer.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            redirect_uri,
            http,
            endpoints: RwLock::new(None),
        })
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The endpoints, read from discovery once (and again after a failure).
    pub async fn endpoints(&self) -> Result<Endpoints, OidcError> {
        if let Some(e) = self
            .endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(e);
        }
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| OidcError::Unavailable(format!("discovery: {e}")))?;
        if !resp.status().is_success() {
            return Err(OidcError::Unavailable(format!(
                "discovery: HTTP {}",
                resp.status()
            )));
        }
        let e: Endpoints = resp
            .json()
            .await
            .map_err(|e| OidcError::Unavailable(format!("discovery: {e}")))?;
        if e.issuer.trim_end_matches('/') != self.issuer {
            return Err(OidcError::Unavailable(
                "discovery names another issuer".into(),
            ));
        }
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
        Ok(e)
    }

    /// The URL to send the browser to for sign-in.
    pub async fn login_url(
        &self,
        state: &str,
        nonce: &str,
        challenge: &str,
    ) -> Result<String, OidcError> {
        let e = self.endpoints().await?;
        authorization_url(
            &e.authorization_endpoint,
            &self.client_id,
            &self.redirect_uri,
            state,
            nonce,
            challenge,
        )
    }

    async fn token_call(&self, form: &[(&str, &str)]) -> Result<TokenResponse, OidcError> {
        let e = self.endpoints().await?;
        let resp = self
            .http
            .post(&e.token_endpoint)
            .basic_auth(
                form_urlencoded::byte_serialize(self.client_id.as_bytes()).collect::<String>(),
                Some(
                    form_urlencoded::byte_serialize(self.client_secret.as_bytes())
                        .collect::<String>(),
                ),
            )
            .form(form)
            .send()
            .await
            .map_err(|e| OidcError::Unavailable(format!("token endpoint: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json()
                .await
                .map_err(|e| OidcError::Unavailable(format!("token endpoint answer: {e}")));
        }
        let err = resp
            .json::<TokenError>()
            .await
            .map(|t| t.error)
            .unwrap_or_default();
        if status.is_client_error() {
            Err(OidcError::Refused(if err.is_empty() {
                format!("HTTP {status}")
            } else {
                err
            }))
        } else {
            Err(OidcError::Unavailable(format!(
                "token endpoint: HTTP {status}"
            )))
        }
    }

    /// Exchanges an authorization code (with its PKCE verifier).
    pub async fn exchange(&self, code: &str, verifier: &str) -> Result<TokenResponse, OidcError> {
        self.token_call(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.redirect_uri),
            ("code_verifier", verifier),
        ])
        .await
    }

    /// Refreshes the access token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenResponse, OidcError> {
        self.token_call(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .await
    }

    /// The RP-initiated logout URL (`id_token_hint`, `post_logout_redirect_uri`), or the
    /// post-logout page itself when the AS has no end-session endpoint.
    pub async fn logout_url(&self, id_token: &str, post_logout: &str) -> String {
        let Ok(e) = self.endpoints().await else {
            return post_logout.to_owned();
        };
        let Some(Ok(mut url)) = e.end_session_endpoint.as_deref().map(Url::parse) else {
            return post_logout.to_owned();
        };
        url.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("id_token_hint", id_token)
            .append_pair("post_logout_redirect_uri", post_logout);
        url.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorization_request_carries_pkce_state_and_nonce() {
        let u = authorization_url(
            "http://127.0.0.1:18080/realms/custos/protocol/openid-connect/auth",
            "custos-console",
            "http://127.0.0.1:8095/console/callback",
            "st&ate",
            "n0nce",
            "chal",
        )
        .expect("url");
        let parsed = Url::parse(&u).expect("parse");
        let q: std::collections::HashMap<String, String> =
            parsed.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["state"], "st&ate");
        assert_eq!(q["nonce"], "n0nce");
        assert_eq!(q["code_challenge"], "chal");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:8095/console/callback");
        assert!(q["scope"].split(' ').any(|s| s == "openid"));
    }
}
