//! Independent verification of the hash chains and their signed checkpoints, from
//! ClickHouse (plus the JWKS of the checkpoint keys and, optionally, the checkpoints' copy
//! outside the database: the checkpoint topic or an auditor's anchor file). Reports the first
//! broken link of each chain by position and event id. Used by `custos-ingest verify` and
//! the query API's `GET /v1/integrity/verify`.
//!
//! **Retention.** The TTL removes the oldest records of a chain. A record may be gone without
//! a break only when a verified checkpoint covers its position and holds records older than
//! the retention horizon ([`Scope::retention_horizon_ms`]); the gap is then reported as a
//! [`PrunedRange`] naming that checkpoint, and verification resumes at the next remaining
//! record, checked against the checkpoint's signed head when the checkpoint ends right
//! before it. A gap no such checkpoint covers (a deleted prefix without its checkpoints, or
//! records younger than the horizon) stays `missing`.
//!
//! **Checkpoints outside the database.** Checkpoints read from the topic or an anchor file
//! must be in `custos.chain_checkpoints` (`checkpoint_missing_from_store`), and the stored
//! records must reach each one's head (`truncated`), so deleting a chain's tail or a whole
//! chain together with its checkpoint rows is found.

use std::collections::{BTreeMap, BTreeSet};

use crate::chain::{self, chain_id, collapsed_copy, Finding, Verifier};
use crate::checkpoint;
use clickhouse::Client;
use custos_schemas::AuditRow;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::checkpoints::{CheckpointRow, ExternalCheckpoint};

/// Verification failures (not findings: those are in the [`Report`]).
#[derive(Debug, Error)]
pub enum VerifyError {
    /// ClickHouse refused or could not be reached.
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Only this topic.
    pub topic: Option<String>,
    /// Only this partition (with `topic`).
    pub partition: Option<i32>,
    /// Only records with event time at or after this (ms); the chain is then checked over
    /// the offset range those records span, anchored at its first record.
    pub since_ms: Option<i64>,
    /// Only records with event time before this (ms).
    pub until_ms: Option<i64>,
    /// Retention horizon (ms): records with an event time before it may have been removed
    /// by the TTL. `None`: no record may be missing.
    pub retention_horizon_ms: Option<i64>,
}

/// A problem with a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointFinding {
    /// Chain.
    pub chain: String,
    /// Head offset the checkpoint claims.
    pub last_offset: i64,
    /// What is wrong.
    pub problem: String,
    /// Kind code: `unverifiable`, `signature`, `columns_differ`, `head_missing`,
    /// `head_differs`, `count_differs`, `checkpoint_missing_from_store`,
    /// `checkpoint_differs`.
    pub kind: String,
    /// First offset the checkpoint covers.
    pub first_offset: i64,
    /// Where the checkpoint was read (`store`, `topic T partition P offset O`,
    /// `anchor file F item N`).
    pub source: String,
}

/// Records gone by retention: a gap inside a verified checkpoint holding records older than
/// the retention horizon. Not a break.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrunedRange {
    /// Chain.
    pub chain: String,
    /// First offset gone (`None`: from the start of the chain).
    pub from_offset: Option<i64>,
    /// Last offset gone.
    pub to_offset: i64,
    /// First remaining record after the gap (`None`: nothing remains after it).
    pub resumed_at: Option<i64>,
    /// First offset of the checkpoint that covers `to_offset`.
    pub checkpoint_first_offset: i64,
    /// Head offset of that checkpoint.
    pub checkpoint_last_offset: i64,
    /// Where that checkpoint was read.
    pub checkpoint_source: String,
    /// Whether the checkpoint ends at `to_offset`, so the record at `resumed_at` was checked
    /// against its signed head (otherwise that one record's own hash cannot be recomputed;
    /// its successors' links to it still are).
    pub anchored: bool,
}

/// A checkpoint read outside the database that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExternalFinding {
    /// Where it was read.
    pub source: String,
    /// What is wrong.
    pub problem: String,
}

