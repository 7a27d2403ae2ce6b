//! `/admin`, the owner's page (src/http/admin.rs, assets/admin/): its headers and when it is
//! served, the same-origin rule that lets it write, the key check it signs in with, and the
//! page itself in headless Chromium (Debian's `chromium`, driven by puppeteer-core from npm;
//! `tests/run.sh` installs both). A missing browser fails the test with how to install it.

use std::{path::PathBuf, process::Command};

use poem::http::{Method, StatusCode};
use portfolio_server::http::admin::content_security_policy;

use crate::helpers::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn app_with_key(db: &TestDb) -> (TestApp, PathBuf) {
    let media = scratch_dir("media");
    (
        TestApp::spawn(upload_settings(Some(&db.url), &media)).await,
        media,
    )
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy() {
    let db = TestDb::new();
    let (app, _media) = app_with_key(&db).await;
    let page = app.get("/admin").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    // The policy src/http/admin.rs tests part by part, with the test store's origin
    // (http://media.test) allowed to show images.
    assert_eq!(
        page.header("content-security-policy"),
        Some(content_security_policy("http://media.test/media/x").as_str())
    );
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("img-src 'self' data: https: http://media.test;")
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    assert!(
        page.text()
            .contains(r#"<script src="/admin/admin.js" defer></script>"#)
    );
    // The trailing slash is the same page.
    assert_eq!(app.get("/admin/").await.body, page.body);

    let script = app.get("/admin/admin.js").await;
    assert_eq!(script.status, StatusCode::OK);
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(script.header("content-security-policy").is_some());
    let style = app.get("/admin/admin.css").await;
    assert_eq!(
        style.header("content-type"),
        Some("text/css; charset=utf-8")
    );

    // Revalidated, not downloaded again.
    let etag = script.header("etag").unwrap().to_string();
    let again = app
        .request("/admin/admin.js", &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let other = app
        .request("/admin/admin.js", &[("if-none-match", "\"0000\"")])
        .await;
    assert_eq!(other.status, StatusCode::OK);

    for missing in [
        "/admin/nothing.js",
        "/admin/index.html",
        "/admin/../Cargo.toml",
    ] {
        let r = app.get(missing).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(r.json()["detail"], "Not Found", "{missing}");
    }
    let post = app.admin(Method::POST, "/admin", None, None).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn without_a_key_or_turned_off_there_is_no_page() {
    let db = TestDb::new();
    let app = TestApp::with_db(&db).await; // no admin key
    for path in ["/admin", "/admin/admin.js"] {
        let r = app.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            r.json()["detail"]
                .as_str()
                .unwrap()
                .contains("set ADMIN_API_KEY"),
            "{}",
            r.text()
        );
    }
    let mut s = upload_settings(Some(&db.url), &scratch_dir("media"));
    s.server.admin_page = false;
    let off = TestApp::spawn(s).await;
    let r = off.get("/admin").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("server.admin_page")
    );
    // The API is unaffected.
    let key = off
        .admin(Method::GET, "/api/auth", Some(API_KEY), None)
        .await;
    assert_eq!(key.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn the_key_check_says_right_wrong_or_wait() {
    let db = TestDb::new();
    let mut s = upload_settings(Some(&db.url), &scratch_dir("media"));
    s.auth.wrong_key_burst = 2;
    s.auth.wrong_keys_per_minute = 1;
    let app = TestApp::spawn(s).await;
    let right = app
        .admin(Method::GET, "/api/auth", Some(API_KEY), None)
        .await;
    assert_eq!(right.status, StatusCode::NO_CONTENT, "{}", right.text());
    assert!(right.body.is_empty());
    // A missing key is refused and not counted; two wrong ones are.
    for key in [None, Some("wrong"), Some("wrong too")] {
        let r = app.admin(Method::GET, "/api/auth", key, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(r.json()["detail"], "Invalid or missing API key");
    }
    // Two wrong keys were the burst: even the right one now waits.
    let held = app
        .admin(Method::GET, "/api/auth", Some(API_KEY), None)
        .await;
    assert_eq!(
        held.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        held.text()
    );
    let wait: u64 = held.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");

    let no_key = TestApp::with_db(&db).await;
    let r = no_key
        .admin(Method::GET, "/api/auth", Some(API_KEY), None)
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("ADMIN_API_KEY")
    );
}

/// Browsers send `Origin` on a same-origin POST, PATCH and DELETE: the page's own origin is
/// accepted with no `CORS_ORIGINS`; another origin is still refused, and nothing is stored.
#[tokio::test]
async fn the_servers_own_origin_may_write_and_others_may_not() {
    let db = TestDb::new();
    let media = scratch_dir("media");
    let mut s = upload_settings(Some(&db.url), &media);
    s.server.cors_origins = Vec::new();
    let app = TestApp::spawn(s).await;
    let own = "http://photos.example:8000";
    let other = "http://evil.example:8000";
    // A request as a browser on `origin` sends it to the server at photos.example:8000.
    let from = |method: Method, path: &str, origin: &str| {
        app.client
            .request(method, path)
            .header("host", "photos.example:8000")
            .header("origin", origin)
            .header("x-api-key", API_KEY)
    };
    let upload = |origin| {
        let form = Form::new().file("file", "own.jpg", jpeg(40, 30, None));
        from(Method::POST, "/api/upload", origin)
            .header("content-type", Form::content_type())
            .body(form.body())
            .send()
    };

    let refused = TestApp::reply_of(upload(other).await.0).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
    assert!(refused.header("access-control-allow-origin").is_none());
    assert!(db.rows("SELECT id FROM photographs").is_empty());
    assert!(
        files_in(&media).iter().all(|f| !f.contains("own")),
        "{:?}",
        files_in(&media)
    );

    let created = TestApp::reply_of(upload(own).await.0).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(created.header("vary"), Some("Origin"));
    let path = format!("/api/images/{}", created.json()["id"]);
    let patched = from(Method::PATCH, &path, own)
        .header("content-type", "application/json")
        .body(r#"{"category":"city"}"#)
        .send()
        .await;
    assert_eq!(patched.0.status(), StatusCode::OK);
    let deleted = from(Method::DELETE, &path, other).send().await;
    assert_eq!(deleted.0.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        db.rows("SELECT category FROM photographs"),
        vec![vec![Some("city".to_string())]]
    );
}

/// The page in a real browser: a wrong key (said plainly, then throttled with the wait shown), a
/// sign-in by keyboard, three photos uploaded through the file input with a file named like
/// markup and two files that are no JPEGs, a duplicate, the grid, a category changed and a
/// photo deleted by keyboard, under the page's own policy with no violation. Then the database
/// and storage must agree with what the page shows.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_in_chromium_uploads_edits_and_deletes() {
    let (chromium, browser_dir) = browser();
    let db = TestDb::new();
    let media = scratch_dir("media");
    let mut s = upload_settings(Some(&db.url), &media);
    s.auth.wrong_key_burst = 2;
    s.auth.wrong_keys_per_minute = 60;
    let (base, server) = serve(s).await;

    let files = scratch_dir("browser-files");
    for (name, w) in [
        ("harbour.jpg", 640),
        ("forest.jpg", 480),
        ("dunes.jpg", 560),
    ] {
        std::fs::write(files.join(name), jpeg(w, 360, None)).unwrap();
    }
    std::fs::write(
        files.join("<img src=x onerror=alert(1)>.jpg"),
        jpeg(300, 200, None),
    )
    .unwrap();
    std::fs::write(files.join("notes.txt"), "not a photo").unwrap();
    std::fs::write(files.join("fake.jpg"), png(20, 20)).unwrap();

    let screenshot = std::env::var("ADMIN_SCREENSHOT").ok();
    let out = tokio::task::spawn_blocking(move || {
        let mut node = Command::new("node");
        node.arg(browser_dir.join("admin.test.mjs"))
            .current_dir(&browser_dir)
            .env("BASE", &base)
            .env("KEY", API_KEY)
            .env("FILES", &files)
            .env("CHROMIUM", &chromium);
        if let Some(path) = screenshot {
            node.env("SCREENSHOT", path);
        }
        node.output().expect("node runs")
    })
    .await
    .unwrap();
    server.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        seen["throttled"]
            .as_str()
            .unwrap()
            .contains("Try again in 1 s"),
        "{seen}"
    );
    assert!(
        seen["health"].as_str().unwrap().contains("Storage: ok"),
        "{seen}"
    );

    // The database holds exactly what the page showed.
    let rows: Vec<serde_json::Value> = db
        .rows("SELECT id::text, filename, category FROM photographs ORDER BY id")
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "id": r[0].as_ref().unwrap().parse::<i64>().unwrap(),
                "filename": r[1],
                "category": r[2],
            })
        })
        .collect();
    assert_eq!(
        serde_json::Value::from(rows.clone()),
        seen["shown"],
        "{seen}"
    );
    let edited = seen["edited"].as_i64().unwrap();
    let deleted = seen["deleted"].as_i64().unwrap();
    let mut names = Vec::new();
    for row in &rows {
        let expected = if row["id"] == edited {
            "street life"
        } else {
            "travel"
        };
        assert_eq!(row["category"], expected, "{row}");
        assert_ne!(row["id"], deleted);
        names.push(row["filename"].as_str().unwrap().to_string());
    }
    assert!(
        names.contains(&"img-src-x-onerror-alert-1-.jpg".to_string()),
        "{names:?}"
    );
    // Storage holds each remaining photo with its variants, and nothing of the deleted one.
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert!(
        until(10, || files_in(&media)
            .into_iter()
            .filter(|f| !f.starts_with('.'))
            .collect::<Vec<_>>()
            == objects_of("", &names)),
        "{:?} against {:?}",
        files_in(&media),
        objects_of("", &names)
    );
}

