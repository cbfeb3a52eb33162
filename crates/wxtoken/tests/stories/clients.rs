//! The client libraries in `clients/` (Python, Node, Java, Go, PHP), each running its own test
//! against a real server and the simulator: cache until `refresh_at` (one request for two reads),
//! a WeChat call through `with_token`, a token retired at the simulator reported and retried once
//! with a new one while the long-poll watcher sees the new generation, 403 for an appid not
//! granted, and a clear error for a server that is not there. README's client examples are the
//! tested code, byte for byte.
//!
//! A language whose toolchain is missing is skipped with a notice, except under `CI=true`, where
//! `.ci/run` installs them all.

use std::path::{Path, PathBuf};
use std::process::Command;

use wechat_sim::AccountKind;

use crate::harness::server::Server;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients")
}

/// Whether `tool --version` (or `-version`) runs; under CI=true a missing tool fails the test.
fn have(tool: &str, version_flag: &str, test: &str) -> bool {
    let ok = Command::new(tool)
        .arg(version_flag)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is needed for {test} when CI=true (.ci/run installs it)"
        );
        println!("SKIPPED {test}: {tool} is not installed");
    }
    ok
}

/// Starts a server, authorizes an account for the library and another it is not granted, creates
/// its key, and runs `command` (built from the clients dir) with the test contract's variables.
async fn run_client_test(name: &str, command: impl FnOnce(&Path) -> Command + Send + 'static) {
    // Compilers and interpreters take both cores for seconds: never beside a load test.
    let _alone = crate::harness::alone().await;
    let s = Server::start().await;
    let appid = s.authorize_account(AccountKind::OfficialAccount).await;
    let other = s.authorize_account(AccountKind::MiniProgram).await;
    let key = s
        .client_key(&format!("{name}-client"), &[&appid], false)
        .await;
    let envs = [
        ("WXTOKEN_URL", s.internal.clone()),
        ("WXTOKEN_API_KEY", key),
        ("WXTOKEN_APPID", appid.clone()),
        ("WXTOKEN_FORBIDDEN_APPID", other),
        ("WXTOKEN_SIM_URL", s.sim.base_url().to_owned()),
    ];
    let dir = clients_dir();
    let output = tokio::task::spawn_blocking(move || {
        command(&dir)
            .envs(envs)
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .output()
    })
    .await
    .unwrap()
    .expect("the client's test runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the {name} client's test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // What its test asserted, seen from the server's side: WeChat saw one refresh of the appid,
    // the one its report caused after the simulator retired the token.
    let refreshes = s
        .sim
        .control()
        .stats()
        .endpoints
        .get("api_authorizer_token")
        .map_or(0, |e| e.calls);
    assert_eq!(refreshes, 1, "one refresh for one report");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_caches_reports_retries_watches_and_refuses_like_the_api() {
    if !have("python3", "--version", "the Python client") {
        return;
    }
    run_client_test("python", |dir| {
        let mut c = Command::new("python3");
        c.arg(dir.join("python/test_wxtoken_client.py"));
        c
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_caches_reports_retries_watches_and_refuses_like_the_api() {
    if !have("node", "--version", "the Node client") {
        return;
    }
    run_client_test("node", |dir| {
        let mut c = Command::new("node");
        c.arg(dir.join("node/test.mjs"));
        c
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_client_caches_reports_retries_watches_and_refuses_like_the_api() {
    if !have("javac", "-version", "the Java client") || !have("java", "-version", "the Java client")
    {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let classes = out.path().to_owned();
    let mut sources: Vec<PathBuf> = Vec::new();
    for sub in ["java/src", "java/test"] {
        for entry in std::fs::read_dir(clients_dir().join(sub)).expect("java sources") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "java") {
                sources.push(path);
            }
        }
    }
    let compiled = {
        let _alone = crate::harness::alone().await; // javac takes both cores for seconds
        Command::new("javac")
            .arg("-d")
            .arg(&classes)
            .args(&sources)
            .output()
            .expect("javac runs")
    };
    assert!(
        compiled.status.success(),
        "javac: {}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    run_client_test("java", move |_| {
        let mut c = Command::new("java");
        c.arg("-cp").arg(&classes).arg("WxTokenTest");
        c
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_client_caches_reports_retries_watches_and_refuses_like_the_api() {
    if !have("go", "version", "the Go client") {
        return;
    }
    run_client_test("go", |dir| {
        let mut c = Command::new("go");
        c.args(["test", "-count=1", "-v", "./..."])
            .current_dir(dir.join("go"))
            // Standard library only: nothing is fetched. The build cache stays under target/.
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env(
                "GOCACHE",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-build"),
            );
        c
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_client_caches_reports_retries_watches_and_refuses_like_the_api() {
    if !have("php", "--version", "the PHP client") {
        return;
    }
    let curl = Command::new("php").arg("-m").output().expect("php -m");
    assert!(
        String::from_utf8_lossy(&curl.stdout)
            .lines()
            .any(|l| l == "curl"),
        "the PHP client needs the curl extension (php-curl)"
    );
    run_client_test("php", |dir| {
        let mut c = Command::new("php");
        c.arg(dir.join("php/test.php"));
        c
    })
    .await;
}

/// Each README client example (a fenced block after `<!-- from clients/… -->`) is the region of
/// that file between `readme:begin` and `readme:end`, which its test runs.
#[test]
fn readme_client_examples_are_the_code_the_client_tests_run() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let mut checked = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(file) = line
            .strip_prefix("<!-- from clients/")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().expect("a fenced block follows");
        assert!(fence.starts_with("```"), "{file}: {fence}");
        let block: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        let source = std::fs::read_to_string(clients_dir().join(file)).expect("client file");
        let region: Vec<&str> = source
            .lines()
            .skip_while(|l| !l.trim_end().ends_with("readme:begin"))
            .skip(1)
            .take_while(|l| !l.trim_end().ends_with("readme:end"))
            .collect();
        assert!(
            !region.is_empty(),
            "{file} has no readme:begin/readme:end region"
        );
        assert_eq!(
            block,
            dedent(&region),
            "README's example differs from {file}"
        );
        checked.push(file.to_owned());
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "go/wxtoken_test.go",
            "java/test/WxTokenTest.java",
            "node/test.mjs",
            "php/test.php",
            "python/test_wxtoken_client.py"
        ],
        "one example per language"
    );
}

/// The lines without their common leading whitespace (blank lines do not count).
fn dedent<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| {
            if l.trim().is_empty() {
                ""
            } else {
                &l[indent..]
            }
        })
        .collect()
}
