//! `portfolio-server variants backfill`: makes the variants and placeholder of rows that have
//! none (rows from before the image pipeline, or from the original server).
//!
//! - **Resumable and idempotent**: it works on the rows whose fields are still null, so a run
//!   that was stopped picks up where it was, and a finished one finds nothing to do.
//! - **Safe while the server serves**: each row is locked (`SELECT ... FOR UPDATE`) while its
//!   variants are written and recorded, so a delete or a second backfill waits for it. Variant
//!   keys are written create-only: an object already at one is kept if it holds exactly the
//!   bytes this run would write (a run that died between writing and recording it), and the
//!   row fails otherwise (someone else's object is never replaced). Listings show the new fields once their
//!   cached pages expire (`cache.ttl_secs`).
//! - **Nothing lost**: the photo itself is only read, never rewritten. A row whose photo cannot
//!   be read or decoded is reported and left as it was.

use std::{
    io::Write,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use postgres::types::Type;

use crate::{
    blocking,
    config::ImageSettings,
    db::{Db, DbError, queries},
    imaging::{self, Variant},
    storage::ObjectStore,
};

/// A row that needs work.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub id: i32,
    pub filename: String,
    pub url: String,
}

impl Row {
    /// From `SELECT id, filename, url`.
    fn of(r: &postgres::Row) -> Row {
        Row {
            id: r.get(0),
            filename: r.get(1),
            url: r.get(2),
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    /// Rows that needed work when the run started.
    pub total: usize,
    pub made: usize,
    /// Rows deleted while the run went on.
    pub gone: usize,
    /// (id, filename, why)
    pub failed: Vec<(i32, String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Other(String),
}

/// How a run reports its progress: a bar on a terminal, plain lines otherwise.
pub trait Progress: Send {
    fn start(&mut self, total: usize);
    fn advance(&mut self, done: usize, note: Option<&str>);
    fn finish(&mut self);
}

/// The outcome of one row.
pub(super) enum Outcome {
    Made,
    Gone,
    Failed(String),
}

/// Backfills every row that needs it, `workers` rows at a time.
pub async fn run(
    db: &Db,
    store: Arc<dyn ObjectStore>,
    settings: &ImageSettings,
    max_side: u32,
    progress: &mut dyn Progress,
    out: &mut (dyn Write + Send),
) -> Result<Report, BackfillError> {
    {
        // Before any work: the store answers (and a local folder drops what killed runs left).
        let store = store.clone();
        match blocking::run(move || store.check()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(BackfillError::Other(format!("storage: {e}"))),
            Err(e) => return Err(BackfillError::Other(e.to_string())),
        }
    }
    let rows = rows_needing_work(db, settings).await?;
    let mut report = Report {
        total: rows.len(),
        ..Report::default()
    };
    progress.start(rows.len());
    let workers = match settings.max_concurrent {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let mut outcomes = futures_util::stream::iter(rows)
        .map(|row| {
            let (db, store, settings) = (db.clone(), store.clone(), settings.clone());
            async move {
                let outcome = one(&db, store, &settings, max_side, &row, None).await;
                (row, outcome)
            }
        })
        .buffer_unordered(workers);
    let mut done = 0;
    while let Some((row, outcome)) = outcomes.next().await {
        done += 1;
        let note = match outcome {
            Ok(Outcome::Made) => {
                report.made += 1;
                None
            }
            Ok(Outcome::Gone) => {
                report.gone += 1;
                None
            }
            Ok(Outcome::Failed(why)) => {
                let _ = writeln!(out, "failed\t{}\t{}\t{why}", row.id, row.filename);
                report.failed.push((row.id, row.filename.clone(), why));
                Some(format!("{}: failed", row.filename))
            }
            Err(e) if e.is_connectivity() => {
                progress.finish();
                return Err(BackfillError::Other(format!(
                    "the database stopped answering after {done} of {} rows ({e}); run the \
                     command again to go on",
                    report.total
                )));
            }
            Err(e) => {
                let why = e.to_string();
                let _ = writeln!(out, "failed\t{}\t{}\t{why}", row.id, row.filename);
                report.failed.push((row.id, row.filename.clone(), why));
                Some(format!("{}: failed", row.filename))
            }
        };
        progress.advance(done, note.as_deref());
    }
    progress.finish();
    Ok(report)
}

/// The rows that lack their placeholder or a variant `settings` turns on, oldest first.
async fn rows_needing_work(db: &Db, settings: &ImageSettings) -> Result<Vec<Row>, DbError> {
    let want_thumb = settings.thumb_px > 0;
    let want_medium = settings.medium_px > 0;
    db.run(move |c| {
        Ok(c.query_typed(
            queries::MISSING_VARIANTS,
            &[(&want_thumb, Type::BOOL), (&want_medium, Type::BOOL)],
        )?
        .iter()
        .map(Row::of)
        .collect())
    })
    .await
}

/// The uploads whose variants are to be made after their answer, oldest first.
pub(super) async fn pending_rows(db: &Db) -> Result<Vec<Row>, DbError> {
    db.run(|c| {
        Ok(c.query(queries::PENDING_VARIANTS, &[])?
            .iter()
            .map(Row::of)
            .collect())
    })
    .await
}

/// Reads, processes, stores and records one row. The image work holds a permit of `slots`, if
/// given, and nothing else does.
pub(super) async fn one(
    db: &Db,
    store: Arc<dyn ObjectStore>,
    settings: &ImageSettings,
    max_side: u32,
    row: &Row,
    slots: Option<&tokio::sync::Semaphore>,
) -> Result<Outcome, DbError> {
    let Some(photo_key) = crate::storage::key_of_url(&*store, &row.url) else {
        return Ok(Outcome::Failed(format!(
            "the photo's URL {} is not in this store ({})",
            row.url,
            store.describe()
        )));
    };
    let bytes = {
        let (store, key) = (store.clone(), photo_key.clone());
        match blocking::run(move || store.get(&key)).await {
            Ok(Ok(Some(bytes))) => bytes,
            Ok(Ok(None)) => return Ok(Outcome::Failed("the photo is not in storage".into())),
            Ok(Err(e)) => return Ok(Outcome::Failed(e.to_string())),
            Err(e) => return Ok(Outcome::Failed(e.to_string())),
        }
    };
    let made = {
        let _slot = match slots {
            Some(slots) => Some(slots.acquire().await.expect("never closed")),
            None => None,
        };
        let settings = settings.clone();
        blocking::run_low_priority(move || {
            let info = imaging::inspect(&bytes, max_side)?;
            imaging::variants_for_stored(&bytes, &info, &settings)
        })
        .await
    };
    let (variants, preview) = match made {
        Ok(Ok(made)) => made,
        Ok(Err(rejected)) => return Ok(Outcome::Failed(rejected.to_string())),
        Err(e) => return Ok(Outcome::Failed(e.to_string())),
    };
    let id = row.id;
    db.run(move |c| {
        let mut tx = c.transaction()?;
        tx.batch_execute(queries::WAIT_FOR_LOCKS)?;
        let Some(locked) = tx.query_opt(queries::LOCK_PHOTO, &[&id])? else {
            return Ok(Outcome::Gone);
        };
        // A variant the row already has stays as it is: made under other settings (the other
        // variant turned off then), its bytes may differ from what this run would write.
        let has = |variant: Variant| {
            let column: Option<String> = locked.get(match variant {
                Variant::Thumb => 0,
                Variant::Medium => 1,
            });
            column.is_some()
        };
        let (mut thumb, mut medium) = (None, None);
        for (variant, encoded) in variants.iter().filter(|(v, _)| !has(*v)) {
            let key = variant.key(&photo_key);
            match crate::write::protocol::put_variant(&*store, &key, &encoded.bytes) {
                Ok(_) => {}
                Err(crate::write::protocol::VariantError::Occupied(_)) => {
                    return Ok(Outcome::Failed(format!(
                        "storage already holds `{key}`, which this server did not write; \
                         remove it and run the backfill again"
                    )));
                }
                Err(e) => return Ok(Outcome::Failed(format!("storing {key}: {e}"))),
            }
            let url = Some(store.public_url(&key));
            match variant {
                Variant::Thumb => thumb = url,
                Variant::Medium => medium = url,
            }
        }
        tx.execute(
            queries::SET_VARIANTS,
            &[&id, &thumb, &medium, &preview.placeholder, &preview.color],
        )?;
        tx.commit()?;
        Ok(Outcome::Made)
    })
    .await
}

/// Progress for people: an `indicatif` bar with rate and time left when stderr is a terminal;
/// otherwise one plain line at most every two seconds (and at the end), for logs.
pub struct Console {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    started: Instant,
    last_line: Option<Instant>,
}

impl Console {
    pub fn new(terminal: bool) -> Console {
        Console {
            bar: terminal.then(|| {
                indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} photos  {per_sec}  {eta} left  {msg}",
                    )
                    .expect("a valid template"),
                )
            }),
            total: 0,
            started: Instant::now(),
            last_line: None,
        }
    }
}

impl Progress for Console {
    fn start(&mut self, total: usize) {
        self.total = total;
        self.started = Instant::now();
        match &self.bar {
            Some(bar) => bar.set_length(total as u64),
            None => eprintln!("{total} photos need variants"),
        }
    }

    fn advance(&mut self, done: usize, note: Option<&str>) {
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
            if let Some(note) = note {
                bar.set_message(note.to_string());
            }
            return;
        }
        let due = self
            .last_line
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
        if due || done == self.total {
            self.last_line = Some(Instant::now());
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            eprintln!(
                "{done}/{} photos ({:.1}/s){}",
                self.total,
                done as f64 / secs,
                note.map(|n| format!(" {n}")).unwrap_or_default()
            );
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