/// One chain's result.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    /// `topic/partition`.
    pub chain: String,
    /// Records checked.
    pub records: u64,
    /// First offset checked.
    pub first_offset: Option<i64>,
    /// Last offset checked.
    pub last_offset: Option<i64>,
    /// Breaks, in chain order (the first is the first broken link).
    pub findings: Vec<FindingView>,
    /// Checkpoints whose signature and head verified.
    pub checkpoints_ok: u64,
    /// Checkpoint problems.
    pub checkpoint_findings: Vec<CheckpointFinding>,
    /// Positions whose record is gone but proven to be a copy of an event stored at another
    /// position (a producer re-send collapsed by deduplication): not breaks.
    pub collapsed_duplicates: Vec<CollapsedView>,
    /// Records ClickHouse refused after they were chained, proven from the copy kept with
    /// their rejection (`store_refused` in `custos.ingest_rejections`): not breaks.
    pub store_refused: Vec<RefusedView>,
    /// Ranges removed by retention (not breaks).
    pub pruned: Vec<PrunedRange>,
    /// Checkpoints whose head record was removed by retention.
    pub checkpoints_pruned: u64,
}

/// A chained record the store refused, kept with its rejection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedView {
    /// Its offset.
    pub offset: i64,
    /// Its event id.
    pub event_id: String,
}

/// The chained record at `offset` that the store refused, from its rejection record.
async fn refused_row(
    client: &Client,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<AuditRow>, VerifyError> {
    let kept: Option<String> = client
        .query(
            "SELECT refused_row FROM custos.ingest_rejections FINAL \
             WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset = ? \
               AND refused_row != '' LIMIT 1",
        )
        .bind(topic)
        .bind(partition)
        .bind(offset)
        .fetch_optional()
        .await?;
    // A copy that does not parse proves nothing: the position then reads as missing.
    Ok(kept.and_then(|json| serde_json::from_str::<AuditRow>(&json).ok()))
}

/// A chain position proven to hold a copy of an event kept at another position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CollapsedView {
    /// The position whose record was collapsed.
    pub offset: i64,
    /// Event id of the event.
    pub event_id: String,
    /// Where the kept copy is (`topic/partition`, offset).
    pub kept_at: String,
    /// Its offset.
    pub kept_offset: i64,
}

/// A serializable view of a [`Finding`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindingView {
    /// Kind code.
    pub kind: String,
    /// Offset.
    pub offset: i64,
    /// Human description.
    pub message: String,
}

impl From<&Finding> for FindingView {
    fn from(f: &Finding) -> Self {
        FindingView {
            kind: f.kind().to_owned(),
            offset: f.position().1,
            message: f.to_string(),
        }
    }
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per chain.
    pub chains: Vec<ChainReport>,
    /// Whether nothing was found.
    pub clean: bool,
    /// The retention horizon applied (ms since the epoch), if any.
    pub retention_horizon_ms: Option<i64>,
    /// Checkpoints read outside the database whose signature verified (in scope).
    pub external_checkpoints: u64,
    /// Checkpoints read outside the database that could not be used.
    pub external_findings: Vec<ExternalFinding>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, clickhouse::Row)]
