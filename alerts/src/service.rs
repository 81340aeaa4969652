//! Wires the service: config → validate → ClickHouse → restore the engine from the latest
//! saved state → outputs → ops routes → the detection pipeline and the review sweep until
//! cancelled.

use std::sync::Arc;
use std::time::Duration;

use custos_detect::Engine;
use custos_integrity::jws::Es256Signer;
use custos_runtime::health::Health;
use custos_runtime::kafka::{consumer_config, producer_config, Fetch, Send};
use custos_runtime::ops::{self, ListenError};
use custos_schemas::DecodeLimits;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureProducer;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{AlertsConfig, ConfigError};
use crate::outputs::{self, NotifySettings};
use crate::pipeline::{Pipeline, PipelineError};
use crate::review::{Sweep, SystemClock};
use crate::sink::Sink;
use crate::store::{Store, StoreError};

/// What `/readyz` says until the detector state is restored.
pub const NOT_LOADED: &str = "detector state not restored yet";

/// Errors building or running the service.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Kafka client creation failed.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Pseudonymization keys.
    #[error(transparent)]
    Keys(#[from] custos_runtime::keys::KeyRingLoadError),
    /// ClickHouse refused at start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The saved state could not be restored.
    #[error(transparent)]
    Detect(#[from] custos_detect::DetectError),
    /// The pipeline stopped on an error.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The admin listener could not bind.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The SSF key or the HTTP client could not be set up.
    #[error("outputs: {0}")]
    Outputs(String),
}

/// Runs the service until `cancel`.
pub async fn run(
    cfg: AlertsConfig,
    metrics: Option<PrometheusHandle>,
    cancel: CancellationToken,
) -> Result<(), ServiceError> {
    cfg.validate()?;
    let params = cfg.params()?;
    let tenants = Arc::new(cfg.tenants()?);
    let auto_revoke: Vec<String> = params
        .resolve()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, p)| p.auto_revoke)
        .map(|(t, _)| t)
        .collect();
    if params.default.auto_revoke || !auto_revoke.is_empty() {
        info!(tenants = ?auto_revoke, default = params.default.auto_revoke,
            "automatic response on: high-severity token-theft alerts of these tenants ask the consent service to revoke the session");
    }
    let shared_params = Arc::new(params.clone());
    let keys = cfg.keys.key_ring()?;
    let health = Arc::new(Health::with_load_step(NOT_LOADED));
    let admin = ops::serve(
        "admin server failed",
        cfg.admin_addr,
        ops::router(health.clone(), metrics),
        cancel.clone(),
    )
    .await?;
    info!(addr = %cfg.admin_addr, "ops routes listening");

    let client = cfg
        .clickhouse
        .client(&cfg.clickhouse_user, &cfg.clickhouse_password);
    let store = Arc::new(Store::new(client));
    // The state first: nothing is consumed before it is restored (or known to be absent).
    let saved = loop {
        match store.load(&cfg.state_name).await {
            Ok(s) => break s,
            Err(e) => {
                warn!(error = %e, "cannot read the saved detector state yet, retrying");
                health.set_clickhouse(false);
                if !custos_runtime::retry::sleep_or_cancel(Duration::from_secs(1), &cancel).await {
                    return Ok(());
                }
            }
        }
    };
    health.set_clickhouse(true);
    let (engine, offsets) = match saved {
        Some(s) => {
            info!(
                saved_at = s.saved_at,
                partitions = s.offsets.values().map(|p| p.len()).sum::<usize>(),
                "restoring detector state"
            );
            (Engine::restore(params, &s.snapshot)?, s.offsets)
        }
        None => {
            info!("no saved detector state: starting from the beginning of the inputs");
            (Engine::new(params), Default::default())
        }
    };
    health.set_loaded();

    let signer = match &cfg.ssf_key_file {
        Some(p) => {
            let pem = std::fs::read_to_string(p)
                .map_err(|e| ServiceError::Outputs(format!("SSF key file: {e}")))?;
            Es256Signer::from_pem(&pem, &cfg.ssf_kid)
                .map_err(|e| ServiceError::Outputs(format!("SSF key: {e}")))?
        }
        None => Es256Signer::random(&cfg.ssf_kid),
    };
    let (notifier, notify_task) = outputs::start(
        NotifySettings {
            attempts: cfg.notify_attempts,
            backoff: Duration::from_millis(cfg.notify_backoff_ms),
            timeout: Duration::from_secs(cfg.notify_timeout_secs),
            queue: cfg.notify_queue,
            issuer: cfg.ssf_issuer.clone(),
        },
        tenants.clone(),
        Arc::new(signer),
        store.clone(),
        cancel.clone(),
    )
    .map_err(|e| ServiceError::Outputs(format!("HTTP client: {e}")))?;

    let producer: FutureProducer =
        producer_config(&cfg.kafka.brokers, "custos-alerts", Send::Immediate).create()?;
    let consumer: StreamConsumer = consumer_config(
        &cfg.kafka.brokers,
        &cfg.group_id,
        "custos-alerts",
        Fetch::Prompt,
    )
    .create()?;
    let sink = Arc::new(Sink {
        store: store.clone(),
        producer,
        topic: cfg.alerts_topic.clone(),
        notifier,
        params: shared_params,
    });

    let sweep = Sweep {
        sink: sink.clone(),
        due: cfg.review_due()?,
    };
    let sweep_every = Duration::from_secs(cfg.review_sweep_secs);
    let sweep_cancel = cancel.clone();
    let sweep_task = tokio::spawn(async move {
        sweep.run(&SystemClock, sweep_every, sweep_cancel).await;
    });

    let ready = health.clone();
    let pipeline = Pipeline {
        engine,
        offsets,
        consumer,
        sink,
        topics: cfg.input_topics.clone(),
        store,
        keys,
        default_tenant: cfg.default_tenant.clone(),
        limits: DecodeLimits {
            max_bytes: cfg.max_event_bytes,
        },
        state_name: cfg.state_name.clone(),
        lateness_ms: i64::try_from(cfg.lateness_ms).unwrap_or(i64::MAX),
        linger: cfg.linger(),
        batch: cfg.batch,
        snapshot_every: Duration::from_secs(cfg.snapshot_secs),
        on_assigned: Box::new(move || ready.set_subscribed()),
    };
    let result = pipeline.run(cancel.clone()).await;
    health.set_stopping();
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), sweep_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), notify_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), admin).await;
    result?;
    Ok(())
}
