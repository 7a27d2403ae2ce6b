//! Several replicas on one database: each process listens for changes to `photographs`
//! (src/notify.rs), so an upload through one, or a row changed directly in SQL, shows on every
//! other within a second, even though their page caches keep pages for an hour here.

use std::{
    process::Child,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    binary::{start_logging, terminate},
    helpers::{Form, TestDb, agent, jpeg},
};

/// Pages are kept for an hour: only a notification can make a replica see a change in time.
const TTL: &str = "3600";
const KEY: &str = "replica-key";

pub(crate) struct Replica {
    pub(crate) port: u16,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Replica {
    pub(crate) fn start(db_url: &str, media: &std::path::Path, extra: &[(&str, &str)]) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let mut env = vec![
            ("DATABASE_URL", db_url),
            ("ADMIN_API_KEY", KEY),
            ("APP_CACHE__TTL_SECS", TTL),
            ("APP_STORAGE__LOCAL_DIR", media.to_str().unwrap()),
        ];
        env.extend_from_slice(extra);
        let (child, port, log) = start_logging(dir.path(), &env);
        Replica {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// Waits until the log has said `text` `times` times in all.
    pub(crate) fn wait_for_log(&self, text: &str, times: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let n = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(text))
                .count();
            if n >= times {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the log did not say {text:?} {times} times within {secs} s: {:#?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn logged(&self, text: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(text)).count()
    }

    pub(crate) fn names(&self) -> Vec<String> {
        names_at(self.port)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            terminate(&mut self.child);
        }
    }
}

/// The filenames and categories of the first page, as `name:category`.
pub(crate) fn names_at(port: u16) -> Vec<String> {
    let mut r = agent()
        .get(&format!("http://127.0.0.1:{port}/api/images?limit=100"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.body_mut().read_json().unwrap();
    body.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}:{}",
                p["filename"].as_str().unwrap(),
                p["category"].as_str().unwrap()
            )
        })
        .collect()
}

