//! The page frame (skip link, header with the user and sign-out, navigation of the user's
//! pages, main landmark), the catalogue of pages with the roles each needs, and the shared
//! pieces: error pages, problem details, time and role formatting. Markup is written with
//! `maud`, which escapes every interpolated value.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use custos_auth::oidc::Role;
use custos_auth::policy;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::api::ApiFailure;

/// One page of the console.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Path below the origin.
    pub path: &'static str,
    /// Title in the navigation and the `<h1>`.
    pub title: &'static str,
    /// Navigation group.
    pub group: &'static str,
    /// Roles that may use it (the API's own list for the call behind it).
    pub roles: &'static [Role],
}

const COMPLIANCE: &[Role] = policy::COMPLIANCE_REPORTS;
const PRIVACY_READ: &[Role] = policy::CONSENTS_READ;
const VIOLATIONS: &[Role] = policy::PRIVACY_REPORTS;
const TRACE: &[Role] = policy::TOKEN_TRACE;
const ACTIVITY: &[Role] = policy::USER_ACTIVITY;
const AUDITOR: &[Role] = policy::AUDIT;

/// Roles that may revoke a consent (the privacy API's).
pub const REVOKE: &[Role] = policy::CONSENTS_REVOKE;
/// Roles that may act on an alert (the query API's).
pub const ALERT_ACT: &[Role] = policy::ALERTS_ACT;
/// Roles that may decide a break-glass review (the query API's).
pub const REVIEW_DECIDE: &[Role] = policy::REVIEWS_DECIDE;

/// Patient access report.
pub const ACCESS: Page = Page {
    path: "/console/compliance/access",
    title: "Patient access report",
    group: "Compliance",
    roles: COMPLIANCE,
};
/// Accounting of disclosures.
pub const DISCLOSURES: Page = Page {
    path: "/console/compliance/disclosures",
    title: "Accounting of disclosures",
    group: "Compliance",
    roles: COMPLIANCE,
};
/// Break-glass list.
pub const BREAK_GLASS: Page = Page {
    path: "/console/compliance/break-glass",
    title: "Break-glass accesses",
    group: "Compliance",
    roles: COMPLIANCE,
};
/// The break-glass review queue.
pub const REVIEWS: Page = Page {
    path: "/console/compliance/reviews",
    title: "Break-glass reviews",
    group: "Compliance",
    roles: policy::REVIEWS_READ,
};
/// A patient's consents.
pub const CONSENTS: Page = Page {
    path: "/console/privacy/consents",
    title: "Consents of a patient",
    group: "Privacy",
    roles: PRIVACY_READ,
};
/// Revocation deliveries.
pub const REVOCATIONS: Page = Page {
    path: "/console/privacy/revocations",
    title: "Revocation deliveries",
    group: "Privacy",
    roles: PRIVACY_READ,
};
/// Revocation violations.
pub const VIOLATIONS_PAGE: Page = Page {
    path: "/console/privacy/violations",
    title: "Revocation violations",
    group: "Privacy",
    roles: VIOLATIONS,
};
/// The detectors' alerts.
pub const ALERTS: Page = Page {
    path: "/console/incident/alerts",
    title: "Alerts",
    group: "Incident response",
    roles: policy::ALERTS_READ,
};
/// Token trace.
pub const TOKEN_TRACE: Page = Page {
    path: "/console/incident/trace",
    title: "Token trace",
    group: "Incident response",
    roles: TRACE,
};
/// User activity.
pub const USER_ACTIVITY: Page = Page {
    path: "/console/incident/activity",
    title: "User activity",
    group: "Incident response",
    roles: ACTIVITY,
};
/// Integrity of the chains.
pub const INTEGRITY: Page = Page {
    path: "/console/audit/integrity",
    title: "Integrity of the audit chains",
    group: "Audit",
    roles: AUDITOR,
};
/// Membership proof of one record.
pub const PROOF: Page = Page {
    path: "/console/audit/proof",
    title: "Proof of a record",
    group: "Audit",
    roles: AUDITOR,
};
/// The query audit.
pub const QUERY_AUDIT: Page = Page {
    path: "/console/audit/queries",
    title: "Query audit",
    group: "Audit",
    roles: AUDITOR,
};

/// Every page of the navigation, in order.
pub const PAGES: &[Page] = &[
    ACCESS,
    DISCLOSURES,
    BREAK_GLASS,
    REVIEWS,
    CONSENTS,
    REVOCATIONS,
    VIOLATIONS_PAGE,
    ALERTS,
    TOKEN_TRACE,
    USER_ACTIVITY,
    INTEGRITY,
    QUERY_AUDIT,
];

