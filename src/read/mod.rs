//! The read path: what `GET /api/images` and the other listings answer, and how their cached
//! pages stay fresh.

/// The byte-bounded cache of pre-serialised listing pages.
pub mod cache;
/// The listing use case: cache, database, the table copy kept for outages, embedded data.
pub mod listing;
/// LISTEN/NOTIFY: every replica drops its cached pages when `photographs` changes.
pub mod notify;
