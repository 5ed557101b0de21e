//! Sends answers to Feishu / Lark: split under the size limit, each chunk a reply to the user's
//! message with a stable `uuid` so a retried send never posts twice; Markdown-rich answers go
//! out as interactive cards, and streamed answers are a card updated in place.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;

use super::limiter::{Limits, SendLimiter};
use super::{PlatformSender, SendError, Sent, Streaming};
use crate::message::{Platform, ReplyTarget};
use crate::platforms::feishu::message::{TEXT_CHUNK_LIMIT_BYTES, split_text};
use crate::platforms::feishu::{FeishuApi, FsError, text_content};
use crate::telemetry;

pub struct FeishuSender {
    api: Arc<FeishuApi>,
    account: String,
    streaming: Streaming,
    limiter: Mutex<SendLimiter<String>>,
}

impl FeishuSender {
    pub fn new(api: Arc<FeishuApi>, account: String, streaming: Streaming) -> Self {
        Self { api, account, streaming, limiter: Mutex::new(SendLimiter::new(Limits::feishu())) }
    }

    fn record_refreshes(&self) {
        telemetry::feishu_token_refreshes(&self.account, self.api.token_refreshes());
    }
}

/// The Feishu parts of a target: chat, message to reply to, group.
fn parts(target: &ReplyTarget) -> Result<(&str, &str, bool), SendError> {
    match target {
        ReplyTarget::Feishu { chat_id, message_id, group } => Ok((chat_id, message_id, *group)),
        other => Err(SendError::Permanent(format!("not a Feishu target: {other:?}"))),
    }
}

fn send_error(e: FsError) -> SendError {
    match e {
        FsError::RateLimited { retry_after } => SendError::RetryAfter(retry_after.unwrap_or(Duration::from_secs(1))),
        e @ (FsError::TokenInvalid | FsError::Transient(_)) => SendError::Transient(e.to_string()),
        e @ FsError::Permanent { .. } => SendError::Permanent(e.to_string()),
    }
}

#[async_trait]
impl PlatformSender for FeishuSender {
    fn platform(&self) -> Platform {
        Platform::Feishu
    }

    fn account(&self) -> &str {
        &self.account
    }

    fn chunks(&self, text: &str) -> Vec<String> {
        let text = if text.trim().is_empty() { "…" } else { text };
        split_text(text, TEXT_CHUNK_LIMIT_BYTES)
    }

    fn reserve(&self, target: &ReplyTarget) -> Duration {
        let (chat, group) = parts(target).map(|(c, _, g)| (c.to_string(), g)).unwrap_or_default();
        self.limiter.lock().expect("limiter").reserve(chat, group, Instant::now())
    }

    fn streams(&self) -> bool {
        self.streaming.enabled
    }

    fn stream_interval(&self) -> Duration {
        self.streaming.interval
    }

    /// Streaming posts an interactive card (Markdown) as the reply, then updates that card.
    async fn stream_update(&self, target: &ReplyTarget, handle: Option<&str>, text: &str) -> Result<String, SendError> {
        let (_, message_id, _) = parts(target)?;
        let card = markdown_card(text);
        let result = match handle {
            None => self.api.reply(message_id, "interactive", &card, "").await,
            Some(sent) => {
                let path = format!("/open-apis/im/v1/messages/{sent}");
                self.api.call(reqwest::Method::PATCH, &path, Some(&json!({"content": card}))).await.map(|_| sent.to_string())
            }
        };
        self.record_refreshes();
        result.map_err(send_error)
    }

    async fn send(&self, target: &ReplyTarget, chunk: &str, key: &str, _first: bool) -> Result<Sent, SendError> {
        let (_, message_id, _) = parts(target)?;
        // Markdown-rich answers go out as an interactive card, which renders Markdown.
        let result = if looks_like_markdown(chunk) {
            self.api.reply(message_id, "interactive", &markdown_card(chunk), key).await
        } else {
            self.api.reply(message_id, "text", &text_content(chunk), key).await
        };
        self.record_refreshes();
        result.map(|_| None).map_err(send_error)
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
            ["# ", "## ", "### ", "- ", "* ", "1. "].iter().any(|p| t.starts_with(p))
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
        let card: serde_json::Value = serde_json::from_str(&markdown_card("# Title")).unwrap();
        assert_eq!(card["elements"][0]["tag"], "markdown");
        assert_eq!(card["elements"][0]["content"], "# Title");
    }
}
