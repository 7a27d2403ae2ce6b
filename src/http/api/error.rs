//! The one error type of the HTTP API, and the one place where errors become responses.
//!
//! Every failure, whether a use case's error ([`UploadError`], [`InvalidQuery`]) or one raised by
//! poem before a handler runs (a bad parameter, a missing key, an unknown route), is turned into
//! an [`ApiError`] here and rendered as `{"detail": "..."}` with its status. Internals (SQL, file
//! paths, OS errors, panics) are logged and never sent: a 500 says only that something failed.
//!
//! The type parameter only chooses which statuses the OpenAPI document lists for an operation;
//! every `ApiError` renders the same way.

use std::{fmt, marker::PhantomData};

use poem::{
    IntoResponse, Response,
    error::ResponseError,
    http::{HeaderValue, StatusCode, header},
};
use poem_openapi::{
    ApiResponse,
    registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::Type,
};

use super::ErrorBody;
use crate::{
    model::InvalidQuery, storage::StorageError, write::error::UploadError,
    write::manage::ManageError,
};

pub const UNAUTHORIZED: &str = "Invalid or missing API key";
pub const UPLOADS_DISABLED: &str =
    "Uploads are disabled: no admin key is configured. Set ADMIN_API_KEY and restart.";
pub const BUSY: &str = "The database is busy; try again shortly";
const INTERNAL: &str = "Internal server error";

/// What an error answer says: a status and a message for a person. Not generic, so it can
/// travel inside a `poem::Error` and be recognised on the way out.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    detail: String,
    /// `Retry-After` seconds, for answers that mean "try again shortly".
    retry_after: Option<u32>,
    /// Why, when `detail` is a fixed text a contract sets (`Photo upload failed`).
    reason: Option<String>,
}

/// An error answer, documented in the OpenAPI document with the statuses of `S`.
pub struct ApiError<S = AnyStatus>(Problem, PhantomData<fn() -> S>);

impl<S> ApiError<S> {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError(
            Problem {
                status,
                detail: detail.into(),
                retry_after: None,
                reason: None,
            },
            PhantomData,
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, UNAUTHORIZED)
    }

    pub fn uploads_disabled() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, UPLOADS_DISABLED)
    }

    /// The client's address sent too many wrong admin keys; it may try again in `secs`.
    pub fn throttled(secs: u32) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many wrong X-API-Key values from this address; no key is checked from it \
                 for {secs} s"
            ),
        );
        e.0.retry_after = Some(secs);
        e
    }

    /// The database is up but saturated.
    pub fn busy() -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, BUSY);
        e.0.retry_after = Some(1);
        e
    }

    /// A bug or an internal failure: `cause` is logged, the client learns nothing of it.
    pub fn internal(cause: &dyn fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL)
    }

    /// The same answer with a `reason` beside its `detail`.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.0.reason = Some(reason.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn detail(&self) -> &str {
        &self.0.detail
    }

    /// The same error, documented as another operation's.
    pub fn retag<T>(self) -> ApiError<T> {
        ApiError(self.0, PhantomData)
    }
}

impl<S> From<UploadError> for ApiError<S> {
    fn from(e: UploadError) -> Self {
        let status = match &e {
            UploadError::Invalid(_) | UploadError::Rejected(_) | UploadError::BadForm(_) => {
                StatusCode::BAD_REQUEST
            }
            UploadError::MissingField(_) => StatusCode::UNPROCESSABLE_ENTITY,
            UploadError::Duplicate(_) | UploadError::Occupied(_) => StatusCode::CONFLICT,
            UploadError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UploadError::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            // The bucket's own size limit: the photo is too large for it, as for ours.
            UploadError::Storage(StorageError::ObjectRefused { status: 413, .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            UploadError::Storage(s) => {
                // Storage's own message helps the owner fix a bucket or a key; it names no path
                // of ours.
                tracing::error!(error = %s, "storage failed during an upload");
                StatusCode::BAD_GATEWAY
            }
            UploadError::Database(_) | UploadError::Internal(_) => {
                tracing::error!(error = %e, "upload failed");
                return Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error while saving the photo; nothing was kept",
                );
            }
        };
        Self::new(status, e.to_string())
    }
}

impl<S> From<ManageError> for ApiError<S> {
    fn from(e: ManageError) -> Self {
        match e {
            ManageError::NotFound => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            ManageError::Invalid(_) => Self::new(StatusCode::BAD_REQUEST, e.to_string()),
            ManageError::Upload(u) => u.into(),
        }
    }
}

impl<S> From<InvalidQuery> for ApiError<S> {
    fn from(e: InvalidQuery) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, e.0)
    }
}

