//! Object storage behind one small, synchronous interface: a local folder (the default) or
//! Supabase Storage's REST API. Callers run these methods through [`crate::blocking::run`].
//!
//! The interface has no "overwrite": [`ObjectStore::put_new`] either creates the object or reports
//! that the key is taken, so an upload can never replace a photo someone else stored.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::config::{Secret, StorageBackend, StorageSettings};

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

/// One stored object, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    /// When it was last written, if the store says.
    pub modified: Option<std::time::SystemTime>,
}

/// The storage state `/api/health` reports: what the last real operation found.
///
/// - Only a write decides that storage is `ok`: a successful upload, or a check (which writes
///   a probe on the remote backends). A read that succeeds (the HEAD before an upload, a
///   listing) proves nothing about writes, so it never turns a failure into `ok`.
/// - Any call can show a failure: unreachable, refused credentials, a server error.
/// - A refusal of one object (too large, a duplicate) says nothing about the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageState {
    /// Not checked yet.
    Unchecked,
    /// The start-up check is running (uploads and reads do not wait for it).
    Checking,
    /// The last write (or check) succeeded.
    Ok,
    /// Storage answered, but refused our credentials or bucket (fix the settings).
    Refused(String),
    /// Storage did not answer, or answered with a server error.
    Unreachable(String),
    /// A local I/O error (permissions, disk full, ...).
    Failing(String),
}

impl StorageState {
    /// The word `/api/health` shows, and the reason beside it.
    pub fn word_and_reason(&self) -> (&'static str, Option<&str>) {
        match self {
            StorageState::Unchecked => ("unchecked", None),
            StorageState::Checking => ("checking", None),
            StorageState::Ok => ("ok", None),
            StorageState::Refused(r) => ("refused", Some(r)),
            StorageState::Unreachable(r) => ("unreachable", Some(r)),
            StorageState::Failing(r) => ("failing", Some(r)),
        }
    }

    /// The state a write's outcome (or a check's) shows, or None when it says nothing about
    /// the store as a whole (one object refused).
    fn after_write<T>(result: &Result<T, StorageError>) -> Option<StorageState> {
        match result {
            Ok(_) => Some(StorageState::Ok),
            // Any other refusal of a write (a missing bucket, a MIME type the bucket refuses,
            // a region it does not serve) fails every upload until the settings change.
            Err(StorageError::Rejected { status, message }) if *status < 500 => {
                Some(StorageState::Refused(message.clone()))
            }
            Err(e) => Self::after_failure(e),
        }
    }

    /// The state a read's outcome shows: only a failure says anything.
    fn after_read<T>(result: &Result<T, StorageError>) -> Option<StorageState> {
        result.as_ref().err().and_then(Self::after_failure)
    }

    fn after_failure(e: &StorageError) -> Option<StorageState> {
        match e {
            StorageError::Unavailable(m) => Some(StorageState::Unreachable(m.clone())),
            StorageError::Rejected { status, message } => match status {
                401 | 403 => Some(StorageState::Refused(message.clone())),
                500.. => Some(StorageState::Unreachable(format!(
                    "HTTP {status}: {message}"
                ))),
                _ => None,
            },
            StorageError::Unusable(m) => Some(StorageState::Refused(m.clone())),
            StorageError::Io(e) => Some(StorageState::Failing(e.to_string())),
            StorageError::ObjectRefused { .. }
            | StorageError::Unreadable(_)
            | StorageError::Unsupported(_) => None,
        }
    }
}

/// Wraps a store and records the outcome of every call in a [`StorageState`].
pub struct Monitored {
    inner: Arc<dyn ObjectStore>,
    state: Mutex<(StorageState, Instant)>,
    /// A background re-check is running: one at a time, however many ask.
    checking: AtomicBool,
    /// Counts every call that failed (`storage_errors_total`), if set.
    errors: Option<prometheus::IntCounter>,
}

impl Monitored {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Monitored {
        Monitored {
            inner,
            state: Mutex::new((StorageState::Unchecked, Instant::now())),
            checking: AtomicBool::new(false),
            errors: None,
        }
    }

    /// Counts each failed call on `errors`.
    pub fn counting_errors(mut self, errors: prometheus::IntCounter) -> Monitored {
        self.errors = Some(errors);
        self
    }

    /// Runs [`ObjectStore::check`] on a blocking thread unless one is already running.
    pub fn recheck_in_background(self: &Arc<Self>) {
        if self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(crate::blocking::run(move || {
            let _ = this.check();
            this.checking.store(false, Ordering::Release);
        }));
    }

