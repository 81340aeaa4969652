//! Consent service configuration: every knob has a flag and an environment variable;
//! [`ConsentConfig::validate`] checks the combination before anything connects. Secrets
//! (`hide_env_values`) never appear in `--help` output or logs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use custos_auth::config::OidcArgs;
use custos_runtime::clickhouse::ClickHouseUrl;
use custos_runtime::kafka::KafkaArgs;
use custos_runtime::keys::{KeyRingLoadError, PseudonymKeyArgs};
use serde::Deserialize;
use thiserror::Error;

use crate::seal::{SealError, Sealer};
use crate::set::{SetError, SetSigner};

/// Errors in the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// Pseudonymization keys.
    #[error(transparent)]
    Keys(#[from] KeyRingLoadError),
    /// Sealing keys.
    #[error("sealing keys: {0}")]
    Seal(#[from] SealError),
    /// SSF signing key.
    #[error("SSF key: {0}")]
    Set(#[from] SetError),
    /// OIDC bearer-token settings of the privacy API (`CUSTOS_OIDC_*`).
    #[error("OIDC: {0}")]
    Oidc(#[from] custos_auth::config::ConfigError),
    /// A key file could not be read.
    #[error("cannot read {what}: {source}")]
    File {
        /// Which file.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
}

/// Checks a URL the service sends revocations or admin credentials to: `https`, or `http`
/// to a loopback host (127.0.0.0/8, `::1`, `localhost`), or `http` anywhere with
/// `allow_plain_http`. The host is the parsed URL's, so `http://127.0.0.1:x@evil/` is `evil`.
pub fn check_push_url(what: &str, url: &str, allow_plain_http: bool) -> Result<(), ConfigError> {
    let bad = |why: &str| Err(ConfigError::Invalid(format!("{what}: {why}")));
    let Ok(parsed) = reqwest::Url::parse(url.trim()) else {
        return bad("not an absolute URL");
    };
    let Some(host) = parsed.host_str() else {
        return bad("the URL names no host");
    };
    // IPv6 hosts are bracketed; IPv4 hosts are already normalized (`127.1` is 127.0.0.1).
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return bad("credentials in the URL are not allowed (use the authorization setting)");
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback || allow_plain_http => Ok(()),
        "http" => bad(
            "plain http is only allowed to a loopback host; use https (or set CUSTOS_CONSENT_ALLOW_PLAIN_HTTP=true on a development network)",
        ),
        _ => bad("the scheme must be https"),
    }
}

/// One SSF push receiver (RFC 8935).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Receiver {
    /// Short name, used in the target column (`ssf:<name>`) and the stable `jti`.
    pub name: String,
    /// Push endpoint URL.
    pub endpoint: String,
    /// `aud` of the SETs for this receiver (default: the endpoint).
    #[serde(default)]
    pub audience: Option<String>,
    /// Value of the `Authorization` header the receiver expects, if any.
    #[serde(default)]
    pub authorization: Option<String>,
}

/// `custos-consent run` settings.
#[derive(Debug, Clone, Args)]
pub struct ConsentConfig {
    /// Kafka settings.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group of the consent service.
    #[arg(long, env = "CUSTOS_CONSENT_GROUP", default_value = "custos-consent")]
    pub group_id: String,
    /// Consent topic: consumed, and where privacy-API revocations and expiries are published.
    #[arg(
        long,
        env = "CUSTOS_CONSENT_TOPIC",
        default_value = "custos.consent-events"
    )]
    pub consent_topic: String,
    /// AS events topic (Keycloak consent events, deprovisioning). Empty: not consumed.
    #[arg(long, env = "CUSTOS_AS_TOPIC", default_value = "custos.as-events")]
    pub as_topic: String,
    /// Alerts topic of `custos-alerts` whose messages carrying the header
    /// `custos-response: revoke-session` are answered by revoking the alert's session (the
    /// opt-in automatic response). Empty (the default): not consumed.
    #[arg(long, env = "CUSTOS_CONSENT_ALERTS_TOPIC", default_value = "")]
    pub alerts_topic: String,
    /// Consumer group of the automatic response (its own, apart from `CUSTOS_CONSENT_GROUP`).
    #[arg(
        long,
        env = "CUSTOS_CONSENT_ALERTS_GROUP",
        default_value = "custos-consent-response"
    )]
    pub alerts_group: String,
    /// Issuer of the AS sessions the automatic response revokes when no consent of the user
    /// names one (a workforce user without a recorded consent), e.g.
    /// `https://kc.example/realms/{tenant}`; `{tenant}` is replaced by the alert's tenant.
    #[arg(long, env = "CUSTOS_CONSENT_ALERTS_ISSUER")]
    pub alerts_issuer: Option<String>,
    /// Topic revocations are published to for gateways. Empty: no Kafka target.
    #[arg(
        long,
        env = "CUSTOS_REVOCATIONS_TOPIC",
        default_value = "custos.revocations"
    )]
    pub revocations_topic: String,
    /// ClickHouse endpoint.
    #[command(flatten)]
    pub clickhouse: ClickHouseUrl,
    /// ClickHouse account of the consent service (its consent and revocation tables, and
    /// INSERT into `custos.report_queries`).
    #[arg(
        long,
        env = "CUSTOS_CONSENT_CLICKHOUSE_USER",
        default_value = "custos_consent"
    )]
    pub clickhouse_user: String,
    /// Its password (required: no password is built in).
    #[arg(
        long,
        env = "CUSTOS_CONSENT_CLICKHOUSE_PASSWORD",
        hide_env_values = true
    )]
    pub clickhouse_password: String,
    /// Tenant of events naming none.
    #[arg(long, env = "CUSTOS_DEFAULT_TENANT", default_value = "default")]
    pub default_tenant: String,
    /// Pseudonymization keys (the same ring as ingest).
    #[command(flatten)]
    pub keys: PseudonymKeyArgs,
    /// Sealing keys for raw AS subjects, `kid=<64 hex>[,kid=<64 hex>]`.
    #[arg(long, env = "CUSTOS_CONSENT_SEAL_KEYS", hide_env_values = true)]
    pub seal_keys: Option<String>,
    /// File with the sealing keys.
    #[arg(long, env = "CUSTOS_CONSENT_SEAL_KEYS_FILE")]
    pub seal_keys_file: Option<PathBuf>,
    /// Sealing key id for new values (default: the last).
    #[arg(long, env = "CUSTOS_CONSENT_SEAL_CURRENT_KID")]
    pub seal_current_kid: Option<String>,
    /// Address of the HTTP API (privacy API, SSF metadata, JWKS, health).
    #[arg(
        long,
        env = "CUSTOS_CONSENT_HTTP_ADDR",
        default_value = "127.0.0.1:9465"
    )]
    pub http_addr: SocketAddr,
    /// Address of the operational routes (`/metrics`, `/healthz`, `/readyz`), kept off the
    /// API address so metrics are not served to API clients.
    #[arg(
        long,
        env = "CUSTOS_CONSENT_ADMIN_ADDR",
        default_value = "127.0.0.1:9467"
    )]
    pub admin_addr: SocketAddr,
    /// Longest time the HTTP API spends on one request, in seconds (then 504).
    #[arg(
        long,
        env = "CUSTOS_CONSENT_REQUEST_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub api_timeout_secs: u64,
    /// How long a repeated identical revocation request (same caller, consent or patient
    /// and client, reason and `Idempotency-Key`) is answered with the first revocation, in
    /// seconds.
    #[arg(
        long,
        env = "CUSTOS_CONSENT_IDEMPOTENCY_WINDOW_SECS",
        default_value_t = 86_400
    )]
    pub idempotency_window_secs: u64,
    /// ClickHouse account writing the privacy API's own audit (`custos.report_queries`).
    /// Unset: the service's own account (`CUSTOS_CONSENT_CLICKHOUSE_USER`).
    #[arg(long, env = "CUSTOS_CONSENT_AUDIT_USER")]
    pub audit_user: Option<String>,
    /// Its password (unset: the service account's).
    #[arg(long, env = "CUSTOS_CONSENT_AUDIT_PASSWORD", hide_env_values = true)]
    pub audit_password: Option<String>,
    /// Allows plain `http://` Keycloak and SSF receiver URLs on non-loopback hosts
    /// (development networks only: SETs and admin tokens then travel unencrypted).
    #[arg(
        long,
        env = "CUSTOS_CONSENT_ALLOW_PLAIN_HTTP",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub allow_plain_http: bool,
    /// Keycloak base URL (e.g. http://127.0.0.1:18080). Unset: no Keycloak target.
    #[arg(long, env = "CUSTOS_KEYCLOAK_URL")]
    pub keycloak_url: Option<String>,
    /// Realm the admin account lives in.
    #[arg(long, env = "CUSTOS_KEYCLOAK_ADMIN_REALM", default_value = "master")]
    pub keycloak_admin_realm: String,
    /// Admin client id.
    #[arg(
        long,
        env = "CUSTOS_KEYCLOAK_ADMIN_CLIENT_ID",
        default_value = "admin-cli"
    )]
    pub keycloak_admin_client_id: String,
    /// Admin client secret (client-credentials grant); when unset, the password grant is used.
    #[arg(
        long,
        env = "CUSTOS_KEYCLOAK_ADMIN_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub keycloak_admin_client_secret: Option<String>,
    /// Admin user (password grant).
    #[arg(long, env = "CUSTOS_KEYCLOAK_ADMIN_USER", default_value = "admin")]
    pub keycloak_admin_user: String,
    /// Admin password (password grant).
    #[arg(long, env = "CUSTOS_KEYCLOAK_ADMIN_PASSWORD", hide_env_values = true)]
    pub keycloak_admin_password: Option<String>,
    /// Which sessions to end besides revoking the consent: `client` (sessions the client is
    /// part of), `user` (every session of the user) or `none`.
    #[arg(long, env = "CUSTOS_KEYCLOAK_LOGOUT", default_value = "client")]
    pub keycloak_logout: String,
    /// SSF transmitter issuer (default: `http://<http addr>`).
    #[arg(long, env = "CUSTOS_SSF_ISSUER")]
    pub ssf_issuer: Option<String>,
    /// PKCS#8 PEM P-256 key that signs SETs. Unset: a random key per process (development).
    #[arg(long, env = "CUSTOS_SSF_KEY_FILE")]
    pub ssf_key_file: Option<PathBuf>,
    /// Key id of the SET signing key.
    #[arg(long, env = "CUSTOS_SSF_KID", default_value = "custos-ssf-1")]
    pub ssf_kid: String,
    /// SSF push receivers, a JSON array of `{name, endpoint, audience?, authorization?}`.
    #[arg(long, env = "CUSTOS_SSF_RECEIVERS", hide_env_values = true)]
    pub ssf_receivers: Option<String>,
    /// Attempts per (revocation, target) before it is marked failed.
    #[arg(long, env = "CUSTOS_REVOCATION_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,
    /// First retry delay, in milliseconds (doubles per attempt, with jitter).
    #[arg(long, env = "CUSTOS_REVOCATION_BACKOFF_MS", default_value_t = 250)]
    pub backoff_ms: u64,
    /// Longest retry delay, in milliseconds.
    #[arg(
        long,
        env = "CUSTOS_REVOCATION_BACKOFF_MAX_MS",
        default_value_t = 30_000
    )]
    pub backoff_max_ms: u64,
    /// Timeout of one outbound request, in seconds.
    #[arg(long, env = "CUSTOS_REVOCATION_TIMEOUT_SECS", default_value_t = 10)]
    pub request_timeout_secs: u64,
    /// Pushes in flight at once.
    #[arg(long, env = "CUSTOS_REVOCATION_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// How often active consents are checked for an ended period, in seconds.
    #[arg(long, env = "CUSTOS_CONSENT_EXPIRY_SCAN_SECS", default_value_t = 10)]
    pub expiry_scan_secs: u64,
    /// Largest accepted event, in bytes.
    #[arg(long, env = "CUSTOS_MAX_EVENT_BYTES", default_value_t = 1024 * 1024)]
    pub max_event_bytes: usize,
    /// OIDC bearer-token authentication of the privacy API: the query API's settings
    /// (`CUSTOS_OIDC_ISSUER`, `_AUDIENCE`, `_JWKS_URL`, `_ROLES_CLAIM`, `_ALGORITHMS`, ...).
    #[command(flatten)]
    pub oidc: OidcArgs,
}

