//! The OIDC issuer of the tests: a discovery document and the fixture JWKS
//! (`tests/fixtures/jwt/jwks.json`) served on 127.0.0.1 by a runtime of its own thread, so it
//! outlives any one test's runtime and can sit in a `OnceLock`. It counts its requests and can
//! be told to hang (a stalled identity provider).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::Router;
use serde_json::{json, Value};

use super::fixture;

/// A running test issuer.
pub struct TestIssuer {
    /// Its base URL: the `iss` of its tokens.
    pub base: String,
    hung: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

impl TestIssuer {
    /// Starts an issuer whose discovery document names `issuer`, `jwks_uri`, the signing
    /// algorithms and the members `more(base)` returns (an object).
    pub fn start(more: impl FnOnce(&str) -> Value + Send + 'static) -> TestIssuer {
        let hung = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (h, n) = (hung.clone(), hits.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let base = format!("http://{}", listener.local_addr().expect("addr"));
                let jwks: Value = serde_json::from_slice(&fixture("jwks.json")).expect("jwks");
                let mut discovery = json!({"issuer": base, "jwks_uri": format!("{base}/jwks"),
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"]});
                if let (Some(d), Value::Object(m)) = (discovery.as_object_mut(), more(&base)) {
                    d.extend(m);
                }
                let answer = |doc: Value| {
                    let (hung, hits) = (h.clone(), n.clone());
                    move || {
                        let (doc, hung, hits) = (doc.clone(), hung.clone(), hits.clone());
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            if hung.load(Ordering::SeqCst) {
                                std::future::pending::<()>().await;
                            }
                            axum::Json(doc)
                        }
                    }
                };
                let app = Router::new()
                    .route(
                        "/.well-known/openid-configuration",
                        axum::routing::get(answer(discovery)),
                    )
                    .route("/jwks", axum::routing::get(answer(jwks)));
                tx.send(base).expect("send");
                axum::serve(listener, app).await.expect("serve");
            });
        });
        TestIssuer {
            base: rx.recv().expect("issuer url"),
            hung,
            hits,
        }
    }

    /// From now on, every request waits forever.
    pub fn hang(&self) {
        self.hung.store(true, Ordering::SeqCst);
    }

    /// Requests answered or hanging so far (discovery and JWKS).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
