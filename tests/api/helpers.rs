//! Test harness: a real PostgreSQL, a fresh database per test, a proxy that can cut the database
//! off, and the app behind poem's `TestClient`.
//!
//! The cluster comes from `TEST_DATABASE_URL` (any PostgreSQL the tests may create databases on)
//! or, when that is unset, is started once per test binary from the machine's PostgreSQL binaries
//! (`pg_config --bindir`), on a free loopback port, as the `postgres` user when running as root.
//! A watchdog shell stops it and deletes its data when this process exits, however it exits.

use std::{
    io::Write,
    net::TcpListener as StdListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use poem::{
    EndpointExt,
    endpoint::BoxEndpoint,
    http::{HeaderMap, StatusCode},
    test::TestClient,
};
use portfolio_server::{
    app::routes,
    config::{Secret, Settings},
    http::state::AppState,
    storage::monitored::StorageState,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

// ---------------------------------------------------------------------------------------------
// The PostgreSQL server

struct Cluster {
    /// `postgres://user[:pw]@host:port` without a database name.
    base_url: String,
    /// Database to connect to for CREATE/DROP DATABASE.
    admin_db: String,
    /// Keeps the watchdog's stdin open: when this process dies the pipe closes and the watchdog
    /// stops PostgreSQL.
    _watchdog: Option<Mutex<Child>>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

fn cluster() -> &'static Cluster {
    // Started on a plain thread: the sync postgres client must not run on a tokio worker.
    CLUSTER.get_or_init(|| {
        std::thread::spawn(start_cluster)
            .join()
            .expect("cluster start")
    })
}

fn start_cluster() -> Cluster {
    if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
        let (base, db) = split_db_url(&url);
        return Cluster {
            base_url: base,
            admin_db: db.unwrap_or_else(|| "postgres".into()),
            _watchdog: None,
        };
    }
    let bindir = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    let initdb = bindir.join("initdb");
    let postgres = bindir.join("postgres");
    assert!(
        initdb.exists() && postgres.exists(),
        "PostgreSQL server binaries not found in {} (install postgresql-15, or set \
         TEST_DATABASE_URL)",
        bindir.display()
    );
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let dir = tempfile::Builder::new()
        .prefix("portfolio-test-pg-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let data = dir.join("data");
    if is_root {
        run_ok(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir),
        );
    }
    let as_pg = |program: &PathBuf| {
        if is_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    };
    run_ok(
        as_pg(&initdb)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null()),
    );
    let port = free_port();
    // The watchdog: start postgres, wait for stdin to close (this process exiting), then stop
    // it and remove the data directory.
    let script = format!(
        "'{pg}' -D '{data}' -p {port} -k '{dir}' -c listen_addresses=127.0.0.1 -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c max_connections=500 \
         -c shared_buffers=64MB > '{dir}/log' 2>&1 & pid=$!; cat > /dev/null; \
         kill -INT $pid; wait $pid; rm -rf '{dir}'",
        pg = postgres.display(),
        data = data.display(),
        dir = dir.display(),
    );
    let mut sh = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    let child = sh
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start postgres");
    let base_url = format!("postgres://postgres@127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match postgres::Client::connect(&format!("{base_url}/postgres"), postgres::NoTls) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!(
                "PostgreSQL did not start: {e}\n{}",
                std::fs::read_to_string(dir.join("log")).unwrap_or_default()
            ),
        }
    }
    Cluster {
        base_url,
        admin_db: "postgres".into(),
        _watchdog: Some(Mutex::new(child)),
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The suite's one polling loop: checks `done` every 20 ms until it holds or `secs` seconds
/// pass, and says whether it held. For blocking threads; async tests use [`eventually`].
pub fn until(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`until`] for async tests: the runtime goes on between checks.
pub async fn eventually(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `postgres://u@h:p/db?x` -> (`postgres://u@h:p`, Some(`db`)); the query string is dropped.
fn split_db_url(url: &str) -> (String, Option<String>) {
    let url = url.split('?').next().unwrap_or(url);
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => {
            let (base, db) = url.split_at(after_scheme + i);
            let db = &db[1..];
            (base.to_string(), (!db.is_empty()).then(|| db.to_string()))
        }
        None => (url.to_string(), None),
    }
}

// ---------------------------------------------------------------------------------------------
// A database per test

/// A fresh, empty database, dropped when the value is.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

static DB_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TestDb {
    pub fn new() -> TestDb {
        let c = cluster();
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            DB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = format!("{}/{}", c.base_url, c.admin_db);
        let sql = format!("CREATE DATABASE {name}");
        on_plain_thread(move || {
            let mut client = postgres::Client::connect(&admin, postgres::NoTls)?;
            client.batch_execute(&sql)
        })
        .expect("create test database");
        TestDb {
            url: format!("{}/{name}", c.base_url),
            name,
        }
    }

    /// Runs SQL on this database from a plain thread (safe inside async tests).
    pub fn execute(&self, sql: &str) {
        let (url, sql) = (self.url.clone(), sql.to_string());
        on_plain_thread(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
            client.batch_execute(&sql)
        })
        .unwrap_or_else(|e| panic!("SQL failed: {e}"));
    }

    /// Runs a query and returns every row as text columns.
    pub fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let (url, sql) = (self.url.clone(), sql.to_string());
        on_plain_thread(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
            let msgs = client.simple_query(&sql)?;
            Ok(msgs
                .into_iter()
                .filter_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect())
        })
        .unwrap_or_else(|e| panic!("query failed: {e}"))
    }

    /// Runs SQL and returns the error it fails with, if any.
    pub fn try_execute(&self, sql: &str) -> Result<(), postgres::Error> {
        let (url, sql) = (self.url.clone(), sql.to_string());
        on_plain_thread(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
            client.batch_execute(&sql)
        })
    }

    /// Inserts `n` more photographs, named `photo-<k>.jpg` for k counting on from the last seed.
    pub fn seed(&self, n: usize) {
        self.execute(&format!(
            "INSERT INTO photographs (filename, url, category, width, height) \
             SELECT 'photo-' || k || '.jpg', 'https://cdn.example/photo-' || k || '.jpg', \
                    CASE WHEN k % 2 = 0 THEN 'nature' ELSE 'city' END, 1000 + k, 2000 + k \
             FROM (SELECT (SELECT coalesce(max(id), 0) FROM photographs) + i AS k \
                   FROM generate_series(1, {n}) AS i) AS s"
        ));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let c = cluster();
        let admin = format!("{}/{}", c.base_url, c.admin_db);
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = on_plain_thread(move || {
            let mut client = postgres::Client::connect(&admin, postgres::NoTls)?;
            client.batch_execute(&sql)
        });
    }
}

