//! `custos-alerts run` settings: every knob has a flag and an environment variable;
//! [`AlertsConfig::validate`] checks the combination before anything connects. Secrets
//! (`hide_env_values`) never appear in `--help` output or logs.
//!
//! Per-tenant settings come from two JSON documents:
//!
//! - the detector parameters (`CUSTOS_ALERTS_PARAMS_FILE`), read by
//!   [`custos_detect::ParamSet::from_json`] (`auto_revoke` is one of them);
//! - the tenant outputs (`CUSTOS_ALERTS_TENANTS_FILE`): per tenant a webhook and an SSF/CAEP
//!   receiver, `{"<tenant>": {"webhook": {"url", "secret"}, "ssf": {"endpoint", "audience"?,
//!   "authorization"?}}}`; the entry `"*"` applies to tenants without one.
//!
//! The break-glass review due time is the query service's setting, read from the same
//! variables (`CUSTOS_REVIEW_DUE_HOURS`, `CUSTOS_REVIEW_DUE_HOURS_BY_TENANT`), so the review
//! queue and the overdue alerts agree.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use custos_detect::ParamSet;
use custos_runtime::clickhouse::ClickHouseArgs;
use custos_runtime::kafka::KafkaArgs;
use custos_runtime::keys::{KeyRingLoadError, PseudonymKeyArgs};
use serde::Deserialize;
use thiserror::Error;

/// Errors in the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// Pseudonymization keys.
    #[error(transparent)]
    Keys(#[from] KeyRingLoadError),
    /// Detector parameters.
    #[error(transparent)]
    Params(#[from] custos_detect::DetectError),
    /// A file could not be read.
    #[error("cannot read {what}: {source}")]
    File {
        /// Which file.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
}

/// A webhook of one tenant: alerts are POSTed as JSON, signed with HMAC-SHA256 over the body
/// (header [`crate::outputs::SIGNATURE_HEADER`]). Its `Debug` hides the secret.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Endpoint URL (https, or http to a loopback host).
    pub url: String,
    /// The shared HMAC secret (at least 16 bytes).
    pub secret: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// An SSF push receiver of one tenant (RFC 8935). Its `Debug` hides the authorization.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SsfReceiver {
    /// Push endpoint URL.
    pub endpoint: String,
    /// `aud` of the SETs (default: the endpoint).
    #[serde(default)]
    pub audience: Option<String>,
    /// Value of the `Authorization` header the receiver expects, if any.
    #[serde(default)]
    pub authorization: Option<String>,
}

impl std::fmt::Debug for SsfReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsfReceiver")
            .field("endpoint", &self.endpoint)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// What one tenant gets besides the detectors.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantOutputs {
    /// Webhook, if any.
    #[serde(default)]
    pub webhook: Option<Webhook>,
    /// SSF/CAEP receiver, if any.
    #[serde(default)]
    pub ssf: Option<SsfReceiver>,
}

/// Per-tenant outputs; `"*"` is the entry of tenants without their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tenants(pub BTreeMap<String, TenantOutputs>);

impl Tenants {
    /// Parses the tenants document.
    pub fn from_json(json: &str) -> Result<Tenants, ConfigError> {
        serde_json::from_str(json).map(Tenants).map_err(|e| {
            ConfigError::Invalid(format!(
                "tenant outputs: {e} (expected {{\"<tenant>\": {{\"webhook\"?, \"ssf\"?}}}})"
            ))
        })
    }

    /// The outputs of `tenant`.
    pub fn get(&self, tenant: &str) -> Option<&TenantOutputs> {
        self.0.get(tenant).or_else(|| self.0.get("*"))
    }

