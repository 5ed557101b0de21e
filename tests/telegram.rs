//! Telegram channel, black box: the real daemon against a fake Bot API server that speaks the
//! real protocol.

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use common::telegram_fake::{self, BOT_USERNAME, FakeTelegram, Fault, TOKEN, group_text, private_text};
use serde_json::json;

const SECRET: &str = "s3cret-Token_1";

fn bot_config(fake: &FakeTelegram, mode: &str) -> String {
    format!(
        "[[telegram]]\naccount = \"main\"\ntoken = \"{TOKEN}\"\nmode = \"{mode}\"\nsecret_token = \"{SECRET}\"\napi_base = \"{}\"\npoll_timeout_secs = 1\n",
        fake.base()
    )
}

async fn post_update(d: &Daemon, secret: Option<&str>, update: serde_json::Value) -> u16 {
    let mut req = d.client.post(d.url("/webhook/telegram/main")).json(&update);
    if let Some(s) = secret {
        req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_update_is_answered_in_the_right_chat_as_a_reply() {
    let fake = FakeTelegram::start().await;
    let d = Daemon::start(&bot_config(&fake, "webhook"));
    d.wait_ready().await;
    fake.wait_calls("getMe", 1).await;
    assert_eq!(post_update(&d, Some(SECRET), private_text(100, 7001, "Hello bot")).await, 200);
    let sent = fake.wait_calls("sendMessage", 1).await;
    let body = &sent[0].body;
    assert_eq!(body["chat_id"], 7001);
    assert_eq!(body["reply_parameters"]["message_id"], 1000);
    assert_eq!(body["parse_mode"], "HTML");
    assert!(!body["text"].as_str().unwrap().is_empty());
    assert!(!fake.calls("sendChatAction").is_empty(), "typing is shown while generating");
    assert_eq!(fake.calls("sendChatAction")[0].body["action"], "typing");
    d.wait_metric("switchboard_egress_sends_total{platform=\"telegram\",account=\"main\",outcome=\"ok\"}", |v| v == 1.0).await;
    d.wait_metric("switchboard_inbox_depth", |v| v == 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_secret_is_refused_and_nothing_is_answered() {
    let fake = FakeTelegram::start().await;
    let d = Daemon::start(&bot_config(&fake, "webhook"));
    d.wait_ready().await;
    assert_eq!(post_update(&d, None, private_text(1, 7101, "no secret")).await, 401);
    assert_eq!(post_update(&d, Some("wrong"), private_text(2, 7102, "wrong secret")).await, 401);
    assert_eq!(
        d.client
            .post(d.url("/webhook/telegram/main"))
            .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
            .body("{not json")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(post_update(&d, Some(SECRET), private_text(3, 7103, "right secret")).await, 200);
    let sent = fake.wait_reply_to(30).await;
    assert_eq!(sent.body["chat_id"], 7103);
    // Sentinels: a valid message in each chat of a refused one. Had a refused update been taken
    // in, it would have been answered before the sentinel of its chat.
    assert_eq!(post_update(&d, Some(SECRET), private_text(5, 7101, "sentinel 1")).await, 200);
    assert_eq!(post_update(&d, Some(SECRET), private_text(6, 7102, "sentinel 2")).await, 200);
    fake.wait_reply_to(50).await;
    fake.wait_reply_to(60).await;
    let sent_all = fake.calls("sendMessage");
    assert_eq!(sent_all.len(), 3, "only the right secret and the sentinels are answered: {sent_all:?}");
    assert!(fake.replies_to(10).is_empty() && fake.replies_to(20).is_empty(), "{sent_all:?}");
    assert_eq!(d.metric("switchboard_platform_rejected_total{platform=\"telegram\",account=\"main\",reason=\"bad_secret\"}").await, 2.0);
    // An unknown account answers exactly like a wrong secret: account names cannot be enumerated.
    let unknown = d
        .client
        .post(d.url("/webhook/telegram/other"))
        .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
        .json(&private_text(4, 1, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401);
    let unknown = unknown.text().await.unwrap();
    let wrong = d
        .client
        .post(d.url("/webhook/telegram/main"))
        .header("X-Telegram-Bot-Api-Secret-Token", "wrong")
        .json(&private_text(7, 1, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.text().await.unwrap(), unknown, "one 401 body for every authentication failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_update_is_answered_once() {
    let fake = FakeTelegram::start().await;
    let d = Daemon::start(&bot_config(&fake, "webhook"));
    d.wait_ready().await;
    let u = private_text(200, 7201, "only once please");
    assert_eq!(post_update(&d, Some(SECRET), u.clone()).await, 200);
    assert_eq!(post_update(&d, Some(SECRET), u.clone()).await, 200, "a re-delivered update is acknowledged");
    fake.wait_reply_to(2000).await;
    // Sentinel: a later message in the same chat. Had the re-delivered update been taken in, it
    // would have been answered before this one.
    assert_eq!(post_update(&d, Some(SECRET), private_text(201, 7201, "another")).await, 200);
    fake.wait_reply_to(2010).await;
    let sent = fake.calls("sendMessage");
    assert_eq!(fake.replies_to(2000).len(), 1, "{sent:?}");
    assert_eq!(sent.iter().filter(|c| c.body["chat_id"] == 7201).count(), 2, "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_answer_only_when_addressed_with_the_mention_stripped() {
    let fake = FakeTelegram::start().await;
    let d = Daemon::start(&format!("{}{}", bot_config(&fake, "webhook"), common::admin_tokens()));
    d.wait_ready().await;
    // The bot learns its username through getMe (it is not in the config).
    fake.wait_calls("getMe", 1).await;
    d.wait_log(&["Telegram bot identified"]).await;
    let chat = -1001234;
    // Not addressed: ignored.
    assert_eq!(post_update(&d, Some(SECRET), group_text(300, chat, None, "just chatting", json!([]))).await, 200);
    // Mentioned (in a forum topic): answered, in the topic, without the mention.
    let text = format!("@{BOT_USERNAME} what is up?");
    let ent = json!([{"type": "mention", "offset": 0, "length": BOT_USERNAME.len() + 1}]);
    assert_eq!(post_update(&d, Some(SECRET), group_text(301, chat, Some(77), &text, ent)).await, 200);
    let sent = fake.wait_calls("sendMessage", 1).await;
    assert_eq!(sent[0].body["chat_id"], chat);
    assert_eq!(sent[0].body["message_thread_id"], 77);
    // A command for this bot.
    let cmd = format!("/help@{BOT_USERNAME}");
    let ent = json!([{"type": "bot_command", "offset": 0, "length": cmd.len()}]);
    assert_eq!(post_update(&d, Some(SECRET), group_text(302, chat, None, &cmd, ent)).await, 200);
    let sent = fake.wait_calls("sendMessage", 2).await;
    assert!(sent[1].body["text"].as_str().unwrap().starts_with("Commands:"), "{:?}", sent[1].body);
    // A reply to the bot's message.
    let mut reply = group_text(303, chat, None, "and then?", json!([]));
    reply["message"]["reply_to_message"] = json!({"message_id": 5, "date": 1, "chat": {"id": chat, "type": "supergroup"},
        "from": {"id": telegram_fake::BOT_ID, "is_bot": true, "first_name": "Switchboard", "username": BOT_USERNAME}, "text": "earlier answer"});
    assert_eq!(post_update(&d, Some(SECRET), reply).await, 200);
    // The sentinel: this reply is in the same conversation as the unaddressed message (the
    // group, no topic) and came later, so had that one been answered, it would be by now.
    fake.wait_reply_to(3030).await;
    let sent = fake.calls("sendMessage");
    assert_eq!(sent.len(), 3, "the unaddressed message got no answer: {sent:?}");
    assert!(fake.replies_to(3000).is_empty(), "{sent:?}");
    // What the model saw: the mention is gone.
    let key = format!("telegram%3Amain%3A{chat}%3At77");
    let (s, b) = d.admin_get(&format!("/admin/v1/conversations/{key}/messages"), "viewer-token").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["messages"][0]["content"], "what is up?");
    assert!(
        d.metric("switchboard_platform_updates_total{platform=\"telegram\",account=\"main\",kind=\"message\",outcome=\"ignored\"}").await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_output_is_html_escaped() {
    let fake = FakeTelegram::start().await;
    let d = Daemon::start(&bot_config(&fake, "webhook"));
    d.wait_ready().await;
    assert_eq!(post_update(&d, Some(SECRET), private_text(400, 7401, "/help")).await, 200);
    let sent = fake.wait_calls("sendMessage", 1).await;
    let text = sent[0].body["text"].as_str().unwrap();
    assert!(text.contains(" &amp; /help") && text.contains("-&gt; the assistant") && text.contains("&lt;= 4096"), "{text}");
    assert!(!text.contains(" & ") && !text.contains("<="), "{text}");
}

/// A copy of the 4k-context tiny model whose generation_config allows 3000 new tokens.
fn long_answer_model(dir: &std::path::Path) -> std::path::PathBuf {
    let src = common::root().join("models/tiny-4k");
    let dst = dir.join("long");
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
    }
    let gc = dst.join("generation_config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&gc).unwrap()).unwrap();
    v["max_new_tokens"] = json!(3000);
    std::fs::write(&gc, v.to_string()).unwrap();
    dst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_edits_the_message_as_text_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let model = long_answer_model(dir.path());
    let fake = FakeTelegram::start().await;
    let cfg = format!("{}stream = true\nstream_interval_ms = 100\n", bot_config(&fake, "webhook"));
    let d = Daemon::start_with_model(&cfg, &model);
    d.wait_ready().await;
    assert_eq!(post_update(&d, Some(SECRET), private_text(700, 7701, "stream a long one")).await, 200);
    // The answer is over 10,000 characters: the streamed message ends as the first 4096-character
    // part, the rest follows as new messages.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sends = fake.calls("sendMessage");
        let edits = fake.calls("editMessageText");
        let total: usize = edits.last().map(|e| e.body["text"].as_str().unwrap().chars().count()).unwrap_or(0)
            + sends.iter().skip(1).map(|c| c.body["text"].as_str().unwrap().chars().count()).sum::<usize>();
        if sends.len() >= 3 && total >= 10_000 {
            assert!(edits.len() >= 2, "the message is edited while text arrives: {} edits", edits.len());
            assert_eq!(sends[0].body["reply_parameters"]["message_id"], 7000);
            assert!(edits.iter().all(|e| e.body["message_id"] == 5001 && e.body["chat_id"] == 7701));
            let lens: Vec<usize> = edits.iter().map(|e| e.body["text"].as_str().unwrap().chars().count()).collect();
            let streaming = &lens[..lens.len() - 1];
            assert!(streaming.windows(2).all(|w| w[0] < w[1]), "edits while streaming only grow: {lens:?}");
            assert!(lens.iter().all(|&l| l <= 4096));
            for pair in edits.windows(2) {
                assert!(pair[1].at.duration_since(pair[0].at) >= Duration::from_millis(90), "edits are rate-bounded");
            }
            break;
        }
        assert!(Instant::now() < deadline, "streaming did not finish: {} sends, {} edits, {total} chars", sends.len(), edits.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.wait_metric("switchboard_inbox_depth", |v| v == 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_very_long_answer_is_split_into_messages_of_at_most_4096_characters() {
    let dir = tempfile::tempdir().unwrap();
    let dst = long_answer_model(dir.path());
    let fake = FakeTelegram::start().await;
    let cfg = bot_config(&fake, "webhook");
    let d = Daemon::start_with_model(&cfg, &dst);
    d.wait_ready().await;
    assert_eq!(post_update(&d, Some(SECRET), private_text(500, 7501, "write a lot")).await, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = fake.calls("sendMessage");
        let total: usize = sent.iter().map(|c| c.body["text"].as_str().unwrap().chars().count()).sum();
        if sent.len() >= 3 && total >= 10_000 {
            for c in &sent {
                let t = c.body["text"].as_str().unwrap();
                assert!(t.encode_utf16().count() <= 4096, "a chunk has {} UTF-16 units", t.encode_utf16().count());
            }
            assert_eq!(sent[0].body["reply_parameters"]["message_id"], 5000, "the first part replies to the user");
            assert!(sent[1].body.get("reply_parameters").is_none(), "later parts are plain follow-ups");
            break;
        }
        assert!(Instant::now() < deadline, "expected a ≥10,000-character answer in several parts; got {} parts, {total} chars", sent.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answer_is_honoured() {
    let fake = FakeTelegram::start().await;
    let d = Daemon::start(&bot_config(&fake, "webhook"));
    d.wait_ready().await;
    fake.fail_next_send(Fault::RetryAfter(1));
    fake.fail_next_send(Fault::ServerError);
    assert_eq!(post_update(&d, Some(SECRET), private_text(600, 7601, "hi")).await, 200);
    let sent = fake.wait_calls("sendMessage", 3).await;
    let gap = sent[1].at.duration_since(sent[0].at);
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}, before retry_after");
    d.wait_metric("switchboard_egress_rate_limited_total{platform=\"telegram\",account=\"main\"}", |v| v == 1.0).await;
    d.wait_metric("switchboard_egress_sends_total{platform=\"telegram\",account=\"main\",outcome=\"ok\"}", |v| v == 1.0).await;
    // A permanent error (bot blocked) is not retried.
    fake.fail_next_send(Fault::Forbidden);
    assert_eq!(post_update(&d, Some(SECRET), private_text(601, 7602, "blocked")).await, 200);
    d.wait_metric("switchboard_egress_sends_total{platform=\"telegram\",account=\"main\",outcome=\"permanent_error\"}", |v| v == 1.0).await;
    // Egress retries happen inside a delivery, which ends before its inbox row is finished: once
    // the inbox is empty, the failed delivery is over and no retry can follow.
    d.wait_inbox_empty().await;
    assert_eq!(fake.calls("sendMessage").iter().filter(|c| c.body["chat_id"] == 7602).count(), 1);
    assert_eq!(d.metric("switchboard_egress_sends_total{platform=\"telegram\",account=\"main\",outcome=\"ok\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_survives_a_poller_restart_without_losing_or_repeating_updates() {
    let fake = FakeTelegram::start().await;
    // A webhook left over from earlier: polling must delete it first.
    fake.push_update(private_text(900, 7900, "first"));
    let d = Daemon::start(&format!("{}[testing]\nfault_injection = true\n", bot_config(&fake, "polling")));
    d.wait_ready().await;
    fake.wait_calls("sendMessage", 1).await;
    assert!(!fake.calls("deleteWebhook").is_empty());
    // The poller crashes right after storing this update, before acknowledging it: Telegram
    // sends it again to the restarted poller, which must not answer it twice.
    fake.push_update(private_text(901, 7901, "!fault:poller-panic"));
    fake.push_update(private_text(902, 7902, "third"));
    d.wait_metric("switchboard_actor_restarts_total{actor=\"ingress.telegram.main\"}", |v| v >= 1.0).await;
    fake.push_update(private_text(903, 7903, "after the restart"));
    fake.wait_calls("sendMessage", 4).await;
    // Sentinels: one more update per chat, delivered after every re-delivery. Had an update been
    // answered twice, the second answer would come before the sentinel of its chat.
    for (i, chat) in [7900, 7901, 7902, 7903].into_iter().enumerate() {
        fake.push_update(private_text(904 + i as i64, chat, "sentinel"));
    }
    for i in 0..4 {
        fake.wait_reply_to((904 + i) * 10).await;
    }
    let sent = fake.calls("sendMessage");
    for (i, chat) in [7900, 7901, 7902, 7903].into_iter().enumerate() {
        assert_eq!(fake.replies_to((900 + i as i64) * 10).len(), 1, "chat {chat}: {sent:?}");
        assert_eq!(sent.iter().filter(|c| c.body["chat_id"] == chat).count(), 2, "chat {chat}: {sent:?}");
    }
    assert_eq!(sent.len(), 8);
    assert!(!d.log_text().contains("Replaying messages"), "nothing of this run may be replayed as if left over");
}
