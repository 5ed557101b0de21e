//! Feishu / Lark channel, black box: the real daemon against a fake Open Platform, with events
//! encrypted and signed the way Feishu sends them.

mod common;

use std::time::Duration;

use common::Daemon;
use common::feishu_fake::{self as ff, FakeFeishu, ReplyFault, message_event, now_secs, signed_encrypted};
use serde_json::json;

fn config(fake: &FakeFeishu) -> String {
    format!(
        "[[feishu]]\naccount = \"enc\"\napp_id = \"{}\"\napp_secret = \"{}\"\nverification_token = \"{}\"\nencrypt_key = \"{}\"\napi_base = \"{}\"\n\n\
         [[feishu]]\naccount = \"plain\"\nallow_unsigned = true\napp_id = \"{}\"\napp_secret = \"{}\"\nverification_token = \"{}\"\napi_base = \"{}\"\n",
        ff::APP_ID,
        ff::APP_SECRET,
        ff::VERIFICATION_TOKEN,
        ff::ENCRYPT_KEY,
        fake.base(),
        ff::APP_ID,
        ff::APP_SECRET,
        ff::VERIFICATION_TOKEN,
        fake.base()
    )
}

async fn post(d: &Daemon, account: &str, headers: &[(String, String)], body: String) -> (u16, serde_json::Value) {
    let mut req = d.client.post(d.url(&format!("/webhook/feishu/{account}"))).header("content-type", "application/json").body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(serde_json::Value::Null))
}

async fn post_event(d: &Daemon, event: &serde_json::Value) -> (u16, serde_json::Value) {
    let (h, body) = signed_encrypted(event, now_secs());
    post(d, "enc", &h, body).await
}

