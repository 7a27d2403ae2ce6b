//! Signed `/media` URLs, for the local backend in private mode.
//!
//! A URL reads one object until its expiry: `/media/<key>?expires=<unix seconds>&signature=<hex>`,
//! the signature being HMAC-SHA256 (RFC 2104, the `hmac` crate) of `<key>\n<expires>` under a
//! secret only this server knows. Changing the key or the expiry breaks the signature; the
//! comparison is constant-time. The secret is `storage.signing_key`, or 32 random bytes made on
//! the first start and kept in `storage.signing_key_path` (mode 0600), so URLs stay valid
//! across restarts.

use std::{io, path::Path, time::Duration};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::StorageSettings;

/// Why a `/media` request is refused in private mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No `expires` or `signature`, or one that is not a number / hex.
    Unsigned,
    /// The signature is not this key's and expiry's.
    Forged,
    /// The URL was good until a moment now past.
    Expired,
}

impl Refused {
    /// What the 403 says.
    pub fn detail(self) -> &'static str {
        match self {
            Refused::Unsigned => {
                "Photos are private: this URL is not signed (ask the listing for a fresh one)"
            }
            Refused::Forged => "This URL's signature does not match it",
            Refused::Expired => "This URL has expired (ask the listing for a fresh one)",
        }
    }
}

/// The secret URLs are signed with.
pub struct UrlKey(Vec<u8>);

impl std::fmt::Debug for UrlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlKey(..)")
    }
}

/// Bytes of a key made on first start.
const MADE_KEY_BYTES: usize = 32;

impl UrlKey {
    pub fn new(secret: &[u8]) -> UrlKey {
        UrlKey(secret.to_vec())
    }

    /// A random key no one holds: it checks no URL (when the real one cannot be read).
    pub fn unknown() -> UrlKey {
        let mut bytes = vec![0u8; MADE_KEY_BYTES];
        // Without randomness, all zeros is as unknown to a client as any.
        let _ = getrandom::fill(&mut bytes);
        UrlKey(bytes)
    }

    /// `storage.signing_key`, or the key kept in `storage.signing_key_path` (made there now if
    /// there is none).
    pub fn from_settings(s: &StorageSettings) -> io::Result<UrlKey> {
        match &s.signing_key {
            Some(secret) if !secret.expose().is_empty() => {
                Ok(UrlKey::new(secret.expose().as_bytes()))
            }
            _ => UrlKey::kept_in(&s.signing_key_path),
        }
    }

