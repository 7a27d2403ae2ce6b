//! What every request can reach: the settings, the database, the listing, the uploader and the
//! object store, built once at start-up.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Semaphore;

use crate::{
    config::{Settings, StorageBackend},
    db::{Db, DbError},
    http::throttle::KeyThrottle,
    metrics::Metrics,
    model::Photo,
    read::cache::PageCache,
    read::listing::Listing,
    read::signed::Signer,
    storage::{
        ObjectStore, StorageError,
        monitored::{Monitored, StorageState},
        open::from_settings,
    },
    write::{cleanup::Cleanup, context::WriteContext, manage::Manager, session, upload::Uploader},
};

/// What every handler can reach.
pub struct AppState {
    pub settings: Settings,
    /// None when no database is configured.
    pub db: Option<Db>,
    pub listing: Arc<Listing>,
    pub uploader: Arc<Uploader>,
    pub manager: Manager,
    /// Settles what failed writes may have left in storage.
    pub cleanup: Arc<Cleanup>,
    /// The object store every upload goes through, recording its last known state for health.
    pub store: Arc<Monitored>,
    /// `Cache-Control` value for listing responses, built once.
    pub cache_control: poem::http::HeaderValue,
    /// Listing requests answered by the fast path in front of the router (tests read it to
    /// prove the fast path runs).
    pub fast_listings: AtomicU64,
    /// Requests whose handling has ended, answered or abandoned by their client.
    pub requests_finished: AtomicU64,
    /// What `GET /metrics` reports (the listing's, shared by every part).
    pub metrics: Arc<Metrics>,
    /// Wrong admin keys, counted per client address.
    pub key_throttle: KeyThrottle,
    /// Set when SIGINT/SIGTERM arrives: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
}

/// What `/readyz` says: whether this server can serve the owner's listings now, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// From the database.
    Database,
    /// The database is down; listings come from the saved copy of the table.
    TableCopy,
    /// No database is configured: the photographs built into the binary are the listing.
    Embedded,
    /// Not ready: the server is stopping.
    Draining,
    /// Not ready: the database has not answered and there is no saved copy of the table (at
    /// start-up before the first connection, or an outage before any copy was taken).
    NothingToServe,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        matches!(
            self,
            Readiness::Database | Readiness::TableCopy | Readiness::Embedded
        )
    }

    /// The word `/readyz` reports.
    pub fn word(&self) -> &'static str {
        match self {
            Readiness::Database => "database",
            Readiness::TableCopy => "table copy",
            Readiness::Embedded => "embedded photographs",
            Readiness::Draining => "shutting down",
            Readiness::NothingToServe => "database unreachable and no saved copy of the table",
        }
    }
}

impl AppState {
    /// Builds the state. With a database configured this makes one attempt to reach it (and
    /// migrate it), bounded by the checkout timeout, and starts the background re-probe; the
    /// server starts whatever the outcome.
    pub async fn new(settings: Settings) -> Result<Arc<AppState>, DbError> {
        let store = from_settings(&settings.storage);
        Self::with_store(settings, Arc::from(store)).await
    }

