//! RFC 8935 push delivery of SETs to the configured SSF receivers: `POST` the compact SET
//! with `Content-Type: application/secevent+jwt`; `202 Accepted` is the acknowledgement; a
//! `400` carries `{"err": ..., "description": ...}` (RFC 8935 §2.3), recorded as the failure
//! reason and not retried (the same SET would be refused again). Redirects are not
//! followed: a `3xx` is a failed delivery recorded with its status.

use std::time::Duration;

use reqwest::Client;
use serde::Deserialize;

use crate::config::Receiver;
use crate::push::{Outcome, Verdict};

/// Pushes SETs.
#[derive(Debug, Clone)]
pub struct SsfPusher {
    http: Client,
}

#[derive(Deserialize)]
struct PushError {
    err: String,
    #[serde(default)]
    description: Option<String>,
}

impl SsfPusher {
    /// A pusher with a per-request timeout.
    pub fn new(timeout: Duration) -> Result<SsfPusher, String> {
        // Never follow a redirect: it would re-send the SET or the admin token to another
        // address. A 3xx is a failed delivery, recorded with its status.
        let http = Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(SsfPusher { http })
    }

    /// Pushes one SET to one receiver.
    pub async fn push(&self, receiver: &Receiver, set: &str) -> Outcome {
        let mut req = self
            .http
            .post(&receiver.endpoint)
            .header("Content-Type", "application/secevent+jwt")
            .header("Accept", "application/json")
            .body(set.to_owned());
        if let Some(auth) = &receiver.authorization {
            req = req.header("Authorization", auth);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Outcome::transport("SET push", &e),
        };
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        match status {
            202 => Outcome::delivered(202, "SET accepted", &body),
            // Some receivers answer 200/204; accepted too, noted.
            200 | 204 => Outcome::delivered(status, format!("SET accepted with {status}"), &body),
            400 => match serde_json::from_str::<PushError>(&body) {
                Ok(e) => Outcome::failure(
                    Verdict::Failed,
                    400,
                    format!("ssf_{}", sanitize(&e.err)),
                    format!(
                        "receiver refused the SET: {}{}",
                        sanitize(&e.err),
                        e.description
                            .as_deref()
                            .map(|d| format!(" ({})", d.chars().take(200).collect::<String>()))
                            .unwrap_or_default()
                    ),
                    &body,
                ),
                Err(_) => Outcome::http("SET push", 400, &body),
            },
            s => Outcome::http("SET push", s, &body),
        }
    }
}

fn sanitize(code: &str) -> String {
    code.chars()
        .take(48)
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::Verdict;
    use axum::http::{header, StatusCode};
    use axum::routing::post;
    use axum::Router;
    use std::sync::{Arc, Mutex};

    /// A receiver on 127.0.0.1 that records every body and answers with `answer`.
    async fn receiver(
        answer: impl Fn() -> axum::response::Response + Clone + Send + Sync + 'static,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        let app = Router::new().route(
            "/events",
            post(move |body: String| {
                let answer = answer.clone();
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(body);
                    answer()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, got)
    }

    #[tokio::test]
    async fn a_redirect_is_a_failed_delivery_and_the_set_goes_nowhere_else() {
        use axum::response::IntoResponse;
        let (second, second_got) = receiver(|| StatusCode::ACCEPTED.into_response()).await;
        let target = second.clone();
        let (first, first_got) = receiver(move || {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, target.clone())],
            )
                .into_response()
        })
        .await;
        let pusher = SsfPusher::new(Duration::from_secs(5)).unwrap();
        let r = Receiver {
            name: "gw".into(),
            endpoint: first,
            audience: None,
            authorization: Some("Bearer receiver-secret".into()),
        };
        let out = pusher.push(&r, "a.set.jwt").await;
        assert_eq!(out.verdict, Verdict::Failed, "{out:?}");
        assert_eq!(out.http_status, 307);
        assert_eq!(out.code, "http_307");
        assert_eq!(first_got.lock().unwrap().len(), 1);
        assert!(
            second_got.lock().unwrap().is_empty(),
            "the redirect target received the SET"
        );
    }
}
