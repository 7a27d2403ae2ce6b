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
/// The read path of the listing: cache, database, stale copy, embedded data.
pub mod listing;
/// Logging set-up.
pub mod telemetry;
