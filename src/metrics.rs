//! `GET /metrics` in the Prometheus text format: what an operator watches on a replica.
//!
//! Counters and histograms are updated where things happen; gauges that describe a state (the
//! page cache's size, the pool, whether the database is up) are read when scraped. Each
//! app state has its own registry, so tests (many apps in one process) see only
//! their own counts. The `prometheus` crate writes the format; the names follow its conventions
//! (`_total` for counters, base units: seconds, bytes).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The listing's route label.
const LISTING: &str = "/api/images";

/// HTTP latency buckets, in seconds: a cached page is tens of microseconds, an upload seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Image pipeline buckets, in seconds (a 24 MP photo takes about half a second on two cores).
const IMAGE_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0];

pub struct Metrics {
    registry: Registry,
    /// `http_requests_total{route, status}`.
    pub requests: IntCounterVec,
    /// `http_request_duration_seconds{route}`.
    pub latency: HistogramVec,
    /// `listing_answers_total{source}`: answers by `X-Data-Source` (the listing's, and those
    /// of the other routes that read the table).
    pub answers: IntCounterVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    /// Listing pages fetched by a statement shared with other pages ([`crate::read::batch`]).
    pub pages_shared: IntCounter,
    pub cache_entries: IntGauge,
    pub cache_bytes: IntGauge,
    /// `db_pool_connections{state="in_use"|"idle"}`.
    pub pool_connections: IntGaugeVec,
    /// Requests waiting for a database connection.
    pub pool_waiting: IntGauge,
    pub db_up: IntGauge,
    /// `uploads_total{outcome}`: one per photo, single or in a batch.
    pub uploads: IntCounterVec,
    /// `storage_errors_total{backend}`.
    pub storage_errors: IntCounterVec,
    /// Decoding, resizing and encoding one photo before its answer (with its variants, unless
    /// they are made after the answer).
    pub image_seconds: Histogram,
    /// Uploads answered before their variants, whose variants are still to be made.
    pub variants_pending: IntGauge,
    /// Notifications of changes received from PostgreSQL ([`crate::read::notify`]).
    pub notifications: IntCounter,
    /// 1 while the listener is connected and proven to receive notifications.
    pub listening: IntGauge,
    /// Rows in the copy of the table kept for outages (0: none).
    pub copy_rows: IntGauge,
    /// Request log lines of client errors left out by the log's rate limit.
    pub log_suppressed: IntCounter,
    /// `admin_key_refusals_total{reason="wrong"|"throttled"}`: admin requests refused for
    /// their key, or before it was looked at because their address sent too many wrong ones.
    pub key_refusals: IntCounterVec,
    /// The listing's own series, resolved once: looking a series up by its labels (a hash and
    /// a lock) on every cached page cost about 3 % of its throughput (bench/ab.sh).
    listing: ListingSeries,
}

