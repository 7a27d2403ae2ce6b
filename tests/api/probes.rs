//! `/livez` and `/readyz` with Kubernetes' meaning, and the graceful stop a rolling update needs:
//! readiness fails at SIGTERM, requests go on for the drain delay, in-flight uploads finish.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use poem::http::StatusCode;

use crate::{
    binary::{KillOnDrop, get, start_logging, wait_for_line},
    helpers::{API_KEY, Form, TestApp, TestDb, ToggleProxy, eventually, jpeg, settings},
};

/// The database goes away while a table copy exists: `/readyz` stays 200 (listings come from the
/// copy), `/api/health` answers 503 as the original's did, `/livez` is 200 throughout.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_holds_through_an_outage_while_the_table_copy_exists() {
    let db = TestDb::new();
    let proxy = ToggleProxy::start(&db.url).await;
    let mut s = settings(Some(&proxy.url_for(&db.url)));
    s.cache.copy_max_rows = 1000;
    s.cache.copy_refresh_secs = 1;
    let app = TestApp::spawn(s).await;
    db.seed(2);
    app.state.listing.invalidate();
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(
        ready.json(),
        serde_json::json!({"ready": true, "serving": "database"})
    );
    assert_eq!(ready.header("cache-control"), Some("no-store"));
    assert!(
        eventually(10, || app.state.listing.copy_rows() == Some(2)).await,
        "the copy of the table was taken"
    );

    let cut = std::sync::Arc::new(proxy);
    let p = cut.clone();
    tokio::task::spawn_blocking(move || p.cut_and_wait())
        .await
        .unwrap();
    assert_eq!(
        app.get("/api/health").await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the original's health route keeps its meaning"
    );
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    assert_eq!(ready.json()["serving"], "table copy");
    let listing = app.get("/api/images").await;
    assert_eq!(listing.ids(), [1, 2], "the owner's photos, from the copy");
    assert_eq!(app.get("/livez").await.status, StatusCode::OK);
    assert_eq!(app.get("/livez").await.json()["status"], "alive");
}

/// Started while the database is unreachable and with no saved copy: not ready (the listing
/// would be the demo photographs), alive all the same; ready once the database answers.
#[tokio::test(flavor = "multi_thread")]
async fn not_ready_until_the_database_or_a_copy_exists() {
    let db = TestDb::new();
    let proxy = ToggleProxy::start(&db.url).await;
    let p = std::sync::Arc::new(proxy);
    let cut = p.clone();
    tokio::task::spawn_blocking(move || cut.cut_and_wait())
        .await
        .unwrap();
    let mut s = settings(Some(&p.url_for(&db.url)));
    s.cache.copy_max_rows = 1000;
    let app = TestApp::spawn(s).await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.json(),
        serde_json::json!({
            "ready": false,
            "reason": "database unreachable and no saved copy of the table"
        })
    );
    assert_eq!(app.get("/livez").await.status, StatusCode::OK);
    p.restore();
    let mut last = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..500 {
        last = app.get("/readyz").await.status;
        if last == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, StatusCode::OK, "ready once the database answers");
}

/// Without a database the embedded photographs are the listing, by the user's choice: ready.
#[tokio::test(flavor = "multi_thread")]
async fn ready_without_a_database_serving_the_embedded_photographs() {
    let app = TestApp::spawn(settings(None)).await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["serving"], "embedded photographs");
}

/// An upload's request, its body held back after `head_room` bytes so that it is in flight when
/// the test wants.
struct SlowUpload {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl SlowUpload {
    fn start(port: u16, name: &str) -> SlowUpload {
        let body = Form::new()
            .file("file", name, jpeg(64, 48, None))
            .text("category", "city")
            .body();
        let head = format!(
            "POST /api/upload HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n\
             Content-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            Form::content_type(),
            body.len()
        );
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let half = body.len() / 2;
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body[..half]).unwrap();
        SlowUpload {
            stream,
            rest: body[half..].to_vec(),
        }
    }

    /// Sends the rest and reads the answer's status line.
    fn finish(mut self) -> String {
        self.stream.write_all(&self.rest).unwrap();
        let mut answer = String::new();
        let _ = self.stream.read_to_string(&mut answer);
        answer.lines().next().unwrap_or_default().to_string()
    }
}

