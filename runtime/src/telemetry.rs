//! Tracing set-up shared by the services.
//!
//! Logs go to stderr, filtered by `CUSTOS_LOG` (an `EnvFilter` directive; the service's
//! default otherwise), as text or, with `CUSTOS_LOG_FORMAT=json`, as JSON lines. Colours
//! only on a terminal. Nothing here logs a token, a secret or a raw patient identifier:
//! the HTTP request span ([`request_span`]) records method and path only, because query
//! strings carry raw patient ids.

use std::io::IsTerminal;

use axum::body::Body;
use axum::http::Request;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing_subscriber::EnvFilter;

/// Default filter of the services that run Kafka clients: librdkafka's own chatter is kept
/// to warnings.
pub const KAFKA_SERVICE_FILTER: &str = "info,rdkafka=warn";

/// Default filter of the services without Kafka clients.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber: `CUSTOS_LOG` or `default_filter`, text or JSON by
/// `CUSTOS_LOG_FORMAT`. A second call (a subscriber already set) changes nothing.
pub fn init_tracing(default_filter: &str) {
    let filter =
        EnvFilter::try_from_env("CUSTOS_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _already_set = if json_logs(std::env::var("CUSTOS_LOG_FORMAT").ok().as_deref()) {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Whether a `CUSTOS_LOG_FORMAT` value asks for JSON logs (only `json` does).
pub fn json_logs(format: Option<&str>) -> bool {
    format == Some("json")
}

/// The span of one HTTP request: method and path, never the query string.
pub fn request_span(req: &Request<Body>) -> Span {
    tracing::info_span!("request", method = %req.method(), path = %req.uri().path())
}

/// The request-tracing layer of an axum router, with [`request_span`] as its span.
pub type RequestTraceLayer =
    TraceLayer<SharedClassifier<ServerErrorsAsFailures>, fn(&Request<Body>) -> Span>;

/// A [`TraceLayer`] whose spans carry method and path only (see [`request_span`]).
pub fn request_trace_layer() -> RequestTraceLayer {
    TraceLayer::new_for_http().make_span_with(request_span as fn(&Request<Body>) -> Span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn request_span_records_the_path_but_not_the_query_string() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let req = Request::get("/v1/reports/patient-access?patient=pat-raw-4711")
                .body(Body::empty())
                .expect("request");
            let span = request_span(&req);
            let _entered = span.enter();
            tracing::info!("answered");
        });
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        assert!(text.contains("/v1/reports/patient-access"), "{text}");
        assert!(text.contains("GET"), "{text}");
        assert!(!text.contains("pat-raw-4711"), "{text}");
        assert!(!text.contains("patient="), "{text}");
    }

    #[test]
    fn only_json_selects_json_logs() {
        assert!(json_logs(Some("json")));
        for other in [None, Some("text"), Some("JSON "), Some("")] {
            assert!(!json_logs(other), "{other:?}");
        }
    }
}
