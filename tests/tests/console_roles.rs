//! The console's pages of the other roles, end to end over HTTP against the dev stack's
//! Keycloak (a fresh realm from `deploy/keycloak/realm-custos.json`), the query API in-process
//! over the query tests' seeded scenario, and a real consent service:
//!
//! - `ingrid.incident` traces a seeded token (timeline with its events) and is refused the
//!   compliance and audit pages with the role they need;
//! - `arthur.auditor` finds her trace in the query audit page, made through the console under
//!   her own subject;
//! - `paul.privacy` opens a patient's consents, revokes one with a reason through the
//!   confirmation step, and watches its delivery until every target has a final state; the
//!   consent is then revoked in the privacy API.

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use axum::http::StatusCode;
use custos_tests::{migrate, unique};
use serde_json::json;

use support::consent::{grant_and_wait, Service, Setup};
use support::console::{console_for, csrf_of, serve, Browser, ORIGIN};
use support::fhir_server::DemoRealm;
use support::keycloak::Kc;
use support::reports::scenario;
use support::state_for;

/// The value of the hidden input `name` in the first form of `body` that has one.
fn hidden(body: &str, name: &str) -> Result<String> {
    let key = format!("name=\"{name}\" value=\"");
    let at = body
        .find(&key)
        .with_context(|| format!("no {name} field"))?
        + key.len();
    let end = body[at..].find('"').context("unclosed value")? + at;
    Ok(body[at..end].to_owned())
}

