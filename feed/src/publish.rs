//! Writing accepted AuditEvents to Kafka: an idempotent producer acknowledged by all
//! in-sync replicas (`custos_runtime::kafka::producer_config`), whose delivery reports are
//! awaited before the request is answered. The producer's `message.timeout.ms` is the
//! configured produce timeout, so an unreachable broker turns into an error (503) after a
//! bounded time, never into a success.

use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_runtime::kafka::{producer_config, Send};
use futures_util::future::join_all;
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

impl Publisher {
    /// A producer for the configured brokers and topic (connects lazily).
    pub fn new(cfg: &FeedConfig) -> Result<Publisher, ConfigError> {
        let timeout = cfg.produce_timeout();
        let mut c = producer_config(&cfg.kafka.brokers, "custos-feed", Send::Immediate);
        c.set("message.timeout.ms", timeout.as_millis().to_string());
        Ok(Publisher {
            producer: c.create()?,
            topic: cfg.topic.as_str().into(),
            timeout,
            last_check: Arc::new(std::sync::Mutex::new(None)),
        })
    }

    /// Produces `events` in order and waits until the broker acknowledged every one.
    /// Any failure (refused, timed out) is [`FeedError::Unavailable`]: some of them may be
    /// stored, and a resend is deduplicated by the ingest.
    pub async fn publish(&self, events: &[Accepted]) -> Result<(), FeedError> {
        if events.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let sends = events.iter().map(|e| {
            self.producer.send(
                FutureRecord::to(&self.topic)
                    .key(e.key.as_bytes())
                    .payload(e.bytes.as_slice()),
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
