//! `GET /media/{filename}` (and `HEAD`): photos of the local storage backend.
//!
//! Served by hand rather than with poem's `StaticFilesEndpoint`, which follows symbolic links
//! out of the folder and answers `HEAD` with 405. Objects never change under a name (nothing is
//! overwritten), so they may be cached for a year.
//!
//! In private mode (`storage.private`) only a signed URL is answered
//! ([`crate::storage::signing`]): unsigned, forged and expired ones are 403 with JSON, before
//! the file is looked for, and a good one may be cached only until it expires.

use poem::{
    Body, IntoResponse, Request, Response, handler,
    http::{HeaderValue, StatusCode, header},
    web::{Data, Path},
};

use super::error::ApiError;
use crate::{
    blocking,
    storage::{
        local::LocalStore,
        signing::{UrlKey, unix_now},
    },
};

/// The folder's store, for reading, and in private mode the key its URLs are signed with.
pub struct Media(pub LocalStore, pub Option<UrlKey>);

#[handler]
pub async fn media(
    req: &Request,
    Path(name): Path<String>,
    Data(media): Data<&std::sync::Arc<Media>>,
) -> Result<Response, ApiError> {
    let mut cache_control = HeaderValue::from_static(crate::storage::IMMUTABLE);
    if let Some(url_key) = &media.1 {
        let now = unix_now();
        let expires = url_key
            .check(&name, req.uri().query(), now)
            .map_err(|refused| ApiError::new(StatusCode::FORBIDDEN, refused.detail()))?;
        cache_control = HeaderValue::from_str(&format!("private, max-age={}", expires - now))
            .expect("digits are a header value");
    }
    let media = media.clone();
    let key = name.clone();
    let opened = blocking::run(move || media.0.open_object(&key))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))?;
    let Some((file, meta)) = opened else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "Not Found"));
    };
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let etag = format!("\"{:x}-{:x}\"", meta.len(), modified);
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, cache_control);
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if not_modified {
        return Ok(builder.status(StatusCode::NOT_MODIFIED).finish());
    }
    let lower = name.to_ascii_lowercase();
    let mime = if lower.ends_with(".jpg") || lower.ends_with(".jpeg") {
        "image/jpeg"
    } else {
        "application/octet-stream"
    };
    builder = builder
        .content_type(mime)
        .header(header::CONTENT_LENGTH, meta.len());
    let body = Body::from_async_read(tokio::fs::File::from_std(file));
    let mut resp = builder.body(body);
    resp.headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
    Ok(resp.into_response())
}
