//! Signed checkpoints of a chain's head: a compact JWS (ES256, with a key id) over the chain,
//! its offset range, record count, head hash and time range. Anyone holding the JWKS can
//! check that a log they read is the log that was written up to that point.

use serde::{Deserialize, Serialize};

use crate::jws::{self, Es256Signer, JwsError};

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
pub type CheckpointError = JwsError;

/// Signs checkpoints with an ES256 key.
#[derive(Debug, Clone)]
pub struct Signer256(Es256Signer);

impl Signer256 {
    /// Loads a PKCS#8 PEM P-256 private key.
    pub fn from_pem(pem: &str, kid: &str) -> Result<Self, CheckpointError> {
        Es256Signer::from_pem(pem, kid).map(Signer256)
    }

    /// Wraps an existing key.
    pub fn new(key: p256::ecdsa::SigningKey, kid: &str) -> Self {
        Signer256(Es256Signer::new(key, kid))
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        self.0.kid()
    }

    /// The compact JWS of `cp`.
    pub fn sign(&self, cp: &Checkpoint) -> String {
        self.0.sign(TYP, cp)
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        self.0.jwks()
    }
}

/// Verifies a checkpoint JWS against a JWKS document and returns its claims.
pub fn verify(jws: &str, jwks: &serde_json::Value) -> Result<Checkpoint, CheckpointError> {
    jws::verify(jws, TYP, jwks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use p256::ecdsa::SigningKey;

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