/// Errors poem raised, or ours travelling inside a `poem::Error`.
impl<S> From<poem::Error> for ApiError<S> {
    fn from(e: poem::Error) -> Self {
        if let Some(ours) = e.downcast_ref::<Problem>() {
            return ApiError(ours.clone(), PhantomData);
        }
        // A parameter that is not an integer in range: 422 naming it, as FastAPI answered. The
        // text is poem-openapi's, and names only the parameter and the rule.
        if e.is::<poem_openapi::error::ParseParamError>()
            || e.is::<poem_openapi::error::ParsePathError>()
        {
            return Self::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
        }
        // A JSON body that is not the expected object: serde's account of it names the field
        // and the position, nothing of the server.
        if e.is::<poem_openapi::error::ParseRequestPayloadError>() {
            return Self::new(StatusCode::BAD_REQUEST, e.to_string());
        }
        match e.status() {
            StatusCode::UNAUTHORIZED => Self::unauthorized(),
            StatusCode::INTERNAL_SERVER_ERROR => Self::internal(&e),
            status => {
                // Poem's own texts may hold internals (a file path from /media, a parser's
                // state): log them, send the status's name.
                tracing::debug!(error = %e, %status, "request refused");
                let reason = status.canonical_reason().unwrap_or("Error");
                Self::new(status, reason)
            }
        }
    }
}

/// Lets handlers return `Result<_, ApiError>`: poem carries the [`Problem`] and renders it.
impl<S> From<ApiError<S>> for poem::Error {
    fn from(e: ApiError<S>) -> poem::Error {
        poem::Error::from(e.0)
    }
}

impl<S> fmt::Debug for ApiError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Problem {}

impl ResponseError for Problem {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        render(
            self.status,
            &self.detail,
            self.reason.as_deref(),
            self.retry_after,
        )
    }
}

impl<S> IntoResponse for ApiError<S> {
    fn into_response(self) -> Response {
        self.0.as_response()
    }
}

fn render(
    status: StatusCode,
    detail: &str,
    reason: Option<&str>,
    retry_after: Option<u32>,
) -> Response {
    let body = match reason {
        None => serde_json::json!({ "detail": detail }),
        Some(reason) => serde_json::json!({ "detail": detail, "reason": reason }),
    };
    let body = serde_json::to_vec(&body).expect("strings serialise");
    let mut r = Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(body);
    if let Some(secs) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

impl<S: Statuses> ApiResponse for ApiError<S> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: S::LIST
                .iter()
                .map(|&(status, description)| MetaResponse {
                    description,
                    status: Some(status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: "application/json; charset=utf-8",
                        schema: ErrorBody::schema_ref(),
                    }],
                    headers: match status {
                        429 => vec![retry_after_header(
                            "Seconds before a key is checked again",
                            true,
                        )],
                        503 => vec![retry_after_header(
                            "Seconds to wait, when the database is busy",
                            false,
                        )],
                        _ => vec![],
                    },
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        ErrorBody::register(registry);
    }
}

fn retry_after_header(description: &str, required: bool) -> MetaHeader {
    MetaHeader {
        name: "Retry-After".into(),
        description: Some(description.into()),
        required,
        deprecated: false,
        schema: u32::schema_ref(),
    }
}

