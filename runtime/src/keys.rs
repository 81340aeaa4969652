//! The pseudonym-key settings (`CUSTOS_PSEUDONYM_*`) every service shares, and the one
//! place the key ring is loaded. Keys are never logged (`hide_env_values`, and
//! [`custos_schemas::KeyRing`]'s `Debug` shows key ids only).

use std::path::PathBuf;

use clap::Args;
use custos_schemas::{KeyRing, KeyRingError};
use thiserror::Error;

/// The key ring could not be loaded.
#[derive(Debug, Error)]
pub enum KeyRingLoadError {
    /// The keys are malformed, too short, or the current key id is unknown.
    #[error("pseudonymization keys: {0}")]
    Keys(#[from] KeyRingError),
    /// The key file could not be read.
    #[error("cannot read the pseudonym key file: {0}")]
    File(std::io::Error),
}

/// Where the pseudonymization keys come from.
#[derive(Debug, Clone, Args)]
pub struct PseudonymKeyArgs {
    /// Pseudonymization keys, `kid=hex[,kid=hex]` (at least 32 bytes each; the same ring in
    /// every service).
    #[arg(long, env = "CUSTOS_PSEUDONYM_KEYS", hide_env_values = true)]
    pub pseudonym_keys: Option<String>,
    /// File holding the keys (one `kid=hex` a line); used when CUSTOS_PSEUDONYM_KEYS is unset.
    #[arg(long, env = "CUSTOS_PSEUDONYM_KEYS_FILE")]
    pub pseudonym_keys_file: Option<PathBuf>,
    /// Key id of the current key, used for writes and for the pseudonyms a service records
    /// (default: the last key).
    #[arg(long, env = "CUSTOS_PSEUDONYM_CURRENT_KID")]
    pub pseudonym_current_kid: Option<String>,
}

impl PseudonymKeyArgs {
    /// Loads the key ring from the variable, else from the file.
    pub fn key_ring(&self) -> Result<KeyRing, KeyRingLoadError> {
        let spec = match (&self.pseudonym_keys, &self.pseudonym_keys_file) {
            (Some(spec), _) => spec.clone(),
            (None, Some(path)) => std::fs::read_to_string(path).map_err(KeyRingLoadError::File)?,
            (None, None) => String::new(),
        };
        Ok(KeyRing::parse(
            &spec,
            self.pseudonym_current_kid.as_deref(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "k1=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "k2=202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

    fn args(keys: Option<String>, file: Option<PathBuf>, kid: Option<&str>) -> PseudonymKeyArgs {
        PseudonymKeyArgs {
            pseudonym_keys: keys,
            pseudonym_keys_file: file,
            pseudonym_current_kid: kid.map(str::to_owned),
        }
    }

    #[test]
    fn the_variable_wins_over_the_file_and_the_last_key_is_current() {
        let dir = std::env::temp_dir().join(format!("custos-runtime-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("keys");
        std::fs::write(&file, format!("{K2}\n")).expect("write");
        let ring = args(Some(format!("{K1},{K2}")), Some(file.clone()), None)
            .key_ring()
            .expect("ring");
        assert_eq!(ring.current_kid(), "k2");
        let ring = args(None, Some(file.clone()), None)
            .key_ring()
            .expect("ring");
        assert_eq!(ring.current_kid(), "k2");
        let ring = args(Some(format!("{K1},{K2}")), None, Some("k1"))
            .key_ring()
            .expect("ring");
        assert_eq!(ring.current_kid(), "k1");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn missing_file_short_key_and_unknown_kid_are_errors() {
        let missing = args(None, Some(PathBuf::from("/nonexistent/custos-keys")), None);
        assert!(matches!(missing.key_ring(), Err(KeyRingLoadError::File(_))));
        let short = args(Some("k=00ff".into()), None, None);
        assert!(matches!(short.key_ring(), Err(KeyRingLoadError::Keys(_))));
        let unknown = args(Some(K1.into()), None, Some("nope"));
        assert!(matches!(unknown.key_ring(), Err(KeyRingLoadError::Keys(_))));
        // The message never repeats the key material.
        let e = short.key_ring().expect_err("short").to_string();
        assert!(!e.contains("00ff"), "{e}");
    }
}
