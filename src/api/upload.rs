//! `POST /api/upload` and `POST /api/upload-batch`: admin uploads, read as a stream.
//!
//! Multipart bodies are parsed by hand from poem's streaming `Multipart` rather than
//! poem-openapi's `#[derive(Multipart)]`, which spools every part to disk before the handler runs.
//! Here each file is read with a size cap and processed before the next is read, so memory holds
//! at most one file per request. The derive is still used to document the forms in the spec.

use std::{
    io,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures_util::StreamExt;
use poem::{
    Body, Endpoint, EndpointExt, Request,
    http::{StatusCode, header},
    web::{Field, Multipart as PoemMultipart, RequestBody},
};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Multipart, Object, OpenApi,
    SecurityScheme,
    auth::ApiKey,
    payload::{Json, Payload},
    registry::{MetaMediaType, MetaRequest, Registry},
    types::multipart::Upload,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::AsyncReadExt;

use super::{ApiTags, ErrorBody};
use crate::{
    app::AppState,
    db::Photo,
    upload::{UploadError, Uploader},
};

pub struct UploadApi {
    pub state: Arc<AppState>,
}

// ---------------------------------------------------------------------------------------------
// Authentication

/// The admin key, sent as `X-API-Key`.
#[derive(SecurityScheme)]
#[oai(
    ty = "api_key",
    key_name = "X-API-Key",
    key_in = "header",
    checker = "check_api_key"
)]
pub struct AdminKey(#[allow(dead_code)] ApiKey);

/// Compares SHA-256 digests in constant time: neither the key's bytes nor its length leak
/// through timing.
async fn check_api_key(req: &Request, key: ApiKey) -> Option<ApiKey> {
    let state = req.data::<Arc<AppState>>()?;
    let expected = state.settings.auth.admin_api_key.as_ref()?;
    let given = Sha256::digest(key.key.as_bytes());
    let wanted = Sha256::digest(expected.expose().as_bytes());
    bool::from(given.ct_eq(&wanted)).then_some(key)
}

/// Uploads need a configured admin key; without one they are refused up front with 503 and a
/// message saying what to set, before the key or the body is looked at.
fn require_admin_key(ep: impl Endpoint) -> impl Endpoint {
    ep.before(|req: Request| async move {
        let configured = req
            .data::<Arc<AppState>>()
            .is_some_and(|s| s.settings.auth.admin_api_key.is_some());
        if configured {
            Ok(req)
        } else {
            Err(poem::Error::from_string(
                "Uploads are disabled: no admin key is configured. Set ADMIN_API_KEY and restart.",
                StatusCode::SERVICE_UNAVAILABLE,
            ))
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The streamed multipart body

/// A `multipart/form-data` body read field by field, its total size capped at
/// `upload.max_request_bytes` whether or not the client sent a Content-Length. `F` is the form
/// it is documented as.
pub struct MultipartBody<F> {
    parts: PoemMultipart,
    over_limit: Arc<AtomicBool>,
    limit: u64,
    _form: PhantomData<fn() -> F>,
}

/// Why the body could not be read further.
enum BodyError {
    TooLarge(String),
    Malformed(String),
}

impl<F> MultipartBody<F> {
    async fn next(&mut self) -> Result<Option<Field>, BodyError> {
        self.parts
            .next_field()
            .await
            .map_err(|e| self.classify(e.to_string()))
    }

    fn classify(&self, message: String) -> BodyError {
        if self.over_limit.load(Ordering::Acquire) {
            BodyError::TooLarge(format!("Request body is larger than {} bytes", self.limit))
        } else {
            BodyError::Malformed(format!("Malformed multipart body: {message}"))
        }
    }

    /// Reads a field, up to `cap` bytes. Over the cap the rest of the field is read and dropped
    /// (so the next field can be reached) and `Ok(None)` is returned.
    async fn read_capped(&self, field: Field, cap: u64) -> Result<Option<Vec<u8>>, BodyError> {
        let mut reader = field.into_async_read();
        let mut data = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut too_big = false;
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| self.classify(e.to_string()))?;
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

    async fn read_text(&self, field: Field) -> Result<String, BodyError> {
        match self.read_capped(field, 4096).await? {
            Some(bytes) => String::from_utf8(bytes)
                .map_err(|_| BodyError::Malformed("a text field is not UTF-8".into())),
            None => Err(BodyError::Malformed("a text field is too long".into())),
        }
    }
}

impl<'a, F: Payload> ApiExtractor<'a> for MultipartBody<F> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        F::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: "multipart/form-data",
                schema: F::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _: ExtractParamOptions<()>,
    ) -> poem::Result<Self> {
        let limit = request
            .data::<Arc<AppState>>()
            .map_or(u64::MAX, |s| s.settings.upload.max_request_bytes);
        let too_large = || {
            poem::Error::from_string(
                format!("Request body is larger than {limit} bytes"),
                StatusCode::PAYLOAD_TOO_LARGE,
            )
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        // Chunked bodies have no Content-Length: count as they stream.
        let over_limit = Arc::new(AtomicBool::new(false));
        let flag = over_limit.clone();
        let mut seen = 0u64;
        let stream = body.take()?.into_bytes_stream().map(move |chunk| {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            if seen > limit {
                flag.store(true, Ordering::Release);
                Err(io::Error::other("request body too large"))
            } else {
                Ok(chunk)
            }
        });
        *body = RequestBody::new(Body::from_bytes_stream(stream));
        let parts = <PoemMultipart as poem::FromRequest>::from_request(request, body)
            .await
            .map_err(|e| poem::Error::from_string(e.to_string(), StatusCode::BAD_REQUEST))?;
        Ok(MultipartBody {
            parts,
            over_limit,
            limit,
            _form: PhantomData,
        })
    }
}

/// `POST /api/upload` form (documentation only: the body is streamed by hand).
#[derive(Multipart)]
#[allow(dead_code)]
pub struct UploadForm {
    /// One `.jpg`/`.jpeg` photo.
    file: Upload,
    /// Category, 1 to 50 characters (default `nature`).
    category: Option<String>,
}

/// `POST /api/upload-batch` form (documentation only: the body is streamed by hand).
#[derive(Multipart)]
#[allow(dead_code)]
pub struct BatchForm {
    /// One or more `.jpg`/`.jpeg` photos.
    files: Vec<Upload>,
    /// Category for all of them, 1 to 50 characters (default `nature`).
    category: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Responses

#[derive(ApiResponse)]
#[oai(bad_request_handler = "upload_request_error")]
pub enum UploadResponse {
    /// The photo was stored; this is its record.
    #[oai(status = 201)]
    Created(Json<Photo>),
    /// Not a JPEG (by extension or content), unreadable, or a bad name, category or body.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or wrong `X-API-Key`.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// A photo with this file name (case-insensitive) exists; it was not touched.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The file or the request is over the configured size limit.
    #[oai(status = 413)]
    TooLarge(Json<ErrorBody>),
    /// The `file` field is missing.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// Storage refused or failed the write; nothing was kept.
    #[oai(status = 502)]
    BadGateway(Json<ErrorBody>),
    /// Uploads are disabled (no admin key) or the database is unavailable; nothing was kept.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
    /// An unexpected failure; nothing was kept.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

/// Errors raised before the handler runs: authentication and the body's framing.
fn upload_request_error(e: poem::Error) -> UploadResponse {
    let body = |m: String| Json(ErrorBody::new(m));
    match e.status() {
        StatusCode::UNAUTHORIZED => {
            UploadResponse::Unauthorized(body("Invalid or missing API key".into()))
        }
        StatusCode::PAYLOAD_TOO_LARGE => UploadResponse::TooLarge(body(e.to_string())),
        StatusCode::SERVICE_UNAVAILABLE => UploadResponse::Unavailable(body(e.to_string())),
        _ => UploadResponse::BadRequest(body(e.to_string())),
    }
}

impl From<UploadError> for UploadResponse {
    fn from(e: UploadError) -> Self {
        let body = Json(ErrorBody::new(e.to_string()));
        match e {
            UploadError::Rejected(_) => UploadResponse::BadRequest(body),
            UploadError::Duplicate(_) => UploadResponse::Conflict(body),
            UploadError::TooLarge(_) => UploadResponse::TooLarge(body),
            UploadError::DatabaseUnavailable(_) => UploadResponse::Unavailable(body),
            UploadError::Storage(ref s) => {
                tracing::error!(error = %s, "storage failed during an upload");
                UploadResponse::BadGateway(body)
            }
            UploadError::Database(ref d) => {
                tracing::error!(error = %d, "database failed during an upload");
                UploadResponse::Internal(Json(ErrorBody::new(
                    "Internal error while saving the photo; nothing was kept",
                )))
            }
        }
    }
}

impl From<BodyError> for UploadResponse {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge(m) => UploadResponse::TooLarge(Json(ErrorBody::new(m))),
            BodyError::Malformed(m) => UploadResponse::BadRequest(Json(ErrorBody::new(m))),
        }
    }
}

#[derive(Debug, Object)]
pub struct Skipped {
    pub filename: String,
    pub reason: String,
}

#[derive(Debug, Object)]
pub struct Failed {
    pub filename: String,
    pub error: String,
}

/// Every file of a batch, in exactly one list.
#[derive(Debug, Default, Object)]
pub struct BatchReport {
    pub uploaded: Vec<Photo>,
    pub skipped: Vec<Skipped>,
    pub failed: Vec<Failed>,
}

/// A batch cut short by the request size limit: what happened to the files before it.
#[derive(Debug, Object)]
pub struct BatchCutShort {
    pub detail: String,
    #[oai(flatten)]
    pub report: BatchReport,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "batch_request_error")]
pub enum BatchResponse {
    /// Every file is accounted for in `uploaded`, `skipped` or `failed`.
    #[oai(status = 200)]
    Ok(Json<BatchReport>),
    /// The body could not be parsed.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or wrong `X-API-Key`.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The request went over `upload.max_request_bytes`. Files before that point were processed
    /// and are listed.
    #[oai(status = 413)]
    TooLarge(Json<BatchCutShort>),
    /// No `files` field.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// Uploads are disabled (no admin key).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

fn batch_request_error(e: poem::Error) -> BatchResponse {
    let body = |m: String| Json(ErrorBody::new(m));
    match e.status() {
        StatusCode::UNAUTHORIZED => {
            BatchResponse::Unauthorized(body("Invalid or missing API key".into()))
        }
        StatusCode::PAYLOAD_TOO_LARGE => BatchResponse::TooLarge(Json(BatchCutShort {
            detail: e.to_string(),
            report: BatchReport::default(),
        })),
        StatusCode::SERVICE_UNAVAILABLE => BatchResponse::Unavailable(body(e.to_string())),
        _ => BatchResponse::BadRequest(body(e.to_string())),
    }
}

fn default_category() -> String {
    "nature".to_string()
}

// ---------------------------------------------------------------------------------------------
// Handlers

#[OpenApi(tag = "ApiTags::Uploads")]
impl UploadApi {
    /// Upload one photo
    ///
    /// The file name (reduced to a safe, lower-cased base name) becomes the object key. Nothing
    /// is stored unless the whole upload succeeds.
    #[oai(path = "/api/upload", method = "post", transform = "require_admin_key")]
    async fn upload(&self, _key: AdminKey, mut body: MultipartBody<UploadForm>) -> UploadResponse {
        let limits = &self.uploader().limits;
        let mut file: Option<(String, Vec<u8>)> = None;
        let mut category = default_category();
        loop {
            let field = match body.next().await {
                Ok(Some(field)) => field,
                Ok(None) => break,
                Err(e) => return e.into(),
            };
            match field.name() {
                Some("file") if file.is_none() => {
                    let name = field.file_name().unwrap_or_default().to_string();
                    match body.read_capped(field, limits.max_file_bytes).await {
                        Ok(Some(bytes)) => file = Some((name, bytes)),
                        Ok(None) => return too_large_file(&name, limits.max_file_bytes).into(),
                        Err(e) => return e.into(),
                    }
                }
                Some("file") => {
                    return UploadResponse::BadRequest(Json(ErrorBody::new(
                        "Send one file to /api/upload; use /api/upload-batch for several",
                    )));
                }
                Some("category") => match body.read_text(field).await {
                    Ok(text) => category = text,
                    Err(e) => return e.into(),
                },
                _ => {
                    if let Err(e) = body.read_capped(field, 0).await {
                        return e.into();
                    }
                }
            }
        }
        let Some((name, bytes)) = file else {
            return UploadResponse::Unprocessable(Json(ErrorBody::new(
                "Field required: file (a .jpg/.jpeg photo)",
            )));
        };
        match self.uploader().upload(&name, &category, bytes).await {
            Ok(photo) => {
                self.state.listing.invalidate();
                tracing::info!(filename = %photo.filename, id = photo.id, "photo uploaded");
                UploadResponse::Created(Json(photo))
            }
            Err(e) => e.into(),
        }
    }

    /// Upload many photos
    ///
    /// Files are processed one by one as they arrive; one bad file never stops the batch. Put
    /// `category` before the files to have each stored as soon as it is received (files sent
    /// before it wait on disk until it arrives).
    #[oai(
        path = "/api/upload-batch",
        method = "post",
        transform = "require_admin_key"
    )]
    async fn upload_batch(
        &self,
        _key: AdminKey,
        mut body: MultipartBody<BatchForm>,
    ) -> BatchResponse {
        let uploader = self.uploader();
        let limits = &uploader.limits;
        let mut report = BatchReport::default();
        let mut category: Option<String> = None;
        // Files that came before the category field, spooled to disk (not memory).
        let mut waiting: Vec<(String, tempfile::NamedTempFile)> = Vec::new();
        let mut seen = 0usize;
        loop {
            let field = match body.next().await {
                Ok(Some(field)) => field,
                Ok(None) => break,
                Err(e) => return self.cut_short(e, report, waiting).await,
            };
            match field.name() {
                Some("files" | "file") => {
                    seen += 1;
                    let name = field.file_name().unwrap_or_default().to_string();
                    let over_count = seen > limits.max_batch_files;
                    let cap = if over_count { 0 } else { limits.max_file_bytes };
                    let bytes = match body.read_capped(field, cap).await {
                        Ok(bytes) => bytes,
                        Err(e) => return self.cut_short(e, report, waiting).await,
                    };
                    match (bytes, &category) {
                        _ if over_count => report.failed.push(Failed {
                            filename: name,
                            error: format!(
                                "Too many files in one batch (at most {})",
                                limits.max_batch_files
                            ),
                        }),
                        (None, _) => report.failed.push(Failed {
                            error: too_large_file(&name, limits.max_file_bytes).to_string(),
                            filename: name,
                        }),
                        (Some(bytes), Some(cat)) => {
                            let cat = cat.clone();
                            self.process(&mut report, name, &cat, bytes).await;
                        }
                        (Some(bytes), None) => match spool(bytes).await {
                            Ok(file) => waiting.push((name, file)),
                            Err(e) => report.failed.push(Failed {
                                filename: name,
                                error: format!("Could not buffer the file: {e}"),
                            }),
                        },
                    }
                }
                Some("category") if category.is_none() => match body.read_text(field).await {
                    Ok(text) => {
                        category = Some(text.clone());
                        self.drain_waiting(&mut report, &mut waiting, &text).await;
                    }
                    Err(e) => return self.cut_short(e, report, waiting).await,
                },
                _ => {
                    if let Err(e) = body.read_capped(field, 0).await {
                        return self.cut_short(e, report, waiting).await;
                    }
                }
            }
        }
        if seen == 0 {
            return BatchResponse::Unprocessable(Json(ErrorBody::new(
                "Field required: files (one or more .jpg/.jpeg photos)",
            )));
        }
        let category = category.unwrap_or_else(default_category);
        self.drain_waiting(&mut report, &mut waiting, &category)
            .await;
        if !report.uploaded.is_empty() {
            self.state.listing.invalidate();
        }
        tracing::info!(
            uploaded = report.uploaded.len(),
            skipped = report.skipped.len(),
            failed = report.failed.len(),
            "batch upload finished"
        );
        BatchResponse::Ok(Json(report))
    }
}

impl UploadApi {
    fn uploader(&self) -> &Uploader {
        &self.state.uploader
    }

    /// Uploads one file of a batch and files the outcome in the report.
    async fn process(
        &self,
        report: &mut BatchReport,
        name: String,
        category: &str,
        bytes: Vec<u8>,
    ) {
        match self.uploader().upload(&name, category, bytes).await {
            Ok(photo) => report.uploaded.push(photo),
            Err(e @ UploadError::Duplicate(_)) => report.skipped.push(Skipped {
                filename: name,
                reason: e.to_string(),
            }),
            Err(e) => report.failed.push(Failed {
                filename: name,
                error: e.to_string(),
            }),
        }
    }

    async fn drain_waiting(
        &self,
        report: &mut BatchReport,
        waiting: &mut Vec<(String, tempfile::NamedTempFile)>,
        category: &str,
    ) {
        for (name, file) in waiting.drain(..) {
            match tokio::fs::read(file.path()).await {
                Ok(bytes) => self.process(report, name, category, bytes).await,
                Err(e) => report.failed.push(Failed {
                    filename: name,
                    error: format!("Could not read the buffered file: {e}"),
                }),
            }
        }
    }

    /// The body ended badly mid-batch. Files still waiting for a category were never stored: they
    /// are reported as failed, and the files before the break keep their outcomes.
    async fn cut_short(
        &self,
        e: BodyError,
        mut report: BatchReport,
        waiting: Vec<(String, tempfile::NamedTempFile)>,
    ) -> BatchResponse {
        let (too_large, detail) = match e {
            BodyError::TooLarge(m) => (true, m),
            BodyError::Malformed(m) => (false, m),
        };
        for (name, _) in waiting {
            report.failed.push(Failed {
                filename: name,
                error: format!("Not stored: {detail}"),
            });
        }
        if !report.uploaded.is_empty() {
            self.state.listing.invalidate();
        }
        if too_large {
            BatchResponse::TooLarge(Json(BatchCutShort { detail, report }))
        } else {
            BatchResponse::BadRequest(Json(ErrorBody::new(format!(
                "{detail} (after {} uploaded, {} skipped, {} failed)",
                report.uploaded.len(),
                report.skipped.len(),
                report.failed.len()
            ))))
        }
    }
}

fn too_large_file(name: &str, max: u64) -> UploadError {
    UploadError::TooLarge(format!("{name} is larger than the {max}-byte limit"))
}

/// Parks a file on disk (off the async workers) until the batch's category is known.
async fn spool(bytes: Vec<u8>) -> io::Result<tempfile::NamedTempFile> {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new()?;
        f.write_all(&bytes)?;
        Ok(f)
    })
    .await
    .map_err(io::Error::other)?
}
