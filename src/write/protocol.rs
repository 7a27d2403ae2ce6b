//! The write protocol: how a validated photo and its variants are stored so that it is never
//! lost, never overwrites or deletes another request's photo, and never leaves an object without
//! a row. All on one blocking thread with one pooled connection (the variants are stored at
//! once, from threads of their own):
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

use std::time::Duration;

use super::{
    error::UploadError,
    journal::{Entry, Journal},
};
use crate::{
    db::{DbError, PgConn, queries},
    imaging::{Processed, Variant},
    model::{Category, FileName, Photo},
    storage::{ObjectStore, Put, StorageError},
};

pub(crate) enum WriteFailure {
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

/// Steps 1-3 of the protocol (see the module docs), for the photo and each of its variants.
/// `inserted` is called once the INSERT has answered, whatever it answered (a batch starts the
/// next file's INSERT then). Runs on a blocking thread.
pub(crate) fn write(
    c: &mut PgConn,
    store: &dyn ObjectStore,
    journal: &Journal,
    file: &FileName,
    category: &Category,
    processed: &Processed,
    inserted: impl FnOnce(),
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
    let placeholder = processed.preview.as_ref().map(|p| p.placeholder.clone());
    let color = processed.preview.as_ref().map(|p| p.color.clone());
    let mut tx = c.transaction().map_err(DbError::from)?;
    // Waiting on a same-name upload is normal; waiting forever is not.
    tx.batch_execute(queries::WAIT_FOR_LOCKS)
        .map_err(DbError::from)?;
    let row = tx.query_one(
        queries::INSERT_PHOTO,
        &[
            &name,
            &url,
            &category,
            &width,
            &height,
            &thumbnail_url,
            &medium_url,
            &placeholder,
            &color,
            &processed.variants_later(),
        ],
    );
    inserted();
    let id: i32 = match row {
        Ok(row) => row.get(0),
        Err(e) if queries::is_name_taken(&e) => {
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
    let mut failed: Option<VariantError> = None;
    let mut may_still_land = false;
    let mut occupied: Vec<String> = Vec::new();
    for ((_, key, _), result) in variants.iter().zip(put_variants(store, &variants)) {
        match result {
            Ok(true) => created.push(key),
            Ok(false) => {}
            Err(e) => {
                match &e {
                    VariantError::Storage(e) => may_still_land |= outcome_unknown(e),
                    VariantError::Occupied(key) => occupied.push(key.clone()),
                }
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        // An object found at a variant's key was not written by this upload: the resolver must
        // never delete it, even while it settles the other variant's unknown outcome.
        let mut entry = entry;
        entry.also.retain(|key| !occupied.contains(key));
        abandon(store, journal, entry, &created, may_still_land);
        return Err(match e {
            VariantError::Storage(e) => e.into(),
            VariantError::Occupied(key) => UploadError::Occupied(key).into(),
        });
    }
    if let Err(error) = tx.commit() {
        return Err(WriteFailure::CommitUncertain {
            id,
            error,
            entry: Box::new(entry),
        });
    }
    journal.forget(&entry);
    Ok(Photo {
        id,
        filename: name.to_string(),
        url,
        category: category.to_string(),
        width,
        height,
        thumbnail_url,
        medium_url,
        placeholder,
        color,
    })
}

/// Stores every variant at once, each but the first on a thread of its own, so that a store
/// far away costs one round trip for all of them rather than one each. The results are in the
/// order of `variants`; every put has finished (or failed) when this returns.
fn put_variants(
    store: &dyn ObjectStore,
    variants: &[(Variant, String, &[u8])],
) -> Vec<Result<bool, VariantError>> {
    let Some(((_, first_key, first_bytes), rest)) = variants.split_first() else {
        return Vec::new();
    };
    let span = tracing::Span::current(); // the request's, for the threads' log lines
    std::thread::scope(|s| {
        let others: Vec<_> = rest
            .iter()
            .map(|(_, key, bytes)| {
                let span = span.clone();
                // A thread that cannot be started (the process is out of them) is no reason to
                // fail the upload: that variant is then written here, after the first.
                std::thread::Builder::new()
                    .name("variant-put".into())
                    .spawn_scoped(s, move || span.in_scope(|| put_variant(store, key, bytes)))
                    .map_err(|e| {
                        tracing::warn!(error = %e, "cannot start a thread; writing in turn");
                        (key, bytes)
                    })
            })
            .collect();
        let mut results = vec![put_variant(store, first_key, first_bytes)];
        for other in others {
            results.push(match other {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err((key, bytes)) => put_variant(store, key, bytes),
            });
        }
        results
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
        journal.forget(&entry); // refused, and nothing of it remains
    } else {
        if let Err(io) = journal.reschedule(&mut entry, &checks) {
            tracing::error!(error = %io, "cannot reschedule a journal entry");
        }
        journal.release(&entry);
    }
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
