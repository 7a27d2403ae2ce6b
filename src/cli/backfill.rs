//! `portfolio-server variants backfill`: [`crate::write::backfill`] with a progress bar.

use std::sync::Arc;

use super::open_db;
use crate::{config::Settings, storage, write::backfill};

pub(super) async fn command(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::IsTerminal;
    let db = open_db(&settings)?;
    if !db.probe().await {
        return Err(format!("cannot reach the database at {}", db.target()).into());
    }
    let store: Arc<dyn storage::ObjectStore> =
        Arc::from(storage::open::from_settings(&settings.storage));
    let mut progress = backfill::Console::new(std::io::stderr().is_terminal());
    let report = backfill::run(
        &db,
        store,
        &settings.image,
        settings.upload.max_side_px,
        &mut progress,
        &mut std::io::stdout(),
    )
    .await?;
    eprintln!(
        "{} of {} photos now have their variants; {} failed{}.",
        report.made,
        report.total,
        report.failed.len(),
        if report.gone > 0 {
            format!(", {} were deleted meanwhile", report.gone)
        } else {
            String::new()
        }
    );
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} photos have no variants (listed on stdout as `failed`); fix them and run the              command again",
            report.failed.len()
        )
        .into())
    }
}
