//! PostgreSQL: the r2d2 pool, the one bridge from async handlers onto tokio's blocking threads,
//! and outage tracking. [`migrate`] applies the schema; [`queries`] holds every statement the
//! server runs on the photographs (their text is in `sql/queries/`).
//!
//! The pool is synchronous (`postgres` + r2d2), so every database call goes through [`Db::run`],
//! which queues for a connection and then moves the closure onto a blocking thread through
//! [`crate::blocking::run`].
//!
//! Availability is remembered rather than rediscovered: when a call fails for a connectivity
//! reason the database is marked down, requests stop waiting on it (they are answered from the
//! cache, the stale copy or the embedded data), and a background task re-probes it every
//! `database.reprobe_interval_ms` until it answers, applying pending migrations before it is used.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use postgres::{NoTls, error::SqlState};
use r2d2_postgres::{PostgresConnectionManager, r2d2};
use tokio::sync::Semaphore;

pub mod migrate;
pub mod queries;

use crate::{
    blocking::{self, Panicked},
    config::DatabaseSettings,
};

pub type PgPool = r2d2::Pool<Manager>;
pub type PgConn = r2d2::PooledConnection<Manager>;

/// A connection handed back less than this long ago is handed out again without a liveness
/// check. r2d2 checks every checkout with a round trip (`simple_query("")`): 20 ms from the
/// database that doubled the cost of every page (one check, one query). HikariCP makes the same
/// trade with the same window (`aliveBypassWindowMs`, 500 ms). A connection that died within the
/// window fails its query instead. One such failure (any connectivity failure) ends the bypass
/// for every connection that worked before it: connections die together (a restart, a network
/// cut), and the others are then checked and replaced before a request uses them.
const FRESH: Duration = Duration::from_millis(500);

/// r2d2_postgres's manager, with the liveness check skipped for [`FRESH`] connections.
pub struct Manager {
    inner: PostgresConnectionManager<NoTls>,
    /// Connectivity failures so far (see [`FRESH`]).
    failures: Arc<AtomicU64>,
}

/// A pooled `postgres::Client` and when it was last known to work.
pub struct Connection {
    client: postgres::Client,
    checked: Instant,
    /// [`Manager::failures`] when it last worked.
    failures_then: u64,
}

