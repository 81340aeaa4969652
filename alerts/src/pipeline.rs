//! The detection pipeline: input topics → decode as the ingest does → [`Engine`] → alert
//! batches → ClickHouse (ledgered) → the alerts topic → SIEM outputs.
//!
//! Guarantee: at least once, and no doubled row. The consumer is assigned every partition of
//! the input topics by hand (one replica) from the offsets saved with the latest engine
//! snapshot. Every `snapshot_secs`, and at shutdown, the alerts so far are written and
//! acknowledged first, then the snapshot is saved with the offsets it covers, then those
//! offsets are committed to the consumer group (for lag only). After a crash the engine is
//! restored from the last snapshot and the messages since are replayed: the detectors are
//! deterministic in event time, so the replay produces the same alert revisions, and an
//! alert row is keyed (tenant, alert_id, revision), so a revision written twice collapses
//! into one row. The alerts topic and the SIEM outputs may see a replayed revision again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_detect::{AlertUpdate, Engine};
use custos_runtime::retry::{sleep_or_cancel, RetryPolicy};
use custos_schemas::row::RowContext;
use custos_schemas::{decode, AuditRow, DecodeLimits, Event, KafkaPosition, KeyRing};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alert::from_update;
use crate::outputs::now_ms;
use crate::sink::Sink;
use crate::store::{Offsets, Saved, Store};

/// Errors that stop the pipeline.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// Kafka refused a client operation.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The engine's state could not be written.
    #[error(transparent)]
    Detect(#[from] custos_detect::DetectError),
    /// An input topic does not exist.
    #[error("input topic {0} not found")]
    NoTopic(String),
}

/// One decoded input message: the event and the audit row the ingest stores for it.
pub fn decode_message(
    payload: &[u8],
    headers: &[(&str, &[u8])],
    pos: KafkaPosition,
    keys: &KeyRing,
    default_tenant: &str,
    limits: &DecodeLimits,
) -> Option<(Event, AuditRow)> {
    let event = decode(payload, headers, limits).ok()?;
    let ctx = RowContext {
        keys,
        default_tenant,
    };
    let row = ctx.audit_row(&event, &pos, now_ms());
    Some((event, row))
}

/// What the pipeline needs.
pub struct Pipeline {
    /// The engine (restored or new).
    pub engine: Engine,
    /// Next offset per topic and partition (from the restored state).
    pub offsets: Offsets,
    /// The consumer (not assigned yet).
    pub consumer: StreamConsumer,
    /// Where alerts go.
    pub sink: Arc<Sink>,
    /// Input topics.
    pub topics: Vec<String>,
    /// ClickHouse.
    pub store: Arc<Store>,
    /// Pseudonym keys.
    pub keys: KeyRing,
    /// Default tenant.
    pub default_tenant: String,
    /// Decode limits.
    pub limits: DecodeLimits,
    /// State name.
    pub state_name: String,
    /// Allowed lateness (ms).
    pub lateness_ms: i64,
    /// Batch linger.
    pub linger: Duration,
    /// Largest batch.
    pub batch: usize,
    /// Snapshot interval.
    pub snapshot_every: Duration,
    /// Called once the consumer is assigned.
    pub on_assigned: Box<dyn FnOnce() + Send>,
}

