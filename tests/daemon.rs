//! Black-box tests of the daemon: the real binary, real ONNX Runtime, the tiny generated model.

mod common;

use std::time::Duration;

use common::{Daemon, parse_sse};

#[tokio::test]
async fn chat_gets_a_reply_from_the_model() {
    let d = Daemon::start("");
    d.wait_ready().await;
    let (status, body) = d.chat("c1", "Hello, who are you?").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body["reply"].as_str().unwrap().trim().is_empty(), "{body}");
    assert!(body["tokens"].as_u64().unwrap() > 0);
    assert_eq!(body["conversation"], "http:c1");
    assert!(body["latency_ms"].is_u64());
    // Continuity: the second turn's prompt includes the first exchange.
    let (_, second) = d.chat("c1", "And again?").await;
    assert!(second["prompt_tokens"].as_u64().unwrap() > body["prompt_tokens"].as_u64().unwrap() + 5, "{second}");
    // /reset starts over without the model.
    let (status, reset) = d.chat("c1", "/reset").await;
    assert_eq!(status, 200);
    assert_eq!(reset["tokens"], 0);
    let (_, third) = d.chat("c1", "Hello, who are you?").await;
    assert_eq!(third["prompt_tokens"], body["prompt_tokens"]);
}

#[tokio::test]
async fn health_readiness_and_json_errors() {
    let d = Daemon::start("");
    d.wait_ready().await;
    let r = d.client.get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Malformed JSON.
    let r = d.client.post(d.url("/api/v1/chat")).header("content-type", "application/json").body("{bad").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(body["error"]["message"].as_str().unwrap().contains("JSON"));

    // Missing field, unknown field, empty text.
    let (s, b) = d.post_json("/api/v1/chat", serde_json::json!({"conversation": "c", "user": "u"})).await;
    assert_eq!(s, 400);
    assert!(b["error"]["message"].as_str().unwrap().contains("text"), "{b}");
    let (s, _) = d.post_json("/api/v1/chat", serde_json::json!({"conversation": "c", "user": "u", "text": "x", "bogus": 1})).await;
    assert_eq!(s, 400);
    let (s, _) = d.post_json("/api/v1/chat", serde_json::json!({"conversation": "c", "user": "u", "text": "  "})).await;
    assert_eq!(s, 400);
    let (s, b) = d.post_json("/api/v1/chat", serde_json::json!({"conversation": "c", "user": "u", "text": "x", "temperature": -1})).await;
    assert_eq!(s, 400);
    assert!(b["error"]["message"].as_str().unwrap().contains("temperature"), "{b}");

    // Body over the limit (default 64 KiB).
    let big = serde_json::json!({"conversation": "c", "user": "u", "text": "x".repeat(70_000)});
    let (s, b) = d.post_json("/api/v1/chat", big).await;
    assert_eq!(s, 413);
    assert_eq!(b["error"]["code"], "payload_too_large");

    // Unknown route and wrong method. (A fresh client: after a 413 the server closes the
    // connection without reading the body, and a pooled connection may be the closed one.)
    let client = reqwest::Client::new();
    let r = client.get(d.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let r = client.get(d.url("/api/v1/chat")).send().await.unwrap();
    assert_eq!(r.status(), 405);

    // A message too long for the context window alone is a clear 400.
    let long = "word ".repeat(3000);
    let (s, b) = d.chat("c2", &long).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "message_too_long");

    // The daemon is still fine.
    let (s, _) = d.chat("c2", "still there?").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn metrics_change_after_a_request() {
    let d = Daemon::start("");
    d.wait_ready().await;
    let route = "switchboard_http_requests_total{route=\"/api/v1/chat\",status=\"200\"}";
    let before_req = d.metric(route).await;
    let before_tok = d.metric("switchboard_inference_tokens_total{kind=\"generated\"}").await;
    let (s, body) = d.chat("m1", "count me").await;
    assert_eq!(s, 200);
    let text = d.metrics().await;
    assert_eq!(common::sum_metric(&text, route), before_req + 1.0);
    assert_eq!(
        common::sum_metric(&text, "switchboard_inference_tokens_total{kind=\"generated\"}"),
        before_tok + body["tokens"].as_f64().unwrap()
    );
    // JSON logs: the message's log lines carry its conversation and inbox id (a span).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Some(l) = d.log_text().lines().find(|l| l.contains("Answered a message.")) {
            break l.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no info line for the answered message");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(v["span"]["conversation"].is_string() && v["span"]["inbox_id"].as_i64().unwrap() > 0, "{line}");
    for name in [
        "switchboard_reply_latency_seconds_bucket",
        "switchboard_inference_duration_seconds_count",
        "switchboard_inference_time_to_first_token_seconds_count",
        "switchboard_inference_batch_size_bucket",
        "switchboard_build_info",
        "switchboard_actor_mailbox_depth{actor=\"sessions.router\"}",
        "switchboard_actor_mailbox_depth{actor=\"inference.batcher\"}",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
}

#[tokio::test]
async fn streaming_sends_deltas_then_usage() {
    let d = Daemon::start("");
    d.wait_ready().await;
    let r = d
        .client
        .post(d.url("/api/v1/chat"))
        .json(&serde_json::json!({"conversation": "s1", "user": "u", "text": "Stream please 你好", "stream": true, "max_new_tokens": 20}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = parse_sse(&r.text().await.unwrap());
    let (last_event, last) = events.last().unwrap();
    assert_eq!(last_event, "done", "{events:?}");
    let deltas: String = events.iter().filter(|(e, _)| e == "delta").map(|(_, v)| v["text"].as_str().unwrap()).collect();
    assert!(events.iter().filter(|(e, _)| e == "delta").count() >= 2, "expected several deltas: {events:?}");
    assert_eq!(deltas, last["reply"].as_str().unwrap());
    assert_eq!(last["tokens"], 20);
}

#[tokio::test]
async fn failed_worker_is_restarted_and_its_request_retried() {
    let d = Daemon::start("[testing]\nfault_injection = true\n");
    d.wait_ready().await;
    let restarts = "switchboard_actor_restarts_total{actor=\"inference.worker.0\"}";
    assert_eq!(d.metric(restarts).await, 0.0);
    let (s, body) = d.chat("w1", "!fault:worker-panic").await;
    assert_eq!(s, 200, "the retry on the restarted worker should answer: {body}");
    assert!(!body["reply"].as_str().unwrap().is_empty());
    d.wait_metric(restarts, |v| v >= 1.0).await;
    let (s, _) = d.chat("w2", "and the next one?").await;
    assert_eq!(s, 200);
    assert!(d.log_text().contains("injected fault: worker panic"));
}

#[tokio::test]
async fn failed_session_is_restarted_and_the_next_message_answered() {
    let d = Daemon::start("[testing]\nfault_injection = true\n");
    d.wait_ready().await;
    let (s, b) = d.chat("p1", "!fault:session-panic").await;
    assert_eq!(s, 500, "{b}");
    assert_eq!(b["error"]["code"], "session_failed");
    d.wait_metric("switchboard_actor_restarts_total{actor=\"session\"}", |v| v >= 1.0).await;
    let (s, b) = d.chat("p1", "hello after the crash").await;
    assert_eq!(s, 200, "{b}");
    // The message that crashed the session is redelivered (it was accepted, so it is not
    // dropped); it crashes every new session too, so after `inbox.max_attempts` it ends in the
    // dead-letter queue instead of crashing sessions forever.
    d.wait_metric("switchboard_dead_letters", |v| v == 1.0).await;
    assert!(d.metric("switchboard_actor_restarts_total{actor=\"session\"}").await >= 3.0);
    let (s, _) = d.chat("p1", "and the conversation goes on").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn too_many_restarts_escalate_up_the_tree() {
    // One attempt per message: a poisonous message is dead-lettered instead of retried.
    let mut d = Daemon::start(
        "[testing]\nfault_injection = true\n[inbox]\nmax_attempts = 1\n[supervision]\nmax_restarts = 1\nrestart_window_secs = 60\nbackoff_initial_ms = 10\n",
    );
    d.wait_ready().await;
    // The worker fails twice for this request (first run and retry): more than 1 restart in
    // the window, so the inference supervisor gives up and the root restarts the subtree.
    let (s, b) = d.chat("e1", "!fault:worker-panic-always").await;
    assert!(s >= 500, "{s} {b}");
    d.wait_metric("switchboard_actor_restarts_total{actor=\"inference\"}", |v| v >= 1.0).await;
    d.wait_ready().await;
    let (s, b) = d.chat("e2", "the tree is back").await;
    assert_eq!(s, 200, "{b}");
    // Doing it again exceeds the root's own intensity: the daemon exits non-zero so that its
    // service manager restarts it.
    let _ = d.chat("e3", "!fault:worker-panic-always").await;
    let status = d.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1), "logs:\n{}", d.log_text());
    assert!(d.log_text().contains("too many restarts"));
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_then_exits_zero() {
    let mut d = Daemon::start("");
    d.wait_ready().await;
    let mut resp = d
        .client
        .post(d.url("/api/v1/chat"))
        .json(&serde_json::json!({"conversation": "t1", "user": "u", "text": "long answer", "stream": true, "max_new_tokens": 400}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Wait for the first delta: the request is now in flight.
    let mut body = String::new();
    while !body.contains("event:delta") {
        let chunk = resp.chunk().await.unwrap().expect("stream ended early");
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    d.signal("TERM");
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events = parse_sse(&body);
    let (last_event, last) = events.last().unwrap();
    assert_eq!(last_event, "done", "the in-flight request must be answered: {events:?}");
    assert_eq!(last["tokens"], 400);
    let status = d.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "logs:\n{}", d.log_text());
    // New connections are refused once it stopped.
    assert!(d.client.get(d.url("/healthz")).send().await.is_err());
}

#[tokio::test]
async fn check_config_validates_and_masks() {
    let bin = env!("CARGO_BIN_EXE_switchboard");
    let out = std::process::Command::new(bin)
        .args(["check-config", "--config"])
        .arg(common::root().join("config/switchboard.toml"))
        .env("SWITCHBOARD__INFERENCE__MAX_BATCH", "8")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_batch = 8"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[inference]\nworkerz = 2\n").unwrap();
    let out = std::process::Command::new(bin).args(["check-config", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("inference.workerz"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn busy_queue_refuses_at_once() {
    // One slot per batch and a queue of one: a burst must see clear 503 "busy" refusals, and
    // every request gets an answer (none left hanging).
    let d = Daemon::start("[inference]\nmax_batch = 1\nmax_queue = 1\nmax_wait_ms = 0\n");
    d.wait_ready().await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let client = d.client.clone();
        let url = d.url("/api/v1/chat");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&serde_json::json!({"conversation": format!("b{i}"), "user": "u", "text": "hi", "max_new_tokens": 200}))
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            let b: serde_json::Value = r.json().await.unwrap();
            (s, b)
        }));
    }
    let mut ok = 0;
    let mut busy = 0;
    for t in tasks {
        let (s, b) = tokio::time::timeout(Duration::from_secs(60), t).await.expect("no request may hang").unwrap();
        match s {
            200 => ok += 1,
            503 => {
                assert_eq!(b["error"]["code"], "busy", "{b}");
                busy += 1;
            }
            other => panic!("unexpected {other}: {b}"),
        }
    }
    assert!(ok >= 2 && busy >= 1, "ok={ok} busy={busy}");
    assert!(d.metric("switchboard_inference_rejected_total{reason=\"busy\"}").await >= busy as f64);
}
