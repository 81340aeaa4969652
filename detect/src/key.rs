//! Fixed-size keys for the detectors' maps, so the per-event path looks up and inserts
//! without allocating: composite keys (tenant, client, subject, ...) hashed to 128 bits
//! (two multiply-rotate lanes over 8-byte words, stable across builds and releases, so
//! snapshots stay valid), and event keys (32 hex digits) held as their 128-bit value.
//!
//! The hash is not collision resistant against a chosen input; an attacker who controls two
//! identifiers of one key could at worst merge two users' counters. With 128 bits, accidental
//! collisions are negligible.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// Two independent 64-bit lanes over 8-byte words (multiply-rotate, finished with an
/// avalanche): stable across builds and releases, so snapshots stay valid.
#[derive(Clone, Copy)]
struct Lanes(u64, u64);

impl Lanes {
    #[inline]
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K1);
        self.1 = (self.1.rotate_left(7) ^ w).wrapping_mul(K2);
    }

    #[inline]
    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        // The length ends each part, so `["ab", "c"]` and `["a", "bc"]` differ.
        self.word(u64::from_le_bytes(w) ^ ((b.len() as u64) << 56) ^ 0xff);
    }

    fn finish(self) -> u128 {
        let mix = |mut x: u64| {
            x ^= x >> 33;
            x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
            x ^= x >> 33;
            x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            x ^ (x >> 33)
        };
        (u128::from(mix(self.0 ^ self.1.rotate_left(17))) << 64) | u128::from(mix(self.1))
    }
}

/// A 128-bit hash of `parts`, each part delimited by its length.
pub fn key(parts: &[&str]) -> u128 {
    let mut h = Lanes(0x243F_6A88_85A3_08D3, 0x1319_8A2E_0370_7344);
    for p in parts {
        h.bytes(p.as_bytes());
    }
    h.finish()
}

/// An event key (`AuditRow::event_key`, 32 lowercase hex digits) as a number; any other
/// string is hashed.
pub fn event_key(s: &str) -> u128 {
    if s.len() == 32 {
        if let Ok(v) = u128::from_str_radix(s, 16) {
            return v;
        }
    }
    key(&["event", s])
}

/// Back to the 32 hex digits of `AuditRow::event_key`.
pub fn event_key_hex(k: u128) -> String {
    format!("{k:032x}")
}

/// A hasher for keys that are already hashes: the low 64 bits are the hash.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= v as u64 ^ (v >> 64) as u64;
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

/// A map keyed by a 128-bit hash.
pub type KeyMap<V> = HashMap<u128, V, BuildHasherDefault<PassThrough>>;

/// Serializes a [`KeyMap`] as a list of `[key, value]` pairs (JSON has no 128-bit keys).
pub mod keymap_serde {
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::KeyMap;

    /// Serializes the map as pairs, the key as a hex string.
    pub fn serialize<V: Serialize, S: Serializer>(
        map: &KeyMap<V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter().map(|(k, v)| (format!("{k:032x}"), v)))
    }

    /// Reads the pairs back.
    pub fn deserialize<'de, V: DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<KeyMap<V>, D::Error> {
        let pairs: Vec<(String, V)> = Vec::deserialize(d)?;
        let mut map = KeyMap::default();
        map.reserve(pairs.len());
        for (k, v) in pairs {
            let k = u128::from_str_radix(&k, 16).map_err(serde::de::Error::custom)?;
            map.insert(k, v);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_separated() {
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]));
        assert_eq!(key(&["a", "b"]), key(&["a", "b"]));
    }

    #[test]
    fn event_keys_round_trip() {
        let k = "0123456789abcdef0011223344556677";
        assert_eq!(event_key_hex(event_key(k)), k);
        assert_ne!(event_key("short"), event_key("other"));
    }
}
