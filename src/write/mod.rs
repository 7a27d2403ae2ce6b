pub mod backfill;
pub mod journal;
pub mod manage;
pub mod reconcile;
pub mod upload;
