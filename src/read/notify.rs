//! Coherent caches across replicas: every change to `photographs`, whoever makes it (another
//! replica, the original server, psql, the Supabase dashboard), makes PostgreSQL notify channel
//! [`CHANNEL`] at commit (the trigger of `sql/migrations/0005_photographs_notify.sql`). Each
//! process keeps one connection that `LISTEN`s, outside the request pool, and drops its cached
//! pages, categories and table copy on every notification ([`Listing::invalidate`]).
//!
//! - A page loaded before an invalidation is never stored after it: the cache's keys carry the
//!   generation that `invalidate` bumps.
//! - After every (re)connection everything is dropped once, since events may have been missed.
//! - A transaction-mode pooler (pgbouncer, Supabase's port 6543) accepts `LISTEN` and then
//!   silently delivers nothing. So the channel is proven when the listener connects: a
//!   notification addressed to itself, sent from a *second* session over the request URL, must
//!   arrive. A notification sent by the listener's own session would arrive even through such a
//!   pooler (it comes back in the same transaction's answer), so it proves nothing. When the
//!   proof fails the log says so once, and pages refresh within `cache.ttl_secs`.

use std::{
    sync::{Arc, Weak},
    thread,
    time::{Duration, Instant},
};

use postgres::{Client, NoTls, fallible_iterator::FallibleIterator};

use crate::read::listing::Listing;

/// The channel the trigger notifies (its payload is the statement: INSERT, UPDATE, ...).
pub const CHANNEL: &str = "photographs_changed";

/// Payloads of the proof start with this; they invalidate nothing.
const PROBE_PREFIX: &str = "probe ";

/// How long the proof waits for its notification.
const PROBE_WAIT: Duration = Duration::from_secs(5);

/// After a failed proof, how long before trying again (quietly).
const RETRY_UNPROVEN: Duration = Duration::from_secs(600);

/// Silence longer than this is checked with an empty query, so a connection that died without
/// a word (a dropped network path) is noticed.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// The `application_name` of the listening session (shown in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "portfolio-server listener";

/// Starts the listener thread. `listen_url` is where it listens; `request_url` is the pool's URL,
/// over which the proof is sent. The thread ends soon after `listing` is dropped.
pub fn spawn(
    listing: Weak<Listing>,
    listen_url: &str,
    request_url: &str,
    connect_timeout: Duration,
    back: Option<Arc<crate::db::Back>>,
) {
    let mut listen: postgres::Config = match listen_url.parse() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "database.listen_url is not a PostgreSQL URL: not listening");
            return;
        }
    };
    let mut request: postgres::Config = match request_url.parse() {
        Ok(c) => c,
        Err(_) => return, // validated with the settings
    };
    for cfg in [&mut listen, &mut request] {
        cfg.connect_timeout(connect_timeout);
    }
    if listen.get_application_name().is_none() {
        listen.application_name(APPLICATION_NAME);
    }
    if request.get_application_name().is_none() {
        request.application_name("portfolio-server");
    }
    let target = crate::db::describe(&listen);
    let spawned = thread::Builder::new()
        .name("pg-listen".into())
        .spawn(move || Listener::new(listing, listen, request, target, back).run());
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the listener thread: pages refresh within cache.ttl_secs");
    }
}

struct Listener {
    listing: Weak<Listing>,
    listen: postgres::Config,
    request: postgres::Config,
    target: String,
    /// A lost connection or a failed connect was logged; said once until it works again.
    said_down: bool,
    said_unproven: bool,
    said_listening: bool,
    /// The pool's news that the database is back: a back-off ends at once.
    back: Option<Arc<crate::db::Back>>,
}

/// How a wait between attempts ended.
enum Slept {
    Full,
    DatabaseBack,
    ListingGone,
}

/// Why a session ended.
enum Ended {
    /// The listing is gone: the server is shutting down.
    Gone,
    Lost(String),
}

impl Listener {
    fn new(
        listing: Weak<Listing>,
        listen: postgres::Config,
        request: postgres::Config,
        target: String,
        back: Option<Arc<crate::db::Back>>,
    ) -> Listener {
        Listener {
            listing,
            listen,
            request,
            target,
            said_down: false,
            said_unproven: false,
            said_listening: false,
            back,
        }
    }