impl std::ops::Deref for Connection {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        &self.client
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

impl Connection {
    /// The connection just did a piece of work; `failures` connectivity failures were known.
    fn worked(&mut self, failures: u64) {
        self.checked = Instant::now();
        self.failures_then = failures;
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Connection;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Connection, postgres::Error> {
        Ok(Connection {
            client: self.inner.connect()?,
            checked: Instant::now(),
            failures_then: self.failures.load(Ordering::Acquire),
        })
    }

    fn is_valid(&self, c: &mut Connection) -> Result<(), postgres::Error> {
        let failures = self.failures.load(Ordering::Acquire);
        if c.checked.elapsed() < FRESH && c.failures_then == failures && !c.client.is_closed() {
            return Ok(());
        }
        self.inner.is_valid(&mut c.client)?;
        c.worked(failures);
        Ok(())
    }

    fn has_broken(&self, c: &mut Connection) -> bool {
        self.inner.has_broken(&mut c.client)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no database connection available: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("database error: {0}")]
    Pg(#[from] postgres::Error),
    /// The closure panicked: a bug, not a database failure.
    #[error(transparent)]
    Panicked(#[from] Panicked),
    #[error("migration {name}: {problem}")]
    Migration { name: String, problem: String },
    /// Every connection stayed busy for the whole queue timeout: the database is up but saturated.
    #[error("database busy: no connection became free within {} ms", .0.as_millis())]
    Busy(Duration),
    /// The server's port refused us (or did not answer in time) before a connection was made.
    #[error("database unreachable: {0}")]
    Unreachable(std::io::Error),
    /// A failure shared by every caller waiting on one cache load.
    #[error("{0}")]
    Shared(Arc<DbError>),
}

impl DbError {
    /// True when the database is reachable but had no free connection in time.
    pub fn is_busy(&self) -> bool {
        match self {
            DbError::Busy(_) => true,
            DbError::Shared(e) => e.is_busy(),
            _ => false,
        }
    }

    /// True when the error says "cannot talk to the database" rather than "the query was wrong".
    pub fn is_connectivity(&self) -> bool {
        match self {
            DbError::Pool(_) | DbError::Unreachable(_) => true,
            DbError::Pg(e) => match e.code() {
                None => true, // I/O, closed connection, timeout: no SQLSTATE from the server
                Some(code) => {
                    code.code().starts_with("08") // connection_exception class
                        || *code == SqlState::ADMIN_SHUTDOWN
                        || *code == SqlState::CRASH_SHUTDOWN
                        || *code == SqlState::CANNOT_CONNECT_NOW
                        || *code == SqlState::TOO_MANY_CONNECTIONS
                }
            },
            DbError::Shared(e) => e.is_connectivity(),
            DbError::Busy(_) | DbError::Panicked(_) | DbError::Migration { .. } => false,
        }
    }
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    /// Taken out in `Drop` (see there).
    pool: Option<PgPool>,
    /// `host:port/dbname`, for logs: the URL itself may hold a password.
    target: String,
    /// Where the server listens, to ask before the pool spends its checkout timeout retrying.
    addresses: Vec<Address>,
    /// The last call or probe reached the database.
    up: AtomicBool,
    /// Connectivity failures so far, shared with the pool's [`Manager`].
    failures: Arc<AtomicU64>,
    /// Migrations have been applied by this process (or `migrate_on_start` is off).
    migrated: AtomicBool,
    reprobe_interval: Duration,
    /// One permit per pooled connection. Callers queue here, asynchronously, rather than in
    /// `pool.get()`, so a checkout timeout means "cannot connect", never "all connections busy".
    /// (Under a load of slow queries the busy case used to mark a healthy database down.)
    permits: Arc<Semaphore>,
    /// How long a caller queues for a permit (see `DatabaseSettings::queue_timeout_ms`). HTTP/1
    /// handlers are not cancelled when their client hangs up, so without this bound the work of
    /// departed clients piled up: 17 s of queue after a burst of slow queries (measured).
    queue_timeout: Duration,
    /// Callers queueing for a permit now (`db_pool_waiting`).
    waiting: AtomicUsize,
    /// Told each time the database comes back, so other connections (the listener's) retry at
    /// once instead of at the end of their back-off.
    back: Arc<Back>,
}

/// A count of the times the database came back, and a way to wait for the next.
#[derive(Default)]
pub struct Back {
    times: std::sync::Mutex<u64>,
    changed: std::sync::Condvar,
}

impl Back {
    /// How many times the database has come back so far.
    pub fn times(&self) -> u64 {
        *self.times.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tell(&self) {
        *self.times.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.changed.notify_all();
    }

    /// Waits at most `d` for a return after the `seen`-th; whether one came.
    pub fn wait_past(&self, seen: u64, d: Duration) -> bool {
        let guard = self.times.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, d, |times| *times == seen)
            .unwrap_or_else(|p| p.into_inner());
        *guard != seen
    }
}

/// What [`Db::ping`] learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ping {
    Up,
    /// Reachable, but every connection stayed busy for the ping's short wait.
    Busy,
    Down,
}

/// How long a ping queues for a connection before it counts the database as busy.
const PING_QUEUE: Duration = Duration::from_millis(250);

/// A place the database server listens on.
#[derive(Debug, Clone)]
enum Address {
    Tcp(String, u16),
    Unix(std::path::PathBuf),
}

/// How long asking the server's port may take. A stopped server refuses at once; a host that
/// does not answer in time is left to the pool (see [`reachable`]).
const REACH_TIMEOUT: Duration = Duration::from_millis(250);

/// Whether something listens at one of `addresses` (a TCP or socket connect, closed at once).
fn reachable(addresses: &[Address]) -> Result<(), std::io::Error> {
    use std::net::ToSocketAddrs;
    if addresses.is_empty() {
        return Ok(()); // nothing to ask: let the driver find its default
    }
    let mut last = std::io::Error::other("no database address");
    for a in addresses {
        let result = match a {
            Address::Tcp(host, port) => {
                (host.as_str(), *port).to_socket_addrs().and_then(|mut it| {
                    let addr = it
                        .next()
                        .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))?;
                    std::net::TcpStream::connect_timeout(&addr, REACH_TIMEOUT).map(drop)
                })
            }
            Address::Unix(path) => std::os::unix::net::UnixStream::connect(path).map(drop),
        };
        match result {
            Ok(()) => return Ok(()),
            // Only a clear "nobody listens here" is an outage. A slow answer (the host or the
            // database overloaded) is left to the pool, which waits its checkout timeout: a busy
            // database must not be taken for a stopped one.
            Err(e) if is_refusal(&e) => last = e,
            Err(_) => return Ok(()),
        }
    }
    Err(last)
}

fn is_refusal(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | NotFound
            | HostUnreachable
            | NetworkUnreachable
            | AddrNotAvailable
    )
}

