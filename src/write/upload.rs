//! The upload use case: check the name, category and image, make the variants (or leave them to
//! [`super::background`], for a photo stored as sent), then store the photo through the write
//! protocol ([`super::protocol`]).
//!
//! Every successful write invalidates the listing's cached pages itself, so no caller can leave
//! them stale. The HTTP handlers feed whole forms to the sessions of [`super::session`], which
//! call [`Uploader::upload`] for each file.

use std::sync::Arc;

use tokio::sync::{Semaphore, oneshot};

use super::{
    background::{self, Background},
    cleanup::Resolution,
    context::WriteContext,
    error::UploadError,
    journal::{Entry, Journal},
    protocol::{WriteFailure, write},
};
use crate::{
    blocking,
    config::{ImageSettings, Settings, UploadSettings},
    db::{Db, queries},
    imaging,
    metrics::Metrics,
    model::{Category, FileName, Photo},
};

/// A file's place among the files of one batch, which are processed a few at once: its row is
/// inserted only after the row of the file before it, so that ids (the listing's order) follow
/// the form's order. The default is a file on its own.
#[derive(Default)]
pub struct Turn {
    /// Answers, or is dropped, once the file before has inserted its row or ended without one.
    pub after: Option<oneshot::Receiver<()>>,
    /// Dropped once this file's row is inserted, or when it ends without one.
    pub then: Option<oneshot::Sender<()>>,
}

impl Turn {
    /// Turns for files taken in order: each one's turn comes after the one made before.
    pub fn next(previous: &mut Option<oneshot::Receiver<()>>) -> Turn {
        let (then, after) = oneshot::channel();
        Turn {
            after: previous.replace(after),
            then: Some(then),
        }
    }
}

pub struct Uploader {
    /// The database, store, listing, clean-up and write slots, shared with the manager.
    w: WriteContext,
    pub limits: UploadSettings,
    /// What a photo is turned into before it is stored.
    image: ImageSettings,
    /// Photos decoded and resized at once: bounds the CPU and memory a batch can take.
    image_slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// Makes the variants of uploads answered before them (None without a database).
    background: Option<Background>,
}

impl Uploader {
    /// Builds the uploader, with the upload and image settings of `settings`.
    pub fn new(w: WriteContext, metrics: Arc<Metrics>, settings: &Settings) -> Arc<Uploader> {
        let (limits, image) = (settings.upload.clone(), settings.image.clone());
        let image_slots = Arc::new(Semaphore::new(image_workers(&image)));
        // Whatever the setting: rows left pending when it was turned off are finished too.
        let background = match &w.db {
            Some(db) => Some(Background::start(background::Work {
                db: db.clone(),
                store: w.store.clone(),
                listing: w.listing.clone(),
                settings: image.clone(),
                max_side: limits.max_side_px,
                slots: image_slots.clone(),
                workers: image_workers(&image),
                metrics: metrics.clone(),
            })),
            None => None,
        };
        Arc::new(Uploader {
            w,
            image_slots,
            image,
            limits,
            metrics,
            background,
        })
    }

    /// Files of one batch in work at once: enough to keep every image worker busy while as many
    /// others are being written to storage (`image.max_concurrent` + `upload.max_concurrent`).
    pub fn batch_parallelism(&self) -> usize {
        image_workers(&self.image) + self.limits.max_concurrent.max(1)
    }

    /// Validates and stores one photo. `raw_name` is the client's file name, `raw_category` the
    /// form's text (None: the default category).
    #[tracing::instrument(name = "upload", skip_all, fields(file = %raw_name))]
    pub async fn upload(
        &self,
        raw_name: &str,
        raw_category: Option<&str>,
        bytes: Vec<u8>,
        turn: Turn,
    ) -> Result<Photo, UploadError> {
        let result = self
            .upload_counted(raw_name, raw_category, bytes, turn)
            .await;
        let label = result
            .as_ref()
            .map_or_else(UploadError::label, |_| "created");
        self.metrics.uploads.with_label_values(&[label]).inc();
        result
    }

    async fn upload_counted(
        &self,
        raw_name: &str,
        raw_category: Option<&str>,
        bytes: Vec<u8>,
        turn: Turn,
    ) -> Result<Photo, UploadError> {
        let Turn { after, then } = turn;
        let name = FileName::parse(raw_name)?;
        let category = Category::parse(
            raw_category.unwrap_or(Category::DEFAULT),
            &self.limits.allowed_categories,
        )?;
        let Some(db) = &self.w.db else {
            return Err(UploadError::DatabaseUnavailable(
                "No database configured: uploads need DATABASE_URL".into(),
            ));
        };
        let Some(journal) = self.w.cleanup.journal().cloned() else {
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
            db.run(move |c| queries::name_taken(c, &key)).await?
        };
        if taken {
            return Err(UploadError::Duplicate(name));
        }
        // With `image.variants_after_answer`, a photo stored as sent is not decoded before the
        // answer: its variants are made afterwards, so it needs no image slot and never waits
        // behind the variants of earlier uploads. A photo that must be decoded anyway (made
        // smaller, turned upright) gets its variants from that decode, before the answer.
        let later = self.image.variants_after_answer && !imaging::must_reencode(&info, &self.image);
        let processed = {
            let _work = match later {
                true => None,
                false => Some(self.image_slots.acquire().await.expect("never closed")),
            };
            let settings = self.image.clone();
            let started = std::time::Instant::now();
            let processed = blocking::run_low_priority(move || match later {
                true => imaging::process_photo(&bytes, &info, &settings),
                false => imaging::process(&bytes, &info, &settings),
            })
            .await??;
            self.metrics
                .image_seconds
                .observe(started.elapsed().as_secs_f64());
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                reencoded = processed.reencoded,
                "photo processed"
            );
            processed
        };
        if let Some(before) = after {
            let _ = before.await; // answered or dropped: either way the file before is done
        }
        let _slot = self.w.slots.acquire().await.expect("never closed");
        let store = self.w.store.clone();
        let outcome = {
            let (name, category) = (name.clone(), category.clone());
            let journal = journal.clone();
            let inserted = move || drop(then);
            db.run(move |c| {
                Ok(write(
                    c, &*store, &journal, &name, &category, &processed, inserted,
                ))
            })
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
        self.w.listing.invalidate();
        if let (true, Some(background)) = (later, &self.background) {
            background.poke();
        }
        tracing::info!(filename = %photo.filename, id = photo.id, "photo uploaded");
        Ok(photo)
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
        let outcome = match db.run(move |c| queries::photo(c, id)).await {
            Ok(Some(photo)) => {
                journal.forget(&entry);
                Ok(photo)
            }
            Ok(None) => match self.w.cleanup.resolve(db, journal, entry).await {
                // The claim says a committed row has the name after all: it is ours.
                Ok(Resolution::Kept) => db
                    .run(move |c| queries::photo(c, id))
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
}

/// `image.max_concurrent`, or one per core.
fn image_workers(settings: &ImageSettings) -> usize {
    match settings.max_concurrent {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    }
}
