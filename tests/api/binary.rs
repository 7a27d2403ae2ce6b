//! The real binary: zero-config start, configuration errors, graceful shutdown.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

/// Starts the binary in `dir` with exactly `env`, waits for its "listening" line and returns
/// the child, its port and the lines it logged so far.
pub(crate) fn start(
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, u16, Vec<String>) {
    let (child, port, log) = start_logging(dir, env);
    let lines = log.lock().unwrap().clone();
    (child, port, lines)
}

/// As [`start`], with every line the server logs, then and later.
pub(crate) fn start_logging(
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, u16, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portfolio-server"))
        .current_dir(dir)
        .env_clear()
        .env("PORT", "0")
        .env("APP_SERVER__HOST", "127.0.0.1")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let port = loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "exited early: {lines:#?}"
        );
        // stderr is a pipe here: a colour code would end up in every log file.
        assert!(
            !line.contains('\u{1b}'),
            "escape code in a piped log line: {line:?}"
        );
        let plain = strip_ansi(&line);
        lines.push(plain.clone());
        if let Some(i) = plain.find("listening address=") {
            let addr = plain[i + "listening address=".len()..].trim();
            break addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    let log = Arc::new(Mutex::new(lines));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            sink.lock().unwrap().push(strip_ansi(&line));
        }
    });
    (child, port, log)
}

/// Kills the server when a test ends, panicking or not: a server left running would hold the
/// test's output pipe open.
pub(crate) struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until a line the server logged contains `needle` (the start-up storage check runs in
/// the background, so its lines may come after "listening").
pub(crate) fn wait_for_line(log: &Mutex<Vec<String>>, needle: &str, secs: u64) -> bool {
    crate::helpers::until(secs, || {
        log.lock().unwrap().iter().any(|l| l.contains(needle))
    })
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn get(port: u16, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut r = agent
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

pub(crate) fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("the server did not stop within 5 s of SIGTERM");
}

#[test]
fn zero_config_start_serves_embedded_photographs_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port, lines) = start(dir.path(), &[]);
    assert!(
        lines.iter().any(|l| l.contains("no database configured")),
        "one clear line says there is no database: {lines:#?}"
    );
    let (status, body) = get(port, "/api/images");
    assert_eq!(status, 200);
    let items: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(items.as_array().unwrap().len(), 10);
    let (status, _) = get(port, "/api/images?limit=100");
    assert_eq!(status, 200);

    let exit = terminate(&mut child);
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
}

#[test]
fn a_misspelt_setting_is_warned_about_at_start_up_and_the_server_still_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Config.toml"), "[storage]\nprivat = true\n").unwrap();
    let (mut child, port, lines) = start(dir.path(), &[("APP_CACHE__TTL_SEC", "5")]);
    let warned = |needle: &str| {
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains(needle))
    };
    assert!(
        warned("`storage.privat` is not a setting and is ignored; did you mean `storage.private`?"),
        "{lines:#?}"
    );
    assert!(
        warned(
            "APP_CACHE__TTL_SEC (in the environment) is not a setting and is ignored; did you mean APP_CACHE__TTL_SECS?"
        ),
        "{lines:#?}"
    );
    assert_eq!(get(port, "/api/images").0, 200);
    assert!(terminate(&mut child).success());
}

#[test]
fn a_bad_setting_stops_start_up_with_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::write_file(
        dir.path(),
        "Config.toml",
        "[cache]\nttl_secs = \"a while\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_portfolio-server"))
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !err.contains('\u{1b}'),
        "no colour codes in a pipe: {err:?}"
    );
    assert!(
        err.contains("ttl_secs") && err.contains("Config.toml"),
        "{err}"
    );
}

#[test]
fn secrets_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::write_file(
        dir.path(),
        ".env",
        "DATABASE_URL=postgres://user:hunter2secret@127.0.0.1:1/db\nADMIN_API_KEY=topsecretkey\n",
    );
    let (mut child, port, mut lines) = start(dir.path(), &[("RUST_LOG", "debug")]);
    let _ = get(port, "/api/health");
    let _ = get(port, "/api/images");
    terminate(&mut child);
    lines.push(String::new());
    let all = lines.join("\n");
    assert!(
        all.contains("127.0.0.1:1/db"),
        "the target is logged: {all}"
    );
    assert!(!all.contains("hunter2secret"), "{all}");
    assert!(!all.contains("topsecretkey"), "{all}");
}

/// POSTs one JPEG to `/api/upload` of the server on `port` with `key` (if any).
pub(crate) fn upload(port: u16, key: Option<&str>, name: &str) -> (u16, serde_json::Value) {
    upload_with(port, key, name, &[])
}

