//! # custos-detect
//!
//! Streaming misuse detectors over the audited event stream (issue 17): a pure library, no
//! I/O and no wall clock. A service decodes each input message as the ingest does
//! (`custos_schemas::decode`, then `RowContext::audit_row`) and hands both to
//! [`Engine::observe`]; it moves the event-time watermark with [`Engine::advance`], and
//! stores [`Engine::snapshot`] with its input offsets so that [`Engine::restore`] and a
//! replay of the messages since give the same alerts as an uninterrupted run.
//!
//! ```
//! use custos_detect::{Engine, ParamSet};
//!
//! let params = ParamSet::from_json(r#"{"tenants": {"general": {"volume": {"hourly_ceiling": 50}}}}"#)?;
//! let mut engine = Engine::new(params);
//! assert!(engine.advance(1_780_000_000_000).is_empty());
//! let saved = engine.snapshot()?;
//! let _again = Engine::restore(ParamSet::default(), &saved)?;
//! # Ok::<(), custos_detect::DetectError>(())
//! ```
//!
//! Verdicts use event time only and do not depend on how the three input topics interleave:
//! each detector keeps what a late row needs (recent accesses per token, per patient and
//! client, consent and revocation times) until the watermark passes its retention. State is
//! bounded: every map holds at most [`MAX_KEYS`] keys and every per-key list a small fixed
//! number of entries (docs/detectors.md lists them).
#![deny(missing_docs)]

pub mod alert;
mod detectors;
mod engine;
pub mod key;
pub mod net;
pub mod params;

pub use alert::{AlertUpdate, Detector, Severity};
pub use engine::{Engine, EngineStats, MAX_KEYS};
pub use params::{ParamSet, Params, PartialParams};

/// What can go wrong in this library.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// A parameter file or override is invalid (unknown key, wrong type, bad value).
    #[error("invalid detector parameters: {0}")]
    Params(String),
    /// A snapshot could not be written.
    #[error("cannot write the detector snapshot: {0}")]
    Snapshot(String),
    /// A snapshot could not be read (corrupt, or another version).
    #[error("cannot restore the detector snapshot: {0}")]
    Restore(String),
}
