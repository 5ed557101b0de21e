//! The Feishu / Lark adapter: one [`FeishuApp`] per `[[feishu]]` entry, used by the webhook
//! route. It authenticates and decrypts an event request, parses the message event once and
//! hands an [`Inbound`] to the accept path.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::{AcceptError, ChatPolicy, ChatRef, Inbound, Ingress, Verdict};
use crate::message::{Content, Platform, ReplyTarget};
use crate::platforms::config::FeishuConfig;
use crate::platforms::feishu::FeishuApi;
use crate::platforms::feishu::event::{self, Envelope, EventEnvelope, Rejection, RequestHeaders, VerifyConfig};
use crate::platforms::feishu::message::{self, ChatType};
use crate::session::GroupScope;
use crate::store::now_ms;
use crate::telemetry::{self, UpdateOutcome};

const PLATFORM: Platform = Platform::Feishu;

/// The HTTP answer the webhook should give.
#[derive(Debug)]
pub enum EventAnswer {
    /// `{"challenge": …}` for the URL verification.
    Challenge(String),
    /// 200 `{}`: stored, duplicate or ignored.
    Ok,
    /// 4xx: rejected before anything was processed.
    Rejected(Rejection),
}

/// One configured app.
pub struct FeishuApp {
    pub config: FeishuConfig,
    /// The Open API client (shared with the egress sender: one token cache per app).
    pub api: Arc<FeishuApi>,
    /// Verification token, encrypt key and replay window.
    verify: VerifyConfig,
    /// The bot's own open_id, to tell its mentions in groups apart.
    bot_open_id: RwLock<Option<String>>,
    /// Allowed chats and group scope.
    policy: ChatPolicy,
    /// The accept path.
    ingress: Ingress,
}

impl FeishuApp {
    pub fn new(config: FeishuConfig, api: Arc<FeishuApi>, ingress: Ingress, group_scope: GroupScope) -> Self {
        let mut verify = VerifyConfig::new(&config.verification_token, config.encrypt_key.as_deref());
        verify.max_skew = Duration::from_secs(config.max_skew_secs);
        let bot_open_id = RwLock::new(config.bot_open_id.clone());
        let policy = ChatPolicy::new(config.allowed_chats.iter().cloned(), group_scope);
        Self { config, api, verify, bot_open_id, policy, ingress }
    }

    pub fn account(&self) -> &str {
        &self.config.account
    }

    /// Learns the bot's open_id when the config does not give it.
    pub async fn init(&self) {
        if self.config.encrypt_key.is_none() {
            tracing::warn!(account = %self.config.account, "Feishu events of this account are not signed (`allow_unsigned = true`): anyone who knows the verification token can forge them.");
        }
        if self.bot_open_id.read().expect("lock").is_some() {
            return;
        }
        match self.api.bot_info().await {
            Ok(info) => {
                tracing::info!(account = %self.config.account, app = %info.app_name, "Feishu bot identified.");
                *self.bot_open_id.write().expect("lock") = Some(info.open_id);
            }
            Err(e) => {
                tracing::warn!(account = %self.config.account, error = %e, "Could not fetch the Feishu bot info; group mentions need `bot_open_id`.")
            }
        }
        telemetry::feishu_token_refreshes(self.account(), self.api.token_refreshes());
    }

    /// Authenticates, decrypts and handles one event request. `Err` means it was not stored
    /// (the caller answers 5xx so Feishu delivers it again).
    pub async fn handle(&self, body: &[u8], headers: &RequestHeaders<'_>) -> Result<EventAnswer, AcceptError> {
        let account = self.account();
        let ev = match event::open(body, headers, &self.verify, now_ms() / 1000) {
            Ok(Envelope::Event(ev)) => ev,
            Ok(Envelope::UrlVerification { challenge }) => {
                telemetry::platform_update(PLATFORM, account, "url_verification", UpdateOutcome::Handled);
                return Ok(EventAnswer::Challenge(challenge));
            }
            // Counted by the webhook route, which answers it.
            Err(r) => return Ok(EventAnswer::Rejected(r)),
        };
        let verdict = self.verdict(&ev);
        self.ingress.admit(PLATFORM, account, verdict).await?;
        Ok(EventAnswer::Ok)
    }

    /// What to do with an authenticated event.
    pub(crate) fn verdict(&self, ev: &EventEnvelope) -> Verdict {
        let ignore = |kind, outcome| Verdict::Ignore { kind, outcome };
        if ev.event_type != "im.message.receive_v1" {
            return ignore("other", UpdateOutcome::Ignored);
        }
        let bot = self.bot_open_id.read().expect("lock").clone();
        let msg = match message::parse_receive(&ev.event, bot.as_deref()) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(account = %self.account(), error = %e, "Skipped a Feishu message event that does not parse.");
                return ignore("message", UpdateOutcome::Malformed);
            }
        };
        if !message::is_addressed(&msg) {
            return ignore("message", UpdateOutcome::Ignored);
        }
        let group = msg.chat_type == ChatType::Group;
        let chat_ref = ChatRef { chat: &msg.chat_id, thread: msg.thread_id.as_deref(), group, user_id: &msg.sender_open_id };
        let Some(conversation) = self.policy.conversation(PLATFORM, self.account(), chat_ref) else {
            return ignore("message", UpdateOutcome::NotAllowed);
        };
        let content = match msg.text {
            Some(t) if t.trim().is_empty() => return ignore("message", UpdateOutcome::Ignored),
            Some(t) => Content::Text(t),
            None => Content::Unsupported { kind: msg.message_type },
        };
        Verdict::Accept(Inbound {
            platform: PLATFORM,
            account: self.account().to_string(),
            conversation,
            sender_id: msg.sender_open_id.clone(),
            user: msg.sender_open_id,
            content,
            message_id: Some(ev.event_id.clone()),
            reply_to: ReplyTarget::Feishu { chat_id: msg.chat_id, message_id: msg.message_id, group },
            options: Default::default(),
            kind: "message",
        })
    }
}
