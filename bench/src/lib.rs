//! What the benchmark programs share: the fixture token issuer they authenticate with, the
//! release build of the service under test, and the detectors' precision/recall scorer
//! ([`score`]).

pub mod score;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use custos_tests::workspace;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A file of the test JWT fixtures (`tests/fixtures/jwt`).
fn jwt_fixture(name: &str) -> Result<Vec<u8>> {
    std::fs::read(workspace().join("tests/fixtures/jwt").join(name)).context("jwt fixture")
}

/// Serves the fixture JWKS on loopback (any GET); returns the base URL, the issuer.
pub async fn jwks_server() -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let body = jwt_fixture("jwks.json")?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    Ok(base)
}

/// `claims` signed (RS256) with the fixture key that [`jwks_server`] publishes.
pub fn sign(claims: &Value) -> Result<String> {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&jwt_fixture("rsa_private.pem")?)?;
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("rsa-1".to_owned());
    Ok(jsonwebtoken::encode(&h, claims, &key)?)
}

/// The release binary `name` of package `name`: `given` if set, else built now.
pub fn release_binary(name: &str, given: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "--release", "-p", name, "--bin", name])
        .current_dir(workspace())
        .status()?;
    if !status.success() {
        bail!("building {name} failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    Ok(target.join("release").join(name))
}

/// Waits up to 60 s for `{base}/readyz` to answer 2xx; `name` and `log` go in the error.
pub async fn wait_ready(base: &str, name: &str, log: &Path) -> Result<()> {
    let http = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{name} not ready; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
