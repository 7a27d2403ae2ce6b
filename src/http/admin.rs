//! `GET /admin`: the owner's page (upload, sort and delete photos in a browser), served from
//! files embedded in the binary (`assets/admin/`), so it works offline and makes no third-party
//! request.
//!
//! The page is plain HTML, CSS and one script: no build step, no framework. It talks to the same
//! routes curl does (`/api/upload`, `PATCH`/`DELETE /api/images/{id}`, the listing), with the
//! admin key kept in the tab's `sessionStorage` and sent as `X-API-Key`, never in a URL or a
//! cookie. Being on the server's own origin, its writes pass the CORS check without
//! `CORS_ORIGINS` ([`crate::http::front`] accepts a request whose `Origin` is the server's own).
//!
//! Every answer carries a strict `Content-Security-Policy`: scripts and styles only from these
//! files (no inline script, no `eval`), requests only to this origin, no framing. Images may
//! come from the storage's origin and any `https:` one, since photos stored before a change of
//! backend keep their old URLs.
//!
//! Served when `ADMIN_API_KEY` is set and `server.admin_page` is true; otherwise a 404 that says
//! which of the two is missing.

use std::sync::Arc;

use poem::{
    Request, Response, handler,
    http::{HeaderValue, StatusCode, header},
    web::{Data, Path},
};
use rust_embed::Embed;

use super::api::error::ApiError;
use crate::{http::state::AppState, storage::ObjectStore};

#[derive(Embed)]
#[folder = "assets/admin/"]
struct Page;

/// What `/admin` needs, built once at start-up.
pub struct Admin {
    /// Why the page is not served, when it is not.
    off: Option<&'static str>,
    csp: HeaderValue,
}

impl Admin {
    pub fn new(state: &AppState) -> Admin {
        let off = if state.settings.auth.admin_api_key.is_none() {
            Some("The admin page is served only when an admin key is set: set ADMIN_API_KEY")
        } else if !state.settings.server.admin_page {
            Some("The admin page is turned off (server.admin_page = false)")
        } else {
            None
        };
        let csp = content_security_policy(&state.store.public_url("x"));
        Admin {
            off,
            csp: HeaderValue::from_str(&csp).expect("the policy is ASCII"),
        }
    }
}

/// The page's policy. `img_url` is any object URL of the configured store: its origin may
/// serve images (the local backend's `/media` may be on another host or port than the page).
pub fn content_security_policy(img_url: &str) -> String {
    let mut images = String::from("'self' data: https:");
    if let Ok(url) = url::Url::parse(img_url)
        && url.scheme() == "http"
        && let origin @ url::Origin::Tuple(..) = url.origin()
    {
        images.push(' ');
        images.push_str(&origin.ascii_serialization());
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src {images}; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// `GET /admin`: the page.
#[handler]
pub async fn index(req: &Request, Data(admin): Data<&Arc<Admin>>) -> Result<Response, ApiError> {
    serve(req, admin, "index.html")
}

/// `GET /admin/{file}`: its script and style sheet.
#[handler]
pub async fn asset(
    req: &Request,
    Path(name): Path<String>,
    Data(admin): Data<&Arc<Admin>>,
) -> Result<Response, ApiError> {
    if name == "index.html" {
        // One address for the page.
        return Err(not_found());
    }
    serve(req, admin, &name)
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Not Found")
}

fn serve(req: &Request, admin: &Admin, name: &str) -> Result<Response, ApiError> {
    if let Some(why) = admin.off {
        return Err(ApiError::new(StatusCode::NOT_FOUND, why));
    }
    let file = Page::get(name).ok_or_else(not_found)?;
    let hash = file.metadata.sha256_hash();
    let etag = format!(
        "\"{}\"",
        hash[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let content_type = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "application/octet-stream",
    };
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let builder = Response::builder()
        .header(header::CONTENT_SECURITY_POLICY, admin.csp.clone())
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header("cross-origin-opener-policy", "same-origin")
        // Revalidated on every load (a 304 when unchanged), so a new binary's page is used at
        // once.
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::ETAG, etag);
    if fresh {
        return Ok(builder.status(StatusCode::NOT_MODIFIED).finish());
    }
    Ok(builder
        .content_type(content_type)
        .body(file.data.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::{Page, content_security_policy};

    #[test]
    fn the_policy_allows_only_this_origin_for_code_and_requests() {
        let csp = content_security_policy("https://x.supabase.co/storage/v1/object/public/i/x");
        for part in [
            "default-src 'none'",
            "script-src 'self';",
            "style-src 'self';",
            "connect-src 'self';",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "img-src 'self' data: https:;",
        ] {
            assert!(csp.contains(part), "{part}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        // A local store on another port: its origin, and no more of its URL.
        let local = content_security_policy("http://localhost:8000/media/x");
        assert!(
            local.contains("img-src 'self' data: https: http://localhost:8000;"),
            "{local}"
        );
        // Nothing added for a URL that is not one.
        assert!(content_security_policy("not a url").contains("img-src 'self' data: https:;"));
    }

    /// The page keeps to its policy: no inline script, no inline style, no event-handler
    /// attribute, and every script and style sheet from `/admin/` itself.
    #[test]
    fn the_page_has_no_inline_code() {
        let html = String::from_utf8(Page::get("index.html").unwrap().data.into_owned()).unwrap();
        let lower = html.to_ascii_lowercase();
        for tag in lower.split("<script").skip(1) {
            let head = &tag[..tag.find('>').unwrap()];
            assert!(
                head.contains("src=\"/admin/"),
                "a script not from /admin: {head}"
            );
            assert!(tag[tag.find('>').unwrap() + 1..].starts_with("</script>"));
        }
        assert!(!lower.contains("<style"), "inline style sheet");
        assert!(!lower.contains(" style="), "inline style attribute");
        for word in lower.split(|c: char| c.is_whitespace()) {
            assert!(
                !(word.starts_with("on") && word.contains('=')),
                "an event-handler attribute: {word}"
            );
        }
        let js = String::from_utf8(Page::get("admin.js").unwrap().data.into_owned()).unwrap();
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "eval(",
            "new Function",
            "document.write",
        ] {
            assert!(!js.contains(banned), "admin.js uses {banned}");
        }
    }
}
