//! `image.variants_after_answer`: an upload is answered once its photo and row are stored, and
//! its variants and placeholder are made here, afterwards, by one task per process.
//!
//! - **Nothing to lose**: the photo and its row are stored before the answer. What is made here
//!   comes from the stored photo and can always be made again. Each row is the work of
//!   [`super::backfill`]: the row is locked while its variants are written and recorded, so a
//!   delete waits for it, and a row deleted first gets none (and leaves no object).
//! - **No queue of its own to lose**: the upload's row is inserted with `variants_pending` set,
//!   in the upload's own transaction, and the rows so marked *are* the queue (a partial index
//!   keeps finding them cheap). A pass runs at start-up (what a crash or a stop left) and after
//!   each such upload; uploads that arrive during a pass are taken by the next one. The task
//!   runs whatever the setting, so rows left pending when it was turned off are still finished.
//! - **Only its own rows**: rows from before, or from the original server, are never pending;
//!   their variants are `variants backfill`'s to make, when the owner asks.
//! - **Failures wait**: a row that fails is logged once and tried again after one minute, then
//!   two, four, ... at most an hour apart (storage down, a foreign object at a variant's key), so
//!   neither an outage nor one bad row becomes a busy loop. A database that does not answer is
//!   tried again every [`DB_RETRY`].
//! - The image work takes the uploads' image slots (`image.max_concurrent`), so the two together
//!   never decode more photos at once than that, and runs at low priority.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};

use super::backfill::{self, Outcome, Row};
use crate::{
    config::ImageSettings,
    db::{Db, DbError},
    metrics::Metrics,
    read::listing::Listing,
    storage::ObjectStore,
};

/// How long a pass waits after the database failed to answer.
pub const DB_RETRY: Duration = Duration::from_secs(10);
/// The first wait after a row failed; it doubles with each failure, up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_secs(60);
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// The handle uploads poke; dropping it ends the task.
pub struct Background {
    wake: mpsc::Sender<()>,
}

/// What the task works with.
pub struct Work {
    pub db: Db,
    pub store: Arc<dyn ObjectStore>,
    pub listing: Arc<Listing>,
    pub settings: ImageSettings,
    /// `upload.max_side_px`: the stored photo is inspected as an upload would be.
    pub max_side: u32,
    /// The uploads' image slots, and how many there are.
    pub slots: Arc<Semaphore>,
    pub workers: usize,
    pub metrics: Arc<Metrics>,
}

impl Background {
    /// Starts the task; its first pass begins at once.
    pub fn start(work: Work) -> Background {
        let (wake, woken) = mpsc::channel(1);
        let _ = wake.try_send(());
        tokio::spawn(run(work, woken));
        Background { wake }
    }

    /// A row may need its variants: a pass runs soon (at most one more is queued, however
    /// often this is called during a pass).
    pub fn poke(&self) {
        let _ = self.wake.try_send(());
    }
}

/// A row that failed: how often, and when it may be tried again.
struct Failed {
    times: u32,
    again_at: Instant,
}

impl Failed {
    /// One more failure, at `now`: how long the row now waits.
    fn again(&mut self, now: Instant) -> Duration {
        self.times += 1;
        let wait = wait_after(self.times);
        self.again_at = now + wait;
        wait
    }
}

/// The wait after a row's `times`-th failure in a row.
fn wait_after(times: u32) -> Duration {
    FIRST_WAIT
        .saturating_mul(1 << times.saturating_sub(1).min(16))
        .min(MAX_WAIT)
}

