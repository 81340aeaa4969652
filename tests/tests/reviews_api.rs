//! End-to-end: the break-glass review queue of the query service on the real ClickHouse.
//! Break-glass openings and a BTG access go through the real ingest (two tenants: one only
//! read, one decided on); the query API runs in-process with a fixed clock, so due, open and
//! overdue are exact.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use custos_schemas::row::event_key;
use custos_tests::*;
use serde_json::{json, Value};

mod support;

use support::alerts::*;
use support::reports::ce;
use support::{ensure_schema, get, rows, token, url};

/// "Now" of every app here.
const NOW: &str = "2026-03-02T12:00:00Z";

struct Seeded {
    /// Read only.
    queue: String,
    /// Decided on.
    decided: String,
}

fn opened(tenant: &str, name: &str, sub: &str, time: &str) -> Value {
    ce(
        tenant,
        &format!("{tenant}-{name}"),
        "custos.breakglass.opened",
        time,
        json!({"iss": "https://as.test/realms/general", "sub": sub, "fhirUser": format!("Practitioner/{sub}"),
            "client_id": "ehr-app", "patient": format!("RAWPAT-{tenant}"), "reason": "unconscious patient in ED",
            "expiresAt": "2026-03-03T00:00:00Z", "sourceIp": "10.0.0.7"}),
    )
}

fn btg_access(tenant: &str, name: &str, sub: &str, time: &str) -> Value {
    ce(
        tenant,
        &format!("{tenant}-{name}"),
        "custos.fhir.access",
        time,
        json!({"requestId": name, "iss": "https://as.test/realms/general", "sub": sub,
            "fhirUser": format!("Practitioner/{sub}"), "client_id": "ehr-app", "jti": format!("J-{tenant}"),
            "scope": "user/Condition.rs", "interaction": "read", "resourceType": "Condition",
            "resourceId": "CN-1", "patient": format!("Patient/RAWPAT-{tenant}"), "purposeOfUse": ["BTG"],
            "breakGlassReason": "unconscious patient in ED", "decision": "permit", "httpStatus": 200,
            "sourceIp": "10.0.0.7", "userAgent": "Test/1"}),
    )
}

fn key(tenant: &str, name: &str) -> String {
    event_key("//custos.test/query", &format!("{tenant}-{name}"))
}

async fn seed() -> Result<Seeded> {
    ensure_schema()?;
    let queue = unique("rq");
    let decided = unique("rd");
    let mut events = Vec::new();
    for t in [&queue, &decided] {
        events.push(opened(t, "O1", "dr-bob", "2026-03-01T10:00:00Z"));
        events.push(btg_access(t, "A1", "dr-bob", "2026-03-01T10:10:00Z"));
        events.push(opened(t, "O2", "dr-carol", "2026-03-01T20:00:00Z"));
        events.push(opened(t, "O3", "dr-bob", "2026-03-02T09:00:00Z"));
    }
    let msgs: Vec<Msg> = events.iter().map(Msg::json).collect();
    support::ingest_all("reviews", &[], &msgs).await?;
    Ok(Seeded { queue, decided })
}

fn seeded() -> &'static Seeded {
    static SEEDED: OnceLock<Seeded> = OnceLock::new();
    SEEDED.get_or_init(|| support::seeded(seed))
}

/// review id -> (state, due_at) of a queue page.
fn states(v: &Value) -> BTreeMap<String, (String, String)> {
    v["reviews"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["review_id"].as_str().unwrap_or_default().to_owned(),
                (
                    r["state"].as_str().unwrap_or_default().to_owned(),
                    r["due_at"].as_str().unwrap_or_default().to_owned(),
                ),
            )
        })
        .collect()
}

