//! Query API configuration: every knob has a flag and an environment variable
//! (`CUSTOS_QUERY_*`, `CUSTOS_OIDC_*`, and the shared `CUSTOS_CLICKHOUSE_*` /
//! `CUSTOS_PSEUDONYM_*` ones), and [`QueryConfig::validate`] checks the combination
//! before anything connects.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use custos_runtime::clickhouse::ClickHouseArgs;
use custos_runtime::keys::{KeyRingLoadError, PseudonymKeyArgs};
use jsonwebtoken::Algorithm;
use thiserror::Error;

/// Errors in the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The pseudonymization key ring could not be loaded.
    #[error(transparent)]
    Keys(#[from] KeyRingLoadError),
    /// The key file could not be read.
    #[error("cannot read key file: {0}")]
    KeyFile(std::io::Error),
}

/// OIDC bearer-token settings.
#[derive(Debug, Clone, Args)]
pub struct OidcArgs {
    /// Expected `iss` of access tokens; discovery is read from
    /// `{issuer}/.well-known/openid-configuration` unless a JWKS URL is given.
    #[arg(long, env = "CUSTOS_OIDC_ISSUER")]
    pub oidc_issuer: String,
    /// Accepted `aud` values, comma separated (at least one).
    #[arg(long, env = "CUSTOS_OIDC_AUDIENCE", value_delimiter = ',')]
    pub oidc_audience: Vec<String>,
    /// Explicit JWKS URL (skips discovery).
    #[arg(long, env = "CUSTOS_OIDC_JWKS_URL")]
    pub oidc_jwks_url: Option<String>,
    /// Dotted path of the claim holding the caller's roles (`roles`, `realm_access.roles`).
    #[arg(long, env = "CUSTOS_OIDC_ROLES_CLAIM", default_value = "roles")]
    pub oidc_roles_claim: String,
    /// Dotted path of a claim listing the tenants the caller may read (array or
    /// space-separated string). Unset: every tenant (single-tenant deployments). Set: a request
    /// for a tenant the token does not list is refused with 403.
    #[arg(long, env = "CUSTOS_OIDC_TENANTS_CLAIM")]
    pub oidc_tenants_claim: Option<String>,
    /// Accepted signature algorithms, comma separated (asymmetric only: RS*, PS*, ES256,
    /// ES384, EdDSA; `none` and HS* are refused).
    #[arg(
        long,
        env = "CUSTOS_OIDC_ALGORITHMS",
        value_delimiter = ',',
        default_value = "RS256,PS256,ES256"
    )]
    pub oidc_algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(long, env = "CUSTOS_OIDC_LEEWAY_SECS", default_value_t = 30)]
    pub oidc_leeway_secs: u64,
    /// Least time between two JWKS fetch attempts (successful or not) triggered by unknown
    /// key ids, a stale cache or `/readyz`, in seconds (1..=3600).
    #[arg(long, env = "CUSTOS_OIDC_JWKS_REFRESH_MIN_SECS", default_value_t = 30)]
    pub oidc_jwks_refresh_min_secs: u64,
    /// Age after which the cached JWKS is fetched again, in seconds.
    #[arg(long, env = "CUSTOS_OIDC_JWKS_TTL_SECS", default_value_t = 3600)]
    pub oidc_jwks_ttl_secs: u64,
    /// Age (since the last successful fetch) up to which cached keys keep verifying tokens
    /// while the issuer cannot be reached, in seconds; older keys verify nothing. At least
    /// `CUSTOS_OIDC_JWKS_TTL_SECS`.
    #[arg(
        long,
        env = "CUSTOS_OIDC_JWKS_STALE_MAX_SECS",
        default_value_t = 14_400
    )]
    pub oidc_jwks_stale_max_secs: u64,
    /// Accepted JOSE header `typ` values of access tokens, comma separated, compared without
    /// case and without an `application/` prefix. RFC 9068 access tokens carry `at+jwt`;
    /// Keycloak's carry `JWT`. Whatever the header says, a token whose payload `typ` claim is
    /// present and is not `Bearer` (Keycloak marks ID tokens `ID`, refresh tokens `Refresh`)
    /// is refused, and so is a token without a header `typ`.
    #[arg(
        long,
        env = "CUSTOS_OIDC_TOKEN_TYPES",
        value_delimiter = ',',
        default_value = "at+jwt,JWT"
    )]
    pub oidc_token_types: Vec<String>,
    /// Timeout of discovery and JWKS requests, in seconds.
    #[arg(long, env = "CUSTOS_OIDC_HTTP_TIMEOUT_SECS", default_value_t = 5)]
    pub oidc_http_timeout_secs: u64,
}

