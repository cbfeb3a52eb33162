//! Shared by the integration tests: JSON fixtures under tests/fixtures/wire/<endpoint name>/.

use std::path::{Path, PathBuf};

use wechat::wire::Endpoint;

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire")
}

/// The bytes of `tests/fixtures/wire/<endpoint name>/<case>.json`.
pub fn fixture(endpoint: Endpoint, case: &str) -> Vec<u8> {
    let path = fixtures_dir()
        .join(endpoint.name())
        .join(format!("{case}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
