//! The pages: one module per role's tasks, and what they share (query parameters and their
//! validation, report tables with server-side paging).

pub mod alerts;
pub mod audit;
pub mod compliance;
pub mod incident;
pub mod privacy;
pub mod reviews;

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use serde_json::Value;

use crate::app::{Console, User};
use crate::html::{self, Page, PAGES};

/// The page routes.
pub fn router() -> Router<Arc<Console>> {
    Router::new()
        .route(html::ACCESS.path, get(compliance::access))
        .route(
            "/console/compliance/access.csv",
            get(compliance::access_csv),
        )
        .route(html::DISCLOSURES.path, get(compliance::disclosures))
        .route(html::BREAK_GLASS.path, get(compliance::break_glass))
        .route(html::CONSENTS.path, get(privacy::consents))
        .route("/console/privacy/revoke", post(privacy::revoke))
        .route(html::REVOCATIONS.path, get(privacy::revocations))
        .route(html::VIOLATIONS_PAGE.path, get(privacy::violations))
        .route(html::REVIEWS.path, get(reviews::reviews))
        .route(reviews::DECIDE_PATH, post(reviews::decide))
        .route(html::ALERTS.path, get(alerts::alerts))
        .route(alerts::ALERT_PATH, get(alerts::alert))
        .route(alerts::ACTION_PATH, post(alerts::act))
        .route(html::TOKEN_TRACE.path, get(incident::trace))
        .route(html::USER_ACTIVITY.path, get(incident::activity))
        .route(html::INTEGRITY.path, get(audit::integrity))
        .route(html::PROOF.path, get(audit::proof))
        .route(html::QUERY_AUDIT.path, get(audit::queries))
}

/// The start page: the user's tasks, or the no-role page (403).
pub async fn home(user: User) -> Response {
    let v = user.viewer();
    if v.roles.is_empty() {
        return html::page(
            StatusCode::FORBIDDEN,
            html::layout("No Custos role", Some(&v), "", html::no_role_body()),
        );
    }
    let mine: Vec<&Page> = PAGES
        .iter()
        .filter(|p| html::allowed(&v.roles, p.roles))
        .collect();
    let body = html! {
        h1 { "Your tasks" }
        p { "Signed in as " strong { (v.username) } " with the role " (html::roles_label(&v.roles)) ". "
            "Every page reads the Custos APIs as you, so each report you open is itself recorded in the query audit under your name." }
        div class="cards" {
            @for p in &mine {
                div class="card" {
                    h2 { a href=(p.path) { (p.title) } }
                    p { (p.group) }
                }
            }
        }
    };
    html::page(
        StatusCode::OK,
        html::layout("Your tasks", Some(&v), "", body),
    )
}

/// A page of the console for the signed-in user: its title and path in the layout.
pub fn render(status: StatusCode, page: &Page, user: &User, body: Markup) -> Response {
    html::page(
        status,
        html::layout(page.title, Some(&user.viewer()), page.path, body),
    )
}

/// 200 for valid input, 400 when the form has errors (shown on the page).
pub fn status_of(errors: &[String]) -> StatusCode {
    if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

/// Query parameters, parsed leniently (a malformed pair is skipped, never a 500).
pub fn params(raw: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .filter(|(k, _)| k.len() <= 64)
        .map(|(k, v)| (k, v.chars().take(2048).collect()))
        .collect()
}

/// A parameter's trimmed value, or "".
pub fn p<'a>(q: &'a HashMap<String, String>, k: &str) -> &'a str {
    q.get(k).map(|s| s.trim()).unwrap_or_default()
}

/// Checks an identifier typed into a form (patient, user, jti, ...): at most 256
/// characters, no control characters.
pub fn check_id(label: &str, v: &str, required: bool, errors: &mut Vec<String>) {
    if v.is_empty() {
        if required {
            errors.push(format!("{label} is required."));
        }
    } else if v.len() > 256 || v.chars().any(char::is_control) {
        errors.push(format!(
            "{label} must be at most 256 characters without control characters."
        ));
    }
}

/// Checks a time bound: empty, `YYYY-MM-DD` or RFC 3339.
pub fn check_time(label: &str, v: &str, errors: &mut Vec<String>) {
    if v.is_empty() {
        return;
    }
    let date = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").is_ok();
    let ts = chrono::DateTime::parse_from_rfc3339(v).is_ok();
    if !date && !ts {
        errors.push(format!(
            "{label} must be a date (2026-01-31) or a UTC time in ISO 8601 (2026-01-31T08:00:00Z)."
        ));
    }
}

