//! Black-box tests of conversations: durable inbox, replay after a crash, de-duplication,
//! dead letters, the admin API and its audit log, on SQLite and (when configured) PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use sha2::{Digest, Sha256};

fn token_config() -> String {
    let h = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    format!(
        "[[admin.tokens]]\nname = \"vera\"\nrole = \"viewer\"\ntoken_sha256 = \"{}\"\n\n[[admin.tokens]]\nname = \"otto\"\nrole = \"operator\"\ntoken_sha256 = \"{}\"\n\n[[admin.tokens]]\nname = \"ada\"\nrole = \"admin\"\ntoken_sha256 = \"{}\"\n",
        h("viewer-token"),
        h("operator-token"),
        h("admin-token")
    )
}

async fn admin(d: &Daemon, method: reqwest::Method, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = d.client.request(method, d.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Polls the admin messages endpoint until the conversation has `n` messages.
async fn wait_messages(d: &Daemon, key: &str, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, b) =
            admin(d, reqwest::Method::GET, &format!("/admin/v1/conversations/{}/messages", urlencode(key)), Some("viewer-token")).await;
        if s == 200 && b["messages"].as_array().map(|a| a.len()) >= Some(n) {
            return b;
        }
        assert!(Instant::now() < deadline, "conversation {key} never reached {n} messages: {s} {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn storage(dir: &std::path::Path) -> String {
    format!("[storage]\npath = \"{}\"\nnode_id = \"test-node\"\n", dir.join("db/switchboard.db").display())
}

#[tokio::test]
async fn admin_api_needs_tokens_and_roles_and_audits_everything() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&format!("{}{}", storage(dir.path()), token_config()));
    d.wait_ready().await;
    let (s, _) = d.chat("a1", "hello admin").await;
    assert_eq!(s, 200);

    // No token, wrong token: 401 with a JSON body.
    let (s, b) = admin(&d, reqwest::Method::GET, "/admin/v1/conversations", None).await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(b["error"]["code"], "unauthorized");
    let (s, _) = admin(&d, reqwest::Method::GET, "/admin/v1/conversations", Some("nope")).await;
    assert_eq!(s, 401);
    // The hash from the config is not a token.
    let (s, _) = admin(&d, reqwest::Method::GET, "/admin/v1/conversations", Some(&hex::encode(Sha256::digest(b"viewer-token")))).await;
    assert_eq!(s, 401);

    // Viewer can read.
    let (s, b) = admin(&d, reqwest::Method::GET, "/admin/v1/conversations?platform=http&limit=10", Some("viewer-token")).await;
    assert_eq!(s, 200, "{b}");
    let convs = b["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0]["key"], "http:a1");
    assert_eq!(convs[0]["messages"], 2);
    let (s, b) = admin(&d, reqwest::Method::GET, "/admin/v1/conversations?platform=telegram", Some("viewer-token")).await;
    assert_eq!((s, b["conversations"].as_array().unwrap().len()), (200, 0));
    let (s, _) = admin(&d, reqwest::Method::GET, "/admin/v1/conversations?limit=0", Some("viewer-token")).await;
    assert_eq!(s, 400);
    let b = wait_messages(&d, "http:a1", 2).await;
    assert_eq!(b["messages"][0]["role"], "user");
    assert_eq!(b["messages"][0]["content"], "hello admin");
    assert_eq!(b["messages"][1]["role"], "assistant");
    let (s, _) = admin(&d, reqwest::Method::GET, "/admin/v1/conversations/http%3Anope/messages", Some("viewer-token")).await;
    assert_eq!(s, 404);
    let (s, b) = admin(&d, reqwest::Method::GET, "/admin/v1/dead-letters", Some("viewer-token")).await;
    assert_eq!(s, 200);
    assert_eq!(b["dead_letters"].as_array().unwrap().len(), 0);

    // Viewer may not replay or erase; operator may not erase.
    let (s, b) = admin(&d, reqwest::Method::POST, "/admin/v1/dead-letters/1/replay", Some("viewer-token")).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"]["code"], "forbidden");
    let (s, _) = admin(&d, reqwest::Method::DELETE, "/admin/v1/conversations/http%3Aa1", Some("operator-token")).await;
    assert_eq!(s, 403);
    let (s, _) = admin(&d, reqwest::Method::POST, "/admin/v1/dead-letters/12345/replay", Some("operator-token")).await;
    assert_eq!(s, 404);

    // Admin erases the conversation (data-subject request).
    let (s, b) = admin(&d, reqwest::Method::DELETE, "/admin/v1/conversations/http%3Aa1", Some("admin-token")).await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = admin(&d, reqwest::Method::GET, "/admin/v1/conversations/http%3Aa1/messages", Some("viewer-token")).await;
    assert_eq!(s, 404);
    // The live session forgot it too: the next message starts from nothing.
    let (s, b) = d.chat("a1", "hello admin").await;
    assert_eq!(s, 200);
    let fresh_prompt = b["prompt_tokens"].as_u64().unwrap();
    let (_, b2) = d.chat("fresh", "hello admin").await;
    assert_eq!(b2["prompt_tokens"].as_u64().unwrap(), fresh_prompt);

    // Every admin action is in the tamper-evident audit log.
    drop(d);
    let cfg_path = dir.path().join("verify.toml");
    std::fs::write(&cfg_path, storage(dir.path())).unwrap();
    let bin = env!("CARGO_BIN_EXE_switchboard");
    let out = std::process::Command::new(bin).args(["audit", "verify", "--config"]).arg(&cfg_path).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let db = dir.path().join("db/switchboard.db");
    let conn = rusqlite_like_exec(&db, "SELECT actor || ' ' || action FROM audit_log ORDER BY id");
    for needle in [
        "anonymous admin.unauthorized",
        "vera admin.conversations.list",
        "vera admin.forbidden",
        "otto admin.forbidden",
        "ada admin.conversations.erase",
    ] {
        assert!(conn.contains(needle), "audit log lacks {needle:?}:\n{conn}");
    }
    // Editing a record breaks the chain.
    rusqlite_like_exec(&db, "UPDATE audit_log SET actor = 'mallory' WHERE action = 'admin.conversations.erase'");
    let out = std::process::Command::new(bin).args(["audit", "verify", "--config"]).arg(&cfg_path).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("TAMPERED"));
}

