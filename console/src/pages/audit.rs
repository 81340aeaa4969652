//! Auditor: the integrity of every audit chain with its first break and a link to the proof
//! of that record; one record's membership proof; the query audit (who ran which report,
//! when, with which parameters).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde_json::Value;

use super::{
    check_id, check_tenant, check_time, link, p, pager, params, render, rows, status_of, table, Col,
};
use crate::api::Api;
use crate::app::{Console, User};
use crate::html::{self, field, INTEGRITY, PROOF, QUERY_AUDIT};

fn yes_no(v: &Value) -> maud::Markup {
    match v.as_bool() {
        Some(true) => html! { span class="ok" { "yes" } },
        Some(false) => html! { span class="bad" { "no" } },
        None => html! { "not checked" },
    }
}

/// `GET /console/audit/integrity`: runs the verification when asked (`run=1`).
pub async fn integrity(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(INTEGRITY.roles) {
        return r;
    }
    let q = params(raw.as_deref());
    let keys = ["topic", "partition", "from", "to"];
    let filters: Vec<(&str, &str)> = keys.iter().map(|k| (*k, p(&q, k))).collect();
    let mut errors = Vec::new();
    check_id("Topic", p(&q, "topic"), false, &mut errors);
    let part = p(&q, "partition");
    if !part.is_empty() && part.parse::<u32>().is_err() {
        errors.push("Partition must be a number.".into());
    }
    check_time("From", p(&q, "from"), &mut errors);
    check_time("To", p(&q, "to"), &mut errors);
    let run = p(&q, "run") == "1";
    let mut status = status_of(&errors);
    let result = if run && errors.is_empty() {
        match console
            .api
            .get(Api::Query, "/v1/integrity/verify", &filters, user.token())
            .await
        {
            Ok(a) => {
                let chains = a["chains"].as_array().cloned().unwrap_or_default();
                let clean = a["clean"].as_bool() == Some(true);
                html! {
                    @if clean {
                        p class="notice" role="status" { span class="ok" { "Every chain verified." } " "
                            (html::text(&a["records"])) " records in " (chains.len()) " chains." }
                    } @else {
                        p class="problem" role="alert" { span class="bad" { "Breaks found." } " "
                            (html::text(&a["records"])) " records in " (chains.len()) " chains; the first break of each broken chain is below." }
                    }
                    @if a["jwks_configured"].as_bool() != Some(true) {
                        p class="notice" { "The query API has no checkpoint keys configured: signatures are reported as unverifiable." }
                    }
                    div class="table-wrap" {
                        table {
                            caption { "Integrity per chain (topic/partition)" }
                            thead { tr {
                                th scope="col" { "Chain" } th scope="col" { "Status" } th scope="col" class="num" { "Records" }
                                th scope="col" class="num" { "Offsets" } th scope="col" class="num" { "Checkpoints verified" }
                                th scope="col" class="num" { "Findings" } th scope="col" { "First break" }
                            } }
                            tbody {
                                @for c in &chains {
                                    @let ok = c["clean"].as_bool() == Some(true);
                                    tr class=[(!ok).then_some("flagged")] {
                                        th scope="row" { (html::text(&c["chain"])) }
                                        td { @if ok { span class="ok" { "verified" } } @else { span class="bad" { "broken" } } }
                                        td class="num" { (html::text(&c["records"])) }
                                        td class="num" { (html::text(&c["first_offset"])) "-" (html::text(&c["last_offset"])) }
                                        td class="num" { (html::text(&c["checkpoints_ok"])) }
                                        td class="num" { (html::text(&c["findings_total"])) " + " (html::text(&c["checkpoint_findings_total"])) " checkpoint" }
                                        td {
                                            @let b = &c["first_break"];
                                            @if b.is_object() {
                                                span class="flag" { (html::text(&b["kind"])) } " at offset " (html::text(&b["offset"])) ": " (html::text(&b["message"]))
                                                @let eid = html::text(&b["event_id"]);
                                                @if !eid.is_empty() {
                                                    " " a href=(link(PROOF.path, &[("event_id", &eid)])) { "proof of event " (eid) }
                                                }
                                            } @else { "none" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Err(f) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, INTEGRITY.roles)
            }
        }
    } else {
        html! {}
    };
    let body = html! {
        h1 { (INTEGRITY.title) }
        p { "Recomputes every hash chain of the audit records and checks its signed checkpoints. It reads every record in scope, so it can take a while." }
        (html::invalid(&errors))
        form class="filters" method="get" action=(INTEGRITY.path) {
            input type="hidden" name="run" value="1";
            (field("topic", "Topic", p(&q, "topic"), Some("Optional: one input topic.")))
            (field("partition", "Partition", part, Some("Optional, with a topic.")))
            (field("from", "From (UTC)", p(&q, "from"), Some("Optional.")))
            (field("to", "To (UTC, exclusive)", p(&q, "to"), Some("Optional.")))
            div class="field" { button type="submit" { "Verify now" } }
        }
        (result)
    };
    render(status, &INTEGRITY, &user, body)
}

/// `GET /console/audit/proof?event_id=` (or `event_key=`).
pub async fn proof(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(PROOF.roles) {
        return r;
    }
    let q = params(raw.as_deref());
    let filters = [
        ("event_id", p(&q, "event_id")),
        ("event_key", p(&q, "event_key")),
        ("tenant", p(&q, "tenant")),
    ];
    let asked = !filters[0].1.is_empty() || !filters[1].1.is_empty();
    let mut errors = Vec::new();
    check_id("Event id", filters[0].1, false, &mut errors);
    check_id("Event key", filters[1].1, false, &mut errors);
    check_tenant(filters[2].1, &mut errors);
    let mut status = status_of(&errors);
    let result = if asked && errors.is_empty() {
        match console
            .api
            .get(Api::Query, "/v1/integrity/proof", &filters, user.token())
            .await
        {
            Ok(a) => {
                let checks = &a["checks"];
                let pretty = serde_json::to_string_pretty(&a).unwrap_or_default();
                html! {
                    dl class="facts" {
                        dt { "Chain" } dd { (html::text(&a["chain"])) }
                        dt { "Status" } dd { (html::text(&a["status"])) }
                        dt { "Verified" } dd { (yes_no(&checks["verified"])) }
                        dt { "Record hash valid" } dd { (yes_no(&checks["record_hash_valid"])) }
                        dt { "Link to predecessor valid" } dd { (yes_no(&checks["previous_link_valid"])) }
                        dt { "Path to the checkpoint valid" } dd { (yes_no(&checks["path_valid"])) }
                        dt { "Head matches the signed checkpoint" } dd { (yes_no(&checks["head_matches_checkpoint"])) }
                        dt { "Checkpoint signature valid" } dd { (yes_no(&checks["signature_valid"])) }
                        dt { "Checkpoint keys" } dd { (html::text(&a["jwks_uri"])) }
                    }
                    details {
                        summary { "The whole proof (JSON, for an outside check)" }
                        pre { (pretty) }
                    }
                }
            }
            Err(f) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, PROOF.roles)
            }
        }
    } else {
        html! {}
    };
    let body = html! {
        h1 { (PROOF.title) }
        p { "A record, its neighbours in the chain, the records up to the covering signed checkpoint and that checkpoint: what an outside party needs to check that the record belongs to the log." }
        (html::invalid(&errors))
        form class="filters" method="get" action=(PROOF.path) {
            (field("event_id", "Event id", filters[0].1, None))
            (field("event_key", "or event key", filters[1].1, None))
            (field("tenant", "Tenant", filters[2].1, Some("Empty: the default tenant.")))
            div class="field" { button type="submit" { "Show the proof" } }
        }
        (result)
    };
    html::page(
        status,
        html::layout(PROOF.title, Some(&user.viewer()), INTEGRITY.path, body),
    )
}

/// `GET /console/audit/queries`.
pub async fn queries(
    State(console): State<Arc<Console>>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = user.refuse(QUERY_AUDIT.roles) {
        return r;
    }
    let q = params(raw.as_deref());
    let keys = ["caller", "report", "tenant", "from", "to"];
    let filters: Vec<(&str, &str)> = keys.iter().map(|k| (*k, p(&q, k))).collect();
    let mut errors = Vec::new();
    check_id("Caller", p(&q, "caller"), false, &mut errors);
    check_id("Report", p(&q, "report"), false, &mut errors);
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
            .get(Api::Query, "/v1/reports/query-audit", &call, user.token())
            .await
        {
            Ok(a) => html! {
                (super::window(&a))
                (table("Reports answered (times in UTC)", rows(&a), &[
                    ("asked_at", "Asked (UTC)", Col::Time),
                    ("caller_sub", "Caller (sub)", Col::Text),
                    ("caller_client", "Through application", Col::Text),
                    ("caller_roles", "Roles", Col::Text),
                    ("report", "Report", Col::Text),
                    ("tenant", "Tenant", Col::Text),
                    ("parameters", "Parameters", Col::Text),
                    ("format", "Format", Col::Text),
                    ("status", "Status", Col::Text),
                    ("rows_returned", "Rows", Col::Num),
                    ("duration_ms", "Duration (ms)", Col::Num),
                ], None))
                (pager(QUERY_AUDIT.path, &filters, cursor, &a))
            },
            Err(f) => {
                status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                html::problem(&f, QUERY_AUDIT.roles)
            }
        }
    } else {
        html! {}
    };
    let body = html! {
        h1 { (QUERY_AUDIT.title) }
        p { "Who ran which report, when, with which parameters (patient ids appear only as pseudonyms)." }
        (html::invalid(&errors))
        form class="filters" method="get" action=(QUERY_AUDIT.path) {
            (field("caller", "Caller (sub)", p(&q, "caller"), Some("Optional.")))
            (field("report", "Report", p(&q, "report"), Some("Optional, e.g. patient-access.")))
            (field("tenant", "Tenant", p(&q, "tenant"), Some("Empty: the default tenant.")))
            (field("from", "From (UTC)", p(&q, "from"), None))
            (field("to", "To (UTC, exclusive)", p(&q, "to"), None))
            div class="field" { button type="submit" { "Show" } }
        }
        (result)
    };
    render(status, &QUERY_AUDIT, &user, body)
}
