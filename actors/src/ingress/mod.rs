//! The one door of the message path. Every entry point (the HTTP chat API, the Telegram
//! webhook and poller, the Feishu webhook) turns what it received into an [`Inbound`] and calls
//! [`Ingress::accept`], which owns de-duplication, the durable inbox write, telemetry, building
//! the session request and routing it. Start-up replay, dead-letter replay and redelivery after
//! a session crash rebuild the session request from the stored row with the same constructor
//! ([`resume`]).
//!
//! Adapters ([`telegram`], [`feishu`]) verify and parse a platform request once and produce an
//! [`Inbound`] or an ignore reason; the protocol code they use lives in `crate::platforms`.

pub mod feishu;
pub mod limits;
pub mod row;
pub mod telegram;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use crate::egress::{DeliveryKey, Egress};
use crate::inference::GenerateOptions;
use crate::message::{Content, Platform, ReplyTarget};
use crate::session::{Caller, ChatError, ChatRequest, GroupScope, conversation_key, route_message};
use crate::store::{Accepted, InboxEntry, Store, StoreError};
use crate::telemetry::{self, UpdateOutcome};
use limits::{Admit, LimitsConfig, RateLimiter};

/// One message as every adapter produces it: authenticated, parsed, addressed.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub platform: Platform,
    /// The platform account (bot / app) that received it.
    pub account: String,
    /// The conversation key (see [`conversation_key`]).
    pub conversation: String,
    /// Who wrote it (display name or platform user id).
    pub user: String,
    /// The sender's stable platform id (rate limits; may equal `user`).
    pub sender_id: String,
    /// What it says.
    pub content: Content,
    /// The platform's id of this message, for de-duplication of re-deliveries (Telegram
    /// `update_id`, Feishu `event_id`, the HTTP API's `message_id`); `None` = no de-dup.
    pub message_id: Option<String>,
    /// Where the answer goes.
    pub reply_to: ReplyTarget,
    /// Generation settings (only the HTTP API sets them).
    pub options: GenerateOptions,
    /// The update kind, a bounded metric label (`message`, `edited_message`, …).
    pub kind: &'static str,
}

/// The HTTP API's account for requests without a key (`api.allow_anonymous`).
pub const ANONYMOUS_ACCOUNT: &str = "api";

impl Inbound {
    /// The inbox de-duplication key: platform, account and platform message id.
    pub fn dedup_key(&self) -> Option<String> {
        let id = self.message_id.as_deref()?;
        Some(match self.platform {
            Platform::Http if self.account == ANONYMOUS_ACCOUNT => format!("http:{id}"),
            Platform::Http => format!("http@{}:{id}", self.account),
            p => format!("{p}:{}:{id}", self.account),
        })
    }

    /// Moves an HTTP API message into the namespace of API key `key`: its own account,
    /// conversations (`http@KEY:ID`, which no anonymous id can name) and de-dup keys.
    pub fn for_api_key(mut self, key: &str) -> Self {
        if let Some(id) = self.conversation.strip_prefix("http:") {
            self.conversation = format!("http@{key}:{id}");
        }
        self.account = key.to_string();
        self
    }
}

/// What an adapter made of a verified platform update.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Answer it.
    Accept(Inbound),
    /// Nothing to answer; counted under `kind` with this outcome.
    Ignore { kind: &'static str, outcome: UpdateOutcome },
}

/// Why a message could not be accepted. Nothing was stored: the sender must not be told
/// "accepted" (a platform gets a 5xx and delivers it again).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AcceptError {
    #[error("could not store the message: {0}")]
    Storage(#[from] StoreError),
}

/// Which chats an account answers and how group chats map to conversations; the same rules
/// for every platform.
#[derive(Debug, Clone)]
pub struct ChatPolicy {
    /// Chats answered (empty = all), as the platform's chat ids in text form.
    pub allowed_chats: HashSet<String>,
    /// One conversation per group chat, or one per user within it.
    pub group_scope: GroupScope,
}

/// The chat a platform message arrived in, as the policy needs it.
#[derive(Debug, Clone, Copy)]
pub struct ChatRef<'a> {
    pub chat: &'a str,
    /// Topic / thread, where the platform has them.
    pub thread: Option<&'a str>,
    pub group: bool,
    /// The sender's stable id (for per-user group conversations).
    pub user_id: &'a str,
}

impl ChatPolicy {
    pub fn new(allowed_chats: impl IntoIterator<Item = String>, group_scope: GroupScope) -> Self {
        Self { allowed_chats: allowed_chats.into_iter().collect(), group_scope }
    }

    /// The conversation key of a message in `chat`, or `None` when the chat is not allowed.
    pub fn conversation(&self, platform: Platform, account: &str, chat: ChatRef<'_>) -> Option<String> {
        if !self.allowed_chats.is_empty() && !self.allowed_chats.contains(chat.chat) {
            return None;
        }
        let user = (chat.group && self.group_scope == GroupScope::User).then_some(chat.user_id);
        Some(conversation_key(platform, account, chat.chat, chat.thread, user))
    }
}

/// Per-user limits of platform messages (`[limits]`).
struct UserLimits {
    limiter: RateLimiter<(Platform, String, String)>,
    slow_down_reply: String,
}

