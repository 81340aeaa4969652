//! Signed checkpoints of each audit chain's head, cut every N records or T seconds per chain
//! (the ingest's writer stores them in `custos.chain_checkpoints` and publishes them to the
//! checkpoints topic, so a copy lives outside the database), and the checkpoints an auditor
//! brings from outside it (the topic's copy, an anchor file) for [`crate::verify`].

use std::time::{Duration, Instant};

use crate::chain::{self, Hash};
use crate::checkpoint::{Checkpoint, Signer256};
use custos_schemas::AuditRow;
use serde::{Deserialize, Serialize};

/// One row of `custos.chain_checkpoints`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct CheckpointRow {
    /// Topic of the chain.
    pub kafka_topic: String,
    /// Partition of the chain.
    pub kafka_partition: i32,
    /// First offset covered.
    pub first_offset: i64,
    /// Head offset.
    pub last_offset: i64,
    /// Chained records covered.
    pub record_count: u64,
    /// Head hash.
    pub head_hash: String,
    /// Earliest event time (ms).
    pub first_time: i64,
    /// Latest event time (ms).
    pub last_time: i64,
    /// Signing time (ms).
    pub created_at: i64,
    /// Signing key id.
    pub kid: String,
    /// Compact JWS over the claims.
    pub jws: String,
}

/// When to cut checkpoints, and with which key.
#[derive(Debug, Clone)]
pub struct CheckpointPolicy {
    /// Records per chain between checkpoints.
    pub every_records: u64,
    /// Longest time a chain's new records stay uncovered.
    pub every: Duration,
    /// Signing key.
    pub signer: Signer256,
    /// Topic the checkpoints are published to.
    pub topic: String,
}

#[derive(Debug, Clone)]
struct Pending {
    first_offset: i64,
    last_offset: i64,
    count: u64,
    head_hash: Hash,
    first_time: i64,
    last_time: i64,
    since: Instant,
}

/// Accumulates chained records per chain until a checkpoint is due.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Open spans by chain: a writer holds a handful of partitions, so a list searched
    /// without building a key per record beats a map.
    pending: Vec<((String, i32), Pending)>,
    /// Spans that reached the record count, waiting to be signed.
    full: Vec<((String, i32), Pending)>,
}

impl Tracker {
    /// Notes rows that are now durable in ClickHouse (in offset order per partition); a
    /// chain's span is closed every `every_records` records.
    pub fn observe(&mut self, rows: &[AuditRow], every_records: u64) {
        for r in rows.iter().filter(|r| r.record_hash != chain::GENESIS) {
            let at = self
                .pending
                .iter()
                .position(|((t, p), _)| *p == r.kafka_partition && *t == r.kafka_topic);
            let at = match at {
                Some(i) => i,
                None => {
                    self.pending.push((
                        (r.kafka_topic.clone(), r.kafka_partition),
                        Pending {
                            first_offset: r.kafka_offset,
                            last_offset: r.kafka_offset,
                            count: 0,
                            head_hash: chain::GENESIS,
                            first_time: r.event_time,
                            last_time: r.event_time,
                            since: Instant::now(),
                        },
                    ));
                    self.pending.len() - 1
                }
            };
            let p = &mut self.pending[at].1;
            if r.kafka_offset < p.last_offset {
                continue; // never move a head backwards
            }
            p.last_offset = r.kafka_offset;
            p.count += 1;
            p.head_hash = r.record_hash;
            p.first_time = p.first_time.min(r.event_time);
            p.last_time = p.last_time.max(r.event_time);
            if p.count >= every_records {
                let done = self.pending.swap_remove(at);
                self.full.push(done);
            }
        }
    }

    /// Removes and signs the checkpoints that are due (all of them with `force`).
    pub fn due(&mut self, policy: &CheckpointPolicy, force: bool) -> Vec<CheckpointRow> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut spans = std::mem::take(&mut self.full);
        let (due, open): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(_, p)| force || p.since.elapsed() >= policy.every);
        self.pending = open;
        spans.extend(due);
        let mut out = Vec::new();
        for (key, p) in spans {
            let cp = Checkpoint {
                topic: key.0.clone(),
                partition: key.1,
                first_offset: p.first_offset,
                last_offset: p.last_offset,
                count: p.count,
                head_hash: chain::to_hex(&p.head_hash),
                first_time: p.first_time,
                last_time: p.last_time,
                iat: now_ms / 1000,
            };
            out.push(CheckpointRow {
                kafka_topic: key.0,
                kafka_partition: key.1,
                first_offset: p.first_offset,
                last_offset: p.last_offset,
                record_count: p.count,
                head_hash: chain::to_hex(&p.head_hash),
                first_time: p.first_time,
                last_time: p.last_time,
                created_at: now_ms,
                kid: policy.signer.kid().to_owned(),
                jws: policy.signer.sign(&cp),
            });
        }
        out
    }
}

