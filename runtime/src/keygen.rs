//! P-256 signing keys (the ingest's checkpoint key, the consent service's SET key): a new
//! key as PKCS#8 PEM in a new file of mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::Args;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use thiserror::Error;

/// The key could not be written.
#[derive(Debug, Error)]
pub enum KeygenError {
    /// PEM encoding failed.
    #[error("encoding the key: {0}")]
    Encode(String),
    /// The file exists already or cannot be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Arguments of a `keygen` subcommand.
#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Output file (must not exist).
    #[arg(long)]
    pub out: PathBuf,
}

/// Writes a new random P-256 key to `path` (PKCS#8 PEM, mode 0600); refuses to overwrite.
pub fn write_p256_key(path: &Path) -> Result<(), KeygenError> {
    let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeygenError::Encode(e.to_string()))?;
    let write = |source| KeygenError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write)?;
    f.write_all(pem.as_bytes()).map_err(write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::DecodePrivateKey;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_a_private_readable_key_once() {
        let dir = std::env::temp_dir().join(format!("custos-keygen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("k.pem");
        let _ = std::fs::remove_file(&path);
        write_p256_key(&path).expect("written");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let pem = std::fs::read_to_string(&path).expect("read");
        p256::ecdsa::SigningKey::from_pkcs8_pem(&pem).expect("a P-256 PKCS#8 key");
        // A second run never overwrites the key.
        assert!(matches!(
            write_p256_key(&path),
            Err(KeygenError::Write { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), pem);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