fn upload_with(
    port: u16,
    key: Option<&str>,
    name: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let form = crate::helpers::Form::new().file("file", name, crate::helpers::jpeg(8, 8, None));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req = agent
        .post(&format!("http://127.0.0.1:{port}/api/upload"))
        .header("content-type", &crate::helpers::Form::content_type());
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = req.send(&form.body()[..]).unwrap();
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn the_originals_dotenv_sends_uploads_to_supabase_and_says_so_at_start_up() {
    use crate::fake_supabase::{BUCKET, FakeStorage, SERVICE_KEY, start_on_own_runtime};
    let db = crate::helpers::TestDb::new();
    let fake = std::sync::Arc::new(FakeStorage::default());
    let base = start_on_own_runtime(fake.clone());
    let dir = tempfile::tempdir().unwrap();
    // Exactly the original's variables, as its README told users to write them.
    crate::helpers::write_file(
        dir.path(),
        ".env",
        &format!(
            "DATABASE_URL={}\nADMIN_API_KEY=original-admin-key\nSUPABASE_URL={base}\n\
             SUPABASE_KEY={SERVICE_KEY}\nSUPABASE_BUCKET={BUCKET}\n",
            db.url
        ),
    );
    let (mut child, port, log) = start_logging(dir.path(), &[]);
    let (status, record) = upload(port, Some("original-admin-key"), "Sunset.jpg");
    let checked = wait_for_line(&log, "storage check", 30);
    terminate(&mut child);
    assert!(checked, "{:#?}", log.lock().unwrap());
    let lines = log.lock().unwrap().clone();
    assert_eq!(status, 201, "{record}");
    assert_eq!(
        record["url"],
        format!("{base}/storage/v1/object/public/{BUCKET}/sunset.jpg")
    );
    assert!(
        fake.objects
            .lock()
            .unwrap()
            .contains_key("images/sunset.jpg")
    );
    assert!(
        files_in_tree(dir.path())
            .iter()
            .all(|f| !f.ends_with(".jpg")),
        "nothing local"
    );
    assert_eq!(
        db.rows("SELECT url FROM photographs")[0][0].as_deref(),
        record["url"].as_str()
    );

    // One line each: address, database, storage (and its check), uploads, CORS, cache.
    let all = lines.join("\n");
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(has("listening address=127.0.0.1:"), "{all}");
    let target = db.url.rsplit('@').next().unwrap();
    assert!(has(&format!("database={target}")), "{all}");
    assert!(has("backend=supabase"), "{all}");
    assert!(
        has(&format!(
            "url_prefix={base}/storage/v1/object/public/{BUCKET}/"
        )),
        "{all}"
    );
    assert!(has("storage check passed"), "{all}");
    assert_eq!(
        fake.bucket_checks.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(has("uploads enabled"), "{all}");
    assert!(
        has("CORS") && has("public reads answer every origin"),
        "{all}"
    );
    assert!(
        has("page cache") && has("page_cache_bytes=33554432"),
        "{all}"
    );
    assert!(
        !all.contains(SERVICE_KEY) && !all.contains("original-admin-key"),
        "{all}"
    );
}

#[test]
fn a_refused_storage_key_is_said_plainly_at_start_up_and_in_health() {
    use crate::fake_supabase::{FakeStorage, start_on_own_runtime};
    let fake = std::sync::Arc::new(FakeStorage::default());
    let base = start_on_own_runtime(fake);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port, log) = start_logging(
        dir.path(),
        &[
            ("SUPABASE_URL", &base),
            ("SUPABASE_KEY", "not-the-service-key"),
        ],
    );
    let said = wait_for_line(&log, "storage REFUSED", 30);
    let (_, health) = get(port, "/api/health");
    terminate(&mut child);
    assert!(said, "{:#?}", log.lock().unwrap());
    let lines = log.lock().unwrap().clone();
    let all = lines.join("\n");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("storage REFUSED") && l.contains("signature verification failed")),
        "{all}"
    );
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["storage"], "refused", "{health}");
    assert!(
        health["storage_reason"]
            .as_str()
            .unwrap()
            .contains("signature")
    );
    assert!(!all.contains("not-the-service-key"), "{all}");
}

/// Admin keys that a type-guessing reader would turn into something else, each with the
/// values it would wrongly have become.
const KEYS: &[(&str, &[&str])] = &[
    ("007", &["7", "07"]),
    ("1e5", &["100000", "100000.0", "1E5"]),
    ("true", &["True", "1", "yes"]),
    ("0x1F", &["31", "0x1f"]),
    ("[1,2]", &["[1, 2]", "1,2", "[\"1\",\"2\"]"]),
    (
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        &["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a0"],
    ),
    ("k=v#not-a-comment", &["k", "k=v", "\"k=v#not-a-comment\""]),
];

