//! The upload use case: validate, then write a photo so that it is never lost, never overwrites
//! or deletes another request's photo, and never leaves an object without a row.
//!
//! The write protocol, all on one blocking thread with one pooled connection:
//! 1. `BEGIN`; `INSERT` the row. Its trigger claims the lower-cased name in `photograph_names`
//!    (migration 0002). A concurrent upload of the same name blocks on that claim until this
//!    transaction ends, then fails with a unique violation: 409.
//! 2. Store the object with "create, never overwrite". If storage says the key exists, that object
//!    is not ours: 409, roll back, delete nothing.
//!    Just before the write, the key is recorded in the clean-up [`Journal`] on disk.
//! 3. `COMMIT`, then the journal entry is removed. If the commit fails, or the write's outcome is
//!    unknown (a time-out, a cut connection, a 5xx: it may still land), the entry stays and the
//!    resolver settles it: it claims the name the way an upload does, keeps the object if a
//!    committed row has the name, and deletes it otherwise, again at later checks for a write
//!    that lands late. The journal survives a crash, so a restart resumes where it stopped.
//!
//! Any failure before step 3 rolls the transaction back. The object exists only if this request
//! created it in step 2 (or its write is still in flight), and the resolver deletes only under
//! the name's claim, so nothing another request created is ever deleted.
//!
//! Every successful write invalidates the listing's cached pages itself, so no caller can leave
//! them stale. A [`BatchSession`] owns a whole `/api/upload-batch`: the limits, the default
//! category, files parked on disk until the category arrives, and the sorting of outcomes into
//! uploaded, skipped and failed; [`SingleUpload`] does the same for `/api/upload`. The HTTP
//! handlers only feed them fields.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, Weak},
    time::Duration,
};

use postgres::{error::SqlState, types::Type};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::Semaphore,
};

use crate::{
    blocking::{self, Panicked},
    config::{ImageSettings, UploadSettings},
    db::{Db, DbError, PgConn, photo_from_row},
    imaging::{self, Processed, Rejection, Variant},
    model::{Category, FileName, Invalid, Photo},
    read::listing::Listing,
    storage::{ObjectStore, Put, StorageError},
    write::journal::{Entry, Journal},
};

/// Why an upload did not happen. Each maps to one HTTP status, in `api::error` only.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A bad name or category. Nothing was stored.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Not a whole JPEG, or too many pixels. Nothing was stored.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The form itself is wrong (two files for `/api/upload`, ...).
    #[error("{0}")]
    BadForm(String),
    /// A required field is absent.
    #[error("Field required: {0}")]
    MissingField(&'static str),
    /// The name is taken, in the database or in storage. Nothing was changed.
    #[error("Duplicate filename: {0}")]
    Duplicate(FileName),
    /// An object this server did not write holds a key the photo needs (one of its variants'):
    /// nothing was stored and the object was left alone.
    #[error(
        "Storage already holds `{0}`, which this server did not write; nothing was stored. \
         Remove that object or rename the photo"
    )]
    Occupied(String),
    #[error("{0}")]
    TooLarge(String),
    /// The database cannot take writes now (down, busy, or none configured).
    #[error("{0}")]
    DatabaseUnavailable(String),
    #[error("Storage error: {0}")]
    Storage(#[from] StorageError),
    /// The database failed in a way that is not an outage (a bug, a broken schema).
    #[error("database error: {0}")]
    Database(DbError),
    /// A bug: blocking work panicked, or a local file could not be written.
    #[error("{0}")]
    Internal(String),
}

impl From<DbError> for UploadError {
    fn from(e: DbError) -> Self {
        if e.is_connectivity() {
            UploadError::DatabaseUnavailable("Database unavailable, try again later".into())
        } else if e.is_busy() {
            UploadError::DatabaseUnavailable("Database busy, try again shortly".into())
        } else if let DbError::Panicked(p) = e {
            UploadError::Internal(p.to_string())
        } else {
            UploadError::Database(e)
        }
    }
}

impl From<Panicked> for UploadError {
    fn from(e: Panicked) -> Self {
        UploadError::Internal(e.to_string())
    }
}

