//! The plain state of one conversation, in the style of text-generation-inference's router:
//! everything the session actor decides lives here as ordinary methods, tested without an
//! actor, a channel or a database. The actor only carries the decisions out.

use std::time::Duration;

use super::{ChatError, InboxConfig, SessionConfig};
use crate::inference::InferenceError;
use crate::message::Platform;
use crate::model::ChatMessage;
use crate::telemetry::AnswerOutcome;

/// A chat command, answered without the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `/reset`: start a fresh context (older turns stay in the store for audit).
    Reset,
    /// `/help`: what the assistant understands.
    Help,
}

impl Command {
    /// The command a message is, if it is one (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Option<Command> {
        match text.trim() {
            "/reset" => Some(Command::Reset),
            "/help" => Some(Command::Help),
            _ => None,
        }
    }
}

/// The answer to `/reset`.
pub const RESET_REPLY: &str = "Started a fresh conversation.";
/// What a user gets for a message type the assistant cannot read.
pub const UNSUPPORTED_REPLY: &str = "Sorry, I can only read text messages for now.";
/// What a user gets when the message alone does not fit the model's context.
pub const TOO_LONG_REPLY: &str = "Sorry, that message is too long for me. Could you shorten it?";

/// The `/help` text; how long answers are split depends on the platform.
pub fn help_text(platform: Platform) -> String {
    let parts = match platform {
        Platform::Telegram => " Long answers arrive in parts of <= 4096 characters.",
        Platform::Feishu => " Long answers arrive in several messages; formatted ones as cards.",
        Platform::Http => "",
    };
    format!(
        "Commands: /reset (start a fresh conversation; the old one is kept for audit) & /help (this text). Anything else -> the assistant.{parts}"
    )
}

/// What to do with a message whose answer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureAction {
    /// Try again after this delay (the message keeps its place at the head of the queue).
    Retry(Duration),
    /// Every attempt failed: move it to the dead-letter queue and apologise.
    DeadLetter,
    /// Retrying cannot help (or the caller retries itself): answer with the error now.
    Reject,
}

/// The one failure decision. `attempts` counts every attempt made, the failed one included;
/// `has_caller` is true when someone waits on the HTTP API (told "busy", it retries itself).
pub fn on_failure(error: &ChatError, attempts: i64, has_caller: bool, policy: &InboxConfig) -> FailureAction {
    let retryable = match error {
        ChatError::Inference(InferenceError::Busy(_)) => !has_caller,
        ChatError::Inference(InferenceError::Timeout(_) | InferenceError::Unavailable(_) | InferenceError::Failed(_)) => true,
        ChatError::Storage(_) => true,
        _ => false,
    };
    if !retryable {
        FailureAction::Reject
    } else if attempts < i64::from(policy.max_attempts) {
        let doublings = (attempts - 1).clamp(0, 10) as u32;
        FailureAction::Retry(Duration::from_millis(policy.retry_backoff_ms.saturating_mul(1 << doublings)))
    } else {
        FailureAction::DeadLetter
    }
}

/// The outcome label of an answer that ended in `error`.
pub fn outcome_of(error: &ChatError) -> AnswerOutcome {
    match error {
        ChatError::Inference(InferenceError::Busy(_)) => AnswerOutcome::Busy,
        ChatError::DeadLettered { .. } => AnswerOutcome::Apology,
        _ => AnswerOutcome::Failed,
    }
}

/// What a platform user is told instead of an answer.
pub fn apology_for<'a>(error: &ChatError, apology: &'a str) -> &'a str {
    match error {
        ChatError::MessageTooLong { .. } | ChatError::Inference(InferenceError::PromptTooLong { .. }) => TOO_LONG_REPLY,
        _ => apology,
    }
}

/// One conversation's context: the recent turns the model sees and how a prompt is fitted.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// The system prompt put first ("" = none).
    system_prompt: String,
    /// Most turns kept.
    max_turns: usize,
    /// Most prompt tokens (0 = only the model's window limits).
    max_history_tokens: usize,
    /// Recent turns of the current context (user and assistant), oldest first.
    turns: Vec<ChatMessage>,
}

impl Conversation {
    /// A conversation resumed from its stored turns (oldest first).
    pub fn new(config: &SessionConfig, history: Vec<ChatMessage>) -> Self {
        let mut c = Conversation {
            system_prompt: config.system_prompt.clone(),
            max_turns: config.max_turns.max(1),
            max_history_tokens: config.max_history_tokens,
            turns: history,
        };
        c.trim();
        c
    }

    /// The turns the model may see, oldest first.
    pub fn turns(&self) -> &[ChatMessage] {
        &self.turns
    }

    /// `/reset`: forget the context.
    pub fn reset(&mut self) {
        self.turns.clear();
    }

    /// Records an answered exchange, dropping the oldest turns beyond `max_turns`.
    pub fn record(&mut self, user: String, assistant: String) {
        self.turns.push(ChatMessage::new("user", user));
        self.turns.push(ChatMessage::new("assistant", assistant));
        self.trim();
    }

    fn trim(&mut self) {
        let excess = self.turns.len().saturating_sub(self.max_turns);
        self.turns.drain(..excess);
    }

    /// How many prompt tokens may be sent, given the model's window and the reply budget.
    pub fn prompt_limit(&self, context_window: usize, reply_budget: usize) -> usize {
        let reply_budget = reply_budget.min(context_window / 2).max(1);
        let limit = context_window.saturating_sub(reply_budget);
        if self.max_history_tokens > 0 { limit.min(self.max_history_tokens) } else { limit }
    }

