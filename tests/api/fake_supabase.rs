//! An in-test HTTP server that answers as the real Supabase Storage does
//! (`../shared/notes/supabase-storage.md`), with every rule the notes record:
//! - every error is HTTP 400 with the true status as a string `statusCode` in the JSON body;
//!   a HEAD's error is a bare 400 with an empty body;
//! - object keys: only `A-Z a-z 0-9 _ / ! . * ' ( ) space & $ = @ ; : + , ? -`, not empty, no
//!   `..` segment, else 400 `InvalidKey` (on every object route, and for bulk deletes too:
//!   stricter than recorded, so a key we should never send is caught);
//! - the global 50 MiB limit and a bucket's `file_size_limit` (413 `EntityTooLarge`) and
//!   `allowed_mime_types` (415 `InvalidMimeType`);
//! - signed URLs: `POST /object/sign/{bucket}` with `{"expiresIn", "paths"}` answers
//!   `[{"error", "path", "signedURL"}]`, each `signedURL` under `/storage/v1` but without that
//!   prefix (`/object/sign/…?token=…`), as the notes record for one path and the storage
//!   server's route (`getSignedURLs.ts`) defines for many; such a URL reads the object until
//!   `expiresIn` has passed. A private bucket (`private`) answers no public read.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use poem::{
    EndpointExt, IntoResponse, Request, Response, Route, Server, handler,
    http::StatusCode,
    listener::{Acceptor, Listener, TcpListener},
    web::{Data, Json, Path},
};
use serde_json::json;

pub const SERVICE_KEY: &str = "service-role-jwt";
pub const BUCKET: &str = "images";

#[derive(Default)]
pub struct FakeStorage {
    /// "bucket/key" -> bytes
    pub objects: Mutex<HashMap<String, Vec<u8>>>,
    /// Answer uploads with a 500.
    pub fail: AtomicBool,
    /// Answer uploads of keys starting with this with a 500 (after storing nothing).
    pub fail_prefix: Mutex<Option<String>>,
    /// Delay uploads by this many milliseconds before storing. The write then lands even if the
    /// client has given up (the storage server finished its work), as it would for real.
    pub delay_ms: AtomicU64,
    /// Store the object, then answer 504 as a gateway in front of storage would.
    pub gateway_504: AtomicBool,
    /// Objects stored, in all (late writes included).
    pub landed: AtomicUsize,
    pub deletes: AtomicUsize,
    /// Bucket checks (`GET /storage/v1/bucket/{id}`) answered.
    pub bucket_checks: AtomicUsize,
    /// "bucket/key" -> the `cache-control` it was uploaded with, served back on public GETs.
    pub cache_control: Mutex<HashMap<String, String>>,
    /// The bucket's `file_size_limit` in bytes (0: only the global 50 MiB).
    pub file_size_limit: AtomicU64,
    /// The bucket's `allowed_mime_types` (empty: any).
    pub allowed_mime_types: Mutex<Vec<String>>,
    /// Every key a request named that the real server refuses (none, if the client is right).
    pub invalid_keys: Mutex<Vec<String>>,
    /// Keys of every upload received (refused ones included), in order.
    pub received: Mutex<Vec<String>>,
    /// When set, `delay_ms` holds only uploads of this key.
    pub delay_only: Mutex<Option<String>>,
    /// `(held, awaited)`: an upload of the key `held` is answered only once an upload of the key
    /// `awaited` has been received, or after 10 s.
    pub hold: Mutex<Option<(String, String)>>,
    /// Whether a held upload was let go because the awaited one arrived (not by the 10 s).
    pub hold_released: AtomicBool,
    /// The bucket is private: public URLs read nothing.
    pub private: AtomicBool,
    /// The paths of each sign request, in order.
    pub sign_requests: Mutex<Vec<Vec<String>>>,
    /// Token -> ("bucket/key", expiry) of every signed URL handed out.
    pub tokens: Mutex<HashMap<String, (String, std::time::Instant)>>,
}

/// The real server's `UPLOAD_FILE_SIZE_LIMIT` default.
pub const GLOBAL_LIMIT: u64 = 50 << 20;