async fn start() -> (FakeFeishu, Daemon) {
    let fake = FakeFeishu::start(7200).await;
    let d = Daemon::start(&config(&fake));
    d.wait_ready().await;
    (fake, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_signed_event_is_answered_as_a_reply_to_its_message() {
    let (fake, d) = start().await;
    let ev = message_event("ev-1", "om_msg_1", "oc_chat_1", "p2p", "Hello Feishu", json!([]));
    let (s, b) = post_event(&d, &ev).await;
    assert_eq!(s, 200, "{b}");
    let replies = fake.wait_replies(1).await;
    assert_eq!(replies[0].message_id, "om_msg_1");
    assert_eq!(replies[0].body["msg_type"], "text");
    let content: serde_json::Value = serde_json::from_str(replies[0].body["content"].as_str().unwrap()).unwrap();
    assert!(!content["text"].as_str().unwrap().is_empty());
    assert!(replies[0].body["uuid"].as_str().unwrap().starts_with("sb-"), "sends carry an idempotency uuid");
    d.wait_metric("switchboard_egress_sends_total{platform=\"feishu\",account=\"enc\",outcome=\"ok\"}", |v| v == 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_verification_plain_and_encrypted() {
    let (_fake, d) = start().await;
    let challenge = json!({"challenge": "ch-plain-1", "token": ff::VERIFICATION_TOKEN, "type": "url_verification"});
    let (s, b) = post(&d, "plain", &[], challenge.to_string()).await;
    assert_eq!((s, b["challenge"].as_str()), (200, Some("ch-plain-1")));
    // Encrypted (an encrypt key is set): decrypted, answered in plaintext.
    let challenge = json!({"challenge": "ch-enc-2", "token": ff::VERIFICATION_TOKEN, "type": "url_verification"});
    let body = json!({"encrypt": ff::encrypt(&challenge.to_string())}).to_string();
    let (s, b) = post(&d, "enc", &[], body).await;
    assert_eq!((s, b["challenge"].as_str()), (200, Some("ch-enc-2")));
    // Wrong token: refused.
    let bad = json!({"challenge": "x", "token": "nope", "type": "url_verification"});
    let (s, _) = post(&d, "plain", &[], bad.to_string()).await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_stale_timestamp_and_wrong_token_are_rejected_without_a_reply() {
    let (fake, d) = start().await;
    let ev = message_event("ev-bad-1", "om_bad_1", "oc_chat_2", "p2p", "sig", json!([]));
    let (mut h, body) = signed_encrypted(&ev, now_secs());
    h[2].1 = "0".repeat(64);
    assert_eq!(post(&d, "enc", &h, body).await.0, 401);
    let ev = message_event("ev-bad-2", "om_bad_2", "oc_chat_2", "p2p", "stale", json!([]));
    let (h, body) = signed_encrypted(&ev, now_secs() - 3600);
    assert_eq!(post(&d, "enc", &h, body).await.0, 401);
    let mut ev = message_event("ev-bad-3", "om_bad_3", "oc_chat_2", "p2p", "token", json!([]));
    ev["header"]["token"] = json!("wrong-token");
    assert_eq!(post_event(&d, &ev).await.0, 401);
    // Unsigned garbage to a signed account: refused before it is parsed (the signature comes first).
    assert_eq!(post(&d, "enc", &[], "{not json".into()).await.0, 401);
    // The sentinel: a valid event in the same chat, after the refused ones. Had one of those
    // been taken in, it would have been answered before this one.
    let ev = message_event("ev-ok", "om_ok", "oc_chat_2", "p2p", "fine", json!([]));
    assert_eq!(post_event(&d, &ev).await.0, 200);
    fake.wait_reply_to("om_ok").await;
    let r = fake.replies();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].message_id, "om_ok");
    for reason in ["bad_signature", "stale_timestamp", "bad_token", "missing_signature"] {
        let v = d.metric(&format!("switchboard_platform_rejected_total{{platform=\"feishu\",account=\"enc\",reason=\"{reason}\"}}")).await;
        assert_eq!(v, 1.0, "rejections for {reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_twice_gets_one_reply() {
    let (fake, d) = start().await;
    let ev = message_event("ev-dup", "om_dup", "oc_chat_3", "p2p", "once", json!([]));
    assert_eq!(post_event(&d, &ev).await.0, 200);
    assert_eq!(post_event(&d, &ev).await.0, 200);
    fake.wait_reply_to("om_dup").await;
    // The sentinel: a later event in the same chat. Had the duplicate been taken in, it would
    // have been answered before this one.
    let ev2 = message_event("ev-next", "om_next", "oc_chat_3", "p2p", "next", json!([]));
    assert_eq!(post_event(&d, &ev2).await.0, 200);
    fake.wait_reply_to("om_next").await;
    assert_eq!(fake.replies_to("om_dup").len(), 1, "{:?}", fake.replies());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_need_the_bot_mentioned() {
    let (fake, d) = start().await;
    // Mentions of the bot are told apart by its open_id, learnt at start.
    d.wait_log(&["Feishu bot identified", "\"account\":\"enc\""]).await;
    let other = json!([{"key": "@_user_1", "id": {"open_id": "ou_someone"}, "name": "Someone"}]);
    let ev = message_event("ev-g1", "om_g1", "oc_group", "group", "@_user_1 not for the bot", other);
    assert_eq!(post_event(&d, &ev).await.0, 200);
    let bot = json!([{"key": "@_user_1", "id": {"open_id": ff::BOT_OPEN_ID}, "name": "Switchboard"}]);
    let ev = message_event("ev-g2", "om_g2", "oc_group", "group", "@_user_1 hello bot", bot);
    assert_eq!(post_event(&d, &ev).await.0, 200);
    // The sentinel: the addressed message came later in the same chat (one conversation), so
    // had the first one been answered, it would be by now.
    fake.wait_reply_to("om_g2").await;
    let r = fake.replies();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].message_id, "om_g2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refreshed_once_for_concurrent_senders_and_invalid_token_recovered() {
    // Tokens live 181 s; cached for expire − 3 min, i.e. about 1 s.
    let fake = FakeFeishu::start(181).await;
    let d = Daemon::start(&config(&fake));
    d.wait_ready().await;
    let ev = message_event("ev-t0", "om_t0", "oc_t", "p2p", "warm up", json!([]));
    assert_eq!(post_event(&d, &ev).await.0, 200);
    fake.wait_replies(1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = fake.token_fetches();
    // Five replies at once, to five chats, after the token expired: one refresh between them.
    for i in 0..5 {
        let ev = message_event(&format!("ev-t{}", i + 1), &format!("om_t{}", i + 1), &format!("oc_t{i}"), "p2p", "concurrent", json!([]));
        assert_eq!(post_event(&d, &ev).await.0, 200);
    }
    // Every sender fetches its token before its send: once all five answers are delivered (a
    // sender whose token was refused would refresh again before its retry succeeds), no
    // further refresh can follow.
    d.wait_metric("switchboard_egress_sends_total{platform=\"feishu\",account=\"enc\",outcome=\"ok\"}", |v| v == 6.0).await;
    for i in 1..=5 {
        assert!(!fake.replies_to(&format!("om_t{i}")).is_empty());
    }
    let after = fake.token_fetches();
    assert_eq!(after - before, 1, "the expired token is refreshed once for all concurrent senders");
    // The server declares the token invalid: the client refreshes and retries.
    let fetches = fake.token_fetches();
    fake.fail_next_reply(ReplyFault::TokenInvalid);
    let ev = message_event("ev-inv", "om_inv", "oc_inv", "p2p", "invalid token", json!([]));
    assert_eq!(post_event(&d, &ev).await.0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let calls = loop {
        let calls: Vec<_> = fake.replies().into_iter().filter(|r| r.message_id == "om_inv").collect();
        if calls.len() >= 2 {
            break calls;
        }
        assert!(std::time::Instant::now() < deadline, "no retry after the token-invalid answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(calls[0].token, calls[1].token, "the retry uses a fresh token");
    assert_eq!(fake.token_fetches(), fetches + 1);
    assert!(d.metric("switchboard_feishu_token_refreshes_total{account=\"enc\"}").await >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answer_is_retried_with_the_same_uuid() {
    let (fake, d) = start().await;
    fake.fail_next_reply(ReplyFault::RateLimited);
    fake.fail_next_reply(ReplyFault::ServerError);
    let ev = message_event("ev-rl", "om_rl", "oc_rl", "p2p", "hi", json!([]));
    assert_eq!(post_event(&d, &ev).await.0, 200);
    let r = fake.wait_replies(3).await;
    assert!(r.iter().all(|x| x.message_id == "om_rl"));
    assert_eq!(r[0].body["uuid"], r[2].body["uuid"], "a retried send keeps its uuid (idempotent)");
    d.wait_metric("switchboard_egress_rate_limited_total{platform=\"feishu\",account=\"enc\"}", |v| v == 1.0).await;
    d.wait_metric("switchboard_egress_sends_total{platform=\"feishu\",account=\"enc\",outcome=\"ok\"}", |v| v == 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_message_types_get_a_short_answer_without_the_model() {
    let (fake, d) = start().await;
    let mut ev = message_event("ev-img", "om_img", "oc_img", "p2p", "", json!([]));
    ev["event"]["message"]["message_type"] = json!("image");
    ev["event"]["message"]["content"] = json!(json!({"image_key": "img_123"}).to_string());
    assert_eq!(post_event(&d, &ev).await.0, 200);
    let r = fake.wait_replies(1).await;
    let content: serde_json::Value = serde_json::from_str(r[0].body["content"].as_str().unwrap()).unwrap();
    assert_eq!(content["text"], "Sorry, I can only read text messages for now.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_updates_a_markdown_card_at_a_bounded_rate() {
    // The 4k-context tiny model with room for a long answer, so the stream takes a while.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("long");
    std::fs::create_dir_all(&model).unwrap();
    for f in std::fs::read_dir(common::root().join("models/tiny-4k")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), model.join(f.file_name())).unwrap();
    }
    let gc = model.join("generation_config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&gc).unwrap()).unwrap();
    v["max_new_tokens"] = json!(1000);
    std::fs::write(&gc, v.to_string()).unwrap();
    let fake = FakeFeishu::start(7200).await;
    let cfg = config(&fake).replacen("api_base", "stream = true\nstream_interval_ms = 100\napi_base", 1);
    let d = Daemon::start_with_model(&cfg, &model);
    d.wait_ready().await;
    let ev = message_event("ev-stream", "om_stream", "oc_stream", "p2p", "stream please", json!([]));
    assert_eq!(post_event(&d, &ev).await.0, 200);
    d.wait_metric("switchboard_inbox_depth", |v| v == 0.0).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fake.patches().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "expected card updates, got {:?}", fake.patches());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replies = fake.replies();
    assert_eq!(replies[0].message_id, "om_stream");
    assert_eq!(replies[0].body["msg_type"], "interactive");
    let patches = fake.patches();
    assert!(patches.iter().all(|p| p.message_id == "om_reply_1"), "updates go to the card that was posted");
    let text_of = |p: &common::feishu_fake::Reply| -> String {
        let card: serde_json::Value = serde_json::from_str(p.body["content"].as_str().unwrap()).unwrap();
        card["elements"][0]["content"].as_str().unwrap().to_string()
    };
    let lens: Vec<usize> = patches.iter().map(|p| text_of(p).len()).collect();
    assert!(lens.windows(2).all(|w| w[0] <= w[1]), "the card only grows: {lens:?}");
    for pair in patches.windows(2) {
        assert!(pair[1].at.duration_since(pair[0].at) >= Duration::from_millis(90), "updates are rate-bounded");
    }
}
