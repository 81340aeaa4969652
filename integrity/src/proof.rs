//! Membership proofs: one audit record, its chain neighbours, every chained record from it up
//! to the head of the signed checkpoint that covers it, and that checkpoint.
//!
//! An outside party checks membership without trusting the service that answered: recompute
//! `record_hash` of the record from its content and its predecessor's hash (the `previous`
//! link's `record_hash`, or [`GENESIS`] for a chain's first record), then of each following
//! record from its content and the hash before it ([`record_hash`]), check that each links
//! to the offset before it, that the last hash is the checkpoint's signed `head_hash`, and
//! the JWS against the JWKS ([`check_path`] does the same). The whole records of the path
//! are needed: SHA-256 binds a record's hash to its predecessor's only through the record's
//! full content, so a list of bare hashes would prove nothing.
//!
//! Every statement is a constant with `?` placeholders, each value bound with the clickhouse
//! client's `.bind()`: nothing a caller sends becomes SQL text.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use clickhouse::Client;
use custos_schemas::AuditRow;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::chain::{self, chain_id, record_hash, Hash, GENESIS};
use crate::checkpoint::{self, Checkpoint};
use crate::checkpoints::CheckpointRow;

/// Hash construction of the chain (see [`record_hash`]).
pub const HASH_ALGORITHM: &str = "custos-chain-v1";

/// Checkpoints considered when looking for the one covering a record.
const CHECKPOINT_CANDIDATES: u64 = 10;

/// A record by producer event id within a tenant (binds: tenant, event id).
const RECORD_BY_EVENT_ID: &str = "SELECT ?fields FROM custos.audit_events FINAL \
     WHERE tenant = ? AND event_id = ? ORDER BY event_key LIMIT 2";

/// A record by event key, within a tenant unless the tenant is empty (binds: key, tenant,
/// tenant).
const RECORD_BY_EVENT_KEY: &str = "SELECT ?fields FROM custos.audit_events FINAL \
     WHERE event_key = ? AND (? = '' OR tenant = ?) ORDER BY tenant LIMIT 2";

/// The chained record at one position (binds: topic, partition, offset).
const LINK_AT: &str = "SELECT ?fields FROM custos.audit_events FINAL \
     WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset = ? \
       AND record_hash != '' ORDER BY event_key LIMIT 1";

/// The first chained record after a position (binds: topic, partition, offset).
const LINK_AFTER: &str = "SELECT ?fields FROM custos.audit_events FINAL \
     WHERE kafka_topic = ? AND kafka_partition = ? AND record_hash != '' \
       AND kafka_offset > ? ORDER BY kafka_offset, event_key LIMIT 1";

/// The checkpoints whose head is at or after a position, lowest first (binds: topic,
/// partition, offset, limit).
const CHECKPOINTS_FROM: &str = "SELECT ?fields FROM custos.chain_checkpoints FINAL \
     WHERE kafka_topic = ? AND kafka_partition = ? AND last_offset >= ? \
     ORDER BY last_offset LIMIT ?";

/// The chained records after a position up to a head (binds: topic, partition, offset,
/// head, limit).
const PATH: &str = "SELECT ?fields FROM custos.audit_events FINAL \
     WHERE kafka_topic = ? AND kafka_partition = ? AND record_hash != '' \
       AND kafka_offset > ? AND kafka_offset <= ? \
     ORDER BY kafka_offset, event_key LIMIT ?";

/// Proof failures (not findings: a proof that does not verify is a [`Proof`] whose
/// [`ProofChecks::verified`] is false).
#[derive(Debug, Error)]
pub enum ProofError {
    /// ClickHouse refused or could not be reached.
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// The lookup matched more than one record.
    #[error("the event id names several records (different sources); ask by event_key")]
    Ambiguous,
}

/// How a proof's record is looked up (values already validated by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// By producer event id within a tenant.
    EventId {
        /// Tenant.
        tenant: String,
        /// Producer event id.
        id: String,
    },
    /// By event key, optionally within a tenant.
    EventKey {
        /// Event identity (32 hex digits).
        key: String,
        /// Tenant, if named.
        tenant: Option<String>,
    },
}

