//! The Feishu / Lark channel: one [`FeishuApp`] per `[[feishu]]` entry, used by the webhook
//! route and the egress sender.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};

use super::config::FeishuConfig;
use super::egress::{self, PlatformSender, SendError};
use super::feishu::event::{self, Envelope, Rejection, RequestHeaders, VerifyConfig};
use super::feishu::message::{self, ChatType, TEXT_CHUNK_LIMIT_BYTES};
use super::feishu::{FeishuApi, FsError, text_content};
use super::telegram::ratelimit::{Limits, Rate, SendLimiter};
use crate::session::{ChatRequest, GroupScope, InboxPayload, conversation_key, route_message};
use crate::store::{Accepted, NewInbound, Store, StoreError, now_ms};
use crate::telemetry;

const PLATFORM: &str = "feishu";
/// What a user gets for a message type the assistant cannot read.
pub const UNSUPPORTED_REPLY: &str = "Sorry, I can only read text messages for now.";

/// The HTTP answer the webhook should give.
#[derive(Debug)]
pub enum EventAnswer {
    /// `{"challenge": …}` for the URL verification.
    Challenge(String),
    /// 200 `{}`: stored, duplicate or ignored.
    Ok,
    /// 4xx: rejected before anything was processed.
    Rejected(Rejection),
}

/// One configured app.
pub struct FeishuApp {
    pub config: FeishuConfig,
    pub api: FeishuApi,
    verify: VerifyConfig,
    bot_open_id: RwLock<Option<String>>,
    store: Arc<dyn Store>,
    node: String,
    group_scope: GroupScope,
}

