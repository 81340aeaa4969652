//! End-to-end: the alert API of the query service on the real ClickHouse. Alerts are written
//! as `custos-alerts` writes them (revisions through a ledger chain), their evidence rows go
//! through the real ingest; the query API runs in-process with the in-test issuer's tokens.
//! Each test has a tenant of its own.

use anyhow::{Context, Result};
use custos_schemas::records::AlertActionRow;
use custos_schemas::row::event_key;
use custos_tests::*;
use serde_json::{json, Value};

mod support;

use support::alerts::*;
use support::reports::ce;
use support::{ensure_schema, get, token, url};

const RESPONDER: &[&str] = &["incident_responder"];

/// A FHIR read of `tenant` by dr-alice with token `jti` from `ip` at `time`.
fn access(tenant: &str, id: &str, jti: &str, ip: &str, time: &str) -> Value {
    ce(
        tenant,
        id,
        "custos.fhir.access",
        time,
        json!({"requestId": id, "iss": "https://as.test/realms/general", "sub": "dr-alice",
            "fhirUser": "Practitioner/alice", "client_id": "ehr-app", "jti": jti,
            "scope": "user/Observation.rs", "interaction": "read", "resourceType": "Observation",
            "resourceId": "OBS-1", "patient": "Patient/RAWPAT-alerts", "decision": "permit",
            "httpStatus": 200, "sourceIp": ip, "userAgent": "Test/1"}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_list_filtered_newest_first_one_item_per_alert() -> Result<()> {
    ensure_schema()?;
    let tenant = unique("alist");
    let mut a1 = alert(&tenant, "a1", 1, "high");
    a1.token_jti = "JTI-a1".into();
    let mut a1r2 = a1.clone();
    a1r2.revision = 2;
    a1r2.last_seen = ms("2026-03-01T12:00:00Z");
    a1r2.evidence_count = 3;
    let mut a2 = alert(&tenant, "a2", 1, "medium");
    a2.detector = "refresh_reuse".into();
    a2.subject = "dr-bob".into();
    a2.last_seen = ms("2026-03-01T11:00:00Z");
    let mut a3 = alert(&tenant, "a3", 1, "low");
    a3.detector = "volume".into();
    a3.client_id = "bulk-app".into();
    a3.last_seen = ms("2026-03-01T10:30:00Z");
    insert_alerts(&[a1.clone(), a2.clone(), a3.clone()]).await?;
    insert_alerts(&[a1r2]).await?;

    let app = app_at_time(None, &[]);
    let ingrid = token(&unique("ingrid"), RESPONDER);
    let list = |q: Vec<(&'static str, String)>| {
        let mut p = vec![("tenant", tenant.clone())];
        p.extend(q);
        let p: Vec<(&str, String)> = p;
        let pairs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
        url("/v1/alerts", &pairs)
    };
    let ids = |v: &Value| -> Vec<String> {
        alerts_of(v)
            .iter()
            .map(|a| {
                a["alert"]["dedup_key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };

    let r = get(&app, &list(vec![]), Some(&ingrid)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        ids(&v),
        ["a1", "a2", "a3"],
        "newest last_seen first, one item per alert"
    );
    let first = &alerts_of(&v)[0];
    assert_eq!(first["alert"]["revision"], 2);
    assert_eq!(first["alert"]["last_seen"], "2026-03-01T12:00:00.000Z");
    assert_eq!(first["status"], "open");
    assert_eq!(first["reopened_by_evidence"], false);
    assert_eq!(
        first["links"]["self"],
        format!("/v1/alerts/{}", a1.alert_id)
    );
    assert_eq!(
        first["links"]["token_trace"],
        format!("/v1/reports/token-trace?jti=JTI-a1&tenant={tenant}")
    );
    assert_eq!(alerts_of(&v)[1]["links"]["token_trace"], Value::Null);
    assert!(v["query_id"].as_str().is_some_and(|q| q.len() == 32));

    for (q, want) in [
        (vec![("severity", "medium".to_owned())], vec!["a1", "a2"]),
        (vec![("severity", "critical".to_owned())], vec![]),
        (vec![("detector", "volume".to_owned())], vec!["a3"]),
        (vec![("subject", "dr-bob".to_owned())], vec!["a2"]),
        (vec![("jti", "JTI-a1".to_owned())], vec!["a1"]),
        (vec![("client", "bulk-app".to_owned())], vec!["a3"]),
        (vec![("status", "open".to_owned())], vec!["a1", "a2", "a3"]),
        (vec![("status", "closed".to_owned())], vec![]),
        (vec![("assignee", "nobody".to_owned())], vec![]),
        (
            vec![
                ("since", "2026-03-01T10:30:00Z".to_owned()),
                ("until", "2026-03-01T12:00:00Z".to_owned()),
            ],
            vec!["a2", "a3"],
        ),
    ] {
        let r = get(&app, &list(q.clone()), Some(&ingrid)).await;
        assert_eq!(r.status, 200, "{q:?}: {}", r.text());
        assert_eq!(ids(&r.json()), want, "{q:?}");
    }

    // Pages of two, then one, with the cursor.
    let r = get(&app, &list(vec![("limit", "2".into())]), Some(&ingrid)).await;
    let page1 = r.json();
    assert_eq!(ids(&page1), ["a1", "a2"]);
    let cursor = page1["next_cursor"].as_str().context("cursor")?.to_owned();
    let r = get(
        &app,
        &list(vec![("limit", "2".into()), ("cursor", cursor)]),
        Some(&ingrid),
    )
    .await;
    let page2 = r.json();
    assert_eq!(ids(&page2), ["a3"]);
    assert_eq!(page2["next_cursor"], Value::Null);

    // Bad parameters are 400 problems.
    for q in [
        vec![("status", "pending".to_owned())],
        vec![("severity", "urgent".to_owned())],
        vec![("since", "yesterday".to_owned())],
        vec![("cursor", "x".to_owned())],
        vec![("colour", "red".to_owned())],
    ] {
        let r = get(&app, &list(q.clone()), Some(&ingrid)).await;
        assert_problem(&r, 400, "bad-request");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_leads_to_its_revisions_actions_and_evidence_rows_in_one_call() -> Result<()> {
    ensure_schema()?;
    let tenant = unique("adetail");
    let jti = format!("JTI-{tenant}");
    let events = [
        access(
            &tenant,
            &format!("{tenant}-1"),
            &jti,
            "10.0.0.5",
            "2026-03-01T10:00:00Z",
        ),
        access(
            &tenant,
            &format!("{tenant}-2"),
            &jti,
            "203.0.113.9",
            "2026-03-01T10:01:00Z",
        ),
        access(
            &tenant,
            &format!("{tenant}-3"),
            &jti,
            "198.51.100.4",
            "2026-03-01T10:02:00Z",
        ),
    ];
    let msgs: Vec<Msg> = events.iter().map(Msg::json).collect();
    support::ingest_all("adetail", &[], &msgs).await?;
    let keys: Vec<String> = (1..=3)
        .map(|i| event_key("//custos.test/query", &format!("{tenant}-{i}")))
        .collect();

    let mut r1 = alert(&tenant, "theft", 1, "high");
    r1.token_jti = jti.clone();
    r1.token_theft = true;
    r1.evidence = keys[..2].to_vec();
    r1.evidence_count = 2;
    r1.last_seen = ms("2026-03-01T10:01:00Z");
    let mut r2 = r1.clone();
    r2.revision = 2;
    r2.evidence = keys.clone();
    r2.evidence_count = 3;
    r2.last_seen = ms("2026-03-01T10:02:00Z");
    insert_alerts(&[r1.clone(), r2]).await?;
    insert_actions(&[AlertActionRow {
        action_id: alert_id(&tenant, "notify-1"),
        alert_id: r1.alert_id.clone(),
        tenant: tenant.clone(),
        action: "notify".into(),
        actor: "custos-alerts".into(),
        assignee: String::new(),
        note: String::new(),
        detail: r#"{"target":"webhook","status":200}"#.into(),
        at: ms("2026-03-01T10:01:01Z"),
        alert_first_seen: r1.first_seen,
    }])
    .await?;

    let app = app_at_time(None, &[]);
    let ingrid = token(&unique("ingrid"), RESPONDER);
    let path = format!("/v1/alerts/{}", r1.alert_id);
    let r = get(&app, &path, Some(&ingrid)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["alert"]["alert"]["revision"], 2);
    assert_eq!(v["alert"]["alert"]["token_theft"], true);
    assert_eq!(v["alert"]["links"]["evidence"], path);
    let revisions: Vec<i64> = v["revisions"]
        .as_array()
        .context("revisions")?
        .iter()
        .filter_map(|r| r["revision"].as_i64())
        .collect();
    assert_eq!(revisions, [1, 2]);
    let actions = v["actions"].as_array().context("actions")?;
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0]["action"], "notify");
    assert_eq!(actions[0]["detail"], r#"{"target":"webhook","status":200}"#);
    let evidence = v["evidence"].as_array().context("evidence")?;
    let got: Vec<&str> = evidence
        .iter()
        .filter_map(|e| e["event_key"].as_str())
        .collect();
    assert_eq!(got, keys.iter().map(String::as_str).collect::<Vec<_>>());
    let ips: Vec<&str> = evidence
        .iter()
        .filter_map(|e| e["source_ip"].as_str())
        .collect();
    assert_eq!(ips, ["10.0.0.5", "203.0.113.9", "198.51.100.4"]);
    assert!(evidence.iter().all(|e| e["token_jti"] == jti.as_str()));
    // Patient ids are the stored pseudonyms, never the raw id.
    assert!(!r.text().contains("RAWPAT-alerts"));

    // The token trace the alert links to answers with the same rows.
    let trace = v["alert"]["links"]["token_trace"]
        .as_str()
        .context("token_trace link")?;
    let r = get(&app, trace, Some(&ingrid)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(&keys[2]));

    // The auditor reads it too; an unknown or malformed id is a 404 problem.
    let auditor = token(&unique("arthur"), &["auditor"]);
    assert_eq!(get(&app, &path, Some(&auditor)).await.status, 200);
    let unknown = alert_id(&tenant, "never-raised");
    let r = get(&app, &format!("/v1/alerts/{unknown}"), Some(&ingrid)).await;
    assert_problem(&r, 404, "not-found");
    let r = get(&app, "/v1/alerts/not-an-id", Some(&ingrid)).await;
    assert_problem(&r, 404, "not-found");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_follow_the_state_machine_and_are_audited_and_ledgered() -> Result<()> {
    ensure_schema()?;
    let tenant = unique("aflow");
    let a = alert(&tenant, "flow", 1, "critical");
    insert_alerts(std::slice::from_ref(&a)).await?;
    // "Now" is fixed: the actions happen an hour after the evidence.
    let now = ms("2026-03-01T11:00:00Z");
    let app = app_at_time(Some(now), &[]);
    let sub = unique("ingrid");
    let ingrid = token(&sub, RESPONDER);
    let base = format!("/v1/alerts/{}", a.alert_id);
    let act = |what: &str| format!("{base}/{what}");
    let t = Some(ingrid.as_str());

    let r = post(&app, &act("reopen"), t, "{}").await;
    assert_problem(&r, 409, "conflict");
    let r = post(&app, &act("acknowledge"), t, r#"{"note":"looking"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["alert"]["status"], "acknowledged");
    assert_eq!(v["action"]["action"], "acknowledge");
    assert_eq!(v["action"]["actor"], sub.as_str());
    assert_eq!(v["action"]["at"], "2026-03-01T11:00:00.000Z");
    assert_problem(
        &post(&app, &act("acknowledge"), t, "{}").await,
        409,
        "conflict",
    );

    let r = post(&app, &act("assign"), t, "{}").await;
    assert_problem(&r, 400, "bad-request");
    let r = post(&app, &act("assign"), t, r#"{"assignee":"ivan.incident"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["alert"]["assignee"], "ivan.incident");

    // Close: note and resolution required, a credential in the note refused, bad JSON 400.
    for body in [
        r#"{"resolution":"benign"}"#,
        r#"{"note":"done"}"#,
        r#"{"note":"done","resolution":"maybe"}"#,
        r#"{"note":"Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl","resolution":"benign"}"#,
        r#"{"note":"done","resolution":"benign","extra":1}"#,
        r#"{"note":"done""#,
        "",
    ] {
        let r = post(&app, &act("close"), t, body).await;
        assert_problem(&r, 400, "bad-request");
    }
    let long = json!({"note": "x".repeat(2001), "resolution": "benign"}).to_string();
    assert_problem(
        &post(&app, &act("close"), t, &long).await,
        400,
        "bad-request",
    );
    let r = post(
        &app,
        &act("close"),
        t,
        r#"{"note":"clinician confirmed a second workstation","resolution":"false_positive"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["alert"]["status"], "closed");
    assert_eq!(v["action"]["detail"], r#"{"resolution":"false_positive"}"#);
    assert_eq!(
        v["action"]["at"], "2026-03-01T11:00:00.002Z",
        "after the earlier actions"
    );
    assert_problem(
        &post(
            &app,
            &act("close"),
            t,
            r#"{"note":"again","resolution":"benign"}"#,
        )
        .await,
        409,
        "conflict",
    );
    assert_problem(
        &post(&app, &act("acknowledge"), t, "{}").await,
        409,
        "conflict",
    );
    assert_problem(
        &post(&app, &act("assign"), t, r#"{"assignee":"x"}"#).await,
        409,
        "conflict",
    );
    let r = get(
        &app,
        &url("/v1/alerts", &[("tenant", &tenant), ("status", "closed")]),
        t,
    )
    .await;
    assert_eq!(alerts_of(&r.json()).len(), 1);

    // Reopen, then close again; evidence newer than that close opens it again by itself.
    let r = post(
        &app,
        &act("reopen"),
        t,
        r#"{"note":"same token seen again"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["alert"]["status"], "open");
    assert_eq!(r.json()["alert"]["assignee"], "ivan.incident");
    let r = post(
        &app,
        &act("close"),
        t,
        r#"{"note":"handled","resolution":"true_positive"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut newer = a.clone();
    newer.revision = 2;
    newer.last_seen = ms("2026-03-01T11:30:00Z");
    insert_alerts(&[newer]).await?;
    let r = get(&app, &base, t).await;
    let v = r.json();
    assert_eq!(v["alert"]["status"], "open", "{v}");
    assert_eq!(v["alert"]["reopened_by_evidence"], true);
    let done: Vec<&str> = v["actions"]
        .as_array()
        .context("actions")?
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert_eq!(done, ["acknowledge", "assign", "close", "reopen", "close"]);
    assert!(post(&app, &act("acknowledge"), t, "{}").await.status == 200);

    // An unknown alert is a 404, before any state rule.
    let unknown = format!("/v1/alerts/{}/close", alert_id(&tenant, "nope"));
    let r = post(&app, &unknown, t, r#"{"note":"x","resolution":"benign"}"#).await;
    assert_problem(&r, 404, "not-found");

    // Every action is in the query audit before its answer, refusals included.
    let audit = audit_of(&sub, 13).await?;
    let of = |report: &str, status: &str| {
        audit
            .iter()
            .filter(|(r, s)| r == report && s == status)
            .count()
    };
    assert_eq!(of("alert-acknowledge", "answered"), 2, "{audit:?}");
    assert_eq!(of("alert-acknowledge", "rejected"), 2, "{audit:?}");
    assert_eq!(of("alert-assign", "answered"), 1, "{audit:?}");
    assert_eq!(of("alert-close", "answered"), 2, "{audit:?}");
    assert_eq!(of("alert-close", "rejected"), 1, "{audit:?}");
    assert_eq!(of("alert-reopen", "answered"), 1, "{audit:?}");
    assert_eq!(of("alert-reopen", "rejected"), 1, "{audit:?}");
    assert!(of("alert", "answered") >= 1, "{audit:?}");
    // ... and in the ledger: every alert and action row of the tenant verifies.
    let checked = verify_ledger(&tenant).await?;
    let rows = |t: &str| checked.iter().find(|(n, _)| n == t).map(|(_, n)| *n);
    assert_eq!(rows("alert_actions"), Some(6), "{checked:?}");
    assert_eq!(rows("alerts"), Some(2), "{checked:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responders_act_auditors_read_and_others_are_refused() -> Result<()> {
    ensure_schema()?;
    let tenant = unique("aroles");
    let a = alert(&tenant, "roles", 1, "high");
    insert_alerts(std::slice::from_ref(&a)).await?;
    let app = app_at_time(None, &[]);
    let list = url("/v1/alerts", &[("tenant", &tenant)]);
    let one = format!("/v1/alerts/{}", a.alert_id);
    let bodies = [
        ("acknowledge", "{}"),
        ("assign", r#"{"assignee":"ivan"}"#),
        ("close", r#"{"note":"n","resolution":"benign"}"#),
        ("reopen", "{}"),
    ];

    let auditor = token(&unique("arthur"), &["auditor"]);
    assert_eq!(get(&app, &list, Some(&auditor)).await.status, 200);
    assert_eq!(get(&app, &one, Some(&auditor)).await.status, 200);
    let carol = token(&unique("carol"), &["compliance_officer"]);
    let nobody = token(&unique("pat"), &[]);
    for t in [&auditor, &carol, &nobody] {
        for (what, body) in bodies {
            let r = post(&app, &format!("{one}/{what}"), Some(t), body).await;
            assert_problem(&r, 403, "forbidden");
        }
    }
    for t in [&carol, &nobody] {
        assert_problem(&get(&app, &list, Some(t)).await, 403, "forbidden");
        assert_problem(&get(&app, &one, Some(t)).await, 403, "forbidden");
    }
    // A wrong role is refused before the body is read.
    let r = post(&app, &format!("{one}/close"), Some(&auditor), "not json").await;
    assert_problem(&r, 403, "forbidden");
    let r = post(&app, &format!("{one}/acknowledge"), None, "{}").await;
    assert_problem(&r, 401, "unauthorized");
    // Nothing was written: the alert is still open, with no action.
    let ingrid = token(&unique("ingrid"), RESPONDER);
    let v = get(&app, &one, Some(&ingrid)).await.json();
    assert_eq!(v["alert"]["status"], "open");
    assert_eq!(v["actions"], json!([]));
    let r = post(&app, &format!("{one}/acknowledge"), Some(&ingrid), "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    Ok(())
}