fn queue_url(tenant: &str, state: &str) -> String {
    url(
        "/v1/break-glass/reviews",
        &[("tenant", tenant), ("state", state)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_are_due_open_and_overdue_by_the_tenants_due_time() -> Result<()> {
    let s = seeded();
    let t = &s.queue;
    let carol = token(&unique("carol"), &["compliance_officer"]);
    let (o1, o2, o3) = (key(t, "O1"), key(t, "O2"), key(t, "O3"));

    // Default: due 24 hours after the opening.
    let app = app_at_time(Some(ms(NOW)), &[]);
    let r = get(&app, &queue_url(t, "all"), Some(&carol)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["due_hours"], 24);
    assert_eq!(v["now"], "2026-03-02T12:00:00.000Z");
    let all = states(&v);
    let order: Vec<&str> = v["reviews"]
        .as_array()
        .context("reviews")?
        .iter()
        .filter_map(|r| r["review_id"].as_str())
        .collect();
    assert_eq!(
        order,
        [o1.as_str(), o2.as_str(), o3.as_str()],
        "oldest first"
    );
    assert_eq!(
        all[&o1],
        ("overdue".into(), "2026-03-02T10:00:00.000Z".into())
    );
    assert_eq!(all[&o2], ("open".into(), "2026-03-02T20:00:00.000Z".into()));
    assert_eq!(all[&o3], ("open".into(), "2026-03-03T09:00:00.000Z".into()));
    let first = &v["reviews"][0];
    assert_eq!(first["user_sub"], "dr-bob");
    assert_eq!(first["reason"], "unconscious patient in ED");
    assert_eq!(first["decision"], "");
    assert_eq!(first["decided_at"], Value::Null);
    assert!(!r.text().contains("RAWPAT-"), "raw patient id answered");
    let only = |state: &str| {
        let app = app.clone();
        let carol = carol.clone();
        let path = queue_url(t, state);
        async move { states(&get(&app, &path, Some(&carol)).await.json()) }
    };
    assert_eq!(only("overdue").await.keys().collect::<Vec<_>>(), [&o1]);
    assert_eq!(only("open").await.len(), 2);
    assert!(only("decided").await.is_empty());

    // A tenant's own due time (12 hours) moves O2 past due; another tenant keeps 24.
    let by_tenant = format!("{t}=12,other-tenant=48");
    let app12 = app_at_time(Some(ms(NOW)), &["--review-due-hours-by-tenant", &by_tenant]);
    let v = get(&app12, &queue_url(t, "overdue"), Some(&carol))
        .await
        .json();
    assert_eq!(v["due_hours"], 12);
    let overdue = states(&v);
    assert_eq!(overdue.len(), 2);
    assert_eq!(
        overdue[&o2],
        ("overdue".into(), "2026-03-02T08:00:00.000Z".into())
    );
    // An hour before O1's due time it is open.
    let early = app_at_time(Some(ms("2026-03-02T09:00:00Z")), &[]);
    let v = get(&early, &queue_url(t, "all"), Some(&carol)).await.json();
    assert_eq!(states(&v)[&o1].0, "open");

    // Paging with the cursor, and bad parameters.
    let p = url(
        "/v1/break-glass/reviews",
        &[("tenant", t.as_str()), ("limit", "2")],
    );
    let v = get(&app, &p, Some(&carol)).await.json();
    assert_eq!(states(&v).len(), 2);
    let cursor = v["next_cursor"].as_str().context("cursor")?;
    let p2 = url(
        "/v1/break-glass/reviews",
        &[("tenant", t.as_str()), ("limit", "2"), ("cursor", cursor)],
    );
    let v = get(&app, &p2, Some(&carol)).await.json();
    assert_eq!(states(&v).keys().collect::<Vec<_>>(), [&o3]);
    assert_problem(
        &get(&app, &queue_url(t, "late"), Some(&carol)).await,
        400,
        "bad-request",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_compliance_officers_decide_and_auditors_read() -> Result<()> {
    let s = seeded();
    let t = &s.queue;
    let app = app_at_time(Some(ms(NOW)), &[]);
    let decision = format!("/v1/break-glass/reviews/{}/decision", key(t, "O3"));
    let body = json!({"decision": "justified", "note": "ED record", "tenant": t}).to_string();
    let auditor = token(&unique("arthur"), &["auditor"]);
    assert_eq!(
        get(&app, &queue_url(t, "all"), Some(&auditor)).await.status,
        200
    );
    let ingrid = token(&unique("ingrid"), &["incident_responder"]);
    let nobody = token(&unique("pat"), &[]);
    for tk in [&auditor, &ingrid, &nobody] {
        assert_problem(
            &post(&app, &decision, Some(tk), &body).await,
            403,
            "forbidden",
        );
    }
    for tk in [&ingrid, &nobody] {
        assert_problem(
            &get(&app, &queue_url(t, "all"), Some(tk)).await,
            403,
            "forbidden",
        );
    }
    assert_problem(
        &post(&app, &decision, None, &body).await,
        401,
        "unauthorized",
    );
    // Still undecided.
    let carol = token(&unique("carol"), &["compliance_officer"]);
    let v = get(&app, &queue_url(t, "decided"), Some(&carol))
        .await
        .json();
    assert!(states(&v).is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_is_recorded_once_audited_ledgered_and_shown_in_the_report() -> Result<()> {
    let s = seeded();
    let t = &s.decided;
    let app = app_at_time(Some(ms(NOW)), &[]);
    let sub = unique("carol");
    let carol = token(&sub, &["compliance_officer"]);
    let o1 = key(t, "O1");
    let path = format!("/v1/break-glass/reviews/{o1}/decision");
    let body = |decision: &str, note: &str| {
        json!({"decision": decision, "note": note, "tenant": t}).to_string()
    };

    for bad in [
        body("maybe", "x"),
        body("justified", ""),
        body("justified", &"n".repeat(2001)),
        json!({"decision": "justified", "tenant": t}).to_string(),
        json!({"decision": "justified", "note": "x", "tenant": t, "extra": 1}).to_string(),
        "{".to_owned(),
    ] {
        assert_problem(
            &post(&app, &path, Some(&carol), &bad).await,
            400,
            "bad-request",
        );
    }
    let unknown = format!(
        "/v1/break-glass/reviews/{}/decision",
        key(t, "never-opened")
    );
    let r = post(&app, &unknown, Some(&carol), &body("justified", "x")).await;
    assert_problem(&r, 404, "not-found");
    // An access is not a review item: only openings are.
    let access = format!("/v1/break-glass/reviews/{}/decision", key(t, "A1"));
    let r = post(&app, &access, Some(&carol), &body("justified", "x")).await;
    assert_problem(&r, 404, "not-found");

    let r = post(
        &app,
        &path,
        Some(&carol),
        &body("justified", "patient unconscious, ED notes confirm"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["decision"]["decision"], "justified");
    assert_eq!(v["decision"]["actor"], sub.as_str());
    assert_eq!(v["decision"]["decided_at"], "2026-03-02T12:00:00.000Z");
    assert_eq!(v["decision"]["opened_at"], "2026-03-01T10:00:00.000Z");
    assert_eq!(v["review"]["state"], "justified");
    assert_eq!(v["review"]["decided_by"], sub.as_str());
    let r = post(
        &app,
        &path,
        Some(&carol),
        &body("unjustified", "second opinion"),
    )
    .await;
    assert_problem(&r, 409, "conflict");

    let v = get(&app, &queue_url(t, "decided"), Some(&carol))
        .await
        .json();
    assert_eq!(states(&v).get(&o1).map(|s| s.0.as_str()), Some("justified"));
    let v = get(&app, &queue_url(t, "overdue"), Some(&carol))
        .await
        .json();
    assert!(states(&v).is_empty(), "{v}");

    // The break-glass report shows each opening's and each access's review.
    let report = url(
        "/v1/reports/break-glass",
        &[
            ("tenant", t.as_str()),
            ("from", "2026-03-01"),
            ("to", "2026-03-03"),
        ],
    );
    let r = get(&app, &report, Some(&carol)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let by_key: BTreeMap<String, Value> = rows(&r.json())
        .into_iter()
        .map(|r| (r["event_key"].as_str().unwrap_or_default().to_owned(), r))
        .collect();
    assert_eq!(by_key.len(), 4);
    let review = |k: &str| {
        let r = &by_key[k];
        (
            r["kind"].as_str().unwrap_or_default().to_owned(),
            r["review_id"].as_str().unwrap_or_default().to_owned(),
            r["review_state"].as_str().unwrap_or_default().to_owned(),
            r["review_decision"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let j = |kind: &str, id: &str, state: &str, d: &str| {
        (
            kind.to_owned(),
            id.to_owned(),
            state.to_owned(),
            d.to_owned(),
        )
    };
    assert_eq!(review(&o1), j("opened", &o1, "justified", "justified"));
    assert_eq!(
        review(&key(t, "A1")),
        j("access", &o1, "justified", "justified")
    );
    assert_eq!(
        review(&key(t, "O2")),
        j("opened", &key(t, "O2"), "open", "")
    );
    assert_eq!(
        by_key[&key(t, "O2")]["review_due_at"],
        "2026-03-02T20:00:00.000Z"
    );
    let csv = url(
        "/v1/reports/break-glass",
        &[
            ("tenant", t.as_str()),
            ("from", "2026-03-01"),
            ("to", "2026-03-03"),
            ("format", "csv"),
        ],
    );
    let text = get(&app, &csv, Some(&carol)).await.text();
    assert!(text
        .lines()
        .next()
        .is_some_and(|h| h.ends_with("review_id,review_due_at,review_state,review_decision")));

    // In the query audit (the refusal after the record too), and in the ledger.
    let audit = audit_of(&sub, 8).await?;
    let of = |status: &str| {
        audit
            .iter()
            .filter(|(r, s)| r == "break-glass-review-decision" && s == status)
            .count()
    };
    assert_eq!(of("answered"), 1, "{audit:?}");
    assert_eq!(of("rejected"), 3, "{audit:?}");
    let checked = verify_ledger(t).await?;
    assert!(
        checked
            .iter()
            .any(|(n, rows)| n == "break_glass_reviews" && *rows == 1),
        "{checked:?}"
    );
    Ok(())
}
