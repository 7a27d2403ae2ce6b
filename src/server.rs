//! The listener: accepts TCP connections and serves HTTP/1.1 on them with hyper, so that no
//! connection can starve the server.
//!
//! poem's own `Server` keeps every connection for as long as the peer likes: 2,000 slowloris
//! connections, 2,000 silent ones and 5,000 idle keep-alive ones were all kept open, and at a
//! 1,024 open-files limit 1,100 silent sockets locked out every normal request while the accept
//! loop spun on `EMFILE` (measured against the previous build). Here:
//! - **A header deadline.** A connection must deliver each request's headers within
//!   `server.header_read_timeout_secs` of waiting for them (hyper's `header_read_timeout`). That
//!   closes silent sockets, slowloris senders and idle keep-alive connections alike; a request
//!   whose headers have arrived may take as long as it needs (a large batch upload).
//! - **A connection cap** (`server.max_connections`, by default what the open-files limit
//!   allows). At the cap, the connection idle the longest (no request in flight) is closed to
//!   make room: an attacker's silent sockets are evicted before a real client's request. Only
//!   when every connection has a request in flight is a new one answered `503` and closed. The
//!   log says so once per burst.
//! - **The open-files soft limit** is raised to the hard limit at start-up.
//! - `EMFILE` from `accept` backs off instead of spinning.
//!
//! HTTP/1.1 only: TLS and HTTP/2 end at the proxy in front (nginx, a load balancer, Fly, ...).

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hyper_util::rt::{TokioIo, TokioTimer};
use poem::{Endpoint, IntoEndpoint, Response, web::LocalAddr, web::RemoteAddr};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use tokio_util::sync::CancellationToken;

/// How the listener treats connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight (before its first request,
    /// or between two).
    pub keep_alive_timeout: Duration,
}

impl Limits {
    /// Connections the open-files limit allows, keeping room for the database pool, storage
    /// requests, spooled files and the log.
    pub fn connections_allowed_by(nofile: u64) -> usize {
        usize::try_from(nofile.saturating_sub(64).max(16)).unwrap_or(usize::MAX)
    }
}

/// Raises the open-files soft limit to the hard limit; returns the soft limit in effect.
pub fn raise_open_files_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// One open connection, as the cap sees it.
struct Slot {
    /// Requests in flight on it (HTTP/1.1: 0 or 1).
    busy: AtomicUsize,
    /// When it last became idle (or was opened), in ms since the listener started, for
    /// choosing whom to evict.
    idle_since: AtomicU64,
    /// Closes the connection gracefully: at once when idle, after the request in flight if not.
    close: Notify,
}

#[derive(Default)]
struct Registry {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
    /// A burst of refusals is going on (logged once at its start and once at its end).
    refusing: AtomicBool,
    refused: AtomicU64,
    evicted: AtomicU64,
    /// Most connections open at once since the last memory trim.
    peak: AtomicUsize,
}

impl Registry {
    fn open(&self) -> usize {
        self.slots.lock().expect("not poisoned").len()
    }

    fn add(&self) -> (u64, Arc<Slot>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(millis()),
            close: Notify::new(),
        });
        let mut slots = self.slots.lock().expect("not poisoned");
        slots.insert(id, slot.clone());
        self.peak.fetch_max(slots.len(), Ordering::Relaxed);
        (id, slot)
    }

    fn remove(&self, id: u64) {
        self.slots.lock().expect("not poisoned").remove(&id);
    }

    /// Closes the connection that has been idle the longest; false if every one is busy.
    fn evict_oldest_idle(&self) -> bool {
        let slots = self.slots.lock().expect("not poisoned");
        let oldest = slots
            .iter()
            .filter(|(_, s)| s.busy.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, s)| s.idle_since.load(Ordering::Relaxed))
            .map(|(id, s)| (*id, s.clone()));
        drop(slots);
        match oldest {
            Some((id, slot)) => {
                // Out of the count now, so the next accept does not pick it again.
                self.remove(id);
                slot.close.notify_one();
                self.evicted.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

/// Serves `endpoint` on `listener` until `shutdown` completes, then lets requests in flight
/// finish for up to `grace`.
pub async fn serve<E>(
    listener: TcpListener,
    endpoint: E,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> io::Result<()>
where
    E: IntoEndpoint,
    E::Endpoint: Endpoint<Output = Response> + 'static,
{
    let endpoint = Arc::new(endpoint.into_endpoint());
    let registry = Arc::new(Registry::default());
    let stopping = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let local = listener.local_addr()?;
    tokio::spawn(give_memory_back(Arc::downgrade(&registry)));
    tokio::spawn(close_idle(
        Arc::downgrade(&registry),
        limits.keep_alive_timeout,
    ));
    tokio::pin!(shutdown);
    let mut accept_errors = 0u32;
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    accept_errors = 0;
                    pair
                }
                Err(e) => {
                    // EMFILE/ENFILE (out of descriptors), ECONNABORTED, ...: say so once, back
                    // off briefly, never spin.
                    if accept_errors == 0 {
                        tracing::warn!(error = %e, open = registry.open(), "cannot accept a connection");
                    }
                    accept_errors = accept_errors.saturating_add(1);
                    if registry.evict_oldest_idle() {
                        continue;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        if registry.open() >= limits.max_connections && !registry.evict_oldest_idle() {
            refuse(stream, &registry, limits.max_connections);
            continue;
        }
        if registry.refusing.swap(false, Ordering::AcqRel) {
            tracing::info!(
                refused = registry.refused.swap(0, Ordering::Relaxed),
                "accepting connections again"
            );
        }
        let _ = stream.set_nodelay(true);
        let (id, slot) = registry.add();
        let registry = registry.clone();
        let endpoint = endpoint.clone();
        let stopping = stopping.clone();
        tracker.spawn(async move {
            serve_connection(stream, local, remote, endpoint, slot, limits, stopping).await;
            registry.remove(id);
        });
    }
    tracker.close();
    stopping.cancel();
    let evicted = registry.evicted.load(Ordering::Relaxed);
    if evicted > 0 {
        tracing::info!(evicted, "idle connections closed to make room, in all");
    }
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            open = registry.open(),
            "shutdown grace period over; closing the connections still open"
        );
    }
    Ok(())
}

/// Closes connections that have had no request in flight for `timeout`, checking every
/// quarter of it (at most once a second). A connection that never sent a request counts as idle
/// from when it was opened, so a silent socket goes the same way.
async fn close_idle(registry: std::sync::Weak<Registry>, timeout: Duration) {
    let every = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let limit = timeout.as_millis() as u64;
    loop {
        tokio::time::sleep(every).await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let now = millis();
        let idle: Vec<(u64, Arc<Slot>)> = registry
            .slots
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(_, s)| {
                s.busy.load(Ordering::Acquire) == 0
                    && now.saturating_sub(s.idle_since.load(Ordering::Relaxed)) >= limit
            })
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        for (id, slot) in idle {
            registry.remove(id);
            slot.close.notify_one();
        }
    }
}

