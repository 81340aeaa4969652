//! # custos-auth
//!
//! Who may call a Custos API, and the record that they did (authentication, authorization,
//! accounting), shared by the query API and the consent service:
//!
//! - [`config`]: the `CUSTOS_OIDC_*` settings ([`config::OidcArgs`]);
//! - [`oidc`]: bearer-token authentication against the issuer's JWKS, the [`oidc::Caller`]
//!   extractor (generic over the app state through [`oidc::AuthState`]), roles and tenants;
//! - [`policy`]: which roles may do each task, one list per task for the APIs and the console;
//! - [`problem`]: the problem+json error body;
//! - [`audit`]: the self-audit of every authorized request (`custos.report_queries`), chained
//!   in the ledger.
#![deny(missing_docs)]

pub mod audit;
pub mod config;
pub mod oidc;
pub mod policy;
pub mod problem;
