//! Object storage: the seam every write and read of an object goes through.
//!
//! [`ObjectStore`] is small and synchronous (callers run it through [`crate::blocking::run`])
//! and has no "overwrite": [`ObjectStore::put_new`] either creates the object or reports that
//! the key is taken, so an upload can never replace a photo someone else stored. One file per
//! backend implements it ([`local`], [`supabase`], [`s3`]); [`open`] builds the configured one,
//! and [`monitored`] wraps it to record what the last real operation found, for health.
//! [`signing`] signs the local backend's `/media` URLs in private mode.

pub mod local;
pub mod monitored;
pub mod open;
pub mod s3;
pub mod signing;
pub mod supabase;

use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// This call created the object.
    Created,
    /// An object with this key already exists; it was not touched.
    AlreadyExists,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Could not talk to the storage service (connection refused, timeout, cut off, ...).
    #[error("storage unreachable: {0}")]
    Unavailable(String),
    /// The storage service refused the request as a whole (credentials, bucket, its own
    /// failure): `status` is the HTTP status it meant (for Supabase, the one in its body) and
    /// `message` its own words.
    #[error("storage refused the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// The storage service refused this one object (too large, a key it does not take); other
    /// objects would be stored.
    #[error("storage refused the object (HTTP {status}): {message}")]
    ObjectRefused { status: u16, message: String },
    /// The service answered in a way this server cannot read (a listing it cannot parse).
    #[error("storage answered in a way this server cannot read: {0}")]
    Unreadable(String),
    /// This server will not use the store as configured (it overwrites photos, its settings do
    /// not make a URL): only a change of settings or of server fixes it.
    #[error("storage cannot be used: {0}")]
    Unusable(String),
    /// The store cannot do this at all (read or list its objects).
    #[error("this store cannot {0}")]
    Unsupported(&'static str),
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
}

pub trait ObjectStore: Send + Sync + 'static {
    /// Stores `bytes` under `key` unless the key exists.
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<Put, StorageError>;
    /// Removes `key`. Removing a missing key is not an error.
    fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Whether `key` exists.
    fn exists(&self, key: &str) -> Result<bool, StorageError>;
    /// The object's bytes, None if there is no such object (for `variants backfill`).
    fn get(&self, _key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Err(StorageError::Unsupported("read its objects"))
    }
    /// The public URL recorded for `key`.
    fn public_url(&self, key: &str) -> String;
    /// Private mode: URLs that read `keys` (in order) for `lifetime`, and no longer.
    fn signed_urls(
        &self,
        _keys: &[&str],
        _lifetime: Duration,
    ) -> Result<Vec<String>, StorageError> {
        Err(StorageError::Unsupported("sign URLs"))
    }
    /// Whether the store would take `key` at all (Supabase refuses many characters). Keys this
    /// server makes are accepted everywhere; this sorts out keys of earlier schemes.
    fn accepts_key(&self, key: &str) -> bool {
        !key.is_empty()
    }
    /// After a write failed in transit, how long it may still land on the other side.
    fn settle_time(&self) -> Duration {
        Duration::ZERO
    }
    /// One cheap request proving the store is reachable and accepts our credentials.
    fn check(&self) -> Result<(), StorageError> {
        Ok(())
    }
    /// Every object, for `portfolio-server reconcile`; `progress` is told the count so far.
    fn list(&self, _progress: &mut dyn FnMut(usize)) -> Result<Vec<ObjectInfo>, StorageError> {
        Err(StorageError::Unsupported("list its objects"))
    }
    /// What and where the store is, for the start-up log (never a secret).
    fn describe(&self) -> String {
        "custom store".into()
    }
}

/// The object key a recorded URL points at in `store`, or None when the URL is elsewhere (the
/// original's demo data, another bucket).
pub fn key_of_url(store: &dyn ObjectStore, url: &str) -> Option<String> {
    let rest = url.strip_prefix(&store.public_url(""))?;
    let key = percent_encoding::percent_decode_str(rest)
        .decode_utf8_lossy()
        .into_owned();
    (!key.is_empty()).then_some(key)
}

/// Private mode's check: whether anyone can read this store's objects without a signature. A
/// probe object is written, asked for at its public URL with no credentials, and deleted.
pub fn readable_anonymously(
    store: &dyn ObjectStore,
    timeout: Duration,
) -> Result<bool, StorageError> {
    let key = probe_key();
    store.put_new(&key, b"probe")?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let answer = agent.get(&store.public_url(&key)).call();
    let _ = store.delete(&key);
    match answer {
        Ok(r) => Ok(r.status().is_success()),
        Err(e) => Err(StorageError::Unavailable(e.to_string())),
    }
}

/// One stored object, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    /// When it was last written, if the store says.
    pub modified: Option<std::time::SystemTime>,
}

/// A key for a check's probe object: a leading `.` (never a photo's key, left out of listings),
/// then only digits and `-`, which every backend takes.
pub fn probe_key() -> String {
    format!(
        ".probe-{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
        PROBE_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Everything but RFC 3986's unreserved characters is percent-encoded in a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `Cache-Control` of every object written to a remote store, as `/media` sends for local files:
/// a key never changes content (a new photo gets a new key), so browsers and CDNs may keep it
/// for a year without revalidating. Supabase stores the header with the object and serves it
/// back (without it, it serves `no-cache`).
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Percent-encodes a key (or bucket name) as one URL path segment.
pub fn encode_key(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, SEGMENT).to_string()
}

/// The largest object read back (`variants backfill`): far above any accepted upload.
pub(crate) const MAX_OBJECT_BYTES: u64 = 256 << 20;

/// Makes each probe key of this process unique.
static PROBE_COUNTER: AtomicU64 = AtomicU64::new(0);

#[cfg(test)]
mod tests {
    use super::{supabase::supabase_accepts, *};

    #[test]
    fn a_probe_key_is_hidden_unique_and_taken_by_every_remote_backend() {
        let (a, b) = (probe_key(), probe_key());
        assert_ne!(a, b, "two probes never share a key");
        let prefix = format!(".probe-{}-", std::process::id());
        for key in [&a, &b] {
            let rest = key.strip_prefix(&prefix).expect(key);
            let (time, n) = rest.split_once('-').expect(key);
            for part in [time, n] {
                assert!(
                    !part.is_empty() && part.bytes().all(|c| c.is_ascii_digit()),
                    "{key}"
                );
            }
            assert!(supabase_accepts(key), "{key}");
        }
    }
}