impl FeishuApp {
    pub fn new(config: FeishuConfig, app_secret: &str, store: Arc<dyn Store>, node: String, group_scope: GroupScope) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        let api = FeishuApi::new(client, &config.api_base, &config.app_id, app_secret);
        let mut verify = VerifyConfig::new(&config.verification_token, config.encrypt_key.as_deref());
        verify.max_skew = Duration::from_secs(config.max_skew_secs);
        let bot_open_id = RwLock::new(config.bot_open_id.clone());
        Self { config, api, verify, bot_open_id, store, node, group_scope }
    }

    pub fn account(&self) -> &str {
        &self.config.account
    }

    /// Learns the bot's open_id when the config does not give it.
    pub async fn init(&self) {
        telemetry::register_platform_series(PLATFORM, &self.config.account);
        if self.bot_open_id.read().expect("lock").is_some() {
            return;
        }
        match self.api.bot_info().await {
            Ok(info) => {
                tracing::info!(account = %self.config.account, app = %info.app_name, "Feishu bot identified.");
                *self.bot_open_id.write().expect("lock") = Some(info.open_id);
            }
            Err(e) => {
                tracing::warn!(account = %self.config.account, error = %e, "Could not fetch the Feishu bot info; group mentions need `bot_open_id`.")
            }
        }
        self.record_refreshes();
    }

    fn record_refreshes(&self) {
        metrics::counter!(telemetry::FEISHU_TOKEN_REFRESHES, "account" => self.config.account.clone()).absolute(self.api.token_refreshes());
    }

    /// Authenticates, decrypts and handles one event request. `Err` means it was not stored
    /// (the caller answers 5xx so Feishu delivers it again).
    pub async fn handle(&self, body: &[u8], headers: &RequestHeaders<'_>) -> Result<EventAnswer, StoreError> {
        let account = self.config.account.as_str();
        let now = now_ms() / 1000;
        let env = match event::open(body, headers, &self.verify, now) {
            Ok(e) => e,
            Err(r) => {
                telemetry::platform_rejected(PLATFORM, account, r.reason());
                return Ok(EventAnswer::Rejected(r));
            }
        };
        let ev = match env {
            Envelope::UrlVerification { challenge } => {
                telemetry::platform_update(PLATFORM, account, "url_verification", "handled");
                return Ok(EventAnswer::Challenge(challenge));
            }
            Envelope::Event(ev) => ev,
        };
        if ev.event_type != "im.message.receive_v1" {
            telemetry::platform_update(PLATFORM, account, "other", "ignored");
            return Ok(EventAnswer::Ok);
        }
        let bot = self.bot_open_id.read().expect("lock").clone();
        let msg = match message::parse_receive(&ev.event, bot.as_deref()) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(account, error = %e, "Skipped a Feishu message event that does not parse.");
                telemetry::platform_update(PLATFORM, account, "message", "malformed");
                return Ok(EventAnswer::Ok);
            }
        };
        if msg.sender_type != "user" {
            telemetry::platform_update(PLATFORM, account, "message", "ignored");
            return Ok(EventAnswer::Ok);
        }
        let is_group = msg.chat_type == ChatType::Group;
        if is_group && !msg.bot_mentioned {
            telemetry::platform_update(PLATFORM, account, "message", "ignored");
            return Ok(EventAnswer::Ok);
        }
        if !self.config.allowed_chats.is_empty() && !self.config.allowed_chats.contains(&msg.chat_id) {
            telemetry::platform_update(PLATFORM, account, "message", "not_allowed");
            return Ok(EventAnswer::Ok);
        }
        let text = match &msg.text {
            Some(t) if !t.trim().is_empty() => t.clone(),
            Some(_) => {
                telemetry::platform_update(PLATFORM, account, "message", "ignored");
                return Ok(EventAnswer::Ok);
            }
            None => String::new(),
        };
        let user_part = (is_group && self.group_scope == GroupScope::User).then(|| msg.sender_open_id.clone());
        let key = conversation_key(PLATFORM, account, &msg.chat_id, msg.thread_id.as_deref(), user_part.as_deref());
        let route = json!({"message_id": msg.message_id, "chat_id": msg.chat_id, "group": is_group});
        let inbound = NewInbound {
            platform: PLATFORM.into(),
            account: account.into(),
            dedup_key: Some(format!("feishu:{account}:{}", ev.event_id)),
            conversation: key.clone(),
            user: msg.sender_open_id.clone(),
            text: if text.is_empty() { format!("[{} message]", msg.message_type) } else { text.clone() },
            payload: InboxPayload { options: Default::default(), route: Some(route.clone()) }.to_json(),
        };
        let id = match self.store.inbox_accept(&inbound, &self.node).await? {
            Accepted::Duplicate(_) => {
                telemetry::inbox_duplicate(PLATFORM);
                telemetry::platform_update(PLATFORM, account, "message", "duplicate");
                return Ok(EventAnswer::Ok);
            }
            Accepted::New(id) => id,
        };
        telemetry::platform_update(PLATFORM, account, "message", "handled");
        telemetry::message_received(PLATFORM);
        if text.is_empty() {
            // Not a type we can read: a short answer, no model.
            egress::send_reply(PLATFORM, account, route, UNSUPPORTED_REPLY.into(), Some(id));
            return Ok(EventAnswer::Ok);
        }
        let req = ChatRequest {
            platform: PLATFORM,
            conversation: key,
            user: msg.sender_open_id,
            text,
            options: Default::default(),
            deltas: None,
            accepted_at: Instant::now(),
            inbox_id: Some(id),
            account: account.into(),
            attempts: 0,
            route: Some(route),
        };
        route_message(req, None);
        Ok(EventAnswer::Ok)
    }
}

/// Sends replies to Feishu: split under the size limit, each chunk a reply to the user's
/// message with a stable `uuid` so a retried send never posts twice.
pub struct FeishuSender {
    app: Arc<FeishuApp>,
    limiter: Mutex<SendLimiter>,
}

impl FeishuSender {
    pub fn new(app: Arc<FeishuApp>) -> Self {
        // Feishu allows about 5 messages/s per chat and 50/s per app.
        let limits = Limits {
            per_chat: Rate { burst: 5, interval: Duration::from_millis(200) },
            per_group: Rate { burst: 5, interval: Duration::from_millis(200) },
            global: Rate { burst: 50, interval: Duration::from_millis(20) },
            ..Limits::default()
        };
        Self { app, limiter: Mutex::new(SendLimiter::new(limits)) }
    }
}

fn chat_number(chat_id: &str) -> i64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    chat_id.hash(&mut h);
    h.finish() as i64
}

