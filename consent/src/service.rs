//! Wires the service: config → validate → load state from ClickHouse → resume pending
//! pushes → serve HTTP → consume until cancelled. Also the period-expiry scanner.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use custos_auth::audit::QueryAudit;
use custos_auth::oidc::Authenticator;
use custos_schemas::{ConsentData, KeyRing};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::StreamConsumer;
use thiserror::Error;
use tokio::sync::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ConfigError, ConsentConfig};
use crate::dispatcher::{Dispatcher, Job, RetryPolicy};
use crate::idempotency::Replays;
use crate::keycloak::{AdminCredentials, KeycloakAdapter, Logout};
use crate::publish::Publisher;
use crate::seal::Sealer;
use crate::ssf::SsfPusher;
use crate::state::{ConsentBook, ConsentState, SealedIds, Status};
use crate::store::Store;
use custos_runtime::health::Health;
use custos_runtime::kafka::{consumer_config, Fetch};
use custos_runtime::ops::{self, ListenError};
use custos_runtime::retry::{sleep_or_cancel, RetryPolicy as Schedule};

/// What `/readyz` says until the consent state is rebuilt from ClickHouse.
pub const NOT_LOADED: &str = "consent state not loaded yet";

/// Errors building or running the service.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Kafka client creation or subscription failed.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// An adapter could not be built.
    #[error("adapter: {0}")]
    Adapter(String),
    /// The HTTP listener could not bind.
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// State shared by the consumer, the dispatcher, the scanner and the API.
pub struct Core {
    /// Current consent state.
    pub book: RwLock<ConsentBook>,
    /// Revocation ids already recorded.
    pub known_revocations: Mutex<HashSet<String>>,
    /// Pseudonymization keys.
    pub keys: KeyRing,
    /// Sealing keys.
    pub sealer: Sealer,
    /// Default tenant.
    pub default_tenant: String,
    /// ClickHouse.
    pub store: Store,
    /// Kafka producer.
    pub publisher: Publisher,
    /// Revocation push.
    pub dispatcher: Arc<Dispatcher>,
    /// Readiness.
    pub health: Arc<Health>,
    /// Largest accepted event.
    pub max_event_bytes: usize,
    /// Bearer-token verification of the privacy API (the query API's OIDC module).
    pub auth: Arc<Authenticator>,
    /// Prometheus exposition.
    pub metrics: Option<PrometheusHandle>,
    /// The privacy API's own audit (`custos.report_queries`, the query API's writer).
    pub audit: QueryAudit,
    /// Longest time the HTTP API spends on one request.
    pub api_timeout: Duration,
    /// Answers of recent revocation requests, for idempotent repeats.
    pub replays: Replays,
}

/// Rebuilds a consent state from its latest history row.
fn state_from_row(r: crate::rows::HistoryRow) -> Option<ConsentState> {
    Some(ConsentState {
        status: Status::parse(&r.status)?,
        tenant: r.tenant,
        consent_id: r.consent_id,
        patient: r.patient,
        subject: r.subject,
        client_id: r.client_id,
        issuer: r.issuer,
        version: r.version,
        scopes: r.scopes,
        purpose: r.purpose,
        period_start: r.period_start,
        period_end: r.period_end,
        updated_at: r.event_time,
        sealed: None,
    })
}

