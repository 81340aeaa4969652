//! Hash-chained audit records.
//!
//! **One chain per input-topic partition.** Kafka orders a partition totally and the consumer
//! group gives it to one writer at a time, so the chain position of a record follows from its
//! Kafka position alone: a batch replayed after a crash links to the same predecessor and
//! reproduces exactly the same hashes (a per-tenant chain would interleave partitions in an
//! order that differs between runs, and fork on every replay).
//!
//! Each record stores `chain_prev_offset` (offset of the previous chained record of its
//! partition, -1 for the first) and `record_hash` = SHA-256 of the predecessor's hash
//! ([`GENESIS`] for the first) and the record's canonical content, as 32 raw bytes
//! (`FixedString(32)`). The predecessor's hash is not stored again: the verifier takes it from
//! the predecessor itself, so a record whose content or link changed no longer hashes to its
//! `record_hash`. The content covers every column except `ingested_at` (which differs
//! between a write and its replay), the hash and the `prev_event_key` hint. Rejected
//! (dead-lettered) messages are not chained: a record's `chain_prev_offset` skips them, and
//! `custos.ingest_rejections` lists every skipped offset, so a verifier tells an intended gap
//! (named in both places) from a deletion (a referenced offset that is gone).

use custos_schemas::AuditRow;
use sha2::{Digest, Sha256};

// The value type of the `record_hash` column is declared with the row, in custos-schemas.
pub use custos_schemas::hash::{from_hex, hash_serde, to_hex, Hash, GENESIS};

/// The chain a row belongs to: `topic/partition`.
pub fn chain_id(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// The last chained record of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Its Kafka offset.
    pub offset: i64,
    /// Its record hash.
    pub hash: Hash,
    /// Its event key.
    pub event_key: String,
}

fn put(h: &mut Vec<u8>, bytes: &[u8]) {
    h.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    h.extend_from_slice(bytes);
}

fn put_str(h: &mut Vec<u8>, s: &str) {
    put(h, s.as_bytes());
}

fn put_list(h: &mut Vec<u8>, items: &[String]) {
    h.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for i in items {
        put_str(h, i);
    }
}

fn put_opt_i64(h: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => h.extend_from_slice(&[0u8]),
        Some(x) => {
            h.extend_from_slice(&[1u8]);
            h.extend_from_slice(&x.to_le_bytes());
        }
    }
}

/// SHA-256 of the predecessor's hash and the canonical, length-prefixed content of `row`.
pub fn record_hash(prev_hash: &Hash, row: &AuditRow) -> Hash {
    // The canonical bytes are built in one reused buffer and hashed at once: the same digest
    // as feeding SHA-256 field by field, without ~90 small update calls per record.
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| {
        let mut h = buf.borrow_mut();
        h.clear();
        canonical(&mut h, prev_hash, row);
        Sha256::digest(h.as_slice()).into()
    })
}

/// Appends the canonical, length-prefixed content of `row` after `prev_hash` to `h`. The
/// predecessor's hash enters as its 64 hex digits (format v1, unchanged since hashes were
/// stored as hex, so chains written then still verify).
fn canonical(h: &mut Vec<u8>, prev_hash: &Hash, row: &AuditRow) {
    h.extend_from_slice(b"custos-chain-v1");
    let mut prev_hex = [0u8; 64];
    // Cannot fail: the output is exactly twice the input length.
    hex::encode_to_slice(prev_hash, &mut prev_hex).unwrap_or(());
    put(h, &prev_hex);
    for s in [
        &row.event_key,
        &row.event_id,
        &row.event_source,
        &row.event_type,
        &row.source_format,
        &row.tenant,
    ] {
        put_str(h, s);
    }
    h.extend_from_slice(&row.event_time.to_le_bytes());
    for s in [
        &row.outcome,
        &row.issuer,
        &row.user_sub,
        &row.user_kind,
        &row.fhir_user,
        &row.client_id,
        &row.session_id,
        &row.token_jti,
        &row.token_type,
    ] {
        put_str(h, s);
    }
    put_list(h, &row.scopes);
    for s in [
        &row.interaction,
        &row.resource_type,
        &row.resource_id,
        &row.patient,
        &row.encounter,
        &row.consent_id,
    ] {
        put_str(h, s);
    }
    put_list(h, &row.purpose_of_use);
    put_str(h, &row.break_glass_reason);
    put_str(h, &row.decision);
    h.extend_from_slice(&row.http_status.to_le_bytes());
    put_str(h, &row.source_ip);
    put_str(h, &row.user_agent);
    put_list(h, &row.returned_ids);
    for s in [&row.error, &row.reason, &row.actor, &row.request_id] {
        put_str(h, s);
    }
    h.extend_from_slice(&[match row.active {
        None => 0u8,
        Some(false) => 1,
        Some(true) => 2,
    }]);
    put_opt_i64(h, row.period_start);
    put_opt_i64(h, row.expires_at);
    put_str(h, &row.kafka_topic);
    h.extend_from_slice(&row.kafka_partition.to_le_bytes());
    h.extend_from_slice(&row.kafka_offset.to_le_bytes());
    h.extend_from_slice(&row.chain_prev_offset.to_le_bytes());
}

