//! Keyed pseudonyms for patient-identifying values.
//!
//! A pseudonym is `ps1.{kid}.{hex}` where `hex` is the first 16 bytes of
//! HMAC-SHA256(key_kid, "custos-ps1" ‖ 0x1f ‖ tenant ‖ 0x1f ‖ kind ‖ 0x1f ‖ value).
//! Domain separation by tenant and identifier kind means the same raw value yields
//! unrelated pseudonyms in two tenants or as two kinds. Writes use the current key;
//! lookups compute the pseudonym under every live key ([`KeyRing::lookup_all`]), so a key
//! rotation loses nothing. Key material never appears in `Debug` output or errors.
//!
//! ```
//! use custos_schemas::{KeyRing, PseudonymKind};
//! let ring = KeyRing::parse("k1=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", Some("k1")).unwrap();
//! let p = ring.pseudonymize("acme", PseudonymKind::Patient, "Patient/123");
//! assert!(p.starts_with("ps1.k1."));
//! assert!(ring.lookup_all("acme", PseudonymKind::Patient, "Patient/123").contains(&p));
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of every pseudonym produced by this module.
pub const PREFIX: &str = "ps1.";
/// Bytes of the HMAC kept in a pseudonym.
const TAG_BYTES: usize = 16;
/// Shortest accepted key.
pub const MIN_KEY_BYTES: usize = 32;

/// The kind of identifier being pseudonymized (part of the HMAC input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PseudonymKind {
    /// A patient id (`Patient/x` references are normalized to the bare id).
    Patient,
    /// An encounter id.
    Encounter,
    /// A resource id in a patient compartment.
    Resource,
    /// The AS subject of a patient user (or of a user of unknown kind).
    Subject,
    /// The IP address of a patient user.
    Ip,
}

impl PseudonymKind {
    fn label(self) -> &'static [u8] {
        match self {
            PseudonymKind::Patient => b"patient",
            PseudonymKind::Encounter => b"encounter",
            PseudonymKind::Resource => b"resource",
            PseudonymKind::Subject => b"subject",
            PseudonymKind::Ip => b"ip",
        }
    }
}

/// Errors loading a key ring.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyRingError {
    /// No keys were given.
    #[error("the key ring is empty: set CUSTOS_PSEUDONYM_KEYS or CUSTOS_PSEUDONYM_KEYS_FILE")]
    Empty,
    /// An entry is not `kid=hex`.
    #[error("key ring entry {index} is not of the form kid=hex")]
    Malformed {
        /// 1-based entry number.
        index: usize,
    },
    /// A key id has characters other than A-Z a-z 0-9 - _ or is longer than 16.
    #[error("key ring entry {index}: key id must be 1-16 characters of A-Z a-z 0-9 - _")]
    BadKid {
        /// 1-based entry number.
        index: usize,
    },
    /// The key is not hex or too short.
    #[error("key ring entry {index}: key must be at least {MIN_KEY_BYTES} bytes of hex")]
    BadKey {
        /// 1-based entry number.
        index: usize,
    },
    /// Two entries share a key id.
    #[error("key ring entry {index}: duplicate key id")]
    DuplicateKid {
        /// 1-based entry number.
        index: usize,
    },
    /// The named current key id is not in the ring.
    #[error("the current key id is not in the key ring")]
    UnknownCurrent,
}

#[derive(Clone)]
struct Key {
    kid: String,
    mac: HmacSha256,
}

