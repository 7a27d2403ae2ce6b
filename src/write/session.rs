//! Sessions: a whole upload form, field by field. A [`BatchSession`] owns a whole
//! `/api/upload-batch`: the limits, the default category, files parked on disk until the
//! category arrives, and the sorting of outcomes into uploaded, skipped and failed;
//! [`SingleUpload`] does the same for `/api/upload`. The HTTP handlers only feed them fields.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{error::UploadError, upload::Uploader};
use crate::{
    blocking,
    model::{Category, Photo},
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
            .upload(&name, self.category.as_deref(), bytes)
            .await
    }
}

/// One `/api/upload-batch` form. Files are stored one at a time as they arrive once the
/// category is known; files that come before it are parked in the spool folder (never in memory)
/// until it does, or until the form ends and the default category applies.
pub struct BatchSession {
    uploader: Arc<Uploader>,
    category: Option<String>,
    waiting: Vec<(String, tempfile::NamedTempFile)>,
    files_seen: usize,
    report: BatchReport,
}

impl BatchSession {
    pub fn new(uploader: Arc<Uploader>) -> BatchSession {
        BatchSession {
            uploader,
            category: None,
            waiting: Vec::new(),
            files_seen: 0,
            report: BatchReport::default(),
        }
    }

    pub async fn add_file<R: AsyncRead + Unpin>(
        &mut self,
        raw_name: String,
        reader: R,
    ) -> Result<(), FieldError> {
        self.files_seen += 1;
        let limits = &self.uploader.limits;
        let over_count = self.files_seen > limits.max_batch_files;
        let cap = if over_count { 0 } else { limits.max_file_bytes };
        let bytes = read_capped(reader, cap).await.map_err(FieldError::Body)?;
        match bytes {
            _ if over_count => self.report.failed.push(Failed {
                filename: raw_name,
                error: format!(
                    "Too many files in one batch (at most {})",
                    limits.max_batch_files
                ),
            }),
            None => self.report.failed.push(Failed {
                error: too_large(&raw_name, limits.max_file_bytes).to_string(),
                filename: raw_name,
            }),
            Some(bytes) => match self.category.clone() {
                Some(category) => self.store(raw_name, Some(&category), bytes).await,
                None => match spool(self.uploader.limits.spool_dir.clone(), bytes).await {
                    Ok(file) => self.waiting.push((raw_name, file)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot park a file of a batch");
                        self.report.failed.push(Failed {
                            filename: raw_name,
                            error: "Could not buffer the file on the server; nothing was kept"
                                .into(),
                        })
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
            self.drain_waiting(Some(&text)).await;
        }
        Ok(())
    }

    /// The form ended: files still waiting get the default category.
    pub async fn finish(mut self) -> Result<BatchReport, UploadError> {
        if self.files_seen == 0 {
            return Err(UploadError::MissingField(
                "files (one or more .jpg/.jpeg photos)",
            ));
        }
        let category = self.category.clone();
        self.drain_waiting(category.as_deref()).await;
        self.log_summary();
        Ok(self.report)
    }

    /// The body broke off (`reason`): files still waiting were never stored and are reported
    /// failed; the files before the break keep their outcomes.
    pub fn abort(mut self, reason: &str) -> BatchReport {
        for (name, _) in self.waiting.drain(..) {
            self.report.failed.push(Failed {
                filename: name,
                error: format!("Not stored: {reason}"),
            });
        }
        self.log_summary();
        std::mem::take(&mut self.report)
    }

    fn log_summary(&self) {
        tracing::info!(
            uploaded = self.report.uploaded.len(),
            skipped = self.report.skipped.len(),
            failed = self.report.failed.len(),
            "batch upload finished"
        );
    }

    async fn drain_waiting(&mut self, category: Option<&str>) {
        for (name, file) in std::mem::take(&mut self.waiting) {
            let path = file.path().to_path_buf();
            match blocking::run(move || std::fs::read(path)).await {
                Ok(Ok(bytes)) => self.store(name, category, bytes).await,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read a parked file of a batch");
                    self.report.failed.push(Failed {
                        filename: name,
                        error: "Could not read the buffered file on the server; nothing was kept"
                            .into(),
                    });
                }
                Err(_) => self.report.failed.push(Failed {
                    filename: name,
                    error: "Internal error; nothing was kept".into(),
                }),
            }
        }
    }

    /// Stores one file and files its outcome.
    async fn store(&mut self, name: String, category: Option<&str>, bytes: Vec<u8>) {
        match self.uploader.upload(&name, category, bytes).await {
            Ok(photo) => self.report.uploaded.push(photo),
            Err(e @ UploadError::Duplicate(_)) => self.report.skipped.push(Skipped {
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
                self.report.failed.push(Failed {
                    filename: name,
                    error,
                })
            }
        }
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
