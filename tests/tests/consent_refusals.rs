//! End-to-end: refusals by Keycloak and by a SET receiver are recorded as failed deliveries,
//! expired consents are deprovisioned, and FHIR Consent resources revoke like Keycloak
//! grants. The set-up is described in `support::consent`.

use anyhow::{Context, Result};
use custos_tests::*;
use serde_json::{json, Value};

mod support;

use support::consent::*;
use support::keycloak::*;
use support::ssf::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_are_recorded_failures_and_expiry_deprovisioning_and_fhir_consents_revoke(
) -> Result<()> {
    migrate()?;
    // A realm for the privacy API's tokens only.
    let kc = Kc::new();
    let realm = unique("kcfail").replace('-', "");
    kc.create_realm(&realm).await?;
    let (receiver, endpoint) = Receiver::start(true).await?;
    let officer = kc.privacy_tokens(&realm).await?.officer;
    let receivers = json!([{"name": "strict", "endpoint": endpoint}]);
    let setup = Setup {
        // Keycloak answers the admin token request with 401.
        admin_password: "not-the-admin-password".into(),
        ..Setup::create("consent-fail", &realm, &officer, receivers).await?
    };
    let (consent_topic, as_topic) = (&setup.consent_topic, &setup.as_topic);
    let svc = Service::spawn(&setup, &unique("cg"), &[])?;
    svc.wait_ready().await?;
    let tenant = "acme";
    let now = chrono_now_ms();
    let iso = format_rfc3339;
    let ce = |id: &str, ty: &str, data: Value| {
        json!({"specversion": "1.0", "id": id, "source": "//e2e", "type": ty,
               "time": iso(now), "tenant": tenant, "data": data})
    };
    let p1 = unique("PAT-A");
    let p2 = unique("PAT-B");
    let p3 = unique("PAT-C");
    let fhir = json!({
        "resourceType": "Consent", "id": unique("fc"), "status": "active",
        "meta": {"versionId": "1", "lastUpdated": iso(now), "tag": [{"system": "urn:custos:tenant", "code": tenant}]},
        "patient": {"reference": format!("Patient/{p3}")},
        "extension": [
            {"url": "urn:custos:fhir:extension:oauth-scope", "valueString": "patient/*.rs"},
            {"url": "urn:custos:fhir:extension:as-subject", "valueString": format!("sub-{p3}")},
            {"url": "urn:custos:fhir:extension:as-issuer", "valueUri": "keycloak:acme"}
        ],
        "provision": {"type": "permit", "actor": [{"reference": {"identifier": {"system": "urn:ietf:params:oauth:client-id", "value": "fhir-app"}}}]}
    });
    // One partition: a consent's events are ordered (producers key them by consent id).
    produce(
        &producer()?,
        consent_topic,
        Some(0),
        &[
            Msg::json(&ce("g1", "custos.consent.granted", json!({"consentId": format!("c-{p1}"), "patient": p1,
                "client_id": "app1", "iss": "keycloak:acme", "sub": format!("sub-{p1}"), "scope": "user/*.read"}))),
            Msg::json(&ce("g2", "custos.consent.granted", json!({"consentId": format!("c-{p2}"), "patient": p2,
                "client_id": "app2", "iss": "keycloak:acme", "sub": format!("sub-{p2}"),
                "periodEnd": iso(now + 2_000)}))),
            Msg::json(&fhir),
            Msg::json(&ce("r1", "custos.consent.revoked", json!({"consentId": format!("c-{p1}"), "patient": p1,
                "client_id": "app1", "reason": "patient request"}))),
        ],
    )
    .await?;
    // The deprovisioning of the FHIR consent's user, on the AS topic (once it is granted).
    svc.wait_consents(tenant, &p3, "the FHIR consent", |v| {
        v["consents"][0]["current"]["status"] == "active"
    })
    .await?;
    produce(
        &producer()?,
        as_topic,
        None,
        &[Msg::json(&ce(
            "d1",
            "custos.user.deprovisioned",
            json!({"iss": "keycloak:acme", "sub": format!("sub-{p3}")}),
        ))],
    )
    .await?;

    for (patient, cause) in [(&p1, "revoke"), (&p2, "expiry"), (&p3, "deprovision")] {
        let v = svc
            .wait_consents(tenant, patient, cause, |v| all_final(v, 3))
            .await?;
        let st = target_states(&v);
        assert_eq!(
            st.get("keycloak").map(String::as_str),
            Some("failed"),
            "{cause}: {v:#}"
        );
        assert_eq!(
            st.get("ssf:strict").map(String::as_str),
            Some("failed"),
            "{cause}: {v:#}"
        );
        assert_eq!(
            st.get("kafka").map(String::as_str),
            Some("delivered"),
            "{cause}: {v:#}"
        );
        let revs = v["consents"][0]["revocations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(revs.iter().all(|r| r["cause"] == cause), "{revs:?}");
        let kc_row = revs
            .iter()
            .find(|r| r["target"] == "keycloak")
            .context("kc row")?;
        assert!(
            kc_row["detail"]
                .as_str()
                .is_some_and(|d| d.contains("HTTP 401")),
            "{kc_row}"
        );
        let ssf_row = revs
            .iter()
            .find(|r| r["target"] == "ssf:strict")
            .context("ssf row")?;
        assert!(
            ssf_row["detail"]
                .as_str()
                .is_some_and(|d| d.contains("invalid_audience")),
            "{ssf_row}"
        );
        // One attempt each: 4xx is final, not retried.
        let id = kc_row["revocation_id"].as_str().context("id")?;
        let a = attempts_of(&svc, id).await?;
        let kc_a: Vec<&Value> = a.iter().filter(|x| x["target"] == "keycloak").collect();
        assert_eq!(kc_a.len(), 1, "{a:?}");
        assert_eq!(kc_a[0]["http_status"], 401);
        let ssf_a: Vec<&Value> = a.iter().filter(|x| x["target"] == "ssf:strict").collect();
        assert_eq!(ssf_a.len(), 1);
        assert_eq!(ssf_a[0]["http_status"], 400);
        assert_eq!(ssf_a[0]["error_code"], "ssf_invalid_audience");
        assert!(ssf_a[0]["receipt"]
            .as_str()
            .is_some_and(|r| r.contains("\"err\"")));
    }
    // FHIR consent state kept its SMART scopes.
    let v = svc
        .get(&format!(
            "/v1/consents?tenant={tenant}&patient=Patient/{p3}"
        ))
        .await?;
    assert_eq!(v["consents"][0]["current"]["client_id"], "fhir-app");
    assert_eq!(v["consents"][0]["current"]["scopes"][0], "patient/*.rs");
    // The failure report lists them.
    let report = svc.get("/v1/revocations?state=failed&limit=10000").await?;
    let failed = report["revocations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(failed.len() >= 6, "{failed:?}");
    assert_eq!(receiver.received().len(), 3);
    // Bad bearer tokens are refused.
    let (s, ct, _) = svc
        .call(reqwest::Method::GET, "/v1/revocations", Some("wrong"), None)
        .await?;
    assert_eq!((s, ct.as_str()), (401, "application/problem+json"));
    kc.delete_realm(&realm).await;
    Ok(())
}

/// RFC 3339 with milliseconds, UTC, from epoch milliseconds.
fn format_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}
