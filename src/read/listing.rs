//! The read path of `GET /api/images`: cache, then database; while the database cannot answer,
//! the copy of the whole table, then the page's last good copy, then the photographs embedded in
//! the binary. The body is always a JSON array of the same shape.
//!
//! The table copy is why an outage never shows someone else's photographs: every row (up to
//! `cache.copy_max_rows`) is kept in memory, refreshed within a second of every write and every
//! `cache.copy_refresh_secs`, and written atomically to `cache.copy_path`, so that it survives a
//! restart while the database is down. Any page, category, offset or keyset is then answered from
//! it, with the same bytes (and so the same `ETag`) the database would have given. The embedded
//! photographs answer only a fresh install that never reached its database.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rust_embed::Embed;

use super::signed::{self, Signer};

use crate::{
    blocking,
    config::CacheSettings,
    db::{self, Db, DbError, queries},
    metrics::Metrics,
    model::{CategoryCount, PageKey, Photo, Shape},
    read::{
        batch::PageBatcher,
        cache::{Page, PageCache},
    },
};

/// Where a response's data came from; sent as `X-Data-Source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// PostgreSQL, directly or through the live cache.
    Database,
    /// The last good copy of this page, while the database is down.
    Stale,
    /// The photographs embedded in the binary.
    Fallback,
}

impl Source {
    /// The `X-Data-Source` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Database => "database",
            Source::Stale => "stale",
            Source::Fallback => "fallback",
        }
    }
}

#[derive(Embed)]
#[folder = "assets/"]
#[exclude = "admin/*"]
pub struct Assets;

/// The embedded photographs, as parsed JSON objects (they carry `title` and `location` besides
/// the six contract fields).
pub struct Fallback {
    items: Vec<serde_json::Value>,
    /// Pages already built (the data never changes). Bounded: cleared when full.
    pages: Mutex<HashMap<PageKey, Arc<Page>>>,
}

const FALLBACK_PAGES_MAX: usize = 1024;

