//! Routes other than the listing, and HTTP hygiene: errors, CORS, compression, docs.

use poem::http::{Method, StatusCode};

use crate::helpers::{
    API_KEY, Form, Reply, TestApp, TestDb, files_in, jpeg, settings, upload_settings,
};

#[tokio::test(flavor = "multi_thread")]
async fn root_and_portfolio() {
    let app = TestApp::spawn(settings(None)).await;
    let root = app.get("/").await;
    assert_eq!(root.status, StatusCode::OK);
    assert_eq!(
        root.json(),
        serde_json::json!({"message": "Portfolio Backend API Gateway"})
    );
    let portfolio = app.get("/api/portfolio").await.json();
    assert_eq!(portfolio["skills"].as_array().unwrap().len(), 4);
    assert_eq!(portfolio["projects"].as_array().unwrap().len(), 6);
    assert!(portfolio["about"]["story"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = TestApp::spawn(settings(None)).await;
    let r = app.get("/api/nothing-here").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["detail"], "Not Found");
    let r = app.client.delete("/api/images").send().await.0;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: serde_json::Value =
        serde_json::from_slice(&r.into_body().into_vec().await.unwrap()).unwrap();
    assert!(body["detail"].is_string());
    // A trailing slash is forgiven.
    assert_eq!(
        app.get("/api/health/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// The front end's origin, never configured anywhere: the original allowed every origin.
const ANY_PAGE: &str = "http://anything.example";
const ADMIN_PAGE: &str = "https://admin.example";

async fn preflight(app: &TestApp, path: &str, origin: &str, method: &str) -> Reply {
    let r = app
        .client
        .options(path)
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", "content-type, x-api-key")
        .send()
        .await
        .0;
    TestApp::reply_of(r).await
}

struct CorsApp {
    app: TestApp,
    media: tempfile::TempDir,
    _db: TestDb,
}

/// An app with a database and media folder of its own, one photo uploaded (by a curl-style
/// request, with no Origin), and `cors_origins`.
async fn cors_app(cors_origins: &[&str]) -> CorsApp {
    let db = TestDb::new();
    let media = tempfile::tempdir().unwrap();
    let mut s = upload_settings(Some(&db.url), media.path());
    s.server.cors_origins = cors_origins.iter().map(|o| o.to_string()).collect();
    let app = TestApp::spawn(s).await;
    let up = app.upload("cors.jpg", jpeg(8, 8, None)).await;
    assert_eq!(
        up.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&up.body)
    );
    CorsApp {
        app,
        media,
        _db: db,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn public_reads_answer_every_origin_with_a_star_and_no_credentials() {
    for origins in [&[][..], &[ADMIN_PAGE][..], &["*"][..]] {
        let CorsApp { app, .. } = &cors_app(origins).await;
        for path in [
            "/api/images",
            "/api/images?limit=1&offset=0",
            "/api/health",
            "/",
            "/api/portfolio",
            "/media/cors.jpg",
            "/openapi.json",
        ] {
            let r = app.request(path, &[("origin", ANY_PAGE)]).await;
            assert_eq!(r.status, StatusCode::OK, "{path} with {origins:?}");
            assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{path}");
            assert!(
                r.header("access-control-allow-credentials").is_none(),
                "{path}"
            );
            // The same answer whatever the origin, so one cached copy serves every page.
            let vary = r.header("vary").unwrap_or("").to_ascii_lowercase();
            assert!(!vary.contains("origin"), "{path}: vary {vary}");
        }
        let listing = app.request("/api/images", &[("origin", ANY_PAGE)]).await;
        let exposed = listing
            .header("access-control-expose-headers")
            .unwrap()
            .to_lowercase();
        assert!(
            exposed.contains("x-total-count") && exposed.contains("etag"),
            "{exposed}"
        );
        // A browser's preflight for a conditional GET (If-None-Match is not a simple header).
        let r = app
            .client
            .options("/api/images")
            .header("origin", ANY_PAGE)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "if-none-match")
            .send()
            .await
            .0;
        let r = TestApp::reply_of(r).await;
        assert!(r.status.is_success(), "{:?}", r.status);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert!(
            r.header("access-control-allow-headers")
                .unwrap()
                .contains("if-none-match")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_routes_answer_only_listed_origins_or_every_origin_with_a_star() {
    // No CORS_ORIGINS (the original's settings): an upload page elsewhere is refused.
    let CorsApp { app, media, .. } = &cors_app(&[]).await;
    for path in ["/api/upload", "/api/upload-batch"] {
        let r = preflight(app, path, ANY_PAGE, "POST").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert!(r.header("access-control-allow-origin").is_none());
        assert!(
            r.json()["detail"]
                .as_str()
                .unwrap()
                .contains("CORS_ORIGINS")
        );
    }
    // The real request too, had a browser sent it without a preflight.
    let form = Form::new().file("file", "x.jpg", jpeg(8, 8, None));
    let r = app
        .post_form_with(
            "/api/upload",
            &form,
            &[("x-api-key", API_KEY), ("origin", ANY_PAGE)],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        files_in(media.path()).iter().all(|f| f != "x.jpg"),
        "nothing stored"
    );

    // Listed: that origin only, and caches told the answer varies by Origin.
    let CorsApp { app, .. } = &cors_app(&[ADMIN_PAGE]).await;
    let r = preflight(app, "/api/upload", ADMIN_PAGE, "POST").await;
    assert!(r.status.is_success(), "{:?}", r.status);
    assert_eq!(r.header("access-control-allow-origin"), Some(ADMIN_PAGE));
    assert!(r.header("access-control-allow-credentials").is_none());
    let methods = r.header("access-control-allow-methods").unwrap();
    assert!(methods.contains("POST"), "{methods}");
    assert!(
        r.header("access-control-allow-headers")
            .unwrap()
            .contains("x-api-key")
    );
    assert!(r.header("vary").unwrap().to_lowercase().contains("origin"));
    let r = preflight(app, "/api/upload", ANY_PAGE, "POST").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app
        .post_form_with(
            "/api/upload",
            &Form::new().file("file", "listed.jpg", jpeg(8, 8, None)),
            &[("x-api-key", API_KEY), ("origin", ADMIN_PAGE)],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("access-control-allow-origin"), Some(ADMIN_PAGE));

    // `*`: every origin, still without credentials.
    let CorsApp { app, .. } = &cors_app(&["*"]).await;
    for origin in [ANY_PAGE, ADMIN_PAGE] {
        let r = preflight(app, "/api/upload-batch", origin, "POST").await;
        assert!(r.status.is_success(), "{:?}", r.status);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert!(r.header("access-control-allow-credentials").is_none());
    }
}

/// A preflight is an `OPTIONS` with both `Origin` and `Access-Control-Request-Method`; a request
/// lacking either is an ordinary one, answered by its route.
#[tokio::test(flavor = "multi_thread")]
async fn only_an_options_with_origin_and_a_requested_method_is_a_preflight() {
    let CorsApp { app, .. } = &cors_app(&[ADMIN_PAGE]).await;
    // OPTIONS without Origin, or without the method it announces: the route's 405.
    for (path, headers) in [
        (
            "/api/images",
            &[("access-control-request-method", "GET")][..],
        ),
        (
            "/api/upload",
            &[("access-control-request-method", "POST")][..],
        ),
        ("/api/images", &[("origin", ADMIN_PAGE)][..]),
        ("/api/upload", &[("origin", ADMIN_PAGE)][..]),
    ] {
        let mut req = app.client.options(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = TestApp::reply_of(req.send().await.0).await;
        assert_eq!(
            r.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{path} {headers:?}"
        );
        assert!(
            r.header("access-control-allow-methods").is_none(),
            "{path} {headers:?}"
        );
    }
    // A real request that happens to carry the header is served as itself, not as a preflight.
    let r = app
        .client
        .delete("/api/images/1")
        .header("origin", ADMIN_PAGE)
        .header("access-control-request-method", "DELETE")
        .header("x-api-key", API_KEY)
        .send()
        .await
        .0;
    let r = TestApp::reply_of(r).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(r.header("access-control-allow-methods").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_an_origin_are_never_refused_for_cors() {
    for (i, origins) in [&[][..], &[ADMIN_PAGE][..], &["*"][..]]
        .into_iter()
        .enumerate()
    {
        // cors_app's own upload is a curl-style request with no Origin, too.
        let CorsApp { app, .. } = &cors_app(origins).await;
        let name = format!("curl-{i}.jpg");
        let r = app.upload(&name, jpeg(8, 8, None)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{origins:?}");
        assert_eq!(app.get("/api/images").await.status, StatusCode::OK);
        let r = app.get(&format!("/media/{name}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.header("access-control-allow-origin").is_some());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_are_compressed_when_the_client_asks() {
    let app = TestApp::spawn(settings(None)).await;
    let r = app.request("/docs", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let plain = app.get("/docs").await;
    assert!(plain.header("content-encoding").is_none());
    assert!(
        r.body.len() * 3 < plain.body.len(),
        "gzip shrinks the docs page"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_and_swagger_ui() {
    let app = TestApp::spawn(settings(None)).await;
    let spec = app.get("/openapi.json").await.json();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let list = &spec["paths"]["/api/images"]["get"];
    assert!(list["responses"]["200"].is_object());
    assert!(list["responses"]["422"].is_object());
    let schema = &list["responses"]["200"]["content"]["application/json; charset=utf-8"]["schema"];
    assert_eq!(schema["type"], "array", "{schema}");
    assert!(spec["paths"]["/api/health"].is_object());
    let docs = app.get("/docs").await;
    assert_eq!(docs.status, StatusCode::OK);
    let html = String::from_utf8_lossy(&docs.body);
    assert!(html.contains("swagger"), "Swagger UI page");
    assert!(
        !html.contains("https://cdn"),
        "works offline: no CDN assets"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_pages_are_sent_gzipped_to_clients_that_accept_it() {
    use std::io::Read;
    let app = TestApp::spawn(settings(None)).await;
    let plain = app.get("/api/images?limit=100").await;
    assert!(plain.header("content-encoding").is_none());
    let gz = app
        .request(
            "/api/images?limit=100",
            &[("accept-encoding", "gzip, deflate, br")],
        )
        .await;
    assert_eq!(gz.status, StatusCode::OK);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert!(
        gz.header("vary")
            .unwrap()
            .to_lowercase()
            .contains("accept-encoding")
    );
    assert!(gz.body.len() < plain.body.len());
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&gz.body[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, plain.body);
    let (etag, gz_etag) = (plain.header("etag").unwrap(), gz.header("etag").unwrap());
    assert_ne!(etag, gz_etag, "each representation has its own tag");
    let not_modified = app
        .request(
            "/api/images?limit=100",
            &[("accept-encoding", "gzip"), ("if-none-match", gz_etag)],
        )
        .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    let refused = app
        .request("/api/images?limit=100", &[("accept-encoding", "gzip;q=0")])
        .await;
    assert!(refused.header("content-encoding").is_none());
}

/// The whole OpenAPI document, compared with `tests/openapi.json`: any change to the contract
/// shows up in review. After an intended change: `UPDATE_SNAPSHOTS=1 cargo test openapi`.
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_matches_its_snapshot() {
    let app = TestApp::spawn(settings(None)).await;
    let served = app.get("/openapi.json").await.json();
    let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi.json");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &pretty).unwrap();
    }
    let snapshot = std::fs::read_to_string(&path).unwrap_or_default();
    if snapshot != pretty {
        let diff: Vec<String> = snapshot
            .lines()
            .zip(pretty.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(10)
            .map(|(i, (a, b))| format!("line {}:\n  snapshot: {a}\n  served:   {b}", i + 1))
            .collect();
        panic!(
            "/openapi.json differs from tests/openapi.json ({} vs {} lines); if intended, run \
             UPDATE_SNAPSHOTS=1 cargo test openapi\n{}",
            snapshot.lines().count(),
            pretty.lines().count(),
            diff.join("\n")
        );
    }
    // The gaps a schema-driven fuzzer found, closed in the document itself:
    let list = &served["paths"]["/api/images"]["get"];
    assert!(
        list["description"]
            .as_str()
            .unwrap()
            .contains("`offset` rows after `after_id` are skipped"),
        "offset and after_id together are documented"
    );
    let batch = &served["paths"]["/api/upload-batch"]["post"]["requestBody"];
    let form = &batch["content"]["multipart/form-data"]["schema"];
    assert!(
        form["required"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "files"),
        "batch `files` is required: {form}"
    );
    assert_eq!(form["properties"]["files"]["minItems"], 1);
    let upload = &served["paths"]["/api/upload"]["post"]["requestBody"];
    assert!(upload["description"].as_str().unwrap().contains("JPEG"));
}

#[tokio::test(flavor = "multi_thread")]
async fn media_errors_never_show_server_paths() {
    let media = tempfile::tempdir().unwrap();
    let mut s = settings(None);
    s.storage.local_dir = media.path().to_path_buf();
    let app = TestApp::spawn(s).await;
    let secret_dir = media.path().display().to_string();
    for path in [
        "/media/../../etc/passwd",
        "/media/%2e%2e/%2e%2e/etc/passwd",
        "/media/..%2f..%2fetc%2fpasswd",
        "/media/nothing-here.jpg",
        "/media/",
        "/media/a/b/c.jpg",
    ] {
        let r = app.get(path).await;
        assert!(r.status.is_client_error(), "{path}: {:?}", r.status);
        let body = String::from_utf8_lossy(&r.body).to_string();
        assert!(
            !body.contains(&secret_dir),
            "{path} shows the folder: {body}"
        );
        assert!(!body.contains("/etc"), "{path}: {body}");
        assert!(r.json()["detail"].is_string(), "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_response_carries_a_request_id() {
    let app = TestApp::spawn(settings(None)).await;
    let a = app.get("/api/images").await;
    let b = app.get("/api/nothing").await;
    let (a, b) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert_eq!(a.len(), 16);
    assert_ne!(a, b, "a new id per request");
    // A sane id from a proxy is kept, so one id follows the request through both logs.
    let r = app
        .request("/api/health", &[("x-request-id", "edge-42.a_b")])
        .await;
    assert_eq!(r.header("x-request-id"), Some("edge-42.a_b"));
    let long = "x".repeat(65);
    for bad in [long.as_str(), "a b", "a\"b", ""] {
        let r = app.request("/", &[("x-request-id", bad)]).await;
        let id = r.header("x-request-id").unwrap();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 16);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn media_serves_stored_photos_with_head_and_etags_and_never_follows_symlinks() {
    let media = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.jpg"), b"not for the web").unwrap();
    std::fs::write(media.path().join("photo.jpg"), b"\xff\xd8 a photo").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.jpg"),
        media.path().join("link.jpg"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), media.path().join("dir")).unwrap();
    let mut s = settings(None);
    s.storage.local_dir = media.path().to_path_buf();
    let app = TestApp::spawn(s).await;

    let r = app.get("/media/photo.jpg").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, b"\xff\xd8 a photo");
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let etag = r.header("etag").unwrap().to_string();
    let again = app
        .request("/media/photo.jpg", &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    // `*` matches any stored object; another tag does not.
    for (tag, status) in [
        ("*", StatusCode::NOT_MODIFIED),
        ("\"other\"", StatusCode::OK),
        (&format!("\"x\", {etag}")[..], StatusCode::NOT_MODIFIED),
    ] {
        let r = app
            .request("/media/photo.jpg", &[("if-none-match", tag)])
            .await;
        assert_eq!(r.status, status, "{tag}");
    }

    let head = TestApp::reply_of(app.client.head("/media/photo.jpg").send().await.0).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header("etag"), Some(etag.as_str()));

    for escape in ["/media/link.jpg", "/media/dir/secret.jpg", "/media/dir"] {
        let r = app.get(escape).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{escape}");
        assert!(!String::from_utf8_lossy(&r.body).contains("not for the web"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_method_is_405_with_allow() {
    let media = tempfile::tempdir().unwrap();
    let mut s = settings(None);
    s.storage.local_dir = media.path().to_path_buf();
    let app = TestApp::spawn(s).await;
    for (method, path, allow) in [
        ("DELETE", "/api/images", "GET, HEAD"),
        ("PUT", "/api/health", "GET, HEAD"),
        ("GET", "/api/upload", "POST"),
        ("POST", "/media/x.jpg", "GET, HEAD"),
    ] {
        let req = match method {
            "DELETE" => app.client.delete(path),
            "PUT" => app.client.put(path),
            "GET" => app.client.get(path),
            _ => app.client.post(path),
        };
        let r = TestApp::reply_of(req.send().await.0).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
        assert_eq!(r.json()["detail"], "Method Not Allowed");
    }
}

/// Names no file can have (a NUL byte, longer than a file name may be) are a 404 with a JSON
/// body, never a 500.
#[tokio::test(flavor = "multi_thread")]
async fn media_names_no_file_can_have_are_404_with_json() {
    let media = tempfile::tempdir().unwrap();
    std::fs::write(media.path().join("a.jpg"), b"jpeg").unwrap();
    let app = TestApp::spawn(crate::helpers::upload_settings(None, media.path())).await;
    let long = format!("/media/{}.jpg", "a".repeat(252));
    for uri in [
        "/media/%00",
        "/media/a%00.jpg",
        "/media/a.jpg%00",
        long.as_str(),
    ] {
        let r = app.get(uri).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}: {}", r.text());
        assert_eq!(r.json()["detail"], "Not Found", "{uri}");
    }
    assert_eq!(app.get("/media/a.jpg").await.status, StatusCode::OK);
}

/// The document and the docs page are read-only: any other method is 405 with JSON, as on every
/// other route (they answered 200 to POST, PUT, PATCH and DELETE).
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_and_docs_answer_reads_only() {
    let app = TestApp::spawn(settings(None)).await;
    for path in ["/openapi.json", "/docs"] {
        for method in [Method::GET, Method::HEAD] {
            let r = app.client.request(method.clone(), path).send().await;
            r.assert_status_is_ok();
        }
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let r =
                TestApp::reply_of(app.client.request(method.clone(), path).send().await.0).await;
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(r.json()["detail"].is_string(), "{method} {path}");
        }
    }
}
