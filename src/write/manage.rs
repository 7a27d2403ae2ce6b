//! Managing photos after upload: read one, change its category, delete it with every object.
//!
//! Deleting follows the write protocol backwards, through the same journal:
//! 1. `BEGIN`; lock the row (`FOR UPDATE`); write down its objects (the photo and its variants)
//!    in the [`Journal`], durably, under the name the row claims.
//! 2. `DELETE` the row; `COMMIT`. The name's claim goes with the row (migration 0002).
//! 3. Delete the objects the way the resolver does ([`delete_unclaimed`]): under the name's
//!    claim, so an upload of the same name that starts meanwhile waits and then finds the name
//!    free and the old objects gone. Then the entry is removed.
//!
//! A crash or an outage anywhere leaves a consistent state. Before the commit the row stands and
//! the resolver finds the name taken, so the objects are kept and the entry dropped. After the
//! commit, the resolver claims the free name and deletes the objects, on this run or the next.
//! When storage fails in step 3 the row is already gone (the photo has left the portfolio), and
//! the resolver retries the removal until storage answers.

use std::sync::Arc;

use postgres::types::Type;

use super::{
    cleanup::{Resolution, Unsettled, delete_unclaimed},
    context::WriteContext,
    error::UploadError,
    journal::{Entry, Journal},
};
use crate::{
    db::{Db, DbError, PgConn, queries},
    imaging::Variant,
    model::{Category, Invalid, Photo},
    storage::ObjectStore,
};

/// Why a management request did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("Photo not found")]
    NotFound,
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Upload(#[from] UploadError),
}

impl From<DbError> for ManageError {
    fn from(e: DbError) -> Self {
        ManageError::Upload(e.into())
    }
}

impl From<postgres::Error> for ManageError {
    fn from(e: postgres::Error) -> Self {
        ManageError::Upload(DbError::from(e).into())
    }
}

/// Reads, moves and deletes photos that are stored.
pub struct Manager {
    /// The database, store, listing, clean-up and write slots, shared with the uploader.
    w: WriteContext,
    allowed_categories: Vec<String>,
}

impl Manager {
    pub fn new(w: WriteContext, allowed_categories: Vec<String>) -> Manager {
        Manager {
            w,
            allowed_categories,
        }
    }

    /// The photo with this id.
    pub async fn photo(&self, id: i32) -> Result<Photo, ManageError> {
        let db = self.writable_db()?;
        db.run(move |c| queries::photo(c, id))
            .await?
            .ok_or(ManageError::NotFound)
    }

    /// Moves a photo to another category (checked as uploads check it).
    pub async fn set_category(&self, id: i32, raw: &str) -> Result<Photo, ManageError> {
        let category = Category::parse(raw, &self.allowed_categories)?;
        let db = self.writable_db()?;
        let updated = db
            .run(move |c| {
                Ok(c.query_typed(
                    queries::SET_CATEGORY,
                    &[(&id, Type::INT4), (&category.as_str(), Type::TEXT)],
                )?
                .first()
                .map(queries::photo_from_row))
            })
            .await?
            .ok_or(ManageError::NotFound)?;
        self.w.listing.invalidate();
        tracing::info!(id, category = %updated.category, "photo moved to another category");
        Ok(updated)
    }

    /// Deletes a photo: its row, then every object it has (see the module docs).
    pub async fn delete(&self, id: i32) -> Result<(), ManageError> {
        let db = self.writable_db()?;
        let journal = self.w.cleanup.journal().cloned().ok_or_else(|| {
            ManageError::Upload(UploadError::Internal(
                "the clean-up journal cannot be written".into(),
            ))
        })?;
        let _slot = self.w.slots.acquire().await.expect("never closed");
        let (store, j) = (self.w.store.clone(), journal.clone());
        let outcome = db.run(move |c| Ok(delete_row(c, &*store, &j, id))).await?;
        let entry = match outcome {
            Ok(entry) => entry,
            Err(DeleteFailure::Manage(e)) => return Err(e),
            Err(DeleteFailure::CommitUncertain { error, entry }) => {
                // Ask again on another connection whether the row is gone.
                tracing::warn!(id, error = %error, "the answer to a delete's COMMIT was lost");
                let gone = row_is_gone(db, id).await;
                if !gone {
                    if let Some(entry) = &entry {
                        journal.release(entry); // the resolver keeps or removes by the claim
                    }
                    return Err(ManageError::Upload(UploadError::DatabaseUnavailable(
                        "The database failed while deleting the photo; it may not be deleted. \
                         Check /api/images/{id}, then try again"
                            .replace("{id}", &id.to_string()),
                    )));
                }
                entry.map(|e| *e)
            }
        };
        let Some(entry) = entry else {
            // The row pointed at no object of this store (or shares it): nothing to remove.
            self.w.listing.invalidate();
            tracing::info!(
                id,
                "photo deleted (its image stays: not in this store, or shared)"
            );
            return Ok(());
        };
        self.w.listing.invalidate();
        let key = entry.key.clone();
        match self.settle(db, &journal, entry).await {
            Ok(Resolution::Removed) => tracing::info!(id, key = %key, "photo deleted"),
            Ok(Resolution::Kept) => tracing::warn!(
                id,
                key = %key,
                "photo row deleted; another row holds its name, so its objects stay"
            ),
            Err(e) => tracing::warn!(
                id,
                key = %key,
                error = %e,
                "photo row deleted; its objects are removed when storage answers"
            ),
        }
        Ok(())
    }