/// Whether real Supabase Storage takes `key` (v1.70.6 `src/storage/limits.ts`, as recorded in
/// the notes). Written here from the notes, not taken from the product.
pub fn valid_key(key: &str) -> bool {
    const ALLOWED: &str = "_/!.*'() &$=@;:+,?-";
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ALLOWED.contains(c))
        && key.split('/').all(|segment| segment != "..")
}

fn invalid_key(fake: &FakeStorage, key: &str) -> Option<Response> {
    if valid_key(key) {
        return None;
    }
    fake.invalid_keys.lock().unwrap().push(key.to_string());
    let message = if key.split('/').any(|s| s == "..") {
        format!("Invalid key: {key} contains dot path segment")
    } else {
        format!("Invalid key: {key}")
    };
    Some(error("400", "InvalidKey", &message, "InvalidKey"))
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
    if let Some(refused) = refuse_bucket_call(req, &bucket) {
        return refused;
    }
    fake.received.lock().unwrap().push(key.clone());
    let hold = fake.hold.lock().unwrap().clone();
    if let Some((_, awaited)) = hold.filter(|(held, _)| *held == key) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if fake.received.lock().unwrap().contains(&awaited) {
                fake.hold_released.store(true, Ordering::SeqCst);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    if let Some(refused) = invalid_key(&fake, &key) {
        return refused;
    }
    let size_limit = match fake.file_size_limit.load(Ordering::SeqCst) {
        0 => GLOBAL_LIMIT,
        n => n.min(GLOBAL_LIMIT),
    };
    if body.len() as u64 > size_limit {
        return error(
            "413",
            "Payload too large",
            "The object exceeded the maximum allowed size",
            "EntityTooLarge",
        );
    }
    let mime = req
        .header("content-type")
        .unwrap_or("application/x-www-form-urlencoded")
        .to_string();
    {
        let allowed = fake.allowed_mime_types.lock().unwrap();
        if !allowed.is_empty() && !allowed.contains(&mime) {
            return error(
                "415",
                "invalid_mime_type",
                &format!("mime type {mime} is not supported"),
                "InvalidMimeType",
            );
        }
    }
    let delay = match fake.delay_only.lock().unwrap().as_deref() {
        Some(only) if only != key => 0,
        _ => fake.delay_ms.load(Ordering::SeqCst),
    };
    if delay > 0 {
        // The write goes on server-side whether or not the client waits for the answer.
        let (fake, path) = (Arc::clone(&fake), format!("{bucket}/{key}"));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let mut objects = fake.objects.lock().unwrap();
            if let std::collections::hash_map::Entry::Vacant(slot) = objects.entry(path) {
                slot.insert(body);
                fake.landed.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(delay)).await;
        return Json(json!({"Key": "late", "Id": "late"})).into_response();
    }
    let prefix_fails = fake
        .fail_prefix
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|p| key.starts_with(p.as_str()));
    if fake.fail.load(Ordering::SeqCst) || prefix_fails {
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
    if let Some(cc) = req.header("cache-control") {
        fake.cache_control
            .lock()
            .unwrap()
            .insert(path.clone(), cc.to_string());
    }
    fake.landed.fetch_add(1, Ordering::SeqCst);
    if fake.gateway_504.load(Ordering::SeqCst) {
        return (
            StatusCode::GATEWAY_TIMEOUT,
            "<html>504 Gateway Time-out</html>",
        )
            .into_response();
    }
    Json(json!({"Key": path, "Id": "00000000-0000-0000-0000-000000000000"})).into_response()
}

#[handler]
async fn head(
    req: &Request,
    Path((bucket, key)): Path<(String, String)>,
    fake: Data<&Arc<FakeStorage>>,
) -> Response {
    if check_auth(req).is_some() || bucket != BUCKET || invalid_key(&fake, &key).is_some() {
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
    for prefix in body["prefixes"].as_array().into_iter().flatten() {
        if let Some(refused) = invalid_key(&fake, prefix.as_str().unwrap_or_default()) {
            return refused;
        }
    }
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

/// `GET /storage/v1/object/{bucket}/{key}` with the service key: the bytes, or the 400 with a
/// string "404" the real server sends for a missing object.
#[handler]
async fn download(
    req: &Request,
    Path((bucket, key)): Path<(String, String)>,
    fake: Data<&Arc<FakeStorage>>,
) -> Response {
    // `GET /storage/v1/object/public/{bucket}/{key}`: no auth, and the object's stored
    // cache-control (`no-cache` when it was uploaded without one), as the real server answers.
    let (path, public) = match (bucket.as_str(), key.split_once('/')) {
        ("public", Some((b, k))) => (format!("{b}/{k}"), true),
        _ => (format!("{bucket}/{key}"), false),
    };
    // A private bucket's public read: refused (the notes do not record the exact answer; a
    // 400 here, which the product never reads: only the anonymous-read check looks at it, and
    // takes anything but a 2xx as refused).
    if public && fake.private.load(Ordering::SeqCst) {
        return error(
            "400",
            "Bucket not found",
            "Bucket not found",
            "NoSuchBucket",
        );
    }
    if !public && let Some(denied) = check_auth(req) {
        return denied;
    }
    if let Some(refused) = invalid_key(&fake, path.split_once('/').map_or("", |(_, k)| k)) {
        return refused;
    }
    let cache_control = fake
        .cache_control
        .lock()
        .unwrap()
        .get(&path)
        .cloned()
        .unwrap_or_else(|| "no-cache".into());
    match fake.objects.lock().unwrap().get(&path) {
        Some(bytes) => Response::builder()
            .content_type("image/jpeg")
            .header("cache-control", cache_control)
            .body(bytes.clone()),
        None => error("404", "not_found", "Object not found", "NoSuchKey"),
    }
}

/// The answer to a call on a bucket without the service key, or on a bucket that does not
/// exist; None if neither.
fn refuse_bucket_call(req: &Request, bucket: &str) -> Option<Response> {
    check_auth(req).or_else(|| (bucket != BUCKET).then(no_bucket))
}

/// `POST /storage/v1/object/sign/{bucket}` with `{"expiresIn", "paths"}`: one signed URL per
/// path, in order; `error` for a path with no object.
#[handler]
async fn sign(
    req: &Request,
    Path(bucket): Path<String>,
    Json(body): Json<serde_json::Value>,
    fake: Data<&Arc<FakeStorage>>,
) -> Response {
    if let Some(refused) = refuse_bucket_call(req, &bucket) {
        return refused;
    }
    let (Some(expires_in), Some(paths)) = (body["expiresIn"].as_u64(), body["paths"].as_array())
    else {
        return error(
            "400",
            "Bad Request",
            "body must have expiresIn and paths",
            "InvalidRequest",
        );
    };
    if expires_in < 1 || paths.is_empty() {
        return error(
            "400",
            "Bad Request",
            "expiresIn >= 1 and one path or more",
            "InvalidRequest",
        );
    }
    let paths: Vec<String> = paths
        .iter()
        .map(|p| p.as_str().unwrap_or_default().to_string())
        .collect();
    for p in &paths {
        if !valid_key(p) {
            fake.invalid_keys.lock().unwrap().push(p.clone());
        }
    }
    fake.sign_requests.lock().unwrap().push(paths.clone());
    let expires = std::time::Instant::now() + Duration::from_secs(expires_in);
    let answers: Vec<serde_json::Value> = paths
        .iter()
        .map(|p| {
            let full = format!("{bucket}/{p}");
            if !fake.objects.lock().unwrap().contains_key(&full) {
                return json!({"error": "Either the object does not exist or you do not have access to it",
                              "path": p, "signedURL": null});
            }
            let mut tokens = fake.tokens.lock().unwrap();
            let token = format!("t{}", tokens.len() + 1);
            tokens.insert(token.clone(), (full.clone(), expires));
            json!({"error": null, "path": p,
                   "signedURL": format!("/object/sign/{full}?token={token}")})
        })
        .collect();
    Json(answers).into_response()
}

/// `GET /storage/v1/object/sign/{bucket}/{key}?token=…`: the object, while the token is good.
/// (What the real server answers for an expired token is not in the notes: a 400 here.)
#[handler]
async fn signed_download(
    req: &Request,
    Path((bucket, key)): Path<(String, String)>,
    fake: Data<&Arc<FakeStorage>>,
) -> Response {
    let token = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("token=")))
        .unwrap_or_default();
    let full = format!("{bucket}/{key}");
    let good = match fake.tokens.lock().unwrap().get(token) {
        Some((path, until)) if *path == full && std::time::Instant::now() < *until => true,
        Some((path, _)) if *path == full => {
            return error("400", "InvalidJWT", "jwt expired", "InvalidJWT");
        }
        _ => false,
    };
    if !good {
        return error("400", "InvalidJWT", "invalid signature", "InvalidJWT");
    }
    match fake.objects.lock().unwrap().get(&full) {
        Some(bytes) => Response::builder()
            .content_type("image/jpeg")
            .body(bytes.clone()),
        None => error("404", "not_found", "Object not found", "NoSuchKey"),
    }
}

/// `POST /storage/v1/object/list/{bucket}` with `{"prefix", "limit", "offset", "sortBy"}`:
/// objects sorted by name, as the real server pages them. Every object reads as written on
/// 2026-01-01 (long past any grace period).
#[handler]
async fn list(
    req: &Request,
    Path(bucket): Path<String>,
    Json(body): Json<serde_json::Value>,
    fake: Data<&Arc<FakeStorage>>,
) -> Response {
    if let Some(refused) = refuse_bucket_call(req, &bucket) {
        return refused;
    }
    let limit = body["limit"].as_u64().unwrap_or(100) as usize;
    let offset = body["offset"].as_u64().unwrap_or(0) as usize;
    let prefix = format!("{bucket}/");
    let mut names: Vec<String> = fake
        .objects
        .lock()
        .unwrap()
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
        .collect();
    names.sort();
    let page: Vec<serde_json::Value> = names
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|name| {
            json!({"name": name, "id": "00000000-0000-0000-0000-000000000001",
                   "updated_at": "2026-01-01T00:00:00.000Z", "created_at": "2026-01-01T00:00:00.000Z",
                   "metadata": {"size": 1, "mimetype": "image/jpeg"}})
        })
        .collect();
    Json(page).into_response()
}

