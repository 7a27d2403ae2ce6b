//! portfolio-server: the photo-portfolio API, a drop-in replacement for the original FastAPI
//! backend.
//!
//! Read top-down: `main` builds an [`app::App`] from [`config::Settings`]; [`app`] wires the
//! [`front`] layer over the [`api`] routes; handlers call the use cases ([`listing`], [`upload`])
//! on the shared [`state`]; those use [`db`], [`cache`], [`storage`] and [`imaging`]; everything
//! speaks in the types of [`model`]. No module imports one above it.

/// HTTP handlers, the one API error type, and the OpenAPI document.
pub mod api;
/// Start-up: routes, the front layer, the listener, graceful shutdown.
pub mod app;
/// `portfolio-server variants backfill`: variants for rows that have none.
pub mod backfill;
/// The one bridge onto blocking threads.
pub mod blocking;
/// The byte-bounded cache of pre-serialised listing pages.
pub mod cache;
/// `portfolio-server upload DIR...`: a client that sends folders of photos to a server.
pub mod client;
/// Layered configuration (defaults, `Config.toml`, `.env`, environment).
pub mod config;
/// PostgreSQL: pool, outage tracking, migrations, queries.
pub mod db;
/// The layer in front of every route: request span and id, CORS, JSON errors, request log,
/// listing fast path.
pub mod front;
/// Photos in, web-ready images out: checks, downscaling, variants, placeholders, metadata.
pub mod imaging;
/// The clean-up journal: keys that may be in storage without a row, on disk.
pub mod journal;
/// The read path of the listing: cache, database, stale copy, embedded data.
pub mod listing;
/// Managing photos after upload: one photo, its category, deleting it with its objects.
pub mod manage;
/// `GET /metrics`: Prometheus counters, histograms and gauges.
pub mod metrics;
/// Domain values with their rules: photo, file name, category, page key.
pub mod model;
/// LISTEN/NOTIFY: every replica drops its cached pages when `photographs` changes.
pub mod notify;
/// `portfolio-server reconcile`: objects without rows, rows without objects.
pub mod reconcile;
/// The S3-compatible object store.
pub mod s3;
/// The listener: HTTP/1.1 connections with a header deadline and a cap.
pub mod server;
/// What every request can reach, built once at start-up.
pub mod state;
/// Object storage: a local folder or Supabase Storage, create-only.
pub mod storage;
/// Logging set-up.
pub mod telemetry;
/// Wrong admin keys, throttled per client address.
pub mod throttle;
/// The upload use case, its sessions, and its never-lose, never-orphan write protocol.
pub mod upload;