/// The error statuses the OpenAPI document lists for an operation, with their meaning.
pub trait Statuses {
    const LIST: &'static [(u16, &'static str)];
}

/// Every status (errors raised outside any operation).
pub struct AnyStatus;
impl Statuses for AnyStatus {
    const LIST: &'static [(u16, &'static str)] = &[];
}

/// `GET /api/images`.
pub struct ListErrors;
impl Statuses for ListErrors {
    const LIST: &'static [(u16, &'static str)] = &[
        (
            422,
            "A parameter is not an integer in range, the category is empty or too long, or \
             `offset` and `after_id` are both given",
        ),
        (
            503,
            "The database is up but every connection stayed busy for `database.queue_timeout_ms`, \
             and this page was never served before. Retry shortly.",
        ),
    ];
}

/// Every admin route: the address is held back after too many wrong keys.
const THROTTLED: (u16, &str) = (
    429,
    "Too many wrong keys from this address: no key from it is checked for `Retry-After` seconds",
);

/// `POST /api/upload`.
pub struct UploadErrors;
impl Statuses for UploadErrors {
    const LIST: &'static [(u16, &'static str)] = &[
        (
            400,
            "Not a JPEG (by extension or content), unreadable, or a bad name, category or body",
        ),
        (401, "Missing or wrong `X-API-Key`"),
        THROTTLED,
        (
            409,
            "A photo with this file name (case-insensitive) exists; it was not touched",
        ),
        (
            413,
            "The file or the request is over the configured size limit",
        ),
        (422, "The `file` field is missing"),
        (500, "An unexpected failure; nothing was kept"),
        (502, "Storage refused or failed the write; nothing was kept"),
        (
            503,
            "Uploads are disabled (no admin key) or the database is unavailable; nothing was kept",
        ),
    ];
}

/// `POST /api/upload-batch` (per-file failures are in the 200's report).
pub struct BatchErrors;
impl Statuses for BatchErrors {
    const LIST: &'static [(u16, &'static str)] = &[
        (400, "The body could not be parsed"),
        (401, "Missing or wrong `X-API-Key`"),
        THROTTLED,
        (422, "No `files` field"),
        (503, "Uploads are disabled (no admin key)"),
    ];
}

/// `GET` and `DELETE /api/images/{id}`.
pub struct PhotoErrors;
impl Statuses for PhotoErrors {
    const LIST: &'static [(u16, &'static str)] = &[
        (401, "Missing or wrong `X-API-Key`"),
        THROTTLED,
        (404, "No photo has this id"),
        (422, "The id is not an integer"),
        (500, "An unexpected failure; nothing was changed"),
        (
            503,
            "Admin routes are disabled (no admin key) or the database is unavailable; nothing was \
             changed",
        ),
    ];
}

/// `POST /api/photos`.
pub struct PhotoUploadErrors;
impl Statuses for PhotoUploadErrors {
    const LIST: &'static [(u16, &'static str)] = &[
        (
            400,
            "`Photo upload failed`: not a JPEG (by extension or content), unreadable, too large, \
             a bad name, or no `photo` field; `reason` says which. Nothing was stored",
        ),
        (401, "Missing or wrong `X-API-Key`"),
        (
            413,
            "The request body declares more than `upload.max_request_bytes`: refused before it \
             is read",
        ),
        THROTTLED,
        (500, "An unexpected failure; nothing was kept"),
        (502, "Storage refused or failed; nothing was kept"),
        (
            503,
            "Uploads are disabled (no admin key) or the database is unavailable; nothing was kept",
        ),
    ];
}

/// `GET /api/auth`.
pub struct KeyErrors;
impl Statuses for KeyErrors {
    const LIST: &'static [(u16, &'static str)] = &[
        (401, "Missing or wrong `X-API-Key`"),
        THROTTLED,
        (503, "Admin routes are disabled: no admin key is configured"),
    ];
}

