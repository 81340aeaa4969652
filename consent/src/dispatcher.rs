//! Durable revocation push.
//!
//! Contract: a revocation is planned into one (revocation, target) pair per adapter and each
//! pair's `requested` row is in ClickHouse before its first attempt (the consumer records it,
//! with the sealed identifiers, before the batch's history and before committing the Kafka
//! offset). Every attempt is
//! recorded with the receiver's answer. A pair ends `delivered` (with the acknowledgement
//! time and the latency from the revoke request), or `failed` (a permanent refusal, or
//! `max_attempts` transient failures), never silently dropped; transient failures are retried
//! with exponential backoff and jitter. On restart the pairs still `requested` are resumed
//! with their attempt count; pairs that ended are never pushed again. Pushes are idempotent
//! at the receivers: Keycloak treats an absent consent as revoked, SETs carry a stable `jti`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Receiver;
use crate::keycloak::KeycloakAdapter;
use crate::publish::Publisher;
use crate::push::{Outcome, Verdict};
use crate::rows::{AttemptRow, RevocationRow};
use crate::seal::Sealer;
use crate::set::{stable_jti, SessionRevoked, SetSigner};
use crate::ssf::SsfPusher;
use crate::state::{Cause, RevokeOrder, SealedIds};
use crate::store::Store;

/// Retry schedule of a (revocation, target) push: `max_attempts` before `failed`.
pub use custos_runtime::retry::RetryPolicy;

/// One (revocation, target) to push.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its `requested` row.
    pub row: RevocationRow,
    /// Attempts already made (after a restart).
    pub attempts_done: u32,
    /// Sealed raw identifiers of the consent.
    pub sealed: Option<SealedIds>,
}

/// Pushes revocations to the adapters.
pub struct Dispatcher {
    store: Store,
    sealer: Sealer,
    keycloak: Option<Arc<KeycloakAdapter>>,
    ssf: SsfPusher,
    receivers: Vec<Receiver>,
    signer: SetSigner,
    publisher: Publisher,
    policy: RetryPolicy,
    permits: Arc<Semaphore>,
    cancel: CancellationToken,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The initiator recorded on a revocation the automatic response to an alert planned.
pub const ALERT_INITIATOR: &str = "custos-alerts";

/// The CAEP `initiating_entity` of a recorded initiator: the automatic response is a
/// `policy` decision; the others are CAEP values already.
fn caep_initiator(initiator: &str) -> &str {
    if initiator == ALERT_INITIATOR {
        "policy"
    } else {
        initiator
    }
}

fn initiator(cause: Cause, actor: &str) -> &'static str {
    match cause {
        Cause::Expiry => "policy",
        Cause::Deprovision => "admin",
        Cause::Alert => ALERT_INITIATOR,
        Cause::Revoke if actor == "patient" => "user",
        Cause::Revoke if actor.starts_with("client:") => "system",
        Cause::Revoke => "admin",
    }
}