/// A role as people read it.
pub fn role_label(r: Role) -> &'static str {
    match r {
        Role::ComplianceOfficer => "compliance officer",
        Role::PrivacyOfficer => "privacy officer",
        Role::IncidentResponder => "incident responder",
        Role::Auditor => "auditor",
        Role::AuditSource => "audit source",
    }
}

/// "compliance officer or auditor".
pub fn roles_label(roles: &[Role]) -> String {
    let names: Vec<&str> = roles.iter().map(|r| role_label(*r)).collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Whether `roles` hold one of `needed`.
pub fn allowed(roles: &[Role], needed: &[Role]) -> bool {
    roles.iter().any(|r| needed.contains(r))
}

/// The Custos roles that open console pages (an audit source's does not).
pub fn console_roles(roles: &[Role]) -> Vec<Role> {
    roles
        .iter()
        .copied()
        .filter(|r| *r != Role::AuditSource)
        .collect()
}

/// Who is signed in, as the frame shows them.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// Name shown.
    pub username: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// CSRF token for the sign-out form.
    pub csrf: String,
}

/// The whole page: `title`, the viewer's frame (none before sign-in), `body`.
pub fn layout(title: &str, viewer: Option<&Viewer>, current: &str, body: Markup) -> Markup {
    layout_with(title, viewer, current, body, None)
}