/// Chromium and the page's test client, or a failure saying how to install them.
fn browser() -> (PathBuf, PathBuf) {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect(
            "Chromium not found: `apt-get install chromium` (bash tests/run.sh installs it with \
             every other server the suite needs)",
        );
    let dir = root().join("tests/browser");
    assert!(
        dir.join("node_modules/puppeteer-core").exists(),
        "puppeteer-core not installed: `npm ci --prefix tests/browser` (bash tests/run.sh does)"
    );
    (chromium, dir)
}

/// The server on a port of its own, as a browser reaches it, with local photos served from it;
/// its address.
async fn serve(
    mut s: portfolio_server::config::Settings,
) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let port = free_port();
    s.server.port = port;
    let base = format!("http://127.0.0.1:{port}");
    s.storage.public_base_url = format!("{base}/media");
    let app = portfolio_server::app::App::build(s).await.unwrap();
    (
        base,
        tokio::spawn(app.run_until_stopped(std::future::pending())),
    )
}

/// An upload that fails while the database is away says why and can be retried once it is
/// back; then a folder of 200 photos, chosen with the folder picker, is uploaded whole, at
/// most 3 at a time. Nothing is lost or left over: 201 rows, each with its objects.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_upload_is_retried_and_a_folder_of_200_photos_uploads_whole() {
    use std::io::{BufRead, Write};

    let (chromium, browser_dir) = browser();
    let db = TestDb::new();
    let proxy = ToggleProxy::start(&db.url).await;
    let media = scratch_dir("media");
    let s = upload_settings(Some(&proxy.url_for(&db.url)), &media);
    let (base, server) = serve(s).await;

    let files = scratch_dir("browser-files");
    let one = files.join("retried.jpg");
    std::fs::write(&one, jpeg(320, 240, None)).unwrap();
    let folder = files.join("holiday");
    std::fs::create_dir(&folder).unwrap();
    let small = jpeg(48, 32, None);
    for i in 0..200 {
        std::fs::write(folder.join(format!("photo-{i:03}.jpg")), &small).unwrap();
    }
    // What a camera or a desktop leaves in a folder: hidden files are left out.
    std::fs::write(folder.join(".DS_Store"), "junk").unwrap();
    proxy.cut_and_wait();

    let mut child = Command::new("node")
        .arg(browser_dir.join("folder.test.mjs"))
        .current_dir(&browser_dir)
        .env("BASE", &base)
        .env("KEY", API_KEY)
        .env("CHROMIUM", &chromium)
        .env("ONE", &one)
        .env("FOLDER", &folder)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let base_url = base.clone();
    let (failed, done, status) = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let failed = lines.next().and_then(Result::ok).unwrap_or_default();
        if !failed.is_empty() {
            proxy.restore();
            // Back once the server says so: a write before it has seen the database again
            // fails the same way (and a person would retry again).
            let health = format!("{base_url}/api/health");
            assert!(
                until(20, || agent()
                    .get(&health)
                    .call()
                    .is_ok_and(|r| r.status() == 200)),
                "the server never saw the database again"
            );
            writeln!(stdin, "restored").unwrap();
        }
        let done = lines.next().and_then(Result::ok).unwrap_or_default();
        (failed, done, child.wait().unwrap())
    })
    .await
    .unwrap();
    server.abort();
    assert!(
        status.success(),
        "the browser test failed (its stderr is above): {failed} {done}"
    );
    let failed: serde_json::Value = serde_json::from_str(&failed).unwrap();
    assert_eq!(
        failed["reason"], "Not uploaded: Database unavailable, try again later",
        "{failed}"
    );
    let done: serde_json::Value = serde_json::from_str(&done).unwrap();
    assert_eq!(done["count"], 200, "{done}");
    assert!(
        done["overall"]
            .as_str()
            .unwrap()
            .starts_with("201 of 201 uploaded"),
        "{done}"
    );
    let most = done["most"].as_i64().unwrap();
    assert!((2..=3).contains(&most), "uploads in flight at once: {most}");

    let mut names: Vec<String> = (0..200).map(|i| format!("photo-{i:03}.jpg")).collect();
    names.push("retried.jpg".into());
    let mut rows: Vec<String> = db
        .rows("SELECT filename FROM photographs")
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect();
    rows.sort();
    names.sort();
    assert_eq!(rows, names);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(files_in(&media), objects_of("", &names));
}
