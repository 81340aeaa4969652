//! Feed configuration: every knob has a flag and an environment variable (`CUSTOS_FEED_*`,
//! the shared `CUSTOS_OIDC_*` and `CUSTOS_KAFKA_BROKERS`), and [`FeedConfig::validate`]
//! checks the combination before anything connects.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use custos_auth::config::OidcArgs;
use custos_runtime::kafka::KafkaArgs;
use thiserror::Error;

/// Errors in the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The OIDC settings are invalid.
    #[error(transparent)]
    Oidc(#[from] custos_auth::config::ConfigError),
    /// The Kafka producer could not be created.
    #[error("Kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Settings of `custos-feed`.
#[derive(Debug, Clone, Args)]
pub struct FeedConfig {
    /// Listen address of the feed (`POST /fhir/AuditEvent`, `POST /fhir`).
    #[arg(long, env = "CUSTOS_FEED_HTTP_ADDR", default_value = "127.0.0.1:8090")]
    pub http_addr: SocketAddr,
    /// Address of the operations endpoints (`/metrics`), kept off the public listener.
    #[arg(long, env = "CUSTOS_FEED_ADMIN_ADDR", default_value = "127.0.0.1:9468")]
    pub admin_addr: SocketAddr,
    /// The FHIR base clients reach the feed at, for `Location` headers (no trailing slash).
    #[arg(
        long,
        env = "CUSTOS_FEED_PUBLIC_URL",
        default_value = "http://127.0.0.1:8090/fhir"
    )]
    pub public_url: String,
    /// Kafka bootstrap servers.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic accepted AuditEvents are written to (the ingest reads it).
    #[arg(
        long,
        env = "CUSTOS_FEED_TOPIC",
        default_value = "custos.gateway-events"
    )]
    pub topic: String,
    /// Largest request body, in bytes; larger ones get 413 before they are parsed.
    #[arg(long, env = "CUSTOS_FEED_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest single AuditEvent, in bytes (the decoder's limit; keep it at most the
    /// ingest's `CUSTOS_MAX_EVENT_BYTES`, or the ingest dead-letters what the feed accepted).
    #[arg(long, env = "CUSTOS_FEED_MAX_EVENT_BYTES", default_value_t = 1024 * 1024)]
    pub max_event_bytes: usize,
    /// Most entries of one batch or transaction Bundle.
    #[arg(long, env = "CUSTOS_FEED_MAX_BUNDLE_ENTRIES", default_value_t = 1000)]
    pub max_bundle_entries: usize,
    /// Most requests served at a time; more get 503 with `Retry-After` at once.
    #[arg(
        long,
        env = "CUSTOS_FEED_MAX_CONCURRENT_REQUESTS",
        default_value_t = 64
    )]
    pub max_concurrent_requests: usize,
    /// How long a request waits for the broker's acknowledgement before it is answered
    /// 503, in seconds (also the producer's `message.timeout.ms`).
    #[arg(long, env = "CUSTOS_FEED_PRODUCE_TIMEOUT_SECS", default_value_t = 10)]
    pub produce_timeout_secs: u64,
    /// Time limit of one request as a whole, in seconds (answered 503 beyond it).
    #[arg(long, env = "CUSTOS_FEED_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// How long a verified bearer token with the write role is remembered, in seconds (never
    /// beyond its `exp`; failures are never remembered; 0 verifies every request). See
    /// [`crate::tokens`].
    #[arg(long, env = "CUSTOS_FEED_TOKEN_CACHE_SECS", default_value_t = 30)]
    pub token_cache_secs: u64,
    /// Bearer-token settings (`CUSTOS_OIDC_*`): sources authenticate with client
    /// credentials and need the `audit_source` role.
    #[command(flatten)]
    pub oidc: OidcArgs,
}

impl FeedConfig {
    /// The broker acknowledgement timeout.
    pub fn produce_timeout(&self) -> Duration {
        Duration::from_secs(self.produce_timeout_secs)
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return bad("CUSTOS_FEED_PUBLIC_URL must be an http(s) URL");
        }
        if self.topic.trim().is_empty() {
            return bad("CUSTOS_FEED_TOPIC must not be empty");
        }
        if self.kafka.brokers.trim().is_empty() {
            return bad("CUSTOS_KAFKA_BROKERS must not be empty");
        }
        if self.max_event_bytes < 1024 {
            return bad("CUSTOS_FEED_MAX_EVENT_BYTES must be at least 1024");
        }
        if self.max_body_bytes < self.max_event_bytes {
            return bad("CUSTOS_FEED_MAX_BODY_BYTES must be at least CUSTOS_FEED_MAX_EVENT_BYTES");
        }
        if self.max_body_bytes > 256 * 1024 * 1024 {
            return bad("CUSTOS_FEED_MAX_BODY_BYTES must be at most 256 MiB");
        }
        if self.max_bundle_entries == 0 || self.max_bundle_entries > 100_000 {
            return bad("CUSTOS_FEED_MAX_BUNDLE_ENTRIES must be 1..=100000");
        }
        if self.max_concurrent_requests == 0 {
            return bad("CUSTOS_FEED_MAX_CONCURRENT_REQUESTS must be positive");
        }
        if self.produce_timeout_secs == 0 || self.produce_timeout_secs > 300 {
            return bad("CUSTOS_FEED_PRODUCE_TIMEOUT_SECS must be 1..=300");
        }
        if self.request_timeout_secs <= self.produce_timeout_secs {
            return bad(
                "CUSTOS_FEED_REQUEST_TIMEOUT_SECS must be larger than CUSTOS_FEED_PRODUCE_TIMEOUT_SECS",
            );
        }
        if self.token_cache_secs > 300 {
            return bad("CUSTOS_FEED_TOKEN_CACHE_SECS must be 0..=300");
        }
        self.oidc.validate()?;
        Ok(())
    }
}
