//! `[[telegram]]` and `[[feishu]]` config sections: one entry per bot / app.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Reads a secret given inline, from a file, or from an environment variable (first set wins:
/// inline, `_file`, `_env`). `key` names the config key for error messages.
pub fn resolve_secret(key: &str, inline: &Option<String>, file: &Option<PathBuf>, env: &Option<String>) -> Result<Option<String>, String> {
    if let Some(v) = inline.as_ref().filter(|v| !v.is_empty()) {
        return Ok(Some(v.clone()));
    }
    if let Some(path) = file {
        return std::fs::read_to_string(path)
            .map(|s| Some(s.trim().to_string()))
            .map_err(|e| format!("`{key}_file`: cannot read {}: {e}", path.display()));
    }
    if let Some(var) = env {
        return std::env::var(var)
            .map(|v| Some(v.trim().to_string()))
            .map_err(|_| format!("`{key}_env`: environment variable {var} is not set"));
    }
    Ok(None)
}

/// How a Telegram bot receives updates.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TelegramMode {
    /// Telegram POSTs updates to `/webhook/telegram/{account}`.
    Webhook,
    /// The daemon long-polls `getUpdates`.
    Polling,
}

/// One Telegram bot (`[[telegram]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// Name used in routes (`/webhook/telegram/{account}`), conversation keys and metrics.
    pub account: String,
    /// Bot token from @BotFather (or `token_file` / `token_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    #[serde(default = "default_mode")]
    pub mode: TelegramMode,
    /// Webhook mode: the `X-Telegram-Bot-Api-Secret-Token` Telegram must send (1-256 of
    /// `A-Z a-z 0-9 _ -`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_token: Option<String>,
    /// Webhook mode: when set, `setWebhook` is called at start with this URL and the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Bot API base URL (tests point it at a local fake).
    #[serde(default = "default_telegram_api")]
    pub api_base: String,
    /// The bot's username without `@`; learned through `getMe` at start when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_username: Option<String>,
    /// Only these chat ids are answered (empty: all).
    #[serde(default)]
    pub allowed_chats: Vec<i64>,
    /// Polling mode: long-poll timeout in seconds.
    #[serde(default = "default_poll_timeout")]
    pub poll_timeout_secs: u64,
    /// Stream replies: post the first words, then edit the message as text arrives.
    #[serde(default)]
    pub stream: bool,
    /// Streaming: at most one edit per this many milliseconds (Telegram allows about one
    /// message update per second per chat).
    #[serde(default = "default_stream_interval")]
    pub stream_interval_ms: u64,
}

fn default_stream_interval() -> u64 {
    1000
}

fn default_mode() -> TelegramMode {
    TelegramMode::Webhook
}
fn default_telegram_api() -> String {
    "https://api.telegram.org".into()
}
fn default_poll_timeout() -> u64 {
    30
}

impl TelegramConfig {
    pub fn validate(&self, i: usize) -> Result<(), String> {
        let k = |f: &str| format!("telegram[{i}].{f}");
        check_account(&self.account, &k("account"))?;
        if self.mode == TelegramMode::Webhook {
            let Some(secret) = &self.secret_token else {
                return Err(format!("`{}` is required in webhook mode (Telegram sends it with every update)", k("secret_token")));
            };
            if secret.is_empty() || secret.len() > 256 || !secret.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(format!("`{}` must be 1-256 characters of A-Z, a-z, 0-9, _ and -", k("secret_token")));
            }
        }
        if self.stream_interval_ms < 100 {
            return Err(format!("`{}` must be at least 100. Given: {}", k("stream_interval_ms"), self.stream_interval_ms));
        }
        if self.poll_timeout_secs > 50 {
            return Err(format!("`{}` must be at most 50. Given: {}", k("poll_timeout_secs"), self.poll_timeout_secs));
        }
        Ok(())
    }

    pub fn resolve_token(&self, i: usize) -> Result<String, String> {
        resolve_secret(&format!("telegram[{i}].token"), &self.token, &self.token_file, &self.token_env)?
            .ok_or_else(|| format!("`telegram[{i}].token` (or `token_file` / `token_env`) is required"))
    }
}

/// One Feishu / Lark app (`[[feishu]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeishuConfig {
    /// Name used in routes (`/webhook/feishu/{account}`), conversation keys and metrics.
    pub account: String,
    pub app_id: String,
    /// App secret (or `app_secret_file` / `app_secret_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret_env: Option<String>,
    /// Verification Token from the app's Event Subscriptions page.
    pub verification_token: String,
    /// Encrypt Key from the same page. Required: with it every event is signed and carries a
    /// timestamp (replay window); without it the static verification token, present in every
    /// event body, is all that authenticates a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt_key: Option<String>,
    /// Accept unsigned events (no `encrypt_key`): only the verification token is checked and
    /// there is no replay window. Off by default; a warning is logged at start when on.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// `https://open.feishu.cn`, or `https://open.larksuite.com` for Lark.
    #[serde(default = "default_feishu_api")]
    pub api_base: String,
    /// The bot's open_id; learned from the bot info API at start when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_open_id: Option<String>,
    /// Only these chat ids are answered (empty: all).
    #[serde(default)]
    pub allowed_chats: Vec<String>,
    /// Signed requests older or newer than this are refused (replay protection).
    #[serde(default = "default_skew")]
    pub max_skew_secs: u64,
    /// Stream replies as an interactive card (Markdown) updated as text arrives.
    #[serde(default)]
    pub stream: bool,
    /// Streaming: at most one card update per this many milliseconds.
    #[serde(default = "default_feishu_stream_interval")]
    pub stream_interval_ms: u64,
}

fn default_feishu_stream_interval() -> u64 {
    1000
}

fn default_feishu_api() -> String {
    "https://open.feishu.cn".into()
}
fn default_skew() -> u64 {
    300
}

impl FeishuConfig {
    pub fn validate(&self, i: usize) -> Result<(), String> {
        let k = |f: &str| format!("feishu[{i}].{f}");
        check_account(&self.account, &k("account"))?;
        if self.app_id.is_empty() {
            return Err(format!("`{}` must not be empty", k("app_id")));
        }
        if self.stream_interval_ms < 100 {
            return Err(format!("`{}` must be at least 100. Given: {}", k("stream_interval_ms"), self.stream_interval_ms));
        }
        if self.verification_token.is_empty() {
            return Err(format!("`{}` must not be empty", k("verification_token")));
        }
        if self.encrypt_key.as_deref().is_none_or(str::is_empty) && !self.allow_unsigned {
            return Err(format!(
                "`{}` is required: without it events are not signed and can be forged with the verification token alone (set `{} = true` to accept that)",
                k("encrypt_key"),
                k("allow_unsigned")
            ));
        }
        Ok(())
    }

    pub fn resolve_secret(&self, i: usize) -> Result<String, String> {
        resolve_secret(&format!("feishu[{i}].app_secret"), &self.app_secret, &self.app_secret_file, &self.app_secret_env)?
            .ok_or_else(|| format!("`feishu[{i}].app_secret` (or `app_secret_file` / `app_secret_env`) is required"))
    }
}

fn check_account(account: &str, key: &str) -> Result<(), String> {
    if account.is_empty() || account.len() > 64 || !account.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("`{key}` must be 1-64 characters of A-Z, a-z, 0-9, _ and -. Given: {account:?}"));
    }
    Ok(())
}