    /// As [`AppState::new`], with the object store given (tests wrap the real ones).
    pub async fn with_store(
        settings: Settings,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Arc<AppState>, DbError> {
        let db = match &settings.database.url {
            None => {
                tracing::warn!(
                    "no database configured (DATABASE_URL is not set): serving the {} photographs \
                     built into the binary",
                    crate::read::listing::Fallback::load().len()
                );
                None
            }
            Some(url) => {
                let db = Db::new(url.expose(), &settings.database)?;
                tracing::info!(database = %db.target(), "connecting to the database");
                db.probe().await;
                db.spawn_monitor();
                Some(db)
            }
        };
        let metrics = Arc::new(Metrics::new());
        let backend = settings.storage.backend().to_string();
        let store = Arc::new(
            Monitored::new(store)
                .counting_errors(metrics.storage_errors.with_label_values(&[&backend])),
        );
        check_storage(&settings, &store);
        if settings.auth.admin_api_key.is_none() {
            tracing::warn!("ADMIN_API_KEY is not set: uploads will be refused");
        } else {
            tracing::info!("uploads enabled for requests presenting ADMIN_API_KEY as X-API-Key");
        }
        let c = &settings.cache;
        tracing::info!(
            page_cache_bytes = c.max_bytes,
            stale_copy_bytes = c.stale_max_bytes,
            ttl_secs = c.ttl_secs,
            "page cache"
        );
        let mut listing = Listing::new(
            db.clone(),
            PageCache::new(&settings.cache),
            &settings.cache,
            metrics.clone(),
        );
        let mut http_max_age = settings.cache.http_max_age_secs;
        if settings.storage.private {
            let signer = Signer::new(
                store.clone(),
                Duration::from_secs(settings.storage.signed_url_secs),
            );
            // No copy of a page outlives its signatures in a browser or a CDN either.
            http_max_age = http_max_age.min(signer.page_life().as_secs());
            tracing::info!(
                signed_url_secs = settings.storage.signed_url_secs,
                "storage is private: every URL handed out is signed, and pages are signed again \
                 after a quarter of that"
            );
            listing = listing.signing_with(Arc::new(signer));
        } else {
            tracing::info!(
                "storage is public: URLs are the objects' own (storage.private = false)"
            );
        }
        let listing = Arc::new(listing);
        if let Some(db) = db.as_ref().filter(|db| !db.is_available()) {
            // Say what is served: the saved copy of the table, or the photographs built in.
            let serving = match listing.copy_rows() {
                Some(rows) => format!(
                    "the saved copy of the table ({rows} rows, {})",
                    settings.cache.copy_path.display()
                ),
                None => format!(
                    "the {} photographs built into the binary (no saved copy of the table)",
                    crate::read::listing::Fallback::load().len()
                ),
            };
            tracing::warn!(
                database = %db.target(),
                "database not reachable at start-up; serving {serving} and retrying every {} ms",
                settings.database.reprobe_interval_ms
            );
        }
        listing.spawn_copier();
        if let (Some(url), true) = (&settings.database.url, settings.database.listen) {
            let listen_url = settings.database.listen_url.as_ref().unwrap_or(url);
            crate::read::notify::spawn(
                Arc::downgrade(&listing),
                listen_url.expose(),
                url.expose(),
                std::time::Duration::from_millis(settings.database.connect_timeout_ms),
                db.as_ref().map(Db::back),
            );
        }
        // Files parked by a process that died mid-batch were never stored and never will be.
        session::clear_spool_at_start(&settings.upload.spool_dir);
        let cleanup = Cleanup::start(db.clone(), store.clone(), &settings.upload.journal_dir);
        let writes = WriteContext {
            db: db.clone(),
            store: store.clone(),
            listing: listing.clone(),
            cleanup: cleanup.clone(),
            slots: Arc::new(Semaphore::new(settings.upload.max_concurrent.max(1))),
        };
        let uploader = Uploader::new(writes.clone(), metrics.clone(), &settings);
        let manager = Manager::new(writes, settings.upload.allowed_categories.clone());
        let cache_control =
            poem::http::HeaderValue::from_str(&format!("public, max-age={http_max_age}"))
                .expect("digits are a valid header value");
        let key_throttle = KeyThrottle::new(
            settings.auth.wrong_key_burst,
            settings.auth.wrong_keys_per_minute,
            settings.server.trusted_proxies.clone(),
        );
        Ok(Arc::new(AppState {
            settings,
            db,
            listing,
            uploader,
            manager,
            cleanup,
            store,
            cache_control,
            fast_listings: AtomicU64::new(0),
            requests_finished: AtomicU64::new(0),
            metrics,
            key_throttle,
            draining: AtomicBool::new(false),
        }))
    }
}

impl AppState {
    /// `photos` as handed out: in private mode with their URLs signed (one call to storage for
    /// all of them).
    pub async fn signed(&self, photos: Vec<Photo>) -> Result<Vec<Photo>, StorageError> {
        let Some(signer) = self.listing.signer().cloned() else {
            return Ok(photos);
        };
        crate::blocking::run(move || signer.sign(&photos))
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?
    }

    /// The records a write made or changed, as handed out. The write stands whatever happens
    /// here: if storage cannot sign their URLs, they are handed out as stored (and it is
    /// logged), rather than answering an error that would have the client write again.
    pub async fn written(&self, photos: Vec<Photo>) -> Vec<Photo> {
        if self.listing.signer().is_none() {
            return photos; // public: nothing to sign, and no copy to keep
        }
        match self.signed(photos.clone()).await {
            Ok(signed) => signed,
            Err(e) => {
                tracing::warn!(error = %e, "storage could not sign the URLs of a written photo");
                photos
            }
        }
    }

