//! Abuse resistance, black box: chat API keys and their namespaces, rate limits, the cost of
//! failed authentications, unsigned Feishu accounts, stranded inbox rows, expiring Telegram
//! de-dup keys.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Daemon;
use common::telegram_fake::{FakeTelegram, TOKEN, private_text};
use serde_json::json;
use sha2::Digest;

const SECRET: &str = "s3cret-Token_1";

fn sha(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

fn storage(dir: &Path) -> String {
    format!("[storage]\npath = \"{}\"\nnode_id = \"abuse-node\"\n", dir.join("sb.db").display())
}

fn sql(db: &Path, statement: &str) -> String {
    let script = "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nrows=c.execute(sys.argv[2]).fetchall()\nc.commit()\nprint('\\n'.join(str(r[0]) for r in rows))";
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(db).arg(statement).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn chat_as(d: &Daemon, key: Option<&str>, body: serde_json::Value) -> reqwest::Response {
    let mut req = d.client.post(d.url("/api/v1/chat")).json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_api_needs_a_key_and_keys_do_not_share_conversations() {
    let keys = format!(
        "[[api.keys]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n\n[[api.keys]]\nname = \"bob\"\nkey_sha256 = \"{}\"\nrate_per_minute = 3\n",
        sha("alice-key"),
        sha("bob-key")
    );
    let d = Daemon::start_with_env(&keys, &[("SWITCHBOARD__API__ALLOW_ANONYMOUS", "false")]);
    d.wait_ready().await;
    let msg = |text: &str, id: &str| json!({"conversation": "c1", "user": "u", "text": text, "max_new_tokens": 2, "message_id": id});

    let anonymous = chat_as(&d, None, msg("hi", "a0")).await;
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(anonymous.json::<serde_json::Value>().await.unwrap()["error"]["code"], "unauthorized");
    assert_eq!(chat_as(&d, Some("nope"), msg("hi", "a0")).await.status(), 401);

    // Alice talks in c1 twice: her second turn carries her history.
    let first: serde_json::Value = chat_as(&d, Some("alice-key"), msg("the secret is 42", "m1")).await.json().await.unwrap();
    let second: serde_json::Value = chat_as(&d, Some("alice-key"), msg("hello", "m2")).await.json().await.unwrap();
    assert!(second["prompt_tokens"].as_u64() > first["prompt_tokens"].as_u64(), "{first} {second}");
    // Bob's c1 is his own: no history from Alice, and her message ids are not his.
    let bob = chat_as(&d, Some("bob-key"), msg("hello", "m2")).await;
    assert_eq!(bob.status(), 200, "Alice's message id does not collide with Bob's");
    let bob: serde_json::Value = bob.json().await.unwrap();
    let fresh = first["prompt_tokens"].as_u64().unwrap() - "the secret is 42".len() as u64;
    assert!(bob["prompt_tokens"].as_u64().unwrap() < second["prompt_tokens"].as_u64().unwrap(), "{bob} {second}");
    assert!(bob["prompt_tokens"].as_u64().unwrap() <= fresh + 10, "Bob's first turn has no history: {bob}");
    assert_eq!(chat_as(&d, Some("alice-key"), msg("again", "m1")).await.status(), 409, "Alice's own id is a duplicate");

    // Bob may send 3 a minute: the 4th is refused with a Retry-After.
    assert_eq!(chat_as(&d, Some("bob-key"), msg("two", "b2")).await.status(), 200);
    assert_eq!(chat_as(&d, Some("bob-key"), msg("three", "b3")).await.status(), 200);
    let limited = chat_as(&d, Some("bob-key"), msg("four", "b4")).await;
    assert_eq!(limited.status(), 429);
    let wait: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&wait), "retry after {wait} s");
    assert_eq!(limited.json::<serde_json::Value>().await.unwrap()["error"]["code"], "rate_limited");
    assert_eq!(d.metric("switchboard_rate_limited_total{platform=\"http\",reason=\"api_key\"}").await, 1.0);
    assert!(d.metric("switchboard_auth_failures_total{surface=\"api\",reason=\"missing_key\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_webhook_requests_is_counted_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start().await;
    let bot = format!(
        "[[telegram]]\naccount = \"main\"\ntoken = \"{TOKEN}\"\nmode = \"webhook\"\nsecret_token = \"{SECRET}\"\napi_base = \"{}\"\n",
        fake.base()
    );
    let d = Daemon::start(&format!("{}{bot}", storage(dir.path())));
    d.wait_ready().await;
    let flood = (0..400).map(|i| {
        let (client, url) = (d.client.clone(), d.url(if i % 2 == 0 { "/webhook/telegram/main" } else { "/webhook/telegram/ghost" }));
        async move {
            let r =
                client.post(url).header("X-Telegram-Bot-Api-Secret-Token", "wrong").json(&private_text(1, 1, "x")).send().await.unwrap();
            r.status().as_u16()
        }
    });
    let statuses = futures::future::join_all(flood).await;
    assert!(statuses.iter().all(|s| *s == 401));
    // A valid update still goes through and is answered.
    let ok = d.client.post(d.url("/webhook/telegram/main")).header("X-Telegram-Bot-Api-Secret-Token", SECRET);
    assert_eq!(ok.json(&private_text(77, 8001, "still here")).send().await.unwrap().status(), 200);
    fake.wait_reply_to(770).await;
    assert_eq!(d.metric("switchboard_auth_failures_total{surface=\"webhook\",reason=\"bad_secret\"}").await, 200.0);
    assert_eq!(d.metric("switchboard_auth_failures_total{surface=\"webhook\",reason=\"unknown_account\"}").await, 200.0);
    // The audit log gets one record per source and reason (written off the request path), not 400.
    let count =
        || sql(&dir.path().join("sb.db"), "SELECT COUNT(*) FROM audit_log WHERE action = 'webhook.rejected'").parse::<usize>().unwrap();
    for _ in 0..100 {
        if count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = count();
    assert!((2..=4).contains(&rows), "{rows} audit rows for 400 failures");
}

#[test]
fn an_unsigned_feishu_account_is_refused_unless_opted_in() {
    let dir = tempfile::tempdir().unwrap();
    let check = |extra: &str| {
        let path = dir.path().join("c.toml");
        let app = "[[feishu]]\naccount = \"corp\"\napp_id = \"cli_1\"\napp_secret = \"s\"\nverification_token = \"v\"\n";
        std::fs::write(&path, format!("{app}{extra}")).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_switchboard")).args(["check-config", "--config"]).arg(&path).output().unwrap()
    };
    let refused = check("");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("`feishu[0].encrypt_key` is required"), "{refused:?}");
    assert!(check("allow_unsigned = true\n").status.success());
    assert!(check("encrypt_key = \"k\"\n").status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranded_inbox_row_is_answered_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with_env(&storage(dir.path()), &[("SWITCHBOARD__INBOX__SWEEP_INTERVAL_SECS", "1")]);
    d.wait_ready().await;
    // A pending row this node accepted and no session holds (as after a router restart).
    let db = dir.path().join("sb.db");
    sql(
        &db,
        "INSERT INTO inbox (platform, account, dedup_key, conversation, user_id, text, payload, status, attempts, node, created_ms, updated_ms) \
         VALUES ('http', 'api', NULL, 'http:stranded', 'u', 'hello', '{\"options\":{\"max_new_tokens\":2},\"reply_to\":{\"platform\":\"http\"}}', 'pending', 0, 'abuse-node', 0, 0)",
    );
    d.wait_metric("switchboard_inbox_swept_total", |v| v >= 1.0).await;
    for _ in 0..100 {
        if sql(&db, "SELECT status FROM inbox WHERE conversation = 'http:stranded'") == "done" {
            let answered = sql(&db, "SELECT COUNT(*) FROM messages WHERE conversation = 'http:stranded'");
            assert_eq!(answered, "2", "the turn pair was saved");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the stranded row was not answered; logs:\n{}", d.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_telegram_update_id_is_accepted_again_after_the_window() {
    let fake = FakeTelegram::start().await;
    let bot = format!(
        "[[telegram]]\naccount = \"main\"\ntoken = \"{TOKEN}\"\nmode = \"webhook\"\nsecret_token = \"{SECRET}\"\napi_base = \"{}\"\n",
        fake.base()
    );
    let env = [("SWITCHBOARD__INBOX__SWEEP_INTERVAL_SECS", "1"), ("SWITCHBOARD__INBOX__TELEGRAM_DEDUP_WINDOW_SECS", "2")];
    let d = Daemon::start_with_env(&bot, &env);
    d.wait_ready().await;
    let post = |update: serde_json::Value| {
        let req = d.client.post(d.url("/webhook/telegram/main")).header("X-Telegram-Bot-Api-Secret-Token", SECRET).json(&update);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(private_text(900, 8100, "first life")).await, 200);
    fake.wait_reply_to(9000).await;
    assert_eq!(post(private_text(900, 8100, "a re-delivery")).await, 200);
    assert_eq!(post(private_text(901, 8100, "sentinel")).await, 200);
    fake.wait_reply_to(9010).await;
    assert_eq!(fake.replies_to(9000).len(), 1, "within the window the id is a duplicate");
    // After the window (2 s) and a sweep (every 1 s), Telegram may reuse the id.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(post(private_text(900, 8100, "second life")).await, 200);
    for _ in 0..300 {
        if fake.replies_to(9000).len() == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the reused update id was not answered: {:?}", fake.calls("sendMessage"));
}