/// `GET /storage/v1/bucket/{id}`: the bucket's details, for the service key only.
#[handler]
async fn bucket_details(
    req: &Request,
    Path(bucket): Path<String>,
    fake: Data<&Arc<FakeStorage>>,
) -> Response {
    fake.bucket_checks.fetch_add(1, Ordering::SeqCst);
    if let Some(refused) = refuse_bucket_call(req, &bucket) {
        return refused;
    }
    let public = !fake.private.load(Ordering::SeqCst);
    Json(json!({"id": bucket, "name": bucket, "public": public})).into_response()
}

/// Starts the fake on a free port; returns its base URL.
pub async fn start_fake(fake: Arc<FakeStorage>) -> String {
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let port = acceptor.local_addr()[0].as_socket_addr().unwrap().port();
    let app = Route::new()
        .at(
            "/storage/v1/object/:bucket/*key",
            poem::post(upload).head(head).get(download),
        )
        .at("/storage/v1/object/:bucket", poem::delete(delete))
        .at("/storage/v1/bucket/:bucket", poem::get(bucket_details))
        .at("/storage/v1/object/list/:bucket", poem::post(list))
        .at("/storage/v1/object/sign/:bucket", poem::post(sign))
        .at(
            "/storage/v1/object/sign/:bucket/*key",
            poem::get(signed_download),
        )
        .data(fake);
    tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
    format!("http://127.0.0.1:{port}")
}

/// Starts the fake on a runtime of its own (for tests that are not async, such as the ones that
/// run the binary); it serves until the test process exits.
pub fn start_on_own_runtime(fake: Arc<FakeStorage>) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tx.send(start_fake(fake).await).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}
