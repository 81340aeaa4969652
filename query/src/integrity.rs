//! Tamper evidence for auditors (issue 6): chain verification, membership proofs and the
//! checkpoint public keys.
//!
//! - `GET /v1/integrity/verify` runs the very verification of `custos-ingest verify`
//!   ([`custos_integrity::verify::verify`]) over ClickHouse as the read-only account and
//!   answers its report, with the first broken link of each chain by offset and event id.
//! - `GET /v1/integrity/proof` answers one record as stored (pseudonymized values only),
//!   its chain neighbours, every chained record from it up to the head of the covering
//!   signed checkpoint (at most `CUSTOS_QUERY_PROOF_MAX_RECORDS`), and that checkpoint's JWS,
//!   as [`custos_integrity::proof::prove`] builds them; an outside party checks membership
//!   without trusting this service (see that module for how).
//! - `GET /.well-known/custos-checkpoint-jwks.json` (also `/v1/integrity/jwks`) serves the
//!   checkpoint public keys of `CUSTOS_CHECKPOINT_JWKS_FILE`, without authentication.
//!
//! Verify and proof are for the `auditor` role only, and recorded in the query audit like
//! every report (a refusal too).

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use custos_integrity::chain::Hash;
use custos_integrity::checkpoint::Checkpoint;
use custos_integrity::proof::{self, Lookup, Proof, ProofError};
use custos_integrity::verify::{self, ChainReport, Scope, VerifyError};
use custos_schemas::AuditRow;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tower_http::timeout::TimeoutLayer;
use utoipa::{IntoParams, ToSchema};

use crate::access::{all_tenants, authorize, Report};
use crate::error::{ApiError, Problem, ValidQuery};
use crate::params::valid_tenant;
use crate::params::{self, ms_to_rfc3339};
use crate::state::AppState;
pub use crate::state::Integrity;
use custos_auth::audit::Asked;
use custos_auth::oidc::Caller;

/// Path of the checkpoint JWKS.
pub const JWKS_PATH: &str = "/.well-known/custos-checkpoint-jwks.json";
/// Findings of one chain listed in a verify answer (all are counted).
pub const MAX_FINDINGS: usize = 100;
pub use custos_integrity::proof::HASH_ALGORITHM;

pub use crate::config::public_jwks;

// ------------------------------------------------------------------------ verify

/// Parameters of `/v1/integrity/verify`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VerifyParams {
    /// Only the chains of this input topic.
    pub topic: Option<String>,
    /// Only this partition (needs `topic`).
    pub partition: Option<String>,
    /// Only records with event time at or after this (RFC 3339 or YYYY-MM-DD); each chain
    /// is then checked over the offset range those records span, anchored at its first
    /// record. Without `from` and `to`, chains are checked from their first record.
    pub from: Option<String>,
    /// Only records with event time before this.
    pub to: Option<String>,
}

/// The first break of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Break {
    /// `altered`, `missing`, `broken_link`, `unreferenced` or `duplicate`.
    pub kind: String,
    /// Kafka offset (chain position).
    pub offset: i64,
    /// Event id of the record there (none for a missing record).
    pub event_id: Option<String>,
    /// Description.
    pub message: String,
}

/// A checkpoint problem.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CheckpointProblem {
    /// Head offset the checkpoint claims.
    pub last_offset: i64,
    /// What is wrong.
    pub problem: String,
}

/// One chain's verification.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChainResult {
    /// `topic/partition`.
    pub chain: String,
    /// Whether neither a break nor a checkpoint problem was found.
    pub clean: bool,
    /// Records checked.
    pub records: u64,
    /// First offset checked.
    pub first_offset: Option<i64>,
    /// Last offset checked.
    pub last_offset: Option<i64>,
    /// The first broken link, by position and event id.
    pub first_break: Option<Break>,
    /// Breaks in chain order (at most [`MAX_FINDINGS`]).
    pub findings: Vec<Break>,
    /// Number of breaks.
    pub findings_total: u64,
    /// Checkpoints whose signature and head verified.
    pub checkpoints_ok: u64,
    /// Checkpoint problems (at most [`MAX_FINDINGS`]).
    pub checkpoint_findings: Vec<CheckpointProblem>,
    /// Number of checkpoint problems.
    pub checkpoint_findings_total: u64,
}

