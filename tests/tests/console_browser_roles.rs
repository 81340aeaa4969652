//! The console in a real browser, one role's main task each (see `console_browser.rs` for the
//! harness and the compliance officer):
//!
//! - the privacy officer revokes a real Keycloak consent through the console (reason, then
//!   the confirmation step), follows its delivery until Keycloak has it, and Keycloak's token
//!   introspection then says the patient app's tokens are inactive;
//! - the incident responder traces a seeded token by its jti and sees its timeline;
//! - the auditor verifies the seeded events' hash chain.
//!
//! With `CUSTOS_SCREENSHOTS=docs/screenshots` each test saves its role's main page there.

mod support;

use anyhow::{ensure, Result};
use custos_tests::unique;
use fantoccini::Locator;
use serde_json::json;

use support::browser::Browser;
use support::consent::{grant_and_wait, Service, Setup};
use support::console_stack::{seed_accesses, sign_in_to, table_rows, ConsoleStack};
use support::keycloak::Kc;

/// The privacy officer's main task: revoke a patient's consent to an app, see the revocation
/// delivered, and Keycloak says the app's tokens are dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_officer_revokes_a_consent_and_keycloak_says_inactive() -> Result<()> {
    let mut stack = ConsoleStack::create().await?;
    let realm = stack.realm_name.clone();
    let kc = Kc::new();
    // A real consent: a patient of the realm signs in to a consent-required SMART app and
    // accepts its consent screen; the consent service learns of it from the AS event.
    let prepared = async {
        kc.add_consent_client(&realm).await?;
        let user_id = kc.add_patient(&realm, "patient-browser").await?;
        let tokens = kc.login_with_consent(&realm, "patient-browser").await?;
        ensure!(
            kc.active(&realm, &tokens.access).await?,
            "fresh token inactive"
        );
        let officer = stack.staff_token("paul.privacy").await?;
        let setup = Setup::create("console-privacy", &realm, &officer, json!([])).await?;
        let svc = Service::spawn(
            &setup,
            &unique("cg"),
            // The console's tokens carry the consent service's audience of the demo realm.
            &[("CUSTOS_OIDC_AUDIENCE", "custos-consent")],
        )?;
        svc.wait_ready().await?;
        let (_, consent_id) = grant_and_wait(&svc, &setup, &user_id).await?;
        Ok((user_id, tokens, svc, consent_id))
    }
    .await;
    let (user_id, tokens, svc, consent_id) = match prepared {
        Ok(p) => p,
        Err(e) => {
            stack.stop().await;
            return Err(e);
        }
    };
    stack
        .run(
            "privacy",
            &[("CUSTOS_CONSOLE_CONSENT_URL", svc.url.as_str())],
        )
        .await?;
    let browser = Browser::start("console-privacy").await?;
    let outcome = async {
        sign_in_to(
            &browser,
            &stack,
            "paul.privacy",
            "/console/privacy/consents",
        )
        .await?;
        browser.wait_text("Signed in as paul.privacy").await?;
        browser.fill("Patient id", &user_id).await?;
        browser.fill("Tenant", &realm).await?;
        browser.click_named("Show consents").await?;
        browser.wait_text(&format!("Consent {consent_id}")).await?;
        browser.wait_text("active").await?;
        browser.doc_screenshot("privacy_officer").await?;
        browser
            .fill("Reason for revoking", "patient withdrew consent by phone")
            .await?;
        browser
            .click_named(&format!("Revoke consent {consent_id}..."))
            .await?;
        browser.wait_text("Confirm the revocation").await?;
        browser
            .click_named(&format!("Yes, revoke consent {consent_id}"))
            .await?;
        browser
            .wait_url("the delivery page", |u| {
                u.contains("/console/privacy/revocations")
            })
            .await?;
        // The page refreshes itself while a target is pending; Keycloak's row turns delivered.
        let start = std::time::Instant::now();
        loop {
            let rows = table_rows(&browser, "Delivery per target")
                .await
                .unwrap_or_default();
            if rows
                .iter()
                .any(|r| r.contains("keycloak") && r.contains("delivered"))
            {
                break;
            }
            ensure!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "Keycloak's delivery not shown as delivered: {rows:#?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        // Keycloak itself: the app's tokens are inactive.
        ensure!(
            !kc.active(&realm, &tokens.access).await?,
            "access token still active after the revocation"
        );
        ensure!(
            !kc.active(&realm, &tokens.refresh).await?,
            "offline token still active after the revocation"
        );
        Ok(())
    }
    .await;
    let outcome = browser.finish(outcome).await;
    drop(svc);
    stack.stop().await;
    outcome
}

/// The incident responder's main task: the trace of a token seeded through Kafka, as a
/// timeline of its issue and each access made with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_responder_traces_a_token() -> Result<()> {
    let seeded = seed_accesses().await?;
    let stack = ConsoleStack::start("incident", &[]).await?;
    let browser = Browser::start("console-incident").await?;
    let outcome = async {
        sign_in_to(
            &browser,
            &stack,
            "ingrid.incident",
            "/console/incident/trace",
        )
        .await?;
        browser.wait_text("Signed in as ingrid.incident").await?;
        browser.fill("Token id (jti)", &seeded.jti).await?;
        browser.fill("Tenant", &seeded.tenant).await?;
        browser.fill("From (UTC)", seeded.from).await?;
        browser.fill("To (UTC, exclusive)", seeded.to).await?;
        browser.click_named("Trace").await?;
        browser.wait_text("Timeline").await?;
        // Issued, then the three reads made with the token (the other user's are not).
        let events = browser
            .client
            .find_all(Locator::Css("main ol.timeline > li, main ol > li"))
            .await?;
        let mut texts = Vec::new();
        for e in &events {
            texts.push(e.text().await?);
        }
        ensure!(
            texts.len() == 4,
            "{} timeline entries: {texts:#?}",
            texts.len()
        );
        ensure!(
            texts[0].contains("issued") || texts[0].contains("token"),
            "first entry: {texts:#?}"
        );
        for r in ["Observation", "Patient", "Condition"] {
            ensure!(
                texts.iter().any(|t| t.contains(r)),
                "no read of {r}: {texts:#?}"
            );
        }
        browser.doc_screenshot("incident_responder").await?;
        Ok(())
    }
    .await;
    let outcome = browser.finish(outcome).await;
    stack.stop().await;
    outcome
}

/// The auditor's main task: verify the hash chain of the seeded events' topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditor_verifies_the_chains() -> Result<()> {
    let seeded = seed_accesses().await?;
    let stack = ConsoleStack::start("auditor", &[]).await?;
    let browser = Browser::start("console-auditor").await?;
    let outcome = async {
        sign_in_to(
            &browser,
            &stack,
            "arthur.auditor",
            "/console/audit/integrity",
        )
        .await?;
        browser.wait_text("Signed in as arthur.auditor").await?;
        browser.fill("Topic", &seeded.topic).await?;
        browser.fill("Partition", "0").await?;
        browser.click_named("Verify now").await?;
        browser.wait_text("Every chain verified.").await?;
        let rows = table_rows(&browser, "Integrity per chain").await?;
        ensure!(rows.len() == 1, "{rows:#?}");
        ensure!(
            rows[0].contains(&seeded.topic)
                && rows[0].contains("verified")
                && rows[0].contains('6'),
            "{rows:#?}"
        );
        browser.doc_screenshot("auditor").await?;
        Ok(())
    }
    .await;
    let outcome = browser.finish(outcome).await;
    stack.stop().await;
    outcome
}
