//! A short, bounded memory of bearer tokens that were verified and allowed to write, so an
//! audit source sending many requests with one token pays the signature check once per
//! [`TokenCache::ttl`] instead of once per request.
//!
//! What is kept, and for how long:
//! - only successes: a token whose signature, issuer, audience, type, `exp`/`nbf` and
//!   `audit_source` role were checked by [`custos_auth`]; a refusal of any kind is never
//!   remembered, so the next request with that token is checked again in full;
//! - keyed by the SHA-256 of the token, never the token itself;
//! - until the earlier of the token's `exp` (without the verifier's clock leeway) and `ttl`
//!   after the check (`CUSTOS_FEED_TOKEN_CACHE_SECS`, default 30 s; 0 turns the cache off), so
//!   an entry never outlives its token. A token whose key leaves the issuer's JWKS, or that
//!   is revoked at the issuer, can still write for at most `ttl` (the feed does no
//!   introspection: a JWT is valid until its `exp` in any case);
//! - at most [`TokenCache::capacity`] entries: expired ones are dropped when it is full, and
//!   a new token is then not remembered (it is verified on every request, as without cache).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Tokens that passed the write check, by SHA-256, with the instant their entry ends.
#[derive(Debug)]
pub struct TokenCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

#[derive(Deserialize)]
struct Expiry {
    exp: Option<i64>,
}

/// The `exp` claim of a JWT, read without verification: call only for a token already
/// verified.
fn exp_of(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Expiry>(&json).ok()?.exp
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenCache {
    /// A cache keeping entries at most `ttl` (zero: off) and at most `capacity` of them.
    pub fn new(ttl: Duration, capacity: usize) -> TokenCache {
        TokenCache {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The longest an entry is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The most entries kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `token` passed the write check and its entry has not ended.
    pub fn allows(&self, token: &str) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let key = digest(token);
        let mut entries = self.lock();
        match entries.get(&key) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                entries.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Remembers `token`, which has just passed the write check, until the earlier of its
    /// `exp` and `ttl` from now. A token without a readable `exp`, or already expired, is
    /// not remembered.
    pub fn remember(&self, token: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let Some(exp) = exp_of(token) else {
            return;
        };
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let left = exp as f64 - now_unix;
        if left <= 0.0 {
            return;
        }
        let keep = self.ttl.min(Duration::from_secs_f64(left));
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            entries.retain(|_, until| now < *until);
            if entries.len() >= self.capacity {
                return;
            }
        }
        entries.insert(digest(token), now + keep);
    }

    /// Entries held (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(claims: serde_json::Value) -> String {
        let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        format!(
            "{}.{}.c2ln",
            enc(&json!({"alg": "RS256", "typ": "JWT"})),
            enc(&claims)
        )
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn remembers_only_what_it_was_given_and_only_while_valid() {
        let cache = TokenCache::new(Duration::from_secs(30), 8);
        let a = token(json!({"sub": "a", "exp": now() + 600}));
        let b = token(json!({"sub": "b", "exp": now() + 600}));
        assert!(!cache.allows(&a), "nothing before a success");
        cache.remember(&a);
        assert!(cache.allows(&a));
        assert!(!cache.allows(&b), "another token is not covered");
        // A token differing in one character is another key.
        let mut c = a.clone();
        c.pop();
        c.push('x');
        assert!(!cache.allows(&c));
    }

    #[test]
    fn never_outlives_the_token() {
        let cache = TokenCache::new(Duration::from_secs(30), 8);
        let expired = token(json!({"sub": "a", "exp": now() - 1}));
        cache.remember(&expired);
        assert!(!cache.allows(&expired));
        let no_exp = token(json!({"sub": "a"}));
        cache.remember(&no_exp);
        assert!(!cache.allows(&no_exp));
        cache.remember("not-a-jwt");
        assert!(!cache.allows("not-a-jwt"));
        assert!(cache.is_empty());
        // Expiring in about a second: kept at most that long, not the 30 s.
        let short = token(json!({"sub": "a", "exp": now() + 1}));
        cache.remember(&short);
        std::thread::sleep(Duration::from_millis(2100));
        assert!(!cache.allows(&short));
        assert!(cache.is_empty(), "the ended entry is dropped");
    }

    #[test]
    fn the_ttl_bounds_an_entry_and_zero_turns_it_off() {
        let cache = TokenCache::new(Duration::from_millis(200), 8);
        let a = token(json!({"sub": "a", "exp": now() + 600}));
        cache.remember(&a);
        assert!(cache.allows(&a));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!cache.allows(&a));
        let off = TokenCache::new(Duration::ZERO, 8);
        off.remember(&a);
        assert!(!off.allows(&a));
        assert!(off.is_empty());
    }

    #[test]
    fn bounded() {
        let cache = TokenCache::new(Duration::from_millis(300), 2);
        let t: Vec<String> = (0..3)
            .map(|i| token(json!({"sub": i, "exp": now() + 600})))
            .collect();
        cache.remember(&t[0]);
        cache.remember(&t[1]);
        cache.remember(&t[2]);
        assert_eq!(cache.len(), 2);
        assert!(!cache.allows(&t[2]), "full: a new token is not remembered");
        std::thread::sleep(Duration::from_millis(400));
        cache.remember(&t[2]);
        assert!(cache.allows(&t[2]), "ended entries make room");
        assert_eq!(cache.len(), 1);
    }
}
