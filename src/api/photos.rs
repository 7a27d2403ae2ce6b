//! `GET`, `PATCH` and `DELETE /api/images/{id}` (admin), and `GET /api/categories`.

use std::sync::Arc;

use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, payload::Json};

use super::{
    ApiTags, RawJson,
    error::{ApiError, CategoryErrors, PhotoErrors},
    upload::{AdminKey, require_admin_key},
};
use crate::{manage::CategoryCount, model::Photo, state::AppState};

pub struct PhotosApi {
    pub state: Arc<AppState>,
}

/// What `PATCH` may change.
#[derive(Debug, Object)]
pub struct PhotoChange {
    /// The new category, checked as uploads check it (trimmed, lower-cased, 1 to 50
    /// characters, in `upload.allowed_categories` if that is set).
    pub category: Option<String>,
    /// Not supported: a rename would move the object. Upload under the new name and delete
    /// this photo instead.
    pub filename: Option<String>,
}

#[derive(ApiResponse)]
pub enum Deleted {
    /// The photo is gone from the table; its objects (the photo and its variants) are removed
    /// now, or by the clean-up journal as soon as storage answers.
    #[oai(status = 204)]
    NoContent,
}

#[OpenApi(tag = "ApiTags::Photos")]
impl PhotosApi {
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
        Ok(Json(self.state.uploader.photo(id.0).await?))
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
        change: Json<PhotoChange>,
    ) -> Result<Json<Photo>, ApiError<PhotoErrors>> {
        if change.filename.is_some() {
            return Err(ApiError::new(
                poem::http::StatusCode::BAD_REQUEST,
                "Renaming is not supported: upload the photo under the new name, then delete \
                 this one",
            ));
        }
        let Some(category) = &change.category else {
            return Err(ApiError::new(
                poem::http::StatusCode::BAD_REQUEST,
                "Nothing to change: send {\"category\": \"...\"}",
            ));
        };
        Ok(Json(
            self.state.uploader.set_category(id.0, category).await?,
        ))
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
        self.state.uploader.delete(id.0).await?;
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
        Ok(RawJson::new(self.state.uploader.categories().await?))
    }
}
