//! End-to-end: every report of the query API returns exactly the scenario's rows, across
//! the pseudonym key rotation (data that went through Kafka and the real ingest; see
//! `support::reports`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use custos_schemas::PseudonymKind;
use serde_json::{json, Value};

mod support;

use support::reports::*;
use support::{entry_ids, get, rows, token, url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_return_exactly_the_seeded_rows_across_the_key_rotation() -> Result<()> {
    let sc = scenario();
    let app = app();
    let officer = token("officer-reports", &["compliance_officer"]);
    let privacy = token("privacy-reports", &["privacy_officer"]);
    let responder = token("responder-reports", &["incident_responder"]);
    let ten = sc.tenant.as_str();
    let window = [("tenant", ten), ("from", DAY_FROM), ("to", DAY_TO)];
    let q = |path: &str, extra: &[(&str, &str)]| {
        let mut p: Vec<(&str, &str)> = window.to_vec();
        p.extend_from_slice(extra);
        url(path, &p)
    };

    // The stored pseudonyms really differ across the rotation.
    let ring = ring();
    let ps = ring.lookup_all(ten, PseudonymKind::Patient, &sc.p1);
    let r = get(
        &app,
        &q("/v1/reports/patient-access", &[("patient", &sc.p1)]),
        Some(&officer),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let got = rows(&body);
    assert_eq!(
        request_ids(&got),
        set(&["A1", "A2", "A3", "A5", "A6", "A7", "A8", "A9"])
    );
    let stored: BTreeSet<String> = got
        .iter()
        .map(|r| r["patient"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        stored,
        ps.iter().cloned().collect::<BTreeSet<_>>(),
        "both keys' pseudonyms"
    );
    assert!(!r.text().contains(&sc.p1), "raw patient id in a report");
    assert_eq!(body["next_cursor"], Value::Null);
    // Time order.
    let times: Vec<&str> = got
        .iter()
        .map(|r| r["event_time"].as_str().unwrap_or_default())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);

    // Filters.
    for (extra, want) in [
        (vec![("user", "dr-alice")], vec!["A1", "A2", "A5", "A9"]),
        (
            vec![("user", "Practitioner/alice")],
            vec!["A1", "A2", "A5", "A9"],
        ),
        (
            vec![("user", sc.patient_sub.as_str())],
            vec!["A3", "A6", "A7", "A8"],
        ),
        (
            vec![("client", "patient-app")],
            vec!["A3", "A6", "A7", "A8"],
        ),
        (vec![("resource_type", "Patient")], vec!["A3", "A9"]),
        (vec![("interaction", "search-type")], vec!["A2"]),
        (vec![("outcome", "failure")], vec!["A8", "A9"]),
        (vec![("decision", "deny")], vec!["A8", "A9"]),
        (vec![("purpose", "HRESCH")], vec!["A2"]),
    ] {
        let mut p = vec![("patient", sc.p1.as_str())];
        p.extend(extra.iter().cloned());
        let r = get(&app, &q("/v1/reports/patient-access", &p), Some(&officer)).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            request_ids(&rows(&r.json())),
            set(&want),
            "filter {extra:?}"
        );
    }
    // The patient user given by fhirUser matches under both keys.
    let fu = format!("Patient/{}", sc.p1);
    let r = get(
        &app,
        &q(
            "/v1/reports/patient-access",
            &[("patient", &sc.p1), ("user", &fu)],
        ),
        Some(&officer),
    )
    .await;
    assert_eq!(
        request_ids(&rows(&r.json())),
        set(&["A3", "A6", "A7", "A8"])
    );

    // user-activity: every event type of the user.
    let r = get(
        &app,
        &q("/v1/reports/user-activity", &[("user", "dr-alice")]),
        Some(&officer),
    )
    .await;
    assert_eq!(r.status, 200);
    let keys: BTreeSet<String> = rows(&r.json())
        .iter()
        .map(|r| r["event_key"].as_str().unwrap_or_default().to_owned())
        .collect();
    let want: BTreeSet<String> = ["E1", "A1", "A2", "E8", "A5", "A9"]
        .iter()
        .map(|n| sc.keys[*n].clone())
        .collect();
    assert_eq!(keys, want);
    let r = get(
        &app,
        &q("/v1/reports/user-activity", &[("user", &sc.patient_sub)]),
        Some(&officer),
    )
    .await;
    let keys: BTreeSet<String> = rows(&r.json())
        .iter()
        .map(|r| r["event_key"].as_str().unwrap_or_default().to_owned())
        .collect();
    let want: BTreeSet<String> = ["E4", "A3", "E10", "A6", "A7", "A8"]
        .iter()
        .map(|n| sc.keys[*n].clone())
        .collect();
    assert_eq!(keys, want, "raw patient-user sub found under both keys");

    // token-trace by jti and by session.
    let j1 = format!("J1-{}", sc.tenant);
    let s1 = format!("S1-{}", sc.tenant);
    for sel in [("jti", j1.as_str()), ("session", s1.as_str())] {
        let r = get(
            &app,
            &q("/v1/reports/token-trace", &[sel]),
            Some(&responder),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        let ev = rows(&body);
        let keys: BTreeSet<String> = ev
            .iter()
            .map(|r| r["event_key"].as_str().unwrap_or_default().to_owned())
            .collect();
        let want: BTreeSet<String> = ["E1", "A1", "A2", "E8", "A5", "A9"]
            .iter()
            .map(|n| sc.keys[*n].clone())
            .collect();
        assert_eq!(keys, want, "trace by {sel:?}");
        let flagged: BTreeMap<String, (bool, bool)> = ev
            .iter()
            .filter(|r| r["event_type"] == "custos.fhir.access")
            .map(|r| {
                (
                    request_ids(std::slice::from_ref(r))
                        .into_iter()
                        .next()
                        .unwrap_or_default(),
                    (
                        r["after_revocation"].as_bool().unwrap_or_default(),
                        r["after_expiry"].as_bool().unwrap_or_default(),
                    ),
                )
            })
            .collect();
        assert_eq!(flagged["A1"], (false, false));
        assert_eq!(flagged["A5"], (true, false));
        assert_eq!(flagged["A9"], (true, true));
        let tokens = body["tokens"].as_array().context("tokens")?;
        assert_eq!(tokens.len(), 1);
        let tk = &tokens[0];
        assert_eq!(tk["jti"], j1.as_str());
        assert_eq!(tk["issued_at"], "2026-03-01T10:00:00.000Z");
        assert_eq!(tk["revoked_at"], "2026-03-01T10:10:00.000Z");
        assert_eq!(tk["expires_at"], "2026-03-01T10:30:00.000Z");
        assert_eq!(tk["revocation_reason"], "incident");
        assert_eq!(tk["accesses"], 4);
        assert_eq!(tk["denied_accesses"], 1);
        assert_eq!(tk["accesses_after_revocation"], 2);
        assert_eq!(tk["accesses_after_expiry"], 1);
        assert_eq!(tk["ips"], json!(["10.0.0.5", "10.0.0.6", "10.9.9.9"]));
        assert_eq!(tk["operations_not_granted"], json!(["Patient.delete"]));
        assert_eq!(tk["scopes_unused"], json!(["user/Patient.r"]));
        assert_eq!(
            tk["flags"],
            json!([
                "used_after_revocation",
                "used_after_expiry",
                "scope_exceeded"
            ])
        );
    }

    // Disclosures: permitted, not to the patient, not TPO-only (A1, A5? A5 states no purpose).
    let r = get(
        &app,
        &q("/v1/reports/disclosures", &[("patient", &sc.p1)]),
        Some(&officer),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let d = rows(&r.json());
    let keys: BTreeSet<String> = d
        .iter()
        .map(|r| r["event_key"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        keys,
        ["A2", "A5"].iter().map(|n| sc.keys[*n].clone()).collect()
    );
    let a2 = d
        .iter()
        .find(|r| r["event_key"] == sc.keys["A2"].as_str())
        .context("A2")?;
    assert_eq!(a2["recipient_client"], "ehr-app");
    assert_eq!(a2["recipient_user"], "dr-alice");
    assert_eq!(a2["description"], "search-type Observation");
    assert_eq!(a2["purpose"], json!(["HRESCH"]));
    // Default window (six years back from now) still finds them.
    let r = get(
        &app,
        &url(
            "/v1/reports/disclosures",
            &[("tenant", ten), ("patient", &sc.p1)],
        ),
        Some(&officer),
    )
    .await;
    assert_eq!(rows(&r.json()).len(), 2);

    // Break-glass: the opening (with duration) and the BTG access.
    let r = get(&app, &q("/v1/reports/break-glass", &[]), Some(&officer)).await;
    assert_eq!(r.status, 200);
    let b = rows(&r.json());
    assert_eq!(b.len(), 2);
    assert_eq!(b[0]["kind"], "opened");
    assert_eq!(b[0]["event_key"], sc.keys["E6"].as_str());
    assert_eq!(b[0]["duration_secs"], 3600);
    assert_eq!(b[0]["reason"], "unconscious patient in ED");
    assert_eq!(b[1]["kind"], "access");
    assert_eq!(b[1]["event_key"], sc.keys["A4"].as_str());
    assert_eq!(b[1]["reason"], "unconscious patient in ED");
    let r = get(
        &app,
        &q("/v1/reports/break-glass", &[("patient", &sc.p2)]),
        Some(&officer),
    )
    .await;
    assert_eq!(
        rows(&r.json()).len(),
        2,
        "t1 opening and t2 access of the same patient"
    );
    let r = get(
        &app,
        &q("/v1/reports/break-glass", &[("patient", &sc.p1)]),
        Some(&officer),
    )
    .await;
    assert!(rows(&r.json()).is_empty());

    // Revocation violations: only A7 (A6 within grace, A8 denied, A3 before).
    for extra in [
        vec![],
        vec![("patient", sc.p1.as_str())],
        vec![("client", "patient-app")],
    ] {
        let r = get(
            &app,
            &q("/v1/reports/revocation-violations", &extra),
            Some(&privacy),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = rows(&r.json());
        assert_eq!(v.len(), 1, "{extra:?}: {v:?}");
        assert_eq!(v[0]["event_key"], sc.keys["A7"].as_str());
        assert_eq!(v[0]["revoked_at"], "2026-03-01T10:20:00.000Z");
        assert_eq!(v[0]["consent_id"], format!("C1-{}", sc.tenant));
    }

    // Consent history across the rotation.
    let r = get(
        &app,
        &q("/v1/reports/consent-history", &[("patient", &sc.p1)]),
        Some(&privacy),
    )
    .await;
    assert_eq!(r.status, 200);
    let c = rows(&r.json());
    let changes: Vec<&str> = c
        .iter()
        .map(|r| r["change"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(changes, ["granted", "revoked"]);
    assert_eq!(c[1]["reason"], "patient request");

    // FHIR AuditEvent search.
    let f = |extra: &[(&str, &str)]| {
        let mut p: Vec<(&str, &str)> = vec![
            ("tenant", ten),
            ("date", "ge2026-03-01"),
            ("date", "le2026-03-01"),
        ];
        p.extend_from_slice(extra);
        url("/fhir/AuditEvent", &p)
    };
    let names =
        |ns: &[&str]| -> BTreeSet<String> { ns.iter().map(|n| sc.keys[*n].clone()).collect() };
    let r = get(&app, &f(&[("patient", &sc.p1)]), Some(&officer)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type, "application/fhir+json");
    let b = r.json();
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "searchset");
    assert_eq!(
        entry_ids(&b),
        names(&["A1", "A2", "A3", "A5", "A6", "A7", "A8", "A9"])
    );
    let a1 = b["entry"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|e| e["resource"]["id"] == sc.keys["A1"].as_str())
        })
        .context("A1")?;
    let ev = &a1["resource"];
    assert_eq!(
        ev["meta"]["profile"][0],
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
    );
    assert_eq!(ev["action"], "R");
    assert_eq!(ev["outcome"], "0");
    assert_eq!(ev["subtype"][0]["code"], "read");
    assert_eq!(ev["agent"][2]["who"]["identifier"]["value"], "dr-alice");
    assert_eq!(ev["agent"][2]["policy"][0], j1.as_str());
    assert_eq!(
        ev["entity"][0]["what"]["reference"],
        format!("Patient/{}", ps[0])
    );
    for (extra, want) in [
        (vec![("entity-type", "Patient")], vec!["A3", "A9"]),
        (vec![("action", "D")], vec!["A9"]),
        (vec![("outcome", "4")], vec!["A8", "A9"]),
        (vec![("subtype", "search-type")], vec!["A2"]),
        (vec![("agent", "dr-alice")], vec!["A1", "A2", "A5", "A9"]),
        (
            vec![
                ("date", "ge2026-03-01T10:05:00Z"),
                ("date", "le2026-03-01T10:30:00Z"),
            ],
            vec!["A5", "A6", "A7", "A8"],
        ),
    ] {
        let mut p = vec![("patient", sc.p1.as_str())];
        p.extend(extra.iter().cloned());
        let r = get(&app, &f(&p), Some(&officer)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(entry_ids(&r.json()), names(&want), "fhir {extra:?}");
    }
    // _count and next links walk every match once.
    let mut next = Some(f(&[("patient", &sc.p1), ("_count", "3")]));
    let mut seen = Vec::new();
    let mut pages = 0;
    while let Some(u) = next.take() {
        let r = get(&app, &u, Some(&officer)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let b = r.json();
        seen.extend(entry_ids(&b));
        pages += 1;
        next = b["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(|s| s.trim_start_matches("http://127.0.0.1:8088").to_owned());
        assert!(pages < 10);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 8);
    assert_eq!(
        seen.iter().cloned().collect::<BTreeSet<_>>(),
        names(&["A1", "A2", "A3", "A5", "A6", "A7", "A8", "A9"])
    );
    Ok(())
}