struct ListingSeries {
    latency: Histogram,
    ok: IntCounter,
    not_modified: IntCounter,
    from_database: IntCounter,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("registered once");
    m
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let m = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(m.clone())).expect("registered once");
    m
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let m = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(m.clone())).expect("registered once");
    m
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from the request's arrival to its response, by route",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        r.register(Box::new(latency.clone()))
            .expect("registered once");
        let image_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "image_pipeline_seconds",
                "Image work on one uploaded photo before its answer: made web-sized, with its \
                 variants and placeholder unless they are made after the answer",
            )
            .buckets(IMAGE_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        r.register(Box::new(image_seconds.clone()))
            .expect("registered once");
        let pool_connections = IntGaugeVec::new(
            Opts::new(
                "db_pool_connections",
                "Pooled database connections, by state",
            ),
            &["state"],
        )
        .expect("valid metric");
        r.register(Box::new(pool_connections.clone()))
            .expect("registered once");
        let requests = counter_vec(
            &r,
            "http_requests_total",
            "HTTP requests answered, by route and status",
            &["route", "status"],
        );
        let answers = counter_vec(
            &r,
            "listing_answers_total",
            "Listing answers by where their data came from (X-Data-Source)",
            &["source"],
        );
        let listing = ListingSeries {
            latency: latency.with_label_values(&[LISTING]),
            ok: requests.with_label_values(&[LISTING, "200"]),
            not_modified: requests.with_label_values(&[LISTING, "304"]),
            from_database: answers.with_label_values(&["database"]),
        };
        Metrics {
            requests,
            latency,
            answers,
            listing,
            cache_hits: counter(
                &r,
                "page_cache_hits_total",
                "Listing pages answered from the page cache",
            ),
            cache_misses: counter(
                &r,
                "page_cache_misses_total",
                "Listing pages not in the page cache (loaded, or answered from a copy)",
            ),
            pages_shared: counter(
                &r,
                "listing_pages_shared_total",
                "Listing pages fetched in one statement with others that waited for a connection at the same time",
            ),
            cache_entries: gauge(&r, "page_cache_entries", "Pages in the page cache"),
            cache_bytes: gauge(&r, "page_cache_bytes", "Bytes of pages in the page cache"),
            pool_connections,
            pool_waiting: gauge(
                &r,
                "db_pool_waiting",
                "Requests waiting for a database connection",
            ),
            db_up: gauge(
                &r,
                "db_up",
                "1 while the database answers and is migrated, else 0",
            ),
            uploads: counter_vec(
                &r,
                "uploads_total",
                "Photos uploaded or refused, by outcome",
                &["outcome"],
            ),
            storage_errors: counter_vec(
                &r,
                "storage_errors_total",
                "Object storage requests that failed, by backend",
                &["backend"],
            ),
            image_seconds,
            variants_pending: gauge(
                &r,
                "photos_variants_pending",
                "Uploads answered before their variants and placeholder were made, still waiting \
                 for them (image.variants_after_answer)",
            ),
            notifications: counter(
                &r,
                "db_notifications_total",
                "Change notifications received from PostgreSQL",
            ),
            listening: gauge(
                &r,
                "db_listening",
                "1 while this process receives change notifications, else 0",
            ),
            copy_rows: gauge(
                &r,
                "table_copy_rows",
                "Rows in the copy of the table that answers during an outage (0: none)",
            ),
            log_suppressed: counter(
                &r,
                "log_lines_suppressed_total",
                "Request log lines of client errors (4xx) left out by the log's rate limit",
            ),
            key_refusals: counter_vec(
                &r,
                "admin_key_refusals_total",
                "Admin requests refused: a wrong key (wrong), or an address held back after too \
                 many wrong keys (throttled)",
                &["reason"],
            ),
            registry: r,
        }
    }

    /// One answered request, and for a listing where its data came from.
    pub fn request(
        &self,
        route: &str,
        status: u16,
        source: Option<&[u8]>,
        elapsed: std::time::Duration,
    ) {
        if route == LISTING {
            self.listing.latency.observe(elapsed.as_secs_f64());
            match status {
                200 => self.listing.ok.inc(),
                304 => self.listing.not_modified.inc(),
                _ => self.count_status(route, status),
            }
            match source {
                None => {}
                Some(b"database") => self.listing.from_database.inc(),
                Some(other) => self
                    .answers
                    .with_label_values(&[std::str::from_utf8(other).unwrap_or("other")])
                    .inc(),
            }
            return;
        }
        self.count_status(route, status);
        self.latency
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        if let Some(source) = source.and_then(|s| std::str::from_utf8(s).ok()) {
            self.answers.with_label_values(&[source]).inc();
        }
    }

    fn count_status(&self, route: &str, status: u16) {
        let buf = itoa_status(status);
        let status = std::str::from_utf8(&buf).unwrap_or("0");
        self.requests.with_label_values(&[route, status]).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// A status code's three digits, without allocating.
fn itoa_status(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}