fn on_plain_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, postgres::Error> + Send + 'static,
) -> Result<T, postgres::Error> {
    std::thread::spawn(f).join().expect("thread panicked")
}

// ---------------------------------------------------------------------------------------------
// A proxy that can cut the database off

/// Forwards TCP to the database until [`ToggleProxy::cut`], which drops every open connection
/// and closes the port (new connections are refused, as by a stopped server) until
/// [`ToggleProxy::restore`] opens it again. To the server this is the database going away and
/// coming back, without stopping a cluster that other tests share.
pub struct ToggleProxy {
    pub port: u16,
    up: watch::Sender<bool>,
    kill: watch::Sender<u64>,
    /// Connections currently being forwarded.
    active: Arc<AtomicU64>,
    /// The port is open (the listener exists).
    listening: Arc<AtomicBool>,
    /// The next `COMMIT` a client sends reaches the database, but its answer never comes back:
    /// the connection is cut as the reply arrives.
    lose_commit_reply: Arc<AtomicBool>,
    /// Empty simple queries clients sent: r2d2_postgres's liveness check at check-out.
    pub liveness_checks: Arc<AtomicU64>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicU64>,
}

impl ToggleProxy {
    pub async fn start(target_url: &str) -> ToggleProxy {
        let (base, _) = split_db_url(target_url);
        let hostport = base.rsplit('@').next().unwrap().to_string();
        let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let (up, _) = watch::channel(true);
        let (kill, _) = watch::channel(0u64);
        let active = Arc::new(AtomicU64::new(0));
        let listening = Arc::new(AtomicBool::new(true));
        let lose_commit_reply = Arc::new(AtomicBool::new(false));
        let liveness_checks = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let accepted_count = connections.clone();
        let (mut up_rx, kill2, active2, listening2, lose2, checks2) = (
            up.subscribe(),
            kill.clone(),
            active.clone(),
            listening.clone(),
            lose_commit_reply.clone(),
            liveness_checks.clone(),
        );
        tokio::spawn(async move {
            let mut listener = Some(first);
            loop {
                // Closed: wait to be restored, then open the same port again.
                let current = match listener.take() {
                    Some(l) => l,
                    None => {
                        while !*up_rx.borrow_and_update() {
                            if up_rx.changed().await.is_err() {
                                return;
                            }
                        }
                        loop {
                            match TcpListener::bind(("127.0.0.1", port)).await {
                                Ok(l) => break l,
                                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                            }
                        }
                    }
                };
                listening2.store(true, Ordering::SeqCst);
                loop {
                    let accepted = tokio::select! {
                        a = current.accept() => a,
                        changed = up_rx.changed() => {
                            if changed.is_err() { return; }
                            if *up_rx.borrow_and_update() { continue; }
                            break;
                        }
                    };
                    let Ok((inbound, _)) = accepted else {
                        return;
                    };
                    // Cut while this connection was being accepted: refuse it, as the closed
                    // port will the next ones.
                    if !*up_rx.borrow() {
                        drop(inbound);
                        break;
                    }
                    let mut killed = kill2.subscribe();
                    let target = hostport.clone();
                    let (active, lose, checks) = (active2.clone(), lose2.clone(), checks2.clone());
                    active.fetch_add(1, Ordering::SeqCst);
                    accepted_count.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(&target).await {
                            tokio::select! {
                                _ = forward(inbound, outbound, lose, checks) => {}
                                _ = killed.changed() => {}
                            }
                        }
                        // Both sockets are closed by now.
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                drop(current);
                listening2.store(false, Ordering::SeqCst);
            }
        });
        ToggleProxy {
            port,
            up,
            kill,
            active,
            listening,
            lose_commit_reply,
            liveness_checks,
            connections,
        }
    }

    /// Arms the lost-COMMIT-reply fault (see the field).
    pub fn lose_next_commit_reply(&self) {
        self.lose_commit_reply.store(true, Ordering::SeqCst);
    }

    /// The URL of the database `url` reached through this proxy.
    pub fn url_for(&self, url: &str) -> String {
        let (base, db) = split_db_url(url);
        let (userinfo, _) = base.rsplit_once('@').unwrap();
        format!("{userinfo}@127.0.0.1:{}/{}", self.port, db.unwrap())
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
        self.kill.send_modify(|n| *n += 1);
    }

    /// Cuts, then blocks until every forwarded connection is closed and the port refuses new
    /// ones: after this returns, no byte reaches the database. Call from a blocking thread.
    pub fn cut_and_wait(&self) {
        self.cut();
        let deadline = Instant::now() + Duration::from_secs(5);
        while (self.active.load(Ordering::SeqCst) > 0 || self.listening.load(Ordering::SeqCst))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            self.active.load(Ordering::SeqCst),
            0,
            "proxy connections closed"
        );
        assert!(!self.listening.load(Ordering::SeqCst), "proxy port closed");
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

/// Copies both ways; when `lose` is armed and the client sends `COMMIT`, the server's reply to
/// it is dropped and the connection closed (the commit happened; the client never hears so).
async fn forward(
    inbound: TcpStream,
    outbound: TcpStream,
    lose: Arc<AtomicBool>,
    checks: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_rx, mut client_tx) = inbound.into_split();
    let (mut server_rx, mut server_tx) = outbound.into_split();
    let committed = Arc::new(AtomicBool::new(false));
    let seen = committed.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // A simple query of "": 'Q', length 5, the empty string's NUL.
            let empty = buf[..n]
                .windows(6)
                .filter(|w| w == b"Q\0\0\0\x05\0")
                .count();
            checks.fetch_add(empty as u64, Ordering::SeqCst);
            if buf[..n].windows(6).any(|w| w == b"COMMIT")
                && lose
                    .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                seen.store(true, Ordering::SeqCst);
            }
            if server_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // The reply to COMMIT (its CommandComplete tag): dropped, and the connection with
            // it. Only that reply: the end of the statement before (its ReadyForQuery can come
            // in a chunk of its own, after the client has sent COMMIT) is passed on, or the
            // connection would close before COMMIT reached the server, which then rolls back.
            if committed.load(Ordering::SeqCst) && buf[..n].windows(7).any(|w| w == b"COMMIT\0") {
                return;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The app

/// Settings for tests: short timeouts so outages are noticed and recovered from quickly.
pub fn settings(db_url: Option<&str>) -> Settings {
    let mut s = Settings::default();
    s.server.host = "127.0.0.1".into();
    s.server.port = 0;
    s.database.url = db_url.map(Secret::new);
    s.database.checkout_timeout_ms = 500;
    s.database.connect_timeout_ms = 500;
    s.database.reprobe_interval_ms = 100;
    // In-process apps do not listen for changes unless a test asks (tests/api/replicas.rs): many
    // tests change rows with SQL and check what the cache answers meanwhile.
    s.database.listen = false;
    s.server.cors_origins = vec!["https://portfolio.example".into()];
    // Never the working directory's data/media: the start-up storage check writes a probe file.
    s.storage.local_dir = scratch().join("media");
    // Each app clears its spool folder at start-up: never share one between tests.
    s.upload.spool_dir = scratch_dir("spool");
    // No table copy unless a test asks for one: tests seed rows with SQL, which the copy (taken at
    // start-up and after uploads) would not see.
    s.cache.copy_max_rows = 0;
    s.cache.copy_path = scratch().join(format!(
        "copy-{}.json",
        DB_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    // Each app its own journal, unless a test shares one on purpose (a restart).
    s.upload.journal_dir = scratch_dir("journal");
    // Variants before the answer, so that tests of the write protocol find every object of an
    // upload stored when it answers. Tests of the default (variants after the answer) turn it
    // on: pipeline.rs, s3.rs, binary.rs.
    s.image.variants_after_answer = false;
    s
}

/// This test process's scratch folder (`portfolio-test-<pid>` in the temp folder), for the
/// spool, journal and table-copy paths that settings need. Removed when the process exits;
/// folders of earlier runs whose process is gone (killed before it could remove its own) are
/// removed when the first is made. Before this, every test left two folders behind (6,272 were
/// found in /tmp here).
pub fn scratch() -> &'static std::path::Path {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let tmp = std::env::temp_dir();
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("portfolio-test-")
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = tmp.join(format!("portfolio-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        extern "C" fn remove_scratch() {
            if let Some(dir) = SCRATCH.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // SAFETY: registers a plain function to run at exit; it touches only the path above.
        unsafe { libc::atexit(remove_scratch) };
        dir
    })
}

/// A new, empty folder inside [`scratch`].
pub fn scratch_dir(prefix: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir_in(scratch())
        .expect("tempdir")
        .keep()
}

pub struct TestApp {
    pub state: Arc<AppState>,
    pub client: TestClient<BoxEndpoint<'static, poem::Response>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `id`s of a listing body, in order.
    pub fn ids(&self) -> Vec<i64> {
        self.json()
            .as_array()
            .expect("listing body is an array")
            .iter()
            .map(|p| p["id"].as_i64().expect("id is an integer"))
            .collect()
    }
}

/// `TEST_LOG=debug cargo test ...` shows the server's log lines in a test's output.
fn init_test_log() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

impl TestApp {
    pub async fn spawn(settings: Settings) -> TestApp {
        init_test_log();
        let state = AppState::new(settings).await.expect("app state");
        Self::checked(state).await
    }

    /// The app once its start-up storage check (which runs in the background) has ended, so
    /// a test starts from a known storage state.
    async fn checked(state: Arc<AppState>) -> TestApp {
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(
            state.store.state().0,
            StorageState::Checking | StorageState::Unchecked
        ) {
            assert!(Instant::now() < deadline, "the storage check never ended");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ep = routes(state.clone()).boxed();
        TestApp {
            state,
            client: TestClient::new(ep),
        }
    }

    /// The app on a migrated database of its own (through no proxy).
    pub async fn with_db(db: &TestDb) -> TestApp {
        Self::spawn(settings(Some(&db.url))).await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.request(uri, &[]).await
    }

    pub async fn request(&self, uri: &str, headers: &[(&str, &str)]) -> Reply {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let mut req = self.client.get(path);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            req = req.query(k, &v);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::reply(req.send().await.0).await
    }

    /// Polls `uri` until `done` holds for its reply, for at most `secs` seconds.
    pub async fn wait_for(&self, uri: &str, secs: u64, done: impl Fn(&Reply) -> bool) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.get(uri).await;
            if done(&r) || Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Writes `text` to a file and returns its path (for config tests).
pub fn write_file(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap();
    p
}

// ---------------------------------------------------------------------------------------------
// Uploads

pub const API_KEY: &str = "test-admin-key";

/// A JPEG of `w`x`h`, optionally with an EXIF orientation tag.
pub fn jpeg(w: u32, h: u32, orientation: Option<u16>) -> Vec<u8> {
    use image::{ImageEncoder, codecs::jpeg::JpegEncoder};
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 90]));
    let mut out = Vec::new();
    let mut enc = JpegEncoder::new_with_quality(&mut out, 85);
    if let Some(o) = orientation {
        let mut t = b"II*\0".to_vec();
        t.extend_from_slice(&8u32.to_le_bytes());
        t.extend_from_slice(&1u16.to_le_bytes());
        t.extend_from_slice(&0x0112u16.to_le_bytes());
        t.extend_from_slice(&3u16.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&o.to_le_bytes());
        t.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        enc.set_exif_metadata(t).unwrap();
    }
    enc.write_image(&img, w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

pub fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::new(w, h))
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A multipart/form-data body built by hand, so tests control Content-Length and framing.
#[derive(Default, Clone)]
pub struct Form {
    parts: Vec<(String, Option<String>, Vec<u8>)>,
}

pub const BOUNDARY: &str = "----portfolio-test-boundary-7d1a";

impl Form {
    pub fn new() -> Form {
        Form::default()
    }
    pub fn file(mut self, field: &str, filename: &str, bytes: Vec<u8>) -> Form {
        self.parts
            .push((field.into(), Some(filename.into()), bytes));
        self
    }
    pub fn text(mut self, field: &str, value: &str) -> Form {
        self.parts
            .push((field.into(), None, value.as_bytes().to_vec()));
        self
    }
    pub fn content_type() -> String {
        format!("multipart/form-data; boundary={BOUNDARY}")
    }
    pub fn body(&self) -> Vec<u8> {
        let mut b = Vec::new();
        for (field, filename, bytes) in &self.parts {
            b.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
            match filename {
                Some(f) => b.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{field}\"; filename=\"{f}\"\r\n\
                         Content-Type: image/jpeg\r\n\r\n"
                    )
                    .as_bytes(),
                ),
                None => b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n").as_bytes(),
                ),
            }
            b.extend_from_slice(bytes);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        b
    }
}

/// Settings for upload tests: an admin key and a media folder of the test's own.
pub fn upload_settings(db_url: Option<&str>, media: &std::path::Path) -> Settings {
    let mut s = settings(db_url);
    s.auth.admin_api_key = Some(Secret::new(API_KEY));
    s.storage.local_dir = media.to_path_buf();
    s.storage.public_base_url = "http://media.test/media".into();
    s
}

impl TestApp {
    pub async fn spawn_with_store(
        settings: Settings,
        store: Arc<dyn portfolio_server::storage::ObjectStore>,
    ) -> TestApp {
        init_test_log();
        let state = AppState::with_store(settings, store)
            .await
            .expect("app state");
        Self::checked(state).await
    }

