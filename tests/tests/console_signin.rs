//! The compliance console end to end, over HTTP, against the dev stack's Keycloak:
//!
//! - a fresh realm made from `deploy/keycloak/realm-custos.json` (its `custos-console` client
//!   included); the query API in-process on a socket, trusting that realm, over the query
//!   tests' seeded scenario; the console in-process, reading that API;
//! - `carol.compliance` opens the patient access report without a session, is sent through
//!   the console's sign-in to Keycloak's real login form (authorization code, PKCE, state,
//!   nonce), comes back to the page she asked for and sees the seeded accesses, the chart and
//!   the CSV export streamed from the API; the report is in the query audit under her name;
//! - a form post without the CSRF token or from another origin is refused; sign-out ends
//!   the session and sends the browser to Keycloak's end-session endpoint;
//! - `dora.doctor` (no Custos role) gets the no-role page (403) on the start page and on a
//!   report URL typed directly.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use clap::Parser;
use custos_console::config::ConsoleConfig;
use custos_tests::admin;
use http_body_util::BodyExt;
use tower::ServiceExt;

use support::fhir_server::{DemoRealm, CONSOLE_CLIENT_SECRET, DEMO_PASSWORD};
use support::keycloak::{http, Kc};
use support::reports::scenario;
use support::state_for;

/// The console's public origin as registered in the realm file (nothing listens there: the
/// test hands Keycloak's redirects to the in-process console).
const ORIGIN: &str = "http://127.0.0.1:8095";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    c: ConsoleConfig,
}

/// A browser's cookies for one site.
#[derive(Default, Clone)]
struct Jar(HashMap<String, String>);