/// Settings of `custos-query`.
#[derive(Debug, Clone, Args)]
pub struct QueryConfig {
    /// Listen address of the API.
    #[arg(long, env = "CUSTOS_QUERY_HTTP_ADDR", default_value = "127.0.0.1:8088")]
    pub http_addr: SocketAddr,
    /// Absolute base URL clients reach the API at (used in FHIR Bundle links).
    #[arg(
        long,
        env = "CUSTOS_QUERY_PUBLIC_URL",
        default_value = "http://127.0.0.1:8088"
    )]
    pub public_url: String,
    /// ClickHouse endpoint and the timeout of one request (and of a JSON report).
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Read-only account the reports run as.
    #[arg(
        long,
        env = "CUSTOS_QUERY_READER_USER",
        default_value = "custos_reader"
    )]
    pub reader_user: String,
    /// Password of the reader account (required: no password is built in).
    #[arg(long, env = "CUSTOS_QUERY_READER_PASSWORD", hide_env_values = true)]
    pub reader_password: String,
    /// Account that writes the query-audit records (INSERT on `custos.report_queries` only).
    #[arg(long, env = "CUSTOS_QUERY_AUDIT_USER", default_value = "custos_query")]
    pub writer_user: String,
    /// Password of the query-audit account (required: no password is built in).
    #[arg(long, env = "CUSTOS_QUERY_AUDIT_PASSWORD", hide_env_values = true)]
    pub writer_password: String,
    /// Tenant of requests that name none.
    #[arg(long, env = "CUSTOS_DEFAULT_TENANT", default_value = "default")]
    pub default_tenant: String,
    /// Pseudonymization keys (the same ring as ingest; query-audit parameters are
    /// pseudonymized under the current key).
    #[command(flatten)]
    pub keys: PseudonymKeyArgs,
    /// Rows of a JSON page when `limit` is not given.
    #[arg(long, env = "CUSTOS_QUERY_PAGE_DEFAULT", default_value_t = 100)]
    pub page_default: u32,
    /// Largest accepted `limit` / `_count`.
    #[arg(long, env = "CUSTOS_QUERY_PAGE_MAX", default_value_t = 1000)]
    pub page_max: u32,
    /// Address of the operations endpoints (`/metrics`), kept off the public listener.
    #[arg(
        long,
        env = "CUSTOS_QUERY_ADMIN_ADDR",
        default_value = "127.0.0.1:9466"
    )]
    pub admin_addr: SocketAddr,
    /// Most rows one CSV / NDJSON export streams.
    #[arg(
        long,
        env = "CUSTOS_QUERY_EXPORT_MAX_ROWS",
        default_value_t = 1_000_000
    )]
    pub export_max_rows: u64,
    /// Time limit of the ClickHouse query behind one CSV / NDJSON export
    /// (`max_execution_time`), in seconds; JSON pages keep `CUSTOS_CLICKHOUSE_TIMEOUT_SECS`.
    #[arg(long, env = "CUSTOS_QUERY_EXPORT_TIMEOUT_SECS", default_value_t = 600)]
    pub export_timeout_secs: u64,
    /// Most CSV / NDJSON exports one caller (`sub`) runs at a time; more get 429.
    #[arg(long, env = "CUSTOS_QUERY_EXPORTS_PER_CALLER", default_value_t = 2)]
    pub exports_per_caller: u32,
    /// Most requests the API serves at a time (an export counts until its stream ends);
    /// more get 503 with `Retry-After` at once instead of waiting.
    #[arg(
        long,
        env = "CUSTOS_QUERY_MAX_CONCURRENT_REQUESTS",
        default_value_t = 64
    )]
    pub max_concurrent_requests: u32,
    /// Window of a report when `from` is not given, in days (default six years).
    #[arg(long, env = "CUSTOS_QUERY_DEFAULT_WINDOW_DAYS", default_value_t = 2192)]
    pub default_window_days: u32,
    /// Purposes of use excluded from the accounting of disclosures (treatment, payment,
    /// operations), comma separated v3-ActReason codes.
    #[arg(
        long,
        env = "CUSTOS_QUERY_DISCLOSURE_EXCLUDED_PURPOSES",
        value_delimiter = ',',
        default_value = "TREAT,HPAYMT,HOPERAT"
    )]
    pub disclosure_excluded_purposes: Vec<String>,
    /// Seconds after a consent revocation before a permitted access counts as a violation.
    #[arg(long, env = "CUSTOS_REVOCATION_GRACE_SECS", default_value_t = 60)]
    pub revocation_grace_secs: u64,
    /// JWKS file of the checkpoint public keys (made by `custos-ingest jwks`), served at
    /// `/.well-known/custos-checkpoint-jwks.json` and used by `/v1/integrity/*` to check
    /// checkpoint signatures. Without it checkpoints are reported as unverifiable.
    #[arg(long, env = "CUSTOS_CHECKPOINT_JWKS_FILE")]
    pub checkpoint_jwks_file: Option<std::path::PathBuf>,
    /// Retention of audit rows in days (the ingest's TTL): `/v1/integrity/verify` treats a
    /// record gone before this horizon, under a signed checkpoint, as pruned, not missing.
    #[arg(long, env = "CUSTOS_RETENTION_DAYS", default_value_t = custos_schemas::migrations::DEFAULT_RETENTION_DAYS)]
    pub retention_days: u32,
    /// Time limit of one `/v1/integrity/verify` run (HTTP and ClickHouse), in seconds.
    #[arg(long, env = "CUSTOS_QUERY_VERIFY_TIMEOUT_SECS", default_value_t = 600)]
    pub verify_timeout_secs: u64,
    /// Most chained records a membership proof walks from the record to the covering
    /// checkpoint head (farther heads are reported as `beyond_limit`).
    #[arg(long, env = "CUSTOS_QUERY_PROOF_MAX_RECORDS", default_value_t = 10_000)]
    pub proof_max_records: u64,
    /// Most query-audit records written in one INSERT (group commit).
    #[arg(long, env = "CUSTOS_QUERY_AUDIT_BATCH_ROWS", default_value_t = 256)]
    pub audit_batch_rows: usize,
    /// How long a query-audit batch waits for more records after its first, in ms. 0 (the
    /// default): no wait; records arriving while an INSERT runs go together into the next.
    #[arg(long, env = "CUSTOS_QUERY_AUDIT_LINGER_MS", default_value_t = 0)]
    pub audit_linger_ms: u64,
    /// How long final query-audit records (written after the answer) wait, in ms, for the
    /// next awaited record to share its INSERT.
    #[arg(
        long,
        env = "CUSTOS_QUERY_AUDIT_FINAL_LINGER_MS",
        default_value_t = 200
    )]
    pub audit_final_linger_ms: u64,
    /// OIDC settings.
    #[command(flatten)]
    pub oidc: OidcArgs,
}