    /// Checks URLs and secrets.
    pub fn validate(&self, allow_plain_http: bool) -> Result<(), ConfigError> {
        for (tenant, t) in &self.0 {
            if let Some(w) = &t.webhook {
                check_url(&format!("webhook of {tenant:?}"), &w.url, allow_plain_http)?;
                if w.secret.len() < 16 {
                    return Err(ConfigError::Invalid(format!(
                        "webhook secret of {tenant:?} must be at least 16 bytes"
                    )));
                }
            }
            if let Some(s) = &t.ssf {
                check_url(
                    &format!("SSF receiver of {tenant:?}"),
                    &s.endpoint,
                    allow_plain_http,
                )?;
            }
        }
        Ok(())
    }
}

/// Checks a URL alerts are sent to: `https`, or `http` to a loopback host, or `http`
/// anywhere with `allow_plain_http`; no credentials in the URL.
pub fn check_url(what: &str, url: &str, allow_plain_http: bool) -> Result<(), ConfigError> {
    let bad = |why: &str| Err(ConfigError::Invalid(format!("{what}: {why}")));
    let Ok(parsed) = reqwest::Url::parse(url.trim()) else {
        return bad("not an absolute URL");
    };
    let Some(host) = parsed.host_str() else {
        return bad("the URL names no host");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return bad("credentials in the URL are not allowed");
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback || allow_plain_http => Ok(()),
        "http" => bad("plain http is only allowed to a loopback host; use https"),
        _ => bad("the scheme must be https"),
    }
}

pub use custos_runtime::review::{ReviewDue, MAX_REVIEW_DUE_HOURS};

