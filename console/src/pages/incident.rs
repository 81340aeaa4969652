//! Incident responder: a token's trace by `jti` or session as a timeline (issued, refreshed,
//! introspected, each access, revoked or expired) with its flags highlighted; a user's
//! activity.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use serde_json::Value;

use super::{
    check_choice, check_id, check_tenant, check_time, p, pager, params, render, rows, select,
    status_of, table, window, Col,
};
use crate::api::Api;
use crate::app::{Console, User};
use crate::html::{self, field, TOKEN_TRACE, USER_ACTIVITY};

/// What a token summary's flags mean, for people.
fn flag_text(flag: &str) -> String {
    match flag {
        "scope_exceeded" => "operations outside the granted scopes".into(),
        "used_after_revocation" => "used after revocation".into(),
        "used_after_expiry" => "used after expiry".into(),
        other => other.replace('_', " "),
    }
}

fn summary(t: &Value) -> Markup {
    let mut flags: Vec<String> = t["flags"]
        .as_array()
        .map(|a| a.iter().map(|f| flag_text(&html::text(f))).collect())
        .unwrap_or_default();
    let ips = t["ips"].as_array().map(Vec::len).unwrap_or(0);
    if ips > 1 {
        flags.insert(0, format!("used from {ips} IP addresses"));
    }
    html! {
        section class="card" {
            h2 { "Token " (html::text(&t["jti"])) }
            @if !flags.is_empty() {
                p role="alert" { @for f in &flags { span class="flag" { (f) } } }
            }
            dl class="facts" {
                dt { "User" } dd { (html::text(&t["user_sub"])) " " (html::text(&t["fhir_user"])) }
                dt { "Application" } dd { (html::text(&t["client_id"])) }
                dt { "Session" } dd { (html::text(&t["session_id"])) }
                dt { "Issued (UTC)" } dd { (html::utc(&t["issued_at"])) }
                dt { "Last refreshed (UTC)" } dd { (html::utc(&t["last_refreshed_at"])) }
                dt { "Expires (UTC)" } dd { (html::utc(&t["expires_at"])) }
                dt { "Revoked (UTC)" } dd { (html::utc(&t["revoked_at"])) " " (html::text(&t["revocation_reason"])) }
                dt { "Accesses" } dd { (html::text(&t["accesses"])) " (" (html::text(&t["denied_accesses"])) " denied; "
                    (html::text(&t["accesses_after_revocation"])) " after revocation; "
                    (html::text(&t["accesses_after_expiry"])) " after expiry)" }
                dt { "Introspections" } dd { (html::text(&t["introspections"])) " (" (html::text(&t["inactive_introspections"])) " inactive)" }
                dt { "IP addresses" } dd { (html::text(&t["ips"])) }
                dt { "Scopes granted" } dd { (html::text(&t["scopes_granted"])) }
                dt { "Operations not granted" } dd { (html::text(&t["operations_not_granted"])) }
            }
        }
    }
}

fn event_flags(r: &Value) -> Vec<&'static str> {
    let mut f = Vec::new();
    if r["after_revocation"].as_bool() == Some(true) {
        f.push("after revocation");
    }
    if r["after_expiry"].as_bool() == Some(true) {
        f.push("after expiry");
    }
    if html::text(&r["decision"]) == "deny" {
        f.push("denied");
    }
    f
}

fn timeline(events: &[Value]) -> Markup {
    html! {
        ol class="timeline" aria-label="The token's events in time order (UTC)" {
            @for r in events {
                @let flags = event_flags(r);
                li class=[(!flags.is_empty()).then_some("flagged")] {
                    time { (html::utc(&r["event_time"])) } " "
                    strong { (html::text(&r["event_type"])) }
                    @let what = format!("{} {} {}", html::text(&r["interaction"]), html::text(&r["resource_type"]), html::text(&r["resource_id"]));
                    @if !what.trim().is_empty() { " " (what.trim()) }
                    @let d = html::text(&r["decision"]);
                    @if !d.is_empty() { " (" (d) ")" }
                    @let ip = html::text(&r["source_ip"]);
                    @if !ip.is_empty() { ", from " (ip) }
                    " " @for f in &flags { span class="flag" { (f) } }
                }
            }
        }
    }
}

