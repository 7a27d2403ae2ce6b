//! `GET`, `PATCH` and `DELETE /api/images/{id}` (admin), `GET /api/auth` (is this the admin
//! key?), and `GET /api/categories`.

use std::sync::Arc;

use poem::{FromRequest, Request, RequestBody, http::StatusCode};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Object, OpenApi,
    param::Path,
    payload::{Json, Payload},
    registry::{MetaMediaType, MetaRequest, Registry},
    types::Type,
};

use super::{
    ApiTags, CategoryText, RawJson,
    auth::{AdminKey, require_admin_key},
    error::{ApiError, CategoryErrors, ChangeErrors, KeyErrors, PhotoErrors},
};
use crate::{
    http::state::AppState,
    model::{CategoryCount, Photo},
    write::error::UploadError,
};

pub struct PhotosApi {
    pub state: Arc<AppState>,
}

/// What `PATCH` changes: the category, the one field that can change (a rename would move the
/// object: upload under the new name and delete this photo instead). Documentation: the body
/// is read as [`ChangeBody`].
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PhotoChange {
    /// The new category, checked as uploads check it (trimmed, whitespace collapsed,
    /// lower-cased; in `upload.allowed_categories` if that is set).
    category: CategoryText,
}

/// The `PATCH` body, read by hand so that each refusal says what to send (poem-openapi's own
/// messages name its types), documented as [`PhotoChange`]: a JSON object with a string
/// `category` and no other field.
pub struct ChangeBody {
    category: String,
}

impl<'a> ApiExtractor<'a> for ChangeBody {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        PhotoChange::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: Json::<PhotoChange>::CONTENT_TYPE,
                schema: PhotoChange::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _: ExtractParamOptions<()>,
    ) -> poem::Result<Self> {
        let json = request
            .content_type()
            .is_some_and(Json::<PhotoChange>::check_content_type);
        if !json {
            return Err(ApiError::<()>::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "The body must be JSON (Content-Type: application/json)",
            )
            .into());
        }
        let bytes = <Vec<u8> as FromRequest>::from_request(request, body).await?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| bad_change(&format!("The body is not JSON ({e})")))?;
        ChangeBody::parse(value).map_err(|e| bad_change(&e))
    }
}

impl ChangeBody {
    fn parse(value: serde_json::Value) -> Result<ChangeBody, String> {
        const SEND: &str = "send {\"category\": \"...\"}";
        let serde_json::Value::Object(mut fields) = value else {
            return Err(format!("The body is not a JSON object: {SEND}"));
        };
        if fields.contains_key("filename") {
            return Err(
                "Renaming is not supported: upload the photo under the new name, then \
                        delete this one"
                    .into(),
            );
        }
        if let Some(other) = fields.keys().find(|k| *k != "category") {
            return Err(format!(
                "`{other}` cannot be changed: only `category` can ({SEND})"
            ));
        }
        match fields.remove("category") {
            Some(serde_json::Value::String(category)) => Ok(ChangeBody { category }),
            Some(other) => Err(format!("`category` must be a string, not {other}")),
            None => Err(format!("Nothing to change: {SEND}")),
        }
    }
}

fn bad_change(detail: &str) -> poem::Error {
    ApiError::<()>::new(StatusCode::BAD_REQUEST, detail).into()
}

#[derive(ApiResponse)]
pub enum Deleted {
    /// The photo is gone from the table; its objects (the photo and its variants) are removed
    /// now, or by the clean-up journal as soon as storage answers.
    #[oai(status = 204)]
    NoContent,
}

#[derive(ApiResponse)]
pub enum KeyChecked {
    /// The key is the admin key.
    #[oai(status = 204)]
    Right,
}