/// `custos-alerts run` settings.
#[derive(Debug, Clone, Args)]
pub struct AlertsConfig {
    /// Kafka settings.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Input topics, comma-separated (the ingest's inputs).
    #[arg(
        long,
        env = "CUSTOS_ALERTS_INPUT_TOPICS",
        value_delimiter = ',',
        default_value = "custos.as-events,custos.gateway-events,custos.consent-events"
    )]
    pub input_topics: Vec<String>,
    /// Topic alerts are produced to (key = alert id, JSON).
    #[arg(long, env = "CUSTOS_ALERTS_TOPIC", default_value = "custos.alerts")]
    pub alerts_topic: String,
    /// Consumer group the input offsets are committed to (for lag visibility; the position
    /// itself comes from the saved state).
    #[arg(long, env = "CUSTOS_ALERTS_GROUP", default_value = "custos-alerts")]
    pub group_id: String,
    /// Name of the saved state in `custos.detector_state` (one per deployment).
    #[arg(
        long,
        env = "CUSTOS_ALERTS_STATE_NAME",
        default_value = "custos-alerts"
    )]
    pub state_name: String,
    /// ClickHouse endpoint and timeout.
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// ClickHouse account of the service.
    #[arg(
        long,
        env = "CUSTOS_ALERTS_CLICKHOUSE_USER",
        default_value = "custos_alerts"
    )]
    pub clickhouse_user: String,
    /// Its password (required: no password is built in).
    #[arg(
        long,
        env = "CUSTOS_ALERTS_CLICKHOUSE_PASSWORD",
        hide_env_values = true
    )]
    pub clickhouse_password: String,
    /// Tenant of events naming none (the ingest's setting).
    #[arg(long, env = "CUSTOS_DEFAULT_TENANT", default_value = "default")]
    pub default_tenant: String,
    /// Pseudonymization keys (the same ring as the ingest, so alerts name the stored rows).
    #[command(flatten)]
    pub keys: PseudonymKeyArgs,
    /// Largest accepted event, in bytes (the ingest's limit).
    #[arg(long, env = "CUSTOS_MAX_EVENT_BYTES", default_value_t = 1024 * 1024)]
    pub max_event_bytes: usize,
    /// Detector parameters (JSON `{"default": {...}, "tenants": {...}}`). Unset: defaults.
    #[arg(long, env = "CUSTOS_ALERTS_PARAMS_FILE")]
    pub params_file: Option<PathBuf>,
    /// Tenant outputs (JSON, see the module docs). Unset: no webhook, no SSF receiver.
    #[arg(long, env = "CUSTOS_ALERTS_TENANTS_FILE")]
    pub tenants_file: Option<PathBuf>,
    /// Allowed lateness of events, in milliseconds: the watermark is the latest event time
    /// seen minus it.
    #[arg(long, env = "CUSTOS_ALERTS_LATENESS_MS", default_value_t = 5_000)]
    pub lateness_ms: u64,
    /// How long alerts wait to be written together, in milliseconds.
    #[arg(long, env = "CUSTOS_ALERTS_LINGER_MS", default_value_t = 100)]
    pub linger_ms: u64,
    /// Most alerts written in one batch.
    #[arg(long, env = "CUSTOS_ALERTS_BATCH", default_value_t = 500)]
    pub batch: usize,
    /// How often the detector state is saved, in seconds.
    #[arg(long, env = "CUSTOS_ALERTS_SNAPSHOT_SECS", default_value_t = 10)]
    pub snapshot_secs: u64,
    /// How often overdue break-glass reviews are looked for, in seconds.
    #[arg(long, env = "CUSTOS_ALERTS_REVIEW_SWEEP_SECS", default_value_t = 60)]
    pub review_sweep_secs: u64,
    /// Hours within which a break-glass opening must be reviewed, for tenants without an
    /// override (the query service's setting).
    #[arg(long, env = "CUSTOS_REVIEW_DUE_HOURS", default_value_t = 24)]
    pub review_due_hours: u32,
    /// Per-tenant due times, `tenant=hours` separated by commas (`t1=12,t2=48`; the query
    /// service's setting).
    #[arg(long, env = "CUSTOS_REVIEW_DUE_HOURS_BY_TENANT", default_value = "")]
    pub review_due_hours_by_tenant: String,
    /// Attempts per webhook or SSF delivery before it is recorded as failed.
    #[arg(long, env = "CUSTOS_ALERTS_NOTIFY_ATTEMPTS", default_value_t = 5)]
    pub notify_attempts: u32,
    /// First retry delay of a delivery, in milliseconds (doubles per attempt, with jitter).
    #[arg(long, env = "CUSTOS_ALERTS_NOTIFY_BACKOFF_MS", default_value_t = 500)]
    pub notify_backoff_ms: u64,
    /// Timeout of one delivery request, in seconds.
    #[arg(long, env = "CUSTOS_ALERTS_NOTIFY_TIMEOUT_SECS", default_value_t = 10)]
    pub notify_timeout_secs: u64,
    /// Deliveries waiting at most; beyond it a delivery is dropped, counted and logged (the
    /// pipeline never waits for a SIEM).
    #[arg(long, env = "CUSTOS_ALERTS_NOTIFY_QUEUE", default_value_t = 10_000)]
    pub notify_queue: usize,
    /// Allows plain `http://` webhook and SSF URLs on non-loopback hosts (development only).
    #[arg(
        long,
        env = "CUSTOS_ALERTS_ALLOW_PLAIN_HTTP",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub allow_plain_http: bool,
    /// SET issuer (`iss` of the SSF/CAEP SETs).
    #[arg(
        long,
        env = "CUSTOS_ALERTS_SSF_ISSUER",
        default_value = "urn:custos:alerts"
    )]
    pub ssf_issuer: String,
    /// PKCS#8 PEM P-256 key that signs SETs. Unset: a random key per process (development).
    #[arg(long, env = "CUSTOS_ALERTS_SSF_KEY_FILE")]
    pub ssf_key_file: Option<PathBuf>,
    /// Key id of the SET signing key.
    #[arg(long, env = "CUSTOS_ALERTS_SSF_KID", default_value = "custos-alerts-1")]
    pub ssf_kid: String,
    /// Address of the operational routes (`/healthz`, `/readyz`, `/metrics`).
    #[arg(
        long,
        env = "CUSTOS_ALERTS_ADMIN_ADDR",
        default_value = "127.0.0.1:9471"
    )]
    pub admin_addr: SocketAddr,
}

