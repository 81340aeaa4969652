//! End-to-end tests of the FHIR endpoint's search (`/fhir/AuditEvent`): the general
//! parameters, accurate totals, and every error as an OperationOutcome (bad parameters,
//! formats, methods, tokens, tenants, an unavailable query audit). The scenario and the
//! in-test issuer are in `support::fhir`.

use anyhow::{Context, Result};
use axum::http::Method;

mod support;

use support::fhir::*;
use support::{entry_ids, send, url};

// ---------------------------------------------------------------- search parameters and errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn general_parameters_totals_and_errors_are_fhir() -> Result<()> {
    let sc = scenario();
    let app = app(&[]);
    let officer = token(&format!("params-{}", sc.tenant), COMPLIANCE);
    let base = search_params(sc);
    let with = |extra: &[(&str, &str)]| {
        let mut p = base.clone();
        p.extend_from_slice(extra);
        url("/fhir/AuditEvent", &p)
    };

    // _format: JSON in its spellings (an unencoded + decodes as a space) is served.
    for f in ["json", "application/json", "application/fhir+json"] {
        let r = get(
            &app,
            &with(&[("_format", f), ("_count", "2")]),
            Some(&officer),
        )
        .await;
        assert_eq!(r.status, 200, "{f}: {}", r.text());
        assert_eq!(r.content_type, "application/fhir+json");
    }
    let raw_plus = format!("{}&_format=application/fhir+json", with(&[]));
    assert_eq!(get(&app, &raw_plus, Some(&officer)).await.status, 200);
    // XML and other formats are not served: 406, from _format or Accept.
    for f in ["xml", "application/fhir+xml", "text/turtle"] {
        let r = get(&app, &with(&[("_format", f)]), Some(&officer)).await;
        assert_outcome(&r, 406, "not-supported", f);
    }
    let r = send(
        &app,
        Method::GET,
        &with(&[]),
        Some(&officer),
        &[("accept", "application/fhir+xml")],
    )
    .await;
    assert_outcome(&r, 406, "not-supported", "Accept xml");
    let r = send(
        &app,
        Method::GET,
        &with(&[]),
        Some(&officer),
        &[(
            "accept",
            "application/fhir+xml;q=1.0, application/fhir+json;q=0.9",
        )],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_outcome(
        &get(&app, &with(&[("_format", "csv")]), Some(&officer)).await,
        400,
        "invalid",
        "csv",
    );
    // _pretty.
    let r = get(
        &app,
        &with(&[("_pretty", "true"), ("_count", "1")]),
        Some(&officer),
    )
    .await;
    assert!(
        r.text().contains("\n  \"resourceType\": \"Bundle\""),
        "{}",
        r.text()
    );

    // _total=accurate: the count over the same filter, on every page.
    let first = get(
        &app,
        &with(&[("_total", "accurate"), ("_count", "10")]),
        Some(&officer),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    assert_eq!(first["total"], ACCESSES);
    assert_eq!(entry_ids(&first).len(), 10);
    let next = first["link"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
        .and_then(|l| l["url"].as_str())
        .context("next link")?
        .trim_start_matches("http://127.0.0.1:8088")
        .to_owned();
    assert!(next.contains("_total=accurate"), "{next}");
    let second = get(&app, &next, Some(&officer)).await.json();
    assert_eq!(second["total"], ACCESSES);
    assert!(entry_ids(&second).is_disjoint(&entry_ids(&first)));
    let est = get(
        &app,
        &with(&[("_total", "estimate"), ("outcome", "4")]),
        Some(&officer),
    )
    .await;
    assert_eq!(
        est.json()["total"],
        5,
        "the denied accesses: 0, 5, 10, 15, 20"
    );
    // _total=none, and no _total on a page that is not the whole result: no total.
    let none = get(&app, &with(&[("_total", "none")]), Some(&officer))
        .await
        .json();
    assert!(none.get("total").is_none());
    let partial = get(&app, &with(&[("_count", "3")]), Some(&officer))
        .await
        .json();
    assert!(partial.get("total").is_none());
    // _summary=count: the total only.
    let count = get(&app, &with(&[("_summary", "count")]), Some(&officer))
        .await
        .json();
    assert_eq!(count["total"], ACCESSES);
    assert!(count.get("entry").is_none());
    // Repeated tokens are and-ed: read and update never match one event.
    let and = get(
        &app,
        &with(&[
            ("subtype", "read"),
            ("subtype", "update"),
            ("_total", "accurate"),
        ]),
        Some(&officer),
    )
    .await
    .json();
    assert_eq!(and["total"], 0);
    let or = get(
        &app,
        &with(&[("subtype", "read,update"), ("_total", "accurate")]),
        Some(&officer),
    )
    .await
    .json();
    assert_eq!(or["total"], 17, "12 reads and 5 updates");
    // _sort=date is the order of every page; _id narrows to ids.
    let sorted = get(
        &app,
        &with(&[
            ("_sort", "date"),
            ("_id", &format!("{},{}", sc.keys[3], sc.keys[7])),
        ]),
        Some(&officer),
    )
    .await;
    assert_eq!(sorted.status, 200, "{}", sorted.text());
    let sorted = sorted.json();
    assert_eq!(sorted["entry"][0]["resource"]["id"], sc.keys[3].as_str());
    assert_eq!(sorted["entry"][1]["resource"]["id"], sc.keys[7].as_str());
    assert_eq!(sorted["total"], 2);

    // Unknown and unsupported parameters: 400 OperationOutcomes naming the parameter.
    for (p, v, names) in [
        ("_include", "AuditEvent:agent", "_include"),
        ("patient:missing", "true", "patient:missing"),
        ("_sort", "-date", "_sort"),
        ("_summary", "true", "_summary"),
        ("_total", "exactly", "_total"),
        ("nonsense", "1", "nonsense"),
    ] {
        let r = get(&app, &with(&[(p, v)]), Some(&officer)).await;
        let d = assert_outcome(&r, 400, "invalid", p);
        assert!(d.contains(names), "{p}: {d}");
    }
    // The diagnostics never echo a value (raw patient ids).
    let r = get(
        &app,
        &url("/fhir/AuditEvent", &[("patient", "RAWPAT-secret\u{1}")]),
        Some(&officer),
    )
    .await;
    assert_outcome(&r, 400, "invalid", "control character");
    assert!(!r.text().contains("RAWPAT-secret"));

    // Every other error under /fhir is an OperationOutcome too; /v1 keeps problem+json.
    assert_outcome(
        &get(&app, "/fhir/Patient", Some(&officer)).await,
        404,
        "not-found",
        "unknown type",
    );
    assert_outcome(
        &get(&app, "/fhir/AuditEvent/x/_history/1", Some(&officer)).await,
        404,
        "not-found",
        "history",
    );
    let post = send(&app, Method::POST, "/fhir/AuditEvent", Some(&officer), &[]).await;
    assert_outcome(&post, 405, "not-supported", "POST");
    let anon = send(&app, Method::GET, &with(&[]), None, &[]).await;
    assert_outcome(&anon, 401, "login", "search without token");
    let privacy = token("privacy-fhir", &["privacy_officer"]);
    assert_outcome(
        &get(&app, &with(&[]), Some(&privacy)).await,
        403,
        "forbidden",
        "role",
    );
    let bound = app_with_tenants();
    let other_only = token_for("bound-fhir", COMPLIANCE, Some(&[&sc.other]));
    assert_outcome(
        &get(&bound, &with(&[]), Some(&other_only)).await,
        403,
        "forbidden",
        "tenant",
    );
    let broken = app_with_broken_audit();
    let r = get(&broken, &with(&[]), Some(&officer)).await;
    assert_outcome(&r, 503, "transient", "audit down");
    let v1 = get(&app, "/v1/reports/patient-access?patient=x", None).await;
    assert_eq!(v1.status, 401);
    assert_eq!(v1.content_type, "application/problem+json");
    Ok(())
}