/// Links `row` after `head` (or as the first record when `None`) and returns the new head.
pub fn link(row: &mut AuditRow, head: Option<&Head>) -> Head {
    let prev = match head {
        Some(h) => {
            row.chain_prev_offset = h.offset;
            row.prev_event_key.clone_from(&h.event_key);
            h.hash
        }
        None => {
            row.chain_prev_offset = -1;
            row.prev_event_key.clear();
            GENESIS
        }
    };
    row.record_hash = record_hash(&prev, row);
    Head {
        offset: row.kafka_offset,
        hash: row.record_hash,
        event_key: row.event_key.clone(),
    }
}

/// Links `row` after `*head` (as the first record when `None`) and makes it the new head:
/// the same as `*head = Some(link(row, head.as_ref()))`, but the old head's event key moves
/// into `row.prev_event_key` instead of being copied (one string copy per record, not two).
pub fn advance(row: &mut AuditRow, head: &mut Option<Head>) {
    match head {
        Some(h) => {
            row.chain_prev_offset = h.offset;
            row.record_hash = record_hash(&h.hash, row);
            h.offset = row.kafka_offset;
            h.hash = row.record_hash;
            // `prev_event_key` is not hashed, so it may be set after the hash.
            row.prev_event_key = std::mem::replace(&mut h.event_key, row.event_key.clone());
        }
        None => *head = Some(link(row, None)),
    }
}

/// Whether the record missing at `offset` of `topic/partition` is a copy of `survivor`
/// collapsed by deduplication: the same event stored again at another position. The
/// candidate is `survivor` moved to that position and linked after `pred` (offset and hash of
/// the previous stored record, `None` at the chain start); it is returned when `successor`
/// (the stored record that links to `offset`) hashes correctly after it. A different event
/// reusing the same id, or a deleted record, gives `None`.
pub fn collapsed_copy(
    survivor: &AuditRow,
    topic: &str,
    partition: i32,
    offset: i64,
    pred: Option<(i64, &Hash)>,
    successor: &AuditRow,
) -> Option<AuditRow> {
    let mut r = survivor.clone();
    r.kafka_topic = topic.to_owned();
    r.kafka_partition = partition;
    r.kafka_offset = offset;
    let prev = match pred {
        Some((o, h)) => {
            r.chain_prev_offset = o;
            *h
        }
        None => {
            r.chain_prev_offset = -1;
            GENESIS
        }
    };
    // Unknown for the lost copy, and not hashed.
    r.prev_event_key.clear();
    r.record_hash = record_hash(&prev, &r);
    let links = successor.chain_prev_offset == offset
        && record_hash(&r.record_hash, successor) == successor.record_hash;
    links.then_some(r)
}

/// A break found by [`Verifier`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The record's content or link no longer matches its hash (altered, moved to another
    /// position, or its predecessor's hash changed).
    Altered {
        /// Chain.
        chain: String,
        /// Offset of the record.
        offset: i64,
        /// Its event id.
        event_id: String,
    },
    /// A record the next one links to is gone (deleted).
    Missing {
        /// Chain.
        chain: String,
        /// Offset of the missing record.
        offset: i64,
        /// Offset of the record that references it.
        referenced_by: i64,
    },
    /// A record in the middle of a chain claims to be its first.
    BrokenLink {
        /// Chain.
        chain: String,
        /// Offset of the record whose link is broken.
        offset: i64,
        /// Its event id.
        event_id: String,
    },
    /// A record no other record links to (inserted into the chain).
    Unreferenced {
        /// Chain.
        chain: String,
        /// Offset of the record.
        offset: i64,
        /// Its event id.
        event_id: String,
    },
    /// Two different records claim the same position.
    Duplicate {
        /// Chain.
        chain: String,
        /// The position.
        offset: i64,
        /// Event id of the second record there.
        event_id: String,
    },
}