    /// The last known state, and how long ago it was learnt.
    pub fn state(&self) -> (StorageState, Duration) {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (g.0.clone(), g.1.elapsed())
    }

    fn record<T>(
        &self,
        result: Result<T, StorageError>,
        judge: fn(&Result<T, StorageError>) -> Option<StorageState>,
    ) -> Result<T, StorageError> {
        if result.is_err()
            && let Some(errors) = &self.errors
        {
            errors.inc();
        }
        if let Some(state) = judge(&result) {
            self.set(state);
        }
        result
    }

    fn set(&self, state: StorageState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (state, Instant::now());
    }

    /// Marks the start-up check as running: health says `checking` until it ends.
    pub fn checking(&self) {
        self.set(StorageState::Checking);
    }
}

impl ObjectStore for Monitored {
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<Put, StorageError> {
        self.record(self.inner.put_new(key, bytes), StorageState::after_write)
    }
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.record(self.inner.delete(key), StorageState::after_read)
    }
    fn exists(&self, key: &str) -> Result<bool, StorageError> {
        self.record(self.inner.exists(key), StorageState::after_read)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.record(self.inner.get(key), StorageState::after_read)
    }
    fn public_url(&self, key: &str) -> String {
        self.inner.public_url(key)
    }
    fn accepts_key(&self, key: &str) -> bool {
        self.inner.accepts_key(key)
    }
    fn settle_time(&self) -> Duration {
        self.inner.settle_time()
    }
    /// The check's outcome always replaces the state: any refusal of it is the store's.
    fn check(&self) -> Result<(), StorageError> {
        let result = self.inner.check();
        let state = match &result {
            Err(StorageError::ObjectRefused { message, .. }) => {
                StorageState::Refused(message.clone())
            }
            other => StorageState::after_write(other)
                .unwrap_or_else(|| StorageState::Refused(other_reason(other))),
        };
        self.set(state);
        result
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list(&self, progress: &mut dyn FnMut(usize)) -> Result<Vec<ObjectInfo>, StorageError> {
        self.record(self.inner.list(progress), StorageState::after_read)
    }
}