/// `GET /console/incident/trace`.
pub async fn trace(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(TOKEN_TRACE.roles) {
        return r;
    }
    let q = params(raw.as_deref());
    let keys = ["jti", "session", "client", "tenant", "from", "to"];
    let filters: Vec<(&str, &str)> = keys.iter().map(|k| (*k, p(&q, k))).collect();
    let asked = q.contains_key("jti") || q.contains_key("session");
    let mut errors = Vec::new();
    if asked {
        check_id("Token id (jti)", p(&q, "jti"), false, &mut errors);
        check_id("Session", p(&q, "session"), false, &mut errors);
        if p(&q, "jti").is_empty() == p(&q, "session").is_empty() {
            errors.push("Give either a token id (jti) or a session id, not both.".into());
        }
        check_id("Application", p(&q, "client"), false, &mut errors);
        check_tenant(p(&q, "tenant"), &mut errors);
        check_time("From", p(&q, "from"), &mut errors);
        check_time("To", p(&q, "to"), &mut errors);
    }
    let cursor = p(&q, "cursor");
    let mut status = status_of(&errors);
    let result = if asked && errors.is_empty() {
        let limit = console.cfg.page_rows.to_string();
        let mut call = filters.clone();
        call.push(("limit", &limit));
        call.push(("cursor", cursor));
        match console
            .api
            .get(Api::Query, "/v1/reports/token-trace", &call, user.token())
            .await
        {
            Ok(a) => {
                let tokens = a["tokens"].as_array().cloned().unwrap_or_default();
                html! {
                    (window(&a))
                    @if tokens.is_empty() && rows(&a).is_empty() { p { "No events of this token in the window." } }
                    @for t in &tokens { (summary(t)) }
                    h2 { "Timeline" }
                    (timeline(rows(&a)))
                    details {
                        summary { "The timeline as a table" }
                        (table("The token's events (times in UTC)", rows(&a), &[
                            ("event_time", "Time (UTC)", Col::Time),
                            ("event_type", "Event", Col::Text),
                            ("token_jti", "Token (jti)", Col::Text),
                            ("interaction", "Interaction", Col::Text),
                            ("resource_type", "Resource", Col::Text),
                            ("decision", "Decision", Col::Text),
                            ("source_ip", "IP", Col::Text),
                            ("scopes", "Scopes", Col::Text),
                        ], Some(&event_flags)))
                    }
                    (pager(TOKEN_TRACE.path, &filters, cursor, &a))
                }
            }
            Err(f) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, TOKEN_TRACE.roles)
            }
        }
    } else {
        html! {}
    };
    let body = html! {
        h1 { (TOKEN_TRACE.title) }
        p { "A token's life on one line: issued, refreshed, introspected, each access, revoked or expired. Flags mark several IP addresses, operations outside the granted scopes, and use after revocation or expiry." }
        (html::invalid(&errors))
        form class="filters" method="get" action=(TOKEN_TRACE.path) {
            (field("jti", "Token id (jti)", p(&q, "jti"), None))
            (field("session", "or session id", p(&q, "session"), None))
            (field("client", "Application (client)", p(&q, "client"), Some("Optional.")))
            (field("tenant", "Tenant", p(&q, "tenant"), Some("Empty: the default tenant.")))
            (field("from", "From (UTC)", p(&q, "from"), None))
            (field("to", "To (UTC, exclusive)", p(&q, "to"), None))
            div class="field" { button type="submit" { "Trace" } }
        }
        (result)
    };
    render(status, &TOKEN_TRACE, &user, body)
}

/// `GET /console/incident/activity`.
pub async fn activity(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(USER_ACTIVITY.roles) {
        return r;
    }
    let q = params(raw.as_deref());
    let keys = [
        "user",
        "tenant",
        "from",
        "to",
        "event_type",
        "client",
        "resource_type",
        "interaction",
        "outcome",
    ];
    let filters: Vec<(&str, &str)> = keys.iter().map(|k| (*k, p(&q, k))).collect();
    let asked = q.contains_key("user");
    let mut errors = Vec::new();
    if asked {
        check_id("User", p(&q, "user"), true, &mut errors);
        check_tenant(p(&q, "tenant"), &mut errors);
        check_time("From", p(&q, "from"), &mut errors);
        check_time("To", p(&q, "to"), &mut errors);
        for (k, l) in [
            ("event_type", "Event type"),
            ("client", "Application"),
            ("resource_type", "Resource type"),
            ("interaction", "Interaction"),
        ] {
            check_id(l, p(&q, k), false, &mut errors);
        }
        check_choice(
            "Outcome",
            p(&q, "outcome"),
            &["success", "failure"],
            &mut errors,
        );
    }
    let cursor = p(&q, "cursor");
    let mut status = status_of(&errors);
    let result = if asked && errors.is_empty() {
        let limit = console.cfg.page_rows.to_string();
        let mut call = filters.clone();
        call.push(("limit", &limit));
        call.push(("cursor", cursor));
        match console
            .api
            .get(Api::Query, "/v1/reports/user-activity", &call, user.token())
            .await
        {
            Ok(a) => html! {
                (window(&a))
                (table("Everything the user did (times in UTC)", rows(&a), &[
                    ("event_time", "Time (UTC)", Col::Time),
                    ("event_type", "Event", Col::Text),
                    ("client_id", "Application", Col::Text),
                    ("interaction", "Interaction", Col::Text),
                    ("resource_type", "Resource", Col::Text),
                    ("patient", "Patient (pseudonym)", Col::Text),
                    ("decision", "Decision", Col::Text),
                    ("outcome", "Outcome", Col::Text),
                    ("token_jti", "Token (jti)", Col::Text),
                    ("source_ip", "IP", Col::Text),
                ], None))
                (pager(USER_ACTIVITY.path, &filters, cursor, &a))
            },
            Err(f) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, USER_ACTIVITY.roles)
            }
        }
    } else {
        html! {}
    };
    let body = html! {
        h1 { (USER_ACTIVITY.title) }
        p { "Everything a user (AS subject or fhirUser) did." }
        (html::invalid(&errors))
        form class="filters" method="get" action=(USER_ACTIVITY.path) {
            (field("user", "User (sub or fhirUser)", p(&q, "user"), None))
            (field("tenant", "Tenant", p(&q, "tenant"), Some("Empty: the default tenant.")))
            (field("from", "From (UTC)", p(&q, "from"), None))
            (field("to", "To (UTC, exclusive)", p(&q, "to"), None))
            (field("event_type", "Event type", p(&q, "event_type"), None))
            (field("client", "Application (client)", p(&q, "client"), None))
            (field("resource_type", "Resource type", p(&q, "resource_type"), None))
            (field("interaction", "Interaction", p(&q, "interaction"), None))
            (select("outcome", "Outcome", p(&q, "outcome"), &[("", "any"), ("success", "success"), ("failure", "failure")]))
            div class="field" { button type="submit" { "Show activity" } }
        }
        (result)
    };
    render(status, &USER_ACTIVITY, &user, body)
}
