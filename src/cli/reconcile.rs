//! `portfolio-server reconcile`: the report of [`crate::write::reconcile`] on stdout.

use std::{sync::Arc, time::Duration};

use super::open_db;
use crate::{config::Settings, storage, write::reconcile};

pub(super) async fn command(
    settings: Settings,
    delete_orphans: bool,
    grace_hours: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let db = open_db(&settings)?;
    if !db.probe().await {
        return Err(format!("cannot reach the database at {}", db.target()).into());
    }
    let store: Arc<dyn storage::ObjectStore> =
        Arc::from(storage::open::from_settings(&settings.storage));
    let opts = reconcile::Options {
        delete_orphans,
        grace: Duration::from_secs(grace_hours * 3600),
    };
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    reconcile::run(&db, store, opts, &mut out, &mut err).await?;
    Ok(())
}
