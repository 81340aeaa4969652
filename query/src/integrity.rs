//! Tamper evidence for auditors (issue 6): chain verification, membership proofs and the
//! checkpoint public keys.
//!
//! - `GET /v1/integrity/verify` runs the very verification of `custos-ingest verify`
//!   ([`custos_integrity::verify::verify`]) over ClickHouse as the read-only account and
//!   answers its report, with the first broken link of each chain by offset and event id.
//! - `GET /v1/integrity/proof` answers one record as stored (pseudonymized values only),
//!   its chain neighbours, every chained record from it up to the head of the covering
//!   signed checkpoint (at most `CUSTOS_QUERY_PROOF_MAX_RECORDS`), and that checkpoint's JWS.
//!   An outside party checks membership without trusting this service: recompute
//!   `record_hash` of the record from its content and its predecessor's hash (the
//!   `previous` link's `record_hash`, or 32 zero bytes for a chain's first record), then of
//!   each following record from its content and the hash before it
//!   ([`custos_schemas::chain::record_hash`]), check each links to the offset before it, that
//!   the last hash is the checkpoint's signed `head_hash`, and the JWS against the JWKS. The whole records of the path are needed: SHA-256 binds a record's
//!   hash to its predecessor's only through the record's full content, so a list of bare
//!   hashes would prove nothing.
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
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use custos_integrity::checkpoints::CheckpointRow;
use custos_integrity::verify::{self, ChainReport, Scope, VerifyError};
use custos_schemas::chain::{self, chain_id, record_hash, Hash, GENESIS};
use custos_schemas::checkpoint::{self, Checkpoint};
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
/// Hash construction of the chain (see [`custos_schemas::chain::record_hash`]).
pub const HASH_ALGORITHM: &str = "custos-chain-v1";
/// Checkpoints considered when looking for the one covering a record.
const CHECKPOINT_CANDIDATES: u64 = 10;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row, ToSchema)]
pub struct Link {
    /// Kafka offset.
    pub kafka_offset: i64,
    /// Its event identity.
    pub event_key: String,
    /// Offset of its predecessor.
    pub chain_prev_offset: i64,
    /// Its hash (64 hex digits).
    #[serde(with = "custos_schemas::chain::hash_serde")]
    #[schema(value_type = String)]
    pub record_hash: Hash,
}

