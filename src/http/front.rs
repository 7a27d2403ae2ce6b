//! The one layer in front of every route: request data, trailing slashes, the request's span and
//! id, CORS, JSON errors, panics, the request log, and the fast path for listing pages.
//!
//! Why one hand-written layer instead of poem's `NormalizePath`, `Cors`, `Tracing`,
//! `CatchPanic`, `catch_all_error` and `data`: each poem layer moves the request future once more
//! and allocates on its own. With seven of them a cached page cost about three times a bare poem
//! handler (perf: memmove and malloc at the top of the profile; figures in bench/results.md).

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header},
};
use tracing::Instrument;

use crate::http::{api::error::ApiError, state::AppState};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_DATA_SOURCE: HeaderName = HeaderName::from_static("x-data-source");

/// Headers a browser may read on a cross-origin response.
const EXPOSE: &str = "etag, x-total-count, x-data-source, link, retry-after, x-request-id";
const PUBLIC_METHODS: &str = "GET, HEAD, OPTIONS";
const ADMIN_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
const ALLOW_HEADERS: &str = "content-type, x-api-key, if-none-match";

/// Who may call what from a browser (the contract's defect 8). Public reads are public data,
/// answered to every origin with `Access-Control-Allow-Origin: *` and never with credentials, as
/// object stores and CDNs answer. Admin requests (any write, or anything carrying `X-API-Key`)
/// are answered only to the origins in `CORS_ORIGINS`, or to all with `CORS_ORIGINS=*`. A
/// request without `Origin` (curl, scripts, servers) is never refused for CORS reasons.
#[derive(Debug, Clone)]
pub enum CorsPolicy {
    /// `CORS_ORIGINS=*`: every route, every origin.
    AnyOrigin,
    /// Admin routes only from these origins, exactly as browsers send them (no trailing slash).
    Listed(Vec<HeaderValue>),
}

impl CorsPolicy {
    pub fn from_settings(s: &crate::config::ServerSettings) -> CorsPolicy {
        if s.cors_any_origin() {
            return CorsPolicy::AnyOrigin;
        }
        CorsPolicy::Listed(
            s.cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
        )
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            CorsPolicy::AnyOrigin => "every route answers every origin (CORS_ORIGINS=*)".into(),
            CorsPolicy::Listed(list) if list.is_empty() => {
                "public reads answer every origin; admin routes refuse browser requests from \
                 every origin (set CORS_ORIGINS to allow an admin page)"
                    .into()
            }
            CorsPolicy::Listed(list) => format!(
                "public reads answer every origin; admin routes answer only {}",
                list.iter()
                    .filter_map(|o| o.to_str().ok())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The `Access-Control-Allow-Origin` an admin request from `origin` gets, or None (refused).
    fn admin_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match self {
            CorsPolicy::AnyOrigin => Some(HeaderValue::from_static("*")),
            CorsPolicy::Listed(list) => list.contains(origin).then(|| origin.clone()),
        }
    }
}

/// Whether a request is an admin one: a write, or anything presenting the API key. A preflight
/// is judged by the request it announces.
fn is_admin(req: &Request) -> bool {
    let h = req.headers();
    if req.method() == Method::OPTIONS
        && let Some(m) = h.get(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let announced_key = h
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|name| name.trim().eq_ignore_ascii_case("x-api-key"));
        return announced_key || !(m == "GET" || m == "HEAD");
    }
    !(req.method() == Method::GET || req.method() == Method::HEAD) || h.contains_key("x-api-key")
}

pub struct Front<E> {
    inner: E,
    state: Arc<AppState>,
    cors: CorsPolicy,
    /// Answer plain listing requests before the router (off only in tests that compare the two).
    fast_path: bool,
}

impl<E> Front<E> {
    pub fn new(inner: E, state: Arc<AppState>) -> Front<E> {
        let cors = CorsPolicy::from_settings(&state.settings.server);
        Front {
            inner,
            state,
            cors,
            fast_path: true,
        }
    }

    /// Every listing request through the documented operation.
    pub fn without_fast_path(mut self) -> Front<E> {
        self.fast_path = false;
        self
    }
}