/// Reads the record a lookup names: none, or exactly one ([`ProofError::Ambiguous`] when
/// several records match).
pub async fn find_record(client: &Client, lookup: &Lookup) -> Result<Option<AuditRow>, ProofError> {
    let mut rows: Vec<AuditRow> = match lookup {
        Lookup::EventId { tenant, id } => {
            client
                .query(RECORD_BY_EVENT_ID)
                .bind(tenant)
                .bind(id)
                .fetch_all()
                .await?
        }
        Lookup::EventKey { key, tenant } => {
            let t = tenant.as_deref().unwrap_or("");
            client
                .query(RECORD_BY_EVENT_KEY)
                .bind(key)
                .bind(t)
                .bind(t)
                .fetch_all()
                .await?
        }
    };
    if rows.len() > 1 {
        return Err(ProofError::Ambiguous);
    }
    Ok(rows.pop())
}

/// A neighbour of a record in its chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct Link {
    /// Kafka offset.
    pub kafka_offset: i64,
    /// Its event identity.
    pub event_key: String,
    /// Offset of its predecessor.
    pub chain_prev_offset: i64,
    /// Its hash (64 hex digits in JSON).
    #[serde(with = "chain::hash_serde")]
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

/// How far a proof reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofStatus {
    /// The path to a signed checkpoint head is included.
    Covered,
    /// No checkpoint covers the record yet.
    Pending,
    /// The covering checkpoint's head is more records away than the limit.
    BeyondLimit,
    /// The record was stored without a hash chain.
    Unchained,
}

impl ProofStatus {
    /// Its code: `covered`, `pending`, `beyond_limit` or `unchained`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProofStatus::Covered => "covered",
            ProofStatus::Pending => "pending",
            ProofStatus::BeyondLimit => "beyond_limit",
            ProofStatus::Unchained => "unchained",
        }
    }
}

/// The checkpoint a proof leads to.
#[derive(Debug, Clone, PartialEq)]
pub struct CoveringCheckpoint {
    /// The stored checkpoint.
    pub row: CheckpointRow,
    /// Its claims, decoded from the JWS payload (verified when `signature_valid` is true).
    pub claims: Option<Checkpoint>,
    /// Whether the signature verified against the JWKS (none without a JWKS).
    pub signature_valid: Option<bool>,
}

/// What the proof's producer found when checking it (an outside party repeats it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

impl ProofChecks {
    /// Whether every check holds (what [`ProofChecks::verified`] records).
    pub fn all_hold(&self) -> bool {
        self.record_hash_valid
            && self.path_valid == Some(true)
            && self.head_matches_checkpoint == Some(true)
            && self.signature_valid == Some(true)
    }
}

/// A record with everything needed to check that it belongs to the signed log.
#[derive(Debug, Clone, PartialEq)]
pub struct Proof {
    /// `topic/partition`.
    pub chain: String,
    /// How far the proof reaches.
    pub status: ProofStatus,
    /// The record as stored.
    pub record: AuditRow,
    /// Its predecessor (none for a chain's first record or when not stored).
    pub previous: Option<Link>,
    /// Its successor (none for the current head).
    pub next: Option<Link>,
    /// The chained records after it up to and including the checkpoint head (empty unless
    /// [`ProofStatus::Covered`]).
    pub path: Vec<AuditRow>,
    /// The covering checkpoint.
    pub checkpoint: Option<CoveringCheckpoint>,
    /// The checks made.
    pub checks: ProofChecks,
}

/// Builds the proof of `record` (found with [`find_record`]): its predecessor, the covering
/// checkpoint (verified against `jwks` when given), the path to that checkpoint's head (at
/// most `max_records` records) and the checks.
pub async fn prove(
    client: &Client,
    record: AuditRow,
    jwks: Option<&Value>,
    max_records: u64,
) -> Result<Proof, ProofError> {
    let mut proof = Proof {
        chain: chain_id(&record.kafka_topic, record.kafka_partition),
        status: ProofStatus::Unchained,
        record,
        previous: None,
        next: None,
        path: Vec::new(),
        checkpoint: None,
        checks: ProofChecks::default(),
    };
    if proof.record.record_hash != GENESIS {
        fill(client, &mut proof, jwks, max_records).await?;
    }
    Ok(proof)
}

