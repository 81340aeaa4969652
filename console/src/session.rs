//! The server-side session store of the backend-for-frontend, and the pure checks around it.
//!
//! The browser holds only an opaque random session id in an HttpOnly cookie; the tokens live
//! here, in memory, bounded ([`SessionStore`] evicts the least recently used session beyond
//! its capacity), with an idle and an absolute expiry. Sign-ins in progress (state, nonce,
//! PKCE verifier, return path) are kept the same way, keyed by `state`, for ten minutes.
//! Each session has its own CSRF token, compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use custos_auth::oidc::Role;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

/// How long a sign-in may take between the redirect to the AS and the callback.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);

/// 32 random bytes, base64url without padding (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    B64.encode(bytes)
}

/// The PKCE `S256` challenge of a verifier (RFC 7636 section 4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    B64.encode(Sha256::digest(verifier.as_bytes()))
}

/// Equality of two secrets without an early exit on the first difference.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The path to come back to after sign-in: only a local path of the console
/// (`/console/...`), never another origin (`//host`, `/\host`, a scheme) nor anything with
/// control characters; anything else becomes the console's home.
pub fn safe_return_path(path: Option<&str>) -> String {
    const HOME: &str = "/console/";
    let Some(p) = path else {
        return HOME.to_owned();
    };
    let ok = p.len() <= 2048
        && (p == "/console" || p.starts_with("/console/") || p.starts_with("/console?"))
        && !p.contains("//")
        && !p.contains('\\')
        && !p.chars().any(|c| c.is_control() || c == ' ');
    if ok {
        p.to_owned()
    } else {
        HOME.to_owned()
    }
}

/// A sign-in in progress.
#[derive(Debug, Clone)]
pub struct PendingLogin {
    /// PKCE code verifier.
    pub verifier: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// Value of the browser-binding cookie set with the redirect.
    pub binding: String,
    /// Where to go after sign-in (already checked).
    pub return_to: String,
    created: Instant,
}

impl PendingLogin {
    /// A new sign-in with fresh verifier, nonce and binding.
    pub fn new(return_to: String) -> PendingLogin {
        PendingLogin {
            verifier: random_token(),
            nonce: random_token(),
            binding: random_token(),
            return_to,
            created: Instant::now(),
        }
    }
}

/// A signed-in user's session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Access token (audience: the APIs).
    pub access_token: String,
    /// When the access token expires.
    pub access_expires: Instant,
    /// Refresh token, when the AS gave one.
    pub refresh_token: Option<String>,
    /// ID token, for `id_token_hint` at sign-out.
    pub id_token: String,
    /// The name shown and audited: `preferred_username`, else `sub`.
    pub username: String,
    /// Custos roles of the access token.
    pub roles: Vec<Role>,
    /// CSRF token of this session's forms.
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
}

impl Session {
    /// A new session created now.
    pub fn new(
        access_token: String,
        expires_in: Duration,
        refresh_token: Option<String>,
        id_token: String,
        username: String,
        roles: Vec<Role>,
    ) -> Session {
        let now = Instant::now();
        Session {
            access_token,
            access_expires: now + expires_in,
            refresh_token,
            id_token,
            username,
            roles,
            csrf: random_token(),
            created: now,
            last_seen: now,
        }
    }

    /// Whether the access token is expired or expires within `margin`.
    pub fn access_expiring(&self, now: Instant, margin: Duration) -> bool {
        now + margin >= self.access_expires
    }

    /// Whether the session holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Why a session lookup found none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No session with that id (never was, signed out, or evicted).
    Unknown,
    /// It ended: idle too long or past its absolute lifetime.
    Expired,
}

struct Inner {
    sessions: HashMap<String, Session>,
    logins: HashMap<String, PendingLogin>,
}

/// In-memory, bounded sessions and sign-ins in progress.
pub struct SessionStore {
    inner: Mutex<Inner>,
    idle: Duration,
    absolute: Duration,
    capacity: usize,
}

