//! The read path: what `GET /api/images` and the other listings answer, and how their cached
//! pages stay fresh.
//!
//! # Modules
//!
//! - [`batch`]: Plain pages that wait for a database connection together share one round trip.
//! - [`cache`]: The byte-bounded cache of pre-serialised listing pages.
//! - [`listing`]: The listing use case: cache, database, the table copy kept for outages, embedded
//!   data.
//! - [`notify`]: LISTEN/NOTIFY: every replica drops its cached pages when `photographs` changes.
//! - [`signed`]: Private mode: the URLs pages and records hand out are signed, and re-signed
//!   before they expire.

pub mod batch;
pub mod cache;
pub mod listing;
pub mod notify;
pub mod signed;