/// Fills the proof of a chained record.
async fn fill(
    client: &Client,
    proof: &mut Proof,
    jwks: Option<&Value>,
    max: u64,
) -> Result<(), ProofError> {
    let topic = proof.record.kafka_topic.clone();
    let partition = proof.record.kafka_partition;
    let offset = proof.record.kafka_offset;
    let mut checks = ProofChecks::default();
    // The predecessor's hash the record was linked after (none when it is not stored).
    let prev_hash = if proof.record.chain_prev_offset < 0 {
        checks.previous_link_valid = Some(true);
        Some(GENESIS)
    } else {
        let prev: Option<Link> = client
            .query(LINK_AT)
            .bind(&topic)
            .bind(partition)
            .bind(proof.record.chain_prev_offset)
            .fetch_optional()
            .await?;
        checks.previous_link_valid = prev.as_ref().map(|_| true);
        let hash = prev.as_ref().map(|l| l.record_hash);
        proof.previous = prev;
        hash
    };
    checks.record_hash_valid =
        prev_hash.is_some_and(|p| record_hash(&p, &proof.record) == proof.record.record_hash);

    let candidates: Vec<CheckpointRow> = client
        .query(CHECKPOINTS_FROM)
        .bind(&topic)
        .bind(partition)
        .bind(offset)
        .bind(CHECKPOINT_CANDIDATES)
        .fetch_all()
        .await?;
    match pick_checkpoint(candidates, jwks) {
        None => {
            proof.status = ProofStatus::Pending;
            proof.next = client
                .query(LINK_AFTER)
                .bind(&topic)
                .bind(partition)
                .bind(offset)
                .fetch_optional::<Link>()
                .await?;
        }
        Some(cp) => {
            let head = cp
                .claims
                .as_ref()
                .map_or(cp.row.last_offset, |c| c.last_offset);
            let mut path: Vec<AuditRow> = client
                .query(PATH)
                .bind(&topic)
                .bind(partition)
                .bind(offset)
                .bind(head)
                .bind(max + 1)
                .fetch_all()
                .await?;
            proof.next = path.first().map(Link::from);
            if path.len() as u64 > max {
                proof.status = ProofStatus::BeyondLimit;
                path.clear();
            } else {
                proof.status = ProofStatus::Covered;
                if let Some(c) = &cp.claims {
                    let (_, path_ok, head_ok) =
                        check_path(&proof.record, &prev_hash.unwrap_or(GENESIS), &path, c);
                    checks.path_valid = Some(path_ok);
                    checks.head_matches_checkpoint = Some(head_ok);
                }
                proof.path = path;
            }
            checks.signature_valid = cp.signature_valid;
            proof.checkpoint = Some(cp);
        }
    }
    checks.verified = checks.all_hold();
    proof.checks = checks;
    Ok(())
}

/// Decodes the claims of a JWS without checking the signature.
pub fn unverified_claims(jws: &str) -> Option<Checkpoint> {
    let payload = jws.split('.').nth(1)?;
    serde_json::from_slice(&B64.decode(payload).ok()?).ok()
}

/// Picks the covering checkpoint among `candidates` (lowest head first): the first whose
/// signature verifies and whose signed claims match its stored columns; when none does,
/// the first, marked invalid; without a JWKS, the first, unchecked.
pub fn pick_checkpoint(
    candidates: Vec<CheckpointRow>,
    jwks: Option<&Value>,
) -> Option<CoveringCheckpoint> {
    let Some(jwks) = jwks else {
        let row = candidates.into_iter().next()?;
        let claims = unverified_claims(&row.jws);
        return Some(CoveringCheckpoint {
            row,
            claims,
            signature_valid: None,
        });
    };
    let mut fallback = None;
    for row in candidates {
        match checkpoint::verify(&row.jws, jwks) {
            Ok(c)
                if c.topic == row.kafka_topic
                    && c.partition == row.kafka_partition
                    && c.last_offset == row.last_offset
                    && c.head_hash == row.head_hash =>
            {
                return Some(CoveringCheckpoint {
                    row,
                    claims: Some(c),
                    signature_valid: Some(true),
                });
            }
            _ => {
                if fallback.is_none() {
                    let claims = unverified_claims(&row.jws);
                    fallback = Some(CoveringCheckpoint {
                        row,
                        claims,
                        signature_valid: Some(false),
                    });
                }
            }
        }
    }
    fallback
}

