//! The accept path and the adapters, on a real SQLite store (no actors running: routing
//! fails, which leaves accepted rows in the inbox, as after a router restart).

use std::sync::Arc;

use serde_json::json;

use super::feishu::FeishuApp;
use super::telegram::TelegramBot;
use super::*;
use crate::platforms::feishu::FeishuApi;
use crate::platforms::feishu::event::EventEnvelope;
use crate::platforms::telegram::{BotApi, Update};
use crate::store::SqlStore;

async fn ingress() -> (Ingress, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::sqlite(&dir.path().join("t.db")).await.unwrap();
    (Ingress::new(Arc::new(store), "node-a".into(), &limits::LimitsConfig { user_per_minute: 0, ..Default::default() }), dir)
}

fn telegram_bot(ingress: &Ingress, extra: serde_json::Value, scope: GroupScope) -> TelegramBot {
    let mut cfg = json!({"account": "main", "token": "1:x", "bot_username": "sb_bot"});
    cfg.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let config: crate::platforms::config::TelegramConfig = serde_json::from_value(cfg).unwrap();
    let api = BotApi::new(reqwest::Client::new(), "http://127.0.0.1:9", "1:x");
    TelegramBot::new(config, api, ingress.clone(), scope, false)
}

fn tg_update(id: i64, chat: i64, kind: &str, text: &str) -> Update {
    // A leading `@sb_bot` is a mention entity, as Telegram sends it.
    let entities = if text.starts_with("@sb_bot") { json!([{"type": "mention", "offset": 0, "length": 7}]) } else { json!([]) };
    serde_json::from_value(json!({"update_id": id, "message": {
        "message_id": 5, "date": 1, "text": text, "entities": entities,
        "from": {"id": 42, "is_bot": false, "first_name": "Ann"},
        "chat": {"id": chat, "type": kind},
    }}))
    .unwrap()
}

#[test]
fn the_chat_policy_is_the_same_for_every_platform() {
    let chat = |chat, group| ChatRef { chat, thread: Some("7"), group, user_id: "u1" };
    let open = ChatPolicy::new([], GroupScope::User);
    assert_eq!(open.conversation(Platform::Feishu, "a", chat("oc_1", true)).unwrap(), "feishu:a:oc_1:t7:uu1");
    assert_eq!(open.conversation(Platform::Feishu, "a", chat("oc_1", false)).unwrap(), "feishu:a:oc_1:t7");
    let closed = ChatPolicy::new(["-100".to_string()], GroupScope::Chat);
    assert_eq!(closed.conversation(Platform::Telegram, "a", chat("-100", true)).unwrap(), "telegram:a:-100:t7");
    assert!(closed.conversation(Platform::Telegram, "a", chat("-200", true)).is_none());
}

#[tokio::test]
async fn accept_stores_once_and_recognises_a_redelivery() {
    let (ingress, _dir) = ingress().await;
    let bot = telegram_bot(&ingress, json!({}), GroupScope::Chat);
    let update = tg_update(10, 42, "private", "hello");
    assert_eq!(bot.accept_update(&update).await.unwrap(), UpdateOutcome::Handled);
    assert_eq!(bot.accept_update(&update).await.unwrap(), UpdateOutcome::Duplicate);
    let pending = ingress.store().inbox_pending("node-a").await.unwrap();
    assert_eq!(pending.len(), 1, "one row, kept for replay since no router runs");
    let back = row::inbound_of(&pending[0]).unwrap();
    assert_eq!(back.conversation, "telegram:main:42");
    assert_eq!(back.reply_to, ReplyTarget::Telegram { chat_id: 42, thread_id: None, message_id: Some(5), group: false });
    assert_eq!(back.content, Content::Text("hello".into()));
}

#[tokio::test]
async fn telegram_updates_not_for_the_bot_are_ignored_and_nothing_is_stored() {
    let (ingress, _dir) = ingress().await;
    let bot = telegram_bot(&ingress, json!({"allowed_chats": [42]}), GroupScope::User);
    assert_eq!(bot.accept_update(&tg_update(1, 43, "private", "hi")).await.unwrap(), UpdateOutcome::NotAllowed);
    assert_eq!(bot.accept_update(&tg_update(2, 42, "group", "not addressed")).await.unwrap(), UpdateOutcome::Ignored);
    assert!(ingress.store().inbox_pending("node-a").await.unwrap().is_empty());
    assert_eq!(bot.accept_update(&tg_update(3, 42, "group", "@sb_bot hi")).await.unwrap(), UpdateOutcome::Handled);
    let row = &ingress.store().inbox_pending("node-a").await.unwrap()[0];
    assert_eq!(row.conversation, "telegram:main:42:u42", "per-user group conversations");
}

fn feishu_app(ingress: &Ingress) -> FeishuApp {
    let config = serde_json::from_value(json!({
        "account": "fs", "app_id": "cli_1", "app_secret": "s", "verification_token": "v", "bot_open_id": "ou_bot"
    }))
    .unwrap();
    let api = Arc::new(FeishuApi::new(reqwest::Client::new(), "http://127.0.0.1:9", "cli_1", "s"));
    FeishuApp::new(config, api, ingress.clone(), GroupScope::Chat)
}

fn fs_event(message_type: &str, content: &str, chat_type: &str) -> EventEnvelope {
    EventEnvelope {
        event_id: "ev_1".into(),
        event_type: "im.message.receive_v1".into(),
        create_time_ms: None,
        event: json!({
            "sender": {"sender_id": {"open_id": "ou_user"}, "sender_type": "user"},
            "message": {"message_id": "om_1", "chat_id": "oc_1", "chat_type": chat_type, "message_type": message_type, "content": content},
        }),
    }
}

#[tokio::test]
async fn feishu_messages_become_inbounds_and_unreadable_types_are_marked() {
    let (ingress, _dir) = ingress().await;
    let app = feishu_app(&ingress);
    let Verdict::Accept(text) = app.verdict(&fs_event("text", r#"{"text":"hi"}"#, "p2p")) else { panic!("not accepted") };
    assert_eq!(text.content, Content::Text("hi".into()));
    assert_eq!(text.reply_to, ReplyTarget::Feishu { chat_id: "oc_1".into(), message_id: "om_1".into(), group: false });
    assert_eq!(text.dedup_key().unwrap(), "feishu:fs:ev_1");
    let Verdict::Accept(image) = app.verdict(&fs_event("image", r#"{"image_key":"k"}"#, "p2p")) else { panic!("not accepted") };
    assert_eq!(image.content, Content::Unsupported { kind: "image".into() });
    let group = app.verdict(&fs_event("text", r#"{"text":"hi"}"#, "group"));
    assert_eq!(group, Verdict::Ignore { kind: "message", outcome: UpdateOutcome::Ignored }, "a group message must mention the bot");
}