async fn run(work: Work, mut woken: mpsc::Receiver<()>) {
    let mut failed: HashMap<i32, Failed> = HashMap::new();
    let mut first = true;
    // The first pass is already queued.
    while woken.recv().await.is_some() {
        loop {
            let wait = match pass(&work, &mut failed, std::mem::take(&mut first)).await {
                Ok(()) => failed
                    .values()
                    .map(|f| f.again_at.saturating_duration_since(Instant::now()))
                    .min(),
                // An outage is logged where it is noticed; this waits it out quietly.
                Err(e) if !work.db.is_available() => {
                    tracing::debug!(error = %e, "the variants wait for the database");
                    Some(DB_RETRY)
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        retry_secs = DB_RETRY.as_secs(),
                        "could not look for uploads waiting for their variants"
                    );
                    Some(DB_RETRY)
                }
            };
            // Poked, closed, or nothing to wait for: back to the outer loop.
            let Some(wait) = wait else { break };
            match tokio::time::timeout(wait, woken.recv()).await {
                Ok(Some(())) | Err(_) => continue,
                Ok(None) => return,
            }
        }
    }
}

/// Makes the variants of every upload waiting for them, except rows still waiting out a failure.
async fn pass(work: &Work, failed: &mut HashMap<i32, Failed>, first: bool) -> Result<(), DbError> {
    let rows = backfill::pending_rows(&work.db).await?;
    let mut left = rows.len();
    work.metrics.variants_pending.set(left as i64);
    if first && left > 0 {
        tracing::info!(
            photos = left,
            "uploads whose variants were still to be made when the last process ended: making \
             them now"
        );
    }
    // Rows that were deleted, or made by someone else, are forgotten.
    let needing: HashSet<i32> = rows.iter().map(|r| r.id).collect();
    failed.retain(|id, _| needing.contains(id));
    let now = Instant::now();
    let due: Vec<Row> = rows
        .into_iter()
        .filter(|r| failed.get(&r.id).is_none_or(|f| f.again_at <= now))
        .collect();
    if due.is_empty() {
        return Ok(());
    }
    let mut outcomes = futures_util::stream::iter(due)
        .map(|row| async move {
            let outcome = backfill::one(
                &work.db,
                work.store.clone(),
                &work.settings,
                work.max_side,
                &row,
                Some(&work.slots),
            )
            .await;
            (row, outcome)
        })
        // One more row than there are slots: its photo is read, or its variants stored, while
        // the others are decoded.
        .buffer_unordered(work.workers + 1);
    let mut made = 0;
    let mut lost_db = None;
    while let Some((row, outcome)) = outcomes.next().await {
        let why = match outcome {
            Ok(Outcome::Made | Outcome::Gone) => {
                if matches!(outcome, Ok(Outcome::Made)) {
                    made += 1;
                }
                left -= 1;
                work.metrics.variants_pending.set(left as i64);
                failed.remove(&row.id);
                continue;
            }
            Ok(Outcome::Failed(why)) => why,
            Err(e) if e.is_connectivity() => {
                lost_db = Some(e);
                continue;
            }
            Err(e) => e.to_string(),
        };
        let f = failed.entry(row.id).or_insert(Failed {
            times: 0,
            again_at: now,
        });
        let wait = f.again(Instant::now());
        // Said once; a row that keeps failing (a photo of another store, a foreign object at a
        // variant's key) is not logged again every hour.
        if f.times == 1 {
            tracing::warn!(
                id = row.id,
                filename = %row.filename,
                reason = %why,
                retry_secs = wait.as_secs(),
                "could not make this photo's variants; the photo itself is stored and listed"
            );
        } else {
            tracing::debug!(id = row.id, reason = %why, times = f.times, "variants failed again");
        }
    }
    if made > 0 {
        work.listing.invalidate();
        tracing::debug!(made, "variants made after the answer");
    }
    match lost_db {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_row_waits_longer_each_time_up_to_an_hour() {
        let waits: Vec<u64> = (1..=9).map(|t| wait_after(t).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(wait_after(u32::MAX), MAX_WAIT, "no overflow");
    }

    #[test]
    fn each_failure_of_a_row_is_counted_and_moves_its_next_try() {
        let start = Instant::now();
        let mut f = Failed {
            times: 0,
            again_at: start,
        };
        for (times, secs) in [(1, 60), (2, 120), (3, 240)] {
            let now = start + Duration::from_secs(times);
            assert_eq!(f.again(now), Duration::from_secs(secs));
            assert_eq!(f.times, times as u32);
            assert_eq!(f.again_at, now + Duration::from_secs(secs));
        }
    }
}
