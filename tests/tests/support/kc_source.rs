//! The `custos-kafka` Keycloak event listener under test: a throw-away Kafka broker and a
//! Keycloak of their own (started by `scripts/stack` and `scripts/keycloak` in a temporary
//! stack directory on free loopback ports, so the shared stack is never stopped), a small
//! Admin REST client for them, and a reader of every record of a topic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use custos_tests::{free_port, unique, workspace};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

/// Runs a project script with `env`; fails with its output when it fails.
fn script(name: &str, args: &[&str], env: &[(&str, String)]) -> Result<()> {
    let out = Command::new(workspace().join("scripts").join(name))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .with_context(|| format!("running scripts/{name}"))?;
    if !out.status.success() {
        bail!(
            "scripts/{name} {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A Kafka broker of its own (KRaft, one node) in a temporary stack directory.
pub struct TmpKafka {
    env: Vec<(&'static str, String)>,
    /// Its bootstrap address.
    pub brokers: String,
}

impl TmpKafka {
    /// Installs (from the local Maven cache after the first time) and starts the broker.
    pub fn start(dir: &Path) -> Result<TmpKafka> {
        let (port, controller) = (free_port(), free_port());
        let env = vec![
            ("CUSTOS_STACK_DIR", dir.display().to_string()),
            ("CUSTOS_KAFKA_PORT", port.to_string()),
            ("CUSTOS_KAFKA_CONTROLLER_PORT", controller.to_string()),
            ("CUSTOS_KAFKA_HEAP_OPTS", "-Xms128m -Xmx384m".to_owned()),
        ];
        let k = TmpKafka {
            env,
            brokers: format!("127.0.0.1:{port}"),
        };
        k.up()?;
        Ok(k)
    }

    /// Starts the (stopped) broker again, with its data.
    pub fn up(&self) -> Result<()> {
        script("stack", &["start", "kafka"], &self.env)
    }

    /// Stops the broker; its data is kept.
    pub fn stop(&self) -> Result<()> {
        script("stack", &["stop", "kafka"], &self.env)
    }

    /// Creates topics (name, partitions) on this broker.
    pub async fn create_topics(&self, topics: &[(&str, i32)]) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for r in admin.create_topics(&new, &opts).await? {
            if let Err((name, code)) = r {
                bail!("creating topic {name}: {code:?}");
            }
        }
        Ok(())
    }

    /// Every record of `topic` from the beginning to the current end: (key, value JSON).
    pub fn read_all(&self, topic: &str) -> Result<Vec<(String, Value)>> {
        read_all(&self.brokers, topic)
    }
}

impl Drop for TmpKafka {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Every record of `topic` at `brokers` from the beginning to the high watermark of each
/// partition at the time of the call: (key, value as JSON).
pub fn read_all(brokers: &str, topic: &str) -> Result<Vec<(String, Value)>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("kc-reader"))
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_secs(15);
    let md = c.fetch_metadata(Some(topic), timeout)?;
    let parts = md
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    ensure!(parts > 0, "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..parts as i32 {
        let (low, high) = c.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
            ends.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    c.assign(&tpl)?;
    let start = Instant::now();
    let mut done: HashMap<i32, bool> = ends.keys().map(|p| (*p, false)).collect();
    while done.values().any(|d| !d) {
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "reading {topic} timed out"
        );
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m?;
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let value: Value = serde_json::from_slice(m.payload().unwrap_or_default())
            .with_context(|| format!("record at offset {} is not JSON", m.offset()))?;
        out.push((key, value));
        if m.offset() + 1 >= ends[&m.partition()] {
            done.insert(m.partition(), true);
        }
    }
    Ok(out)
}

/// A Keycloak of its own, with the `custos-kafka` listener, in a temporary stack directory.
pub struct TmpKeycloak {
    env: Vec<(&'static str, String)>,
    /// Its base URL.
    pub url: String,
    /// Its management interface (health, metrics).
    pub mgmt: String,
    /// The stack directory (Keycloak's log is in `logs/keycloak.log`).
    pub dir: PathBuf,
}

impl TmpKeycloak {
    /// Installs and starts Keycloak publishing to `topic` at `brokers`.
    pub fn start(dir: &Path, brokers: &str, topic: &str) -> Result<TmpKeycloak> {
        let (port, mgmt) = (free_port(), free_port());
        let env = vec![
            ("CUSTOS_STACK_DIR", dir.display().to_string()),
            ("CUSTOS_KC_PORT", port.to_string()),
            ("CUSTOS_KC_MGMT_PORT", mgmt.to_string()),
            ("CUSTOS_KC_EVENTS", "on".to_owned()),
            ("CUSTOS_KC_EVENTS_BROKERS", brokers.to_owned()),
            ("CUSTOS_EVENTS_TOPIC", topic.to_owned()),
            ("CUSTOS_EVENTS_DELIVERY_TIMEOUT_MS", "4000".to_owned()),
            ("CUSTOS_EVENTS_STATUS_LOG_SECONDS", "10".to_owned()),
            ("CUSTOS_KC_START_TIMEOUT", "300".to_owned()),
        ];
        let kc = TmpKeycloak {
            env,
            url: format!("http://127.0.0.1:{port}"),
            mgmt: format!("http://127.0.0.1:{mgmt}"),
            dir: dir.to_owned(),
        };
        kc.up()?;
        Ok(kc)
    }

    /// Starts it (again).
    pub fn up(&self) -> Result<()> {
        script("keycloak", &["up"], &self.env)
    }

    /// Stops it (SIGTERM: the listener spools what Kafka did not acknowledge).
    pub fn down(&self) -> Result<()> {
        script("keycloak", &["down"], &self.env)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs").join("keycloak.log")).unwrap_or_default()
    }

    /// The sum of the samples of metric `name` on its management interface.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let body = reqwest::get(format!("{}/metrics", self.mgmt))
            .await?
            .text()
            .await?;
        Ok(custos_tests::sum_metric(&body, name))
    }
}

impl Drop for TmpKeycloak {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

/// A temporary stack directory under `target/` (kept on failure for its logs).
pub fn stack_dir(name: &str) -> Result<PathBuf> {
    let dir = workspace()
        .join("target")
        .join("e2e-stacks")
        .join(unique(name));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The few Admin REST and token calls the listener tests need.
pub struct Admin {
    http: reqwest::Client,
    base: String,
}

/// The confidential client with direct access grants of a test realm.
pub const APP: (&str, &str) = ("kc-source-app", "kc-source-app-secret-0123456789");
/// The demo user's password in a test realm.
pub const PASSWORD: &str = "Kc-source-pass-0123456789";

impl Admin {
    /// The bootstrap admin of the Keycloak at `base` (checked by signing in once).
    pub async fn connect(base: &str) -> Result<Admin> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let admin = Admin {
            http,
            base: base.to_owned(),
        };
        admin.token().await?;
        Ok(admin)
    }

    /// A fresh admin access token (they live a minute; the tests outlast that).
    async fn token(&self) -> Result<String> {
        let v: Value = self
            .http
            .post(format!(
                "{}/realms/master/protocol/openid-connect/token",
                self.base
            ))
            .form(&[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", "admin"),
                ("password", &super::keycloak::kc_admin_password()),
            ])
            .send()
            .await?
            .json()
            .await?;
        v["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("no admin token")
    }

    /// An Admin REST call (`path` below `/admin/realms`): status and JSON body (null if none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}/admin/realms{path}", self.base))
            .bearer_auth(self.token().await?);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Whether the server has the `custos-kafka` event listener.
    pub async fn has_listener(&self) -> Result<bool> {
        let v: Value = self
            .http
            .get(format!("{}/admin/serverinfo", self.base))
            .bearer_auth(self.token().await?)
            .send()
            .await?
            .json()
            .await?;
        Ok(v["providers"]["eventsListener"]["providers"]
            .get("custos-kafka")
            .is_some())
    }

    /// A realm whose user and admin events (with representations) go to `custos-kafka`,
    /// with [`APP`] and user `user`; returns the realm's id.
    pub async fn realm(&self, realm: &str, user: &str) -> Result<String> {
        let (s, b) = self
            .call(
                reqwest::Method::POST,
                "",
                Some(json!({
                    "realm": realm, "enabled": true,
                    "eventsEnabled": true, "eventsListeners": ["custos-kafka"],
                    "adminEventsEnabled": true, "adminEventsDetailsEnabled": true,
                    "clients": [{
                        "clientId": APP.0, "secret": APP.1, "publicClient": false,
                        "directAccessGrantsEnabled": true, "standardFlowEnabled": false
                    }],
                    "users": [{
                        "username": user, "enabled": true, "email": format!("{user}@example.org"),
                        "emailVerified": true, "firstName": "Kc", "lastName": "Source",
                        "credentials": [{"type": "password", "value": PASSWORD, "temporary": false}]
                    }]
                })),
            )
            .await?;
        ensure!(s == 201, "creating realm {realm}: {s} {b}");
        let (s, r) = self
            .call(reqwest::Method::GET, &format!("/{realm}"), None)
            .await?;
        ensure!(s == 200, "GET realm {realm}: {s}");
        r["id"].as_str().map(str::to_owned).context("realm id")
    }

    /// A password-grant login of `user`; returns the HTTP status.
    pub async fn login(&self, realm: &str, user: &str, password: &str) -> Result<u16> {
        let resp = self
            .http
            .post(format!(
                "{}/realms/{realm}/protocol/openid-connect/token",
                self.base
            ))
            .form(&[
                ("grant_type", "password"),
                ("client_id", APP.0),
                ("client_secret", APP.1),
                ("username", user),
                ("password", password),
                ("scope", "openid"),
            ])
            .send()
            .await?;
        Ok(resp.status().as_u16())
    }

    /// The ids of the user and admin events Keycloak stored for `realm`.
    pub async fn stored_event_ids(&self, realm: &str) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for kind in ["events", "admin-events"] {
            let (s, v) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/{realm}/{kind}?first=0&max=100000"),
                    None,
                )
                .await?;
            ensure!(s == 200, "GET {kind} of {realm}: {s} {v}");
            for e in v.as_array().context("event list")? {
                ids.push(
                    e["id"]
                        .as_str()
                        .with_context(|| format!("stored event without id: {e}"))?
                        .to_owned(),
                );
            }
        }
        Ok(ids)
    }
}