/// Runs the service until `cancel` fires.
pub async fn run(
    cfg: ConsentConfig,
    metrics: Option<PrometheusHandle>,
    cancel: CancellationToken,
) -> Result<(), ServiceError> {
    cfg.validate()?;
    let keys = cfg.keys.key_ring().map_err(ConfigError::from)?;
    let sealer = cfg.sealer()?;
    let receivers = cfg.receivers()?;
    let (signer, ephemeral) = cfg.set_signer()?;
    if ephemeral {
        warn!("no CUSTOS_SSF_KEY_FILE: SETs are signed with a per-process key (development only)");
    }
    let auth = Arc::new(Authenticator::new(&cfg.oidc).map_err(ConfigError::from)?);
    // Fetch the issuer's keys now so a wrong CUSTOS_OIDC_* setting shows at startup.
    let warm = auth.clone();
    tokio::spawn(async move {
        if let Err(e) = warm.refresh(true).await {
            warn!(error = %e, "OIDC keys not loaded yet; privacy API calls are refused until they are");
        }
    });
    let store = Store::new(
        &cfg.clickhouse.clickhouse_url,
        &cfg.clickhouse_user,
        &cfg.clickhouse_password,
        Duration::from_secs(30),
    );
    let audit_writer = cfg
        .clickhouse
        .client(
            cfg.audit_user.as_deref().unwrap_or(&cfg.clickhouse_user),
            cfg.audit_password
                .as_deref()
                .unwrap_or(&cfg.clickhouse_password),
        )
        .with_database("custos")
        .with_setting("max_execution_time", "30");
    let revocations_topic = Some(cfg.revocations_topic.clone()).filter(|t| !t.trim().is_empty());
    let publisher = Publisher::new(&cfg.kafka.brokers, &cfg.consent_topic, revocations_topic)?;
    let keycloak = match &cfg.keycloak_url {
        None => None,
        Some(url) => {
            let credentials = match &cfg.keycloak_admin_client_secret {
                Some(s) => AdminCredentials::ClientSecret(s.clone()),
                None => AdminCredentials::Password {
                    user: cfg.keycloak_admin_user.clone(),
                    password: cfg.keycloak_admin_password.clone().unwrap_or_default(),
                },
            };
            Some(Arc::new(
                KeycloakAdapter::new(
                    url,
                    &cfg.keycloak_admin_realm,
                    &cfg.keycloak_admin_client_id,
                    credentials,
                    Logout::parse(&cfg.keycloak_logout),
                    cfg.request_timeout(),
                )
                .map_err(ServiceError::Adapter)?,
            ))
        }
    };
    let ssf = SsfPusher::new(cfg.request_timeout()).map_err(ServiceError::Adapter)?;
    info!(
        consent_topic = %cfg.consent_topic,
        as_topic = %cfg.as_topic,
        group_id = %cfg.group_id,
        alerts_topic = %cfg.alerts_topic,
        keycloak = keycloak.is_some(),
        ssf_receivers = receivers.len(),
        revocations_topic = publisher.has_revocations_topic(),
        seal_kid = sealer.current_kid(),
        oidc_issuer = %cfg.oidc.oidc_issuer,
        "starting consent service"
    );
    let dispatcher = Arc::new(Dispatcher::new(
        store.clone(),
        sealer.clone(),
        keycloak,
        ssf,
        receivers,
        signer,
        publisher.clone(),
        RetryPolicy {
            max_attempts: cfg.max_attempts,
            base: Duration::from_millis(cfg.backoff_ms),
            max: Duration::from_millis(cfg.backoff_max_ms),
        },
        cfg.concurrency,
        cancel.clone(),
    ));
    let core = Arc::new(Core {
        book: RwLock::new(ConsentBook::default()),
        known_revocations: Mutex::new(HashSet::new()),
        keys,
        sealer,
        default_tenant: cfg.default_tenant.clone(),
        store,
        publisher,
        dispatcher,
        health: Arc::new(Health::with_load_step(NOT_LOADED)),
        max_event_bytes: cfg.max_event_bytes,
        auth,
        metrics,
        audit: QueryAudit::new(audit_writer),
        api_timeout: cfg.api_timeout(),
        replays: Replays::new(Duration::from_secs(cfg.idempotency_window_secs)),
    });

    // HTTP first, so /healthz answers (and /readyz explains) while the state loads.
    let http = ops::serve(
        "HTTP server failed",
        cfg.http_addr,
        crate::api::app(core.clone()),
        cancel.clone(),
    )
    .await?;
    info!(addr = %cfg.http_addr, "HTTP API listening");
    let admin = ops::serve(
        "admin HTTP server failed",
        cfg.admin_addr,
        crate::api::admin_app(core.clone()),
        cancel.clone(),
    )
    .await?;
    info!(addr = %cfg.admin_addr, "admin routes (/metrics, /healthz, /readyz) listening");

    let mut topics = vec![cfg.consent_topic.clone()];
    if !cfg.as_topic.trim().is_empty() {
        topics.push(cfg.as_topic.clone());
    }
    let Some((applied, pending)) = load(&core, &topics, &cancel).await else {
        let _ = http.await;
        let _ = admin.await;
        return Ok(());
    };
    core.health.set_loaded();
    for (p, sealed) in pending {
        info!(revocation_id = %p.row.revocation_id, target = %p.row.target, attempts = p.attempts, "resuming revocation push");
        core.dispatcher.submit(Job {
            row: p.row,
            attempts_done: p.attempts,
            sealed,
        });
    }

    let scanner = tokio::spawn(expiry_scanner(
        core.clone(),
        Duration::from_secs(cfg.expiry_scan_secs),
        cancel.clone(),
    ));
    // One consumer per topic (same group): a privacy-team revocation on the consent topic is
    // folded and pushed without waiting behind a burst of AS events in a shared batch.
    let mut runs = Vec::new();
    for topic in topics {
        let consumer: StreamConsumer = consumer_config(
            &cfg.kafka.brokers,
            &cfg.group_id,
            "custos-consent",
            Fetch::Prompt,
        )
        .create()?;
        let mine: std::collections::HashMap<(String, i32), i64> = applied
            .iter()
            .filter(|((t, _), _)| *t == topic)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let (core, cancel) = (core.clone(), cancel.clone());
        runs.push(tokio::spawn(async move {
            let r = crate::consumer::run(core, consumer, vec![topic], mine, cancel.clone()).await;
            // Either consumer ending (SIGTERM or a fatal error) stops the service.
            cancel.cancel();
            r
        }));
    }
    if !cfg.alerts_topic.trim().is_empty() {
        let consumer: StreamConsumer = consumer_config(
            &cfg.kafka.brokers,
            &cfg.alerts_group,
            "custos-consent-response",
            Fetch::Prompt,
        )
        .create()?;
        let (core, cancel) = (core.clone(), cancel.clone());
        let (topic, issuer) = (cfg.alerts_topic.clone(), cfg.alerts_issuer.clone());
        runs.push(tokio::spawn(async move {
            let r = crate::response::run(core, consumer, topic, issuer, cancel.clone()).await;
            cancel.cancel();
            r
        }));
    }
    let mut result = Ok(());
    for r in runs {
        match r.await {
            Ok(Err(e)) if result.is_ok() => result = Err(e),
            Err(e) => warn!(error = %e, "consumer task failed"),
            _ => {}
        }
    }
    cancel.cancel();
    let _ = scanner.await;
    let _ = http.await;
    let _ = admin.await;
    core.audit.flush().await;
    info!("consent service stopped");
    Ok(result?)
}

