//! # custos-integrity
//!
//! Tamper evidence for Custos, without HTTP and without Kafka: callers bring a ClickHouse
//! client and get typed findings back.
//!
//! - [`ledger`]: the hash chain over the versioned record tables that services other than
//!   the ingest write (the query audit, the consent history, the revocations). Their
//!   `ReplacingMergeTree` merges drop superseded versions, so the chain lives beside them in
//!   `custos.ledger`, one entry per written version, and [`ledger::verify`] checks every
//!   surviving row against it.
#![deny(missing_docs)]

pub mod ledger;
