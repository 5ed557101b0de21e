//! The Telegram channel: one [`TelegramBot`] per `[[telegram]]` entry, shared by the webhook
//! route, the long-polling actor and the egress sender.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{Value, json};

use super::config::{TelegramConfig, TelegramMode};
use super::egress::{PlatformSender, SendError};
use super::telegram::format::{MAX_MESSAGE_LEN, escape_html, split_message};
use super::telegram::ratelimit::{Limits, SendLimiter};
use super::telegram::{BotApi, BotIdentity, ChatType, SendMessage, TgError, Triage, Update, triage};
use crate::session::{ChatRequest, GroupScope, InboxPayload, ROUTER_NAME, RouterMsg, conversation_hash, conversation_key, route_message};
use crate::store::{Accepted, NewInbound, Store, StoreError};
use crate::telemetry;

const PLATFORM: &str = "telegram";
/// Update kinds we ask Telegram for.
pub const ALLOWED_UPDATES: &[&str] = &["message", "edited_message"];

/// What happened to one update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Stored in the inbox and handed to its session.
    Accepted,
    /// Seen before (same update_id); nothing done.
    Duplicate,
    /// Not for us (kind, chat, not addressed…); counted.
    Ignored,
}

/// One configured bot.
pub struct TelegramBot {
    pub config: TelegramConfig,
    pub api: BotApi,
    identity: RwLock<BotIdentity>,
    store: Arc<dyn Store>,
    node: String,
    group_scope: GroupScope,
    /// Whether `!fault:poller-panic` may crash the polling actor (tests only).
    fault_injection: bool,
}

impl TelegramBot {
    pub fn new(
        config: TelegramConfig,
        token: &str,
        store: Arc<dyn Store>,
        node: String,
        group_scope: GroupScope,
        fault_injection: bool,
    ) -> Self {
        let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build().expect("HTTP client");
        let api = BotApi::new(client, &config.api_base, token);
        let identity = RwLock::new(BotIdentity::new(None, config.bot_username.as_deref().unwrap_or_default()));
        Self { config, api, identity, store, node, group_scope, fault_injection }
    }

    pub fn account(&self) -> &str {
        &self.config.account
    }

    /// Learns the bot's id and username (`getMe`) and, in webhook mode with `webhook_url` set,
    /// registers the webhook with its secret. Failures are logged; the bot keeps working with
    /// what the config says.
    pub async fn init(&self) {
        match self.api.get_me().await {
            Ok(me) => {
                let mut id = BotIdentity::from_user(&me);
                if let Some(configured) = &self.config.bot_username {
                    id.username = configured.trim_start_matches('@').to_string();
                }
                tracing::info!(account = %self.config.account, username = %id.username, "Telegram bot identified (getMe).");
                *self.identity.write().expect("identity lock") = id;
            }
            Err(e) => tracing::warn!(account = %self.config.account, error = %e, "getMe failed; using the configured bot_username."),
        }
        if let (TelegramMode::Webhook, Some(url), Some(secret)) = (self.config.mode, &self.config.webhook_url, &self.config.secret_token) {
            match self.api.set_webhook(url, secret, ALLOWED_UPDATES).await {
                Ok(()) => tracing::info!(account = %self.config.account, "Telegram webhook registered."),
                Err(e) => tracing::error!(account = %self.config.account, error = %e, "setWebhook failed."),
            }
        }
        telemetry::register_platform_series(PLATFORM, &self.config.account);
    }

    /// Checks the webhook secret header in constant time.
    pub fn secret_matches(&self, presented: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        match (&self.config.secret_token, presented) {
            (Some(expected), Some(p)) => expected.as_bytes().ct_eq(p.as_bytes()).into(),
            _ => false,
        }
    }