fn other_reason<T>(result: &Result<T, StorageError>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

/// Builds the configured backend.
pub fn from_settings(s: &StorageSettings) -> Box<dyn ObjectStore> {
    match s.backend() {
        StorageBackend::Local => Box::new(LocalStore::new(&s.local_dir, &s.public_base_url)),
        StorageBackend::Supabase => Box::new(SupabaseStore::new(
            s.supabase_url
                .as_deref()
                .expect("checked by Settings::validate"),
            s.supabase_key
                .clone()
                .expect("checked by Settings::validate"),
            &s.supabase_bucket,
            Duration::from_secs(s.timeout_secs.max(1)),
        )),
        StorageBackend::S3 => {
            let region = s.s3_region.as_str();
            let aws = format!("https://s3.{region}.amazonaws.com");
            let config = crate::s3::S3Config {
                endpoint: s.s3_endpoint.as_deref().unwrap_or(&aws),
                path_style: s.s3_path_style,
                bucket: s
                    .s3_bucket
                    .as_deref()
                    .expect("checked by Settings::validate"),
                region,
                access_key_id: s
                    .s3_access_key_id
                    .as_deref()
                    .expect("checked by Settings::validate"),
                secret_access_key: s
                    .s3_secret_access_key
                    .as_ref()
                    .expect("checked by Settings::validate"),
                session_token: s.s3_session_token.as_ref(),
                public_url: s.s3_public_url.as_deref(),
                timeout: Duration::from_secs(s.timeout_secs.max(1)),
            };
            match crate::s3::S3Store::new(&config) {
                Ok(store) => Box::new(store),
                // Only an endpoint the URL parser refuses gets here: say so at every upload.
                Err(e) => Box::new(Misconfigured(e)),
            }
        }
    }
}

/// A store whose settings could not be used: every call fails with why.
struct Misconfigured(String);

impl ObjectStore for Misconfigured {
    fn put_new(&self, _: &str, _: &[u8]) -> Result<Put, StorageError> {
        Err(self.error())
    }
    fn delete(&self, _: &str) -> Result<(), StorageError> {
        Err(self.error())
    }
    fn exists(&self, _: &str) -> Result<bool, StorageError> {
        Err(self.error())
    }
    fn public_url(&self, key: &str) -> String {
        key.to_string()
    }
    fn check(&self) -> Result<(), StorageError> {
        Err(self.error())
    }
}

impl Misconfigured {
    fn error(&self) -> StorageError {
        StorageError::Unusable(self.0.clone())
    }
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
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
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

// ---------------------------------------------------------------------------------------------

/// Files in a folder. Keys are single path components (see [`crate::model::FileName`]).
pub struct LocalStore {
    dir: PathBuf,
    public_base_url: String,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalStore {
    pub fn new(dir: &Path, public_base_url: &str) -> LocalStore {
        LocalStore {
            dir: dir.to_path_buf(),
            public_base_url: public_base_url.trim_end_matches('/').to_string(),
        }
    }

    /// The file of `key`: a single file name of at most 255 bytes without a NUL, not hidden.
    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        if key.is_empty()
            || key.len() > 255
            || key.contains(['/', '\\', '\0'])
            || key.starts_with('.')
        {
            return Err(StorageError::ObjectRefused {
                status: 400,
                message: format!("invalid key `{key}`"),
            });
        }
        Ok(self.dir.join(key))
    }
}

impl LocalStore {
    /// Removes `.upload-<pid>-<n>.tmp` and `.probe-<pid>-<n>.tmp` files whose process is gone
    /// (a crash or a kill between writing and linking). Files of live processes, this one and
    /// others sharing the folder, are left alone. How many went.
    pub fn remove_dead_temp_files(&self) -> io::Result<usize> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let pid = [".upload-", ".probe-"]
                .iter()
                .find_map(|p| name.strip_prefix(p))
                .filter(|_| name.ends_with(".tmp"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            let Some(pid) = pid else { continue };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                match fs::remove_file(self.dir.join(&name)) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }

    /// Opens a stored object for reading: a regular file directly in the folder, never through a
    /// symbolic link (which could point anywhere on the machine). None when there is no such
    /// object (or the name is not a key).
    pub fn open_object(&self, key: &str) -> io::Result<Option<(fs::File, fs::Metadata)>> {
        use std::os::unix::fs::OpenOptionsExt;
        let Ok(path) = self.path(key) else {
            return Ok(None);
        };
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            // ELOOP: the name is a symbolic link.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        Ok(meta.is_file().then_some((file, meta)))
    }
}

impl ObjectStore for LocalStore {
    /// Writes a temporary file, flushes it to disk, then hard-links it under its name. `link`
    /// fails if the name exists, so the final file appears whole and never replaces another.
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<Put, StorageError> {
        let target = self.path(key)?;
        fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(
            ".upload-{}-{}.tmp",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = fs::File::create_new(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::hard_link(&tmp, &target)
        })();
        let _ = fs::remove_file(&tmp);
        match result {
            Ok(()) => Ok(Put::Created),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Put::AlreadyExists),
            Err(e) => Err(e.into()),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        match fs::remove_file(self.path(key)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn exists(&self, key: &str) -> Result<bool, StorageError> {
        Ok(self.path(key)?.try_exists()?)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self.open_object(key)? {
            None => Ok(None),
            Some((mut file, meta)) => {
                use std::io::Read;
                let mut bytes = Vec::with_capacity(meta.len() as usize);
                file.read_to_end(&mut bytes)?;
                Ok(Some(bytes))
            }
        }
    }

    fn public_url(&self, key: &str) -> String {
        format!("{}/{}", self.public_base_url, encode_key(key))
    }

    fn accepts_key(&self, key: &str) -> bool {
        self.path(key).is_ok()
    }

    /// The folder exists (or can be made) and a file can be written in it. Temporary files
    /// left by processes that died while writing are removed on the way.
    fn check(&self) -> Result<(), StorageError> {
        fs::create_dir_all(&self.dir)?;
        match self.remove_dead_temp_files() {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                files = n,
                "removed temporary files of processes that died mid-write"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot look for stale temporary files"),
        }
        let probe = self.dir.join(format!(
            ".probe-{}-{}.tmp",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = fs::File::create(&probe).and_then(|f| f.sync_all());
        let _ = fs::remove_file(&probe);
        Ok(result?)
    }

    fn describe(&self) -> String {
        format!("folder {}", self.dir.display())
    }

    /// Regular files directly in the folder; names starting with `.` (temporary files, probes)
    /// and symbolic links are not objects, nor are names that are not UTF-8 (no key is; such
    /// a file is logged, since nothing here can name it to delete it). A missing folder is an
    /// error that names it: the setting is likely wrong.
    fn list(&self, progress: &mut dyn FnMut(usize)) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::Io(io::Error::new(
                    e.kind(),
                    format!(
                        "the folder {} does not exist (storage.local_dir, \
                         APP_STORAGE__LOCAL_DIR)",
                        self.dir.display()
                    ),
                )));
            }
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                tracing::warn!(
                    file = %entry.file_name().to_string_lossy(),
                    "a file whose name is not UTF-8 is not an object; left alone"
                );
                continue;
            };
            let meta = entry.metadata()?; // of the entry itself: a link is not followed
            if name.starts_with('.') || !meta.is_file() {
                continue;
            }
            out.push(ObjectInfo {
                key: name,
                modified: meta.modified().ok(),
            });
            if out.len() % 1000 == 0 {
                progress(out.len());
            }
        }
        progress(out.len());
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------

/// The largest object read back (`variants backfill`): far above any accepted upload.
pub(crate) const MAX_OBJECT_BYTES: u64 = 256 << 20;

/// Supabase Storage over its REST API.
///
/// Supabase reports nearly every error as HTTP 400 with the real status as a *string*
/// `statusCode` in the JSON body (`../shared/notes/supabase-storage.md`), so outcomes are read
/// from the body, not the HTTP status.
pub struct SupabaseStore {
    base: String,
    key: Secret,
    bucket: String,
    agent: ureq::Agent,
    timeout: Duration,
}

impl SupabaseStore {
    pub fn new(url: &str, key: Secret, bucket: &str, timeout: Duration) -> SupabaseStore {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5).min(timeout)))
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        SupabaseStore {
            base: url.trim_end_matches('/').to_string(),
            key,
            bucket: bucket.to_string(),
            agent,
            timeout,
        }
    }

    /// `{base}/storage/v1/object/{area}{bucket}/{key}`; `area` is "" or "public/".
    fn object_url(&self, area: &str, key: &str) -> String {
        format!(
            "{}/storage/v1/object/{area}{}/{}",
            self.base,
            encode_key(&self.bucket),
            encode_key(key)
        )
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.key.expose())
    }
}

