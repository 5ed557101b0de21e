//! The Telegram adapter: one [`TelegramBot`] per `[[telegram]]` entry, used by the webhook route
//! and the long-polling actor. It checks the secret, parses an update once into the typed
//! [`Update`], triages it and hands an [`Inbound`] to the accept path.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::{AcceptError, ChatPolicy, ChatRef, Ingress, Verdict};
use crate::ingress::Inbound;
use crate::message::{Content, Platform, ReplyTarget};
use crate::platforms::config::{TelegramConfig, TelegramMode};
use crate::platforms::telegram::types::{parse_update, update_id_of};
use crate::platforms::telegram::{BotApi, BotIdentity, TgError, Triage, Update, triage};
use crate::session::{GroupScope, conversation_key, move_conversation};
use crate::telemetry::{self, UpdateOutcome};

const PLATFORM: Platform = Platform::Telegram;
/// Update kinds we ask Telegram for.
pub const ALLOWED_UPDATES: &[&str] = &["message", "edited_message"];

/// One configured bot.
pub struct TelegramBot {
    pub config: TelegramConfig,
    /// The Bot API client (shared with the egress sender).
    pub api: BotApi,
    /// The bot's id and username, learnt from `getMe` (mentions and commands address it).
    identity: RwLock<BotIdentity>,
    /// Allowed chats and group scope.
    policy: ChatPolicy,
    /// The accept path.
    ingress: Ingress,
    /// Whether `!fault:poller-panic` may crash the polling actor (tests only).
    fault_injection: bool,
}

impl TelegramBot {
    pub fn new(config: TelegramConfig, api: BotApi, ingress: Ingress, group_scope: GroupScope, fault_injection: bool) -> Self {
        let identity = RwLock::new(BotIdentity::new(None, config.bot_username.as_deref().unwrap_or_default()));
        let policy = ChatPolicy::new(config.allowed_chats.iter().map(i64::to_string), group_scope);
        Self { config, api, identity, policy, ingress, fault_injection }
    }

    pub fn account(&self) -> &str {
        &self.config.account
    }

    /// Learns the bot's id and username (`getMe`) and, in webhook mode with `webhook_url` set,
    /// registers the webhook with its secret. Failures are logged; the bot keeps working with
    /// what the config says.
    pub async fn init(&self) {
        match self.api.get_me().await {
            Ok(me) => {
                let mut id = BotIdentity::from_user(&me);
                if let Some(configured) = &self.config.bot_username {
                    id.username = configured.trim_start_matches('@').to_string();
                }
                tracing::info!(account = %self.config.account, username = %id.username, "Telegram bot identified (getMe).");
                *self.identity.write().expect("identity lock") = id;
            }
            Err(e) => tracing::warn!(account = %self.config.account, error = %e, "getMe failed; using the configured bot_username."),
        }
        if let (TelegramMode::Webhook, Some(url), Some(secret)) = (self.config.mode, &self.config.webhook_url, &self.config.secret_token) {
            match self.api.set_webhook(url, secret, ALLOWED_UPDATES).await {
                Ok(()) => tracing::info!(account = %self.config.account, "Telegram webhook registered."),
                Err(e) => tracing::error!(account = %self.config.account, error = %e, "setWebhook failed."),
            }
        }
    }

    /// Checks the webhook secret header in constant time (lengths included).
    pub fn secret_matches(&self, presented: Option<&str>) -> bool {
        match (&self.config.secret_token, presented) {
            (Some(expected), Some(p)) => crate::platforms::secrets_equal(expected.as_bytes(), p.as_bytes()),
            _ => false,
        }
    }

    /// What to do with an update. A migrated group's conversation is moved here.
    async fn verdict(&self, update: &Update) -> Verdict {
        let kind = update.kind();
        let identity = self.identity.read().expect("identity lock").clone();
        let incoming = match triage(update, &identity) {
            Triage::Answer(i) => i,
            Triage::Ignore { reason } => {
                tracing::debug!(account = %self.account(), reason, "Ignored a Telegram update.");
                return Verdict::Ignore { kind, outcome: UpdateOutcome::Ignored };
            }
            Triage::Migrated { from, to } => {
                let key = |chat: i64| conversation_key(PLATFORM, self.account(), &chat.to_string(), None, None);
                move_conversation(self.ingress.store().as_ref(), &key(from), &key(to)).await;
                return Verdict::Ignore { kind, outcome: UpdateOutcome::Migrated };
            }
        };
        let group = incoming.chat_type.is_group();
        let (chat, thread, user_id) =
            (incoming.chat_id.to_string(), incoming.thread_id.map(|t| t.to_string()), incoming.user_id.to_string());
        let chat_ref = ChatRef { chat: &chat, thread: thread.as_deref(), group, user_id: &user_id };
        let Some(conversation) = self.policy.conversation(PLATFORM, self.account(), chat_ref) else {
            return Verdict::Ignore { kind, outcome: UpdateOutcome::NotAllowed };
        };
        Verdict::Accept(Inbound {
            platform: PLATFORM,
            account: self.account().to_string(),
            conversation,
            user: incoming.user_name,
            sender_id: user_id,
            content: Content::Text(incoming.text),
            message_id: Some(incoming.update_id.to_string()),
            reply_to: ReplyTarget::Telegram {
                chat_id: incoming.chat_id,
                thread_id: incoming.thread_id,
                message_id: Some(incoming.message_id),
                group,
            },
            options: Default::default(),
            kind,
        })
    }

