//! Integration tests of the simulator, through sockets: the simulator listens on 127.0.0.1:0 and
//! is driven with `wechat::client::WechatClient`, raw reqwest calls and the control API.

mod authorizer;
mod component;
mod consent;
mod control;
mod direct;
mod errors;
mod faults;
mod helpers;
mod push;
mod quota;
mod wechatpy;
