//! `GET /api/images`: the paginated listing, and its fast path.

use std::sync::{Arc, atomic::Ordering};

use bytes::Bytes;
use poem::{
    IntoResponse, Request, Response,
    http::{HeaderName, HeaderValue, Method, header},
};
use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Header, Query},
    registry::{MetaResponses, Registry},
};

use super::{
    ApiTags, CategoryText, RawJson,
    error::{ApiError, ListErrors},
};
use crate::{
    http::state::AppState,
    model::{PageKey, Photo, Shape},
    read::cache::Page,
    read::listing::{NotServed, Source},
};

pub struct ImagesApi {
    pub state: Arc<AppState>,
}

/// A listing answer, rendered by hand: this is the hot path, and poem-openapi's derived
/// rendering parses every header name and value again per request (about 1.5 % of a cached
/// page, measured with perf). Its OpenAPI description is [`ListReplyDoc`]'s, and a test checks
/// that every header sent here is documented there.
pub enum ListReply {
    Page {
        body: Bytes,
        etag: HeaderValue,
        cache_control: HeaderValue,
        total: i64,
        source: Source,
        link: Option<String>,
        gzip: bool,
    },
    NotModified {
        etag: HeaderValue,
        cache_control: HeaderValue,
    },
}

static X_TOTAL_COUNT: HeaderName = HeaderName::from_static("x-total-count");
static X_DATA_SOURCE: HeaderName = HeaderName::from_static("x-data-source");

impl IntoResponse for ListReply {
    fn into_response(self) -> Response {
        match self {
            ListReply::Page {
                body,
                etag,
                cache_control,
                total,
                source,
                link,
                gzip,
            } => {
                let mut r = Response::builder()
                    .content_type(
                        <RawJson<Vec<Photo>> as poem_openapi::payload::Payload>::CONTENT_TYPE,
                    )
                    .body(body);
                let h = r.headers_mut();
                h.insert(header::ETAG, etag);
                h.insert(header::CACHE_CONTROL, cache_control);
                h.insert(X_TOTAL_COUNT.clone(), HeaderValue::from(total));
                h.insert(
                    X_DATA_SOURCE.clone(),
                    HeaderValue::from_static(source.as_str()),
                );
                if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
                    h.insert(header::LINK, link);
                }
                if gzip {
                    h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                }
                h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
                r
            }
            ListReply::NotModified {
                etag,
                cache_control,
            } => {
                let mut r = Response::builder()
                    .status(poem::http::StatusCode::NOT_MODIFIED)
                    .finish();
                r.headers_mut().insert(header::ETAG, etag);
                r.headers_mut().insert(header::CACHE_CONTROL, cache_control);
                r
            }
        }
    }
}

impl ApiResponse for ListReply {
    fn meta() -> MetaResponses {
        ListReplyDoc::meta()
    }

    fn register(registry: &mut Registry) {
        ListReplyDoc::register(registry);
    }
}

/// The OpenAPI description of [`ListReply`] (documentation only).
#[derive(ApiResponse)]
#[allow(dead_code)]
pub(super) enum ListReplyDoc {
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
}

pub(super) fn default_limit() -> i64 {
    PageKey::DEFAULT_LIMIT
}

#[OpenApi(tag = "ApiTags::Images")]
impl ImagesApi {
    /// List photographs
    ///
    /// Ordered by `id`. Page with `limit` + `offset`, or with `limit` + `after_id` (keyset: rows
    /// with a larger id, equally cheap at any depth; follow the `Link` header); with both,
    /// `offset` rows after `after_id` are skipped. Answered from an in-memory cache
    /// when possible; when the database is unreachable, from the last good copy of the page or
    /// the photographs built into the server.
    #[oai(path = "/api/images", method = "get")]
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
        /// Keyset pagination: only photographs with an id greater than this.
        #[oai(validator(minimum(value = "0")))]
        after_id: Query<Option<i64>>,
        /// Only this category (case-insensitive; whitespace trimmed and collapsed), at most 50
        /// characters.
        category: Query<Option<CategoryText>>,
        #[oai(name = "If-None-Match")] if_none_match: Header<Option<String>>,
        #[oai(name = "Accept-Encoding")] accept_encoding: Header<Option<String>>,
    ) -> Result<ListReply, ApiError<ListErrors>> {
        let key = PageKey::parse(
            Some(limit.0),
            offset.0,
            after_id.0,
            category.0.as_ref().map(|c| c.0.as_str()),
        )?;
        reply(
            &self.state,
            &key,
            if_none_match.0.as_deref(),
            accept_encoding.0.as_deref(),
        )
        .await
    }
}

