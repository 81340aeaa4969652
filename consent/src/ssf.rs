//! RFC 8935 push delivery of SETs to the configured SSF receivers: `POST` the compact SET
//! with `Content-Type: application/secevent+jwt`; `202 Accepted` is the acknowledgement; a
//! `400` carries `{"err": ..., "description": ...}` (RFC 8935 §2.3), recorded as the failure
//! reason and not retried (the same SET would be refused again).

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
        let http = Client::builder()
            .timeout(timeout)
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