/// The request's id: the client's (or a proxy's) `X-Request-Id` when it is a sane token,
/// otherwise a new one. Sent back as `X-Request-Id` and carried by every log line the request
/// causes.
fn request_id(req: &Request) -> HeaderValue {
    if let Some(v) = req.headers().get(&X_REQUEST_ID)
        && (1..=64).contains(&v.len())
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return v.clone();
    }
    // Unique per request (an odd multiplier is a bijection on u64), unguessable across
    // restarts, and cheap: no hashing, no formatting.
    static SEED: LazyLock<u64> = LazyLock::new(|| RandomState::new().hash_one(std::process::id()));
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ *SEED;
    let mut hex = [0u8; 16];
    for (i, b) in hex.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xF) as usize];
    }
    HeaderValue::from_bytes(&hex).expect("hex is a valid header value")
}

struct Finished<'a>(&'a AtomicU64);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// The route a path belongs to, for the span (a fixed set, so logs group by it), and the methods
/// it answers, for the `Allow` header of a 405.
fn route_of(path: &str) -> (&'static str, &'static str) {
    const READ: &str = "GET, HEAD";
    match path {
        "/" => ("/", READ),
        "/api/images" => ("/api/images", READ),
        "/api/photos" => ("/api/photos", "GET, HEAD, POST"),
        "/api/upload" => ("/api/upload", "POST"),
        "/api/upload-batch" => ("/api/upload-batch", "POST"),
        "/api/health" => ("/api/health", READ),
        "/api/portfolio" => ("/api/portfolio", READ),
        "/api/categories" => ("/api/categories", READ),
        "/metrics" => ("/metrics", READ),
        "/api/auth" => ("/api/auth", READ),
        "/admin" => ("/admin", READ),
        p if p.strip_prefix("/admin/").is_some_and(|f| !f.contains('/')) => ("/admin/{file}", READ),
        p if p
            .strip_prefix("/api/images/")
            .is_some_and(|id| !id.contains('/')) =>
        {
            ("/api/images/{id}", "GET, HEAD, PATCH, DELETE")
        }
        "/openapi.json" => ("/openapi.json", READ),
        p if p.starts_with("/media/") => ("/media/{filename}", READ),
        p if p == "/docs" || p.starts_with("/docs/") => ("/docs", READ),
        _ => ("unmatched", READ),
    }
}

impl<E: Endpoint> Endpoint for Front<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let started = Instant::now();
        trim_trailing_slash(&mut req);
        let id = request_id(&req);
        // Counted when the handling ends, also when the client left and the future is dropped.
        let _finished = Finished(&self.state.requests_finished);
        // The hot path: a public read of a listing page that is ready (cached). Nothing on it
        // logs but its DEBUG request line, which names the id itself, so it skips the span: the
        // span cost about 5 % of a cached page (perf, bench/results.md).
        if self.fast_path
            && req.method() == Method::GET
            && !is_admin(&req)
            && let Some(mut r) = crate::http::api::ready_listing(&self.state, &req).await
        {
            allow(&mut r, HeaderValue::from_static("*"));
            let status = r.status();
            r.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
            self.count(
                route_of(req.uri().path()).0,
                status,
                r.headers().get(&X_DATA_SOURCE),
                started.elapsed(),
            );
            log_request(
                req.method(),
                req.uri(),
                status,
                started.elapsed(),
                Some(&id),
                Some(&self.state.metrics.log_suppressed),
            );
            return Ok(r);
        }
        let span = tracing::info_span!(
            "request",
            method = %req.method(),
            route = %route_of(req.uri().path()).0,
            id = %id.to_str().unwrap_or_default(),
        );
        let method = req.method().clone();
        let uri = req.uri().clone();
        let mut response = self.handle(req).instrument(span.clone()).await;
        if response.status() == StatusCode::METHOD_NOT_ALLOWED
            && !response.headers().contains_key(header::ALLOW)
        {
            let allow = route_of(uri.path()).1;
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response.headers_mut().insert(X_REQUEST_ID.clone(), id);
        self.count(
            route_of(uri.path()).0,
            response.status(),
            response.headers().get(&X_DATA_SOURCE),
            started.elapsed(),
        );
        let suppressed = &self.state.metrics.log_suppressed;
        span.in_scope(|| {
            log_request(
                &method,
                &uri,
                response.status(),
                started.elapsed(),
                None,
                Some(suppressed),
            )
        });
        Ok(response)
    }
}

