//! The store commands as an operator runs them: the real `wxtoken` binary, a temporary SQLite
//! file, a master key in the environment. Secrets must never reach stdout or stderr except where a
//! command exists to print one (a new API key, a new master key).

#[path = "../harness/mod.rs"]
mod harness;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use wxtoken::model::{
    Appid, AuthorizerStatus, ComponentAppid, Credential, SaveOutcome, StatusChange, Timestamp,
};
use wxtoken::vault::{MasterKey, Vault};

const COMPONENT: &str = "wxcomponent0000001";

struct Env {
    dir: tempfile::TempDir,
    key: String,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env = Env {
            dir,
            key: String::new(),
        };
        let out = env.run(&["keys", "generate"], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        env.key = text(&out.stdout).trim().to_owned();
        env
    }

    fn db(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("wx.db").display())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxtoken"));
        cmd.args(args)
            .env_remove("WXTOKEN_MASTER_KEY_OLD")
            .env_remove("WXTOKEN_CONFIG")
            .env("WXTOKEN_STORAGE__URL", self.db())
            .env("WXTOKEN_MASTER_KEY", &self.key)
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path());
        cmd
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn wxtoken");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("wxtoken runs")
    }

    /// Imports `csv` (authorizers, with a header line) under [`COMPONENT`].
    fn import(&self, csv: &str) {
        let path = self.path("authorizers.csv");
        write(&path, csv);
        self.ok(&[
            "authorizers",
            "import",
            "--component",
            COMPONENT,
            path.to_str().expect("utf-8"),
        ]);
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None);
        assert!(
            out.status.success(),
            "wxtoken {args:?} failed: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(path: &Path, content: &str) {
    std::fs::write(path, content).expect("write file");
}

