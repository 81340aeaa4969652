//! Signed checkpoints of a chain's head: a compact JWS (ES256, with a key id) over the chain,
//! its offset range, record count, head hash and time range. Anyone holding the JWKS can
//! check that a log they read is the log that was written up to that point.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::DecodePrivateKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// JWS `typ` of a checkpoint.
pub const TYP: &str = "custos-checkpoint+jwt";

/// What a checkpoint attests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Kafka topic of the chain.
    pub topic: String,
    /// Kafka partition of the chain.
    pub partition: i32,
    /// First offset covered since the previous checkpoint.
    pub first_offset: i64,
    /// Offset of the head record.
    pub last_offset: i64,
    /// Chained records in `[first_offset, last_offset]`.
    pub count: u64,
    /// `record_hash` of the head record.
    pub head_hash: String,
    /// Earliest event time covered (ms).
    pub first_time: i64,
    /// Latest event time covered (ms).
    pub last_time: i64,
    /// When it was signed (s since the epoch).
    pub iat: i64,
}

/// Checkpoint signing and verification errors.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CheckpointError {
    /// The private key is not a PKCS#8 PEM P-256 key.
    #[error("checkpoint key is not a PKCS#8 PEM P-256 private key")]
    BadKey,
    /// The JWS is not three base64url parts of the expected shape.
    #[error("malformed JWS")]
    Malformed,
    /// Header algorithm or type not the expected ones.
    #[error("unexpected JWS header (alg must be ES256, typ {TYP})")]
    Header,
    /// No key in the JWKS has the header's `kid`.
    #[error("unknown key id")]
    UnknownKid,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// Signs checkpoints with an ES256 key.
#[derive(Clone)]
pub struct Signer256 {
    kid: String,
    key: SigningKey,
}

impl std::fmt::Debug for Signer256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer256")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer256 {
    /// Loads a PKCS#8 PEM P-256 private key.
    pub fn from_pem(pem: &str, kid: &str) -> Result<Self, CheckpointError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|_| CheckpointError::BadKey)?;
        Ok(Signer256 {
            kid: kid.to_owned(),
            key,
        })
    }

    /// Wraps an existing key.
    pub fn new(key: SigningKey, kid: &str) -> Self {
        Signer256 {
            kid: kid.to_owned(),
            key,
        }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The compact JWS of `cp`.
    pub fn sign(&self, cp: &Checkpoint) -> String {
        let header = Header {
            alg: "ES256".into(),
            typ: TYP.into(),
            kid: self.kid.clone(),
        };
        let h = B64.encode(serde_json::to_vec(&header).unwrap_or_default());
        let p = B64.encode(serde_json::to_vec(cp).unwrap_or_default());
        let input = format!("{h}.{p}");
        let sig: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.to_bytes()))
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        let jwk = p256::PublicKey::from(self.key.verifying_key()).to_jwk();
        let mut v: serde_json::Value =
            serde_json::from_str(&jwk.to_string()).unwrap_or_else(|_| serde_json::json!({}));
        v["kid"] = serde_json::json!(self.kid);
        v["alg"] = serde_json::json!("ES256");
        v["use"] = serde_json::json!("sig");
        serde_json::json!({ "keys": [v] })
    }
}

/// Verifies a checkpoint JWS against a JWKS document and returns its claims.
pub fn verify(jws: &str, jwks: &serde_json::Value) -> Result<Checkpoint, CheckpointError> {
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CheckpointError::Malformed);
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(CheckpointError::Malformed)?;
    if header.alg != "ES256" || header.typ != TYP {
        return Err(CheckpointError::Header);
    }
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == header.kid.as_str()))
        .ok_or(CheckpointError::UnknownKid)?;
    // Only the key members: the parser rejects members such as kid, alg and use.
    let minimal =
        serde_json::json!({"kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"]});
    let public = p256::PublicKey::from_jwk_str(&minimal.to_string())
        .map_err(|_| CheckpointError::UnknownKid)?;
    let sig_bytes = B64.decode(s).map_err(|_| CheckpointError::Malformed)?;
    let sig = Signature::from_slice(&sig_bytes).map_err(|_| CheckpointError::BadSignature)?;
    VerifyingKey::from(public)
        .verify(format!("{h}.{p}").as_bytes(), &sig)
        .map_err(|_| CheckpointError::BadSignature)?;
    B64.decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(CheckpointError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> Checkpoint {
        Checkpoint {
            topic: "t".into(),
            partition: 1,
            first_offset: 0,
            last_offset: 9,
            count: 10,
            head_hash: "ab".into(),
            first_time: 1,
            last_time: 2,
            iat: 3,
        }
    }

    #[test]
    fn signs_and_verifies_and_rejects_tampering() {
        let signer = Signer256::new(SigningKey::random(&mut rand_core::OsRng), "ck1");
        let jws = signer.sign(&cp());
        let jwks = signer.jwks();
        assert_eq!(verify(&jws, &jwks).unwrap(), cp());
        // Altered claims.
        let mut parts: Vec<String> = jws.split('.').map(str::to_owned).collect();
        let mut other = cp();
        other.count = 11;
        parts[1] = B64.encode(serde_json::to_vec(&other).unwrap());
        assert_eq!(
            verify(&parts.join("."), &jwks),
            Err(CheckpointError::BadSignature)
        );
        // Another key with the same kid.
        let rogue = Signer256::new(SigningKey::random(&mut rand_core::OsRng), "ck1");
        assert_eq!(
            verify(&rogue.sign(&cp()), &jwks),
            Err(CheckpointError::BadSignature)
        );
        // Unknown kid, garbage.
        let stranger = Signer256::new(SigningKey::random(&mut rand_core::OsRng), "zz");
        assert_eq!(
            verify(&stranger.sign(&cp()), &jwks),
            Err(CheckpointError::UnknownKid)
        );
        assert_eq!(verify("a.b", &jwks), Err(CheckpointError::Malformed));
        assert!(!format!("{signer:?}").contains("SigningKey"));
    }
}
