//! `[sessions]` settings.

use serde::{Deserialize, Serialize};

/// Conversation handling (`[sessions]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// The system prompt put before every conversation (empty = none).
    pub system_prompt: String,
    /// Most prompt tokens (system prompt + history + new message) sent to the model; the oldest
    /// turns are dropped to fit. 0 = the model's context window minus the reply budget.
    pub max_history_tokens: usize,
    /// A conversation's actor stops after this many idle seconds (rebuilt on the next message).
    pub idle_timeout_secs: u64,
    /// Most turns kept in memory per conversation.
    pub max_turns: usize,
    /// In group chats of platforms that have them (Telegram, Feishu): one conversation per
    /// chat (`chat`) or one per user within the chat (`user`).
    pub group_scope: GroupScope,
}

/// How group chats map to conversations.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GroupScope {
    Chat,
    User,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            system_prompt: "You are Switchboard, a helpful assistant. Answer briefly.".into(),
            max_history_tokens: 0,
            idle_timeout_secs: 900,
            max_turns: 64,
            group_scope: GroupScope::Chat,
        }
    }
}

impl SessionConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.idle_timeout_secs == 0 {
            return Err("`sessions.idle_timeout_secs` must be at least 1. Given: 0".into());
        }
        if self.max_turns == 0 {
            return Err("`sessions.max_turns` must be at least 1. Given: 0".into());
        }
        Ok(())
    }
}

/// Retries and the dead-letter queue (`[inbox]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// Attempts at answering a message before it moves to the dead-letter queue.
    pub max_attempts: u32,
    /// Backoff before the first retry, in milliseconds; doubled for each further attempt.
    pub retry_backoff_ms: u64,
    /// What the user is told when their message ends in the dead-letter queue.
    pub apology: String,
    /// Pending messages of another node untouched this long are taken over at start (their
    /// node is gone, e.g. a replaced pod). 0 disables.
    pub orphan_after_secs: u64,
    /// How often the sweeper hands this node's pending messages that no session holds (e.g.
    /// stranded while the router restarted) back to their sessions, in seconds. Default: 30.
    pub sweep_interval_secs: u64,
    /// How long Telegram update ids are remembered for de-duplication, in seconds. Telegram
    /// restarts update ids at random after a week without updates, so older ids are forgotten
    /// and a reused id is a new message. Default: 604800 (7 days).
    pub telegram_dedup_window_secs: u64,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            retry_backoff_ms: 500,
            apology: "Sorry, I could not answer that just now. Your message was kept and will be looked at.".into(),
            orphan_after_secs: 300,
            sweep_interval_secs: 30,
            telegram_dedup_window_secs: 7 * 24 * 3600,
        }
    }
}

impl InboxConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("`inbox.max_attempts` must be at least 1. Given: 0".into());
        }
        if self.sweep_interval_secs == 0 {
            return Err("`inbox.sweep_interval_secs` must be at least 1. Given: 0".into());
        }
        if self.telegram_dedup_window_secs == 0 {
            return Err("`inbox.telegram_dedup_window_secs` must be at least 1. Given: 0".into());
        }
        Ok(())
    }
}
