//! WeChat's side of the wire for a third-party platform (第三方平台): typed requests and responses,
//! the errcode table and its classes, an async HTTP client, the authorization-page URLs, and the
//! push envelope, events and message crypto (WXBizMsgCrypt).
//!
//! No server, no storage: this crate depends on nothing else in the workspace, and both wxtoken and
//! the simulator build on it. Field names stay exactly as WeChat spells them.

pub mod authorize;
pub mod client;
pub mod errcode;
pub mod event;
pub mod jssdk;
pub mod wire;