/// Parses an algorithm name of the allow-list; symmetric and `none` are refused.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, ConfigError> {
    let alg = match name.trim() {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => {
            return Err(ConfigError::Invalid(
                "CUSTOS_OIDC_ALGORITHMS accepts RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (never none or HS*)"
                    .into(),
            ))
        }
    };
    Ok(alg)
}

/// Whether a URL may be fetched for keys: https, or http on a loopback host only. The URL
/// is parsed (WHATWG rules, as the HTTP client does) and its host checked, so userinfo such
/// as `http://127.0.0.1:80@as.example/` cannot pass for loopback; URLs with userinfo are
/// refused outright.
pub fn fetchable_url(url: &str) -> bool {
    use reqwest::Url;
    use std::net::IpAddr;
    let Ok(u) = Url::parse(url) else {
        return false;
    };
    if !u.username().is_empty() || u.password().is_some() {
        return false;
    }
    match (u.scheme(), u.host_str()) {
        ("https", Some(_)) => true,
        ("http", Some(host)) => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost")
                || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

/// A JOSE `typ` value as compared: trimmed, lowercase, without an `application/` prefix
/// (RFC 7515 section 4.1.9).
pub fn normalize_typ(t: &str) -> String {
    let t = t.trim().to_ascii_lowercase();
    t.strip_prefix("application/").unwrap_or(&t).to_owned()
}

/// Whether a tenant name is acceptable (`[A-Za-z0-9._-]{1,64}`).
pub fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl OidcArgs {
    /// The validated algorithm allow-list.
    pub fn algorithms(&self) -> Result<Vec<Algorithm>, ConfigError> {
        let algs = self
            .oidc_algorithms
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| parse_algorithm(a))
            .collect::<Result<Vec<_>, _>>()?;
        if algs.is_empty() {
            return Err(ConfigError::Invalid(
                "CUSTOS_OIDC_ALGORITHMS is empty".into(),
            ));
        }
        Ok(algs)
    }

    /// The accepted header `typ` values, normalized (lowercase, no `application/`).
    pub fn token_types(&self) -> Vec<String> {
        self.oidc_token_types
            .iter()
            .map(|t| normalize_typ(t))
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// Checks the OIDC settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if !fetchable_url(&self.oidc_issuer) {
            return bad("CUSTOS_OIDC_ISSUER must be https (http only on loopback)");
        }
        if let Some(u) = &self.oidc_jwks_url {
            if !fetchable_url(u) {
                return bad("CUSTOS_OIDC_JWKS_URL must be https (http only on loopback)");
            }
        }
        if self.oidc_audience.iter().all(|a| a.trim().is_empty()) {
            return bad("CUSTOS_OIDC_AUDIENCE must name at least one audience");
        }
        let tenants_ok = self.oidc_tenants_claim.as_deref().is_none_or(|c| {
            !c.is_empty() && c.split('.').all(|seg| !seg.is_empty() && seg.len() <= 64)
        });
        if !tenants_ok {
            return bad("CUSTOS_OIDC_TENANTS_CLAIM must be a dotted claim path");
        }
        let path_ok = !self.oidc_roles_claim.is_empty()
            && self
                .oidc_roles_claim
                .split('.')
                .all(|seg| !seg.is_empty() && seg.len() <= 64);
        if !path_ok {
            return bad("CUSTOS_OIDC_ROLES_CLAIM must be a dotted claim path");
        }
        if self.oidc_leeway_secs > 300 {
            return bad("CUSTOS_OIDC_LEEWAY_SECS must be at most 300");
        }
        if self.oidc_http_timeout_secs == 0 || self.oidc_http_timeout_secs > 60 {
            return bad("CUSTOS_OIDC_HTTP_TIMEOUT_SECS must be 1..=60");
        }
        if self.oidc_jwks_refresh_min_secs == 0 || self.oidc_jwks_refresh_min_secs > 3600 {
            return bad("CUSTOS_OIDC_JWKS_REFRESH_MIN_SECS must be 1..=3600");
        }
        if self.oidc_jwks_ttl_secs == 0 {
            return bad("CUSTOS_OIDC_JWKS_TTL_SECS must be positive");
        }
        if self.oidc_jwks_stale_max_secs < self.oidc_jwks_ttl_secs {
            return bad(
                "CUSTOS_OIDC_JWKS_STALE_MAX_SECS must be at least CUSTOS_OIDC_JWKS_TTL_SECS",
            );
        }
        if self.token_types().is_empty() {
            return bad("CUSTOS_OIDC_TOKEN_TYPES must name at least one type");
        }
        self.algorithms()?;
        Ok(())
    }
}