/// Polls `names` until `done` holds; fails if that takes longer than `within` after `since`.
pub(crate) fn shows_within(
    what: &str,
    since: Instant,
    within: Duration,
    names: impl Fn() -> Vec<String>,
    done: impl Fn(&[String]) -> bool,
) {
    loop {
        let now = names();
        if done(&now) {
            return;
        }
        assert!(
            since.elapsed() < within,
            "{what}: not seen within {within:?}; the page still says {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn upload(port: u16, name: &str) {
    let form = Form::new()
        .file("file", name, jpeg(64, 48, None))
        .text("category", "nature");
    let mut r = agent()
        .post(&format!("http://127.0.0.1:{port}/api/upload"))
        .header("X-API-Key", KEY)
        .header("Content-Type", &Form::content_type())
        .send(&form.body()[..])
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(status, 201, "{}", r.body_mut().read_to_string().unwrap());
}

/// The backends of this database's listeners.
fn listeners(db: &TestDb) -> usize {
    db.rows(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
         AND application_name = 'portfolio-server listener'",
        db.name
    ))[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

/// How soon a change must show on a replica. The pages are cached for an hour (`TTL`), so a
/// change seen within this came from a notification; the bound leaves room for a loaded 2-core
/// machine (a notification usually takes milliseconds).
const NOTIFIED: Duration = Duration::from_secs(5);
const LISTENING: &str = "listening for changes to photographs";

#[test]
fn replicas_see_each_others_uploads_and_direct_sql_without_waiting_for_the_ttl() {
    let db = TestDb::new();
    let media = tempfile::tempdir().unwrap();
    let a = Replica::start(&db.url, media.path(), &[]);
    let b = Replica::start(&db.url, media.path(), &[]);
    a.wait_for_log(LISTENING, 1, 20);
    b.wait_for_log(LISTENING, 1, 20);
    // Both have the empty first page cached.
    assert!(a.names().is_empty() && b.names().is_empty());

    upload(a.port, "through-a.jpg");
    let t = Instant::now();
    shows_within(
        "an upload through A, on B",
        t,
        NOTIFIED,
        || b.names(),
        |n| n == ["through-a.jpg:nature"],
    );

    db.execute("UPDATE photographs SET category = 'city' WHERE filename = 'through-a.jpg'");
    let t = Instant::now();
    for r in [&a, &b] {
        shows_within(
            "an SQL UPDATE",
            t,
            NOTIFIED,
            || r.names(),
            |n| n == ["through-a.jpg:city"],
        );
    }

    db.execute("DELETE FROM photographs WHERE filename = 'through-a.jpg'");
    let t = Instant::now();
    for r in [&a, &b] {
        shows_within("an SQL DELETE", t, NOTIFIED, || r.names(), |n| n.is_empty());
    }
}

#[test]
fn a_killed_listener_reconnects_by_itself_and_nothing_stays_stale() {
    let db = TestDb::new();
    let media = tempfile::tempdir().unwrap();
    let a = Replica::start(&db.url, media.path(), &[]);
    a.wait_for_log(LISTENING, 1, 20);
    db.seed(1);
    shows_within(
        "a seeded row",
        Instant::now(),
        NOTIFIED,
        || a.names(),
        |n| n == ["photo-1.jpg:city"],
    );

    // Kill the listening session, and change a row before it can be back: that notification
    // is lost with the session, so only the invalidation on reconnecting can bring it.
    assert_eq!(listeners(&db), 1);
    db.execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' \
         AND application_name = 'portfolio-server listener'; \
         UPDATE photographs SET category = 'missed'",
        db.name
    ));
    let t = Instant::now();
    a.wait_for_log("lost the connection that listens for changes", 1, 10);
    a.wait_for_log(LISTENING, 2, 10);
    shows_within(
        "a change made while the listener was away",
        t,
        Duration::from_secs(5),
        || a.names(),
        |n| n == ["photo-1.jpg:missed"],
    );
    assert_eq!(listeners(&db), 1, "one listening session again, not two");

    // And it listens again: a change after the reconnection shows within a second.
    db.execute("UPDATE photographs SET category = 'after'");
    let t = Instant::now();
    shows_within(
        "a change after reconnecting",
        t,
        NOTIFIED,
        || a.names(),
        |n| n == ["photo-1.jpg:after"],
    );
    assert_eq!(a.logged("notifications do not arrive"), 0);
}

/// The copy of the table kept for outages follows the same notifications: a row added in SQL is
/// in it within a couple of seconds, so an outage right after still shows it.
#[tokio::test(flavor = "multi_thread")]
async fn the_outage_copy_follows_changes_made_elsewhere() {
    use crate::helpers::{TestApp, ToggleProxy, settings};
    let db = TestDb::new();
    db.execute("SELECT 1"); // the database exists before the proxy points at it
    let proxy = ToggleProxy::start(&db.url).await;
    let mut s = settings(Some(&proxy.url_for(&db.url)));
    s.database.listen = true;
    s.database.listen_url = Some(portfolio_server::config::Secret::new(&db.url));
    s.cache.copy_max_rows = 1000;
    s.cache.copy_refresh_secs = 3600; // only a notification can bring the change in time
    s.cache.ttl_secs = 3600;
    let app = TestApp::spawn(s).await;
    let copy_rows = |app: &TestApp| app.state.listing.copy_rows();
    let deadline = Instant::now() + Duration::from_secs(10);
    while copy_rows(&app) != Some(0) {
        assert!(Instant::now() < deadline, "no copy of the empty table");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.seed(1);
    let t = Instant::now();
    while copy_rows(&app) != Some(1) {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the copy missed the new row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut_and_wait();
    let r = app.get("/api/images").await;
    assert_eq!(r.header("x-data-source"), Some("stale"));
    assert_eq!(r.ids(), [1]);
}

/// One transaction that inserts, updates and deletes sends three notifications at its commit,
/// which arrive together: all are counted, and the page is dropped once for them.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_notifications_is_counted_and_drops_the_pages() {
    use crate::helpers::{TestApp, settings};
    let db = TestDb::new();
    let mut s = settings(Some(&db.url));
    s.database.listen = true;
    s.cache.ttl_secs = 3600;
    let app = TestApp::spawn(s).await;
    let m = app.state.metrics.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.listening.get() != 1 {
        assert!(Instant::now() < deadline, "not listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(app.get("/api/images").await.ids().is_empty()); // cached: only a notification
    db.seed(2); // can bring these in
    let t = Instant::now();
    while app.get("/api/images").await.ids() != [1, 2] {
        assert!(t.elapsed() < NOTIFIED, "the seeded rows did not show");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = m.notifications.get();
    db.execute(
        "BEGIN; \
         INSERT INTO photographs (filename, url, category, width, height) \
           VALUES ('third.jpg', 'https://cdn.example/third.jpg', 'city', 10, 10); \
         UPDATE photographs SET category = 'x' WHERE id = 1; \
         DELETE FROM photographs WHERE id = 2; \
         COMMIT",
    );
    let t = Instant::now();
    while app.get("/api/images").await.ids() != [1, 3] {
        assert!(t.elapsed() < NOTIFIED, "the burst did not drop the page");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while m.notifications.get() < before + 3 {
        assert!(
            t.elapsed() < NOTIFIED,
            "counted {}",
            m.notifications.get() - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(m.notifications.get(), before + 3);
    assert_eq!(m.listening.get(), 1);
}

/// A long outage grows the listener's back-off (to 30 s at most). When the pool sees the
/// database again the listener is told and reconnects at once, not at the end of its wait.
#[tokio::test(flavor = "multi_thread")]
async fn the_listener_reconnects_as_soon_as_the_pool_sees_the_database_again() {
    use crate::helpers::{TestApp, ToggleProxy, settings};
    let db = TestDb::new();
    let proxy = ToggleProxy::start(&db.url).await;
    let mut s = settings(Some(&proxy.url_for(&db.url)));
    s.database.listen = true;
    s.database.reprobe_interval_ms = 200;
    let app = TestApp::spawn(s).await;
    let m = app.state.metrics.clone();
    let until = |secs: u64, want: i64| {
        let m = m.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(secs);
            while m.listening.get() != want {
                if Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            true
        }
    };
    assert!(until(10, 1).await, "not listening");
    proxy.cut_and_wait();
    assert!(until(10, 0).await, "the listener did not notice the outage");
    // A request finds the database down (the pool learns of outages from its own calls).
    let r = app.get("/api/images?limit=7&offset=3").await;
    assert_ne!(
        r.header("x-data-source"),
        None,
        "served without the database"
    );
    assert!(!app.state.db.as_ref().unwrap().is_available());
    // Failed connects at about 0.25, 0.75, 1.75, 3.75 and 7.75 s: the next wait is 8 s.
    tokio::time::sleep(Duration::from_secs(9)).await;
    proxy.restore();
    let pool = app.state.db.clone().unwrap();
    let t = Instant::now();
    while !pool.is_available() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the pool never saw it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = Instant::now();
    assert!(until(6, 1).await, "the listener waited out its back-off");
    // Without the news it would wait until about 15.75 s, 6 s or more after this point.
    assert!(
        back.elapsed() < Duration::from_secs(4),
        "{:?} after the pool",
        back.elapsed()
    );
}
