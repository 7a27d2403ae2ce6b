//! `GET` and `POST /api/photos`: the second system of the design documents, on the same table
//! as `/api/images`.
//!
//! Its listing is `[{"id", "photo_url"}]` in id order, with the listing's parameters, cache and
//! fast path (a page of this shape is cached beside the `/api/images` page of the same query).
//! Its upload takes the multipart field `photo`, goes through the same pipeline and write
//! protocol as `/api/upload`, and stores the photo under `<uuid v4>-<sanitised name>`, so one
//! file name can be uploaded any number of times. Unlike the original route it needs the admin
//! key. A bad upload is 400 `{"detail": "Photo upload failed"}`, as the second system answers,
//! with the reason beside it in `reason`.

use std::sync::Arc;

use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{
    ApiResponse, Multipart, OpenApi,
    param::{Header, Query},
    payload::Json,
    registry::{MetaResponses, Registry},
    types::{Type, multipart::Upload},
};

use super::{
    ApiTags, CategoryText, RawJson,
    auth::{AdminKey, require_admin_key},
    error::{ApiError, ListErrors, PhotoUploadErrors},
    images::{ListReply, ListReplyDoc, default_limit, reply},
    upload::{MultipartBody, file_name},
};
use crate::{
    http::state::AppState,
    model::{PageKey, PhotoLink, Shape},
    write::session::SingleUpload,
};

/// The fixed `detail` of a refused upload, as the second system answers it.
pub const UPLOAD_FAILED: &str = "Photo upload failed";

pub struct LinksApi {
    pub state: Arc<AppState>,
}

/// A listing answer of this shape: [`ListReply`], documented with [`PhotoLink`] items.
pub struct LinksReply(ListReply);

impl IntoResponse for LinksReply {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl ApiResponse for LinksReply {
    fn meta() -> MetaResponses {
        let mut meta = ListReplyDoc::meta();
        for response in &mut meta.responses {
            for content in &mut response.content {
                content.schema =
                    <RawJson<Vec<PhotoLink>> as poem_openapi::payload::Payload>::schema_ref();
            }
            if response.status == Some(200) {
                response.description = "A page of photos in id order, each with the URL to read it \
                                        from: always a JSON array, also while the database is \
                                        down.";
            }
        }
        meta
    }

    fn register(registry: &mut Registry) {
        ListReplyDoc::register(registry);
        PhotoLink::register(registry);
    }
}

/// `POST /api/photos` form (documentation only: the body is streamed by hand).
#[derive(Multipart)]
#[allow(dead_code)]
pub struct PhotoForm {
    /// One JPEG photo (`.jpg`/`.jpeg`, `image/jpeg`).
    photo: Upload,
}

#[derive(ApiResponse)]
pub enum LinkCreated {
    /// The photo was stored under a new, UUID-prefixed name.
    #[oai(status = 201)]
    Created(Json<PhotoLink>),
}

#[OpenApi(tag = "ApiTags::Images")]
impl LinksApi {
    /// List photos with their URLs
    ///
    /// The second system's listing: `[{"id": 1, "photo_url": "..."}]` in id order, from the
    /// same table, cache and parameters as `GET /api/images`.
    // The parameters are `/api/images`'s, written out again: poem-openapi documents an
    // operation's parameters from its own signature only. Their rules are one
    // (`PageKey::parse`), and the fast path parses both routes with one parser.
    #[oai(path = "/api/photos", method = "get")]
    async fn list(
        &self,
        /// Page size, 1 to 100.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// Rows to skip, 0 or more (default 0); with `after_id`, rows skipped after it.
        #[oai(validator(minimum(value = "0")))]
        offset: Query<Option<i64>>,
        /// Keyset pagination: only photos with an id greater than this.
        #[oai(validator(minimum(value = "0")))]
        after_id: Query<Option<i64>>,
        /// Only this category (case-insensitive), at most 50 characters.
        category: Query<Option<CategoryText>>,
        #[oai(name = "If-None-Match")] if_none_match: Header<Option<String>>,
        #[oai(name = "Accept-Encoding")] accept_encoding: Header<Option<String>>,
    ) -> Result<LinksReply, ApiError<ListErrors>> {
        let key = PageKey::parse(
            Some(limit.0),
            offset.0,
            after_id.0,
            category.0.as_ref().map(|c| c.0.as_str()),
        )?
        .in_shape(Shape::Links);
        reply(
            &self.state,
            &key,
            if_none_match.0.as_deref(),
            accept_encoding.0.as_deref(),
        )
        .await
        .map(LinksReply)
    }