/// Counts a caller as waiting for as long as it lives (also when its future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Waiting<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Inner {
    /// Dropping the last pool handle closes its connections, and a sync `postgres::Client`
    /// closes by blocking on its own runtime: on a tokio worker thread that panics inside a
    /// destructor and aborts the process. Closing on a plain thread is always safe.
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::Builder::new()
                .name("pg-pool-close".into())
                .spawn(move || drop(pool));
        }
    }
}

impl Db {
    /// Builds the pool without connecting: the server starts even when the database is down.
    pub fn new(url: &str, s: &DatabaseSettings) -> Result<Db, DbError> {
        let mut cfg: postgres::Config = url.parse()?;
        cfg.connect_timeout(Duration::from_millis(s.connect_timeout_ms));
        if cfg.get_application_name().is_none() {
            cfg.application_name("portfolio-server");
        }
        let target = describe(&cfg);
        let addresses = addresses(&cfg);
        let failures = Arc::new(AtomicU64::new(0));
        let pool = r2d2::Pool::builder()
            .max_size(s.pool_max_size)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_millis(s.checkout_timeout_ms))
            // Outages are logged once, on the transition, by `mark_down`; r2d2's own handler
            // would log every failed reconnect attempt.
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(Manager {
                inner: PostgresConnectionManager::new(cfg, NoTls),
                failures: failures.clone(),
            });
        Ok(Db {
            inner: Arc::new(Inner {
                pool: Some(pool),
                target,
                addresses,
                up: AtomicBool::new(false),
                failures,
                migrated: AtomicBool::new(!s.migrate_on_start),
                reprobe_interval: Duration::from_millis(s.reprobe_interval_ms),
                permits: Arc::new(Semaphore::new(s.pool_max_size as usize)),
                queue_timeout: Duration::from_millis(s.queue_timeout_ms),
                waiting: AtomicUsize::new(0),
                back: Arc::new(Back::default()),
            }),
        })
    }

    /// Connections the pool holds, how many of them are idle, and how many callers are
    /// queueing for one.
    pub fn pool_stats(&self) -> (u32, u32, usize) {
        let state = self.inner.pool.as_ref().map(r2d2::Pool::state);
        let (open, idle) = state.map_or((0, 0), |s| (s.connections, s.idle_connections));
        (open, idle, self.inner.waiting.load(Ordering::Relaxed))
    }

    /// Told each time the database comes back after being down.
    pub fn back(&self) -> Arc<Back> {
        self.inner.back.clone()
    }

    /// `host:port/dbname` of the database, safe to log.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// Whether requests should use the database now. False while it is down or not yet migrated.
    pub fn is_available(&self) -> bool {
        self.inner.up.load(Ordering::Acquire) && self.inner.migrated.load(Ordering::Acquire)
    }

    fn pool(&self) -> PgPool {
        self.inner.pool.clone().expect("pool is only taken in Drop")
    }

    /// Runs `f` with a pooled connection on a blocking thread: the one bridge from async code
    /// to the synchronous driver. A connectivity failure marks the database down.
    pub async fn run<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut PgConn) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        self.run_queued(self.inner.queue_timeout, f).await
    }

    /// [`Db::run`], queueing for a connection for at most `queue_timeout`.
    async fn run_queued<T, F>(&self, queue_timeout: Duration, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut PgConn) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool();
        let inner = self.inner.clone();
        let queued = self.inner.permits.clone().acquire_owned();
        let waiting = Waiting::new(&self.inner.waiting);
        let permit = match tokio::time::timeout(queue_timeout, queued).await {
            Ok(permit) => permit.expect("never closed"),
            Err(_) => return Err(DbError::Busy(queue_timeout)),
        };
        drop(waiting);
        let result = blocking::run(move || {
            // Held until the work ends, even if the caller has gone away meanwhile.
            let _permit = permit;
            let mut conn = match pool.try_get() {
                Some(conn) => conn,
                // No idle connection, so the pool must make one, and against a stopped server it
                // would retry until the checkout timeout (1.5 s by default) before saying so. Ask
                // the port first: a refusal is an outage now.
                None => {
                    reachable(&inner.addresses).map_err(DbError::Unreachable)?;
                    pool.get()?
                }
            };
            let result = f(&mut conn);
            if conn.is_closed() {
                // Lost during the work, whatever the work made of the error: the connections
                // that worked before now are checked again before their next use.
                inner.failures.fetch_add(1, Ordering::AcqRel);
            } else if result.is_ok() {
                conn.worked(inner.failures.load(Ordering::Acquire));
            }
            result
        })
        .await
        .map_err(DbError::from)
        .and_then(std::convert::identity);
        if let Err(e) = &result
            && e.is_connectivity()
        {
            // Also when no connection was had (a refused port): see `FRESH`.
            self.inner.failures.fetch_add(1, Ordering::AcqRel);
            self.mark_down(e);
        }
        result
    }

    fn mark_down(&self, e: &DbError) {
        if self.inner.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                database = %self.inner.target,
                error = %e,
                "database unreachable; serving cached and embedded data until it is back"
            );
        }
    }

    /// Checks the database answers, applying pending migrations first if this process has not
    /// yet done so. Returns whether it is available afterwards.
    pub async fn probe(&self) -> bool {
        let need_migrations = !self.inner.migrated.load(Ordering::Acquire);
        let result = self
            .run(move |c| {
                if need_migrations {
                    migrate::migrate(c)
                } else {
                    c.simple_query("SELECT 1")?;
                    Ok(Vec::new())
                }
            })
            .await;
        match result {
            Ok(applied) => {
                if need_migrations {
                    self.inner.migrated.store(true, Ordering::Release);
                    if !applied.is_empty() {
                        tracing::info!(migrations = ?applied, "applied database migrations");
                    }
                }
                if !self.inner.up.swap(true, Ordering::AcqRel) {
                    tracing::info!(database = %self.inner.target, "database connected");
                    self.inner.back.tell();
                }
                true
            }
            Err(e) => {
                if !e.is_connectivity() {
                    // Reachable but unusable (a failed migration, say): say so loudly, keep
                    // serving the fallback, and keep retrying in case someone fixes it.
                    tracing::error!(database = %self.inner.target, error = %e, "database not usable");
                }
                false
            }
        }
    }

    /// Re-probes the database in the background while it is unavailable. The task ends when the
    /// last `Db` handle is dropped.
    pub fn spawn_monitor(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let interval = self.inner.reprobe_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { return };
                let db = Db { inner };
                if !db.is_available() {
                    db.probe().await;
                }
            }
        });
    }

    /// Whether the database answers right now. Cheap while it is known to be down, and quick
    /// when it is busy: a saturated pool is an answer ([`Ping::Busy`]), not an outage.
    pub async fn ping(&self) -> Ping {
        if !self.is_available() {
            return Ping::Down;
        }
        let wait = self.inner.queue_timeout.min(PING_QUEUE);
        match self
            .run_queued(wait, |c| Ok(c.simple_query("SELECT 1")?))
            .await
        {
            Ok(_) => Ping::Up,
            Err(e) if e.is_busy() => Ping::Busy,
            Err(_) => Ping::Down,
        }
    }

    /// Applies pending migrations now (the `migrate` subcommand).
    pub async fn migrate_now(&self) -> Result<Vec<String>, DbError> {
        let applied = self.run(migrate::migrate).await?;
        self.inner.migrated.store(true, Ordering::Release);
        Ok(applied)
    }
}

fn addresses(cfg: &postgres::Config) -> Vec<Address> {
    use postgres::config::Host;
    let ports = cfg.get_ports();
    cfg.get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(host) => Address::Tcp(host.clone(), port),
                Host::Unix(dir) => Address::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            }
        })
        .collect()
}

pub(crate) fn describe(cfg: &postgres::Config) -> String {
    use postgres::config::Host;
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg.get_dbname().or(cfg.get_user()).unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}
