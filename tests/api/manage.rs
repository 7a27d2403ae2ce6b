//! Managing photos: `GET`, `PATCH`, `DELETE /api/images/{id}` and `GET /api/categories`, with
//! every failure order of a delete.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use poem::http::{Method, StatusCode};
use portfolio_server::storage::{ObjectStore, Put, StorageError, local::LocalStore};
use serde_json::json;

use crate::{
    fake_supabase::{FakeStorage, SERVICE_KEY, start_fake},
    helpers::{
        API_KEY, TestApp, TestDb, ToggleProxy, eventually, files_in, jpeg, objects_of,
        upload_settings,
    },
};

fn names(db: &TestDb) -> Vec<String> {
    db.rows("SELECT filename FROM photographs ORDER BY id")
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect()
}

/// Listing ids, through the cache.
async fn listed(app: &TestApp) -> Vec<i64> {
    app.get("/api/images?limit=100").await.ids()
}

#[tokio::test(flavor = "multi_thread")]
async fn get_patch_and_delete_a_photo_with_the_cache_following_at_once() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = TestApp::spawn(upload_settings(Some(&db.url), media.path())).await;
    let a = app.upload("a.jpg", jpeg(40, 30, None)).await.json();
    let b = app.upload("b.jpg", jpeg(40, 30, None)).await.json();
    let (ida, idb) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());
    assert_eq!(listed(&app).await, [ida, idb]); // now cached

    let got = app
        .admin(
            Method::GET,
            &format!("/api/images/{ida}"),
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json(), a, "the same record the upload answered");

    let cats = app.get("/api/categories").await;
    assert_eq!(cats.status, StatusCode::OK);
    assert_eq!(cats.json(), json!([{"category": "nature", "count": 2}]));

    let patched = app
        .admin(
            Method::PATCH,
            &format!("/api/images/{idb}"),
            Some(API_KEY),
            Some(json!({"category": "  City  Lights "})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    assert_eq!(patched.json()["category"], "city lights");
    assert_eq!(patched.json()["filename"], "b.jpg");
    let city = app.get("/api/images?category=city lights").await;
    assert_eq!(city.ids(), [idb], "the cached pages were dropped at once");
    assert_eq!(
        app.get("/api/categories").await.json(),
        json!([{"category": "city lights", "count": 1}, {"category": "nature", "count": 1}])
    );

    let deleted = app
        .admin(
            Method::DELETE,
            &format!("/api/images/{ida}"),
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text());
    assert!(deleted.body.is_empty());
    assert_eq!(listed(&app).await, [idb], "gone from the listing at once");
    assert_eq!(names(&db), ["b.jpg"]);
    assert_eq!(
        files_in(media.path()),
        objects_of("", &["b.jpg"]),
        "every object of a.jpg went"
    );
    assert_eq!(app.state.cleanup.pending(), 0);
    let again = app
        .admin(
            Method::GET,
            &format!("/api/images/{ida}"),
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.json(), json!({"detail": "Photo not found"}));
    // The name is free again.
    assert_eq!(
        app.upload("a.jpg", jpeg(40, 30, None)).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_clear_and_change_nothing() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let mut s = upload_settings(Some(&db.url), media.path());
    s.upload.allowed_categories = vec!["nature".into(), "city".into()];
    let app = TestApp::spawn(s).await;
    let id = app.upload("x.jpg", jpeg(20, 20, None)).await.json()["id"]
        .as_i64()
        .unwrap();
    let path = format!("/api/images/{id}");
    for (method, key) in [
        (Method::GET, None),
        (Method::DELETE, Some("wrong")),
        (Method::PATCH, None),
    ] {
        let r = app
            .admin(
                method.clone(),
                &path,
                key,
                Some(json!({"category": "city"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method}");
        assert_eq!(r.json(), json!({"detail": "Invalid or missing API key"}));
    }
    let cases = [
        (
            json!({"category": "space"}),
            "Invalid category: `space` is not one of: nature, city",
        ),
        (
            json!({"category": ""}),
            "Invalid category: must have a character other than whitespace",
        ),
        (
            json!({"filename": "y.jpg"}),
            "Renaming is not supported: upload the photo under the new name, then delete this one",
        ),
        (json!({}), "Nothing to change: send {\"category\": \"...\"}"),
        // A number is not a category (poem-openapi's String would have taken it as "5").
        (json!({"category": 5}), "`category` must be a string, not 5"),
        (
            json!({"category": "city", "width": 3}),
            "`width` cannot be changed: only `category` can (send {\"category\": \"...\"})",
        ),
        (
            json!(["city"]),
            "The body is not a JSON object: send {\"category\": \"...\"}",
        ),
    ];
    for (body, detail) in cases {
        let r = app
            .admin(Method::PATCH, &path, Some(API_KEY), Some(body.clone()))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.json()["detail"], detail, "{body}");
    }
    let not_json = app
        .admin(Method::PATCH, &path, Some(API_KEY), Some(json!("city")))
        .await;
    assert_eq!(
        not_json.status,
        StatusCode::BAD_REQUEST,
        "{}",
        not_json.text()
    );
    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let r = app
            .admin(
                method.clone(),
                "/api/images/999",
                Some(API_KEY),
                Some(json!({"category": "city"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method}");
    }
    let r = app
        .admin(Method::DELETE, "/api/images/abc", Some(API_KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    let r = app.admin(Method::PUT, &path, Some(API_KEY), None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("GET, HEAD, PATCH, DELETE"));
    // Nothing changed.
    let row = db.rows(&format!("SELECT category FROM photographs WHERE id = {id}"));
    assert_eq!(row[0][0].as_deref(), Some("nature"));
    assert_eq!(files_in(media.path()), objects_of("", &["x.jpg"]));
}

/// A local store whose deletes fail while `failing`.
struct DeletesFail {
    inner: LocalStore,
    failing: AtomicBool,
}

impl ObjectStore for DeletesFail {
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<Put, StorageError> {
        self.inner.put_new(key, bytes)
    }
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StorageError::Unavailable("storage down (injected)".into()));
        }
        self.inner.delete(key)
    }
    fn exists(&self, key: &str) -> Result<bool, StorageError> {
        self.inner.exists(key)
    }
    fn public_url(&self, key: &str) -> String {
        self.inner.public_url(key)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_down_during_a_delete_removes_the_objects_once_it_is_back() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let store = Arc::new(DeletesFail {
        inner: LocalStore::new(media.path(), "http://media.test/media"),
        failing: AtomicBool::new(false),
    });
    let s = upload_settings(Some(&db.url), media.path());
    let app = TestApp::spawn_with_store(s, store.clone()).await;
    let id = app.upload("d.jpg", jpeg(30, 20, None)).await.json()["id"]
        .as_i64()
        .unwrap();
    store.failing.store(true, Ordering::SeqCst);
    let r = app
        .admin(
            Method::DELETE,
            &format!("/api/images/{id}"),
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::NO_CONTENT,
        "the row is gone: {}",
        r.text()
    );
    assert!(listed(&app).await.is_empty());
    assert!(names(&db).is_empty());
    assert_eq!(
        files_in(media.path()),
        objects_of("", &["d.jpg"]),
        "not removable yet"
    );
    assert_eq!(app.state.cleanup.pending(), 1, "the journal holds them");
    // Meanwhile the name cannot be taken by a new upload while its old object is there.
    assert_eq!(
        app.upload("d.jpg", jpeg(30, 20, None)).await.status,
        StatusCode::CONFLICT
    );

    store.failing.store(false, Ordering::SeqCst);
    assert!(
        eventually(10, || files_in(media.path()).is_empty()).await,
        "{:?}",
        files_in(media.path())
    );
    assert!(eventually(5, || app.state.cleanup.pending() == 0).await);
    assert_eq!(
        app.upload("d.jpg", jpeg(30, 20, None)).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_that_dies_after_the_commit_has_its_objects_removed_on_restart() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let s = upload_settings(Some(&db.url), media.path());
    let store = Arc::new(DeletesFail {
        inner: LocalStore::new(media.path(), "http://media.test/media"),
        failing: AtomicBool::new(false),
    });
    let first = TestApp::spawn_with_store(s.clone(), store.clone()).await;
    let id = first.upload("crash.jpg", jpeg(30, 20, None)).await.json()["id"]
        .as_i64()
        .unwrap();
    // The objects cannot be removed, and then the process is gone: only the journal remembers.
    store.failing.store(true, Ordering::SeqCst);
    let r = first
        .admin(
            Method::DELETE,
            &format!("/api/images/{id}"),
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    drop(first);
    assert_eq!(files_in(media.path()), objects_of("", &["crash.jpg"]));

    let second = TestApp::spawn(s).await; // the real store, the same journal folder
    assert!(
        eventually(10, || files_in(media.path()).is_empty()).await,
        "{:?}",
        files_in(media.path())
    );
    assert!(names(&db).is_empty());
    assert!(eventually(5, || second.state.cleanup.pending() == 0).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_that_never_committed_keeps_the_photo_whole() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let proxy = ToggleProxy::start(&db.url).await;
    let s = upload_settings(Some(&proxy.url_for(&db.url)), media.path());
    let app = TestApp::spawn(s.clone()).await;
    let id = app.upload("kept.jpg", jpeg(30, 20, None)).await.json()["id"]
        .as_i64()
        .unwrap();
    proxy.cut_and_wait();
    let r = app
        .admin(
            Method::DELETE,
            &format!("/api/images/{id}"),
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    proxy.restore();
    assert_eq!(names(&db), ["kept.jpg"]);
    assert_eq!(files_in(media.path()), objects_of("", &["kept.jpg"]));
    // The next delete needs the database back up for the app (its re-probe), or it is a 503.
    let back = app.state.db.clone().unwrap();
    assert!(eventually(10, || back.is_available()).await);

    // The COMMIT went through but its answer was lost: asked again, the row is gone, so the
    // delete succeeded and its objects go.
    proxy.lose_next_commit_reply();
    let r = app
        .admin(
            Method::DELETE,
            &format!("/api/images/{id}"),
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(
        eventually(10, || files_in(media.path()).is_empty()).await,
        "{:?}",
        files_in(media.path())
    );
    assert!(names(&db).is_empty());
    assert!(eventually(5, || app.state.cleanup.pending() == 0).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_from_supabase_removes_the_photo_and_its_variants() {
    let db = TestDb::new();
    let fake = Arc::new(FakeStorage::default());
    let base = start_fake(fake.clone()).await;
    let mut s = upload_settings(Some(&db.url), &std::env::temp_dir());
    s.storage.backend = Some(portfolio_server::config::StorageBackend::Supabase);
    s.storage.supabase_url = Some(base);
    s.storage.supabase_key = Some(portfolio_server::config::Secret::new(SERVICE_KEY));
    let app = TestApp::spawn(s).await;
    let stored = || {
        let mut k: Vec<String> = fake.objects.lock().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let a = app.upload("sky.jpg", jpeg(30, 20, None)).await.json()["id"]
        .as_i64()
        .unwrap();
    app.upload("sea.jpg", jpeg(30, 20, None)).await;
    assert_eq!(stored(), objects_of("images/", &["sea.jpg", "sky.jpg"]));
    let r = app
        .admin(
            Method::DELETE,
            &format!("/api/images/{a}"),
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(stored(), objects_of("images/", &["sea.jpg"]));
    assert_eq!(names(&db), ["sea.jpg"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_of_the_original_are_deleted_without_touching_what_others_share() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = TestApp::spawn(upload_settings(Some(&db.url), media.path())).await;
    std::fs::write(media.path().join("Twice.jpg"), jpeg(10, 10, None)).unwrap();
    // The original had no unique names: two rows, one object (made before migration 0002,
    // which claimed the name for the first); and a row in another store.
    db.execute("ALTER TABLE photographs DISABLE TRIGGER photographs_claim_name");
    db.execute(
        "INSERT INTO photographs (filename, url) VALUES \
         ('Twice.jpg', 'http://media.test/media/Twice.jpg'), \
         ('Twice.jpg', 'http://media.test/media/Twice.jpg'), \
         ('demo.jpg', 'https://res.cloudinary.com/demo.jpg')",
    );
    db.execute(
        "INSERT INTO photograph_names (name, photograph_id) \
         SELECT lower(filename), min(id) FROM photographs GROUP BY lower(filename)",
    );
    db.execute("ALTER TABLE photographs ENABLE TRIGGER photographs_claim_name");
    for id in [3, 1] {
        let r = app
            .admin(
                Method::DELETE,
                &format!("/api/images/{id}"),
                Some(API_KEY),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
    assert_eq!(
        files_in(media.path()),
        ["Twice.jpg"],
        "the other row still shows it"
    );
    let r = app
        .admin(Method::DELETE, "/api/images/2", Some(API_KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(
        files_in(media.path()).is_empty(),
        "the last row took it along"
    );
    assert!(names(&db).is_empty());
}

/// The process died between writing down a delete and committing it: the row stands, so the
/// resolver keeps the photo's objects and drops the entry.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_that_died_before_its_commit_keeps_the_photo_after_a_restart() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let s = upload_settings(Some(&db.url), media.path());
    let first = TestApp::spawn(s.clone()).await;
    first.upload("stays.jpg", jpeg(30, 20, None)).await;
    drop(first);
    // What step 1 of a delete leaves on disk, as the journal writes it.
    let journal = portfolio_server::write::journal::Journal::open(&s.upload.journal_dir).unwrap();
    let entry = journal
        .record_with(
            "stays.jpg",
            &[
                "thumb--stays.jpg".to_string(),
                "medium--stays.jpg".to_string(),
            ],
            std::time::Duration::ZERO,
        )
        .unwrap();
    journal.release(&entry);

    let second = TestApp::spawn(s).await;
    assert!(eventually(10, || second.state.cleanup.pending() == 0).await);
    assert_eq!(files_in(media.path()), objects_of("", &["stays.jpg"]));
    assert_eq!(names(&db), ["stays.jpg"]);
    assert_eq!(listed(&second).await.len(), 1);
}

/// A row of the original whose object key is not its name (`IMG_0001.jpg` for the photo named
/// `sunset.jpg`): a delete that died before its commit leaves an entry that goes with the
/// *name*. After a restart the resolver finds the row still holding the name and keeps the
/// object; had it gone by the key, no row would have claimed it and the photo would be lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_that_died_before_its_commit_keeps_a_photo_whose_key_is_not_its_name() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let s = upload_settings(Some(&db.url), media.path());
    drop(TestApp::spawn(s.clone()).await); // migrates the database
    let base = s.storage.public_base_url.trim_end_matches('/').to_string();
    db.execute(&format!(
        "INSERT INTO photographs (filename, url) VALUES ('Sunset.jpg', '{base}/IMG_0001.jpg')"
    ));
    std::fs::write(media.path().join("IMG_0001.jpg"), b"the original's photo").unwrap();
    // What step 1 of the delete writes down, as manage's delete writes it.
    let journal = portfolio_server::write::journal::Journal::open(&s.upload.journal_dir).unwrap();
    let entry = journal
        .record_claimed(
            "IMG_0001.jpg",
            "sunset.jpg",
            &["thumb--IMG_0001.jpg".to_string()],
            std::time::Duration::ZERO,
        )
        .unwrap();
    journal.release(&entry);

    let app = TestApp::spawn(s).await;
    assert!(eventually(10, || app.state.cleanup.pending() == 0).await);
    assert_eq!(files_in(media.path()), ["IMG_0001.jpg"]);
    assert_eq!(names(&db), ["Sunset.jpg"]);
}

/// JSON bodies are small: a declared 1 GiB body is a 413 at once (nothing is waited for), a
/// chunked body of 1 MiB is cut off with a 413, and the row is unchanged. A normal edit works.
#[tokio::test(flavor = "multi_thread")]
async fn a_patch_body_over_the_json_limit_is_a_413_before_it_is_read() {
    use std::io::{Read, Write};
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let s = upload_settings(Some(&db.url), media.path());
    let app = TestApp::spawn(s.clone()).await;
    let id = app.upload("a.jpg", jpeg(30, 20, None)).await.json()["id"]
        .as_i64()
        .unwrap();

    // Over TCP, so that only the headers are ever sent.
    let server = portfolio_server::app::App::build(s).await.unwrap();
    let addr = server.local_addr();
    let running = tokio::spawn(server.run_until_stopped(std::future::pending()));
    let head = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            c,
            "PATCH /api/images/{id} HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n{{\"category\":\""
        )
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    running.abort();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("limit for JSON"), "{head}");

    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        std::iter::once(b"{\"category\":\"".to_vec())
            .chain(std::iter::repeat_n(vec![b'x'; 64 * 1024], 16))
            .map(|c| Ok(bytes::Bytes::from(c)))
            .collect();
    let r = app
        .client
        .patch(format!("/api/images/{id}"))
        .header("x-api-key", API_KEY)
        .header("content-type", "application/json")
        .body(poem::Body::from_bytes_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    r.assert_status(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        db.rows("SELECT category FROM photographs")[0][0].as_deref(),
        Some("nature")
    );
    let ok = app
        .admin(
            Method::PATCH,
            &format!("/api/images/{id}"),
            Some(API_KEY),
            Some(json!({"category": "street"})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
}