/// Answer of `/v1/integrity/verify`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VerifyAnswer {
    /// `integrity-verify`.
    pub report: String,
    /// Id of the query-audit record.
    pub query_id: String,
    /// Topic checked (all when absent).
    pub topic: Option<String>,
    /// Partition checked.
    pub partition: Option<i32>,
    /// Event-time window start.
    pub from: Option<String>,
    /// Event-time window end.
    pub to: Option<String>,
    /// Whether every chain is clean.
    pub clean: bool,
    /// Records checked over all chains.
    pub records: u64,
    /// Whether checkpoint signatures were checked (a JWKS is configured).
    pub jwks_configured: bool,
    /// Per chain.
    pub chains: Vec<ChainResult>,
}

/// The event id named in a finding's description (`... (event ID)`), if any.
pub fn event_id_of(message: &str) -> Option<String> {
    let inner = message.strip_suffix(')')?;
    let (_, id) = inner.rsplit_once("(event ")?;
    Some(id.to_owned())
}

/// Shapes one chain of the verification report.
pub fn chain_result(c: &ChainReport) -> ChainResult {
    let breaks: Vec<Break> = c
        .findings
        .iter()
        .map(|f| Break {
            kind: f.kind.clone(),
            offset: f.offset,
            event_id: event_id_of(&f.message),
            message: f.message.clone(),
        })
        .collect();
    ChainResult {
        chain: c.chain.clone(),
        clean: c.findings.is_empty() && c.checkpoint_findings.is_empty(),
        records: c.records,
        first_offset: c.first_offset,
        last_offset: c.last_offset,
        first_break: breaks.first().cloned(),
        findings_total: breaks.len() as u64,
        findings: breaks.into_iter().take(MAX_FINDINGS).collect(),
        checkpoints_ok: c.checkpoints_ok,
        checkpoint_findings_total: c.checkpoint_findings.len() as u64,
        checkpoint_findings: c
            .checkpoint_findings
            .iter()
            .take(MAX_FINDINGS)
            .map(|p| CheckpointProblem {
                last_offset: p.last_offset,
                problem: p.problem.clone(),
            })
            .collect(),
    }
}

/// A Kafka topic name: `[A-Za-z0-9._-]{1,249}`.
fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Validates the verify parameters into a [`Scope`].
pub fn verify_scope(p: &VerifyParams) -> Result<Scope, ApiError> {
    if let Some(t) = &p.topic {
        if !valid_topic(t) {
            return Err(ApiError::bad(
                "topic must be 1-249 characters of A-Z a-z 0-9 . _ -",
            ));
        }
    }
    let partition = match &p.partition {
        None => None,
        Some(_) if p.topic.is_none() => return Err(ApiError::bad("partition needs topic")),
        Some(v) => Some(
            v.parse::<i32>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::bad("partition must be a non-negative integer"))?,
        ),
    };
    let since_ms = p
        .from
        .as_deref()
        .map(|v| params::parse_time("from", v))
        .transpose()?;
    let until_ms =
        p.to.as_deref()
            .map(|v| params::parse_time("to", v))
            .transpose()?;
    if let (Some(f), Some(t)) = (since_ms, until_ms) {
        if f >= t {
            return Err(ApiError::bad("from must be before to"));
        }
    }
    Ok(Scope {
        topic: p.topic.clone(),
        partition,
        since_ms,
        until_ms,
        retention_horizon_ms: None,
    })
}

/// Recomputes every chain in scope and checks its signed checkpoints (auditors only).
#[utoipa::path(get, path = "/v1/integrity/verify", params(VerifyParams),
    responses((status = 200, body = VerifyAnswer), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 504, body = Problem)),
    security(("bearer" = [])), tag = "integrity")]
