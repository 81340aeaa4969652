//! The console in a real browser (headless Chromium over WebDriver, `support::browser`), each
//! demo user signing in through Keycloak's real login page (`support::console_stack` starts
//! the realm, the query API and the console):
//!
//! - the harness itself against Keycloak's own account console (a realm with Keycloak's
//!   defaults: the demo realm file sets its own client scopes, which the account console's
//!   single-page app does not get on with);
//! - the compliance officer's patient access report and its CSV export against the API's;
//! - a user without a Custos role sees and reaches no page;
//! - an expired session signs in again and comes back to the same page.
//!
//! With `CUSTOS_SCREENSHOTS=docs/screenshots` the tests save each role's main page there
//! (the README's pictures).

mod support;

use anyhow::{ensure, Result};
use custos_tests::unique;

use fantoccini::Locator;
use support::browser::Browser;
use support::console_stack::{
    seed_accesses, sign_in_to, table_rows, ConsoleStack, PASSWORD as DEMO_PASSWORD,
};
use support::keycloak::{kc_url, Kc};

const ACCOUNT_PASSWORD: &str = "Browser-user-pass-0123456789";
const PASSWORD: &str = DEMO_PASSWORD;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_in_to_keycloaks_account_console() -> Result<()> {
    let kc = Kc::new();
    let realm = unique("browser").replace('-', "");
    kc.create_realm_with_roles(&realm, 300, &[]).await?;
    kc.create_user(
        &realm,
        "carol.browser",
        "Carol",
        "Browser",
        ACCOUNT_PASSWORD,
    )
    .await?;
    let browser = Browser::start("keycloak-account").await?;
    let account = format!("{}/realms/{realm}/account", kc_url());
    let outcome = async {
        browser.goto(&account).await?;
        browser
            .keycloak_sign_in("carol.browser", ACCOUNT_PASSWORD, |u| {
                u.starts_with(&account)
            })
            .await?;
        // The account console's personal-info form, filled with the signed-in user's data.
        browser.wait_text("Personal info").await?;
        for (field, want) in [
            ("username", "carol.browser"),
            ("email", "carol.browser@example.org"),
            ("firstName", "Carol"),
        ] {
            let input = browser
                .wait_for(&format!("input#{field}, input[name='{field}']"))
                .await?;
            let value = input.prop("value").await?.unwrap_or_default();
            ensure!(value == want, "{field}: {value:?}, expected {want:?}");
        }
        Ok(())
    }
    .await;
    let outcome = browser.finish(outcome).await;
    kc.delete_realm(&realm).await;
    outcome
}

// ------------------------------------------------------------------ the console

/// The compliance officer's main task: the patient access report for a patient seeded through
/// Kafka and the ingest, its chart and top list, and the CSV export downloaded by the browser,
/// byte for byte the query API's own CSV for the same parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_officer_reports_a_patients_accesses_and_exports_the_csv() -> Result<()> {
    let seeded = seed_accesses().await?;
    let stack = ConsoleStack::start("compliance", &[]).await?;
    let browser = Browser::start("console-compliance").await?;
    let outcome = async {
        let access = "/console/compliance/access";
        sign_in_to(&browser, &stack, "carol.compliance", access).await?;
        browser.wait_text("Signed in as carol.compliance").await?;
        browser.fill("Patient id", &seeded.patient).await?;
        browser.fill("Tenant", &seeded.tenant).await?;
        browser.fill("From (UTC)", seeded.from).await?;
        browser.fill("To (UTC, exclusive)", seeded.to).await?;
        browser.click_named("Show accesses").await?;
        browser.wait_text("Who accessed most").await?;
        let rows = table_rows(&browser, "Accesses to the patient's record").await?;
        ensure!(rows.len() == 5, "{} access rows: {rows:#?}", rows.len());
        ensure!(
            rows.iter().filter(|r| r.contains("dr-alice")).count() == 3
                && rows.iter().filter(|r| r.contains("dr-bob")).count() == 2,
            "{rows:#?}"
        );
        ensure!(rows.iter().any(|r| r.contains("deny")), "{rows:#?}");
        // Who accessed most: alice (3) before bob (2).
        let top = table_rows(&browser, "Users with the most accesses").await?;
        ensure!(
            top.len() == 2 && top[0].contains("dr-alice") && top[0].contains('3'),
            "top list: {top:?}"
        );
        // The charts, each with a text alternative.
        browser.wait_for("svg").await?;
        browser.doc_screenshot("compliance_officer").await?;

        // The export, downloaded by the browser, equals the API's CSV.
        browser.click_named("Export all rows as CSV").await?;
        let file = browser.wait_download().await?;
        let downloaded = std::fs::read_to_string(&file)?;
        let token = stack.staff_token("carol.compliance").await?;
        let (status, ct, api_csv) = stack
            .api_get(
                &support::url(
                    "/v1/reports/patient-access",
                    &[
                        ("patient", &seeded.patient),
                        ("tenant", &seeded.tenant),
                        ("from", seeded.from),
                        ("to", seeded.to),
                        ("format", "csv"),
                    ],
                ),
                &token,
            )
            .await?;
        ensure!(
            status == 200 && ct.starts_with("text/csv"),
            "API: {status} {ct} {api_csv}"
        );
        ensure!(api_csv.lines().count() == 6, "API CSV: {api_csv}");
        ensure!(
            downloaded == api_csv,
            "the console's export differs from the API's CSV:\n{downloaded}\n---\n{api_csv}"
        );
        Ok(())
    }
    .await;
    let outcome = browser.finish(outcome).await;
    stack.stop().await;
    outcome
}