pub struct Uploader {
    pub(crate) db: Option<Db>,
    pub(crate) store: Arc<dyn ObjectStore>,
    /// Told about every successful write, so cached pages never outlive it.
    pub(crate) listing: Arc<Listing>,
    pub limits: UploadSettings,
    /// What a photo is turned into before it is stored.
    image: ImageSettings,
    /// Photos decoded and resized at once: bounds the CPU and memory a batch can take.
    image_slots: Semaphore,
    /// Uploads hold a pooled connection while they store the object: bound them so reads always
    /// find connections.
    pub(crate) slots: Semaphore,
    /// Keys that may exist in storage without a row (see [`crate::write::journal`]). None when the
    /// folder cannot be written: uploads are refused then, since nothing could be cleaned up.
    pub(crate) journal: Option<Arc<Journal>>,
    /// One resolver pass at a time.
    resolving: tokio::sync::Mutex<()>,
}

impl Uploader {
    /// Builds the uploader and empties its spool folder: files parked there by a process that
    /// died mid-batch were never stored and never will be.
    pub fn new(
        db: Option<Db>,
        store: Arc<dyn ObjectStore>,
        listing: Arc<Listing>,
        limits: UploadSettings,
        image: ImageSettings,
    ) -> Arc<Uploader> {
        match clear_spool(&limits.spool_dir) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                files = n,
                dir = %limits.spool_dir.display(),
                "removed files parked by an earlier process"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                dir = %limits.spool_dir.display(),
                "cannot clear the upload spool folder"
            ),
        }
        let journal = match Journal::open(&limits.journal_dir) {
            Ok(j) => Some(Arc::new(j)),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    dir = %limits.journal_dir.display(),
                    "cannot open the clean-up journal: uploads are refused until it can be written \
                     (upload.journal_dir)"
                );
                None
            }
        };
        let uploader = Arc::new(Uploader {
            db,
            store,
            listing,
            slots: Semaphore::new(limits.max_concurrent.max(1)),
            image_slots: Semaphore::new(image_workers(&image)),
            image,
            limits,
            journal,
            resolving: tokio::sync::Mutex::new(()),
        });
        spawn_resolver(Arc::downgrade(&uploader));
        uploader
    }

    /// Validates and stores one photo. `raw_name` is the client's file name, `raw_category` the
    /// form's text (None: the default category).
    #[tracing::instrument(name = "upload", skip_all, fields(file = %raw_name))]
    pub async fn upload(
        &self,
        raw_name: &str,
        raw_category: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<Photo, UploadError> {
        let result = self.upload_counted(raw_name, raw_category, bytes).await;
        self.listing
            .metrics()
            .uploads
            .with_label_values(&[crate::metrics::upload_outcome(&result)])
            .inc();
        result
    }

    async fn upload_counted(
        &self,
        raw_name: &str,
        raw_category: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<Photo, UploadError> {
        let name = FileName::parse(raw_name)?;
        let category = Category::parse(
            raw_category.unwrap_or(Category::DEFAULT),
            &self.limits.allowed_categories,
        )?;
        let Some(db) = &self.db else {
            return Err(UploadError::DatabaseUnavailable(
                "No database configured: uploads need DATABASE_URL".into(),
            ));
        };
        let Some(journal) = self.journal.clone() else {
            return Err(UploadError::Internal(
                "the clean-up journal cannot be written".into(),
            ));
        };
        let max_side = self.limits.max_side_px;
        let (info, bytes) =
            blocking::run(move || imaging::inspect(&bytes, max_side).map(|d| (d, bytes))).await??;
        if !db.is_available() {
            return Err(UploadError::DatabaseUnavailable(
                "Database unavailable, try again later".into(),
            ));
        }
        // Most duplicates are caught here, before any image work and without queueing behind
        // another upload's lock.
        let taken = {
            let key = name.as_str().to_string();
            db.run(move |c| {
                Ok(!c
                    .query_typed(
                        "SELECT 1 FROM photograph_names WHERE name = $1",
                        &[(&key, Type::TEXT)],
                    )?
                    .is_empty())
            })
            .await?
        };
        if taken {
            return Err(UploadError::Duplicate(name));
        }
        let processed = {
            let _work = self.image_slots.acquire().await.expect("never closed");
            let settings = self.image.clone();
            let started = std::time::Instant::now();
            let processed =
                blocking::run_low_priority(move || imaging::process(&bytes, &info, &settings))
                    .await??;
            self.listing
                .metrics()
                .image_seconds
                .observe(started.elapsed().as_secs_f64());
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                reencoded = processed.reencoded,
                "photo processed"
            );
            processed
        };
        let _slot = self.slots.acquire().await.expect("never closed");
        let store = self.store.clone();
        let outcome = {
            let (name, category) = (name.clone(), category.clone());
            let journal = journal.clone();
            db.run(move |c| Ok(write(c, &*store, &journal, &name, &category, &processed)))
                .await?
        };
        let photo = match outcome {
            Ok(photo) => photo,
            Err(WriteFailure::Upload(e)) => return Err(e),
            Err(WriteFailure::CommitUncertain { id, error, entry }) => {
                tracing::warn!(id, error = %error, "commit failed after the object was stored");
                self.resolve_or_defer(db, &journal, *entry, id).await?
            }
        };
        self.listing.invalidate();
        tracing::info!(filename = %photo.filename, id = photo.id, "photo uploaded");
        Ok(photo)
    }

    /// A session for one `/api/upload` form.
    pub fn single(self: &Arc<Self>) -> SingleUpload {
        SingleUpload {
            uploader: self.clone(),
            file: None,
            category: None,
        }
    }

    /// A session for one `/api/upload-batch` form.
    pub fn batch(self: &Arc<Self>) -> BatchSession {
        BatchSession {
            uploader: self.clone(),
            category: None,
            waiting: Vec::new(),
            files_seen: 0,
            report: BatchReport::default(),
        }
    }

    /// After a failed commit: ask the database whether the row exists. Yes: the upload
    /// succeeded. No: settle the journal entry now (the object goes). No answer: the resolver
    /// settles it when the database is back.
    async fn resolve_or_defer(
        &self,
        db: &Db,
        journal: &Arc<Journal>,
        entry: Entry,
        id: i32,
    ) -> Result<Photo, UploadError> {
        let failed = || {
            UploadError::DatabaseUnavailable(
                "Database failed while saving the photo; nothing was kept, try again".into(),
            )
        };
        let held = entry.clone();
        let outcome = match db.run(move |c| fetch_photo(c, id)).await {
            Ok(Some(photo)) => {
                forget(journal, &entry);
                Ok(photo)
            }
            Ok(None) => match self.resolve(db, journal, entry).await {
                // The claim says a committed row has the name after all: it is ours.
                Ok(Resolution::Kept) => db
                    .run(move |c| fetch_photo(c, id))
                    .await
                    .ok()
                    .flatten()
                    .ok_or_else(failed),
                _ => Err(failed()),
            },
            Err(_) => Err(UploadError::DatabaseUnavailable(
                "Database failed while saving the photo; it will be removed from storage \
                 unless the database recorded it. Check /api/images, then try again"
                    .into(),
            )),
        };
        // Whatever is left is the resolver's now.
        journal.release(&held);
        outcome
    }

    /// Settles one journal entry (see [`crate::write::journal`]).
    async fn resolve(
        &self,
        db: &Db,
        journal: &Arc<Journal>,
        entry: Entry,
    ) -> Result<Resolution, Unsettled> {
        let (store, journal) = (self.store.clone(), journal.clone());
        db.run(move |c| Ok(resolve_entry(c, &*store, &journal, entry)))
            .await?
    }

    /// Settles every journal entry that is due, if the database answers. Runs at start-up (the
    /// entries of a process that died), whenever the database comes back, and every half second.
    pub async fn resolve_pending(&self) {
        let (Some(db), Some(journal)) = (&self.db, &self.journal) else {
            return;
        };
        let _one_at_a_time = self.resolving.lock().await;
        if !db.is_available() {
            return;
        }
        let entries = {
            let journal = journal.clone();
            match blocking::run(move || journal.entries()).await {
                Ok(Ok(entries)) => entries,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the clean-up journal");
                    return;
                }
                Err(_) => return,
            }
        };
        let now = crate::write::journal::now_ms();
        for entry in entries.into_iter().filter(|e| e.is_due(now)) {
            let key = entry.key.clone();
            match self.resolve(db, journal, entry).await {
                Ok(Resolution::Kept) => {
                    tracing::info!(key = %key, "journal: the object has its row; kept")
                }
                Ok(Resolution::Removed) => {
                    tracing::info!(key = %key, "journal: removed an object that has no row")
                }
                Err(e) => {
                    tracing::debug!(key = %key, error = %e, "journal entry not settled yet");
                    if matches!(&e, Unsettled::Db(d) if d.is_connectivity()) {
                        return; // still down; the next pass retries
                    }
                }
            }
        }
    }

    /// Journal entries not yet settled.
    pub fn pending_cleanups(&self) -> usize {
        self.journal
            .as_ref()
            .and_then(|j| j.entries().ok())
            .map_or(0, |e| e.len())
    }
}

