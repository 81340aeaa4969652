#![allow(dead_code)]

//! Support of the detection tests (`alerts_detectors`, `alerts_crash`, `alerts_review`; included with `#[path]`): the real
//! `custos-alerts` binary over a test's own topics and state name, CloudEvents at chosen
//! event times and tenants, and readers of `custos.alerts` and `custos.alert_actions`.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use custos_tests::*;
use serde_json::{json, Value};

/// The `custos_alerts` account's password (`$CUSTOS_CH_ALERTS_PASSWORD` or the stack's
/// development secret).
pub fn alerts_password() -> String {
    ch_password("alerts")
}

/// A ClickHouse client with the `custos_alerts` account.
pub fn alerts_account() -> clickhouse::Client {
    account("alerts")
}

/// A running `custos-alerts run`.
pub struct AlertsProc {
    child: Option<Child>,
    /// Its ops address.
    pub admin: String,
    /// Its log file.
    pub log: PathBuf,
}

/// What one service run reads and writes.
#[derive(Debug, Clone)]
pub struct AlertsSetup {
    /// Input topics.
    pub topics: Topics,
    /// Alerts topic.
    pub alerts_topic: String,
    /// Saved-state name.
    pub state_name: String,
    /// Environment overrides.
    pub env: Vec<(String, String)>,
}

impl AlertsSetup {
    /// Fresh topics (`partitions` each, and a 1-partition alerts topic) and a state name.
    pub async fn create(name: &str, partitions: i32) -> Result<AlertsSetup> {
        if let Err(e) = alerts_account().query("SELECT 1").execute().await {
            bail!(
                "the ClickHouse account custos_alerts does not answer ({e}): a server started \
                 before config/clickhouse/users.xml had it needs `scripts/stack restart clickhouse`"
            );
        }
        let topics = Topics::create(name, partitions).await?;
        let alerts_topic = format!("{}.alerts", topics.group);
        create_topics(&[(&alerts_topic, 1)]).await?;
        Ok(AlertsSetup {
            state_name: format!("{}.state", topics.group),
            topics,
            alerts_topic,
            env: Vec::new(),
        })
    }
}

impl AlertsProc {
    /// Spawns the service for `setup`.
    pub fn spawn(setup: &AlertsSetup) -> Result<AlertsProc> {
        let port = free_port();
        let mut cmd = Command::new(workspace_binary("custos-alerts", "custos-alerts"));
        cmd.arg("run")
            .env("CUSTOS_KAFKA_BROKERS", brokers())
            .env("CUSTOS_CLICKHOUSE_URL", clickhouse_url())
            .env("CUSTOS_ALERTS_INPUT_TOPICS", setup.topics.inputs())
            .env("CUSTOS_ALERTS_TOPIC", &setup.alerts_topic)
            .env(
                "CUSTOS_ALERTS_GROUP",
                format!("{}.alerts", setup.topics.group),
            )
            .env("CUSTOS_ALERTS_STATE_NAME", &setup.state_name)
            .env("CUSTOS_ALERTS_CLICKHOUSE_PASSWORD", alerts_password())
            .env("CUSTOS_PSEUDONYM_KEYS", TEST_KEYS)
            .env("CUSTOS_ALERTS_ADMIN_ADDR", format!("127.0.0.1:{port}"))
            .env("CUSTOS_LOG", "info,custos_alerts=debug");
        let extra: Vec<(&str, &str)> = setup
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (child, log) = spawn_logged(
            cmd,
            &format!("{}-alerts-{port}", setup.topics.group),
            &extra,
        )?;
        Ok(AlertsProc {
            child: Some(child),
            admin: format!("http://127.0.0.1:{port}"),
            log,
        })
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = http_get(&format!("{}/readyz", self.admin)).await {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "custos-alerts not ready after {timeout:?}; log:\n{}",
                    tail(&self.log_text(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The sum of the samples of metric `name`.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let body = http_get(&format!("{}/metrics", self.admin)).await?.1;
        Ok(sum_metric(&body, name))
    }

    /// SIGKILLs the process.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERMs the process and waits for its exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Result<i32> {
        let child = self.child.take().context("already stopped")?;
        terminate_child(child, "custos-alerts", timeout)
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AlertsProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A tenant name unique to this test run.
pub fn tenant(tag: &str) -> String {
    let u = unique(tag);
    u.trim_start_matches("t-").to_owned()
}

/// Milliseconds since the epoch, rounded down to the minute.
pub fn now_minute_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    now - now % 60_000
}

/// One minute in ms.
pub const MIN: i64 = 60_000;

/// A structured CloudEvent `ty` of `tenant` at `t_ms` with `data`.
pub fn ce_at(id: &str, ty: &str, tenant: &str, t_ms: i64, data: Value) -> Msg {
    let time = chrono::DateTime::from_timestamp_millis(t_ms)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut m = Msg::json(&json!({
        "specversion": "1.0", "id": id, "source": "//custos.test/alerts", "type": ty,
        "time": time, "datacontenttype": "application/json", "tenant": tenant, "data": data,
    }));
    m.key = Some(id.to_owned());
    m
}

/// A FHIR access by clinician `sub` with token `jti` from `ip` to `rtype` (scopes
/// `user/Observation.rs user/Patient.rs`).
pub fn access(sub: &str, jti: &str, ip: &str, rtype: &str, decision: &str) -> Value {
    json!({"requestId": format!("q-{jti}"), "iss": "https://as.test/realms/r", "sub": sub,
        "fhirUser": "Practitioner/pr-1", "client_id": "ehr-app", "jti": jti,
        "scope": "user/Observation.rs user/Patient.rs", "interaction": "read",
        "resourceType": rtype, "resourceId": "x1", "patient": "Patient/RAWPAT-alerts-1",
        "decision": decision, "httpStatus": if decision == "permit" { 200 } else { 403 },
        "sourceIp": ip, "userAgent": "Browser/1"})
}

/// An alert row as the tests read it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize, clickhouse::Row)]
pub struct Seen {
    /// Tenant.
    pub tenant: String,
    /// Detector.
    pub detector: String,
    /// Alert id.
    pub alert_id: String,
    /// Revision.
    pub revision: u32,
    /// Severity.
    pub severity: String,
    /// Evidence count.
    pub evidence_count: u32,
    /// Evidence keys.
    pub evidence: Vec<String>,
}

/// Every alert revision of `tenants` (deduplicated, as a report reads them).
pub async fn alerts_of(tenants: &[String]) -> Result<Vec<Seen>> {
    Ok(admin()
        .query(
            "SELECT tenant, detector, alert_id, revision, severity, evidence_count, evidence \
             FROM custos.alerts FINAL WHERE tenant IN ? \
             ORDER BY tenant, detector, alert_id, revision",
        )
        .bind(tenants)
        .fetch_all::<Seen>()
        .await?)
}

/// Waits until `done(alerts of tenants)` holds, returning them.
pub async fn wait_alerts(
    tenants: &[String],
    timeout: Duration,
    done: impl Fn(&[Seen]) -> bool,
) -> Result<Vec<Seen>> {
    let start = Instant::now();
    loop {
        let seen = alerts_of(tenants).await?;
        if done(&seen) {
            return Ok(seen);
        }
        if start.elapsed() > timeout {
            bail!("alerts after {timeout:?}: {seen:#?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
