//! The store's stories, against SQLite always and PostgreSQL when `WXTOKEN_TEST_PG_URL` is set:
//! the conformance suite both backends pass, a process killed in the middle of writing, no secret
//! in plaintext at rest or in the logs, import and export of authorizers, and a database of an
//! older schema upgraded with its data.

#[path = "../harness/mod.rs"]
mod harness;

mod conformance;
mod crash;
mod plaintext;
mod transfer;
mod upgrade;