/// The accept path's handle: the store, this node's name and the per-user limits.
#[derive(Clone)]
pub struct Ingress {
    store: Arc<dyn Store>,
    node: String,
    /// `None`: no per-user limit (`limits.user_per_minute = 0`).
    limits: Option<Arc<UserLimits>>,
}

impl Ingress {
    pub fn new(store: Arc<dyn Store>, node: String, limits: &LimitsConfig) -> Self {
        let limits = (limits.user_per_minute > 0).then(|| {
            Arc::new(UserLimits {
                limiter: RateLimiter::per_minute(limits.user_per_minute),
                slow_down_reply: limits.slow_down_reply.clone(),
            })
        });
        Self { store, node, limits }
    }

    /// Whether the sender of a platform message is within its limit; over it, the user is told
    /// to slow down (at most once a minute) and the message is dropped (acknowledged, counted).
    fn within_user_limit(&self, m: &Inbound) -> bool {
        let Some(limits) = &self.limits else { return true };
        let key = (m.platform, m.account.clone(), m.sender_id.clone());
        let Admit::No { notify, .. } = limits.limiter.check(&key, std::time::Instant::now()) else { return true };
        telemetry::rate_limited(m.platform, "user");
        if let Some(egress) = notify.then(|| Egress::of(m.platform, &m.account)).flatten() {
            egress.reply(m.reply_to.clone(), limits.slow_down_reply.clone(), DeliveryKey::for_inbox(None), None);
        }
        false
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Accepts one message: de-duplicates it, writes it to the inbox (durable before this
    /// returns `Ok`), counts it and hands it to its conversation's session. A waiting `caller`
    /// gets the answer through its reply port.
    pub async fn accept(&self, inbound: Inbound, caller: Option<Caller>) -> Result<Accepted, AcceptError> {
        let (platform, kind) = (inbound.platform, inbound.kind);
        let accepted = self.store.inbox_accept(&row::new_row(&inbound), &self.node).await?;
        let outcome = match accepted {
            Accepted::Duplicate(_) => {
                telemetry::inbox_duplicate(platform);
                UpdateOutcome::Duplicate
            }
            Accepted::New(_) => {
                telemetry::message_received(platform);
                UpdateOutcome::Handled
            }
        };
        if inbound.reply_to.is_platform() {
            telemetry::platform_update(platform, &inbound.account, kind, outcome);
        }
        if let Accepted::New(id) = accepted {
            route(request(inbound, id, 0, caller));
        }
        Ok(accepted)
    }

    /// Carries out an adapter's verdict: accepts the message or counts why it was ignored.
    pub async fn admit(&self, platform: Platform, account: &str, verdict: Verdict) -> Result<UpdateOutcome, AcceptError> {
        match verdict {
            Verdict::Accept(inbound) if !self.within_user_limit(&inbound) => {
                telemetry::platform_update(platform, account, inbound.kind, UpdateOutcome::RateLimited);
                Ok(UpdateOutcome::RateLimited)
            }
            Verdict::Accept(inbound) => Ok(match self.accept(inbound, None).await? {
                Accepted::New(_) => UpdateOutcome::Handled,
                Accepted::Duplicate(_) => UpdateOutcome::Duplicate,
            }),
            Verdict::Ignore { kind, outcome } => {
                telemetry::platform_update(platform, account, kind, outcome);
                Ok(outcome)
            }
        }
    }
}

/// The session request of an accepted message: the one constructor, used for fresh messages
/// and stored rows alike.
fn request(inbound: Inbound, inbox_id: i64, attempts: i64, caller: Option<Caller>) -> ChatRequest {
    ChatRequest {
        platform: inbound.platform,
        account: inbound.account,
        conversation: inbound.conversation,
        user: inbound.user,
        content: inbound.content,
        options: inbound.options,
        reply_to: inbound.reply_to,
        inbox_id,
        attempts,
        accepted_at: Instant::now(),
        caller,
    }
}

/// Hands a request to the session router. When the router is restarting the message stays in
/// the inbox (replayed at the next start) and a waiting caller is told so.
fn route(req: ChatRequest) {
    if let Err(mut req) = route_message(req) {
        tracing::warn!(inbox_id = req.inbox_id, "The session router is not running; the message stays in the inbox for replay.");
        if let Some(caller) = req.caller.take() {
            let _ = caller.reply.send(Err(ChatError::Internal("the session router is restarting".into())));
        }
    }
}

/// Why a stored row could not be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// The row is of a platform this build does not know, or its payload cannot be read
    /// (logged); it stays in the inbox.
    #[error("the inbox row cannot be read back")]
    Unreadable,
    /// The session router is not running; the row stays in the inbox for the next replay.
    #[error("the session router is not running")]
    NotRouted,
}

/// Hands a stored inbox row (start-up replay, dead-letter replay, redelivery after a session
/// crash) to its session.
pub fn resume(entry: &InboxEntry) -> Result<(), ResumeError> {
    let inbound = row::inbound_of(entry).ok_or(ResumeError::Unreadable)?;
    route_message(request(inbound, entry.id, entry.attempts, None)).map_err(|_| ResumeError::NotRouted)
}

/// The inbox row of a request, for the dead-letter queue.
pub fn entry_of(req: &ChatRequest, attempts: i64) -> InboxEntry {
    row::entry_of(req, attempts)
}

#[cfg(test)]
mod tests;