impl Fallback {
    pub fn load() -> Fallback {
        let file = Assets::get("photographs.json").expect("assets/photographs.json is embedded");
        let items: Vec<serde_json::Value> =
            serde_json::from_slice(&file.data).expect("assets/photographs.json is a JSON array");
        Fallback {
            items,
            pages: Mutex::new(HashMap::new()),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn page(&self, key: &PageKey) -> Arc<Page> {
        if let Some(page) = self.pages.lock().expect("not poisoned").get(key) {
            return page.clone();
        }
        let page = self.build(key);
        let mut pages = self.pages.lock().expect("not poisoned");
        if pages.len() >= FALLBACK_PAGES_MAX {
            pages.clear();
        }
        pages.insert(key.clone(), page.clone());
        page
    }

    fn build(&self, key: &PageKey) -> Arc<Page> {
        let matching: Vec<&serde_json::Value> = self
            .items
            .iter()
            .filter(|p| {
                key.category.as_ref().is_none_or(|c| {
                    p["category"]
                        .as_str()
                        .is_some_and(|pc| pc.eq_ignore_ascii_case(c.as_str()))
                })
            })
            .collect();
        let total = matching.len() as i64;
        let body: Vec<&serde_json::Value> = matching
            .into_iter()
            .filter(|p| key.after_id.is_none_or(|a| p["id"].as_i64() > Some(a)))
            .skip(usize::try_from(key.offset).unwrap_or(usize::MAX))
            .take(usize::try_from(key.limit).unwrap_or(0))
            .collect();
        let last_id = body.last().and_then(|p| p["id"].as_i64());
        let len = body.len();
        let body = match key.shape {
            Shape::Records => serde_json::to_vec(&body),
            Shape::Links => serde_json::to_vec(
                &body
                    .iter()
                    .map(|p| serde_json::json!({"id": p["id"], "photo_url": p["url"]}))
                    .collect::<Vec<_>>(),
            ),
        }
        .expect("JSON values serialise");
        Arc::new(Page::new(body, total, len, last_id))
    }
}

/// Every row of `photographs`, in id order, and the pages built from it so far.
pub struct TableCopy {
    rows: Vec<Photo>,
    /// Bounded: cleared when full.
    pages: Mutex<HashMap<PageKey, Arc<Page>>>,
}

impl TableCopy {
    fn new(rows: Vec<Photo>) -> TableCopy {
        TableCopy {
            rows,
            pages: Mutex::new(HashMap::new()),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The page `key` as the database's queries (`sql/queries/`) would give it; with its rows
    /// when `keep_rows` (private mode signs them when the page is sent, an outage's pages like
    /// any other).
    fn page(&self, key: &PageKey, keep_rows: bool) -> Arc<Page> {
        if let Some(page) = self.pages.lock().expect("not poisoned").get(key) {
            return page.clone();
        }
        let in_category = |p: &&Photo| {
            key.category
                .as_ref()
                .is_none_or(|c| p.category.to_lowercase() == c.as_str())
        };
        let total = self.rows.iter().filter(in_category).count() as i64;
        let photos: Vec<&Photo> = self
            .rows
            .iter()
            .filter(in_category)
            .filter(|p| key.after_id.is_none_or(|a| i64::from(p.id) > a))
            .skip(usize::try_from(key.offset).unwrap_or(usize::MAX))
            .take(usize::try_from(key.limit).unwrap_or(0))
            .collect();
        let last_id = photos.last().map(|p| i64::from(p.id));
        let body = key.shape.body(photos.iter().copied());
        let mut page = Page::new(body, total, photos.len(), last_id);
        if keep_rows {
            page = page.keeping(photos.iter().map(|p| (*p).clone()).collect());
        }
        let page = Arc::new(page);
        let mut pages = self.pages.lock().expect("not poisoned");
        if pages.len() >= FALLBACK_PAGES_MAX {
            pages.clear();
        }
        pages.insert(key.clone(), page.clone());
        page
    }
}

/// Why a page cannot be given.
#[derive(Debug)]
pub enum NotServed {
    /// The database is up but saturated, and there is no earlier copy of the page.
    Busy,
    /// Private mode: storage could not sign the page's URLs.
    Unsigned(crate::storage::StorageError),
}

pub struct Listing {
    db: Option<Db>,
    cache: PageCache,
    fallback: Fallback,
    /// The copy of the table (None: never taken, or the table is past the bound).
    copy: RwLock<Option<Arc<TableCopy>>>,
    /// A write happened since the copy was taken.
    copy_dirty: AtomicBool,
    copy_max_rows: usize,
    copy_path: PathBuf,
    copy_refresh: Duration,
    /// "Past the bound" is said once.
    copy_too_big_logged: AtomicBool,
    /// When the copy was last written to disk: at most every [`COPY_SAVE_EVERY`].
    copy_saved: Mutex<Option<Instant>>,
    /// The copy in memory is newer than the file.
    copy_unsaved: AtomicBool,
    /// Bumped by every write: an answer loaded before a write is never kept after it.
    generation: std::sync::atomic::AtomicU64,
    /// `GET /api/categories`: its body, when it was loaded, and at which generation.
    categories: Mutex<Option<(Instant, u64, bytes::Bytes)>>,
    /// How long the categories are kept (`cache.ttl_secs`; 0 keeps nothing).
    categories_ttl: Duration,
    /// Plain pages that wait for a connection together share one round trip.
    pages: Arc<PageBatcher>,
    metrics: Arc<Metrics>,
    /// Private mode: signs the URLs of every page sent.
    signer: Option<Arc<Signer>>,
}

/// The copy in memory follows writes within a second; the file on disk (for a restart during an
/// outage) at most this often, so that a batch of uploads does not rewrite it after every photo
/// (100 photos of 3 MB took 5.2 s with a save per refresh, bench/results.md).
const COPY_SAVE_EVERY: Duration = Duration::from_secs(10);

impl Listing {
    pub fn new(
        db: Option<Db>,
        cache: PageCache,
        settings: &CacheSettings,
        metrics: Arc<Metrics>,
    ) -> Listing {
        let copy = match &db {
            Some(_) if settings.copy_max_rows > 0 => read_copy(&settings.copy_path),
            _ => None,
        };
        if let Some(c) = &copy {
            tracing::info!(
                rows = c.len(),
                path = %settings.copy_path.display(),
                "read the copy of the table kept for outages"
            );
        }
        Listing {
            db,
            cache,
            fallback: Fallback::load(),
            copy: RwLock::new(copy),
            copy_dirty: AtomicBool::new(true),
            copy_max_rows: settings.copy_max_rows,
            copy_path: settings.copy_path.clone(),
            copy_refresh: Duration::from_secs(settings.copy_refresh_secs.max(1)),
            copy_too_big_logged: AtomicBool::new(false),
            copy_saved: Mutex::new(None),
            copy_unsaved: AtomicBool::new(false),
            generation: std::sync::atomic::AtomicU64::new(0),
            categories: Mutex::new(None),
            categories_ttl: if settings.max_bytes == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs(settings.ttl_secs)
            },
            pages: Arc::new(PageBatcher::new(metrics.pages_shared.clone())),
            metrics,
            signer: None,
        }
    }

    /// The same listing in private mode: every page is sent with its URLs signed by `signer`.
    pub fn signing_with(mut self, signer: Arc<Signer>) -> Listing {
        self.signer = Some(signer);
        self
    }

    /// Private mode's signer, if on.
    pub fn signer(&self) -> Option<&Arc<Signer>> {
        self.signer.as_ref()
    }

    /// Rows in the table copy kept for outages, if there is one.
    pub fn copy_rows(&self) -> Option<usize> {
        self.copy().map(|c| c.len())
    }

    /// The metrics every part of this server reports to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Pages in the page cache and their bytes (approximate, as moka counts).
    pub async fn cache_stats(&self) -> (u64, u64) {
        self.cache.stats().await
    }

    /// Categories (lower-cased, as listings match them) and how many photos each has, as JSON;
    /// cached like listing pages and dropped by every write. Ok(None): no database is
    /// configured.
    pub async fn categories(&self) -> Result<Option<bytes::Bytes>, DbError> {
        if let Some(body) = self.cached_categories() {
            return Ok(Some(body));
        }
        let generation = self.generation();
        let Some(db) = &self.db else {
            return Ok(None);
        };
        let rows = db
            .run(|c| {
                Ok(c.query_typed(queries::CATEGORIES, &[])?
                    .iter()
                    .map(|r| CategoryCount {
                        category: r.get(0),
                        count: r.get(1),
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        let body = bytes::Bytes::from(serde_json::to_vec(&rows).expect("counts serialise"));
        self.keep_categories(generation, body.clone());
        Ok(Some(body))
    }

    /// The count of writes so far (see [`Listing::keep_categories`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The categories' body, if it was loaded less than `cache.ttl_secs` ago and no write came
    /// since.
    pub fn cached_categories(&self) -> Option<bytes::Bytes> {
        let guard = self.categories.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|(at, generation, _)| {
                at.elapsed() < self.categories_ttl && *generation == self.generation()
            })
            .map(|(_, _, body)| body.clone())
    }

    /// Keeps the categories' body loaded at `generation`, unless a write came since.
    pub fn keep_categories(&self, generation: u64, body: bytes::Bytes) {
        let mut guard = self.categories.lock().unwrap_or_else(|p| p.into_inner());
        if generation == self.generation() {
            *guard = Some((Instant::now(), generation, body));
        }
    }

    /// Keeps the table copy fresh: within a second of a write, and every `copy_refresh`. The
    /// task ends when the listing is dropped.
    pub fn spawn_copier(self: &Arc<Self>) {
        if self.db.is_none() || self.copy_max_rows == 0 {
            return;
        }
        let weak: Weak<Listing> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last = None::<Instant>;
            loop {
                let Some(listing) = weak.upgrade() else {
                    return;
                };
                let due = listing.copy_dirty.load(Ordering::Acquire)
                    || last.is_none_or(|t| t.elapsed() >= listing.copy_refresh);
                if due && listing.db.as_ref().is_some_and(Db::is_available) {
                    listing.copy_dirty.store(false, Ordering::Release);
                    if listing.refresh_copy().await {
                        last = Some(Instant::now());
                        // Taking the copy allocates the whole table several times over (the
                        // driver's rows, the copy, its JSON for the file); the allocator keeps
                        // what was freed unless told: 14 MiB of RSS for 10,000 rows (measured).
                        let _ = blocking::run(blocking::return_freed_memory).await;
                    } else {
                        listing.copy_dirty.store(true, Ordering::Release);
                    }
                }
                let save_due = listing
                    .copy_saved
                    .lock()
                    .expect("not poisoned")
                    .is_none_or(|t| t.elapsed() >= COPY_SAVE_EVERY);
                if listing.copy_unsaved.load(Ordering::Acquire)
                    && save_due
                    && let Some(copy) = listing.copy()
                {
                    listing.save_copy(copy).await;
                }
                drop(listing);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Takes a new copy of the table and writes it to disk; whether that worked.
    pub async fn refresh_copy(&self) -> bool {
        let Some(db) = &self.db else { return false };
        let bound = self.copy_max_rows;
        let limit = i64::try_from(bound).unwrap_or(i64::MAX).saturating_add(1);
        let rows = db
            .run(move |c| {
                let rows = c.query_typed(
                    queries::TABLE_COPY,
                    &[(&limit, postgres::types::Type::INT8)],
                )?;
                Ok(rows.iter().map(queries::photo_from_row).collect::<Vec<_>>())
            })
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, "cannot copy the table now");
                return false;
            }
        };
        if rows.len() > bound {
            if !self.copy_too_big_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_rows = bound,
                    "the table has more rows than cache.copy_max_rows: during an outage pages \
                     are answered from their last good copy, or the embedded data"
                );
            }
            *self.copy.write().expect("not poisoned") = None;
            return true;
        }
        let copy = Arc::new(TableCopy::new(rows));
        let changed = self
            .copy
            .read()
            .expect("not poisoned")
            .as_ref()
            .is_none_or(|old| old.rows != copy.rows);
        *self.copy.write().expect("not poisoned") = Some(copy.clone());
        let save_due = self
            .copy_saved
            .lock()
            .expect("not poisoned")
            .is_none_or(|t| t.elapsed() >= COPY_SAVE_EVERY);
        if changed && !save_due {
            self.copy_unsaved.store(true, Ordering::Release); // saved by the copier, soon
        }
        if changed && save_due {
            self.save_copy(copy).await;
        }
        true
    }

    /// Saves the copy now if the file is behind it (at shutdown, so a restart during an outage
    /// starts from the newest copy).
    pub async fn flush_copy(&self) {
        if self.copy_unsaved.load(Ordering::Acquire)
            && let Some(copy) = self.copy()
        {
            self.save_copy(copy).await;
        }
    }

    /// Writes the copy to disk (atomically).
    async fn save_copy(&self, copy: Arc<TableCopy>) {
        *self.copy_saved.lock().expect("not poisoned") = Some(Instant::now());
        self.copy_unsaved.store(false, Ordering::Release);
        let path = self.copy_path.clone();
        match blocking::run(move || write_copy(&path, &copy.rows)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                error = %e,
                path = %self.copy_path.display(),
                "cannot save the copy of the table; it is kept in memory only"
            ),
            Err(_) => {}
        }
    }

    fn copy(&self) -> Option<Arc<TableCopy>> {
        self.copy.read().expect("not poisoned").clone()
    }

    /// The page for `key` if it can be answered without waiting: a live cached page, or the
    /// embedded data when no database is configured. None means [`Listing::page`] has work to do.
    pub async fn ready(&self, key: &PageKey) -> Option<(Arc<Page>, Source)> {
        match &self.db {
            None => Some((self.fallback.page(key), Source::Fallback)),
            Some(_) => {
                let mut page = self.cache.get(key).await?;
                if self.signer.is_some() {
                    page = signed::ready_signed(&page)?;
                }
                self.metrics.cache_hits.inc();
                Some((page, Source::Database))
            }
        }
    }

    /// Forgets cached pages after a write (and has the table copy taken again).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate();
        self.copy_dirty.store(true, Ordering::Release);
    }

    /// The page for `key` and where it came from, as sent (signed in private mode), or why
    /// not: [`NotServed::Busy`] when the database is up but had no free connection in time and
    /// there is no earlier copy of the page to give instead.
    pub async fn page(&self, key: &PageKey) -> Result<(Arc<Page>, Source), NotServed> {
        let (page, source) = self.unsigned_page(key).await?;
        match &self.signer {
            None => Ok((page, source)),
            Some(signer) => match signed::signed_page(signer, key, page).await {
                Ok(page) => Ok((page, source)),
                Err(e) => {
                    tracing::warn!(error = %e, "storage could not sign a page's URLs");
                    Err(NotServed::Unsigned(e))
                }
            },
        }
    }

    async fn unsigned_page(&self, key: &PageKey) -> Result<(Arc<Page>, Source), NotServed> {
        let Some(db) = &self.db else {
            return Ok((self.fallback.page(key), Source::Fallback));
        };
        if let Some(page) = self.cache.get(key).await {
            self.metrics.cache_hits.inc();
            return Ok((page, Source::Database));
        }
        self.metrics.cache_misses.inc();
        // While the database is known to be down, don't make every request wait out a
        // checkout timeout: the background probe will notice when it is back.
        let mut busy = false;
        if db.is_available() {
            match self
                .cache
                .get_or_load(key.clone(), self.load(db, key))
                .await
            {
                Ok(page) => return Ok((page, Source::Database)),
                Err(e) => {
                    busy = e.is_busy();
                    tracing::warn!(error = %e, "listing from the database failed");
                }
            }
        }
        // The owner's photographs, whatever the page: the table copy first.
        if let Some(copy) = self.copy() {
            return Ok((copy.page(key, self.signer.is_some()), Source::Stale));
        }
        match self.cache.stale(key).await {
            Some(page) => Ok((page, Source::Stale)),
            // Saturated is not down: the embedded photographs would be the wrong answer.
            None if busy => Err(NotServed::Busy),
            None => Ok((self.fallback.page(key), Source::Fallback)),
        }
    }

    async fn load(&self, db: &Db, key: &PageKey) -> Result<Arc<Page>, db::DbError> {
        let category = key.category.clone();
        let total = {
            let category = category.clone();
            self.cache
                .total(
                    category.clone(),
                    db.run(move |c| queries::count(c, category.as_ref().map(|c| c.as_str()))),
                )
                .await
                .map_err(db::DbError::Shared)?
        };
        let photos = self.pages.fetch(db, key).await?;
        let body = key.shape.body(&photos);
        let last_id = photos.last().map(|p| i64::from(p.id));
        let page = Page::new(body, total, photos.len(), last_id);
        Ok(Arc::new(match self.signer {
            Some(_) => page.keeping(photos.into()),
            None => page,
        }))
    }
}

/// Reads a saved table copy; None (logged) if there is none or it cannot be read.
fn read_copy(path: &Path) -> Option<Arc<TableCopy>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "cannot read the table copy");
            return None;
        }
    };
    match serde_json::from_slice::<Vec<Photo>>(&bytes) {
        Ok(rows) => Some(Arc::new(TableCopy::new(rows))),
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "the table copy is unreadable");
            None
        }
    }
}

/// Writes the copy atomically: a reader (or a restart) sees the old file or the new one, whole.
fn write_copy(path: &Path, rows: &[Photo]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(rows).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
