//! Routes other than the listing, and HTTP hygiene: errors, CORS, compression, docs.

use poem::http::StatusCode;

use crate::helpers::{TestApp, settings};

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

#[tokio::test(flavor = "multi_thread")]
async fn cors_allows_listed_origins_and_refuses_others() {
    let app = TestApp::spawn(settings(None)).await; // allows https://portfolio.example
    let ok = app
        .request("/api/images", &[("origin", "https://portfolio.example")])
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://portfolio.example")
    );
    let exposed = ok
        .header("access-control-expose-headers")
        .unwrap()
        .to_lowercase();
    assert!(
        exposed.contains("x-total-count") && exposed.contains("etag"),
        "{exposed}"
    );
    assert_ne!(ok.header("access-control-allow-origin"), Some("*"));

    let refused = app
        .request("/api/images", &[("origin", "https://evil.example")])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.header("access-control-allow-origin").is_none());
    assert!(refused.json()["detail"].is_string());

    let preflight = app
        .client
        .options("/api/upload")
        .header("origin", "https://portfolio.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-api-key")
        .send()
        .await
        .0;
    assert_eq!(preflight.status(), StatusCode::OK);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://portfolio.example"
    );

    // Requests without an Origin (curl, server to server) are unaffected.
    assert_eq!(app.get("/api/images").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_origins_configured_every_cross_origin_request_is_refused() {
    let mut s = settings(None);
    s.server.cors_origins.clear();
    let app = TestApp::spawn(s).await;
    let r = app
        .request("/api/images", &[("origin", "https://anyone.example")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
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
