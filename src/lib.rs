//! portfolio-server: the photo-portfolio API, a drop-in replacement for the original FastAPI
//! backend. Read in this order:

/// HTTP handlers and the OpenAPI document.
pub mod api;
/// Start-up: state, routes, middleware, listener, graceful shutdown.
pub mod app;
/// The byte-bounded cache of pre-serialised listing pages.
pub mod cache;
/// Layered configuration (defaults, `Config.toml`, `.env`, environment).
pub mod config;
/// PostgreSQL: pool, blocking bridge, outage tracking, migrations, queries.
pub mod db;
/// The layer in front of every route: CORS, JSON errors, request log, listing fast path.
pub mod front;
/// Pure checks on uploaded photos: JPEG content, displayed size, safe names.
pub mod imaging;
/// The read path of the listing: cache, database, stale copy, embedded data.
pub mod listing;
/// Object storage: a local folder or Supabase Storage, create-only.
pub mod storage;
/// Logging set-up.
pub mod telemetry;
/// The upload use case and its never-lose, never-orphan write protocol.
pub mod upload;
