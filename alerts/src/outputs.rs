//! Outputs for SIEMs, per tenant: a webhook (`POST` of the alert's JSON, signed with
//! HMAC-SHA256 over the body in [`SIGNATURE_HEADER`]) and an SSF/CAEP receiver (a signed SET
//! per alert revision, RFC 8417, pushed per RFC 8935).
//!
//! The SET carries the CAEP `risk-level-change` event ([`RISK_LEVEL_CHANGE`]) about the
//! alert's subject as stored (`sub_id` format `opaque`: a pseudonym where the audit row has
//! one), `principal` `USER`, `current_level` from the severity (`low` → `LOW`, `medium` →
//! `MEDIUM`, `high` and `critical` → `HIGH`), `risk_reason` the detector, and `txn` the alert
//! id and revision.
//!
//! Deliveries run beside the pipeline: alerts are queued (bounded; a full queue drops the
//! delivery, counts it in `custos_alerts_notify_dropped_total` and logs it) and each delivery
//! is retried with capped exponential backoff. Its outcome is recorded as a `notify` action
//! in `custos.alert_actions` (detail: target, status, attempts, SET `jti`).

use std::sync::Arc;
use std::time::Duration;

use custos_integrity::jws::Es256Signer;
use custos_runtime::retry::{sleep_or_cancel, RetryPolicy};
use custos_schemas::records::{AlertActionRow, AlertRow};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alert::to_json;
use crate::config::{SsfReceiver, Tenants, Webhook};
use crate::store::Store;

/// The webhook signature header: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Custos-Signature";
/// JWS `typ` of a SET.
pub const SET_TYP: &str = "secevent+jwt";
/// CAEP risk-level-change event type URI.
pub const RISK_LEVEL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/risk-level-change";
/// Who the recorded actions name as actor.
pub const ACTOR: &str = "custos-alerts";

/// Deliveries in flight at once.
const CONCURRENCY: usize = 16;

/// The value of [`SIGNATURE_HEADER`] for `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The stable `jti` of the SET of one alert revision at one receiver.
pub fn set_jti(alert: &AlertRow, endpoint: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"custos-alert-set1\x1f");
    h.update(alert.alert_id.as_bytes());
    h.update([0x1f]);
    h.update(alert.revision.to_be_bytes());
    h.update([0x1f]);
    h.update(endpoint.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// The claims of the SET of `alert` for `receiver`, issued at `iat` (seconds).
pub fn set_claims(issuer: &str, alert: &AlertRow, receiver: &SsfReceiver, iat: i64) -> Value {
    let level = match alert.severity.as_str() {
        "low" => "LOW",
        "medium" => "MEDIUM",
        _ => "HIGH",
    };
    json!({
        "iss": issuer,
        "jti": set_jti(alert, &receiver.endpoint),
        "iat": iat,
        "aud": receiver.audience.as_deref().unwrap_or(&receiver.endpoint),
        "txn": format!("{}:{}", alert.alert_id, alert.revision),
        "sub_id": {"format": "opaque", "id": alert.subject},
        "events": {
            RISK_LEVEL_CHANGE: {
                "event_timestamp": alert.last_seen / 1000,
                "initiating_entity": "system",
                "reason_admin": {"en": alert.summary},
                "principal": "USER",
                "current_level": level,
                "risk_reason": alert.detector,
            }
        }
    })
}

/// Where one delivery goes.
#[derive(Debug, Clone)]
enum Target {
    Webhook(Webhook),
    Ssf(SsfReceiver),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Webhook(_) => "webhook",
            Target::Ssf(_) => "ssf",
        }
    }
}

/// Settings of the deliveries.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// Attempts per delivery.
    pub attempts: u32,
    /// First retry delay.
    pub backoff: Duration,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Queue length.
    pub queue: usize,
    /// SET issuer.
    pub issuer: String,
}

/// Hands alerts to the delivery task without waiting.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: mpsc::Sender<AlertRow>,
    tenants: Arc<Tenants>,
}

