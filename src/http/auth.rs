//! Who is calling: chat API keys and admin tokens (only their SHA-256 is configured), and the
//! aggregated record of failed authentications, written to the audit log off the request path
//! (a flood of bad requests costs a counter increment each, not a database write).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use switchboard_actors::store::Store;
use switchboard_actors::telemetry;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ApiError;
use crate::config::{ApiConfig, ApiKeyConfig};

/// The bearer credential of an `Authorization` header.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    header.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer "))).map(str::trim)
}

/// The configured entry whose SHA-256 (hex, `digest_of`) matches `presented`; every entry is
/// compared, in constant time.
pub fn find_by_sha256<'a, T>(entries: &'a [T], presented: &str, digest_of: impl Fn(&T) -> &str) -> Option<&'a T> {
    let digest = hex::encode(Sha256::digest(presented.as_bytes()));
    let mut found = None;
    for e in entries {
        let equal = switchboard_actors::platforms::secrets_equal(digest_of(e).to_ascii_lowercase().as_bytes(), digest.as_bytes());
        if equal && found.is_none() {
            found = Some(e);
        }
    }
    found
}

/// Authenticates a chat API request: a valid key, or no key where anonymous use is allowed.
/// A key that is present but wrong is refused even then.
pub fn api_principal<'a>(cfg: &'a ApiConfig, header: Option<&str>) -> Result<Option<&'a ApiKeyConfig>, &'static str> {
    match bearer(header) {
        Some(presented) => find_by_sha256(&cfg.keys, presented, |k| &k.key_sha256).map(Some).ok_or("unknown_key"),
        None if header.is_some() => Err("malformed_header"),
        None if cfg.allow_anonymous => Ok(None),
        None => Err("missing_key"),
    }
}

/// Whether `key` may use the local model backend.
pub fn may_use_local(key: &ApiKeyConfig) -> Result<(), ApiError> {
    if key.backends.is_empty() || key.backends.iter().any(|b| b == "local") { Ok(()) } else { Err(ApiError::Forbidden("local backend")) }
}

/// One failed authentication.
struct Failure {
    /// Who the audit row names (`anonymous`, `webhook:telegram:main`, …).
    actor: String,
    action: &'static str,
    reason: &'static str,
}

/// Failed authentications, aggregated into the audit log: the first failure of a (source,
/// action, reason) in a minute is written at once, the rest of that minute as one summary row
/// with their count. Bounded: a full queue drops (and counts) the audit side, never the request.
#[derive(Clone)]
pub struct AuthFailures {
    tx: mpsc::Sender<Failure>,
}

/// One minute of one (actor, action, reason).
struct Window {
    started: Instant,
    /// Failures after the first (not written yet).
    more: u64,
}

const WINDOW: Duration = Duration::from_secs(60);

impl AuthFailures {
    /// Starts the writer task.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(write_failures(store, rx));
        Self { tx }
    }

    /// Counts a failure (metric `switchboard_auth_failures_total{surface, reason}`) and queues
    /// it for the audit log.
    pub fn record(&self, surface: &'static str, actor: String, action: &'static str, reason: &'static str) {
        telemetry::auth_failed(surface, reason);
        if self.tx.try_send(Failure { actor, action, reason }).is_err() {
            tracing::warn!(surface, reason, "The audit queue of failed authentications is full; this one is only counted.");
        }
    }
}

async fn write_failures(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Failure>) {
    let mut windows: HashMap<(String, &'static str, &'static str), Window> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            f = rx.recv() => {
                let Some(f) = f else { break };
                let key = (f.actor, f.action, f.reason);
                match windows.get_mut(&key) {
                    Some(w) => w.more += 1,
                    None => {
                        append(&*store, &key, "1 failure; further ones this minute are summed up in one record").await;
                        windows.insert(key, Window { started: Instant::now(), more: 0 });
                    }
                }
            }
            _ = tick.tick() => {
                let closed: Vec<_> = windows.iter().filter(|(_, w)| w.started.elapsed() >= WINDOW).map(|(k, _)| k.clone()).collect();
                for key in closed {
                    let w = windows.remove(&key).expect("present");
                    if w.more > 0 {
                        append(&*store, &key, &format!("{} more failures in the minute after the first", w.more)).await;
                    }
                }
            }
        }
    }
}

async fn append(store: &dyn Store, (actor, action, reason): &(String, &'static str, &'static str), detail: &str) {
    if let Err(e) = store.audit_append(actor, action, reason, detail).await {
        tracing::error!(error = %e, actor, action, "Could not write an audit record.");
    }
}
