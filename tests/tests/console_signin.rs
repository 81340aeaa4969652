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
//!   report URL typed directly;
//! - a callback from another browser than the one that started the sign-in is refused, and a
//!   session that expired sends the browser through sign-in again, back to the page asked for.

mod support;

use anyhow::{bail, ensure, Context, Result};
use axum::http::StatusCode;
use custos_tests::admin;

use support::console::{console_for, console_with, csrf_of, serve, Browser, ORIGIN};
use support::fhir_server::DemoRealm;
use support::keycloak::Kc;
use support::reports::scenario;
use support::state_for;

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
        let console = console_for(&realm.issuer(), &query, &query)?;
        let mut b = Browser::new(console);
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
        let mut d = Browser::new(b.console.clone());
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
        let console = console_for(&realm.issuer(), "http://127.0.0.1:9", "http://127.0.0.1:9")?;
        let mut b = Browser::new(console);
        let login = b.get("/console/login?return=//evil.example/").await?;
        ensure!(login.status == StatusCode::SEE_OTHER);
        // Another browser (no binding cookie) brings the state back.
        let state = reqwest::Url::parse(&login.location)?
            .query_pairs()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned())
            .context("no state")?;
        b.forget_cookies();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_signs_in_again_and_returns_to_the_page() -> Result<()> {
    let realm = DemoRealm::create("consoleexp").await?;
    let result = async {
        let console = console_with(
            &realm.issuer(),
            "http://127.0.0.1:9",
            "http://127.0.0.1:9",
            &["--session-idle-secs", "1", "--session-max-secs", "1"],
        )?;
        let mut b = Browser::new(console);
        let first = b.get("/console/").await?;
        let landed = b.sign_in(first, "carol.compliance").await?;
        ensure!(landed.status == StatusCode::SEE_OTHER && landed.location == "/console/");
        let home = b.get("/console/").await?;
        ensure!(home.status == StatusCode::OK, "home: {}", home.status);
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let page = "/console/compliance/break-glass?patient=p%201";
        let expired = b.get(page).await?;
        ensure!(
            expired.status == StatusCode::SEE_OTHER
                && expired.location
                    == "/console/login?return=%2Fconsole%2Fcompliance%2Fbreak-glass%3Fpatient%3Dp%25201",
            "expired session: {} {}",
            expired.status,
            expired.location
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;
    realm.delete().await;
    result
}