pub async fn verify_chains(
    State(s): State<AppState>,
    caller: Caller,
    ValidQuery(p): ValidQuery<VerifyParams>,
) -> Result<Response, ApiError> {
    let report = Report::IntegrityVerify;
    authorize(&s, &caller, report)?;
    // Chains span every tenant of a partition: tenant-bound tokens may not read them.
    all_tenants(&caller)?;
    let mut scope = verify_scope(&p)?;
    scope.retention_horizon_ms =
        Some((chrono::Utc::now() - s.integrity.retention).timestamp_millis());
    let mut audit = Map::new();
    audit.insert("topic".into(), json!(scope.topic));
    audit.insert("partition".into(), json!(scope.partition));
    audit.insert("from".into(), json!(scope.since_ms.map(ms_to_rfc3339)));
    audit.insert("to".into(), json!(scope.until_ms.map(ms_to_rfc3339)));
    let asked = Asked::new(&caller, report.name(), "", Value::Object(audit), "json");
    let timer = Instant::now();
    let integrity = &s.integrity;
    // The asked record is written while the chains are read.
    let result = crate::export::audited(&s, &asked, "answering", async {
        let _permit = integrity.slot().await?;
        verify::verify(integrity.verifier(), &scope, integrity.jwks())
            .await
            .map_err(|e| match e {
                VerifyError::ClickHouse(e) => ApiError::ClickHouse(e),
            })
    })
    .await?;
    let chains: Vec<ChainResult> = result.chains.iter().map(chain_result).collect();
    let answer = VerifyAnswer {
        report: report.name().to_owned(),
        query_id: asked.query_id.clone(),
        topic: scope.topic.clone(),
        partition: scope.partition,
        from: scope.since_ms.map(ms_to_rfc3339),
        to: scope.until_ms.map(ms_to_rfc3339),
        clean: result.clean,
        records: chains.iter().map(|c| c.records).sum(),
        jwks_configured: integrity.jwks().is_some(),
        chains,
    };
    s.audit
        .submit(&asked.record("answered", answer.chains.len() as u64))
        .await;
    metrics::histogram!("custos_query_report_seconds", "report" => report.name())
        .record(timer.elapsed().as_secs_f64());
    if !answer.clean {
        metrics::counter!("custos_query_integrity_breaks_total").increment(1);
        tracing::warn!(query_id = %answer.query_id, "integrity verification found breaks");
    }
    Ok(Json(answer).into_response())
}

// ------------------------------------------------------------------------ proof

/// Parameters of `/v1/integrity/proof` (exactly one of `event_id`, `event_key`).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProofParams {
    /// Producer event id (CloudEvents `id`, Keycloak `id`, AuditEvent `id`), looked up in `tenant`.
    pub event_id: Option<String>,
    /// Event identity (32 hex digits), as reports show it.
    pub event_key: Option<String>,
    /// Tenant (default: `CUSTOS_DEFAULT_TENANT`; with `event_key` only when given).
    pub tenant: Option<String>,
}

/// A neighbour of a record in its chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Link {
    /// Kafka offset.
    pub kafka_offset: i64,
    /// Its event identity.
    pub event_key: String,
    /// Offset of its predecessor.
    pub chain_prev_offset: i64,
    /// Its hash (64 hex digits).
    #[serde(with = "custos_integrity::chain::hash_serde")]
    #[schema(value_type = String)]
    pub record_hash: Hash,
}

impl From<proof::Link> for Link {
    fn from(l: proof::Link) -> Link {
        Link {
            kafka_offset: l.kafka_offset,
            event_key: l.event_key,
            chain_prev_offset: l.chain_prev_offset,
            record_hash: l.record_hash,
        }
    }
}

/// The covering checkpoint of a proof.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProofCheckpoint {
    /// Compact JWS (ES256) over the claims: verify it against the JWKS.
    pub jws: String,
    /// Key id.
    pub kid: String,
    /// The signed claims (decoded from the JWS payload).
    #[schema(value_type = Object)]
    pub claims: Option<Checkpoint>,
    /// Whether the signature verified against the served JWKS (none without a JWKS).
    pub signature_valid: Option<bool>,
    /// When it was signed (RFC 3339).
    pub created_at: String,
}

impl From<proof::CoveringCheckpoint> for ProofCheckpoint {
    fn from(cp: proof::CoveringCheckpoint) -> ProofCheckpoint {
        ProofCheckpoint {
            jws: cp.row.jws,
            kid: cp.row.kid,
            claims: cp.claims,
            signature_valid: cp.signature_valid,
            created_at: ms_to_rfc3339(cp.row.created_at),
        }
    }
}

/// What the service itself found when checking the proof (an outside party repeats it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProofChecks {
    /// The record's content after its predecessor's hash (genesis for a chain's first
    /// record) hashes to its `record_hash`; false when the predecessor is not stored.
    pub record_hash_valid: bool,
    /// The predecessor the record names is stored (always for a chain's first record);
    /// none when it is not.
    pub previous_link_valid: Option<bool>,
    /// Every path record hashes correctly and links to the one before it.
    pub path_valid: Option<bool>,
    /// The last hash of the path is the checkpoint's signed head hash.
    pub head_matches_checkpoint: Option<bool>,
    /// The checkpoint signature verified.
    pub signature_valid: Option<bool>,
    /// All of the above hold: the record is in the signed log.
    pub verified: bool,
}

