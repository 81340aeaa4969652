//! Wires the stages together: config → validate → build → run until cancelled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use custos_schemas::DecodeLimits;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::batch::BatchPolicy;
use crate::chainer::Chainer;
use crate::config::{ConfigError, IngestConfig};
use crate::consumer::{context, ConsumerLoop};
use crate::sink::Sink;
use crate::writer::Writer;
use custos_runtime::health::Health;
use custos_runtime::kafka::{consumer_config, producer_config, Fetch, Send};
use custos_runtime::ops::{self, ListenError};

/// Errors building or running the pipeline.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Kafka client creation or subscription failed.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The HTTP listener could not bind.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The consumer thread panicked.
    #[error("consumer thread failed")]
    ConsumerThread,
    /// Shutdown could not acknowledge every batch before the drain deadline.
    #[error("shutdown drain incomplete: unacknowledged messages will be replayed")]
    DrainIncomplete,
}

/// Runs ingest until `cancel` fires, then flushes, commits and returns.
pub async fn run(
    cfg: IngestConfig,
    metrics: PrometheusHandle,
    cancel: CancellationToken,
) -> Result<(), PipelineError> {
    cfg.validate()?;
    let keys = cfg.keys.key_ring().map_err(ConfigError::from)?;
    let checkpoints = cfg.checkpoint_policy()?;
    if cfg.chain && checkpoints.is_none() {
        warn!("no CUSTOS_CHECKPOINT_KEY_FILE: records are chained but no checkpoints are signed");
    }
    info!(
        topics = ?cfg.topics,
        group_id = %cfg.group_id,
        current_kid = keys.current_kid(),
        batch_max_rows = cfg.batch_max_rows,
        batch_linger_ms = cfg.batch_linger_ms,
        "starting ingest"
    );
    let health = Arc::new(Health::new());

    let app = ops::router(health.clone(), Some(metrics));
    let http = ops::serve("HTTP server failed", cfg.http_addr, app, cancel.clone()).await?;

    let client = cfg.writer_client();
    match client.query("SELECT 1").fetch_one::<u8>().await {
        Ok(_) => health.set_clickhouse(true),
        Err(e) => warn!(error = %e, "ClickHouse not reachable yet; the writer will retry"),
    }

    let client_for_chain = client.clone();
    let dlq: FutureProducer =
        producer_config(&cfg.kafka.brokers, "custos-ingest-dlq", Send::DeadLetters).create()?;
    let (tx, rx) = mpsc::channel(cfg.batch_queue);
    let (ack_tx, ack_rx) = std::sync::mpsc::channel();
    let ctx = context(
        tx,
        ack_rx,
        Duration::from_secs(cfg.drain_timeout_secs),
        health.clone(),
    );
    let consumer: BaseConsumer<_> = consumer_config(
        &cfg.kafka.brokers,
        &cfg.group_id,
        "custos-ingest",
        Fetch::Bulk,
    )
    .create_with_context(ctx)?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    health.set_subscribed();

    let writer_cancel = CancellationToken::new();
    let writer = Writer {
        sink: Sink::new(client, health.clone()),
        dlq,
        dlq_topic: cfg.dlq_topic.clone(),
        checkpoints,
    };
    let writer_task = tokio::spawn(writer.run(rx, ack_tx, writer_cancel.clone()));

    let policy = BatchPolicy {
        max_rows: cfg.batch_max_rows,
        max_bytes: cfg.batch_max_bytes,
        linger: cfg.linger(),
    };
    let limits = DecodeLimits {
        max_bytes: cfg.max_event_bytes,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let chainer = cfg.chain.then(|| {
        Chainer::new(
            client_for_chain.clone(),
            tokio::runtime::Handle::current(),
            stop.clone(),
        )
    });
    let consumer_loop = ConsumerLoop::new(
        consumer,
        policy,
        limits,
        keys,
        cfg.default_tenant.clone(),
        chainer,
    );
    let consumer_thread = std::thread::Builder::new()
        .name("custos-consumer".into())
        .spawn(move || consumer_loop.run(&thread_stop))
        .map_err(|_| PipelineError::ConsumerThread)?;

    cancel.cancelled().await;
    stop.store(true, Ordering::Relaxed);
    let complete = tokio::task::spawn_blocking(move || consumer_thread.join())
        .await
        .map_err(|_| PipelineError::ConsumerThread)?
        .map_err(|_| PipelineError::ConsumerThread)?;
    // The consumer (and with it the batch sender) is gone: the writer ends by itself after
    // its final checkpoints; cancel it only if that takes longer than the drain timeout.
    let drain = Duration::from_secs(cfg.drain_timeout_secs);
    let mut writer_task = writer_task;
    if tokio::time::timeout(drain, &mut writer_task).await.is_err() {
        writer_cancel.cancel();
        let _ = writer_task.await;
    }
    let _ = http.await;
    if complete {
        info!("ingest stopped cleanly");
        Ok(())
    } else {
        Err(PipelineError::DrainIncomplete)
    }
}
