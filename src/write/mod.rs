//! The write path: every change to the photographs and their objects, and the clean-up that
//! keeps the two consistent through failures and crashes.

/// `portfolio-server variants backfill`: variants for rows that have none.
pub mod backfill;
/// Clean-up: the resolver that settles objects that may be in storage without a row.
pub mod cleanup;
/// Why a write did not happen.
pub mod error;
/// The clean-up journal: keys that may be in storage without a row, on disk.
pub mod journal;
/// Managing stored photos: one photo, its category, deleting it with its objects.
pub mod manage;
/// The write protocol: row, objects and commit, never lost, never orphaned.
pub mod protocol;
/// `portfolio-server reconcile`: objects without rows, rows without objects.
pub mod reconcile;
/// Upload forms, field by field: `/api/upload` and `/api/upload-batch`.
pub mod session;
/// The upload use case: checks, image work, then the write protocol.
pub mod upload;
