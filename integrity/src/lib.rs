//! # custos-integrity
//!
//! Tamper evidence for Custos, without HTTP and without Kafka: callers bring a ClickHouse
//! client and get typed findings back.
//!
//! - [`chain`]: the hash chain of the audit records (one per input partition): the record
//!   hash, linking, and the verifier that finds each kind of break;
//! - [`checkpoint`] and [`jws`]: the signed checkpoints of a chain's head, compact JWS
//!   (ES256) over their claims, also used for the consent service's Security Event Tokens;
//! - [`verify`]: the independent verification of the audit chains (`custos.audit_events`)
//!   and their signed checkpoints, as `custos-ingest verify` and `GET /v1/integrity/verify`
//!   run it;
//! - [`checkpoints`]: the signed checkpoints of the chains' heads (the tracker that cuts
//!   them, their rows) and the copies an auditor brings from outside the database;
//! - [`proof`]: membership proofs, one record with the path to the signed checkpoint that
//!   covers it, as `GET /v1/integrity/proof` answers them;
//! - [`ledger`]: the hash chain over the versioned record tables that services other than
//!   the ingest write (the query audit, the consent history, the revocations). Their
//!   `ReplacingMergeTree` merges drop superseded versions, so the chain lives beside them in
//!   `custos.ledger`, one entry per written version, and [`ledger::verify`] checks every
//!   surviving row against it.
#![deny(missing_docs)]

pub mod chain;
pub mod checkpoint;
pub mod checkpoints;
pub mod jws;
pub mod ledger;
pub mod proof;
pub mod verify;
