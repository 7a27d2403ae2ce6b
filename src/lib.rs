//! portfolio-server: the photo-portfolio API, a drop-in replacement for the original FastAPI
//! backend.
//!
//! # Layout
//!
//! Each line uses only the lines below it; nothing climbs back up (`tests/api/layout.rs` checks
//! every `crate::` path against this table):
//!
//! ```text
//! cli                                the subcommands (`main` only parses and dispatches)
//! app                                builds the state, the routes and the listener
//! http                               listener, front layer, handlers, the state they reach
//! write                              uploads, write protocol, clean-up, manage, reconcile, backfill
//! read                               listings: page cache, database, table copy, notifications
//! db  storage  imaging  metrics      the resources the use cases work with
//! config  model  blocking  telemetry used at every level
//! ```
//!
//! A request enters [`http::server`] (the listener), passes [`http::front`] (span, CORS, JSON
//! errors, the listing fast path) and reaches a handler in [`http::api`], which turns HTTP into a
//! use case's types: listings go to [`read`], uploads, changes and deletes to [`write`]. Those
//! use [`db`] (every SQL statement is in [`db::queries`]), [`storage`] and [`imaging`].
//!
//! # Modules
//!
//! - [`app`]: `App::build`: the state, the routes and the listener; graceful shutdown.
//! - [`blocking`]: The one bridge from async code onto blocking threads.
//! - [`cli`]: The command line: one file per subcommand; `main` only parses and dispatches.
//! - [`config`]: Layered configuration (defaults, `Config.toml`, `.env`, environment).
//! - [`db`]: PostgreSQL: the pool and outage tracking, migrations, every query.
//! - [`http`]: HTTP: the listener, the front layer, the handlers, the admin key, the admin page
//!   and what they can reach.
//! - [`imaging`]: Photos in, web-ready images out: checks, downscaling, variants, placeholders,
//!   metadata.
//! - [`metrics`]: `GET /metrics`: Prometheus counters, histograms and gauges.
//! - [`model`]: Domain values with their rules: photo, file name, category, page key.
//! - [`read`]: The read path: listing pages from the cache, the database, the table copy or the
//!   embedded data, and the notifications that keep replicas' caches fresh.
//! - [`storage`]: Object storage: the seam, one file per backend, and the health monitor around
//!   them.
//! - [`telemetry`]: Logging set-up.
//! - [`write`]: The write path: uploads, the write protocol, clean-up and its journal, managing
//!   photos, reconcile and backfill.

pub mod app;
pub mod blocking;
pub mod cli;
pub mod config;
pub mod db;
pub mod http;
pub mod imaging;
pub mod metrics;
pub mod model;
pub mod read;
pub mod storage;
pub mod telemetry;
pub mod write;
