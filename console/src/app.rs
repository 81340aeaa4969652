//! The console's HTTP app: sign-in and sign-out (backend-for-frontend), the session
//! extractor with token refresh and re-sign-in, the CSRF and origin checks of every form
//! post, and the router of the pages (`crate::pages`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use custos_auth::oidc::{Authenticator, Role};
use custos_runtime::health::Health;
use maud::html;
use serde::Deserialize;
use tracing::{info, warn};

use crate::api::{ApiClient, ApiFailure};
use crate::config::{ConfigError, ConsoleConfig};
use crate::html::{self, Viewer};
use crate::oidc::{OidcError, RelyingParty, TokenResponse};
use crate::pages;
use crate::session::{
    constant_time_eq, pkce_challenge, safe_return_path, PendingLogin, Session, SessionStore,
};

/// Refresh the access token when it expires within this margin.
const REFRESH_MARGIN: Duration = Duration::from_secs(15);

/// Everything the handlers share.
pub struct Console {
    /// Settings.
    pub cfg: ConsoleConfig,
    /// The console as OIDC client.
    pub rp: RelyingParty,
    /// The shared token verifier (ID tokens, and the access token's roles).
    pub auth: Authenticator,
    /// Sessions and sign-ins in progress.
    pub sessions: SessionStore,
    /// The APIs.
    pub api: ApiClient,
    /// Readiness.
    pub health: Arc<Health>,
    /// The Content-Security-Policy: own stylesheet only, no script; forms post to the
    /// console, and sign-out redirects to the issuer.
    pub csp: String,
}

/// Errors building the console.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An HTTP client could not be built.
    #[error(transparent)]
    Oidc(#[from] OidcError),
    /// The API client could not be built.
    #[error(transparent)]
    Api(#[from] ApiFailure),
    /// The token verifier could not be built.
    #[error(transparent)]
    Auth(#[from] custos_auth::config::ConfigError),
}

impl Console {
    /// Builds the console from validated settings (no I/O).
    pub fn new(cfg: ConsoleConfig) -> Result<Arc<Console>, BuildError> {
        cfg.validate()?;
        let rp = RelyingParty::new(
            &cfg.issuer,
            &cfg.client_id,
            &cfg.client_secret,
            cfg.redirect_uri(),
            cfg.http_timeout(),
        )?;
        let auth = Authenticator::new(&cfg.oidc_args())?;
        let api = ApiClient::new(&cfg.query_url, &cfg.consent_url, cfg.http_timeout())?;
        let sessions = SessionStore::new(
            Duration::from_secs(cfg.session_idle_secs),
            Duration::from_secs(cfg.session_max_secs),
            cfg.max_sessions,
        );
        // Ready once the issuer's keys are loaded; the console has no Kafka and no ClickHouse.
        let health = Arc::new(Health::with_load_step("JWKS of the issuer not loaded"));
        health.set_subscribed();
        health.set_clickhouse(true);
        let issuer_origin = reqwest::Url::parse(&cfg.issuer)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        let csp = format!(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self' {issuer_origin}; frame-ancestors 'none'; base-uri 'none'"
        );
        Ok(Arc::new(Console {
            csp,
            cfg,
            rp,
            auth,
            sessions,
            api,
            health,
        }))
    }

    /// Name of the session cookie: `__Host-` prefixed when Secure.
    pub fn cookie_name(&self) -> &'static str {
        if self.cfg.cookie_secure {
            "__Host-custos-console"
        } else {
            "custos-console"
        }
    }

    fn login_cookie_name(&self) -> &'static str {
        if self.cfg.cookie_secure {
            "__Host-custos-console-login"
        } else {
            "custos-console-login"
        }
    }

    /// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Path=/, Secure when configured.
    pub fn cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> String {
        let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
        if self.cfg.cookie_secure {
            c.push_str("; Secure");
        }
        if let Some(a) = max_age {
            c.push_str(&format!("; Max-Age={a}"));
        }
        c
    }
}

/// The value of cookie `name` in the request.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether a state-changing request comes from the console's own origin: `Origin` must be
/// it; without `Origin`, `Referer` must start with it; without both, refused.
pub fn same_origin(headers: &HeaderMap, origin: &str) -> bool {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    match (get(header::ORIGIN), get(header::REFERER)) {
        (Some(o), _) => o == origin,
        (None, Some(r)) => r == origin || r.starts_with(&format!("{origin}/")),
        (None, None) => false,
    }
}

/// A signed-in user, extracted from the session cookie; the access token is refreshed when
/// it is about to expire. Without a live session the rejection sends the browser through
/// sign-in and back to the page asked for.
#[derive(Debug, Clone)]
pub struct User {
    /// Session id.
    pub sid: String,
    /// The session (tokens are fresh).
    pub session: Session,
}

