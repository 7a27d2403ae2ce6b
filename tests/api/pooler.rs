//! Behind pgbouncer in transaction mode, as on Supabase's pooler port: every query the server
//! makes outside a transaction is one unnamed statement, so it works whichever server
//! connection the pooler picks (round robin here, so that a named statement prepared on one
//! and run on the next would fail). `LISTEN` through such a pooler receives nothing: the
//! listener goes straight to the database when `database.listen_url` says so, and otherwise the
//! log says notifications are unavailable and pages refresh within the TTL.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    helpers::{TestDb, free_port},
    replicas::{Replica, shows_within, upload},
};

struct Pgbouncer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Pgbouncer {
    /// Closing the watchdog's stdin stops pgbouncer (as this process exiting would).
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn pgbouncer_binary() -> Option<String> {
    [
        "/usr/sbin/pgbouncer",
        "/usr/bin/pgbouncer",
        "/usr/local/bin/pgbouncer",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .map(str::to_string)
}

impl Pgbouncer {
    /// pgbouncer in transaction mode in front of `db`'s cluster. Not installed, the test fails
    /// and says how to install it (`tests/run.sh` installs Debian's package): nothing is skipped.
    fn start(db: &TestDb) -> Pgbouncer {
        let bin = pgbouncer_binary().expect(
            "pgbouncer is needed by this test and is not installed: `bash tests/run.sh` installs \
             it (Debian: apt-get install pgbouncer)",
        );
        let pg_port = db
            .url
            .rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let ini = dir.path().join("pgbouncer.ini");
        let users = dir.path().join("users.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={pg_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                 server_round_robin = 1\nmin_pool_size = 3\ndefault_pool_size = 20\n\
                 max_client_conn = 200\nignore_startup_parameters = extra_float_digits\n",
                users = users.display()
            ),
        )
        .unwrap();
        // A watchdog shell: pgbouncer runs until its stdin closes (the test ends, or this
        // process dies however it dies). pgbouncer refuses to run as root.
        let script = format!(
            "'{bin}' '{ini}' & pid=$!; cat > /dev/null; kill $pid; wait $pid",
            ini = ini.display()
        );
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let mut cmd = if is_root {
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let bouncer = Pgbouncer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pgbouncer did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }

    fn url(&self, db: &TestDb) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db.name)
    }
}

const SECOND: Duration = Duration::from_secs(1);

/// pgbouncer's connections to `db` (every session there but the listener and this query's).
fn server_connections(db: &TestDb) -> usize {
    db.rows(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
         AND application_name <> 'portfolio-server listener' AND pid <> pg_backend_pid()",
        db.name
    ))[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn through_pgbouncer_with_a_direct_listener_every_query_works_and_replicas_stay_coherent() {
    let db = TestDb::new();
    let bouncer = Pgbouncer::start(&db);
    let media = tempfile::tempdir().unwrap();
    let pooled = bouncer.url(&db);
    let env = [("APP_DATABASE__LISTEN_URL", db.url.as_str())];
    let a = Replica::start(&pooled, media.path(), &env);
    let b = Replica::start(&pooled, media.path(), &env);
    a.wait_for_log("listening for changes to photographs", 1, 20);
    b.wait_for_log("listening for changes to photographs", 1, 20);
    assert!(a.names().is_empty());
    // Round robin needs several server connections to rotate over: wait for min_pool_size.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server_connections(&db) < 3 {
        assert!(
            Instant::now() < deadline,
            "pgbouncer opened fewer than 3 server connections"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The write path through the pooler: the duplicate check, the INSERT, the listing.
    for i in 0..5 {
        upload(a.port, &format!("pooled-{i}.jpg"));
    }
    let t = Instant::now();
    shows_within(
        "uploads through A, on B",
        t,
        SECOND,
        || b.names(),
        |n| n.len() == 5,
    );
    db.execute("UPDATE photographs SET category = 'city'");
    let t = Instant::now();
    for r in [&a, &b] {
        shows_within(
            "an SQL UPDATE",
            t,
            SECOND,
            || r.names(),
            |n| n.iter().all(|x| x.ends_with(":city")),
        );
    }
    // One photo, its category changed, then deleted, through the admin routes.
    let id = db.rows("SELECT min(id) FROM photographs")[0][0]
        .clone()
        .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://127.0.0.1:{}/api/images/{id}", b.port);
    let r = agent
        .patch(&url)
        .header("X-API-Key", "replica-key")
        .send_json(serde_json::json!({"category": "street"}))
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = agent
        .delete(&url)
        .header("X-API-Key", "replica-key")
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let t = Instant::now();
    shows_within(
        "a delete through B, on A",
        t,
        SECOND,
        || a.names(),
        |n| n.len() == 4,
    );
    for r in [&a, &b] {
        assert_eq!(r.logged("notifications do not arrive"), 0);
        assert_eq!(
            r.logged("prepared statement"),
            0,
            "a named statement crossed the pooler"
        );
    }
}

#[test]
fn through_pgbouncer_without_a_listener_url_the_log_says_so_and_pages_expire_with_the_ttl() {
    let db = TestDb::new();
    let bouncer = Pgbouncer::start(&db);
    let media = tempfile::tempdir().unwrap();
    let a = Replica::start(
        &bouncer.url(&db),
        media.path(),
        &[("APP_CACHE__TTL_SECS", "2")],
    );
    a.wait_for_log("notifications do not arrive over this connection", 1, 30);
    assert_eq!(a.logged("listening for changes to photographs"), 0);
    assert!(a.names().is_empty());
    db.seed(1);
    let t = Instant::now();
    shows_within(
        "a row added in SQL, by the TTL",
        t,
        Duration::from_secs(4),
        || a.names(),
        |n| n.len() == 1,
    );
}
