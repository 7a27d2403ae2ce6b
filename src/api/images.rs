//! `GET /api/images`: the paginated listing.

use std::sync::Arc;

use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Header, Query},
    payload::Json,
};

use super::{ApiTags, ErrorBody, RawJson};
use crate::{app::AppState, cache::PageKey, db::Photo};

pub struct ImagesApi {
    pub state: Arc<AppState>,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "invalid_parameter")]
pub enum ListResponse {
    /// A page of photographs in id order: always a JSON array, also while the database is down.
    #[oai(status = 200)]
    Ok(
        RawJson<Vec<Photo>>,
        /// Validator for `If-None-Match`.
        #[oai(header = "ETag")]
        String,
        #[oai(header = "Cache-Control")] String,
        /// Number of photographs in all.
        #[oai(header = "X-Total-Count")]
        i64,
        /// `database`, `stale` (last good copy, database down) or `fallback` (embedded data).
        #[oai(header = "X-Data-Source")]
        String,
    ),
    /// The page has not changed since the `ETag` given in `If-None-Match`.
    #[oai(status = 304)]
    NotModified(
        #[oai(header = "ETag")] String,
        #[oai(header = "Cache-Control")] String,
    ),
    /// `limit` or `offset` is not an integer in range.
    #[oai(status = 422)]
    Invalid(Json<ErrorBody>),
}

/// Parameter errors are 422 with a message naming the parameter, as FastAPI answered.
fn invalid_parameter(e: poem::Error) -> ListResponse {
    ListResponse::Invalid(Json(ErrorBody::new(e.to_string())))
}

fn default_limit() -> i64 {
    10
}

#[OpenApi(tag = "ApiTags::Images")]
impl ImagesApi {
    /// List photographs
    ///
    /// Ordered by `id`. Answered from an in-memory cache when possible; when the database is
    /// unreachable, from the last good copy of the page or the photographs built into the server.
    #[oai(path = "/api/images", method = "get")]
    async fn list(
        &self,
        /// Page size, 1 to 100.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// Rows to skip, 0 or more.
        #[oai(default, validator(minimum(value = "0")))]
        offset: Query<i64>,
        #[oai(name = "If-None-Match")] if_none_match: Header<Option<String>>,
    ) -> ListResponse {
        let key = PageKey {
            limit: limit.0,
            offset: offset.0,
        };
        let (page, source) = self.state.listing.page(key).await;
        let cache_control = self.state.cache_control.clone();
        if if_none_match.0.as_deref().is_some_and(|v| page.matches(v)) {
            return ListResponse::NotModified(page.etag.clone(), cache_control);
        }
        ListResponse::Ok(
            RawJson::new(page.body.clone()),
            page.etag.clone(),
            cache_control,
            page.total,
            source.as_str().to_string(),
        )
    }
}