impl User {
    /// The frame's view of the user.
    pub fn viewer(&self) -> Viewer {
        Viewer {
            username: self.session.username.clone(),
            roles: html::console_roles(&self.session.roles),
            csrf: self.session.csrf.clone(),
        }
    }

    /// The access token for API calls.
    pub fn token(&self) -> &str {
        &self.session.access_token
    }

    /// `None` when the user holds one of `roles`, else the 403 page naming them.
    pub fn refuse(&self, roles: &[Role]) -> Option<Response> {
        if html::allowed(&self.session.roles, roles) {
            None
        } else {
            Some(html::forbidden(&self.viewer(), roles))
        }
    }

    /// Whether the user holds one of `roles`.
    pub fn may(&self, roles: &[Role]) -> bool {
        html::allowed(&self.session.roles, roles)
    }
}

fn to_login(return_to: &str) -> Response {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("return", return_to)
        .finish();
    Redirect::to(&format!("/console/login?{q}")).into_response()
}

impl FromRequestParts<Arc<Console>> for User {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Response> {
        let here = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/console/".into());
        // A form post cannot be replayed after sign-in: come back to the page it came from.
        let back = if parts.method == axum::http::Method::GET {
            safe_return_path(Some(&here))
        } else {
            "/console/".to_owned()
        };
        let Some(sid) = cookie_value(&parts.headers, console.cookie_name()).map(str::to_owned)
        else {
            return Err(to_login(&back));
        };
        let mut session = match console.sessions.get(&sid) {
            Ok(s) => s,
            Err(_) => return Err(to_login(&back)),
        };
        if session.access_expiring(Instant::now(), REFRESH_MARGIN) {
            let Some(rt) = session.refresh_token.clone() else {
                console.sessions.remove(&sid);
                return Err(to_login(&back));
            };
            match console.rp.refresh(&rt).await {
                Ok(t) => {
                    console.sessions.update_tokens(
                        &sid,
                        t.access_token.clone(),
                        t.lifetime(),
                        t.refresh_token.clone(),
                    );
                    session.access_expires = Instant::now() + t.lifetime();
                    session.access_token = t.access_token;
                    metrics::counter!("custos_console_token_refreshes_total", "outcome" => "ok")
                        .increment(1);
                }
                Err(e) => {
                    info!(error = %e, "session expired: refresh refused; signing in again");
                    metrics::counter!("custos_console_token_refreshes_total", "outcome" => "failed")
                        .increment(1);
                    console.sessions.remove(&sid);
                    return Err(to_login(&back));
                }
            }
        }
        Ok(User { sid, session })
    }
}

/// A form post's CSRF field.
#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
}

/// Checks the origin and the CSRF token of a form post: `None` when they match, else the
/// refusal page.
pub fn check_post(
    console: &Console,
    user: &User,
    headers: &HeaderMap,
    csrf: &str,
) -> Option<Response> {
    if !same_origin(headers, &console.cfg.origin()) || !constant_time_eq(csrf, &user.session.csrf) {
        warn!("form post refused: origin or CSRF token does not match");
        return Some(html::page(
            StatusCode::FORBIDDEN,
            html::layout(
                "Request refused",
                Some(&user.viewer()),
                "",
                html! {
                    h1 { "Request refused" }
                    p role="alert" { "The form was not sent from this console's page, or the page is too old. Open the page again and resend the form." }
                },
            ),
        ));
    }
    None
}

#[derive(Deserialize)]
struct LoginQuery {
    #[serde(default, rename = "return")]
    return_to: Option<String>,
}