impl AlertsConfig {
    /// Checks ranges and consistency (and that the parameter and tenant files parse).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        self.clickhouse
            .validate()
            .map_err(|m| ConfigError::Invalid(m.to_owned()))?;
        if self.input_topics.is_empty() || self.input_topics.iter().any(|t| t.trim().is_empty()) {
            return bad("CUSTOS_ALERTS_INPUT_TOPICS must name at least one topic, none empty");
        }
        if self.alerts_topic.trim().is_empty() {
            return bad("CUSTOS_ALERTS_TOPIC must not be empty");
        }
        if self.input_topics.contains(&self.alerts_topic) {
            return bad("CUSTOS_ALERTS_TOPIC must not be an input topic");
        }
        if self.state_name.trim().is_empty() || self.group_id.trim().is_empty() {
            return bad("CUSTOS_ALERTS_STATE_NAME and CUSTOS_ALERTS_GROUP must not be empty");
        }
        if self.linger_ms > 1_000 {
            return bad("CUSTOS_ALERTS_LINGER_MS must be at most 1000 (the latency target is 2 s)");
        }
        if self.batch == 0 || self.batch > 100_000 {
            return bad("CUSTOS_ALERTS_BATCH must be 1..=100000");
        }
        if self.lateness_ms > 3_600_000 {
            return bad("CUSTOS_ALERTS_LATENESS_MS must be at most 3600000 (1 h)");
        }
        if self.snapshot_secs == 0 || self.snapshot_secs > 3600 {
            return bad("CUSTOS_ALERTS_SNAPSHOT_SECS must be 1..=3600");
        }
        if self.review_sweep_secs == 0 {
            return bad("CUSTOS_ALERTS_REVIEW_SWEEP_SECS must be positive");
        }
        self.review_due()?;
        if self.notify_attempts == 0 || self.notify_attempts > 100 {
            return bad("CUSTOS_ALERTS_NOTIFY_ATTEMPTS must be 1..=100");
        }
        if self.notify_backoff_ms == 0 || self.notify_timeout_secs == 0 || self.notify_queue == 0 {
            return bad("notify backoff, timeout and queue must be positive");
        }
        if self.max_event_bytes == 0 {
            return bad("CUSTOS_MAX_EVENT_BYTES must be positive");
        }
        self.params()?;
        self.tenants()?.validate(self.allow_plain_http)?;
        Ok(())
    }

    fn read(path: &std::path::Path, what: &'static str) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|source| ConfigError::File { what, source })
    }

    /// The detector parameters.
    pub fn params(&self) -> Result<ParamSet, ConfigError> {
        match &self.params_file {
            Some(p) => Ok(ParamSet::from_json(&Self::read(p, "the parameter file")?)?),
            None => Ok(ParamSet::default()),
        }
    }

    /// The tenant outputs.
    pub fn tenants(&self) -> Result<Tenants, ConfigError> {
        match &self.tenants_file {
            Some(p) => Tenants::from_json(&Self::read(p, "the tenants file")?),
            None => Ok(Tenants::default()),
        }
    }

    /// The break-glass review due times (validated).
    pub fn review_due(&self) -> Result<ReviewDue, ConfigError> {
        ReviewDue::parse(self.review_due_hours, &self.review_due_hours_by_tenant)
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The alert batch linger.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cfg: AlertsConfig,
    }

    fn cfg(extra: &[&str]) -> AlertsConfig {
        let mut args = vec!["t", "--clickhouse-password", "p"];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).expect("parse").cfg
    }

    #[test]
    fn defaults_validate_and_bad_values_are_refused_with_the_variable() {
        let c = cfg(&[]);
        c.validate().expect("defaults");
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:9471");
        assert_eq!(c.input_topics.len(), 3);
        assert_eq!(c.snapshot_secs, 10);
        for (flag, value, var) in [
            ("--linger-ms", "5000", "CUSTOS_ALERTS_LINGER_MS"),
            ("--snapshot-secs", "0", "CUSTOS_ALERTS_SNAPSHOT_SECS"),
            ("--alerts-topic", "custos.as-events", "CUSTOS_ALERTS_TOPIC"),
            ("--batch", "0", "CUSTOS_ALERTS_BATCH"),
            ("--review-due-hours", "0", "CUSTOS_REVIEW_DUE_HOURS"),
            (
                "--review-due-hours-by-tenant",
                "t1=x",
                "CUSTOS_REVIEW_DUE_HOURS_BY_TENANT",
            ),
        ] {
            let e = cfg(&[flag, value]).validate().expect_err(flag).to_string();
            assert!(e.contains(var), "{e}");
        }
    }

    #[test]
    fn review_due_times_per_tenant_like_the_query_service() {
        let due = cfg(&["--review-due-hours-by-tenant", "t1=12, t2=48"])
            .review_due()
            .expect("due");
        assert_eq!(
            (due.hours("t1"), due.hours("t2"), due.hours("t3")),
            (12, 48, 24)
        );
        assert_eq!(due.shortest(), 12);
        assert!(ReviewDue::parse(24, "t1=1,t1=2").is_err());
        assert!(ReviewDue::parse(24, "t1=9000").is_err());
        assert!(ReviewDue::parse(24, "bad tenant=2").is_err());
    }

    #[test]
    fn tenant_outputs_parse_fall_back_to_the_star_entry_and_check_urls() {
        let t = Tenants::from_json(
            r#"{"general": {"webhook": {"url": "http://127.0.0.1:9/h", "secret": "0123456789abcdef"}},
                "*": {"ssf": {"endpoint": "https://siem.example/ssf"}}}"#,
        )
        .expect("parse");
        t.validate(false).expect("valid");
        assert!(t.get("general").and_then(|g| g.webhook.as_ref()).is_some());
        assert!(t.get("other").and_then(|o| o.ssf.as_ref()).is_some());
        let plain = Tenants::from_json(
            r#"{"x": {"webhook": {"url": "http://siem.example/h", "secret": "0123456789abcdef"}}}"#,
        )
        .expect("parse");
        assert!(plain.validate(false).is_err());
        assert!(plain.validate(true).is_ok());
        let short = Tenants::from_json(
            r#"{"x": {"webhook": {"url": "https://siem.example/h", "secret": "short"}}}"#,
        )
        .expect("parse");
        assert!(short.validate(false).is_err());
        assert!(Tenants::from_json(r#"{"x": {"unknown": 1}}"#).is_err());
        assert!(check_url("u", "https://user:pw@siem.example/", false).is_err());
        let secret = Tenants::from_json(
            r#"{"x": {"webhook": {"url": "https://siem.example/h", "secret": "hush-hush-hush-hush"},
                "ssf": {"endpoint": "https://siem.example/s", "authorization": "Bearer tok-123"}}}"#,
        )
        .expect("parse");
        let shown = format!("{secret:?}");
        assert!(
            !shown.contains("hush") && !shown.contains("tok-123"),
            "{shown}"
        );
    }
}

#[cfg(test)]
mod dev_params {
    /// The parameters `scripts/run` starts the service with parse, and lower the demo
    /// realm's credential-stuffing threshold only.
    #[test]
    fn the_dev_parameters_parse() {
        let set =
            custos_detect::ParamSet::from_json(include_str!("../../config/detectors/dev.json"))
                .expect("config/detectors/dev.json");
        assert_eq!(set.tenant("custos").credential_stuffing.user_threshold, 4);
        assert_eq!(
            set.tenant("general").credential_stuffing.user_threshold,
            custos_detect::ParamSet::default()
                .default
                .credential_stuffing
                .user_threshold
        );
    }
}
