//! Writing accepted AuditEvents to Kafka: an idempotent producer acknowledged by all
//! in-sync replicas (`custos_runtime::kafka::producer_config`), whose delivery reports are
//! awaited before the request is answered. The producer's `message.timeout.ms` is the
//! configured produce timeout, so an unreachable broker turns into an error (503) after a
//! bounded time, never into a success.

use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_runtime::kafka::{producer_config, Send};
use futures_util::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tracing::warn;

use crate::config::{ConfigError, FeedConfig};
use crate::outcome::FeedError;
use crate::resource::Accepted;

/// How long a readiness answer about the broker is reused.
const REACHABILITY_TTL: Duration = Duration::from_secs(2);

/// The feed's Kafka producer.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: Arc<str>,
    timeout: Duration,
    last_check: Arc<std::sync::Mutex<Option<(Instant, bool)>>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The producer settings: the shared idempotent `acks=all` profile, delivery bounded by the
/// produce timeout, and records as large as the largest accepted AuditEvent (plus room for
/// the record overhead), so that an accepted event is never refused by the client.
pub fn client_config(cfg: &FeedConfig) -> ClientConfig {
    let mut c = producer_config(&cfg.kafka.brokers, "custos-feed", Send::Immediate);
    c.set(
        "message.timeout.ms",
        cfg.produce_timeout().as_millis().to_string(),
    );
    let max = (cfg.max_event_bytes + 64 * 1024).max(1_000_000);
    c.set("message.max.bytes", max.to_string());
    c
}

impl Publisher {
    /// A producer for the configured brokers and topic (connects lazily).
    pub fn new(cfg: &FeedConfig) -> Result<Publisher, ConfigError> {
        let timeout = cfg.produce_timeout();
        Ok(Publisher {
            producer: client_config(cfg).create()?,
            topic: cfg.topic.as_str().into(),
            timeout,
            last_check: Arc::new(std::sync::Mutex::new(None)),
        })
    }

    /// Produces `events` in order and waits until the broker acknowledged every one.
    /// Any failure (refused, timed out) is [`FeedError::Unavailable`]: some of them may be
    /// stored, and a resend is deduplicated by the ingest.
    pub async fn publish(&self, events: &[&Accepted]) -> Result<(), FeedError> {
        if events.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let sends = events.iter().map(|e| {
            self.producer.send(
                FutureRecord::to(&self.topic)
                    .key(e.key.as_bytes())
                    .payload(e.bytes.as_ref()),
                Timeout::After(self.timeout),
            )
        });
        let bound = self.timeout + Duration::from_secs(2);
        let results = tokio::time::timeout(bound, join_all(sends)).await;
        metrics::histogram!("custos_feed_produce_seconds").record(started.elapsed().as_secs_f64());
        let results = results.map_err(|_| {
            warn!(events = events.len(), "broker acknowledgement timed out");
            FeedError::Unavailable
        })?;
        let mut failed = 0usize;
        for r in &results {
            if let Err((e, _)) = r {
                failed += 1;
                if failed == 1 {
                    warn!(error = %e, "broker did not acknowledge");
                }
            }
        }
        if failed > 0 {
            warn!(failed, of = events.len(), "events not acknowledged");
            return Err(FeedError::Unavailable);
        }
        metrics::counter!("custos_feed_events_accepted_total").increment(events.len() as u64);
        Ok(())
    }

    /// Whether the broker answers a metadata request for the topic (answer reused for two
    /// seconds, so probes cannot multiply requests).
    pub async fn reachable(&self) -> bool {
        if let Some((at, ok)) = *self
            .last_check
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            if at.elapsed() < REACHABILITY_TTL {
                return ok;
            }
        }
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let ok = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map(|m| {
                    m.topics()
                        .iter()
                        .any(|t| t.name() == &*topic && t.error().is_none())
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        *self
            .last_check
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), ok));
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: FeedConfig,
    }

    fn cfg(extra: &[&str]) -> FeedConfig {
        let mut args = vec![
            "custos-feed",
            "--oidc-issuer",
            "http://127.0.0.1:9/realms/x",
            "--oidc-audience",
            "custos-feed",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).expect("config").config
    }

    #[test]
    fn producer_is_idempotent_bounded_and_fits_the_largest_event() {
        let c = client_config(&cfg(&["--produce-timeout-secs", "3"]));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("message.timeout.ms"), Some("3000"));
        // The default 1 MiB event plus overhead, over librdkafka's default of 1,000,000.
        assert_eq!(c.get("message.max.bytes"), Some("1114112"));
        let small = client_config(&cfg(&["--max-event-bytes", "2048"]));
        assert_eq!(small.get("message.max.bytes"), Some("1000000"));
    }

    #[test]
    fn defaults_validate_and_limits_are_checked() {
        cfg(&[]).validate().expect("defaults are valid");
        for bad in [
            &["--max-event-bytes", "100"][..],
            &["--max-body-bytes", "2048", "--max-event-bytes", "4096"],
            &["--produce-timeout-secs", "0"],
            &[
                "--produce-timeout-secs",
                "40",
                "--request-timeout-secs",
                "30",
            ],
            &["--max-concurrent-requests", "0"],
            &["--public-url", "ftp://x"],
        ] {
            assert!(cfg(bad).validate().is_err(), "{bad:?}");
        }
    }
}