impl Notifier {
    /// Queues `alert` for its tenant's outputs, if it has any; never waits.
    pub fn notify(&self, alert: &AlertRow) {
        let Some(t) = self.tenants.get(&alert.tenant) else {
            return;
        };
        if t.webhook.is_none() && t.ssf.is_none() {
            return;
        }
        if self.tx.try_send(alert.clone()).is_err() {
            metrics::counter!("custos_alerts_notify_dropped_total").increment(1);
            warn!(alert_id = %alert.alert_id, tenant = %alert.tenant, "delivery queue full: alert not delivered to SIEM outputs");
        }
    }
}

/// Starts the delivery task; it ends when `cancel` fires (deliveries in flight are
/// abandoned at their next retry).
pub fn start(
    settings: NotifySettings,
    tenants: Arc<Tenants>,
    signer: Arc<Es256Signer>,
    store: Arc<Store>,
    cancel: CancellationToken,
) -> Result<(Notifier, JoinHandle<()>), reqwest::Error> {
    let http = reqwest::Client::builder()
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let (tx, mut rx) = mpsc::channel::<AlertRow>(settings.queue);
    let notifier = Notifier {
        tx,
        tenants: tenants.clone(),
    };
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let task = tokio::spawn(async move {
        loop {
            let alert = tokio::select! {
                _ = cancel.cancelled() => break,
                a = rx.recv() => match a { Some(a) => a, None => break },
            };
            let Some(t) = tenants.get(&alert.tenant) else {
                continue;
            };
            let targets: Vec<Target> = t
                .webhook
                .iter()
                .cloned()
                .map(Target::Webhook)
                .chain(t.ssf.iter().cloned().map(Target::Ssf))
                .collect();
            for target in targets {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let delivery = Delivery {
                    http: http.clone(),
                    settings: settings.clone(),
                    signer: signer.clone(),
                    store: store.clone(),
                    cancel: cancel.clone(),
                };
                let alert = alert.clone();
                tokio::spawn(async move {
                    delivery.run(&alert, &target).await;
                    drop(permit);
                });
            }
        }
    });
    Ok((notifier, task))
}

struct Delivery {
    http: reqwest::Client,
    settings: NotifySettings,
    signer: Arc<Es256Signer>,
    store: Arc<Store>,
    cancel: CancellationToken,
}

/// One attempt's result: delivered, or failed (retry unless `final_`).
struct Attempt {
    ok: bool,
    final_: bool,
    status: String,
}

impl Delivery {
    async fn attempt(&self, alert: &AlertRow, target: &Target) -> Attempt {
        let req = match target {
            Target::Webhook(w) => {
                let body = to_json(alert);
                self.http
                    .post(&w.url)
                    .header("Content-Type", "application/json")
                    .header(SIGNATURE_HEADER, signature(&w.secret, &body))
                    .body(body)
            }
            Target::Ssf(r) => {
                let claims = set_claims(&self.settings.issuer, alert, r, now_ms() / 1000);
                let set = self.signer.sign(SET_TYP, &claims);
                let mut req = self
                    .http
                    .post(&r.endpoint)
                    .header("Content-Type", "application/secevent+jwt")
                    .header("Accept", "application/json")
                    .body(set);
                if let Some(auth) = &r.authorization {
                    req = req.header("Authorization", auth);
                }
                req
            }
        };
        match req.send().await {
            Ok(resp) => {
                let code = resp.status().as_u16();
                let ok = resp.status().is_success();
                // A refused body (4xx but 408/429) would be refused again.
                let final_ = ok || ((400..500).contains(&code) && code != 408 && code != 429);
                Attempt {
                    ok,
                    final_,
                    status: format!("HTTP {code}"),
                }
            }
            Err(e) => Attempt {
                ok: false,
                final_: false,
                status: if e.is_timeout() {
                    "timeout".to_owned()
                } else {
                    "connection failed".to_owned()
                },
            },
        }
    }

