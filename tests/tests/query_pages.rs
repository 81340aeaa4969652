//! End-to-end: report pages have no gaps or repeats, and the CSV and NDJSON exports hold
//! exactly the rows of the JSON pages (the scenario of `support::reports`).

use std::collections::BTreeSet;

use anyhow::Result;
use serde_json::Value;

mod support;

use support::reports::*;
use support::{get, rows, token, url};

/// Values of a JSON row in CSV form (arrays space-joined, null empty).
fn csv_cells(row: &Value, header: &[String]) -> Vec<String> {
    header
        .iter()
        .map(|h| match &row[h] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            v => v.to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_has_no_gaps_or_repeats_and_exports_equal_json() -> Result<()> {
    let sc = scenario();
    let app = app();
    let officer = token("officer-pages", &["compliance_officer"]);
    let base = [
        ("tenant", sc.tenant.as_str()),
        ("from", DAY_FROM),
        ("to", DAY_TO),
        ("patient", sc.p3.as_str()),
    ];
    let all = get(
        &app,
        &url("/v1/reports/patient-access", &base),
        Some(&officer),
    )
    .await
    .json();
    let all = rows(&all);
    assert_eq!(all.len(), 25);
    // Two rows share each half-minute? No: one per 30 s, split across both keys.
    let mut walked: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut p = base.to_vec();
        p.push(("limit", "7"));
        let c;
        if let Some(cur) = &cursor {
            c = cur.clone();
            p.push(("cursor", &c));
        }
        let r = get(&app, &url("/v1/reports/patient-access", &p), Some(&officer)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        let page = rows(&body);
        assert!(page.len() <= 7);
        walked.extend(page);
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => break,
        }
        assert!(pages < 10);
    }
    assert_eq!(pages, 4);
    assert_eq!(walked, all, "pages concatenated equal the whole result");
    let keys: BTreeSet<&str> = walked
        .iter()
        .filter_map(|r| r["event_key"].as_str())
        .collect();
    assert_eq!(keys.len(), 25, "no repeats");

    // CSV equals JSON, for the rotated patient set and for P1.
    for patient in [sc.p3.as_str(), sc.p1.as_str()] {
        let p = [
            ("tenant", sc.tenant.as_str()),
            ("from", DAY_FROM),
            ("to", DAY_TO),
            ("patient", patient),
        ];
        let json_rows = rows(
            &get(&app, &url("/v1/reports/patient-access", &p), Some(&officer))
                .await
                .json(),
        );
        let mut pc = p.to_vec();
        pc.push(("format", "csv"));
        let r = get(
            &app,
            &url("/v1/reports/patient-access", &pc),
            Some(&officer),
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(r.content_type.starts_with("text/csv"));
        let mut rdr = csv::Reader::from_reader(r.body.as_slice());
        let header: Vec<String> = rdr.headers()?.iter().map(str::to_owned).collect();
        assert_eq!(header[0], "event_key");
        let csv_rows: Vec<Vec<String>> = rdr
            .records()
            .map(|r| r.map(|r| r.iter().map(str::to_owned).collect()))
            .collect::<Result<_, _>>()?;
        let want: Vec<Vec<String>> = json_rows.iter().map(|r| csv_cells(r, &header)).collect();
        assert_eq!(csv_rows, want);
        let mut pn = p.to_vec();
        pn.push(("format", "ndjson"));
        let r = get(
            &app,
            &url("/v1/reports/patient-access", &pn),
            Some(&officer),
        )
        .await;
        assert_eq!(r.content_type, "application/x-ndjson");
        let lines: Vec<Value> = r
            .text()
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(lines, json_rows);
    }
    // Every report exports CSV with as many records as its JSON has rows.
    let j1 = format!("J1-{}", sc.tenant);
    for (path, extra) in [
        ("/v1/reports/user-activity", vec![("user", "dr-alice")]),
        ("/v1/reports/token-trace", vec![("jti", j1.as_str())]),
        ("/v1/reports/disclosures", vec![("patient", sc.p1.as_str())]),
        ("/v1/reports/break-glass", vec![]),
    ] {
        let mut p = vec![
            ("tenant", sc.tenant.as_str()),
            ("from", DAY_FROM),
            ("to", DAY_TO),
        ];
        p.extend(extra);
        let n = rows(
            &get(
                &app,
                &url(path, &p),
                Some(&token("auditor-x", &["auditor"])),
            )
            .await
            .json(),
        )
        .len();
        p.push(("format", "csv"));
        let r = get(
            &app,
            &url(path, &p),
            Some(&token("auditor-x", &["auditor"])),
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
        let count = csv::Reader::from_reader(r.body.as_slice())
            .records()
            .count();
        assert_eq!(count, n, "{path}");
        assert!(n > 0, "{path}");
    }
    Ok(())
}
