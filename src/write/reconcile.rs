//! `portfolio-server reconcile`: compares the object store with the `photographs` table, for
//! stores that predate the clean-up journal, were edited by hand, or lost a replica's journal.
//!
//! It lists objects with no row (orphans) and rows with no object (broken photos). A dry run by
//! default; with `--delete-orphans` it deletes orphans older than a grace period, each one under
//! the name's claim (as the journal's resolver does), so an upload in flight, or one that
//! commits meanwhile, is never touched. Rows are only reported: a missing photo needs a person.

use std::{
    collections::HashSet,
    io::Write,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    blocking,
    db::{Db, DbError, queries},
    imaging::Variant,
    storage::{ObjectInfo, ObjectStore, StorageError},
    write::cleanup::{Resolution, delete_unclaimed},
};

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Delete orphans (else only list them).
    pub delete_orphans: bool,
    /// Orphans younger than this are left alone: an upload may be about to commit its row.
    pub grace: Duration,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub objects: usize,
    pub rows: usize,
    /// Rows whose URL is not in this store (another store, or the original's demo data).
    pub rows_elsewhere: usize,
    /// Objects no row points at, with their age when the store knows it.
    pub orphans: Vec<(String, Option<Duration>)>,
    /// Rows (id, filename, url) whose object is not in the store.
    pub missing: Vec<(i32, String, String)>,
    pub deleted: usize,
    /// Orphans a committed row claimed by name after all (the row's URL points elsewhere).
    pub claimed: usize,
    /// Orphans younger than the grace period, or of unknown age.
    pub too_young: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot list the store: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Other(String),
}

/// Runs the comparison; progress lines go to `progress` (stderr), findings to `out` (stdout).
pub async fn run(
    db: &Db,
    store: Arc<dyn ObjectStore>,
    opts: Options,
    out: &mut (dyn Write + Send),
    progress: &mut (dyn Write + Send),
) -> Result<Report, ReconcileError> {
    let mut report = Report::default();
    let _ = writeln!(progress, "listing the objects of {}", store.describe());
    let objects: Vec<ObjectInfo> = {
        let store = store.clone();
        blocking::run(move || {
            store.list(&mut |n| {
                if n > 0 && n % 1000 == 0 {
                    eprintln!("  {n} objects");
                }
            })
        })
        .await
        .map_err(|e| ReconcileError::Other(e.to_string()))??
    };
    report.objects = objects.len();
    let _ = writeln!(progress, "{} objects; reading the rows", objects.len());
    type Row = (i32, String, String, Option<String>, Option<String>);
    let rows: Vec<Row> = db
        .run(|c| {
            Ok(c.query_typed(queries::OBJECT_URLS, &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                .collect())
        })
        .await?;
    report.rows = rows.len();
    let _ = writeln!(progress, "{} rows; comparing", rows.len());

    let keys: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let mut referenced: HashSet<String> = HashSet::new();
    let key_of = |url: &str| crate::storage::key_of_url(&*store, url);
    for (id, filename, url, thumb, medium) in &rows {
        let Some(key) = key_of(url) else {
            report.rows_elsewhere += 1;
            continue;
        };
        if !keys.contains(key.as_str()) {
            report.missing.push((*id, filename.clone(), url.clone()));
        }
        // A photo's variants are its own, recorded or not: one an interrupted backfill left
        // unrecorded is replaced by the next backfill, not deleted from under it.
        for variant in Variant::ALL {
            referenced.extend(variant.keys(&key));
        }
        for v in [thumb, medium].into_iter().flatten() {
            referenced.extend(key_of(v));
        }
        referenced.insert(key);
    }
    let now = SystemTime::now();
    for o in &objects {
        if !referenced.contains(&o.key) {
            let age = o.modified.and_then(|m| now.duration_since(m).ok());
            report.orphans.push((o.key.clone(), age));
        }
    }
    for (key, age) in &report.orphans {
        let _ = writeln!(out, "orphan\t{key}\t{}", describe_age(*age));
    }
    for (id, filename, url) in &report.missing {
        let _ = writeln!(out, "missing\t{id}\t{filename}\t{url}");
    }

    if opts.delete_orphans {
        let total = report.orphans.len();
        for (i, (key, age)) in report.orphans.clone().into_iter().enumerate() {
            if age.is_none_or(|a| a < opts.grace) {
                report.too_young += 1;
                continue;
            }
            let store = store.clone();
            let k = key.clone();
            // A variant goes with its photo's name: deleted only if no row claims the photo.
            let outcome = db
                .run(move |c| {
                    let name = Variant::of_key(&k).map_or(k.as_str(), |(_, photo)| photo);
                    Ok(delete_unclaimed(c, &*store, name, &[&k]))
                })
                .await?;
            match outcome {
                Ok(Resolution::Removed) => {
                    report.deleted += 1;
                    let _ = writeln!(out, "deleted\t{key}");
                }
                Ok(Resolution::Kept) => {
                    report.claimed += 1;
                    let _ = writeln!(out, "kept\t{key}\ta row has this name");
                }
                Err(e) => return Err(ReconcileError::Other(format!("{key}: {e}"))),
            }
            if (i + 1) % 100 == 0 {
                let _ = writeln!(progress, "  {} of {total} orphans handled", i + 1);
            }
        }
    }
    let _ = writeln!(
        progress,
        "{} objects, {} rows ({} pointing elsewhere): {} orphans, {} rows without their object.{}",
        report.objects,
        report.rows,
        report.rows_elsewhere,
        report.orphans.len(),
        report.missing.len(),
        if opts.delete_orphans {
            format!(
                " Deleted {}, kept {} (a row has the name), left {} younger than {} h.",
                report.deleted,
                report.claimed,
                report.too_young,
                opts.grace.as_secs() / 3600
            )
        } else {
            " Dry run: nothing deleted (--delete-orphans deletes orphans past the grace period)."
                .into()
        }
    );
    Ok(report)
}

fn describe_age(age: Option<Duration>) -> String {
    match age {
        None => "age unknown".into(),
        Some(a) if a < Duration::from_secs(3600) => format!("{} min old", a.as_secs() / 60),
        Some(a) if a < Duration::from_secs(48 * 3600) => format!("{} h old", a.as_secs() / 3600),
        Some(a) => format!("{} days old", a.as_secs() / 86_400),
    }
}