    /// Handles one parsed update: triage, then the accept path. An `Err` means nothing was
    /// stored (the caller must not acknowledge it).
    pub async fn accept_update(&self, update: &Update) -> Result<UpdateOutcome, AcceptError> {
        let verdict = self.verdict(update).await;
        self.ingress.admit(PLATFORM, self.account(), verdict).await
    }
}

/// Long polling: `getUpdates` in a loop, acknowledging (advancing the offset past) only updates
/// already stored in the inbox. After a restart the offset starts over: Telegram re-sends what
/// was not acknowledged and the inbox drops the ones already stored, so nothing is lost or
/// answered twice.
pub struct TelegramPollerActor;

pub enum PollerMsg {
    Poll,
}

pub struct PollerState {
    bot: Arc<TelegramBot>,
    /// The next `getUpdates` offset: one past the last update stored.
    offset: i64,
    /// Consecutive failures, for the backoff.
    failures: u32,
    /// Whether a webhook was removed (Telegram refuses `getUpdates` while one is set).
    webhook_deleted: bool,
}

impl Actor for TelegramPollerActor {
    type Msg = PollerMsg;
    type State = PollerState;
    type Arguments = Arc<TelegramBot>;

    async fn pre_start(&self, myself: ActorRef<PollerMsg>, bot: Arc<TelegramBot>) -> Result<PollerState, ActorProcessingErr> {
        myself.cast(PollerMsg::Poll)?;
        Ok(PollerState { bot, offset: 0, failures: 0, webhook_deleted: false })
    }

    async fn handle(&self, myself: ActorRef<PollerMsg>, _msg: PollerMsg, st: &mut PollerState) -> Result<(), ActorProcessingErr> {
        if !st.webhook_deleted {
            match st.bot.api.delete_webhook(false).await {
                Ok(()) => st.webhook_deleted = true,
                Err(e) => return backoff(&myself, st, &format!("deleteWebhook failed: {e}")),
            }
        }
        let updates = match st.bot.api.get_updates(st.offset, st.bot.config.poll_timeout_secs, ALLOWED_UPDATES).await {
            Ok(u) => u,
            Err(TgError::Conflict(e)) => {
                st.webhook_deleted = false;
                return backoff(&myself, st, &format!("getUpdates conflict: {e}"));
            }
            Err(e) => return backoff(&myself, st, &format!("getUpdates failed: {e}")),
        };
        for raw in updates {
            let Some(id) = update_id_of(&raw) else { continue };
            let poison = st.bot.fault_injection && raw.to_string().contains("!fault:poller-panic");
            let outcome = match parse_update(raw) {
                Ok(update) => match st.bot.accept_update(&update).await {
                    Ok(o) => o,
                    // Not stored: do not acknowledge it; it comes back on the next poll.
                    Err(e) => return backoff(&myself, st, &format!("could not store update {id}: {e}")),
                },
                Err(e) => {
                    tracing::warn!(account = %st.bot.account(), error = %e, "Skipped a Telegram update that does not parse.");
                    telemetry::platform_update(PLATFORM, st.bot.account(), "malformed", UpdateOutcome::Ignored);
                    UpdateOutcome::Malformed
                }
            };
            if poison && outcome == UpdateOutcome::Handled {
                panic!("injected fault: poller panic after storing update {id}");
            }
            st.offset = st.offset.max(id + 1);
        }
        st.failures = 0;
        myself.cast(PollerMsg::Poll)?;
        Ok(())
    }
}

fn backoff(myself: &ActorRef<PollerMsg>, st: &mut PollerState, why: &str) -> Result<(), ActorProcessingErr> {
    st.failures += 1;
    let delay = Duration::from_millis(200u64.saturating_mul(1 << st.failures.min(8))).min(Duration::from_secs(30));
    tracing::warn!(account = %st.bot.account(), error = why, delay_ms = delay.as_millis() as u64, "Telegram polling failed; backing off.");
    myself.send_after(delay, || PollerMsg::Poll);
    Ok(())
}
