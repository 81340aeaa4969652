//! Compact JWS (RFC 7515) signed ES256 (P-256, RFC 7518 §3.4) under a key id, with the
//! public key published as a JWKS. Custos signs two kinds of token this way: the chain
//! checkpoints of [`crate::checkpoint`] and the consent service's Security Event Tokens.
//! Each kind has its own `typ`, and verification accepts only that `typ` and `alg` ES256.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::DecodePrivateKey;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

/// Signing and verification errors.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum JwsError {
    /// The private key is not a PKCS#8 PEM P-256 key.
    #[error("signing key is not a PKCS#8 PEM P-256 private key")]
    BadKey,
    /// Not three base64url parts of the expected shape.
    #[error("malformed JWS")]
    Malformed,
    /// Header algorithm or type not the expected ones.
    #[error("unexpected JWS header (alg must be ES256, typ {0})")]
    Header(&'static str),
    /// No key in the JWKS has the header's `kid`.
    #[error("unknown key id")]
    UnknownKid,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
}

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

/// An ES256 private key and its key id.
#[derive(Clone)]
pub struct Es256Signer {
    kid: String,
    key: SigningKey,
}

impl std::fmt::Debug for Es256Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Es256Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Es256Signer {
    /// Loads a PKCS#8 PEM P-256 private key.
    pub fn from_pem(pem: &str, kid: &str) -> Result<Es256Signer, JwsError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|_| JwsError::BadKey)?;
        Ok(Es256Signer::new(key, kid))
    }

    /// Wraps an existing key.
    pub fn new(key: SigningKey, kid: &str) -> Es256Signer {
        Es256Signer {
            kid: kid.to_owned(),
            key,
        }
    }

    /// A fresh random key (tests and development).
    pub fn random(kid: &str) -> Es256Signer {
        Es256Signer::new(SigningKey::random(&mut rand_core::OsRng), kid)
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The compact JWS of `claims` with header `typ`. ECDSA nonces follow RFC 6979, so the
    /// same claims always give the same bytes.
    pub fn sign<T: Serialize + ?Sized>(&self, typ: &str, claims: &T) -> String {
        let header = Header {
            alg: "ES256",
            typ,
            kid: &self.kid,
        };
        let h = B64.encode(serde_json::to_vec(&header).unwrap_or_default());
        let p = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let input = format!("{h}.{p}");
        let sig: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.to_bytes()))
    }

    /// The public key as a JWKS document (`kid`, `alg` ES256, `use` sig).
    pub fn jwks(&self) -> Value {
        let jwk = p256::PublicKey::from(self.key.verifying_key()).to_jwk();
        let mut v: Value = serde_json::from_str(&jwk.to_string()).unwrap_or_else(|_| json!({}));
        v["kid"] = json!(self.kid);
        v["alg"] = json!("ES256");
        v["use"] = json!("sig");
        json!({ "keys": [v] })
    }
}

/// Verifies a compact JWS of type `typ` against a JWKS document and returns its claims.
pub fn verify<T: DeserializeOwned>(
    jws: &str,
    typ: &'static str,
    jwks: &Value,
) -> Result<T, JwsError> {
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed);
    };
    let header_bytes = B64.decode(h).map_err(|_| JwsError::Malformed)?;
    let header: Header<'_> =
        serde_json::from_slice(&header_bytes).map_err(|_| JwsError::Malformed)?;
    if header.alg != "ES256" || header.typ != typ {
        return Err(JwsError::Header(typ));
    }
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == header.kid))
        .ok_or(JwsError::UnknownKid)?;
    // Only the key members: the parser rejects members such as kid, alg and use.
    let minimal = json!({"kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"]});
    let public =
        p256::PublicKey::from_jwk_str(&minimal.to_string()).map_err(|_| JwsError::UnknownKid)?;
    let sig_bytes = B64.decode(s).map_err(|_| JwsError::Malformed)?;
    let sig = Signature::from_slice(&sig_bytes).map_err(|_| JwsError::BadSignature)?;
    VerifyingKey::from(public)
        .verify(format!("{h}.{p}").as_bytes(), &sig)
        .map_err(|_| JwsError::BadSignature)?;
    B64.decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwsError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_verifies_and_rejects() {
        let s = Es256Signer::random("k1");
        let claims = json!({"a": 1, "b": "x"});
        let jws = s.sign("test+jwt", &claims);
        assert_eq!(jws, s.sign("test+jwt", &claims), "RFC 6979: stable bytes");
        let jwks = s.jwks();
        assert_eq!(verify::<Value>(&jws, "test+jwt", &jwks), Ok(claims.clone()));
        // Another typ, another key under the same kid, an unknown kid, altered claims.
        assert_eq!(
            verify::<Value>(&jws, "other+jwt", &jwks),
            Err(JwsError::Header("other+jwt"))
        );
        let rogue = Es256Signer::random("k1").sign("test+jwt", &claims);
        assert_eq!(
            verify::<Value>(&rogue, "test+jwt", &jwks),
            Err(JwsError::BadSignature)
        );
        let stranger = Es256Signer::random("k2").sign("test+jwt", &claims);
        assert_eq!(
            verify::<Value>(&stranger, "test+jwt", &jwks),
            Err(JwsError::UnknownKid)
        );
        let mut parts: Vec<String> = jws.split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(br#"{"a":2,"b":"x"}"#);
        assert_eq!(
            verify::<Value>(&parts.join("."), "test+jwt", &jwks),
            Err(JwsError::BadSignature)
        );
        // alg none, with the original signature or none at all.
        let none = B64.encode(br#"{"alg":"none","typ":"test+jwt","kid":"k1"}"#);
        parts[0] = none;
        assert_eq!(
            verify::<Value>(&parts.join("."), "test+jwt", &jwks),
            Err(JwsError::Header("test+jwt"))
        );
        assert_eq!(
            verify::<Value>("a.b", "test+jwt", &jwks),
            Err(JwsError::Malformed)
        );
        assert!(!format!("{s:?}").contains("SigningKey"));
    }
}
