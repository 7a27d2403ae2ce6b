//! The upload use case: validate, then write a photo so that it is never lost, never overwrites
//! or deletes another request's photo, and never leaves an object without a row.
//!
//! The write protocol, all on one blocking thread with one pooled connection:
//! 1. `BEGIN`; `INSERT` the row. Its trigger claims the lower-cased name in `photograph_names`
//!    (migration 0002). A concurrent upload of the same name blocks on that claim until this
//!    transaction ends, then fails with a unique violation: 409.
//! 2. Store the object with "create, never overwrite". If storage says the key exists, that object
//!    is not ours: 409, roll back, delete nothing.
//! 3. `COMMIT`. If the commit fails, the object we created is deleted once we know the row did not
//!    commit: at once if the database answers, else later by a background task.
//!
//! Any failure before step 3 rolls the transaction back. The object exists only if this request
//! created it in step 2, so this request deletes only what it created.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use postgres::error::SqlState;
use tokio::sync::Semaphore;

use crate::{
    config::UploadSettings,
    db::{Db, DbError, Photo},
    imaging::{self, Dimensions, Rejection},
    storage::{ObjectStore, Put, StorageError},
};

/// Why an upload did not happen. Each maps to one HTTP status in the API layer.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Bad input: wrong type, unreadable, bad name or category. Nothing was stored.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The name is taken, in the database or in storage. Nothing was changed.
    #[error("Duplicate filename: {0}")]
    Duplicate(String),
    #[error("{0}")]
    TooLarge(String),
    /// The database cannot take writes now (down, or none configured).
    #[error("{0}")]
    DatabaseUnavailable(String),
    #[error("Storage error: {0}")]
    Storage(#[from] StorageError),
    #[error("Database error: {0}")]
    Database(DbError),
}

impl From<DbError> for UploadError {
    fn from(e: DbError) -> Self {
        if e.is_connectivity() {
            UploadError::DatabaseUnavailable(format!("Database unavailable, try again later: {e}"))
        } else if e.is_busy() {
            UploadError::DatabaseUnavailable("Database busy, try again shortly".into())
        } else {
            UploadError::Database(e)
        }
    }
}

pub struct Uploader {
    db: Option<Db>,
    store: Arc<dyn ObjectStore>,
    pub limits: UploadSettings,
    /// Uploads hold a pooled connection while they store the object: bound them so reads always
    /// find connections.
    slots: Semaphore,
    /// Objects we created whose row may or may not have committed (the commit failed and the
    /// database could not be asked): key -> photograph id.
    unresolved: Mutex<HashMap<String, i32>>,
}

impl Uploader {
    pub fn new(
        db: Option<Db>,
        store: Arc<dyn ObjectStore>,
        limits: UploadSettings,
    ) -> Arc<Uploader> {
        let uploader = Arc::new(Uploader {
            db,
            store,
            slots: Semaphore::new(limits.max_concurrent.max(1)),
            limits,
            unresolved: Mutex::new(HashMap::new()),
        });
        spawn_resolver(Arc::downgrade(&uploader));
        uploader
    }

    /// Validates and stores one photo. `raw_name` is the client's file name.
    pub async fn upload(
        &self,
        raw_name: &str,
        category: &str,
        bytes: Vec<u8>,
    ) -> Result<Photo, UploadError> {
        let name = imaging::safe_file_name(raw_name)?;
        let category = imaging::normalise_category(category, &self.limits.allowed_categories)?;
        let Some(db) = &self.db else {
            return Err(UploadError::DatabaseUnavailable(
                "No database configured: uploads need DATABASE_URL".into(),
            ));
        };
        let _slot = self.slots.acquire().await.expect("never closed");
        let max_side = self.limits.max_side_px;
        let (dims, bytes) = tokio::task::spawn_blocking(move || {
            imaging::inspect_jpeg(&bytes, max_side).map(|d| (d, bytes))
        })
        .await
        .map_err(|e| UploadError::Database(DbError::Join(e)))??;
        if !db.is_available() {
            return Err(UploadError::DatabaseUnavailable(
                "Database unavailable, try again later".into(),
            ));
        }
        // Most duplicates are caught here, without queueing behind another upload's lock.
        let taken = {
            let name = name.clone();
            db.run(move |c| {
                Ok(
                    c.query_opt("SELECT 1 FROM photograph_names WHERE name = $1", &[&name])?
                        .is_some(),
                )
            })
            .await?
        };
        if taken {
            return Err(UploadError::Duplicate(name));
        }
        let store = self.store.clone();
        let url = store.public_url(&name);
        let outcome = {
            let (name, category) = (name.clone(), category.clone());
            db.run(move |c| Ok(write(c, &*store, &name, &url, &category, dims, &bytes)))
                .await?
        };
        match outcome {
            Ok(photo) => Ok(photo),
            Err(WriteFailure::Upload(e)) => Err(e),
            Err(WriteFailure::CommitUncertain { id, error }) => {
                tracing::warn!(%name, id, error = %error, "commit failed after the object was stored");
                self.resolve_or_defer(db, &name, id).await
            }
        }
    }

