//! Compliance officer: the patient access report (filters, paged table, CSV export streamed
//! from the API, accesses over time by user and by role, who accessed most), the printable
//! accounting of disclosures, and the break-glass list.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use maud::{html, Markup};
use serde_json::Value;

use super::{
    check_choice, check_id, check_tenant, check_time, link, p, pager, params, render, rows, select,
    status_of, table, window, Col,
};
use crate::api::Api;
use crate::app::{Console, User};
use crate::chart;
use crate::html::{self, field, ACCESS, BREAK_GLASS, DISCLOSURES};

/// The patient-access filters the API has, in form order.
const ACCESS_FILTERS: &[&str] = &[
    "patient",
    "tenant",
    "from",
    "to",
    "user",
    "client",
    "resource_type",
    "interaction",
    "outcome",
    "purpose",
    "decision",
];

fn access_errors(q: &std::collections::HashMap<String, String>) -> Vec<String> {
    let mut e = Vec::new();
    check_id("Patient id", p(q, "patient"), true, &mut e);
    check_tenant(p(q, "tenant"), &mut e);
    check_time("From", p(q, "from"), &mut e);
    check_time("To", p(q, "to"), &mut e);
    for (k, label) in [
        ("user", "User"),
        ("client", "Client"),
        ("resource_type", "Resource type"),
        ("interaction", "Interaction"),
        ("purpose", "Purpose of use"),
    ] {
        check_id(label, p(q, k), false, &mut e);
    }
    check_choice("Outcome", p(q, "outcome"), &["success", "failure"], &mut e);
    check_choice("Decision", p(q, "decision"), &["permit", "deny"], &mut e);
    e
}

fn access_form(q: &std::collections::HashMap<String, String>) -> Markup {
    html! {
        form class="filters" method="get" action=(ACCESS.path) {
            (field("patient", "Patient id", p(q, "patient"), Some("The raw id, e.g. general-pat-00005; it is hashed by the API, never stored.")))
            (field("tenant", "Tenant", p(q, "tenant"), Some("Empty: the default tenant.")))
            (field("from", "From (UTC)", p(q, "from"), Some("2026-01-31 or 2026-01-31T08:00:00Z")))
            (field("to", "To (UTC, exclusive)", p(q, "to"), Some("Empty: now.")))
            (field("user", "User (sub or fhirUser)", p(q, "user"), None))
            (field("client", "Client", p(q, "client"), None))
            (field("resource_type", "Resource type", p(q, "resource_type"), None))
            (field("interaction", "Interaction", p(q, "interaction"), None))
            (select("outcome", "Outcome", p(q, "outcome"), &[("", "any"), ("success", "success"), ("failure", "failure")]))
            (field("purpose", "Purpose of use", p(q, "purpose"), None))
            (select("decision", "Decision", p(q, "decision"), &[("", "any"), ("permit", "permit"), ("deny", "deny")]))
            div class="field" { button type="submit" { "Show accesses" } }
        }
    }
}

/// `GET /console/compliance/access`.
pub async fn access(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(ACCESS.roles) {
        return r;
    }
    let q = params(raw.as_deref());
    let v = user.viewer();
    let asked = !p(&q, "patient").is_empty() || q.contains_key("from");
    let errors = if asked { access_errors(&q) } else { Vec::new() };
    let filters: Vec<(&str, &str)> = ACCESS_FILTERS.iter().map(|k| (*k, p(&q, k))).collect();
    let cursor = p(&q, "cursor");
    let mut status = status_of(&errors);
    let result = if asked && errors.is_empty() {
        let limit = console.cfg.page_rows.to_string();
        let mut call = filters.clone();
        call.push(("limit", &limit));
        call.push(("cursor", cursor));
        match console
            .api
            .get(
                Api::Query,
                "/v1/reports/patient-access",
                &call,
                user.token(),
            )
            .await
        {
            Ok(answer) => {
                // The chart and the top list from the first rows of the window (one more
                // audited call, on the first page only).
                let chart_part = if cursor.is_empty() {
                    let n = console.cfg.chart_rows.to_string();
                    let mut c = filters.clone();
                    c.push(("limit", &n));
                    match console
                        .api
                        .get(Api::Query, "/v1/reports/patient-access", &c, user.token())
                        .await
                    {
                        Ok(all) => charts(&all, console.cfg.chart_rows),
                        Err(f) => html::problem(&f, ACCESS.roles),
                    }
                } else {
                    html! {}
                };
                let csv = link("/console/compliance/access.csv", &filters);
                html! {
                    (window(&answer))
                    p class="no-print" { a class="button secondary" href=(csv) download { "Export all rows as CSV" }
                        " (streamed from the query API; the whole window with these filters)" }
                    (chart_part)
                    h2 { "Accesses" }
                    (table("Accesses to the patient's record (times in UTC)", rows(&answer), &[
                        ("event_time", "Time (UTC)", Col::Time),
                        ("user_sub", "User (sub)", Col::Text),
                        ("user_kind", "Role / kind", Col::Text),
                        ("fhir_user", "fhirUser", Col::Text),
                        ("client_id", "Client", Col::Text),
                        ("interaction", "Interaction", Col::Text),
                        ("resource_type", "Resource", Col::Text),
                        ("resource_id", "Resource id", Col::Text),
                        ("purpose_of_use", "Purpose", Col::Text),
                        ("decision", "Decision", Col::Text),
                        ("outcome", "Outcome", Col::Text),
                        ("source_ip", "IP", Col::Text),
                    ], None))
                    (pager(ACCESS.path, &filters, cursor, &answer))
                }
            }
            Err(f) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, ACCESS.roles)
            }
        }
    } else {
        html! {}
    };
    let body = html! {
        h1 { (ACCESS.title) }
        p { "Who accessed a patient's record, when, how and why. Times are UTC." }
        (html::invalid(&errors))
        (access_form(&q))
        (result)
    };
    html::page(
        status,
        html::layout(ACCESS.title, Some(&v), ACCESS.path, body),
    )
}