    /// Renders system prompt + as many recent turns as fit + the new message through `encode`
    /// (template + tokenizer). The oldest exchange (user + assistant) is dropped first; a
    /// message that does not fit even alone is [`ChatError::MessageTooLong`].
    pub fn fit_prompt<E: std::fmt::Display>(
        &self,
        text: &str,
        limit: usize,
        encode: impl Fn(&[ChatMessage]) -> Result<Vec<u32>, E>,
    ) -> Result<Vec<u32>, ChatError> {
        let mut skip = 0;
        loop {
            let mut messages = Vec::with_capacity(self.turns.len() - skip + 2);
            if !self.system_prompt.is_empty() {
                messages.push(ChatMessage::new("system", self.system_prompt.clone()));
            }
            messages.extend(self.turns[skip..].iter().cloned());
            messages.push(ChatMessage::new("user", text.to_string()));
            let ids = encode(&messages).map_err(|e| ChatError::Internal(e.to_string()))?;
            if ids.len() <= limit {
                return Ok(ids);
            }
            if skip >= self.turns.len() {
                return Err(ChatError::MessageTooLong { tokens: ids.len(), limit });
            }
            skip = (skip + 2).min(self.turns.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_turns: usize, max_history_tokens: usize) -> SessionConfig {
        SessionConfig { system_prompt: "sys".into(), max_turns, max_history_tokens, ..SessionConfig::default() }
    }

    /// One token per character of every message's content: enough to test fitting.
    fn chars(messages: &[ChatMessage]) -> Result<Vec<u32>, String> {
        Ok(messages.iter().flat_map(|m| m.content.chars().map(|c| c as u32)).collect())
    }

    fn policy() -> InboxConfig {
        InboxConfig { max_attempts: 3, retry_backoff_ms: 100, ..InboxConfig::default() }
    }

    #[test]
    fn commands_are_recognised_only_as_whole_messages() {
        assert_eq!(Command::parse("  /reset\n"), Some(Command::Reset));
        assert_eq!(Command::parse("/help"), Some(Command::Help));
        assert_eq!(Command::parse("/reset please"), None);
        assert_eq!(Command::parse("hello"), None);
    }

    #[test]
    fn help_promises_telegram_limits_only_on_telegram() {
        assert!(help_text(Platform::Telegram).contains("4096"));
        assert!(!help_text(Platform::Feishu).contains("4096"));
        assert!(!help_text(Platform::Http).contains("4096"));
        assert!(help_text(Platform::Http).starts_with("Commands:"));
    }

    #[test]
    fn the_turn_window_keeps_the_newest_turns() {
        let mut c = Conversation::new(&config(4, 0), vec![]);
        for i in 0..3 {
            c.record(format!("q{i}"), format!("a{i}"));
        }
        let contents: Vec<_> = c.turns().iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["q1", "a1", "q2", "a2"]);
        c.reset();
        assert!(c.turns().is_empty());
    }

    #[test]
    fn prompts_drop_the_oldest_exchange_first() {
        let mut c = Conversation::new(&config(64, 0), vec![]);
        c.record("aaaa".into(), "bbbb".into());
        c.record("cccc".into(), "dddd".into());
        // sys(3) + 4 turns(16) + "new"(3) = 22 tokens: everything fits.
        assert_eq!(c.fit_prompt("new", 22, chars).unwrap().len(), 22);
        // One token less: the first exchange goes, the second stays.
        let ids = c.fit_prompt("new", 21, chars).unwrap();
        assert_eq!(ids.len(), 14);
        assert_eq!(ids[3], 'c' as u32);
        // Too small even for the message alone.
        match c.fit_prompt("new", 5, chars) {
            Err(ChatError::MessageTooLong { tokens: 6, limit: 5 }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_prompt_limit_leaves_room_for_the_reply() {
        let c = Conversation::new(&config(8, 0), vec![]);
        assert_eq!(c.prompt_limit(1024, 100), 924);
        assert_eq!(c.prompt_limit(1024, 4000), 512, "the reply budget is at most half the window");
        let capped = Conversation::new(&config(8, 300), vec![]);
        assert_eq!(capped.prompt_limit(1024, 100), 300);
    }

    #[test]
    fn failures_are_retried_with_doubling_backoff_then_dead_lettered() {
        let e = ChatError::Inference(InferenceError::Timeout(1000));
        assert_eq!(on_failure(&e, 1, false, &policy()), FailureAction::Retry(Duration::from_millis(100)));
        assert_eq!(on_failure(&e, 2, false, &policy()), FailureAction::Retry(Duration::from_millis(200)));
        assert_eq!(on_failure(&e, 3, false, &policy()), FailureAction::DeadLetter);
        assert_eq!(on_failure(&ChatError::Storage("down".into()), 1, true, &policy()), FailureAction::Retry(Duration::from_millis(100)));
    }

    #[test]
    fn a_waiting_caller_is_told_busy_and_bad_messages_are_not_retried() {
        let busy = ChatError::Inference(InferenceError::Busy(4));
        assert_eq!(on_failure(&busy, 1, true, &policy()), FailureAction::Reject);
        assert_eq!(on_failure(&busy, 1, false, &policy()), FailureAction::Retry(Duration::from_millis(100)));
        let long = ChatError::MessageTooLong { tokens: 9, limit: 5 };
        assert_eq!(on_failure(&long, 1, false, &policy()), FailureAction::Reject);
        assert_eq!(apology_for(&long, "sorry"), TOO_LONG_REPLY);
        assert_eq!(apology_for(&busy, "sorry"), "sorry");
        assert_eq!(outcome_of(&busy), AnswerOutcome::Busy);
    }
}