/// `image.max_concurrent`, or one per core.
fn image_workers(settings: &ImageSettings) -> usize {
    match settings.max_concurrent {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    }
}

fn spawn_resolver(weak: Weak<Uploader>) {
    tokio::spawn(async move {
        loop {
            let Some(uploader) = weak.upgrade() else {
                return;
            };
            uploader.resolve_pending().await;
            drop(uploader);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Sessions: a whole form, field by field

/// A file of a batch that was not stored, because its name is taken.
#[derive(Debug, poem_openapi::Object)]
pub struct Skipped {
    pub filename: String,
    pub reason: String,
}

/// A file of a batch that was not stored, for any other reason.
#[derive(Debug, poem_openapi::Object)]
pub struct Failed {
    pub filename: String,
    pub error: String,
}

/// Every file of a batch, in exactly one list.
#[derive(Debug, Default, poem_openapi::Object)]
pub struct BatchReport {
    pub uploaded: Vec<Photo>,
    pub skipped: Vec<Skipped>,
    pub failed: Vec<Failed>,
}

/// Why a session stopped reading a field.
#[derive(Debug)]
pub enum FieldError {
    /// The request body failed while the field was read (too large, malformed, cut off).
    Body(io::Error),
    /// The session refuses the form (single uploads only; a batch reports per file).
    Refused(UploadError),
}

/// Reads `reader` to its end, keeping at most `cap` bytes: Ok(None) when there were more (the
/// rest is read and dropped, so the next field can be reached).
pub async fn read_capped<R: AsyncRead + Unpin>(
    mut reader: R,
    cap: u64,
) -> io::Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut too_big = false;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if !too_big && (data.len() + n) as u64 > cap {
            too_big = true;
            data = Vec::new();
        }
        if !too_big {
            data.extend_from_slice(&buf[..n]);
        }
    }
    Ok((!too_big).then_some(data))
}

fn too_large(name: &str, max: u64) -> UploadError {
    UploadError::TooLarge(format!("{name} is larger than the {max}-byte limit"))
}

/// One `/api/upload` form: one `file`, an optional `category` before or after it.
pub struct SingleUpload {
    uploader: Arc<Uploader>,
    file: Option<(String, Vec<u8>)>,
    category: Option<String>,
}

impl SingleUpload {
    pub async fn add_file<R: AsyncRead + Unpin>(
        &mut self,
        raw_name: String,
        reader: R,
    ) -> Result<(), FieldError> {
        if self.file.is_some() {
            return Err(FieldError::Refused(UploadError::BadForm(
                "Send one file to /api/upload; use /api/upload-batch for several".into(),
            )));
        }
        let max = self.uploader.limits.max_file_bytes;
        match read_capped(reader, max).await.map_err(FieldError::Body)? {
            Some(bytes) => {
                self.file = Some((raw_name, bytes));
                Ok(())
            }
            None => Err(FieldError::Refused(too_large(&raw_name, max))),
        }
    }

    /// The first `category` counts; later ones are ignored.
    pub fn set_category(&mut self, text: String) {
        self.category.get_or_insert(text);
    }

    /// Stores the file.
    pub async fn finish(self) -> Result<Photo, UploadError> {
        let Some((name, bytes)) = self.file else {
            return Err(UploadError::MissingField("file (a .jpg/.jpeg photo)"));
        };
        self.uploader
            .upload(&name, self.category.as_deref(), bytes)
            .await
    }
}

/// One `/api/upload-batch` form. Files are stored one at a time as they arrive once the
/// category is known; files that come before it are parked in the spool folder (never in memory)
/// until it does, or until the form ends and the default category applies.
pub struct BatchSession {
    uploader: Arc<Uploader>,
    category: Option<String>,
    waiting: Vec<(String, tempfile::NamedTempFile)>,
    files_seen: usize,
    report: BatchReport,
}

impl BatchSession {
    pub async fn add_file<R: AsyncRead + Unpin>(
        &mut self,
        raw_name: String,
        reader: R,
    ) -> Result<(), FieldError> {
        self.files_seen += 1;
        let limits = &self.uploader.limits;
        let over_count = self.files_seen > limits.max_batch_files;
        let cap = if over_count { 0 } else { limits.max_file_bytes };
        let bytes = read_capped(reader, cap).await.map_err(FieldError::Body)?;
        match bytes {
            _ if over_count => self.report.failed.push(Failed {
                filename: raw_name,
                error: format!(
                    "Too many files in one batch (at most {})",
                    limits.max_batch_files
                ),
            }),
            None => self.report.failed.push(Failed {
                error: too_large(&raw_name, limits.max_file_bytes).to_string(),
                filename: raw_name,
            }),
            Some(bytes) => match self.category.clone() {
                Some(category) => self.store(raw_name, Some(&category), bytes).await,
                None => match spool(self.uploader.limits.spool_dir.clone(), bytes).await {
                    Ok(file) => self.waiting.push((raw_name, file)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot park a file of a batch");
                        self.report.failed.push(Failed {
                            filename: raw_name,
                            error: "Could not buffer the file on the server; nothing was kept"
                                .into(),
                        })
                    }
                },
            },
        }
        Ok(())
    }

    /// The first `category` counts (later ones are ignored); the files waiting for it are stored.
    /// A category that breaks the rules refuses the batch (the caller aborts it): no file of it
    /// could be stored.
    pub async fn set_category(&mut self, text: String) -> Result<(), UploadError> {
        if self.category.is_none() {
            Category::parse(&text, &self.uploader.limits.allowed_categories)?;
            self.category = Some(text.clone());
            self.drain_waiting(Some(&text)).await;
        }
        Ok(())
    }

    /// The form ended: files still waiting get the default category.
    pub async fn finish(mut self) -> Result<BatchReport, UploadError> {
        if self.files_seen == 0 {
            return Err(UploadError::MissingField(
                "files (one or more .jpg/.jpeg photos)",
            ));
        }
        let category = self.category.clone();
        self.drain_waiting(category.as_deref()).await;
        self.log_summary();
        Ok(self.report)
    }

    /// The body broke off (`reason`): files still waiting were never stored and are reported
    /// failed; the files before the break keep their outcomes.
    pub fn abort(mut self, reason: &str) -> BatchReport {
        for (name, _) in self.waiting.drain(..) {
            self.report.failed.push(Failed {
                filename: name,
                error: format!("Not stored: {reason}"),
            });
        }
        self.log_summary();
        std::mem::take(&mut self.report)
    }

    fn log_summary(&self) {
        tracing::info!(
            uploaded = self.report.uploaded.len(),
            skipped = self.report.skipped.len(),
            failed = self.report.failed.len(),
            "batch upload finished"
        );
    }

    async fn drain_waiting(&mut self, category: Option<&str>) {
        for (name, file) in std::mem::take(&mut self.waiting) {
            let path = file.path().to_path_buf();
            match blocking::run(move || std::fs::read(path)).await {
                Ok(Ok(bytes)) => self.store(name, category, bytes).await,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read a parked file of a batch");
                    self.report.failed.push(Failed {
                        filename: name,
                        error: "Could not read the buffered file on the server; nothing was kept"
                            .into(),
                    });
                }
                Err(_) => self.report.failed.push(Failed {
                    filename: name,
                    error: "Internal error; nothing was kept".into(),
                }),
            }
        }
    }

    /// Stores one file and files its outcome.
    async fn store(&mut self, name: String, category: Option<&str>, bytes: Vec<u8>) {
        match self.uploader.upload(&name, category, bytes).await {
            Ok(photo) => self.report.uploaded.push(photo),
            Err(e @ UploadError::Duplicate(_)) => self.report.skipped.push(Skipped {
                filename: name,
                reason: e.to_string(),
            }),
            Err(e) => {
                let error = match &e {
                    // Internals are logged, never sent.
                    UploadError::Database(_) | UploadError::Internal(_) => {
                        tracing::error!(error = %e, "upload failed");
                        "Internal error while saving the photo; nothing was kept".to_string()
                    }
                    _ => e.to_string(),
                };
                self.report.failed.push(Failed {
                    filename: name,
                    error,
                })
            }
        }
    }
}

const SPOOL_PREFIX: &str = ".spool-";

/// Parks a file in the spool folder; it is deleted when the handle drops.
async fn spool(dir: PathBuf, bytes: Vec<u8>) -> io::Result<tempfile::NamedTempFile> {
    blocking::run(move || {
        use std::io::Write;
        std::fs::create_dir_all(&dir)?;
        let mut f = tempfile::Builder::new()
            .prefix(SPOOL_PREFIX)
            .suffix(".part")
            .tempfile_in(&dir)?;
        f.write_all(&bytes)?;
        Ok(f)
    })
    .await
    .map_err(io::Error::other)?
}

/// Removes the files this server parked in `dir` (only ours, by name: the folder may be shared).
fn clear_spool(dir: &Path) -> io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(SPOOL_PREFIX)
        {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

// ---------------------------------------------------------------------------------------------
// The write protocol

enum WriteFailure {
    Upload(UploadError),
    /// The object was stored and COMMIT failed: the row may or may not exist.
    CommitUncertain {
        id: i32,
        error: postgres::Error,
        entry: Box<Entry>,
    },
}

impl<E: Into<UploadError>> From<E> for WriteFailure {
    fn from(e: E) -> Self {
        WriteFailure::Upload(e.into())
    }
}

/// Removes an entry whose object is accounted for. A failure only means the resolver will find
/// the row later and drop the entry then.
fn forget(journal: &Journal, entry: &Entry) {
    if let Err(e) = journal.remove(entry) {
        tracing::warn!(key = %entry.key, error = %e, "cannot remove a journal entry");
    }
}

/// Steps 1-3 of the protocol (see the module docs), for the photo and each of its variants.
/// Runs on a blocking thread.
fn write(
    c: &mut PgConn,
    store: &dyn ObjectStore,
    journal: &Journal,
    file: &FileName,
    category: &Category,
    processed: &Processed,
) -> Result<Photo, WriteFailure> {
    let (name, category) = (file.as_str(), category.as_str());
    let url = store.public_url(name);
    let (width, height) = (
        processed.photo.dims.width as i32,
        processed.photo.dims.height as i32,
    );
    let variants: Vec<(Variant, String, &[u8])> = processed
        .variants
        .iter()
        .map(|(v, e)| (*v, v.key(name), &e.bytes[..]))
        .collect();
    let url_of = |wanted: Variant| {
        variants
            .iter()
            .find(|(v, _, _)| *v == wanted)
            .map(|(_, key, _)| store.public_url(key))
    };
    let (thumbnail_url, medium_url) = (url_of(Variant::Thumb), url_of(Variant::Medium));
    let preview = &processed.preview;
    let mut tx = c.transaction().map_err(DbError::from)?;
    // Waiting on a same-name upload is normal; waiting forever is not.
    tx.batch_execute("SET LOCAL lock_timeout = '30s'")
        .map_err(DbError::from)?;
    let inserted = tx.query_one(
        "INSERT INTO photographs \
         (filename, url, category, width, height, thumbnail_url, medium_url, placeholder, color) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        &[
            &name,
            &url,
            &category,
            &width,
            &height,
            &thumbnail_url,
            &medium_url,
            &preview.placeholder,
            &preview.color,
        ],
    );
    let id: i32 = match inserted {
        Ok(row) => row.get(0),
        Err(e) if is_name_taken(&e) => {
            return Err(UploadError::Duplicate(file.clone()).into());
        }
        // Anything else (the database failing, a constraint of someone's schema) is not a
        // duplicate: nothing was stored, try again.
        Err(e) => {
            let e = DbError::from(e);
            tracing::error!(error = %e, "inserting the row failed");
            if e.is_connectivity() {
                return Err(e.into());
            }
            return Err(UploadError::DatabaseUnavailable(
                "The database could not record the photo; nothing was kept, try again".into(),
            )
            .into());
        }
    };
    // Someone else's object (an upload whose row was deleted, another tool): leave it alone.
    if store.exists(name)? {
        return Err(UploadError::Duplicate(file.clone()).into());
    }
    // From here on objects may exist under these keys: write that down first.
    let also: Vec<String> = variants.iter().map(|(_, key, _)| key.clone()).collect();
    let entry = journal
        .record_with(name, &also, store.settle_time())
        .map_err(|e| UploadError::Internal(format!("cannot write the clean-up journal: {e}")))?;
    match store.put_new(name, &processed.photo.bytes) {
        Ok(Put::Created) => {}
        Ok(Put::AlreadyExists) => {
            // Not ours: it must never be the resolver's to delete, even after a crash.
            if let Err(e) = journal.remove_synced(&entry) {
                tracing::error!(key = %entry.key, error = %e, "cannot remove a journal entry");
            }
            return Err(UploadError::Duplicate(file.clone()).into());
        }
        Err(e) => {
            abandon(store, journal, entry, &[], outcome_unknown(&e));
            return Err(e.into());
        }
    }
    let mut created = vec![name];
    for (_, key, bytes) in &variants {
        match put_variant(store, key, bytes) {
            Ok(true) => created.push(key),
            Ok(false) => {}
            Err(VariantError::Storage(e)) => {
                abandon(store, journal, entry, &created, outcome_unknown(&e));
                return Err(e.into());
            }
            Err(VariantError::Occupied(key)) => {
                abandon(store, journal, entry, &created, false);
                return Err(UploadError::Occupied(key).into());
            }
        }
    }
    if let Err(error) = tx.commit() {
        return Err(WriteFailure::CommitUncertain {
            id,
            error,
            entry: Box::new(entry),
        });
    }
    forget(journal, &entry);
    Ok(Photo {
        id,
        filename: name.to_string(),
        url,
        category: category.to_string(),
        width,
        height,
        thumbnail_url,
        medium_url,
        placeholder: Some(preview.placeholder.clone()),
        color: Some(preview.color.clone()),
    })
}

/// Stores a variant, create-only like the photo. An object already at its key was not written
/// by this upload: if it holds exactly these bytes it is this photo's variant from an earlier
/// attempt (the encoding is deterministic) and serves as it is; anything else is someone
/// else's and refuses the upload. Ok(true): this call created it.
pub(crate) fn put_variant(
    store: &dyn ObjectStore,
    key: &str,
    bytes: &[u8],
) -> Result<bool, VariantError> {
    match store.put_new(key, bytes)? {
        Put::Created => Ok(true),
        Put::AlreadyExists => match store.get(key) {
            Ok(Some(there)) if there == bytes => {
                tracing::info!(key, "a variant with these very bytes is already stored");
                Ok(false)
            }
            // Unreadable (the store cannot read, or failed): not provably ours either.
            Ok(_) | Err(_) => Err(VariantError::Occupied(key.to_string())),
        },
    }
}

/// Why a variant was not stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VariantError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("`{0}` holds an object this server did not write")]
    Occupied(String),
}

