//! Conversations: the session router (conversation key → session actor, by hash) and one
//! session actor per live conversation, which keeps the turns and talks to the inference layer.

pub mod actor;
pub mod config;
pub mod router;

use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

pub use actor::{SessionActor, SessionArgs, SessionMsg};
pub use config::{GroupScope, InboxConfig, SessionConfig};
pub use router::{ROUTER_NAME, RouterArgs, RouterMsg, SessionRouterActor, route_message};

use crate::inference::{FinishReason, GenerateOptions, InferenceError};

/// The conversation key: platform, account, chat, then the thread/topic where the platform has
/// one, then the user in group chats scoped per user. `:` separates the parts.
pub fn conversation_key(platform: &str, account: &str, chat: &str, thread: Option<&str>, user: Option<&str>) -> String {
    let mut key = format!("{platform}:{account}:{chat}");
    if let Some(t) = thread.filter(|t| !t.is_empty()) {
        key.push_str(":t");
        key.push_str(t);
    }
    if let Some(u) = user.filter(|u| !u.is_empty()) {
        key.push_str(":u");
        key.push_str(u);
    }
    key
}

/// A stable hash of a conversation key: the first 16 hex digits of its SHA-256. Stable across
/// restarts, versions and nodes, so it can name actors and rows.
pub fn conversation_hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

/// One incoming chat message, already authenticated and normalized by an ingress.
#[derive(Debug)]
pub struct ChatRequest {
    /// Platform label (`http`, `telegram`, `feishu`), bounded, for metrics.
    pub platform: &'static str,
    /// The conversation key (platform, account, chat, …), opaque here.
    pub conversation: String,
    /// Who wrote the message.
    pub user: String,
    /// The message text.
    pub text: String,
    /// Per-request generation settings.
    pub options: GenerateOptions,
    /// When set, text deltas are streamed here as they are generated.
    pub deltas: Option<mpsc::UnboundedSender<String>>,
    /// When the message was accepted, for the end-to-end latency.
    pub accepted_at: Instant,
    /// The message's inbox row, once stored durably.
    pub inbox_id: Option<i64>,
    /// Platform account that received it (for the inbox and egress).
    pub account: String,
    /// Attempts already made (from the inbox, when replayed).
    pub attempts: i64,
    /// Where the reply goes on the platform (chat, thread, message to reply to), as the
    /// platform's egress understands it; `None` for the HTTP API (the caller waits for it).
    pub route: Option<serde_json::Value>,
}

/// What the inbox keeps besides the text: generation options and the reply route.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct InboxPayload {
    #[serde(default)]
    pub options: GenerateOptions,
    #[serde(default)]
    pub route: Option<serde_json::Value>,
}

impl InboxPayload {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

impl ChatRequest {
    /// Rebuilds a request from an inbox row (start-up replay, dead-letter replay, redelivery
    /// after a session crash). `None` for a platform this build does not know.
    pub fn from_inbox(e: &crate::store::InboxEntry) -> Option<ChatRequest> {
        let platform = match e.platform.as_str() {
            "http" => "http",
            "telegram" => "telegram",
            "feishu" => "feishu",
            other => {
                tracing::warn!(platform = other, inbox_id = e.id, "Inbox entry of an unknown platform skipped.");
                return None;
            }
        };
        let payload: InboxPayload = serde_json::from_str(&e.payload).unwrap_or_default();
        Some(ChatRequest {
            platform,
            conversation: e.conversation.clone(),
            user: e.user.clone(),
            text: e.text.clone(),
            options: payload.options,
            deltas: None,
            accepted_at: Instant::now(),
            inbox_id: Some(e.id),
            account: e.account.clone(),
            attempts: e.attempts,
            route: payload.route,
        })
    }
}

/// The answer to a chat message.
#[derive(Debug, Clone, Serialize)]
pub struct ChatReply {
    pub conversation: String,
    pub reply: String,
    /// Generated tokens.
    pub tokens: usize,
    pub prompt_tokens: usize,
    pub finish_reason: Option<FinishReason>,
    #[serde(skip)]
    pub latency: Duration,
}

/// Why a chat message got no model reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("the message alone has {tokens} tokens, more than the model's context window allows ({limit})")]
    MessageTooLong { tokens: usize, limit: usize },
    #[error("the conversation's session failed while handling the message")]
    SessionFailed,
    #[error("{apology} (dead letter {id}: {reason})")]
    DeadLettered { id: i64, apology: String, reason: String },
    #[error("the message was already received (inbox entry {0})")]
    Duplicate(i64),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
}