/// Checks a proof as an outside party would: `record` after its predecessor's hash
/// `prev_hash` ([`GENESIS`] for a chain's first record), then each `path` record, hash
/// correctly and link in order, and the last hash is `claims.head_hash`. Answers
/// (record hashes, path hashes and links, head matches the checkpoint).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::link;
    use crate::checkpoint::Signer256;
    use p256::ecdsa::SigningKey;

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

    fn stored(c: &Checkpoint, jws: String) -> CheckpointRow {
        CheckpointRow {
            kafka_topic: c.topic.clone(),
            kafka_partition: c.partition,
            first_offset: c.first_offset,
            last_offset: c.last_offset,
            record_count: c.count,
            head_hash: c.head_hash.clone(),
            first_time: c.first_time,
            last_time: c.last_time,
            created_at: 0,
            kid: "ck1".into(),
            jws,
        }
    }

    fn signer(kid: &str) -> Signer256 {
        Signer256::new(SigningKey::random(&mut rand_core::OsRng), kid)
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
        // A path that skips a record does not link.
        let skipping: Vec<AuditRow> = vec![rows[3].clone(), rows[5].clone()];
        assert!(!check_path(&rows[2], &p1, &skipping, &c).1);
    }

    #[test]
    fn claims_decode_without_a_key_and_garbage_does_not() {
        let c = claims(&chain(3));
        let jws = signer("ck1").sign(&c);
        assert_eq!(unverified_claims(&jws), Some(c));
        assert_eq!(unverified_claims("no-dots"), None);
        assert_eq!(unverified_claims("a.!!!.c"), None);
        assert_eq!(
            unverified_claims(&format!("a.{}.c", B64.encode("[1]"))),
            None
        );
    }

    #[test]
    fn the_first_checkpoint_that_verifies_and_matches_its_columns_is_picked() {
        let rows = chain(6);
        let key = signer("ck1");
        let jwks = key.jwks();
        let early = claims(&rows[..4]);
        let late = claims(&rows);
        // Signed by another key: its signature fails.
        let rogue = stored(&early, signer("ck1").sign(&early));
        // Signed correctly, but the stored head differs from the signed one.
        let mut moved = stored(&early, key.sign(&early));
        moved.last_offset = 4;
        let good = stored(&late, key.sign(&late));

        let picked =
            pick_checkpoint(vec![rogue.clone(), moved, good.clone()], Some(&jwks)).expect("picked");
        assert_eq!(picked.row, good);
        assert_eq!(picked.claims, Some(late.clone()));
        assert_eq!(picked.signature_valid, Some(true));

        // None verifies: the first, marked invalid, with its claims as written.
        let picked = pick_checkpoint(vec![rogue.clone()], Some(&jwks)).expect("fallback");
        assert_eq!(picked.row, rogue);
        assert_eq!(picked.claims, Some(early.clone()));
        assert_eq!(picked.signature_valid, Some(false));

        // Without a JWKS: the first, unchecked.
        let picked = pick_checkpoint(vec![rogue.clone(), good], None).expect("first");
        assert_eq!(picked.row, rogue);
        assert_eq!(picked.signature_valid, None);

        assert_eq!(pick_checkpoint(Vec::new(), Some(&jwks)), None);
        assert_eq!(pick_checkpoint(Vec::new(), None), None);
    }

    #[test]
    fn a_proof_verifies_only_when_every_check_holds() {
        let all = ProofChecks {
            record_hash_valid: true,
            previous_link_valid: Some(true),
            path_valid: Some(true),
            head_matches_checkpoint: Some(true),
            signature_valid: Some(true),
            verified: false,
        };
        assert!(all.all_hold());
        assert!(!ProofChecks {
            record_hash_valid: false,
            ..all.clone()
        }
        .all_hold());
        assert!(!ProofChecks {
            path_valid: None,
            ..all.clone()
        }
        .all_hold());
        assert!(!ProofChecks {
            head_matches_checkpoint: Some(false),
            ..all.clone()
        }
        .all_hold());
        assert!(!ProofChecks {
            signature_valid: None,
            ..all
        }
        .all_hold());
    }

    #[test]
    fn statements_take_their_values_as_placeholders_only() {
        let binds = [
            (RECORD_BY_EVENT_ID, 2),
            (RECORD_BY_EVENT_KEY, 3),
            (LINK_AT, 3),
            (LINK_AFTER, 3),
            (CHECKPOINTS_FROM, 4),
            (PATH, 5),
        ];
        for (sql, n) in binds {
            // `?fields` is the client's column list, not a value.
            assert_eq!(sql.matches('?').count() - 1, n, "{sql}");
            assert!(sql.starts_with("SELECT ?fields FROM custos."), "{sql}");
        }
    }

    #[test]
    fn status_codes_are_stable() {
        let codes: Vec<&str> = [
            ProofStatus::Covered,
            ProofStatus::Pending,
            ProofStatus::BeyondLimit,
            ProofStatus::Unchained,
        ]
        .into_iter()
        .map(ProofStatus::as_str)
        .collect();
        assert_eq!(codes, ["covered", "pending", "beyond_limit", "unchained"]);
    }
}