#[async_trait]
impl PlatformSender for FeishuSender {
    fn platform(&self) -> &'static str {
        PLATFORM
    }

    fn account(&self) -> &str {
        self.app.account()
    }

    fn chunks(&self, text: &str) -> Vec<String> {
        let text = if text.trim().is_empty() { "…" } else { text };
        message::split_text(text, TEXT_CHUNK_LIMIT_BYTES)
    }

    fn reserve(&self, route: &Value) -> Duration {
        let chat = chat_number(route["chat_id"].as_str().unwrap_or_default());
        self.limiter.lock().expect("limiter").reserve(chat, route["group"].as_bool().unwrap_or(false), Instant::now())
    }

    fn streams(&self) -> bool {
        self.app.config.stream
    }

    fn stream_interval(&self) -> Duration {
        Duration::from_millis(self.app.config.stream_interval_ms)
    }

    /// Streaming posts an interactive card (Markdown) as the reply, then updates that card.
    async fn stream_update(&self, route: &Value, handle: Option<&Value>, text: &str) -> Result<Value, SendError> {
        let card = markdown_card(text);
        let result = match handle.and_then(Value::as_str) {
            None => {
                let message_id = route["message_id"].as_str().unwrap_or_default();
                self.app.api.reply(message_id, "interactive", &card, "").await.map(Value::String)
            }
            Some(sent) => {
                let body = json!({"content": card});
                let path = format!("/open-apis/im/v1/messages/{sent}");
                self.app.api.call(reqwest::Method::PATCH, &path, Some(&body)).await.map(|_| Value::String(sent.to_string()))
            }
        };
        self.app.record_refreshes();
        result.map_err(fs_send_error)
    }

    async fn send(&self, route: &Value, chunk: &str, key: &str, _first: bool) -> Result<(), SendError> {
        let message_id = route["message_id"].as_str().unwrap_or_default();
        // Markdown-rich answers go out as an interactive card, which renders Markdown.
        let result = if looks_like_markdown(chunk) {
            self.app.api.reply(message_id, "interactive", &markdown_card(chunk), key).await
        } else {
            self.app.api.reply(message_id, "text", &text_content(chunk), key).await
        };
        self.app.record_refreshes();
        result.map(drop).map_err(fs_send_error)
    }
}

fn fs_send_error(e: FsError) -> SendError {
    match e {
        FsError::RateLimited { retry_after } => SendError::RetryAfter(retry_after.unwrap_or(Duration::from_secs(1))),
        e @ (FsError::TokenInvalid | FsError::Transient(_)) => SendError::Transient(e.to_string()),
        e @ FsError::Permanent { .. } => SendError::Permanent(e.to_string()),
    }
}

/// Whether `text` uses Markdown that plain text would show as raw markup: code fences, bold,
/// headings, links or lists.
pub fn looks_like_markdown(text: &str) -> bool {
    text.contains("```")
        || text.contains("**")
        || (text.contains("](") && text.contains('['))
        || text.lines().any(|l| {
            let t = l.trim_start();
            t.starts_with("# ")
                || t.starts_with("## ")
                || t.starts_with("### ")
                || t.starts_with("- ")
                || t.starts_with("* ")
                || t.starts_with("1. ")
        })
}

/// An interactive card holding `text` as Markdown, updatable (`update_multi`).
pub fn markdown_card(text: &str) -> String {
    json!({"config": {"wide_screen_mode": true, "update_multi": true}, "elements": [{"tag": "markdown", "content": text}]}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_detection() {
        assert!(looks_like_markdown("Use **bold** here"));
        assert!(looks_like_markdown("Steps:\n- one\n- two"));
        assert!(looks_like_markdown("```rust\nfn main() {}\n```"));
        assert!(looks_like_markdown("see [docs](https://example.com)"));
        assert!(!looks_like_markdown("Just a plain answer - with a dash and 2*3=6."));
        let card: Value = serde_json::from_str(&markdown_card("# Title")).unwrap();
        assert_eq!(card["elements"][0]["tag"], "markdown");
        assert_eq!(card["elements"][0]["content"], "# Title");
    }
}
