//! The compliance console in-process for the tests ([`console_for`]), and a browser of it
//! ([`Browser`]): cookies kept per site, Keycloak's real login form filled in, the console's
//! redirects handed back to the in-process router.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use clap::Parser;
use custos_console::config::ConsoleConfig;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::fhir_server::{CONSOLE_CLIENT_SECRET, DEMO_PASSWORD};
use super::keycloak::http;

/// The console's public origin as registered in the realm file (nothing listens there: the
/// test hands Keycloak's redirects to the in-process console).
pub const ORIGIN: &str = "http://127.0.0.1:8095";

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
pub struct Page {
    /// Status.
    pub status: StatusCode,
    /// `Location`, or "".
    pub location: String,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body text.
    pub body: String,
}

/// A browser on the in-process console: its cookies and the console's router.
pub struct Browser {
    /// The console's router.
    pub console: Router,
    jar: Jar,
    kc_jar: Jar,
}

impl Browser {
    /// A browser without cookies.
    pub fn new(console: Router) -> Browser {
        Browser {
            console,
            jar: Jar::default(),
            kc_jar: Jar::default(),
        }
    }

    /// Drops the console's cookies (another browser).
    pub fn forget_cookies(&mut self) {
        self.jar = Jar::default();
    }

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

    /// `GET path` with the browser's console cookies.
    pub async fn get(&mut self, path: &str) -> Result<Page> {
        let req = Request::get(path)
            .header(header::COOKIE, self.jar.header())
            .body(Body::empty())?;
        self.send(req).await
    }

    /// `POST path` of a form from `origin`, with the browser's console cookies.
    pub async fn post(&mut self, path: &str, form: &str, origin: &str) -> Result<Page> {
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
    pub async fn sign_in(&mut self, first: Page, user: &str) -> Result<Page> {
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
pub fn csrf_of(body: &str) -> Result<String> {
    let at = body
        .find("name=\"csrf\" value=\"")
        .context("no CSRF field on the page")?
        + "name=\"csrf\" value=\"".len();
    let end = body[at..].find('"').context("unclosed value")? + at;
    Ok(body[at..end].to_owned())
}

/// Serves `app` on a loopback port; returns its base URL.
pub async fn serve(app: Router) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// The console in-process for `issuer`, reading the query API at `query` and the consent
/// service at `consent`.
pub fn console_for(issuer: &str, query: &str, consent: &str) -> Result<Router> {
    console_with(issuer, query, consent, &[])
}

/// [`console_for`] with extra command-line arguments.
pub fn console_with(issuer: &str, query: &str, consent: &str, extra: &[&str]) -> Result<Router> {
    let mut args = vec![
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
        consent,
    ];
    args.extend_from_slice(extra);
    let cli = Cli::try_parse_from(args)?;
    let console = custos_console::Console::new(cli.c)?;
    Ok(custos_console::app(Arc::clone(&console)))
}
