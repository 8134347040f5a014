//! The store's secret key and the AEAD that seals secret values at rest
//! (SPEC 7.4), and where the key comes from.
//!
//! Sealing is XChaCha20-Poly1305 from RustCrypto's `chacha20poly1305`
//! (audited, constant-time in software, so as fast on a machine without
//! AES instructions): a fresh random 24-byte nonce per value, which an
//! extended nonce makes safe however many values one key seals. A sealed
//! value's token is `v1:` and the base64 of nonce, ciphertext and tag; its
//! plaintext is the value's JSON. What a sealed value looks like inside
//! inputs, results and views is the domain's ([`crate::domain::secret`]).
//!
//! The key: `store.secret_key` (32 bytes in base64; in production from
//! `BORA__STORE__SECRET_KEY`); else, for SQLite only, a key file beside the
//! database (`<database>.key`, mode 0600), created at the first start.
//! PostgreSQL, shared by several dispatchers, needs the key configured.
//! The store keeps a known text sealed with the key it first ran with
//! ([`Sealer::check_token`]), so a dispatcher with another key refuses to
//! start. This module knows nothing of where sealed values are kept.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde_json::Value;

use crate::config::StoreSettings;
use crate::store::Backend;

/// The length of the key in bytes.
pub const KEY_LEN: usize = 32;
/// The length of a nonce in bytes (XChaCha20).
const NONCE_LEN: usize = 24;
/// The prefix of every token: the format, for a later change of algorithm.
const VERSION: &str = "v1:";
/// Authenticated with every value: a token of another purpose or format
/// does not open as a sealed value.
const AAD: &[u8] = b"bora sealed value v1";
/// The name of the key check in the store's facts.
pub const KEY_CHECK: &str = "secret_key_check";
/// The text the key check seals.
const KEY_CHECK_TEXT: &str = "bora store secret key check";

/// Why a key could not be had, or a value not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// `store.secret_key` or a key file does not hold a key (what is wrong,
    /// never the key).
    #[error(
        "the secret key {0}; it must be 32 random bytes in base64 (e.g. `openssl rand -base64 32`)"
    )]
    Key(String),
    /// PostgreSQL and no `store.secret_key`.
    #[error(
        "store.secret_key is required with PostgreSQL: set BORA__STORE__SECRET_KEY to 32 random \
         bytes in base64 (e.g. `openssl rand -base64 32`), the same for every dispatcher of the \
         database, and keep it safe: the secrets in the store cannot be read without it"
    )]
    Required,
    /// The key file could not be read or created.
    #[error("secret key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A token that is not one bora made.
    #[error("a sealed value is malformed ({0})")]
    Malformed(&'static str),
    /// A token that does not open with this key.
    #[error(
        "a sealed value does not open with this key: store.secret_key is not the key it was \
         sealed with, or the stored value was altered"
    )]
    Open,
    /// Encryption refused the value (longer than the AEAD allows).
    #[error("a value could not be sealed")]
    Seal,
}

/// The 32 bytes of the store's key. `Debug` never shows them.
#[derive(Clone)]
pub struct SecretKey([u8; KEY_LEN]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    /// The key in `text`: base64 of exactly 32 bytes (surrounding
    /// whitespace ignored).
    ///
    /// # Errors
    /// Not base64, or not 32 bytes; the message never shows the text.
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SealError::Key("is empty".into()));
        }
        let bytes = STANDARD
            .decode(text)
            .map_err(|_| SealError::Key("is not base64".into()))?;
        let key: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SealError::Key(format!("is {} bytes, not {KEY_LEN}", bytes.len())))?;
        Ok(Self(key))
    }

    /// A new random key.
    pub fn generate() -> Self {
        let mut key = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut key);
        Self(key)
    }

    /// The key in base64, for a key file.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

/// Seals and opens values with the store's key; cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    cipher: Arc<XChaCha20Poly1305>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(***)")
    }
}

impl Sealer {
    /// A sealer with `key`.
    pub fn new(key: &SecretKey) -> Self {
        Self {
            cipher: Arc::new(XChaCha20Poly1305::new(&key.0.into())),
        }
    }

    /// The token of `value` sealed (its JSON encrypted with a fresh nonce).
    ///
    /// # Errors
    /// Only for a value longer than the AEAD allows (256 GiB).
    pub fn seal(&self, value: &Value) -> Result<String, SealError> {
        self.seal_bytes(value.to_string().as_bytes())
    }

    fn seal_bytes(&self, plain: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: AAD,
                },
            )
            .map_err(|_| SealError::Seal)?;
        let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        Ok(format!("{VERSION}{}", STANDARD.encode(bytes)))
    }

    /// The value a token sealed.
    ///
    /// # Errors
    /// A token bora did not make, or one sealed with another key (or
    /// altered since).
    pub fn open(&self, token: &str) -> Result<Value, SealError> {
        let plain = self.open_bytes(token)?;
        serde_json::from_slice(&plain).map_err(|_| SealError::Malformed("not JSON inside"))
    }

    fn open_bytes(&self, token: &str) -> Result<Vec<u8>, SealError> {
        let b64 = token
            .strip_prefix(VERSION)
            .ok_or(SealError::Malformed("unknown format"))?;
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| SealError::Malformed("not base64"))?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Malformed("too short"));
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SealError::Malformed("bad nonce"))?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: AAD,
                },
            )
            .map_err(|_| SealError::Open)
    }

    /// A known text sealed with this key, for the store to keep
    /// ([`KEY_CHECK`]).
    ///
    /// # Errors
    /// As [`Sealer::seal`].
    pub fn check_token(&self) -> Result<String, SealError> {
        self.seal_bytes(KEY_CHECK_TEXT.as_bytes())
    }

    /// Whether `token` (the store's key check) was sealed with this key.
    ///
    /// # Errors
    /// [`SealError::Open`] when it was sealed with another key.
    pub fn verify_check(&self, token: &str) -> Result<(), SealError> {
        match self.open_bytes(token)? {
            plain if plain == KEY_CHECK_TEXT.as_bytes() => Ok(()),
            _ => Err(SealError::Open),
        }
    }
}

