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
pub use config::{InboxConfig, SessionConfig};
pub use router::{ROUTER_NAME, RouterArgs, RouterMsg, SessionRouterActor};

use crate::inference::{FinishReason, GenerateOptions, InferenceError};

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
