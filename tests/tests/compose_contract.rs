//! Contract between the container deployment (`compose.yaml`, `Dockerfile`, `.dockerignore`,
//! `deploy/`) and the code and dev-stack configuration it deploys. Needs no Docker, Kafka or
//! ClickHouse: it reads the files, and runs the deploy scripts (bash) against fakes.
//!
//! Checked: the compose file parses and holds exactly the expected services, each pinned and
//! backed by an existing binary; every `CUSTOS_*` variable given to `ingest` / `migrate` /
//! `query` / `consent` is one the code reads (for `consent`, the `CUSTOS_OIDC_*` variables may
//! come from a configuration struct shared with the query API), the connection variables are all
//! there and every password or key comes from a secret file; the query service's environment
//! passes the query API's own configuration parsing and validation; the OIDC settings of query
//! and consent match the Keycloak demo realm (issuer, audiences, roles claim, the consent
//! service account); host ports are bound to 127.0.0.1; `kafka-init` creates the topics of
//! `config/topics.conf` (its script is run against a fake `kafka-topics.sh`); the ClickHouse
//! accounts and grants match `config/clickhouse/users.xml`; the Dockerfile's runtime stage runs
//! as a non-root user and carries the services only (the simulator is in the `tools` target,
//! no image carries a benchmark); `deploy/secrets/generate.sh` makes secrets the code accepts;
//! healthchecks, start order, limits, volumes and the Keycloak demo realm.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use custos_schemas::{KeyRing, KeyRingError};
use custos_tests::workspace;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// helpers

fn read(rel: &str) -> String {
    let path = workspace().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn compose() -> Value {
    serde_yaml_ng::from_str(&read("compose.yaml")).expect("compose.yaml is valid YAML")
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["services"]
        .get(name)
        .unwrap_or_else(|| panic!("compose.yaml has no service `{name}`"))
}

fn services(c: &Value) -> BTreeMap<String, Value> {
    c["services"]
        .as_object()
        .expect("services is a mapping")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A list of strings, or one string (shell form) split on whitespace.
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().filter_map(scalar).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Null => Vec::new(),
        other => panic!("expected a list of strings, got {other}"),
    }
}

/// The `environment` of a service (mapping or `KEY=value` list form); `None` = pass-through.
fn env(svc: &Value) -> BTreeMap<String, Option<String>> {
    match svc.get("environment") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(scalar)
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (kv, None),
            })
            .collect(),
        Some(other) => panic!("environment: unexpected {other}"),
    }
}

fn env_value(svc: &Value, key: &str) -> String {
    env(svc)
        .get(key)
        .cloned()
        .flatten()
        .unwrap_or_else(|| panic!("environment lacks a value for {key}"))
}

/// Secrets mounted into a service (short or long syntax).
fn service_secrets(svc: &Value) -> BTreeSet<String> {
    match svc.get("secrets") {
        None => BTreeSet::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| match s {
                Value::String(name) => name.clone(),
                Value::Object(o) => scalar(&o["source"]).expect("secret source"),
                other => panic!("secrets: unexpected {other}"),
            })
            .collect(),
        Some(other) => panic!("secrets: unexpected {other}"),
    }
}

/// `(source, target)` of every volume of a service (short or long syntax).
fn mounts(svc: &Value) -> Vec<(String, String)> {
    let Some(Value::Array(vols)) = svc.get("volumes") else {
        return Vec::new();
    };
    vols.iter()
        .map(|v| match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                assert!(parts.len() >= 2, "volume `{s}` has no target");
                (parts[0].to_owned(), parts[1].to_owned())
            }
            Value::Object(o) => (
                scalar(&o["source"]).expect("volume source"),
                scalar(&o["target"]).expect("volume target"),
            ),
            other => panic!("volumes: unexpected {other}"),
        })
        .collect()
}

/// The container path where a repository file is bind-mounted, if it is.
fn mount_target(svc: &Value, repo_path: &str) -> Option<String> {
    mounts(svc)
        .into_iter()
        .find(|(src, _)| src.trim_start_matches("./") == repo_path)
        .map(|(_, dst)| dst)
}

/// `${VAR:-default}` -> `default`; anything else unchanged.
fn default_of(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("unclosed ${") + start;
        let inner = &rest[start + 2..end];
        if let Some((_, d)) = inner.split_once(":-") {
            out.push_str(d);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Workspace members listed in the root Cargo.toml.
fn workspace_members() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let start = manifest.find("members").expect("workspace members");
    let open = manifest[start..].find('[').expect("[") + start;
    let close = manifest[open..].find(']').expect("]") + open;
    manifest[open + 1..close]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

/// Names of every binary target of the workspace (what `cargo build --workspace --bins` makes).
fn workspace_binaries() -> BTreeSet<String> {
    let mut bins = BTreeSet::new();
    for member in workspace_members() {
        let manifest = read(&format!("{member}/Cargo.toml"));
        let quoted = |line: &str| line.split('"').nth(1).map(str::to_owned);
        let mut section = String::new();
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_owned();
            } else if line.starts_with("name") && (section == "[package]" || section == "[[bin]]") {
                let name = quoted(line).expect("quoted name");
                let has_main = workspace().join(&member).join("src/main.rs").exists();
                if section == "[[bin]]" || has_main {
                    bins.insert(name);
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir(workspace().join(&member).join("src/bin")) {
            for entry in dir.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|x| x == "rs") {
                    bins.insert(path.file_stem().expect("stem").to_string_lossy().into());
                }
            }
        }
    }
    bins
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Every string literal that is exactly a `CUSTOS_*` name in `text`.
fn custos_literals(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("\"CUSTOS_") {
        let name: String = text[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if text[i + 1 + name.len()..].starts_with('"') {
            names.insert(name);
        }
    }
    names
}

/// `env = "CUSTOS_..."` names of one source text (the clap arguments).
fn clap_env_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("env = \"CUSTOS_") {
        let start = i + "env = \"".len();
        let end = text[start..].find('"').expect("closing quote") + start;
        names.insert(text[start..end].to_owned());
    }
    names
}

/// `env = "CUSTOS_..."` names of ingest/src/config.rs (the clap arguments).
fn config_rs_env_names() -> BTreeSet<String> {
    clap_env_names(&read("ingest/src/config.rs"))
}

/// Every `CUSTOS_*` variable read by the sources under `dir` (a crate's `src`): the clap
/// `env = "..."` names plus any other exact literal (e.g. CUSTOS_LOG in main.rs).
fn env_names_in(dir: &str) -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&workspace().join(dir), &mut files);
    let mut names = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read source");
        names.extend(clap_env_names(&text));
        names.extend(custos_literals(&text));
    }
    names
}

/// Every `CUSTOS_*` variable the ingest binary reads.
fn ingest_env_names() -> BTreeSet<String> {
    env_names_in("ingest/src")
}

/// Every `CUSTOS_*` variable custos-query reads.
fn query_env_names() -> BTreeSet<String> {
    env_names_in("query/src")
}

/// The `CUSTOS_OIDC_*` variables defined anywhere in the workspace's crates: the bearer-token
/// settings are one clap struct (today `OidcArgs` of query/src/config.rs) that other services
/// may flatten into their own configuration, wherever it ends up living.
fn shared_oidc_env_names() -> BTreeSet<String> {
    workspace_members()
        .iter()
        .flat_map(|m| env_names_in(&format!("{m}/src")))
        .filter(|n| n.starts_with("CUSTOS_OIDC_"))
        .collect()
}

/// Every `CUSTOS_*` variable custos-consent reads: its own sources plus the shared OIDC
/// settings (the privacy API checks bearer tokens like the query API, same variables).
fn consent_env_names() -> BTreeSet<String> {
    let mut names = env_names_in("consent/src");
    names.extend(shared_oidc_env_names());
    names
}

/// `config/topics.conf` as (name, partitions), in order.
fn topics_conf() -> Vec<(String, u32)> {
    read("config/topics.conf")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next().expect("topic name").to_owned();
            let parts = it
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("topics.conf: bad line `{l}`"));
            (name, parts)
        })
        .collect()
}

fn scratch_dir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "custos-compose-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn bash(script: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run bash")
}

// A minimal XML reader for the ClickHouse users files (elements, attributes, text, comments).
#[derive(Debug, Default)]
struct Xml {
    name: String,
    attrs: BTreeMap<String, String>,
    children: Vec<Xml>,
    text: String,
}

impl Xml {
    fn parse(src: &str) -> Xml {
        let mut p = XmlReader { s: src, i: 0 };
        p.skip_misc();
        p.element()
    }

    fn child(&self, name: &str) -> Option<&Xml> {
        self.children.iter().find(|c| c.name == name)
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &Xml> {
        let name = name.to_owned();
        self.children.iter().filter(move |c| c.name == name)
    }
}

struct XmlReader<'a> {
    s: &'a str,
    i: usize,
}

