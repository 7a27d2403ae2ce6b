//! [`UploadError`]: why a write did not happen. Uploads, deletes and category changes all end
//! in it; each variant maps to one HTTP status in `http::api::error` and knows its own
//! `/metrics` label.

use crate::{
    blocking::Panicked,
    db::DbError,
    imaging::Rejection,
    model::{FileName, Invalid},
    storage::StorageError,
};

/// Why an upload did not happen. Each maps to one HTTP status, in [`crate::http::api::error`] only.
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

impl UploadError {
    /// The outcome label of `uploads_total` (`/metrics`).
    pub fn label(&self) -> &'static str {
        match self {
            UploadError::Duplicate(_) => "duplicate",
            UploadError::Occupied(_) => "occupied",
            UploadError::Invalid(_)
            | UploadError::Rejected(_)
            | UploadError::BadForm(_)
            | UploadError::MissingField(_)
            | UploadError::TooLarge(_) => "invalid",
            UploadError::DatabaseUnavailable(_) => "database_unavailable",
            UploadError::Storage(_) => "storage_failed",
            UploadError::Database(_) | UploadError::Internal(_) => "failed",
        }
    }
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