/// The answer to a valid listing request, whichever path parsed it: the documented operation
/// above, or [`fast_listing`]. Both render through [`render`] and [`ListReply`], so they cannot
/// differ.
pub(super) async fn reply(
    state: &AppState,
    key: &PageKey,
    if_none_match: Option<&str>,
    accept_encoding: Option<&str>,
) -> Result<ListReply, ApiError<ListErrors>> {
    let (page, source) = state.listing.page(key).await.map_err(|e| match e {
        NotServed::Busy => ApiError::busy(),
        NotServed::Unsigned(e) => ApiError::new(
            poem::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("Photos are private, and storage could not sign their URLs: {e}"),
        ),
    })?;
    Ok(render(
        state,
        key,
        &page,
        source,
        if_none_match,
        accept_encoding,
    ))
}

fn render(
    state: &AppState,
    key: &PageKey,
    page: &Page,
    source: Source,
    if_none_match: Option<&str>,
    accept_encoding: Option<&str>,
) -> ListReply {
    let cache_control = state.cache_control.clone();
    let gzipped = accept_encoding
        .filter(|v| accepts_gzip(v))
        .and_then(|_| page.gzipped().cloned());
    let (body, etag, gzip) = match gzipped {
        Some(gz) => (gz, page.gzip_etag_header.clone(), true),
        None => (page.body.clone(), page.etag_header.clone(), false),
    };
    if if_none_match.is_some_and(|v| page.matches(v)) {
        return ListReply::NotModified {
            etag,
            cache_control,
        };
    }
    ListReply::Page {
        body,
        etag,
        cache_control,
        total: page.total,
        source,
        link: next_link(key, page),
        gzip,
    }
}

fn next_link(key: &PageKey, page: &Page) -> Option<String> {
    key.next_link(page.len, page.last_id)
}

/// The hot path: `GET /api/images` with a plain query is answered here, in front of the router
/// and the OpenAPI machinery (about a third of a cached page's cost). Only the parsing of the
/// query is its own: validation is [`PageKey::parse`] and rendering is [`reply`], shared with the
/// documented operation. Anything unusual (percent-encoding, an unknown or repeated parameter,
/// a value that breaks a rule) returns None and takes the documented route, which then says
/// what is wrong.
pub async fn fast_listing(state: &AppState, req: &Request) -> Option<Response> {
    let key = plain_listing_key(req)?;
    state.fast_listings.fetch_add(1, Ordering::Relaxed);
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let reply = reply(
        state,
        &key,
        header(header::IF_NONE_MATCH),
        header(header::ACCEPT_ENCODING),
    )
    .await;
    Some(match reply {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    })
}

/// [`fast_listing`] for a page that is ready at once (cached, or embedded with no database):
/// None when it is not, so the caller can set up what a request that does work needs (its
/// span) and go the longer way. Nothing on this path logs.
pub async fn ready_listing(state: &AppState, req: &Request) -> Option<Response> {
    let key = plain_listing_key(req)?;
    let (page, source) = state.listing.ready(&key).await?;
    state.fast_listings.fetch_add(1, Ordering::Relaxed);
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let reply = render(
        state,
        &key,
        &page,
        source,
        header(header::IF_NONE_MATCH),
        header(header::ACCEPT_ENCODING),
    );
    Some(reply.into_response())
}