/// A user without a Custos role (the demo patient) sees no page in the navigation, and a
/// compliance page typed as a URL answers 403 with the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_a_role_can_neither_see_nor_reach_a_page() -> Result<()> {
    let stack = ConsoleStack::start("norole", &[]).await?;
    let browser = Browser::start("console-norole").await?;
    let outcome = async {
        sign_in_to(&browser, &stack, "pat.patient", "/console/").await?;
        browser.wait_text("Signed in as pat.patient").await?;
        browser.wait_text("No Custos role").await?;
        let links = browser.client.find_all(Locator::Css("nav a")).await?;
        ensure!(
            links.is_empty(),
            "{} navigation links for a user without a role",
            links.len()
        );

        let access = stack.page("/console/compliance/access");
        browser.goto(&access).await?;
        browser.wait_text("No Custos role").await?;
        ensure!(
            browser.url().await? == access,
            "redirected away: {}",
            browser.url().await?
        );
        ensure!(
            browser
                .client
                .find_all(Locator::Css("nav a"))
                .await?
                .is_empty(),
            "navigation on the refused page"
        );
        ensure!(
            !browser.body_text().await?.contains("Show accesses"),
            "the report form is shown"
        );
        // The same request with the browser's session cookie: 403.
        let cookies = browser.cookie_header().await?;
        let resp = support::keycloak::http()
            .get(&access)
            .header("Cookie", cookies)
            .send()
            .await?;
        ensure!(resp.status() == 403, "typed URL answered {}", resp.status());
        Ok(())
    }
    .await;
    let outcome = browser.finish(outcome).await;
    stack.stop().await;
    outcome
}

/// A session that ends (here after 4 s idle) goes back through Keycloak's login page and
/// returns to the page the user was on, filters included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_signs_in_again_and_returns_to_the_same_page() -> Result<()> {
    let stack = ConsoleStack::start(
        "expiry",
        &[
            ("CUSTOS_CONSOLE_SESSION_IDLE_SECS", "4"),
            ("CUSTOS_CONSOLE_SESSION_MAX_SECS", "600"),
        ],
    )
    .await?;
    let browser = Browser::start("console-expiry").await?;
    let outcome = async {
        let disclosures = "/console/compliance/disclosures?patient=RAWPAT-expiry&from=2026-03-01";
        sign_in_to(&browser, &stack, "carol.compliance", disclosures).await?;
        browser.wait_text("Signed in as carol.compliance").await?;
        // Keycloak's own session would sign the user in again without a form: end it too, so
        // that the login page shows. Its cookies live under the realm's path, so they are
        // deleted from a page there; the console's cookie is left as it is.
        browser
            .goto(&format!(
                "{}/.well-known/openid-configuration",
                stack.issuer()
            ))
            .await?;
        for c in browser.client.get_all_cookies().await? {
            let name = c.name().to_owned();
            if name.starts_with("KEYCLOAK_") || name.starts_with("AUTH_SESSION_ID") {
                browser.client.delete_cookie(&name).await?;
            }
        }
        // The idle limit passes: the thing under test is time itself.
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        // The user comes back to the console's tab.
        browser.goto(&stack.page(disclosures)).await?;
        browser.wait_for("input#username").await?;
        let back = stack.page(disclosures);
        browser
            .keycloak_sign_in("carol.compliance", PASSWORD, |u| u.starts_with(&stack.url))
            .await?;
        let url = browser
            .wait_url("back on the same page", |u| u == back)
            .await?;
        ensure!(url == back, "{url}");
        browser.wait_text("Signed in as carol.compliance").await?;
        let patient = browser.field("Patient id").await?;
        ensure!(
            patient.prop("value").await?.as_deref() == Some("RAWPAT-expiry"),
            "the filters were lost"
        );
        Ok(())
    }
    .await;
    let outcome = browser.finish(outcome).await;
    stack.stop().await;
    outcome
}