/// [`layout`], reloading itself every `refresh_secs` when given (no script needed).
pub fn layout_with(
    title: &str,
    viewer: Option<&Viewer>,
    current: &str,
    body: Markup,
    refresh_secs: Option<u32>,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(secs) = refresh_secs { meta http-equiv="refresh" content=(secs); }
                title { (title) " - Custos console" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    a class="brand" href="/console/" { "Custos console" }
                    @if let Some(v) = viewer {
                        div class="who" {
                            span { "Signed in as " strong { (v.username) } }
                            @if !v.roles.is_empty() {
                                span class="roles" { " (" (roles_label(&v.roles)) ")" }
                            }
                            form method="post" action="/console/logout" class="inline" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                @if let Some(v) = viewer {
                    @if !v.roles.is_empty() {
                        nav aria-label="Console pages" {
                            ul {
                                @for p in PAGES.iter().filter(|p| allowed(&v.roles, p.roles)) {
                                    li {
                                        @if p.path == current {
                                            a href=(p.path) aria-current="page" { span class="group" { (p.group) ": " } (p.title) }
                                        } @else {
                                            a href=(p.path) { span class="group" { (p.group) ": " } (p.title) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    (body)
                }
                footer { p { "All times are UTC (ISO 8601, marked Z)." } }
            }
        }
    }
}

/// A complete response: status and page.
pub fn page(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [
            ("cache-control", "no-store"),
            ("content-type", "text/html; charset=utf-8"),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// The 403 page of a task that needs one of `roles`.
pub fn forbidden(viewer: &Viewer, roles: &[Role]) -> Response {
    let body = if viewer.roles.is_empty() {
        no_role_body()
    } else {
        html! {
            h1 { "Not allowed" }
            p role="alert" { "This task needs the role " strong { (roles_label(roles)) } ". Ask your Custos administrator if you need it." }
            p { a href="/console/" { "Back to your pages" } }
        }
    };
    page(
        StatusCode::FORBIDDEN,
        layout("Not allowed", Some(viewer), "", body),
    )
}

/// What a user without a Custos role is told.
pub fn no_role_body() -> Markup {
    html! {
        h1 { "No Custos role" }
        p role="alert" {
            "Your account has no Custos role, so no console page is open to you. "
            "The console serves compliance officers, privacy officers, incident responders and auditors; "
            "ask your Custos administrator for the role your work needs."
        }
    }
}

/// The console's 404 page.
pub fn not_found(viewer: Option<&Viewer>) -> Response {
    page(
        StatusCode::NOT_FOUND,
        layout(
            "Page not found",
            viewer,
            "",
            html! {
                h1 { "Page not found" }
                p { "The console has no page at this address." }
                p { a href="/console/" { "Go to the console's start page" } }
            },
        ),
    )
}

/// An error page with a title and a message (e.g. a sign-in that failed).
pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    page(
        status,
        layout(
            title,
            None,
            "",
            html! {
                h1 { (title) }
                p role="alert" { (message) }
                p { a href="/console/" { "Go to the console's start page" } }
            },
        ),
    )
}

/// A failed API call as a block on the page: the problem's title, status and detail, and
/// for 403 the role the task needs.
pub fn problem(f: &ApiFailure, roles: &[Role]) -> Markup {
    match f {
        ApiFailure::Problem {
            status,
            title,
            detail,
        } => html! {
            div class="problem" role="alert" {
                h2 { "The request failed: " (title) " (HTTP " (status) ")" }
                @if let Some(d) = detail { p { (d) } }
                @if *status == 403 {
                    p { "This task needs the role " strong { (roles_label(roles)) } "." }
                }
            }
        },
        ApiFailure::Unavailable(why) => html! {
            div class="problem" role="alert" {
                h2 { "The service behind this page did not answer" }
                p { (why) }
            }
        },
    }
}

/// Validation messages above a form.
pub fn invalid(errors: &[String]) -> Markup {
    html! {
        @if !errors.is_empty() {
            div class="problem" role="alert" {
                h2 { "Please correct the form" }
                ul { @for e in errors { li { (e) } } }
            }
        }
    }
}

/// A text input with its label and an optional hint.
pub fn field(name: &str, label: &str, value: &str, hint: Option<&str>) -> Markup {
    let id = format!("f-{name}");
    let hint_id = format!("{id}-hint");
    html! {
        div class="field" {
            label for=(id) { (label) }
            @if let Some(h) = hint {
                input id=(id) name=(name) type="text" value=(value) aria-describedby=(hint_id);
                span class="hint" id=(hint_id) { (h) }
            } @else {
                input id=(id) name=(name) type="text" value=(value);
            }
        }
    }
}

/// A JSON value as display text: strings bare, arrays joined, null empty.
pub fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

/// A timestamp as ISO 8601 UTC with `Z` (input in RFC 3339 or ClickHouse's
/// `YYYY-MM-DD HH:MM:SS[.fff]` taken as UTC); anything else as it came.
pub fn utc(v: &serde_json::Value) -> String {
    if let Some(n) = v.as_i64() {
        // Epoch milliseconds (the consent service's columns); seconds when small.
        let ms = if n.abs() < 100_000_000_000 {
            n * 1000
        } else {
            n
        };
        if let Some(t) = chrono::DateTime::from_timestamp_millis(ms) {
            return t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        }
    }
    let s = text(v);
    parse_utc(&s)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or(s)
}

/// Parses RFC 3339 or ClickHouse's UTC text.
pub fn parse_utc(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{DateTime, NaiveDateTime, Utc};
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

/// The CSS, embedded in the binary.
pub const CSS: &str = include_str!("../assets/console.css");

/// Markup that is already safe (constant text only).
pub fn raw(s: &'static str) -> PreEscaped<&'static str> {
    PreEscaped(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolated_values_are_escaped() {
        let v = Viewer {
            username: "<img src=x onerror=alert(1)>".into(),
            roles: vec![Role::Auditor],
            csrf: "\"><script>".into(),
        };
        let out = layout("t<b>", Some(&v), "", html! { p { ("a&b") } }).into_string();
        assert!(!out.contains("<img src=x"));
        assert!(out.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!out.contains("\"><script>"));
        assert!(out.contains("t&lt;b&gt;"));
        assert!(out.contains("a&amp;b"));
    }

    #[test]
    fn navigation_shows_only_the_roles_pages() {
        let v = Viewer {
            username: "ingrid".into(),
            roles: vec![Role::IncidentResponder],
            csrf: "c".into(),
        };
        let out = layout("x", Some(&v), "", html! {}).into_string();
        assert!(out.contains(TOKEN_TRACE.path));
        assert!(out.contains(ALERTS.path));
        assert!(!out.contains(ACCESS.path));
        assert!(!out.contains(REVIEWS.path));
        assert!(!out.contains(INTEGRITY.path));
        let carol = Viewer {
            username: "carol".into(),
            roles: vec![Role::ComplianceOfficer],
            csrf: "c".into(),
        };
        let out = layout("x", Some(&carol), "", html! {}).into_string();
        assert!(out.contains(REVIEWS.path));
        assert!(!out.contains(ALERTS.path));
    }

    #[test]
    fn roles_read_as_words() {
        assert_eq!(
            roles_label(&[Role::ComplianceOfficer, Role::Auditor]),
            "compliance officer or auditor"
        );
        assert_eq!(roles_label(&[Role::Auditor]), "auditor");
    }

    #[test]
    fn times_are_shown_in_utc_with_z() {
        assert_eq!(
            utc(&serde_json::json!("2026-03-01 10:00:00.5")),
            "2026-03-01T10:00:00.500Z"
        );
        assert_eq!(
            utc(&serde_json::json!("2026-03-01T11:00:00+01:00")),
            "2026-03-01T10:00:00.000Z"
        );
        assert_eq!(utc(&serde_json::json!("n/a")), "n/a");
        assert_eq!(
            utc(&serde_json::json!(1_772_359_200_000_i64)),
            "2026-03-01T10:00:00.000Z"
        );
    }
}
