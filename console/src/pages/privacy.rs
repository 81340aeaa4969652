//! Privacy officer: a patient's consents with their history as a timeline; revoking one with
//! a reason and a confirmation step (form posts with the CSRF token); the revocation's
//! delivery to the AS and the SSF receivers as it progresses (the page refreshes itself while
//! a target is pending); revocation violations.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{
    check_id, check_tenant, check_time, link, p, pager, params, render, rows, select, status_of,
    table, window, Col,
};
use crate::api::Api;
use crate::app::{check_post, Console, User};
use crate::html::{self, field, CONSENTS, REVOCATIONS, REVOKE, VIOLATIONS_PAGE};

/// Delivery states that are final (a target in another state is still being pushed).
const FINAL_STATES: &[&str] = &["delivered", "failed", "skipped"];

fn consent_card(c: &Value, may_revoke: bool, csrf: &str, tenant: &str, patient: &str) -> Markup {
    let cur = &c["current"];
    let id = html::text(&cur["consent_id"]);
    let status = html::text(&cur["status"]);
    let mut history: Vec<&Value> = c["history"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    history.sort_by_key(|h| html::utc(&h["event_time"]));
    let revocations = c["revocations"].as_array().cloned().unwrap_or_default();
    html! {
        section class="card" aria-labelledby=(format!("c-{id}")) {
            h2 id=(format!("c-{id}")) { "Consent " (id) }
            dl class="facts" {
                dt { "Status" } dd { span class=(if status == "active" { "ok" } else { "bad" }) { (status) } }
                dt { "Application (client)" } dd { (html::text(&cur["client_id"])) }
                dt { "Scopes" } dd { (html::text(&cur["scopes"])) }
                dt { "Purpose" } dd { (html::text(&cur["purpose"])) }
                dt { "Period (UTC)" } dd { (period(&html::utc(&cur["period_start"]), &html::utc(&cur["period_end"]))) }
                dt { "Last change (UTC)" } dd { (html::utc(&cur["updated_at"])) }
            }
            h3 { "History" }
            @if history.is_empty() { p { "No recorded history." } }
            ol class="timeline" {
                @for h in &history {
                    li class=[(html::text(&h["status"]) == "revoked").then_some("flagged")] {
                        time { (html::utc(&h["event_time"])) } " "
                        strong { (html::text(&h["status"])) }
                        @let effect = html::text(&h["effect"]);
                        @if !effect.is_empty() { " (" (effect) ")" }
                        @let actor = html::text(&h["actor"]);
                        @if !actor.is_empty() { " by " (actor) }
                        @let reason = html::text(&h["reason"]);
                        @if !reason.is_empty() { ": " (reason) }
                    }
                }
            }
            @if !revocations.is_empty() {
                h3 { "Revocation deliveries" }
                (delivery_table(&revocations))
            }
            @if status == "active" && may_revoke {
                form method="post" action="/console/privacy/revoke" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="consent_id" value=(id);
                    input type="hidden" name="tenant" value=(tenant);
                    input type="hidden" name="patient" value=(patient);
                    input type="hidden" name="step" value="confirm";
                    div class="field" {
                        label for=(format!("reason-{id}")) { "Reason for revoking" }
                        textarea id=(format!("reason-{id}")) name="reason" rows="2" required maxlength="1000" {}
                    }
                    p { button type="submit" class="danger" { "Revoke consent " (id) "..." } }
                }
            }
        }
    }
}

fn delivery_table(rows: &[Value]) -> Markup {
    table(
        "Delivery per target (times in UTC)",
        rows,
        &[
            ("revocation_id", "Revocation", Col::Text),
            ("target", "Target", Col::Text),
            ("state", "State", Col::Text),
            ("attempts", "Attempts", Col::Num),
            ("requested_at", "Requested (UTC)", Col::Time),
            ("acked_at", "Acknowledged (UTC)", Col::Time),
            ("latency_ms", "Latency (ms)", Col::Num),
            ("detail", "Detail", Col::Text),
        ],
        Some(&|r: &Value| {
            if html::text(&r["state"]) == "failed" {
                vec!["failed"]
            } else {
                Vec::new()
            }
        }),
    )
}