/// Supabase's two credential headers on a request (storage reads the bearer token; the
/// gateway in front of it may want `apikey`).
trait Authed: Sized {
    fn authed(self, store: &SupabaseStore) -> Self;
}

impl<B> Authed for ureq::RequestBuilder<B> {
    fn authed(self, store: &SupabaseStore) -> Self {
        self.header("Authorization", &store.bearer())
            .header("apikey", store.key.expose())
    }
}

fn transport(e: ureq::Error) -> StorageError {
    StorageError::Unavailable(e.to_string())
}

/// The status Supabase meant: the body's `statusCode` (a string, sometimes a number) if present,
/// else the HTTP status; and its message.
fn reported(http_status: u16, body: &str) -> (u16, String) {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let status = match &json["statusCode"] {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        _ => None,
    }
    .unwrap_or(http_status);
    let message = json["message"]
        .as_str()
        .or(json["error"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            let t = body.trim();
            if t.is_empty() {
                format!("HTTP {http_status}")
            } else {
                t.chars().take(300).collect()
            }
        });
    (status, message)
}

/// Whether real Supabase Storage takes `key` (v1.70.6, `src/storage/limits.ts`; recorded in
/// `shared/notes/supabase-storage.md`): not empty, only `A-Z a-z 0-9 _ / ! . * ' ( ) space & $
/// = @ ; : + , ? -`, and no `..` path segment. Anything else is refused with 400 InvalidKey.
pub fn supabase_accepts(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_/!.*'() &$=@;:+,?-".contains(&b))
        && !key.split('/').any(|segment| segment == "..")
}

impl SupabaseStore {
    /// Refuses, without a request, a key the server would refuse.
    fn valid(&self, key: &str) -> Result<(), StorageError> {
        if supabase_accepts(key) {
            return Ok(());
        }
        Err(StorageError::ObjectRefused {
            status: 400,
            message: format!(
                "Invalid key: {key} (Supabase Storage accepts only letters, digits, spaces and \
                 _/!.*'()&$=@;:+,?- in object keys)"
            ),
        })
    }
}

/// The error a Supabase error answer means: the refusal of one object (a key it does not
/// take, too large) or of the request as a whole.
fn refusal(http_status: u16, body: &str) -> StorageError {
    let (status, message) = reported(http_status, body);
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|j| j["code"].as_str().map(str::to_string));
    match code.as_deref() {
        Some("InvalidKey" | "EntityTooLarge") => StorageError::ObjectRefused { status, message },
        _ if status == 413 => StorageError::ObjectRefused { status, message },
        _ => StorageError::Rejected { status, message },
    }
}