impl SessionStore {
    /// A store with the given idle and absolute lifetimes and capacity.
    pub fn new(idle: Duration, absolute: Duration, capacity: usize) -> SessionStore {
        SessionStore {
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
                logins: HashMap::new(),
            }),
            idle,
            absolute,
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_seen) > self.idle || now.duration_since(s.created) > self.absolute
    }

    /// Keeps a new session; returns its id. Expired sessions are dropped first, then the least
    /// recently used beyond capacity.
    pub fn insert(&self, session: Session) -> String {
        let id = random_token();
        let now = Instant::now();
        let mut g = self.lock();
        let (idle, absolute) = (self.idle, self.absolute);
        g.sessions.retain(|_, s| {
            now.duration_since(s.last_seen) <= idle && now.duration_since(s.created) <= absolute
        });
        while g.sessions.len() >= self.capacity {
            let oldest = g
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => g.sessions.remove(&k),
                None => break,
            };
        }
        g.sessions.insert(id.clone(), session);
        id
    }

    /// The session of `id`, touched (its idle clock restarts); an expired one is removed.
    pub fn get(&self, id: &str) -> Result<Session, Missing> {
        self.get_at(id, Instant::now())
    }

    /// [`SessionStore::get`] at a given instant (for tests).
    pub fn get_at(&self, id: &str, now: Instant) -> Result<Session, Missing> {
        let mut g = self.lock();
        let Some(s) = g.sessions.get_mut(id) else {
            return Err(Missing::Unknown);
        };
        if self.expired(s, now) {
            g.sessions.remove(id);
            return Err(Missing::Expired);
        }
        s.last_seen = now;
        Ok(s.clone())
    }

    /// Replaces the tokens of a session after a refresh.
    pub fn update_tokens(
        &self,
        id: &str,
        access_token: String,
        expires_in: Duration,
        refresh_token: Option<String>,
    ) {
        let mut g = self.lock();
        if let Some(s) = g.sessions.get_mut(id) {
            s.access_token = access_token;
            s.access_expires = Instant::now() + expires_in;
            if refresh_token.is_some() {
                s.refresh_token = refresh_token;
            }
        }
    }

    /// Ends a session; returns it.
    pub fn remove(&self, id: &str) -> Option<Session> {
        self.lock().sessions.remove(id)
    }

    /// Number of live sessions (for metrics).
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether no session is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps a sign-in in progress under its `state`; returns the state.
    pub fn begin_login(&self, login: PendingLogin) -> String {
        let state = random_token();
        let now = Instant::now();
        let mut g = self.lock();
        g.logins
            .retain(|_, l| now.duration_since(l.created) <= LOGIN_TTL);
        while g.logins.len() >= self.capacity {
            let oldest = g
                .logins
                .iter()
                .min_by_key(|(_, l)| l.created)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => g.logins.remove(&k),
                None => break,
            };
        }
        g.logins.insert(state.clone(), login);
        state
    }

    /// Takes the sign-in of `state` (once): it must exist, be younger than [`LOGIN_TTL`] and
    /// belong to the browser that holds `binding`.
    pub fn finish_login(&self, state: &str, binding: Option<&str>) -> Option<PendingLogin> {
        let login = self.lock().logins.remove(state)?;
        let fresh = login.created.elapsed() <= LOGIN_TTL;
        let same_browser = binding.is_some_and(|b| constant_time_eq(b, &login.binding));
        (fresh && same_browser).then_some(login)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session::new(
            "at".into(),
            Duration::from_secs(300),
            Some("rt".into()),
            "id".into(),
            "carol".into(),
            vec![Role::ComplianceOfficer],
        )
    }

    #[test]
    fn pkce_challenge_is_the_rfc_7636_example() {
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let v = random_token();
        assert_eq!(v.len(), 43);
        assert_ne!(v, random_token());
    }

    #[test]
    fn return_paths_stay_local_to_the_console() {
        assert_eq!(
            safe_return_path(Some("/console/compliance/access?patient=p1")),
            "/console/compliance/access?patient=p1"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/console/",
            "/\\evil.example",
            "/console//evil",
            "/other",
            "/console/\nx",
            "javascript:alert(1)",
            "",
        ] {
            assert_eq!(safe_return_path(Some(bad)), "/console/", "{bad:?}");
        }
        assert_eq!(safe_return_path(None), "/console/");
    }

    #[test]
    fn csrf_compare_is_exact() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
        assert!(!constant_time_eq("", "a"));
    }

    #[test]
    fn sessions_expire_when_idle_and_absolutely() {
        let store = SessionStore::new(Duration::from_secs(60), Duration::from_secs(120), 10);
        let id = store.insert(session());
        let t0 = Instant::now();
        assert!(store.get_at(&id, t0 + Duration::from_secs(50)).is_ok());
        // Touched at +50: still alive at +100 (idle 50 s).
        assert!(store.get_at(&id, t0 + Duration::from_secs(100)).is_ok());
        // Past the absolute lifetime, however active.
        assert_eq!(
            store.get_at(&id, t0 + Duration::from_secs(125)).err(),
            Some(Missing::Expired)
        );
        assert_eq!(store.get_at(&id, t0).err(), Some(Missing::Unknown));
        let id2 = store.insert(session());
        assert_eq!(
            store
                .get_at(&id2, Instant::now() + Duration::from_secs(61))
                .err(),
            Some(Missing::Expired)
        );
        assert_eq!(store.get("nope").err(), Some(Missing::Unknown));
    }

    #[test]
    fn the_store_is_bounded() {
        let store = SessionStore::new(Duration::from_secs(60), Duration::from_secs(120), 3);
        let ids: Vec<String> = (0..5).map(|_| store.insert(session())).collect();
        assert_eq!(store.len(), 3);
        assert!(store.get(&ids[4]).is_ok());
        assert!(store.get(&ids[0]).is_err());
    }

    #[test]
    fn a_login_finishes_once_in_the_same_browser() {
        let store = SessionStore::new(Duration::from_secs(60), Duration::from_secs(120), 3);
        let login = PendingLogin::new("/console/".into());
        let binding = login.binding.clone();
        let state = store.begin_login(login.clone());
        assert!(store.finish_login(&state, Some("other")).is_none());
        // A failed attempt consumed it too: no second try with the same state.
        let state = store.begin_login(login);
        assert!(store.finish_login(&state, Some(&binding)).is_some());
        assert!(store.finish_login(&state, Some(&binding)).is_none());
        assert!(store.finish_login("unknown", Some(&binding)).is_none());
    }

    #[test]
    fn access_tokens_are_refreshed_before_they_expire() {
        let s = session();
        let now = Instant::now();
        assert!(!s.access_expiring(now, Duration::from_secs(10)));
        assert!(s.access_expiring(now + Duration::from_secs(295), Duration::from_secs(10)));
    }
}
