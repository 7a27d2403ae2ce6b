//! The write path: every change to the photographs and their objects, and the clean-up that
//! keeps the two consistent through failures and crashes.
//!
//! # Modules
//!
//! - [`background`]: `image.variants_after_answer`: variants made after the upload's answer.
//! - [`backfill`]: `portfolio-server variants backfill`: variants for rows that have none.
//! - [`context`]: What every write works with, shared by the uploader and the manager.
//! - [`cleanup`]: Clean-up: the resolver that settles objects that may be in storage without a
//!   row.
//! - [`error`]: Why a write did not happen.
//! - [`journal`]: The clean-up journal: keys that may be in storage without a row, on disk.
//! - [`manage`]: Managing stored photos: one photo, its category, deleting it with its objects.
//! - [`protocol`]: The write protocol: row, objects and commit, never lost, never orphaned.
//! - [`reconcile`]: `portfolio-server reconcile`: objects without rows, rows without objects.
//! - [`session`]: Upload forms, field by field: `/api/upload` and `/api/upload-batch`.
//! - [`upload`]: The upload use case: checks, image work, then the write protocol.

pub mod backfill;
pub mod background;
pub mod cleanup;
pub mod context;
pub mod error;
pub mod journal;
pub mod manage;
pub mod protocol;
pub mod reconcile;
pub mod session;
pub mod upload;