impl<E> Front<E> {
    /// `http_requests_total`, its latency, and listing answers by `X-Data-Source`.
    fn count(
        &self,
        route: &str,
        status: StatusCode,
        source: Option<&HeaderValue>,
        elapsed: Duration,
    ) {
        self.state.metrics.request(
            route,
            status.as_u16(),
            source.map(HeaderValue::as_bytes),
            elapsed,
        );
    }
}

impl<E: Endpoint> Front<E> {
    /// CORS, then the route.
    async fn handle(&self, req: Request) -> Response {
        let origin = req.headers().get(header::ORIGIN).cloned();
        let preflight = req.method() == Method::OPTIONS
            && origin.is_some()
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if !is_admin(&req) {
            // Public data: the same answer for every origin, so no `Vary: Origin` is needed and
            // a shared cache may keep one copy.
            let mut r = if preflight {
                preflight_response(PUBLIC_METHODS)
            } else {
                self.respond(req).await
            };
            allow(&mut r, HeaderValue::from_static("*"));
            return r;
        }
        let Some(origin) = origin else {
            return self.respond(req).await; // curl, scripts: CORS is for browsers
        };
        if !preflight && same_origin(&req, &origin) {
            // The server's own pages (`/admin`): browsers send `Origin` on a same-origin write
            // too, and read the answer without any CORS header.
            let mut r = self.respond(req).await;
            if matches!(self.cors, CorsPolicy::Listed(_)) {
                add_vary_origin(&mut r);
            }
            return r;
        }
        let mut r = match self.cors.admin_origin(&origin) {
            Some(allowed) => {
                let mut r = if preflight {
                    preflight_response(ADMIN_METHODS)
                } else {
                    self.respond(req).await
                };
                allow(&mut r, allowed);
                r
            }
            None => refuse(&req, &origin),
        };
        // With a list, the answer differs by Origin: say so to caches, keeping any Vary the
        // handler set.
        if matches!(self.cors, CorsPolicy::Listed(_)) {
            add_vary_origin(&mut r);
        }
        r
    }

    async fn respond(&self, mut req: Request) -> Response {
        if self.fast_path
            && let Some(response) = crate::http::api::fast_listing(&self.state, &req).await
        {
            return response;
        }
        if let Err(refused) = limit_json_body(&mut req).await {
            return refused.into_response();
        }
        req.extensions_mut().insert(self.state.clone());
        match std::panic::AssertUnwindSafe(self.inner.call(req))
            .catch_unwind()
            .await
        {
            Ok(Ok(r)) => r.into_response(),
            Ok(Err(e)) => ApiError::<()>::from(e).into_response(),
            Err(_) => ApiError::<()>::internal(&"handler panicked").into_response(),
        }
    }
}

/// The largest JSON body (an edit is a few fields: a category of 50 characters).
pub const JSON_BODY_LIMIT: usize = 64 * 1024;

/// Bodies of the JSON routes (`PATCH`, `PUT`) are read here, at most [`JSON_BODY_LIMIT`]
/// bytes: a larger declared length is a 413 before anything is read, and a chunked body is cut
/// off at the limit. Uploads (multipart `POST`) have limits of their own.
async fn limit_json_body(req: &mut Request) -> Result<(), ApiError<()>> {
    if !(req.method() == Method::PATCH || req.method() == Method::PUT) {
        return Ok(());
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("The request body is larger than the {JSON_BODY_LIMIT}-byte limit for JSON"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > JSON_BODY_LIMIT as u64) {
        return Err(too_large());
    }
    match req.take_body().into_bytes_limit(JSON_BODY_LIMIT).await {
        Ok(bytes) => {
            req.set_body(bytes);
            Ok(())
        }
        Err(poem::error::ReadBodyError::PayloadTooLarge) => Err(too_large()),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Cannot read the request body: {e}"),
        )),
    }
}