#[test]
fn import_list_show_export_round_trip_without_printing_secrets() {
    let env = Env::new();
    let csv = env.path("authorizers.csv");
    write(
        &csv,
        "appid,refresh_token,kind\n\
         wxauthorizer00001,refreshtoken@@@SECRET-ONE,official_account\n\
         wxauthorizer00002,refreshtoken@@@SECRET-TWO,mini_program\n\
         not an appid,refreshtoken@@@SECRET-BAD,official_account\n",
    );
    let out = env.run(
        &[
            "authorizers",
            "import",
            "--component",
            COMPONENT,
            csv.to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(
        !out.status.success(),
        "a bad row makes the exit status say so"
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("2 created"), "{stdout}");
    assert!(
        stderr.contains("line 4"),
        "the bad row is named by its line: {stderr}"
    );

    let again = env.run(
        &[
            "authorizers",
            "import",
            "--component",
            COMPONENT,
            csv.to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(
        text(&again.stdout).contains("0 created"),
        "re-running is idempotent"
    );
    assert!(text(&again.stdout).contains("2 unchanged"));

    let list = env.ok(&["authorizers", "list", "--component", COMPONENT]);
    assert!(
        list.contains("wxauthorizer00001") && list.contains("wxauthorizer00002"),
        "{list}"
    );
    assert!(list.contains("2 active"), "{list}");
    let show = env.ok(&[
        "authorizers",
        "show",
        "--component",
        COMPONENT,
        "wxauthorizer00002",
    ]);
    assert!(show.contains("mini_program"), "{show}");
    for output in [&list, &show, &stdout, &stderr] {
        assert!(
            !output.contains("SECRET"),
            "no refresh token is ever printed: {output}"
        );
    }

    let export = env.path("backup.jsonl");
    env.ok(&[
        "authorizers",
        "export",
        "--component",
        COMPONENT,
        export.to_str().expect("utf-8"),
    ]);
    let exported = std::fs::read_to_string(&export).expect("export file");
    assert!(exported.contains("refreshtoken@@@SECRET-ONE"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&export)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "an export holds secrets: owner-only");
    }
    let refused = env.run(
        &[
            "authorizers",
            "export",
            "--component",
            COMPONENT,
            export.to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(
        !refused.status.success(),
        "an existing export is not overwritten"
    );
}

#[test]
fn database_file_holds_no_plaintext_secret_after_commands() {
    let env = Env::new();
    env.import("appid,refresh_token\nwxauthorizer00001,refreshtoken@@@PLAINTEXT-CANARY\n");
    let add = env.run(
        &[
            "accounts",
            "add",
            "--component",
            COMPONENT,
            "wxdirect000000001",
        ],
        Some("appsecret-PLAINTEXT-CANARY\n"),
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    for suffix in ["", "-wal", "-shm"] {
        let path = env.path(&format!("wx.db{suffix}"));
        if let Ok(bytes) = std::fs::read(&path) {
            let hay = String::from_utf8_lossy(&bytes);
            assert!(
                !hay.contains("PLAINTEXT-CANARY"),
                "{} holds a plaintext secret",
                path.display()
            );
        }
    }
}

#[test]
fn wrong_master_key_is_refused_and_changes_nothing() {
    let mut env = Env::new();
    env.ok(&["clients", "add", "svc", "--appid", "*"]);
    env.key = Env::new().key;
    let out = env.run(&["clients", "list"], None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("master key"),
        "the error says what is wrong: {err}"
    );
}

/// `wxtoken token` answers what the server would serve: the stored token, and for a revoked
/// authorizer not its own retired token.
#[test]
fn token_command_prints_the_stored_token_and_refuses_a_revoked_authorizers_own_token() {
    let env = Env::new();
    env.import(
        "appid,refresh_token,kind\nwxauthorizer00001,refreshtoken@@@SECRET-ONE,official_account\n",
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store = runtime
        .block_on(wxtoken::store::open(&env.db()))
        .expect("store");
    let vault = Vault::new(&MasterKey::parse(&env.key).expect("key"), &[]);
    let component = ComponentAppid::parse(COMPONENT).unwrap();
    let appid = Appid::parse("wxauthorizer00001").unwrap();
    runtime.block_on(async {
        let generation = store
            .tokens()
            .get_token(&Credential::authorizer(&component, &appid))
            .await
            .unwrap()
            .expect("imported")
            .generation;
        let result = harness::store::refresh(
            &vault,
            &component,
            &appid,
            generation,
            "access-TOKEN-ONE",
            "refreshtoken@@@SECRET-ONE",
            Timestamp::now().as_millis(),
        );
        let outcome = store.tokens().save_refresh_result(&result).await.unwrap();
        assert!(matches!(outcome, SaveOutcome::Saved { .. }), "{outcome:?}");
    });
    let args = ["token", "--component", COMPONENT, "wxauthorizer00001"];
    assert_eq!(env.ok(&args).trim(), "access-TOKEN-ONE");
    runtime.block_on(async {
        store
            .authorizers()
            .set_authorizer_status(&StatusChange {
                component: component.clone(),
                appid: appid.clone(),
                status: AuthorizerStatus::Revoked,
                reason: Some("unauthorized event".into()),
                expected_generation: None,
                at: Timestamp::now(),
            })
            .await
            .unwrap();
        store.close().await;
    });
    let out = env.run(&args, None);
    assert!(
        !out.status.success(),
        "a revoked authorizer's own token is retired"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("revoked"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn client_key_is_printed_once_and_only_its_hint_is_listed() {
    let env = Env::new();
    let key = env.ok(&[
        "clients",
        "add",
        "order-service",
        "--appid",
        "wxauthorizer00001",
    ]);
    let key = key.trim();
    assert!(key.starts_with("wxt_") && key.len() > 40, "{key}");
    let list = env.ok(&["clients", "list"]);
    assert!(list.contains("order-service"));
    assert!(!list.contains(key), "the key itself is never listed");
    let dup = env.run(&["clients", "add", "order-service", "--appid", "*"], None);
    assert!(!dup.status.success(), "live names are unique");
    env.ok(&["clients", "revoke", "order-service"]);
    assert!(env.ok(&["clients", "list"]).contains("revoked"));
    let bad = env.run(&["clients", "add", "x", "--appid", "not valid!"], None);
    assert!(!bad.status.success() && text(&bad.stderr).contains("--appid"));
}

/// A direct account beside an authorizer of the same appid would make every read of it ambiguous.
#[test]
fn a_direct_account_for_an_authorizers_appid_is_refused_and_changes_nothing() {
    let env = Env::new();
    env.import(
        "appid,refresh_token,kind\nwxauthorizer00001,refreshtoken@@@SECRET-ONE,official_account\n",
    );
    let add = env.run(
        &[
            "accounts",
            "add",
            "--component",
            COMPONENT,
            "wxauthorizer00001",
        ],
        Some("s3cret\n"),
    );
    assert!(!add.status.success(), "refused");
    let message = text(&add.stderr);
    assert!(
        message.contains("is an authorizer of") && message.contains("authorizers import"),
        "{message}"
    );
    assert!(!message.contains("s3cret"));
    let list = env.ok(&["accounts", "list", "--component", COMPONENT]);
    assert!(!list.contains("wxauthorizer00001"), "{list}");
}

#[test]
fn direct_account_secret_comes_from_stdin_and_accounts_can_be_removed() {
    let env = Env::new();
    let empty = env.run(
        &[
            "accounts",
            "add",
            "--component",
            COMPONENT,
            "wxdirect000000001",
        ],
        Some(""),
    );
    assert!(!empty.status.success(), "an empty appsecret is refused");
    let add = env.run(
        &[
            "accounts",
            "add",
            "--component",
            COMPONENT,
            "--kind",
            "mini_program",
            "wxdirect000000001",
        ],
        Some("s3cret\n"),
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    let list = env.ok(&["accounts", "list", "--component", COMPONENT]);
    assert!(
        list.contains("wxdirect000000001")
            && list.contains("mini_program")
            && !list.contains("s3cret")
    );
    env.ok(&[
        "accounts",
        "remove",
        "--component",
        COMPONENT,
        "wxdirect000000001",
    ]);
    let gone = env.run(
        &[
            "accounts",
            "remove",
            "--component",
            COMPONENT,
            "wxdirect000000001",
        ],
        None,
    );
    assert!(!gone.status.success());
}

#[test]
fn rotation_moves_every_secret_to_the_new_key() {
    let mut env = Env::new();
    env.import("appid,refresh_token\nwxauthorizer00001,refreshtoken@@@one\n");
    let old = env.key.clone();
    env.key = Env::new().key;
    let mut rotate = env.command(&["keys", "rotate"]);
    rotate.env("WXTOKEN_MASTER_KEY_OLD", &old);
    let out = rotate.output().expect("runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("no longer seals anything"),
        "{}",
        text(&out.stdout)
    );
    // The new key alone now opens everything.
    let export = env.path("after.jsonl");
    env.ok(&[
        "authorizers",
        "export",
        "--component",
        COMPONENT,
        export.to_str().expect("utf-8"),
    ]);
    assert!(
        std::fs::read_to_string(&export)
            .expect("read")
            .contains("refreshtoken@@@one")
    );
}

#[test]
fn serve_print_config_prints_an_example_that_loads() {
    let env = Env::new();
    let example = env.ok(&["serve", "--print-config"]);
    let path = env.path("example.toml");
    write(&path, &example);
    let config = wxtoken::config::Config::load(Some(&path), Vec::new()).expect("it loads");
    assert_eq!(config.components.len(), 1);
    assert!(
        example.lines().filter(|l| l.starts_with('#')).count() > 20,
        "commented"
    );
}

#[test]
fn serve_refuses_a_bad_config_value_naming_its_key() {
    let env = Env::new();
    let path = env.path("bad.toml");
    write(&path, "[refresh]\nrefresh_fraction = 7\n");
    let out = env.run(&["serve", "--config", path.to_str().expect("utf-8")], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("refresh.refresh_fraction"),
        "{}",
        text(&out.stderr)
    );
    write(&path, "[server]\npublic_listn = \"0.0.0.0:1\"\n");
    let out = env.run(&["serve", "--config", path.to_str().expect("utf-8")], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("public_listn"),
        "{}",
        text(&out.stderr)
    );
}

/// Reads stderr lines until one says where the internal listener is.
fn internal_address(
    stderr: impl std::io::Read,
) -> (String, std::io::BufReader<impl std::io::Read>) {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).expect("stderr") > 0,
            "serve exited early"
        );
        if let Some(at) = line.find("internal=") {
            let rest = &line[at + "internal=".len()..];
            let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
            return (addr, reader);
        }
    }
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
}

#[test]
fn serve_answers_health_checks_and_healthcheck_creates_its_files_private_refuses_a_second_serve_and_exits_0_on_sigterm()
 {
    let env = Env::new();
    let mut child = env
        .command(&["serve"])
        .env("WXTOKEN_SERVER__PUBLIC_LISTEN", "127.0.0.1:0")
        .env("WXTOKEN_SERVER__INTERNAL_LISTEN", "127.0.0.1:0")
        .env("WXTOKEN_SERVER__GATEWAY_LISTEN", "127.0.0.1:0")
        .env("WXTOKEN_LOG__LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let (internal, _stderr) = internal_address(child.stderr.take().expect("stderr"));
    let health = http_get(&internal, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // The container health check: 0 for this server, 1 with the cause for a closed port.
    let check = env.run(
        &[
            "healthcheck",
            "--url",
            &format!("http://{internal}/healthz"),
        ],
        None,
    );
    assert!(check.status.success(), "{}", text(&check.stderr));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let check = env.run(
        &["healthcheck", "--url", &format!("http://{closed}/healthz")],
        None,
    );
    assert_eq!(check.status.code(), Some(1));
    assert_eq!(
        text(&check.stderr).trim(),
        format!("wxtoken: GET http://{closed}/healthz: Connection refused (os error 111)")
    );
    let unauthenticated = http_get(&internal, "/v1/tokens/wxauthorizer00001");
    assert!(
        unauthenticated.starts_with("HTTP/1.1 401"),
        "{unauthenticated}"
    );
    // The database and its -wal and -shm, whatever the umask of whoever started the server.
    let mut created = Vec::new();
    for entry in std::fs::read_dir(env.dir.path()).expect("dir") {
        use std::os::unix::fs::PermissionsExt;
        let entry = entry.expect("entry");
        let mode = entry.metadata().expect("metadata").permissions().mode() & 0o777;
        let name = entry.file_name().to_string_lossy().into_owned();
        assert_eq!(mode & 0o077, 0, "{name} is mode {mode:o}");
        created.push(name);
    }
    for name in ["wx.db", "wx.db-wal", "wx.db-shm", "wx.db.lock"] {
        assert!(created.iter().any(|c| c == name), "{name} in {created:?}");
    }
    // A second server on the same SQLite file would refresh beside the first: refused, naming it.
    let second = env
        .command(&["serve"])
        .env("WXTOKEN_SERVER__PUBLIC_LISTEN", "127.0.0.1:0")
        .env("WXTOKEN_SERVER__INTERNAL_LISTEN", "127.0.0.1:0")
        .env("WXTOKEN_SERVER__GATEWAY_LISTEN", "127.0.0.1:0")
        .output()
        .expect("second serve runs");
    assert!(
        !second.status.success(),
        "a second serve on one SQLite file"
    );
    let message = text(&second.stderr);
    assert!(
        message.contains("already serves")
            && message.contains(&format!("pid {} on ", child.id()))
            && message.contains(" since "),
        "{message}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("serve exits");
    assert!(exit.success(), "serve exited with {exit:?} on SIGTERM");
}

#[test]
fn demo_runs_with_no_arguments_beyond_free_ports_and_shows_how_to_read_a_token() {
    let env = Env::new();
    let out = env.run(
        &[
            "demo",
            "--public-listen",
            "127.0.0.1:0",
            "--internal-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
            "--run-for",
            "1s",
        ],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let first_screen: Vec<&str> = stdout.lines().take(20).collect();
    assert!(
        first_screen
            .iter()
            .any(|l| l.contains("curl -s -H \"Authorization: Bearer $K\" $U/v1/tokens/$A")),
        "{stdout}"
    );
    assert!(stdout.contains("/invalidate"), "{stdout}");
    assert!(env.path("demo-data").join("wxtoken.db").exists());
}

/// The commands the demo prints are run as printed, after the demo has refreshed: they read the
/// current token and generation first, so they keep working (they once carried generation 1's
/// token and `after=1`).
#[test]
fn the_commands_the_demo_prints_work_as_printed_after_refreshes() {
    use std::io::BufRead;
    let env = Env::new();
    let mut demo = env
        .command(&[
            "demo",
            "--public-listen",
            "127.0.0.1:0",
            "--internal-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
            "--token-lifetime",
            "20s",
            "--run-for",
            "120s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the demo");
    let mut lines = std::io::BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let mut script = String::new();
    let mut in_script = false;
    let mut dashboard = None;
    for line in lines.by_ref() {
        let line = line.expect("demo output");
        if line.starts_with("  K=") {
            in_script = true;
        }
        if in_script {
            if line.trim().is_empty() {
                break;
            }
            script.push_str(line.trim_start());
            script.push('\n');
        }
    }
    // The dashboard's sign-in link is printed after the script.
    for line in lines.by_ref() {
        let line = line.expect("demo output");
        if let Some(link) = line.trim().strip_prefix("dashboard") {
            dashboard = link.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    // The dashboard link signs a browser in once: a session cookie and on to the overview.
    let link = dashboard.expect("the demo prints the dashboard's sign-in link");
    assert!(link.contains("/ui/login/once?token="), "{link}");
    let signed_in = |link: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-D", "-", link])
            .output()
            .expect("curl runs");
        text(&out.stdout)
    };
    let first_use = signed_in(&link);
    assert!(first_use.starts_with("HTTP/1.1 303"), "{first_use}");
    assert!(first_use.contains("wxtoken_ui="), "{first_use}");
    assert!(
        signed_in(&link).starts_with("HTTP/1.1 401"),
        "the link works once"
    );
    // Wait (on the demo's own output, no sleep) until it has refreshed once: the first token
    // the script reads is then not generation 1.
    for line in lines.by_ref() {
        if line.expect("demo output").contains(" generation 2 from ") {
            break;
        }
    }
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("bash runs");
    let _ = demo.kill();
    let _ = demo.wait();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{script}\n{stdout}\n{}",
        text(&out.stderr)
    );
    let answers: Vec<&str> = stdout.lines().collect();
    assert_eq!(answers.len(), 5, "{stdout}");
    let generation = |json: &str| -> u64 {
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        v["generation"].as_u64().expect("generation")
    };
    let first = generation(answers[0]);
    assert!(first >= 2, "the demo had refreshed: {stdout}");
    assert!(answers[1].contains("retired_series"), "{stdout}");
    assert!(
        answers[2].contains("40001"),
        "WeChat refuses the retired token: {stdout}"
    );
    let reported = generation(answers[3]);
    assert!(reported > first, "the report got a new token: {stdout}");
    assert!(
        generation(answers[4]) > reported,
        "the long-poll answered the next one: {stdout}"
    );
}

/// `wxtoken … | head` closes stdout early: the command stops quietly and exits 0 (no panic, no
/// "Broken pipe" message). The pipe's reading end is closed before the command starts, so every
/// write of it fails.
#[test]
fn listing_commands_exit_0_without_a_message_when_stdout_is_closed() {
    let env = Env::new();
    env.import(
        "appid,refresh_token,kind\nwxauthorizer00001,refreshtoken@@@SECRET-ONE,official_account\n",
    );
    env.ok(&["clients", "add", "svc", "--appid", "*"]);
    let commands: &[&[&str]] = &[
        &["authorizers", "list"],
        &["authorizers", "show", "wxauthorizer00001"],
        &["clients", "list"],
        &["accounts", "list", "--component", COMPONENT],
        &["gateway", "stats"],
        &["completions", "bash"],
        &["man"],
        &["serve", "--print-config"],
        &[
            "demo",
            "--public-listen",
            "127.0.0.1:0",
            "--internal-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
            "--run-for",
            "60s",
        ],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = env
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .expect("runs");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "wxtoken {args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "wxtoken {args:?}: {stderr}"
        );
    }
}

/// Each start-up error states its cause once and names the file, directory, host or key involved.
#[test]
fn start_up_errors_name_their_cause_once() {
    let env = Env::new();
    let dir = env.dir.path().display().to_string();
    let last_line = |out: &Output| -> String {
        assert!(!out.status.success());
        text(&out.stderr)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    };

    let out = env.run(&["authorizers", "list", "--config", "missing.toml"], None);
    assert_eq!(
        last_line(&out),
        "wxtoken: cannot read config file missing.toml: No such file or directory (os error 2)"
    );

    write(&env.path("bad.toml"), "[log]\nlevel = \"info\"\n[server\n");
    let out = env.run(&["authorizers", "list", "--config", "bad.toml"], None);
    assert_eq!(
        last_line(&out),
        "wxtoken: config file bad.toml is not valid TOML at line 3, column 8: unclosed table, expected `]`"
    );

    let out = env.run(
        &[
            "authorizers",
            "list",
            "--storage-url",
            &format!("sqlite://{dir}/nowhere/wx.db"),
        ],
        None,
    );
    assert_eq!(
        last_line(&out),
        format!(
            "wxtoken: cannot open the SQLite database {dir}/nowhere/wx.db: the directory {dir}/nowhere does not exist"
        )
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let out = env.run(
        &[
            "authorizers",
            "list",
            "--storage-url",
            &format!("postgres://postgres@127.0.0.1:{port}/wx"),
        ],
        None,
    );
    assert_eq!(
        last_line(&out),
        format!(
            "wxtoken: cannot open PostgreSQL at 127.0.0.1:{port} (database wx): Connection refused (os error 111)"
        )
    );

    write(&env.path("empty.key"), "\n");
    let out = env
        .command(&["authorizers", "list"])
        .env_remove("WXTOKEN_MASTER_KEY")
        .env("WXTOKEN_SECURITY__MASTER_KEY_FILE", env.path("empty.key"))
        .output()
        .expect("runs");
    assert_eq!(
        last_line(&out),
        format!(
            "wxtoken: loading the master key (WXTOKEN_MASTER_KEY or security.master_key_file): the master key file {dir}/empty.key holds no key (one base64 or hex key per line)"
        )
    );
}

/// A client's key rotated with a grace: the new key is printed once, the listing names the
/// previous key until its end; a revoked client's name can be given to a new client.
#[test]
fn clients_rotate_with_grace_and_a_revoked_name_is_reused() {
    let env = Env::new();
    let first = env.ok(&["clients", "add", "svc", "--appid", "*"]);
    let rotated = env.run(&["clients", "rotate", "svc", "--grace", "1h"], None);
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    let second = text(&rotated.stdout);
    assert!(second.trim().starts_with("wxt_") && second.trim() != first.trim());
    assert!(
        text(&rotated.stderr).contains(&format!("the previous key ({}…) works until", &first[..8])),
        "{}",
        text(&rotated.stderr)
    );
    let list = env.ok(&["clients", "list"]);
    assert!(
        list.contains(&format!("previous key {}…", &first[..8])),
        "{list}"
    );
    assert!(
        !list.contains(first.trim()) && !list.contains(second.trim()),
        "hints only"
    );

    let taken = env.run(&["clients", "add", "svc", "--appid", "*"], None);
    assert_eq!(
        text(&taken.stderr).trim(),
        "wxtoken: a client named svc already exists (revoke it first to reuse the name)"
    );
    let too_long = env.run(&["clients", "rotate", "svc", "--grace", "31d"], None);
    assert_eq!(
        text(&too_long.stderr).trim(),
        "wxtoken: the grace period is at most 30days"
    );
    let unknown = env.run(&["clients", "rotate", "nobody"], None);
    assert_eq!(
        text(&unknown.stderr).trim(),
        "wxtoken: no active client named nobody"
    );

    env.ok(&["clients", "revoke", "svc"]);
    let third = env.ok(&["clients", "add", "svc", "--appid", "wxauthorizer00001"]);
    assert!(third.trim().starts_with("wxt_"));
    let list = env.ok(&["clients", "list"]);
    assert_eq!(
        list.lines().filter(|l| l.starts_with("svc ")).count(),
        2,
        "{list}"
    );
}

/// The fenced blocks of docs/SIMULATOR.md's section `heading`, in order: (language, text).
fn doc_blocks(doc: &str, heading: &str) -> Vec<(String, String)> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("no section {heading}"));
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            blocks.push((lang.to_owned(), body.join("\n") + "\n"));
        }
    }
    blocks
}

/// A shell block of the recipe run by bash in `dir`, `wxtoken` being this build, in its own
/// process group (so the servers it starts are stopped with it).
fn recipe_shell(dir: &Path, script: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_wxtoken"))
        .parent()
        .expect("bin dir")
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("RUST_LOG")
        .process_group(0);
    for (var, _) in std::env::vars() {
        if var.starts_with("WXTOKEN_") {
            cmd.env_remove(var);
        }
    }
    cmd
}

struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{}", self.0.id()))
            .status();
        let _ = self.0.wait();
    }
}

/// docs/SIMULATOR.md's "Running `wxtoken serve` against it", followed literally (the simulator,
/// the config file, the key, serve, then the commands of the third terminal) with only the ports
/// changed to free ones: the last command prints a token the simulator issued.
#[test]
fn the_serve_against_sim_recipe_in_the_simulator_docs_works_as_written() {
    use std::io::BufRead;
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/SIMULATOR.md"),
    )
    .expect("docs/SIMULATOR.md");
    let blocks = doc_blocks(&doc, "Running `wxtoken serve` against it");
    let langs: Vec<&str> = blocks.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(langs, ["sh", "toml", "sh", "sh"], "the recipe's shape");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port()
            .to_string()
    };
    let ports: Vec<(&str, String)> = ["8080", "8081", "8082", "8090"]
        .into_iter()
        .map(|p| (p, free()))
        .collect();
    let literal = |text: &str| {
        ports.iter().fold(text.to_owned(), |t, (from, to)| {
            t.replace(&format!(":{from}"), &format!(":{to}"))
        })
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sim_url = format!("http://127.0.0.1:{}", ports[3].1);

    let mut sim = recipe_shell(dir.path(), &literal(&blocks[0].1));
    let mut sim = Group(
        sim.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sim"),
    );
    let mut out = std::io::BufReader::new(sim.0.stdout.take().expect("stdout")).lines();
    assert!(
        out.by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("WeChat simulator listening on")),
        "the simulator started"
    );

    let config = &blocks[1].1;
    assert!(
        doc.contains("`wxtoken-sim.toml`:"),
        "the config file's name"
    );
    write(&dir.path().join("wxtoken-sim.toml"), &literal(config));

    let mut serve = recipe_shell(dir.path(), &literal(&blocks[2].1));
    let mut serve = Group(
        serve
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve"),
    );
    let (internal, _log) = internal_address(serve.0.stderr.take().expect("stderr"));
    assert_eq!(internal, format!("127.0.0.1:{}", ports[1].1));

    eprintln!("serve is up at {internal}; running the third terminal's commands");
    let used = recipe_shell(dir.path(), &literal(&blocks[3].1))
        .stdin(Stdio::null())
        .output()
        .expect("the third terminal's commands run");
    let stdout = text(&used.stdout);
    assert!(used.status.success(), "{stdout}\n{}", text(&used.stderr));
    let token: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a token")).expect("json");
    let access_token = token["access_token"].as_str().expect("access_token");
    assert_eq!(token["source"], "api_query_auth", "{token}");
    let valid = http_get(
        &sim_url["http://".len()..],
        &format!("/_sim/validate?access_token={access_token}"),
    );
    assert!(valid.contains("\"valid\":true"), "{valid}");
    drop(serve);
    drop(sim);
}

/// `wxtoken completions SHELL` prints a script for each shell (bash's parses), `wxtoken man`
/// prints the page and `--dir` writes one per command; `--version` names the commit.
#[test]
fn completions_man_pages_and_version_are_generated() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let script = env.ok(&["completions", shell]);
        assert!(
            script.contains("wxtoken") && script.contains("authorizers"),
            "{shell}"
        );
    }
    let bash = env.path("wxtoken.bash");
    write(&bash, &env.ok(&["completions", "bash"]));
    let parsed = Command::new("bash")
        .arg("-n")
        .arg(&bash)
        .status()
        .expect("bash");
    assert!(parsed.success(), "the bash completion script parses");

    let page = env.ok(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH wxtoken 1"),
        "{page}"
    );
    assert!(page.contains("serve"), "the page lists the commands");
    let out = env.run(&["man", "--dir", "man1"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for page in ["wxtoken.1", "wxtoken-serve.1", "wxtoken-clients-rotate.1"] {
        assert!(env.path("man1").join(page).is_file(), "{page}");
    }

    let version = env.ok(&["--version"]);
    assert!(
        version.starts_with(&format!("wxtoken {} (commit ", env!("CARGO_PKG_VERSION")))
            && version.contains(", built "),
        "{version}"
    );
}
