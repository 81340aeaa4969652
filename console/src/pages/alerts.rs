//! Incident responder: the detectors' alerts (list with filters, newest first) and one alert
//! (summary, evidence rows, its token's trace, revisions and actions) with the forms that act
//! on it (acknowledge, assign, close with a resolution, reopen), each posted with the
//! session's CSRF token and sent to the query API as the signed-in user.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    check_choice, check_id, check_tenant, check_time, link, p, params, render, select, status_of,
    table, Col,
};
use crate::api::Api;
use crate::app::{check_post, Console, User};
use crate::html::{self, field, ALERTS, ALERT_ACT, TOKEN_TRACE};

/// The alert page (one alert, by `id`).
pub const ALERT_PATH: &str = "/console/incident/alert";
/// Where the action forms post.
pub const ACTION_PATH: &str = "/console/incident/alert/action";

const STATUSES: &[&str] = &["open", "acknowledged", "closed", "all"];
const SEVERITIES: &[&str] = &["low", "medium", "high", "critical"];
const ACTIONS: &[&str] = &["acknowledge", "assign", "close", "reopen"];
const RESOLUTIONS: &[(&str, &str)] = &[
    ("true_positive", "true positive"),
    ("false_positive", "false positive"),
    ("benign", "benign"),
    ("duplicate", "duplicate"),
];

/// The alert page of `id`.
pub fn alert_link(id: &str) -> String {
    link(ALERT_PATH, &[("id", id)])
}

