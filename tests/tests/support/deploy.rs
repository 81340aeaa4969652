//! The deployment contract's tests (`deploy_*.rs`) read `compose.yaml`, the Dockerfile,
//! `.dockerignore`, `deploy/` and the code they deploy. Needs no Docker, Kafka or ClickHouse.
//! Here: reading compose services (environment, secrets, mounts), the workspace's members,
//! binaries and the `CUSTOS_*` variables its code reads, `config/topics.conf`, scratch
//! directories and bash, the environment and OIDC checks shared by the service tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use custos_schemas::{KeyRing, KeyRingError};
use custos_tests::workspace;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// helpers

/// A repository file's text.
pub fn read(rel: &str) -> String {
    let path = workspace().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// compose.yaml as JSON.
pub fn compose() -> Value {
    serde_yaml_ng::from_str(&read("compose.yaml")).expect("compose.yaml is valid YAML")
}

pub fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["services"]
        .get(name)
        .unwrap_or_else(|| panic!("compose.yaml has no service `{name}`"))
}

pub fn services(c: &Value) -> BTreeMap<String, Value> {
    c["services"]
        .as_object()
        .expect("services is a mapping")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A list of strings, or one string (shell form) split on whitespace.
pub fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().filter_map(scalar).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Null => Vec::new(),
        other => panic!("expected a list of strings, got {other}"),
    }
}