/// The chart of accesses over time by user and by role, and the top list.
fn charts(all: &Value, cap: u32) -> Markup {
    let rs = rows(all);
    let mut by_user = Vec::with_capacity(rs.len());
    let mut by_role = Vec::with_capacity(rs.len());
    for r in rs {
        let Some(t) = html::parse_utc(&html::text(&r["event_time"])) else {
            continue;
        };
        let actor = [&r["user_sub"], &r["fhir_user"], &r["actor"]]
            .into_iter()
            .map(html::text)
            .find(|s| !s.is_empty())
            .unwrap_or_default();
        let kind = html::text(&r["user_kind"]);
        by_user.push((
            t,
            if actor.is_empty() {
                "(unknown)".into()
            } else {
                actor
            },
        ));
        by_role.push((
            t,
            if kind.is_empty() {
                "(unknown)".into()
            } else {
                kind
            },
        ));
    }
    let top = chart::top(by_user.iter().map(|(_, u)| u.clone()), 10);
    let truncated = all.get("next_cursor").is_some_and(|c| !c.is_null());
    html! {
        h2 { "Accesses over time" }
        @if truncated {
            p class="notice" { "The charts and the top list cover the first " (cap) " accesses of the window; the table and the CSV export cover all of them." }
        }
        (chart::render("by-user", "Accesses", "user", &chart::Series::build(&by_user)))
        (chart::render("by-role", "Accesses", "role", &chart::Series::build(&by_role)))
        h2 { "Who accessed most" }
        table {
            caption { "Users with the most accesses" }
            thead { tr { th scope="col" { "User" } th scope="col" class="num" { "Accesses" } } }
            tbody { @for (u, n) in &top { tr { th scope="row" { (u) } td class="num" { (n) } } } }
        }
    }
}

/// `GET /console/compliance/access.csv`: the API's CSV export streamed through.
pub async fn access_csv(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(ACCESS.roles) {
        return r;
    }
    let q = params(raw.as_deref());
    let errors = access_errors(&q);
    if !errors.is_empty() {
        return html::page(
            StatusCode::BAD_REQUEST,
            html::layout(
                "Export refused",
                Some(&user.viewer()),
                ACCESS.path,
                html! { h1 { "Export refused" } (html::invalid(&errors)) },
            ),
        );
    }
    let mut call: Vec<(&str, &str)> = ACCESS_FILTERS.iter().map(|k| (*k, p(&q, k))).collect();
    call.push(("format", "csv"));
    match console
        .api
        .stream("/v1/reports/patient-access", &call, user.token())
        .await
    {
        Ok(resp) => {
            let name = format!("patient-access-{}.csv", Utc::now().format("%Y%m%dT%H%M%SZ"));
            (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                    (header::CACHE_CONTROL, "no-store".to_owned()),
                ],
                Body::from_stream(resp.bytes_stream()),
            )
                .into_response()
        }
        Err(f) => html::page(
            StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY),
            html::layout(
                "Export failed",
                Some(&user.viewer()),
                ACCESS.path,
                html! { h1 { "Export failed" } (html::problem(&f, ACCESS.roles)) },
            ),
        ),
    }
}

