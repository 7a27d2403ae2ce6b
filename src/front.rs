//! The one layer in front of every route: request data, trailing slashes, CORS, JSON errors,
//! panics, the request log, and the fast path for listing pages.
//!
//! Why one hand-written layer instead of poem's `NormalizePath`, `Cors`, `Tracing`,
//! `CatchPanic`, `catch_all_error` and `data`: each poem layer moves the request future once more
//! and allocates on its own. With seven of them a cached page cost about three times a bare poem
//! handler (perf: memmove and malloc at the top of the profile; figures in bench/results.md).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{HeaderValue, Method, StatusCode, Uri, header},
};

use crate::app::AppState;

/// Headers a browser may read on a cross-origin response.
const EXPOSE: &str = "etag, x-total-count, x-data-source, link";
const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
const ALLOW_HEADERS: &str = "content-type, x-api-key, if-none-match";

pub struct Front<E> {
    inner: E,
    state: Arc<AppState>,
    /// Allowed origins, exactly as browsers send them (no trailing slash).
    origins: Vec<HeaderValue>,
}

impl<E> Front<E> {
    pub fn new(inner: E, state: Arc<AppState>) -> Front<E> {
        let origins = state
            .settings
            .server
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        Front {
            inner,
            state,
            origins,
        }
    }
}

impl<E: Endpoint> Endpoint for Front<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let started = Instant::now();
        trim_trailing_slash(&mut req);
        let method = req.method().clone();
        let uri = req.uri().clone();
        let origin = req.headers().get(header::ORIGIN).cloned();
        let mut response = match &origin {
            // An explicit allow-list: an origin not on it is refused, even for a plain GET.
            Some(o) if !self.origins.contains(o) => {
                error_response(StatusCode::FORBIDDEN, "Origin not allowed")
            }
            Some(o) if method == Method::OPTIONS => preflight(o),
            _ => self.respond(req).await,
        };
        if let Some(o) = origin.filter(|o| self.origins.contains(o)) {
            let h = response.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE),
            );
        }
        // Responses differ by Origin (allowed, refused): say so to caches, keeping any Vary the
        // handler set (Accept-Encoding on listings).
        add_vary_origin(&mut response);
        log_request(&method, &uri, response.status(), started.elapsed());
        Ok(response)
    }
}

impl<E: Endpoint> Front<E> {
    async fn respond(&self, mut req: Request) -> Response {
        if let Some(response) = crate::api::fast_listing(&self.state, &req).await {
            return response;
        }
        req.extensions_mut().insert(self.state.clone());
        match std::panic::AssertUnwindSafe(self.inner.call(req))
            .catch_unwind()
            .await
        {
            Ok(Ok(r)) => r.into_response(),
            Ok(Err(e)) => json_error(e),
            Err(_) => {
                tracing::error!("handler panicked");
                error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
            }
        }
    }
}

fn preflight(origin: &HeaderValue) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())
        .header(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS)
        .header(header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS)
        .header(header::ACCESS_CONTROL_MAX_AGE, "600")
        .finish()
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
fn log_request(method: &Method, uri: &Uri, status: StatusCode, elapsed: Duration) {
    let ms = elapsed.as_secs_f64() * 1000.0;
    let status = status.as_u16();
    if status >= 500 {
        tracing::warn!(target: "portfolio_server::http", %method, %uri, status, ms, "request");
    } else if status >= 400
        || !(method == Method::GET || method == Method::HEAD || method == Method::OPTIONS)
        || elapsed > Duration::from_secs(1)
    {
        tracing::info!(target: "portfolio_server::http", %method, %uri, status, ms, "request");
    } else {
        tracing::debug!(target: "portfolio_server::http", %method, %uri, status, ms, "request");
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

/// Errors raised outside our handlers (unknown route, wrong method, ...) get the same JSON shape
/// as ours.
fn json_error(e: poem::Error) -> Response {
    let status = e.status();
    let detail = match status {
        StatusCode::NOT_FOUND => "Not Found".to_string(),
        StatusCode::METHOD_NOT_ALLOWED => "Method Not Allowed".to_string(),
        // A 500's message may hold internals; other statuses carry a message meant for the client.
        StatusCode::INTERNAL_SERVER_ERROR => {
            tracing::error!(error = %e, "request failed");
            "internal server error".to_string()
        }
        _ => e.to_string(),
    };
    error_response(status, &detail)
}

pub fn error_response(status: StatusCode, detail: &str) -> Response {
    poem::web::Json(serde_json::json!({ "detail": detail }))
        .with_status(status)
        .into_response()
}