    /// POSTs `form` with a Content-Length and the given API key (None: no header).
    pub async fn post_form(&self, path: &str, form: &Form, key: Option<&str>) -> Reply {
        let body = form.body();
        let mut req = self
            .client
            .post(path)
            .header("content-type", Form::content_type())
            .header("content-length", body.len().to_string());
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        Self::reply(req.body(body).send().await.0).await
    }

    /// POSTs `form` with a Content-Length and exactly the given extra headers.
    pub async fn post_form_with(&self, path: &str, form: &Form, headers: &[(&str, &str)]) -> Reply {
        let body = form.body();
        let mut req = self
            .client
            .post(path)
            .header("content-type", Form::content_type())
            .header("content-length", body.len().to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::reply(req.body(body).send().await.0).await
    }

    /// The [`Reply`] of a raw response.
    pub async fn reply_of(resp: poem::Response) -> Reply {
        Self::reply(resp).await
    }

    /// `method` on `path` with the admin key (or `key`) and an optional JSON body.
    pub async fn admin(
        &self,
        method: poem::http::Method,
        path: &str,
        key: Option<&str>,
        json: Option<serde_json::Value>,
    ) -> Reply {
        let mut req = self.client.request(method, path);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        if let Some(j) = json {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&j).unwrap());
        }
        Self::reply(req.send().await.0).await
    }

