//! Calls to the Custos APIs (the query API and the consent service's privacy API) with the
//! signed-in user's access token, server side. Their RFC 9457 problem answers become
//! [`ApiFailure::Problem`], shown on the page as they came.

use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

/// Why an API call gave no data.
#[derive(Debug, Error)]
pub enum ApiFailure {
    /// The API answered with an error (its problem detail, or the status alone).
    #[error("{status} {title}")]
    Problem {
        /// HTTP status.
        status: u16,
        /// Problem title.
        title: String,
        /// Problem detail.
        detail: Option<String>,
    },
    /// The API could not be reached or answered something that is not JSON.
    #[error("API unavailable: {0}")]
    Unavailable(String),
}

impl ApiFailure {
    /// The HTTP status of the failure (502 when the API was not reached).
    pub fn status(&self) -> u16 {
        match self {
            ApiFailure::Problem { status, .. } => *status,
            ApiFailure::Unavailable(_) => 502,
        }
    }
}

/// Which API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The query API.
    Query,
    /// The consent service's privacy API.
    Consent,
}

/// A client of both APIs.
#[derive(Debug, Clone)]
pub struct ApiClient {
    query: String,
    consent: String,
    http: reqwest::Client,
    streaming: reqwest::Client,
}

/// The parameters that are set (non-empty after trimming).
pub fn nonempty<'a>(params: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    params
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (*k, v.trim()))
        .collect()
}

impl ApiClient {
    /// A client of the two APIs with a timeout per call (exports stream without one).
    pub fn new(query: &str, consent: &str, timeout: Duration) -> Result<ApiClient, ApiFailure> {
        let build = |t: Option<Duration>| {
            let mut b = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(10));
            if let Some(t) = t {
                b = b.timeout(t);
            }
            b.build()
                .map_err(|e| ApiFailure::Unavailable(e.to_string()))
        };
        Ok(ApiClient {
            query: query.trim_end_matches('/').to_owned(),
            consent: consent.trim_end_matches('/').to_owned(),
            http: build(Some(timeout))?,
            streaming: build(None)?,
        })
    }

    fn url(&self, api: Api, path: &str) -> String {
        match api {
            Api::Query => format!("{}{path}", self.query),
            Api::Consent => format!("{}{path}", self.consent),
        }
    }

    async fn failure(resp: reqwest::Response) -> ApiFailure {
        let status = resp.status().as_u16();
        let body: Option<Value> = resp.json().await.ok();
        let text = |k: &str| {
            body.as_ref()
                .and_then(|b| b.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        ApiFailure::Problem {
            status,
            title: text("title").unwrap_or_else(|| {
                reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Error")
                    .to_owned()
            }),
            detail: text("detail"),
        }
    }

    /// `GET` a JSON answer.
    pub async fn get(
        &self,
        api: Api,
        path: &str,
        params: &[(&str, &str)],
        token: &str,
    ) -> Result<Value, ApiFailure> {
        let resp = self
            .http
            .get(self.url(api, path))
            .query(&nonempty(params))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| ApiFailure::Unavailable(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(Self::failure(resp).await);
        }
        resp.json()
            .await
            .map_err(|e| ApiFailure::Unavailable(format!("answer is not JSON: {e}")))
    }

    /// `POST` a JSON body; returns the JSON answer.
    pub async fn post(
        &self,
        api: Api,
        path: &str,
        body: &Value,
        token: &str,
        idempotency_key: &str,
    ) -> Result<Value, ApiFailure> {
        let resp = self
            .http
            .post(self.url(api, path))
            .bearer_auth(token)
            .header("Idempotency-Key", idempotency_key)
            .json(body)
            .send()
            .await
            .map_err(|e| ApiFailure::Unavailable(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(Self::failure(resp).await);
        }
        resp.json()
            .await
            .map_err(|e| ApiFailure::Unavailable(format!("answer is not JSON: {e}")))
    }

    /// `GET` an export, for streaming it through: the response once its status is a success.
    pub async fn stream(
        &self,
        path: &str,
        params: &[(&str, &str)],
        token: &str,
    ) -> Result<reqwest::Response, ApiFailure> {
        let resp = self
            .streaming
            .get(self.url(Api::Query, path))
            .query(&nonempty(params))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| ApiFailure::Unavailable(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(Self::failure(resp).await);
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_parameters_are_left_out() {
        assert_eq!(
            nonempty(&[("patient", " p1 "), ("from", ""), ("to", "  ")]),
            vec![("patient", "p1")]
        );
    }
}
