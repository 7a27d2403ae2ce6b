//! Clean-up: settling objects that may be in storage without a row.
//!
//! Every write that could leave such an object (an upload whose commit or storage write failed
//! with an unknown outcome, a delete interrupted after its commit) first records its keys in the
//! [`Journal`] on disk. The resolver settles each entry by [`delete_unclaimed`]: it claims the
//! name the way an upload does, keeps the objects if a committed row has the name, and deletes
//! them otherwise, again at the entry's later checks for a write that lands late. The journal
//! survives a crash, so a restart resumes where it stopped; the resolver runs at start-up,
//! whenever the database comes back, and every half second.

use std::{
    path::Path,
    sync::{Arc, Weak},
    time::Duration,
};

use super::journal::{Entry, Journal};
use crate::{
    blocking,
    db::{Db, DbError, PgConn, queries},
    storage::{ObjectStore, StorageError},
};

/// The resolver, and the journal it works through.
pub struct Cleanup {
    db: Option<Db>,
    store: Arc<dyn ObjectStore>,
    /// Keys that may exist in storage without a row. None when the folder cannot be written:
    /// writes are refused then, since nothing could be cleaned up.
    journal: Option<Arc<Journal>>,
    /// One resolver pass at a time.
    resolving: tokio::sync::Mutex<()>,
}

impl Cleanup {
    /// Opens the journal in `journal_dir` and starts the resolver (it stops when the returned
    /// value is dropped).
    pub fn start(db: Option<Db>, store: Arc<dyn ObjectStore>, journal_dir: &Path) -> Arc<Cleanup> {
        let journal = match Journal::open(journal_dir) {
            Ok(j) => Some(Arc::new(j)),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    dir = %journal_dir.display(),
                    "cannot open the clean-up journal: uploads and deletes are refused until it \
                     can be written (upload.journal_dir)"
                );
                None
            }
        };
        let cleanup = Arc::new(Cleanup {
            db,
            store,
            journal,
            resolving: tokio::sync::Mutex::new(()),
        });
        spawn_resolver(Arc::downgrade(&cleanup));
        cleanup
    }

    /// The journal, unless its folder cannot be written.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    /// Settles one journal entry (see [`crate::write::journal`]).
    pub(crate) async fn resolve(
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
        let now = super::journal::now_ms();
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
    pub fn pending(&self) -> usize {
        self.journal
            .as_ref()
            .and_then(|j| j.entries().ok())
            .map_or(0, |e| e.len())
    }
}

/// Settles due entries every half second, while the [`Cleanup`] lives.
fn spawn_resolver(weak: Weak<Cleanup>) {
    tokio::spawn(async move {
        loop {
            let Some(cleanup) = weak.upgrade() else {
                return;
            };
            cleanup.resolve_pending().await;
            drop(cleanup);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
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
pub(crate) fn resolve_entry(
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
        journal.forget(&entry);
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
    tx.batch_execute(queries::WAIT_FOR_LOCKS_BRIEFLY)?;
    let claim = tx.query_one(queries::CLAIM_NAME, &[&name]);
    match claim {
        Err(e) if queries::is_name_taken(&e) => Ok(Resolution::Kept),
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
