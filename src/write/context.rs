//! [`WriteContext`]: what every write works with, shared by the uploader and the manager.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::cleanup::Cleanup;
use crate::{db::Db, read::listing::Listing, storage::ObjectStore};

/// The database, the store, the listing to tell about changes, the clean-up that settles what a
/// failed write may leave, and the slots that bound writes.
#[derive(Clone)]
pub struct WriteContext {
    /// None when no database is configured: every write is refused.
    pub db: Option<Db>,
    pub store: Arc<dyn ObjectStore>,
    /// Told about every successful write, so cached pages never outlive it.
    pub listing: Arc<Listing>,
    pub cleanup: Arc<Cleanup>,
    /// Writes hold a pooled connection while they store or delete objects: bound them, uploads
    /// and deletes together, so reads always find connections.
    pub slots: Arc<Semaphore>,
}
