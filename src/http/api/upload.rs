//! `POST /api/upload` and `POST /api/upload-batch`: admin uploads, read as a stream.
//!
//! Multipart bodies are read field by field from poem's streaming `Multipart` rather than
//! poem-openapi's `#[derive(Multipart)]`, which spools every part to disk before the handler runs,
//! and each field is handed to the use case's session ([`SingleUpload`], [`BatchSession`]) as it
//! arrives. The derive is still used to document the forms in the spec.

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
    Body, Request,
    http::{StatusCode, header},
    web::{Field, Multipart as PoemMultipart, RequestBody},
};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Multipart, Object, OpenApi,
    payload::{Json, Payload},
    registry::{MetaMediaType, MetaRequest, Registry},
    types::multipart::Upload,
};

use super::{
    ApiTags, CategoryText,
    auth::{AdminKey, require_admin_key},
    error::{ApiError, BatchErrors, UploadErrors},
};
use crate::{
    http::state::AppState,
    model::Photo,
    write::session::{BatchReport, BatchSession, FieldError, SingleUpload, read_capped},
};

pub struct UploadApi {
    pub state: Arc<AppState>,
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

impl<F> MultipartBody<F> {
    /// The next field, or None at the end of the form.
    pub(super) async fn next(&mut self) -> Result<Option<Field>, ApiError> {
        self.parts
            .next_field()
            .await
            .map_err(|e| self.body_error(io::Error::other(e)))
    }

    /// What a failure of the body while reading means: over the limit (413) or malformed (400).
    fn body_error(&self, e: io::Error) -> ApiError {
        if self.over_limit.load(Ordering::Acquire) {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body is larger than {} bytes", self.limit),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("Malformed multipart body: {e}"),
            )
        }
    }

    pub(super) fn field_error(&self, e: FieldError) -> ApiError {
        match e {
            FieldError::Body(e) => self.body_error(e),
            FieldError::Refused(e) => e.into(),
        }
    }

    async fn read_text(&self, field: Field) -> Result<String, ApiError> {
        match read_capped(field.into_async_read(), 4096).await {
            Ok(Some(bytes)) => String::from_utf8(bytes)
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "a text field is not UTF-8")),
            Ok(None) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "a text field is too long",
            )),
            Err(e) => Err(self.body_error(e)),
        }
    }

    /// Reads past a field this form does not use.
    pub(super) async fn skip(&self, field: Field) -> Result<(), ApiError> {
        read_capped(field.into_async_read(), 0)
            .await
            .map(drop)
            .map_err(|e| self.body_error(e))
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
            description: Some(
                "Only JPEG photos (`.jpg`/`.jpeg`, checked by content) are accepted.",
            ),
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
        // No state means a wiring bug; never read an unbounded body because of one.
        let limit = request
            .data::<Arc<AppState>>()
            .map(|s| s.settings.upload.max_request_bytes)
            .ok_or_else(|| ApiError::<()>::internal(&"request has no application state"))?;
        let too_large = || {
            ApiError::<()>::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body is larger than {limit} bytes"),
            )
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large().into());
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
            .map_err(|e| {
                ApiError::<()>::new(
                    StatusCode::BAD_REQUEST,
                    format!("Expected a multipart/form-data body: {e}"),
                )
            })?;
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
    /// One JPEG photo (`.jpg`/`.jpeg`, `image/jpeg`).
    file: Upload,
    /// Category, at most 50 characters (default `nature`); stored trimmed, whitespace
    /// collapsed, lower-cased.
    category: Option<CategoryText>,
}

/// `POST /api/upload-batch` form (documentation only: the body is streamed by hand).
#[derive(Multipart)]
#[allow(dead_code)]
pub struct BatchForm {
    /// One or more JPEG photos (`.jpg`/`.jpeg`, `image/jpeg`); at least one is required.
    #[oai(validator(min_items = 1))]
    files: Vec<Upload>,
    /// Category for all of them, at most 50 characters (default `nature`); stored as for
    /// `/api/upload`.
    category: Option<CategoryText>,
}

// ---------------------------------------------------------------------------------------------
// Responses

#[derive(ApiResponse)]
pub enum UploadReply {
    /// The photo was stored; this is its record.
    #[oai(status = 201)]
    Created(Json<Photo>),
}

