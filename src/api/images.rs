//! `GET /api/images`: the paginated listing.

use std::sync::Arc;

use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Header, Query},
    payload::Json,
};

use super::{ApiTags, ErrorBody, RawJson};
use bytes::Bytes;
use poem::{
    IntoResponse, Request, Response,
    http::{HeaderValue, Method, StatusCode, header},
};
use poem_openapi::payload::Payload;

use crate::{
    app::AppState,
    cache::{Page, PageKey},
    db::Photo,
    imaging,
    listing::{Busy, Source},
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
        /// `gzip` when the client accepts it and the page is worth compressing.
        #[oai(header = "Content-Encoding")]
        Option<String>,
        #[oai(header = "Vary")] String,
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
    /// The database is up but every connection stayed busy for `database.queue_timeout_ms`, and
    /// this page was never served before. Retry shortly.
    #[oai(status = 503)]
    Busy(Json<ErrorBody>, #[oai(header = "Retry-After")] u32),
}

const BUSY: &str = "The database is busy; try again shortly";

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
        #[oai(name = "Accept-Encoding")] accept_encoding: Header<Option<String>>,
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
        let Ok(a) = answer(
            &self.state,
            &key,
            if_none_match.0.as_deref(),
            accept_encoding.0.as_deref(),
        )
        .await
        else {
            return ListResponse::Busy(Json(ErrorBody::new(BUSY)), 1);
        };
        let cache_control = self.state.cache_control.clone();
        if a.not_modified {
            return ListResponse::NotModified(a.etag, cache_control);
        }
        ListResponse::Ok(
            RawJson::new(a.body),
            a.etag,
            cache_control,
            a.page.total,
            a.source.as_str().to_string(),
            a.link,
            a.gzip.then(|| "gzip".to_string()),
            "Accept-Encoding".to_string(),
        )
    }
}

/// Everything a listing response says, whichever path parsed the request: the documented
/// operation above, or [`fast_listing`].
struct Answer {
    page: Arc<Page>,
    source: Source,
    not_modified: bool,
    /// The bytes to send: the JSON, or its gzip copy.
    body: Bytes,
    gzip: bool,
    etag: String,
    link: Option<String>,
}

async fn answer(
    state: &AppState,
    key: &PageKey,
    if_none_match: Option<&str>,
    accept_encoding: Option<&str>,
) -> Result<Answer, Busy> {
    let (page, source) = state.listing.page(key).await?;
    let gzipped = accept_encoding
        .filter(|v| accepts_gzip(v))
        .and_then(|_| page.gzipped().cloned());
    let (body, etag, gzip) = match gzipped {
        Some(gz) => (gz, page.gzip_etag(), true),
        None => (page.body.clone(), page.etag.clone(), false),
    };
    Ok(Answer {
        not_modified: if_none_match.is_some_and(|v| page.matches(v)),
        link: next_link(key, &page),
        page,
        source,
        body,
        gzip,
        etag,
    })
}

/// The hot path: `GET /api/images` with plain, valid parameters is answered here, in front of the
/// router and the OpenAPI machinery (about a third of a cached page's cost). Anything unusual
/// (an error to report, percent-encoding, an unknown or repeated parameter) returns None and
/// takes the documented route, which stays the single source of every error message. Both
/// render from [`answer`]; a test checks they send the same bytes and headers.
pub async fn fast_listing(state: &AppState, req: &Request) -> Option<Response> {
    if req.method() != Method::GET || req.uri().path() != "/api/images" {
        return None;
    }
    let key = parse_plain_query(req.uri().query().unwrap_or(""))?;
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let Ok(a) = answer(
        state,
        &key,
        header(header::IF_NONE_MATCH),
        header(header::ACCEPT_ENCODING),
    )
    .await
    else {
        let mut busy = Json(ErrorBody::new(BUSY))
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .into_response();
        busy.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Some(busy);
    };
    let builder = Response::builder()
        .header(header::ETAG, a.etag)
        .header(header::CACHE_CONTROL, state.cache_control.as_str());
    if a.not_modified {
        return Some(builder.status(StatusCode::NOT_MODIFIED).finish());
    }
    let mut builder = builder
        .content_type(RawJson::<Vec<Photo>>::CONTENT_TYPE)
        .header("x-total-count", a.page.total)
        .header("x-data-source", a.source.as_str());
    if let Some(link) = a.link {
        builder = builder.header(header::LINK, link);
    }
    if a.gzip {
        builder = builder.header(header::CONTENT_ENCODING, "gzip");
    }
    Some(builder.header(header::VARY, "Accept-Encoding").body(a.body))
}

/// `limit`, `offset`, `after_id` and `category` as plain digits and letters, each at most once,
/// within range; None for anything else.
fn parse_plain_query(query: &str) -> Option<PageKey> {
    let (mut limit, mut offset, mut after_id, mut category) = (None, None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=')?;
        let number = || {
            (!value.is_empty() && value.len() <= 18 && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<i64>().ok())
                .flatten()
        };
        let slot = match name {
            "limit" => limit.replace(number().filter(|n| (1..=100).contains(n))?),
            "offset" => offset.replace(number()?),
            "after_id" => after_id.replace(number()?),
            "category" => {
                let plain = (1..=50).contains(&value.len())
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !plain {
                    return None;
                }
                category
                    .replace(Arc::<str>::from(value.to_ascii_lowercase()))
                    .map(|_| 0)
            }
            _ => return None,
        };
        if slot.is_some() {
            return None; // repeated
        }
    }
    if offset.is_some() && after_id.is_some() {
        return None;
    }
    Some(PageKey {
        limit: limit.unwrap_or_else(default_limit),
        offset: offset.unwrap_or(0),
        after_id,
        category,
    })
}

/// Whether an `Accept-Encoding` value accepts gzip (and does not refuse it with `q=0`).
fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>() == Ok(0.0)
            })
        });
        (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
    })
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
