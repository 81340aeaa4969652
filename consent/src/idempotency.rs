//! Idempotent revocation requests.
//!
//! Two mechanisms make a retried revocation harmless:
//!
//! - the revocation event id is derived from the request ([`revocation_event_id`]: caller,
//!   tenant, consent and its version, reason, `Idempotency-Key`), so two identical requests
//!   racing each other (or a retry after a lost answer that reached Kafka) publish the
//!   same event: the fold records one revocation and pushes it once;
//! - the answer of a revocation request is kept for a window
//!   (`CUSTOS_CONSENT_IDEMPOTENCY_WINDOW_SECS`) under a fingerprint of the request
//!   ([`fingerprint`]), and a repeat within the window is answered `200` with the first
//!   answer's event and revocation ids instead of `409`/`404` or a second revocation.
//!
//! The window lives in the process's memory: after a restart a repeat of a request whose
//! consent is already revoked is answered like any request for an inactive consent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use custos_auth::oidc::Caller;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// Longest accepted `Idempotency-Key` header value.
pub const MAX_KEY_LEN: usize = 255;

/// Whether an `Idempotency-Key` value is acceptable: 1-255 visible ASCII characters.
pub fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic())
}

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

/// The fingerprint of a revocation request: the caller (issuer and subject), the route,
/// its target (`parts`: tenant, consent or patient pseudonym and client), the reason and
/// the `Idempotency-Key` (empty when absent).
pub fn fingerprint(caller: &Caller, route: &str, parts: &[&str], key: Option<&str>) -> String {
    let mut all = vec![
        "custos-idem1",
        caller.issuer.as_str(),
        caller.sub.as_str(),
        route,
    ];
    all.extend_from_slice(parts);
    all.push(key.unwrap_or(""));
    hex::encode(digest(&all))
}

/// The event id of the revocation a request publishes for one consent version: the same
/// request (same caller, reason and key) for the same version yields the same id.
pub fn revocation_event_id(
    caller: &Caller,
    tenant: &str,
    consent_id: &str,
    version: u64,
    reason: &str,
    key: Option<&str>,
) -> String {
    let version = version.to_string();
    let d = digest(&[
        "custos-api-revoke1",
        caller.issuer.as_str(),
        caller.sub.as_str(),
        tenant,
        consent_id,
        &version,
        reason,
        key.unwrap_or(""),
    ]);
    hex::encode(&d[..16])
}

/// Answers of recent revocation requests, by fingerprint.
#[derive(Debug)]
pub struct Replays {
    window: Duration,
    answers: Mutex<HashMap<String, (Instant, Value)>>,
}

impl Replays {
    /// Keeps answers for `window` (zero: none are kept).
    pub fn new(window: Duration) -> Replays {
        Replays {
            window,
            answers: Mutex::new(HashMap::new()),
        }
    }

    /// The first answer to the request `fingerprint`, if it is within the window.
    pub async fn get(&self, fingerprint: &str) -> Option<Value> {
        let answers = self.answers.lock().await;
        answers
            .get(fingerprint)
            .filter(|(at, _)| at.elapsed() < self.window)
            .map(|(_, v)| v.clone())
    }

    /// Keeps the answer to `fingerprint` (the first one stays), dropping expired answers.
    pub async fn put(&self, fingerprint: String, answer: Value) {
        if self.window.is_zero() {
            return;
        }
        let mut answers = self.answers.lock().await;
        let window = self.window;
        answers.retain(|_, (at, _)| at.elapsed() < window);
        answers
            .entry(fingerprint)
            .or_insert_with(|| (Instant::now(), answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_auth::oidc::Role;

    fn caller(sub: &str) -> Caller {
        Caller {
            sub: sub.into(),
            issuer: "https://as.test".into(),
            client: "console".into(),
            username: None,
            roles: vec![Role::PrivacyOfficer],
            tenants: None,
        }
    }

    #[test]
    fn ids_are_stable_per_request_and_differ_otherwise() {
        let a = caller("a");
        let id = revocation_event_id(&a, "t", "c1", 3, "asked", None);
        assert_eq!(id, revocation_event_id(&a, "t", "c1", 3, "asked", None));
        assert_eq!(id.len(), 32);
        for other in [
            revocation_event_id(&caller("b"), "t", "c1", 3, "asked", None),
            revocation_event_id(&a, "t2", "c1", 3, "asked", None),
            revocation_event_id(&a, "t", "c2", 3, "asked", None),
            // A re-granted consent is a new version: a new revocation.
            revocation_event_id(&a, "t", "c1", 4, "asked", None),
            revocation_event_id(&a, "t", "c1", 3, "other", None),
            revocation_event_id(&a, "t", "c1", 3, "asked", Some("k1")),
        ] {
            assert_ne!(id, other);
        }
        // Field boundaries are unambiguous.
        assert_ne!(
            fingerprint(&a, "r", &["ab", "c"], None),
            fingerprint(&a, "r", &["a", "bc"], None)
        );
    }

    #[test]
    fn keys_are_checked() {
        assert!(valid_key("retry-7f3a"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key(&"k".repeat(256)));
    }

    #[tokio::test]
    async fn answers_are_replayed_within_the_window_only() {
        let r = Replays::new(Duration::from_millis(200));
        r.put("f".into(), serde_json::json!(1)).await;
        r.put("f".into(), serde_json::json!(2)).await;
        assert_eq!(r.get("f").await, Some(serde_json::json!(1)), "first answer");
        assert_eq!(r.get("g").await, None);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(r.get("f").await, None);
        let off = Replays::new(Duration::ZERO);
        off.put("f".into(), serde_json::json!(1)).await;
        assert_eq!(off.get("f").await, None);
    }
}
