pub mod cache;
pub mod listing;
pub mod notify;