/// The page a plain `GET /api/images` (or `/api/photos`) asks for, if the request is one.
fn plain_listing_key(req: &Request) -> Option<PageKey> {
    if req.method() != Method::GET {
        return None;
    }
    let shape = match req.uri().path() {
        "/api/images" => Shape::Records,
        "/api/photos" => Shape::Links,
        _ => return None,
    };
    let q = parse_plain_query(req.uri().query().unwrap_or(""))?;
    let key = PageKey::parse(q.limit, q.offset, q.after_id, q.category).ok()?;
    Some(key.in_shape(shape))
}

/// The parameters of a plain query, before any rule is applied.
#[derive(Debug, Default, PartialEq)]
struct PlainQuery<'a> {
    limit: Option<i64>,
    offset: Option<i64>,
    after_id: Option<i64>,
    category: Option<&'a str>,
}

/// `limit`, `offset`, `after_id` as plain digits and `category` as plain letters, digits, `-`
/// and `_`, each at most once; None for anything else.
fn parse_plain_query(query: &str) -> Option<PlainQuery<'_>> {
    let mut q = PlainQuery::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=')?;
        let number = || {
            (!value.is_empty() && value.len() <= 18 && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<i64>().ok())
                .flatten()
        };
        let repeated = match name {
            "limit" => q.limit.replace(number()?).is_some(),
            "offset" => q.offset.replace(number()?).is_some(),
            "after_id" => q.after_id.replace(number()?).is_some(),
            "category" => {
                let plain = !value.is_empty()
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !plain {
                    return None;
                }
                q.category.replace(value).is_some()
            }
            _ => return None,
        };
        if repeated {
            return None;
        }
    }
    Some(q)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_header_a_listing_sends_is_documented() {
        let documented: Vec<String> = ListReplyDoc::meta()
            .responses
            .iter()
            .flat_map(|r| r.headers.iter().map(|h| h.name.to_ascii_lowercase()))
            .collect();
        let page = ListReply::Page {
            body: Bytes::from_static(b"[]"),
            etag: HeaderValue::from_static("\"e\""),
            cache_control: HeaderValue::from_static("public"),
            total: 3,
            source: Source::Stale,
            link: Some("</api/images?limit=1&offset=1>; rel=\"next\"".into()),
            gzip: true,
        };
        let not_modified = ListReply::NotModified {
            etag: HeaderValue::from_static("\"e\""),
            cache_control: HeaderValue::from_static("public"),
        };
        for r in [page.into_response(), not_modified.into_response()] {
            for name in r.headers().keys() {
                if name == header::CONTENT_TYPE {
                    continue; // the content's media type
                }
                assert!(
                    documented.contains(&name.to_string()),
                    "{name} is not documented"
                );
            }
        }
    }

    #[test]
    fn plain_queries_are_parsed_and_anything_else_declined() {
        let q = parse_plain_query("limit=5&offset=10&category=City_2").unwrap();
        assert_eq!(
            q,
            PlainQuery {
                limit: Some(5),
                offset: Some(10),
                after_id: None,
                category: Some("City_2"),
            }
        );
        assert_eq!(parse_plain_query("").unwrap(), PlainQuery::default());
        assert_eq!(parse_plain_query("&&").unwrap(), PlainQuery::default());
        assert_eq!(parse_plain_query("after_id=7").unwrap().after_id, Some(7));
        for declined in [
            "limit",
            "limit=",
            "limit=-1",
            "limit=+1",
            "limit=1e2",
            "limit=0x10",
            "limit=1&limit=2",
            "offset=1&offset=1",
            "after_id=1&after_id=2",
            "category=a&category=b",
            "limit=9999999999999999999",
            "category=",
            "category=a%20b",
            "category=a+b",
            "other=1",
            "LIMIT=1",
        ] {
            assert_eq!(parse_plain_query(declined), None, "{declined}");
        }
        assert_eq!(
            parse_plain_query("limit=123456789012345678").unwrap().limit,
            Some(123_456_789_012_345_678),
            "18 digits still parse"
        );
    }

    #[test]
    fn gzip_is_accepted_unless_refused() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, GZIP;q=0.5"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("gzip; q=0.0"));
        assert!(!accepts_gzip("deflate, br"));
        assert!(!accepts_gzip(""));
    }
}