struct ChainKey {
    kafka_topic: String,
    kafka_partition: i32,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Range {
    lo: i64,
    hi: i64,
    n: u64,
    /// Predecessor offset of the first record in range (-1: it starts the chain).
    lo_prev: i64,
}

/// Verifies every chain in `scope`. Checkpoints are checked against `jwks` when given
/// (without it, every checkpoint is reported as unverifiable).
pub async fn verify(
    client: &Client,
    scope: &Scope,
    jwks: Option<&serde_json::Value>,
) -> Result<Report, VerifyError> {
    verify_with(client, scope, jwks, &[]).await
}

fn in_scope(scope: &Scope, topic: &str, partition: i32) -> bool {
    scope.topic.as_deref().is_none_or(|t| t == topic)
        && scope.partition.is_none_or(|p| p == partition)
}

/// A checkpoint read outside the database, verified: (claims, where it was read).
type Signed = (checkpoint::Checkpoint, String);

/// [`verify`], cross-checked against checkpoints kept outside the database (read from the
/// checkpoint topic or an anchor file): each must be in the store and the store's records
/// must reach its head; they also serve as anchors after retention.
pub async fn verify_with(
    client: &Client,
    scope: &Scope,
    jwks: Option<&serde_json::Value>,
    external: &[ExternalCheckpoint],
) -> Result<Report, VerifyError> {
    let mut external_findings = Vec::new();
    let mut outside: BTreeMap<ChainKey, Vec<Signed>> = BTreeMap::new();
    let mut external_ok = 0;
    match jwks {
        None if !external.is_empty() => external_findings.push(ExternalFinding {
            source: format!("{} checkpoints read outside the database", external.len()),
            problem: "no JWKS given: signatures not checked".to_owned(),
        }),
        None => {}
        Some(jwks) => {
            for e in external {
                match checkpoint::verify(&e.jws, jwks) {
                    Err(err) => external_findings.push(ExternalFinding {
                        source: e.source.clone(),
                        problem: format!("signature: {err}"),
                    }),
                    Ok(c) if in_scope(scope, &c.topic, c.partition) => {
                        external_ok += 1;
                        let key = ChainKey {
                            kafka_topic: c.topic.clone(),
                            kafka_partition: c.partition,
                        };
                        outside.entry(key).or_default().push((c, e.source.clone()));
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    // Chains with records, chains with only checkpoints left, chains known only outside.
    let stored: Vec<ChainKey> = client
        .query(
            "SELECT DISTINCT kafka_topic, kafka_partition FROM custos.audit_events \
             WHERE record_hash != '' AND (? = '' OR kafka_topic = ?) AND (? < 0 OR kafka_partition = ?) \
             UNION DISTINCT \
             SELECT DISTINCT kafka_topic, kafka_partition FROM custos.chain_checkpoints \
             WHERE (? = '' OR kafka_topic = ?) AND (? < 0 OR kafka_partition = ?)",
        )
        .bind(scope.topic.as_deref().unwrap_or(""))
        .bind(scope.topic.as_deref().unwrap_or(""))
        .bind(scope.partition.unwrap_or(-1))
        .bind(scope.partition.unwrap_or(-1))
        .bind(scope.topic.as_deref().unwrap_or(""))
        .bind(scope.topic.as_deref().unwrap_or(""))
        .bind(scope.partition.unwrap_or(-1))
        .bind(scope.partition.unwrap_or(-1))
        .fetch_all()
        .await?;
    let chains: BTreeSet<ChainKey> = stored.into_iter().chain(outside.keys().cloned()).collect();
    let mut reports = Vec::new();
    for c in chains {
        let ext = outside.get(&c).map(Vec::as_slice).unwrap_or_default();
        reports
            .push(verify_chain(client, &c.kafka_topic, c.kafka_partition, scope, jwks, ext).await?);
    }
    let clean = external_findings.is_empty()
        && reports
            .iter()
            .all(|r| r.findings.is_empty() && r.checkpoint_findings.is_empty());
    Ok(Report {
        chains: reports,
        clean,
        retention_horizon_ms: scope.retention_horizon_ms,
        external_checkpoints: external_ok,
        external_findings,
    })
}

/// A verified checkpoint with what the records streamed so far showed of it.
#[derive(Debug)]
struct Claim {
    cp: checkpoint::Checkpoint,
    /// Where it was read.
    source: String,
    /// Records counted in its range.
    counted: u64,
    /// Hash of the record seen at its head offset.
    head: Option<chain::Hash>,
}

/// Verified checkpoints by head offset.
type Claims = BTreeMap<i64, Claim>;

/// The verified checkpoint covering `offset` if it holds records older than the retention
/// horizon: a record missing there may have been removed by retention.
fn prunable(claims: &Claims, horizon_ms: Option<i64>, offset: i64) -> Option<&Claim> {
    let horizon = horizon_ms?;
    let (_, c) = claims.range(offset..).next()?;
    (c.cp.first_offset <= offset && c.cp.first_time < horizon).then_some(c)
}

async fn verify_chain(
    client: &Client,
    topic: &str,
    partition: i32,
    scope: &Scope,
    jwks: Option<&serde_json::Value>,
    outside: &[Signed],
) -> Result<ChainReport, VerifyError> {
    let chain = chain_id(topic, partition);
    let timed = scope.since_ms.is_some() || scope.until_ms.is_some();
    let horizon = scope.retention_horizon_ms;
    let range: Range = client
        .query(
            "SELECT min(kafka_offset) AS lo, max(kafka_offset) AS hi, count() AS n, \
                    argMin(chain_prev_offset, kafka_offset) AS lo_prev FROM custos.audit_events \
             WHERE kafka_topic = ? AND kafka_partition = ? AND record_hash != '' \
               AND event_time >= fromUnixTimestamp64Milli(?) AND event_time < fromUnixTimestamp64Milli(?)",
        )
        .bind(topic)
        .bind(partition)
        .bind(scope.since_ms.unwrap_or(0))
        .bind(scope.until_ms.unwrap_or(i64::MAX / 4))
        .fetch_one()
        .await?;
    let mut report = ChainReport {
        chain: chain.clone(),
        records: 0,
        first_offset: None,
        last_offset: None,
        findings: Vec::new(),
        checkpoints_ok: 0,
        checkpoint_findings: Vec::new(),
        collapsed_duplicates: Vec::new(),
        store_refused: Vec::new(),
        pruned: Vec::new(),
        checkpoints_pruned: 0,
    };
    if range.n == 0 && timed {
        return Ok(report);
    }
    // A timed range also reads the record before its first one, as the anchor its first
    // record's hash is checked against. The whole chain is read otherwise, also when no
    // record is left (its checkpoints then tell what is gone).
    let (lo, hi) = if timed {
        (range.lo.min(range.lo_prev.max(0)), range.hi)
    } else {
        (i64::MIN, i64::MAX)
    };

    // Checkpoints whose head lies in the range: verify signatures first, then collect
    // the hashes and counts they claim while streaming the chain.
    let cps: Vec<CheckpointRow> = client
        .query(
            "SELECT ?fields FROM custos.chain_checkpoints FINAL \
             WHERE kafka_topic = ? AND kafka_partition = ? AND last_offset >= ? AND last_offset <= ? \
             ORDER BY last_offset",
        )
        .bind(topic)
        .bind(partition)
        .bind(lo)
        .bind(hi)
        .fetch_all()
        .await?;
    let mut claims: Claims = BTreeMap::new();
    let mut in_store = BTreeSet::new();
    let finding =
        |kind: &str, first: i64, last: i64, source: &str, problem: String| CheckpointFinding {
            chain: chain.clone(),
            last_offset: last,
            problem,
            kind: kind.to_owned(),
            first_offset: first,
            source: source.to_owned(),
        };
    for cp in &cps {
        in_store.insert(cp.last_offset);
        let problem = match jwks {
            None => Some((
                "unverifiable",
                "no JWKS given: signature not checked".to_owned(),
            )),
            Some(jwks) => match checkpoint::verify(&cp.jws, jwks) {
                Err(e) => Some(("signature", format!("signature: {e}"))),
                Ok(c) => {
                    let row_matches = c.topic == cp.kafka_topic
                        && c.partition == cp.kafka_partition
                        && c.first_offset == cp.first_offset
                        && c.last_offset == cp.last_offset
                        && c.count == cp.record_count
                        && c.head_hash == cp.head_hash;
                    if row_matches {
                        claims.insert(
                            c.last_offset,
                            Claim {
                                cp: c,
                                source: "store".to_owned(),
                                counted: 0,
                                head: None,
                            },
                        );
                        None
                    } else {
                        Some((
                            "columns_differ",
                            "stored columns differ from the signed claims".to_owned(),
                        ))
                    }
                }
            },
        };
        if let Some((kind, problem)) = problem {
            report.checkpoint_findings.push(finding(
                kind,
                cp.first_offset,
                cp.last_offset,
                "store",
                problem,
            ));
        }
    }
    // Checkpoints kept outside the database: each must be in the store too (unless the
    // checkpoint table's former TTL, as long as the audit rows', may have removed it), and
    // they count as claims like the stored ones.
    for (c, source) in outside {
        if c.last_offset < lo || c.last_offset > hi {
            continue;
        }
        let expired = horizon.is_some_and(|h| c.iat.saturating_mul(1000) < h);
        if !in_store.contains(&c.last_offset) && !expired {
            report.checkpoint_findings.push(finding(
                "checkpoint_missing_from_store",
                c.first_offset,
                c.last_offset,
                source,
                format!(
                    "signed checkpoint of offsets {} to {} is not in custos.chain_checkpoints",
                    c.first_offset, c.last_offset
                ),
            ));
        }
        match claims.get(&c.last_offset) {
            Some(have) if have.cp != *c => report.checkpoint_findings.push(finding(
                "checkpoint_differs",
                c.first_offset,
                c.last_offset,
                source,
                format!(
                    "signed checkpoint differs from the one read from {}",
                    have.source
                ),
            )),
            Some(_) => {}
            None => {
                claims.insert(
                    c.last_offset,
                    Claim {
                        cp: c.clone(),
                        source: source.clone(),
                        counted: 0,
                        head: None,
                    },
                );
            }
        }
    }

    let mut by_first: Vec<(i64, i64)> = claims
        .values()
        .map(|c| (c.cp.first_offset, c.cp.last_offset))
        .collect();
    by_first.sort_unstable();
    let mut next_start = 0;
    let mut active: Vec<i64> = Vec::new();
    let mut verifier = Verifier::new(chain.clone(), true);
    let mut cursor = client
        .query(
            "SELECT ?fields FROM custos.audit_events FINAL \
             WHERE kafka_topic = ? AND kafka_partition = ? AND record_hash != '' \
               AND kafka_offset >= ? AND kafka_offset <= ? \
             ORDER BY kafka_offset, event_key",
        )
        .bind(topic)
        .bind(partition)
        .bind(lo)
        .bind(hi)
        .fetch::<AuditRow>()?;
    while let Some(row) = cursor.next().await? {
        if timed && row.kafka_offset < range.lo {
            verifier.anchor(&row);
            continue;
        }
        // A gap before this record: try to prove the missing one is a collapsed duplicate,
        // and if so account for it as present (the verifier and the checkpoints see it).
        let gap = match verifier.head() {
            Some((p_off, _)) => row.chain_prev_offset > p_off,
            None => row.chain_prev_offset >= 0,
        };
        let mut records = vec![];
        // Records the store refused after they were chained are kept, whole, with their
        // rejection (`store_refused`): the chain is proven through them.
        let mut refused = Vec::new();
        if gap {
            let head_offset = verifier.head().map_or(-1, |(o, _)| o);
            let mut want = row.chain_prev_offset;
            while want > head_offset {
                let Some(r) = refused_row(client, topic, partition, want).await? else {
                    break;
                };
                want = r.chain_prev_offset;
                refused.push(r);
            }
            refused.reverse();
        }
        for r in &refused {
            report.store_refused.push(RefusedView {
                offset: r.kafka_offset,
                event_id: r.event_id.clone(),
            });
        }
        let gap = gap && refused.is_empty();
        records.extend(refused);
        if gap && !row.prev_event_key.is_empty() {
            let pred = verifier.head().map(|(o, h)| (o, *h));
            let survivor: Option<AuditRow> = client
                .query(
                    "SELECT ?fields FROM custos.audit_events FINAL \
                     WHERE event_key = ? AND record_hash != '' LIMIT 1",
                )
                .bind(&row.prev_event_key)
                .fetch_optional()
                .await?;
            if let Some(kept) = survivor {
                let pred_ref = pred.as_ref().map(|(o, h)| (*o, h));
                if let Some(copy) = collapsed_copy(
                    &kept,
                    topic,
                    partition,
                    row.chain_prev_offset,
                    pred_ref,
                    &row,
                ) {
                    report.collapsed_duplicates.push(CollapsedView {
                        offset: copy.kafka_offset,
                        event_id: kept.event_id.clone(),
                        kept_at: chain_id(&kept.kafka_topic, kept.kafka_partition),
                        kept_offset: kept.kafka_offset,
                    });
                    records.push(copy);
                }
            }
        }
        // Not a copy: removed by retention when a checkpoint with records older than the
        // horizon covers the missing position. Resume there, from the checkpoint's signed
        // head when it ends at that position.
        if gap && records.is_empty() {
            let gone = row.chain_prev_offset;
            if let Some(cover) = prunable(&claims, horizon, gone) {
                let anchor = (cover.cp.last_offset == gone)
                    .then(|| chain::from_hex(&cover.cp.head_hash))
                    .flatten()
                    .map(|h| (gone, h));
                report.pruned.push(PrunedRange {
                    chain: chain.clone(),
                    from_offset: verifier.head().map(|(o, _)| o + 1),
                    to_offset: gone,
                    resumed_at: Some(row.kafka_offset),
                    checkpoint_first_offset: cover.cp.first_offset,
                    checkpoint_last_offset: cover.cp.last_offset,
                    checkpoint_source: cover.source.clone(),
                    anchored: anchor.is_some(),
                });
                verifier.resume(anchor);
            }
        }
        records.push(row);
        for row in records {
            account(
                &mut report,
                &mut verifier,
                &row,
                &by_first,
                &mut next_start,
                &mut active,
                &mut claims,
            );
        }
    }
    report.records = verifier.checked;
    report.findings = verifier.findings.iter().map(FindingView::from).collect();
    // The stored records must reach the last signed head (a deleted tail, or a whole chain
    // deleted, with or without its checkpoint rows).
    if !timed {
        if let Some((&signed_last, _)) = claims.iter().next_back() {
            if report.last_offset.is_none_or(|l| l < signed_last) {
                let from = report.last_offset.map_or_else(
                    || {
                        claims
                            .values()
                            .map(|c| c.cp.first_offset)
                            .min()
                            .unwrap_or(0)
                    },
                    |l| l + 1,
                );
                match prunable(&claims, horizon, signed_last) {
                    Some(cover) => report.pruned.push(PrunedRange {
                        chain: chain.clone(),
                        from_offset: Some(from),
                        to_offset: signed_last,
                        resumed_at: None,
                        checkpoint_first_offset: cover.cp.first_offset,
                        checkpoint_last_offset: cover.cp.last_offset,
                        checkpoint_source: cover.source.clone(),
                        anchored: false,
                    }),
                    None => report.findings.push(FindingView {
                        kind: "truncated".to_owned(),
                        offset: from,
                        message: format!(
                            "{chain} offsets {from} to {signed_last}: records gone up to the \
                             signed head at offset {signed_last}"
                        ),
                    }),
                }
            }
        }
    }
    for (last, c) in &claims {
        // A checkpoint with records older than the horizon may have lost any of them.
        let may_be_pruned = horizon.is_some_and(|h| c.cp.first_time < h);
        let problem = match c.head {
            None if may_be_pruned => {
                report.checkpoints_pruned += 1;
                continue;
            }
            None => Some(("head_missing", "head record missing".to_owned())),
            Some(h) if chain::to_hex(&h) != c.cp.head_hash => Some((
                "head_differs",
                "head hash differs from the signed one".to_owned(),
            )),
            Some(_) if c.counted < c.cp.count && may_be_pruned => None,
            Some(_) if c.counted != c.cp.count => Some((
                "count_differs",
                format!("{} records in range, {} signed", c.counted, c.cp.count),
            )),
            Some(_) => None,
        };
        match problem {
            Some((kind, problem)) => report.checkpoint_findings.push(finding(
                kind,
                c.cp.first_offset,
                *last,
                &c.source,
                problem,
            )),
            None => report.checkpoints_ok += 1,
        }
    }
    Ok(report)
}

/// Feeds one record (stored, or a proven collapsed copy) to the verifier and to the
/// checkpoints covering its offset.
fn account(
    report: &mut ChainReport,
    verifier: &mut Verifier,
    row: &AuditRow,
    by_first: &[(i64, i64)],
    next_start: &mut usize,
    active: &mut Vec<i64>,
    claims: &mut Claims,
) {
    if report.first_offset.is_none() {
        report.first_offset = Some(row.kafka_offset);
    }
    report.last_offset = Some(row.kafka_offset);
    // Checkpoints covering this offset: add those starting here, drop those ended.
    while *next_start < by_first.len() && by_first[*next_start].0 <= row.kafka_offset {
        active.push(by_first[*next_start].1);
        *next_start += 1;
    }
    active.retain(|last| *last >= row.kafka_offset);
    for last in active.iter() {
        if let Some(c) = claims.get_mut(last) {
            c.counted += 1;
            if *last == row.kafka_offset {
                c.head = Some(row.record_hash);
            }
        }
    }
    verifier.push(row);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(spans: &[(i64, i64, i64)]) -> Claims {
        spans
            .iter()
            .map(|&(first, last, first_time)| {
                let cp = checkpoint::Checkpoint {
                    topic: "t".into(),
                    partition: 0,
                    first_offset: first,
                    last_offset: last,
                    count: u64::try_from(last - first + 1).unwrap_or(0),
                    head_hash: chain::to_hex(&chain::GENESIS),
                    first_time,
                    last_time: first_time + 10,
                    iat: 0,
                };
                let claim = Claim {
                    cp,
                    source: "store".into(),
                    counted: 0,
                    head: None,
                };
                (last, claim)
            })
            .collect()
    }

    #[test]
    fn only_positions_in_a_checkpoint_older_than_the_horizon_may_be_pruned() {
        // [0, 9] and [10, 19] hold records from t=100, [30, 39] from t=1000; 20..=29 has
        // no checkpoint.
        let c = claims(&[(0, 9, 100), (10, 19, 100), (30, 39, 1000)]);
        let at = |horizon, offset| prunable(&c, horizon, offset).map(|c| c.cp.last_offset);
        assert_eq!(at(Some(500), 0), Some(9));
        assert_eq!(at(Some(500), 9), Some(9));
        assert_eq!(at(Some(500), 14), Some(19));
        // Not covered by any checkpoint, or covered by one younger than the horizon.
        assert_eq!(at(Some(500), 25), None);
        assert_eq!(at(Some(500), 35), None);
        assert_eq!(at(Some(500), 40), None);
        // The horizon is exclusive, and without one nothing may be pruned.
        assert_eq!(at(Some(100), 5), None);
        assert_eq!(at(Some(2000), 35), Some(39));
        assert_eq!(at(None, 5), None);
    }
}