/// Where the key came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `store.secret_key`.
    Configured,
    /// The key file beside an SQLite database; `created` at this start.
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Whether this start created it.
        created: bool,
    },
}

/// The sealer of the store `settings` names: with `store.secret_key`, or
/// for SQLite without one, with the key file beside the database (created
/// now if missing).
///
/// # Errors
/// A malformed key or key file, a key file that cannot be read or
/// created, or PostgreSQL without `store.secret_key`.
pub fn sealer_for(settings: &StoreSettings) -> Result<(Sealer, KeySource), SealError> {
    if let Some(key) = &settings.secret_key {
        let key = SecretKey::from_base64(key.expose())?;
        return Ok((Sealer::new(&key), KeySource::Configured));
    }
    let url = settings.url.expose();
    match (Backend::of_url(url), key_file_of(url)) {
        (Some(Backend::Sqlite), Some(path)) => {
            let (key, created) = load_or_create_key_file(&path)?;
            Ok((Sealer::new(&key), KeySource::KeyFile { path, created }))
        }
        // An unsupported URL is the store's to refuse, with its own error.
        (Some(Backend::Sqlite), None) | (None, _) => {
            Ok((Sealer::new(&SecretKey::generate()), KeySource::Configured))
        }
        (Some(Backend::Postgres), _) => Err(SealError::Required),
    }
}

/// The key file of an SQLite store URL (`sqlite://PATH[?options]`):
/// `PATH.key`, beside the database.
pub fn key_file_of(store_url: &str) -> Option<PathBuf> {
    let path = store_url.strip_prefix("sqlite://")?;
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && !path.starts_with(':')).then(|| PathBuf::from(format!("{path}.key")))
}

/// Reads the key in the file at `path`, or creates the file (mode 0600,
/// never replacing one made meanwhile) with a new key. Returns the key and
/// whether the file was created.
///
/// # Errors
/// The file cannot be read or created, or does not hold a key.
pub fn load_or_create_key_file(path: &Path) -> Result<(SecretKey, bool), SealError> {
    let file_err = |source| SealError::KeyFile {
        path: path.to_owned(),
        source,
    };
    let key = SecretKey::generate();
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(mut f) => {
            f.write_all(format!("{}\n", key.to_base64()).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(file_err)?;
            Ok((key, true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::metadata(path).map_err(file_err)?;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the secret key file can be read by others than its owner; chmod 600 it");
            }
            let text = std::fs::read_to_string(path).map_err(file_err)?;
            let key = SecretKey::from_base64(&text).map_err(|e| match e {
                SealError::Key(why) => SealError::Key(format!("in {} {why}", path.display())),
                other => other,
            })?;
            Ok((key, false))
        }
        Err(e) => Err(file_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_sealed_value_opens_with_its_key_only() {
        let key = SecretKey::generate();
        let s = Sealer::new(&key);
        let token = s.seal(&json!("hunter2")).unwrap();
        assert!(token.starts_with("v1:"));
        assert!(!token.contains("hunter2"));
        assert_eq!(s.open(&token).unwrap(), json!("hunter2"));
        assert_ne!(token, s.seal(&json!("hunter2")).unwrap(), "fresh nonce");
        let other = Sealer::new(&SecretKey::generate());
        assert!(matches!(other.open(&token), Err(SealError::Open)));
        assert!(matches!(s.open("hunter2"), Err(SealError::Malformed(_))));
        assert!(matches!(s.open("v1:!!"), Err(SealError::Malformed(_))));
        assert!(matches!(s.open("v1:AAAA"), Err(SealError::Malformed(_))));
        let again = Sealer::new(&SecretKey::from_base64(&key.to_base64()).unwrap());
        assert_eq!(again.open(&token).unwrap(), json!("hunter2"));
        s.verify_check(&s.check_token().unwrap()).unwrap();
        assert!(other.verify_check(&s.check_token().unwrap()).is_err());
        // The key check is not a sealed value, nor the other way round.
        assert!(s.open(&s.check_token().unwrap()).is_err());
        assert!(s.verify_check(&token).is_err());
    }

    #[test]
    fn keys_are_32_bytes_of_base64() {
        for (text, why) in [
            ("", "empty"),
            ("not base64!", "not base64"),
            ("AAAA", "3 bytes"),
        ] {
            let e = SecretKey::from_base64(text).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let k = SecretKey::generate();
        assert_eq!(format!("{k:?}"), "SecretKey(***)");
        assert!(SecretKey::from_base64(&format!(" {}\n", k.to_base64())).is_ok());
    }

    #[test]
    fn the_key_file_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bora.db.key");
        let (k1, created) = load_or_create_key_file(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = load_or_create_key_file(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.0, k2.0);
        std::fs::write(&path, "garbage").unwrap();
        let e = load_or_create_key_file(&path).unwrap_err().to_string();
        assert!(e.contains("bora.db.key") && e.contains("not base64"), "{e}");
        assert_eq!(
            key_file_of("sqlite:///var/lib/bora/bora.db?cache=shared"),
            Some(PathBuf::from("/var/lib/bora/bora.db.key"))
        );
        assert_eq!(key_file_of("postgres://x/y"), None);
    }
}
