//! `GET /v1/integrity/ledger`: verifies the query audit, the consent history and the
//! revocations against their ledger chains ([`custos_integrity::ledger`]) for auditors.
//!
//! A tenant-bound auditor verifies the rows of one of its tenants (`tenant` is then
//! required); chain findings name a chain and a position only, never another tenant's row.
//! The request is recorded in the query audit before the verification reads, so the
//! verification sees its own record chained.

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use custos_integrity::ledger::{self, Scope};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::access::{all_tenants, authorize, tenant_allowed, Report};
use crate::error::{ApiError, Problem, ValidQuery};
use crate::params::valid_tenant;
use crate::state::AppState;
use custos_auth::audit::Asked;
use custos_auth::oidc::Caller;

/// Parameters of `/v1/integrity/ledger`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LedgerParams {
    /// Only the rows of this tenant, and the chains holding entries of it (required for a
    /// tenant-bound token).
    pub tenant: Option<String>,
}

/// One finding of the ledger verification.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LedgerFinding {
    /// `entry_altered`, `entry_conflict`, `chain_broken`, `chain_truncated`, `row_altered`,
    /// `row_unledgered` or `row_missing`.
    pub kind: String,
    /// The chain (`table/instance`), for chain findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<String>,
    /// Position in the chain, for chain findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The row's sorting key, fields joined by U+001F (pseudonyms only), for row findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row_key: Option<String>,
}

/// The verification of one table.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LedgerTable {
    /// `report_queries`, `consent_history` or `revocations`.
    pub table: String,
    /// Whether nothing was found.
    pub clean: bool,
    /// Chains walked.
    pub chains: u64,
    /// Entries walked.
    pub entries: u64,
    /// Chains with a stretch pruned by retention.
    pub pruned_chains: u64,
    /// Rows matched with their entries.
    pub rows_checked: u64,
    /// Findings, all counted.
    pub findings_total: u64,
    /// The first 100 findings.
    pub findings: Vec<LedgerFinding>,
}

/// Answer of `/v1/integrity/ledger`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LedgerAnswer {
    /// `integrity-ledger`.
    pub report: String,
    /// Query-audit id of this request.
    pub query_id: String,
    /// The tenant verified (none: every tenant).
    pub tenant: Option<String>,
    /// Whether no table has a finding.
    pub clean: bool,
    /// Per table.
    pub tables: Vec<LedgerTable>,
}

fn table_view(t: &ledger::TableReport) -> LedgerTable {
    LedgerTable {
        table: t.table.clone(),
        clean: t.findings_total == 0,
        chains: t.chains,
        entries: t.entries,
        pruned_chains: t.pruned_chains,
        rows_checked: t.rows_checked,
        findings_total: t.findings_total,
        findings: t
            .findings
            .iter()
            .map(|f| LedgerFinding {
                kind: serde_json::to_value(f.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                chain_id: f.chain_id.clone(),
                seq: f.seq,
                row_key: f.row_key.clone(),
            })
            .collect(),
    }
}

/// Verifies the query audit, consent history and revocations against the ledger (auditors).
#[utoipa::path(get, path = "/v1/integrity/ledger", params(LedgerParams),
    responses((status = 200, body = LedgerAnswer), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 503, body = Problem), (status = 504, body = Problem)),
    security(("bearer" = [])), tag = "integrity")]
pub async fn verify_ledger(
    State(s): State<AppState>,
    caller: Caller,
    ValidQuery(p): ValidQuery<LedgerParams>,
) -> Result<Response, ApiError> {
    let report = Report::IntegrityLedger;
    authorize(&s, &caller, report)?;
    match &p.tenant {
        Some(t) if !valid_tenant(t) => {
            return Err(ApiError::bad(
                "tenant must be 1-64 characters of A-Z a-z 0-9 . _ -",
            ))
        }
        Some(t) => tenant_allowed(&caller, t)?,
        None => all_tenants(&caller)?,
    }
    let tenant = p.tenant.clone();
    let asked = Asked::new(
        &caller,
        report.name(),
        tenant.as_deref().unwrap_or(""),
        json!({ "tenant": tenant }),
        "json",
    );
    let timer = Instant::now();
    // Recorded (and chained) before the tables are read.
    s.audit
        .write(&asked.record("answering", 0))
        .await
        .map_err(ApiError::AuditWrite)?;
    let scope = Scope {
        tenant: tenant.clone(),
        ..Scope::all(s.integrity.retention_days)
    };
    let result = {
        let _slot = s.integrity.slot().await?;
        ledger::verify(s.integrity.verifier(), &scope).await
    };
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            s.audit.submit(&asked.record("failed", 0)).await;
            return Err(ApiError::ClickHouse(e));
        }
    };
    let answer = LedgerAnswer {
        report: report.name().to_owned(),
        query_id: asked.query_id.clone(),
        tenant,
        clean: result.ok,
        tables: result.tables.iter().map(table_view).collect(),
    };
    s.audit
        .submit(&asked.record("answered", answer.tables.len() as u64))
        .await;
    metrics::histogram!("custos_query_report_seconds", "report" => report.name())
        .record(timer.elapsed().as_secs_f64());
    if !answer.clean {
        metrics::counter!("custos_query_integrity_breaks_total").increment(1);
        tracing::warn!(query_id = %answer.query_id, "ledger verification found findings");
    }
    Ok(Json(answer).into_response())
}
