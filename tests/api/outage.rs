//! The database going away and coming back: cached, stale and embedded answers, health, recovery.

use std::time::{Duration, Instant};

use poem::http::StatusCode;

use crate::helpers::{TestApp, TestDb, ToggleProxy, settings};

/// An app whose database connection runs through a proxy the test can cut.
async fn app_behind_proxy(db: &TestDb, cache_bytes: u64) -> (TestApp, ToggleProxy) {
    let proxy = ToggleProxy::start(&db.url).await;
    let mut s = settings(Some(&proxy.url_for(&db.url)));
    s.cache.max_bytes = cache_bytes;
    (TestApp::spawn(s).await, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_page_is_still_served_when_the_database_stops() {
    let db = TestDb::new();
    let (app, proxy) = app_behind_proxy(&db, 1 << 20).await;
    db.seed(12);
    let before = app.get("/api/images?limit=4&offset=2").await;
    assert_eq!(before.ids(), vec![3, 4, 5, 6]);

    proxy.cut();
    let during = app.get("/api/images?limit=4&offset=2").await;
    assert_eq!(during.status, StatusCode::OK);
    assert_eq!(during.body, before.body);
    assert_eq!(during.header("etag"), before.header("etag"));
    assert_eq!(during.header("x-total-count"), Some("12"));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_cached_page_the_last_good_copy_is_served_as_stale() {
    let db = TestDb::new();
    let (app, proxy) = app_behind_proxy(&db, 0).await; // page cache off
    db.seed(12);
    let before = app.get("/api/images?limit=3").await;
    assert_eq!(before.header("x-data-source"), Some("database"));

    proxy.cut();
    let during = app.get("/api/images?limit=3").await;
    assert_eq!(during.status, StatusCode::OK);
    assert_eq!(during.header("x-data-source"), Some("stale"));
    assert_eq!(during.ids(), vec![1, 2, 3]);
    assert_eq!(during.header("x-total-count"), Some("12"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_never_served_falls_back_to_embedded_data_in_the_same_shape_paginated() {
    let db = TestDb::new();
    let (app, proxy) = app_behind_proxy(&db, 1 << 20).await;
    db.seed(50);
    proxy.cut();

    let all = app.get("/api/images?limit=100").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.header("x-data-source"), Some("fallback"));
    assert_eq!(all.header("x-total-count"), Some("13"));
    let items = all.json();
    let items = items.as_array().expect("an array, as the front end needs");
    assert_eq!(items.len(), 13);
    for item in items {
        for field in ["filename", "url", "category"] {
            assert!(item[field].is_string(), "{field} in {item}");
        }
        for field in ["id", "width", "height"] {
            assert!(item[field].is_i64(), "{field} in {item}");
        }
    }
    let page = app.get("/api/images?limit=5&offset=10").await;
    assert_eq!(page.ids(), vec![11, 12, 13]);
    let default = app.get("/api/images").await;
    assert_eq!(default.ids(), (1..=10).collect::<Vec<_>>());
    let beyond = app.get("/api/images?offset=13").await;
    assert_eq!(beyond.body, b"[]");
}

#[tokio::test(flavor = "multi_thread")]
async fn outage_answers_do_not_wait_out_the_checkout_timeout_each_time() {
    let db = TestDb::new();
    let proxy = ToggleProxy::start(&db.url).await;
    let mut s = settings(Some(&proxy.url_for(&db.url)));
    s.database.checkout_timeout_ms = 3000;
    s.database.reprobe_interval_ms = 60_000; // no recovery during this test
    let app = TestApp::spawn(s).await;
    proxy.cut();
    // The first request after the cut may wait for the pool to give up; it marks the outage.
    let _ = app.get("/api/images?offset=1").await;
    let started = Instant::now();
    for offset in 2..12 {
        let r = app.get(&format!("/api/images?offset={offset}")).await;
        assert_eq!(r.header("x-data-source"), Some("fallback"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(3000),
        "ten outage answers took {:?}: each one waited on the database",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_the_database_and_the_server_recovers_by_itself() {
    let db = TestDb::new();
    let (app, proxy) = app_behind_proxy(&db, 0).await;
    db.seed(3);
    let health = app.get("/api/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(
        health.json(),
        serde_json::json!({"message": "server active", "database": "connected", "storage": "ok",
                           "storage_mode": "public"})
    );

    proxy.cut();
    let down = app
        .wait_for("/api/health", 5, |r| {
            r.status == StatusCode::SERVICE_UNAVAILABLE
        })
        .await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.json()["message"], "server active");
    assert_eq!(down.json()["database"], "connection failed");
    let listing = app.get("/api/images?limit=2&offset=1").await;
    assert_eq!(listing.header("x-data-source"), Some("fallback"));

    proxy.restore();
    let up = app
        .wait_for("/api/health", 10, |r| r.status == StatusCode::OK)
        .await;
    assert_eq!(up.status, StatusCode::OK, "recovered without a restart");
    let listing = app
        .wait_for("/api/images?limit=2&offset=1", 5, |r| {
            r.header("x-data-source") == Some("database")
        })
        .await;
    assert_eq!(listing.ids(), vec![2, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_starts_with_the_database_down_and_migrates_when_it_comes_up() {
    let db = TestDb::new();
    let proxy = ToggleProxy::start(&db.url).await;
    proxy.cut();
    let app = TestApp::spawn(settings(Some(&proxy.url_for(&db.url)))).await;
    let r = app.get("/api/images").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-data-source"), Some("fallback"));
    assert_eq!(
        app.get("/api/health").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    proxy.restore();
    let up = app
        .wait_for("/api/health", 10, |r| r.status == StatusCode::OK)
        .await;
    assert_eq!(up.status, StatusCode::OK);
    // The schema exists now: migrations ran on recovery.
    db.seed(2);
    app.state.listing.invalidate();
    assert_eq!(app.get("/api/images").await.ids(), vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_database_configured_health_is_503_and_the_listing_is_embedded() {
    let app = TestApp::spawn(settings(None)).await;
    let health = app.get("/api/health").await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.json()["database"], "connection failed");
    let r = app.get("/api/images?limit=3&offset=3").await;
    assert_eq!(r.ids(), vec![4, 5, 6]);
    assert_eq!(r.header("x-data-source"), Some("fallback"));
}

/// Runs `pg_sleep(secs)` on one of the app's pooled connections, and returns once that
/// connection is taken.
async fn occupy_connection(app: &TestApp, secs: &'static str) -> tokio::task::JoinHandle<()> {
    let pg = app.state.db.clone().unwrap();
    let (taken, is_taken) = tokio::sync::oneshot::channel();
    let held = tokio::spawn(async move {
        pg.run(move |c| {
            let _ = taken.send(());
            Ok(c.simple_query(&format!("SELECT pg_sleep({secs})"))?.len())
        })
        .await
        .map(drop)
        .unwrap()
    });
    is_taken.await.expect("the connection was taken");
    held
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_pool_is_not_an_outage() {
    let db = TestDb::new();
    let mut s = settings(Some(&db.url));
    s.database.pool_max_size = 1;
    s.database.checkout_timeout_ms = 200;
    s.cache.max_bytes = 0;
    let app = TestApp::spawn(s).await;
    db.seed(3);
    // Occupy the only connection for much longer than the checkout timeout.
    let slow = occupy_connection(&app, "1").await;
    let r = app.get("/api/images").await;
    assert_eq!(
        r.header("x-data-source"),
        Some("database"),
        "waited for the connection"
    );
    assert_eq!(r.ids(), vec![1, 2, 3]);
    slow.await.unwrap();
    assert!(app.state.db.as_ref().unwrap().is_available());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saturated_database_gives_the_stale_copy_or_503_never_embedded_data() {
    let db = TestDb::new();
    let mut s = settings(Some(&db.url));
    s.database.pool_max_size = 1;
    s.database.queue_timeout_ms = 300;
    s.cache.max_bytes = 0;
    let app = TestApp::spawn(s).await;
    db.seed(5);
    let seen = app.get("/api/images?limit=2").await;
    assert_eq!(seen.header("x-data-source"), Some("database"));

    let slow = occupy_connection(&app, "1.5").await;

    let stale = app.get("/api/images?limit=2").await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.header("x-data-source"), Some("stale"));
    assert_eq!(stale.ids(), vec![1, 2]);

    for uri in ["/api/images?limit=3", "/api/images?limit=3&unknown=x"] {
        // The second goes through the documented route (an unknown parameter): same answer.
        let busy = app.get(uri).await;
        assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert_eq!(busy.header("retry-after"), Some("1"));
        assert!(busy.json()["detail"].as_str().unwrap().contains("busy"));
    }
    assert!(
        app.state.db.as_ref().unwrap().is_available(),
        "not marked down"
    );
    // An upload that cannot get a connection in time is told to retry, not "internal error".
    let media = tempfile::tempdir().unwrap();
    let mut s = crate::helpers::upload_settings(Some(&db.url), media.path());
    (s.database.pool_max_size, s.database.queue_timeout_ms) = (1, 300);
    let uploads = TestApp::spawn(s).await;
    let hold = occupy_connection(&uploads, "1").await;
    let r = uploads
        .upload("busy.jpg", crate::helpers::jpeg(8, 8, None))
        .await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.json()["detail"].as_str().unwrap().contains("busy"));
    assert!(crate::helpers::files_in(media.path()).is_empty());
    hold.await.unwrap();
    slow.await.unwrap();
    assert_eq!(app.get("/api/images?limit=3").await.ids(), vec![1, 2, 3]);
}

/// A stopped database is noticed by the first request of the outage, which does not wait out
/// the checkout timeout (1.5 s by default) while the pool retries a refused port. A refused
/// port answers in milliseconds; the bound is half the timeout, which holds on a loaded machine
/// and still tells "answered at once" from "waited for the pool".
#[tokio::test(flavor = "multi_thread")]
async fn the_first_requests_of_an_outage_do_not_wait_out_the_checkout_timeout() {
    for first in ["/api/images?limit=7", "/api/health"] {
        let db = TestDb::new();
        let proxy = ToggleProxy::start(&db.url).await;
        let mut s = settings(Some(&proxy.url_for(&db.url)));
        let defaults = portfolio_server::config::Settings::default().database;
        s.database.checkout_timeout_ms = defaults.checkout_timeout_ms;
        s.database.connect_timeout_ms = defaults.connect_timeout_ms;
        let app = TestApp::spawn(s).await;
        db.seed(3);
        assert_eq!(
            app.get("/api/images").await.header("x-data-source"),
            Some("database")
        );
        let p = std::sync::Arc::new(proxy);
        let cut = p.clone();
        tokio::task::spawn_blocking(move || cut.cut_and_wait())
            .await
            .unwrap();

        let started = Instant::now();
        let r = app.get(first).await;
        let took = started.elapsed();
        let half = Duration::from_millis(defaults.checkout_timeout_ms / 2);
        assert!(took < half, "{first} took {took:?}");
        if first == "/api/health" {
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        } else {
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.header("x-data-source"), Some("fallback"));
        }
        // And the next one too.
        let started = Instant::now();
        app.get("/api/health").await;
        assert!(started.elapsed() < half);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_says_connected_and_busy_when_the_pool_is_saturated() {
    let db = TestDb::new();
    let mut s = settings(Some(&db.url));
    s.database.pool_max_size = 1;
    let app = TestApp::spawn(s).await;
    let slow = occupy_connection(&app, "2").await;
    let started = Instant::now();
    let r = app.get("/api/health").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "health did not queue for long"
    );
    assert_eq!(
        r.status,
        StatusCode::OK,
        "busy is not down: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["database"], "connected");
    assert_eq!(r.json()["busy"], true);
    slow.await.unwrap();
    let r = app.get("/api/health").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json().get("busy").is_none(), "not busy any more");
}

/// During an outage every page comes from the copy of the table: the owner's photographs, never
/// the embedded demo set, for pages never served before, categories and keysets alike, with the
/// bytes and ETags the database gave; and after a restart with the database still down.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_answers_every_page_from_the_copy_of_the_table_also_after_a_restart() {
    let db = TestDb::new();
    let proxy = std::sync::Arc::new(ToggleProxy::start(&db.url).await);
    let mut s = settings(Some(&proxy.url_for(&db.url)));
    s.cache.copy_max_rows = 1000;
    let app = TestApp::spawn(s.clone()).await;
    db.seed(30);
    let live = app.get("/api/images?limit=5&offset=10").await;
    // What a write does: the copy is taken again within a second.
    app.state.listing.invalidate();
    assert!(app.state.listing.refresh_copy().await);
    app.state.listing.flush_copy().await; // as the copier does within 10 s, or a shutdown
    let cut = proxy.clone();
    tokio::task::spawn_blocking(move || cut.cut_and_wait())
        .await
        .unwrap();

    let during = pages_from_the_copy(&app).await;
    assert_eq!(during.body, live.body, "the same bytes the database gave");
    assert_eq!(
        during.header("etag"),
        live.header("etag"),
        "and so the same ETag"
    );

    // A restart while the database is still down: the copy on disk answers.
    drop(app);
    let restarted = TestApp::spawn(s).await;
    let after = pages_from_the_copy(&restarted).await;
    assert_eq!(after.header("etag"), live.header("etag"));
    let items = restarted.get("/api/images?limit=100").await.json();
    assert!(
        items
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["filename"].as_str().unwrap().starts_with("photo-")),
        "no embedded demo photograph"
    );
}

/// The pages of the copy test (30 seeded rows), during the outage; returns `limit=5&offset=10`.
async fn pages_from_the_copy(app: &TestApp) -> crate::helpers::Reply {
    let r = app.get("/api/images?limit=7").await; // never served before
    assert_eq!(r.header("x-data-source"), Some("stale"));
    assert_eq!(r.ids(), (1..=7).collect::<Vec<_>>());
    assert_eq!(r.header("x-total-count"), Some("30"));
    let r = app.get("/api/images?category=city&limit=3").await;
    assert_eq!(r.ids(), vec![1, 3, 5]);
    assert_eq!(r.header("x-total-count"), Some("15"));
    let r = app.get("/api/images?after_id=27&limit=10").await;
    assert_eq!(r.ids(), vec![28, 29, 30]);
    assert!(r.header("link").is_none(), "the last page");
    app.get("/api/images?limit=5&offset=10").await
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_bound_no_copy_is_kept_and_outages_fall_back_as_before() {
    let db = TestDb::new();
    let proxy = ToggleProxy::start(&db.url).await;
    let mut s = settings(Some(&proxy.url_for(&db.url)));
    s.cache.copy_max_rows = 5;
    let app = TestApp::spawn(s).await;
    db.seed(6);
    assert!(app.state.listing.refresh_copy().await);
    proxy.cut();
    let r = app.get("/api/images?limit=3").await;
    assert_eq!(
        r.header("x-data-source"),
        Some("fallback"),
        "embedded, as before the copy"
    );
}

/// A connection that worked less than 500 ms ago is handed out without r2d2's liveness check
/// (an empty query: a whole round trip, which doubled the cost of an uncached page 20 ms from
/// the database); an idle one is still checked, so connections that died meanwhile (a database
/// restart) are replaced before a request uses them, and no answer comes from elsewhere. (A
/// cut shorter than the window is `manage::a_delete_that_never_committed_keeps_the_photo_whole`:
/// its first delete meets a dead connection, and that failure ends the bypass for the others.)
#[tokio::test(flavor = "multi_thread")]
async fn busy_connections_skip_the_liveness_check_and_idle_ones_are_checked() {
    let db = TestDb::new();
    let proxy = ToggleProxy::start(&db.url).await;
    let mut s = settings(Some(&proxy.url_for(&db.url)));
    s.cache.max_bytes = 0; // every page from the database
    s.database.pool_max_size = 2;
    let app = TestApp::spawn(s).await;
    db.seed(30);
    let page = |n: usize| format!("/api/images?limit=1&offset={n}");
    assert_eq!(
        app.get(&page(0)).await.header("x-data-source"),
        Some("database")
    );
    let checks = || {
        proxy
            .liveness_checks
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let before = checks();
    let opened = proxy.connections.load(std::sync::atomic::Ordering::SeqCst);
    for n in 1..21 {
        let r = app.get(&page(n)).await;
        assert_eq!(r.header("x-data-source"), Some("database"));
    }
    let more = proxy.connections.load(std::sync::atomic::Ordering::SeqCst) - opened;
    assert!(
        more <= 2,
        "20 pages opened {more} connections: the pool did not keep them"
    );
    assert!(
        checks() - before < 5,
        "20 pages back to back checked {} connections",
        checks() - before
    );

    // Idle for longer than the 500 ms window (the passing of time is the condition here).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = checks();
    assert_eq!(
        app.get(&page(21)).await.header("x-data-source"),
        Some("database")
    );
    assert!(checks() > before, "an idle connection is checked");

    // Every connection dies while the pool holds it idle, as in a database restart.
    let p = std::sync::Arc::new(proxy);
    let cut = p.clone();
    tokio::task::spawn_blocking(move || cut.cut_and_wait())
        .await
        .unwrap();
    p.restore();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = app.get(&page(25)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("x-data-source"),
        Some("database"),
        "the dead idle connection was checked and replaced, not used"
    );
    assert_eq!(r.ids(), [26]);
}