/// A form body from pairs.
fn form(pairs: &[(&str, &str)]) -> String {
    reqwest::Url::parse_with_params("http://form.invalid/", pairs)
        .ok()
        .and_then(|u| u.query().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_traces_a_token_and_an_auditor_sees_it_in_the_query_audit() -> Result<()> {
    let s = scenario();
    let realm = DemoRealm::create("consoleir").await?;
    let result = async {
        let query = serve(custos_query::app(state_for(&realm.issuer(), &[]))).await?;
        let console = console_for(&realm.issuer(), &query, &query)?;
        let window = format!("tenant={}&from=2026-03-01&to=2026-03-02", s.tenant);
        let trace = format!("/console/incident/trace?jti=J1-{}&{window}", s.tenant);
        let mut ingrid = Browser::new(console.clone());
        let first = ingrid.get(&trace).await?;
        let landed = ingrid.sign_in(first, "ingrid.incident").await?;
        ensure!(landed.location == trace, "back to {}", landed.location);
        let page = ingrid.get(&trace).await?;
        ensure!(page.status == StatusCode::OK, "trace: {}", page.status);
        for want in [
            "class=\"timeline\"",
            "Token J1-",
            "ehr-app",
            "2026-03-01T10:01:00.000Z",
        ] {
            ensure!(page.body.contains(want), "the trace page lacks {want:?}");
        }
        // Pages of other roles: hidden from the navigation, 403 naming the role when typed.
        ensure!(!page.body.contains("/console/compliance/access\""));
        let other = ingrid
            .get(&format!(
                "/console/compliance/access?patient={}&{window}",
                s.p1
            ))
            .await?;
        ensure!(
            other.status == StatusCode::FORBIDDEN
                && other.body.contains("compliance officer or auditor"),
            "compliance page for a responder: {}",
            other.status
        );
        let audit = ingrid.get("/console/audit/queries").await?;
        ensure!(audit.status == StatusCode::FORBIDDEN && audit.body.contains("auditor"));
        // Bad input is a clear message, not a failed call.
        let both = ingrid
            .get("/console/incident/trace?jti=a&session=b")
            .await?;
        ensure!(both.status == StatusCode::BAD_REQUEST && both.body.contains("not both"));

        let ingrid_sub = Kc::new().user_id(&realm.name, "ingrid.incident").await?;
        let mut arthur = Browser::new(console);
        let queries = format!("/console/audit/queries?report=token-trace&{window}");
        let first = arthur.get(&queries).await?;
        arthur.sign_in(first, "arthur.auditor").await?;
        // The query-audit record is written with the answer; poll briefly.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let page = arthur
                .get(&format!(
                    "/console/audit/queries?report=token-trace&tenant={}",
                    s.tenant
                ))
                .await?;
            ensure!(
                page.status == StatusCode::OK,
                "query audit: {}",
                page.status
            );
            if page.body.contains(&ingrid_sub) && page.body.contains("custos-console") {
                break;
            }
            if Instant::now() > deadline {
                bail!("the responder's trace is not in the query audit page");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let integrity = arthur.get("/console/audit/integrity").await?;
        ensure!(integrity.status == StatusCode::OK && integrity.body.contains("Verify now"));
        Ok::<(), anyhow::Error>(())
    }
    .await;
    realm.delete().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privacy_officer_revokes_a_consent_and_watches_its_delivery() -> Result<()> {
    migrate()?;
    let realm = DemoRealm::create("consolepo").await?;
    let result = async {
        let kc = Kc::new();
        let patient = kc.user_id(&realm.name, "pat.patient").await?;
        let officer = realm.staff_token("paul.privacy").await?;
        let setup = Setup::create("console-privacy", &realm.name, &officer, json!([])).await?;
        let mut svc = Service::spawn(
            &setup,
            &unique("cgconsole"),
            &[("CUSTOS_OIDC_AUDIENCE", "custos-consent")],
        )?;
        let run = async {
            svc.wait_ready().await?;
            let (_, consent_id) = grant_and_wait(&svc, &setup, &patient).await?;
            let query = serve(custos_query::app(state_for(&realm.issuer(), &[]))).await?;
            let mut paul = Browser::new(console_for(&realm.issuer(), &query, &svc.url)?);
            let consents = format!(
                "/console/privacy/consents?patient={patient}&tenant={}",
                realm.name
            );
            let first = paul.get(&consents).await?;
            paul.sign_in(first, "paul.privacy").await?;
            let page = paul.get(&consents).await?;
            ensure!(page.status == StatusCode::OK, "consents: {}", page.status);
            ensure!(
                page.body.contains(&consent_id) && page.body.contains("class=\"timeline\""),
                "the consent and its history are not on the page"
            );
            let csrf = csrf_of(&page.body)?;
            let reason = "patient asked by phone to withdraw";
            let base = [
                ("csrf", csrf.as_str()),
                ("consent_id", consent_id.as_str()),
                ("tenant", realm.name.as_str()),
                ("patient", patient.as_str()),
                ("reason", reason),
            ];
            // No reason: refused with a message, nothing revoked.
            let mut empty = base.to_vec();
            empty[4] = ("reason", " ");
            empty.push(("step", "revoke"));
            let refused = paul
                .post("/console/privacy/revoke", &form(&empty), ORIGIN)
                .await?;
            ensure!(
                refused.status == StatusCode::BAD_REQUEST
                    && refused.body.contains("A reason is required")
            );
            let mut confirm = base.to_vec();
            confirm.push(("step", "confirm"));
            let asked = paul
                .post("/console/privacy/revoke", &form(&confirm), ORIGIN)
                .await?;
            ensure!(
                asked.status == StatusCode::OK && asked.body.contains("Confirm the revocation"),
                "confirmation step: {}",
                asked.status
            );
            ensure!(hidden(&asked.body, "step")? == "revoke");
            let mut go = base.to_vec();
            go.push(("step", "revoke"));
            let done = paul
                .post("/console/privacy/revoke", &form(&go), ORIGIN)
                .await?;
            ensure!(
                done.status == StatusCode::SEE_OTHER
                    && done
                        .location
                        .starts_with("/console/privacy/revocations?id="),
                "revoke: {} {} {}",
                done.status,
                done.location,
                done.body
            );
            // The delivery page refreshes itself until every target has a final state.
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let p = paul.get(&done.location).await?;
                ensure!(p.status == StatusCode::OK, "delivery: {}", p.status);
                let refreshing = p.body.contains("http-equiv=\"refresh\"");
                if p.body.contains("Every target has a final state") {
                    ensure!(!refreshing, "a final page still refreshes");
                    ensure!(
                        p.body.contains("keycloak"),
                        "no Keycloak target on the page"
                    );
                    break;
                }
                ensure!(refreshing, "a pending delivery page does not refresh");
                if Instant::now() > deadline {
                    bail!("the delivery did not finish: {}", p.body);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            svc.wait_consents(&realm.name, &patient, "the revocation", |v| {
                v["consents"][0]["current"]["status"] == "revoked"
            })
            .await?;
            Ok::<(), anyhow::Error>(())
        }
        .await;
        let _ = svc.stop();
        run
    }
    .await;
    realm.delete().await;
    result
}
