//! Contract between the compose stack's third-party services and the dev stack's
//! configuration: `kafka-init` creates the topics of `config/topics.conf` (its script is run
//! against a fake `kafka-topics.sh`), the ClickHouse accounts and grants match
//! `config/clickhouse/users.xml`, and the Keycloak demo realm is what the services expect.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use custos_tests::workspace;
use serde_json::Value;

mod support;

use support::deploy::*;
use support::xml::*;

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
            "custos_alerts",
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
        [
            "GRANT INSERT ON custos.report_queries",
            "GRANT INSERT ON custos.ledger",
            "GRANT INSERT ON custos.alert_actions",
            "GRANT INSERT ON custos.break_glass_reviews"
        ],
        "the query API writes its own audit records, the people's alert actions and review \
         decisions (and their ledger entries) only"
    );
    for user in [
        "custos_writer",
        "custos_query",
        "custos_consent",
        "custos_alerts",
    ] {
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
    assert_eq!(
        compose_users["custos_alerts"],
        [
            "GRANT INSERT, SELECT ON custos.alerts",
            "GRANT INSERT, SELECT ON custos.alert_actions",
            "GRANT INSERT, SELECT ON custos.detector_state",
            "GRANT SELECT ON custos.audit_events",
            "GRANT SELECT ON custos.break_glass_reviews",
            "GRANT INSERT ON custos.ledger"
        ],
        "the detectors write alerts, their actions and their state, and read the audit trail \
         and the review decisions only"
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
