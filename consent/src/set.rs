//! Security Event Tokens (RFC 8417) for the OpenID Shared Signals transmitter: CAEP
//! `session-revoked` events about a subject identified per RFC 9493 (`iss_sub`), signed
//! ES256 with a key id (compact JWS, `typ` `secevent+jwt`). The same revocation and receiver
//! always give the same `jti` and the same claims, so a retried push is the same SET.

use custos_integrity::jws::{self, Es256Signer, JwsError};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// JWS `typ` of a SET (RFC 8417 §2.3).
pub const TYP: &str = "secevent+jwt";
/// CAEP session-revoked event type URI.
pub const SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// RFC 8935 push delivery method URI.
pub const PUSH_DELIVERY: &str = "urn:ietf:rfc:8935";

/// SET signing and verification errors.
pub type SetError = JwsError;

/// The stable `jti` of the SET for a revocation at one receiver.
pub fn stable_jti(revocation_id: &str, receiver: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"custos-set1\x1f");
    h.update(revocation_id.as_bytes());
    h.update([0x1f]);
    h.update(receiver.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// What a session-revoked SET says.
#[derive(Debug, Clone)]
pub struct SessionRevoked<'a> {
    /// `jti`.
    pub jti: &'a str,
    /// `aud` (the receiver).
    pub audience: &'a str,
    /// `iat` and `event_timestamp` (seconds): when the revocation was requested.
    pub requested_at_secs: i64,
    /// Issuer of the subject (the AS).
    pub subject_issuer: &'a str,
    /// Subject at the AS (raw: the receiver must match its sessions).
    pub subject: &'a str,
    /// `txn`: the Custos revocation id (RFC 8417 §2.2).
    pub txn: &'a str,
    /// CAEP `initiating_entity`: `admin`, `user`, `policy` or `system`.
    pub initiating_entity: &'a str,
    /// CAEP `reason_admin` (English).
    pub reason: &'a str,
}

/// Signs SETs with an ES256 key.
#[derive(Debug, Clone)]
pub struct SetSigner {
    issuer: String,
    key: Es256Signer,
}

impl SetSigner {
    /// A signer for `issuer` with a PKCS#8 PEM P-256 key.
    pub fn from_pem(issuer: &str, pem: &str, kid: &str) -> Result<SetSigner, SetError> {
        Ok(SetSigner {
            issuer: issuer.to_owned(),
            key: Es256Signer::from_pem(pem, kid)?,
        })
    }

    /// A signer with a fresh random key (development: the JWKS changes on restart).
    pub fn ephemeral(issuer: &str, kid: &str) -> SetSigner {
        SetSigner {
            issuer: issuer.to_owned(),
            key: Es256Signer::random(kid),
        }
    }

    /// The transmitter's issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The claims of a session-revoked SET.
    pub fn claims(&self, ev: &SessionRevoked<'_>) -> Value {
        json!({
            "iss": self.issuer,
            "jti": ev.jti,
            "iat": ev.requested_at_secs,
            "aud": ev.audience,
            "txn": ev.txn,
            "sub_id": {"format": "iss_sub", "iss": ev.subject_issuer, "sub": ev.subject},
            "events": {
                SESSION_REVOKED: {
                    "event_timestamp": ev.requested_at_secs,
                    "initiating_entity": ev.initiating_entity,
                    "reason_admin": {"en": ev.reason},
                }
            }
        })
    }

    /// The compact JWS of a session-revoked SET.
    pub fn sign(&self, ev: &SessionRevoked<'_>) -> String {
        self.key.sign(TYP, &self.claims(ev))
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> Value {
        self.key.jwks()
    }

    /// The transmitter configuration metadata (`/.well-known/ssf-configuration`).
    pub fn configuration(&self) -> Value {
        json!({
            "spec_version": "1_0",
            "issuer": self.issuer,
            "jwks_uri": format!("{}/jwks.json", self.issuer.trim_end_matches('/')),
            "delivery_methods_supported": [PUSH_DELIVERY],
            "critical_subject_members": ["sub_id"],
            "default_subjects": "NONE",
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6750"}],
        })
    }
}

/// Verifies a SET against a JWKS and returns its claims (used by tests and by receivers
/// written in Rust).
pub fn verify(jws: &str, jwks: &Value) -> Result<Value, SetError> {
    jws::verify(jws, TYP, jwks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;

    fn ev<'a>(jti: &'a str) -> SessionRevoked<'a> {
        SessionRevoked {
            jti,
            audience: "https://gw.example",
            requested_at_secs: 1_780_000_000,
            subject_issuer: "https://as.example/realms/r",
            subject: "user-1",
            txn: "rev-1",
            initiating_entity: "admin",
            reason: "patient withdrew",
        }
    }

    #[test]
    fn signs_verifies_and_is_stable() {
        let s = SetSigner::ephemeral("https://custos.example", "ssf-1");
        let jti = stable_jti("rev-1", "gw");
        assert_eq!(jti, stable_jti("rev-1", "gw"));
        assert_ne!(jti, stable_jti("rev-1", "other"));
        let set = s.sign(&ev(&jti));
        // ECDSA with RFC 6979 nonces: a retry sends the very same bytes.
        assert_eq!(set, s.sign(&ev(&jti)));
        let claims = verify(&set, &s.jwks()).unwrap();
        assert_eq!(claims["jti"], jti.as_str());
        assert_eq!(claims["sub_id"]["format"], "iss_sub");
        assert_eq!(
            claims["events"][SESSION_REVOKED]["initiating_entity"],
            "admin"
        );
        assert_eq!(claims["aud"], "https://gw.example");
        let header: Value =
            serde_json::from_slice(&B64.decode(set.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["typ"], TYP);
        assert_eq!(header["kid"], "ssf-1");
        // Another key under the same kid fails.
        let rogue = SetSigner::ephemeral("https://custos.example", "ssf-1");
        assert_eq!(
            verify(&rogue.sign(&ev(&jti)), &s.jwks()),
            Err(SetError::BadSignature)
        );
        assert_eq!(verify("x.y", &s.jwks()), Err(SetError::Malformed));
        assert_eq!(
            s.configuration()["delivery_methods_supported"][0],
            PUSH_DELIVERY
        );
    }
}