/// Whether `origin` is the server's own: its host and port are the request's `Host` (a default
/// port written or not). A browser sets both itself, so a page of another site cannot pass for
/// this one; a script could, but CORS does not stand in a script's way anyway. Behind a reverse
/// proxy, the proxy must pass the `Host` it was asked for (nginx: `proxy_set_header Host $host`).
fn same_origin(req: &Request, origin: &HeaderValue) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let (authority, default_port) = if let Some(rest) = origin.strip_prefix("https://") {
        (rest, ":443")
    } else if let Some(rest) = origin.strip_prefix("http://") {
        (rest, ":80")
    } else {
        return false; // `null` (a sandboxed frame, a file), or another scheme
    };
    let host = host.strip_suffix(default_port).unwrap_or(host);
    !authority.is_empty() && authority.eq_ignore_ascii_case(host)
}

/// A cross-origin admin request from an origin not in `CORS_ORIGINS`.
fn refuse(req: &Request, origin: &HeaderValue) -> Response {
    tracing::warn!(
        target: "portfolio_server::http",
        origin = %String::from_utf8_lossy(origin.as_bytes()),
        method = %req.method(),
        uri = %req.uri(),
        "refused a cross-origin admin request: this origin is not in CORS_ORIGINS \
         (server.cors_origins); add it there to let that page upload or edit"
    );
    ApiError::<()>::new(
        StatusCode::FORBIDDEN,
        "Origin not allowed: admin routes accept browser requests only from the origins in \
         CORS_ORIGINS",
    )
    .into_response()
}

fn preflight_response(methods: &'static str) -> Response {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::ACCESS_CONTROL_ALLOW_METHODS, methods)
        .header(header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS)
        .header(header::ACCESS_CONTROL_MAX_AGE, "600")
        .finish()
}

/// Lets a browser read `response` from a page of `origin` (`*` or one origin). Never with
/// credentials: the API key travels in a header, not a cookie.
fn allow(response: &mut Response, origin: HeaderValue) {
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE),
    );
}

fn add_vary_origin(response: &mut Response) {
    let headers = response.headers_mut();
    let vary = match headers.get(header::VARY).and_then(|v| v.to_str().ok()) {
        None => HeaderValue::from_static("Origin"),
        Some(v) if v.to_ascii_lowercase().contains("origin") => return,
        Some(v) => match HeaderValue::from_str(&format!("{v}, Origin")) {
            Ok(v) => v,
            Err(_) => return,
        },
    };
    headers.insert(header::VARY, vary);
}

/// Successful reads are logged at DEBUG; errors, writes and slow requests at INFO or above, so a
/// busy listing does not spend its time writing log lines. `RUST_LOG=portfolio_server=debug`
/// shows every request.
/// Client errors logged in one second at most; the rest are counted, and said in one line.
const CLIENT_ERROR_LINES_PER_SECOND: u64 = 20;
/// The longest URI a log line carries; the rest is summarised by its length.
const LOGGED_URI_CHARS: usize = 200;

/// A per-second budget of log lines for client errors (4xx), which anyone can cause at will:
/// a flood of them must not flood the log.
struct ClientErrorLines {
    /// The second (since the first call) the budget is for.
    second: AtomicU64,
    used: AtomicU64,
    suppressed: AtomicU64,
}

static CLIENT_ERROR_LINES: ClientErrorLines = ClientErrorLines {
    second: AtomicU64::new(0),
    used: AtomicU64::new(0),
    suppressed: AtomicU64::new(0),
};

impl ClientErrorLines {
    /// Whether a line may be written now, and how many were left out in the second(s) before,
    /// to be said first.
    fn take(&self, now_second: u64) -> (bool, u64) {
        let mut reported = 0;
        let second = self.second.load(Ordering::Acquire);
        if second != now_second
            && self
                .second
                .compare_exchange(second, now_second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.used.store(0, Ordering::Release);
            reported = self.suppressed.swap(0, Ordering::AcqRel);
        }
        let allowed = self.used.fetch_add(1, Ordering::AcqRel) < CLIENT_ERROR_LINES_PER_SECOND;
        if !allowed {
            self.suppressed.fetch_add(1, Ordering::AcqRel);
        }
        (allowed, reported)
    }
}

