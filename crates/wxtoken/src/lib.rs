//! wxtoken: the token central-control server (中控服务器) for a WeChat Open Platform third-party
//! platform. The binary in `main.rs` only parses the command line and dispatches into `cli`.
//!
//! Dependencies point one way: cli → (tokens, refresh) → (store, vault, wechat); every module may use
//! `model`. `store` knows neither axum nor the `wechat` crate.

pub mod alerts;
pub mod app;
pub mod cli;
pub mod config;
pub mod coordination;
pub mod http;
pub mod manage;
pub mod model;
pub mod refresh;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod transfer;
pub mod vault;
