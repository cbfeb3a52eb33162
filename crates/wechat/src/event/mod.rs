//! Pushes to the authorization-event URL: the XML envelope and events, and their crypto.

pub mod crypto;
pub mod xml;
