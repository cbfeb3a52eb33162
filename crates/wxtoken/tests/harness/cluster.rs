//! Real `wxtoken serve` processes for the multi-process tests: a temp directory holding the
//! config file, a master key, and replicas started, killed (SIGKILL) and stopped (SIGTERM).
//! Each caller renders its own config: this module only runs processes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use parking_lot::Mutex;

/// One `wxtoken serve` process and where it listens.
pub struct Replica {
    pub child: Child,
    pub public: String,
    pub internal: String,
}

/// A replica still running when its test ends (a failed assertion, a panic) is killed, so no
/// `serve` outlives its test and loads the machine under the next one.
impl Drop for Replica {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Replica {
    /// `kill -9`, and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    /// SIGTERM (a graceful stop); [`Replica::wait`] reaps it.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    pub fn wait(&mut self) {
        let _ = self.child.wait();
    }
}

/// Where the processes' config lives, and the master key they run with.
pub struct Cluster {
    pub bin: &'static str,
    pub dir: tempfile::TempDir,
    pub key: String,
}

impl Cluster {
    pub fn new(key: String) -> Cluster {
        Cluster {
            bin: env!("CARGO_BIN_EXE_wxtoken"),
            dir: tempfile::tempdir().expect("tempdir"),
            key,
        }
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("wxtoken.toml")
    }

    pub fn write_config(&self, toml: &str) {
        std::fs::write(self.config_path(), toml).expect("write config");
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin);
        cmd.args(args)
            .env_remove("WXTOKEN_MASTER_KEY_OLD")
            .env_remove("RUST_LOG")
            .env("WXTOKEN_CONFIG", self.config_path())
            .env("WXTOKEN_MASTER_KEY", &self.key)
            .current_dir(self.dir.path());
        cmd
    }

    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run wxtoken");
        assert!(
            out.status.success(),
            "wxtoken {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `serve` and waits for its "wxtoken is serving" line. Its stderr is then drained
    /// (and kept in `logs`) by a thread, so the process never blocks on a full pipe.
    pub fn start(&self, logs: &Arc<Mutex<Vec<String>>>) -> Replica {
        let mut child = self
            .command(&["serve"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let mut reader = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        let mut own = Vec::new();
        let (public, internal) = loop {
            line.clear();
            let n = reader.read_line(&mut line).expect("read stderr");
            assert!(
                n > 0,
                "serve exited before serving ({:?}):\n{}",
                child.try_wait(),
                own.concat()
            );
            own.push(line.clone());
            logs.lock().push(line.clone());
            if line.contains("wxtoken is serving") {
                break (field(&line, "public="), field(&line, "internal="));
            }
        };
        let logs = Arc::clone(logs);
        std::thread::spawn(move || {
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                logs.lock().push(std::mem::take(&mut line));
            }
        });
        Replica {
            child,
            public,
            internal,
        }
    }
}

fn field(line: &str, name: &str) -> String {
    let at = line
        .find(name)
        .unwrap_or_else(|| panic!("{name} in {line}"))
        + name.len();
    line[at..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect()
}

/// The `serve` config the multi-process tests run with: one component, the database, the
/// simulator, short refresh settings, and what each test varies.
pub struct ServeConfig<'a> {
    pub component: &'a str,
    pub component_secret: &'a str,
    pub push_token: &'a str,
    pub aes_key: &'a str,
    pub db_url: &'a str,
    pub sim_url: &'a str,
    pub lease_ttl: &'a str,
    pub upstream_timeout: &'a str,
}

impl ServeConfig<'_> {
    pub fn toml(&self) -> String {
        format!(
            r#"
[server]
public_listen = "127.0.0.1:0"
internal_listen = "127.0.0.1:0"
gateway_listen = "127.0.0.1:0"

[[components]]
appid = "{component}"
appsecret = "{secret}"
token = "{push_token}"
encoding_aes_key = "{aes_key}"

[storage]
url = "{db_url}"
max_connections = 8
connect_timeout = "2s"
lease_ttl = "{lease_ttl}"

[refresh]
serve_margin = "3s"
backoff_max = "2s"
# Scaled with the 20-second tokens these tests use (30 s against WeChat's 2 hours).
min_force_interval = "1s"

[upstream]
base_url = "{sim_url}"
timeout = "{timeout}"
connect_timeout = "1s"

[log]
level = "info"
"#,
            component = self.component,
            secret = self.component_secret,
            push_token = self.push_token,
            aes_key = self.aes_key,
            db_url = self.db_url,
            lease_ttl = self.lease_ttl,
            sim_url = self.sim_url,
            timeout = self.upstream_timeout,
        )
    }
}

/// A new master key, as `wxtoken keys generate` prints it.
pub fn generate_key() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wxtoken"))
        .args(["keys", "generate"])
        .output()
        .expect("keys generate");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
