//! Console configuration: every knob has a flag and a `CUSTOS_CONSOLE_*` environment
//! variable, and [`ConsoleConfig::validate`] checks the combination before anything
//! connects.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use custos_auth::config::{fetchable_url, OidcArgs};
use thiserror::Error;

/// Errors in the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The OIDC settings derived from the console's are invalid.
    #[error(transparent)]
    Oidc(#[from] custos_auth::config::ConfigError),
}

/// Settings of `custos-console`.
#[derive(Debug, Clone, Args)]
pub struct ConsoleConfig {
    /// Listen address of the pages.
    #[arg(
        long,
        env = "CUSTOS_CONSOLE_HTTP_ADDR",
        default_value = "127.0.0.1:8095"
    )]
    pub http_addr: SocketAddr,
    /// Address of the operations endpoints (`/healthz`, `/readyz`, `/metrics`).
    #[arg(
        long,
        env = "CUSTOS_CONSOLE_ADMIN_ADDR",
        default_value = "127.0.0.1:9469"
    )]
    pub admin_addr: SocketAddr,
    /// Origin the browser reaches the console at (scheme, host, port; no path). The redirect
    /// URI is `{public_url}/console/callback`, and state-changing requests must come from
    /// this origin.
    #[arg(
        long,
        env = "CUSTOS_CONSOLE_PUBLIC_URL",
        default_value = "http://127.0.0.1:8095"
    )]
    pub public_url: String,
    /// Issuer of the sign-in (the realm URL); discovery is read from
    /// `{issuer}/.well-known/openid-configuration`.
    #[arg(long, env = "CUSTOS_CONSOLE_ISSUER")]
    pub issuer: String,
    /// Confidential OIDC client of the console.
    #[arg(
        long,
        env = "CUSTOS_CONSOLE_CLIENT_ID",
        default_value = "custos-console"
    )]
    pub client_id: String,
    /// Secret of that client (required; never logged).
    #[arg(long, env = "CUSTOS_CONSOLE_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: String,
    /// Audience the access token must carry (the query API's); its roles decide the pages.
    #[arg(long, env = "CUSTOS_CONSOLE_AUDIENCE", default_value = "custos-query")]
    pub audience: String,
    /// Dotted path of the roles claim in the access token.
    #[arg(
        long,
        env = "CUSTOS_CONSOLE_ROLES_CLAIM",
        default_value = "realm_access.roles"
    )]
    pub roles_claim: String,
    /// Base URL of the query API.
    #[arg(
        long,
        env = "CUSTOS_CONSOLE_QUERY_URL",
        default_value = "http://127.0.0.1:8088"
    )]
    pub query_url: String,
    /// Base URL of the consent service's privacy API.
    #[arg(
        long,
        env = "CUSTOS_CONSOLE_CONSENT_URL",
        default_value = "http://127.0.0.1:9465"
    )]
    pub consent_url: String,
    /// Mark the session cookie `Secure` (and name it with the `__Host-` prefix). Turn off only
    /// for plain-http development with a browser that refuses Secure cookies from http
    /// (Chromium and Firefox accept them from http://127.0.0.1 and http://localhost).
    #[arg(
        long,
        env = "CUSTOS_CONSOLE_COOKIE_SECURE",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub cookie_secure: bool,
    /// A session ends after this long without a request, in seconds.
    #[arg(long, env = "CUSTOS_CONSOLE_SESSION_IDLE_SECS", default_value_t = 1800)]
    pub session_idle_secs: u64,
    /// A session ends this long after sign-in whatever happens, in seconds.
    #[arg(
        long,
        env = "CUSTOS_CONSOLE_SESSION_MAX_SECS",
        default_value_t = 36_000
    )]
    pub session_max_secs: u64,
    /// Most sessions (and, separately, sign-ins in progress) kept at once; the oldest idle
    /// session goes first.
    #[arg(long, env = "CUSTOS_CONSOLE_MAX_SESSIONS", default_value_t = 10_000)]
    pub max_sessions: usize,
    /// Timeout of one call to the AS or an API, in seconds (CSV exports stream without it).
    #[arg(long, env = "CUSTOS_CONSOLE_HTTP_TIMEOUT_SECS", default_value_t = 60)]
    pub http_timeout_secs: u64,
    /// Rows of a report page.
    #[arg(long, env = "CUSTOS_CONSOLE_PAGE_ROWS", default_value_t = 100)]
    pub page_rows: u32,
    /// Most rows the patient-access chart and top list are computed from (one API page).
    #[arg(long, env = "CUSTOS_CONSOLE_CHART_ROWS", default_value_t = 1000)]
    pub chart_rows: u32,
}

