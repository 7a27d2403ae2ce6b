//! Sessions: a whole upload form, field by field. A [`BatchSession`] owns a whole
//! `/api/upload-batch`: the limits, the default category, files parked on disk until the
//! category arrives, the files in work at once, and the sorting of outcomes into uploaded,
//! skipped and failed;
//! [`SingleUpload`] does the same for `/api/upload`. The HTTP handlers only feed them fields.

use std::{
    collections::HashSet,
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use futures_util::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::oneshot,
};
use tracing::Instrument;

use super::{
    error::UploadError,
    upload::{Turn, Uploader},
};
use crate::{
    blocking,
    model::{Category, FileName, Photo},
};

/// A file of a batch that was not stored, because its name is taken.
#[derive(Debug, poem_openapi::Object)]
pub struct Skipped {
    pub filename: String,
    pub reason: String,
}

/// A file of a batch that was not stored, for any other reason.
#[derive(Debug, poem_openapi::Object)]
pub struct Failed {
    pub filename: String,
    pub error: String,
}

/// Every file of a batch, in exactly one list.
#[derive(Debug, Default, poem_openapi::Object)]
pub struct BatchReport {
    pub uploaded: Vec<Photo>,
    pub skipped: Vec<Skipped>,
    pub failed: Vec<Failed>,
}

/// Why a session stopped reading a field.
#[derive(Debug)]
pub enum FieldError {
    /// The request body failed while the field was read (too large, malformed, cut off).
    Body(io::Error),
    /// The session refuses the form (single uploads only; a batch reports per file).
    Refused(UploadError),
}

/// Reads `reader` to its end, keeping at most `cap` bytes: Ok(None) when there were more (the
/// rest is read and dropped, so the next field can be reached).
pub async fn read_capped<R: AsyncRead + Unpin>(
    mut reader: R,
    cap: u64,
) -> io::Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut too_big = false;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if !too_big && (data.len() + n) as u64 > cap {
            too_big = true;
            data = Vec::new();
        }
        if !too_big {
            data.extend_from_slice(&buf[..n]);
        }
    }
    Ok((!too_big).then_some(data))
}

fn too_large(name: &str, max: u64) -> UploadError {
    UploadError::TooLarge(format!("{name} is larger than the {max}-byte limit"))
}

/// One `/api/upload` form: one `file`, an optional `category` before or after it.
pub struct SingleUpload {
    uploader: Arc<Uploader>,
    file: Option<(String, Vec<u8>)>,
    category: Option<String>,
}

impl SingleUpload {
    pub fn new(uploader: Arc<Uploader>) -> SingleUpload {
        SingleUpload {
            uploader,
            file: None,
            category: None,
        }
    }

    pub async fn add_file<R: AsyncRead + Unpin>(
        &mut self,
        raw_name: String,
        reader: R,
    ) -> Result<(), FieldError> {
        if self.file.is_some() {
            return Err(FieldError::Refused(UploadError::BadForm(
                "Send one file to /api/upload; use /api/upload-batch for several".into(),
            )));
        }
        let max = self.uploader.limits.max_file_bytes;
        match read_capped(reader, max).await.map_err(FieldError::Body)? {
            Some(bytes) => {
                self.file = Some((raw_name, bytes));
                Ok(())
            }
            None => Err(FieldError::Refused(too_large(&raw_name, max))),
        }
    }

    /// The first `category` counts; later ones are ignored.
    pub fn set_category(&mut self, text: String) {
        self.category.get_or_insert(text);
    }

    /// Stores the file.
    pub async fn finish(self) -> Result<Photo, UploadError> {
        let Some((name, bytes)) = self.file else {
            return Err(UploadError::MissingField("file (a .jpg/.jpeg photo)"));
        };
        self.uploader
            .upload(&name, self.category.as_deref(), bytes, Turn::default())
            .await
    }
}

/// One `/api/upload-batch` form. Each file is handed to the uploader as soon as it has arrived
/// and the category is known, and the next file is read while it is processed and stored: up to
/// [`Uploader::batch_parallelism`] files are in work at once, so the image workers, the storage
/// writes and the network all stay busy. Files that come before the category are parked in the
/// spool folder (never in memory) until it does, or until the form ends and the default category
/// applies. The report lists every file in the order it came, whatever order the work ended in.
///
/// Rows are inserted in the form's order all the same (see [`Turn`]), so the listing shows a
/// batch in the order it was sent.
///
/// Two files of a batch with one name are never in work together: the second waits for the first
/// to end, so the first in the form is the one stored and the second is skipped, as when a batch
/// was stored one file at a time.
pub struct BatchSession {
    uploader: Arc<Uploader>,
    category: Option<String>,
    waiting: Vec<(usize, String, tempfile::NamedTempFile)>,
    files_seen: usize,
    /// Uploads in work, each with its place in the form and its name.
    in_work: FuturesUnordered<BoxFuture<'static, Ended>>,
    /// The object keys of the uploads in work.
    keys_in_work: HashSet<String>,
    /// The turn of the file started last: the next one inserts its row after it.
    last_turn: Option<oneshot::Receiver<()>>,
    /// Every file's outcome so far, with its place in the form.
    outcomes: Vec<(usize, Outcome)>,
}