impl ConsentConfig {
    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        self.oidc.validate()?;
        if self.consent_topic.trim().is_empty() {
            return bad("CUSTOS_CONSENT_TOPIC must not be empty");
        }
        if self.max_attempts == 0 || self.max_attempts > 1000 {
            return bad("CUSTOS_REVOCATION_MAX_ATTEMPTS must be 1..=1000");
        }
        if self.backoff_ms == 0 || self.backoff_max_ms < self.backoff_ms {
            return bad("CUSTOS_REVOCATION_BACKOFF_MS must be positive and <= _MAX_MS");
        }
        if self.request_timeout_secs == 0 || self.concurrency == 0 || self.concurrency > 1024 {
            return bad("request timeout and concurrency (1..=1024) must be positive");
        }
        if self.expiry_scan_secs == 0 {
            return bad("CUSTOS_CONSENT_EXPIRY_SCAN_SECS must be positive");
        }
        if self.api_timeout_secs == 0 || self.api_timeout_secs > 3600 {
            return bad("CUSTOS_CONSENT_REQUEST_TIMEOUT_SECS must be 1..=3600");
        }
        if self.idempotency_window_secs > 7 * 86_400 {
            return bad("CUSTOS_CONSENT_IDEMPOTENCY_WINDOW_SECS must be at most 604800 (7 days)");
        }
        if !self.alerts_topic.trim().is_empty() {
            if self.alerts_group.trim().is_empty() || self.alerts_group == self.group_id {
                return bad(
                    "CUSTOS_CONSENT_ALERTS_GROUP must be set and differ from CUSTOS_CONSENT_GROUP",
                );
            }
            if self.alerts_topic == self.consent_topic || self.alerts_topic == self.as_topic {
                return bad(
                    "CUSTOS_CONSENT_ALERTS_TOPIC must differ from the consent and AS topics",
                );
            }
        }
        if self.admin_addr == self.http_addr {
            return bad("CUSTOS_CONSENT_ADMIN_ADDR must differ from CUSTOS_CONSENT_HTTP_ADDR");
        }
        if !matches!(self.keycloak_logout.as_str(), "client" | "user" | "none") {
            return bad("CUSTOS_KEYCLOAK_LOGOUT must be client, user or none");
        }
        if self.keycloak_url.is_some()
            && self.keycloak_admin_client_secret.is_none()
            && self.keycloak_admin_password.is_none()
        {
            return bad(
                "CUSTOS_KEYCLOAK_URL needs CUSTOS_KEYCLOAK_ADMIN_PASSWORD or _CLIENT_SECRET",
            );
        }
        if let Some(url) = &self.keycloak_url {
            check_push_url("CUSTOS_KEYCLOAK_URL", url, self.allow_plain_http)?;
        }
        let receivers = self.receivers()?;
        for r in &receivers {
            check_push_url(
                &format!("CUSTOS_SSF_RECEIVERS endpoint of {:?}", r.name),
                &r.endpoint,
                self.allow_plain_http,
            )?;
        }
        let mut names: Vec<&str> = receivers.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        if names.len() != receivers.len() {
            return bad("SSF receiver names must be unique");
        }
        if receivers.iter().any(|r| {
            r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        }) {
            return bad("SSF receiver names must be [A-Za-z0-9._-]+");
        }
        Ok(())
    }

    /// The privacy API's request timeout.
    pub fn api_timeout(&self) -> Duration {
        Duration::from_secs(self.api_timeout_secs)
    }

    /// The SSF receivers.
    pub fn receivers(&self) -> Result<Vec<Receiver>, ConfigError> {
        match self.ssf_receivers.as_deref().map(str::trim) {
            None | Some("") => Ok(Vec::new()),
            Some(json) => serde_json::from_str(json).map_err(|_| {
                ConfigError::Invalid(
                    "CUSTOS_SSF_RECEIVERS must be a JSON array of {name, endpoint, audience?, authorization?}"
                        .to_owned(),
                )
            }),
        }
    }

    fn read(path: &std::path::Path, what: &'static str) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|source| ConfigError::File { what, source })
    }

    /// The sealing keys.
    pub fn sealer(&self) -> Result<Sealer, ConfigError> {
        let spec = match (&self.seal_keys, &self.seal_keys_file) {
            (Some(s), _) => s.clone(),
            (None, Some(p)) => Self::read(p, "the sealing key file")?,
            (None, None) => String::new(),
        };
        Ok(Sealer::parse(&spec, self.seal_current_kid.as_deref())?)
    }

    /// The SSF issuer.
    pub fn issuer(&self) -> String {
        self.ssf_issuer
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.http_addr))
    }

    /// The SET signer (ephemeral without a key file).
    pub fn set_signer(&self) -> Result<(SetSigner, bool), ConfigError> {
        match &self.ssf_key_file {
            Some(p) => {
                let pem = Self::read(p, "the SSF key file")?;
                Ok((
                    SetSigner::from_pem(&self.issuer(), &pem, &self.ssf_kid)?,
                    false,
                ))
            }
            None => Ok((SetSigner::ephemeral(&self.issuer(), &self.ssf_kid), true)),
        }
    }

    /// Timeout of one outbound request.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cfg: ConsentConfig,
    }

    fn cfg(extra: &[&str]) -> ConsentConfig {
        let mut args = vec![
            "t",
            "--oidc-issuer",
            "https://as.example/realms/r",
            "--oidc-audience",
            "custos-privacy-api",
            "--clickhouse-password",
            "p",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).unwrap().cfg
    }

    fn refused(what: &str, url: &str) -> bool {
        check_push_url(what, url, false).is_err()
    }

    #[test]
    fn push_urls_must_be_https_unless_loopback() {
        for ok in [
            "https://kc.example",
            "https://gw.example:8443/ssf/events",
            "http://127.0.0.1:18080",
            "http://127.1.2.3/x",
            "http://[::1]:9/events",
            "http://localhost:8080",
        ] {
            assert!(check_push_url("u", ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "http://kc.example:8080",
            "http://10.0.0.5/events",
            // Userinfo that looks like a loopback host: the host is `evil.example`.
            "http://127.0.0.1:18080@evil.example/",
            "http://localhost.evil.example/",
            "https://user:pw@kc.example/",
            "ftp://127.0.0.1/",
            "/relative/path",
            "not a url",
        ] {
            assert!(refused("u", bad), "{bad}");
        }
        // The explicit opt-in allows plain http elsewhere, never other schemes.
        assert!(check_push_url("u", "http://kc.example:8080", true).is_ok());
        assert!(check_push_url("u", "ftp://kc.example/", true).is_err());
    }

    #[test]
    fn validate_refuses_plain_http_push_targets_with_a_clear_error() {
        let c = cfg(&[
            "--keycloak-url",
            "http://keycloak.example:8080",
            "--keycloak-admin-password",
            "pw",
        ]);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("CUSTOS_KEYCLOAK_URL") && e.contains("https"),
            "{e}"
        );
        let c = cfg(&[
            "--ssf-receivers",
            r#"[{"name":"gw","endpoint":"http://gateway.example/events"}]"#,
        ]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("\"gw\"") && e.contains("https"), "{e}");
        let c = cfg(&[
            "--ssf-receivers",
            r#"[{"name":"gw","endpoint":"http://gateway.example/events"}]"#,
            "--allow-plain-http",
            "true",
        ]);
        c.validate().unwrap();
        let c = cfg(&[
            "--keycloak-url",
            "http://127.0.0.1:18080",
            "--keycloak-admin-password",
            "pw",
        ]);
        c.validate().unwrap();
    }

    #[test]
    fn admin_address_and_timeouts_are_checked() {
        let c = cfg(&[]);
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:9467");
        assert_eq!(c.api_timeout(), Duration::from_secs(30));
        c.validate().unwrap();
        assert!(cfg(&["--admin-addr", "127.0.0.1:9465"]).validate().is_err());
        assert!(cfg(&["--api-timeout-secs", "0"]).validate().is_err());
    }
}