impl ConsoleConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        let public = reqwest::Url::parse(&self.public_url);
        match public {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.path() == "/" => {}
            _ => return bad("CUSTOS_CONSOLE_PUBLIC_URL must be an http(s) origin without a path"),
        }
        if !fetchable_url(&self.issuer) {
            return bad("CUSTOS_CONSOLE_ISSUER must be https (http only on loopback)");
        }
        for (name, url) in [
            ("CUSTOS_CONSOLE_QUERY_URL", &self.query_url),
            ("CUSTOS_CONSOLE_CONSENT_URL", &self.consent_url),
        ] {
            if !fetchable_url(url) {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be https (http only on loopback)"
                )));
            }
        }
        if self.client_id.trim().is_empty() || self.client_secret.is_empty() {
            return bad("CUSTOS_CONSOLE_CLIENT_ID and CUSTOS_CONSOLE_CLIENT_SECRET are required");
        }
        if self.session_idle_secs == 0 || self.session_max_secs < self.session_idle_secs {
            return bad("CUSTOS_CONSOLE_SESSION_IDLE_SECS must be positive and at most CUSTOS_CONSOLE_SESSION_MAX_SECS");
        }
        if self.max_sessions == 0 {
            return bad("CUSTOS_CONSOLE_MAX_SESSIONS must be positive");
        }
        if self.http_timeout_secs == 0 || self.http_timeout_secs > 600 {
            return bad("CUSTOS_CONSOLE_HTTP_TIMEOUT_SECS must be 1..=600");
        }
        if !(1..=1000).contains(&self.page_rows) || !(1..=1000).contains(&self.chart_rows) {
            return bad("CUSTOS_CONSOLE_PAGE_ROWS and CUSTOS_CONSOLE_CHART_ROWS must be 1..=1000");
        }
        self.oidc_args().validate()?;
        Ok(())
    }

    /// The public origin without a trailing slash.
    pub fn origin(&self) -> String {
        self.public_url.trim_end_matches('/').to_owned()
    }

    /// The redirect URI registered for the client.
    pub fn redirect_uri(&self) -> String {
        format!("{}/console/callback", self.origin())
    }

    /// Timeout of one outbound call.
    pub fn http_timeout(&self) -> Duration {
        Duration::from_secs(self.http_timeout_secs)
    }

    /// The settings of the token verifier (the shared `custos-auth` one) for this console.
    pub fn oidc_args(&self) -> OidcArgs {
        OidcArgs {
            oidc_issuer: self.issuer.trim_end_matches('/').to_owned(),
            oidc_audience: vec![self.audience.clone()],
            oidc_jwks_url: None,
            oidc_roles_claim: self.roles_claim.clone(),
            oidc_tenants_claim: None,
            oidc_algorithms: vec!["RS256".into(), "PS256".into(), "ES256".into()],
            oidc_leeway_secs: 30,
            oidc_jwks_refresh_min_secs: 30,
            oidc_jwks_ttl_secs: 3600,
            oidc_jwks_stale_max_secs: 14_400,
            oidc_token_types: vec!["at+jwt".into(), "JWT".into()],
            oidc_http_timeout_secs: 5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        c: ConsoleConfig,
    }

    fn parse(extra: &[&str]) -> ConsoleConfig {
        let mut args = vec![
            "console",
            "--issuer",
            "http://127.0.0.1:18080/realms/custos",
            "--client-secret",
            "s",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).expect("parse").c
    }

    #[test]
    fn defaults_validate_and_name_the_callback() {
        let c = parse(&[]);
        c.validate().expect("valid");
        assert_eq!(c.redirect_uri(), "http://127.0.0.1:8095/console/callback");
        assert!(c.cookie_secure);
        assert!(!parse(&["--cookie-secure", "false"]).cookie_secure);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(parse(&["--public-url", "http://127.0.0.1:8095/x"])
            .validate()
            .is_err());
        assert!(parse(&["--query-url", "http://example.org"])
            .validate()
            .is_err());
        assert!(parse(&["--session-idle-secs", "0"]).validate().is_err());
        assert!(parse(&["--session-max-secs", "10"]).validate().is_err());
        assert!(parse(&["--page-rows", "5000"]).validate().is_err());
    }
}