    /// Handles one raw update: triage, de-duplicate by update_id, store in the inbox, hand to
    /// the session. An `Err` means nothing was stored (the caller must not acknowledge it).
    pub async fn accept_update(&self, raw: &Value) -> Result<UpdateOutcome, StoreError> {
        let account = self.config.account.as_str();
        let update: Update = match serde_json::from_value(raw.clone()) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(account, error = %e, "Skipped a Telegram update that does not parse.");
                telemetry::platform_update(PLATFORM, account, "malformed", "ignored");
                return Ok(UpdateOutcome::Ignored);
            }
        };
        let kind = update.kind();
        let identity = self.identity.read().expect("identity lock").clone();
        let incoming = match triage(&update, &identity) {
            Triage::Answer(i) => i,
            Triage::Ignore { reason } => {
                tracing::debug!(account, reason, "Ignored a Telegram update.");
                telemetry::platform_update(PLATFORM, account, kind, "ignored");
                return Ok(UpdateOutcome::Ignored);
            }
            Triage::Migrated { from, to } => {
                self.migrate(from, to).await;
                telemetry::platform_update(PLATFORM, account, kind, "migrated");
                return Ok(UpdateOutcome::Ignored);
            }
        };
        if !self.config.allowed_chats.is_empty() && !self.config.allowed_chats.contains(&incoming.chat_id) {
            telemetry::platform_update(PLATFORM, account, kind, "not_allowed");
            return Ok(UpdateOutcome::Ignored);
        }
        let is_group = matches!(incoming.chat_type, ChatType::Group | ChatType::Supergroup);
        let user_part = (is_group && self.group_scope == GroupScope::User).then(|| incoming.user_id.to_string());
        let thread = incoming.thread_id.map(|t| t.to_string());
        let key = conversation_key(PLATFORM, account, &incoming.chat_id.to_string(), thread.as_deref(), user_part.as_deref());
        let route = json!({
            "chat_id": incoming.chat_id,
            "thread_id": incoming.thread_id,
            "message_id": incoming.message_id,
            "group": is_group,
        });
        let payload = InboxPayload { options: Default::default(), route: Some(route.clone()) };
        let inbound = NewInbound {
            platform: PLATFORM.into(),
            account: account.into(),
            dedup_key: Some(format!("telegram:{account}:{}", incoming.update_id)),
            conversation: key.clone(),
            user: incoming.user_name.clone(),
            text: incoming.text.clone(),
            payload: payload.to_json(),
        };
        let id = match self.store.inbox_accept(&inbound, &self.node).await? {
            Accepted::Duplicate(_) => {
                telemetry::inbox_duplicate(PLATFORM);
                telemetry::platform_update(PLATFORM, account, kind, "duplicate");
                return Ok(UpdateOutcome::Duplicate);
            }
            Accepted::New(id) => id,
        };
        telemetry::platform_update(PLATFORM, account, kind, "handled");
        telemetry::message_received(PLATFORM);
        let req = ChatRequest {
            platform: PLATFORM,
            conversation: key,
            user: incoming.user_name,
            text: incoming.text,
            options: Default::default(),
            deltas: None,
            accepted_at: std::time::Instant::now(),
            inbox_id: Some(id),
            account: account.into(),
            attempts: 0,
            route: Some(route),
        };
        if !route_message(req, None) {
            tracing::warn!(account, "The session router is restarting; the update stays in the inbox and is replayed.");
        }
        Ok(UpdateOutcome::Accepted)
    }

    /// A group became a supergroup: its conversation moves to the new chat id.
    async fn migrate(&self, from: i64, to: i64) {
        let account = self.config.account.as_str();
        let old = conversation_key(PLATFORM, account, &from.to_string(), None, None);
        let new = conversation_key(PLATFORM, account, &to.to_string(), None, None);
        if let Err(e) = self.store.rename_conversation(&old, &new, &conversation_hash(&new)).await {
            tracing::error!(account, error = %e, "Could not move a migrated group's conversation.");
        } else {
            if let Some(r) = ActorRef::<RouterMsg>::where_is(ROUTER_NAME.to_string()) {
                let _ = r.cast(RouterMsg::Evict { key: old });
            }
            tracing::info!(account, from, to, "A group was upgraded to a supergroup; its conversation moved.");
        }
    }
}

/// Sends replies to Telegram: HTML-escaped, split at 4096 characters, rate-limited per chat,
/// per group and per bot.
pub struct TelegramSender {
    bot: Arc<TelegramBot>,
    limiter: Mutex<SendLimiter>,
}

impl TelegramSender {
    pub fn new(bot: Arc<TelegramBot>) -> Self {
        Self { bot, limiter: Mutex::new(SendLimiter::new(Limits::default())) }
    }
}

fn route_chat(route: &Value) -> (i64, Option<i64>, Option<i64>, bool) {
    (
        route["chat_id"].as_i64().unwrap_or(0),
        route["thread_id"].as_i64(),
        route["message_id"].as_i64(),
        route["group"].as_bool().unwrap_or(false),
    )
}

fn send_error(e: TgError) -> SendError {
    match e {
        TgError::RetryAfter(d) => SendError::RetryAfter(d),
        TgError::Transient(m) | TgError::BadResponse(m) => SendError::Transient(m),
        other => SendError::Permanent(other.to_string()),
    }
}