/// Runs SQL on an SQLite file with the Python standard library (no extra Rust dependency).
fn rusqlite_like_exec(db: &std::path::Path, sql: &str) -> String {
    let script = format!(
        "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nrows=c.execute(sys.argv[2]).fetchall()\nc.commit()\nprint('\\n'.join(str(r[0]) for r in rows))"
    );
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(db).arg(sql).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_messages_survive_a_crash_and_each_gets_exactly_one_reply_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("{}{}", storage(dir.path()), token_config());
    let d = Daemon::start(&cfg);
    d.wait_ready().await;
    let mut streams = Vec::new();
    for conv in ["crash-a", "crash-b", "crash-c"] {
        let resp = d
            .client
            .post(d.url("/api/v1/chat"))
            .json(&serde_json::json!({"conversation": conv, "user": "u", "text": format!("please survive {conv}"), "stream": true, "max_new_tokens": 400}))
            .send()
            .await
            .unwrap();
        streams.push(resp);
    }
    // Every message is accepted (stored) and being generated once its first delta arrives.
    for resp in streams.iter_mut() {
        let mut body = String::new();
        while !body.contains("event:delta") {
            let chunk = resp.chunk().await.unwrap().expect("stream");
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    // Kill -9 mid-generation: accepted but not answered.
    d.signal("KILL");
    drop(streams);
    drop(d);
    let d = Daemon::start(&cfg);
    d.wait_ready().await;
    for conv in ["crash-a", "crash-b", "crash-c"] {
        let b = wait_messages(&d, &format!("http:{conv}"), 2).await;
        assert_eq!(b["messages"][0]["content"], format!("please survive {conv}"));
        assert_eq!(b["messages"][1]["role"], "assistant");
    }
    d.wait_metric("switchboard_inbox_depth", |v| v == 0.0).await;
    // Sentinels: one more message per conversation, answered after everything replayed into it.
    // A second reply to the replayed message would have been stored before the sentinel.
    for conv in ["crash-a", "crash-b", "crash-c"] {
        let (s, b) = d.chat(conv, "sentinel").await;
        assert_eq!(s, 200, "{b}");
        let b = wait_messages(&d, &format!("http:{conv}"), 4).await;
        let messages = b["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 4, "exactly one reply for {conv}, then the sentinel's exchange: {b}");
        let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["user", "assistant"].repeat(2), "{b}");
        assert_eq!(messages[0]["content"], format!("please survive {conv}"));
        assert_eq!(messages[2]["content"], "sentinel");
    }
    assert!(d.log_text().contains("Replaying messages accepted before the last stop."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_conversation_is_handled_in_order_and_different_ones_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&format!("{}{}[inference]\nmax_wait_ms = 50\n", storage(dir.path()), token_config()));
    d.wait_ready().await;
    // Five messages at once to one conversation: answered one after the other, each seeing
    // the previous exchanges (so every prompt is longer than the one before).
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (client, url) = (d.client.clone(), d.url("/api/v1/chat"));
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&serde_json::json!({"conversation": "order", "user": "u", "text": format!("message {i}")}))
                .send()
                .await
                .unwrap();
            r.json::<serde_json::Value>().await.unwrap()
        }));
    }
    let mut prompts = Vec::new();
    for t in tasks {
        prompts.push(t.await.unwrap()["prompt_tokens"].as_u64().unwrap());
    }
    prompts.sort();
    prompts.dedup();
    assert_eq!(prompts.len(), 5, "each message saw a different history: {prompts:?}");
    let b = wait_messages(&d, "http:order", 10).await;
    let roles: Vec<&str> = b["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant"].repeat(5), "every question is followed by its own answer");

    // Different conversations run in parallel: their sequences share decode steps.
    let before_sum = d.metric("switchboard_inference_batch_size_sum{phase=\"decode\"}").await;
    let before_count = d.metric("switchboard_inference_batch_size_count{phase=\"decode\"}").await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (client, url) = (d.client.clone(), d.url("/api/v1/chat"));
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&serde_json::json!({"conversation": format!("par-{i}"), "user": "u", "text": "hello", "max_new_tokens": 64}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let sum = d.metric("switchboard_inference_batch_size_sum{phase=\"decode\"}").await - before_sum;
    let count = d.metric("switchboard_inference_batch_size_count{phase=\"decode\"}").await - before_count;
    assert!(sum / count > 1.5, "four conversations should share decode steps (mean batch {})", sum / count);
}

