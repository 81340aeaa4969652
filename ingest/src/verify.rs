//! Independent verification of the hash chains and their signed checkpoints, from
//! ClickHouse alone (plus the JWKS of the checkpoint keys). Reports the first broken link
//! of each chain by position and event id. Used by `custos-ingest verify`.

use std::collections::BTreeMap;

use clickhouse::Client;
use custos_schemas::chain::{self, chain_id, collapsed_copy, Finding, Verifier};
use custos_schemas::checkpoint;
use custos_schemas::AuditRow;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::checkpoints::CheckpointRow;

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
}

#[derive(Debug, Deserialize, clickhouse::Row)]
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
    let chains: Vec<ChainKey> = client
        .query(
            "SELECT DISTINCT kafka_topic, kafka_partition FROM custos.audit_events \
             WHERE record_hash != '' AND (? = '' OR kafka_topic = ?) AND (? < 0 OR kafka_partition = ?) \
             ORDER BY kafka_topic, kafka_partition",
        )
        .bind(scope.topic.as_deref().unwrap_or(""))
        .bind(scope.topic.as_deref().unwrap_or(""))
        .bind(scope.partition.unwrap_or(-1))
        .bind(scope.partition.unwrap_or(-1))
        .fetch_all()
        .await?;
    let mut reports = Vec::new();
    for c in chains {
        reports.push(verify_chain(client, &c.kafka_topic, c.kafka_partition, scope, jwks).await?);
    }
    let clean = reports
        .iter()
        .all(|r| r.findings.is_empty() && r.checkpoint_findings.is_empty());
    Ok(Report {
        chains: reports,
        clean,
    })
}

async fn verify_chain(
    client: &Client,
    topic: &str,
    partition: i32,
    scope: &Scope,
    jwks: Option<&serde_json::Value>,
) -> Result<ChainReport, VerifyError> {
    let chain = chain_id(topic, partition);
    let timed = scope.since_ms.is_some() || scope.until_ms.is_some();
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
    };
    if range.n == 0 {
        return Ok(report);
    }
    // A timed range also reads the record before its first one, as the anchor its first
    // record's hash is checked against.
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
    // last_offset -> (claims, records counted in range so far, head hash seen)
    let mut claims: Claims = BTreeMap::new();
    for cp in &cps {
        let problem = match jwks {
            None => Some("no JWKS given: signature not checked".to_owned()),
            Some(jwks) => match checkpoint::verify(&cp.jws, jwks) {
                Err(e) => Some(format!("signature: {e}")),
                Ok(c) => {
                    let row_matches = c.topic == cp.kafka_topic
                        && c.partition == cp.kafka_partition
                        && c.first_offset == cp.first_offset
                        && c.last_offset == cp.last_offset
                        && c.count == cp.record_count
                        && c.head_hash == cp.head_hash;
                    if row_matches {
                        claims.insert(c.last_offset, (c, 0, None));
                        None
                    } else {
                        Some("stored columns differ from the signed claims".to_owned())
                    }
                }
            },
        };
        if let Some(problem) = problem {
            report.checkpoint_findings.push(CheckpointFinding {
                chain: chain.clone(),
                last_offset: cp.last_offset,
                problem,
            });
        }
    }

    let mut by_first: Vec<(i64, i64)> = claims
        .values()
        .map(|(c, _, _)| (c.first_offset, c.last_offset))
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
    for (last, (c, counted, head)) in claims {
        let problem = match head {
            None => Some("head record missing".to_owned()),
            Some(h) if chain::to_hex(&h) != c.head_hash => {
                Some("head hash differs from the signed one".to_owned())
            }
            Some(_) if counted != c.count => {
                Some(format!("{counted} records in range, {} signed", c.count))
            }
            Some(_) => None,
        };
        match problem {
            Some(problem) => report.checkpoint_findings.push(CheckpointFinding {
                chain: chain.clone(),
                last_offset: last,
                problem,
            }),
            None => report.checkpoints_ok += 1,
        }
    }
    Ok(report)
}

/// Claims of the verified checkpoints: last offset -> (claims, records counted, head seen).
type Claims = BTreeMap<i64, (checkpoint::Checkpoint, u64, Option<chain::Hash>)>;

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
        if let Some((_, counted, head)) = claims.get_mut(last) {
            *counted += 1;
            if *last == row.kafka_offset {
                *head = Some(row.record_hash);
            }
        }
    }
    verifier.push(row);
}