/// With the key from `.env` (quoted where python-dotenv needs quotes) or from the environment,
/// each key opens uploads and no look-alike does.
#[test]
fn admin_keys_are_taken_verbatim_from_dotenv_and_from_the_environment() {
    for &(key, lookalikes) in KEYS {
        for from_dotenv in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let media = dir.path().join("media");
            let media = media.to_str().unwrap();
            let mut env = vec![("APP_STORAGE__LOCAL_DIR", media)];
            if from_dotenv {
                let line = if key.contains('#') {
                    format!("ADMIN_API_KEY=\"{key}\"\n")
                } else {
                    format!("ADMIN_API_KEY={key}\n")
                };
                crate::helpers::write_file(dir.path(), ".env", &line);
            } else {
                env.push(("ADMIN_API_KEY", key));
            }
            let (mut child, port, _) = start(dir.path(), &env);
            let source = if from_dotenv { ".env" } else { "environment" };
            // No database: an authorised upload is 503 (nothing can be recorded), a refused one 401.
            let (status, body) = upload(port, Some(key), "k.jpg");
            assert_ne!(
                status, 401,
                "{key:?} from {source} must authorise itself: {body}"
            );
            assert_eq!(status, 503, "{body}");
            for &other in lookalikes {
                let (status, _) = upload(port, Some(other), "k.jpg");
                assert_eq!(
                    status, 401,
                    "{other:?} opened uploads keyed {key:?} ({source})"
                );
            }
            assert_eq!(upload(port, None, "k.jpg").0, 401);
            terminate(&mut child);
        }
    }
}

fn files_in_tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_in_tree(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portfolio-server"))
        .current_dir(dir.path())
        .env_clear()
        .env("PORT", "0")
        .env("APP_SERVER__HOST", "127.0.0.1")
        .env("APP_LOG__FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "exited early: {seen:#?}"
        );
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line:?}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{v}");
        let listening = v["message"] == "listening";
        seen.push(v);
        if listening {
            break;
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        seen.iter()
            .any(|v| v["message"] == "storage" && v["backend"] == "local")
    );
}