/// SIGTERM with a drain delay: `/readyz` is 503 at once while listings are still served for the
/// delay; an upload whose body is still arriving at SIGTERM (and after the delay) is stored; the
/// table copy is saved; the process exits 0.
#[test]
fn sigterm_fails_readiness_first_serves_through_the_delay_and_finishes_uploads() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    let (child, port, log) = start_logging(
        dir.path(),
        &[
            ("DATABASE_URL", &db.url),
            ("ADMIN_API_KEY", API_KEY),
            ("APP_STORAGE__LOCAL_DIR", media.to_str().unwrap()),
            ("APP_SERVER__DRAIN_DELAY_SECS", "4"),
            ("APP_SERVER__SHUTDOWN_GRACE_SECS", "20"),
        ],
    );
    let mut child = KillOnDrop(child);
    assert!(wait_for_line(&log, "database connected", 30));
    assert_eq!(get(port, "/readyz").0, 200);
    let upload = SlowUpload::start(port, "in-flight.jpg");

    let signalled = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert!(wait_for_line(&log, "not ready (/readyz 503)", 10));
    let (status, body) = get(port, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    let (status, body) = get(port, "/api/images");
    assert_eq!(status, 200, "still serving during the delay: {body}");
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "those answers came within the delay; the test is too slow to show it"
    );

    // Past the delay the listener closes; the upload started before goes on.
    assert!(wait_for_line(&log, "no longer accepting", 10));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "new connections are refused after the delay"
    );
    let answer = upload.finish();
    assert!(
        answer.contains(" 201 "),
        "the upload in flight was stored: {answer}"
    );
    let exit = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(20),
            "did not exit within delay + grace"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
    assert_eq!(
        db.rows("SELECT filename FROM photographs"),
        [vec![Some("in-flight.jpg".to_string())]]
    );
    assert!(
        dir.path().join("data/photographs-copy.json").exists(),
        "the table copy was saved on the way out"
    );
}

/// `portfolio-server healthcheck` (the image's HEALTHCHECK): 0 while the probe answers 200,
/// 1 for another status or when nothing answers.
#[test]
fn the_healthcheck_command_exits_by_the_probe() {
    let dir = tempfile::tempdir().unwrap();
    let (child, port, _) = start_logging(dir.path(), &[]);
    let mut child = KillOnDrop(child);
    let check = |path: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_portfolio-server"))
            .args(["healthcheck", "--path", path])
            .current_dir(dir.path())
            .env_clear()
            .env("PORT", port.to_string())
            .output()
            .unwrap()
    };
    assert!(check("/livez").status.success());
    assert!(check("/readyz").status.success());
    let missing = check("/no-such-probe");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    crate::binary::terminate(&mut child.0);
    let gone = check("/livez");
    assert_eq!(gone.status.code(), Some(1), "nothing answers");
}

/// A SIGTERM while the server is still starting (here: waiting on a database that accepts
/// connections and never answers) is caught, not fatal: once up, the server drains at once and
/// exits 0, saying so. Before the handlers were installed first, the default action killed the
/// process on the spot (seen once in CI, a SIGTERM sent right after the first answer).
#[test]
fn a_sigterm_while_starting_stops_the_server_gracefully() {
    use std::io::BufRead;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let db_port = silent.local_addr().unwrap().port();
    // Accepts and holds every connection without a byte: a database that never answers.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().map_while(Result::ok) {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_portfolio-server"))
            .current_dir(dir.path())
            .env_clear()
            .env("PORT", "0")
            .env("APP_SERVER__HOST", "127.0.0.1")
            .env(
                "DATABASE_URL",
                format!("postgres://nobody@127.0.0.1:{db_port}/none"),
            )
            .env("APP_DATABASE__CONNECT_TIMEOUT_MS", "3000")
            .env("APP_DATABASE__CHECKOUT_TIMEOUT_MS", "3000")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufReader::new(child.0.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let starting = line.contains("connecting to the database");
        seen.push(line);
        if starting {
            break;
        }
    }
    assert!(!seen.iter().any(|l| l.contains("listening")), "{seen:#?}");
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    seen.extend(lines.map_while(Result::ok));
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}: {seen:#?}");
    assert!(
        seen.iter().any(|l| l.contains("shutdown requested")),
        "{seen:#?}"
    );
}