/// The `environment` of a service (mapping or `KEY=value` list form); `None` = pass-through.
pub fn env(svc: &Value) -> BTreeMap<String, Option<String>> {
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

pub fn env_value(svc: &Value, key: &str) -> String {
    env(svc)
        .get(key)
        .cloned()
        .flatten()
        .unwrap_or_else(|| panic!("environment lacks a value for {key}"))
}

/// Secrets mounted into a service (short or long syntax).
pub fn service_secrets(svc: &Value) -> BTreeSet<String> {
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
pub fn mounts(svc: &Value) -> Vec<(String, String)> {
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
pub fn mount_target(svc: &Value, repo_path: &str) -> Option<String> {
    mounts(svc)
        .into_iter()
        .find(|(src, _)| src.trim_start_matches("./") == repo_path)
        .map(|(_, dst)| dst)
}

/// `${VAR:-default}` -> `default`; anything else unchanged.
pub fn default_of(s: &str) -> String {
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
pub fn workspace_members() -> Vec<String> {
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
pub fn workspace_binaries() -> BTreeSet<String> {
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

pub fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
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
pub fn custos_literals(text: &str) -> BTreeSet<String> {
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
pub fn clap_env_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("env = \"CUSTOS_") {
        let start = i + "env = \"".len();
        let end = text[start..].find('"').expect("closing quote") + start;
        names.insert(text[start..end].to_owned());
    }
    names
}

/// `env = "CUSTOS_..."` names of ingest/src/config.rs (the clap arguments) and of the shared
/// settings it flattens (runtime/src).
pub fn config_rs_env_names() -> BTreeSet<String> {
    let mut names = clap_env_names(&read("ingest/src/config.rs"));
    names.extend(env_names_in("runtime/src"));
    names
}

/// Every `CUSTOS_*` variable read by the sources under `dir` (a crate's `src`): the clap
/// `env = "..."` names plus any other exact literal (e.g. CUSTOS_LOG in main.rs).
pub fn env_names_in(dir: &str) -> BTreeSet<String> {
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
pub fn ingest_env_names() -> BTreeSet<String> {
    let mut names = env_names_in("ingest/src");
    names.extend(env_names_in("runtime/src"));
    names
}

/// Every `CUSTOS_*` variable custos-query reads: its own, the shared settings (runtime/src)
/// and the OIDC settings (auth/src).
pub fn query_env_names() -> BTreeSet<String> {
    let mut names = env_names_in("query/src");
    names.extend(env_names_in("runtime/src"));
    names.extend(env_names_in("auth/src"));
    names
}

/// The `CUSTOS_OIDC_*` variables defined anywhere in the workspace's crates: the bearer-token
/// settings are one clap struct (`OidcArgs` of auth/src/config.rs) that other services
/// may flatten into their own configuration, wherever it ends up living.
pub fn shared_oidc_env_names() -> BTreeSet<String> {
    workspace_members()
        .iter()
        .flat_map(|m| env_names_in(&format!("{m}/src")))
        .filter(|n| n.starts_with("CUSTOS_OIDC_"))
        .collect()
}

/// Every `CUSTOS_*` variable custos-consent reads: its own sources plus the shared OIDC
/// settings (the privacy API checks bearer tokens like the query API, same variables).
pub fn consent_env_names() -> BTreeSet<String> {
    let mut names = env_names_in("consent/src");
    names.extend(env_names_in("runtime/src"));
    names.extend(shared_oidc_env_names());
    names
}

/// Every `CUSTOS_*` variable custos-feed reads: its own sources, the shared settings
/// (runtime/src) and the OIDC settings.
pub fn feed_env_names() -> BTreeSet<String> {
    let mut names = env_names_in("feed/src");
    names.extend(env_names_in("runtime/src"));
    names.extend(shared_oidc_env_names());
    names
}

/// The variables `custos-console` reads (its own and the runtime's).
pub fn console_env_names() -> BTreeSet<String> {
    let mut names = env_names_in("console/src");
    names.extend(env_names_in("runtime/src"));
    names
}

/// The variables `custos-alerts` reads (its own and the runtime's).
pub fn alerts_env_names() -> BTreeSet<String> {
    let mut names = env_names_in("alerts/src");
    names.extend(env_names_in("runtime/src"));
    names
}

/// `config/topics.conf` as (name, partitions), in order.
pub fn topics_conf() -> Vec<(String, u32)> {
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

pub fn scratch_dir(tag: &str) -> PathBuf {
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

pub fn bash(script: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run bash")
}

// A minimal XML reader for the ClickHouse users files (elements, attributes, text, comments).

// ---------------------------------------------------------------------------------------------
// compose.yaml: services

pub const SERVICES: &[&str] = &[
    "kafka",
    "kafka-init",
    "clickhouse",
    "keycloak",
    "migrate",
    "ingest",
    "alerts",
    "query",
    "consent",
    "feed",
    "console",
    "fhir-server",
    "simulator",
];

/// Services that run in keycloak's network namespace, so that the (plain http, dev-mode)
/// Keycloak is on their loopback: the OIDC code fetches keys over https or loopback http only.
pub const IN_KEYCLOAK_NETNS: &[&str] = &["query", "consent", "feed", "console", "fhir-server"];

/// Services built from a Java connector's own Dockerfile (`connectors/<name>/`), not from the
/// Rust workspace's image.
pub const CONNECTOR_SERVICES: &[(&str, &str)] = &[("fhir-server", "connectors/fhir-server")];

/// The programs compose.yaml runs from the Custos images: the services (default target), and
/// the simulator (`tools` target).
pub const CUSTOS_PROGRAMS: &[&str] = &[
    "custos-ingest",
    "custos-query",
    "custos-consent",
    "custos-feed",
    "custos-console",
    "custos-sim",
];

/// The programs of the service image (the Dockerfile's default target).
pub const SERVICE_PROGRAMS: &[&str] = &[
    "custos-ingest",
    "custos-query",
    "custos-consent",
    "custos-feed",
    "custos-console",
];

/// Variables whose values are keys or credentials even though their names say neither
/// PASSWORD nor SECRET: they must come from secret files too.
pub const SECRET_VALUED: &[&str] = &[
    "CUSTOS_PSEUDONYM_KEYS",
    "CUSTOS_CONSENT_SEAL_KEYS",
    "CUSTOS_SSF_RECEIVERS",
    "CUSTOS_CONSENT_DEV_TOKEN",
];

/// Checks one service's environment against the variables its program reads; returns the
/// effective variables (FILE__X counted as X).
pub fn check_custos_env(c: &Value, name: &str) -> BTreeMap<String, Option<String>> {
    let (program, known) = match name {
        "ingest" | "migrate" => ("custos-ingest", ingest_env_names()),
        "query" => ("custos-query", query_env_names()),
        "consent" => ("custos-consent", consent_env_names()),
        "feed" => ("custos-feed", feed_env_names()),
        "console" => ("custos-console", console_env_names()),
        "alerts" => ("custos-alerts", alerts_env_names()),
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

// ---------------------------------------------------------------------------------------------
// environment of query / consent, and their OIDC settings against the demo realm

pub fn realm() -> Value {
    serde_json::from_str(&read("deploy/keycloak/realm-custos.json")).expect("realm JSON")
}

pub fn realm_client(realm: &Value, id: &str) -> Value {
    realm["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .find(|c| c["clientId"] == id)
        .unwrap_or_else(|| panic!("the demo realm has no client {id}"))
        .clone()
}

/// The Keycloak base URL every caller uses (`KC_HOSTNAME`, defaults applied).
pub fn keycloak_base(c: &Value) -> String {
    default_of(&env_value(service(c, "keycloak"), "KC_HOSTNAME"))
        .trim_end_matches('/')
        .to_owned()
}

/// The secret behind `FILE__<var>` in a service's environment.
pub fn secret_of(svc: &Value, var: &str) -> String {
    let path = env_value(svc, &format!("FILE__{var}"));
    path.strip_prefix("/run/secrets/")
        .unwrap_or_else(|| panic!("FILE__{var} must name a /run/secrets file"))
        .to_owned()
}

/// A `*_FILE` variable that must point to a mounted docker secret; returns the secret's name.
pub fn file_secret(
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
pub fn check_oidc(c: &Value, name: &str, e: &BTreeMap<String, Option<String>>) -> String {
    check_oidc_for(c, name, e, "custos-query")
}

/// [`check_oidc`] for a service whose callers get their tokens from realm client `caller`
/// (custos-query for staff; custos-audit-source for the audit feed).
pub fn check_oidc_for(
    c: &Value,
    name: &str,
    e: &BTreeMap<String, Option<String>>,
    caller: &str,
) -> String {
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
            custos_auth::config::fetchable_url(&url),
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

    // Audience: a client of the realm (or a custom audience), added to the tokens of the
    // caller's client (custos-query, the client demo users sign in with; custos-audit-source
    // for audit sources) by an audience mapper of one of its default scopes.
    let audience = get("CUSTOS_OIDC_AUDIENCE");
    assert!(!audience.contains(','), "{name}: one audience");
    let staff = realm_client(&realm, caller);
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
            && (m["config"]["included.client.audience"] == audience.as_str()
                || m["config"]["included.custom.audience"] == audience.as_str())),
        "{name}: tokens of {caller} must carry aud={audience} (audience mapper in a default scope of {caller})"
    );
    if mappers_of_defaults().any(|m| m["config"]["included.client.audience"] == audience.as_str()) {
        realm_client(&realm, &audience);
    }

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
            custos_auth::config::parse_algorithm(alg)
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
