//! Compliance officer: the break-glass review queue, overdue items first, then open ones,
//! each with a decision form (justified or not, with a note) posted with the session's CSRF
//! token; the decided items on request.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{check_tenant, link, p, params, render, status_of};
use crate::api::{Api, ApiFailure};
use crate::app::{check_post, Console, User};
use crate::html::{self, field, REVIEWS, REVIEW_DECIDE};

/// Where the decision form posts.
pub const DECIDE_PATH: &str = "/console/compliance/reviews/decide";

/// A table of review items; with `csrf` (a reviewer), each undecided one has a decision form.
pub fn review_table(caption: &str, reviews: &[Value], tenant: &str, csrf: Option<&str>) -> Markup {
    html! {
        @if reviews.is_empty() {
            p { "None." }
        } @else {
            div class="table-wrap" {
                table {
                    caption { (caption) }
                    thead { tr {
                        th scope="col" { "Opened (UTC)" } th scope="col" { "Due (UTC)" }
                        th scope="col" { "State" } th scope="col" { "User" }
                        th scope="col" { "Patient (pseudonym)" } th scope="col" { "Reason" }
                        th scope="col" { "Decision" }
                    } }
                    tbody {
                        @for r in reviews {
                            @let state = html::text(&r["state"]);
                            @let id = html::text(&r["review_id"]);
                            tr class=[(state == "overdue").then_some("flagged")] {
                                td { time { (html::utc(&r["opened_at"])) } }
                                td { time { (html::utc(&r["due_at"])) } }
                                td { @if state == "overdue" { span class="flag" { "overdue" } } @else { (state) } }
                                td { (html::text(&r["user_sub"])) " " (html::text(&r["fhir_user"])) }
                                td { (html::text(&r["patient"])) }
                                td { (html::text(&r["reason"])) }
                                td {
                                    @if !html::text(&r["decision"]).is_empty() {
                                        (html::text(&r["decision"])) " by " (html::text(&r["decided_by"]))
                                        ": " (html::text(&r["note"]))
                                    } @else if let Some(token) = csrf {
                                        form method="post" action=(DECIDE_PATH) {
                                            input type="hidden" name="csrf" value=(token);
                                            input type="hidden" name="review_id" value=(id);
                                            input type="hidden" name="tenant" value=(tenant);
                                            @let nid = format!("note-{id}");
                                            label for=(nid) { "Note" }
                                            textarea id=(nid) name="note" rows="2" maxlength="2000" required {}
                                            button type="submit" name="decision" value="justified" { "Justified" }
                                            " "
                                            button type="submit" name="decision" value="unjustified" class="danger" { "Not justified" }
                                        }
                                    } @else { "not decided" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn reviews_of(a: &Value) -> Vec<Value> {
    a["reviews"].as_array().cloned().unwrap_or_default()
}

/// `GET /console/compliance/reviews`.
pub async fn reviews(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(REVIEWS.roles) {
        return r;
    }
    let q = params(raw.as_deref());
    let tenant = p(&q, "tenant");
    let decided = p(&q, "decided") == "1";
    let mut errors = Vec::new();
    check_tenant(tenant, &mut errors);
    let mut status = status_of(&errors);
    let csrf = user.may(REVIEW_DECIDE).then(|| user.session.csrf.clone());
    let result = if errors.is_empty() {
        let limit = console.cfg.page_rows.to_string();
        let mut states = vec!["overdue", "open"];
        if decided {
            states.push("decided");
        }
        let mut parts: Vec<Result<Value, ApiFailure>> = Vec::new();
        for state in &states {
            let call = [
                ("tenant", tenant),
                ("state", *state),
                ("limit", limit.as_str()),
            ];
            parts.push(
                console
                    .api
                    .get(Api::Query, "/v1/break-glass/reviews", &call, user.token())
                    .await,
            );
        }
        match parts
            .into_iter()
            .collect::<Result<Vec<Value>, ApiFailure>>()
        {
            Ok(pages) => {
                let t = pages
                    .first()
                    .map(|a| html::text(&a["tenant"]))
                    .unwrap_or_default();
                html! {
                    p { "Tenant " strong { (t) } "; reviews are due "
                        (pages.first().map(|a| html::text(&a["due_hours"])).unwrap_or_default())
                        " hours after the opening (states as of " time { (pages.first().map(|a| html::utc(&a["now"])).unwrap_or_default()) } ")." }
                    h2 { "Overdue" }
                    (review_table("Overdue reviews, oldest first (times in UTC)", &reviews_of(&pages[0]), &t, csrf.as_deref()))
                    h2 { "Open" }
                    (review_table("Open reviews, oldest first (times in UTC)", &reviews_of(&pages[1]), &t, csrf.as_deref()))
                    @if let Some(d) = pages.get(2) {
                        h2 { "Decided" }
                        (review_table("Decided reviews (times in UTC)", &reviews_of(d), &t, None))
                    } @else {
                        p { a href=(link(REVIEWS.path, &[("tenant", tenant), ("decided", "1")])) { "Show the decided reviews too" } }
                    }
                }
            }
            Err(f) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, REVIEWS.roles)
            }
        }
    } else {
        html! {}
    };
    let body = html! {
        h1 { (REVIEWS.title) }
        p { "Every break-glass opening is reviewed: was the emergency access justified? Overdue items come first." }
        (html::invalid(&errors))
        form class="filters" method="get" action=(REVIEWS.path) {
            (field("tenant", "Tenant", tenant, Some("Empty: the default tenant.")))
            div class="field" { button type="submit" { "Show reviews" } }
        }
        (result)
    };
    render(status, &REVIEWS, &user, body)
}

/// A decision form as posted.
#[derive(Debug, Deserialize)]
pub struct DecisionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    review_id: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    note: String,
}

/// The API body of a decision form, or the form's errors.
pub fn decision_body(f: &DecisionForm) -> Result<Value, Vec<String>> {
    let mut errors = Vec::new();
    if !(f.review_id.len() == 32 && f.review_id.bytes().all(|b| b.is_ascii_hexdigit())) {
        errors.push(
            "The review id must be the 32 hexadecimal digits of a break-glass opening.".into(),
        );
    }
    if !["justified", "unjustified"].contains(&f.decision.as_str()) {
        errors.push("Choose justified or not justified.".into());
    }
    let note = f.note.trim();
    if note.is_empty() {
        errors.push("A note is required.".into());
    } else if note.len() > 2000 {
        errors.push("The note must be at most 2000 bytes.".into());
    }
    check_tenant(f.tenant.trim(), &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut body = json!({"decision": f.decision, "note": note});
    if !f.tenant.trim().is_empty() {
        body["tenant"] = json!(f.tenant.trim());
    }
    Ok(body)
}

/// `POST /console/compliance/reviews/decide`: records the decision, then back to the queue.
pub async fn decide(
    State(console): State<Arc<Console>>,
    user: User,
    headers: HeaderMap,
    Form(f): Form<DecisionForm>,
) -> Response {
    if let Some(r) = user.refuse(REVIEW_DECIDE) {
        return r;
    }
    if let Some(r) = check_post(&console, &user, &headers, &f.csrf) {
        return r;
    }
    let back = link(REVIEWS.path, &[("tenant", f.tenant.trim())]);
    let outcome = match decision_body(&f) {
        Err(errors) => Err((StatusCode::BAD_REQUEST, html::invalid(&errors))),
        Ok(body) => {
            let path = format!("/v1/break-glass/reviews/{}/decision", f.review_id);
            let key = custos_auth::audit::new_query_id();
            match console
                .api
                .post(Api::Query, &path, &body, user.token(), &key)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => Err((
                    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY),
                    html::problem(&e, REVIEW_DECIDE),
                )),
            }
        }
    };
    match outcome {
        Ok(()) => Redirect::to(&back).into_response(),
        Err((status, why)) => {
            let body = html! {
                h1 { "The decision was not recorded" }
                (why)
                p { a href=(back) { "Back to the reviews" } }
            };
            render(status, &REVIEWS, &user, body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, state: &str, decision: &str) -> Value {
        json!({"review_id": id, "opened_at": "2026-03-01T10:00:00.000Z", "due_at": "2026-03-02T10:00:00.000Z",
            "state": state, "user_sub": "dr-bob", "fhir_user": "Practitioner/bob", "patient": "ps1.k1.x",
            "reason": "<i>ED</i>", "decision": decision, "decided_by": "carol", "note": "ok"})
    }

    #[test]
    fn reviewers_get_a_decision_form_per_undecided_item() {
        let id = "0123456789abcdef0123456789abcdef";
        let out = review_table("c", &[item(id, "overdue", "")], "t1", Some("tok")).into_string();
        assert!(out.contains(DECIDE_PATH));
        assert!(out.contains("value=\"tok\""));
        assert!(out.contains(&format!("value=\"{id}\"")));
        assert!(out.contains("value=\"justified\"") && out.contains("value=\"unjustified\""));
        assert!(out.contains("class=\"flagged\""));
        assert!(out.contains("&lt;i&gt;ED&lt;/i&gt;"));
        let read_only = review_table("c", &[item(id, "open", "")], "t1", None).into_string();
        assert!(!read_only.contains(DECIDE_PATH));
        assert!(read_only.contains("not decided"));
        let done = review_table(
            "c",
            &[item(id, "justified", "justified")],
            "t1",
            Some("tok"),
        )
        .into_string();
        assert!(!done.contains(DECIDE_PATH));
        assert!(done.contains("justified by carol"));
    }

    #[test]
    fn decision_forms_are_checked_before_the_api() {
        let form = |id: &str, decision: &str, note: &str| DecisionForm {
            csrf: String::new(),
            review_id: id.into(),
            tenant: String::new(),
            decision: decision.into(),
            note: note.into(),
        };
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            decision_body(&form(id, "justified", " ED notes ")),
            Ok(json!({"decision": "justified", "note": "ED notes"}))
        );
        assert!(decision_body(&form(id, "justified", "")).is_err());
        assert!(decision_body(&form(id, "maybe", "x")).is_err());
        assert!(decision_body(&form("x", "justified", "x")).is_err());
    }
}
