//! What every route shares.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use switchboard_actors::ingress::Ingress;
use switchboard_actors::ingress::feishu::FeishuApp;
use switchboard_actors::ingress::telegram::TelegramBot;
use switchboard_actors::store::Store;

use super::auth::AuthFailures;
use crate::config::{AdminToken, ApiConfig};
use switchboard_actors::ingress::limits::RateLimiter;

/// Shared state of the HTTP layer.
pub struct AppState {
    /// Set once the tree is up.
    pub started: AtomicBool,
    /// Set when shutdown begins: readiness fails and new chats are refused.
    pub shutting_down: AtomicBool,
    /// Workers registered with the batcher (readiness).
    pub ready_workers: Arc<AtomicUsize>,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// Collects process metrics on each scrape.
    pub process: metrics_process::Collector,
    /// Body limits of the API routes and of the platform webhooks.
    pub limits: BodyLimits,
    /// How long a chat call may take end to end.
    pub chat_timeout: Duration,
    /// The accept path every message goes through.
    pub ingress: Ingress,
    /// Durable storage (history, dead letters, audit) for the admin API.
    pub store: Arc<dyn Store>,
    /// This node's name in the inbox.
    pub node: String,
    /// Admin API tokens.
    pub admin_tokens: Vec<AdminToken>,
    /// Chat API keys and whether anonymous use is allowed.
    pub api: ApiConfig,
    /// Rate limits of the API keys that have one, by key name.
    pub api_limits: HashMap<String, RateLimiter<()>>,
    /// Failed authentications, counted and audited in aggregate.
    pub auth_failures: AuthFailures,
    /// Telegram bots by account.
    pub telegram: HashMap<String, Arc<TelegramBot>>,
    /// Feishu / Lark apps by account.
    pub feishu: HashMap<String, Arc<FeishuApp>>,
}

/// Request body limits (`server.max_body_bytes`, `server.webhook_max_body_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub api: u64,
    pub webhook: u64,
}

impl AppState {
    /// Writes an audit record; a failure is logged, never hidden.
    pub async fn audit(&self, actor: &str, action: &str, target: &str, detail: &str) {
        tracing::info!(actor, action, target, "Audit event.");
        if let Err(e) = self.store.audit_append(actor, action, target, detail).await {
            tracing::error!(error = %e, actor, action, "Could not write an audit record.");
        }
    }

    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::Acquire) && !self.is_shutting_down() && self.ready_workers.load(Ordering::Acquire) > 0
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}
