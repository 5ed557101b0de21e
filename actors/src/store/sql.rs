//! The SQL implementation of [`Store`] for SQLite and PostgreSQL (through sqlx's `Any`
//! driver). Queries are written once with `?` placeholders and numbered for PostgreSQL.

use std::borrow::Cow;
use std::path::Path;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use super::audit::{AuditRecord, GENESIS, record_hash};
use super::*;

/// The database behind a [`SqlStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Schema, written for SQLite; [`Backend::ddl`] adapts it for PostgreSQL.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS conversations (key TEXT PRIMARY KEY, hash TEXT NOT NULL, platform TEXT NOT NULL, epoch INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS conversations_hash ON conversations (hash)",
    "CREATE INDEX IF NOT EXISTS conversations_platform ON conversations (platform, updated_ms)",
    "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, conversation TEXT NOT NULL, epoch INTEGER NOT NULL, role TEXT NOT NULL, user_id TEXT NOT NULL, content TEXT NOT NULL, created_ms INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS messages_conversation ON messages (conversation, id)",
    "CREATE TABLE IF NOT EXISTS inbox (id INTEGER PRIMARY KEY AUTOINCREMENT, platform TEXT NOT NULL, account TEXT NOT NULL, dedup_key TEXT UNIQUE, conversation TEXT NOT NULL, user_id TEXT NOT NULL, text TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, node TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (status, node, id)",
    "CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, inbox_id INTEGER NOT NULL, platform TEXT NOT NULL, account TEXT NOT NULL, conversation TEXT NOT NULL, user_id TEXT NOT NULL, text TEXT NOT NULL, payload TEXT NOT NULL, error TEXT NOT NULL, attempts INTEGER NOT NULL, created_ms INTEGER NOT NULL, replayed_ms INTEGER)",
    "CREATE TABLE IF NOT EXISTS audit_log (id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
];

impl Backend {
    fn ddl(self, sql: &str) -> String {
        match self {
            Backend::Sqlite => sql.to_string(),
            Backend::Postgres => sql.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY").replace("INTEGER", "BIGINT"),
        }
    }
}

/// [`Store`] on SQLite or PostgreSQL.
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// Serializes audit appends in this process (each needs the previous record's hash).
    audit_lock: tokio::sync::Mutex<()>,
}