impl Jar {
    fn take(&mut self, headers: &reqwest::header::HeaderMap) {
        for v in headers.get_all(reqwest::header::SET_COOKIE) {
            let Some(pair) = v.to_str().ok().and_then(|s| s.split(';').next()) else {
                continue;
            };
            if let Some((k, v)) = pair.split_once('=') {
                if v.is_empty() {
                    self.0.remove(k.trim());
                } else {
                    self.0.insert(k.trim().to_owned(), v.to_owned());
                }
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A console answer.
struct Page {
    status: StatusCode,
    location: String,
    headers: reqwest::header::HeaderMap,
    body: String,
}

/// A browser on the in-process console: its cookies and the console's router.
struct Browser {
    console: Router,
    jar: Jar,
    kc_jar: Jar,
}

impl Browser {
    async fn send(&mut self, req: Request<Body>) -> Result<Page> {
        let resp = self.console.clone().oneshot(req).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        self.jar.take(&headers);
        let location = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into();
        Ok(Page {
            status,
            location,
            headers,
            body,
        })
    }

    async fn get(&mut self, path: &str) -> Result<Page> {
        let req = Request::get(path)
            .header(header::COOKIE, self.jar.header())
            .body(Body::empty())?;
        self.send(req).await
    }

    async fn post(&mut self, path: &str, form: &str, origin: &str) -> Result<Page> {
        let req = Request::post(path)
            .header(header::COOKIE, self.jar.header())
            .header(header::ORIGIN, origin)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.to_owned()))?;
        self.send(req).await
    }

    /// Follows the console's redirect to sign-in, signs in at Keycloak's login form as
    /// `user`, and hands the callback back to the console; returns the console's answer to
    /// the callback.
    async fn sign_in(&mut self, first: Page, user: &str) -> Result<Page> {
        ensure!(
            first.status == StatusCode::SEE_OTHER && first.location.starts_with("/console/login"),
            "expected the sign-in redirect, got {} {}",
            first.status,
            first.location
        );
        let login = self.get(&first.location).await?;
        ensure!(
            login.status == StatusCode::SEE_OTHER,
            "login: {}",
            login.status
        );
        let auth_url = login.location.clone();
        for p in [
            "code_challenge_method=S256",
            "code_challenge=",
            "nonce=",
            "state=",
            "client_id=custos-console",
        ] {
            ensure!(
                auth_url.contains(p),
                "authorization request lacks {p}: {auth_url}"
            );
        }
        let kc = http();
        let page = kc.get(&auth_url).send().await?;
        ensure!(
            page.status() == 200,
            "Keycloak login page: {}",
            page.status()
        );
        self.kc_jar.take(page.headers());
        let action = form_action(&page.text().await?)?;
        let posted = kc
            .post(&action)
            .header(reqwest::header::COOKIE, self.kc_jar.header())
            .form(&[
                ("username", user),
                ("password", DEMO_PASSWORD),
                ("credentialId", ""),
            ])
            .send()
            .await?;
        ensure!(
            posted.status() == 302,
            "login form: HTTP {}",
            posted.status()
        );
        self.kc_jar.take(posted.headers());
        let back = posted
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .context("no redirect after the login form")?
            .to_owned();
        let path = back
            .strip_prefix(ORIGIN)
            .with_context(|| format!("redirected elsewhere: {back}"))?
            .to_owned();
        ensure!(path.starts_with("/console/callback?"), "{path}");
        self.get(&path).await
    }
}

/// The `action` of Keycloak's login form, entities undone.
fn form_action(html: &str) -> Result<String> {
    let form = html.find("id=\"kc-form-login\"").context("no login form")?;
    let start = html[..form].rfind("<form").context("no <form")?;
    let tag = &html[start..];
    let at = tag.find("action=\"").context("no action")? + "action=\"".len();
    let end = tag[at..].find('"').context("unclosed action")? + at;
    Ok(tag[at..end].replace("&amp;", "&"))
}

/// The value of the hidden `csrf` input of a page.
fn csrf_of(body: &str) -> Result<String> {
    let at = body
        .find("name=\"csrf\" value=\"")
        .context("no CSRF field on the page")?
        + "name=\"csrf\" value=\"".len();
    let end = body[at..].find('"').context("unclosed value")? + at;
    Ok(body[at..end].to_owned())
}

/// Serves `app` on a loopback port; returns its base URL.
async fn serve(app: Router) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

fn console_for(issuer: &str, query: &str) -> Result<Router> {
    let cli = Cli::try_parse_from([
        "custos-console",
        "--issuer",
        issuer,
        "--client-secret",
        CONSOLE_CLIENT_SECRET,
        "--public-url",
        ORIGIN,
        "--query-url",
        query,
        "--consent-url",
        query,
    ])?;
    let console = custos_console::Console::new(cli.c)?;
    Ok(custos_console::app(Arc::clone(&console)))
}

/// The callers (`sub`) of the console's query-audit records of `report` in `tenant`.
async fn audited(report: &str, tenant: &str) -> Result<Vec<String>> {
    Ok(admin()
        .query(
            "SELECT caller_sub FROM custos.report_queries FINAL \
             WHERE report = ? AND tenant = ? AND caller_client = 'custos-console'",
        )
        .bind(report)
        .bind(tenant)
        .fetch_all::<String>()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_signs_in_through_keycloak_and_reads_the_seeded_report() -> Result<()> {
    let s = scenario();
    let realm = DemoRealm::create("console").await?;
    let result = async {
        let query = serve(custos_query::app(state_for(&realm.issuer(), &[]))).await?;
        let console = console_for(&realm.issuer(), &query)?;
        let mut b = Browser {
            console,
            jar: Jar::default(),
            kc_jar: Jar::default(),
        };
        let report = format!(
            "/console/compliance/access?patient={}&tenant={}&from=2026-03-01&to=2026-03-02",
            s.p1, s.tenant
        );
        let first = b.get(&report).await?;
        let landed = b.sign_in(first, "carol.compliance").await?;
        ensure!(
            landed.status == StatusCode::SEE_OTHER && landed.location == report,
            "after sign-in: {} {} (wanted {report})",
            landed.status,
            landed.location
        );
        let cookie = landed
            .headers
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with("__Host-custos-console="))
            .context("no session cookie")?
            .to_owned();
        for attr in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
            ensure!(
                cookie.contains(attr),
                "session cookie lacks {attr}: {cookie}"
            );
        }
        let page = b.get(&report).await?;
        ensure!(
            page.status == StatusCode::OK,
            "report: {} {}",
            page.status,
            page.body
        );
        for want in [
            "dr-alice",
            "<svg",
            "Who accessed most",
            "Time (UTC)",
            "carol.compliance",
        ] {
            ensure!(page.body.contains(want), "the report page lacks {want:?}");
        }
        // The CSV export is the API's own CSV, streamed through.
        let csv = b.get(&report.replace("/access?", "/access.csv?")).await?;
        ensure!(csv.status == StatusCode::OK, "csv: {}", csv.status);
        ensure!(
            csv.body.lines().count() > 1 && csv.body.contains("dr-alice"),
            "csv: {}",
            csv.body
        );
        // Every page is in the query audit under the signed-in user's name.
        let carol = Kc::new().user_id(&realm.name, "carol.compliance").await?;
        let callers = audited("patient-access", &s.tenant).await?;
        ensure!(
            callers.contains(&carol),
            "no query-audit record of the console's report as carol: {callers:?}"
        );
        // Bad input: a clear message, no call.
        let bad = b
            .get("/console/compliance/access?patient=&from=yesterday")
            .await?;
        ensure!(
            bad.status == StatusCode::BAD_REQUEST && bad.body.contains("Patient id is required")
        );
        // Forms: CSRF token and origin both required.
        let csrf = csrf_of(&page.body)?;
        let forged = b.post("/console/logout", "csrf=wrong", ORIGIN).await?;
        ensure!(
            forged.status == StatusCode::FORBIDDEN,
            "bad CSRF: {}",
            forged.status
        );
        let cross = b
            .post(
                "/console/logout",
                &format!("csrf={csrf}"),
                "http://evil.example",
            )
            .await?;
        ensure!(
            cross.status == StatusCode::FORBIDDEN,
            "cross origin: {}",
            cross.status
        );
        let out = b
            .post("/console/logout", &format!("csrf={csrf}"), ORIGIN)
            .await?;
        ensure!(
            out.status == StatusCode::SEE_OTHER,
            "logout: {}",
            out.status
        );
        ensure!(
            out.location.contains("/protocol/openid-connect/logout")
                && out.location.contains("id_token_hint=")
                && out.location.contains("post_logout_redirect_uri="),
            "logout goes to {}",
            out.location
        );
        let after = b.get(&report).await?;
        ensure!(
            after.status == StatusCode::SEE_OTHER,
            "signed out: {}",
            after.status
        );

        // A user without a Custos role.
        let mut d = Browser {
            console: b.console.clone(),
            jar: Jar::default(),
            kc_jar: Jar::default(),
        };
        let first = d.get("/console/").await?;
        let landed = d.sign_in(first, "dora.doctor").await?;
        ensure!(landed.status == StatusCode::SEE_OTHER, "{}", landed.status);
        let home = d.get("/console/").await?;
        ensure!(home.status == StatusCode::FORBIDDEN && home.body.contains("no Custos role"));
        let typed = d.get(&report).await?;
        ensure!(
            typed.status == StatusCode::FORBIDDEN && typed.body.contains("no Custos role"),
            "typed URL: {}",
            typed.status
        );
        ensure!(!typed.body.contains("dr-alice"));
        let missing = d.get("/console/nowhere").await?;
        ensure!(missing.status == StatusCode::NOT_FOUND);
        Ok::<(), anyhow::Error>(())
    }
    .await;
    realm.delete().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_without_its_browser_binding_is_refused() -> Result<()> {
    let realm = DemoRealm::create("consolecb").await?;
    let result = async {
        let console = console_for(&realm.issuer(), "http://127.0.0.1:9")?;
        let mut b = Browser {
            console,
            jar: Jar::default(),
            kc_jar: Jar::default(),
        };
        let login = b.get("/console/login?return=//evil.example/").await?;
        ensure!(login.status == StatusCode::SEE_OTHER);
        // Another browser (no binding cookie) brings the state back.
        let state = reqwest::Url::parse(&login.location)?
            .query_pairs()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned())
            .context("no state")?;
        b.jar = Jar::default();
        let cb = b
            .get(&format!("/console/callback?code=x&state={state}"))
            .await?;
        if cb.status != StatusCode::BAD_REQUEST || !cb.body.contains("another browser") {
            bail!("callback without binding: {}", cb.status);
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    realm.delete().await;
    result
}
