//! Uploads with the Supabase backend, against the in-test server of `fake_supabase`, which
//! answers as the real Supabase Storage does.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use poem::http::StatusCode;
use portfolio_server::config::{Secret, StorageBackend};

use crate::{
    fake_supabase::{BUCKET, FakeStorage, SERVICE_KEY, start_fake},
    helpers::{
        API_KEY, Form, TestApp, TestDb, ToggleProxy, eventually, jpeg, objects_of, upload_settings,
    },
};

struct Setup {
    db: TestDb,
    fake: Arc<FakeStorage>,
    base: String,
    app: TestApp,
}

async fn setup(key: &str, bucket: &str, timeout_secs: u64) -> Setup {
    let db = TestDb::new();
    let fake = Arc::new(FakeStorage::default());
    let base = start_fake(fake.clone()).await;
    let media = std::env::temp_dir(); // unused by the supabase backend
    let mut s = upload_settings(Some(&db.url), &media);
    s.storage.backend = Some(StorageBackend::Supabase);
    s.storage.supabase_url = Some(base.clone());
    s.storage.supabase_key = Some(Secret::new(key));
    s.storage.supabase_bucket = bucket.into();
    s.storage.timeout_secs = timeout_secs;
    let app = TestApp::spawn(s).await;
    // Counted from here: the start-up check writes and deletes a probe.
    fake.landed.store(0, Ordering::SeqCst);
    fake.deletes.store(0, Ordering::SeqCst);
    Setup {
        db,
        fake,
        base,
        app,
    }
}

