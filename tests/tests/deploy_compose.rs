//! Contract between `compose.yaml` and the code it deploys: the compose file parses and holds
//! exactly the expected services, each pinned and backed by an existing binary (the services
//! from the default image, the simulator from the `tools` target); host ports are bound to
//! 127.0.0.1; volumes, secrets, healthchecks, start order and limits. Needs no Docker, Kafka
//! or ClickHouse (`support::deploy`).

use std::collections::BTreeSet;

use custos_schemas::{KeyRing, KeyRingError};
use custos_tests::workspace;
use serde_json::Value;

mod support;

use support::deploy::*;

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
        if let Some((_, dir)) = CONNECTOR_SERVICES.iter().find(|(n, _)| *n == name) {
            assert_eq!(
                scalar(&svc["build"]["context"]).as_deref(),
                Some(format!("./{dir}").as_str()),
                "{name}: built from its connector"
            );
            assert!(
                workspace().join(dir).join("Dockerfile").is_file(),
                "{name}: {dir}/Dockerfile"
            );
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
        custos_services, 8,
        "migrate, ingest, alerts, query, consent, feed, console, simulator"
    );
    assert_eq!(strings(&service(&c, "query")["command"]), ["custos-query"]);
    assert_eq!(
        strings(&service(&c, "console")["command"]),
        ["custos-console"]
    );
    assert_eq!(strings(&service(&c, "feed")["command"]), ["custos-feed"]);
    assert_eq!(
        strings(&service(&c, "alerts")["command"]),
        ["custos-alerts", "run"]
    );
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
        ("feed", "CUSTOS_FEED_HTTP_ADDR", true),
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
        "feed",
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
        ("feed", "feed/src"),
    ] {
        let hc = strings(&service(&c, name)["healthcheck"]["test"]);
        assert!(hc.contains(&"custos-healthcheck".to_owned()), "{name}");
        assert!(hc.contains(&"/readyz".to_owned()), "{name}");
        let mut files = Vec::new();
        rust_files(&workspace().join(src), &mut files);
        // Its own route, or the shared ops routes of custos-runtime (checked below).
        assert!(
            files.iter().any(|f| {
                let text = std::fs::read_to_string(f).expect("read source");
                ["\"/readyz\"", "ops::router(", "ops::probes("]
                    .iter()
                    .any(|r| text.contains(r))
            }),
            "{name}: {src} serves no /readyz"
        );
    }
    assert!(read("runtime/src/ops.rs").contains("\"/readyz\""));
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
    // The feed writes Kafka only (no ClickHouse) and shares keycloak's namespace.
    assert_eq!(cond("feed", "kafka"), "service_healthy");
    assert_eq!(cond("feed", "kafka-init"), "service_completed_successfully");
    assert_eq!(cond("feed", "keycloak"), "service_healthy");
    assert_eq!(
        service(&c, "feed")["depends_on"]["keycloak"]["restart"],
        Value::Bool(true),
        "feed: depends_on keycloak restart: true"
    );

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