    async fn run(&self, alert: &AlertRow, target: &Target) {
        let policy = RetryPolicy {
            max_attempts: self.settings.attempts,
            base: self.settings.backoff,
            max: self.settings.backoff.saturating_mul(64),
        };
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            let a = self.attempt(alert, target).await;
            if a.final_ || attempts >= self.settings.attempts {
                break a;
            }
            if !sleep_or_cancel(policy.delay(attempts), &self.cancel).await {
                break a;
            }
        };
        let verdict = if outcome.ok { "delivered" } else { "failed" };
        metrics::counter!("custos_alerts_notify_total", "target" => target.name(), "outcome" => verdict)
            .increment(1);
        let mut detail = format!(
            "{} {verdict}: {} after {attempts} attempt(s), revision {}",
            target.name(),
            outcome.status,
            alert.revision
        );
        if let Target::Ssf(r) = target {
            detail.push_str(&format!(", SET jti {}", set_jti(alert, &r.endpoint)));
        }
        if outcome.ok {
            info!(alert_id = %alert.alert_id, target = target.name(), attempts, "alert delivered");
        } else {
            warn!(alert_id = %alert.alert_id, target = target.name(), attempts, status = %outcome.status, "alert delivery failed");
        }
        let row = action(alert, "notify", detail);
        // The record is retried like the delivery; a lost record is logged, never fatal.
        for attempt in 1..=self.settings.attempts.max(3) {
            match self.store.write_actions(std::slice::from_ref(&row)).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(alert_id = %alert.alert_id, error = %e, attempt, "notify action not recorded yet");
                    if !sleep_or_cancel(policy.delay(attempt), &self.cancel).await {
                        return;
                    }
                }
            }
        }
    }
}

/// An action of this service on `alert` (`notify`, `auto_revoke`), at now.
pub fn action(alert: &AlertRow, kind: &str, detail: String) -> AlertActionRow {
    let at = now_ms();
    let mut h = Sha256::new();
    for part in [alert.alert_id.as_str(), kind, detail.as_str()] {
        h.update(part.as_bytes());
        h.update([0x1f]);
    }
    h.update(at.to_be_bytes());
    AlertActionRow {
        action_id: hex::encode(&h.finalize()[..16]),
        alert_id: alert.alert_id.clone(),
        tenant: alert.tenant.clone(),
        action: kind.to_owned(),
        actor: ACTOR.to_owned(),
        assignee: String::new(),
        note: String::new(),
        detail,
        at,
        alert_first_seen: alert.first_seen,
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> AlertRow {
        AlertRow {
            alert_id: "a1".into(),
            revision: 2,
            tenant: "general".into(),
            detector: "refresh_reuse".into(),
            severity: "critical".into(),
            dedup_key: "k".into(),
            subject: "dr-alice".into(),
            user_kind: "workforce".into(),
            client_id: "ehr-app".into(),
            session_id: String::new(),
            token_jti: String::new(),
            patient: String::new(),
            first_seen: 1_000,
            last_seen: 5_000,
            evidence: vec!["e1".into()],
            evidence_count: 1,
            summary: "s".into(),
            token_theft: true,
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_set_names_the_revision_and_maps_the_severity() {
        let r = SsfReceiver {
            endpoint: "https://siem.example/ssf".into(),
            audience: None,
            authorization: None,
        };
        let c = set_claims("urn:custos:alerts", &alert(), &r, 7);
        assert_eq!(c["txn"], "a1:2");
        assert_eq!(c["aud"], "https://siem.example/ssf");
        assert_eq!(c["events"][RISK_LEVEL_CHANGE]["current_level"], "HIGH");
        assert_eq!(c["events"][RISK_LEVEL_CHANGE]["event_timestamp"], 5);
        assert_eq!(c["sub_id"]["format"], "opaque");
        let mut next = alert();
        next.revision = 3;
        assert_ne!(set_jti(&next, &r.endpoint), set_jti(&alert(), &r.endpoint));
        assert_eq!(
            set_jti(&alert(), &r.endpoint),
            c["jti"].as_str().unwrap_or_default()
        );
    }
}