    /// Upload a photo (the second system's form)
    ///
    /// The field `photo` holds one JPEG. It is stored under `<uuid>-<sanitised name>`, so the
    /// same file name can be uploaded again; the answer is its `id` and `photo_url`. Needs the
    /// admin key (the original route had none).
    #[oai(path = "/api/photos", method = "post", transform = "require_admin_key")]
    async fn create(
        &self,
        _key: AdminKey,
        body: MultipartBody<PhotoForm>,
    ) -> Result<LinkCreated, ApiError<PhotoUploadErrors>> {
        match self.store(body).await {
            Ok(link) => Ok(LinkCreated::Created(Json(link))),
            Err(e) => Err(refusal(e)),
        }
    }
}

impl LinksApi {
    async fn store(&self, mut body: MultipartBody<PhotoForm>) -> Result<PhotoLink, ApiError> {
        let mut session = SingleUpload::new(self.state.uploader.clone());
        let mut photos = 0;
        while let Some(field) = body.next().await? {
            if field.name() != Some("photo") {
                body.skip(field).await?;
                continue;
            }
            photos += 1;
            if photos > 1 {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "Send one `photo` field",
                ));
            }
            let name = file_name(&field)?;
            session
                .add_file(unique_name(&name), field.into_async_read())
                .await
                .map_err(|e| body.field_error(e))?;
        }
        if photos == 0 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "Field required: photo (a .jpg/.jpeg photo)",
            ));
        }
        let photo = session.finish().await?;
        Ok(PhotoLink::from(&self.state.written_one(photo).await))
    }
}

/// `<uuid v4>-<base name>`: the client's folders are dropped first, so the prefix survives the
/// name's sanitising ([`crate::model::FileName::parse`]).
fn unique_name(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    format!("{}-{base}", uuid::Uuid::new_v4())
}

/// What a failed upload answers: a refusal of the upload itself (its type, size, name or form)
/// is the second system's 400 `Photo upload failed`, with the reason; the key's answers (401,
/// 429, 503) and the server's own failures (storage, database) keep their status, since the
/// upload was not at fault.
fn refusal(e: ApiError) -> ApiError<PhotoUploadErrors> {
    let status = e.status();
    let the_uploads_fault = status.is_client_error()
        && status != StatusCode::UNAUTHORIZED
        && status != StatusCode::TOO_MANY_REQUESTS;
    if the_uploads_fault {
        ApiError::new(StatusCode::BAD_REQUEST, UPLOAD_FAILED).with_reason(e.detail())
    } else {
        e.retag()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unique_name_is_a_uuid_then_the_base_name() {
        let a = unique_name("holiday/Beach Day.JPG");
        let b = unique_name("C:\\photos\\Beach Day.JPG");
        assert_ne!(a, b);
        for name in [&a, &b] {
            let (uuid, rest) = name.split_at(36);
            assert_eq!(uuid::Uuid::parse_str(uuid).unwrap().get_version_num(), 4);
            assert_eq!(rest, "-Beach Day.JPG");
        }
        let key = crate::model::FileName::parse(&a).unwrap();
        assert_eq!(key.as_str(), format!("{}-beach-day.jpg", &a[..36]));
    }

    #[test]
    fn refusals_of_the_upload_are_photo_upload_failed_and_the_rest_keep_their_status() {
        for status in [400, 409, 413, 415, 422] {
            let e = ApiError::<()>::new(StatusCode::from_u16(status).unwrap(), "why");
            let r = refusal(e.retag()).into_response();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{status}");
        }
        for status in [401, 429, 500, 502, 503] {
            let e = ApiError::<()>::new(StatusCode::from_u16(status).unwrap(), "why");
            let r = refusal(e.retag());
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.detail(), "why");
        }
        let r = refusal(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too big"));
        assert_eq!(r.detail(), UPLOAD_FAILED);
    }
}
