//! Query API configuration: every knob has a flag and an environment variable
//! (`CUSTOS_QUERY_*`, `CUSTOS_OIDC_*`, and the shared `CUSTOS_CLICKHOUSE_*` /
//! `CUSTOS_PSEUDONYM_*` ones), and [`QueryConfig::validate`] checks the combination
//! before anything connects.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use custos_auth::config::OidcArgs;
use custos_runtime::clickhouse::ClickHouseArgs;
use custos_runtime::keys::{KeyRingLoadError, PseudonymKeyArgs};
use serde_json::{json, Value};
use thiserror::Error;

pub use crate::params::valid_tenant;

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
    /// The OIDC settings are invalid.
    #[error(transparent)]
    Oidc(#[from] custos_auth::config::ConfigError),
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
    /// Hours within which a break-glass opening must be reviewed (its due time), for tenants
    /// without an override.
    #[arg(long, env = "CUSTOS_REVIEW_DUE_HOURS", default_value_t = 24)]
    pub review_due_hours: u32,
    /// Per-tenant due times of the break-glass review, `tenant=hours` separated by commas
    /// (`t1=12,t2=48`).
    #[arg(long, env = "CUSTOS_REVIEW_DUE_HOURS_BY_TENANT", default_value = "")]
    pub review_due_hours_by_tenant: String,
    /// OIDC settings.
    #[command(flatten)]
    pub oidc: OidcArgs,
}

pub use custos_runtime::review::{ReviewDue, MAX_REVIEW_DUE_HOURS};

/// Parses a checkpoint JWKS file and returns only its public members. Refuses private
/// key material (a key file given by mistake must never be served) and anything but
/// P-256 keys with a key id.
pub fn public_jwks(text: &str) -> Result<Value, ConfigError> {
    let bad = |m: &str| ConfigError::Invalid(format!("CUSTOS_CHECKPOINT_JWKS_FILE: {m}"));
    let doc: Value = serde_json::from_str(text).map_err(|_| bad("not a JSON document"))?;
    let keys = doc["keys"]
        .as_array()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("no \"keys\" array (make it with `custos-ingest jwks`)"))?;
    let mut out = Vec::new();
    for k in keys {
        let obj = k.as_object().ok_or_else(|| bad("a key is not an object"))?;
        if ["d", "p", "q", "dp", "dq", "qi", "k"]
            .iter()
            .any(|m| obj.contains_key(*m))
        {
            return Err(bad(
                "holds private key material; give the public JWKS of `custos-ingest jwks`",
            ));
        }
        let text_of = |m: &str| obj.get(m).and_then(Value::as_str).filter(|v| !v.is_empty());
        let (Some("EC"), Some("P-256"), Some(kid), Some(x), Some(y)) = (
            text_of("kty"),
            text_of("crv"),
            text_of("kid"),
            text_of("x"),
            text_of("y"),
        ) else {
            return Err(bad("every key must be an EC P-256 key with kid, x and y"));
        };
        out.push(
            json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": x, "y": y,
            "alg": "ES256", "use": "sig"}),
        );
    }
    Ok(json!({ "keys": out }))
}

impl QueryConfig {
    /// The break-glass review's due times (validated).
    pub fn review_due(&self) -> Result<ReviewDue, ConfigError> {
        ReviewDue::parse(self.review_due_hours, &self.review_due_hours_by_tenant)
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        self.oidc.validate()?;
        self.review_due()?;
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
    pub fn group_commit(&self) -> custos_auth::audit::GroupCommit {
        custos_auth::audit::GroupCommit {
            max_rows: self.audit_batch_rows,
            linger: Duration::from_millis(self.audit_linger_ms),
            final_linger: Duration::from_millis(self.audit_final_linger_ms),
            ..custos_auth::audit::GroupCommit::default()
        }
    }

    /// The checkpoint JWKS (public keys only), if a file is configured.
    pub fn checkpoint_jwks(&self) -> Result<Option<serde_json::Value>, ConfigError> {
        let Some(path) = &self.checkpoint_jwks_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(ConfigError::KeyFile)?;
        public_jwks(&text).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn tenants_are_strict() {
        assert!(valid_tenant("general"));
        assert!(valid_tenant("t-1.a_b"));
        assert!(!valid_tenant(""));
        assert!(!valid_tenant("x' OR 1=1"));
        assert!(!valid_tenant(&"a".repeat(65)));
    }

    #[test]
    fn review_due_times_are_validated_per_tenant() {
        let c = parse(&[]);
        let due = c.review_due().expect("defaults");
        assert_eq!(due.due_ms("any"), 24 * 3_600_000);
        let c = parse(&[
            "--review-due-hours",
            "6",
            "--review-due-hours-by-tenant",
            "t1=12, t2=48",
        ]);
        let due = c.review_due().expect("overrides");
        assert_eq!(due.due_ms("t1"), 12 * 3_600_000);
        assert_eq!(due.due_ms("t2"), 48 * 3_600_000);
        assert_eq!(due.due_ms("t3"), 6 * 3_600_000);
        for bad in [
            &["--review-due-hours", "0"][..],
            &["--review-due-hours", "9000"],
            &["--review-due-hours-by-tenant", "t1"],
            &["--review-due-hours-by-tenant", "t1=0"],
            &["--review-due-hours-by-tenant", "t1=x"],
            &["--review-due-hours-by-tenant", "x y=3"],
            &["--review-due-hours-by-tenant", "t1=3,t1=4"],
        ] {
            assert!(parse(bad).validate().is_err(), "{bad:?} accepted");
        }
    }
}