    /// POSTs `form` as a stream with no Content-Length (chunked).
    pub async fn post_form_chunked(&self, path: &str, form: &Form) -> Reply {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = form
            .body()
            .chunks(16 * 1024)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let body = poem::Body::from_bytes_stream(futures_util::stream::iter(chunks));
        let req = self
            .client
            .post(path)
            .header("content-type", Form::content_type())
            .header("x-api-key", API_KEY)
            .body(body);
        Self::reply(req.send().await.0).await
    }

    async fn reply(resp: poem::Response) -> Reply {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().into_vec().await.unwrap();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn upload(&self, filename: &str, bytes: Vec<u8>) -> Reply {
        self.post_form(
            "/api/upload",
            &Form::new().file("file", filename, bytes),
            Some(API_KEY),
        )
        .await
    }
}

/// The objects stored for photos `names` under the default image settings: each photo and its
/// `thumb--` and `medium--` variants, sorted as [`files_in`] sorts (with `prefix` before each, as
/// in "images/" for a bucket).
pub fn objects_of(prefix: &str, names: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = names
        .iter()
        .flat_map(|n| [n.to_string(), format!("thumb--{n}"), format!("medium--{n}")])
        .map(|k| format!("{prefix}{k}"))
        .collect();
    all.sort();
    all
}

/// File names in a folder, sorted, ignoring none (temporary files would show up too).
pub fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// An HTTP client for tests that talk to a real listener: any status is an answer (not an
/// error), and no request waits longer than 10 s.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// A real local store whose writes go through `put` (handed the store and the write), for tests
/// that inject a failure or a wait into writes; every other call goes straight to the store.
pub struct PutHook<F> {
    inner: portfolio_server::storage::local::LocalStore,
    put: F,
}

type PutResult = Result<portfolio_server::storage::Put, portfolio_server::storage::StorageError>;

impl<F> PutHook<F>
where
    F: Fn(&portfolio_server::storage::local::LocalStore, &str, &[u8]) -> PutResult
        + Send
        + Sync
        + 'static,
{
    pub fn new(dir: &std::path::Path, put: F) -> PutHook<F> {
        PutHook {
            inner: portfolio_server::storage::local::LocalStore::new(
                dir,
                "http://media.test/media",
            ),
            put,
        }
    }
}

impl<F> portfolio_server::storage::ObjectStore for PutHook<F>
where
    F: Fn(&portfolio_server::storage::local::LocalStore, &str, &[u8]) -> PutResult
        + Send
        + Sync
        + 'static,
{
    fn put_new(&self, key: &str, bytes: &[u8]) -> PutResult {
        (self.put)(&self.inner, key, bytes)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, portfolio_server::storage::StorageError> {
        self.inner.get(key)
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
