//! End-to-end: hostile and bad report parameters: SQL injection strings are bound values
//! that match nothing, and every bad parameter is a 400 problem (the scenario of
//! `support::reports`).

use anyhow::Result;
use custos_tests::*;

mod support;

use support::reports::*;
use support::{ensure_schema, get, token, url};

const INJECTIONS: [&str; 9] = [
    "' OR 1=1 --",
    "x'); DROP TABLE custos.audit_events; --",
    "\\' OR ''='",
    "\" OR \"\"=\"",
    "1; SELECT * FROM system.users",
    "{tenant:String}",
    "? OR 1=1",
    "%27%20OR%201%3D1",
    "Patient/1' UNION SELECT name FROM system.tables --",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_injection_strings_are_harmless() -> Result<()> {
    let sc = scenario();
    let app = app();
    let auditor = token("auditor-inject", &["auditor"]);
    let before: u64 = admin()
        .query("SELECT count() FROM custos.audit_events FINAL WHERE tenant = ?")
        .bind(&sc.tenant)
        .fetch_one()
        .await?;
    let endpoints: Vec<(&str, Vec<&str>)> = vec![
        (
            "/v1/reports/patient-access",
            vec![
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
                "limit",
                "cursor",
                "format",
            ],
        ),
        (
            "/v1/reports/user-activity",
            vec![
                "user",
                "tenant",
                "event_type",
                "client",
                "resource_type",
                "interaction",
                "outcome",
            ],
        ),
        ("/v1/reports/token-trace", vec!["jti", "session", "client"]),
        ("/v1/reports/disclosures", vec!["patient", "client"]),
        ("/v1/reports/break-glass", vec!["patient", "user"]),
        (
            "/v1/reports/revocation-violations",
            vec!["patient", "client"],
        ),
        ("/v1/reports/consent-history", vec!["patient", "client"]),
        (
            "/v1/reports/query-audit",
            vec!["caller", "report", "tenant"],
        ),
        (
            "/fhir/AuditEvent",
            vec![
                "patient",
                "agent",
                "entity-type",
                "date",
                "action",
                "outcome",
                "subtype",
                "_count",
                "_cursor",
                "tenant",
            ],
        ),
    ];
    let mut checked = 0;
    for (path, names) in &endpoints {
        for name in names {
            for evil in INJECTIONS {
                // Keep the other required parameter valid so the evil one is what is tested.
                let mut p: Vec<(&str, &str)> = vec![("from", DAY_FROM), ("to", DAY_TO)];
                if *name != "tenant" {
                    p.push(("tenant", &sc.tenant));
                }
                let needs_patient = matches!(
                    *path,
                    "/v1/reports/patient-access"
                        | "/v1/reports/disclosures"
                        | "/v1/reports/consent-history"
                );
                if needs_patient && *name != "patient" {
                    p.push(("patient", &sc.p1));
                }
                if *path == "/v1/reports/user-activity" && *name != "user" {
                    p.push(("user", "dr-alice"));
                }
                if *path == "/fhir/AuditEvent" {
                    p.retain(|(k, _)| *k == "tenant");
                }
                p.push((name, evil));
                let r = get(&app, &url(path, &p), Some(&auditor)).await;
                match r.status.as_u16() {
                    400 if *path == "/fhir/AuditEvent" => {
                        assert_eq!(r.content_type, "application/fhir+json")
                    }
                    400 => assert_eq!(r.content_type, "application/problem+json"),
                    200 => {
                        let b = r.json();
                        let n = b["rows"]
                            .as_array()
                            .or(b["entry"].as_array())
                            .map_or(0, Vec::len);
                        // A hostile value never widens a result: it matches nothing
                        // (the tenant, query-audit and caller filters see no such value).
                        assert_eq!(n, 0, "{path} {name}={evil} returned rows");
                    }
                    s => panic!("{path} {name}={evil}: status {s}: {}", r.text()),
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 400);
    let after: u64 = admin()
        .query("SELECT count() FROM custos.audit_events FINAL WHERE tenant = ?")
        .bind(&sc.tenant)
        .fetch_one()
        .await?;
    assert_eq!(before, after, "audit rows intact");
    let tables: u64 = admin()
        .query("SELECT count() FROM system.tables WHERE database = 'custos' AND name IN ('audit_events', 'report_queries')")
        .fetch_one()
        .await?;
    assert_eq!(tables, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_problems() -> Result<()> {
    ensure_schema()?;
    let app = app();
    let auditor = token("auditor-bad", &["auditor"]);
    let cases: Vec<String> = vec![
        url("/v1/reports/patient-access", &[]),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("from", "yesterday")],
        ),
        url(
            "/v1/reports/patient-access",
            &[
                ("patient", "p"),
                ("from", "2026-03-02"),
                ("to", "2026-03-01"),
            ],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("limit", "0")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("limit", "100000")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("limit", "ten")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("format", "xml")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("cursor", "garbage")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("tenant", "no spaces")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("interaction", "drop")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("outcome", "maybe")],
        ),
        url(
            "/v1/reports/patient-access",
            &[("patient", "p"), ("unknown", "1")],
        ),
        url("/v1/reports/patient-access", &[("patient", "a\u{7}b")]),
        url(
            "/v1/reports/user-activity",
            &[("user", "u"), ("event_type", "custos.nope")],
        ),
        url("/v1/reports/token-trace", &[]),
        url("/v1/reports/token-trace", &[("jti", "a"), ("client", "b")]),
        url("/v1/reports/disclosures", &[]),
        url("/v1/reports/consent-history", &[]),
        url("/fhir/AuditEvent", &[("date", "xx2026")]),
        url("/fhir/AuditEvent", &[("action", "Z")]),
        url("/fhir/AuditEvent", &[("_count", "0")]),
        url("/fhir/AuditEvent", &[("_sort", "-date")]),
    ];
    for path in &cases {
        let r = get(&app, path, Some(&auditor)).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let b = r.json();
        if path.starts_with("/fhir/") {
            // An OperationOutcome for FHIR clients.
            assert_eq!(r.content_type, "application/fhir+json", "{path}");
            assert_eq!(b["issue"][0]["code"], "invalid");
            assert!(b["issue"][0]["diagnostics"].is_string());
            continue;
        }
        assert_eq!(r.content_type, "application/problem+json", "{path}");
        assert_eq!(b["status"], 400);
        assert!(b["title"].is_string() && b["type"].is_string() && b["detail"].is_string());
    }
    // The detail names the parameter, never its value.
    let r = get(
        &app,
        &url(
            "/v1/reports/patient-access",
            &[("patient", "RAWPAT-secret\u{1}")],
        ),
        Some(&auditor),
    )
    .await;
    assert!(!r.text().contains("RAWPAT-secret"));
    Ok(())
}
