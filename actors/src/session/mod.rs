//! Conversations: the session router (conversation key → session actor, by hash), one session
//! actor per live conversation, and [`Conversation`], the plain state behind that actor (turn
//! window, prompt fitting, commands, the failure decision), unit-tested without any actor.

pub mod actor;
pub mod config;
pub mod conversation;
pub mod router;

use std::time::{Duration, Instant};

use ractor::RpcReplyPort;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

pub use actor::{SessionActor, SessionArgs, SessionMsg};
pub use config::{GroupScope, InboxConfig, SessionConfig};
pub use conversation::{Command, Conversation, FailureAction, on_failure};
pub use router::{RouterArgs, RouterMsg, SessionRouterActor, evict, move_conversation, route_message};

use crate::inference::{FinishReason, GenerateOptions, InferenceError};
use crate::message::{Content, Platform, ReplyTarget};

/// The conversation key: platform, account, chat, then the thread/topic where the platform has
/// one, then the user in group chats scoped per user. `:` separates the parts.
pub fn conversation_key(platform: Platform, account: &str, chat: &str, thread: Option<&str>, user: Option<&str>) -> String {
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

/// Where a caller waiting for the answer (the HTTP chat API) gets it.
pub type ReplyPort = RpcReplyPort<Result<ChatReply, ChatError>>;

/// A caller waiting on its connection for the answer.
#[derive(Debug)]
pub struct Caller {
    /// Gets the final answer or the error.
    pub reply: ReplyPort,
    /// When set, text deltas are streamed here as they are generated.
    pub deltas: Option<mpsc::UnboundedSender<String>>,
}

/// One accepted message as its session handles it: durable in the inbox (`inbox_id`), built by
/// [`crate::ingress`] either from a fresh [`crate::ingress::Inbound`] or from a stored row.
#[derive(Debug)]
pub struct ChatRequest {
    pub platform: Platform,
    /// Platform account that received it (selects the egress).
    pub account: String,
    /// The conversation key (platform, account, chat, …), opaque here.
    pub conversation: String,
    /// Who wrote the message.
    pub user: String,
    /// What it says.
    pub content: Content,
    /// Per-request generation settings.
    pub options: GenerateOptions,
    /// Where the answer goes.
    pub reply_to: ReplyTarget,
    /// The message's inbox row.
    pub inbox_id: i64,
    /// Attempts already made (from the inbox, when replayed).
    pub attempts: i64,
    /// When the message was accepted, for the end-to-end latency.
    pub accepted_at: Instant,
    /// A caller waiting for the answer; `None` for platform messages and replays.
    pub caller: Option<Caller>,
}

impl ChatRequest {
    /// The message text ("" for unsupported content).
    pub fn text(&self) -> &str {
        match &self.content {
            Content::Text(t) => t,
            Content::Unsupported { .. } => "",
        }
    }

    /// Sends a delta to the waiting caller, if it streams.
    pub fn stream_to_caller(&self, delta: &str) {
        if let Some(tx) = self.caller.as_ref().and_then(|c| c.deltas.as_ref()) {
            let _ = tx.send(delta.to_string());
        }
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
