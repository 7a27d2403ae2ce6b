//! The read path: what `GET /api/images` and the other listings answer, and how their cached
//! pages stay fresh.
//!
//! # Modules
//!
//! - [`cache`]: The byte-bounded cache of pre-serialised listing pages.
//! - [`listing`]: The listing use case: cache, database, the table copy kept for outages, embedded
//!   data.
//! - [`notify`]: LISTEN/NOTIFY: every replica drops its cached pages when `photographs` changes.

pub mod cache;
pub mod listing;
pub mod notify;
