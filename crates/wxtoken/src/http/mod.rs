//! The HTTP surfaces. The public listener (WeChat's pushes, the authorization pages) and the
//! internal one (token API, admin API, metrics) are separate routers on separate sockets, so no
//! internal path can ever answer publicly. Handlers are thin: they call the engine and the store
//! and turn outcomes into `ApiError`s.
//!
//! May depend on every library module; nothing depends on it but `cli` and `app`.

pub mod auth;
pub mod error;