/// A storage write failed after the entry was recorded; the transaction is still open, so the
/// name's claim is held. Objects written for sure (`created`) are removed now. A write whose
/// outcome is unknown may still land: the entry is left to the resolver with checks after the
/// store's timeouts (`may_still_land`), as is anything that could not be removed now.
fn abandon(
    store: &dyn ObjectStore,
    journal: &Journal,
    mut entry: Entry,
    created: &[&str],
    may_still_land: bool,
) {
    let mut left_over = false;
    for key in created {
        if let Err(e) = store.delete(key) {
            tracing::warn!(key, error = %e, "cannot remove an object of a failed upload yet");
            left_over = true;
        }
    }
    let checks: Vec<Duration> = if may_still_land {
        crate::write::journal::checks_after(store.settle_time())
    } else if left_over {
        vec![Duration::ZERO]
    } else {
        Vec::new()
    };
    if checks.is_empty() {
        forget(journal, &entry); // refused, and nothing of it remains
    } else {
        if let Err(io) = journal.reschedule(&mut entry, &checks) {
            tracing::error!(error = %io, "cannot reschedule a journal entry");
        }
        journal.release(&entry);
    }
}

/// The name's claim (migration 0002) is taken by another row.
fn is_name_taken(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && e.as_db_error()
            .and_then(|d| d.constraint())
            .is_none_or(|c| c == "photograph_names_pkey")
}

