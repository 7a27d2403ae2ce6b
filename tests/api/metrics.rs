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