/// The list of alerts (one answer page of `GET /v1/alerts`).
pub fn alert_table(answer: &Value) -> Markup {
    let alerts = answer["alerts"].as_array().cloned().unwrap_or_default();
    html! {
        @if alerts.is_empty() {
            p { "No alert matches." }
        } @else {
            div class="table-wrap" {
                table {
                    caption { "Alerts, newest evidence first (times in UTC)" }
                    thead { tr {
                        th scope="col" { "Severity" } th scope="col" { "Status" }
                        th scope="col" { "Detector" } th scope="col" { "What was seen" }
                        th scope="col" { "User" } th scope="col" { "Application" }
                        th scope="col" { "Last evidence (UTC)" } th scope="col" class="num" { "Evidence" }
                        th scope="col" { "Assignee" }
                    } }
                    tbody {
                        @for i in &alerts {
                            @let a = &i["alert"];
                            @let sev = html::text(&a["severity"]);
                            tr class=[matches!(sev.as_str(), "high" | "critical").then_some("flagged")] {
                                td { span class="flag" { (sev) } }
                                td { (html::text(&i["status"]))
                                    @if i["reopened_by_evidence"].as_bool() == Some(true) { " (new evidence)" } }
                                td { (html::text(&a["detector"])) }
                                td { a href=(alert_link(&html::text(&a["alert_id"]))) { (html::text(&a["summary"])) } }
                                td { (html::text(&a["subject"])) }
                                td { (html::text(&a["client_id"])) }
                                td { time { (html::utc(&a["last_seen"])) } }
                                td class="num" { (html::text(&a["evidence_count"])) }
                                td { (html::text(&i["assignee"])) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/incident/alerts`.
pub async fn alerts(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(ALERTS.roles) {
        return r;
    }
    let q = params(raw.as_deref());
    let status_v = if q.contains_key("status") {
        p(&q, "status")
    } else {
        "open"
    };
    let keys = [
        "severity", "detector", "subject", "jti", "client", "assignee", "tenant", "since", "until",
    ];
    let mut filters: Vec<(&str, &str)> = vec![("status", status_v)];
    filters.extend(keys.iter().map(|k| (*k, p(&q, k))));
    let mut errors = Vec::new();
    check_choice("Status", status_v, STATUSES, &mut errors);
    check_choice("Severity", p(&q, "severity"), SEVERITIES, &mut errors);
    for (k, l) in [
        ("detector", "Detector"),
        ("subject", "User"),
        ("jti", "Token id (jti)"),
        ("client", "Application"),
        ("assignee", "Assignee"),
    ] {
        check_id(l, p(&q, k), false, &mut errors);
    }
    check_tenant(p(&q, "tenant"), &mut errors);
    check_time("Since", p(&q, "since"), &mut errors);
    check_time("Until", p(&q, "until"), &mut errors);
    let cursor = p(&q, "cursor");
    let mut status = status_of(&errors);
    let result = if errors.is_empty() {
        let limit = console.cfg.page_rows.to_string();
        let mut call = filters.clone();
        call.push(("limit", &limit));
        call.push(("cursor", cursor));
        match console
            .api
            .get(Api::Query, "/v1/alerts", &call, user.token())
            .await
        {
            Ok(a) => html! {
                p { "Tenant " strong { (html::text(&a["tenant"])) } "." }
                (alert_table(&a))
                (super::pager(ALERTS.path, &filters, cursor, &a))
            },
            Err(f) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, ALERTS.roles)
            }
        }
    } else {
        html! {}
    };
    let sev_opts = [
        ("", "any"),
        ("low", "low and above"),
        ("medium", "medium and above"),
        ("high", "high and above"),
        ("critical", "critical"),
    ];
    let status_opts = [
        ("open", "open"),
        ("acknowledged", "acknowledged"),
        ("closed", "closed"),
        ("all", "all"),
    ];
    let body = html! {
        h1 { (ALERTS.title) }
        p { "What the detectors found in the audit trail: token misuse, refresh-token reuse, use after revocation, scope escalation, unusual volume, break-glass and sign-in anomalies. Open an alert for its evidence." }
        (html::invalid(&errors))
        form class="filters" method="get" action=(ALERTS.path) {
            (select("status", "Status", status_v, &status_opts))
            (select("severity", "Severity", p(&q, "severity"), &sev_opts))
            (field("detector", "Detector", p(&q, "detector"), None))
            (field("subject", "User (sub)", p(&q, "subject"), None))
            (field("jti", "Token id (jti)", p(&q, "jti"), None))
            (field("client", "Application (client)", p(&q, "client"), None))
            (field("assignee", "Assignee", p(&q, "assignee"), None))
            (field("tenant", "Tenant", p(&q, "tenant"), Some("Empty: the default tenant.")))
            (field("since", "Evidence since (UTC)", p(&q, "since"), None))
            (field("until", "Evidence until (UTC)", p(&q, "until"), None))
            div class="field" { button type="submit" { "Show alerts" } }
        }
        (result)
    };
    render(status, &ALERTS, &user, body)
}

/// The action forms of an alert (shown to those who may act).
pub fn action_forms(id: &str, status: &str, csrf: &str) -> Markup {
    let hidden = |action: &str| {
        html! {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="id" value=(id);
            input type="hidden" name="action" value=(action);
        }
    };
    let note = |fid: &str, label: &str| {
        html! {
            div class="field" {
                label for=(fid) { (label) }
                textarea id=(fid) name="note" rows="2" maxlength="2000" {}
            }
        }
    };
    html! {
        section class="card" aria-labelledby="act-h" {
            h2 id="act-h" { "Act on this alert" }
            @if status == "closed" {
                h3 { "Reopen" }
                form method="post" action=(ACTION_PATH) {
                    (hidden("reopen"))
                    (note("n-reopen", "Why reopen (optional)"))
                    button type="submit" { "Reopen" }
                }
            } @else {
                @if status == "open" {
                    h3 { "Acknowledge" }
                    form method="post" action=(ACTION_PATH) {
                        (hidden("acknowledge"))
                        (note("n-ack", "Note (optional)"))
                        button type="submit" { "Acknowledge" }
                    }
                }
                h3 { "Assign" }
                form method="post" action=(ACTION_PATH) {
                    (hidden("assign"))
                    div class="field" {
                        label for="f-assignee" { "Assign to" }
                        input id="f-assignee" name="assignee" type="text" required;
                    }
                    button type="submit" { "Assign" }
                }
                h3 { "Close" }
                form method="post" action=(ACTION_PATH) {
                    (hidden("close"))
                    div class="field" {
                        label for="f-resolution" { "Resolution" }
                        select id="f-resolution" name="resolution" {
                            @for (v, t) in RESOLUTIONS { option value=(v) { (t) } }
                        }
                    }
                    (note("n-close", "Note (required)"))
                    button type="submit" { "Close" }
                }
            }
        }
    }
}

/// The alert page's body from the API's answer (`GET /v1/alerts/{id}`).
pub fn alert_view(answer: &Value, can_act: bool, csrf: &str) -> Markup {
    let item = &answer["alert"];
    let a = &item["alert"];
    let id = html::text(&a["alert_id"]);
    let jti = html::text(&a["token_jti"]);
    let trace = link(
        TOKEN_TRACE.path,
        &[("jti", &jti), ("tenant", &html::text(&a["tenant"]))],
    );
    let status = html::text(&item["status"]);
    let evidence = answer["evidence"].as_array().cloned().unwrap_or_default();
    let actions = answer["actions"].as_array().cloned().unwrap_or_default();
    let revisions = answer["revisions"].as_array().cloned().unwrap_or_default();
    html! {
        section class="card" {
            h2 { (html::text(&a["summary"])) }
            @if item["reopened_by_evidence"].as_bool() == Some(true) {
                p role="alert" { span class="flag" { "new evidence after it was closed" } }
            }
            dl class="facts" {
                dt { "Severity" } dd { span class="flag" { (html::text(&a["severity"])) } }
                dt { "Status" } dd { (status) }
                dt { "Assignee" } dd { (html::text(&item["assignee"])) }
                dt { "Detector" } dd { (html::text(&a["detector"])) }
                dt { "User" } dd { (html::text(&a["subject"])) " (" (html::text(&a["user_kind"])) ")" }
                dt { "Application" } dd { (html::text(&a["client_id"])) }
                dt { "Session" } dd { (html::text(&a["session_id"])) }
                dt { "Token (jti)" } dd {
                    @if jti.is_empty() { "none" } @else { a href=(trace) { (jti) " (token trace)" } }
                }
                dt { "Patient (pseudonym)" } dd { (html::text(&a["patient"])) }
                dt { "First evidence (UTC)" } dd { time { (html::utc(&a["first_seen"])) } }
                dt { "Last evidence (UTC)" } dd { time { (html::utc(&a["last_seen"])) } }
                dt { "Evidence events" } dd { (html::text(&a["evidence_count"])) }
                dt { "Tenant" } dd { (html::text(&a["tenant"])) }
                dt { "Alert id" } dd { (id) }
            }
        }
        @if can_act { (action_forms(&id, &status, csrf)) }
        h2 { "Evidence" }
        (table("The audit rows this alert rests on (times in UTC)", &evidence, &[
            ("event_time", "Time (UTC)", Col::Time),
            ("event_type", "Event", Col::Text),
            ("user_sub", "User", Col::Text),
            ("client_id", "Application", Col::Text),
            ("token_jti", "Token (jti)", Col::Text),
            ("interaction", "Interaction", Col::Text),
            ("resource_type", "Resource", Col::Text),
            ("patient", "Patient (pseudonym)", Col::Text),
            ("decision", "Decision", Col::Text),
            ("source_ip", "IP", Col::Text),
            ("user_agent", "User agent", Col::Text),
            ("event_key", "Event key", Col::Text),
        ], None))
        h2 { "Actions" }
        (table("Who did what (times in UTC)", &actions, &[
            ("at", "Time (UTC)", Col::Time),
            ("action", "Action", Col::Text),
            ("actor", "By", Col::Text),
            ("assignee", "Assignee", Col::Text),
            ("note", "Note", Col::Text),
            ("detail", "Detail", Col::Text),
        ], None))
        h2 { "Revisions" }
        (table("The alert as the evidence grew (times in UTC)", &revisions, &[
            ("revision", "Revision", Col::Num),
            ("severity", "Severity", Col::Text),
            ("last_seen", "Last evidence (UTC)", Col::Time),
            ("evidence_count", "Evidence", Col::Num),
            ("summary", "Summary", Col::Text),
        ], None))
    }
}

fn valid_alert_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `GET /console/incident/alert?id=`.
pub async fn alert(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(ALERTS.roles) {
        return r;
    }
    let q = params(raw.as_deref());
    let id = p(&q, "id");
    let mut errors = Vec::new();
    if !valid_alert_id(id) {
        errors.push("The alert id must be the 32 hexadecimal digits of an alert.".into());
    }
    let mut status = status_of(&errors);
    let result = if errors.is_empty() {
        let path = format!("/v1/alerts/{id}");
        match console.api.get(Api::Query, &path, &[], user.token()).await {
            Ok(a) => alert_view(&a, user.may(ALERT_ACT), &user.session.csrf),
            Err(f) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, ALERTS.roles)
            }
        }
    } else {
        html! {}
    };
    let body = html! {
        h1 { "Alert" }
        p { a href=(ALERTS.path) { "All alerts" } }
        (html::invalid(&errors))
        (result)
    };
    render(status, &ALERTS, &user, body)
}

/// An action form as posted.
#[derive(Debug, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    assignee: String,
    #[serde(default)]
    resolution: String,
}

/// The API body of an action form, or the form's errors.
pub fn action_body(f: &ActionForm) -> Result<Value, Vec<String>> {
    let mut errors = Vec::new();
    if !valid_alert_id(&f.id) {
        errors.push("The alert id must be the 32 hexadecimal digits of an alert.".into());
    }
    if !ACTIONS.contains(&f.action.as_str()) {
        errors.push("Unknown action.".into());
    }
    let note = f.note.trim();
    if note.len() > 2000 {
        errors.push("The note must be at most 2000 bytes.".into());
    }
    let mut body = json!({});
    if !note.is_empty() {
        body["note"] = json!(note);
    }
    match f.action.as_str() {
        "assign" => {
            check_id("Assignee", f.assignee.trim(), true, &mut errors);
            body["assignee"] = json!(f.assignee.trim());
        }
        "close" => {
            if note.is_empty() {
                errors.push("A note is required to close an alert.".into());
            }
            if !RESOLUTIONS.iter().any(|(v, _)| *v == f.resolution) {
                errors.push("Choose a resolution.".into());
            }
            body["resolution"] = json!(f.resolution);
        }
        _ => {}
    }
    if errors.is_empty() {
        Ok(body)
    } else {
        Err(errors)
    }
}

/// `POST /console/incident/alert/action`: sends the action, then back to the alert page.
pub async fn act(
    State(console): State<Arc<Console>>,
    user: User,
    headers: HeaderMap,
    Form(f): Form<ActionForm>,
) -> Response {
    if let Some(r) = user.refuse(ALERT_ACT) {
        return r;
    }
    if let Some(r) = check_post(&console, &user, &headers, &f.csrf) {
        return r;
    }
    let back = alert_link(&f.id);
    let outcome = match action_body(&f) {
        Err(errors) => Err((StatusCode::BAD_REQUEST, html::invalid(&errors))),
        Ok(body) => {
            let path = format!("/v1/alerts/{}/{}", f.id, f.action);
            // Each action is its own request: the key only has to be unique.
            let key = custos_auth::audit::new_query_id();
            match console
                .api
                .post(Api::Query, &path, &body, user.token(), &key)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => Err((
                    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY),
                    html::problem(&e, ALERT_ACT),
                )),
            }
        }
    };
    match outcome {
        Ok(()) => Redirect::to(&back).into_response(),
        Err((status, why)) => {
            let body = html! {
                h1 { "The action was not taken" }
                (why)
                p { a href=(back) { "Back to the alert" } }
            };
            render(status, &ALERTS, &user, body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Value {
        json!({
            "query_id": "q",
            "alert": {
                "alert": {"alert_id": "0123456789abcdef0123456789abcdef", "revision": 2, "tenant": "general",
                    "detector": "jti_multi_ip", "severity": "high", "summary": "<b>token</b> used from 3 IPs",
                    "subject": "dr-alice", "user_kind": "workforce", "client_id": "ehr-app", "session_id": "",
                    "token_jti": "J 1&x", "patient": "", "first_seen": "2026-03-01T10:00:00.000Z",
                    "last_seen": "2026-03-01T10:02:00.000Z", "evidence_count": 3},
                "status": "open", "reopened_by_evidence": false, "assignee": "",
                "links": {"self": "/v1/alerts/0123456789abcdef0123456789abcdef"}
            },
            "revisions": [{"revision": 1}, {"revision": 2}],
            "actions": [{"action": "notify", "actor": "custos-alerts", "at": "2026-03-01T10:01:01.000Z", "detail": "200"}],
            "evidence": [{"event_key": "k1", "event_time": "2026-03-01T10:00:00.000Z", "source_ip": "203.0.113.9"}]
        })
    }

    #[test]
    fn an_alert_shows_its_evidence_and_links_to_the_token_trace() {
        let out = alert_view(&answer(), false, "c").into_string();
        assert!(out.contains("203.0.113.9"));
        assert!(out.contains("/console/incident/trace?jti=J+1%26x&amp;tenant=general"));
        assert!(out.contains("&lt;b&gt;token&lt;/b&gt;"), "escaped");
        assert!(out.contains("notify"));
        assert!(!out.contains(ACTION_PATH), "no forms without the role");
    }

    #[test]
    fn responders_get_the_forms_with_the_csrf_token() {
        let out = alert_view(&answer(), true, "tok\"en").into_string();
        assert!(out.contains(ACTION_PATH));
        assert!(out.contains("value=\"tok&quot;en\""));
        for a in ["acknowledge", "assign", "close"] {
            assert!(out.contains(&format!("value=\"{a}\"")), "{a}");
        }
        assert!(!out.contains("value=\"reopen\""));
        let closed = action_forms("0123456789abcdef0123456789abcdef", "closed", "c").into_string();
        assert!(closed.contains("value=\"reopen\""));
        assert!(!closed.contains("value=\"close\""));
    }

    #[test]
    fn the_list_links_each_alert() {
        let page = json!({"alerts": [answer()["alert"].clone()], "tenant": "general"});
        let out = alert_table(&page).into_string();
        assert!(out.contains("/console/incident/alert?id=0123456789abcdef0123456789abcdef"));
        assert!(out.contains("class=\"flagged\""));
        assert!(alert_table(&json!({"alerts": []}))
            .into_string()
            .contains("No alert matches"));
    }

    #[test]
    fn action_forms_are_checked_before_the_api() {
        let form = |action: &str, note: &str, assignee: &str, resolution: &str| ActionForm {
            csrf: String::new(),
            id: "0123456789abcdef0123456789abcdef".into(),
            action: action.into(),
            note: note.into(),
            assignee: assignee.into(),
            resolution: resolution.into(),
        };
        assert_eq!(action_body(&form("acknowledge", "", "", "")), Ok(json!({})));
        assert!(action_body(&form("close", "", "", "benign")).is_err());
        assert!(action_body(&form("close", "n", "", "")).is_err());
        assert_eq!(
            action_body(&form("close", " n ", "", "benign")),
            Ok(json!({"note": "n", "resolution": "benign"}))
        );
        assert!(action_body(&form("assign", "", "", "")).is_err());
        assert!(action_body(&form("delete", "", "", "")).is_err());
        let mut bad = form("acknowledge", "", "", "");
        bad.id = "../x".into();
        assert!(action_body(&bad).is_err());
    }
}