/// `GET /console/privacy/consents`.
pub async fn consents(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(CONSENTS.roles) {
        return r;
    }
    let q = params(raw.as_deref());
    let asked = q.contains_key("patient");
    let mut errors = Vec::new();
    if asked {
        check_id("Patient id", p(&q, "patient"), true, &mut errors);
        check_tenant(p(&q, "tenant"), &mut errors);
        check_id("Application", p(&q, "client_id"), false, &mut errors);
    }
    let mut status = status_of(&errors);
    let may_revoke = user.may(REVOKE);
    let result = if asked && errors.is_empty() {
        let call = [
            ("patient", p(&q, "patient")),
            ("tenant", p(&q, "tenant")),
            ("client_id", p(&q, "client_id")),
        ];
        match console
            .api
            .get(Api::Consent, "/v1/consents", &call, user.token())
            .await
        {
            Ok(a) => {
                let list = a["consents"].as_array().cloned().unwrap_or_default();
                let tenant = html::text(&a["tenant"]);
                html! {
                    p { (list.len()) " consent(s) in tenant " strong { (tenant) } "." }
                    @for c in &list { (consent_card(c, may_revoke, &user.session.csrf, &tenant, p(&q, "patient"))) }
                }
            }
            Err(f) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, CONSENTS.roles)
            }
        }
    } else {
        html! {}
    };
    let body = html! {
        h1 { (CONSENTS.title) }
        p { "A patient's consents, their history, and the delivery of revocations." }
        (html::invalid(&errors))
        form class="filters" method="get" action=(CONSENTS.path) {
            (field("patient", "Patient id", p(&q, "patient"), None))
            (field("tenant", "Tenant", p(&q, "tenant"), Some("Empty: the default tenant.")))
            (field("client_id", "Application (client)", p(&q, "client_id"), Some("Optional.")))
            div class="field" { button type="submit" { "Show consents" } }
        }
        (result)
    };
    render(status, &CONSENTS, &user, body)
}

/// The revoke form's fields.
#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    consent_id: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    patient: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    step: String,
}

/// `POST /console/privacy/revoke`: `step=confirm` shows what will happen; `step=revoke`
/// (from that page) revokes and goes to the delivery page.
pub async fn revoke(
    State(console): State<Arc<Console>>,
    user: User,
    headers: HeaderMap,
    Form(f): Form<RevokeForm>,
) -> Response {
    if let Some(r) = user.refuse(REVOKE) {
        return r;
    }
    if let Some(r) = check_post(&console, &user, &headers, &f.csrf) {
        return r;
    }
    let mut errors = Vec::new();
    check_id("Consent id", f.consent_id.trim(), true, &mut errors);
    check_tenant(f.tenant.trim(), &mut errors);
    let reason = f.reason.trim();
    if reason.is_empty() {
        errors.push("A reason is required.".into());
    } else if reason.len() > 1000 {
        errors.push("The reason must be at most 1000 characters.".into());
    }
    let back = link(
        CONSENTS.path,
        &[("patient", f.patient.trim()), ("tenant", f.tenant.trim())],
    );
    let v = user.viewer();
    if !errors.is_empty() {
        let body = html! {
            h1 { "Revoke a consent" }
            (html::invalid(&errors))
            p { a href=(back) { "Back to the consents" } }
        };
        return html::page(
            StatusCode::BAD_REQUEST,
            html::layout("Revoke a consent", Some(&v), CONSENTS.path, body),
        );
    }
    if f.step != "revoke" {
        let body = html! {
            h1 { "Confirm the revocation" }
            p role="alert" { "You are about to revoke consent " strong { (f.consent_id) } ". "
                "The application loses access: its tokens are revoked at the authorization server and the SSF receivers are told. This cannot be undone here." }
            dl class="facts" { dt { "Reason" } dd { (reason) } }
            form method="post" action="/console/privacy/revoke" {
                input type="hidden" name="csrf" value=(user.session.csrf);
                input type="hidden" name="consent_id" value=(f.consent_id);
                input type="hidden" name="tenant" value=(f.tenant);
                input type="hidden" name="patient" value=(f.patient);
                input type="hidden" name="reason" value=(reason);
                input type="hidden" name="step" value="revoke";
                p { button type="submit" class="danger" { "Yes, revoke consent " (f.consent_id) }
                    " " a class="button secondary" href=(back) { "Cancel" } }
            }
        };
        return html::page(
            StatusCode::OK,
            html::layout("Confirm the revocation", Some(&v), CONSENTS.path, body),
        );
    }
    // The same confirmation sent twice is one revocation (the API's idempotency window).
    let key = hex_sha(&[&user.sid, &f.consent_id, reason]);
    let path = format!(
        "/v1/consents/{}/revoke",
        form_urlencoded::byte_serialize(f.consent_id.trim().as_bytes()).collect::<String>()
    );
    let mut body = json!({"reason": reason});
    if !f.tenant.trim().is_empty() {
        body["tenant"] = json!(f.tenant.trim());
    }
    match console
        .api
        .post(Api::Consent, &path, &body, user.token(), &key)
        .await
    {
        Ok(a) => {
            let id = a["revocations"][0]["revocationId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Redirect::to(&link(
                REVOCATIONS.path,
                &[
                    ("id", &id),
                    ("consent", f.consent_id.trim()),
                    ("patient", f.patient.trim()),
                    ("tenant", f.tenant.trim()),
                ],
            ))
            .into_response()
        }
        Err(e) => html::page(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY),
            html::layout(
                "Revocation failed",
                Some(&v),
                CONSENTS.path,
                html! {
                    h1 { "Revocation failed" }
                    (html::problem(&e, REVOKE))
                    p { a href=(back) { "Back to the consents" } }
                },
            ),
        ),
    }
}

