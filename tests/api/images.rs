//! `GET /api/images` with the database up.

use std::sync::atomic::Ordering;

use poem::http::StatusCode;

use crate::helpers::{TestApp, TestDb};

#[tokio::test(flavor = "multi_thread")]
async fn pages_are_ordered_by_id_and_honour_limit_and_offset() {
    let db = TestDb::new();
    let app = TestApp::with_db(&db).await;
    db.seed(25);
    // Delete a few so ids have gaps: pagination is by position, ordering by id.
    db.execute("DELETE FROM photographs WHERE id IN (3, 4, 17)");

    let first = app.get("/api/images").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.ids(),
        vec![1, 2, 5, 6, 7, 8, 9, 10, 11, 12],
        "default limit is 10"
    );
    assert_eq!(first.header("x-data-source"), Some("database"));

    let page = app.get("/api/images?limit=5&offset=10").await;
    assert_eq!(page.ids(), vec![13, 14, 15, 16, 18]);
    let tail = app.get("/api/images?limit=100&offset=20").await;
    assert_eq!(tail.ids(), vec![24, 25], "22 rows remain");
    let past_end = app.get("/api/images?offset=1000").await;
    assert_eq!(past_end.status, StatusCode::OK);
    assert_eq!(past_end.body, b"[]");
}