#[tokio::test]
async fn duplicate_message_ids_are_answered_once_even_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = storage(dir.path());
    let d = Daemon::start(&cfg);
    d.wait_ready().await;
    let body = serde_json::json!({"conversation": "dup", "user": "u", "text": "once", "message_id": "msg-1"});
    let (s, _) = d.post_json("/api/v1/chat", body.clone()).await;
    assert_eq!(s, 200);
    let (s, b) = d.post_json("/api/v1/chat", body.clone()).await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["error"]["code"], "duplicate");
    drop(d);
    let d = Daemon::start(&cfg);
    d.wait_ready().await;
    let (s, _) = d.post_json("/api/v1/chat", body).await;
    assert_eq!(s, 409);
    assert_eq!(d.metric("switchboard_inbox_duplicates_total").await, 1.0);
}

#[tokio::test]
async fn failing_message_is_retried_then_dead_lettered_with_an_apology_and_replayable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}{}[testing]\nfault_injection = true\n[inbox]\nmax_attempts = 2\nretry_backoff_ms = 50\napology = \"Sorry! Kept for a human.\"\n[supervision]\nmax_restarts = 50\nbackoff_initial_ms = 10\n",
        storage(dir.path()),
        token_config()
    );
    let d = Daemon::start(&cfg);
    d.wait_ready().await;
    let (s, b) = d.chat("dl", "!fault:worker-panic-always").await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "dead_lettered");
    assert!(b["error"]["message"].as_str().unwrap().starts_with("Sorry! Kept for a human."), "{b}");
    assert!(d.metric("switchboard_inbox_retries_total").await >= 1.0);
    d.wait_metric("switchboard_dead_letters", |v| v == 1.0).await;
    let (s, b) = admin(&d, reqwest::Method::GET, "/admin/v1/dead-letters", Some("viewer-token")).await;
    assert_eq!(s, 200);
    let letters = b["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["text"], "!fault:worker-panic-always");
    assert_eq!(letters[0]["attempts"], 2);
    assert!(letters[0]["error"].as_str().unwrap().contains("failed"), "{b}");
    // The conversation goes on.
    let (s, _) = d.chat("dl", "a normal message").await;
    assert_eq!(s, 200);
    // An operator replays it (it fails again here, by design of the fault, and comes back).
    let id = letters[0]["id"].as_i64().unwrap();
    let (s, b) = admin(&d, reqwest::Method::POST, &format!("/admin/v1/dead-letters/{id}/replay"), Some("operator-token")).await;
    assert_eq!(s, 202, "{b}");
    let (s, _) = admin(&d, reqwest::Method::POST, &format!("/admin/v1/dead-letters/{id}/replay"), Some("operator-token")).await;
    assert_eq!(s, 404, "a dead letter is replayed once");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, b) = admin(&d, reqwest::Method::GET, "/admin/v1/dead-letters", Some("viewer-token")).await;
        if b["dead_letters"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the replayed poison message should fail again into the queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn idle_sessions_stop_and_are_rebuilt_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&format!("{}[sessions]\nidle_timeout_secs = 1\n", storage(dir.path())));
    d.wait_ready().await;
    let (_, first) = d.chat("idle", "remember me").await;
    assert_eq!(d.metric("switchboard_sessions_active").await, 1.0);
    d.wait_metric("switchboard_sessions_active", |v| v == 0.0).await;
    let (s, second) = d.chat("idle", "do you?").await;
    assert_eq!(s, 200);
    // The rebuilt session still has the first exchange in its prompt.
    assert!(second["prompt_tokens"].as_u64().unwrap() > first["prompt_tokens"].as_u64().unwrap() + 5, "{first} {second}");
}