/// A set of live HMAC keys, one of which is current (used for writes).
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<Key>,
    current: usize,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("kids", &self.kids())
            .field("current", &self.current_kid())
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl KeyRing {
    /// Parses `kid=hex[,kid=hex...]` (commas or newlines between entries; `#` comments and
    /// blank lines ignored). `current` names the write key; by default the last entry.
    pub fn parse(spec: &str, current: Option<&str>) -> Result<KeyRing, KeyRingError> {
        let mut keys: Vec<Key> = Vec::new();
        let entries = spec
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'));
        for (i, entry) in entries.enumerate() {
            let index = i + 1;
            let (kid, hex_key) = entry
                .split_once('=')
                .ok_or(KeyRingError::Malformed { index })?;
            let (kid, hex_key) = (kid.trim(), hex_key.trim());
            let kid_ok = !kid.is_empty()
                && kid.len() <= 16
                && kid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !kid_ok {
                return Err(KeyRingError::BadKid { index });
            }
            let secret = hex::decode(hex_key).map_err(|_| KeyRingError::BadKey { index })?;
            if secret.len() < MIN_KEY_BYTES {
                return Err(KeyRingError::BadKey { index });
            }
            if keys.iter().any(|k| k.kid == kid) {
                return Err(KeyRingError::DuplicateKid { index });
            }
            let mac =
                HmacSha256::new_from_slice(&secret).map_err(|_| KeyRingError::BadKey { index })?;
            keys.push(Key {
                kid: kid.to_owned(),
                mac,
            });
        }
        if keys.is_empty() {
            return Err(KeyRingError::Empty);
        }
        let current = match current {
            Some(kid) => keys
                .iter()
                .position(|k| k.kid == kid)
                .ok_or(KeyRingError::UnknownCurrent)?,
            None => keys.len() - 1,
        };
        Ok(KeyRing { keys, current })
    }

    /// Key ids in the ring.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    /// The key id used for writes.
    pub fn current_kid(&self) -> &str {
        &self.keys[self.current].kid
    }

    /// The length of a pseudonym under `key`.
    fn pseudonym_len(key: &Key) -> usize {
        PREFIX.len() + key.kid.len() + 1 + TAG_BYTES * 2
    }

    /// Appends the pseudonym of the value `parts` concatenated (already normalized) to `out`.
    fn compute_into(
        out: &mut String,
        key: &Key,
        tenant: &str,
        kind: PseudonymKind,
        parts: &[&str],
    ) {
        // A clone of the keyed prototype: the key's pads are hashed once, at parse time.
        let mut mac = key.mac.clone();
        mac.update(b"custos-ps1\x1f");
        mac.update(tenant.as_bytes());
        mac.update(b"\x1f");
        mac.update(kind.label());
        mac.update(b"\x1f");
        for part in parts {
            mac.update(part.as_bytes());
        }
        let tag = mac.finalize().into_bytes();
        out.reserve(Self::pseudonym_len(key));
        out.push_str(PREFIX);
        out.push_str(&key.kid);
        out.push('.');
        push_hex(out, &tag[..TAG_BYTES]);
    }

    fn compute(key: &Key, tenant: &str, kind: PseudonymKind, value: &str) -> String {
        let mut out = String::with_capacity(Self::pseudonym_len(key));
        Self::compute_into(&mut out, key, tenant, kind, &[normalize(kind, value)]);
        out
    }

    /// The pseudonym of `value` under the current key.
    pub fn pseudonymize(&self, tenant: &str, kind: PseudonymKind, value: &str) -> String {
        Self::compute(&self.keys[self.current], tenant, kind, value)
    }

    /// Appends [`KeyRing::pseudonymize`]`(tenant, kind, value)` to `out`, without an
    /// intermediate string.
    pub(crate) fn pseudonymize_into(
        &self,
        out: &mut String,
        tenant: &str,
        kind: PseudonymKind,
        value: &str,
    ) {
        let key = &self.keys[self.current];
        Self::compute_into(out, key, tenant, kind, &[normalize(kind, value)]);
    }

    /// Appends the resource pseudonym of `{rtype}/{id}` to `out`: the same as
    /// [`KeyRing::pseudonymize`] of [`PseudonymKind::Resource`] and `format!("{rtype}/{id}")`,
    /// without building that string.
    pub(crate) fn pseudonymize_resource_into(
        &self,
        out: &mut String,
        tenant: &str,
        rtype: &str,
        id: &str,
    ) {
        let key = &self.keys[self.current];
        // Resource ids are not normalized (see `normalize`).
        Self::compute_into(out, key, tenant, PseudonymKind::Resource, &[rtype, "/", id]);
    }

    /// The length of a pseudonym under the current key (for preallocating).
    pub(crate) fn current_pseudonym_len(&self) -> usize {
        Self::pseudonym_len(&self.keys[self.current])
    }

    /// The pseudonyms of `value` under every live key (for lookups across rotations).
    pub fn lookup_all(&self, tenant: &str, kind: PseudonymKind, value: &str) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| Self::compute(k, tenant, kind, value))
            .collect()
    }

    /// Whether a stored value is a pseudonym (as opposed to a readable identity).
    pub fn is_pseudonym(value: &str) -> bool {
        value.starts_with(PREFIX)
    }
}