/// Returns freed memory to the system after a burst of connections has gone.
///
/// Each open connection holds buffers and a task (about 22 KiB each). glibc keeps what they
/// freed in its arenas, so after 5,000 idle connections the RSS stayed at 122 MiB (from 13 MiB)
/// long after they closed (bench/storm.py). When the number of open connections has fallen to a
/// quarter of its peak, `malloc_trim` gives the free pages back.
async fn give_memory_back(registry: std::sync::Weak<Registry>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let open = registry.open();
        let peak = registry.peak.load(Ordering::Relaxed);
        if peak >= 256 && open <= peak / 4 {
            let freed = crate::blocking::run(crate::blocking::return_freed_memory)
                .await
                .unwrap_or(false);
            tracing::debug!(
                peak,
                open,
                freed,
                "returned memory after a burst of connections"
            );
            registry.peak.store(open, Ordering::Relaxed);
        }
    }
}

/// At the cap with every connection busy: a short 503, written without waiting, then close.
fn refuse(stream: TcpStream, registry: &Registry, max: usize) {
    const BODY: &str = r#"{"detail":"The server is at its connection limit; try again shortly"}"#;
    if !registry.refusing.swap(true, Ordering::AcqRel) {
        tracing::warn!(
            max_connections = max,
            "connection limit reached with every connection busy: refusing new connections \
             (server.max_connections)"
        );
    }
    registry.refused.fetch_add(1, Ordering::Relaxed);
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(reply.as_bytes());
    // Dropped here: closed at once.
}

async fn serve_connection<E: Endpoint<Output = Response> + 'static>(
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    endpoint: Arc<E>,
    slot: Arc<Slot>,
    limits: Limits,
    stopping: CancellationToken,
) {
    let service = {
        let slot = slot.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (endpoint, slot) = (endpoint.clone(), slot.clone());
            async move {
                let _busy = Busy::start(&slot);
                let req: poem::Request = (
                    req,
                    LocalAddr(local.into()),
                    RemoteAddr(remote.into()),
                    poem::http::uri::Scheme::HTTP,
                )
                    .into();
                let resp = endpoint.get_response(req).await;
                Ok::<_, Infallible>(hyper::Response::<
                    http_body_util::combinators::BoxBody<bytes::Bytes, io::Error>,
                >::from(resp))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %remote, "connection ended");
                }
                return;
            }
            _ = slot.close.notified(), if !closing => closing = true,
            _ = stopping.cancelled(), if !closing => closing = true,
        }
        // Evicted, or the server is stopping. With no request in flight (waiting for headers,
        // perhaps a trickle of them) the connection just closes; a request in flight finishes
        // first.
        if slot.busy.load(Ordering::Acquire) == 0 {
            return;
        }
        conn.as_mut().graceful_shutdown();
    }
}

/// Marks a connection busy while a request is in flight.
struct Busy<'a>(&'a Slot);

impl<'a> Busy<'a> {
    fn start(slot: &'a Slot) -> Busy<'a> {
        slot.busy.fetch_add(1, Ordering::AcqRel);
        Busy(slot)
    }
}

/// Milliseconds since the first call: a cheap clock for idle ages.
fn millis() -> u64 {
    static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.idle_since.store(millis(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}