    fn run(mut self) {
        let mut backoff = Duration::from_millis(250);
        loop {
            if self.listing.strong_count() == 0 {
                return;
            }
            // The pool's count of the database's returns before this attempt: should a connect
            // fail, a later return ends the wait.
            let before = self.back.as_ref().map(|b| b.times());
            let mut seen_back = None;
            let wait = match self.session() {
                Ok(Ended::Gone) => return,
                Ok(Ended::Lost(e)) => {
                    tracing::warn!(
                        database = %self.target,
                        error = %e,
                        "lost the connection that listens for changes: reconnecting (pages \
                         refresh within cache.ttl_secs meanwhile)"
                    );
                    self.said_down = true;
                    backoff = Duration::from_millis(250);
                    backoff
                }
                Err(Failure::Unproven) => RETRY_UNPROVEN,
                Err(Failure::Connect(e)) => {
                    seen_back = before;
                    if !self.said_down {
                        tracing::warn!(
                            database = %self.target,
                            error = %e,
                            "cannot listen for changes: retrying (pages refresh within \
                             cache.ttl_secs meanwhile)"
                        );
                        self.said_down = true;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    backoff
                }
            };
            match self.sleep(wait, seen_back) {
                Slept::ListingGone => return,
                Slept::Full => {}
                Slept::DatabaseBack => backoff = Duration::from_millis(250),
            }
        }
    }

    /// Sleeps `d`, waking every second to see whether the listing is gone, and at once when the
    /// pool sees the database come back after `seen_back` returns (the back-off may have grown
    /// to 30 s during an outage; queries work again within a probe interval).
    fn sleep(&self, d: Duration, seen_back: Option<u64>) -> Slept {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.listing.strong_count() == 0 {
                return Slept::ListingGone;
            }
            let step = (until - Instant::now()).min(Duration::from_secs(1));
            match (&self.back, seen_back) {
                (Some(back), Some(seen)) => {
                    if back.wait_past(seen, step) {
                        return Slept::DatabaseBack;
                    }
                }
                _ => thread::sleep(step),
            }
        }
        if self.listing.strong_count() > 0 {
            Slept::Full
        } else {
            Slept::ListingGone
        }
    }

    /// Connects, listens, proves delivery, then waits for notifications until the connection
    /// is lost or the listing dropped.
    fn session(&mut self) -> Result<Ended, Failure> {
        let mut client = self.listen.connect(NoTls)?;
        client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        if !self.prove(&mut client)? {
            // Leave no LISTEN behind on a pooled server session.
            let _ = client.batch_execute("UNLISTEN *");
            if !self.said_unproven {
                tracing::warn!(
                    database = %self.target,
                    "notifications do not arrive over this connection (a transaction-mode \
                     pooler such as pgbouncer or Supabase's port 6543?): replicas see each \
                     other's changes only when cached pages expire (cache.ttl_secs). Set \
                     database.listen_url (APP_DATABASE__LISTEN_URL) to a direct or session-mode \
                     connection"
                );
                self.said_unproven = true;
            }
            return Err(Failure::Unproven);
        }
        // Events may have been missed while we were away.
        let Some(listing) = self.listing.upgrade() else {
            return Ok(Ended::Gone);
        };
        listing.invalidate();
        listing.metrics().listening.set(1);
        let metrics = listing.metrics().clone();
        drop(listing);
        if self.said_down || !self.said_listening {
            tracing::info!(database = %self.target, channel = CHANNEL, "listening for changes to photographs");
        }
        self.said_down = false;
        self.said_unproven = false;
        self.said_listening = true;
        let ended = self.wait(&mut client);
        metrics.listening.set(0);
        ended
    }

    /// Sends a notification with a fresh token from a second session and waits for one to arrive.
    fn prove(&self, client: &mut Client) -> Result<bool, Failure> {
        let token = format!(
            "{PROBE_PREFIX}{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        {
            let mut sender = self.request.connect(NoTls).map_err(Failure::from)?;
            // The simple protocol, so that it also passes a transaction-mode pooler.
            sender
                .batch_execute(&format!("SELECT pg_notify('{CHANNEL}', '{token}')"))
                .map_err(Failure::from)?;
        }
        let until = Instant::now() + PROBE_WAIT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let next = client.notifications().timeout_iter(left).next();
            match next {
                // Ours, or a real change meanwhile (which the invalidation after the proof
                // covers): either way another session's notification reached this one.
                Ok(Some(_)) => return Ok(true),
                Ok(None) if client.is_closed() => {
                    return Err(Failure::Connect("the connection closed".into()));
                }
                Ok(None) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Invalidates on every notification; a burst already received is one invalidation.
    fn wait(&self, client: &mut Client) -> Result<Ended, Failure> {
        let mut last_heard = Instant::now();
        loop {
            let next = client
                .notifications()
                .timeout_iter(Duration::from_secs(1))
                .next();
            match next {
                Ok(Some(first)) => {
                    last_heard = Instant::now();
                    let mut changes = u64::from(is_change(&first));
                    let mut notifications = client.notifications();
                    let mut buffered = notifications.iter();
                    while let Ok(Some(n)) = buffered.next() {
                        changes += u64::from(is_change(&n));
                    }
                    if changes > 0 {
                        let Some(listing) = self.listing.upgrade() else {
                            return Ok(Ended::Gone);
                        };
                        listing.metrics().notifications.inc_by(changes);
                        listing.invalidate();
                    }
                }
                Ok(None) if client.is_closed() => {
                    return Ok(Ended::Lost("the connection closed".into()));
                }
                Ok(None) => {}
                Err(e) => return Ok(Ended::Lost(e.to_string())),
            }
            if self.listing.strong_count() == 0 {
                return Ok(Ended::Gone);
            }
            if last_heard.elapsed() >= KEEPALIVE {
                if let Err(e) = client.is_valid(Duration::from_secs(5)) {
                    return Ok(Ended::Lost(e.to_string()));
                }
                last_heard = Instant::now();
            }
        }
    }
}

fn is_change(n: &postgres::Notification) -> bool {
    !n.payload().starts_with(PROBE_PREFIX)
}

enum Failure {
    Connect(String),
    Unproven,
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Failure {
        Failure::Connect(e.to_string())
    }
}
