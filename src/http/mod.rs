//! HTTP: everything that knows about requests and responses. No business rule lives here; the
//! handlers call [`crate::read`] and [`crate::write`].

/// The routes' handlers, one file per resource, the one API error type and the OpenAPI document.
pub mod api;
/// The layer in front of every route: request span and id, CORS, JSON errors, request log,
/// listing fast path.
pub mod front;
/// The listener: HTTP/1.1 connections with a header deadline and a cap.
pub mod server;
/// What every request can reach, built once at start-up.
pub mod state;
/// Wrong admin keys, throttled per client address.
pub mod throttle;
