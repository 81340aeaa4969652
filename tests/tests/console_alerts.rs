//! The console's alert and break-glass review pages, end to end over HTTP against the dev
//! stack's Keycloak (a fresh demo realm) and the query API in-process on the real ClickHouse:
//!
//! - `ingrid.incident` lists the alerts of a tenant, opens one (its evidence and the link to
//!   its token's trace), acknowledges it with the page's form (CSRF token, same origin), and
//!   a form without the CSRF token is refused; she is refused the review queue;
//! - `carol.compliance` sees a break-glass opening as overdue and decides it with the page's
//!   form; she is refused the alerts.

mod support;

use anyhow::{ensure, Result};
use axum::http::StatusCode;
use custos_tests::{unique, Msg};
use serde_json::json;

use support::alerts::{alert, insert_alerts};
use support::console::{console_for, csrf_of, serve, Browser, ORIGIN};
use support::fhir_server::DemoRealm;
use support::reports::ce;
use support::{ensure_schema, state_for};

/// A form body from pairs.
fn form(pairs: &[(&str, &str)]) -> String {
    reqwest::Url::parse_with_params("http://form.invalid/", pairs)
        .ok()
        .and_then(|u| u.query().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_acknowledges_an_alert_and_an_officer_decides_a_review() -> Result<()> {
    ensure_schema()?;
    let tenant = unique("conal");
    let mut a = alert(&tenant, "console", 1, "critical");
    a.token_jti = format!("JTI-{tenant}");
    a.summary = "token used from 3 IP addresses".into();
    insert_alerts(std::slice::from_ref(&a)).await?;
    let opening = ce(
        &tenant,
        &format!("{tenant}-O1"),
        "custos.breakglass.opened",
        "2026-03-01T10:00:00Z",
        json!({"iss": "https://as.test/realms/general", "sub": "dr-bob", "fhirUser": "Practitioner/bob",
            "client_id": "ehr-app", "patient": "RAWPAT-console", "reason": "unconscious patient in ED",
            "expiresAt": "2026-03-01T11:00:00Z", "sourceIp": "10.0.0.7"}),
    );
    support::ingest_all("conal", &[], &[Msg::json(&opening)]).await?;
    let review_id = custos_schemas::row::event_key("//custos.test/query", &format!("{tenant}-O1"));

    let realm = DemoRealm::create("consoleal").await?;
    let result = async {
        let query = serve(custos_query::app(state_for(&realm.issuer(), &[]))).await?;
        let console = console_for(&realm.issuer(), &query, &query)?;
        let list = format!("/console/incident/alerts?tenant={tenant}");
        let one = format!("/console/incident/alert?id={}", a.alert_id);

        let mut ingrid = Browser::new(console.clone());
        let first = ingrid.get(&list).await?;
        ingrid.sign_in(first, "ingrid.incident").await?;
        let page = ingrid.get(&list).await?;
        ensure!(page.status == StatusCode::OK, "alerts: {}", page.status);
        ensure!(page.body.contains(&one) && page.body.contains("token used from 3 IP addresses"));
        let page = ingrid.get(&one).await?;
        ensure!(page.status == StatusCode::OK, "alert: {}", page.status);
        ensure!(
            page.body
                .contains(&format!("/console/incident/trace?jti=JTI-{tenant}")),
            "no link to the token trace"
        );
        ensure!(page.body.contains("<dd>open</dd>"));
        let csrf = csrf_of(&page.body)?;
        let fields = [
            ("id", a.alert_id.as_str()),
            ("action", "acknowledge"),
            ("note", "looking into it"),
        ];
        // Without the session's CSRF token the form is refused, and nothing is done.
        let refused = ingrid
            .post("/console/incident/alert/action", &form(&fields), ORIGIN)
            .await?;
        ensure!(
            refused.status == StatusCode::FORBIDDEN,
            "no CSRF: {}",
            refused.status
        );
        let mut with_csrf = vec![("csrf", csrf.as_str())];
        with_csrf.extend(fields);
        let done = ingrid
            .post("/console/incident/alert/action", &form(&with_csrf), ORIGIN)
            .await?;
        ensure!(
            done.status == StatusCode::SEE_OTHER && done.location == one,
            "acknowledge: {} {} {}",
            done.status,
            done.location,
            done.body
        );
        let page = ingrid.get(&one).await?;
        ensure!(
            page.body.contains("<dd>acknowledged</dd>"),
            "not acknowledged"
        );
        ensure!(page.body.contains("looking into it"));
        // A second acknowledge is the API's 409, shown with its detail.
        let again = ingrid
            .post("/console/incident/alert/action", &form(&with_csrf), ORIGIN)
            .await?;
        ensure!(
            again.status == StatusCode::CONFLICT && again.body.contains("already acknowledged"),
            "second acknowledge: {}",
            again.status
        );
        let reviews = ingrid
            .get(&format!("/console/compliance/reviews?tenant={tenant}"))
            .await?;
        ensure!(
            reviews.status == StatusCode::FORBIDDEN && reviews.body.contains("compliance officer")
        );

        let mut carol = Browser::new(console);
        let queue = format!("/console/compliance/reviews?tenant={tenant}");
        let first = carol.get(&queue).await?;
        carol.sign_in(first, "carol.compliance").await?;
        let page = carol.get(&queue).await?;
        ensure!(page.status == StatusCode::OK, "reviews: {}", page.status);
        ensure!(page.body.contains(&review_id) && page.body.contains(">overdue<"));
        ensure!(
            !page.body.contains("RAWPAT-console"),
            "raw patient id shown"
        );
        let csrf = csrf_of(&page.body)?;
        let decided = carol
            .post(
                "/console/compliance/reviews/decide",
                &form(&[
                    ("csrf", &csrf),
                    ("review_id", &review_id),
                    ("tenant", &tenant),
                    ("decision", "justified"),
                    ("note", "ED notes confirm the emergency"),
                ]),
                ORIGIN,
            )
            .await?;
        ensure!(
            decided.status == StatusCode::SEE_OTHER,
            "decide: {} {}",
            decided.status,
            decided.body
        );
        let page = carol.get(&format!("{queue}&decided=1")).await?;
        ensure!(page.body.contains("justified by"), "decision not shown");
        let alerts = carol.get(&list).await?;
        ensure!(
            alerts.status == StatusCode::FORBIDDEN && alerts.body.contains("incident responder")
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;
    realm.delete().await;
    result
}