    /// One record a write made or changed, as handed out ([`AppState::written`]).
    pub async fn written_one(&self, photo: Photo) -> Photo {
        self.written(vec![photo]).await.remove(0)
    }
}

impl AppState {
    /// Whether listings can be served now, from what (`/readyz`). Read from what the last
    /// database call found and whether a table copy exists: no request is made.
    pub fn readiness(&self) -> Readiness {
        if self.draining.load(Ordering::Acquire) {
            return Readiness::Draining;
        }
        match &self.db {
            None => Readiness::Embedded,
            Some(db) if db.is_available() => Readiness::Database,
            Some(_) if self.listing.copy_rows().is_some() => Readiness::TableCopy,
            Some(_) => Readiness::NothingToServe,
        }
    }

    /// `GET /metrics`: the gauges read now, then every metric as Prometheus text.
    pub async fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let (entries, bytes) = self.listing.cache_stats().await;
        m.cache_entries.set(entries as i64);
        m.copy_rows
            .set(self.listing.copy_rows().unwrap_or(0) as i64);
        m.cache_bytes.set(bytes as i64);
        match &self.db {
            Some(db) => {
                let (open, idle, waiting) = db.pool_stats();
                m.pool_connections
                    .with_label_values(&["in_use"])
                    .set(i64::from(open.saturating_sub(idle)));
                m.pool_connections
                    .with_label_values(&["idle"])
                    .set(i64::from(idle));
                m.pool_waiting.set(waiting as i64);
                m.db_up.set(i64::from(db.is_available()));
            }
            None => m.db_up.set(0),
        }
        m.render()
    }
}

/// Logs where photos go, then checks the store in the background (one cheap request, and a
/// probe write on the remote backends) and says plainly if it refuses us: a wrong Supabase key
/// should show at start-up, not as a 502 at the first upload. Nothing waits for the check: the
/// listener opens at once, reads never touch storage, and `/api/health` says `checking` until
/// it ends (a store that never answers holds up nothing but itself).
fn check_storage(settings: &Settings, store: &Arc<Monitored>) {
    let backend = settings.storage.backend();
    tracing::info!(
        backend = %backend,
        store = %store.describe(),
        url_prefix = %store.public_url(""),
        "storage"
    );
    store.checking();
    let store = store.clone();
    let private_remote = settings.storage.private && backend != StorageBackend::Local;
    let timeout = std::time::Duration::from_secs(settings.storage.timeout_secs.max(1));
    tokio::spawn(async move {
        let s = store.clone();
        let _ = crate::blocking::run(move || s.check()).await;
        if private_remote && store.state().0 == StorageState::Ok {
            let s = store.clone();
            let found =
                crate::blocking::run(move || crate::storage::readable_anonymously(&*s, timeout))
                    .await;
            match found {
                Ok(Ok(true)) => {
                    store.set_readable_anonymously(true);
                    tracing::error!(
                        "storage is in private mode, but anyone can read its objects without a \
                         signature: the bucket is public, so private mode protects nothing. Make \
                         the bucket private (no public-read policy or ACL)"
                    );
                }
                Ok(Ok(false)) => {
                    store.set_readable_anonymously(false);
                    tracing::info!(
                        "private storage: anonymous reads are refused, as they should be"
                    );
                }
                Ok(Err(e)) => tracing::warn!(
                    error = %e,
                    "could not check whether anyone can read the private bucket"
                ),
                Err(_) => {}
            }
        }
        match store.state().0 {
            StorageState::Ok => tracing::info!("storage check passed"),
            StorageState::Refused(why) => tracing::error!(
                reason = %why,
                "storage REFUSED our requests: uploads will fail until the storage settings ({}) \
                 are fixed",
                settings_to_check(backend)
            ),
            StorageState::Unreachable(why) | StorageState::Failing(why) => tracing::warn!(
                reason = %why,
                "storage check failed: uploads will fail while this lasts"
            ),
            StorageState::Unchecked | StorageState::Checking => {}
        }
    });
}

/// The settings (by their variables) that decide whether a backend accepts us.
pub fn settings_to_check(backend: StorageBackend) -> &'static str {
    match backend {
        StorageBackend::Local => "APP_STORAGE__LOCAL_DIR: the folder must be writable",
        StorageBackend::Supabase => "SUPABASE_URL, SUPABASE_KEY, SUPABASE_BUCKET",
        StorageBackend::S3 => {
            "APP_STORAGE__S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, \
             AWS_ENDPOINT_URL, APP_STORAGE__S3_PATH_STYLE, and the bucket's permissions"
        }
    }
}
