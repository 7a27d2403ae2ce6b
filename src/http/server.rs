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
//! - **In flight until sent.** A request counts as in flight until its response body has been
//!   sent whole, so a slow download is neither idle nor evicted. A response the client takes
//!   none of for `server.send_stall_timeout_secs` is cut (a reader that stopped).
//! - **A connection cap** (`server.max_connections`, by default what the open-files limit
//!   allows). At the cap, the connection idle the longest (no request in flight) is closed to
//!   make room: an attacker's silent sockets are evicted before a real client's request. Only
//!   when every connection has a request in flight is a new one answered `503` and closed. The
//!   log says so once per burst.
//! - **The open-files soft limit** is raised to the hard limit at start-up.
//! - `EMFILE` from `accept` backs off instead of spinning.
//! - **JSON for hyper's own answers.** A request hyper cannot parse (400), a URI too long (414)
//!   or headers too large (431) is answered by hyper before any route runs; [`JsonParseErrors`]
//!   gives those answers the `{"detail": …}` body every other error has.
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
    /// or between two). A response still being sent is in flight.
    pub keep_alive_timeout: Duration,
    /// How long a response may be stuck (the client takes none of it) before the connection is
    /// closed.
    pub send_stall_timeout: Duration,
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
    /// When a response body last gave hyper something to send, in ms like `idle_since`; 0
    /// while no body is being sent.
    progress_at: AtomicU64,
    /// Closed because its response stalled: dropped at once, not after the response.
    stalled: AtomicBool,
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
            progress_at: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
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
        limits.send_stall_timeout,
    ));
    tokio::pin!(shutdown);
    let mut accept_errors = 0u32;
    // Lowered if the open-files limit is found lowered while running.
    let mut max_connections = limits.max_connections;
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
                    let mut excess = 1;
                    if e.raw_os_error() == Some(libc::EMFILE) {
                        max_connections = cap_after_emfile(max_connections);
                        excess = registry.open().saturating_sub(max_connections).max(1);
                    }
                    // Room for the connection waiting, and down to the cap.
                    let evicted = (0..excess).take_while(|_| registry.evict_oldest_idle()).count();
                    if evicted == 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    continue;
                }
            },
        };
        if registry.open() >= max_connections && !registry.evict_oldest_idle() {
            refuse(stream, &registry, max_connections);
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
    // Closed now, not when the grace period ends: a new connection is refused at once (a load
    // balancer tries another server) instead of waiting in the backlog for a process that stops.
    drop(listener);
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

/// The connection cap once `accept` has run out of descriptors (EMFILE): the open-files limit
/// may have been lowered since start-up (`prlimit`, a container runtime), leaving `cap` above
/// what the process can open, with no room for the database, storage or spooled files. The
/// soft limit is raised to the hard one again if it can be, and read back; the cap becomes
/// what that allows, if lower.
fn cap_after_emfile(cap: usize) -> usize {
    let open_files = raise_open_files_limit();
    let allowed = Limits::connections_allowed_by(open_files);
    if allowed < cap {
        tracing::warn!(
            open_files_limit = open_files,
            max_connections = allowed,
            "the open-files limit is lower than at start-up: fewer connections are kept open"
        );
    }
    cap.min(allowed)
}

/// Closes connections that have had no request in flight for `timeout`, and those whose
/// response has not moved for `stall`, checking every quarter of the shorter (at most once a
/// second). A connection that never sent a request counts as idle from when it was opened, so
/// a silent socket goes the same way. A request is in flight until its response has been sent
/// whole, so a slow download is never idle.
async fn close_idle(registry: std::sync::Weak<Registry>, timeout: Duration, stall: Duration) {
    let every = (timeout.min(stall) / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let limit = timeout.as_millis() as u64;
    let stall_limit = stall.as_millis() as u64;
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
                let idle = s.busy.load(Ordering::Acquire) == 0
                    && now.saturating_sub(s.idle_since.load(Ordering::Relaxed)) >= limit;
                let progress = s.progress_at.load(Ordering::Relaxed);
                let stalled = progress > 0 && now.saturating_sub(progress) >= stall_limit;
                if stalled {
                    s.stalled.store(true, Ordering::Release);
                }
                idle || stalled
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
                // Held by the response body until it has been sent (or dropped): a response
                // being sent is a request in flight, however long a slow reader takes.
                let busy = Busy::start(slot);
                let req: poem::Request = (
                    req,
                    LocalAddr(local.into()),
                    RemoteAddr(remote.into()),
                    poem::http::uri::Scheme::HTTP,
                )
                    .into();
                let resp = endpoint.get_response(req).await;
                let resp = hyper::Response::<
                    http_body_util::combinators::BoxBody<bytes::Bytes, io::Error>,
                >::from(resp);
                Ok::<_, Infallible>(resp.map(|body| SendingBody::new(body, busy)))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let io = JsonParseErrors::new(stream, slot.clone());
    let conn = builder.serve_connection(TokioIo::new(io), service);
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
        // first, unless its response stalled (the client stopped reading).
        if slot.busy.load(Ordering::Acquire) == 0 || slot.stalled.load(Ordering::Acquire) {
            if slot.stalled.load(Ordering::Acquire) {
                tracing::debug!(%remote, "closed a connection whose client stopped reading");
            }
            return;
        }
        conn.as_mut().graceful_shutdown();
    }
}

/// Marks a connection busy while a request is in flight: from its headers until its response
/// has been sent whole (or abandoned).
struct Busy(Arc<Slot>);

impl Busy {
    fn start(slot: Arc<Slot>) -> Busy {
        slot.busy.fetch_add(1, Ordering::AcqRel);
        Busy(slot)
    }
}

/// A response body that keeps its connection busy until it is done, and records when it last
/// moved (for the stall time-out). hyper asks for the next frame only once the last has been
/// written to the socket, so a client that stops reading stops the frames.
struct SendingBody {
    inner: http_body_util::combinators::BoxBody<bytes::Bytes, io::Error>,
    busy: Busy,
}

impl SendingBody {
    fn new(
        inner: http_body_util::combinators::BoxBody<bytes::Bytes, io::Error>,
        busy: Busy,
    ) -> SendingBody {
        busy.0.progress_at.store(millis().max(1), Ordering::Relaxed);
        SendingBody { inner, busy }
    }
}

impl hyper::body::Body for SendingBody {
    type Data = bytes::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, io::Error>>> {
        self.busy
            .0
            .progress_at
            .store(millis().max(1), Ordering::Relaxed);
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Milliseconds since the first call: a cheap clock for idle ages.
fn millis() -> u64 {
    static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.progress_at.store(0, Ordering::Relaxed);
        self.0.idle_since.store(millis(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's socket, through which hyper's own answers to requests it cannot parse leave
/// with the JSON body every other error has.
///
/// hyper answers a request head it cannot parse (400), a URI over 65,534 bytes (414) or a head
/// over its buffer or with more than 100 headers (431) itself, before any service runs, with
/// `content-length: 0` and no way to supply a body. Such an answer is recognised as it is
/// written: one of those statuses, no `content-type` (every answer of ours has one) and no
/// request in flight on the connection. It is replaced whole by the same status with
/// `{"detail": …}`; hyper closes the connection after it, as it does today.
struct JsonParseErrors {
    inner: TcpStream,
    slot: Arc<Slot>,
    /// A replacement answer, and how much of it has been written.
    pending: Option<(Vec<u8>, usize)>,
}

impl JsonParseErrors {
    fn new(inner: TcpStream, slot: Arc<Slot>) -> JsonParseErrors {
        JsonParseErrors {
            inner,
            slot,
            pending: None,
        }
    }

    /// Writes what is left of a replacement answer.
    fn drain(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        use tokio::io::AsyncWrite;
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = std::task::ready!(
                std::pin::Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..])
            )?;
            if n == 0 {
                return std::task::Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        std::task::Poll::Ready(Ok(()))
    }

    /// Takes `buf` as the replacement of hyper's own answer, if it is one.
    fn replaced(&mut self, buf: &[u8]) -> bool {
        if self.slot.busy.load(Ordering::Acquire) != 0 {
            return false;
        }
        match json_parse_error(buf) {
            Some(reply) => {
                self.pending = Some((reply, 0));
                true
            }
            None => false,
        }
    }
}

/// The JSON answer that replaces `head` if it is one of hyper's bodiless parse-error answers.
fn json_parse_error(head: &[u8]) -> Option<Vec<u8>> {
    // This sees every write of a connection with no request in flight: a response of ours
    // (a body, headers) is refused before any parsing; hyper's answers are about 100 bytes.
    if head.len() >= 512 {
        return None;
    }
    let head = std::str::from_utf8(head).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let detail = match status_line.strip_prefix("HTTP/1.1 ")?.get(..4)? {
        "400 " => "The request is not valid HTTP/1.1 (its request line or a header is malformed)",
        "414 " => "The URI is too long: at most 65,534 bytes",
        "431 " => "The request's headers are too large (at most about 400 KB, and 100 headers)",
        _ => return None,
    };
    let mut date = None;
    for line in lines {
        let (name, _) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" if line.ends_with(": 0") => {}
            "connection" => {}
            "date" => date = Some(line),
            // Anything else (a content-type above all) means the answer is not hyper's.
            _ => return None,
        }
    }
    let body = serde_json::json!({ "detail": detail }).to_string();
    let mut reply = format!(
        "{status_line}\r\ncontent-type: application/json; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(date) = date {
        reply.push_str(date);
        reply.push_str("\r\n");
    }
    reply.push_str("\r\n");
    reply.push_str(&body);
    Some(reply.into_bytes())
}

impl tokio::io::AsyncRead for JsonParseErrors {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for JsonParseErrors {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::task::ready!(self.drain(cx))?;
        if self.replaced(buf) {
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::task::ready!(self.drain(cx))?;
        // hyper's answer is one head and nothing else.
        let mut written = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(head), None) = (written.next(), written.next())
            && self.replaced(head)
        {
            return std::task::Poll::Ready(Ok(head.len()));
        }
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::json_parse_error;

    const DATE: &str = "date: Thu, 03 Dec 2026 16:57:50 GMT";

    fn hyper_answer(status: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n\r\n")
            .into_bytes()
    }

    #[test]
    fn hypers_parse_error_answers_get_a_json_body() {
        for (status, word) in [
            ("400 Bad Request", "malformed"),
            ("414 URI Too Long", "65,534"),
            ("431 Request Header Fields Too Large", "100 headers"),
        ] {
            let reply =
                String::from_utf8(json_parse_error(&hyper_answer(status)).unwrap()).unwrap();
            let (head, body) = reply.split_once("\r\n\r\n").unwrap();
            let lines: Vec<&str> = head.split("\r\n").collect();
            assert_eq!(lines[0], format!("HTTP/1.1 {status}"));
            assert!(lines.contains(&"content-type: application/json; charset=utf-8"));
            assert!(lines.contains(&format!("content-length: {}", body.len()).as_str()));
            assert!(lines.contains(&"connection: close"));
            assert!(lines.contains(&DATE), "{head}");
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(json["detail"].as_str().unwrap().contains(word), "{json}");
        }
        // No date: none is made up.
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let reply = String::from_utf8(json_parse_error(bare).unwrap()).unwrap();
        assert!(!reply.contains("date:"), "{reply}");
        assert!(reply.ends_with("\r\n\r\n{\"detail\":\"The request is not valid HTTP/1.1 (its request line or a header is malformed)\"}"), "{reply}");
    }

    #[test]
    fn every_other_write_is_left_alone() {
        let untouched: [&[u8]; 8] = [
            // Our own errors have a content-type (and a body).
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            // A status hyper does not make up, or a body.
            &hyper_answer("404 Not Found"),
            &hyper_answer("413 Payload Too Large"),
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 10\r\n\r\n",
            // Not a whole head, or not one at all.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            b"{\"detail\":\"HTTP/1.1 400 \"}\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\nweird line\r\n\r\n",
        ];
        for write in untouched {
            assert_eq!(
                json_parse_error(write),
                None,
                "{}",
                String::from_utf8_lossy(write)
            );
        }
        assert_eq!(
            json_parse_error(&[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']),
            None
        );
        // hyper's answer is short: a head of 512 bytes or more is never one (just under is).
        let padded = |len: usize| {
            let mut head = hyper_answer("400 Bad Request");
            let date_end = head.len() - 4;
            let fill = len - head.len();
            head.splice(date_end..date_end, std::iter::repeat_n(b'x', fill));
            assert_eq!(head.len(), len);
            head
        };
        assert!(json_parse_error(&padded(511)).is_some());
        assert_eq!(json_parse_error(&padded(512)), None);
    }
}