#[OpenApi(tag = "ApiTags::Photos")]
impl PhotosApi {
    /// Check the admin key
    ///
    /// 204 when `X-API-Key` is the admin key, 401 when it is not: what a page asks when signing
    /// in (`/admin` does), with nothing read or changed. Wrong keys count against the address
    /// like on every admin route.
    #[oai(path = "/api/auth", method = "get", transform = "require_admin_key")]
    async fn auth(&self, _key: AdminKey) -> Result<KeyChecked, ApiError<KeyErrors>> {
        Ok(KeyChecked::Right)
    }

    /// One photo
    #[oai(
        path = "/api/images/:id",
        method = "get",
        transform = "require_admin_key"
    )]
    async fn get(
        &self,
        _key: AdminKey,
        id: Path<i32>,
    ) -> Result<Json<Photo>, ApiError<PhotoErrors>> {
        let photo = self.state.manager.photo(id.0).await?;
        let signed = self.state.signed(vec![photo]).await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Photos are private, and storage could not sign their URLs: {e}"),
            )
        })?;
        Ok(Json(signed.into_iter().next().expect("one in, one out")))
    }

    /// Change a photo's category
    ///
    /// Example: `{"category": "city"}`. Cached listing pages are dropped at once.
    #[oai(
        path = "/api/images/:id",
        method = "patch",
        transform = "require_admin_key"
    )]
    async fn patch(
        &self,
        _key: AdminKey,
        id: Path<i32>,
        change: ChangeBody,
    ) -> Result<Json<Photo>, ApiError<ChangeErrors>> {
        let category = &change.category;
        let photo = self.state.manager.set_category(id.0, category).await?;
        Ok(Json(self.state.written_one(photo).await))
    }

    /// Delete a photo
    ///
    /// Removes the row and every object of the photo (the photo and its variants); the name can
    /// be uploaded again. Cached listing pages are dropped at once.
    #[oai(
        path = "/api/images/:id",
        method = "delete",
        transform = "require_admin_key"
    )]
    async fn delete(
        &self,
        _key: AdminKey,
        id: Path<i32>,
    ) -> Result<Deleted, ApiError<PhotoErrors>> {
        self.state.manager.delete(id.0).await?;
        Ok(Deleted::NoContent)
    }

    /// Categories with their photo counts
    ///
    /// Public, like the listing: `[{"category": "nature", "count": 12}, ...]`, lower-cased (as
    /// `?category=` matches) and in name order, so categories the original stored as
    /// `Landscape` and `landscape` are counted together. Cached like listing pages; every
    /// write drops it at once.
    #[oai(path = "/api/categories", method = "get")]
    async fn categories(&self) -> Result<RawJson<Vec<CategoryCount>>, ApiError<CategoryErrors>> {
        match self.state.listing.categories().await {
            Ok(Some(body)) => Ok(RawJson::new(body)),
            Ok(None) => Err(UploadError::DatabaseUnavailable(
                "No database configured: set DATABASE_URL".into(),
            )
            .into()),
            Err(e) => Err(UploadError::from(e).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::ChangeBody;

    #[test]
    fn a_change_is_one_string_category_and_nothing_else() {
        let parse = |v| ChangeBody::parse(v).map(|c| c.category);
        assert_eq!(parse(json!({"category": " City "})).unwrap(), " City ");
        let refused = [
            (json!({}), "Nothing to change"),
            (json!({"category": 5}), "must be a string, not 5"),
            (json!({"category": null}), "must be a string, not null"),
            (json!({"filename": "a.jpg"}), "Renaming is not supported"),
            (json!({"category": "x", "filename": "a.jpg"}), "Renaming"),
            (json!({"category": "x", "id": 3}), "`id` cannot be changed"),
            (json!({"id": 3, "category": "x"}), "`id` cannot be changed"),
            (json!("city"), "not a JSON object"),
            (json!(null), "not a JSON object"),
        ];
        for (body, needle) in refused {
            let e = parse(body.clone()).unwrap_err();
            assert!(e.contains(needle), "{body}: {e}");
        }
    }
}
