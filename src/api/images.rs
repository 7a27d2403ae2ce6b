//! `GET /api/images`: the paginated listing.

use std::sync::Arc;

use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Header, Query},
    payload::Json,
};

use super::{ApiTags, ErrorBody, RawJson};
use crate::{
    app::AppState,
    cache::{Page, PageKey},
    db::Photo,
    imaging,
    storage::encode_key,
};

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
        /// Number of photographs in all (in the category, when filtered).
        #[oai(header = "X-Total-Count")]
        i64,
        /// `database`, `stale` (last good copy, database down) or `fallback` (embedded data).
        #[oai(header = "X-Data-Source")]
        String,
        /// `<...>; rel="next"`: the following page, in the same form (offset or keyset). Absent
        /// on a page shorter than `limit`, which is the last.
        #[oai(header = "Link")]
        Option<String>,
    ),
    /// The page has not changed since the `ETag` given in `If-None-Match`.
    #[oai(status = 304)]
    NotModified(
        #[oai(header = "ETag")] String,
        #[oai(header = "Cache-Control")] String,
    ),
    /// A parameter is not an integer in range, or `offset` and `after_id` are both given.
    #[oai(status = 422)]
    Invalid(Json<ErrorBody>),
}

/// Parameter errors are 422 with a message naming the parameter, as FastAPI answered.
fn invalid_parameter(e: poem::Error) -> ListResponse {
    invalid(e.to_string())
}

fn invalid(detail: impl Into<String>) -> ListResponse {
    ListResponse::Invalid(Json(ErrorBody::new(detail)))
}

fn default_limit() -> i64 {
    10
}

#[OpenApi(tag = "ApiTags::Images")]
impl ImagesApi {
    /// List photographs
    ///
    /// Ordered by `id`. Page with `limit` + `offset`, or with `limit` + `after_id` (keyset: rows
    /// with a larger id, equally cheap at any depth; follow the `Link` header). Answered from an
    /// in-memory cache when possible; when the database is unreachable, from the last good copy
    /// of the page or the photographs built into the server.
    #[oai(path = "/api/images", method = "get")]
    async fn list(
        &self,
        /// Page size, 1 to 100.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "100"))
        )]
        limit: Query<i64>,
        /// Rows to skip, 0 or more (default 0). Not with `after_id`.
        #[oai(validator(minimum(value = "0")))]
        offset: Query<Option<i64>>,
        /// Keyset pagination: only photographs with an id greater than this. Not with `offset`.
        #[oai(validator(minimum(value = "0")))]
        after_id: Query<Option<i64>>,
        /// Only this category (case-insensitive).
        category: Query<Option<String>>,
        #[oai(name = "If-None-Match")] if_none_match: Header<Option<String>>,
    ) -> ListResponse {
        if offset.0.is_some() && after_id.0.is_some() {
            return invalid("Use either `offset` or `after_id`, not both");
        }
        let category = match category
            .0
            .as_deref()
            .map(|c| imaging::normalise_category(c, &[]))
        {
            None => None,
            Some(Ok(c)) => Some(Arc::<str>::from(c)),
            Some(Err(e)) => return invalid(format!("parameter `category`: {e}")),
        };
        let key = PageKey {
            limit: limit.0,
            offset: offset.0.unwrap_or(0),
            after_id: after_id.0,
            category,
        };
        let (page, source) = self.state.listing.page(&key).await;
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
            next_link(&key, &page),
        )
    }
}

/// The `Link` header for the page after `page`, or None if `page` is the last.
fn next_link(key: &PageKey, page: &Page) -> Option<String> {
    if page.len < usize::try_from(key.limit).unwrap_or(usize::MAX) || page.len == 0 {
        return None;
    }
    let mut url = match key.after_id {
        Some(_) => format!("/api/images?after_id={}&limit={}", page.last_id?, key.limit),
        None => format!(
            "/api/images?limit={}&offset={}",
            key.limit,
            key.offset + page.len as i64
        ),
    };
    if let Some(c) = &key.category {
        url.push_str("&category=");
        url.push_str(&encode_key(c));
    }
    Some(format!("<{url}>; rel=\"next\""))
}