impl Pipeline {
    /// Assigns every partition of the inputs at its saved offset (the beginning when none
    /// is saved).
    fn assign(&mut self) -> Result<(), PipelineError> {
        let mut tpl = TopicPartitionList::new();
        for topic in &self.topics {
            let md = self
                .consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))?;
            let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                return Err(PipelineError::NoTopic(topic.clone()));
            };
            if t.partitions().is_empty() {
                return Err(PipelineError::NoTopic(topic.clone()));
            }
            let saved = self.offsets.entry(topic.clone()).or_default();
            for p in t.partitions() {
                let offset = match saved.get(&p.id()) {
                    Some(o) => Offset::Offset(*o),
                    None => Offset::Beginning,
                };
                tpl.add_partition_offset(topic, p.id(), offset)?;
            }
        }
        self.consumer.assign(&tpl)?;
        info!(topics = ?self.topics, partitions = tpl.count(), "input partitions assigned");
        Ok(())
    }

    /// Runs until `cancel`, then writes what is pending and saves the state.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), PipelineError> {
        self.assign()?;
        let on_assigned = std::mem::replace(&mut self.on_assigned, Box::new(|| {}));
        on_assigned();
        // Each update with the produce time (ms) of the message that raised it, if any.
        let mut pending: Vec<(AlertUpdate, Option<i64>)> = Vec::new();
        let mut first_pending: Option<Instant> = None;
        let mut max_event_time = i64::MIN;
        let mut last_snapshot = Instant::now();
        let mut last_advance = Instant::now();
        let mut dirty = false;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                m = self.consumer.recv() => match m {
                    Ok(msg) => {
                        let topic = msg.topic().to_owned();
                        let headers: Vec<(&str, &[u8])> = msg
                            .headers()
                            .map(|h| h.iter().map(|x| (x.key, x.value.unwrap_or_default())).collect())
                            .unwrap_or_default();
                        let pos = KafkaPosition {
                            topic: topic.clone(),
                            partition: msg.partition(),
                            offset: msg.offset(),
                        };
                        metrics::counter!("custos_alerts_messages_total").increment(1);
                        match decode_message(
                            msg.payload().unwrap_or_default(),
                            &headers,
                            pos,
                            &self.keys,
                            &self.default_tenant,
                            &self.limits,
                        ) {
                            Some((event, row)) => {
                                metrics::counter!("custos_alerts_events_observed_total").increment(1);
                                max_event_time = max_event_time.max(row.event_time);
                                let out = self.engine.observe(&event, &row);
                                if !out.is_empty() && first_pending.is_none() {
                                    first_pending = Some(Instant::now());
                                }
                                let produced = msg.timestamp().to_millis();
                                pending.extend(out.into_iter().map(|u| (u, produced)));
                            }
                            None => {
                                // The ingest dead-letters it; nothing to detect.
                                metrics::counter!("custos_alerts_undecodable_total").increment(1);
                            }
                        }
                        self.offsets
                            .entry(topic)
                            .or_default()
                            .insert(msg.partition(), msg.offset() + 1);
                        dirty = true;
                    }
                    Err(e) => {
                        warn!(error = %e, "Kafka consumer error");
                        sleep_or_cancel(Duration::from_millis(200), &cancel).await;
                    }
                },
                _ = tick.tick() => {}
            }
            if max_event_time > i64::MIN && last_advance.elapsed() >= Duration::from_millis(200) {
                last_advance = Instant::now();
                let out = self
                    .engine
                    .advance(max_event_time.saturating_sub(self.lateness_ms));
                if !out.is_empty() && first_pending.is_none() {
                    first_pending = Some(Instant::now());
                }
                pending.extend(out.into_iter().map(|u| (u, None)));
            }
            let due = first_pending.is_some_and(|t| t.elapsed() >= self.linger);
            if due || pending.len() >= self.batch {
                if !self.flush(&mut pending, &cancel).await {
                    break;
                }
                first_pending = None;
            }
            if dirty && last_snapshot.elapsed() >= self.snapshot_every {
                if !self.flush(&mut pending, &cancel).await {
                    break;
                }
                first_pending = None;
                self.save(&cancel).await?;
                last_snapshot = Instant::now();
                dirty = false;
            }
            metrics::gauge!("custos_alerts_snapshot_age_seconds")
                .set(last_snapshot.elapsed().as_secs_f64());
        }
        // Shutdown: write what is pending, then save; a write that cannot finish leaves the
        // last saved state, and the next start replays from it.
        let done = CancellationToken::new();
        let deadline = done.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            deadline.cancel();
        });
        if self.flush(&mut pending, &done).await && dirty {
            self.save(&done).await?;
        }
        info!("detection pipeline stopped");
        Ok(())
    }

    /// Writes `pending` through the sink; `false` when cancelled first. Records the latency
    /// from each raising message's produce time to the alert written
    /// (`custos_alerts_detection_latency_seconds`; updates raised by the watermark have none,
    /// and a replay after a restart records the replayed messages' age).
    async fn flush(
        &mut self,
        pending: &mut Vec<(AlertUpdate, Option<i64>)>,
        cancel: &CancellationToken,
    ) -> bool {
        if pending.is_empty() {
            return true;
        }
        let (updates, produced): (Vec<_>, Vec<_>) = pending.drain(..).unzip();
        let rows: Vec<_> = updates.into_iter().map(from_update).collect();
        if !self.sink.write(&rows, cancel).await {
            return false;
        }
        let now = now_ms();
        for t in produced.into_iter().flatten() {
            metrics::histogram!("custos_alerts_detection_latency_seconds")
                .record((now - t).max(0) as f64 / 1000.0);
        }
        true
    }

    /// Saves the engine with the offsets it covers, then commits them to the group.
    async fn save(&mut self, cancel: &CancellationToken) -> Result<(), PipelineError> {
        let saved = Saved {
            saved_at: now_ms(),
            offsets: self.offsets.clone(),
            snapshot: self.engine.snapshot()?,
        };
        let mut backoff = RetryPolicy::STORE.backoff();
        loop {
            match self.store.save(&self.state_name, &saved).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, "detector state not saved yet, retrying");
                    if !sleep_or_cancel(backoff.step(), cancel).await {
                        return Ok(());
                    }
                }
            }
        }
        let stats = self.engine.stats();
        metrics::gauge!("custos_alerts_open_alerts").set(stats.open_alerts as f64);
        metrics::gauge!("custos_alerts_watermark_ms").set(stats.watermark as f64);
        metrics::counter!("custos_alerts_snapshots_total").increment(1);
        self.commit_and_measure_lag();
        Ok(())
    }

    fn commit_and_measure_lag(&self) {
        let mut tpl = TopicPartitionList::new();
        let mut lag: BTreeMap<&str, i64> = BTreeMap::new();
        for (topic, parts) in &self.offsets {
            for (p, o) in parts {
                if tpl
                    .add_partition_offset(topic, *p, Offset::Offset(*o))
                    .is_err()
                {
                    continue;
                }
                // A broker request: off the async workers, bounded.
                let high = tokio::task::block_in_place(|| {
                    self.consumer
                        .fetch_watermarks(topic, *p, Duration::from_millis(500))
                });
                if let Ok((_, high)) = high {
                    *lag.entry(topic).or_default() += (high - o).max(0);
                }
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                warn!(error = %e, "offset commit to the consumer group failed");
            }
        }
        for (topic, l) in lag {
            metrics::gauge!("custos_alerts_consumer_lag", "topic" => topic.to_owned())
                .set(l as f64);
        }
    }
}
