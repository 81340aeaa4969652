//! The simulator's injected incidents, driven through the real pipeline (issue 5 item 4):
//! a few hundred scenarios of a hospital with its own tenant, every source format mixed,
//! about a third of them carrying an incident, produced to fresh topics by destination
//! and stored by the real `custos-ingest`; then each incident is looked up in the report
//! that must show it, through the query API in-process:
//!
//! - a token used from a new IP: the token trace of its `jti` lists the IP among the IPs
//!   seen, and the incident access is the only one from there;
//! - refresh-token reuse: the token trace shows the refresh failing;
//! - access after consent revocation: the revocation-violations report holds the access;
//! - denied scope escalation: the clinician's user activity holds the denied access;
//! - break-glass: the break-glass report holds the opening with its reason.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::Router;
use custos_sim::{Dest, HospitalConfig, Incident, IncidentInfo, Out, Simulator};
use custos_tests::*;
use serde_json::Value;
use support::{get, rows, token, url};

const SCENARIOS: usize = 300;
const SEED: u64 = 20_260_601;
/// The simulated clock starts 2026-06-01T07:00Z.
const FROM: &str = "2026-06-01";
const TO: &str = "2026-06-08";
const BTG_REASON: &str = "unresponsive patient in emergency department";

/// Source IP carried by a simulator message, in whichever format it was emitted.
fn source_ip(o: &Out) -> Option<String> {
    let v: Value = serde_json::from_slice(&o.msg.payload).ok()?;
    let candidates = [
        v["data"]["sourceIp"].as_str(), // CloudEvents, structured
        v["sourceIp"].as_str(),         // CloudEvents, binary (data only)
        v["ipAddress"].as_str(),        // Keycloak
        v["agent"]
            .as_array()
            .and_then(|agents| agents.iter().find_map(|a| a["network"]["address"].as_str())), // FHIR AuditEvent
    ];
    candidates.iter().flatten().next().map(|s| (*s).to_owned())
}

