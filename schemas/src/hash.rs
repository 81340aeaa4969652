//! The record-hash column of the audit rows: a SHA-256 as 32 raw bytes (`FixedString(32)`
//! in ClickHouse), hex in every JSON form. How the hash is computed and chained is
//! `custos_integrity::chain`; this module only holds the value type the row declares.

/// A record hash: SHA-256, 32 raw bytes.
pub type Hash = [u8; 32];

/// The predecessor hash of the first record of a chain (and the `record_hash` of an
/// unchained row: no SHA-256 output is all zeros in practice).
pub const GENESIS: Hash = [0u8; 32];

/// Lower-case hex of a hash (how checkpoints, reports and proofs show it).
pub fn to_hex(hash: &Hash) -> String {
    hex::encode(hash)
}

/// A hash from its hex form; `None` unless exactly 64 hex digits.
pub fn from_hex(s: &str) -> Option<Hash> {
    let mut out = GENESIS;
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Serde form of a [`Hash`](type@Hash): 64 hex digits in human-readable formats (JSON answers and
/// proofs), 32 raw bytes in ClickHouse's RowBinary (`FixedString(32)`).
pub mod hash_serde {
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    use super::Hash;

    /// Serializes `hash`.
    pub fn serialize<S: Serializer>(hash: &Hash, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            super::to_hex(hash).serialize(s)
        } else {
            hash.serialize(s)
        }
    }

    /// Deserializes a hash.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            super::from_hex(&s).ok_or_else(|| D::Error::custom("expected 64 hex digits"))
        } else {
            Hash::deserialize(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Wrapped(#[serde(with = "hash_serde")] Hash);

    #[test]
    fn hex_round_trips_and_only_64_digits_parse() {
        let mut h = GENESIS;
        h[0] = 0xab;
        h[31] = 0x01;
        let hex = to_hex(&h);
        assert_eq!(hex.len(), 64);
        assert!(hex.starts_with("ab00") && hex.ends_with("01"));
        assert_eq!(from_hex(&hex), Some(h));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex(&"zz".repeat(32)), None);
        assert_eq!(from_hex(&"00".repeat(33)), None);
    }

    #[test]
    fn json_carries_hex_and_refuses_anything_else() {
        let w = Wrapped([7u8; 32]);
        let json = serde_json::to_string(&w).expect("serialize");
        assert_eq!(json, format!("\"{}\"", "07".repeat(32)));
        assert_eq!(serde_json::from_str::<Wrapped>(&json).expect("parse"), w);
        assert!(serde_json::from_str::<Wrapped>("\"07\"").is_err());
    }
}