    /// The key in `path` (hex), made and written there first if the file does not exist.
    fn kept_in(path: &Path) -> io::Result<UrlKey> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = unhex(text.trim())
                    .filter(|b| b.len() >= 16)
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{} does not hold a signing key (hex, at least 16 bytes)",
                                path.display()
                            ),
                        )
                    })?;
                Ok(UrlKey(bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut bytes = vec![0u8; MADE_KEY_BYTES];
                getrandom::fill(&mut bytes).map_err(io::Error::other)?;
                write_private(path, &crate::model::hex(&bytes))?;
                tracing::info!(path = %path.display(), "made a key for signing /media URLs");
                Ok(UrlKey(bytes))
            }
            Err(e) => Err(e),
        }
    }

    fn mac(&self, key: &str, expires: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The query that lets `key` be read until `expires` (Unix seconds).
    pub fn query(&self, key: &str, expires: u64) -> String {
        let signature = self.mac(key, expires).finalize().into_bytes();
        format!(
            "expires={expires}&signature={}",
            crate::model::hex(&signature)
        )
    }

    /// The query for `key`, good for `lifetime` from `now` (Unix seconds).
    pub fn query_for(&self, key: &str, now: u64, lifetime: Duration) -> String {
        self.query(key, now.saturating_add(lifetime.as_secs()))
    }

    /// Whether `query` lets `key` be read at `now` (Unix seconds); the expiry when it does.
    pub fn check(&self, key: &str, query: Option<&str>, now: u64) -> Result<u64, Refused> {
        let (mut expires, mut signature) = (None, None);
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match name.as_ref() {
                "expires" => expires = Some(value.into_owned()),
                "signature" => signature = Some(value.into_owned()),
                _ => {}
            }
        }
        // Digits only: `parse` would also take a sign (`+1000`), another spelling of one URL.
        let expires: u64 = expires
            .filter(|e| e.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|e| e.parse().ok())
            .ok_or(Refused::Unsigned)?;
        let signature = signature
            .as_deref()
            .and_then(unhex)
            .ok_or(Refused::Unsigned)?;
        self.mac(key, expires)
            .verify_slice(&signature)
            .map_err(|_| Refused::Forged)?;
        if now > expires {
            return Err(Refused::Expired);
        }
        Ok(expires)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Writes `text` to a new file at `path` readable by this user only, atomically (a temporary
/// file renamed into place, so a crash leaves either no key or a whole one).
fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    // Another process may have made one meanwhile: keep the first, so both sign alike.
    match std::fs::hard_link(&tmp, path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    std::fs::remove_file(&tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(key: &UrlKey, name: &str, expires: u64) -> String {
        key.query(name, expires)
    }

    #[test]
    fn a_signed_query_reads_its_key_until_its_expiry() {
        let k = UrlKey::new(b"a secret of some length");
        let q = signed(&k, "sunset.jpg", 1000);
        assert_eq!(k.check("sunset.jpg", Some(&q), 999), Ok(1000));
        assert_eq!(k.check("sunset.jpg", Some(&q), 1000), Ok(1000));
        assert_eq!(k.check("sunset.jpg", Some(&q), 1001), Err(Refused::Expired));
        // Other parameters (a cache buster) change nothing.
        assert_eq!(
            k.check("sunset.jpg", Some(&format!("v=2&{q}")), 5),
            Ok(1000)
        );
    }

    #[test]
    fn anything_changed_or_missing_is_refused() {
        let k = UrlKey::new(b"a secret of some length");
        let q = signed(&k, "sunset.jpg", 1000);
        let sig = q.split_once("signature=").unwrap().1;
        // Another key, a later expiry, another secret: forged.
        assert_eq!(k.check("other.jpg", Some(&q), 5), Err(Refused::Forged));
        let later = format!("expires=2000&signature={sig}");
        assert_eq!(k.check("sunset.jpg", Some(&later), 5), Err(Refused::Forged));
        let other = UrlKey::new(b"another secret");
        assert_eq!(other.check("sunset.jpg", Some(&q), 5), Err(Refused::Forged));
        let last = if sig.ends_with('0') { '1' } else { '0' };
        let flipped = format!("expires=1000&signature={}{last}", &sig[..sig.len() - 1]);
        assert_eq!(
            k.check("sunset.jpg", Some(&flipped), 5),
            Err(Refused::Forged)
        );
        let short = format!("expires=1000&signature={}", &sig[..sig.len() - 2]);
        assert_eq!(k.check("sunset.jpg", Some(&short), 5), Err(Refused::Forged));
        // Missing or malformed: unsigned.
        for query in [
            None,
            Some(""),
            Some("expires=1000"),
            Some(&format!("signature={sig}")[..]),
            Some(&format!("expires=&signature={sig}")[..]),
            Some(&format!("expires=-5&signature={sig}")[..]),
            Some(&format!("expires=1e3&signature={sig}")[..]),
            Some(&format!("expires=+1000&signature={sig}")[..]),
            Some("expires=1000&signature="),
            Some("expires=1000&signature=abc"),
            Some("expires=1000&signature=zz"),
        ] {
            assert_eq!(
                k.check("sunset.jpg", query, 5),
                Err(Refused::Unsigned),
                "{query:?}"
            );
        }
    }

    #[test]
    fn a_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing-key");
        let made = UrlKey::kept_in(&path).unwrap();
        assert_eq!(made.0.len(), MADE_KEY_BYTES);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = UrlKey::kept_in(&path).unwrap();
        assert_eq!(made.0, again.0);
        let q = made.query("a.jpg", 10);
        assert_eq!(again.check("a.jpg", Some(&q), 1), Ok(10));
        // Nothing left beside it.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        std::fs::write(&path, "not hex").unwrap();
        assert!(UrlKey::kept_in(&path).is_err());
        std::fs::write(&path, "abcd").unwrap(); // too short
        assert!(UrlKey::kept_in(&path).is_err());
    }

    #[test]
    fn an_empty_key_setting_is_no_key_and_an_unreadable_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = crate::config::Settings::default().storage;
        s.signing_key_path = dir.path().join("signing-key");
        s.signing_key = Some(crate::config::Secret::new(""));
        let made = UrlKey::from_settings(&s).unwrap();
        assert_eq!(
            made.0.len(),
            MADE_KEY_BYTES,
            "the file's key, not the empty one"
        );
        assert!(s.signing_key_path.exists());
        s.signing_key = Some(crate::config::Secret::new("set"));
        assert_eq!(UrlKey::from_settings(&s).unwrap().0, b"set");
        // A path that cannot be read (a folder) is an error, never a new key over it.
        let e = UrlKey::kept_in(dir.path()).unwrap_err();
        assert_ne!(e.kind(), io::ErrorKind::NotFound);
        // Its Debug shows nothing of the secret.
        assert_eq!(format!("{made:?}"), "UrlKey(..)");
    }

    #[test]
    fn a_key_file_another_process_made_first_is_kept_and_other_failures_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing-key");
        std::fs::write(&path, "first").unwrap();
        write_private(&path, "second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first");
        // A name the file system refuses (too long): an error, and nothing left behind.
        let long = dir.path().join(format!("k.{}", "x".repeat(300)));
        assert!(write_private(&long, "key").is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn hex_is_read_back() {
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex(""), None);
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("é0"), None);
    }
}
