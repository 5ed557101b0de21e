//! Sends answers to Telegram: HTML-escaped, split at 4096 characters, rate-limited per chat,
//! per group and per bot, streamed by `editMessageText` where enabled.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::limiter::{Limits, SendLimiter};
use super::{PlatformSender, SendError, Sent, Streaming};
use crate::message::{Platform, ReplyTarget};
use crate::platforms::telegram::format::{MAX_MESSAGE_LEN, escape_html, split_message};
use crate::platforms::telegram::{BotApi, SendMessage, TgError};

pub struct TelegramSender {
    api: BotApi,
    account: String,
    streaming: Streaming,
    limiter: Mutex<SendLimiter<i64>>,
}

impl TelegramSender {
    pub fn new(api: BotApi, account: String, streaming: Streaming) -> Self {
        Self { api, account, streaming, limiter: Mutex::new(SendLimiter::new(Limits::default())) }
    }
}

/// The Telegram parts of a target: chat, topic, message to reply to, group.
fn parts(target: &ReplyTarget) -> Result<(i64, Option<i64>, Option<i64>, bool), SendError> {
    match target {
        ReplyTarget::Telegram { chat_id, thread_id, message_id, group } => Ok((*chat_id, *thread_id, *message_id, *group)),
        other => Err(SendError::Permanent(format!("not a Telegram target: {other:?}"))),
    }
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
    fn platform(&self) -> Platform {
        Platform::Telegram
    }

    fn account(&self) -> &str {
        &self.account
    }

    fn chunks(&self, text: &str) -> Vec<String> {
        let text = if text.trim().is_empty() { "…" } else { text };
        split_message(text, MAX_MESSAGE_LEN)
    }

    fn reserve(&self, target: &ReplyTarget) -> Duration {
        let (chat, group) = parts(target).map(|(c, _, _, g)| (c, g)).unwrap_or_default();
        self.limiter.lock().expect("limiter lock").reserve(chat, group, Instant::now())
    }

    /// Falls back to plain text when Telegram refuses the HTML, and follows a group that was
    /// upgraded to a supergroup (reported as the new target).
    async fn send(&self, target: &ReplyTarget, chunk: &str, _key: &str, first: bool) -> Result<Sent, SendError> {
        let (chat_id, thread, message_id, group) = parts(target)?;
        let mut msg = SendMessage {
            chat_id,
            text: escape_html(chunk),
            parse_mode: Some("HTML"),
            message_thread_id: thread,
            reply_to_message_id: if first { message_id } else { None },
        };
        let mut moved = None;
        for _ in 0..3 {
            match self.api.send_message(&msg).await {
                Ok(_) => return Ok(moved),
                Err(TgError::CantParseEntities(why)) if msg.parse_mode.is_some() => {
                    tracing::warn!(account = %self.account, %why, "Telegram refused the HTML; sending as plain text.");
                    msg.parse_mode = None;
                    msg.text = chunk.to_string();
                }
                Err(TgError::Migrated(to)) if to != msg.chat_id => {
                    msg.chat_id = to;
                    msg.reply_to_message_id = None;
                    moved = Some(ReplyTarget::Telegram { chat_id: to, thread_id: thread, message_id: None, group });
                }
                Err(e) => return Err(send_error(e)),
            }
        }
        Err(SendError::Permanent("the message could not be sent after falling back".into()))
    }

    fn streams(&self) -> bool {
        self.streaming.enabled
    }

    fn stream_interval(&self) -> Duration {
        self.streaming.interval
    }

    async fn stream_update(&self, target: &ReplyTarget, handle: Option<&str>, text: &str) -> Result<String, SendError> {
        let (chat_id, thread, message_id, _) = parts(target)?;
        match handle.and_then(|h| h.parse::<i64>().ok()) {
            None => {
                let msg = SendMessage {
                    chat_id,
                    text: escape_html(text),
                    parse_mode: Some("HTML"),
                    message_thread_id: thread,
                    reply_to_message_id: message_id,
                };
                self.api.send_message(&msg).await.map(|m| m.message_id.to_string()).map_err(send_error)
            }
            Some(sent) => self
                .api
                .edit_message_text(chat_id, sent, &escape_html(text), Some("HTML"))
                .await
                .map(|()| sent.to_string())
                .map_err(send_error),
        }
    }

    async fn typing(&self, target: &ReplyTarget) {
        let Ok((chat, thread, _, _)) = parts(target) else { return };
        if let Err(e) = self.api.send_chat_action(chat, thread, "typing").await {
            tracing::debug!(error = %e, "sendChatAction failed.");
        }
    }
}
