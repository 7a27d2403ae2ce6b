//! `POST /api/upload` and `/api/upload-batch` with the local storage backend, for real.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use poem::http::StatusCode;
use portfolio_server::storage::{ObjectStore, Put, StorageError, local::LocalStore};

use crate::helpers::{
    API_KEY, Form, TestApp, TestDb, ToggleProxy, files_in, jpeg, objects_of, png, upload_settings,
};

/// Row count and the names of rows in `photographs`.
fn rows(db: &TestDb) -> Vec<String> {
    db.rows("SELECT filename FROM photographs ORDER BY id")
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect()
}

async fn app(db: &TestDb, media: &Path) -> TestApp {
    TestApp::spawn(upload_settings(Some(&db.url), media)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_is_stored_recorded_listed_and_served() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = app(&db, media.path()).await;
    assert_eq!(app.get("/api/images").await.body, b"[]"); // cache the empty page

    let photo = jpeg(64, 48, None);
    let r = app
        .post_form(
            "/api/upload",
            &Form::new()
                .text("category", " Street ")
                .file("file", "My Photo.JPG", photo.clone()),
            Some(API_KEY),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let rec = r.json();
    assert_eq!(rec["filename"], "my-photo.jpg");
    assert_eq!(rec["url"], "http://media.test/media/my-photo.jpg");
    assert_eq!(rec["category"], "street");
    assert_eq!(
        (rec["width"].as_i64(), rec["height"].as_i64()),
        (Some(64), Some(48))
    );
    assert!(rec["id"].is_i64());

    assert_eq!(files_in(media.path()), objects_of("", &["my-photo.jpg"]));
    assert_eq!(
        std::fs::read(media.path().join("my-photo.jpg")).unwrap(),
        photo
    );
    assert_eq!(rows(&db), ["my-photo.jpg"]);

    let listing = app.get("/api/images").await;
    assert_eq!(listing.json()[0], rec, "visible right after upload");
    assert_eq!(listing.header("x-total-count"), Some("1"));

    let served = app.get("/media/my-photo.jpg").await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.body, photo);
    assert!(
        served
            .header("cache-control")
            .unwrap()
            .contains("immutable")
    );
    let etag = served.header("etag").expect("etag").to_string();
    let again = app
        .request("/media/my-photo.jpg", &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_category_is_nature() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = app(&db, media.path()).await;
    let r = app.upload("a.jpeg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["category"], "nature");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_wrong_key_is_401_and_nothing_is_stored() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = app(&db, media.path()).await;
    let form = Form::new().file("file", "a.jpg", jpeg(8, 8, None));
    for key in [None, Some("wrong"), Some(""), Some("test-admin-key ")] {
        for path in ["/api/upload", "/api/upload-batch"] {
            let r = app.post_form(path, &form, key).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path} {key:?}");
            assert_eq!(r.json()["detail"], "Invalid or missing API key");
        }
    }
    assert!(files_in(media.path()).is_empty());
    assert!(rows(&db).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_configured_admin_key_uploads_are_503_saying_what_to_set() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let mut s = upload_settings(Some(&db.url), media.path());
    s.auth.admin_api_key = None;
    let app = TestApp::spawn(s).await;
    for path in ["/api/upload", "/api/upload-batch"] {
        let r = app
            .post_form(
                path,
                &Form::new().file("file", "a.jpg", jpeg(8, 8, None)),
                Some("x"),
            )
            .await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(
            r.json()["detail"]
                .as_str()
                .unwrap()
                .contains("ADMIN_API_KEY")
        );
    }
    assert!(files_in(media.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn non_jpegs_unreadable_and_huge_images_are_400_and_leave_nothing() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = app(&db, media.path()).await;
    let good = jpeg(40, 30, None);
    let mut huge = jpeg(16, 16, None);
    let sof = huge.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    huge[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]); // 60000x60000
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "renamed.jpg",
            png(8, 8),
            "Only .jpg/.jpeg files are accepted",
        ),
        (
            "photo.png",
            good.clone(),
            "Only .jpg/.jpeg files are accepted",
        ),
        (
            "notes.txt",
            b"hello".to_vec(),
            "Only .jpg/.jpeg files are accepted",
        ),
        (
            "empty.jpg",
            Vec::new(),
            "Only .jpg/.jpeg files are accepted",
        ),
        (
            "truncated.jpg",
            good[..good.len() / 2].to_vec(),
            "Unreadable image",
        ),
        ("huge.jpg", huge, "60000x60000"),
        ("bad\tname.jpg", good.clone(), "Invalid file name"),
    ];
    for (name, bytes, message) in cases {
        let r = app.upload(name, bytes).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}");
        let detail = r.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(message), "{name}: {detail}");
    }
    // A raw control byte in the part header is refused by the multipart parser itself.
    let r = app.upload("bad\u{1}name.jpg", good.clone()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app
        .post_form(
            "/api/upload",
            &Form::new()
                .text("category", "")
                .file("file", "ok.jpg", good),
            Some(API_KEY),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("Invalid category")
    );
    assert!(files_in(media.path()).is_empty());
    assert!(rows(&db).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn exif_orientation_6_gives_the_displayed_dimensions() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = app(&db, media.path()).await;
    let r = app.upload("portrait.jpg", jpeg(40, 30, Some(6))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        (r.json()["width"].as_i64(), r.json()["height"].as_i64()),
        (Some(30), Some(40))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn path_traversal_names_are_reduced_to_a_base_name_inside_the_media_folder() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let inner = media.path().join("media");
    let app = app(&db, &inner).await;
    for (name, stored) in [
        ("../../escape.jpg", "escape.jpg"),
        ("..\\..\\win.jpg", "win.jpg"),
        ("/etc/abs.jpg", "abs.jpg"),
        ("...dots.jpg", "dots.jpg"),
    ] {
        let r = app.upload(name, jpeg(8, 8, None)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}");
        assert_eq!(r.json()["filename"], stored);
    }
    assert_eq!(
        files_in(media.path()),
        ["media"],
        "nothing outside the folder"
    );
    assert_eq!(
        files_in(&inner),
        objects_of("", &["abs.jpg", "dots.jpg", "escape.jpg", "win.jpg"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_files_and_requests_are_413_with_or_without_content_length() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let mut s = upload_settings(Some(&db.url), media.path());
    let big = jpeg(400, 400, None);
    s.upload.max_file_bytes = (big.len() - 1) as u64;
    s.upload.max_request_bytes = 3 * big.len() as u64;
    let app = TestApp::spawn(s).await;

    let one_big = Form::new().file("file", "big.jpg", big.clone());
    let r = app.post_form("/api/upload", &one_big, Some(API_KEY)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.json()["detail"].as_str().unwrap().contains("larger than"));
    let r = app.post_form_chunked("/api/upload", &one_big).await;
    assert_eq!(
        r.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "per-file limit, chunked"
    );

    let mut too_much = Form::new();
    for i in 0..4 {
        too_much = too_much.file("file", &format!("p{i}.jpg"), big.clone());
    }
    let r = app.post_form("/api/upload", &too_much, Some(API_KEY)).await;
    assert_eq!(
        r.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "Content-Length over the request limit"
    );
    let r = app.post_form_chunked("/api/upload", &too_much).await;
    assert!(
        r.status == StatusCode::PAYLOAD_TOO_LARGE || r.status == StatusCode::BAD_REQUEST,
        "{}",
        r.status
    );
    let r = app.post_form_chunked("/api/upload-batch", &too_much).await;
    assert_eq!(
        r.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request limit, chunked"
    );
    assert!(r.json()["detail"].as_str().unwrap().contains("larger than"));

    assert!(files_in(media.path()).is_empty());
    assert!(rows(&db).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_name_is_409_and_the_first_photo_is_untouched() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = app(&db, media.path()).await;
    let first = jpeg(10, 10, None);
    assert_eq!(
        app.upload("Sea.jpg", first.clone()).await.status,
        StatusCode::CREATED
    );
    for name in ["sea.jpg", "SEA.JPG", "dir/Sea.jpg"] {
        let r = app.upload(name, jpeg(20, 20, None)).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}");
        assert_eq!(r.json()["detail"], "Duplicate filename: sea.jpg");
    }
    assert_eq!(std::fs::read(media.path().join("sea.jpg")).unwrap(), first);
    assert_eq!(rows(&db), ["sea.jpg"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_uploads_of_one_name_give_one_201_and_nineteen_409() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = Arc::new(app(&db, media.path()).await);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { app.upload("same.jpg", jpeg(10 + i, 10, None)).await })
        })
        .collect();
    let mut created = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::CREATED => created.push(r.json()),
            StatusCode::CONFLICT => conflicts += 1,
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert_eq!((created.len(), conflicts), (1, 19));
    assert_eq!(files_in(media.path()), objects_of("", &["same.jpg"]));
    assert_eq!(rows(&db), ["same.jpg"]);
    // The stored object is the winner's.
    let winner_width = created[0]["width"].as_u64().unwrap() as u32;
    let stored = std::fs::read(media.path().join("same.jpg")).unwrap();
    assert_eq!(stored, jpeg(winner_width, 10, None));
}

/// A real local store with failures injected around it.
struct Faulty {
    inner: LocalStore,
    fail_put: bool,
    after_put: Option<Box<dyn Fn() + Send + Sync>>,
    puts: AtomicUsize,
}

impl ObjectStore for Faulty {
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<Put, StorageError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        if self.fail_put {
            return Err(StorageError::Unavailable(
                "connection refused (injected)".into(),
            ));
        }
        let put = self.inner.put_new(key, bytes);
        if let Some(hook) = &self.after_put {
            hook();
        }
        put
    }
    fn delete(&self, key: &str) -> Result<(), StorageError> {
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
async fn when_storage_fails_no_row_is_kept_and_the_name_stays_free() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let store = Arc::new(Faulty {
        inner: LocalStore::new(media.path(), "http://m"),
        fail_put: true,
        after_put: None,
        puts: AtomicUsize::new(0),
    });
    let app =
        TestApp::spawn_with_store(upload_settings(Some(&db.url), media.path()), store.clone())
            .await;
    let r = app.upload("x.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("connection refused")
    );
    assert_eq!(store.puts.load(Ordering::SeqCst), 1);
    assert!(rows(&db).is_empty());
    assert!(
        db.rows("SELECT * FROM photograph_names").is_empty(),
        "the name claim was rolled back"
    );
    assert!(files_in(media.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_database_fails_after_the_object_is_stored_the_object_is_removed() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let proxy = Arc::new(ToggleProxy::start(&db.url).await);
    let cut = proxy.clone();
    let store = Arc::new(Faulty {
        inner: LocalStore::new(media.path(), "http://m"),
        fail_put: false,
        after_put: Some(Box::new(move || cut.cut_and_wait())),
        puts: AtomicUsize::new(0),
    });
    let s = upload_settings(Some(&proxy.url_for(&db.url)), media.path());
    let app = TestApp::spawn_with_store(s, store).await;

    let r = app.upload("lost.jpg", jpeg(8, 8, None)).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    proxy.restore();
    // Once the database answers again, the object of the uncommitted row goes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !files_in(media.path()).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(files_in(media.path()).is_empty(), "no orphaned object");
    assert!(rows(&db).is_empty(), "no row either");
    assert_eq!(app.state.cleanup.pending(), 0, "the journal is settled");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_already_in_storage_that_this_request_did_not_create_is_409_and_kept() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    std::fs::write(media.path().join("foreign.jpg"), b"someone else's photo").unwrap();
    let app = app(&db, media.path()).await;
    let r = app.upload("foreign.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json()["detail"], "Duplicate filename: foreign.jpg");
    assert_eq!(
        std::fs::read(media.path().join("foreign.jpg")).unwrap(),
        b"someone else's photo"
    );
    assert!(rows(&db).is_empty());
    assert!(db.rows("SELECT * FROM photograph_names").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_database_down_uploads_are_503_and_store_nothing() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let proxy = ToggleProxy::start(&db.url).await;
    let app = TestApp::spawn(upload_settings(Some(&proxy.url_for(&db.url)), media.path())).await;
    proxy.cut();
    let _ = app.get("/api/health").await; // notices the outage
    let r = app.upload("a.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(files_in(media.path()).is_empty());
    let no_db = TestApp::spawn(upload_settings(None, media.path())).await;
    let r = no_db.upload("a.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("DATABASE_URL")
    );
    assert!(files_in(media.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_file_field_is_422() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = app(&db, media.path()).await;
    let r = app
        .post_form(
            "/api/upload",
            &Form::new().text("category", "x"),
            Some(API_KEY),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .post_form(
            "/api/upload-batch",
            &Form::new().text("category", "x"),
            Some(API_KEY),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .client
        .post("/api/upload")
        .header("x-api-key", API_KEY)
        .content_type("application/json")
        .body("{}")
        .send()
        .await
        .0;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_accounts_for_every_file_and_one_bad_file_never_aborts_it() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let mut s = upload_settings(Some(&db.url), media.path());
    s.upload.max_file_bytes = 20_000;
    let app = TestApp::spawn(s).await;
    assert_eq!(
        app.upload("existing.jpg", jpeg(8, 8, None)).await.status,
        StatusCode::CREATED
    );
    let too_big = jpeg(600, 600, None);
    assert!(too_big.len() > 20_000);
    let form = Form::new()
        .text("category", "Travel")
        .file("files", "a.jpg", jpeg(10, 10, None))
        .file("files", "b.JPEG", jpeg(12, 10, Some(6)))
        .file("files", "A.jpg", jpeg(14, 10, None)) // duplicate within the batch
        .file("files", "existing.jpg", jpeg(8, 8, None)) // duplicate of an earlier upload
        .file("files", "fake.jpg", png(8, 8))
        .file("files", "big.jpg", too_big)
        .file("files", "notes.txt", b"hello".to_vec())
        .file("files", "half.jpg", jpeg(30, 30, None)[..300].to_vec())
        .file("files", "c.jpg", jpeg(16, 10, None));
    let r = app
        .post_form("/api/upload-batch", &form, Some(API_KEY))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let report = r.json();
    let names = |list: &str, field: &str| -> Vec<String> {
        report[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[field].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("uploaded", "filename"), ["a.jpg", "b.jpeg", "c.jpg"]);
    assert_eq!(names("skipped", "filename"), ["A.jpg", "existing.jpg"]);
    assert_eq!(
        names("skipped", "reason"),
        [
            "Duplicate filename: a.jpg",
            "Duplicate filename: existing.jpg"
        ]
    );
    assert_eq!(
        names("failed", "filename"),
        ["fake.jpg", "big.jpg", "notes.txt", "half.jpg"]
    );
    assert!(names("failed", "error")[1].contains("larger than"));
    let b = &report["uploaded"][1];
    assert_eq!(
        (b["width"].as_i64(), b["height"].as_i64()),
        (Some(10), Some(12))
    );
    assert!(
        report["uploaded"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["category"] == "travel")
    );

    assert_eq!(
        files_in(media.path()),
        objects_of("", &["a.jpg", "b.jpeg", "c.jpg", "existing.jpg"])
    );
    assert_eq!(rows(&db), ["existing.jpg", "a.jpg", "b.jpeg", "c.jpg"]);
    assert_eq!(
        app.get("/api/images").await.ids().len(),
        4,
        "listing updated"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_category_sent_after_the_files_still_applies_to_them() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = app(&db, media.path()).await;
    let form = Form::new()
        .file("files", "one.jpg", jpeg(8, 8, None))
        .file("files", "two.jpg", jpeg(8, 8, None))
        .text("category", "city");
    let r = app.post_form_chunked("/api/upload-batch", &form).await;
    assert_eq!(r.status, StatusCode::OK);
    let uploaded = r.json()["uploaded"].as_array().unwrap().clone();
    assert_eq!(uploaded.len(), 2);
    assert!(uploaded.iter().all(|p| p["category"] == "city"));
}

#[tokio::test(flavor = "multi_thread")]
async fn files_beyond_the_batch_limit_are_reported_failed() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let mut s = upload_settings(Some(&db.url), media.path());
    s.upload.max_batch_files = 2;
    let app = TestApp::spawn(s).await;
    let mut form = Form::new();
    for i in 0..4 {
        form = form.file("files", &format!("{i}.jpg"), jpeg(8, 8, None));
    }
    let report = app
        .post_form("/api/upload-batch", &form, Some(API_KEY))
        .await
        .json();
    assert_eq!(report["uploaded"].as_array().unwrap().len(), 2);
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2);
    assert!(failed[0]["error"].as_str().unwrap().contains("at most 2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_mid_upload_leaves_nothing() {
    use std::io::Write;
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = portfolio_server::app::App::build(upload_settings(Some(&db.url), media.path()))
        .await
        .unwrap();
    let addr = app.local_addr();
    let state = app.state();
    let server = tokio::spawn(app.run_until_stopped(std::future::pending()));
    let body = Form::new()
        .file("file", "partial.jpg", jpeg(300, 300, None))
        .body();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST /api/upload HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n\
             Content-Type: {}\r\nContent-Length: {}\r\n\r\n",
            Form::content_type(),
            body.len()
        )
        .unwrap();
        s.write_all(&body[..body.len() / 2]).unwrap();
        s.flush().unwrap();
        drop(s); // gone mid-body
    })
    .await
    .unwrap();
    // Wait for the server to finish with the broken request, whatever it made of it.
    let finished = || {
        state
            .requests_finished
            .load(std::sync::atomic::Ordering::Acquire)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while finished() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        finished(),
        1,
        "the abandoned request was handled to its end"
    );
    assert!(files_in(media.path()).is_empty());
    assert!(rows(&db).is_empty());
    // The server is still fine.
    let ok = tokio::task::spawn_blocking(move || {
        ureq::get(&format!("http://{addr}/api/health"))
            .call()
            .map(|r| r.status().as_u16())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ok, 200);
    server.abort();
}

/// A store whose writes panic: a bug, which must read as an internal error, never as "the
/// database failed", and leave nothing behind.
struct Panicking(LocalStore);

impl ObjectStore for Panicking {
    fn put_new(&self, _: &str, _: &[u8]) -> Result<Put, StorageError> {
        panic!("injected bug in put_new")
    }
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.0.delete(key)
    }
    fn exists(&self, key: &str) -> Result<bool, StorageError> {
        self.0.exists(key)
    }
    fn public_url(&self, key: &str) -> String {
        self.0.public_url(key)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_during_an_upload_is_an_internal_error_and_keeps_nothing() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let store = Arc::new(Panicking(LocalStore::new(media.path(), "http://m")));
    let app = TestApp::spawn_with_store(upload_settings(Some(&db.url), media.path()), store).await;
    let r = app.upload("bug.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert!(!detail.to_lowercase().contains("database"), "{detail}");
    assert!(
        !detail.contains("injected"),
        "internals are not sent: {detail}"
    );
    assert!(rows(&db).is_empty());
    assert!(
        db.rows("SELECT * FROM photograph_names").is_empty(),
        "claim rolled back"
    );
    assert!(files_in(media.path()).is_empty());
    // The database is still taken for up: the next read is from it.
    let listing = app.get("/api/images").await;
    assert_eq!(listing.header("x-data-source"), Some("database"));
}

#[tokio::test(flavor = "multi_thread")]
async fn files_waiting_for_the_category_are_parked_in_the_spool_folder_which_start_up_clears() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let spool = tempfile::tempdir().unwrap();
    // What a crash mid-batch leaves behind, and a file that is not ours.
    std::fs::write(spool.path().join(".spool-crashed.part"), b"half a photo").unwrap();
    std::fs::write(spool.path().join("keep-me.txt"), b"someone else's").unwrap();
    let mut s = upload_settings(Some(&db.url), media.path());
    s.upload.spool_dir = spool.path().to_path_buf();
    let app = TestApp::spawn(s).await;
    assert_eq!(
        files_in(spool.path()),
        ["keep-me.txt"],
        "ours cleared, others kept"
    );

    // Files before the category wait in the spool folder, and are gone once stored.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<String>>();
    let body = Form::new()
        .file("files", "first.jpg", jpeg(8, 8, None))
        .file("files", "second.jpg", jpeg(9, 9, None))
        .body();
    let spool_path = spool.path().to_path_buf();
    // Stream the body in two halves, looking at the spool folder in between.
    let split = body
        .windows(b"name=\"files\"; filename=\"second.jpg\"".len())
        .position(|w| w == b"name=\"files\"; filename=\"second.jpg\"")
        .unwrap();
    let (first, rest) = (body[..split].to_vec(), body[split..].to_vec());
    let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
    let stream = futures_util::stream::unfold(
        (Some(first), Some((gate_rx, rest, spool_path, tx))),
        |(first, rest)| async move {
            if let Some(f) = first {
                return Some((Ok::<_, std::io::Error>(bytes::Bytes::from(f)), (None, rest)));
            }
            let (gate, rest, spool_path, tx) = rest?;
            let _ = gate.await;
            let _ = tx.send(files_in(&spool_path));
            Some((Ok(bytes::Bytes::from(rest)), (None, None)))
        },
    );
    let req = app
        .client
        .post("/api/upload-batch")
        .header("content-type", Form::content_type())
        .header("x-api-key", API_KEY)
        .body(poem::Body::from_bytes_stream(stream));
    let send = async move { req.send().await.0.into_body().into_vec().await };
    // Wait until the first file is parked, then let the rest of the body through.
    let release = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while files_in(spool.path()).len() < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        gate_tx.send(()).unwrap();
    };
    let (body, ()) = tokio::join!(send, release);
    let during = rx.recv().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
    assert_eq!(report["uploaded"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(report["uploaded"][0]["category"], "nature");
    assert!(
        during.iter().any(|f| f.starts_with(".spool-")),
        "the first file waited in the spool folder: {during:?}"
    );
    assert_eq!(
        files_in(spool.path()),
        ["keep-me.txt"],
        "and is gone once stored"
    );
}

/// The double fault: the database goes away between the upload's INSERT and its COMMIT, and the
/// server restarts before it is back. The journal on disk still knows the object: once the
/// database answers, the object without a row goes, and the name can be uploaded again.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_during_an_outage_still_removes_the_object_of_an_uncommitted_upload() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let proxy = Arc::new(ToggleProxy::start(&db.url).await);
    let cut = proxy.clone();
    let store = Arc::new(Faulty {
        inner: LocalStore::new(media.path(), "http://m"),
        fail_put: false,
        after_put: Some(Box::new(move || cut.cut_and_wait())),
        puts: AtomicUsize::new(0),
    });
    let s = upload_settings(Some(&proxy.url_for(&db.url)), media.path());
    let first = TestApp::spawn_with_store(s.clone(), store).await;
    let r = first.upload("twice.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        files_in(media.path()),
        objects_of("", &["twice.jpg"]),
        "stored, no row committed"
    );
    assert_eq!(first.state.cleanup.pending(), 1);
    drop(first); // the process is gone; only the journal on disk remembers

    // A new process, same folders, the database still down.
    let second = TestApp::spawn(s).await;
    assert_eq!(second.state.cleanup.pending(), 1, "read back from disk");
    assert_eq!(
        files_in(media.path()),
        objects_of("", &["twice.jpg"]),
        "nothing can be decided yet"
    );
    proxy.restore();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !files_in(media.path()).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        files_in(media.path()).is_empty(),
        "no orphan once the database returned"
    );
    assert!(rows(&db).is_empty());
    assert_eq!(second.state.cleanup.pending(), 0);
    let again = second.upload("twice.jpg", jpeg(8, 8, None)).await;
    assert_eq!(again.status, StatusCode::CREATED, "the name is free");
    assert_eq!(files_in(media.path()), objects_of("", &["twice.jpg"]));
}

/// The other side: the COMMIT happened but its answer was lost. The photo committed, so its
/// object and row stay, and the upload is a success.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_whose_answer_was_lost_keeps_its_object_and_row() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let proxy = ToggleProxy::start(&db.url).await;
    let s = upload_settings(Some(&proxy.url_for(&db.url)), media.path());
    let app = TestApp::spawn(s).await;
    proxy.lose_next_commit_reply();
    let r = app.upload("kept.jpg", jpeg(8, 8, None)).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["filename"], "kept.jpg");
    assert_eq!(rows(&db), ["kept.jpg"]);
    assert_eq!(files_in(media.path()), objects_of("", &["kept.jpg"]));
    assert_eq!(app.state.cleanup.pending(), 0);
    // And it stays: no later clean-up removes a committed photo.
    tokio::task::yield_now().await;
    app.state.cleanup.resolve_pending().await;
    assert_eq!(files_in(media.path()), objects_of("", &["kept.jpg"]));
}

/// An INSERT that fails for any reason but the name being taken is not a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn an_insert_that_fails_for_another_reason_is_503_never_409() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = app(&db, media.path()).await;
    // Someone's own rule on the table, which this upload breaks.
    db.execute("ALTER TABLE photographs ADD CONSTRAINT no_wide CHECK (width < 100)");
    let r = app.upload("wide.jpg", jpeg(120, 8, None)).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        !r.json()["detail"].as_str().unwrap().contains("no_wide"),
        "no SQL in answers"
    );
    assert!(rows(&db).is_empty());
    assert!(files_in(media.path()).is_empty());
    // A unique rule of someone's schema that is not the name claim is not a duplicate either.
    db.execute(
        "ALTER TABLE photographs DROP CONSTRAINT no_wide; \
         CREATE UNIQUE INDEX one_size ON photographs (width, height)",
    );
    assert_eq!(
        app.upload("a.jpg", jpeg(9, 9, None)).await.status,
        StatusCode::CREATED
    );
    let r = app.upload("b.jpg", jpeg(9, 9, None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(files_in(media.path()), objects_of("", &["a.jpg"]));
}

/// A journal entry written by hand (or by an older version) with no checks left is settled once
/// and dropped, never retried forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_journal_entry_with_no_checks_is_settled_and_dropped() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let s = upload_settings(Some(&db.url), media.path());
    std::fs::create_dir_all(&s.upload.journal_dir).unwrap();
    std::fs::write(
        s.upload.journal_dir.join("stray.jpg.1-1-1.json"),
        r#"{"key":"stray.jpg","checks":[]}"#,
    )
    .unwrap();
    std::fs::write(media.path().join("stray.jpg"), b"an orphan").unwrap();
    let app = TestApp::spawn(s).await;
    crate::helpers::eventually(10, || app.state.cleanup.pending() == 0).await;
    assert_eq!(app.state.cleanup.pending(), 0, "settled, not stuck");
    assert!(files_in(media.path()).is_empty(), "its orphan was removed");
}

/// Two forms the schema calls invalid, refused whole (schemathesis found both accepted with
/// 200): a bad `category` (no file of the batch could be stored under it) and a `files` part
/// that is text, not a file. Nothing is kept; the files sent before are reported not stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_with_a_bad_category_or_a_text_files_part_is_refused_whole() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = app(&db, media.path()).await;
    let bad_category = Form::new()
        .file("files", "a.jpg", jpeg(10, 10, None))
        .text("category", &"x".repeat(51))
        .file("files", "b.jpg", jpeg(10, 10, None));
    let r = app
        .post_form("/api/upload-batch", &bad_category, Some(API_KEY))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.starts_with("Invalid category: must be 1 to 50 characters, got 51")
            && detail.ends_with("(after 0 uploaded, 0 skipped, 1 failed)"),
        "{detail}"
    );
    let text_part = Form::new()
        .text("category", "city")
        .text("files", "{}")
        .file("files", "c.jpg", jpeg(10, 10, None));
    let r = app
        .post_form("/api/upload-batch", &text_part, Some(API_KEY))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(
        r.json()["detail"],
        "The `files` field is not a file (its part has no filename) (after 0 uploaded, 0 \
         skipped, 0 failed)"
    );
    assert!(files_in(media.path()).is_empty());
    assert_eq!(
        db.rows("SELECT count(*) FROM photographs")[0][0].as_deref(),
        Some("0")
    );
}

/// A batch file that fails inside the server is reported with a plain message, never with the
/// internals (they are logged). Here the clean-up journal cannot be opened (its folder is a
/// file), so every write is refused before anything is stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_file_that_fails_inside_the_server_says_so_without_the_internals() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let mut s = upload_settings(Some(&db.url), media.path());
    let not_a_folder = media.path().join("journal-is-a-file");
    std::fs::write(&not_a_folder, b"x").unwrap();
    s.upload.journal_dir = not_a_folder;
    let app = TestApp::spawn(s).await;
    let form = Form::new().file("files", "a.jpg", jpeg(8, 8, None));
    let r = app
        .post_form("/api/upload-batch", &form, Some(API_KEY))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let report = r.json();
    assert_eq!(
        report["failed"][0]["error"], "Internal error while saving the photo; nothing was kept",
        "{report}"
    );
    assert!(rows(&db).is_empty());
    assert!(
        files_in(media.path())
            .iter()
            .all(|f| f == "journal-is-a-file")
    );
}