/// An upload that ended: its place in the form, its key, its name and what happened.
type Ended = (usize, Option<String>, String, Result<Photo, UploadError>);

enum Outcome {
    Uploaded(Photo),
    Skipped(Skipped),
    Failed(Failed),
}

impl BatchSession {
    pub fn new(uploader: Arc<Uploader>) -> BatchSession {
        BatchSession {
            uploader,
            category: None,
            waiting: Vec::new(),
            files_seen: 0,
            in_work: FuturesUnordered::new(),
            keys_in_work: HashSet::new(),
            last_turn: None,
            outcomes: Vec::new(),
        }
    }

    pub async fn add_file<R: AsyncRead + Unpin>(
        &mut self,
        raw_name: String,
        reader: R,
    ) -> Result<(), FieldError> {
        let index = self.files_seen;
        self.files_seen += 1;
        let limits = &self.uploader.limits;
        let over_count = self.files_seen > limits.max_batch_files;
        let cap = if over_count { 0 } else { limits.max_file_bytes };
        let bytes = read_capped(reader, cap).await.map_err(FieldError::Body)?;
        match bytes {
            _ if over_count => {
                let error = format!(
                    "Too many files in one batch (at most {})",
                    limits.max_batch_files
                );
                self.failed(index, raw_name, error)
            }
            None => {
                let error = too_large(&raw_name, limits.max_file_bytes).to_string();
                self.failed(index, raw_name, error)
            }
            Some(bytes) => match self.category.clone() {
                Some(category) => self.start(index, raw_name, Some(category), bytes).await,
                None => match spool(self.uploader.limits.spool_dir.clone(), bytes).await {
                    Ok(file) => self.waiting.push((index, raw_name, file)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot park a file of a batch");
                        let error = "Could not buffer the file on the server; nothing was kept";
                        self.failed(index, raw_name, error.into())
                    }
                },
            },
        }
        Ok(())
    }

    /// The first `category` counts (later ones are ignored); the files waiting for it are stored.
    /// A category that breaks the rules refuses the batch (the caller aborts it): no file of it
    /// could be stored.
    pub async fn set_category(&mut self, text: String) -> Result<(), UploadError> {
        if self.category.is_none() {
            Category::parse(&text, &self.uploader.limits.allowed_categories)?;
            self.category = Some(text.clone());
            self.drain_waiting(Some(text)).await;
        }
        Ok(())
    }

    /// The form ended: files still waiting get the default category; every upload in work is
    /// awaited.
    pub async fn finish(mut self) -> Result<BatchReport, UploadError> {
        if self.files_seen == 0 {
            return Err(UploadError::MissingField(
                "files (one or more .jpg/.jpeg photos)",
            ));
        }
        let category = self.category.clone();
        self.drain_waiting(category).await;
        Ok(self.report().await)
    }

    /// The body broke off (`reason`): files still waiting were never stored and are reported
    /// failed; the files before the break keep their outcomes (those in work are awaited).
    pub async fn abort(mut self, reason: &str) -> BatchReport {
        for (index, name, _) in std::mem::take(&mut self.waiting) {
            self.failed(index, name, format!("Not stored: {reason}"));
        }
        self.report().await
    }

    /// Awaits the uploads in work, then sorts every outcome into its list, in form order.
    async fn report(mut self) -> BatchReport {
        while self.end_one().await {}
        self.outcomes.sort_by_key(|(index, _)| *index);
        let mut report = BatchReport::default();
        for (_, outcome) in self.outcomes {
            match outcome {
                Outcome::Uploaded(photo) => report.uploaded.push(photo),
                Outcome::Skipped(s) => report.skipped.push(s),
                Outcome::Failed(f) => report.failed.push(f),
            }
        }
        tracing::info!(
            uploaded = report.uploaded.len(),
            skipped = report.skipped.len(),
            failed = report.failed.len(),
            "batch upload finished"
        );
        report
    }

    fn failed(&mut self, index: usize, filename: String, error: String) {
        self.outcomes
            .push((index, Outcome::Failed(Failed { filename, error })));
    }

