//! `GET /metrics`: Prometheus text that a Prometheus parser reads, with counters that move as
//! requests do.

use std::collections::HashMap;

use poem::http::StatusCode;

use crate::helpers::{TestApp, TestDb, jpeg, upload_settings};

/// Every sample of a scrape, by its name and labels as written (`name{a="b"}`), after checking
/// that the text parses as the Prometheus exposition format.
async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let r = app.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the exposition parses");
    assert!(!parsed.samples.is_empty());
    let mut out = HashMap::new();
    for s in parsed.samples {
        let mut labels: Vec<_> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => {
                // The parser folds buckets into one sample; its count is the +Inf bucket.
                h.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        let key = if labels.is_empty() {
            s.metric
        } else {
            format!("{}{{{}}}", s.metric, labels.join(","))
        };
        out.insert(key, value);
    }
    out
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_move_with_requests_cache_and_uploads() {
    let db = TestDb::new();
    let media = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(upload_settings(Some(&db.url), media.path())).await;
    db.seed(3);
    let before = scrape(&app).await;
    assert_eq!(get(&before, "db_up"), 1.0);

    // A miss, then a hit, of one page; a 404; a 422.
    assert_eq!(app.get("/api/images?limit=2").await.status, StatusCode::OK);
    assert_eq!(app.get("/api/images?limit=2").await.status, StatusCode::OK);
    assert_eq!(app.get("/nope").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get("/api/images?limit=abc").await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // A new photo, then the same name again.
    assert_eq!(
        app.upload("m.jpg", jpeg(40, 30, None)).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        app.upload("m.jpg", jpeg(40, 30, None)).await.status,
        StatusCode::CONFLICT
    );

    let after = scrape(&app).await;
    let delta = |key: &str| get(&after, key) - get(&before, key);
    assert_eq!(
        delta(r#"http_requests_total{route="/api/images",status="200"}"#),
        2.0
    );
    assert_eq!(
        delta(r#"http_requests_total{route="/api/images",status="422"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"http_requests_total{route="unmatched",status="404"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"http_requests_total{route="/api/upload",status="201"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"http_requests_total{route="/api/upload",status="409"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"http_request_duration_seconds_count{route="/api/images"}"#),
        3.0
    );
    assert_eq!(delta(r#"listing_answers_total{source="database"}"#), 2.0);
    assert_eq!(delta("page_cache_misses_total"), 1.0);
    assert_eq!(delta("page_cache_hits_total"), 1.0);
    assert_eq!(delta(r#"uploads_total{outcome="created"}"#), 1.0);
    assert_eq!(delta(r#"uploads_total{outcome="duplicate"}"#), 1.0);
    assert_eq!(delta("image_pipeline_seconds_count"), 1.0);
    // The upload dropped the cached page; the scrape itself is counted too.
    assert_eq!(get(&after, "page_cache_entries"), 0.0);
    assert_eq!(
        delta(r#"http_requests_total{route="/metrics",status="200"}"#),
        1.0
    );
    let pooled = get(&after, r#"db_pool_connections{state="idle"}"#)
        + get(&after, r#"db_pool_connections{state="in_use"}"#);
    assert!(pooled >= 1.0, "{after:?}");
    assert_eq!(get(&after, "db_pool_waiting"), 0.0);

    // A cached page is counted with its bytes.
    assert_eq!(app.get("/api/images?limit=2").await.status, StatusCode::OK);
    let cached = scrape(&app).await;
    assert_eq!(get(&cached, "page_cache_entries"), 1.0);
    let page_len = app.get("/api/images?limit=2").await.body.len() as f64;
    assert!(get(&cached, "page_cache_bytes") >= page_len, "{cached:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_database_db_up_is_0_and_answers_are_fallback() {
    let app = TestApp::spawn(crate::helpers::settings(None)).await;
    let before = scrape(&app).await;
    assert_eq!(get(&before, "db_up"), 0.0);
    assert_eq!(app.get("/api/images").await.status, StatusCode::OK);
    let after = scrape(&app).await;
    assert_eq!(
        get(&after, r#"listing_answers_total{source="fallback"}"#)
            - get(&before, r#"listing_answers_total{source="fallback"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_be_turned_off() {
    let mut s = crate::helpers::settings(None);
    s.server.metrics = false;
    let app = TestApp::spawn(s).await;
    assert_eq!(app.get("/metrics").await.status, StatusCode::NOT_FOUND);
}

/// Plain pages whose requests wait for a connection at the same time are fetched by one
/// statement (`read::batch`), and each request still gets exactly its own page. The only pooled
/// connection is held by a page query stuck behind a table lock; 20 more pages are asked for
/// meanwhile; once all 20 wait for the connection the lock goes, and the 20 are answered by
/// shared statements (`listing_pages_shared_total`), each with its own rows.
#[tokio::test(flavor = "multi_thread")]
async fn pages_that_wait_for_a_connection_together_share_a_statement() {
    let (db, app) = one_connection(|_| {}).await;
    let before = get(&scrape(&app).await, "listing_pages_shared_total");

    let lock = TableLock::ask(&db, true).await;

    let page = |n: usize| format!("/api/images?limit=2&offset={}", 2 * n);
    let asks = futures_util::future::join_all((0..21).map(|n| {
        let app = &app;
        async move { (n, app.get(&page(n)).await) }
    }));
    let release = async {
        let waited = pool_waiting_reaches(&app, 20.0).await;
        lock.release().await;
        waited
    };
    let (answers, waited) = tokio::join!(asks, release);
    assert!(
        waited,
        "the 20 requests never all waited for the connection"
    );
    for (n, r) in answers {
        assert_eq!(r.status, StatusCode::OK, "page {n}");
        assert_eq!(r.header("x-data-source"), Some("database"), "page {n}");
        let first = 2 * n as i64 + 1;
        assert_eq!(r.ids(), [first, first + 1], "page {n}");
    }
    let shared = get(&scrape(&app).await, "listing_pages_shared_total") - before;
    assert!(shared >= 20.0, "{shared} pages shared a statement");
}

/// A shared statement that fails answers every page it carried, each from the copy of the
/// table, and none waits on. A page query holds the only connection behind a lock (`first`) while
/// 20 more requests write their pages down; a second lock is queued behind that query, so that
/// the shared statement for the 20 waits behind it in turn, and its connection is then killed.
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_statement_that_fails_answers_all_its_pages_from_the_copy() {
    let (db, app) = one_connection(|s| {
        s.cache.copy_max_rows = 1000; // the copy the failed pages are answered from
        s.cache.copy_refresh_secs = 3600; // taken below, then left alone
    })
    .await;
    assert!(app.state.listing.refresh_copy().await);
    assert_eq!(get(&scrape(&app).await, "table_copy_rows"), 60.0);

    let first = TableLock::ask(&db, true).await;
    let page = |n: usize| format!("/api/images?limit=2&offset={}", 2 * n);
    let first_url = page(0);
    let held = app.get(&first_url);
    let others = async {
        // The first page's query waits on `first`, holding the connection...
        let stuck = "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
                     AND wait_event_type = 'Lock' \
                     AND query LIKE '-- One page of the listing%'";
        assert!(crate::helpers::eventually(10, || db.rows(stuck).len() == 1).await);
        // ...a second lock queues behind it, and 20 more pages wait for the connection.
        let second = TableLock::ask(&db, false).await;
        let rest = futures_util::future::join_all((1..21).map(|n| {
            let app = &app;
            async move { (n, app.get(&page(n)).await) }
        }));
        let script = async {
            assert!(
                pool_waiting_reaches(&app, 20.0).await,
                "the 20 requests never all waited for the connection"
            );
            first.release().await;
            // The shared statement now waits behind `second`: its connection is cut.
            let shared = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                          WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%UNION ALL%'";
            assert!(crate::helpers::eventually(10, || db.rows(shared).len() == 1).await);
            second.release().await;
        };
        tokio::join!(rest, script).0
    };
    let (first_page, answers) = tokio::join!(held, others);
    assert_eq!(first_page.ids(), [1, 2]);
    assert_eq!(first_page.header("x-data-source"), Some("database"));
    for (n, r) in answers {
        assert_eq!(r.status, StatusCode::OK, "page {n}");
        assert_eq!(r.header("x-data-source"), Some("stale"), "page {n}");
        let first = 2 * n as i64 + 1;
        assert_eq!(r.ids(), [first, first + 1], "page {n}");
    }
}

/// An `ACCESS EXCLUSIVE` lock on `photographs`, asked for by a transaction of its own and held
/// until [`TableLock::release`].
struct TableLock {
    release: std::sync::mpsc::Sender<()>,
    holder: tokio::task::JoinHandle<()>,
}

impl TableLock {
    /// Asks for the lock; returns once PostgreSQL has granted it (`granted`) or queued it.
    async fn ask(db: &TestDb, granted: bool) -> TableLock {
        let url = db.url.clone();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (pid_tx, pid_rx) = tokio::sync::oneshot::channel();
        let holder = tokio::task::spawn_blocking(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
            pid_tx.send(pid).unwrap();
            let mut tx = c.transaction().unwrap();
            tx.batch_execute("LOCK TABLE photographs IN ACCESS EXCLUSIVE MODE")
                .unwrap();
            released.recv().unwrap();
            tx.commit().unwrap();
        });
        let pid = pid_rx.await.unwrap();
        let state = format!(
            "SELECT 1 FROM pg_locks WHERE pid = {pid} AND relation = 'photographs'::regclass \
             AND granted = {granted}"
        );
        assert!(
            crate::helpers::eventually(10, || !db.rows(&state).is_empty()).await,
            "the lock was never {}",
            if granted { "granted" } else { "queued" }
        );
        TableLock { release, holder }
    }

    async fn release(self) {
        self.release.send(()).unwrap();
        self.holder.await.unwrap();
    }
}

/// A request that gives up waiting for a connection crosses out only its own page: a younger
/// request still waiting keeps its place and gets its page from the database. The connection
/// is held behind a table lock; the older request times out; then the lock goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_gives_up_leaves_the_other_waiting_pages_in_place() {
    let (db, app) = one_connection(|s| s.database.queue_timeout_ms = 2000).await;

    let lock = TableLock::ask(&db, true).await;
    let (held_url, older_url, younger_url) = (
        "/api/images?limit=2&offset=0",
        "/api/images?limit=2&offset=2",
        "/api/images?limit=2&offset=4",
    );
    let held = app.get(held_url);
    let rest = async {
        let stuck = "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
                     AND wait_event_type = 'Lock' \
                     AND query LIKE '-- One page of the listing%'";
        assert!(crate::helpers::eventually(10, || db.rows(stuck).len() == 1).await);
        let started = std::time::Instant::now();
        let older = app.get(older_url);
        let younger = async {
            assert!(
                pool_waiting_reaches(&app, 1.0).await,
                "the older request never waited"
            );
            // A second younger: it must still be waiting when the older one gives up (the
            // passing of time is the condition here).
            tokio::time::sleep(std::time::Duration::from_secs(1).saturating_sub(started.elapsed()))
                .await;
            app.get(younger_url).await
        };
        let script = async {
            assert!(
                pool_waiting_reaches(&app, 2.0).await,
                "the younger request never waited"
            );
            assert!(
                pool_waiting_reaches(&app, 1.0).await,
                "the older request never gave up"
            );
            lock.release().await;
        };
        let (older, younger, ()) = tokio::join!(older, younger, script);
        (older, younger)
    };
    let (held, (older, younger)) = tokio::join!(held, rest);
    assert_eq!(held.ids(), [1, 2]);
    assert_ne!(
        older.header("x-data-source"),
        Some("database"),
        "it gave up"
    );
    assert_eq!(younger.status, StatusCode::OK);
    assert_eq!(younger.header("x-data-source"), Some("database"));
    assert_eq!(younger.ids(), [5, 6]);
}

/// A server with the page cache off and one pooled connection, on 60 seeded rows, the row
/// count already cached (so that a page request runs only the page's statement); `tweak`
/// changes the settings first. It does not listen for changes: the seed's notification would
/// drop the cached count (and have the table copy taken again) at a moment no test chooses.
async fn one_connection(
    tweak: impl FnOnce(&mut portfolio_server::config::Settings),
) -> (TestDb, TestApp) {
    let db = TestDb::new();
    let mut s = crate::helpers::settings(Some(&db.url));
    s.cache.max_bytes = 0; // every page from the database
    s.database.pool_max_size = 1;
    s.database.listen = false;
    tweak(&mut s);
    let app = TestApp::spawn(s).await;
    db.seed(60);
    assert_eq!(app.get("/api/images?limit=2").await.ids(), [1, 2]);
    (db, app)
}

/// Whether `db_pool_waiting` reaches `n` within 10 s.
async fn pool_waiting_reaches(app: &TestApp, n: f64) -> bool {
    for _ in 0..500 {
        if get(&scrape(app).await, "db_pool_waiting") == n {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}