async fn login(State(console): State<Arc<Console>>, Query(q): Query<LoginQuery>) -> Response {
    let pending = PendingLogin::new(safe_return_path(q.return_to.as_deref()));
    let challenge = pkce_challenge(&pending.verifier);
    let nonce = pending.nonce.clone();
    let binding = pending.binding.clone();
    let state = console.sessions.begin_login(pending);
    match console.rp.login_url(&state, &nonce, &challenge).await {
        Ok(url) => {
            let mut resp = Redirect::to(&url).into_response();
            if let Ok(v) = HeaderValue::from_str(&console.cookie(
                console.login_cookie_name(),
                &binding,
                Some(600),
            )) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            resp
        }
        Err(e) => {
            warn!(error = %e, "sign-in cannot start");
            html::error_page(
                StatusCode::BAD_GATEWAY,
                "Sign-in unavailable",
                "The sign-in service cannot be reached. Try again in a moment.",
            )
        }
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

async fn callback(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let refused = |msg: &str| html::error_page(StatusCode::BAD_REQUEST, "Sign-in failed", msg);
    if let Some(e) = q.error.as_deref() {
        info!(error = e, "sign-in refused by the authorization server");
        return refused("The sign-in was cancelled or refused. Start again from the console.");
    }
    let (Some(code), Some(state)) = (q.code.as_deref(), q.state.as_deref()) else {
        return refused("The sign-in answer is incomplete. Start again from the console.");
    };
    let binding = cookie_value(&headers, console.login_cookie_name());
    let Some(pending) = console.sessions.finish_login(state, binding) else {
        return refused(
            "This sign-in is unknown, expired or was started in another browser. Start again from the console.",
        );
    };
    let tokens: TokenResponse = match console.rp.exchange(code, &pending.verifier).await {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "code exchange failed");
            return refused("The sign-in could not be completed. Start again from the console.");
        }
    };
    let Some(id_token) = tokens.id_token.clone() else {
        return refused("The sign-in service sent no ID token.");
    };
    let claims = match console
        .auth
        .verify_id_token(&id_token, console.rp.client_id(), &pending.nonce)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "ID token refused");
            return refused("The sign-in answer did not verify.");
        }
    };
    let caller = match console.auth.authenticate(&tokens.access_token).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "access token of the sign-in refused");
            return refused("The access token of this sign-in is not accepted by the Custos APIs (audience or issuer).");
        }
    };
    if claims.get("sub").and_then(|s| s.as_str()) != Some(caller.sub.as_str()) {
        return refused("The sign-in answer names two different users.");
    }
    let username = caller.actor().to_owned();
    let session = Session::new(
        tokens.access_token.clone(),
        tokens.lifetime(),
        tokens.refresh_token.clone(),
        id_token,
        username.clone(),
        caller.roles.clone(),
    );
    let sid = console.sessions.insert(session);
    metrics::counter!("custos_console_sign_ins_total").increment(1);
    info!(user = %username, roles = ?caller.role_names(), "signed in");
    let mut resp = Redirect::to(&pending.return_to).into_response();
    for c in [
        console.cookie(console.cookie_name(), &sid, None),
        console.cookie(console.login_cookie_name(), "", Some(0)),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

async fn logout(
    State(console): State<Arc<Console>>,
    user: User,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Response {
    if let Some(r) = check_post(&console, &user, &headers, &f.csrf) {
        return r;
    }
    let session = console.sessions.remove(&user.sid);
    let post_logout = format!("{}/console/signed-out", console.cfg.origin());
    let target = match session {
        Some(s) => console.rp.logout_url(&s.id_token, &post_logout).await,
        None => post_logout,
    };
    info!(user = %user.session.username, "signed out");
    let mut resp = Redirect::to(&target).into_response();
    if let Ok(v) = HeaderValue::from_str(&console.cookie(console.cookie_name(), "", Some(0))) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn signed_out() -> Response {
    html::page(
        StatusCode::OK,
        html::layout(
            "Signed out",
            None,
            "",
            html! {
                h1 { "You are signed out" }
                p { "Your console session and your sign-in at the authorization server have ended." }
                p { a class="button" href="/console/login" { "Sign in again" } }
            },
        ),
    )
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        html::CSS,
    )
        .into_response()
}

async fn not_found(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let viewer = cookie_value(&headers, console.cookie_name())
        .and_then(|sid| console.sessions.get(sid).ok())
        .map(|s| Viewer {
            username: s.username.clone(),
            roles: html::console_roles(&s.roles),
            csrf: s.csrf.clone(),
        });
    html::not_found(viewer.as_ref())
}

/// Security headers of every answer: no framing, no sniffing, a CSP that allows only the
/// console's own stylesheet (no script at all), no referrer beyond the origin.
async fn security_headers(
    State(console): State<Arc<Console>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&console.csp) {
        h.insert("content-security-policy", v);
    }
    for (k, v) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    resp
}

/// The console's router.
pub fn app(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(pages::home))
        .route("/console/login", get(login))
        .route("/console/callback", get(callback))
        .route("/console/logout", post(logout))
        .route("/console/signed-out", get(signed_out))
        .route("/console/assets/console.css", get(css))
        .merge(pages::router())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            security_headers,
        ))
        .with_state(console)
}

/// The admin router: `/healthz`, `/readyz`, `/metrics`.
pub fn admin_app(
    console: &Console,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Router {
    custos_runtime::ops::router(console.health.clone(), metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-custos-console=abc; x-custos-console=no"),
        );
        assert_eq!(cookie_value(&h, "__Host-custos-console"), Some("abc"));
        assert_eq!(cookie_value(&h, "custos-console"), None);
    }

    #[test]
    fn posts_must_come_from_the_console_origin() {
        let o = "http://127.0.0.1:8095";
        let mut h = HeaderMap::new();
        assert!(!same_origin(&h, o));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h, o));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8095"),
        );
        assert!(same_origin(&h, o));
        let mut r = HeaderMap::new();
        r.insert(
            header::REFERER,
            HeaderValue::from_static("http://127.0.0.1:8095.evil.example/x"),
        );
        assert!(!same_origin(&r, o));
        r.insert(
            header::REFERER,
            HeaderValue::from_static("http://127.0.0.1:8095/console/privacy/consents"),
        );
        assert!(same_origin(&r, o));
    }
}
