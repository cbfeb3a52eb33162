//! An independent client library, wechatpy (Python), runs the whole third-party flow against the
//! simulator unmodified except for its API base URL (tests/wechatpy/flow.py).
//!
//! The interpreter is `WXTOKEN_TEST_PYTHON` (a venv with wechatpy installed; see docs/SIMULATOR.md).
//! Without it the test is skipped with a notice, except under `CI=true`, where it fails.

use std::process::Command;
use std::time::Duration;

use crate::helpers::TestSim;

#[tokio::test]
async fn wechatpy_runs_the_whole_third_party_flow_against_the_simulator() {
    let Some(python) = std::env::var_os("WXTOKEN_TEST_PYTHON").filter(|p| !p.is_empty()) else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("WXTOKEN_TEST_PYTHON must name a Python with wechatpy installed when CI=true");
        }
        println!(
            "SKIPPED wechatpy_runs_the_whole_third_party_flow_against_the_simulator: WXTOKEN_TEST_PYTHON is not set"
        );
        return;
    };
    let t = TestSim::with(|c| {
        c.push.backoff = Duration::from_millis(50);
        // The flow crosses two simulated hours and expects the timer ticket push on the way.
        c.ticket_interval = Duration::from_secs(600);
    })
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/wechatpy/flow.py");
    let base = t.sim.base_url().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("WXSIM_BASE_URL", base)
            .output()
    })
    .await
    .unwrap()
    .expect("the Python interpreter runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "flow.py failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all steps passed"));
}