#[tokio::test]
async fn conversations_work_on_postgres() {
    let Some(url) = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("SWITCHBOARD_TEST_POSTGRES_URL not set; PostgreSQL daemon test skipped");
        return;
    };
    let schema = format!("daemon_{}", std::process::id());
    let cfg = format!("[storage]\nurl = \"{url}\"\nschema = \"{schema}\"\nnode_id = \"pg-node\"\n{}", token_config());
    let d = Daemon::start(&cfg);
    d.wait_ready().await;
    let (s, _) = d.chat("pg", "hello postgres").await;
    assert_eq!(s, 200);
    let (s, _) =
        d.post_json("/api/v1/chat", serde_json::json!({"conversation": "pg", "user": "u", "text": "x", "message_id": "pg-1"})).await;
    assert_eq!(s, 200);
    let (s, _) =
        d.post_json("/api/v1/chat", serde_json::json!({"conversation": "pg", "user": "u", "text": "x", "message_id": "pg-1"})).await;
    assert_eq!(s, 409);
    let b = wait_messages(&d, "http:pg", 4).await;
    assert_eq!(b["conversation"]["platform"], "http");
    let (s, _) = admin(&d, reqwest::Method::DELETE, "/admin/v1/conversations/http%3Apg", Some("admin-token")).await;
    assert_eq!(s, 200);
}