/// Waits until every produced message is stored or rejected; returns the rejections.
async fn wait_ingested(topics: &[String], n: u64) -> Result<u64> {
    let start = Instant::now();
    loop {
        let stored = stored_count(topics).await.unwrap_or(0);
        let rejected: u64 = admin()
            .query("SELECT count() FROM custos.ingest_rejections FINAL WHERE kafka_topic IN ?")
            .bind(topics)
            .fetch_one()
            .await
            .unwrap_or(0);
        if stored + rejected >= n {
            return Ok(rejected);
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("{stored} stored and {rejected} rejected of {n} after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

struct Reports {
    app: Router,
    tenant: String,
    responder: String,
    privacy: String,
    officer: String,
}

impl Reports {
    async fn page(&self, path: &str, bearer: &str, params: &[(&str, &str)]) -> Result<Value> {
        let mut p = vec![
            ("tenant", self.tenant.as_str()),
            ("from", FROM),
            ("to", TO),
            ("limit", "1000"),
        ];
        p.extend_from_slice(params);
        let r = get(&self.app, &url(path, &p), Some(bearer)).await;
        if r.status != 200 {
            bail!("{path}: {} {}", r.status, r.text());
        }
        Ok(r.json())
    }

    /// Checks that `info` (stored as `key`) shows in its report; `Err` says why not.
    async fn check(&self, info: &IncidentInfo, key: &str, ip: Option<&str>) -> Result<()> {
        let find = |page: &Value| rows(page).into_iter().find(|r| r["event_key"] == key);
        match info.kind {
            Incident::NewIp => {
                let page = self
                    .page(
                        "/v1/reports/token-trace",
                        &self.responder,
                        &[("jti", &info.jti)],
                    )
                    .await?;
                let ip = ip.context("no IP in the incident message")?;
                let ev = find(&page).context("access missing from the token trace")?;
                if ev["source_ip"] != ip {
                    bail!("trace shows IP {} for the access", ev["source_ip"]);
                }
                let ips: Vec<&str> = page["tokens"][0]["ips"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if !ips.contains(&ip) || ips.len() < 2 {
                    bail!("new IP not among the token's IPs {ips:?}");
                }
                let from_there = rows(&page).iter().filter(|r| r["source_ip"] == ip).count();
                if from_there != 1 {
                    bail!("{from_there} events from the new IP");
                }
            }
            Incident::RefreshReuse => {
                let page = self
                    .page(
                        "/v1/reports/token-trace",
                        &self.responder,
                        &[("jti", &info.jti)],
                    )
                    .await?;
                let ev = find(&page).context("reuse missing from the token trace")?;
                if ev["event_type"] != "custos.token.refreshed" || ev["outcome"] != "failure" {
                    bail!("reuse shown as {} / {}", ev["event_type"], ev["outcome"]);
                }
            }
            Incident::AccessAfterRevocation => {
                let page = self
                    .page(
                        "/v1/reports/revocation-violations",
                        &self.privacy,
                        &[("patient", &info.patient), ("client", &info.client_id)],
                    )
                    .await?;
                let v = find(&page).context("access missing from the violations")?;
                if v["client_id"] != info.client_id.as_str() || v["consent_id"] == "" {
                    bail!("violation row incomplete: {v}");
                }
            }
            Incident::ScopeEscalationDenied => {
                let page = self
                    .page(
                        "/v1/reports/user-activity",
                        &self.officer,
                        &[("user", &info.sub), ("event_type", "custos.fhir.access")],
                    )
                    .await?;
                let ev = find(&page).context("denied access missing from user activity")?;
                if ev["decision"] != "deny" || ev["outcome"] != "failure" {
                    bail!("shown as {} / {}", ev["decision"], ev["outcome"]);
                }
            }
            Incident::BreakGlass => {
                let page = self
                    .page(
                        "/v1/reports/break-glass",
                        &self.officer,
                        &[("patient", &info.patient)],
                    )
                    .await?;
                let ev = find(&page).context("opening missing from the break-glass report")?;
                if ev["reason"] != BTG_REASON || ev["user_sub"] != info.sub.as_str() {
                    bail!("shown with reason {} by {}", ev["reason"], ev["user_sub"]);
                }
                // The BTG accesses of the opening are listed too.
                let btg_accesses = rows(&page)
                    .iter()
                    .filter(|r| r["user_sub"] == info.sub.as_str() && r["event_key"] != key)
                    .count();
                if btg_accesses < 2 {
                    bail!("{btg_accesses} BTG accesses listed");
                }
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_injected_incident_shows_in_its_report() -> Result<()> {
    support::ensure_schema()?;
    let topics = Topics::create("si", 1).await?;
    let tenant = unique("si");
    let mut sim = Simulator::new(
        HospitalConfig {
            tenant: tenant.clone(),
            clinicians: 20,
            patients: 300,
            incident_rate: 0.3,
            ..HospitalConfig::default()
        },
        SEED,
    );
    let outs: Vec<Out> = (0..SCENARIOS).flat_map(|_| sim.next_scenario()).collect();
    let mut by_topic: BTreeMap<&str, Vec<Msg>> = BTreeMap::new();
    for o in &outs {
        let topic = match o.dest {
            Dest::As => &topics.as_events,
            Dest::Gateway => &topics.gateway,
            Dest::Consent => &topics.consent,
        };
        by_topic.entry(topic).or_default().push(o.msg.clone());
    }
    let incidents: Vec<(&IncidentInfo, Option<String>)> = outs
        .iter()
        .filter_map(|o| o.incident.as_ref().map(|i| (i, source_ip(o))))
        .collect();

    let mut ingest = Ingest::spawn(&topics, &[])?;
    ingest.wait_ready(Duration::from_secs(60)).await?;
    let producer = producer()?;
    for (topic, msgs) in &by_topic {
        produce(&producer, topic, None, msgs).await?;
    }
    let rejected = wait_ingested(&topics.input_list(), outs.len() as u64).await?;
    assert_eq!(ingest.terminate(Duration::from_secs(60))?, 0);
    assert_eq!(rejected, 0, "simulator messages were dead-lettered");

    // Event keys of the incident messages, by event id.
    let ids: Vec<String> = incidents.iter().map(|(i, _)| i.event_id.clone()).collect();
    let keys: HashMap<String, String> = admin()
        .query("SELECT event_id, event_key FROM custos.audit_events FINAL WHERE tenant = ? AND event_id IN ?")
        .bind(&tenant)
        .bind(&ids)
        .fetch_all::<(String, String)>()
        .await?
        .into_iter()
        .collect();

    let reports = Reports {
        app: support::app(&[]),
        tenant: tenant.clone(),
        responder: token("sim-responder", &["incident_responder"]),
        privacy: token("sim-privacy", &["privacy_officer"]),
        officer: token("sim-officer", &["compliance_officer"]),
    };
    let mut found: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for (info, ip) in &incidents {
        let kind = format!("{:?}", info.kind);
        let Some(key) = keys.get(&info.event_id) else {
            failures.push(format!("{kind} {}: not stored", info.event_id));
            continue;
        };
        match reports.check(info, key, ip.as_deref()).await {
            Ok(()) => *found.entry(kind).or_default() += 1,
            Err(e) => failures.push(format!("{kind} {}: {e:#}", info.event_id)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} incidents not shown as expected:\n{}",
        failures.len(),
        incidents.len(),
        failures.join("\n")
    );
    eprintln!(
        "{} messages, {} incidents found in their reports: {found:?}",
        outs.len(),
        incidents.len()
    );
    assert_eq!(found.len(), 5, "every incident kind injected: {found:?}");
    Ok(())
}
