//! The Prometheus recorder, installed once per process.
//!
//! Every histogram whose name ends in `_seconds` gets [`SECONDS_BUCKETS`]: from 5 ms (a
//! ClickHouse insert of a small batch, a cached report page) to 30 s (a push to a slow
//! authorization server, a long export), so the same buckets serve ingest, query and consent
//! and dashboards can compare them.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use thiserror::Error;

/// Upper bounds, in seconds, of every `*_seconds` histogram of every service.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The recorder could not be built or installed.
#[derive(Debug, Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] BuildError);

/// A recorder builder with the shared buckets (not installed: tests build local recorders
/// with it).
pub fn builder() -> Result<PrometheusBuilder, MetricsError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?)
}

/// Installs the global recorder; the handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    Ok(builder()?.install_recorder()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_histograms_use_the_shared_buckets() {
        let recorder = builder().expect("builder").build_recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, || {
            ::metrics::histogram!("custos_test_duration_seconds").record(0.2);
            ::metrics::histogram!("custos_test_size").record(0.2);
        });
        let text = handle.render();
        for bound in SECONDS_BUCKETS {
            assert!(
                text.contains(&format!(
                    "custos_test_duration_seconds_bucket{{le=\"{bound}\"}}"
                )),
                "{bound} missing:\n{text}"
            );
        }
        // Other histograms keep the exporter's summary form.
        assert!(!text.contains("custos_test_size_bucket"), "{text}");
        assert!(SECONDS_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}
