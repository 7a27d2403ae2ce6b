//! The image pipeline through the API: what is stored for a camera photo, that a failure while
//! storing a variant leaves nothing behind, and `variants backfill` for rows made before it.

use std::{
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use image::{ImageEncoder, RgbImage, codecs::jpeg::JpegEncoder};
use poem::http::StatusCode;
use portfolio_server::{
    config::{Secret, StorageBackend},
    storage::{ObjectStore, Put, StorageError, local::LocalStore},
};

use crate::{
    fake_supabase::{FakeStorage, SERVICE_KEY, start_fake},
    helpers::{PutHook, TestApp, TestDb, eventually, files_in, objects_of, upload_settings},
};

/// What no stored object may contain: it stands for a GPS position, a serial number, a name.
const SECRET: &[u8] = b"SECRET-48.8584N-2.2945E";
/// A recognisable colour profile (decoders do not validate it).
const PROFILE: &[u8] = &[0x42; 600];

/// A photo as a camera writes it: `w`x`h` stored, left half red and right half blue, EXIF
/// with `orientation` and a secret, XMP and IPTC with the secret, an ICC profile, and a
/// trailer after the image (a phone's second picture) with the secret too.
fn camera_photo(w: u32, h: u32, orientation: u16) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        let shade = ((x + y) % 16) as u8;
        if x < w / 2 {
            image::Rgb([200 + shade, 30, 30])
        } else {
            image::Rgb([30, 30, 200 + shade])
        }
    });
    let mut base = Vec::new();
    JpegEncoder::new_with_quality(&mut base, 90)
        .write_image(&img, w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    // EXIF: a little-endian TIFF block with Orientation, then the secret as trailing data.
    let mut exif = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
    exif.extend_from_slice(&orientation.to_le_bytes());
    exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    exif.extend_from_slice(SECRET);
    let mut xmp = b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>".to_vec();
    xmp.extend_from_slice(SECRET);
    let mut iptc = b"Photoshop 3.0\08BIM\x04\x04".to_vec();
    iptc.extend_from_slice(SECRET);
    let mut icc = b"ICC_PROFILE\0\x01\x01".to_vec();
    icc.extend_from_slice(PROFILE);
    let mut out = base[..2].to_vec();
    for (marker, contents) in [(0xE1, exif), (0xE1, xmp), (0xED, iptc), (0xE2, icc)] {
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&((contents.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&contents);
    }
    out.extend_from_slice(&base[2..]);
    out.extend_from_slice(b"\xFF\xD8\xFF\xE1\x00\x20Exif\0\0");
    out.extend_from_slice(SECRET);
    out
}

/// The markers of the segments before the first scan, read independently of the server's code.
fn header_markers(bytes: &[u8]) -> Vec<u8> {
    assert_eq!(&bytes[..2], [0xFF, 0xD8]);
    let mut markers = Vec::new();
    let mut i = 2;
    while i + 4 <= bytes.len() && bytes[i] == 0xFF {
        let marker = bytes[i + 1];
        markers.push(marker);
        if marker == 0xDA {
            break;
        }
        i += 2 + (usize::from(bytes[i + 2]) << 8 | usize::from(bytes[i + 3]));
    }
    markers
}

fn stored_size(bytes: &[u8]) -> (u32, u32) {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .unwrap()
        .into_dimensions()
        .unwrap()
}

fn icc_profile(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut d = jpeg_decoder::Decoder::new(bytes);
    d.read_info().unwrap();
    d.icc_profile()
}

/// Every object is a clean JPEG: no EXIF/XMP (APP1), no IPTC (APP13), no trailer, the profile
/// kept, and none of the secret anywhere.
fn assert_clean(key: &str, bytes: &[u8]) {
    let markers = header_markers(bytes);
    assert!(!markers.contains(&0xE1), "{key}: APP1 in {markers:x?}");
    assert!(!markers.contains(&0xED), "{key}: APP13 in {markers:x?}");
    assert!(
        !bytes.windows(SECRET.len()).any(|w| w == SECRET),
        "{key}: the secret was published"
    );
    assert_eq!(&bytes[bytes.len() - 2..], [0xFF, 0xD9], "{key}: a trailer");
    assert_eq!(
        icc_profile(bytes).as_deref(),
        Some(PROFILE),
        "{key}: profile"
    );
}

fn key_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_camera_photo_is_stored_web_sized_and_private_with_variants_and_a_placeholder() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = TestApp::spawn(upload_settings(Some(&db.url), media.path())).await;
    let r = app.upload("camera.jpg", camera_photo(6000, 4000, 1)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let photo = r.json();
    assert_eq!(
        (photo["width"].as_u64(), photo["height"].as_u64()),
        (Some(2560), Some(1707))
    );
    assert_eq!(files_in(media.path()), objects_of("", &["camera.jpg"]));
    assert_eq!(pending(&db, "camera.jpg"), "false", "nothing left to make");

    let read = |key: &str| std::fs::read(media.path().join(key)).unwrap();
    assert_eq!(stored_size(&read("camera.jpg")), (2560, 1707));
    for (field, size) in [("thumbnail_url", (400, 267)), ("medium_url", (1200, 800))] {
        let url = photo[field].as_str().unwrap();
        let key = key_of(url);
        assert_eq!(stored_size(&read(key)), size, "{field}");
        let served = app.get(&format!("/media/{key}")).await;
        assert_eq!(served.status, StatusCode::OK, "{url} fetches");
        assert_eq!(served.header("content-type"), Some("image/jpeg"));
    }
    for key in objects_of("", &["camera.jpg"]) {
        assert_clean(&key, &read(&key));
    }

    // Listing items carry the new fields after the six original ones.
    let listed = app.get("/api/images").await.json();
    let item = &listed.as_array().unwrap()[0];
    let fields: Vec<&str> = item
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        [
            "id",
            "filename",
            "url",
            "category",
            "width",
            "height",
            "thumbnail_url",
            "medium_url",
            "placeholder",
            "color"
        ]
    );
    assert_eq!(item["thumbnail_url"], photo["thumbnail_url"]);
    let color = item["color"].as_str().unwrap();
    assert!(color.len() == 7 && color.starts_with('#'), "{color}");
    let hash = item["placeholder"].as_str().unwrap();
    assert!(
        (20..=60).contains(&hash.len()),
        "a ThumbHash in base64: {hash}"
    );
    assert_eq!(item["placeholder"], photo["placeholder"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orientation_6_photo_is_stored_upright_with_width_and_height_swapped() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = TestApp::spawn(upload_settings(Some(&db.url), media.path())).await;
    let r = app.upload("phone.jpg", camera_photo(900, 600, 6)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        (r.json()["width"].as_u64(), r.json()["height"].as_u64()),
        (Some(600), Some(900))
    );
    for key in objects_of("", &["phone.jpg"]) {
        let bytes = std::fs::read(media.path().join(&key)).unwrap();
        assert_clean(&key, &bytes);
        let (w, h) = stored_size(&bytes);
        assert!(h > w, "{key} is portrait: {w}x{h}");
        // Turned a quarter clockwise: the red left half is now the top.
        let img = image::load_from_memory(&bytes).unwrap().into_rgb8();
        let (top, bottom) = (img.get_pixel(w / 2, h / 8), img.get_pixel(w / 2, h * 7 / 8));
        assert!(top[0] > 150 && top[2] < 90, "{key}: top {top:?}");
        assert!(
            bottom[2] > 150 && bottom[0] < 90,
            "{key}: bottom {bottom:?}"
        );
    }
}

fn row_count(db: &TestDb) -> String {
    db.rows("SELECT count(*) FROM photographs")[0][0]
        .clone()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_second_variant_leaves_nothing_and_the_name_can_be_uploaded_again() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    // Writes of the medium variant (written after the thumb) are refused while `failing`.
    let failing = Arc::new(AtomicBool::new(true));
    let refusing = failing.clone();
    let store = Arc::new(PutHook::new(media.path(), move |inner, key, bytes| {
        if refusing.load(Ordering::SeqCst) && key.starts_with("medium--") {
            return Err(StorageError::Rejected {
                status: 403,
                message: "quota exceeded (injected)".into(),
            });
        }
        inner.put_new(key, bytes)
    }));
    let s = upload_settings(Some(&db.url), media.path());
    let app = TestApp::spawn_with_store(s, store).await;
    let r = app.upload("two.jpg", camera_photo(1600, 1000, 1)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains("quota exceeded"), "{}", r.text());
    assert!(
        files_in(media.path()).is_empty(),
        "{:?}",
        files_in(media.path())
    );
    assert_eq!(row_count(&db), "0");
    assert_eq!(app.state.cleanup.pending(), 0, "settled at once");

    failing.store(false, Ordering::SeqCst);
    let again = app.upload("two.jpg", camera_photo(1600, 1000, 1)).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text());
    assert_eq!(files_in(media.path()), objects_of("", &["two.jpg"]));
}

/// Supabase answering 500 to the medium variant: the write may or may not have happened, so
/// the journal's resolver removes the photo and its thumb (and would remove a late medium).
#[tokio::test(flavor = "multi_thread")]
async fn a_supabase_5xx_on_a_variant_leaves_no_object_behind() {
    let db = TestDb::new();
    let fake = Arc::new(FakeStorage::default());
    *fake.fail_prefix.lock().unwrap() = Some("medium--".into());
    let base = start_fake(fake.clone()).await;
    let mut s = upload_settings(Some(&db.url), &std::env::temp_dir());
    s.storage.backend = Some(StorageBackend::Supabase);
    s.storage.supabase_url = Some(base);
    s.storage.supabase_key = Some(Secret::new(SERVICE_KEY));
    s.storage.timeout_secs = 1;
    let app = TestApp::spawn(s).await;
    let stored = || {
        let mut keys: Vec<String> = fake.objects.lock().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let r = app.upload("cloud.jpg", camera_photo(1600, 1000, 1)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(
        eventually(5, || stored().is_empty()).await,
        "left: {:?}",
        stored()
    );
    assert_eq!(row_count(&db), "0");

    *fake.fail_prefix.lock().unwrap() = None;
    let again = app.upload("cloud.jpg", camera_photo(1600, 1000, 1)).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text());
    assert_eq!(stored(), objects_of("images/", &["cloud.jpg"]));
    for key in stored() {
        assert_clean(&key, &fake.objects.lock().unwrap()[&key]);
    }
}

// ---------------------------------------------------------------------------------------------
// variants backfill

fn migrate(dir: &std::path::Path, url: &str) {
    let ok = Command::new(env!("CARGO_BIN_EXE_portfolio-server"))
        .current_dir(dir)
        .env_clear()
        .env("DATABASE_URL", url)
        .arg("migrate")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
}

fn backfill_command(dir: &std::path::Path, db_url: &str, media: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portfolio-server"));
    c.current_dir(dir)
        .env_clear()
        .env("DATABASE_URL", db_url)
        .env("APP_STORAGE__LOCAL_DIR", media)
        .env("APP_STORAGE__PUBLIC_BASE_URL", "http://media.test/media")
        .args(["variants", "backfill"]);
    c
}

/// Rows as the original server (or this one before variants) made them: a photo in the folder
/// and a row with the six fields only.
fn old_rows(db: &TestDb, media: &std::path::Path, n: usize) {
    for i in 0..n {
        let name = format!("old-{i:02}.jpg");
        std::fs::write(media.join(&name), camera_photo(1600, 1200, 1)).unwrap();
        db.execute(&format!(
            "INSERT INTO photographs (filename, url, width, height) \
             VALUES ('{name}', 'http://media.test/media/{name}', 1600, 1200)"
        ));
    }
}

fn missing_variants(db: &TestDb) -> String {
    db.rows(
        "SELECT count(*) FROM photographs WHERE thumbnail_url IS NULL OR medium_url IS NULL \
         OR placeholder IS NULL OR color IS NULL",
    )[0][0]
        .clone()
        .unwrap()
}

#[test]
fn backfill_fills_old_rows_is_idempotent_and_resumes_after_being_killed() {
    let (db, media, dir) = (
        TestDb::new(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    migrate(dir.path(), &db.url);
    old_rows(&db, media.path(), 24);
    let photos_before: Vec<Vec<u8>> = (0..24)
        .map(|i| std::fs::read(media.path().join(format!("old-{i:02}.jpg"))).unwrap())
        .collect();

    // Killed as soon as it has made some, but not all.
    let mut child = backfill_command(dir.path(), &db.url, media.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while missing_variants(&db) == "24" && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left: usize = missing_variants(&db).parse().unwrap();
    assert!(left < 24, "it made some before it was killed");
    assert!(
        left > 0,
        "killed before it finished, or this test proves nothing"
    );

    // The second run does the rest.
    let out = backfill_command(dir.path(), &db.url, media.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{left} photos need variants")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{left}/{left} photos")),
        "plain progress lines: {stderr}"
    );
    assert_eq!(missing_variants(&db), "0");
    let names: Vec<String> = (0..24).map(|i| format!("old-{i:02}.jpg")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        files_in(media.path()),
        objects_of("", &names),
        "no leftovers"
    );
    for (i, name) in names.iter().enumerate() {
        let thumb = std::fs::read(media.path().join(format!("thumb--{name}"))).unwrap();
        assert_eq!(stored_size(&thumb), (400, 300));
        assert_clean(name, &thumb);
        assert_eq!(
            std::fs::read(media.path().join(name)).unwrap(),
            photos_before[i],
            "the photo itself is never rewritten"
        );
    }
    let urls = db.rows("SELECT thumbnail_url, medium_url FROM photographs WHERE id = 1");
    assert_eq!(
        urls[0],
        [
            Some("http://media.test/media/thumb--old-00.jpg".into()),
            Some("http://media.test/media/medium--old-00.jpg".into())
        ]
    );

    // Nothing left to do: a third run changes nothing.
    let thumbs_before = std::fs::metadata(media.path().join("thumb--old-00.jpg"))
        .unwrap()
        .modified()
        .unwrap();
    let out = backfill_command(dir.path(), &db.url, media.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 photos need variants"));
    assert_eq!(
        std::fs::metadata(media.path().join("thumb--old-00.jpg"))
            .unwrap()
            .modified()
            .unwrap(),
        thumbs_before
    );
}

#[test]
fn backfill_reports_rows_it_cannot_read_and_exits_non_zero() {
    let (db, media, dir) = (
        TestDb::new(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    migrate(dir.path(), &db.url);
    old_rows(&db, media.path(), 1);
    db.execute(
        "INSERT INTO photographs (filename, url) VALUES ('gone.jpg', 'http://media.test/media/gone.jpg'), \
         ('elsewhere.jpg', 'https://cdn.example/elsewhere.jpg')",
    );
    std::fs::write(
        media.path().join("broken.jpg"),
        b"\xFF\xD8\xFF\xE0\x00\x10cut off",
    )
    .unwrap();
    db.execute(
        "INSERT INTO photographs (filename, url) VALUES ('broken.jpg', 'http://media.test/media/broken.jpg')",
    );
    let out = backfill_command(dir.path(), &db.url, media.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stdout.contains("failed\t2\tgone.jpg\tthe photo is not in storage"),
        "{stdout}"
    );
    assert!(
        stdout.contains("failed\t3\telsewhere.jpg\tthe photo's URL"),
        "{stdout}"
    );
    assert!(
        stdout.contains("failed\t4\tbroken.jpg\tUnreadable image"),
        "{stdout}"
    );
    assert!(
        stderr.contains("1 of 4 photos now have their variants; 3 failed"),
        "{stderr}"
    );
    assert_eq!(
        missing_variants(&db),
        "3",
        "the others are left as they were"
    );
}

/// `variants backfill` with the original's `.env` against the Supabase double (which refuses
/// what real Supabase refuses): rows of the original, one with a key in the original's own
/// spelling, get variants under keys Supabase takes. A foreign object at a variant's key fails
/// its row with a message, leaves the object alone, and the run exits non-zero.
#[test]
fn backfill_on_supabase_writes_only_keys_supabase_takes_and_never_replaces_a_foreign_object() {
    use crate::fake_supabase::{FakeStorage, SERVICE_KEY, start_on_own_runtime};
    let fake = Arc::new(FakeStorage::default());
    let base = start_on_own_runtime(fake.clone());
    let (db, dir) = (TestDb::new(), tempfile::tempdir().unwrap());
    migrate(dir.path(), &db.url);
    let public = format!("{base}/storage/v1/object/public/images");
    for (name, key) in [
        ("IMG 001.JPG", "IMG%20001.JPG"),
        ("sunset.jpg", "sunset.jpg"),
        ("taken.jpg", "taken.jpg"),
    ] {
        db.execute(&format!(
            "INSERT INTO photographs (filename, url) VALUES ('{name}', '{public}/{key}')"
        ));
        let stored = name.replace("%20", " ");
        fake.objects
            .lock()
            .unwrap()
            .insert(format!("images/{stored}"), camera_photo(1600, 1200, 1));
    }
    fake.objects.lock().unwrap().insert(
        "images/medium--taken.jpg".into(),
        b"someone else's".to_vec(),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_portfolio-server"))
        .current_dir(dir.path())
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("SUPABASE_URL", &base)
        .env("SUPABASE_KEY", SERVICE_KEY)
        .args(["variants", "backfill"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "one row failed: {stderr}");
    assert!(
        stdout.contains("storage already holds `medium--taken.jpg`"),
        "{stdout}"
    );
    assert_eq!(
        fake.invalid_keys.lock().unwrap().clone(),
        Vec::<String>::new()
    );
    let objects = fake.objects.lock().unwrap().clone();
    assert_eq!(objects["images/medium--taken.jpg"], b"someone else's");
    for key in [
        "thumb--IMG 001.JPG",
        "medium--IMG 001.JPG",
        "thumb--sunset.jpg",
    ] {
        assert!(objects.contains_key(&format!("images/{key}")), "{key}");
    }
    let urls = db.rows("SELECT thumbnail_url, medium_url FROM photographs ORDER BY id");
    assert_eq!(
        urls[0],
        [
            Some(format!("{public}/thumb--IMG%20001.JPG")),
            Some(format!("{public}/medium--IMG%20001.JPG"))
        ]
    );
    assert_eq!(urls[2], [None, None], "the failed row is left as it was");
}

/// A disk that fills up while a photo's variants are written: the upload is a 502 that says
/// so, nothing is kept, and health says `failing` with the reason. (The clean-up of what was
/// written, deletes that succeed, must not make it `ok` again.)
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_shows_in_health_after_the_failed_upload_cleans_up() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let store = Arc::new(PutHook::new(media.path(), |inner, key, bytes| {
        if key.starts_with("medium--") {
            return Err(StorageError::Io(std::io::Error::from_raw_os_error(28))); // ENOSPC
        }
        inner.put_new(key, bytes)
    }));
    let app = TestApp::spawn_with_store(upload_settings(Some(&db.url), media.path()), store).await;
    assert_eq!(app.get("/api/health").await.json()["storage"], "ok");
    let r = app.upload("full.jpg", camera_photo(1600, 1000, 1)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains("No space left on device"), "{}", r.text());
    assert!(
        files_in(media.path()).is_empty(),
        "{:?}",
        files_in(media.path())
    );
    assert_eq!(row_count(&db), "0");
    let h = app.get("/api/health").await.json();
    assert_eq!(h["storage"], "failing", "{h}");
    assert!(
        h["storage_reason"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{h}"
    );
}

/// Variant writes that each wait, up to `patience`, until every variant of the upload is being
/// written: a store that writes them one after another never gets past the first. With
/// `medium_fails` the medium variant's write lands but its answer is lost, as when a connection
/// is reset after the body was sent.
struct Rendezvous {
    waiting: std::sync::Mutex<usize>,
    arrived: std::sync::Condvar,
    patience: Duration,
    medium_fails: bool,
}

impl Rendezvous {
    /// A local store in `dir` whose writes go through the rendezvous.
    fn store(dir: &std::path::Path, medium_fails: bool) -> Arc<dyn ObjectStore> {
        let rendezvous = Rendezvous {
            waiting: std::sync::Mutex::new(0),
            arrived: std::sync::Condvar::new(),
            patience: Duration::from_secs(5),
            medium_fails,
        };
        Arc::new(PutHook::new(dir, move |inner, key, bytes| {
            rendezvous.put(inner, key, bytes)
        }))
    }

    fn put(&self, inner: &LocalStore, key: &str, bytes: &[u8]) -> Result<Put, StorageError> {
        if key.contains("--") {
            let mut waiting = self.waiting.lock().unwrap();
            *waiting += 1;
            self.arrived.notify_all();
            let (waiting, timeout) = self
                .arrived
                .wait_timeout_while(waiting, self.patience, |n| *n < 2)
                .unwrap();
            drop(waiting);
            if timeout.timed_out() {
                return Err(StorageError::Rejected {
                    status: 400,
                    message: format!("{key}: written alone (injected)"),
                });
            }
            if self.medium_fails && key.starts_with("medium--") {
                // The object lands; the answer is lost.
                inner.put_new(key, bytes)?;
                return Err(StorageError::Unavailable(
                    "connection reset (injected)".into(),
                ));
            }
        }
        inner.put_new(key, bytes)
    }
}

/// The two variants go to the store at once (one round trip to a distant store, not two).
#[tokio::test(flavor = "multi_thread")]
async fn the_variants_are_written_at_once() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let store = Rendezvous::store(media.path(), false);
    let app = TestApp::spawn_with_store(upload_settings(Some(&db.url), media.path()), store).await;
    let r = app.upload("both.jpg", camera_photo(1600, 1000, 1)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(files_in(media.path()), objects_of("", &["both.jpg"]));
    assert_eq!(row_count(&db), "1");
}

/// One variant's key holds an object this server did not write while the other's write fails
/// with an unknown outcome: the upload is refused, the photo is removed, and the resolver, which
/// settles the unknown write, leaves the foreign object alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_object_at_one_variant_key_survives_the_other_variants_unknown_failure() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let foreign = b"not a variant of ours".to_vec();
    std::fs::write(media.path().join("thumb--mixed.jpg"), &foreign).unwrap();
    let store = Rendezvous::store(media.path(), true);
    let app = TestApp::spawn_with_store(upload_settings(Some(&db.url), media.path()), store).await;
    let r = app.upload("mixed.jpg", camera_photo(1600, 1000, 1)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("thumb--mixed.jpg"), "{}", r.text());
    assert!(
        eventually(10, || app.state.cleanup.pending() == 0).await,
        "the resolver settled the medium's unknown write"
    );
    // It removed the medium that landed, and only that.
    assert_eq!(files_in(media.path()), ["thumb--mixed.jpg"]);
    assert_eq!(
        std::fs::read(media.path().join("thumb--mixed.jpg")).unwrap(),
        foreign
    );
    assert_eq!(row_count(&db), "0");
}

/// A variant left behind with exactly the bytes this upload makes (an earlier attempt at the same
/// photo stored it) serves as it is: the upload succeeds and nothing is written over.
#[tokio::test(flavor = "multi_thread")]
async fn a_variant_already_stored_with_these_very_bytes_is_kept_and_the_upload_succeeds() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let app = TestApp::spawn(upload_settings(Some(&db.url), media.path())).await;
    let photo = camera_photo(1600, 1000, 1);
    assert_eq!(
        app.upload("again.jpg", photo.clone()).await.status,
        StatusCode::CREATED
    );
    // The photo and its row are gone, its variants stay.
    std::fs::remove_file(media.path().join("again.jpg")).unwrap();
    db.execute("DELETE FROM photographs");
    let thumb = std::fs::read(media.path().join("thumb--again.jpg")).unwrap();

    let r = app.upload("again.jpg", photo).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(files_in(media.path()), objects_of("", &["again.jpg"]));
    assert_eq!(
        std::fs::read(media.path().join("thumb--again.jpg")).unwrap(),
        thumb
    );
    assert_eq!(row_count(&db), "1");
}

// ---------------------------------------------------------------------------------------------
// image.variants_after_answer

fn answering_first(db: &TestDb, media: &std::path::Path) -> portfolio_server::config::Settings {
    let mut s = upload_settings(Some(&db.url), media);
    s.image.variants_after_answer = true;
    s
}

/// Waits up to 20 s for the row's variants, placeholder and colour to be recorded.
async fn variants_made(db: &TestDb, name: &str) -> bool {
    eventually(20, || made_later(db, name).iter().all(Option::is_some)).await
}

fn pending(db: &TestDb, name: &str) -> String {
    db.rows(&format!(
        "SELECT variants_pending::text FROM photographs WHERE filename = '{name}'"
    ))[0][0]
        .clone()
        .unwrap()
}

/// The row's variant URLs, placeholder and colour.
fn made_later(db: &TestDb, name: &str) -> Vec<Option<String>> {
    db.rows(&format!(
        "SELECT thumbnail_url, medium_url, placeholder, color FROM photographs \
         WHERE filename = '{name}'"
    ))
    .pop()
    .unwrap_or_default()
}

/// The answer comes before the variants, with them null; they follow, made from the stored
/// photo, clean, with the very bytes the server makes for that photo, and listings show them.
/// An older row without variants is left to `variants backfill`.
#[tokio::test(flavor = "multi_thread")]
async fn with_variants_after_the_answer_the_answer_comes_first_and_the_variants_follow() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    // Variant writes wait until the test has read (and cached) a listing without them.
    let (open, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(Some(gate));
    let store = Arc::new(PutHook::new(media.path(), move |inner, key, bytes| {
        if key.contains("--")
            && let Some(gate) = gate.lock().unwrap().take()
        {
            let _ = gate.recv_timeout(Duration::from_secs(20));
        }
        inner.put_new(key, bytes)
    }));
    let app = TestApp::spawn_with_store(answering_first(&db, media.path()), store).await;
    std::fs::write(media.path().join("old.jpg"), camera_photo(800, 600, 1)).unwrap();
    db.execute(
        "INSERT INTO photographs (filename, url, category) \
         VALUES ('old.jpg', 'http://media.test/media/old.jpg', 'nature')",
    );
    let r = app.upload("later.jpg", camera_photo(1600, 1000, 1)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let photo = r.json();
    assert_eq!(
        (photo["width"].as_u64(), photo["height"].as_u64()),
        (Some(1600), Some(1000))
    );
    for field in ["thumbnail_url", "medium_url", "placeholder", "color"] {
        assert!(photo[field].is_null(), "{field} in {photo}");
    }
    let medium_of = |listed: serde_json::Value| {
        let items = listed.as_array().unwrap().clone();
        items
            .into_iter()
            .find(|p| p["filename"] == "later.jpg")
            .map(|p| p["medium_url"].clone())
    };
    let before = app.get("/api/images").await.json();
    assert_eq!(medium_of(before), Some(serde_json::Value::Null));
    open.send(()).unwrap();
    assert!(
        variants_made(&db, "later.jpg").await,
        "made: {:?}",
        made_later(&db, "later.jpg")
    );
    assert_eq!(pending(&db, "later.jpg"), "false");
    let mut all = objects_of("", &["later.jpg"]);
    all.push("old.jpg".into());
    all.sort();
    assert_eq!(
        files_in(media.path()),
        all,
        "nothing made for the older row"
    );
    assert_eq!(made_later(&db, "old.jpg"), [None, None, None, None]);
    let read = |key: &str| std::fs::read(media.path().join(key)).unwrap();
    for key in objects_of("", &["later.jpg"]) {
        assert_clean(&key, &read(&key));
    }
    // Exactly what the pipeline makes of the stored photo.
    let stored = read("later.jpg");
    let settings = portfolio_server::config::Settings::default();
    let info = portfolio_server::imaging::inspect(&stored, settings.upload.max_side_px).unwrap();
    let (variants, preview) =
        portfolio_server::imaging::variants_for_stored(&stored, &info, &settings.image).unwrap();
    for (variant, encoded) in variants {
        assert_eq!(
            read(&variant.key("later.jpg")),
            encoded.bytes,
            "{variant:?}"
        );
    }
    let row = made_later(&db, "later.jpg");
    assert_eq!(
        row[0].as_deref(),
        Some("http://media.test/media/thumb--later.jpg")
    );
    assert_eq!(row[2].as_deref(), Some(preview.placeholder.as_str()));
    assert_eq!(row[3].as_deref(), Some(preview.color.as_str()));
    let listed = app
        .wait_for("/api/images", 10, |r| {
            medium_of(r.json()).is_some_and(|m| !m.is_null())
        })
        .await;
    assert_eq!(
        medium_of(listed.json()),
        Some("http://media.test/media/medium--later.jpg".into())
    );
}

/// A delete that arrives while the variants are being written waits for them, then removes the
/// photo with them: nothing is left in storage or in the table.
#[tokio::test(flavor = "multi_thread")]
async fn a_photo_deleted_while_its_variants_are_made_leaves_nothing_behind() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let (writing_tx, writing) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (writing_tx, released) = (
        std::sync::Mutex::new(writing_tx),
        std::sync::Mutex::new(released),
    );
    // The first variant write says so, then waits to be released.
    let store = Arc::new(PutHook::new(media.path(), move |inner, key, bytes| {
        if key.starts_with("thumb--") {
            let _ = writing_tx.lock().unwrap().send(());
            let _ = released
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(20));
        }
        inner.put_new(key, bytes)
    }));
    let app = TestApp::spawn_with_store(answering_first(&db, media.path()), store).await;
    let r = app.upload("gone.jpg", camera_photo(1600, 1000, 1)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let id = r.json()["id"].as_i64().unwrap();
    tokio::task::spawn_blocking(move || writing.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the variants are being written");
    let app = Arc::new(app);
    let deleting = {
        let app = app.clone();
        tokio::spawn(async move {
            app.admin(
                poem::http::Method::DELETE,
                &format!("/api/images/{id}"),
                Some(crate::helpers::API_KEY),
                None,
            )
            .await
        })
    };
    // The delete waits on the row the variants hold.
    let waiting_on_a_lock = || {
        db.rows(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )[0][0]
            .as_deref()
            == Some("1")
    };
    assert!(eventually(10, waiting_on_a_lock).await, "the delete waits");
    assert!(!deleting.is_finished(), "the delete waits for the variants");
    release.send(()).unwrap();
    let deleted = deleting.await.unwrap();
    assert!(deleted.status.is_success(), "{}", deleted.text());
    assert!(
        eventually(10, || files_in(media.path()).is_empty()).await,
        "left: {:?}",
        files_in(media.path())
    );
    assert_eq!(row_count(&db), "0");
}

/// The store refuses the variants after the answer: the photo stays stored and listed, health
/// says what the write found, and the next process makes the variants at start-up.
#[tokio::test(flavor = "multi_thread")]
async fn variants_that_fail_after_the_answer_are_made_by_the_next_start() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let tried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let refused = tried.clone();
    let store = Arc::new(PutHook::new(media.path(), move |inner, key, bytes| {
        if key == "medium--kept.jpg" {
            refused.fetch_add(1, Ordering::SeqCst);
            return Err(StorageError::Rejected {
                status: 403,
                message: "quota exceeded (injected)".into(),
            });
        }
        inner.put_new(key, bytes)
    }));
    let s = answering_first(&db, media.path());
    let app = TestApp::spawn_with_store(s.clone(), store).await;
    let r = app.upload("kept.jpg", camera_photo(1600, 1000, 1)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert!(
        eventually(20, || tried.load(Ordering::SeqCst) > 0).await,
        "the variants were tried"
    );
    let health = app
        .wait_for("/api/health", 10, |r| r.json()["storage"] != "ok")
        .await
        .json();
    assert!(
        health["storage_reason"]
            .as_str()
            .is_some_and(|r| r.contains("quota exceeded")),
        "health says what the write found: {health}"
    );
    assert_eq!(made_later(&db, "kept.jpg"), [None, None, None, None]);
    assert_eq!(pending(&db, "kept.jpg"), "true");
    let listed = app.get("/api/images").await.json();
    assert_eq!(listed[0]["filename"], "kept.jpg", "{listed}");
    assert!(media.path().join("kept.jpg").exists());
    // The next uploads' passes make their own variants and leave the failed row to its wait.
    // Passes run one after another, so once the second upload's variants are made, the pass
    // of the first has ended, whatever it tried.
    for name in ["next.jpg", "last.jpg"] {
        let r = app.upload(name, camera_photo(1600, 1000, 1)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        assert!(
            variants_made(&db, name).await,
            "{name}: {:?}",
            made_later(&db, name)
        );
    }
    assert_eq!(tried.load(Ordering::SeqCst), 1, "not tried again so soon");
    let metrics = app.get("/metrics").await.text();
    assert!(
        metrics.contains("\nphotos_variants_pending 1\n"),
        "{metrics}"
    );
    drop(app);

    let app = TestApp::spawn(s).await;
    assert!(
        variants_made(&db, "kept.jpg").await,
        "made at start-up: {:?}",
        made_later(&db, "kept.jpg")
    );
    assert_eq!(
        files_in(media.path()),
        objects_of("", &["kept.jpg", "last.jpg", "next.jpg"])
    );
    assert_eq!(pending(&db, "kept.jpg"), "false");
    let metrics = app.get("/metrics").await.text();
    assert!(
        metrics.contains("\nphotos_variants_pending 0\n"),
        "{metrics}"
    );
}

/// The database goes away while a photo's variants are being recorded: nothing is lost, nothing
/// is left behind, and once it is back the variants are recorded within the task's retry
/// (`DB_RETRY`), not the hour-long wait of a row that failed. One image slot: the task works
/// on one row at a time plus one.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_lost_while_the_variants_are_recorded_is_waited_out() {
    let (db, media) = (TestDb::new(), tempfile::tempdir().unwrap());
    let proxy = crate::helpers::ToggleProxy::start(&db.url).await;
    let (writing_tx, writing) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (writing_tx, released) = (
        std::sync::Mutex::new(writing_tx),
        std::sync::Mutex::new(released),
    );
    // The first thumb write says so, then waits to be released.
    let first = AtomicBool::new(true);
    let store = Arc::new(PutHook::new(media.path(), move |inner, key, bytes| {
        if key.starts_with("thumb--") && first.swap(false, Ordering::SeqCst) {
            let _ = writing_tx.lock().unwrap().send(());
            let _ = released
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(20));
        }
        inner.put_new(key, bytes)
    }));
    let mut s = answering_first(&db, media.path());
    s.database.url = Some(Secret::new(proxy.url_for(&db.url)));
    s.image.max_concurrent = 1;
    let app = TestApp::spawn_with_store(s, store).await;
    let r = app.upload("cut.jpg", camera_photo(1600, 1000, 1)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    tokio::task::spawn_blocking(move || writing.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the variants are being written");
    // The row is locked in a transaction whose connection now goes; then the writes go on.
    proxy.cut_and_wait();
    release.send(()).unwrap();
    let back = app.state.db.clone().unwrap();
    assert!(
        eventually(10, || !back.is_available()).await,
        "the app noticed"
    );
    assert_eq!(pending(&db, "cut.jpg"), "true", "nothing was recorded");
    proxy.restore();
    assert!(
        eventually(30, || pending(&db, "cut.jpg") == "false").await,
        "recorded once the database is back"
    );
    assert!(made_later(&db, "cut.jpg").iter().all(Option::is_some));
    assert_eq!(files_in(media.path()), objects_of("", &["cut.jpg"]));
}

/// A variant turned off (`image.thumb_px` or `image.medium_px` 0) is not asked for: a backfill
/// with it off makes the rest and then finds nothing to do, and once it is on again the next
/// backfill makes that variant alone.
#[test]
fn backfill_asks_only_for_the_variants_turned_on() {
    for (setting, column) in [
        ("APP_IMAGE__THUMB_PX", "thumbnail_url"),
        ("APP_IMAGE__MEDIUM_PX", "medium_url"),
    ] {
        let (db, media, dir) = (
            TestDb::new(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        migrate(dir.path(), &db.url);
        old_rows(&db, media.path(), 2);
        let run = |off: bool| {
            let mut c = backfill_command(dir.path(), &db.url, media.path());
            if off {
                c.env(setting, "0");
            }
            let out = c.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "{setting}: {stderr}");
            stderr
        };
        let without = |db: &TestDb| {
            db.rows(&format!(
                "SELECT count(*) FROM photographs WHERE {column} IS NULL"
            ))[0][0]
                .clone()
                .unwrap()
        };
        assert!(run(true).contains("2 photos need variants"), "{setting}");
        assert_eq!(missing_variants(&db), "2", "{setting}: one variant is off");
        assert_eq!(without(&db), "2", "{setting}");
        let again = run(true);
        assert!(
            again.contains("0 photos need variants"),
            "{setting}: {again}"
        );
        let on = run(false);
        assert!(on.contains("2 photos need variants"), "{setting}: {on}");
        assert_eq!(missing_variants(&db), "0", "{setting}");
    }
}