impl XmlReader<'_> {
    fn rest(&self) -> &str {
        &self.s[self.i..]
    }

    fn skip_to(&mut self, end: &str) {
        let at = self.rest().find(end).expect("unterminated XML construct");
        self.i += at + end.len();
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.i = self.s.len() - trimmed.len();
    }

    fn skip_misc(&mut self) {
        loop {
            self.skip_ws();
            if self.rest().starts_with("<?") {
                self.skip_to("?>");
            } else if self.rest().starts_with("<!--") {
                self.skip_to("-->");
            } else {
                return;
            }
        }
    }

    fn name(&mut self) -> String {
        let n: String = self
            .rest()
            .chars()
            .take_while(|c| !c.is_whitespace() && !"/>=".contains(*c))
            .collect();
        self.i += n.len();
        n
    }

    fn element(&mut self) -> Xml {
        assert!(self.rest().starts_with('<'), "XML: expected an element");
        self.i += 1;
        let mut el = Xml {
            name: self.name(),
            ..Xml::default()
        };
        loop {
            self.skip_ws();
            if self.rest().starts_with("/>") {
                self.i += 2;
                return el;
            }
            if self.rest().starts_with('>') {
                self.i += 1;
                break;
            }
            let key = self.name();
            self.skip_ws();
            assert!(self.rest().starts_with('='), "XML: attribute without value");
            self.i += 1;
            self.skip_ws();
            let quote = self.rest().chars().next().expect("quote");
            self.i += 1;
            let end = self.rest().find(quote).expect("closing quote");
            el.attrs.insert(key, unescape(&self.rest()[..end]));
            self.i += end + 1;
        }
        loop {
            if self.rest().starts_with("<!--") {
                self.skip_to("-->");
            } else if self.rest().starts_with("</") {
                self.skip_to(">");
                el.text = unescape(el.text.trim());
                return el;
            } else if self.rest().starts_with('<') {
                let child = self.element();
                el.children.push(child);
            } else {
                let end = self.rest().find('<').expect("XML: unclosed element");
                el.text.push_str(&self.rest()[..end]);
                self.i += end;
            }
        }
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// users -> grant queries, for every user that is not removed.
fn users_and_grants(users_xml: &str) -> BTreeMap<String, Vec<String>> {
    let root = Xml::parse(users_xml);
    let users = root.child("users").expect("<users>");
    users
        .children
        .iter()
        .filter(|u| !u.attrs.contains_key("remove"))
        .map(|u| {
            let grants = u
                .child("grants")
                .map(|g| g.all("query").map(|q| q.text.clone()).collect())
                .unwrap_or_default();
            (u.name.clone(), grants)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// compose.yaml: services

const SERVICES: &[&str] = &[
    "kafka",
    "kafka-init",
    "clickhouse",
    "keycloak",
    "migrate",
    "ingest",
    "query",
    "consent",
    "simulator",
];

/// Services that run in keycloak's network namespace, so that the (plain http, dev-mode)
/// Keycloak is on their loopback: the OIDC code fetches keys over https or loopback http only.
const IN_KEYCLOAK_NETNS: &[&str] = &["query", "consent"];

#[test]
fn compose_parses_with_the_expected_services() {
    let c = compose();
    let names: BTreeSet<String> = services(&c).into_keys().collect();
    let want: BTreeSet<String> = SERVICES.iter().map(|s| s.to_string()).collect();
    assert_eq!(names, want, "services of compose.yaml");

    // The simulator only runs on demand.
    assert_eq!(
        strings(&service(&c, "simulator")["profiles"]),
        vec!["simulator"]
    );
    for (name, svc) in services(&c) {
        if name != "simulator" {
            assert!(svc.get("profiles").is_none(), "{name}: unexpected profiles");
        }
        let image = scalar(&svc["image"]).unwrap_or_else(|| panic!("{name}: no image"));
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest",
            "{name}: image `{image}` must carry a pinned tag"
        );
        if svc.get("build").is_none() {
            assert!(
                tag.chars().next().is_some_and(|c| c.is_ascii_digit()),
                "{name}: third-party image `{image}` must be pinned to a version"
            );
        }
        match scalar(svc.get("network_mode").unwrap_or(&Value::Null)) {
            None => assert!(
                svc.get("networks").is_some(),
                "{name}: on the custos network"
            ),
            Some(mode) => {
                assert!(
                    IN_KEYCLOAK_NETNS.contains(&name.as_str()) && mode == "service:keycloak",
                    "{name}: network_mode `{mode}` (no host networking; only query and consent \
                     share keycloak's namespace)"
                );
                for key in ["networks", "ports"] {
                    assert!(
                        svc.get(key).is_none(),
                        "{name}: `{key}` conflicts with network_mode"
                    );
                }
            }
        }
        let limit = &svc["deploy"]["resources"]["limits"];
        assert!(
            limit.get("memory").is_some() && limit.get("cpus").is_some(),
            "{name}: needs deploy.resources.limits (cpus, memory)"
        );
        let restart = scalar(&svc["restart"]).unwrap_or_else(|| panic!("{name}: no restart"));
        let one_shot = ["kafka-init", "migrate", "simulator"].contains(&name.as_str());
        if one_shot {
            assert_eq!(restart, "no", "{name}: one-shot service");
        } else {
            assert!(
                ["unless-stopped", "always"].contains(&restart.as_str()),
                "{name}: long-running service restarts (got {restart})"
            );
        }
    }
}

#[test]
fn custos_services_run_binaries_that_exist() {
    let c = compose();
    let bins = workspace_binaries();
    for bin in CUSTOS_PROGRAMS {
        assert!(bins.contains(*bin), "{bin} is no binary: {bins:?}");
    }
    let mut custos_services = 0;
    for (name, svc) in services(&c) {
        if svc.get("build").is_none() {
            continue;
        }
        custos_services += 1;
        assert_eq!(
            scalar(&svc["build"]["context"]).as_deref(),
            Some("."),
            "{name}: built from the repository root"
        );
        // Services run the default target (image `custos`); the simulator runs the `tools`
        // target (image `custos-tools`), so the service image does not carry it.
        let (image, target) = if name == "simulator" {
            ("custos-tools:", Some("tools"))
        } else {
            ("custos:", None)
        };
        assert!(
            scalar(&svc["image"]).expect("image").starts_with(image),
            "{name}: image {image}<tag>"
        );
        assert_eq!(
            scalar(svc["build"].get("target").unwrap_or(&Value::Null)).as_deref(),
            target,
            "{name}: Dockerfile target"
        );
        // The program: the entrypoint after custos-entrypoint, else the command's first word.
        let mut argv = strings(svc.get("entrypoint").unwrap_or(&Value::Null));
        if argv.first().map(String::as_str) == Some("custos-entrypoint") {
            argv.remove(0);
        }
        argv.extend(strings(svc.get("command").unwrap_or(&Value::Null)));
        let program = argv.first().unwrap_or_else(|| panic!("{name}: no command"));
        assert!(
            bins.contains(program),
            "{name}: runs `{program}`, which is no binary of the workspace ({bins:?})"
        );
    }
    assert_eq!(
        custos_services, 5,
        "migrate, ingest, query, consent, simulator"
    );
    assert_eq!(strings(&service(&c, "query")["command"]), ["custos-query"]);
    assert_eq!(
        strings(&service(&c, "consent")["command"]),
        ["custos-consent", "run"]
    );
    assert_eq!(
        strings(&service(&c, "ingest")["command"]),
        ["custos-ingest", "run"]
    );
    assert_eq!(
        strings(&service(&c, "migrate")["command"]),
        ["custos-ingest", "migrate"]
    );
    let sim = service(&c, "simulator");
    assert_eq!(strings(&sim["command"]), ["--brokers", "kafka:9092"]);
    assert_eq!(env_value(sim, "CUSTOS_KAFKA_BROKERS"), "kafka:9092");
}

// ---------------------------------------------------------------------------------------------
// environment of ingest / migrate

/// The programs compose.yaml runs from the Custos images: the services (default target), and
/// the simulator (`tools` target).
const CUSTOS_PROGRAMS: &[&str] = &[
    "custos-ingest",
    "custos-query",
    "custos-consent",
    "custos-sim",
];

/// The programs of the service image (the Dockerfile's default target).
const SERVICE_PROGRAMS: &[&str] = &["custos-ingest", "custos-query", "custos-consent"];

/// Variables whose values are keys or credentials even though their names say neither
/// PASSWORD nor SECRET: they must come from secret files too.
const SECRET_VALUED: &[&str] = &[
    "CUSTOS_PSEUDONYM_KEYS",
    "CUSTOS_CONSENT_SEAL_KEYS",
    "CUSTOS_SSF_RECEIVERS",
    "CUSTOS_CONSENT_DEV_TOKEN",
];

/// Checks one service's environment against the variables its program reads; returns the
/// effective variables (FILE__X counted as X).
fn check_custos_env(c: &Value, name: &str) -> BTreeMap<String, Option<String>> {
    let (program, known) = match name {
        "ingest" | "migrate" => ("custos-ingest", ingest_env_names()),
        "query" => ("custos-query", query_env_names()),
        "consent" => ("custos-consent", consent_env_names()),
        other => panic!("no variable list for service {other}"),
    };
    let svc = service(c, name);
    let secrets = service_secrets(svc);
    let mut effective = BTreeMap::new();
    for (key, value) in env(svc) {
        let target = match key.strip_prefix("FILE__") {
            Some(target) => {
                let path = value
                    .as_deref()
                    .unwrap_or_else(|| panic!("{name}: {key} has no path"));
                let secret = path
                    .strip_prefix("/run/secrets/")
                    .unwrap_or_else(|| panic!("{name}: {key} must name a /run/secrets file"));
                assert!(
                    secrets.contains(secret),
                    "{name}: {key} reads secret `{secret}`, which the service does not mount"
                );
                target.to_owned()
            }
            None => key.clone(),
        };
        assert!(
            target.starts_with("CUSTOS_"),
            "{name}: unexpected variable {key} (only CUSTOS_* settings)"
        );
        assert!(
            known.contains(&target),
            "{name}: {target} is not read by {program} (known: {known:?})"
        );
        let secret_like = ["PASSWORD", "SECRET"].iter().any(|w| target.contains(w))
            || SECRET_VALUED.contains(&target.as_str());
        if secret_like {
            assert!(
                key.starts_with("FILE__"),
                "{name}: {target} must come from a secret file (FILE__{target}), not inline"
            );
        }
        assert!(
            effective.insert(target.clone(), value).is_none(),
            "{name}: {target} set twice"
        );
    }
    effective
}

#[test]
fn ingest_env_matches_the_code() {
    let c = compose();
    let names = config_rs_env_names();
    for required in [
        "CUSTOS_KAFKA_BROKERS",
        "CUSTOS_CLICKHOUSE_URL",
        "CUSTOS_CLICKHOUSE_WRITER_USER",
        "CUSTOS_CLICKHOUSE_WRITER_PASSWORD",
        "CUSTOS_CLICKHOUSE_ADMIN_USER",
        "CUSTOS_CLICKHOUSE_ADMIN_PASSWORD",
        "CUSTOS_PSEUDONYM_KEYS_FILE",
        "CUSTOS_INGEST_HTTP_ADDR",
        "CUSTOS_CHECKPOINT_KEY_FILE",
    ] {
        assert!(
            names.contains(required),
            "config.rs no longer reads {required}: update compose.yaml"
        );
    }

    let e = check_custos_env(&c, "ingest");
    for required in [
        "CUSTOS_KAFKA_BROKERS",
        "CUSTOS_CLICKHOUSE_URL",
        "CUSTOS_CLICKHOUSE_WRITER_USER",
        "CUSTOS_CLICKHOUSE_WRITER_PASSWORD",
        "CUSTOS_PSEUDONYM_KEYS_FILE",
        "CUSTOS_INGEST_HTTP_ADDR",
        "CUSTOS_CHECKPOINT_KEY_FILE",
    ] {
        assert!(e.contains_key(required), "ingest: {required} missing");
    }
    let get = |k: &str| e[k].clone().unwrap_or_default();
    assert_eq!(get("CUSTOS_KAFKA_BROKERS"), "kafka:9092");
    assert_eq!(get("CUSTOS_CLICKHOUSE_URL"), "http://clickhouse:8123");
    assert_eq!(get("CUSTOS_CLICKHOUSE_WRITER_USER"), "custos_writer");
    // Least privilege: the ingest never holds the admin account or inline keys.
    for forbidden in [
        "CUSTOS_CLICKHOUSE_ADMIN_USER",
        "CUSTOS_CLICKHOUSE_ADMIN_PASSWORD",
        "CUSTOS_PSEUDONYM_KEYS",
    ] {
        assert!(
            !e.contains_key(forbidden),
            "ingest must not get {forbidden}"
        );
    }
    let keys = get("CUSTOS_PSEUDONYM_KEYS_FILE");
    let secret = keys
        .strip_prefix("/run/secrets/")
        .expect("CUSTOS_PSEUDONYM_KEYS_FILE points to a docker secret");
    assert!(service_secrets(service(&c, "ingest")).contains(secret));
    let ck = get("CUSTOS_CHECKPOINT_KEY_FILE");
    let ck = ck
        .strip_prefix("/run/secrets/")
        .expect("CUSTOS_CHECKPOINT_KEY_FILE points to a docker secret");
    assert!(service_secrets(service(&c, "ingest")).contains(ck));
    let addr = get("CUSTOS_INGEST_HTTP_ADDR");
    assert!(
        addr.starts_with("0.0.0.0:"),
        "inside the container the HTTP endpoints listen on all interfaces (got {addr})"
    );

    // Topics: those the ingest reads and writes exist in config/topics.conf.
    let topics: BTreeSet<String> = topics_conf().into_iter().map(|(n, _)| n).collect();
    if let Some(Some(list)) = e.get("CUSTOS_INPUT_TOPICS") {
        for t in list.split(',') {
            assert!(
                topics.contains(t.trim()),
                "input topic {t} not in topics.conf"
            );
        }
    }
    if let Some(Some(dlq)) = e.get("CUSTOS_DLQ_TOPIC") {
        assert!(topics.contains(dlq), "DLQ topic {dlq} not in topics.conf");
    }
}

#[test]
fn migrate_env_matches_the_code() {
    let c = compose();
    let e = check_custos_env(&c, "migrate");
    for required in [
        "CUSTOS_CLICKHOUSE_URL",
        "CUSTOS_CLICKHOUSE_ADMIN_USER",
        "CUSTOS_CLICKHOUSE_ADMIN_PASSWORD",
    ] {
        assert!(e.contains_key(required), "migrate: {required} missing");
    }
    assert_eq!(
        e["CUSTOS_CLICKHOUSE_URL"].as_deref(),
        Some("http://clickhouse:8123")
    );
    assert_eq!(
        e["CUSTOS_CLICKHOUSE_ADMIN_USER"].as_deref(),
        Some("custos_admin")
    );
    assert!(!e.contains_key("CUSTOS_CLICKHOUSE_WRITER_PASSWORD"));
}

// ---------------------------------------------------------------------------------------------
// environment of query / consent, and their OIDC settings against the demo realm

fn realm() -> Value {
    serde_json::from_str(&read("deploy/keycloak/realm-custos.json")).expect("realm JSON")
}

fn realm_client(realm: &Value, id: &str) -> Value {
    realm["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .find(|c| c["clientId"] == id)
        .unwrap_or_else(|| panic!("the demo realm has no client {id}"))
        .clone()
}

/// The Keycloak base URL every caller uses (`KC_HOSTNAME`, defaults applied).
fn keycloak_base(c: &Value) -> String {
    default_of(&env_value(service(c, "keycloak"), "KC_HOSTNAME"))
        .trim_end_matches('/')
        .to_owned()
}

/// The secret behind `FILE__<var>` in a service's environment.
fn secret_of(svc: &Value, var: &str) -> String {
    let path = env_value(svc, &format!("FILE__{var}"));
    path.strip_prefix("/run/secrets/")
        .unwrap_or_else(|| panic!("FILE__{var} must name a /run/secrets file"))
        .to_owned()
}

/// A `*_FILE` variable that must point to a mounted docker secret; returns the secret's name.
fn file_secret(
    svc_name: &str,
    e: &BTreeMap<String, Option<String>>,
    c: &Value,
    var: &str,
) -> String {
    let path = e
        .get(var)
        .cloned()
        .flatten()
        .unwrap_or_else(|| panic!("{svc_name}: {var} missing"));
    let secret = path
        .strip_prefix("/run/secrets/")
        .unwrap_or_else(|| panic!("{svc_name}: {var} must point into /run/secrets"))
        .to_owned();
    assert!(
        service_secrets(service(c, svc_name)).contains(&secret),
        "{svc_name}: {var} names secret {secret}, which is not mounted"
    );
    secret
}

/// Checks the OIDC settings of one API service against the realm; returns the audience.
fn check_oidc(c: &Value, name: &str, e: &BTreeMap<String, Option<String>>) -> String {
    let get = |k: &str| {
        default_of(
            &e.get(k)
                .cloned()
                .flatten()
                .unwrap_or_else(|| panic!("{name}: {k} missing")),
        )
    };
    let realm = realm();
    let realm_name = realm["realm"].as_str().expect("realm name");
    let issuer = get("CUSTOS_OIDC_ISSUER");
    assert_eq!(
        issuer,
        format!("{}/realms/{realm_name}", keycloak_base(c)),
        "{name}: the issuer is the demo realm as Keycloak names it (KC_HOSTNAME)"
    );
    if let Some(Some(jwks)) = e.get("CUSTOS_OIDC_JWKS_URL") {
        assert_eq!(
            default_of(jwks),
            format!("{issuer}/protocol/openid-connect/certs"),
            "{name}: JWKS URL of the demo realm"
        );
    }
    // The OIDC code fetches keys over https, or plain http on loopback only. The dev-mode
    // Keycloak speaks http: the service must share its network namespace, and Keycloak must
    // listen there on the issuer's port.
    for url in [
        Some(issuer.clone()),
        e.get("CUSTOS_OIDC_JWKS_URL").cloned().flatten(),
    ]
    .into_iter()
    .flatten()
    .map(|u| default_of(&u))
    {
        assert!(
            custos_query::config::fetchable_url(&url),
            "{name}: {url} would be refused (https, or http on loopback)"
        );
        if url.starts_with("http://") {
            assert_eq!(
                scalar(&service(c, name)["network_mode"]).as_deref(),
                Some("service:keycloak"),
                "{name}: loopback {url} reaches Keycloak only in keycloak's network namespace"
            );
            let port = url
                .trim_start_matches("http://")
                .split('/')
                .next()
                .and_then(|h| h.rsplit_once(':'))
                .map(|(_, p)| p.to_owned())
                .unwrap_or_else(|| "80".into());
            assert_eq!(
                default_of(&env_value(service(c, "keycloak"), "KC_HTTP_PORT")),
                port,
                "{name}: Keycloak must listen on {url}'s port inside its namespace"
            );
        }
    }

    // Audience: a client of the realm, added to the tokens of the staff client (custos-query,
    // the client demo users sign in with) by an audience mapper of one of its default scopes.
    let audience = get("CUSTOS_OIDC_AUDIENCE");
    assert!(!audience.contains(','), "{name}: one audience");
    realm_client(&realm, &audience);
    let staff = realm_client(&realm, "custos-query");
    let defaults: Vec<&str> = staff["defaultClientScopes"]
        .as_array()
        .expect("default scopes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let scopes = realm["clientScopes"].as_array().expect("client scopes");
    let mappers_of_defaults = || {
        scopes
            .iter()
            .filter(|s| s["name"].as_str().is_some_and(|n| defaults.contains(&n)))
            .flat_map(|s| s["protocolMappers"].as_array().cloned().unwrap_or_default())
    };
    assert!(
        mappers_of_defaults().any(|m| m["protocolMapper"] == "oidc-audience-mapper"
            && m["config"]["included.client.audience"] == audience.as_str()),
        "{name}: staff tokens must carry aud={audience} (audience mapper in a default scope of custos-query)"
    );

    // Roles: the claim is filled with the realm roles.
    let claim = e
        .get("CUSTOS_OIDC_ROLES_CLAIM")
        .cloned()
        .flatten()
        .unwrap_or_else(|| "roles".into());
    assert!(
        mappers_of_defaults().any(
            |m| m["protocolMapper"] == "oidc-usermodel-realm-role-mapper"
                && m["config"]["claim.name"] == claim.as_str()
                && m["config"]["access.token.claim"] == "true"
        ),
        "{name}: no realm-role mapper fills the `{claim}` claim of access tokens"
    );
    if let Some(Some(algs)) = e.get("CUSTOS_OIDC_ALGORITHMS") {
        for alg in algs.split(',') {
            custos_query::config::parse_algorithm(alg)
                .unwrap_or_else(|err| panic!("{name}: algorithm {alg}: {err}"));
        }
        let signed = staff["attributes"]["access.token.signed.response.alg"]
            .as_str()
            .unwrap_or("RS256");
        assert!(
            algs.split(',').any(|a| a.trim() == signed),
            "{name}: Keycloak signs with {signed}, not in {algs}"
        );
    }
    audience
}

#[test]
fn query_env_matches_the_code() {
    let c = compose();
    let names = query_env_names();
    for required in [
        "CUSTOS_QUERY_HTTP_ADDR",
        "CUSTOS_CLICKHOUSE_URL",
        "CUSTOS_QUERY_READER_USER",
        "CUSTOS_QUERY_READER_PASSWORD",
        "CUSTOS_QUERY_AUDIT_USER",
        "CUSTOS_QUERY_AUDIT_PASSWORD",
        "CUSTOS_PSEUDONYM_KEYS_FILE",
        "CUSTOS_CHECKPOINT_JWKS_FILE",
        "CUSTOS_OIDC_ISSUER",
        "CUSTOS_OIDC_AUDIENCE",
    ] {
        assert!(
            names.contains(required),
            "query/src no longer reads {required}: update compose.yaml"
        );
    }
    let e = check_custos_env(&c, "query");
    for required in [
        "CUSTOS_QUERY_HTTP_ADDR",
        "CUSTOS_QUERY_PUBLIC_URL",
        "CUSTOS_CLICKHOUSE_URL",
        "CUSTOS_QUERY_READER_USER",
        "CUSTOS_QUERY_READER_PASSWORD",
        "CUSTOS_QUERY_AUDIT_USER",
        "CUSTOS_QUERY_AUDIT_PASSWORD",
        "CUSTOS_PSEUDONYM_KEYS_FILE",
        "CUSTOS_CHECKPOINT_JWKS_FILE",
        "CUSTOS_OIDC_ISSUER",
        "CUSTOS_OIDC_AUDIENCE",
        "CUSTOS_OIDC_ROLES_CLAIM",
    ] {
        assert!(e.contains_key(required), "query: {required} missing");
    }
    let get = |k: &str| e[k].clone().unwrap_or_default();
    assert_eq!(get("CUSTOS_CLICKHOUSE_URL"), "http://clickhouse:8123");
    assert_eq!(get("CUSTOS_QUERY_READER_USER"), "custos_reader");
    assert_eq!(get("CUSTOS_QUERY_AUDIT_USER"), "custos_query");
    assert!(get("CUSTOS_QUERY_HTTP_ADDR").starts_with("0.0.0.0:"));
    let svc = service(&c, "query");
    assert_eq!(
        secret_of(svc, "CUSTOS_QUERY_READER_PASSWORD"),
        "ch_reader_password"
    );
    assert_eq!(
        secret_of(svc, "CUSTOS_QUERY_AUDIT_PASSWORD"),
        "ch_query_password"
    );
    // Least privilege: the query API never holds the ingest's account, which may add audit rows.
    for forbidden in [
        "CUSTOS_CLICKHOUSE_WRITER_USER",
        "CUSTOS_CLICKHOUSE_WRITER_PASSWORD",
        "CUSTOS_CLICKHOUSE_ADMIN_USER",
        "CUSTOS_CLICKHOUSE_ADMIN_PASSWORD",
        "CUSTOS_PSEUDONYM_KEYS",
    ] {
        assert!(!e.contains_key(forbidden), "query must not get {forbidden}");
    }
    // Same key ring as the ingest; the public half of the ingest's checkpoint key.
    let ingest_env = check_custos_env(&c, "ingest");
    assert_eq!(
        file_secret("query", &e, &c, "CUSTOS_PSEUDONYM_KEYS_FILE"),
        file_secret("ingest", &ingest_env, &c, "CUSTOS_PSEUDONYM_KEYS_FILE")
    );
    assert_eq!(
        file_secret("query", &e, &c, "CUSTOS_CHECKPOINT_JWKS_FILE"),
        "checkpoint_jwks"
    );
    assert_eq!(
        file_secret("ingest", &ingest_env, &c, "CUSTOS_CHECKPOINT_KEY_FILE"),
        "checkpoint_signing_key"
    );
    assert_eq!(check_oidc(&c, "query", &e), "custos-query");
}

/// custos-query's own argument parser and `validate()` accept the compose environment (with
/// placeholder values for the secrets): every variable maps to one of its arguments.
#[test]
fn query_env_passes_the_query_config_validation() {
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct QueryCli {
        #[command(flatten)]
        config: custos_query::config::QueryConfig,
    }

    let c = compose();
    let e = check_custos_env(&c, "query");
    let cmd = QueryCli::command();
    let mut argv = vec!["custos-query".to_owned()];
    let mut mapped = BTreeSet::new();
    for arg in cmd.get_arguments() {
        let Some(var) = arg.get_env().and_then(|v| v.to_str()) else {
            continue;
        };
        let Some(value) = e.get(var) else { continue };
        mapped.insert(var.to_owned());
        // Pass-through variables (no value here) keep the code's default.
        let Some(value) = value else { continue };
        let value = if env(service(&c, "query")).contains_key(&format!("FILE__{var}")) {
            "placeholder-from-secret".to_owned()
        } else {
            default_of(value)
        };
        argv.push(format!("--{}", arg.get_long().expect("long flag")));
        argv.push(value);
    }
    let not_args: Vec<&String> = e
        .keys()
        .filter(|k| {
            !mapped.contains(*k) && !["CUSTOS_LOG", "CUSTOS_LOG_FORMAT"].contains(&k.as_str())
        })
        .collect();
    assert!(
        not_args.is_empty(),
        "query: {not_args:?} are no arguments of custos-query"
    );
    let cli = QueryCli::try_parse_from(&argv).unwrap_or_else(|err| panic!("{argv:?}: {err}"));
    cli.config
        .validate()
        .unwrap_or_else(|err| panic!("custos-query refuses the compose settings: {err}"));
    assert_eq!(cli.config.http_addr.port(), 8088);
}

#[test]
fn consent_env_matches_the_code() {
    let c = compose();
    let e = check_custos_env(&c, "consent");
    for required in [
        "CUSTOS_KAFKA_BROKERS",
        "CUSTOS_CLICKHOUSE_URL",
        "CUSTOS_CONSENT_CLICKHOUSE_USER",
        "CUSTOS_CONSENT_CLICKHOUSE_PASSWORD",
        "CUSTOS_PSEUDONYM_KEYS_FILE",
        "CUSTOS_CONSENT_SEAL_KEYS_FILE",
        "CUSTOS_CONSENT_HTTP_ADDR",
        "CUSTOS_CONSENT_ADMIN_ADDR",
        "CUSTOS_KEYCLOAK_URL",
        "CUSTOS_KEYCLOAK_ADMIN_REALM",
        "CUSTOS_KEYCLOAK_ADMIN_CLIENT_ID",
        "CUSTOS_KEYCLOAK_ADMIN_CLIENT_SECRET",
        "CUSTOS_SSF_ISSUER",
        "CUSTOS_SSF_KEY_FILE",
        "CUSTOS_OIDC_ISSUER",
        "CUSTOS_OIDC_AUDIENCE",
        "CUSTOS_OIDC_ROLES_CLAIM",
    ] {
        assert!(e.contains_key(required), "consent: {required} missing");
    }
    // The privacy API authenticates with OIDC bearer tokens, never the development token; the
    // revocation push uses the realm's service account, never the master admin.
    for forbidden in [
        "CUSTOS_CONSENT_DEV_TOKEN",
        "CUSTOS_KEYCLOAK_ADMIN_PASSWORD",
        "CUSTOS_KEYCLOAK_ADMIN_USER",
        "CUSTOS_CLICKHOUSE_ADMIN_PASSWORD",
        "CUSTOS_CLICKHOUSE_WRITER_USER",
        "CUSTOS_CLICKHOUSE_WRITER_PASSWORD",
        "CUSTOS_PSEUDONYM_KEYS",
        "CUSTOS_CONSENT_SEAL_KEYS",
    ] {
        assert!(
            !e.contains_key(forbidden),
            "consent must not get {forbidden}"
        );
    }
    let get = |k: &str| default_of(&e[k].clone().unwrap_or_default());
    assert_eq!(get("CUSTOS_KAFKA_BROKERS"), "kafka:9092");
    assert_eq!(get("CUSTOS_CLICKHOUSE_URL"), "http://clickhouse:8123");
    assert_eq!(get("CUSTOS_CONSENT_CLICKHOUSE_USER"), "custos_consent");
    assert!(get("CUSTOS_CONSENT_HTTP_ADDR").starts_with("0.0.0.0:"));
    // /metrics is served on the admin address only, never on the API's.
    let admin = get("CUSTOS_CONSENT_ADMIN_ADDR");
    assert!(admin.starts_with("0.0.0.0:"), "{admin}");
    assert_ne!(admin, get("CUSTOS_CONSENT_HTTP_ADDR"));
    let svc = service(&c, "consent");
    assert_eq!(
        secret_of(svc, "CUSTOS_CONSENT_CLICKHOUSE_PASSWORD"),
        "ch_consent_password"
    );
    let ingest_env = check_custos_env(&c, "ingest");
    assert_eq!(
        file_secret("consent", &e, &c, "CUSTOS_PSEUDONYM_KEYS_FILE"),
        file_secret("ingest", &ingest_env, &c, "CUSTOS_PSEUDONYM_KEYS_FILE"),
        "consent and ingest share the key ring"
    );
    file_secret("consent", &e, &c, "CUSTOS_CONSENT_SEAL_KEYS_FILE");
    file_secret("consent", &e, &c, "CUSTOS_SSF_KEY_FILE");
    assert!(get("CUSTOS_SSF_ISSUER").starts_with("http"));

    // Topics it reads and writes exist.
    let topics: BTreeSet<String> = topics_conf().into_iter().map(|(n, _)| n).collect();
    for var in [
        "CUSTOS_CONSENT_TOPIC",
        "CUSTOS_AS_TOPIC",
        "CUSTOS_REVOCATIONS_TOPIC",
    ] {
        if let Some(Some(topic)) = e.get(var) {
            assert!(topics.contains(topic), "{var} {topic} not in topics.conf");
        }
    }

    // Keycloak: the issuers' base URL (consents naming {base}/realms/{realm} are this
    // Keycloak's), and a service account of the realm with the roles the push needs.
    assert_eq!(get("CUSTOS_KEYCLOAK_URL"), keycloak_base(&c));
    let realm = realm();
    assert_eq!(get("CUSTOS_KEYCLOAK_ADMIN_REALM"), realm["realm"]);
    let client_id = get("CUSTOS_KEYCLOAK_ADMIN_CLIENT_ID");
    let client = realm_client(&realm, &client_id);
    assert_eq!(client["serviceAccountsEnabled"], true);
    assert_eq!(client["publicClient"], false);
    let account = realm["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["serviceAccountClientId"] == client_id.as_str())
        .unwrap_or_else(|| panic!("no service account user for {client_id}"));
    let roles: BTreeSet<&str> = account["clientRoles"]["realm-management"]
        .as_array()
        .expect("realm-management roles")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        roles,
        BTreeSet::from(["manage-users", "view-users"]),
        "least privilege: revoke consents, end sessions, list sessions"
    );
    // The client secret consent presents is the one Keycloak imported for that client.
    let placeholder = client["secret"]
        .as_str()
        .expect("client secret placeholder");
    let var = placeholder
        .strip_prefix("${")
        .and_then(|p| p.strip_suffix('}'))
        .expect("the secret is a ${VAR} placeholder");
    assert_eq!(
        secret_of(svc, "CUSTOS_KEYCLOAK_ADMIN_CLIENT_SECRET"),
        secret_of(service(&c, "keycloak"), var),
        "consent and keycloak must read the same client secret"
    );

    assert_eq!(check_oidc(&c, "consent", &e), "custos-consent");
    assert_eq!(
        e["CUSTOS_OIDC_ISSUER"],
        check_custos_env(&c, "query")["CUSTOS_OIDC_ISSUER"],
        "query and consent trust the same issuer"
    );
}

#[test]
fn no_service_holds_an_inline_secret() {
    let c = compose();
    for (name, svc) in services(&c) {
        let mounted = service_secrets(&svc);
        for (key, value) in env(&svc) {
            let upper = key.to_ascii_uppercase();
            if let Some(target) = key.strip_prefix("FILE__") {
                let path = value.unwrap_or_default();
                let secret = path.strip_prefix("/run/secrets/").unwrap_or_else(|| {
                    panic!("{name}: {key} must point into /run/secrets (got {path})")
                });
                assert!(
                    mounted.contains(secret),
                    "{name}: {key}: `{secret}` not mounted"
                );
                assert!(!target.is_empty());
            } else if upper.contains("PASSWORD") || upper.contains("SECRET") {
                panic!("{name}: {key} is set inline; use FILE__{key} and a secret");
            }
        }
        for s in &mounted {
            assert!(
                c["secrets"].get(s).is_some(),
                "{name}: secret `{s}` is not declared at the top level"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ports, volumes, networks

#[test]
fn host_ports_are_bound_to_loopback() {
    let c = compose();
    let mut published = 0;
    for (name, svc) in services(&c) {
        let Some(Value::Array(ports)) = svc.get("ports") else {
            continue;
        };
        for p in ports {
            published += 1;
            match p {
                Value::String(s) => assert!(
                    s.starts_with("127.0.0.1:"),
                    "{name}: port `{s}` must be bound to 127.0.0.1"
                ),
                Value::Object(o) => assert_eq!(
                    scalar(&o["host_ip"]).as_deref(),
                    Some("127.0.0.1"),
                    "{name}: port {p} must set host_ip 127.0.0.1"
                ),
                other => panic!("{name}: port {other} must name 127.0.0.1"),
            }
        }
    }
    assert!(
        published >= 6,
        "kafka, clickhouse, keycloak (with query and consent) and ingest publish ports"
    );

    // The ingest's published port, healthcheck and listen address agree.
    let ingest = service(&c, "ingest");
    let port = env_value(ingest, "CUSTOS_INGEST_HTTP_ADDR")
        .rsplit_once(':')
        .map(|(_, p)| p.to_owned())
        .expect("port");
    let ports = strings(&ingest["ports"]);
    assert!(
        ports
            .iter()
            .any(|p| default_of(p).ends_with(&format!(":{port}"))),
        "ingest publishes container port {port}: {ports:?}"
    );
    assert!(strings(&ingest["healthcheck"]["test"]).contains(&port));

    // query and consent: listen on all interfaces of keycloak's namespace, on the port their
    // healthcheck probes and keycloak publishes.
    let keycloak_ports: Vec<String> = strings(&service(&c, "keycloak")["ports"])
        .iter()
        .map(|p| default_of(p))
        .collect();
    for (name, var, probed) in [
        ("query", "CUSTOS_QUERY_HTTP_ADDR", true),
        ("consent", "CUSTOS_CONSENT_HTTP_ADDR", true),
        ("consent", "CUSTOS_CONSENT_ADMIN_ADDR", false),
    ] {
        let svc = service(&c, name);
        let addr = env_value(svc, var);
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        assert_eq!(
            host, "0.0.0.0",
            "{name}: published ports need all interfaces"
        );
        assert!(
            keycloak_ports
                .iter()
                .any(|p| p.ends_with(&format!(":{port}"))),
            "{name}: keycloak must publish container port {port}: {keycloak_ports:?}"
        );
        if probed {
            assert!(strings(&svc["healthcheck"]["test"]).contains(&port.to_owned()));
        }
    }
    // Keycloak listens on the published port inside its namespace too (one URL for all).
    let kc_port = default_of(&env_value(service(&c, "keycloak"), "KC_HTTP_PORT"));
    assert!(
        keycloak_ports.contains(&format!("127.0.0.1:{kc_port}:{kc_port}")),
        "keycloak: publish {kc_port} as {kc_port}: {keycloak_ports:?}"
    );
}

#[test]
fn volumes_are_named_or_repository_files() {
    let c = compose();
    let declared: BTreeSet<String> = c["volumes"]
        .as_object()
        .expect("top-level volumes")
        .keys()
        .cloned()
        .collect();
    let mut used = BTreeSet::new();
    for (name, svc) in services(&c) {
        for (src, dst) in mounts(&svc) {
            if let Some(rel) = src.strip_prefix("./") {
                assert!(
                    workspace().join(rel).is_file(),
                    "{name}: bind mount of missing file {rel}"
                );
                assert!(
                    !rel.starts_with("deploy/secrets"),
                    "{name}: secrets go through `secrets:`, not bind mounts"
                );
            } else {
                assert!(
                    declared.contains(&src),
                    "{name}: volume `{src}` (-> {dst}) is not a declared named volume"
                );
                used.insert(src);
            }
        }
    }
    assert_eq!(used, declared, "every named volume is used");
    for (svc, path) in [
        ("kafka", "/var/lib/kafka/data"),
        ("clickhouse", "/var/lib/clickhouse"),
        ("keycloak", "/opt/keycloak/data"),
    ] {
        assert!(
            mounts(service(&c, svc))
                .iter()
                .any(|(s, d)| d == path && !s.starts_with('.')),
            "{svc}: data in a named volume at {path}"
        );
    }
}

#[test]
fn secrets_are_operator_files_with_examples() {
    let c = compose();
    let secrets = c["secrets"].as_object().expect("top-level secrets");
    assert!(!secrets.is_empty());
    for (name, def) in secrets {
        let file = scalar(&def["file"]).unwrap_or_else(|| panic!("secret {name}: no file"));
        assert_eq!(
            file,
            format!("./deploy/secrets/{name}"),
            "secret {name} lives in deploy/secrets"
        );
        assert!(
            workspace()
                .join(format!("deploy/secrets/{name}.example"))
                .is_file(),
            "deploy/secrets/{name}.example is missing"
        );
    }
    let ignore = read("deploy/secrets/.gitignore");
    assert_eq!(
        ignore.lines().find(|l| !l.starts_with('#')),
        Some("*"),
        "deploy/secrets/.gitignore ignores everything but the examples"
    );
    let generate = read("deploy/secrets/generate.sh");
    for name in secrets.keys() {
        assert!(
            generate.contains(name.as_str()),
            "generate.sh creates {name}"
        );
    }

    // The example key file holds no usable key, but is a valid key file once one is added.
    let example = read("deploy/secrets/pseudonym_keys.example");
    assert!(matches!(
        KeyRing::parse(&example, None),
        Err(KeyRingError::Empty)
    ));
    let filled = format!("{example}k1={}\n", "ab".repeat(32));
    KeyRing::parse(&filled, None).expect("example plus one key parses");
    // Likewise the sealing-key example: comments only, so that adding one line makes it valid.
    assert!(read("deploy/secrets/consent_seal_keys.example")
        .lines()
        .all(|l| l.starts_with('#') && !l.contains(',')));
}

// ---------------------------------------------------------------------------------------------
// healthchecks and start order

#[test]
fn healthchecks_and_start_order() {
    let c = compose();
    for name in [
        "kafka",
        "clickhouse",
        "keycloak",
        "ingest",
        "query",
        "consent",
    ] {
        let hc = &service(&c, name)["healthcheck"];
        let test = strings(&hc["test"]);
        assert!(
            test.len() >= 2 && test[0] != "NONE" && hc.get("disable").is_none(),
            "{name}: needs a healthcheck"
        );
    }
    // The Custos services answer /readyz (query: ClickHouse, audit table, JWKS; consent: state
    // loaded, consumer subscribed, ClickHouse), probed with the image's custos-healthcheck.
    for (name, src) in [
        ("ingest", "ingest/src"),
        ("query", "query/src"),
        ("consent", "consent/src"),
    ] {
        let hc = strings(&service(&c, name)["healthcheck"]["test"]);
        assert!(hc.contains(&"custos-healthcheck".to_owned()), "{name}");
        assert!(hc.contains(&"/readyz".to_owned()), "{name}");
        let mut files = Vec::new();
        rust_files(&workspace().join(src), &mut files);
        assert!(
            files.iter().any(|f| std::fs::read_to_string(f)
                .expect("read source")
                .contains("\"/readyz\"")),
            "{name}: {src} serves no /readyz"
        );
    }
    assert!(strings(&service(&c, "clickhouse")["healthcheck"]["test"])
        .iter()
        .any(|t| t.contains("/ping")));

    let cond = |svc: &str, dep: &str| {
        scalar(&service(&c, svc)["depends_on"][dep]["condition"])
            .unwrap_or_else(|| panic!("{svc} must depend on {dep} with a condition"))
    };
    assert_eq!(cond("kafka-init", "kafka"), "service_healthy");
    assert_eq!(cond("migrate", "clickhouse"), "service_healthy");
    assert_eq!(cond("ingest", "migrate"), "service_completed_successfully");
    assert_eq!(
        cond("ingest", "kafka-init"),
        "service_completed_successfully"
    );
    assert_eq!(
        cond("simulator", "kafka-init"),
        "service_completed_successfully"
    );
    for svc in ["query", "consent"] {
        assert_eq!(cond(svc, "clickhouse"), "service_healthy");
        assert_eq!(cond(svc, "migrate"), "service_completed_successfully");
        assert_eq!(cond(svc, "keycloak"), "service_healthy");
        // Their network namespace is keycloak's: restarted with it.
        assert_eq!(
            service(&c, svc)["depends_on"]["keycloak"]["restart"],
            Value::Bool(true),
            "{svc}: depends_on keycloak restart: true"
        );
    }
    assert_eq!(
        cond("consent", "kafka-init"),
        "service_completed_successfully"
    );
    assert_eq!(cond("consent", "kafka"), "service_healthy");

    // The ingest drains for CUSTOS_DRAIN_TIMEOUT_SECS on SIGTERM: compose must wait longer.
    let ingest = service(&c, "ingest");
    let drain: u64 = env(ingest)
        .get("CUSTOS_DRAIN_TIMEOUT_SECS")
        .cloned()
        .flatten()
        .map_or(30, |v| v.parse().expect("drain seconds"));
    let grace = scalar(&ingest["stop_grace_period"]).expect("stop_grace_period");
    let grace: u64 = grace
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .expect("stop_grace_period in seconds");
    assert!(
        grace > drain,
        "stop_grace_period {grace}s <= drain {drain}s"
    );
}

// ---------------------------------------------------------------------------------------------
// kafka-init

/// A stand-in for kafka-topics.sh: topics live in $FAKE_STATE, calls are logged to $FAKE_LOG.
const FAKE_KAFKA_TOPICS: &str = r#"#!/bin/bash
printf '%s\n' "$*" >>"$FAKE_LOG"
mode= topic= parts=
while (($#)); do
  case $1 in
    --describe) mode=describe ;; --create) mode=create ;; --alter) mode=alter ;;
    --topic) topic=$2; shift ;; --partitions) parts=$2; shift ;;
    --bootstrap-server | --replication-factor) shift ;;
  esac
  shift
done
touch "$FAKE_STATE"
case $mode in
  describe)
    while read -r n p; do
      printf 'Topic: %s\tTopicId: AAAAAAAAAAAAAAAAAAAAAA\tPartitionCount: %s\tReplicationFactor: 1\tConfigs: \n' "$n" "$p"
      for ((i = 0; i < p; i++)); do
        printf '\tTopic: %s\tPartition: %d\tLeader: 1\tReplicas: 1\tIsr: 1\n' "$n" "$i"
      done
    done <"$FAKE_STATE" ;;
  create) printf '%s %s\n' "$topic" "$parts" >>"$FAKE_STATE" ;;
  alter)
    tmp=$FAKE_STATE.tmp
    while read -r n p; do
      if [[ $n == "$topic" ]]; then p=$parts; fi
      printf '%s %s\n' "$n" "$p"
    done <"$FAKE_STATE" >"$tmp" && mv "$tmp" "$FAKE_STATE" ;;
esac
"#;

#[test]
fn kafka_init_creates_the_topics_of_topics_conf() {
    let c = compose();
    let init = service(&c, "kafka-init");
    assert_eq!(
        scalar(&init["image"]),
        scalar(&service(&c, "kafka")["image"]),
        "kafka-init uses the broker's image (same kafka-topics.sh)"
    );
    let conf_target =
        mount_target(init, "config/topics.conf").expect("kafka-init mounts config/topics.conf");
    let script_target = mount_target(init, "deploy/kafka/create-topics.sh")
        .expect("kafka-init mounts deploy/kafka/create-topics.sh");
    assert!(strings(&init["entrypoint"]).contains(&script_target));
    assert_eq!(env_value(init, "TOPICS_CONF"), conf_target);
    assert_eq!(env_value(init, "KAFKA_BOOTSTRAP"), "kafka:9092");

    let want = topics_conf();
    let names: BTreeSet<&str> = want.iter().map(|(n, _)| n.as_str()).collect();
    for t in [
        "custos.as-events",
        "custos.gateway-events",
        "custos.consent-events",
        "custos.revocations",
        "custos.dlq",
    ] {
        assert!(names.contains(t), "topics.conf lacks {t}");
    }

    // Run the real script against the fake: one topic exists with too few partitions, one
    // with more than listed; the rest are missing.
    let dir = scratch_dir("topics");
    std::fs::create_dir_all(dir.join("bin")).expect("bin dir");
    let fake = dir.join("bin/kafka-topics.sh");
    std::fs::write(&fake, FAKE_KAFKA_TOPICS).expect("write fake");
    let chmod = Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .expect("chmod");
    assert!(chmod.success());
    let state = dir.join("state");
    let log = dir.join("log");
    let (first, first_parts) = &want[0];
    let (last, last_parts) = want.last().expect("topics");
    std::fs::write(
        &state,
        format!(
            "{first} {}\n{last} {}\n",
            first_parts.max(&2) - 1,
            last_parts + 1
        ),
    )
    .expect("state");
    let script = workspace().join("deploy/kafka/create-topics.sh");
    let conf = workspace().join("config/topics.conf");
    let run = || {
        bash(
            &script,
            &[],
            &[
                ("KAFKA_HOME", dir.to_str().expect("utf-8")),
                ("KAFKA_BOOTSTRAP", "kafka:9092"),
                ("TOPICS_CONF", conf.to_str().expect("utf-8")),
                ("FAKE_STATE", state.to_str().expect("utf-8")),
                ("FAKE_LOG", log.to_str().expect("utf-8")),
            ],
        )
    };
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "create-topics.sh failed: {stderr}");
    let have: BTreeMap<String, u32> = std::fs::read_to_string(&state)
        .expect("state")
        .lines()
        .map(|l| {
            let (n, p) = l.split_once(' ').expect("state line");
            (n.to_owned(), p.parse().expect("partitions"))
        })
        .collect();
    for (name, parts) in &want {
        let expect = if name == last { parts + 1 } else { *parts };
        assert_eq!(have.get(name), Some(&expect), "topic {name}; log: {stderr}");
    }
    assert_eq!(have.len(), want.len(), "no other topic created");
    assert!(
        stderr.contains("WARNING"),
        "too many partitions draws a warning"
    );
    let calls = std::fs::read_to_string(&log).expect("log");
    assert!(calls.contains("--bootstrap-server kafka:9092"));
    assert!(calls.contains("--replication-factor 1"));

    // Idempotent: a second run creates and alters nothing.
    std::fs::write(&log, "").expect("clear log");
    let out = run();
    assert!(out.status.success());
    let calls = std::fs::read_to_string(&log).expect("log");
    assert!(
        !calls.contains("--create") && !calls.contains("--alter"),
        "second run changed topics: {calls}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------------------------
// ClickHouse accounts

#[test]
fn clickhouse_accounts_match_the_dev_stack() {
    let c = compose();
    let ch = service(&c, "clickhouse");
    let target = mount_target(ch, "deploy/clickhouse/users.d/custos.xml")
        .expect("clickhouse mounts deploy/clickhouse/users.d/custos.xml");
    assert!(target.starts_with("/etc/clickhouse-server/users.d/"));
    assert!(mount_target(ch, "deploy/clickhouse/config.d/custos.xml")
        .is_some_and(|t| t.starts_with("/etc/clickhouse-server/config.d/")));
    assert_eq!(env_value(ch, "CLICKHOUSE_SKIP_USER_SETUP"), "1");

    let users_xml = read("deploy/clickhouse/users.d/custos.xml");
    let compose_users = users_and_grants(&users_xml);
    let names: Vec<&str> = compose_users.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "custos_admin",
            "custos_consent",
            "custos_query",
            "custos_reader",
            "custos_writer"
        ]
    );
    // Each service its own account, with grants on exactly its tables.
    assert_eq!(
        compose_users["custos_writer"],
        [
            "GRANT INSERT, SELECT ON custos.audit_events",
            "GRANT INSERT, SELECT ON custos.ingest_rejections",
            "GRANT INSERT, SELECT ON custos.chain_heads",
            "GRANT INSERT, SELECT ON custos.chain_checkpoints"
        ],
        "the ingest may INSERT and SELECT on its own tables only"
    );
    assert_eq!(
        compose_users["custos_query"],
        ["GRANT INSERT ON custos.report_queries"],
        "the query API writes its own audit records only"
    );
    for user in ["custos_writer", "custos_query", "custos_consent"] {
        assert!(
            compose_users[user].iter().all(|g| !g.contains("custos.*")),
            "{user} gets no grant on the whole database"
        );
    }
    assert!(
        compose_users["custos_consent"]
            .iter()
            .all(|g| !g.contains("audit_events")),
        "the consent service cannot write audit rows"
    );
    assert_eq!(compose_users["custos_reader"], ["GRANT SELECT ON custos.*"]);

    // Same grants as the no-Docker stack.
    let dev = users_and_grants(&read("config/clickhouse/users.xml"));
    for (user, grants) in &compose_users {
        assert_eq!(
            Some(grants),
            dev.get(user),
            "grants of {user} differ from config/clickhouse/users.xml"
        );
    }

    // No password in the file: each comes from an environment variable that the entrypoint
    // fills from a mounted secret. The image's `default` user is removed.
    let root = Xml::parse(&users_xml);
    let users = root.child("users").expect("<users>");
    assert!(users
        .child("default")
        .is_some_and(|d| d.attrs.contains_key("remove")));
    let ch_env = env(ch);
    let subnet = c["networks"]["custos"]["ipam"]["config"][0]["subnet"].clone();
    for user in users
        .children
        .iter()
        .filter(|u| !u.attrs.contains_key("remove"))
    {
        let pw = user.child("password").expect("password element");
        assert!(pw.text.is_empty(), "{}: literal password", user.name);
        let var = pw.attrs.get("from_env").expect("password from_env");
        assert!(
            ch_env.contains_key(&format!("FILE__{var}")),
            "{}: clickhouse must set FILE__{var}",
            user.name
        );
        assert!(
            user.children
                .iter()
                .all(|e| !e.name.starts_with("password") || e.name == "password"),
            "{}: one password element",
            user.name
        );
        let nets = user.child("networks").expect("networks");
        for ip in nets.all("ip") {
            if let Some(var) = ip.attrs.get("from_env") {
                assert_eq!(
                    ch_env.get(var).cloned().flatten().map(Value::String),
                    Some(subnet.clone()),
                    "{}: {var} must equal the custos network's subnet",
                    user.name
                );
            } else {
                assert!(
                    ["127.0.0.1", "::1"].contains(&ip.text.as_str()),
                    "{}: unexpected network {}",
                    user.name,
                    ip.text
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dockerfile and build context

/// The Dockerfile's instructions (continuation lines joined, comments dropped), split into
/// stages: (name after `AS`, the stage's lines starting with its `FROM`).
fn dockerfile_stages() -> Vec<(String, Vec<String>)> {
    let text = read("Dockerfile").replace("\\\n", " ");
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    for l in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if l.to_ascii_uppercase().starts_with("FROM ") {
            let name = l.split_whitespace().nth(3).unwrap_or_default().to_owned();
            stages.push((name, Vec::new()));
        }
        if let Some((_, lines)) = stages.last_mut() {
            lines.push(l.to_owned());
        }
    }
    stages
}

/// The lines of stage `name` and of the stages it is built `FROM`, base first.
fn dockerfile_stage_chain(stages: &[(String, Vec<String>)], name: &str) -> Vec<String> {
    let (_, lines) = stages
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("Dockerfile stage {name}"));
    let from = lines[0].split_whitespace().nth(1).unwrap_or_default();
    let mut chain = if stages.iter().any(|(n, _)| n == from) {
        dockerfile_stage_chain(stages, from)
    } else {
        Vec::new()
    };
    chain.extend(lines.iter().cloned());
    chain
}

/// The arguments of every `word` instruction among `lines`.
fn dockerfile_instr(lines: &[String], word: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.to_ascii_uppercase().starts_with(&format!("{word} ")))
        .map(|l| l[word.len() + 1..].trim().to_owned())
        .collect()
}

#[test]
fn dockerfile_runtime_stage_is_non_root() {
    let text = read("Dockerfile");
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "multi-stage build");
    let (_, builder) = &stages[0];
    // The default target (the last stage) is the service image.
    assert_eq!(stages.last().expect("stage").0, "runtime", "default target");
    let runtime = dockerfile_stage_chain(&stages, "runtime");
    assert!(text.contains("rust:1-bookworm"), "builder image");
    assert!(text.contains("debian:bookworm-slim"), "runtime image");
    assert!(
        builder
            .iter()
            .any(|l| l.contains("cargo build --release --locked")),
        "builder: cargo build --release --locked"
    );

    let user = dockerfile_instr(&runtime, "USER")
        .pop()
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().expect("user");
    assert!(
        !["root", "0"].contains(&uid),
        "the runtime stage must not run as root (USER {user})"
    );
    assert_eq!(uid, "10001");
    let exposed: Vec<String> = dockerfile_instr(&runtime, "EXPOSE")
        .iter()
        .flat_map(|p| p.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    for port in ["9464", "8088", "9465"] {
        assert!(exposed.iter().any(|p| p == port), "EXPOSE {port}");
    }
    // The builder builds and checks the services compose.yaml runs from the default image;
    // the default build names them, so neither the simulator nor a benchmark is built.
    let build_args = dockerfile_instr(builder, "ARG")
        .into_iter()
        .find_map(|a| a.strip_prefix("CARGO_BUILD_ARGS=").map(str::to_owned))
        .expect("ARG CARGO_BUILD_ARGS");
    for bin in SERVICE_PROGRAMS {
        assert!(
            build_args.contains(&format!("-p {bin}")),
            "the default build makes {bin}"
        );
        assert!(
            builder
                .iter()
                .any(|l| l.contains("test -x") && l.contains(bin)),
            "the builder stage must check for {bin}"
        );
    }
    assert!(
        !build_args.contains("--workspace") && !build_args.contains("custos-sim"),
        "the default build makes the services only: {build_args}"
    );
    assert!(runtime
        .iter()
        .any(|l| l.starts_with("COPY --from=builder") && l.ends_with("/usr/local/bin/")));
    assert!(
        !runtime.iter().any(|l| l.contains("sim-builder")),
        "the service image carries no simulator"
    );
    // The `tools` target adds the simulator to the same non-root base, and nothing else.
    let tools = dockerfile_stage_chain(&stages, "tools");
    assert_eq!(
        dockerfile_instr(&tools, "USER").pop().as_deref(),
        Some("10001:10001")
    );
    let tool_copies: Vec<&String> = tools
        .iter()
        .filter(|l| l.starts_with("COPY --from="))
        .collect();
    assert_eq!(tool_copies.len(), 1, "tools copies one build output");
    let (_, sim_builder) = stages
        .iter()
        .find(|(n, _)| tool_copies[0].contains(&format!("--from={n} ")))
        .expect("the stage tools copies from");
    assert!(sim_builder
        .iter()
        .any(|l| l.contains("-p custos-sim") && l.contains("test -x /tools/custos-sim")));
    for stage in [&runtime, &tools] {
        assert!(
            !stage.iter().any(|l| l.contains("bench")),
            "no image carries a benchmark"
        );
        assert!(
            dockerfile_instr(stage, "HEALTHCHECK").is_empty(),
            "healthchecks live in compose.yaml"
        );
    }

    // Files the runtime stage copies from the context exist and pass .dockerignore.
    let ignore = read(".dockerignore");
    let admitted: BTreeSet<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .collect();
    for l in runtime
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let words: Vec<&str> = l
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let src = words[1];
        assert!(workspace().join(src).is_file(), "COPY source {src} missing");
        assert!(admitted.contains(src), ".dockerignore must admit {src}");
    }
}

#[test]
fn dockerignore_admits_every_workspace_member_and_no_secret() {
    let ignore = read(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        rules.first(),
        Some(&"*"),
        "allow-list: everything is excluded first"
    );
    for member in workspace_members() {
        assert!(
            rules.contains(&format!("!{member}/").as_str()),
            ".dockerignore must admit workspace member {member}/"
        );
    }
    for needed in ["!Cargo.toml", "!Cargo.lock"] {
        assert!(rules.contains(&needed), ".dockerignore must admit {needed}");
    }
    for r in &rules {
        assert!(
            !r.contains("secrets") && !r.contains(".stack") && *r != "!deploy/",
            ".dockerignore admits a secret or local state: {r}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// container scripts

#[test]
fn file_env_exports_secret_files() {
    let dir = scratch_dir("file-env");
    let secret = dir.join("pw");
    std::fs::write(&secret, "s3cret value\n").expect("write");
    let script = workspace().join("deploy/docker/file-env.sh");
    let secret_path = secret.to_str().expect("utf-8");
    let out = bash(
        &script,
        &[
            "bash",
            "-c",
            r#"printf '%s|%s' "$CUSTOS_X" "${FILE__CUSTOS_X-unset}""#,
        ],
        &[("FILE__CUSTOS_X", secret_path)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "s3cret value|unset");

    // A copied example, an empty file and a missing file are refused.
    let example = workspace().join("deploy/secrets/ch_writer_password.example");
    for bad in [
        example.to_str().expect("utf-8"),
        "/nonexistent/custos-secret",
    ] {
        let out = bash(&script, &["true"], &[("FILE__CUSTOS_X", bad)]);
        assert!(!out.status.success(), "file-env accepted {bad}");
    }
    std::fs::write(&secret, "\n").expect("write");
    let out = bash(&script, &["true"], &[("FILE__CUSTOS_X", secret_path)]);
    assert!(!out.status.success(), "file-env accepted an empty secret");
    std::fs::remove_dir_all(&dir).ok();
}

/// Serves one HTTP request with `status` (waiting at most 20 s for it); returns the request line.
fn serve_once(listener: TcpListener, status: &'static str) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "no request came");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        conn.set_nonblocking(false).expect("blocking");
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut req = Vec::new();
        let mut buf = [0u8; 512];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let body = "{}";
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        // One write; the probe may close as soon as it has read the status line, so a reset
        // while the rest is sent is not an error.
        let _ = conn.write_all(response.as_bytes());
        String::from_utf8_lossy(&req)
            .lines()
            .next()
            .unwrap_or_default()
            .trim_end()
            .to_owned()
    })
}

#[test]
fn healthcheck_script_probes_readyz() {
    let script = workspace().join("deploy/docker/healthcheck.sh");
    for (status, ok) in [("200 OK", true), ("503 Service Unavailable", false)] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port().to_string();
        let server = serve_once(listener, status);
        let out = bash(&script, &["/readyz", &port], &[]);
        assert_eq!(
            out.status.success(),
            ok,
            "{status}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(server.join().expect("server"), "GET /readyz HTTP/1.1");
    }
    // Nothing listening: unhealthy.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port().to_string()
    };
    assert!(!bash(&script, &["/readyz", &port], &[]).status.success());
}

// ---------------------------------------------------------------------------------------------
// deploy/secrets/generate.sh

#[test]
fn generate_sh_makes_secrets_the_code_accepts() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: no openssl on PATH (generate.sh needs it for the P-256 keys)");
        return;
    }
    let dir = scratch_dir("secrets");
    let script = workspace().join("deploy/secrets/generate.sh");
    let dir_str = dir.to_str().expect("utf-8").to_owned();
    let run = || {
        let out = bash(&script, &[], &[("CUSTOS_SECRETS_DIR", dir_str.as_str())]);
        assert!(
            out.status.success(),
            "generate.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run();

    let c = compose();
    let names: Vec<String> = c["secrets"]
        .as_object()
        .expect("top-level secrets")
        .keys()
        .cloned()
        .collect();
    let content = |name: &str| {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(
        mode(dir.as_path()),
        0o700,
        "the secrets directory is private"
    );
    for name in &names {
        let text = content(name);
        assert!(
            !text.trim().is_empty() && !text.starts_with("REPLACE"),
            "{name}: empty or example text"
        );
        assert_eq!(
            mode(dir.join(name).as_path()),
            0o644,
            "{name}: readable by the services' users"
        );
    }
    let is_hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    for name in names
        .iter()
        .filter(|n| n.contains("password") || n.contains("secret"))
    {
        let text = content(name);
        assert!(
            is_hex(text.trim()) && text.trim().len() >= 32,
            "{name}: random hex"
        );
    }

    // Each file in the format its reader expects.
    KeyRing::parse(&content("pseudonym_keys"), None).expect("pseudonym_keys parse");
    for line in content("consent_seal_keys")
        .lines()
        .filter(|l| !l.starts_with('#'))
    {
        let (kid, key) = line.split_once('=').expect("kid=hex");
        assert!(!kid.is_empty() && kid.len() <= 16, "seal kid {kid}");
        assert!(is_hex(key) && key.len() == 64, "seal key: 32 bytes of hex");
    }
    let receivers: Value = serde_json::from_str(&content("ssf_receivers")).expect("JSON");
    assert!(receivers.is_array(), "ssf_receivers is a JSON array");
    {
        use p256::pkcs8::DecodePrivateKey;
        p256::SecretKey::from_pkcs8_pem(&content("ssf_signing_key"))
            .expect("ssf_signing_key: PKCS#8 PEM P-256");
    }
    // The checkpoint JWKS is exactly the public half of the checkpoint key, as
    // `custos-ingest jwks` prints it, and the query API accepts it.
    let ingest_kid = env_value(service(&c, "ingest"), "CUSTOS_CHECKPOINT_KID");
    let signer = custos_schemas::checkpoint::Signer256::from_pem(
        &content("checkpoint_signing_key"),
        &ingest_kid,
    )
    .expect("checkpoint_signing_key: PKCS#8 PEM P-256");
    let jwks: Value = serde_json::from_str(&content("checkpoint_jwks")).expect("JWKS JSON");
    let want = signer.jwks();
    for member in ["kty", "crv", "x", "y", "kid", "alg", "use"] {
        assert_eq!(
            jwks["keys"][0][member], want["keys"][0][member],
            "checkpoint_jwks: {member}"
        );
    }
    custos_query::integrity::public_jwks(&content("checkpoint_jwks"))
        .expect("the query API accepts checkpoint_jwks");

    // A second run keeps every file.
    let before: Vec<String> = names.iter().map(|n| content(n)).collect();
    run();
    let after: Vec<String> = names.iter().map(|n| content(n)).collect();
    assert_eq!(before, after, "generate.sh never overwrites a secret");
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------------------------
// Keycloak demo realm

#[test]
fn keycloak_demo_realm() {
    let c = compose();
    let kc = service(&c, "keycloak");
    let target = mount_target(kc, "deploy/keycloak/realm-custos.json").expect("realm mounted");
    assert!(target.starts_with("/opt/keycloak/data/import/"));
    let command = strings(&kc["command"]);
    assert!(
        command.contains(&"start-dev".to_owned()) && command.contains(&"--import-realm".to_owned())
    );

    let text = read("deploy/keycloak/realm-custos.json");
    let realm: Value = serde_json::from_str(&text).expect("realm JSON");
    assert_eq!(realm["realm"], "custos");
    assert_eq!(realm["eventsEnabled"], true);
    let roles: BTreeSet<&str> = realm["roles"]["realm"]
        .as_array()
        .expect("realm roles")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for r in [
        "compliance_officer",
        "privacy_officer",
        "incident_responder",
        "auditor",
    ] {
        assert!(roles.contains(r), "realm role {r}");
    }
    let client = |id: &str| {
        realm["clients"]
            .as_array()
            .expect("clients")
            .iter()
            .find(|c| c["clientId"] == id)
            .unwrap_or_else(|| panic!("client {id}"))
            .clone()
    };
    let query = client("custos-query");
    assert_eq!(query["publicClient"], false, "custos-query is confidential");
    let consent = client("custos-consent");
    assert_eq!(
        consent["publicClient"], false,
        "custos-consent is confidential"
    );
    assert_eq!(consent["serviceAccountsEnabled"], true);
    assert_eq!(
        consent["directAccessGrantsEnabled"], false,
        "no user signs in through custos-consent"
    );
    let smart = client("smart-patient-app");
    assert_eq!(smart["publicClient"], true);
    assert_eq!(smart["attributes"]["pkce.code.challenge.method"], "S256");

    // Tokens for the query API carry aud=custos-query.
    let scopes = realm["clientScopes"].as_array().expect("client scopes");
    let audience_scope = scopes
        .iter()
        .find(|s| {
            s["protocolMappers"].as_array().is_some_and(|ms| {
                ms.iter().any(|m| {
                    m["protocolMapper"] == "oidc-audience-mapper"
                        && m["config"]["included.client.audience"] == "custos-query"
                })
            })
        })
        .expect("an audience mapper for custos-query");
    assert!(query["defaultClientScopes"]
        .as_array()
        .expect("default scopes")
        .contains(&audience_scope["name"]));
    // Every scope a client names exists in the realm.
    let scope_names: BTreeSet<&str> = scopes.iter().filter_map(|s| s["name"].as_str()).collect();
    for cl in [&query, &consent, &smart] {
        for key in ["defaultClientScopes", "optionalClientScopes"] {
            for s in cl[key].as_array().expect("scopes") {
                let s = s.as_str().expect("scope name");
                assert!(
                    scope_names.contains(s),
                    "{}: unknown scope {s}",
                    cl["clientId"]
                );
            }
        }
    }

    // Every ${VAR} placeholder of the realm file is given to Keycloak, from a secret.
    let kc_env = env(kc);
    for (i, _) in text.match_indices("${") {
        let end = text[i..].find('}').expect("placeholder end") + i;
        let var = &text[i + 2..end];
        assert!(
            kc_env.contains_key(&format!("FILE__{var}")),
            "realm placeholder {var} must be set from a secret (FILE__{var})"
        );
    }
}