type Loaded = (
    std::collections::HashMap<(String, i32), i64>,
    Vec<(crate::store::Pending, Option<SealedIds>)>,
);

/// Rebuilds the state of the consents recorded from `topics` from ClickHouse, and finds
/// their pending pushes, retrying until ClickHouse answers (None: cancelled).
async fn load(core: &Core, topics: &[String], cancel: &CancellationToken) -> Option<Loaded> {
    let mut backoff = Schedule::STORE.backoff();
    loop {
        let attempt = async {
            let states = core.store.latest_states(topics).await?;
            let sealed = core.store.sealed().await?;
            let applied = core.store.applied_offsets(topics).await?;
            let ids = core.store.revocation_ids().await?;
            let pending = core.store.pending().await?;
            Ok::<_, crate::store::Error>((states, sealed, applied, ids, pending))
        };
        match attempt.await {
            Ok((states, sealed, applied, ids, pending)) => {
                core.health.set_clickhouse(true);
                let mut book = core.book.write().await;
                for s in states.into_iter().filter_map(state_from_row) {
                    book.insert(s);
                }
                // The automatic response's revocations of workforce users have no consent:
                // their sealed subject is filed under `alert:<alert id>`.
                let mut by_alert = std::collections::HashMap::new();
                for s in sealed {
                    let ids = SealedIds {
                        patient: s.patient_sealed,
                        subject: s.subject_sealed,
                    };
                    if let Some(c) = book.get_mut(&s.tenant, &s.consent_id) {
                        c.sealed = Some(ids);
                    } else if s
                        .consent_id
                        .starts_with(crate::response::ALERT_CONSENT_PREFIX)
                    {
                        by_alert.insert((s.tenant, s.consent_id), ids);
                    }
                }
                // Only this service's consents: another deployment's pushes are its own.
                let pending: Vec<_> = pending
                    .into_iter()
                    .filter_map(|p| {
                        let key = (p.row.tenant.clone(), p.row.consent_id.clone());
                        match book.get(&key.0, &key.1) {
                            Some(c) => {
                                let sealed = c.sealed.clone();
                                Some((p, sealed))
                            }
                            None => by_alert.get(&key).map(|s| (p, Some(s.clone()))),
                        }
                    })
                    .collect();
                info!(
                    consents = book.len(),
                    revocations = ids.len(),
                    pending = pending.len(),
                    partitions = applied.len(),
                    "consent state rebuilt from ClickHouse"
                );
                core.known_revocations.lock().await.extend(ids);
                return Some((applied, pending));
            }
            Err(e) => {
                core.health.set_clickhouse(false);
                warn!(error = %e, "loading consent state failed; retrying (migrations applied?)");
                if !sleep_or_cancel(backoff.step(), cancel).await {
                    return None;
                }
            }
        }
    }
}