impl QueryConfig {
    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        self.oidc.validate()?;
        if !valid_tenant(&self.default_tenant) {
            return bad("CUSTOS_DEFAULT_TENANT must be 1-64 characters of A-Z a-z 0-9 . _ -");
        }
        if self.page_default == 0 || self.page_default > self.page_max {
            return bad("CUSTOS_QUERY_PAGE_DEFAULT must be 1..=CUSTOS_QUERY_PAGE_MAX");
        }
        if self.page_max == 0 || self.page_max > 10_000 {
            return bad("CUSTOS_QUERY_PAGE_MAX must be 1..=10000");
        }
        if self.export_max_rows == 0 {
            return bad("CUSTOS_QUERY_EXPORT_MAX_ROWS must be positive");
        }
        if self.export_timeout_secs == 0 || self.export_timeout_secs > 86_400 {
            return bad("CUSTOS_QUERY_EXPORT_TIMEOUT_SECS must be 1..=86400");
        }
        if self.exports_per_caller == 0 || self.exports_per_caller > 1_000 {
            return bad("CUSTOS_QUERY_EXPORTS_PER_CALLER must be 1..=1000");
        }
        if self.max_concurrent_requests == 0 || self.max_concurrent_requests > 100_000 {
            return bad("CUSTOS_QUERY_MAX_CONCURRENT_REQUESTS must be 1..=100000");
        }
        if self.admin_addr == self.http_addr {
            return bad("CUSTOS_QUERY_ADMIN_ADDR must differ from CUSTOS_QUERY_HTTP_ADDR");
        }
        if self.default_window_days == 0 || self.default_window_days > 36_500 {
            return bad("CUSTOS_QUERY_DEFAULT_WINDOW_DAYS must be 1..=36500");
        }
        self.clickhouse.validate().or_else(bad)?;
        if self.revocation_grace_secs > 86_400 * 30 {
            return bad("CUSTOS_REVOCATION_GRACE_SECS must be at most 30 days");
        }
        for p in &self.disclosure_excluded_purposes {
            if !crate::params::valid_code(p.trim()) {
                return bad(
                    "CUSTOS_QUERY_DISCLOSURE_EXCLUDED_PURPOSES must be codes of A-Z a-z 0-9 . _ -",
                );
            }
        }
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return bad("CUSTOS_QUERY_PUBLIC_URL must be an http(s) URL");
        }
        if self.verify_timeout_secs == 0 || self.verify_timeout_secs > 86_400 {
            return bad("CUSTOS_QUERY_VERIFY_TIMEOUT_SECS must be 1..=86400");
        }
        if self.proof_max_records == 0 || self.proof_max_records > 1_000_000 {
            return bad("CUSTOS_QUERY_PROOF_MAX_RECORDS must be 1..=1000000");
        }
        if self.audit_batch_rows == 0 || self.audit_batch_rows > 10_000 {
            return bad("CUSTOS_QUERY_AUDIT_BATCH_ROWS must be 1..=10000");
        }
        if self.audit_linger_ms > 100 {
            return bad("CUSTOS_QUERY_AUDIT_LINGER_MS must be at most 100");
        }
        if self.audit_final_linger_ms > 5_000 {
            return bad("CUSTOS_QUERY_AUDIT_FINAL_LINGER_MS must be at most 5000");
        }
        Ok(())
    }

    /// Group-commit settings of the query-audit writer.
    pub fn group_commit(&self) -> crate::audit::GroupCommit {
        crate::audit::GroupCommit {
            max_rows: self.audit_batch_rows,
            linger: Duration::from_millis(self.audit_linger_ms),
            final_linger: Duration::from_millis(self.audit_final_linger_ms),
            ..crate::audit::GroupCommit::default()
        }
    }

    /// The checkpoint JWKS (public keys only), if a file is configured.
    pub fn checkpoint_jwks(&self) -> Result<Option<serde_json::Value>, ConfigError> {
        let Some(path) = &self.checkpoint_jwks_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(ConfigError::KeyFile)?;
        crate::integrity::public_jwks(&text).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_allow_list_refuses_symmetric_and_none() {
        for bad in ["HS256", "HS384", "HS512", "none", "None", ""] {
            assert!(parse_algorithm(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(parse_algorithm("RS256").ok(), Some(Algorithm::RS256));
        assert_eq!(parse_algorithm("ES256").ok(), Some(Algorithm::ES256));
    }

    #[test]
    fn key_urls_must_be_https_or_loopback() {
        assert!(fetchable_url("https://as.example/realms/x"));
        assert!(fetchable_url("http://127.0.0.1:8080/realms/x"));
        assert!(fetchable_url("http://localhost/jwks"));
        assert!(!fetchable_url("http://as.example/realms/x"));
        assert!(!fetchable_url("http://127.0.0.1.evil.example/x"));
        assert!(!fetchable_url("ftp://127.0.0.1/x"));
        assert!(fetchable_url("http://[::1]:8080/jwks"));
        assert!(fetchable_url("http://127.0.0.2/jwks"));
    }

    #[test]
    fn userinfo_cannot_pass_for_a_loopback_host() {
        // The host of these is as.example / evil.example, not 127.0.0.1.
        assert!(!fetchable_url("http://127.0.0.1:8080@as.example/realms/x"));
        assert!(!fetchable_url("http://127.0.0.1@evil.example/jwks"));
        assert!(!fetchable_url("http://localhost:x@evil.example/"));
        assert!(!fetchable_url("https://user:pw@as.example/realms/x"));
        // A backslash ends the authority (WHATWG, as the HTTP client parses it): the host is
        // 127.0.0.1 and that is where the request goes.
        assert!(fetchable_url("http://127.0.0.1\\@evil.example/"));
        assert!(!fetchable_url("not a url"));
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        config: QueryConfig,
    }

    fn parse(extra: &[&str]) -> QueryConfig {
        use clap::Parser;
        let mut args = vec![
            "custos-query",
            "--oidc-issuer",
            "https://as.example/realms/x",
            "--oidc-audience",
            "custos-query",
            "--reader-password",
            "r",
            "--writer-password",
            "w",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).expect("arguments").config
    }

    #[test]
    fn database_passwords_are_required() {
        // Checked on the definitions, not by parsing: the environment may hold them.
        use clap::CommandFactory;
        let cmd = Cli::command();
        for id in ["reader_password", "writer_password"] {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == id)
                .expect("argument");
            assert!(arg.is_required_set(), "{id} is required");
            assert!(arg.get_default_values().is_empty(), "{id} has no default");
        }
    }

    #[test]
    fn load_limit_defaults_and_ranges() {
        let c = parse(&[]);
        assert!(c.validate().is_ok());
        assert_eq!(c.export_max_rows, 1_000_000);
        assert_eq!(c.export_timeout_secs, 600);
        assert_eq!(c.exports_per_caller, 2);
        assert_eq!(c.max_concurrent_requests, 64);
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:9466");
        assert_eq!(c.oidc.token_types(), vec!["at+jwt", "jwt"]);
        for bad in [
            &["--exports-per-caller", "0"][..],
            &["--max-concurrent-requests", "0"],
            &["--export-timeout-secs", "0"],
            &["--admin-addr", "127.0.0.1:8088"],
            &["--oidc-jwks-refresh-min-secs", "0"],
            &[
                "--oidc-jwks-ttl-secs",
                "600",
                "--oidc-jwks-stale-max-secs",
                "60",
            ],
            &["--oidc-token-types", ""],
        ] {
            assert!(parse(bad).validate().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn token_types_are_normalized() {
        assert_eq!(normalize_typ(" application/AT+JWT "), "at+jwt");
        assert_eq!(normalize_typ("JWT"), "jwt");
    }

    #[test]
    fn tenants_are_strict() {
        assert!(valid_tenant("general"));
        assert!(valid_tenant("t-1.a_b"));
        assert!(!valid_tenant(""));
        assert!(!valid_tenant("x' OR 1=1"));
        assert!(!valid_tenant(&"a".repeat(65)));
    }
}