impl From<&AuditRow> for Link {
    fn from(r: &AuditRow) -> Link {
        Link {
            kafka_offset: r.kafka_offset,
            event_key: r.event_key.clone(),
            chain_prev_offset: r.chain_prev_offset,
            record_hash: r.record_hash,
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

/// Decodes the claims of a JWS without checking the signature.
fn unverified_claims(jws: &str) -> Option<Checkpoint> {
    let payload = jws.split('.').nth(1)?;
    serde_json::from_slice(&B64.decode(payload).ok()?).ok()
}

/// Checks a proof as an outside party would: `record` after its predecessor's hash
/// `prev_hash` ([`GENESIS`] for a chain's first record), then each `path` record, hash
/// correctly and link in order, and the last hash is `claims.head_hash`.
pub fn check_path(
    record: &AuditRow,
    prev_hash: &Hash,
    path: &[AuditRow],
    claims: &Checkpoint,
) -> (bool, bool, bool) {
    let record_ok = record_hash(prev_hash, record) == record.record_hash;
    let mut prev = (record.kafka_offset, &record.record_hash);
    let mut path_ok = true;
    for r in path {
        if r.chain_prev_offset != prev.0 || record_hash(prev.1, r) != r.record_hash {
            path_ok = false;
        }
        prev = (r.kafka_offset, &r.record_hash);
    }
    // The signed head authenticates every record the path links back from it.
    let same_chain = claims.topic == record.kafka_topic
        && claims.partition == record.kafka_partition
        && prev.0 == claims.last_offset;
    let head_ok = same_chain && chain::to_hex(prev.1) == claims.head_hash;
    (record_ok, path_ok, head_ok)
}

/// How a proof's record is looked up (validated parameters).
enum Lookup {
    /// By producer event id within a tenant.
    EventId { tenant: String, id: String },
    /// By event key, optionally within a tenant.
    EventKey { key: String, tenant: Option<String> },
}

impl Lookup {
    /// Validates the parameters: the lookup, the tenant to record (the one named, else the
    /// default tenant for an event id, else empty until the record is found) and the
    /// parameters to record.
    fn parse(s: &AppState, p: &ProofParams) -> Result<(Lookup, String, Value), ApiError> {
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
                Ok((
                    Lookup::EventId {
                        tenant: tenant.clone(),
                        id,
                    },
                    tenant,
                    params,
                ))
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

    /// Reads the record (at most one; several are a 400).
    async fn fetch(&self, s: &AppState) -> Result<Option<AuditRow>, ApiError> {
        let mut rows: Vec<AuditRow> = match self {
            Lookup::EventId { tenant, id } => {
                s.reader
                    .query(
                        "SELECT ?fields FROM custos.audit_events FINAL \
                         WHERE tenant = ? AND event_id = ? ORDER BY event_key LIMIT 2",
                    )
                    .bind(tenant)
                    .bind(id)
                    .fetch_all()
                    .await?
            }
            Lookup::EventKey { key, tenant } => {
                let t = tenant.as_deref().unwrap_or("");
                s.reader
                    .query(
                        "SELECT ?fields FROM custos.audit_events FINAL \
                         WHERE event_key = ? AND (? = '' OR tenant = ?) ORDER BY tenant LIMIT 2",
                    )
                    .bind(key)
                    .bind(t)
                    .bind(t)
                    .fetch_all()
                    .await?
            }
        };
        if rows.len() > 1 {
            return Err(ApiError::bad(
                "the event id names several records (different sources); ask by event_key",
            ));
        }
        Ok(rows.pop())
    }
}

/// Picks the covering checkpoint: the first (lowest head) whose signature verifies and
/// whose signed claims match its stored columns; without a JWKS, the first.
fn pick_checkpoint(
    candidates: Vec<CheckpointRow>,
    jwks: Option<&Value>,
) -> Option<(CheckpointRow, Option<Checkpoint>, Option<bool>)> {
    let Some(jwks) = jwks else {
        let first = candidates.into_iter().next()?;
        let claims = unverified_claims(&first.jws);
        return Some((first, claims, None));
    };
    let mut fallback = None;
    for cp in candidates {
        match checkpoint::verify(&cp.jws, jwks) {
            Ok(c)
                if c.topic == cp.kafka_topic
                    && c.partition == cp.kafka_partition
                    && c.last_offset == cp.last_offset
                    && c.head_hash == cp.head_hash =>
            {
                return Some((cp, Some(c), Some(true)));
            }
            _ => {
                if fallback.is_none() {
                    let claims = unverified_claims(&cp.jws);
                    fallback = Some((cp, claims, Some(false)));
                }
            }
        }
    }
    fallback
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
    let (lookup, tenant, audit_params) = Lookup::parse(&s, &p)?;
    let asked = Asked::new(&caller, report.name(), &tenant, audit_params, "json");
    let jwks_uri = format!("{}{JWKS_PATH}", s.settings.public_url.trim_end_matches('/'));
    // The record and the chain around it are read only while the asked record is written:
    // no acknowledged record, no answer.
    let found = crate::export::audited(&s, &asked, "answering", async {
        let Some(record) = lookup.fetch(&s).await? else {
            return Ok(None);
        };
        let topic = record.kafka_topic.clone();
        let partition = record.kafka_partition;
        let offset = record.kafka_offset;
        let mut answer = ProofAnswer {
            report: report.name().to_owned(),
            query_id: asked.query_id.clone(),
            chain: chain_id(&topic, partition),
            status: "unchained".into(),
            hash_algorithm: HASH_ALGORITHM.into(),
            record,
            previous: None,
            next: None,
            path: Vec::new(),
            checkpoint: None,
            jwks_uri,
            checks: ProofChecks::default(),
        };
        if answer.record.record_hash != GENESIS {
            fill_proof(&s, &mut answer, &topic, partition, offset).await?;
        }
        Ok(Some(answer))
    })
    .await?;
    let Some(answer) = found else {
        s.audit.submit(&asked.record("answered", 0)).await;
        return Err(ApiError::NotFound);
    };
    let asked = asked.with_tenant(&answer.record.tenant);
    s.audit
        .submit(&asked.record("answered", 1 + answer.path.len() as u64))
        .await;
    metrics::histogram!("custos_query_report_seconds", "report" => report.name())
        .record(timer.elapsed().as_secs_f64());
    Ok(Json(answer).into_response())
}

async fn fill_proof(
    s: &AppState,
    answer: &mut ProofAnswer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(), ApiError> {
    let record = &answer.record;
    let mut checks = ProofChecks::default();
    // The predecessor's hash the record was linked after (none when it is not stored).
    let prev_hash = if record.chain_prev_offset < 0 {
        checks.previous_link_valid = Some(true);
        Some(GENESIS)
    } else {
        let prev: Option<Link> = s
            .reader
            .query(
                "SELECT ?fields FROM custos.audit_events FINAL \
                 WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset = ? \
                   AND record_hash != '' ORDER BY event_key LIMIT 1",
            )
            .bind(topic)
            .bind(partition)
            .bind(record.chain_prev_offset)
            .fetch_optional()
            .await?;
        checks.previous_link_valid = prev.as_ref().map(|_| true);
        let hash = prev.as_ref().map(|l| l.record_hash);
        answer.previous = prev;
        hash
    };
    checks.record_hash_valid =
        prev_hash.is_some_and(|p| record_hash(&p, &answer.record) == answer.record.record_hash);

    let candidates: Vec<CheckpointRow> = s
        .reader
        .query(
            "SELECT ?fields FROM custos.chain_checkpoints FINAL \
             WHERE kafka_topic = ? AND kafka_partition = ? AND last_offset >= ? \
             ORDER BY last_offset LIMIT ?",
        )
        .bind(topic)
        .bind(partition)
        .bind(offset)
        .bind(CHECKPOINT_CANDIDATES)
        .fetch_all()
        .await?;
    let picked = pick_checkpoint(candidates, s.integrity.jwks());
    let max = s.integrity.proof_max_records;
    match picked {
        None => {
            answer.status = "pending".into();
            answer.next = s
                .reader
                .query(
                    "SELECT ?fields FROM custos.audit_events FINAL \
                     WHERE kafka_topic = ? AND kafka_partition = ? AND record_hash != '' \
                       AND kafka_offset > ? ORDER BY kafka_offset, event_key LIMIT 1",
                )
                .bind(topic)
                .bind(partition)
                .bind(offset)
                .fetch_optional::<Link>()
                .await?;
        }
        Some((cp, claims, signature_valid)) => {
            let head = claims.as_ref().map_or(cp.last_offset, |c| c.last_offset);
            let mut path: Vec<AuditRow> = s
                .reader
                .query(
                    "SELECT ?fields FROM custos.audit_events FINAL \
                     WHERE kafka_topic = ? AND kafka_partition = ? AND record_hash != '' \
                       AND kafka_offset > ? AND kafka_offset <= ? \
                     ORDER BY kafka_offset, event_key LIMIT ?",
                )
                .bind(topic)
                .bind(partition)
                .bind(offset)
                .bind(head)
                .bind(max + 1)
                .fetch_all()
                .await?;
            answer.next = path.first().map(Link::from);
            if path.len() as u64 > max {
                answer.status = "beyond_limit".into();
                path.clear();
            } else {
                answer.status = "covered".into();
                if let Some(c) = &claims {
                    let (_, path_ok, head_ok) =
                        check_path(&answer.record, &prev_hash.unwrap_or(GENESIS), &path, c);
                    checks.path_valid = Some(path_ok);
                    checks.head_matches_checkpoint = Some(head_ok);
                }
                answer.path = path;
            }
            checks.signature_valid = signature_valid;
            answer.checkpoint = Some(ProofCheckpoint {
                jws: cp.jws,
                kid: cp.kid,
                claims,
                signature_valid,
                created_at: ms_to_rfc3339(cp.created_at),
            });
        }
    }
    checks.verified = checks.record_hash_valid
        && checks.path_valid == Some(true)
        && checks.head_matches_checkpoint == Some(true)
        && checks.signature_valid == Some(true);
    answer.checks = checks;
    Ok(())
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
    use custos_schemas::chain::{link, Finding};

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

    fn chain(n: i64) -> Vec<AuditRow> {
        let mut head = None;
        (0..n)
            .map(|o| {
                let mut r = AuditRow {
                    event_key: format!("k{o}"),
                    event_id: format!("e{o}"),
                    kafka_topic: "t".into(),
                    kafka_offset: o,
                    ..AuditRow::default()
                };
                head = Some(link(&mut r, head.as_ref()));
                r
            })
            .collect()
    }

    fn claims(rows: &[AuditRow]) -> Checkpoint {
        let last = rows.last().expect("rows");
        Checkpoint {
            topic: "t".into(),
            partition: 0,
            first_offset: 0,
            last_offset: last.kafka_offset,
            count: rows.len() as u64,
            head_hash: chain::to_hex(&last.record_hash),
            first_time: 0,
            last_time: 0,
            iat: 0,
        }
    }

    #[test]
    fn paths_verify_and_tampering_is_caught() {
        let rows = chain(6);
        let c = claims(&rows);
        let p1 = rows[1].record_hash;
        assert_eq!(
            check_path(&rows[2], &p1, &rows[3..], &c),
            (true, true, true)
        );
        assert_eq!(
            check_path(&rows[5], &rows[4].record_hash, &[], &c),
            (true, true, true)
        );
        assert_eq!(
            check_path(&rows[0], &GENESIS, &rows[1..], &c),
            (true, true, true)
        );
        let mut altered = rows.clone();
        altered[2].user_agent = "edited".into();
        assert!(!check_path(&altered[2], &p1, &altered[3..], &c).0);
        // The wrong predecessor hash does not verify the record.
        assert!(!check_path(&rows[2], &rows[0].record_hash, &rows[3..], &c).0);
        altered = rows.clone();
        altered[4].user_agent = "edited".into();
        assert!(!check_path(&altered[2], &p1, &altered[3..], &c).1);
        // A truncated path does not reach the head.
        assert!(!check_path(&rows[2], &p1, &rows[3..5], &c).2);
        // Another chain's checkpoint does not cover it.
        let mut other = c.clone();
        other.topic = "u".into();
        assert!(!check_path(&rows[2], &p1, &rows[3..], &other).2);
    }
}