fn hex_sha(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET /console/privacy/revocations`: one revocation's delivery (refreshing itself while a
/// target is pending), or the latest deliveries.
pub async fn revocations(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(REVOCATIONS.roles) {
        return r;
    }
    let q = params(raw.as_deref());
    let id = p(&q, "id");
    let state = p(&q, "state");
    let mut errors = Vec::new();
    check_id("Revocation id", id, false, &mut errors);
    super::check_choice(
        "State",
        state,
        &["requested", "delivered", "failed", "skipped"],
        &mut errors,
    );
    let v = user.viewer();
    if !errors.is_empty() {
        let body = html! { h1 { (REVOCATIONS.title) } (html::invalid(&errors)) };
        return html::page(
            StatusCode::BAD_REQUEST,
            html::layout(REVOCATIONS.title, Some(&v), REVOCATIONS.path, body),
        );
    }
    let mut refresh = false;
    let mut status = StatusCode::OK;
    let result = if id.is_empty() {
        match console
            .api
            .get(
                Api::Consent,
                "/v1/revocations",
                &[("state", state), ("limit", "200")],
                user.token(),
            )
            .await
        {
            Ok(a) => {
                let rs = a["revocations"].as_array().cloned().unwrap_or_default();
                html! {
                    form class="filters" method="get" action=(REVOCATIONS.path) {
                        (select("state", "State", state, &[("", "any"), ("requested", "requested (pending)"), ("delivered", "delivered"), ("failed", "failed"), ("skipped", "skipped")]))
                        div class="field" { button type="submit" { "Show" } }
                    }
                    p { "The latest " (rs.len()) " delivery states (at most 200)." }
                    (delivery_table(&rs))
                    ul { @for r in rs.iter().take(50) {
                        li { a href=(link(REVOCATIONS.path, &[("id", &html::text(&r["revocation_id"]))])) { "Attempts of " (html::text(&r["revocation_id"])) " (" (html::text(&r["target"])) ")" } }
                    } }
                }
            }
            Err(f) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, REVOCATIONS.roles)
            }
        }
    } else {
        let path = format!(
            "/v1/revocations/{}/attempts",
            form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
        );
        let states = console
            .api
            .get(
                Api::Consent,
                "/v1/revocations",
                &[("limit", "10000")],
                user.token(),
            )
            .await;
        let attempts = console
            .api
            .get(Api::Consent, &path, &[], user.token())
            .await;
        match (states, attempts) {
            (Ok(s), Ok(a)) => {
                let mine: Vec<Value> = s["revocations"]
                    .as_array()
                    .map(|rs| {
                        rs.iter()
                            .filter(|r| r["revocation_id"].as_str() == Some(id))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                refresh = mine.is_empty()
                    || mine
                        .iter()
                        .any(|r| !FINAL_STATES.contains(&html::text(&r["state"]).as_str()));
                let att = a["attempts"].as_array().cloned().unwrap_or_default();
                let back = link(
                    CONSENTS.path,
                    &[("patient", p(&q, "patient")), ("tenant", p(&q, "tenant"))],
                );
                html! {
                    @if refresh {
                        p class="notice" role="status" { "Delivery in progress: this page refreshes every 3 seconds until every target has a final state." }
                    } @else {
                        p class="notice" role="status" { "Every target has a final state." }
                    }
                    h2 { "Targets" }
                    @if mine.is_empty() { p { "The revocation is recorded; its deliveries are being planned." } }
                    (delivery_table(&mine))
                    h2 { "Attempts" }
                    (table("Every attempt with the receiver's answer (times in UTC)", &att, &[
                        ("target", "Target", Col::Text),
                        ("attempt", "Attempt", Col::Num),
                        ("started_at", "Started (UTC)", Col::Time),
                        ("duration_ms", "Duration (ms)", Col::Num),
                        ("outcome", "Outcome", Col::Text),
                        ("http_status", "HTTP status", Col::Num),
                        ("error_code", "Error", Col::Text),
                        ("receipt", "Receipt", Col::Text),
                        ("detail", "Detail", Col::Text),
                    ], None))
                    @if !p(&q, "patient").is_empty() { p { a href=(back) { "Back to the patient's consents" } } }
                }
            }
            (Err(f), _) | (_, Err(f)) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, REVOCATIONS.roles)
            }
        }
    };
    let title = if id.is_empty() {
        REVOCATIONS.title.to_owned()
    } else {
        format!("Delivery of revocation {id}")
    };
    let body = html! {
        h1 { (title) }
        (result)
    };
    html::page(
        status,
        html::layout_with(
            &title,
            Some(&v),
            REVOCATIONS.path,
            body,
            refresh.then_some(3),
        ),
    )
}

/// `GET /console/privacy/violations`.
pub async fn violations(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(VIOLATIONS_PAGE.roles) {
        return r;
    }
    let q: HashMap<String, String> = params(raw.as_deref());
    let keys = ["patient", "client", "tenant", "from", "to"];
    let filters: Vec<(&str, &str)> = keys.iter().map(|k| (*k, p(&q, k))).collect();
    let mut errors = Vec::new();
    check_id("Patient id", p(&q, "patient"), false, &mut errors);
    check_id("Application", p(&q, "client"), false, &mut errors);
    check_tenant(p(&q, "tenant"), &mut errors);
    check_time("From", p(&q, "from"), &mut errors);
    check_time("To", p(&q, "to"), &mut errors);
    let cursor = p(&q, "cursor");
    let mut status = status_of(&errors);
    let result = if errors.is_empty() {
        let limit = console.cfg.page_rows.to_string();
        let mut call = filters.clone();
        call.push(("limit", &limit));
        call.push(("cursor", cursor));
        match console
            .api
            .get(
                Api::Query,
                "/v1/reports/revocation-violations",
                &call,
                user.token(),
            )
            .await
        {
            Ok(a) => html! {
                (window(&a))
                (table("Accesses permitted after a consent revocation (times in UTC)", rows(&a), &[
                    ("event_time", "Access (UTC)", Col::Time),
                    ("revoked_at", "Revoked (UTC)", Col::Time),
                    ("consent_id", "Consent", Col::Text),
                    ("user_sub", "User", Col::Text),
                    ("fhir_user", "fhirUser", Col::Text),
                    ("client_id", "Application", Col::Text),
                    ("token_jti", "Token (jti)", Col::Text),
                    ("interaction", "Interaction", Col::Text),
                    ("resource_type", "Resource", Col::Text),
                    ("source_ip", "IP", Col::Text),
                ], None))
                (pager(VIOLATIONS_PAGE.path, &filters, cursor, &a))
            },
            Err(f) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, VIOLATIONS_PAGE.roles)
            }
        }
    } else {
        html! {}
    };
    let body = html! {
        h1 { (VIOLATIONS_PAGE.title) }
        p { "Accesses that were permitted after the patient's consent was revoked (past the grace period)." }
        (html::invalid(&errors))
        form class="filters" method="get" action=(VIOLATIONS_PAGE.path) {
            (field("patient", "Patient id", p(&q, "patient"), Some("Optional.")))
            (field("client", "Application (client)", p(&q, "client"), Some("Optional.")))
            (field("tenant", "Tenant", p(&q, "tenant"), Some("Empty: the default tenant.")))
            (field("from", "From (UTC)", p(&q, "from"), None))
            (field("to", "To (UTC, exclusive)", p(&q, "to"), None))
            div class="field" { button type="submit" { "Show" } }
        }
        (result)
    };
    render(status, &VIOLATIONS_PAGE, &user, body)
}

/// A consent's period in words: an open end is said, not left blank.
fn period(start: &str, end: &str) -> String {
    match (start.is_empty(), end.is_empty()) {
        (true, true) => "not limited".to_owned(),
        (false, true) => format!("from {start}, no end"),
        (true, false) => format!("until {end}"),
        (false, false) => format!("{start} to {end}"),
    }
}

#[cfg(test)]
mod tests {
    use super::period;

    #[test]
    fn open_periods_are_said() {
        assert_eq!(period("", ""), "not limited");
        assert_eq!(
            period("2026-01-01T00:00:00.000Z", ""),
            "from 2026-01-01T00:00:00.000Z, no end"
        );
        assert_eq!(
            period("", "2027-01-01T00:00:00.000Z"),
            "until 2027-01-01T00:00:00.000Z"
        );
        assert_eq!(period("a", "b"), "a to b");
    }
}
