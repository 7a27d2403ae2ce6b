//! portfolio-server: the photo-portfolio API, a drop-in replacement for the original FastAPI
//! backend.
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
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod write;
