//! Sealing of the raw identifiers a revocation push needs later (the AS subject, the patient
//! id): XChaCha20-Poly1305 with a random 24-byte nonce, the tenant and consent id as
//! associated data (a sealed value cannot be moved to another consent), and a key id so keys
//! can rotate. A sealed value is `kid.base64url(nonce ‖ ciphertext)`. Sealed values live in
//! `custos.consent_sealed` only, never in audit or history rows; keys never appear in `Debug`
//! output or errors.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use thiserror::Error;

/// Errors loading keys or opening a sealed value (never carrying key or plaintext bytes).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SealError {
    /// No key configured.
    #[error("no sealing key: set CUSTOS_CONSENT_SEAL_KEYS or CUSTOS_CONSENT_SEAL_KEYS_FILE")]
    Empty,
    /// An entry is not `kid=hex` with a 32-byte key and a 1-16 character id.
    #[error(
        "sealing key entry {0} must be kid=<64 hex digits> with a 1-16 character [A-Za-z0-9_-] id"
    )]
    Malformed(usize),
    /// The current key id is not among the keys.
    #[error("the current sealing key id is not configured")]
    UnknownCurrent,
    /// The sealed value names a key id that is not configured.
    #[error("sealed with an unknown key id")]
    UnknownKid,
    /// The sealed value is malformed or was tampered with or moved.
    #[error("sealed value does not open")]
    Open,
}

/// The sealing keys, one of which seals new values.
#[derive(Clone)]
pub struct Sealer {
    keys: Vec<(String, XChaCha20Poly1305)>,
    current: usize,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("kids", &self.keys.iter().map(|k| &k.0).collect::<Vec<_>>())
            .field("current", &self.current_kid())
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Parses `kid=hex[,kid=hex]` (commas or newlines; `#` comments). Keys are 32 bytes.
    /// `current` names the sealing key (default: the last).
    pub fn parse(spec: &str, current: Option<&str>) -> Result<Sealer, SealError> {
        let mut keys: Vec<(String, XChaCha20Poly1305)> = Vec::new();
        let entries = spec
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'));
        for (i, entry) in entries.enumerate() {
            let bad = SealError::Malformed(i + 1);
            let (kid, hex_key) = entry.split_once('=').ok_or(bad.clone())?;
            let kid = kid.trim();
            let kid_ok = !kid.is_empty()
                && kid.len() <= 16
                && kid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            let secret = hex::decode(hex_key.trim()).map_err(|_| bad.clone())?;
            if !kid_ok || secret.len() != 32 || keys.iter().any(|k| k.0 == kid) {
                return Err(bad);
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&secret).map_err(|_| bad)?;
            keys.push((kid.to_owned(), cipher));
        }
        if keys.is_empty() {
            return Err(SealError::Empty);
        }
        let current = match current {
            Some(kid) => keys
                .iter()
                .position(|k| k.0 == kid)
                .ok_or(SealError::UnknownCurrent)?,
            None => keys.len() - 1,
        };
        Ok(Sealer { keys, current })
    }

    /// The key id new values are sealed with.
    pub fn current_kid(&self) -> &str {
        &self.keys[self.current].0
    }

    fn aad(tenant: &str, consent_id: &str) -> Vec<u8> {
        let mut aad = b"custos-seal1\x1f".to_vec();
        aad.extend_from_slice(tenant.as_bytes());
        aad.push(0x1f);
        aad.extend_from_slice(consent_id.as_bytes());
        aad
    }

    /// Seals `plaintext` for (tenant, consent id).
    pub fn seal(&self, tenant: &str, consent_id: &str, plaintext: &str) -> String {
        let (kid, cipher) = &self.keys[self.current];
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = Self::aad(tenant, consent_id);
        // Encryption with a valid key and nonce cannot fail for inputs of this size.
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut buf = nonce.to_vec();
        buf.extend_from_slice(&ct);
        format!("{kid}.{}", B64.encode(buf))
    }

    /// Opens a value sealed for (tenant, consent id).
    pub fn open(&self, tenant: &str, consent_id: &str, sealed: &str) -> Result<String, SealError> {
        let (kid, body) = sealed.split_once('.').ok_or(SealError::Open)?;
        let cipher = &self
            .keys
            .iter()
            .find(|k| k.0 == kid)
            .ok_or(SealError::UnknownKid)?
            .1;
        let buf = B64.decode(body).map_err(|_| SealError::Open)?;
        if buf.len() < 24 + 16 {
            return Err(SealError::Open);
        }
        let (nonce, ct) = buf.split_at(24);
        let aad = Self::aad(tenant, consent_id);
        let pt = cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| SealError::Open)?;
        String::from_utf8(pt).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "s1=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "s2=ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn round_trip_rotation_and_binding() {
        let old = Sealer::parse(K1, None).unwrap();
        let sealed = old.seal("t", "c1", "user-SECRET-1");
        assert!(sealed.starts_with("s1."));
        assert!(!sealed.contains("SECRET"));
        assert_ne!(sealed, old.seal("t", "c1", "user-SECRET-1"), "random nonce");
        assert_eq!(old.open("t", "c1", &sealed).unwrap(), "user-SECRET-1");
        // Bound to its consent.
        assert_eq!(old.open("t", "c2", &sealed), Err(SealError::Open));
        assert_eq!(old.open("u", "c1", &sealed), Err(SealError::Open));
        // Rotation: the new key seals, the old one still opens.
        let ring = Sealer::parse(&format!("{K1}\n{K2}"), None).unwrap();
        assert_eq!(ring.current_kid(), "s2");
        assert_eq!(ring.open("t", "c1", &sealed).unwrap(), "user-SECRET-1");
        let only_new = Sealer::parse(K2, None).unwrap();
        assert_eq!(
            only_new.open("t", "c1", &sealed),
            Err(SealError::UnknownKid)
        );
        // Tampering.
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(old.open("t", "c1", &tampered), Err(SealError::Open));
    }

    #[test]
    fn rejects_bad_keys_without_echoing_them() {
        assert_eq!(Sealer::parse("", None).unwrap_err(), SealError::Empty);
        assert_eq!(
            Sealer::parse("s1=abcd-secret", None).unwrap_err(),
            SealError::Malformed(1)
        );
        assert_eq!(
            Sealer::parse(&format!("{K1},{K1}"), None).unwrap_err(),
            SealError::Malformed(2)
        );
        assert_eq!(
            Sealer::parse(K1, Some("zz")).unwrap_err(),
            SealError::UnknownCurrent
        );
        let s = Sealer::parse(K1, None).unwrap();
        assert!(!format!("{s:?}").contains("0001020304"));
        assert!(!SealError::Malformed(1).to_string().contains("secret"));
    }
}