impl Finding {
    /// Chain and offset of the finding, for ordering and reports.
    pub fn position(&self) -> (&str, i64) {
        match self {
            Finding::Altered { chain, offset, .. }
            | Finding::Missing { chain, offset, .. }
            | Finding::BrokenLink { chain, offset, .. }
            | Finding::Unreferenced { chain, offset, .. }
            | Finding::Duplicate { chain, offset, .. } => (chain, *offset),
        }
    }

    /// Short code.
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::Altered { .. } => "altered",
            Finding::Missing { .. } => "missing",
            Finding::BrokenLink { .. } => "broken_link",
            Finding::Unreferenced { .. } => "unreferenced",
            Finding::Duplicate { .. } => "duplicate",
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Altered {
                chain,
                offset,
                event_id,
            } => {
                write!(
                    f,
                    "{chain} offset {offset}: record altered (event {event_id})"
                )
            }
            Finding::Missing {
                chain,
                offset,
                referenced_by,
            } => write!(
                f,
                "{chain} offset {offset}: record missing (referenced by offset {referenced_by})"
            ),
            Finding::BrokenLink {
                chain,
                offset,
                event_id,
            } => {
                write!(
                    f,
                    "{chain} offset {offset}: link to predecessor broken (event {event_id})"
                )
            }
            Finding::Unreferenced {
                chain,
                offset,
                event_id,
            } => write!(
                f,
                "{chain} offset {offset}: record not linked by its successor (event {event_id})"
            ),
            Finding::Duplicate {
                chain,
                offset,
                event_id,
            } => {
                write!(
                    f,
                    "{chain} offset {offset}: second record at this position (event {event_id})"
                )
            }
        }
    }
}

/// How many recent (offset, hash) pairs a [`Verifier`] keeps to check a record whose link
/// skips over other records (a swap or a forgery).
const RECENT: usize = 4096;

/// Verifies one chain from rows fed in offset order.
///
/// With `from_genesis`, the first row must be the chain's first record. Otherwise the chain
/// is entered in the middle: give the record before the range to [`Verifier::anchor`] so the
/// first record of the range is checked too.
#[derive(Debug)]
pub struct Verifier {
    chain: String,
    from_genesis: bool,
    /// Event id of the last record (its offset and hash are `recent`'s last entry).
    last_id: String,
    recent: std::collections::VecDeque<(i64, Hash)>,
    /// Records checked.
    pub checked: u64,
    /// Breaks found.
    pub findings: Vec<Finding>,
}

impl Verifier {
    /// A verifier for `chain`.
    pub fn new(chain: String, from_genesis: bool) -> Self {
        Verifier {
            chain,
            from_genesis,
            last_id: String::new(),
            recent: std::collections::VecDeque::new(),
            checked: 0,
            findings: Vec::new(),
        }
    }

    /// The last record seen: (offset, hash).
    pub fn head(&self) -> Option<(i64, &Hash)> {
        self.recent.back().map(|(o, h)| (*o, h))
    }