/// Every line a request causes carries its span: method, route and request id, also the lines
/// written on blocking threads (here the PostgreSQL driver's, logged while the upload's SQL runs).
#[test]
fn log_lines_carry_the_requests_span_also_from_blocking_threads() {
    let db = crate::helpers::TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    let (mut child, port, log) = start_logging(
        dir.path(),
        &[
            ("DATABASE_URL", &db.url),
            ("ADMIN_API_KEY", "k"),
            ("APP_STORAGE__LOCAL_DIR", media.to_str().unwrap()),
            ("RUST_LOG", "info,tokio_postgres=debug"),
        ],
    );
    let (status, body) = upload_with(
        port,
        Some("k"),
        "traced.jpg",
        &[("x-request-id", "trace-me-7")],
    );
    terminate(&mut child);
    assert_eq!(status, 201, "{body}");
    let lines = log.lock().unwrap().clone();
    let ours: Vec<&String> = lines.iter().filter(|l| l.contains("trace-me-7")).collect();
    let all = lines.join("\n");
    assert!(
        ours.iter()
            .any(|l| l.contains("photo uploaded") && l.contains("route=/api/upload")),
        "{all}"
    );
    assert!(
        ours.iter().any(
            // The INSERT's parameters, logged as it runs.
            |l| l.contains("tokio_postgres") && l.contains(r#"["traced.jpg", "#)
        ),
        "the driver's lines, on the blocking thread, carry the id: {all}"
    );
    // And no driver line of the upload's statements without it.
    for l in lines.iter().filter(|l| l.contains(r#"["traced.jpg", "#)) {
        assert!(l.contains("trace-me-7") && l.contains("method=POST"), "{l}");
    }
}

/// SIGKILL while a storage server holds the answer to a photo's write, then a restart: the
/// write lands after the restart's first check, and a later check of the journal entry (at 1,
/// 2 and 10 store time-outs from the write) removes it. No orphan, no row, and the name can
/// be uploaded again (an orphan would answer 409 for it forever).
#[test]
fn a_kill_with_a_write_in_flight_leaves_no_orphan_after_a_restart() {
    use crate::fake_supabase::{FakeStorage, SERVICE_KEY, start_on_own_runtime};
    use std::sync::atomic::Ordering::SeqCst;
    let fake = Arc::new(FakeStorage::default());
    let base = start_on_own_runtime(fake.clone());
    let db = crate::helpers::TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("ADMIN_API_KEY", "original-admin-key"),
        ("SUPABASE_URL", base.as_str()),
        ("SUPABASE_KEY", SERVICE_KEY),
        ("APP_STORAGE__TIMEOUT_SECS", "1"),
    ];
    let (first, port, log) = start_logging(dir.path(), &env);
    let mut first = KillOnDrop(first);
    assert!(
        wait_for_line(&log, "storage check passed", 30),
        "{:#?}",
        log.lock().unwrap()
    );
    // The storage server holds the photo's write 2.5 s, then stores it whatever the client did.
    *fake.delay_only.lock().unwrap() = Some("late.jpg".into());
    fake.delay_ms.store(2_500, SeqCst);
    std::thread::spawn(move || {
        let _ = std::panic::catch_unwind(|| upload(port, Some("original-admin-key"), "late.jpg"));
    });
    let has = |key: &str| fake.objects.lock().unwrap().contains_key(key);
    let until = |secs: u64, done: &dyn Fn() -> bool| crate::helpers::until(secs, done);
    let received = || {
        fake.received
            .lock()
            .unwrap()
            .contains(&"late.jpg".to_string())
    };
    assert!(until(20, &received), "the photo's write never arrived");
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(!has("images/late.jpg"), "the write is still held");

    let (second, port, log) = start_logging(dir.path(), &env);
    let mut second = KillOnDrop(second);
    assert!(
        until(20, &|| has("images/late.jpg")),
        "the held write landed after the kill"
    );
    assert!(
        until(30, &|| !has("images/late.jpg")),
        "a later check removes the late write: {:#?}",
        log.lock().unwrap()
    );
    assert!(db.rows("SELECT filename FROM photographs").is_empty());
    fake.delay_ms.store(0, SeqCst);
    let (status, record) = upload(port, Some("original-admin-key"), "late.jpg");
    assert_eq!(status, 201, "{record}");
    // The variants follow the answer (the default).
    let stored = || {
        let mut keys: Vec<String> = fake.objects.lock().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let all = crate::helpers::objects_of("images/", &["late.jpg"]);
    assert!(until(20, &|| stored() == all), "{:?}", stored());
    terminate(&mut second.0);
}

/// Started while the database is down, the server says what it serves: its saved copy of the
/// table when it has one, else the photographs built into the binary.
#[test]
fn a_start_during_an_outage_says_whether_it_serves_the_saved_copy() {
    let db = crate::helpers::TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let (first, _, log) = start_logging(dir.path(), &[("DATABASE_URL", db.url.as_str())]);
    let mut first = KillOnDrop(first);
    assert!(wait_for_line(&log, "database connected", 30));
    db.seed(3);
    let copy = dir.path().join("data/photographs-copy.json");
    assert!(
        crate::helpers::until(20, || std::fs::read_to_string(&copy)
            .is_ok_and(|c| c.contains("\"id\":3"))),
        "no copy written"
    );
    terminate(&mut first.0);

    let down = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        crate::helpers::free_port()
    );
    let (second, _, lines) = start(dir.path(), &[("DATABASE_URL", down.as_str())]);
    let _second = KillOnDrop(second);
    let said = |lines: &[String], what: &str| {
        lines
            .iter()
            .any(|l| l.contains("database not reachable at start-up") && l.contains(what))
    };
    assert!(
        said(&lines, "serving the saved copy of the table (3 rows"),
        "{lines:#?}"
    );
    let empty = tempfile::tempdir().unwrap();
    let (third, _, lines) = start(empty.path(), &[("DATABASE_URL", down.as_str())]);
    let _third = KillOnDrop(third);
    assert!(
        said(&lines, "serving the 13 photographs built into the binary"),
        "{lines:#?}"
    );
}

/// Anyone can cause client errors at will: a flood of 404s with 5,000-character URIs writes a
/// bounded number of short lines, says how many it left out, and counts them in `/metrics`.
#[test]
fn a_flood_of_client_errors_does_not_flood_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (child, port, log) = start_logging(dir.path(), &[]);
    let _child = KillOnDrop(child);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let long = "x".repeat(5_000);
    let started = std::time::Instant::now();
    let sent = 1_500;
    for i in 0..sent {
        let r = agent
            .get(&format!("http://127.0.0.1:{port}/nothing-{i}?q={long}"))
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);
    }
    let seconds = started.elapsed().as_secs() + 1;
    // The summary of the last second comes with the next client error.
    std::thread::sleep(Duration::from_millis(1100));
    let _ = agent.get(&format!("http://127.0.0.1:{port}/last")).call();
    let (_, metrics) = get(port, "/metrics");
    let lines = log.lock().unwrap().clone();
    let logged = lines.iter().filter(|l| l.contains("status=404")).count() as u64;
    assert!(
        logged <= 20 * (seconds + 1),
        "{logged} lines for {sent} requests in {seconds} s"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("more client-error request lines suppressed")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().all(|l| l.len() < 1_000),
        "a line carried the whole URI"
    );
    let suppressed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("log_lines_suppressed_total "))
        .expect("the counter")
        .parse()
        .unwrap();
    assert!(
        suppressed as u64 + logged >= sent,
        "{suppressed} + {logged}"
    );
}
