pub mod api;
pub mod front;
pub mod server;
pub mod throttle;
