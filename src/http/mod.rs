//! HTTP: everything that knows about requests and responses. No business rule lives here; the
//! handlers call [`crate::read`] and [`crate::write`].
//!
//! # Modules
//!
//! - [`admin`]: `/admin`, the owner's page, embedded in the binary.
//! - [`api`]: The routes' handlers, one file per resource, the one API error type and the OpenAPI
//!   document.
//! - [`front`]: The layer in front of every route: request span and id, CORS, JSON errors, request
//!   log, listing fast path.
//! - [`server`]: The listener: HTTP/1.1 connections with a header deadline and a cap.
//! - [`state`]: What every request can reach, built once at start-up.
//! - [`throttle`]: Wrong admin keys, throttled per client address.

pub mod admin;
pub mod api;
pub mod front;
pub mod server;
pub mod state;
pub mod throttle;
