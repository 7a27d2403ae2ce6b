//! Private mode (`storage.private`): every URL handed out is signed and expires
//! (src/read/signed.rs, src/storage/signing.rs), here with the local backend, whose `/media`
//! checks the signatures. The S3 backend's pre-signed URLs are tested against real servers in
//! tests/api/s3.rs.

use std::time::{Duration, Instant};

use poem::http::StatusCode;
use portfolio_server::{config::Secret, storage::signing::UrlKey};

use crate::helpers::*;

const SIGNING_KEY: &str = "a signing key for the tests";

fn private_settings(db_url: &str, media: &std::path::Path) -> portfolio_server::config::Settings {
    let mut s = upload_settings(Some(db_url), media);
    s.storage.private = true;
    s.storage.signed_url_secs = 4; // pages are signed again every second
    s.storage.signing_key = Some(Secret::new(SIGNING_KEY));
    s
}

/// The path and query of a `/media` URL the server handed out.
fn media_path(url: &str) -> &str {
    url.strip_prefix("http://media.test").expect("a /media URL")
}

/// Seconds the signed `url` has left, read from its `expires`.
fn left(url: &str) -> i64 {
    let expires: i64 = url
        .split("expires=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("not signed: {url}"));
    expires - portfolio_server::storage::signing::unix_now() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn media_answers_only_signed_unexpired_urls() {
    let db = TestDb::new();
    let media = scratch_dir("media");
    let app = TestApp::spawn(private_settings(&db.url, &media)).await;
    let up = app.upload("harbour.jpg", jpeg(64, 48, None)).await;
    assert_eq!(up.status, StatusCode::CREATED, "{}", up.text());
    let record = up.json();
    for field in ["url", "thumbnail_url", "medium_url"] {
        let url = record[field].as_str().unwrap();
        assert!(url.contains("?expires="), "{field}: {url}");
        let r = app.get(media_path(url)).await;
        assert_eq!(r.status, StatusCode::OK, "{field}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("image/jpeg"));
        let cache = r.header("cache-control").unwrap();
        assert!(cache.starts_with("private, max-age="), "{cache}");
        assert!(!cache.contains("immutable"), "{cache}");
    }
    let url = record["url"].as_str().unwrap();
    let (path, query) = media_path(url).split_once('?').unwrap();
    assert_eq!(path, "/media/harbour.jpg");

    let key = UrlKey::new(SIGNING_KEY.as_bytes());
    let now = portfolio_server::storage::signing::unix_now();
    let sig = query.split_once("signature=").unwrap().1;
    let last = if sig.ends_with('0') { '1' } else { '0' };
    let refused = [
        (path.to_string(), "not signed"),
        (
            format!("{path}?{}", &query[..query.find('&').unwrap()]),
            "not signed",
        ),
        (
            format!("{path}?expires={now}9&signature={sig}"),
            "does not match",
        ),
        (
            format!("{path}?{}{last}", &query[..query.len() - 1]),
            "does not match",
        ),
        // Another photo's name with this photo's signature.
        (
            format!("/media/thumb--harbour.jpg?{query}"),
            "does not match",
        ),
        // Signed with the key, but past its expiry.
        (
            format!("{path}?{}", key.query("harbour.jpg", now - 1)),
            "expired",
        ),
    ];
    for (uri, why) in refused {
        let r = app.get(&uri).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert!(
            r.json()["detail"].as_str().unwrap().contains(why),
            "{uri}: {}",
            r.text()
        );
    }
    // A URL this test signs with the server's key for the future works: the server checks the
    // signature, it keeps no list of URLs.
    let r = app
        .get(&format!("{path}?{}", key.query("harbour.jpg", now + 60)))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // A missing photo is still a 404 once the URL is signed.
    let r = app
        .get(&format!(
            "/media/none.jpg?{}",
            key.query("none.jpg", now + 60)
        ))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// Every URL a listing hands out, for as long as one watches, has at least three quarters of
/// its lifetime left (less a second of rounding), and works: cached pages are signed again.
/// The same for `/api/photos`, for a single record, and for pages served from the table copy
/// while the database is down.
#[tokio::test(flavor = "multi_thread")]
async fn every_url_handed_out_is_fresh_and_works_also_during_an_outage() {
    let db = TestDb::new();
    let proxy = std::sync::Arc::new(ToggleProxy::start(&db.url).await);
    let media = scratch_dir("media");
    let mut s = private_settings(&proxy.url_for(&db.url), &media);
    s.cache.copy_max_rows = 1000;
    let app = TestApp::spawn(s).await;
    for name in ["a.jpg", "b.jpg"] {
        let up = app.upload(name, jpeg(40, 30, None)).await;
        assert_eq!(up.status, StatusCode::CREATED);
    }
    let record = app
        .admin(
            poem::http::Method::GET,
            "/api/images/1",
            Some(API_KEY),
            None,
        )
        .await;
    assert!(left(record.json()["url"].as_str().unwrap()) >= 3);

    let urls_of = |r: &Reply, field: &str| -> Vec<String> {
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[field].as_str().unwrap().to_string())
            .collect()
    };
    let started = Instant::now();
    let mut etags = std::collections::BTreeSet::new();
    while started.elapsed() < Duration::from_millis(2500) {
        let images = app.get("/api/images").await;
        let photos = app.get("/api/photos").await;
        etags.insert(images.header("etag").unwrap().to_string());
        let max_age = images.header("cache-control").unwrap();
        assert_eq!(
            max_age, "public, max-age=1",
            "no copy outlives its signatures"
        );
        for url in urls_of(&images, "url")
            .into_iter()
            .chain(urls_of(&images, "thumbnail_url"))
            .chain(urls_of(&photos, "photo_url"))
        {
            assert!(left(&url) >= 2, "{url} has {} s left", left(&url));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        etags.len() >= 2,
        "the page was signed again, and its ETag changed: {etags:?}"
    );
    // A freshly signed page is ready for the fast path at once; once it has served its time it
    // is not, and the next request signs it again.
    let key = portfolio_server::model::PageKey::parse(Some(7), None, None, None).unwrap();
    app.get("/api/images?limit=7").await;
    assert!(
        app.state.listing.ready(&key).await.is_some(),
        "a fresh page is ready"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while app.state.listing.ready(&key).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "a page past its time is still ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh = app.get("/api/images").await;
    for url in urls_of(&fresh, "medium_url") {
        assert_eq!(
            app.get(media_path(&url)).await.status,
            StatusCode::OK,
            "{url}"
        );
    }

    // The database goes away: the table copy answers, signed like the rest.
    assert!(app.state.listing.refresh_copy().await);
    let cut = proxy.clone();
    tokio::task::spawn_blocking(move || cut.cut_and_wait())
        .await
        .unwrap();
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let r = app.get("/api/images?limit=5").await;
        assert_eq!(r.header("x-data-source"), Some("stale"));
        for url in urls_of(&r, "url") {
            assert!(left(&url) >= 2, "{url}");
            assert_eq!(app.get(media_path(&url)).await.status, StatusCode::OK);
        }
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served > 3);
}