    fn remember(&mut self, row: &AuditRow) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((row.kafka_offset, row.record_hash));
        self.last_id.clone_from(&row.event_id);
    }

    fn hash_at(&self, offset: i64) -> Option<&Hash> {
        if offset == -1 {
            return Some(&GENESIS);
        }
        self.recent
            .binary_search_by_key(&offset, |(o, _)| *o)
            .ok()
            .map(|i| &self.recent[i].1)
    }

    /// Takes `row`, the record just before the verified range, as the known predecessor
    /// without checking or counting it (it lies outside the range).
    pub fn anchor(&mut self, row: &AuditRow) {
        self.remember(row);
    }

    /// Continues after records that are gone on purpose (expired by retention): forgets the
    /// records seen so far and takes `anchor` (offset and hash of the last record gone, known
    /// from a signed checkpoint) as the predecessor of the next row. Without an anchor the
    /// next row is taken as the start of what remains: its own hash cannot be recomputed,
    /// only its successors' links to it.
    pub fn resume(&mut self, anchor: Option<(i64, Hash)>) {
        self.recent.clear();
        self.last_id.clear();
        self.from_genesis = false;
        if let Some(head) = anchor {
            self.recent.push_back(head);
        }
    }

    /// Checks the next row (rows must come in ascending offset order).
    pub fn push(&mut self, row: &AuditRow) {
        self.checked += 1;
        let chain = self.chain.clone();
        // A link must point backwards; otherwise the hash is checked against the predecessor
        // it names, when that one has been seen.
        let altered = if row.chain_prev_offset >= row.kafka_offset {
            true
        } else {
            self.hash_at(row.chain_prev_offset)
                .is_some_and(|prev| record_hash(prev, row) != row.record_hash)
        };
        if altered {
            self.findings.push(Finding::Altered {
                chain: chain.clone(),
                offset: row.kafka_offset,
                event_id: row.event_id.clone(),
            });
        }
        match self.head().map(|(o, _)| o) {
            None => {
                if self.from_genesis && row.chain_prev_offset >= 0 {
                    self.findings.push(Finding::Missing {
                        chain,
                        offset: row.chain_prev_offset,
                        referenced_by: row.kafka_offset,
                    });
                }
            }
            Some(p_off) => {
                if row.kafka_offset == p_off {
                    self.findings.push(Finding::Duplicate {
                        chain,
                        offset: row.kafka_offset,
                        event_id: row.event_id.clone(),
                    });
                    return;
                }
                if row.chain_prev_offset == p_off || altered {
                    // Linked to the record before it (or already reported).
                } else if row.chain_prev_offset > p_off {
                    self.findings.push(Finding::Missing {
                        chain,
                        offset: row.chain_prev_offset,
                        referenced_by: row.kafka_offset,
                    });
                } else if row.chain_prev_offset == -1 {
                    self.findings.push(Finding::BrokenLink {
                        chain,
                        offset: row.kafka_offset,
                        event_id: row.event_id.clone(),
                    });
                } else {
                    self.findings.push(Finding::Unreferenced {
                        chain,
                        offset: p_off,
                        event_id: self.last_id.clone(),
                    });
                }
            }
        }
        self.remember(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(offset: i64) -> AuditRow {
        AuditRow {
            event_key: format!("k{offset}"),
            event_id: format!("e{offset}"),
            kafka_topic: "t".into(),
            kafka_partition: 0,
            kafka_offset: offset,
            ..AuditRow::default()
        }
    }

    fn chain(offsets: &[i64]) -> Vec<AuditRow> {
        let mut head = None;
        offsets
            .iter()
            .map(|o| {
                let mut r = row(*o);
                head = Some(link(&mut r, head.as_ref()));
                r
            })
            .collect()
    }

    fn verify(rows: &[AuditRow]) -> Vec<Finding> {
        let mut v = Verifier::new("t/0".into(), true);
        for r in rows {
            v.push(r);
        }
        v.findings
    }

    #[test]
    fn record_hash_matches_an_independent_encoding() {
        // SHA-256 of the canonical bytes of `row(3)` as the first record, computed outside
        // Rust (length-prefixed fields, little-endian integers, in the documented order).
        let mut r = row(3);
        let head = link(&mut r, None);
        assert_eq!(
            to_hex(&head.hash),
            "c41a83a983ea4049a58115d05b31b390f1dae908293eea4afc7503b05bcfb5e2"
        );
        assert_eq!(r.record_hash, head.hash);
        assert_eq!(r.chain_prev_offset, -1);
        assert_eq!(from_hex(&to_hex(&head.hash)), Some(head.hash));
        assert_eq!(from_hex("abc"), None);
    }

    #[test]
    fn advance_links_like_link() {
        let mut by_link = vec![row(0), row(1), row(3)];
        let mut by_advance = by_link.clone();
        by_advance[0].prev_event_key = "stale".into();
        let mut head = None;
        for r in by_link.iter_mut() {
            head = Some(link(r, head.as_ref()));
        }
        let mut advanced = None;
        for r in by_advance.iter_mut() {
            advance(r, &mut advanced);
        }
        assert_eq!(by_link, by_advance);
        assert_eq!(head, advanced);
    }

    #[test]
    fn a_collapsed_producer_duplicate_is_proven_from_its_surviving_copy() {
        // The same event stored at offsets 2 and 5 (a producer re-send); deduplication keeps
        // the copy at 5, so offset 2 is gone and offset 3 still points at it.
        let mut rows = chain(&[0, 1, 2, 3, 4, 5]);
        let copy_of_2 = |r: &mut AuditRow| {
            r.event_key = "k2".into();
            r.event_id = "e2".into();
        };
        let mut head = None;
        for r in rows.iter_mut() {
            if r.kafka_offset == 5 {
                copy_of_2(r);
            }
            head = Some(link(r, head.as_ref()));
        }
        assert_eq!(rows[3].prev_event_key, "k2");
        assert_eq!(rows[0].prev_event_key, "");
        let survivor = rows[5].clone();
        let (pred, succ) = (&rows[1], &rows[3]);
        let proven = collapsed_copy(
            &survivor,
            "t",
            0,
            succ.chain_prev_offset,
            Some((pred.kafka_offset, &pred.record_hash)),
            succ,
        )
        .expect("proven");
        assert_eq!(proven.record_hash, rows[2].record_hash);
        assert_eq!((proven.kafka_offset, proven.chain_prev_offset), (2, 1));
        // The verifier fed the proven copy in its place sees a clean chain.
        let mut v = Verifier::new("t/0".into(), true);
        for r in [&rows[0], &rows[1], &proven, &rows[3], &rows[4], &rows[5]] {
            v.push(r);
        }
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        // A different event under the same key is not a copy.
        let mut other = survivor.clone();
        other.resource_id = "Observation/other".into();
        assert!(collapsed_copy(&other, "t", 0, 2, Some((1, &pred.record_hash)), succ).is_none());
    }

    #[test]
    fn replays_reproduce_hashes_and_clean_chains_verify() {
        let a = chain(&[0, 1, 2, 4, 5]);
        let b = chain(&[0, 1, 2, 4, 5]);
        assert_eq!(a, b);
        assert!(verify(&a).is_empty());
        // ingested_at is not covered: a replay stamped later still matches.
        let mut c = a.clone();
        c[2].ingested_at = 99;
        assert!(verify(&c).is_empty());
    }

    #[test]
    fn finds_each_kind_of_tampering_at_its_position() {
        let good = chain(&[0, 1, 2, 3, 5, 6]);
        let mut altered = good.clone();
        altered[2].user_sub = "someone-else".into();
        assert_eq!(verify(&altered)[0].position(), ("t/0", 2));
        assert_eq!(verify(&altered)[0].kind(), "altered");

        let mut deleted = good.clone();
        deleted.remove(3);
        assert_eq!(
            verify(&deleted),
            vec![Finding::Missing {
                chain: "t/0".into(),
                offset: 3,
                referenced_by: 5
            }]
        );

        let mut forged = good.clone();
        let mut f = row(4);
        f.chain_prev_offset = 3;
        f.record_hash = record_hash(&good[3].record_hash, &f);
        forged.insert(4, f);
        let found = verify(&forged);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].kind(), found[0].position()),
            ("unreferenced", ("t/0", 4))
        );

        let mut swapped = good.clone();
        swapped[1].kafka_offset = 2;
        swapped[2].kafka_offset = 1;
        swapped.swap(1, 2);
        let found = verify(&swapped);
        assert_eq!(
            (found[0].kind(), found[0].position()),
            ("altered", ("t/0", 1))
        );

        let mut dup = good.clone();
        let mut d = good[2].clone();
        d.event_id = "other".into();
        dup.insert(3, d);
        assert!(verify(&dup).iter().any(|f| f.kind() == "duplicate"));
    }

    #[test]
    fn resuming_after_an_expired_prefix_checks_the_rest_against_the_anchor() {
        let good = chain(&[0, 1, 2, 3, 4, 5]);
        // Offsets 0..=2 expired; the signed head of a checkpoint ending at 2 is the anchor.
        let anchor = (2, good[2].record_hash);
        let mut v = Verifier::new("t/0".into(), true);
        v.resume(Some(anchor));
        for r in &good[3..] {
            v.push(r);
        }
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        assert_eq!(v.checked, 3);
        // The first remaining record altered: caught against the anchor.
        let mut altered = good[3..].to_vec();
        altered[0].user_sub = "someone-else".into();
        let mut v = Verifier::new("t/0".into(), true);
        v.resume(Some(anchor));
        for r in &altered {
            v.push(r);
        }
        assert_eq!(v.findings.len(), 1);
        assert_eq!(v.findings[0].position(), ("t/0", 3));
        // Without an anchor the first remaining record is taken as is, its successors are
        // still checked, and a later deletion is still missing.
        let mut v = Verifier::new("t/0".into(), true);
        v.resume(None);
        for r in [&good[3], &good[5]] {
            v.push(r);
        }
        assert_eq!(
            v.findings,
            vec![Finding::Missing {
                chain: "t/0".into(),
                offset: 4,
                referenced_by: 5
            }]
        );
    }
}
