//! The token lifecycle rules of SPEC.md that do not touch storage or the network: when a token is
//! due for refresh, how long to back off after a failure, whether a token may still be served, and
//! single flight (one upstream call for any number of concurrent askers).
//!
//! Depends only on tokio and tokio-util; the refresh engine builds on it.

pub mod cache;
pub mod flight;
pub mod plan;