    async fn drain_waiting(&mut self, category: Option<String>) {
        for (index, name, file) in std::mem::take(&mut self.waiting) {
            let path = file.path().to_path_buf();
            match blocking::run(move || std::fs::read(path)).await {
                Ok(Ok(bytes)) => self.start(index, name, category.clone(), bytes).await,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read a parked file of a batch");
                    let error = "Could not read the buffered file on the server; nothing was kept";
                    self.failed(index, name, error.into());
                }
                Err(_) => self.failed(index, name, "Internal error; nothing was kept".into()),
            }
        }
    }

    /// Starts storing one file, once there is room for it (and once an earlier file of this
    /// batch with the same name has ended).
    async fn start(
        &mut self,
        index: usize,
        name: String,
        category: Option<String>,
        bytes: Vec<u8>,
    ) {
        // A name that is refused is refused by the upload itself, with its reason.
        let key = FileName::parse(&name).ok().map(|n| n.as_str().to_string());
        if let Some(key) = &key {
            while self.keys_in_work.contains(key) {
                self.end_one().await;
            }
            self.keys_in_work.insert(key.clone());
        }
        while self.in_work.len() >= self.uploader.batch_parallelism() {
            self.end_one().await;
        }
        let uploader = self.uploader.clone();
        let turn = Turn::next(&mut self.last_turn);
        let task = {
            let name = name.clone();
            tokio::spawn(
                async move {
                    uploader
                        .upload(&name, category.as_deref(), bytes, turn)
                        .await
                }
                .in_current_span(),
            )
        };
        self.in_work.push(Box::pin(async move {
            // A panic is the task's only way to end without an outcome.
            let outcome = task
                .await
                .unwrap_or_else(|e| Err(UploadError::Internal(format!("upload task: {e}"))));
            (index, key, name, outcome)
        }));
    }

    /// Waits for one upload in work to end and files its outcome; false when none is in work.
    async fn end_one(&mut self) -> bool {
        let Some((index, key, name, outcome)) = self.in_work.next().await else {
            return false;
        };
        if let Some(key) = key {
            self.keys_in_work.remove(&key);
        }
        let outcome = match outcome {
            Ok(photo) => Outcome::Uploaded(photo),
            Err(e @ UploadError::Duplicate(_)) => Outcome::Skipped(Skipped {
                filename: name,
                reason: e.to_string(),
            }),
            Err(e) => {
                let error = match &e {
                    // Internals are logged, never sent.
                    UploadError::Database(_) | UploadError::Internal(_) => {
                        tracing::error!(error = %e, "upload failed");
                        "Internal error while saving the photo; nothing was kept".to_string()
                    }
                    _ => e.to_string(),
                };
                Outcome::Failed(Failed {
                    filename: name,
                    error,
                })
            }
        };
        self.outcomes.push((index, outcome));
        true
    }
}

const SPOOL_PREFIX: &str = ".spool-";

/// Parks a file in the spool folder; it is deleted when the handle drops.
async fn spool(dir: PathBuf, bytes: Vec<u8>) -> io::Result<tempfile::NamedTempFile> {
    blocking::run(move || {
        use std::io::Write;
        std::fs::create_dir_all(&dir)?;
        let mut f = tempfile::Builder::new()
            .prefix(SPOOL_PREFIX)
            .suffix(".part")
            .tempfile_in(&dir)?;
        f.write_all(&bytes)?;
        Ok(f)
    })
    .await
    .map_err(io::Error::other)?
}

/// Removes the files this server parked in `dir` (only ours, by name: the folder may be shared).
fn clear_spool(dir: &Path) -> io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(SPOOL_PREFIX)
        {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Empties the spool folder at start-up: files parked there by a process that died mid-batch
/// were never stored and never will be.
pub(crate) fn clear_spool_at_start(dir: &Path) {
    match clear_spool(dir) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            files = n,
            dir = %dir.display(),
            "removed files parked by an earlier process"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            dir = %dir.display(),
            "cannot clear the upload spool folder"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cap is inclusive: a file of exactly the limit is kept whole, one byte more is not
    /// (and is read to its end all the same, so the next field can be reached).
    #[tokio::test]
    async fn a_file_of_exactly_the_cap_is_kept_and_one_byte_more_is_not() {
        let body = vec![7u8; 200 * 1024]; // several reads of the 64 KiB buffer
        let cap = body.len() as u64;
        assert_eq!(
            read_capped(&body[..], cap).await.unwrap(),
            Some(body.clone())
        );
        assert_eq!(read_capped(&body[..], cap - 1).await.unwrap(), None);
        let mut rest = &body[..];
        assert_eq!(read_capped(&mut rest, 10).await.unwrap(), None);
        assert!(rest.is_empty(), "read to its end");
        assert_eq!(read_capped(&b""[..], 0).await.unwrap(), Some(Vec::new()));
    }

    /// Start-up removes only this server's parked files, and says how many; a folder that is
    /// not there yet is nothing to clear, and one that cannot be read is an error (logged).
    #[test]
    fn clearing_the_spool_removes_only_parked_files_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        for name in [".spool-a.part", ".spool-b.part", "keep.txt"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(clear_spool(dir.path()).unwrap(), 2);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["keep.txt"]);
        assert_eq!(clear_spool(&dir.path().join("not-yet")).unwrap(), 0);
        assert!(
            clear_spool(&dir.path().join("keep.txt")).is_err(),
            "a file, not a folder"
        );
    }
}