impl From<proof::ProofChecks> for ProofChecks {
    fn from(c: proof::ProofChecks) -> ProofChecks {
        ProofChecks {
            record_hash_valid: c.record_hash_valid,
            previous_link_valid: c.previous_link_valid,
            path_valid: c.path_valid,
            head_matches_checkpoint: c.head_matches_checkpoint,
            signature_valid: c.signature_valid,
            verified: c.verified,
        }
    }
}

/// Answer of `/v1/integrity/proof`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProofAnswer {
    /// `integrity-proof`.
    pub report: String,
    /// Id of the query-audit record.
    pub query_id: String,
    /// `topic/partition`.
    pub chain: String,
    /// `covered` (path to a signed head included), `pending` (no checkpoint covers the
    /// record yet), `beyond_limit` (the head is more than `CUSTOS_QUERY_PROOF_MAX_RECORDS`
    /// records away) or `unchained` (stored without a hash chain).
    pub status: String,
    /// Hash construction (`custos-chain-v1`).
    pub hash_algorithm: String,
    /// The record as stored (pseudonymized values; times in ms since the epoch).
    #[schema(value_type = Object)]
    pub record: AuditRow,
    /// Its predecessor in the chain (none for the first record or when not stored).
    pub previous: Option<Link>,
    /// Its successor in the chain (none for the current head).
    pub next: Option<Link>,
    /// The chained records after it, in offset order, up to and including the checkpoint
    /// head (empty when the record is the head or the status is not `covered`).
    #[schema(value_type = Vec<Object>)]
    pub path: Vec<AuditRow>,
    /// The covering signed checkpoint.
    pub checkpoint: Option<ProofCheckpoint>,
    /// URL of the checkpoint JWKS.
    pub jwks_uri: String,
    /// The service's own check.
    pub checks: ProofChecks,
}

impl ProofAnswer {
    /// The answer for `proof`, recorded as `query_id`.
    fn new(proof: Proof, query_id: String, jwks_uri: String) -> ProofAnswer {
        ProofAnswer {
            report: Report::IntegrityProof.name().to_owned(),
            query_id,
            chain: proof.chain,
            status: proof.status.as_str().to_owned(),
            hash_algorithm: HASH_ALGORITHM.into(),
            record: proof.record,
            previous: proof.previous.map(Link::from),
            next: proof.next.map(Link::from),
            path: proof.path,
            checkpoint: proof.checkpoint.map(ProofCheckpoint::from),
            jwks_uri,
            checks: proof.checks.into(),
        }
    }
}

/// Validates the proof parameters: the lookup, the tenant to record (the one named, else
/// the default tenant for an event id, else empty until the record is found) and the
/// parameters to record.
fn proof_lookup(s: &AppState, p: &ProofParams) -> Result<(Lookup, String, Value), ApiError> {
    let event_id = params::ident("event_id", p.event_id.as_deref())?;
    if let Some(t) = &p.tenant {
        if !valid_tenant(t) {
            return Err(ApiError::bad(
                "tenant must be 1-64 characters of A-Z a-z 0-9 . _ -",
            ));
        }
    }
    match (event_id, p.event_key.as_deref()) {
        (Some(id), None) => {
            let tenant = p
                .tenant
                .clone()
                .unwrap_or_else(|| s.settings.limits.default_tenant.clone());
            let params = json!({"event_id": id, "tenant": tenant});
            let lookup = Lookup::EventId {
                tenant: tenant.clone(),
                id,
            };
            Ok((lookup, tenant, params))
        }
        (None, Some(key)) => {
            if !params::is_key(key) {
                return Err(ApiError::bad("event_key must be 32 lowercase hex digits"));
            }
            let params = json!({"event_key": key, "tenant": p.tenant});
            let lookup = Lookup::EventKey {
                key: key.to_owned(),
                tenant: p.tenant.clone(),
            };
            Ok((lookup, p.tenant.clone().unwrap_or_default(), params))
        }
        _ => Err(ApiError::bad(
            "exactly one of event_id, event_key is required",
        )),
    }
}

impl From<ProofError> for ApiError {
    fn from(e: ProofError) -> ApiError {
        match e {
            ProofError::ClickHouse(e) => ApiError::ClickHouse(e),
            ProofError::Ambiguous => ApiError::bad(e.to_string()),
        }
    }
}