impl Dispatcher {
    /// Builds the dispatcher.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        sealer: Sealer,
        keycloak: Option<Arc<KeycloakAdapter>>,
        ssf: SsfPusher,
        receivers: Vec<Receiver>,
        signer: SetSigner,
        publisher: Publisher,
        policy: RetryPolicy,
        concurrency: usize,
        cancel: CancellationToken,
    ) -> Dispatcher {
        Dispatcher {
            store,
            sealer,
            keycloak,
            ssf,
            receivers,
            signer,
            publisher,
            policy,
            permits: Arc::new(Semaphore::new(concurrency)),
            cancel,
        }
    }

    /// The SET signer (its JWKS and metadata are served by the API).
    pub fn signer(&self) -> &SetSigner {
        &self.signer
    }

    /// Plans a revocation: one row per target, `requested` (to push) or `skipped` (with
    /// the reason the target cannot apply).
    pub fn plan(&self, order: &RevokeOrder, now: i64) -> Vec<RevocationRow> {
        let c = &order.consent;
        let has_subject = c.sealed.as_ref().is_some_and(|s| !s.subject.is_empty());
        let base = RevocationRow {
            revocation_id: order.revocation_id.clone(),
            target: String::new(),
            state: "requested".to_owned(),
            seq: 0,
            at: now,
            tenant: c.tenant.clone(),
            consent_id: c.consent_id.clone(),
            patient: c.patient.clone(),
            subject: c.subject.clone(),
            client_id: c.client_id.clone(),
            issuer: c.issuer.clone(),
            cause: order.cause.as_str().to_owned(),
            reason: order.reason.clone(),
            initiator: initiator(order.cause, &order.actor).to_owned(),
            scopes: c.scopes.clone(),
            cause_event_key: order.cause_event_key.clone(),
            requested_at: order.requested_at,
            acked_at: None,
            latency_ms: None,
            attempts: 0,
            set_jti: String::new(),
            detail: String::new(),
        };
        let skip = |mut r: RevocationRow, why: &str| {
            r.state = "skipped".to_owned();
            r.detail = why.to_owned();
            r
        };
        let mut rows = Vec::new();
        if let Some(kc) = &self.keycloak {
            let mut r = base.clone();
            r.target = "keycloak".to_owned();
            rows.push(if kc.realm_of(&c.issuer).is_none() {
                skip(r, "the consent's issuer is not the configured Keycloak")
            } else if !has_subject {
                skip(r, "no AS subject known for this consent")
            } else {
                r
            });
        }
        for rcv in &self.receivers {
            let mut r = base.clone();
            r.target = format!("ssf:{}", rcv.name);
            r.set_jti = stable_jti(&order.revocation_id, &rcv.name);
            rows.push(if has_subject {
                r
            } else {
                skip(r, "no AS subject known for this consent")
            });
        }
        if self.publisher.has_revocations_topic() {
            let mut r = base.clone();
            r.target = "kafka".to_owned();
            rows.push(r);
        }
        if rows.is_empty() {
            let mut r = base;
            r.target = "none".to_owned();
            rows.push(skip(r, "no revocation target configured"));
        }
        rows
    }

    /// Starts pushing one (revocation, target) in the background.
    pub fn submit(self: &Arc<Self>, job: Job) {
        gauge!("custos_consent_pushes_in_progress").increment(1.0);
        let me = self.clone();
        tokio::spawn(async move {
            me.run_job(job).await;
            gauge!("custos_consent_pushes_in_progress").decrement(1.0);
        });
    }

    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Writes rows until ClickHouse takes them (false: cancelled first).
    async fn record<F, Fut>(&self, what: &str, f: F) -> bool
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), crate::store::Error>>,
    {
        let mut backoff = RetryPolicy::STORE.backoff();
        loop {
            match f().await {
                Ok(()) => return true,
                Err(e) => {
                    warn!(what, error = %e, "recording a revocation step failed; retrying");
                    if !self.sleep(backoff.step()).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn run_job(&self, job: Job) {
        let r = &job.row;
        let kind = r.target.split(':').next().unwrap_or_default().to_owned();
        let mut attempt = job.attempts_done;
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            let Ok(permit) = self.permits.acquire().await else {
                return;
            };
            attempt += 1;
            let started_at = now_ms();
            let t0 = Instant::now();
            let outcome = self.attempt(&job).await;
            let duration = t0.elapsed();
            // The acknowledgement time is when the answer arrived, not when it was recorded.
            let answered_at = now_ms();
            drop(permit);
            let attempt_row = AttemptRow {
                revocation_id: r.revocation_id.clone(),
                target: r.target.clone(),
                attempt,
                started_at,
                duration_ms: u32::try_from(duration.as_millis()).unwrap_or(u32::MAX),
                outcome: match outcome.verdict {
                    Verdict::Retry if attempt >= self.policy.max_attempts => "failed",
                    v => v.as_str(),
                }
                .to_owned(),
                http_status: outcome.http_status,
                error_code: outcome.code.clone(),
                detail: outcome.detail.clone(),
                receipt: outcome.receipt.clone(),
            };
            if !self
                .record("attempt", || self.store.record_attempt(&attempt_row))
                .await
            {
                return;
            }
            counter!("custos_consent_push_attempts_total", "target" => kind.clone(), "outcome" => attempt_row.outcome.clone())
                .increment(1);
            let final_state = match outcome.verdict {
                Verdict::Delivered => Some(("delivered", outcome.detail.clone())),
                Verdict::Failed => Some(("failed", outcome.detail.clone())),
                Verdict::Retry if attempt >= self.policy.max_attempts => Some((
                    "failed",
                    format!("gave up after {attempt} attempts: {}", outcome.detail),
                )),
                Verdict::Retry => None,
            };
            match final_state {
                Some((state, detail)) => {
                    let now = answered_at;
                    let mut row = r.clone();
                    row.state = state.to_owned();
                    row.seq = attempt;
                    row.at = now;
                    row.attempts = attempt;
                    row.detail = detail;
                    if state == "delivered" {
                        row.acked_at = Some(now);
                        row.latency_ms = Some(now - r.requested_at);
                        histogram!("custos_consent_revocation_seconds", "target" => kind.clone())
                            .record((now - r.requested_at).max(0) as f64 / 1000.0);
                    }
                    let rows = [row];
                    if !self
                        .record(state, || self.store.record_revocations(&rows))
                        .await
                    {
                        return;
                    }
                    counter!("custos_consent_revocations_finished_total", "target" => kind.clone(), "state" => state)
                        .increment(1);
                    if state == "failed" {
                        warn!(
                            revocation_id = %r.revocation_id,
                            target = %r.target,
                            attempts = attempt,
                            code = %outcome.code,
                            "revocation push failed; recorded for the failure report"
                        );
                    } else {
                        info!(
                            revocation_id = %r.revocation_id,
                            target = %r.target,
                            attempts = attempt,
                            latency_ms = now - r.requested_at,
                            "revocation delivered"
                        );
                    }
                    return;
                }
                None => {
                    let delay = self.policy.delay(attempt);
                    warn!(
                        revocation_id = %r.revocation_id,
                        target = %r.target,
                        attempt,
                        code = %outcome.code,
                        retry_in_ms = delay.as_millis() as u64,
                        "revocation push failed; will retry"
                    );
                    if !self.sleep(delay).await {
                        return;
                    }
                }
            }
        }
    }

    fn subject(&self, job: &Job) -> Result<String, Outcome> {
        let sealed = job
            .sealed
            .as_ref()
            .map(|s| s.subject.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Outcome::failure(Verdict::Failed, 0, "no_subject", "no sealed AS subject", "")
            })?;
        self.sealer
            .open(&job.row.tenant, &job.row.consent_id, sealed)
            .map_err(|e| Outcome::failure(Verdict::Failed, 0, "unseal", e.to_string(), ""))
    }

    async fn attempt(&self, job: &Job) -> Outcome {
        let r = &job.row;
        if r.target == "kafka" {
            return self.publisher.revocation(r).await;
        }
        let subject = match self.subject(job) {
            Ok(s) => s,
            Err(o) => return o,
        };
        if r.target == "keycloak" {
            return match &self.keycloak {
                Some(kc) => kc.deliver(&r.issuer, &subject, &r.client_id).await,
                None => Outcome::failure(
                    Verdict::Failed,
                    0,
                    "not_configured",
                    "Keycloak adapter not configured",
                    "",
                ),
            };
        }
        if let Some(name) = r.target.strip_prefix("ssf:") {
            let Some(rcv) = self.receivers.iter().find(|x| x.name == name) else {
                return Outcome::failure(
                    Verdict::Failed,
                    0,
                    "not_configured",
                    "SSF receiver no longer configured",
                    "",
                );
            };
            let subject_issuer = match (&self.keycloak, r.issuer.strip_prefix("keycloak:")) {
                (Some(kc), Some(realm)) => kc.issuer_url(realm),
                _ => r.issuer.clone(),
            };
            let audience = rcv.audience.clone().unwrap_or_else(|| rcv.endpoint.clone());
            let set = self.signer.sign(&SessionRevoked {
                jti: &r.set_jti,
                audience: &audience,
                requested_at_secs: r.requested_at.div_euclid(1000),
                subject_issuer: &subject_issuer,
                subject: &subject,
                txn: &r.revocation_id,
                initiating_entity: caep_initiator(&r.initiator),
                reason: &r.reason,
            });
            return self.ssf.push(rcv, &set).await;
        }
        Outcome::failure(Verdict::Failed, 0, "unknown_target", "unknown target", "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initiators_follow_the_cause() {
        assert_eq!(initiator(Cause::Revoke, "patient"), "user");
        assert_eq!(initiator(Cause::Revoke, "privacy-api"), "admin");
        assert_eq!(initiator(Cause::Expiry, ""), "policy");
        assert_eq!(initiator(Cause::Alert, ""), ALERT_INITIATOR);
        assert_eq!(caep_initiator(ALERT_INITIATOR), "policy");
        assert_eq!(caep_initiator("admin"), "admin");
    }
}