/// A batch cut short by the request size limit: what happened to the files before it.
#[derive(Debug, Object)]
pub struct BatchCutShort {
    pub detail: String,
    #[oai(flatten)]
    pub report: BatchReport,
}

#[derive(ApiResponse)]
pub enum BatchReply {
    /// Every file is accounted for in `uploaded`, `skipped` or `failed`.
    #[oai(status = 200)]
    Ok(Json<BatchReport>),
    /// The request went over `upload.max_request_bytes`. Files before that point were processed
    /// and are listed.
    #[oai(status = 413)]
    CutShort(Json<BatchCutShort>),
}

// ---------------------------------------------------------------------------------------------
// Handlers: pump the form's fields into the session, render what it says

#[OpenApi(tag = "ApiTags::Uploads")]
impl UploadApi {
    /// Upload one photo
    ///
    /// The file name (reduced to a safe, lower-cased base name) becomes the object key. Nothing
    /// is stored unless the whole upload succeeds.
    #[oai(path = "/api/upload", method = "post", transform = "require_admin_key")]
    async fn upload(
        &self,
        _key: AdminKey,
        mut body: MultipartBody<UploadForm>,
    ) -> Result<UploadReply, ApiError<UploadErrors>> {
        let mut session = SingleUpload::new(self.state.uploader.clone());
        while let Some(field) = body.next().await.map_err(ApiError::retag)? {
            match field.name() {
                Some("file") => {
                    let name = file_name(&field).map_err(ApiError::retag)?;
                    session
                        .add_file(name, field.into_async_read())
                        .await
                        .map_err(|e| body.field_error(e).retag())?;
                }
                Some("category") => {
                    session.set_category(body.read_text(field).await.map_err(ApiError::retag)?)
                }
                _ => body.skip(field).await.map_err(ApiError::retag)?,
            }
        }
        let photo = session.finish().await?;
        Ok(UploadReply::Created(Json(
            self.state.written_one(photo).await,
        )))
    }

    /// Upload many photos
    ///
    /// Each file is processed as soon as it has arrived, while the next ones are read (a few at
    /// once); one bad file never stops the batch, and the report keeps the form's order. Put
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
    ) -> Result<BatchReply, ApiError<BatchErrors>> {
        let mut session = BatchSession::new(self.state.uploader.clone());
        loop {
            let field = match body.next().await {
                Ok(Some(field)) => field,
                Ok(None) => break,
                Err(e) => return cut_short(session.abort(e.detail()).await, e),
            };
            let step = match field.name() {
                Some("files" | "file") => match file_name(&field) {
                    Ok(name) => session
                        .add_file(name, field.into_async_read())
                        .await
                        .map_err(|e| body.field_error(e)),
                    Err(e) => Err(e),
                },
                Some("category") => match body.read_text(field).await {
                    Ok(text) => session.set_category(text).await.map_err(ApiError::from),
                    Err(e) => Err(e),
                },
                _ => body.skip(field).await,
            };
            if let Err(e) = step {
                return cut_short(session.abort(e.detail()).await, e);
            }
        }
        let mut report = session.finish().await?;
        report.uploaded = self.state.written(report.uploaded).await;
        Ok(BatchReply::Ok(Json(report)))
    }
}

/// The file name of a file field. A part without one is a text field, not a file: the form
/// is malformed (400), as the schema says (`files` holds binary parts).
pub(super) fn file_name(field: &Field) -> Result<String, ApiError> {
    match field.file_name() {
        Some(name) => Ok(name.to_string()),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "The `{}` field is not a file (its part has no filename)",
                field.name().unwrap_or_default()
            ),
        )),
    }
}

/// The body broke off mid-batch: over the size limit, the report of what happened before (413);
/// malformed, a 400 that says how far it got.
fn cut_short(report: BatchReport, e: ApiError) -> Result<BatchReply, ApiError<BatchErrors>> {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return Ok(BatchReply::CutShort(Json(BatchCutShort {
            detail: e.detail().to_string(),
            report,
        })));
    }
    Err(ApiError::new(
        e.status(),
        format!(
            "{} (after {} uploaded, {} skipped, {} failed)",
            e.detail(),
            report.uploaded.len(),
            report.skipped.len(),
            report.failed.len()
        ),
    ))
}
