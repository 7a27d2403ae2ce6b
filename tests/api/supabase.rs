//! Uploads with the Supabase backend, against an in-test HTTP server that answers as the real
//! Supabase Storage does (`../shared/notes/supabase-storage.md`): every error is HTTP 400 with
//! the true status as a string `statusCode` in the JSON body.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use poem::{
    EndpointExt, IntoResponse, Request, Response, Route, Server, handler,
    http::StatusCode,
    listener::{Acceptor, Listener, TcpListener},
    web::{Data, Json, Path},
};
use portfolio_server::config::{Secret, StorageBackend};
use serde_json::json;

use crate::helpers::{TestApp, TestDb, ToggleProxy, jpeg, upload_settings};

const SERVICE_KEY: &str = "service-role-jwt";
const BUCKET: &str = "images";

#[derive(Default)]
struct FakeStorage {
    /// "bucket/key" -> bytes
    objects: Mutex<HashMap<String, Vec<u8>>>,
    /// Answer uploads with a 500.
    fail: std::sync::atomic::AtomicBool,
    /// Delay uploads by this many milliseconds before storing.
    delay_ms: AtomicU64,
    deletes: AtomicUsize,
}

fn error(status: &str, error: &str, message: &str, code: &str) -> Response {
    Json(json!({"statusCode": status, "error": error, "message": message, "code": code}))
        .with_status(StatusCode::BAD_REQUEST)
        .into_response()
}

/// Authorization as the real server checks it: required, optional `Bearer `, a valid JWT.
fn check_auth(req: &Request) -> Option<Response> {
    let Some(auth) = req.header("authorization") else {
        return Some(error(
            "400",
            "Error",
            "headers must have required property 'authorization'",
            "InvalidRequest",
        ));
    };
    let token = auth.strip_prefix("Bearer ").unwrap_or(auth);
    (token != SERVICE_KEY).then(|| {
        error(
            "403",
            "Unauthorized",
            "signature verification failed",
            "AccessDenied",
        )
    })
}

fn no_bucket() -> Response {
    error(
        "404",
        "Bucket not found",
        "Bucket not found",
        "NoSuchBucket",
    )
}

#[handler]
async fn upload(
    req: &Request,
    Path((bucket, key)): Path<(String, String)>,
    body: Vec<u8>,
    fake: Data<&Arc<FakeStorage>>,
) -> Response {
    if let Some(denied) = check_auth(req) {
        return denied;
    }
    if bucket != BUCKET {
        return no_bucket();
    }
    let delay = fake.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if fake.fail.load(Ordering::SeqCst) {
        return Json(
            json!({"statusCode": "500", "error": "internal", "message": "Internal Server Error"}),
        )
        .with_status(StatusCode::INTERNAL_SERVER_ERROR)
        .into_response();
    }
    let upsert = req.header("x-upsert") == Some("true");
    let mut objects = fake.objects.lock().unwrap();
    let path = format!("{bucket}/{key}");
    if objects.contains_key(&path) && !upsert {
        return error(
            "409",
            "Duplicate",
            "The resource already exists",
            "KeyAlreadyExists",
        );
    }
    objects.insert(path.clone(), body);
    Json(json!({"Key": path, "Id": "00000000-0000-0000-0000-000000000000"})).into_response()
}

#[handler]
async fn head(
    req: &Request,
    Path((bucket, key)): Path<(String, String)>,
    fake: Data<&Arc<FakeStorage>>,
) -> Response {
    if check_auth(req).is_some() || bucket != BUCKET {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let found = fake
        .objects
        .lock()
        .unwrap()
        .contains_key(&format!("{bucket}/{key}"));
    if found {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
    .into_response()
}

#[handler]
async fn delete(
    req: &Request,
    Path(bucket): Path<String>,
    Json(body): Json<serde_json::Value>,
    fake: Data<&Arc<FakeStorage>>,
) -> Response {
    if let Some(denied) = check_auth(req) {
        return denied;
    }
    fake.deletes.fetch_add(1, Ordering::SeqCst);
    let mut objects = fake.objects.lock().unwrap();
    let mut deleted = Vec::new();
    for prefix in body["prefixes"].as_array().into_iter().flatten() {
        let path = format!("{bucket}/{}", prefix.as_str().unwrap_or_default());
        if objects.remove(&path).is_some() {
            deleted.push(json!({"name": prefix}));
        }
    }
    Json(deleted).into_response()
}

/// Starts the fake on a free port; returns its base URL.
async fn start_fake(fake: Arc<FakeStorage>) -> String {
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let port = acceptor.local_addr()[0].as_socket_addr().unwrap().port();
    let app = Route::new()
        .at(
            "/storage/v1/object/:bucket/*key",
            poem::post(upload).head(head),
        )
        .at("/storage/v1/object/:bucket", poem::delete(delete))
        .data(fake);
    tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
    format!("http://127.0.0.1:{port}")
}

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
    s.storage.backend = StorageBackend::Supabase;
    s.storage.supabase_url = Some(base.clone());
    s.storage.supabase_key = Some(Secret::new(key));
    s.storage.supabase_bucket = bucket.into();
    s.storage.timeout_secs = timeout_secs;
    let app = TestApp::spawn(s).await;
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
    assert_eq!(stored(&t.fake), ["images/beach-day.jpg"]);
    assert_eq!(
        t.fake.objects.lock().unwrap()["images/beach-day.jpg"],
        photo
    );
    assert_eq!(rows(&t.db), 1);
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
    use portfolio_server::storage::{ObjectStore, Put, SupabaseStore};
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
    t.fake.delay_ms.store(1300, Ordering::SeqCst); // lands after the 1 s timeout
    let r = t.app.upload("slow.jpg", jpeg(8, 8, None)).await;
    assert_eq!(
        r.status,
        StatusCode::BAD_GATEWAY,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.json()["detail"].as_str().unwrap().contains("unreachable"));
    assert_eq!(rows(&t.db), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        stored(&t.fake).is_empty(),
        "the late write was removed: {:?}",
        stored(&t.fake)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_database_fails_after_the_object_is_stored_the_object_is_deleted() {
    let db = TestDb::new();
    let fake = Arc::new(FakeStorage::default());
    let base = start_fake(fake.clone()).await;
    let proxy = Arc::new(ToggleProxy::start(&db.url).await);
    let media = std::env::temp_dir();
    let mut s = upload_settings(Some(&proxy.url_for(&db.url)), &media);
    s.storage.backend = StorageBackend::Supabase;
    s.storage.supabase_url = Some(base.clone());
    s.storage.supabase_key = Some(Secret::new(SERVICE_KEY));
    let inner = portfolio_server::storage::from_settings(&s.storage);
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
struct CutAfterPut {
    inner: Box<dyn portfolio_server::storage::ObjectStore>,
    proxy: Arc<ToggleProxy>,
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