impl ObjectStore for SupabaseStore {
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<Put, StorageError> {
        self.valid(key)?;
        let mut resp = self
            .agent
            .post(&self.object_url("", key))
            .authed(self)
            .header("x-upsert", "false")
            .header("cache-control", IMMUTABLE)
            .content_type("image/jpeg")
            .send(bytes)
            .map_err(transport)?;
        let http = resp.status().as_u16();
        if (200..300).contains(&http) {
            return Ok(Put::Created);
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        if reported(http, &body).0 == 409 || http == 409 {
            return Ok(Put::AlreadyExists);
        }
        Err(refusal(http, &body))
    }

    /// A key Supabase refuses cannot name an object: deleting it is done already.
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        if !supabase_accepts(key) {
            return Ok(());
        }
        let url = format!(
            "{}/storage/v1/object/{}",
            self.base,
            encode_key(&self.bucket)
        );
        let mut resp = self
            .agent
            .delete(&url)
            .authed(self)
            .force_send_body()
            .send_json(serde_json::json!({ "prefixes": [key] }))
            .map_err(transport)?;
        let http = resp.status().as_u16();
        if (200..300).contains(&http) {
            return Ok(());
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        match reported(http, &body) {
            (404, _) => Ok(()),
            _ => Err(refusal(http, &body)),
        }
    }

    fn exists(&self, key: &str) -> Result<bool, StorageError> {
        if !supabase_accepts(key) {
            return Ok(false);
        }
        let mut resp = self
            .agent
            .head(&self.object_url("", key))
            .authed(self)
            .call()
            .map_err(transport)?;
        let http = resp.status().as_u16();
        if (200..300).contains(&http) {
            return Ok(true);
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        match reported(http, &body) {
            (404, _) => Ok(false),
            (400, _) if body.is_empty() => Ok(false), // HEAD errors carry no body
            _ => Err(refusal(http, &body)),
        }
    }

    /// `GET /storage/v1/object/{bucket}/{key}` with the service key (works on private buckets).
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        if !supabase_accepts(key) {
            return Ok(None);
        }
        let mut resp = self
            .agent
            .get(&self.object_url("", key))
            .authed(self)
            .call()
            .map_err(transport)?;
        let http = resp.status().as_u16();
        if (200..300).contains(&http) {
            return resp
                .body_mut()
                .with_config()
                .limit(MAX_OBJECT_BYTES)
                .read_to_vec()
                .map(Some)
                .map_err(transport);
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        match reported(http, &body) {
            (404, _) => Ok(None),
            _ => Err(refusal(http, &body)),
        }
    }

    fn settle_time(&self) -> Duration {
        self.timeout
    }

    fn public_url(&self, key: &str) -> String {
        self.object_url("public/", key)
    }

    fn accepts_key(&self, key: &str) -> bool {
        supabase_accepts(key)
    }

    /// `GET /storage/v1/bucket/{bucket}` (answers only with a valid service key, and only if the
    /// bucket exists; at most 5 s), then a probe object written and deleted.
    fn check(&self) -> Result<(), StorageError> {
        let url = format!(
            "{}/storage/v1/bucket/{}",
            self.base,
            encode_key(&self.bucket)
        );
        let mut resp = self
            .agent
            .get(&url)
            .config()
            .timeout_global(Some(self.timeout.min(Duration::from_secs(5))))
            .build()
            .authed(self)
            .call()
            .map_err(transport)?;
        let http = resp.status().as_u16();
        if !(200..300).contains(&http) {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            return match reported(http, &body) {
                (404, _) => Err(StorageError::Rejected {
                    status: 404,
                    message: format!("bucket `{}` not found", self.bucket),
                }),
                _ => Err(refusal(http, &body)),
            };
        }
        // Reading the bucket proves the key can read; only a write proves uploads work (a
        // bucket's MIME types or size limit, a key without write rights).
        let probe = probe_key();
        let written = self.put_new(&probe, b"probe");
        let _ = self.delete(&probe);
        match written? {
            Put::Created | Put::AlreadyExists => Ok(()),
        }
    }

    fn describe(&self) -> String {
        format!("Supabase bucket `{}` at {}", self.bucket, self.base)
    }

    /// `POST /storage/v1/object/list/{bucket}`, 1,000 names a page. Entries without an `id`
    /// are folders (this server stores no keys with `/`) and are skipped.
    fn list(&self, progress: &mut dyn FnMut(usize)) -> Result<Vec<ObjectInfo>, StorageError> {
        const PAGE: usize = 1000;
        let url = format!(
            "{}/storage/v1/object/list/{}",
            self.base,
            encode_key(&self.bucket)
        );
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let mut resp = self
                .agent
                .post(&url)
                .authed(self)
                .send_json(serde_json::json!({
                    "prefix": "",
                    "limit": PAGE,
                    "offset": offset,
                    "sortBy": {"column": "name", "order": "asc"},
                }))
                .map_err(transport)?;
            let http = resp.status().as_u16();
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            if !(200..300).contains(&http) {
                return Err(refusal(http, &body));
            }
            let items: Vec<serde_json::Value> = serde_json::from_str(&body)
                .map_err(|e| StorageError::Unreadable(format!("a listing page: {e}")))?;
            let n = items.len();
            for item in items {
                let (Some(name), false) = (item["name"].as_str(), item["id"].is_null()) else {
                    continue;
                };
                if name.starts_with('.') {
                    continue; // a probe, never a photo
                }
                let modified = item["updated_at"]
                    .as_str()
                    .or(item["created_at"].as_str())
                    .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok());
                out.push(ObjectInfo {
                    key: name.to_string(),
                    modified,
                });
            }
            progress(out.len());
            if n < PAGE {
                return Ok(out);
            }
            offset += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store whose every answer the test sets.
    #[derive(Default)]
    struct Scripted {
        put: Mutex<Option<Result<Put, StorageError>>>,
        read: Mutex<Option<Result<bool, StorageError>>>,
        check: Mutex<Option<Result<(), StorageError>>>,
    }

    fn take<T>(slot: &Mutex<Option<Result<T, StorageError>>>) -> Result<T, StorageError> {
        slot.lock().unwrap().take().expect("the test set an answer")
    }

    impl ObjectStore for Scripted {
        fn put_new(&self, _: &str, _: &[u8]) -> Result<Put, StorageError> {
            take(&self.put)
        }
        fn delete(&self, _: &str) -> Result<(), StorageError> {
            take(&self.read).map(|_| ())
        }
        fn exists(&self, _: &str) -> Result<bool, StorageError> {
            take(&self.read)
        }
        fn get(&self, _: &str) -> Result<Option<Vec<u8>>, StorageError> {
            take(&self.read).map(|_| None)
        }
        fn list(&self, _: &mut dyn FnMut(usize)) -> Result<Vec<ObjectInfo>, StorageError> {
            take(&self.read).map(|_| Vec::new())
        }
        fn public_url(&self, key: &str) -> String {
            key.into()
        }
        fn check(&self) -> Result<(), StorageError> {
            take(&self.check)
        }
    }

    fn rejected(status: u16) -> StorageError {
        StorageError::Rejected {
            status,
            message: format!("said {status}"),
        }
    }

    fn word(m: &Monitored) -> String {
        let (state, _) = m.state();
        let (word, reason) = state.word_and_reason();
        format!(
            "{word}{}",
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        )
    }

    #[test]
    fn only_writes_and_checks_make_storage_ok_and_any_call_can_show_a_failure() {
        let inner = Arc::new(Scripted::default());
        let m = Monitored::new(inner.clone());
        assert_eq!(word(&m), "unchecked");
        m.checking();
        assert_eq!(word(&m), "checking");
        let read = |r: Result<bool, StorageError>| *inner.read.lock().unwrap() = Some(r);
        let put = |r: Result<Put, StorageError>| *inner.put.lock().unwrap() = Some(r);

        // A missing bucket: the HEAD before the write says "no such key", the write is refused.
        read(Ok(false));
        assert!(!m.exists("a.jpg").unwrap());
        assert_eq!(word(&m), "checking", "a read proves nothing about writes");
        put(Err(rejected(404)));
        assert!(m.put_new("a.jpg", b"").is_err());
        assert_eq!(word(&m), "refused: said 404");
        // A HEAD that finds an object (a 409 for the upload) does not hide the refusal, nor
        // does any other read that succeeds.
        for call in [
            &|m: &Monitored| m.exists("b.jpg").map(|_| ()),
            &|m: &Monitored| m.get("b.jpg").map(|_| ()),
            &|m: &Monitored| m.delete("b.jpg"),
            &|m: &Monitored| m.list(&mut |_| {}).map(|_| ()),
        ] as [&dyn Fn(&Monitored) -> Result<(), StorageError>; 4]
        {
            read(Ok(true));
            call(&m).unwrap();
            assert_eq!(word(&m), "refused: said 404");
        }
        // Only a write that succeeds (a duplicate is an answer too) makes it ok.
        put(Ok(Put::AlreadyExists));
        m.put_new("a.jpg", b"").unwrap();
        assert_eq!(word(&m), "ok");

        // Failures of reads show.
        for (answer, want) in [
            (rejected(403), "refused: said 403"),
            (rejected(401), "refused: said 401"),
            (rejected(503), "unreachable: HTTP 503: said 503"),
            (
                StorageError::Unavailable("timed out".into()),
                "unreachable: timed out",
            ),
            (
                StorageError::Unusable("overwrites".into()),
                "refused: overwrites",
            ),
            (
                StorageError::Io(io::Error::other("disk full")),
                "failing: disk full",
            ),
        ] {
            put(Ok(Put::Created));
            m.put_new("a.jpg", b"").unwrap();
            read(Err(answer));
            assert!(m.exists("a.jpg").is_err());
            assert_eq!(word(&m), want);
        }
        // A refusal of one object, or of one read, says nothing about the store.
        put(Ok(Put::Created));
        m.put_new("a.jpg", b"").unwrap();
        for answer in [
            rejected(404),
            rejected(400),
            StorageError::ObjectRefused {
                status: 413,
                message: "too large".into(),
            },
            StorageError::Unreadable("a listing".into()),
            StorageError::Unsupported("list its objects"),
        ] {
            read(Err(answer));
            assert!(m.exists("a.jpg").is_err());
            assert_eq!(word(&m), "ok");
        }
        put(Err(StorageError::ObjectRefused {
            status: 413,
            message: "too large".into(),
        }));
        assert!(m.put_new("big.jpg", b"").is_err());
        assert_eq!(word(&m), "ok", "one photo too large");
        // A write refused for any other reason below 500 is the store's refusal; 5xx and
        // time-outs are unreachable.
        for (answer, want) in [
            (rejected(415), "refused: said 415"),
            (rejected(400), "refused: said 400"),
            (rejected(500), "unreachable: HTTP 500: said 500"),
            (StorageError::Unavailable("cut".into()), "unreachable: cut"),
        ] {
            put(Err(answer));
            assert!(m.put_new("a.jpg", b"").is_err());
            assert_eq!(word(&m), want);
        }
    }

    #[test]
    fn a_check_always_decides_the_state() {
        let inner = Arc::new(Scripted::default());
        let m = Monitored::new(inner.clone());
        let check = |r: Result<(), StorageError>| *inner.check.lock().unwrap() = Some(r);
        for (answer, want) in [
            (Ok(()), "ok"),
            (Err(rejected(404)), "refused: said 404"),
            (
                Err(StorageError::ObjectRefused {
                    status: 415,
                    message: "mime type image/jpeg is not supported".into(),
                }),
                "refused: mime type image/jpeg is not supported",
            ),
            (
                Err(StorageError::Unreadable("x".into())),
                "refused: storage answered in a way this server cannot read: x",
            ),
            (Err(rejected(502)), "unreachable: HTTP 502: said 502"),
            (Ok(()), "ok"),
        ] {
            let ok = answer.is_ok();
            check(answer);
            assert_eq!(m.check().is_ok(), ok);
            assert_eq!(word(&m), want);
        }
    }

    #[test]
    fn supabase_refusals_of_one_object_are_told_from_refusals_of_the_store() {
        let object = |body: &str| matches!(refusal(400, body), StorageError::ObjectRefused { .. });
        assert!(object(
            r#"{"statusCode":"400","error":"InvalidKey","message":"Invalid key: a~b","code":"InvalidKey"}"#
        ));
        assert!(object(
            r#"{"statusCode":"413","error":"Payload too large","message":"The object exceeded the maximum allowed size","code":"EntityTooLarge"}"#
        ));
        assert!(object(r#"{"statusCode":"413","message":"too large"}"#));
        assert!(matches!(
            refusal(413, ""),
            StorageError::ObjectRefused { status: 413, .. }
        ));
        for store_wide in [
            r#"{"statusCode":"415","error":"invalid_mime_type","message":"mime type image/jpeg is not supported","code":"InvalidMimeType"}"#,
            r#"{"statusCode":"404","error":"Bucket not found","message":"Bucket not found","code":"NoSuchBucket"}"#,
            r#"{"statusCode":"403","error":"Unauthorized","message":"signature verification failed","code":"AccessDenied"}"#,
            "",
        ] {
            assert!(
                matches!(refusal(400, store_wide), StorageError::Rejected { .. }),
                "{store_wide}"
            );
        }
    }

    #[test]
    fn supabase_keys_are_checked_by_the_real_servers_rule() {
        for good in [
            "a.jpg",
            "thumb--a.jpg",
            "users/42/a.jpg",
            ".probe-1-2",
            "A-Z_0.9!*'() &$=@;:+,?-",
            "a/./b",
            "...",
        ] {
            assert!(supabase_accepts(good), "{good}");
        }
        for bad in [
            "",
            "thumb~a.jpg",
            "{x}.jpg",
            "a#b",
            "a%b",
            "[a]",
            "a^b",
            "a|b",
            "a`b",
            "caf\u{e9}",
            "a\u{1}b",
            "a\\b",
            "a\"b",
            "a<b",
            "..",
            "k/../x.jpg",
            "../x",
            "x/..",
        ] {
            assert!(!supabase_accepts(bad), "{bad}");
        }
    }

    #[test]
    fn supabase_errors_are_read_from_the_body() {
        let dup = r#"{"statusCode":"409","error":"Duplicate","message":"The resource already exists","code":"KeyAlreadyExists"}"#;
        assert_eq!(
            reported(400, dup),
            (409, "The resource already exists".into())
        );
        let auth = r#"{"statusCode":"403","error":"Unauthorized","message":"signature verification failed","code":"AccessDenied"}"#;
        assert_eq!(reported(400, auth).0, 403);
        let route =
            r#"{"message":"Route GET:/nope not found","error":"Not Found","statusCode":404}"#;
        assert_eq!(reported(404, route).0, 404);
        assert_eq!(reported(502, "bad gateway"), (502, "bad gateway".into()));
        assert_eq!(reported(500, ""), (500, "HTTP 500".into()));
    }

    #[test]
    fn temporary_files_of_dead_processes_are_removed_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "http://x/media/");
        // PIDs are below 2^22 on Linux: this one belongs to no process.
        let dead = ".upload-99999999-3.tmp";
        let mine = format!(".upload-{}-1.tmp", std::process::id());
        let parent = format!(".probe-{}-2.tmp", std::os::unix::process::parent_id());
        for name in [
            dead,
            ".probe-99999998-1.tmp",
            &mine,
            &parent,
            "photo.jpg",
            ".upload-x.tmp",
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(store.remove_dead_temp_files().unwrap(), 2);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![
            mine.clone(),
            parent.clone(),
            ".upload-x.tmp".into(),
            "photo.jpg".into(),
        ];
        want.sort();
        assert_eq!(left, want);
        store.check().unwrap();
        assert_eq!(store.remove_dead_temp_files().unwrap(), 0);
    }

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

    #[test]
    fn a_local_key_is_one_visible_file_name() {
        let store = LocalStore::new(Path::new("/srv/media"), "http://x/media");
        let longest = format!("{}.jpg", "a".repeat(251));
        assert_eq!(longest.len(), 255);
        for good in [
            "a.jpg",
            "thumb--a.jpg",
            "thumb~a.jpg",
            "a b.jpg",
            longest.as_str(),
        ] {
            assert_eq!(
                store.path(good).unwrap(),
                Path::new("/srv/media").join(good),
                "{good}"
            );
            assert!(store.accepts_key(good));
        }
        let too_long = format!("a{longest}");
        let far_too_long = "a".repeat(300);
        for bad in [
            "",
            too_long.as_str(),
            far_too_long.as_str(),
            "a/b.jpg",
            "a\\b.jpg",
            "a\0.jpg",
            ".hidden.jpg",
        ] {
            assert!(store.path(bad).is_err(), "{bad:?}");
            assert!(!store.accepts_key(bad));
        }
    }

    #[test]
    fn a_key_supabase_refuses_is_refused_here_without_a_request() {
        // Nothing listens on port 1: a request would fail as unreachable.
        let store = SupabaseStore::new(
            "http://127.0.0.1:1",
            Secret::new("k"),
            "images",
            Duration::from_secs(2),
        );
        match store.put_new("thumb~a.jpg", b"x") {
            Err(StorageError::ObjectRefused {
                status: 400,
                message,
            }) => {
                assert!(message.starts_with("Invalid key: thumb~a.jpg"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // A key that cannot name an object is absent, also without a request.
        assert!(!store.exists("a~b.jpg").unwrap());
        assert_eq!(store.get("a~b.jpg").unwrap(), None);
        store.delete("a~b.jpg").unwrap();
        // A key Supabase takes does go out (and finds nobody here).
        assert!(matches!(
            store.put_new("a.jpg", b"x"),
            Err(StorageError::Unavailable(_))
        ));
    }

    #[test]
    fn the_local_store_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "http://x/media/");
        assert_eq!(store.put_new("a.jpg", b"one").unwrap(), Put::Created);
        assert_eq!(store.put_new("a.jpg", b"two").unwrap(), Put::AlreadyExists);
        assert_eq!(fs::read(dir.path().join("a.jpg")).unwrap(), b"one");
        assert!(store.exists("a.jpg").unwrap());
        store.delete("a.jpg").unwrap();
        store.delete("a.jpg").unwrap();
        assert!(!store.exists("a.jpg").unwrap());
        assert!(store.put_new("../x.jpg", b"").is_err());
        assert_eq!(store.public_url("a b.jpg"), "http://x/media/a%20b.jpg");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "no temporary files left behind");
    }
}