impl SqlStore {
    /// Opens (creating if needed) an SQLite database file, in WAL mode.
    pub async fn sqlite(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Config(format!("cannot create {}: {e}", dir.display())))?;
        }
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let store = Self { pool, backend: Backend::Sqlite, audit_lock: Default::default() };
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to PostgreSQL; tables live in `schema` (created if missing).
    pub async fn postgres(url: &str, schema: &str) -> StoreResult<Self> {
        if !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || schema.is_empty() {
            return Err(StoreError::Config(format!("`storage.schema` must be letters, digits and _. Given: {schema:?}")));
        }
        sqlx::any::install_default_drivers();
        let schema = schema.to_string();
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .after_connect(move |conn, _| {
                let schema = schema.clone();
                Box::pin(async move {
                    conn.execute(format!("CREATE SCHEMA IF NOT EXISTS {schema}").as_str()).await?;
                    conn.execute(format!("SET search_path TO {schema}").as_str()).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        let store = Self { pool, backend: Backend::Postgres, audit_lock: Default::default() };
        store.migrate().await?;
        Ok(store)
    }

    /// Opens the store for a `storage.url`-style address: `sqlite://PATH` or `postgres://…`.
    pub async fn open(url: &str, schema: &str) -> StoreResult<Self> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            Self::sqlite(Path::new(path)).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::postgres(url, schema).await
        } else {
            Err(StoreError::Config(format!("unsupported database URL {url:?}: use sqlite://PATH or postgres://…")))
        }
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // Nodes starting together must not race on CREATE TABLE.
            tx.execute("SELECT pg_advisory_xact_lock(7301)").await?;
        }
        for stmt in SCHEMA {
            tx.execute(self.backend.ddl(stmt).as_str()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Numbers `?` placeholders for PostgreSQL.
    fn q<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        match self.backend {
            Backend::Sqlite => Cow::Borrowed(sql),
            Backend::Postgres => {
                let mut out = String::with_capacity(sql.len() + 8);
                let mut n = 0;
                for c in sql.chars() {
                    if c == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                Cow::Owned(out)
            }
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

fn inbox_entry(r: &AnyRow) -> Result<InboxEntry, sqlx::Error> {
    Ok(InboxEntry {
        id: r.try_get("id")?,
        platform: r.try_get("platform")?,
        account: r.try_get("account")?,
        conversation: r.try_get("conversation")?,
        user: r.try_get("user_id")?,
        text: r.try_get("text")?,
        payload: r.try_get("payload")?,
        attempts: r.try_get("attempts")?,
        created_ms: r.try_get("created_ms")?,
    })
}

fn stored_message(r: &AnyRow) -> Result<StoredMessage, sqlx::Error> {
    Ok(StoredMessage {
        id: r.try_get("id")?,
        epoch: r.try_get("epoch")?,
        role: r.try_get("role")?,
        user: r.try_get("user_id")?,
        content: r.try_get("content")?,
        created_ms: r.try_get("created_ms")?,
    })
}

fn conversation_info(r: &AnyRow) -> Result<ConversationInfo, sqlx::Error> {
    Ok(ConversationInfo {
        key: r.try_get("key")?,
        hash: r.try_get("hash")?,
        platform: r.try_get("platform")?,
        epoch: r.try_get("epoch")?,
        messages: r.try_get("messages")?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
    })
}

const INBOX_COLUMNS: &str = "id, platform, account, conversation, user_id, text, payload, attempts, created_ms";
const CONVERSATION_COLUMNS: &str = "c.key, c.hash, c.platform, c.epoch, c.created_ms, c.updated_ms, (SELECT COUNT(*) FROM messages m WHERE m.conversation = c.key) AS messages";

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    async fn inbox_accept(&self, m: &NewInbound, node: &str) -> StoreResult<Accepted> {
        let now = now_ms();
        let sql = self.q(
            "INSERT INTO inbox (platform, account, dedup_key, conversation, user_id, text, payload, status, attempts, node, created_ms, updated_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?) ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
        );
        let row = sqlx::query(&sql)
            .bind(&m.platform)
            .bind(&m.account)
            .bind(m.dedup_key.as_deref())
            .bind(&m.conversation)
            .bind(&m.user)
            .bind(&m.text)
            .bind(&m.payload)
            .bind(node)
            .bind(now)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(r) = row {
            return Ok(Accepted::New(r.try_get("id")?));
        }
        let sql = self.q("SELECT id FROM inbox WHERE dedup_key = ?");
        let r = sqlx::query(&sql).bind(m.dedup_key.as_deref()).fetch_one(&self.pool).await?;
        Ok(Accepted::Duplicate(r.try_get("id")?))
    }

    async fn inbox_finish(&self, id: i64, status: InboxStatus, error: Option<&str>) -> StoreResult<()> {
        let sql = self.q("UPDATE inbox SET status = ?, last_error = ?, updated_ms = ? WHERE id = ?");
        sqlx::query(&sql).bind(status.as_str()).bind(error).bind(now_ms()).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn inbox_attempt_failed(&self, id: i64, attempts: i64, error: &str) -> StoreResult<()> {
        let sql = self.q("UPDATE inbox SET attempts = ?, last_error = ?, updated_ms = ? WHERE id = ?");
        sqlx::query(&sql).bind(attempts).bind(error).bind(now_ms()).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn inbox_pending(&self, node: &str) -> StoreResult<Vec<InboxEntry>> {
        let sql = format!("SELECT {INBOX_COLUMNS} FROM inbox WHERE status = 'pending' AND node = ? ORDER BY id");
        let sql = self.q(&sql);
        let rows = sqlx::query(&sql).bind(node).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(inbox_entry).collect::<Result<_, _>>()?)
    }

    async fn inbox_claim_orphans(&self, node: &str, stale_ms: i64) -> StoreResult<Vec<InboxEntry>> {
        let now = now_ms();
        // One UPDATE per call: concurrent claimers each get disjoint rows (a row whose node or
        // updated_ms changed no longer matches).
        let sql = format!(
            "UPDATE inbox SET node = ?, updated_ms = ? WHERE status = 'pending' AND node <> ? AND updated_ms < ? RETURNING {INBOX_COLUMNS}"
        );
        let rows = sqlx::query(&self.q(&sql)).bind(node).bind(now).bind(node).bind(now - stale_ms).fetch_all(&self.pool).await?;
        let mut out: Vec<InboxEntry> = rows.iter().map(inbox_entry).collect::<Result<_, _>>()?;
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    async fn inbox_expire_dedup(&self, prefix: &str, older_than_ms: i64) -> StoreResult<u64> {
        let sql = self.q("UPDATE inbox SET dedup_key = NULL WHERE dedup_key LIKE ? AND created_ms < ?");
        let r = sqlx::query(&sql).bind(format!("{prefix}%")).bind(older_than_ms).execute(&self.pool).await?;
        Ok(r.rows_affected())
    }

    async fn inbox_depth(&self) -> StoreResult<i64> {
        let r = sqlx::query("SELECT COUNT(*) AS n FROM inbox WHERE status = 'pending'").fetch_one(&self.pool).await?;
        Ok(r.try_get("n")?)
    }

    async fn dead_letter(&self, e: &InboxEntry, error: &str) -> StoreResult<i64> {
        let mut tx = self.pool.begin().await?;
        let sql = self.q(
            "INSERT INTO dead_letters (inbox_id, platform, account, conversation, user_id, text, payload, error, attempts, created_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        );
        let r = sqlx::query(&sql)
            .bind(e.id)
            .bind(&e.platform)
            .bind(&e.account)
            .bind(&e.conversation)
            .bind(&e.user)
            .bind(&e.text)
            .bind(&e.payload)
            .bind(error)
            .bind(e.attempts)
            .bind(now_ms())
            .fetch_one(&mut *tx)
            .await?;
        let id: i64 = r.try_get("id")?;
        let sql = self.q("UPDATE inbox SET status = 'dead', last_error = ?, updated_ms = ? WHERE id = ?");
        sqlx::query(&sql).bind(error).bind(now_ms()).bind(e.id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn dead_letters(&self, limit: i64) -> StoreResult<Vec<DeadLetter>> {
        let sql = self.q(
            "SELECT id, inbox_id, platform, conversation, user_id, text, error, attempts, created_ms, replayed_ms FROM dead_letters ORDER BY id DESC LIMIT ?",
        );
        let rows = sqlx::query(&sql).bind(limit).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetter {
                    id: r.try_get("id")?,
                    inbox_id: r.try_get("inbox_id")?,
                    platform: r.try_get("platform")?,
                    conversation: r.try_get("conversation")?,
                    user: r.try_get("user_id")?,
                    text: r.try_get("text")?,
                    error: r.try_get("error")?,
                    attempts: r.try_get("attempts")?,
                    created_ms: r.try_get("created_ms")?,
                    replayed_ms: r.try_get("replayed_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn dead_letter_count(&self) -> StoreResult<i64> {
        let r = sqlx::query("SELECT COUNT(*) AS n FROM dead_letters WHERE replayed_ms IS NULL").fetch_one(&self.pool).await?;
        Ok(r.try_get("n")?)
    }

    async fn replay_dead_letter(&self, id: i64, node: &str) -> StoreResult<Option<InboxEntry>> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let sql = self.q("UPDATE dead_letters SET replayed_ms = ? WHERE id = ? AND replayed_ms IS NULL RETURNING platform, account, conversation, user_id, text, payload");
        let Some(r) = sqlx::query(&sql).bind(now).bind(id).fetch_optional(&mut *tx).await? else {
            return Ok(None);
        };
        let (platform, account, conversation, user, text, payload): (String, String, String, String, String, String) = (
            r.try_get("platform")?,
            r.try_get("account")?,
            r.try_get("conversation")?,
            r.try_get("user_id")?,
            r.try_get("text")?,
            r.try_get("payload")?,
        );
        let sql = self.q(
            "INSERT INTO inbox (platform, account, dedup_key, conversation, user_id, text, payload, status, attempts, node, created_ms, updated_ms) \
             VALUES (?, ?, NULL, ?, ?, ?, ?, 'pending', 0, ?, ?, ?) RETURNING id",
        );
        let r = sqlx::query(&sql)
            .bind(&platform)
            .bind(&account)
            .bind(&conversation)
            .bind(&user)
            .bind(&text)
            .bind(&payload)
            .bind(node)
            .bind(now)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
        let new_id: i64 = r.try_get("id")?;
        tx.commit().await?;
        Ok(Some(InboxEntry { id: new_id, platform, account, conversation, user, text, payload, attempts: 0, created_ms: now }))
    }

    async fn save_turns(&self, conversation: &str, hash: &str, platform: &str, turns: &[Turn]) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let sql = self.q("INSERT INTO conversations (key, hash, platform, epoch, created_ms, updated_ms) VALUES (?, ?, ?, 0, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET updated_ms = excluded.updated_ms RETURNING epoch");
        let r = sqlx::query(&sql).bind(conversation).bind(hash).bind(platform).bind(now).bind(now).fetch_one(&mut *tx).await?;
        let epoch: i64 = r.try_get("epoch")?;
        let sql = self.q("INSERT INTO messages (conversation, epoch, role, user_id, content, created_ms) VALUES (?, ?, ?, ?, ?, ?)");
        for t in turns {
            sqlx::query(&sql)
                .bind(conversation)
                .bind(epoch)
                .bind(t.role)
                .bind(&t.user)
                .bind(&t.content)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn history(&self, conversation: &str, limit: i64) -> StoreResult<Vec<StoredMessage>> {
        let sql = self.q(
            "SELECT m.id, m.epoch, m.role, m.user_id, m.content, m.created_ms FROM messages m JOIN conversations c ON c.key = m.conversation \
             WHERE m.conversation = ? AND m.epoch = c.epoch ORDER BY m.id DESC LIMIT ?",
        );
        let rows = sqlx::query(&sql).bind(conversation).bind(limit).fetch_all(&self.pool).await?;
        let mut out: Vec<StoredMessage> = rows.iter().map(stored_message).collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    async fn reset(&self, conversation: &str, hash: &str, platform: &str) -> StoreResult<()> {
        let now = now_ms();
        let sql = self.q("INSERT INTO conversations (key, hash, platform, epoch, created_ms, updated_ms) VALUES (?, ?, ?, 1, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET epoch = conversations.epoch + 1, updated_ms = excluded.updated_ms");
        sqlx::query(&sql).bind(conversation).bind(hash).bind(platform).bind(now).bind(now).execute(&self.pool).await?;
        Ok(())
    }

    async fn conversations(&self, platform: Option<&str>, limit: i64) -> StoreResult<Vec<ConversationInfo>> {
        let rows = match platform {
            Some(p) => {
                let sql =
                    format!("SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.platform = ? ORDER BY c.updated_ms DESC LIMIT ?");
                sqlx::query(&self.q(&sql)).bind(p).bind(limit).fetch_all(&self.pool).await?
            }
            None => {
                let sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations c ORDER BY c.updated_ms DESC LIMIT ?");
                sqlx::query(&self.q(&sql)).bind(limit).fetch_all(&self.pool).await?
            }
        };
        Ok(rows.iter().map(conversation_info).collect::<Result<_, _>>()?)
    }

    async fn conversation(&self, key_or_hash: &str) -> StoreResult<Option<ConversationInfo>> {
        let sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.key = ? OR c.hash = ? LIMIT 1");
        let row = sqlx::query(&self.q(&sql)).bind(key_or_hash).bind(key_or_hash).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(conversation_info).transpose()?)
    }

    async fn messages(&self, conversation: &str, limit: i64) -> StoreResult<Vec<StoredMessage>> {
        let sql = self.q("SELECT id, epoch, role, user_id, content, created_ms FROM messages WHERE conversation = ? ORDER BY id LIMIT ?");
        let rows = sqlx::query(&sql).bind(conversation).bind(limit).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(stored_message).collect::<Result<_, _>>()?)
    }

    async fn rename_conversation(&self, from: &str, to: &str, to_hash: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&self.q("UPDATE conversations SET key = ?, hash = ? WHERE key = ?"))
            .bind(to)
            .bind(to_hash)
            .bind(from)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&self.q("UPDATE messages SET conversation = ? WHERE conversation = ?")).bind(to).bind(from).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn erase(&self, conversation: &str) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        let mut n = 0;
        for table in ["messages", "dead_letters", "inbox"] {
            let sql = format!("DELETE FROM {table} WHERE conversation = ?");
            n += sqlx::query(&self.q(&sql)).bind(conversation).execute(&mut *tx).await?.rows_affected();
        }
        n += sqlx::query(&self.q("DELETE FROM conversations WHERE key = ?")).bind(conversation).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn audit_append(&self, actor: &str, action: &str, target: &str, detail: &str) -> StoreResult<()> {
        let _guard = self.audit_lock.lock().await;
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            tx.execute("SELECT pg_advisory_xact_lock(7302)").await?;
        }
        let prev: String = match sqlx::query("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1").fetch_optional(&mut *tx).await? {
            Some(r) => r.try_get("hash")?,
            None => GENESIS.to_string(),
        };
        let at = now_ms();
        let hash = record_hash(&prev, at, actor, action, target, detail);
        let sql = self.q("INSERT INTO audit_log (at_ms, actor, action, target, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)");
        sqlx::query(&sql).bind(at).bind(actor).bind(action).bind(target).bind(detail).bind(&prev).bind(&hash).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_records(&self) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query("SELECT id, at_ms, actor, action, target, detail, prev_hash, hash FROM audit_log ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    id: r.try_get("id")?,
                    at_ms: r.try_get("at_ms")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: r.try_get("detail")?,
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}