/// `PATCH /api/images/{id}`.
pub struct ChangeErrors;
impl Statuses for ChangeErrors {
    const LIST: &'static [(u16, &'static str)] = &[
        (
            400,
            "A bad category, or a body that is not `{\"category\": \"...\"}` (a `filename`: \
             renaming is not supported)",
        ),
        (401, "Missing or wrong `X-API-Key`"),
        THROTTLED,
        (404, "No photo has this id"),
        (413, "The body is over 64 KiB"),
        (415, "The body is not `application/json`"),
        (422, "The id is not an integer"),
        (500, "An unexpected failure; nothing was changed"),
        (
            503,
            "Admin routes are disabled (no admin key) or the database is unavailable; nothing was \
             changed",
        ),
    ];
}

/// `GET /api/categories`.
pub struct CategoryErrors;
impl Statuses for CategoryErrors {
    const LIST: &'static [(u16, &'static str)] = &[(503, "The database is unavailable")];
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ApiError) -> (StatusCode, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let bytes = r.into_body().into_vec().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn internals_are_never_sent() {
        let e: ApiError = poem::Error::from_string(
            "/srv/data/media/../secret: permission denied",
            StatusCode::FORBIDDEN,
        )
        .into();
        let (status, json) = body(e).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(json["detail"], "Forbidden");
        let e: ApiError = poem::Error::from_string(
            "relation \"photographs\" does not exist",
            StatusCode::INTERNAL_SERVER_ERROR,
        )
        .into();
        let (status, json) = body(e).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json["detail"], INTERNAL);
        let e: ApiError = UploadError::Internal("disk /var/x full".into()).into();
        let (status, json) = body(e).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!json["detail"].as_str().unwrap().contains("/var"));
    }

    #[tokio::test]
    async fn our_errors_survive_a_trip_through_poem() {
        let e = poem::Error::from(ApiError::<AnyStatus>::busy());
        let back: ApiError = e.into();
        assert_eq!(back.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = back.into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let e: ApiError = poem::Error::from_status(StatusCode::UNAUTHORIZED).into();
        assert_eq!(e.detail(), UNAUTHORIZED);
        let e: ApiError = poem::Error::from_status(StatusCode::NOT_FOUND).into();
        assert_eq!(e.detail(), "Not Found");
    }

    #[test]
    fn each_upload_error_has_its_status() {
        use crate::model::{FileName, Invalid};
        let s = |e: UploadError| ApiError::<AnyStatus>::from(e).status().as_u16();
        assert_eq!(s(Invalid::NotJpeg.into()), 400);
        assert_eq!(s(UploadError::BadForm("x".into())), 400);
        assert_eq!(s(UploadError::MissingField("file")), 422);
        let name = FileName::parse("a.jpg").unwrap();
        assert_eq!(s(UploadError::Duplicate(name)), 409);
        assert_eq!(s(UploadError::Occupied("thumb--a.jpg".into())), 409);
        assert_eq!(s(UploadError::TooLarge("x".into())), 413);
        assert_eq!(s(UploadError::DatabaseUnavailable("x".into())), 503);
        let storage = crate::storage::StorageError::Unavailable("x".into());
        assert_eq!(s(storage.into()), 502);
        let too_large = crate::storage::StorageError::ObjectRefused {
            status: 413,
            message: "The object exceeded the maximum allowed size".into(),
        };
        assert_eq!(s(too_large.into()), 413);
        let bad_key = crate::storage::StorageError::ObjectRefused {
            status: 400,
            message: "Invalid key: a~b".into(),
        };
        assert_eq!(s(bad_key.into()), 502);
        assert_eq!(s(UploadError::Internal("x".into())), 500);
        assert_eq!(
            ApiError::<AnyStatus>::from(InvalidQuery("q".into())).status(),
            422
        );
    }
}