/// Appends the lower-case hex digits of `bytes` to `out` (no intermediate string, unlike
/// `hex::encode`).
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Patient and encounter references are normalized so `Patient/123` and `123` match.
fn normalize(kind: PseudonymKind, value: &str) -> &str {
    let prefix = match kind {
        PseudonymKind::Patient => "Patient/",
        PseudonymKind::Encounter => "Encounter/",
        _ => return value,
    };
    value.strip_prefix(prefix).unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "k1=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "k2=ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    /// HMAC-SHA256 of the module doc's input under K1, computed independently (Python).
    const GOLDEN_PATIENT_123: &str = "ps1.k1.6bce19e6824030d12ba3c6e5b763ad07";

    #[test]
    fn push_hex_matches_hex_encode() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = String::from("x");
        push_hex(&mut out, &bytes);
        assert_eq!(out, format!("x{}", hex::encode(&bytes)));
    }

    #[test]
    fn resource_pseudonyms_match_the_formatted_value() {
        let ring = KeyRing::parse(&format!("{K1},{K2}"), Some("k1")).unwrap();
        let mut out = String::from("Observation/");
        ring.pseudonymize_resource_into(&mut out, "t", "Observation", "o-1");
        let want = ring.pseudonymize("t", PseudonymKind::Resource, "Observation/o-1");
        assert_eq!(out, format!("Observation/{want}"));
        assert_eq!(want.len(), ring.current_pseudonym_len());
        let mut p = String::new();
        ring.pseudonymize_into(&mut p, "t", PseudonymKind::Patient, "Patient/9");
        assert_eq!(p, ring.pseudonymize("t", PseudonymKind::Patient, "9"));
        // Golden value: the stored pseudonyms must not change.
        assert_eq!(
            ring.pseudonymize("acme", PseudonymKind::Patient, "Patient/123"),
            GOLDEN_PATIENT_123
        );
    }

    #[test]
    fn deterministic_and_domain_separated() {
        let ring = KeyRing::parse(K1, None).unwrap();
        let a = ring.pseudonymize("t1", PseudonymKind::Patient, "123");
        assert_eq!(
            a,
            ring.pseudonymize("t1", PseudonymKind::Patient, "Patient/123")
        );
        assert_ne!(a, ring.pseudonymize("t2", PseudonymKind::Patient, "123"));
        assert_ne!(a, ring.pseudonymize("t1", PseudonymKind::Subject, "123"));
        assert!(!a.contains("123"));
        assert_eq!(a.len(), "ps1.k1.".len() + 32);
    }

    #[test]
    fn rotation_lookup_finds_old_pseudonyms() {
        let old = KeyRing::parse(K1, None).unwrap();
        let stored = old.pseudonymize("t", PseudonymKind::Patient, "p9");
        let rotated = KeyRing::parse(&format!("{K1},{K2}"), Some("k2")).unwrap();
        assert_eq!(rotated.current_kid(), "k2");
        let fresh = rotated.pseudonymize("t", PseudonymKind::Patient, "p9");
        assert!(fresh.starts_with("ps1.k2."));
        let all = rotated.lookup_all("t", PseudonymKind::Patient, "p9");
        assert!(all.contains(&stored) && all.contains(&fresh));
    }

    #[test]
    fn rejects_bad_rings_without_echoing_secrets() {
        assert_eq!(KeyRing::parse("", None).unwrap_err(), KeyRingError::Empty);
        assert_eq!(
            KeyRing::parse("k1=abcd", None).unwrap_err(),
            KeyRingError::BadKey { index: 1 }
        );
        assert_eq!(
            KeyRing::parse("k 1=00", None).unwrap_err(),
            KeyRingError::BadKid { index: 1 }
        );
        assert_eq!(
            KeyRing::parse(&format!("{K1},{K1}"), None).unwrap_err(),
            KeyRingError::DuplicateKid { index: 2 }
        );
        assert_eq!(
            KeyRing::parse(K1, Some("nope")).unwrap_err(),
            KeyRingError::UnknownCurrent
        );
        let ring = KeyRing::parse(K1, None).unwrap();
        let dbg = format!("{ring:?}");
        assert!(!dbg.contains("0001020304"));
        let err = KeyRing::parse("k1=zz-secret-zz", None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"));
    }
}
