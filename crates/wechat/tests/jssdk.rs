//! The JS-SDK signatures against an independent implementation: wechatpy's
//! `WeChatJSAPI.get_jsapi_signature` for `wx.config`, and its `WeChatSigner` (sorted values, SHA-1)
//! for `cardExt`, on random inputs (tests/wechatpy/jssdk.py).
//!
//! The interpreter is `WXTOKEN_TEST_PYTHON` (a venv with wechatpy installed; see docs/SIMULATOR.md).
//! Without it the test is skipped with a notice, except under `CI=true`, where it fails.

use std::io::Write;
use std::process::{Command, Stdio};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use wechat::jssdk::{CardExtFields, card_ext_signature, config_signature, signed_url};

#[derive(Debug)]
struct Case {
    ticket: String,
    noncestr: String,
    timestamp: i64,
    url: String,
    card: [String; 4],
    code: Option<String>,
    openid: Option<String>,
    balance: Option<String>,
}

fn case() -> impl Strategy<Value = Case> {
    let text = "[A-Za-z0-9_-]{1,40}";
    (
        (text, "[A-Za-z0-9]{1,32}", 0i64..4_000_000_000),
        "https?://[a-z]{1,12}\\.example\\.com(/[a-zA-Z0-9%._~-]{0,12}){0,3}(\\?[a-z]{1,5}=[A-Za-z0-9%]{0,8}(&[a-z]{1,5}=[A-Za-z0-9%]{0,8}){0,2})?(#[a-zA-Z0-9/!?=]{0,10})?",
        [text, "[0-9]{10}", text, "[A-Za-z0-9]{1,32}"],
        (
            proptest::option::of("[0-9]{1,12}"),
            proptest::option::of("o[A-Za-z0-9_-]{27}"),
            proptest::option::of("[0-9]{1,6}"),
        ),
    )
        .prop_map(
            |((ticket, noncestr, timestamp), url, card, (code, openid, balance))| Case {
                ticket,
                noncestr,
                timestamp,
                url,
                card,
                code,
                openid,
                balance,
            },
        )
}

#[test]
fn signatures_agree_with_wechatpy_on_random_inputs() {
    let Some(python) = std::env::var_os("WXTOKEN_TEST_PYTHON").filter(|p| !p.is_empty()) else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("WXTOKEN_TEST_PYTHON must name a Python with wechatpy installed when CI=true");
        }
        println!(
            "SKIPPED signatures_agree_with_wechatpy_on_random_inputs: WXTOKEN_TEST_PYTHON is not set"
        );
        return;
    };
    let mut runner = TestRunner::deterministic();
    let cases: Vec<Case> = (0..500)
        .map(|_| case().new_tree(&mut runner).expect("a case").current())
        .collect();
    let mut input = String::new();
    for c in &cases {
        let mut values: Vec<&str> = c.card.iter().map(String::as_str).collect();
        values.extend(
            [&c.code, &c.openid, &c.balance]
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
        input.push_str(
            &serde_json::json!({
                "ticket": c.ticket,
                "noncestr": c.noncestr,
                "timestamp": c.timestamp,
                // wechatpy signs what it is given: the page URL without its fragment.
                "url": signed_url(&c.url),
                "card_values": values,
            })
            .to_string(),
        );
        input.push('\n');
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/wechatpy/jssdk.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the Python interpreter runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("cases written");
    let output = child.wait_with_output().expect("wechatpy finishes");
    assert!(
        output.status.success(),
        "wechatpy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers = String::from_utf8(output.stdout).expect("utf-8");
    let answers: Vec<&str> = answers.lines().collect();
    assert_eq!(answers.len(), cases.len());
    for (c, answer) in cases.iter().zip(answers) {
        let (config, card) = answer.split_once(' ').expect("two signatures");
        assert_eq!(
            config_signature(&c.ticket, &c.noncestr, c.timestamp, &c.url),
            config,
            "wx.config signature of {c:?}"
        );
        let fields = CardExtFields {
            api_ticket: &c.card[0],
            timestamp: &c.card[1],
            card_id: &c.card[2],
            nonce_str: &c.card[3],
            code: c.code.as_deref(),
            openid: c.openid.as_deref(),
            balance: c.balance.as_deref(),
        };
        assert_eq!(
            card_ext_signature(&fields),
            card,
            "cardExt signature of {c:?}"
        );
    }
}
