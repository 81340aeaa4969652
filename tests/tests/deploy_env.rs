//! Contract between the services' environment in `compose.yaml` and their code: every
//! `CUSTOS_*` variable given to `ingest` / `migrate` / `query` / `consent` is one the code
//! reads (for `consent`, the `CUSTOS_OIDC_*` variables may come from a configuration struct
//! shared with the query API), the connection variables are all there and every password or
//! key comes from a secret file; the query service's environment passes the query API's own
//! configuration parsing and validation; the OIDC settings of query and consent match the
//! Keycloak demo realm (issuer, audiences, roles claim, the consent service account).

use std::collections::BTreeSet;

use serde_json::Value;

mod support;

use support::deploy::*;

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

#[test]
fn feed_env_matches_the_code() {
    let c = compose();
    let names = feed_env_names();
    for required in [
        "CUSTOS_FEED_HTTP_ADDR",
        "CUSTOS_FEED_TOPIC",
        "CUSTOS_KAFKA_BROKERS",
        "CUSTOS_OIDC_ISSUER",
        "CUSTOS_OIDC_AUDIENCE",
    ] {
        assert!(
            names.contains(required),
            "feed/src no longer reads {required}: update compose.yaml"
        );
    }
    let e = check_custos_env(&c, "feed");
    let get = |k: &str| e[k].clone().unwrap_or_default();
    assert_eq!(get("CUSTOS_FEED_TOPIC"), "custos.gateway-events");
    assert_eq!(get("CUSTOS_KAFKA_BROKERS"), "kafka:9092");
    assert!(get("CUSTOS_FEED_HTTP_ADDR").starts_with("0.0.0.0:"));
    // Kafka is the one ingress: the feed holds no ClickHouse account and no key ring.
    for k in e.keys() {
        assert!(
            !k.starts_with("CUSTOS_CLICKHOUSE") && !k.starts_with("CUSTOS_PSEUDONYM"),
            "feed must not get {k}"
        );
    }
    assert!(service_secrets(service(&c, "feed")).is_empty());
    assert_eq!(
        check_oidc_for(&c, "feed", &e, "custos-audit-source"),
        "custos-feed"
    );
    // The source client: client credentials only, its service account holding audit_source.
    let realm = realm();
    let client = realm_client(&realm, "custos-audit-source");
    assert_eq!(client["serviceAccountsEnabled"], true);
    assert_eq!(client["standardFlowEnabled"], false);
    assert_eq!(client["directAccessGrantsEnabled"], false);
    let sa = realm["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["serviceAccountClientId"] == "custos-audit-source")
        .expect("service account of custos-audit-source");
    assert!(strings(&sa["realmRoles"]).contains(&"audit_source".to_owned()));
    // Its secret reaches the realm import like the other clients' secrets.
    assert_eq!(
        secret_of(service(&c, "keycloak"), "CUSTOS_FEED_CLIENT_SECRET"),
        "keycloak_feed_client_secret"
    );
}

#[test]
fn console_env_matches_the_code() {
    let c = compose();
    let names = console_env_names();
    for required in [
        "CUSTOS_CONSOLE_HTTP_ADDR",
        "CUSTOS_CONSOLE_ISSUER",
        "CUSTOS_CONSOLE_CLIENT_SECRET",
        "CUSTOS_CONSOLE_QUERY_URL",
        "CUSTOS_CONSOLE_CONSENT_URL",
    ] {
        assert!(
            names.contains(required),
            "console/src no longer reads {required}: update compose.yaml"
        );
    }
    let e = check_custos_env(&c, "console");
    let get = |k: &str| e[k].clone().unwrap_or_default();
    assert!(get("CUSTOS_CONSOLE_HTTP_ADDR").starts_with("0.0.0.0:"));
    // The console reads through the APIs only: no ClickHouse account, no key ring, no Kafka.
    for k in e.keys() {
        assert!(
            !k.starts_with("CUSTOS_CLICKHOUSE")
                && !k.starts_with("CUSTOS_PSEUDONYM")
                && !k.starts_with("CUSTOS_KAFKA"),
            "console must not get {k}"
        );
    }
    // The redirect URI the realm registers is the console's public origin.
    let realm = realm();
    let client = realm_client(&realm, "custos-console");
    assert_eq!(client["publicClient"], false);
    assert_eq!(client["standardFlowEnabled"], true);
    assert_eq!(client["directAccessGrantsEnabled"], false);
    assert_eq!(client["attributes"]["pkce.code.challenge.method"], "S256");
    let redirect = format!("{}/console/callback", get("CUSTOS_CONSOLE_PUBLIC_URL"));
    assert!(strings(&client["redirectUris"]).contains(&redirect));
    assert_eq!(
        secret_of(service(&c, "keycloak"), "CUSTOS_CONSOLE_CLIENT_SECRET"),
        "keycloak_console_client_secret"
    );
    assert!(service_secrets(service(&c, "console")).contains("keycloak_console_client_secret"));
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
fn alerts_env_matches_the_code() {
    let c = compose();
    let e = check_custos_env(&c, "alerts");
    let get = |k: &str| default_of(&e[k].clone().unwrap_or_default());
    assert_eq!(get("CUSTOS_KAFKA_BROKERS"), "kafka:9092");
    assert_eq!(get("CUSTOS_CLICKHOUSE_URL"), "http://clickhouse:8123");
    assert_eq!(get("CUSTOS_ALERTS_CLICKHOUSE_USER"), "custos_alerts");
    assert_eq!(
        secret_of(service(&c, "alerts"), "CUSTOS_ALERTS_CLICKHOUSE_PASSWORD"),
        "ch_alerts_password"
    );
    assert!(get("CUSTOS_ALERTS_ADMIN_ADDR").starts_with("0.0.0.0:"));
    // The ingest's key ring, so alerts name the stored pseudonyms.
    let ingest_env = check_custos_env(&c, "ingest");
    assert_eq!(
        file_secret("alerts", &e, &c, "CUSTOS_PSEUDONYM_KEYS_FILE"),
        file_secret("ingest", &ingest_env, &c, "CUSTOS_PSEUDONYM_KEYS_FILE"),
        "alerts and ingest share the key ring"
    );
    // It reads what the ingest reads, and writes a topic of topics.conf.
    let topics: BTreeSet<String> = topics_conf().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        get("CUSTOS_ALERTS_INPUT_TOPICS"),
        default_of(
            &ingest_env["CUSTOS_INPUT_TOPICS"]
                .clone()
                .unwrap_or_default()
        )
    );
    assert!(
        topics.contains(&get("CUSTOS_ALERTS_TOPIC")),
        "alerts topic not in topics.conf"
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