    fn writable_db(&self) -> Result<&Db, ManageError> {
        self.w.db.as_ref().ok_or_else(|| {
            ManageError::Upload(UploadError::DatabaseUnavailable(
                "No database configured: set DATABASE_URL".into(),
            ))
        })
    }
}

/// Whether the row is gone, asked once more on another connection after a lost COMMIT answer.
/// No answer counts as "not gone": the client is told the delete may not have happened, and the
/// journal's resolver settles the objects either way.
async fn row_is_gone(db: &Db, id: i32) -> bool {
    match db.run(move |c| queries::photo(c, id)).await {
        Ok(found) => found.is_none(),
        Err(e) => {
            tracing::warn!(id, error = %e, "cannot ask whether a delete committed");
            false
        }
    }
}

enum DeleteFailure {
    Manage(ManageError),
    /// COMMIT was sent and failed: the row may or may not be gone.
    CommitUncertain {
        error: Box<postgres::Error>,
        entry: Option<Box<Entry>>,
    },
}

impl<E: Into<ManageError>> From<E> for DeleteFailure {
    fn from(e: E) -> Self {
        DeleteFailure::Manage(e.into())
    }
}

/// Steps 1 and 2: the row locked, its objects journaled, the row deleted and committed. The
/// entry, or None when the row has no object in this store (or shares it with another row).
fn delete_row(
    c: &mut PgConn,
    store: &dyn ObjectStore,
    journal: &Journal,
    id: i32,
) -> Result<Option<Entry>, DeleteFailure> {
    let mut tx = c.transaction()?;
    tx.batch_execute(queries::WAIT_FOR_LOCKS)?;
    let row = tx
        .query_opt(queries::LOCK_FOR_DELETE, &[&id])?
        .ok_or(DeleteFailure::Manage(ManageError::NotFound))?;
    let (filename, url): (String, String) = (row.get(0), row.get(1));
    let recorded: Vec<Option<String>> = vec![row.get(2), row.get(3)];
    let key_of = |u: &str| crate::storage::key_of_url(store, u);
    // Rows of the original may share one object; it goes with the last of them.
    let shared = tx.query_opt(queries::URL_SHARED, &[&url, &id])?.is_some();
    let entry = match key_of(&url).filter(|_| !shared) {
        None => None,
        Some(key) => {
            // Both key schemes, where the store takes the key (Supabase refuses `~` outright).
            let mut also: Vec<String> = Variant::ALL
                .iter()
                .flat_map(|v| v.keys(&key))
                .filter(|k| store.accepts_key(k))
                .collect();
            for k in recorded.iter().flatten().filter_map(|u| key_of(u)) {
                if !also.contains(&k) && k != key {
                    also.push(k);
                }
            }
            let name = filename.to_lowercase();
            // Deletes cannot land late in a harmful way: one check after a crash is enough.
            let settle = std::time::Duration::ZERO;
            Some(
                journal
                    .record_claimed(&key, &name, &also, settle)
                    .map_err(|e| {
                        ManageError::Upload(UploadError::Internal(format!(
                            "cannot write the clean-up journal: {e}"
                        )))
                    })?,
            )
        }
    };
    if let Err(e) = tx.execute(queries::DELETE_PHOTO, &[&id]) {
        // Rolled back: the row stands, and the resolver keeps its objects.
        if let Some(entry) = &entry {
            journal.release(entry);
        }
        return Err(e.into());
    }
    if let Err(error) = tx.commit() {
        return Err(DeleteFailure::CommitUncertain {
            error: Box::new(error),
            entry: entry.map(Box::new),
        });
    }
    Ok(entry)
}

impl Manager {
    /// Step 3, at once; whatever is left is the resolver's.
    async fn settle(
        &self,
        db: &Db,
        journal: &Arc<Journal>,
        entry: Entry,
    ) -> Result<Resolution, Unsettled> {
        let held = entry.clone();
        let (store, j) = (self.w.store.clone(), journal.clone());
        let result = db
            .run(move |c| {
                let keys: Vec<&str> = std::iter::once(entry.key.as_str())
                    .chain(entry.also.iter().map(String::as_str))
                    .collect();
                let outcome = delete_unclaimed(c, &*store, entry.name(), &keys);
                if outcome.is_ok()
                    && let Err(e) = j.remove(&entry)
                {
                    tracing::warn!(key = %entry.key, error = %e, "cannot remove a journal entry");
                }
                Ok(outcome)
            })
            .await;
        journal.release(&held);
        result.map_err(Unsettled::Db)?
    }
}