/// A failed write that may still have happened, or may still happen: the store was not reached
/// for sure, the connection was cut after sending, or a gateway answered 5xx.
fn outcome_unknown(e: &StorageError) -> bool {
    match e {
        StorageError::Unavailable(_) => true,
        StorageError::Rejected { status, .. } => *status >= 500,
        StorageError::ObjectRefused { .. }
        | StorageError::Unreadable(_)
        | StorageError::Unusable(_)
        | StorageError::Unsupported(_)
        | StorageError::Io(_) => false,
    }
}

/// Why an object's fate could not be settled yet.
#[derive(Debug, thiserror::Error)]
pub enum Unsettled {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(StorageError),
}

impl From<postgres::Error> for Unsettled {
    fn from(e: postgres::Error) -> Self {
        Unsettled::Db(e.into())
    }
}

/// What settling an object found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// A committed row has the name: the object is its photo.
    Kept,
    /// No row has the name: the object (if it was there) was deleted.
    Removed,
}

/// Settles a journal entry: [`delete_unclaimed`], then the entry is dropped (kept: the object
/// is a committed row's) or keeps its later checks (removed: a late write may still land).
fn resolve_entry(
    c: &mut PgConn,
    store: &dyn ObjectStore,
    journal: &Journal,
    mut entry: Entry,
) -> Result<Resolution, Unsettled> {
    let keys: Vec<&str> = std::iter::once(entry.key.as_str())
        .chain(entry.also.iter().map(String::as_str))
        .collect();
    let resolution = delete_unclaimed(c, store, entry.name(), &keys)?;
    if resolution == Resolution::Removed && !entry.checks.is_empty() {
        entry.checks.remove(0);
    }
    if resolution == Resolution::Kept || entry.checks.is_empty() {
        forget(journal, &entry);
    } else if let Err(e) = journal.write(&entry) {
        tracing::warn!(key = %entry.key, error = %e, "cannot update a journal entry");
    }
    Ok(resolution)
}

