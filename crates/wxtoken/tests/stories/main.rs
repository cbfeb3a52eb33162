//! wxtoken's stories, end to end: the engine against the real simulator over sockets and a real
//! SQLite or PostgreSQL store; the HTTP API over real sockets; several replicas; kills after
//! WeChat rotated a refresh token. Lifetimes are seconds; synchronisation is by awaiting results
//! and watch channels, never sleeps (readers pace themselves, which is load, not synchronisation).

#[path = "../harness/mod.rs"]
mod harness;

mod clients;
mod dashboard;
mod events;
mod gateway;
mod guards;
mod http;
mod lifecycle;
mod replicas;
mod rotation;
mod schedule;
mod tickets;
mod writes;