fn rows(db: &TestDb) -> usize {
    db.rows("SELECT count(*) FROM photographs")[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

fn stored(fake: &FakeStorage) -> Vec<String> {
    let mut keys: Vec<_> = fake.objects.lock().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_lands_in_the_bucket_with_its_public_url() {
    let t = setup(SERVICE_KEY, BUCKET, 5).await;
    let photo = jpeg(20, 10, None);
    let r = t.app.upload("Beach Day.jpg", photo.clone()).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        r.json()["url"],
        format!("{}/storage/v1/object/public/images/beach-day.jpg", t.base)
    );
    assert_eq!(stored(&t.fake), objects_of("images/", &["beach-day.jpg"]));
    assert_eq!(
        t.fake.objects.lock().unwrap()["images/beach-day.jpg"],
        photo
    );
    assert_eq!(rows(&t.db), 1);

    // Keys never change content: the photo and its variants are stored immutable, and served
    // so from the public URL (without it Supabase serves `no-cache`).
    let immutable = "public, max-age=31536000, immutable";
    let cc = t.fake.cache_control.lock().unwrap().clone();
    for key in objects_of("images/", &["beach-day.jpg"]) {
        assert_eq!(cc.get(&key).map(String::as_str), Some(immutable), "{key}");
    }
    let url = r.json()["url"].as_str().unwrap().to_string();
    let fetched = tokio::task::spawn_blocking(move || {
        let mut r = ureq::get(&url).call().unwrap();
        let cc = r
            .headers()
            .get("cache-control")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        (cc, r.body_mut().read_to_vec().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(fetched, (immutable.to_string(), photo));
}

/// A batch works on the next files while one is being stored: the storage server holds the
/// first photo's upload until the second photo's arrives (a batch stored one file at a time
/// would wait out the 10 s hold). The rows are inserted in the form's order all the same (the
/// first photo is the largest, so it is the last to be ready), so the
/// listing shows the batch as it was sent, and the report keeps that order too.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_stores_the_next_file_while_one_is_held_and_keeps_the_forms_order() {
    let t = setup(SERVICE_KEY, BUCKET, 30).await;
    *t.fake.hold.lock().unwrap() = Some(("first.jpg".into(), "second.jpg".into()));
    let form = Form::new()
        .text("category", "travel")
        .file("files", "first.jpg", jpeg(2400, 1600, None))
        .file("files", "second.jpg", jpeg(20, 10, None))
        .file("files", "third.jpg", jpeg(20, 10, None));
    let r = t
        .app
        .post_form("/api/upload-batch", &form, Some(API_KEY))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        t.fake.hold_released.load(Ordering::SeqCst),
        "the second photo was not sent while the first was held"
    );
    let report = r.json();
    let uploaded = report["uploaded"].as_array().unwrap();
    let names: Vec<&str> = uploaded
        .iter()
        .map(|p| p["filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["first.jpg", "second.jpg", "third.jpg"], "{report}");
    let ids: Vec<i64> = uploaded.iter().map(|p| p["id"].as_i64().unwrap()).collect();
    assert!(ids.is_sorted() && ids[0] < ids[2], "ids {ids:?}");
    let by_id: Vec<String> =
        t.db.rows("SELECT filename FROM photographs ORDER BY id")
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect();
    assert_eq!(by_id, ["first.jpg", "second.jpg", "third.jpg"]);
    assert_eq!(
        stored(&t.fake),
        objects_of("images/", &["first.jpg", "second.jpg", "third.jpg"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_already_in_the_bucket_is_409_and_never_deleted() {
    let t = setup(SERVICE_KEY, BUCKET, 5).await;
    t.fake
        .objects
        .lock()
        .unwrap()
        .insert("images/taken.jpg".into(), b"theirs".to_vec());
    let r = t.app.upload("taken.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json()["detail"], "Duplicate filename: taken.jpg");
    assert_eq!(
        t.fake.objects.lock().unwrap()["images/taken.jpg"],
        b"theirs"
    );
    assert_eq!(t.fake.deletes.load(Ordering::SeqCst), 0);
    assert_eq!(rows(&t.db), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_reported_as_http_400_with_status_409_in_the_body_is_a_conflict() {
    use portfolio_server::storage::{ObjectStore, Put, supabase::SupabaseStore};
    let fake = Arc::new(FakeStorage::default());
    let base = start_fake(fake.clone()).await;
    let store = SupabaseStore::new(
        &base,
        Secret::new(SERVICE_KEY),
        BUCKET,
        Duration::from_secs(5),
    );
    let outcome = tokio::task::spawn_blocking(move || {
        let first = store.put_new("k.jpg", b"1").unwrap();
        let second = store.put_new("k.jpg", b"2").unwrap();
        (first, second)
    })
    .await
    .unwrap();
    assert_eq!(outcome, (Put::Created, Put::AlreadyExists));
    assert_eq!(fake.objects.lock().unwrap()["images/k.jpg"], b"1");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_and_bucket_errors_are_502_with_the_servers_message_and_no_row() {
    for (key, bucket, message) in [
        ("wrong-key", BUCKET, "signature verification failed"),
        (SERVICE_KEY, "nosuchbucket", "Bucket not found"),
    ] {
        let t = setup(key, bucket, 5).await;
        let r = t.app.upload("x.jpg", jpeg(8, 8, None)).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{key} {bucket}");
        let detail = r.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(message), "{detail}");
        assert_eq!(rows(&t.db), 0);
        assert!(stored(&t.fake).is_empty());
        // A refusal is certain (nothing was stored): nothing is left to clean up.
        assert_eq!(t.app.state.cleanup.pending(), 0, "{key} {bucket}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_5xx_keeps_no_row_and_frees_the_name() {
    let t = setup(SERVICE_KEY, BUCKET, 5).await;
    t.fake.fail.store(true, Ordering::SeqCst);
    let r = t.app.upload("x.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(rows(&t.db), 0);
    t.fake.fail.store(false, Ordering::SeqCst);
    let retry = t.app.upload("x.jpg", jpeg(8, 8, None)).await;
    assert_eq!(
        retry.status,
        StatusCode::CREATED,
        "the failed attempt left no claim"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_timeout_keeps_no_row_and_no_object_even_if_the_write_lands_late() {
    let t = setup(SERVICE_KEY, BUCKET, 1).await;
    // Lands after the 1 s time-out and after the first clean-up check (due when the request
    // ends): only a later check can remove it.
    t.fake.delay_ms.store(1800, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let r = t.app.upload("slow.jpg", jpeg(8, 8, None)).await;
    assert_eq!(
        r.status,
        StatusCode::BAD_GATEWAY,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.json()["detail"].as_str().unwrap().contains("unreachable"));
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "no waiting in the request"
    );
    assert_eq!(rows(&t.db), 0);
    // The write lands after the first clean-up ran; a later check of the journal removes it.
    assert!(
        eventually(10, || t.fake.landed.load(Ordering::SeqCst) == 1).await,
        "it landed"
    );
    assert!(
        eventually(10, || stored(&t.fake).is_empty()).await,
        "the late write was removed: {:?}",
        stored(&t.fake)
    );
    t.fake.delay_ms.store(0, Ordering::SeqCst);
    let retry = t.app.upload("slow.jpg", jpeg(8, 8, None)).await;
    assert_eq!(retry.status, StatusCode::CREATED, "the name is free again");
    assert_eq!(stored(&t.fake), objects_of("images/", &["slow.jpg"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_5xx_after_the_object_was_saved_leaves_no_orphan() {
    let t = setup(SERVICE_KEY, BUCKET, 1).await;
    t.fake.gateway_504.store(true, Ordering::SeqCst);
    let r = t.app.upload("gw.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        t.fake.landed.load(Ordering::SeqCst),
        1,
        "storage did save it"
    );
    assert_eq!(rows(&t.db), 0);
    assert!(
        eventually(10, || stored(&t.fake).is_empty()).await,
        "the object behind the 504 was removed"
    );
    t.fake.gateway_504.store(false, Ordering::SeqCst);
    let retry = t.app.upload("gw.jpg", jpeg(8, 8, None)).await;
    assert_eq!(
        retry.status,
        StatusCode::CREATED,
        "and the name can be uploaded again"
    );
    // Every check later, the new photo is still there: the journal only deletes orphans.
    assert!(!eventually(3, || stored(&t.fake).is_empty()).await);
    assert_eq!(stored(&t.fake), objects_of("images/", &["gw.jpg"]));
    assert_eq!(t.app.state.cleanup.pending(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_database_fails_after_the_object_is_stored_the_object_is_deleted() {
    let db = TestDb::new();
    let fake = Arc::new(FakeStorage::default());
    let base = start_fake(fake.clone()).await;
    let proxy = Arc::new(ToggleProxy::start(&db.url).await);
    let media = std::env::temp_dir();
    let mut s = upload_settings(Some(&proxy.url_for(&db.url)), &media);
    s.storage.backend = Some(StorageBackend::Supabase);
    s.storage.supabase_url = Some(base.clone());
    s.storage.supabase_key = Some(Secret::new(SERVICE_KEY));
    let inner = portfolio_server::storage::open::from_settings(&s.storage);
    let store = Arc::new(CutAfterPut {
        inner,
        proxy: proxy.clone(),
    });
    let app = TestApp::spawn_with_store(s, store).await;
    let r = app.upload("gone.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    proxy.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !stored(&fake).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        stored(&fake).is_empty(),
        "the object was deleted through the REST API"
    );
    assert!(fake.deletes.load(Ordering::SeqCst) >= 1);
    assert_eq!(rows(&db), 0);
}

/// The real Supabase client, with the database cut off right after a successful put.
/// A store that cuts the database off right after each write.
pub(crate) struct CutAfterPut {
    pub(crate) inner: Box<dyn portfolio_server::storage::ObjectStore>,
    pub(crate) proxy: Arc<ToggleProxy>,
}

impl portfolio_server::storage::ObjectStore for CutAfterPut {
    fn put_new(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<portfolio_server::storage::Put, portfolio_server::storage::StorageError> {
        let r = self.inner.put_new(key, bytes);
        self.proxy.cut_and_wait();
        r
    }
    fn delete(&self, key: &str) -> Result<(), portfolio_server::storage::StorageError> {
        self.inner.delete(key)
    }
    fn exists(&self, key: &str) -> Result<bool, portfolio_server::storage::StorageError> {
        self.inner.exists(key)
    }
    fn public_url(&self, key: &str) -> String {
        self.inner.public_url(key)
    }
}

/// File names as people and tools make them: spaces, accents, scripts without Latin letters,
/// every character Supabase refuses, the old variant separator, path tricks, a name too long.
const HOSTILE_NAMES: &[&str] = &[
    "Beach Day.jpg",
    "Café Überfahrt.JPG",
    "{x}.jpg",
    "a~b.jpg",
    "thumb~a.jpg",
    "thumb--b.jpg",
    "medium--thumb--c.jpeg",
    "#1 [best] ^|`%.jpeg",
    "..\\..\\etc.jpg",
    "../../x.jpg",
    "日本の夏.jpg",
    "emoji 😀 party.jpg",
    "a&b=c;d:e+f,g?h@i$j!k*l'm(n).jpg",
    "tab\tname.jpg",
    ".hidden.jpg",
    "-dash.jpg",
];

#[test]
fn every_key_the_server_makes_is_one_real_supabase_storage_accepts() {
    use portfolio_server::{imaging::Variant, model::FileName, storage::probe_key};
    let long = format!("{}.jpg", "ü{}".repeat(150));
    let mut keys = vec![probe_key()];
    for raw in HOSTILE_NAMES.iter().copied().chain([long.as_str()]) {
        let Ok(name) = FileName::parse(raw) else {
            continue; // refused with a 400, nothing stored
        };
        keys.push(name.to_string());
        for v in Variant::ALL {
            keys.push(v.key(name.as_str()));
        }
    }
    assert!(keys.len() > 40, "{keys:?}");
    for key in &keys {
        assert!(
            crate::fake_supabase::valid_key(key),
            "real Supabase Storage refuses {key:?}"
        );
    }
}

/// The same through the server: uploads of every hostile name (one at a time and in a batch),
/// then deletes, against a double that refuses what the real server refuses. No request named
/// a key Supabase refuses, and nothing is left in the bucket.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_names_upload_and_delete_with_only_keys_supabase_accepts() {
    use crate::helpers::{API_KEY, Form};
    use poem::http::Method;
    let t = setup(SERVICE_KEY, BUCKET, 5).await;
    let mut ids = Vec::new();
    let (mut created, mut refused) = (0, 0);
    for raw in HOSTILE_NAMES {
        let r = t.app.upload(raw, jpeg(24, 16, None)).await;
        match r.status {
            StatusCode::CREATED => {
                created += 1;
                ids.push(r.json()["id"].as_i64().unwrap());
            }
            // Two names that reduce to one key, or a name with nothing usable: never a 502.
            StatusCode::CONFLICT | StatusCode::BAD_REQUEST => refused += 1,
            other => panic!("{raw}: {other} {}", r.text()),
        }
    }
    assert!(created >= 12, "{created} created, {refused} refused");
    let mut form = Form::new().text("category", "street");
    for raw in HOSTILE_NAMES {
        form = form.file("files", &format!("batch {raw}"), jpeg(24, 16, None));
    }
    let r = t
        .app
        .post_form("/api/upload-batch", &form, Some(API_KEY))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let report = r.json();
    for failed in report["failed"].as_array().unwrap() {
        assert!(
            !failed["error"].as_str().unwrap().contains("Storage"),
            "{failed}"
        );
    }
    for photo in report["uploaded"].as_array().unwrap() {
        ids.push(photo["id"].as_i64().unwrap());
    }
    assert!(ids.len() >= 24, "{report}");
    assert_eq!(
        t.fake.invalid_keys.lock().unwrap().clone(),
        Vec::<String>::new()
    );
    assert_eq!(
        stored(&t.fake).len(),
        ids.len() * 3,
        "each photo and its two variants"
    );

    for id in &ids {
        let r = t
            .app
            .admin(
                Method::DELETE,
                &format!("/api/images/{id}"),
                Some(API_KEY),
                None,
            )
            .await;
        assert!(r.status.is_success(), "{id}: {} {}", r.status, r.text());
    }
    assert_eq!(
        t.fake.invalid_keys.lock().unwrap().clone(),
        Vec::<String>::new()
    );
    assert_eq!(stored(&t.fake), Vec::<String>::new());
    assert_eq!(rows(&t.db), 0);
    assert_eq!(t.app.state.cleanup.pending(), 0);
}

/// A row of the original, whose key is whatever Supabase took, is deleted with its object, and
/// the delete sends no key of the old variant scheme (`thumb~…`), which Supabase refuses.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_of_the_original_is_deleted_without_sending_a_key_supabase_refuses() {
    use crate::helpers::API_KEY;
    use poem::http::Method;
    let t = setup(SERVICE_KEY, BUCKET, 5).await;
    let url = format!("{}/storage/v1/object/public/images/IMG%20001.JPG", t.base);
    t.db.execute(&format!(
        "INSERT INTO photographs (filename, url) VALUES ('IMG 001.JPG', '{url}')"
    ));
    t.fake
        .objects
        .lock()
        .unwrap()
        .insert("images/IMG 001.JPG".into(), b"original".to_vec());
    let id = t.db.rows("SELECT id FROM photographs")[0][0]
        .clone()
        .unwrap();
    let r = t
        .app
        .admin(
            Method::DELETE,
            &format!("/api/images/{id}"),
            Some(API_KEY),
            None,
        )
        .await;
    assert!(r.status.is_success(), "{} {}", r.status, r.text());
    assert!(eventually(10, || stored(&t.fake).is_empty()).await);
    assert_eq!(
        t.fake.invalid_keys.lock().unwrap().clone(),
        Vec::<String>::new()
    );
    assert_eq!(rows(&t.db), 0);
}

/// An object this server did not write at a variant's key: the upload is refused with a 409
/// naming it, the object is untouched, and what the upload wrote is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_object_at_a_variant_key_refuses_the_upload_and_is_left_alone() {
    let t = setup(SERVICE_KEY, BUCKET, 5).await;
    let foreign = "images/medium--x.jpg";
    t.fake
        .objects
        .lock()
        .unwrap()
        .insert(foreign.into(), b"someone else's".to_vec());
    let r = t.app.upload("x.jpg", jpeg(24, 16, None)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("medium--x.jpg") && detail.contains("did not write"),
        "{detail}"
    );
    assert_eq!(stored(&t.fake), [foreign]);
    assert_eq!(t.fake.objects.lock().unwrap()[foreign], b"someone else's");
    assert_eq!(rows(&t.db), 0);
    assert_eq!(t.app.state.cleanup.pending(), 0);
    let health = t.app.get("/api/health").await.json();
    assert_eq!(health["storage"], "ok", "one object's conflict: {health}");

    // Once it is gone the name can be uploaded.
    t.fake.objects.lock().unwrap().remove(foreign);
    let again = t.app.upload("x.jpg", jpeg(24, 16, None)).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text());
    assert_eq!(stored(&t.fake), objects_of("images/", &["x.jpg"]));
}

/// A bucket's `file_size_limit` refuses a photo: a 413 that says so, nothing kept, and storage
/// stays `ok` (other photos fit).
#[tokio::test(flavor = "multi_thread")]
async fn a_photo_over_the_buckets_size_limit_is_a_413_and_leaves_nothing() {
    let t = setup(SERVICE_KEY, BUCKET, 5).await;
    t.fake.file_size_limit.store(4_000, Ordering::SeqCst);
    let big = crate::helpers::jpeg(400, 300, None);
    assert!(big.len() > 4_000, "{}", big.len());
    let r = t.app.upload("big.jpg", big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert!(r.text().contains("maximum allowed size"), "{}", r.text());
    assert!(stored(&t.fake).is_empty());
    assert_eq!(rows(&t.db), 0);
    assert_eq!(t.app.state.cleanup.pending(), 0);
    assert_eq!(t.app.get("/api/health").await.json()["storage"], "ok");
    let small = t.app.upload("small.jpg", jpeg(8, 8, None)).await;
    assert_eq!(small.status, StatusCode::CREATED, "{}", small.text());
}

/// A bucket that takes no JPEGs (`allowed_mime_types`): the start-up check's probe write finds
/// it, health says `refused` with the server's words, and uploads are 502 with nothing kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_that_refuses_jpegs_is_refused_in_health_from_the_start() {
    let db = TestDb::new();
    let fake = Arc::new(FakeStorage::default());
    *fake.allowed_mime_types.lock().unwrap() = vec!["image/png".into()];
    let base = start_fake(fake.clone()).await;
    let mut s = upload_settings(Some(&db.url), &std::env::temp_dir());
    s.storage.backend = Some(StorageBackend::Supabase);
    s.storage.supabase_url = Some(base);
    s.storage.supabase_key = Some(Secret::new(SERVICE_KEY));
    let app = TestApp::spawn(s).await;
    let health = app.get("/api/health").await.json();
    assert_eq!(health["storage"], "refused", "{health}");
    assert!(
        health["storage_reason"]
            .as_str()
            .unwrap()
            .contains("mime type image/jpeg is not supported"),
        "{health}"
    );
    let r = app.upload("x.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(stored(&fake).is_empty());
    assert_eq!(rows(&db), 0);
}

/// Private mode with Supabase: a page's URLs are signed in one request to the sign endpoint
/// (its paths the page's photos and variants), the signed rendition is reused while fresh, and
/// every URL handed out reads its object, which the public URL of the private bucket does not.
#[tokio::test(flavor = "multi_thread")]
async fn private_mode_signs_each_page_in_one_request_and_its_urls_read_the_photos() {
    let db = TestDb::new();
    let fake = Arc::new(FakeStorage::default());
    fake.private.store(true, Ordering::SeqCst);
    let base = start_fake(fake.clone()).await;
    let mut s = upload_settings(Some(&db.url), &std::env::temp_dir());
    s.storage.backend = Some(StorageBackend::Supabase);
    s.storage.supabase_url = Some(base.clone());
    s.storage.supabase_key = Some(Secret::new(SERVICE_KEY));
    s.storage.private = true;
    s.storage.signed_url_secs = 600;
    let app = TestApp::spawn(s).await;
    for name in ["a.jpg", "b.jpg", "c.jpg"] {
        let r = app.upload(name, jpeg(40, 30, None)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let url = r.json()["url"].as_str().unwrap().to_string();
        assert!(
            url.starts_with(&format!(
                "{base}/storage/v1/object/sign/{BUCKET}/{name}?token="
            )),
            "{url}"
        );
    }
    fake.sign_requests.lock().unwrap().clear();

    let page = app.get("/api/images?limit=2").await;
    let requests = fake.sign_requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "one request for the page: {requests:?}");
    let mut paths = requests[0].clone();
    paths.sort();
    assert_eq!(paths, objects_of("", &["a.jpg", "b.jpg"]));
    // The same page again: its signed rendition, no new request, by the fast path or by the
    // documented operation (which a parameter the fast path does not know takes it to); another
    // page: one more.
    app.get("/api/images?limit=2").await;
    let documented = app.get("/api/images?limit=2&v=1").await;
    assert_eq!(documented.text(), page.text(), "the same signed page");
    app.get("/api/photos?limit=3").await;
    assert_eq!(fake.sign_requests.lock().unwrap().len(), 2);

    let agent = crate::helpers::agent();
    for photo in page.json().as_array().unwrap() {
        for field in ["url", "thumbnail_url", "medium_url"] {
            let url = photo[field].as_str().unwrap();
            let r = agent.get(url).call().unwrap();
            assert_eq!(r.status(), 200, "{field}: {url}");
        }
        let public = format!(
            "{base}/storage/v1/object/public/{BUCKET}/{}",
            photo["filename"].as_str().unwrap()
        );
        assert_eq!(agent.get(&public).call().unwrap().status(), 400, "private");
    }
    let health = app.get("/api/health").await.json();
    assert_eq!(health["storage_mode"], "private");
    assert!(health.get("storage_warning").is_none(), "{health}");
    assert!(fake.invalid_keys.lock().unwrap().is_empty());
}