/// Deletes the objects `keys` (a photo and its variants) unless a committed row holds the name
/// `name`. The name is claimed as an
/// upload would claim it, in a transaction that is always rolled back (the placeholder row is
/// never visible), which waits for an upload of that name still in flight; the delete happens
/// under the claim, so it can only remove an object no row will ever own.
pub fn delete_unclaimed(
    c: &mut PgConn,
    store: &dyn ObjectStore,
    name: &str,
    keys: &[&str],
) -> Result<Resolution, Unsettled> {
    let mut tx = c.transaction()?;
    tx.batch_execute("SET LOCAL lock_timeout = '10s'")?;
    let claim = tx.query_one(
        "INSERT INTO photographs (filename, url) VALUES ($1, '') RETURNING id",
        &[&name],
    );
    match claim {
        Err(e) if is_name_taken(&e) => Ok(Resolution::Kept),
        Err(e) => Err(DbError::from(e).into()),
        Ok(_) => {
            // Variants first: should a delete fail, the photo's key is still there to retry by.
            let deleted = keys.iter().rev().try_for_each(|k| store.delete(k));
            tx.rollback()?;
            // Storage failing: nothing changed, try again later.
            deleted.map_err(Unsettled::Storage)?;
            Ok(Resolution::Removed)
        }
    }
}

fn fetch_photo(c: &mut PgConn, id: i32) -> Result<Option<Photo>, DbError> {
    let sql = format!(
        "SELECT {} FROM photographs WHERE id = $1",
        crate::db::PHOTO_COLUMNS
    );
    let rows = c.query_typed(&sql, &[(&id, Type::INT4)])?;
    Ok(rows.first().map(photo_from_row))
}