/// The URI as logged: at most [`LOGGED_URI_CHARS`] characters, then its full length.
fn short_uri(uri: &Uri) -> std::borrow::Cow<'_, str> {
    let full = uri.path_and_query().map_or("/", |p| p.as_str());
    match full.char_indices().nth(LOGGED_URI_CHARS) {
        None => full.into(),
        Some((cut, _)) => format!("{}… ({} bytes)", &full[..cut], full.len()).into(),
    }
}

fn log_request(
    method: &Method,
    uri: &Uri,
    status: StatusCode,
    elapsed: Duration,
    id: Option<&HeaderValue>,
    suppressed: Option<&prometheus::IntCounter>,
) {
    let ms = elapsed.as_secs_f64() * 1000.0;
    let status = status.as_u16();
    // Without a span (the hot path), the line names the request id itself.
    let id = id.and_then(|v| v.to_str().ok());
    if (400..500).contains(&status) {
        static START: LazyLock<Instant> = LazyLock::new(Instant::now);
        let (allowed, before) = CLIENT_ERROR_LINES.take(START.elapsed().as_secs());
        if before > 0 {
            tracing::info!(
                target: "portfolio_server::http",
                suppressed = before,
                "{before} more client-error request lines suppressed (at most \
                 {CLIENT_ERROR_LINES_PER_SECOND} a second are logged)"
            );
        }
        if !allowed {
            if let Some(counter) = suppressed {
                counter.inc();
            }
            return;
        }
    }
    // `short_uri` runs only when the line is written: the hot path's debug line is usually off.
    if status >= 500 {
        tracing::warn!(target: "portfolio_server::http", %method, uri = %short_uri(uri), status, ms, id, "request");
    } else if status >= 400
        || !(method == Method::GET || method == Method::HEAD || method == Method::OPTIONS)
        || elapsed > Duration::from_secs(1)
    {
        tracing::info!(target: "portfolio_server::http", %method, uri = %short_uri(uri), status, ms, id, "request");
    } else {
        tracing::debug!(target: "portfolio_server::http", %method, uri = %short_uri(uri), status, ms, id, "request");
    }
}

/// `/api/health/` is `/api/health`. Allocates only when there is something to trim.
fn trim_trailing_slash(req: &mut Request) {
    let path = req.uri().path();
    if path.len() <= 1 || !path.ends_with('/') {
        return;
    }
    let trimmed = match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{trimmed}?{q}"),
        None => trimmed.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use poem::{
        Request,
        http::{HeaderValue, header},
    };

    use super::same_origin;

    fn same(host: Option<&str>, origin: &str) -> bool {
        let mut req = Request::builder();
        if let Some(h) = host {
            req = req.header(header::HOST, h);
        }
        same_origin(&req.finish(), &HeaderValue::from_str(origin).unwrap())
    }

    #[test]
    fn an_origin_is_the_servers_own_when_it_names_the_host_asked_for() {
        assert!(same(Some("127.0.0.1:8000"), "http://127.0.0.1:8000"));
        assert!(same(Some("Photos.Example"), "https://photos.example"));
        // The default port, written in Host or not.
        assert!(same(Some("photos.example:443"), "https://photos.example"));
        assert!(same(Some("photos.example:80"), "http://photos.example"));
        assert!(same(Some("[::1]:8000"), "http://[::1]:8000"));
    }

    #[test]
    fn every_other_origin_is_not() {
        let other = [
            (Some("127.0.0.1:8000"), "http://127.0.0.1:8001"),
            (Some("127.0.0.1:8000"), "http://evil.example"),
            (
                Some("photos.example"),
                "https://photos.example.evil.example",
            ),
            (Some("photos.example"), "https://evil.photos.example"),
            // Another scheme's default port is a port like any other.
            (Some("photos.example:80"), "https://photos.example"),
            (Some("photos.example:443"), "http://photos.example"),
            (Some("photos.example"), "null"),
            (Some("photos.example"), "ftp://photos.example"),
            (Some("photos.example"), "photos.example"),
            (Some(""), "https://"),
            (Some(":443"), "https://"),
            (None, "https://photos.example"),
        ];
        for (host, origin) in other {
            assert!(!same(host, origin), "{host:?} {origin}");
        }
    }
}