    /// After a failed commit: ask the database whether the row exists. Yes: the upload
    /// succeeded. No: delete our object. No answer: remember it for the background resolver.
    async fn resolve_or_defer(&self, db: &Db, name: &str, id: i32) -> Result<Photo, UploadError> {
        match db.run(move |c| fetch_photo(c, id)).await {
            Ok(Some(photo)) => Ok(photo),
            Ok(None) => {
                self.delete_object(name).await;
                Err(UploadError::DatabaseUnavailable(
                    "Database failed while saving the photo; nothing was kept, try again".into(),
                ))
            }
            Err(_) => {
                self.unresolved
                    .lock()
                    .expect("not poisoned")
                    .insert(name.to_string(), id);
                Err(UploadError::DatabaseUnavailable(
                    "Database failed while saving the photo; it will be removed from storage \
                     unless the database recorded it. Check /api/images, then try again"
                        .into(),
                ))
            }
        }
    }

    async fn delete_object(&self, name: &str) {
        let store = self.store.clone();
        let key = name.to_string();
        let result = tokio::task::spawn_blocking(move || store.delete(&key)).await;
        match result {
            Ok(Ok(())) => {
                tracing::info!(%name, "removed the object of an upload that did not commit")
            }
            Ok(Err(e)) => {
                tracing::error!(%name, error = %e, "could not remove an uncommitted upload's object")
            }
            Err(e) => tracing::error!(%name, error = %e, "cleanup task failed"),
        }
    }

    /// Settles the uploads whose commit outcome was unknown, once the database answers.
    async fn resolve_pending(&self) {
        let Some(db) = &self.db else { return };
        let pending: Vec<(String, i32)> = self
            .unresolved
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (name, id) in pending {
            match db.run(move |c| fetch_photo(c, id)).await {
                Ok(found) => {
                    if found.is_none() {
                        self.delete_object(&name).await;
                    }
                    self.unresolved.lock().expect("not poisoned").remove(&name);
                }
                Err(_) => return, // still down; try again later
            }
        }
    }

    pub fn unresolved_count(&self) -> usize {
        self.unresolved.lock().expect("not poisoned").len()
    }
}

fn spawn_resolver(weak: Weak<Uploader>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(uploader) = weak.upgrade() else {
                return;
            };
            if uploader.unresolved_count() > 0 && uploader.db.as_ref().is_some_and(Db::is_available)
            {
                uploader.resolve_pending().await;
            }
        }
    });
}

enum WriteFailure {
    Upload(UploadError),
    /// The object was stored and COMMIT failed: the row may or may not exist.
    CommitUncertain {
        id: i32,
        error: postgres::Error,
    },
}

impl<E: Into<UploadError>> From<E> for WriteFailure {
    fn from(e: E) -> Self {
        WriteFailure::Upload(e.into())
    }
}

/// Steps 1-3 of the protocol (see the module docs). Runs on a blocking thread.
fn write(
    c: &mut crate::db::PgConn,
    store: &dyn ObjectStore,
    name: &str,
    url: &str,
    category: &str,
    dims: Dimensions,
    bytes: &[u8],
) -> Result<Photo, WriteFailure> {
    let (width, height) = (dims.width as i32, dims.height as i32);
    let mut tx = c.transaction().map_err(DbError::from)?;
    // Waiting on a same-name upload is normal; waiting forever is not.
    tx.batch_execute("SET LOCAL lock_timeout = '30s'")
        .map_err(DbError::from)?;
    let inserted = tx.query_one(
        "INSERT INTO photographs (filename, url, category, width, height) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
        &[&name, &url, &category, &width, &height],
    );
    let id: i32 = match inserted {
        Ok(row) => row.get(0),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            return Err(UploadError::Duplicate(name.to_string()).into());
        }
        Err(e) => return Err(DbError::from(e).into()),
    };
    // Someone else's object (an upload whose row was deleted, another tool): leave it alone.
    // Asking first also tells us, should the put fail in transit, that whatever then appears
    // under this key is ours.
    if store.exists(name)? {
        return Err(UploadError::Duplicate(name.to_string()).into());
    }
    match store.put_new(name, bytes) {
        Ok(Put::Created) => {}
        Ok(Put::AlreadyExists) => return Err(UploadError::Duplicate(name.to_string()).into()),
        Err(e @ StorageError::Unavailable(_)) => {
            remove_in_flight_object(store, name);
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    }
    if let Err(error) = tx.commit() {
        return Err(WriteFailure::CommitUncertain { id, error });
    }
    Ok(Photo {
        id,
        filename: name.to_string(),
        url: url.to_string(),
        category: category.to_string(),
        width,
        height,
    })
}

/// A put that failed in transit (a timeout, a dropped connection) may still land. The name's
/// claim is still held, so no other request can write this key: whatever appears under it is
/// ours. Delete it now and again once the store's settle time has passed, before the claim is
/// released by the rollback.
fn remove_in_flight_object(store: &dyn ObjectStore, name: &str) {
    for attempt in 0..2 {
        if attempt == 1 {
            std::thread::sleep(store.settle_time());
        }
        if let Err(e) = store.delete(name) {
            tracing::warn!(%name, error = %e, "could not remove an object whose upload failed in transit");
        }
    }
}

fn fetch_photo(c: &mut crate::db::PgConn, id: i32) -> Result<Option<Photo>, DbError> {
    let row = c.query_opt(
        "SELECT id, filename, url, category, width, height FROM photographs WHERE id = $1",
        &[&id],
    )?;
    Ok(row.as_ref().map(Photo::from_row))
}
