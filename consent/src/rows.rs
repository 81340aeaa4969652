//! ClickHouse row types of migration 0005 (`custos.consent_sealed`,
//! `custos.revocation_attempts`; `custos.consent_history` and `custos.revocations` are
//! declared in [`custos_schemas::records`], where the ledger verifier reads them too).
//! Times are milliseconds since the epoch (`DateTime64(3)`). Patient and subject columns hold
//! pseudonyms only.

use serde::{Deserialize, Serialize};

pub use custos_schemas::records::{HistoryRow, RevocationRow};

/// One row of `custos.consent_sealed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct SealedRow {
    /// Tenant.
    pub tenant: String,
    /// Consent id.
    pub consent_id: String,
    /// Sealing key id.
    pub kid: String,
    /// Sealed raw patient id.
    pub patient_sealed: String,
    /// Sealed raw AS subject (empty when unknown).
    pub subject_sealed: String,
    /// When recorded.
    pub recorded_at: i64,
}

/// One row of `custos.revocation_attempts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct AttemptRow {
    /// Revocation.
    pub revocation_id: String,
    /// Target.
    pub target: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Start of the attempt.
    pub started_at: i64,
    /// Duration.
    pub duration_ms: u32,
    /// `delivered`, `retry` or `failed`.
    pub outcome: String,
    /// HTTP status of the last request (0: none).
    pub http_status: u16,
    /// Short error code (`connect`, `timeout`, `http_4xx`, SSF `err`, ...).
    pub error_code: String,
    /// Human-readable detail.
    pub detail: String,
    /// Excerpt of the receiver's answer (at most 512 bytes).
    pub receipt: String,
}

/// Cuts a receipt to at most 512 bytes on a character boundary.
pub fn excerpt(s: &str) -> String {
    let mut end = s.len().min(512);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
