//! Fake SET receivers (RFC 8935 push delivery) for the consent service's SSF/CAEP pushes,
//! and an independent check of a SET's ES256 signature.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use p256::ecdsa::signature::Verifier;
use serde_json::{json, Value};

/// A receiver on 127.0.0.1 that keeps every SET pushed to `/events` and accepts them (202),
/// or refuses them as `invalid_audience` (400) when started rejecting.
#[derive(Clone, Default)]
pub struct Receiver {
    sets: Arc<Mutex<Vec<String>>>,
    reject: Arc<AtomicBool>,
}

impl Receiver {
    /// Starts a receiver; returns it and its push URL.
    pub async fn start(reject: bool) -> Result<(Receiver, String)> {
        let r = Receiver::default();
        r.reject.store(reject, Ordering::SeqCst);
        let state = r.clone();
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(
                |axum::extract::State(s): axum::extract::State<Receiver>,
                 headers: axum::http::HeaderMap,
                 body: String| async move {
                    let ct_ok = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        == Some("application/secevent+jwt");
                    s.sets.lock().expect("lock").push(body);
                    if !ct_ok {
                        return (axum::http::StatusCode::BAD_REQUEST, r#"{"err":"invalid_request","description":"content type"}"#.to_owned());
                    }
                    if s.reject.load(Ordering::SeqCst) {
                        (
                            axum::http::StatusCode::BAD_REQUEST,
                            r#"{"err":"invalid_audience","description":"this receiver does not accept that audience"}"#.to_owned(),
                        )
                    } else {
                        (axum::http::StatusCode::ACCEPTED, String::new())
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app.with_state(state)).await;
        });
        Ok((r, format!("http://{addr}/events")))
    }

    /// The SETs received so far.
    pub fn received(&self) -> Vec<String> {
        self.sets.lock().expect("lock").clone()
    }
}

/// A receiver that answers every SET push with `307` to `to`; returns its push URL and
/// the count of pushes it answered.
pub async fn redirecting_receiver(to: String) -> Result<(String, Arc<AtomicU16>)> {
    let hits = Arc::new(AtomicU16::new(0));
    let seen = hits.clone();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move || {
            let to = to.clone();
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                (
                    axum::http::StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, to)],
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}/events"), hits))
}

/// Verifies a compact ES256 SET against a JWKS (independently of the service's code).
pub fn verify_set(set: &str, jwks: &Value) -> Result<(Value, Value)> {
    let parts: Vec<&str> = set.split('.').collect();
    ensure!(parts.len() == 3, "not a compact JWS");
    let header: Value = serde_json::from_slice(&B64.decode(parts[0])?)?;
    let claims: Value = serde_json::from_slice(&B64.decode(parts[1])?)?;
    ensure!(header["alg"] == "ES256", "alg {}", header["alg"]);
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["kid"] == header["kid"]))
        .context("kid not in the JWKS")?;
    let minimal = json!({"kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"]});
    let key = p256::PublicKey::from_jwk_str(&minimal.to_string())?;
    let sig = p256::ecdsa::Signature::from_slice(&B64.decode(parts[2])?)?;
    p256::ecdsa::VerifyingKey::from(key)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .context("SET signature does not verify")?;
    Ok((header, claims))
}
