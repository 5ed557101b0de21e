//! Durable storage behind one trait: conversation history, the inbox of accepted messages,
//! the dead-letter queue and the hash-chained audit log.
//!
//! Two implementations share [`sql::SqlStore`]'s SQL: SQLite (embedded default, WAL mode) and
//! PostgreSQL (for several nodes behind a load balancer); they differ in connection set-up
//! and schema dialect.

pub mod audit;
pub mod sql;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use audit::{AuditRecord, verify_chain};
pub use sql::{Backend, SqlStore};

/// Storage errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(String),
    #[error("`storage.url`: {0}")]
    Config(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A message to store in the inbox before it is acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NewInbound {
    /// `http`, `telegram`, `feishu`.
    pub platform: String,
    /// The platform account (bot) that received it.
    pub account: String,
    /// De-duplication key (platform, account and platform message id); `None` = no dedup.
    pub dedup_key: Option<String>,
    /// The conversation key.
    pub conversation: String,
    pub user: String,
    pub text: String,
    /// Platform-specific routing and generation options, as JSON.
    pub payload: String,
}

/// An inbox row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InboxEntry {
    pub id: i64,
    pub platform: String,
    pub account: String,
    pub conversation: String,
    pub user: String,
    pub text: String,
    pub payload: String,
    pub attempts: i64,
    pub created_ms: i64,
}

/// Outcome of [`Store::inbox_accept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored under this id.
    New(i64),
    /// Already seen (same dedup key): the earlier row's id.
    Duplicate(i64),
}

/// Final states of an inbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxStatus {
    Pending,
    /// Answered.
    Done,
    /// Answered with an explanation, not retried (e.g. message too long, refused as busy).
    Rejected,
    /// Moved to the dead-letter queue.
    Dead,
}

impl InboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InboxStatus::Pending => "pending",
            InboxStatus::Done => "done",
            InboxStatus::Rejected => "rejected",
            InboxStatus::Dead => "dead",
        }
    }
}

/// A dead letter.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    pub id: i64,
    pub inbox_id: i64,
    pub platform: String,
    pub conversation: String,
    pub user: String,
    pub text: String,
    pub error: String,
    pub attempts: i64,
    pub created_ms: i64,
    pub replayed_ms: Option<i64>,
}

/// One stored turn.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredMessage {
    pub id: i64,
    /// Increases with each `/reset`; the model only sees the current epoch.
    pub epoch: i64,
    pub role: String,
    pub user: String,
    pub content: String,
    pub created_ms: i64,
}

/// A conversation in listings.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConversationInfo {
    pub key: String,
    pub hash: String,
    pub platform: String,
    pub epoch: i64,
    pub messages: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A turn to save.
#[derive(Debug, Clone)]
pub struct Turn {
    pub role: &'static str,
    pub user: String,
    pub content: String,
}

/// Everything the daemon keeps durably.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Stores an accepted message (before the sender is told "accepted").
    async fn inbox_accept(&self, msg: &NewInbound, node: &str) -> StoreResult<Accepted>;
    /// Sets the final status of an inbox row.
    async fn inbox_finish(&self, id: i64, status: InboxStatus, error: Option<&str>) -> StoreResult<()>;
    /// Records a failed attempt (the row stays pending).
    async fn inbox_attempt_failed(&self, id: i64, attempts: i64, error: &str) -> StoreResult<()>;
    /// Unfinished rows of this node, oldest first (replayed at start-up).
    async fn inbox_pending(&self, node: &str) -> StoreResult<Vec<InboxEntry>>;
    /// Takes over pending rows of other nodes not touched for `stale_ms` (their node is gone:
    /// a replaced pod, a decommissioned host), so they are answered here; oldest first.
    async fn inbox_claim_orphans(&self, node: &str, stale_ms: i64) -> StoreResult<Vec<InboxEntry>>;
    /// Pending rows (all nodes).
    async fn inbox_depth(&self) -> StoreResult<i64>;
    /// Forgets the de-duplication keys starting with `prefix` of rows created before
    /// `older_than_ms` (their ids may be reused by the platform). Returns rows changed.
    async fn inbox_expire_dedup(&self, prefix: &str, older_than_ms: i64) -> StoreResult<u64>;

    /// Moves an inbox row to the dead-letter queue; returns the dead letter's id.
    async fn dead_letter(&self, entry: &InboxEntry, error: &str) -> StoreResult<i64>;
    async fn dead_letters(&self, limit: i64) -> StoreResult<Vec<DeadLetter>>;
    /// Dead letters not yet replayed.
    async fn dead_letter_count(&self) -> StoreResult<i64>;
    /// Puts a dead letter back into the inbox as a new pending row (marking it replayed).
    /// `None` if there is no such dead letter or it was already replayed.
    async fn replay_dead_letter(&self, id: i64, node: &str) -> StoreResult<Option<InboxEntry>>;

    /// Saves turns of a conversation (creating it on first use), in one transaction.
    async fn save_turns(&self, conversation: &str, hash: &str, platform: &str, turns: &[Turn]) -> StoreResult<()>;
    /// The current epoch's last `limit` turns, oldest first.
    async fn history(&self, conversation: &str, limit: i64) -> StoreResult<Vec<StoredMessage>>;
    /// Starts a fresh context; older turns stay for audit.
    async fn reset(&self, conversation: &str, hash: &str, platform: &str) -> StoreResult<()>;
    async fn conversations(&self, platform: Option<&str>, limit: i64) -> StoreResult<Vec<ConversationInfo>>;
    /// Finds a conversation by key or by hash.
    async fn conversation(&self, key_or_hash: &str) -> StoreResult<Option<ConversationInfo>>;
    /// All turns of all epochs, oldest first.
    async fn messages(&self, conversation: &str, limit: i64) -> StoreResult<Vec<StoredMessage>>;
    /// Moves a conversation to a new key (a Telegram group upgraded to a supergroup).
    async fn rename_conversation(&self, from: &str, to: &str, to_hash: &str) -> StoreResult<()>;
    /// Erases a conversation: turns, inbox rows and dead letters. Returns rows removed.
    async fn erase(&self, conversation: &str) -> StoreResult<u64>;

    /// Appends to the hash-chained audit log.
    async fn audit_append(&self, actor: &str, action: &str, target: &str, detail: &str) -> StoreResult<()>;
    /// The whole audit log, oldest first.
    async fn audit_records(&self) -> StoreResult<Vec<AuditRecord>>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