/// Checks a tenant: empty (the default) or 1-64 of `A-Z a-z 0-9 - _ .`.
pub fn check_tenant(v: &str, errors: &mut Vec<String>) {
    let ok = v.is_empty()
        || (v.len() <= 64
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
    if !ok {
        errors.push("Tenant must be 1-64 characters of A-Z a-z 0-9 - _ .".into());
    }
}

/// Checks a value against a fixed list (empty allowed).
pub fn check_choice(label: &str, v: &str, allowed: &[&str], errors: &mut Vec<String>) {
    if !v.is_empty() && !allowed.contains(&v) {
        errors.push(format!("{label} must be one of: {}.", allowed.join(", ")));
    }
}

/// A URL of `path` with the given parameters (empty ones left out).
pub fn link(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        s.append_pair(k, v);
    }
    let q = s.finish();
    if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{q}")
    }
}

/// A select with its label; `options` are (value, text), the empty value means "any".
pub fn select(name: &str, label: &str, value: &str, options: &[(&str, &str)]) -> Markup {
    let id = format!("f-{name}");
    html! {
        div class="field" {
            label for=(id) { (label) }
            select id=(id) name=(name) {
                @for (v, t) in options {
                    @if *v == value { option value=(v) selected { (t) } } @else { option value=(v) { (t) } }
                }
            }
        }
    }
}

/// Flags of a row (empty: not flagged).
pub type Flagger<'a> = &'a dyn Fn(&Value) -> Vec<&'static str>;

/// How a column is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    /// Text as it came.
    Text,
    /// A timestamp in ISO 8601 UTC.
    Time,
    /// A number, right-aligned.
    Num,
}

/// A report table: `columns` are (JSON key, header, kind); `flag` marks a row as flagged
/// (highlighted, with its reasons in the last column).
pub fn table(
    caption: &str,
    rows: &[Value],
    columns: &[(&str, &str, Col)],
    flag: Option<Flagger<'_>>,
) -> Markup {
    html! {
        div class="table-wrap" {
            table {
                caption { (caption) }
                thead { tr {
                    @for (_, h, kind) in columns {
                        @if *kind == Col::Num { th scope="col" class="num" { (h) } } @else { th scope="col" { (h) } }
                    }
                    @if flag.is_some() { th scope="col" { "Flags" } }
                } }
                tbody {
                    @for r in rows {
                        @let flags = flag.map(|f| f(r)).unwrap_or_default();
                        tr class=[(!flags.is_empty()).then_some("flagged")] {
                            @for (k, _, kind) in columns {
                                @match kind {
                                    Col::Time => td { time { (html::utc(&r[*k])) } },
                                    Col::Num => td class="num" { (html::text(&r[*k])) },
                                    Col::Text => td { (html::text(&r[*k])) },
                                }
                            }
                            @if flag.is_some() {
                                td { @for f in &flags { span class="flag" { (f) } } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The pager of a cursor-paged report: first page, and next page when the API gave a
/// cursor. `keep` are the current filters.
pub fn pager(path: &str, keep: &[(&str, &str)], cursor: &str, answer: &Value) -> Markup {
    let next = answer.get("next_cursor").and_then(Value::as_str);
    let mut next_pairs = keep.to_vec();
    let n = next.unwrap_or_default();
    next_pairs.push(("cursor", n));
    html! {
        nav class="pager" aria-label="Pages of the report" {
            @if !cursor.is_empty() { a href=(link(path, keep)) { "First page" } }
            @if next.is_some() { a href=(link(path, &next_pairs)) rel="next" { "Next page" } }
            @else { span { "Last page" } }
        }
    }
}

/// The rows of a report answer.
pub fn rows(answer: &Value) -> &[Value] {
    answer
        .get("rows")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// "Window: from .. to .. (UTC)" of a report answer.
pub fn window(answer: &Value) -> Markup {
    html! {
        p { "Window (UTC): " time { (html::utc(&answer["from"])) } " to " time { (html::utc(&answer["to"])) }
            ", tenant " strong { (html::text(&answer["tenant"])) } "." }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_validated_with_clear_messages() {
        let mut e = Vec::new();
        check_id("Patient id", "", true, &mut e);
        check_id("User", "a\u{0}b", false, &mut e);
        check_time("From", "yesterday", &mut e);
        check_time("To", "2026-01-31", &mut e);
        check_time("To", "2026-01-31T08:00:00Z", &mut e);
        check_tenant("bad tenant!", &mut e);
        check_choice("Outcome", "maybe", &["success", "failure"], &mut e);
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(e[0].contains("required"));
    }

    #[test]
    fn links_keep_set_filters_only() {
        assert_eq!(
            link("/console/x", &[("patient", "p 1&"), ("from", "")]),
            "/console/x?patient=p+1%26"
        );
        assert_eq!(link("/console/x", &[]), "/console/x");
    }

    #[test]
    fn malformed_query_strings_do_not_fail() {
        let q = params(Some("a=%ZZ&b=1&&=x"));
        assert_eq!(p(&q, "b"), "1");
        assert_eq!(p(&q, "missing"), "");
    }
}
