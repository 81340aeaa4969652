//! # custos-ingest
//!
//! One consumer group over the input topics: decode → validate → pseudonymize → batch →
//! insert into ClickHouse with the writer account → commit offsets only after ClickHouse
//! acknowledged the batch. Messages that cannot be decoded go to the dead-letter topic
//! with their original bytes and a reason header, and the pipeline keeps going.
//!
//! Stages: [`consumer::ConsumerLoop`] (OS thread: poll a [`source::SourceMessage`],
//! [`transform::transform`] it, chain, cut batches; [`offsets`] decides what to commit) →
//! bounded channel → [`writer::Writer`] (async: DLQ, ClickHouse through [`sink::Sink`],
//! checkpoints) → ack channel →
//! commits on the consumer thread. See [`consumer`] for the delivery guarantee.
//!
//! Readiness, the ops routes, metrics, shutdown and the Kafka and ClickHouse settings come
//! from [`custos_runtime`].
#![deny(missing_docs)]

pub mod batch;
pub mod chainer;
pub mod checkpoints;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod migrate;
pub mod offsets;
pub mod pipeline;
pub mod sink;
pub mod source;
pub mod transform;
/// Chain verification (in `custos-integrity`; `custos-ingest verify` runs it).
pub use custos_integrity::verify;
pub mod writer;
