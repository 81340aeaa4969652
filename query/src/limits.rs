//! Load limits: a global bound on the requests served at a time, and a per-caller bound on
//! concurrent CSV / NDJSON exports.
//!
//! Neither queues: a request over the global limit gets 503 with `Retry-After` at once, an
//! export over the caller's limit 429 with `Retry-After`. A streamed export holds its
//! global permit and its caller slot until its body ends or is dropped (the client went
//! away), so long exports count for as long as they hold a ClickHouse cursor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::error::ApiError;
use crate::fhir::outcome::fhir_json;

pub use crate::error::{EXPORT_RETRY_AFTER_SECS, OVERLOAD_RETRY_AFTER_SECS};

/// The global bound on requests in progress.
#[derive(Debug, Clone)]
pub struct RequestLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl RequestLimit {
    /// At most `max` requests at a time (at least one).
    pub fn new(max: usize) -> RequestLimit {
        let max = max.max(1);
        RequestLimit {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Requests being served now.
    pub fn in_use(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

/// Middleware: serves the request under a permit of [`RequestLimit`], held until the
/// response body is finished or dropped; without a free permit, 503 at once.
pub async fn limit_requests(
    State(limit): State<RequestLimit>,
    req: Request,
    next: Next,
) -> Response {
    let Ok(permit) = limit.permits.clone().try_acquire_owned() else {
        metrics::counter!("custos_query_overload_rejections_total").increment(1);
        warn!(path = %req.uri().path(), "request refused: concurrency limit reached");
        if req.uri().path().starts_with("/fhir/") {
            return overloaded_fhir();
        }
        return ApiError::Overloaded.into_response();
    };
    let (parts, body) = next.run(req).await.into_parts();
    let body = body.map_err(move |e| {
        // The closure owns the permit: it is released when the body is dropped.
        let _held = &permit;
        e
    });
    Response::from_parts(parts, Body::new(body))
}

/// The 503 of an overloaded `/fhir` request, as a FHIR OperationOutcome.
fn overloaded_fhir() -> Response {
    let outcome = json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "transient",
            "diagnostics": "the service is at its concurrency limit; retry later"}],
    });
    let mut resp = fhir_json(StatusCode::SERVICE_UNAVAILABLE, &outcome, false);
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(OVERLOAD_RETRY_AFTER_SECS),
    );
    resp
}

/// Concurrent exports per caller `sub`.
#[derive(Debug, Clone)]
pub struct ExportSlots {
    per_caller: usize,
    running: Arc<Mutex<HashMap<String, usize>>>,
}

/// One running export of a caller; the slot is freed on drop.
#[derive(Debug)]
pub struct ExportSlot {
    running: Arc<Mutex<HashMap<String, usize>>>,
    sub: String,
}

impl ExportSlots {
    /// At most `per_caller` exports of one caller at a time (at least one).
    pub fn new(per_caller: usize) -> ExportSlots {
        ExportSlots {
            per_caller: per_caller.max(1),
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Takes a slot for `sub`, or refuses (429) when it already runs its maximum.
    pub fn acquire(&self, sub: &str) -> Result<ExportSlot, ApiError> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let n = running.entry(sub.to_owned()).or_insert(0);
        if *n >= self.per_caller {
            metrics::counter!("custos_query_export_rejections_total").increment(1);
            warn!(caller = %sub, "export refused: too many exports of this caller");
            return Err(ApiError::TooManyExports);
        }
        *n += 1;
        Ok(ExportSlot {
            running: self.running.clone(),
            sub: sub.to_owned(),
        })
    }

    /// Exports `sub` runs now.
    pub fn running(&self, sub: &str) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sub)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for ExportSlot {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = running.get_mut(&self.sub) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.sub);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_slots_are_per_caller_and_freed_on_drop() {
        let slots = ExportSlots::new(2);
        let a1 = slots.acquire("a").expect("first");
        let a2 = slots.acquire("a").expect("second");
        assert!(matches!(slots.acquire("a"), Err(ApiError::TooManyExports)));
        let b = slots.acquire("b").expect("another caller");
        assert_eq!(slots.running("a"), 2);
        drop(a1);
        let a3 = slots.acquire("a").expect("a slot was freed");
        drop((a2, a3, b));
        assert_eq!(slots.running("a"), 0);
        assert!(slots.running.lock().unwrap().is_empty());
    }

    #[test]
    fn request_limit_counts_permits() {
        let l = RequestLimit::new(0);
        assert_eq!(l.max, 1);
        let p = l.permits.clone().try_acquire_owned().unwrap();
        assert_eq!(l.in_use(), 1);
        assert!(l.permits.clone().try_acquire_owned().is_err());
        drop(p);
        assert_eq!(l.in_use(), 0);
    }
}