#[tokio::test(flavor = "multi_thread")]
async fn items_have_the_contract_fields_and_types() {
    let db = TestDb::new();
    let app = TestApp::with_db(&db).await;
    db.seed(1);
    let r = app.get("/api/images").await;
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let item = &r.json()[0];
    assert_eq!(item["id"], 1);
    assert_eq!(item["filename"], "photo-1.jpg");
    assert_eq!(item["url"], "https://cdn.example/photo-1.jpg");
    assert_eq!(item["category"], "city");
    assert_eq!(item["width"], 1001);
    assert_eq!(item["height"], 2001);
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_range_or_non_integer_parameters_are_422_naming_the_parameter() {
    let db = TestDb::new();
    let app = TestApp::with_db(&db).await;
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=-5", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("limit=", "limit"),
        ("offset=-1", "offset"),
        ("offset=ten", "offset"),
        ("offset=99999999999999999999", "offset"),
    ] {
        let r = app.get(&format!("/api/images?{query}")).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        let detail = r.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(param), "{query}: {detail}");
    }
    // The bounds themselves are fine.
    for query in ["limit=1", "limit=100", "offset=0"] {
        let r = app.get(&format!("/api/images?{query}")).await;
        assert_eq!(r.status, StatusCode::OK, "{query}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etag_and_if_none_match_give_304() {
    let db = TestDb::new();
    let app = TestApp::with_db(&db).await;
    db.seed(3);
    let r = app.get("/api/images").await;
    let etag = r.header("etag").expect("etag").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(r.header("cache-control"), Some("public, max-age=10"));

    let again = app
        .request("/api/images", &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));

    let other = app
        .request("/api/images", &[("if-none-match", "\"something-else\"")])
        .await;
    assert_eq!(other.status, StatusCode::OK);

    // A different page has a different ETag.
    let page2 = app.get("/api/images?limit=1").await;
    assert_ne!(page2.header("etag"), Some(etag.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn x_total_count_is_the_number_of_rows() {
    let db = TestDb::new();
    let app = TestApp::with_db(&db).await;
    db.seed(42);
    let r = app.get("/api/images?limit=5").await;
    assert_eq!(r.header("x-total-count"), Some("42"));
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_are_cached_and_invalidation_shows_new_rows() {
    let db = TestDb::new();
    let app = TestApp::with_db(&db).await;
    db.seed(2);
    assert_eq!(app.get("/api/images").await.ids(), vec![1, 2]);
    db.seed(1); // a row written behind the server's back
    let cached = app.get("/api/images").await;
    assert_eq!(cached.ids(), vec![1, 2], "served from the cache");
    assert_eq!(cached.header("x-total-count"), Some("2"));

    app.state.listing.invalidate(); // what an upload does after committing
    let fresh = app.get("/api/images").await;
    assert_eq!(fresh.ids(), vec![1, 2, 3]);
    assert_eq!(fresh.header("x-total-count"), Some("3"));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_cache_disabled_every_request_reads_the_database() {
    let db = TestDb::new();
    let mut s = crate::helpers::settings(Some(&db.url));
    s.cache.max_bytes = 0;
    let app = TestApp::spawn(s).await;
    db.seed(1);
    assert_eq!(app.get("/api/images").await.ids(), vec![1]);
    db.seed(1);
    assert_eq!(app.get("/api/images").await.ids(), vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn keyset_pages_follow_the_link_header_to_the_end() {
    let db = TestDb::new();
    let app = TestApp::with_db(&db).await;
    db.seed(25);
    db.execute("DELETE FROM photographs WHERE id IN (3, 4, 17)");

    let mut uri = "/api/images?after_id=0&limit=10".to_string();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let r = app.get(&uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        seen.extend(r.ids());
        pages += 1;
        match r.header("link") {
            Some(link) => {
                let next = link
                    .strip_prefix('<')
                    .and_then(|l| l.split_once(">; rel=\"next\""))
                    .map(|(u, _)| u.to_string())
                    .unwrap_or_else(|| panic!("bad Link: {link}"));
                assert!(next.contains("after_id="), "{next}");
                uri = next;
            }
            None => break,
        }
    }
    let all: Vec<i64> = (1..=25).filter(|i| ![3, 4, 17].contains(i)).collect();
    assert_eq!(seen, all);
    assert_eq!(pages, 3);

    let r = app.get("/api/images?after_id=16&limit=3").await;
    assert_eq!(r.ids(), vec![18, 19, 20]);
    assert_eq!(r.header("x-total-count"), Some("22"));
    // Both: `offset` rows skipped after `after_id`; the next page continues by key.
    let r = app.get("/api/images?after_id=16&offset=2&limit=3").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.ids(), vec![20, 21, 22]);
    assert_eq!(
        r.header("link"),
        Some("</api/images?after_id=22&limit=3>; rel=\"next\"")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn offset_pages_link_to_the_next_offset() {
    let db = TestDb::new();
    let app = TestApp::with_db(&db).await;
    db.seed(12);
    let r = app.get("/api/images?limit=5&offset=5").await;
    assert_eq!(
        r.header("link"),
        Some("</api/images?limit=5&offset=10>; rel=\"next\"")
    );
    let last = app.get("/api/images?limit=5&offset=10").await;
    assert_eq!(last.ids(), vec![11, 12]);
    assert_eq!(last.header("link"), None, "a short page is the last");
}

#[tokio::test(flavor = "multi_thread")]
async fn category_filters_both_forms_and_the_total() {
    let db = TestDb::new();
    let app = TestApp::with_db(&db).await;
    db.seed(10); // even ids are 'nature', odd 'city'
    db.execute("UPDATE photographs SET category = 'Nature' WHERE id = 2"); // as the original wrote

    let r = app.get("/api/images?category=nature&limit=3").await;
    assert_eq!(r.ids(), vec![2, 4, 6]);
    assert_eq!(r.header("x-total-count"), Some("5"));
    assert_eq!(
        r.header("link"),
        Some("</api/images?limit=3&offset=3&category=nature>; rel=\"next\"")
    );
    let r = app
        .get("/api/images?category=NATURE&after_id=4&limit=2")
        .await;
    assert_eq!(r.ids(), vec![6, 8]);
    assert_eq!(
        r.header("link"),
        Some("</api/images?after_id=8&limit=2&category=nature>; rel=\"next\"")
    );
    let none = app.get("/api/images?category=food").await;
    assert_eq!(none.body, b"[]");
    assert_eq!(none.header("x-total-count"), Some("0"));
    // The unfiltered total is not confused with a category's.
    assert_eq!(
        app.get("/api/images").await.header("x-total-count"),
        Some("10")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keyset_and_category_parameters_are_validated() {
    let db = TestDb::new();
    let app = TestApp::with_db(&db).await;
    for (query, needle) in [
        ("after_id=-1", "after_id"),
        ("after_id=x", "after_id"),
        ("category=", "category"),
        (&format!("category={}", "x".repeat(51)), "category"),
    ] {
        let r = app.get(&format!("/api/images?{query}")).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        let detail = r.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(needle), "{query}: {detail}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_fallback_honours_keyset_and_category_too() {
    let app = TestApp::spawn(crate::helpers::settings(None)).await;
    let r = app.get("/api/images?category=landscape&limit=100").await;
    assert_eq!(r.ids(), vec![1, 3, 6, 8, 11]);
    assert_eq!(r.header("x-total-count"), Some("5"));
    let r = app.get("/api/images?after_id=10&limit=100").await;
    assert_eq!(r.ids(), vec![11, 12, 13]);
}

/// Every query of a generated grid: each parameter in and out of range, malformed, empty,
/// repeated, percent-encoded, combined with the others and with conditional and gzip requests.
fn query_grid() -> Vec<(String, Vec<(&'static str, String)>)> {
    let limits = [
        None,
        Some("0"),
        Some("1"),
        Some("10"),
        Some("100"),
        Some("101"),
        Some("-1"),
        Some("abc"),
        Some(""),
        Some("1e2"),
        Some("007"),
        Some("%31%30"),
        Some("99999999999999999999"),
    ];
    let offsets = [
        None,
        Some("0"),
        Some("5"),
        Some("28"),
        Some("1000"),
        Some("-1"),
        Some("x"),
        Some(""),
    ];
    let after_ids = [
        None,
        Some("0"),
        Some("7"),
        Some("-3"),
        Some("x"),
        Some("%37"),
    ];
    let categories = [
        None,
        Some("city"),
        Some("City"),
        Some("NATURE"),
        Some(""),
        Some("a%20b"),
        Some("street+photo"),
        Some("no_such-category"),
        Some("%E2%82%AC"),
    ];
    let long = "x".repeat(51);
    let mut grid = Vec::new();
    let mut n = 0usize;
    for limit in limits {
        for offset in offsets {
            for after_id in after_ids {
                n += 1;
                let category = if n.is_multiple_of(4) {
                    Some(long.as_str())
                } else {
                    categories[n % categories.len()]
                };
                let mut pairs = Vec::new();
                for (name, value) in [
                    ("limit", limit),
                    ("offset", offset),
                    ("after_id", after_id),
                    ("category", category),
                ] {
                    if let Some(v) = value {
                        pairs.push(format!("{name}={v}"));
                    }
                }
                if n.is_multiple_of(7) {
                    pairs.push("limit=5".into()); // repeated (or first) limit
                }
                if n.is_multiple_of(11) {
                    pairs.push("unknown=1".into());
                }
                if n.is_multiple_of(13) {
                    pairs.insert(0, String::new()); // an empty pair: `?&limit=...`
                }
                if n.is_multiple_of(17) {
                    pairs.push("limit".into()); // no `=`
                }
                let mut headers = Vec::new();
                if n.is_multiple_of(3) {
                    headers.push(("accept-encoding", "gzip, br".to_string()));
                }
                if n.is_multiple_of(5) {
                    headers.push(("accept-encoding", "gzip;q=0".to_string()));
                }
                grid.push((pairs.join("&"), headers));
            }
        }
    }
    // And every combination of valid values, which the fast path must answer.
    for limit in [None, Some("1"), Some("10"), Some("100")] {
        for page in [
            None,
            Some("offset=0"),
            Some("offset=5"),
            Some("offset=28"),
            Some("offset=1000"),
            Some("after_id=0"),
            Some("after_id=7"),
            Some("after_id=29"),
        ] {
            for category in [
                None,
                Some("city"),
                Some("City"),
                Some("NATURE"),
                Some("none-such"),
            ] {
                let mut pairs = Vec::new();
                if let Some(l) = limit {
                    pairs.push(format!("limit={l}"));
                }
                pairs.extend(page.map(str::to_string));
                if let Some(c) = category {
                    pairs.push(format!("category={c}"));
                }
                n += 1;
                let headers = if n.is_multiple_of(2) {
                    vec![("accept-encoding", "gzip".to_string())]
                } else {
                    vec![]
                };
                grid.push((pairs.join("&"), headers));
            }
        }
    }
    grid
}

/// The response as comparable parts: status, every header but the request id (sorted), body.
async fn parts(resp: poem::Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let status = resp.status().as_u16();
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str() != "x-request-id")
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    (status, headers, resp.into_body().into_vec().await.unwrap())
}

/// The listing's fast path (in front of the router) and the documented operation must answer
/// identically: for every query of the grid the fast path either answers (and the counter says
/// it did) with the same status, headers and bytes as the documented operation, or declines.
#[tokio::test(flavor = "multi_thread")]
async fn the_fast_path_answers_exactly_as_the_documented_operation_or_declines() {
    use poem::EndpointExt;
    let db = TestDb::new();
    let app = TestApp::with_db(&db).await;
    db.seed(30);
    let documented = poem::test::TestClient::new(
        portfolio_server::app::routes_without_fast_path(app.state.clone()).boxed(),
    );
    let fast_runs = || app.state.fast_listings.load(Ordering::SeqCst);
    let (mut answered, mut declined) = (0, 0);
    // Both shapes of the listing: the original's records, and the second system's links.
    let grid = query_grid().into_iter().flat_map(|(q, h)| {
        ["/api/images", "/api/photos"].map(|path| (format!("{path}?{q}"), h.clone()))
    });
    for (uri, mut headers) in grid {
        for conditional in [false, true] {
            if conditional {
                // Ask again with the ETag just served: 304 from both, or neither.
                let first = app.client.get(&uri).send().await.0;
                let Some(tag) = first.headers().get("etag") else {
                    continue;
                };
                headers.push(("if-none-match", tag.to_str().unwrap().to_string()));
            }
            let before = fast_runs();
            let mut req = app.client.get(&uri);
            for (k, v) in &headers {
                req = req.header(*k, v);
            }
            let fast = parts(req.send().await.0).await;
            let took_fast_path = fast_runs() - before == 1;
            let mut req = documented.get(&uri);
            for (k, v) in &headers {
                req = req.header(*k, v);
            }
            let slow = parts(req.send().await.0).await;
            assert_eq!(fast.0, slow.0, "{uri} {headers:?}: status");
            assert_eq!(fast.1, slow.1, "{uri} {headers:?}: headers");
            assert!(fast.2 == slow.2, "{uri} {headers:?}: body");
            if took_fast_path {
                answered += 1;
            } else {
                declined += 1;
            }
        }
    }
    // The grid really exercises the fast path, and its plain cases all took it.
    assert!(
        answered > 600 && declined > 600,
        "{answered} fast, {declined} declined"
    );
    for plain in [
        "",
        "limit=10&offset=0",
        "after_id=7&limit=3",
        "category=City&limit=4",
        "limit=100&offset=28&category=nature",
        "offset=1&after_id=1",
    ] {
        for path in ["/api/images", "/api/photos"] {
            let before = fast_runs();
            let r = app.get(&format!("{path}?{plain}")).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(fast_runs() - before, 1, "{path}?{plain} took the fast path");
        }
    }
    for unusual in ["limit=0", "limit=%31", "limit=1&limit=2", "x=1"] {
        let before = fast_runs();
        app.get(&format!("/api/images?{unusual}")).await;
        assert_eq!(fast_runs(), before, "`{unusual}` declined");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unusual_queries_take_the_documented_route_and_its_errors() {
    let app = TestApp::spawn(crate::helpers::settings(None)).await;
    // Percent-encoded and repeated parameters are left to the full parser.
    let r = app.get("/api/images?limit=2&limit=3").await;
    // A repeated parameter: the full parser answers with the first value (poem's). The
    // original (Starlette) takes the last; that difference is known and not yet decided.
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.ids(), vec![1, 2]);
    let r = app.get("/api/images?limit=0").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.json()["detail"].as_str().unwrap().contains("limit"));
    let r = app.get("/api/images?unknown=1&limit=2").await;
    assert_eq!(
        r.ids(),
        vec![1, 2],
        "unknown parameters are ignored, as before"
    );
}