#[async_trait]
impl PlatformSender for TelegramSender {
    fn platform(&self) -> &'static str {
        PLATFORM
    }

    fn account(&self) -> &str {
        self.bot.account()
    }

    fn chunks(&self, text: &str) -> Vec<String> {
        let text = if text.trim().is_empty() { "…" } else { text };
        split_message(text, MAX_MESSAGE_LEN)
    }

    fn reserve(&self, route: &Value) -> Duration {
        let (chat, _, _, group) = route_chat(route);
        self.limiter.lock().expect("limiter lock").reserve(chat, group, Instant::now())
    }

    async fn send(&self, route: &Value, chunk: &str, _key: &str, first: bool) -> Result<(), SendError> {
        let (mut chat_id, thread, message_id, _) = route_chat(route);
        let mut msg = SendMessage {
            chat_id,
            text: escape_html(chunk),
            parse_mode: Some("HTML"),
            message_thread_id: thread,
            reply_to_message_id: if first { message_id } else { None },
        };
        for _ in 0..3 {
            match self.bot.api.send_message(&msg).await {
                Ok(_) => return Ok(()),
                Err(TgError::CantParseEntities(why)) if msg.parse_mode.is_some() => {
                    tracing::warn!(account = %self.bot.account(), %why, "Telegram refused the HTML; sending as plain text.");
                    msg.parse_mode = None;
                    msg.text = chunk.to_string();
                }
                Err(TgError::Migrated(to)) if to != chat_id => {
                    self.bot.migrate(chat_id, to).await;
                    chat_id = to;
                    msg.chat_id = to;
                    msg.reply_to_message_id = None;
                }
                Err(e) => return Err(send_error(e)),
            }
        }
        Err(SendError::Permanent("the message could not be sent after falling back".into()))
    }

    fn streams(&self) -> bool {
        self.bot.config.stream
    }

    fn stream_interval(&self) -> Duration {
        Duration::from_millis(self.bot.config.stream_interval_ms)
    }

    async fn stream_update(&self, route: &Value, handle: Option<&Value>, text: &str) -> Result<Value, SendError> {
        let (chat_id, thread, message_id, _) = route_chat(route);
        match handle.and_then(Value::as_i64) {
            None => {
                let msg = SendMessage {
                    chat_id,
                    text: escape_html(text),
                    parse_mode: Some("HTML"),
                    message_thread_id: thread,
                    reply_to_message_id: message_id,
                };
                self.bot.api.send_message(&msg).await.map(|m| json!(m.message_id)).map_err(send_error)
            }
            Some(sent) => self
                .bot
                .api
                .edit_message_text(chat_id, sent, &escape_html(text), Some("HTML"))
                .await
                .map(|()| json!(sent))
                .map_err(send_error),
        }
    }

    async fn typing(&self, route: &Value) {
        let (chat, thread, _, _) = route_chat(route);
        if let Err(e) = self.bot.api.send_chat_action(chat, thread, "typing").await {
            tracing::debug!(error = %e, "sendChatAction failed.");
        }
    }
}

/// Long polling: `getUpdates` in a loop, acknowledging (advancing the offset past) only updates
/// already stored in the inbox. After a restart the offset starts over: Telegram re-sends what
/// was not acknowledged and the inbox drops the ones already stored, so nothing is lost or
/// answered twice.
pub struct TelegramPollerActor;

pub enum PollerMsg {
    Poll,
}

pub struct PollerState {
    bot: Arc<TelegramBot>,
    offset: i64,
    /// Consecutive failures, for the backoff.
    failures: u32,
    webhook_deleted: bool,
}

impl Actor for TelegramPollerActor {
    type Msg = PollerMsg;
    type State = PollerState;
    type Arguments = Arc<TelegramBot>;

    async fn pre_start(&self, myself: ActorRef<PollerMsg>, bot: Arc<TelegramBot>) -> Result<PollerState, ActorProcessingErr> {
        myself.cast(PollerMsg::Poll)?;
        Ok(PollerState { bot, offset: 0, failures: 0, webhook_deleted: false })
    }

    async fn handle(&self, myself: ActorRef<PollerMsg>, _msg: PollerMsg, st: &mut PollerState) -> Result<(), ActorProcessingErr> {
        if !st.webhook_deleted {
            // Telegram refuses getUpdates while a webhook is set.
            match st.bot.api.delete_webhook(false).await {
                Ok(()) => st.webhook_deleted = true,
                Err(e) => return backoff(&myself, st, &format!("deleteWebhook failed: {e}")),
            }
        }
        let updates = match st.bot.api.get_updates(st.offset, st.bot.config.poll_timeout_secs, ALLOWED_UPDATES).await {
            Ok(u) => u,
            Err(TgError::Conflict(e)) => {
                st.webhook_deleted = false;
                return backoff(&myself, st, &format!("getUpdates conflict: {e}"));
            }
            Err(e) => return backoff(&myself, st, &format!("getUpdates failed: {e}")),
        };
        for raw in updates {
            let Some(id) = super::telegram::types::update_id_of(&raw) else { continue };
            let outcome = match st.bot.accept_update(&raw).await {
                Ok(o) => o,
                // Not stored: do not acknowledge it; it comes back on the next poll.
                Err(e) => return backoff(&myself, st, &format!("could not store update {id}: {e}")),
            };
            if outcome == UpdateOutcome::Accepted && st.bot.fault_injection && raw.to_string().contains("!fault:poller-panic") {
                panic!("injected fault: poller panic after storing update {id}");
            }
            st.offset = st.offset.max(id + 1);
        }
        st.failures = 0;
        myself.cast(PollerMsg::Poll)?;
        Ok(())
    }
}

fn backoff(myself: &ActorRef<PollerMsg>, st: &mut PollerState, why: &str) -> Result<(), ActorProcessingErr> {
    st.failures += 1;
    let delay = Duration::from_millis(200u64.saturating_mul(1 << st.failures.min(8))).min(Duration::from_secs(30));
    tracing::warn!(account = %st.bot.account(), error = why, delay_ms = delay.as_millis() as u64, "Telegram polling failed; backing off.");
    myself.send_after(delay, || PollerMsg::Poll);
    Ok(())
}