/// Errors reading an auditor's anchor file.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The file could not be read.
    #[error("anchor file {path}: {source}")]
    File {
        /// Its path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a JSON list of checkpoints.
    #[error("anchor file {path}: expected a JSON list of compact JWS strings or objects with a \"jws\" field")]
    Format {
        /// Its path.
        path: String,
    },
}

/// A checkpoint JWS read from outside the database, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalCheckpoint {
    /// Where it came from (`topic T partition P offset O`, `anchor file F item N`).
    pub source: String,
    /// The compact JWS.
    pub jws: String,
}

/// Reads an auditor's anchor file: a JSON list whose items are compact JWS checkpoints or
/// objects with a `jws` field (such as rows of `custos.chain_checkpoints`).
pub fn read_anchor_file(path: &std::path::Path) -> Result<Vec<ExternalCheckpoint>, AnchorError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AnchorError::File {
        path: shown.clone(),
        source,
    })?;
    parse_anchors(&text, &shown)
}

fn parse_anchors(text: &str, shown: &str) -> Result<Vec<ExternalCheckpoint>, AnchorError> {
    let bad = || AnchorError::Format {
        path: shown.to_owned(),
    };
    let items: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|_| bad())?;
    items
        .iter()
        .enumerate()
        .map(|(n, item)| {
            let jws = item
                .as_str()
                .or_else(|| item.get("jws").and_then(serde_json::Value::as_str))
                .ok_or_else(bad)?;
            Ok(ExternalCheckpoint {
                source: format!("anchor file {shown} item {n}"),
                jws: jws.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::verify;

    fn rows(partition: i32, offsets: std::ops::Range<i64>) -> Vec<AuditRow> {
        offsets
            .map(|o| AuditRow {
                kafka_topic: "t".into(),
                kafka_partition: partition,
                kafka_offset: o,
                event_time: 1000 + o,
                record_hash: [u8::try_from(o + 1).unwrap_or(0xff); 32],
                ..AuditRow::default()
            })
            .collect()
    }

    #[test]
    fn cuts_every_n_records_and_on_force() {
        let signer = Signer256::new(p256::ecdsa::SigningKey::random(&mut rand_core::OsRng), "k");
        let policy = CheckpointPolicy {
            every_records: 10,
            every: Duration::from_secs(3600),
            signer: signer.clone(),
            topic: "cp".into(),
        };
        let mut t = Tracker::default();
        t.observe(&rows(0, 0..25), 10);
        t.observe(&rows(1, 0..3), 10);
        let due = t.due(&policy, false);
        let spans: Vec<(i32, i64, i64, u64)> = due
            .iter()
            .map(|c| {
                (
                    c.kafka_partition,
                    c.first_offset,
                    c.last_offset,
                    c.record_count,
                )
            })
            .collect();
        assert_eq!(spans, vec![(0, 0, 9, 10), (0, 10, 19, 10)]);
        assert_eq!(due[1].head_hash, chain::to_hex(&[20u8; 32]));
        let claims = verify(&due[1].jws, &signer.jwks()).unwrap();
        assert_eq!(
            (claims.first_offset, claims.last_offset, claims.count),
            (10, 19, 10)
        );
        let mut rest: Vec<(i32, i64, i64)> = t
            .due(&policy, true)
            .iter()
            .map(|c| (c.kafka_partition, c.first_offset, c.last_offset))
            .collect();
        rest.sort();
        assert_eq!(rest, vec![(0, 20, 24), (1, 0, 2)]);
        assert!(t.due(&policy, true).is_empty());
    }

    #[test]
    fn anchor_files_take_jws_strings_or_rows() {
        let got = parse_anchors(r#"["a.b.c", {"jws": "d.e.f", "last_offset": 9}]"#, "f").unwrap();
        let jws: Vec<&str> = got.iter().map(|c| c.jws.as_str()).collect();
        assert_eq!(jws, vec!["a.b.c", "d.e.f"]);
        assert_eq!(got[1].source, "anchor file f item 1");
        for bad in [r#"{"jws": "a"}"#, r#"[1]"#, r#"[{"x": "a"}]"#, "not json"] {
            assert!(matches!(
                parse_anchors(bad, "f"),
                Err(AnchorError::Format { .. })
            ));
        }
    }
}