/// `GET /console/compliance/disclosures`: printable accounting of disclosures.
pub async fn disclosures(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(DISCLOSURES.roles) {
        return r;
    }
    let q = params(raw.as_deref());
    let keys = ["patient", "tenant", "from", "to", "client"];
    let filters: Vec<(&str, &str)> = keys.iter().map(|k| (*k, p(&q, k))).collect();
    let asked = !p(&q, "patient").is_empty() || q.contains_key("from");
    let mut errors = Vec::new();
    if asked {
        check_id("Patient id", p(&q, "patient"), true, &mut errors);
        check_tenant(p(&q, "tenant"), &mut errors);
        check_time("From", p(&q, "from"), &mut errors);
        check_time("To", p(&q, "to"), &mut errors);
        check_id("Client", p(&q, "client"), false, &mut errors);
    }
    let cursor = p(&q, "cursor");
    let mut status = status_of(&errors);
    let result = if asked && errors.is_empty() {
        let mut call = filters.clone();
        call.push(("limit", "1000"));
        call.push(("cursor", cursor));
        match console
            .api
            .get(Api::Query, "/v1/reports/disclosures", &call, user.token())
            .await
        {
            Ok(a) => html! {
                div class="print-only" {
                    p { "Accounting of disclosures for patient " strong { (p(&q, "patient")) }
                        ", prepared " (Utc::now().format("%Y-%m-%dT%H:%M:%SZ")) " by " (user.session.username) "." }
                }
                (window(&a))
                p class="no-print" { "To print it or save it as PDF, use your browser's Print command (Ctrl+P): the navigation and the form are left out of the printout." }
                (table("Disclosures (HIPAA 164.528; times in UTC)", rows(&a), &[
                    ("date", "Date (UTC)", Col::Time),
                    ("recipient_user", "Recipient user", Col::Text),
                    ("recipient_fhir_user", "Recipient fhirUser", Col::Text),
                    ("recipient_client", "Recipient application", Col::Text),
                    ("description", "What was disclosed", Col::Text),
                    ("resource_type", "Resource", Col::Text),
                    ("resource_id", "Resource id", Col::Text),
                    ("purpose", "Purpose", Col::Text),
                ], None))
                (pager(DISCLOSURES.path, &filters, cursor, &a))
            },
            Err(f) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, DISCLOSURES.roles)
            }
        }
    } else {
        html! {}
    };
    let body = html! {
        h1 { (DISCLOSURES.title) }
        p { "The disclosures of a patient's information outside treatment, payment and operations, for the patient's request." }
        (html::invalid(&errors))
        form class="filters" method="get" action=(DISCLOSURES.path) {
            (field("patient", "Patient id", p(&q, "patient"), None))
            (field("tenant", "Tenant", p(&q, "tenant"), Some("Empty: the default tenant.")))
            (field("from", "From (UTC)", p(&q, "from"), Some("Empty: six years back.")))
            (field("to", "To (UTC, exclusive)", p(&q, "to"), None))
            (field("client", "Recipient application", p(&q, "client"), None))
            div class="field" { button type="submit" { "Prepare the accounting" } }
        }
        (result)
    };
    render(status, &DISCLOSURES, &user, body)
}

/// `GET /console/compliance/break-glass`.
pub async fn break_glass(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(BREAK_GLASS.roles) {
        return r;
    }
    let q = params(raw.as_deref());
    let keys = ["patient", "user", "tenant", "from", "to"];
    let filters: Vec<(&str, &str)> = keys.iter().map(|k| (*k, p(&q, k))).collect();
    let mut errors = Vec::new();
    check_id("Patient id", p(&q, "patient"), false, &mut errors);
    check_id("User", p(&q, "user"), false, &mut errors);
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
            .get(Api::Query, "/v1/reports/break-glass", &call, user.token())
            .await
        {
            Ok(a) => html! {
                (window(&a))
                (table("Break-glass openings and accesses (times in UTC)", rows(&a), &[
                    ("event_time", "Time (UTC)", Col::Time),
                    ("kind", "Kind", Col::Text),
                    ("user_sub", "User", Col::Text),
                    ("fhir_user", "fhirUser", Col::Text),
                    ("client_id", "Client", Col::Text),
                    ("patient", "Patient (pseudonym)", Col::Text),
                    ("reason", "Reason", Col::Text),
                    ("duration_secs", "Duration (s)", Col::Num),
                    ("expires_at", "Expires (UTC)", Col::Time),
                    ("interaction", "Interaction", Col::Text),
                    ("resource_type", "Resource", Col::Text),
                    ("decision", "Decision", Col::Text),
                ], None))
                (pager(BREAK_GLASS.path, &filters, cursor, &a))
            },
            Err(f) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, BREAK_GLASS.roles)
            }
        }
    } else {
        html! {}
    };
    let body = html! {
        h1 { (BREAK_GLASS.title) }
        p { "Emergency (break-the-glass) openings with their reason and duration, and the accesses made under them." }
        (html::invalid(&errors))
        form class="filters" method="get" action=(BREAK_GLASS.path) {
            (field("patient", "Patient id", p(&q, "patient"), Some("Optional.")))
            (field("user", "User", p(&q, "user"), Some("Optional.")))
            (field("tenant", "Tenant", p(&q, "tenant"), Some("Empty: the default tenant.")))
            (field("from", "From (UTC)", p(&q, "from"), None))
            (field("to", "To (UTC, exclusive)", p(&q, "to"), None))
            div class="field" { button type="submit" { "Show" } }
        }
        (result)
    };
    render(status, &BREAK_GLASS, &user, body)
}