/// A record, its chain neighbours, the records up to the covering signed checkpoint head
/// and that checkpoint: everything an outside party needs to check that the record
/// belongs to the log (auditors only).
#[utoipa::path(get, path = "/v1/integrity/proof", params(ProofParams),
    responses((status = 200, body = ProofAnswer), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem)),
    security(("bearer" = [])), tag = "integrity")]
pub async fn proof(
    State(s): State<AppState>,
    caller: Caller,
    ValidQuery(p): ValidQuery<ProofParams>,
) -> Result<Response, ApiError> {
    let report = Report::IntegrityProof;
    authorize(&s, &caller, report)?;
    // Chains span every tenant of a partition: tenant-bound tokens may not read them.
    all_tenants(&caller)?;
    let timer = Instant::now();
    let (lookup, tenant, audit_params) = proof_lookup(&s, &p)?;
    let asked = Asked::new(&caller, report.name(), &tenant, audit_params, "json");
    let jwks_uri = format!("{}{JWKS_PATH}", s.settings.public_url.trim_end_matches('/'));
    // The record and the chain around it are read only while the asked record is written:
    // no acknowledged record, no answer.
    let integrity = &s.integrity;
    let found = crate::export::audited(&s, &asked, "answering", async {
        let Some(record) = proof::find_record(&s.reader, &lookup).await? else {
            return Ok(None);
        };
        let proof = proof::prove(
            &s.reader,
            record,
            integrity.jwks(),
            integrity.proof_max_records,
        )
        .await?;
        Ok(Some(proof))
    })
    .await?;
    let Some(proof) = found else {
        s.audit.submit(&asked.record("answered", 0)).await;
        return Err(ApiError::NotFound);
    };
    let answer = ProofAnswer::new(proof, asked.query_id.clone(), jwks_uri);
    let asked = asked.with_tenant(&answer.record.tenant);
    s.audit
        .submit(&asked.record("answered", 1 + answer.path.len() as u64))
        .await;
    metrics::histogram!("custos_query_report_seconds", "report" => report.name())
        .record(timer.elapsed().as_secs_f64());
    Ok(Json(answer).into_response())
}

// ------------------------------------------------------------------------ JWKS

/// The checkpoint public keys (no authentication: public key material only).
#[utoipa::path(get, path = "/.well-known/custos-checkpoint-jwks.json",
    responses((status = 200, description = "JWKS of the checkpoint signing keys", body = Object),
        (status = 404, body = Problem)),
    tag = "integrity")]
pub async fn checkpoint_jwks(State(s): State<AppState>) -> Result<Response, ApiError> {
    let jwks = s.integrity.jwks().ok_or(ApiError::NotFound)?;
    let mut resp = Json(jwks.clone()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(resp)
}

/// Proof and JWKS routes (under the API's request timeout).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/integrity/proof", get(proof))
        .route("/v1/integrity/jwks", get(checkpoint_jwks))
        .route(JWKS_PATH, get(checkpoint_jwks))
}

/// The verify route, with its own (longer) timeout.
pub fn verify_router(timeout: Duration) -> Router<AppState> {
    Router::new()
        .route("/v1/integrity/verify", get(verify_chains))
        .route("/v1/integrity/ledger", get(crate::ledger::verify_ledger))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            timeout,
        ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_integrity::chain::Finding;

    #[test]
    fn event_ids_come_from_the_verifier_findings() {
        let altered = Finding::Altered {
            chain: "t/0".into(),
            offset: 7,
            event_id: "ev (7)".into(),
        };
        assert_eq!(event_id_of(&altered.to_string()).as_deref(), Some("ev (7)"));
        let missing = Finding::Missing {
            chain: "t/0".into(),
            offset: 3,
            referenced_by: 5,
        };
        assert_eq!(event_id_of(&missing.to_string()), None);
    }

    #[test]
    fn jwks_file_must_be_public_p256() {
        let ok = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"ck1","x":"AA","y":"BB","extra":1}]}"#;
        let v = public_jwks(ok).expect("public jwks");
        assert_eq!(v["keys"][0]["kid"], "ck1");
        assert!(v["keys"][0].get("extra").is_none());
        let private =
            r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"ck1","x":"AA","y":"BB","d":"CC"}]}"#;
        assert!(public_jwks(private).is_err());
        assert!(public_jwks(r#"{"keys":[]}"#).is_err());
        assert!(public_jwks(r#"{"keys":[{"kty":"RSA","kid":"r","n":"x","e":"AQAB"}]}"#).is_err());
        assert!(public_jwks("not json").is_err());
    }
}