/// Publishes `custos.consent.expired` for active consents whose period ended. The event id
/// is derived from consent and version, so a restart republishing it changes nothing.
async fn expiry_scanner(core: Arc<Core>, every: Duration, cancel: CancellationToken) {
    let mut published: HashSet<(String, String, u64)> = HashSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = chrono::Utc::now();
        let due: Vec<ConsentState> = core
            .book
            .read()
            .await
            .iter()
            .filter(|c| c.status == Status::Active)
            .filter(|c| c.period_end.is_some_and(|e| e <= now.timestamp_millis()))
            .filter(|c| !published.contains(&(c.tenant.clone(), c.consent_id.clone(), c.version)))
            .cloned()
            .collect();
        for c in due {
            let Some(sealed) = &c.sealed else {
                continue;
            };
            let Ok(patient) = core.sealer.open(&c.tenant, &c.consent_id, &sealed.patient) else {
                warn!(consent_id = %c.consent_id, "cannot unseal the patient id; expiry not published");
                continue;
            };
            let sub = if sealed.subject.is_empty() {
                None
            } else {
                core.sealer
                    .open(&c.tenant, &c.consent_id, &sealed.subject)
                    .ok()
            };
            let data = ConsentData {
                consent_id: c.consent_id.clone(),
                patient,
                client_id: c.client_id.clone(),
                iss: Some(c.issuer.clone()).filter(|i| !i.is_empty()),
                sub,
                scope: None,
                purpose: Vec::new(),
                period_start: None,
                period_end: None,
                reason: Some("consent period ended".to_owned()),
                actor: Some("custos-consent:expiry".to_owned()),
            };
            let id = format!("expiry-{}-v{}", c.consent_id, c.version);
            match core
                .publisher
                .consent_event("custos.consent.expired", &id, now, &c.tenant, &data)
                .await
            {
                Ok(()) => {
                    info!(consent_id = %c.consent_id, "consent period ended: expiry published");
                    published.insert((c.tenant.clone(), c.consent_id.clone(), c.version));
                }
                Err(e) => warn!(error = %e, "publishing an expiry failed; will retry"),
            }
        }
    }
}
