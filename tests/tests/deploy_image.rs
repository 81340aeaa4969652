//! Contract of the container image and its scripts: the Dockerfile's runtime stage runs as a
//! non-root user and carries the services only (the simulator is in the `tools` target, no
//! image carries a benchmark); `.dockerignore` admits every workspace member and no secret;
//! the entrypoint exports secret files, the healthcheck probes /readyz, and
//! `deploy/secrets/generate.sh` makes secrets the code accepts (scripts run against fakes).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use custos_schemas::KeyRing;
use custos_tests::workspace;
use serde_json::Value;

mod support;

use support::deploy::*;

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
    let signer = custos_integrity::checkpoint::Signer256::from_pem(
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
