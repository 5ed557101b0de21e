//! The store boundary of the message path: the only place an [`Inbound`]'s typed parts
//! (reply target, generation options, unsupported content) become JSON and back.

use serde::{Deserialize, Serialize};

use super::Inbound;
use crate::inference::GenerateOptions;
use crate::message::{Content, Platform, ReplyTarget};
use crate::session::ChatRequest;
use crate::store::{InboxEntry, NewInbound};

/// What an inbox row keeps besides its columns.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Payload {
    #[serde(default)]
    options: GenerateOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<ReplyTarget>,
    /// The platform type name of content the assistant cannot read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unsupported: Option<String>,
    /// Rows written before the typed target: the platform's untagged route object.
    #[serde(default, skip_serializing)]
    route: Option<serde_json::Value>,
}

impl Payload {
    fn of(options: &GenerateOptions, reply_to: &ReplyTarget, content: &Content) -> String {
        let payload = Payload {
            options: options.clone(),
            reply_to: Some(reply_to.clone()),
            unsupported: match content {
                Content::Unsupported { kind } => Some(kind.clone()),
                Content::Text(_) => None,
            },
            route: None,
        };
        serde_json::to_string(&payload).expect("a payload always serializes")
    }
}

/// The row to insert for a fresh message.
pub fn new_row(m: &Inbound) -> NewInbound {
    NewInbound {
        platform: m.platform.as_str().into(),
        account: m.account.clone(),
        dedup_key: m.dedup_key(),
        conversation: m.conversation.clone(),
        user: m.user.clone(),
        text: m.content.stored_text(),
        payload: Payload::of(&m.options, &m.reply_to, &m.content),
    }
}

/// A request as a row again (for the dead-letter queue), with `attempts` made.
pub fn entry_of(req: &ChatRequest, attempts: i64) -> InboxEntry {
    InboxEntry {
        id: req.inbox_id,
        platform: req.platform.as_str().into(),
        account: req.account.clone(),
        conversation: req.conversation.clone(),
        user: req.user.clone(),
        text: req.content.stored_text(),
        payload: Payload::of(&req.options, &req.reply_to, &req.content),
        attempts,
        created_ms: 0,
    }
}

/// Reads a stored row back; `None` (logged) for a platform this build does not know or a
/// payload it cannot read.
pub fn inbound_of(e: &InboxEntry) -> Option<Inbound> {
    let Some(platform) = Platform::parse(&e.platform) else {
        tracing::warn!(platform = %e.platform, inbox_id = e.id, "Inbox entry of an unknown platform skipped.");
        return None;
    };
    let payload: Payload = serde_json::from_str(&e.payload).unwrap_or_default();
    let reply_to = match (payload.reply_to, payload.route, platform) {
        (Some(t), _, _) => t,
        (None, _, Platform::Http) => ReplyTarget::Http,
        (None, Some(serde_json::Value::Object(mut legacy)), p) => {
            legacy.insert("platform".into(), p.as_str().into());
            match serde_json::from_value(serde_json::Value::Object(legacy)) {
                Ok(t) => t,
                Err(err) => {
                    tracing::warn!(inbox_id = e.id, error = %err, "Inbox entry with an unreadable reply route skipped.");
                    return None;
                }
            }
        }
        (None, _, _) => {
            tracing::warn!(inbox_id = e.id, "Inbox entry of a platform message without a reply target skipped.");
            return None;
        }
    };
    let content = match payload.unsupported {
        Some(kind) => Content::Unsupported { kind },
        None => Content::Text(e.text.clone()),
    };
    Some(Inbound {
        platform,
        account: e.account.clone(),
        conversation: e.conversation.clone(),
        user: e.user.clone(),
        sender_id: e.user.clone(),
        content,
        message_id: None,
        reply_to,
        options: payload.options,
        kind: "replay",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(platform: &str, text: &str, payload: &str) -> InboxEntry {
        InboxEntry {
            id: 7,
            platform: platform.into(),
            account: "main".into(),
            conversation: "k".into(),
            user: "u".into(),
            text: text.into(),
            payload: payload.into(),
            attempts: 1,
            created_ms: 0,
        }
    }

    #[test]
    fn a_row_reads_back_as_the_inbound_it_was_written_from() {
        let inbound = Inbound {
            platform: Platform::Feishu,
            account: "main".into(),
            conversation: "feishu:main:oc_1".into(),
            user: "ou_1".into(),
            sender_id: "ou_1".into(),
            content: Content::Unsupported { kind: "image".into() },
            message_id: Some("ev_1".into()),
            reply_to: ReplyTarget::Feishu { chat_id: "oc_1".into(), message_id: "om_1".into(), group: true },
            options: GenerateOptions { max_new_tokens: Some(5), ..Default::default() },
            kind: "message",
        };
        let row = new_row(&inbound);
        assert_eq!(row.dedup_key.as_deref(), Some("feishu:main:ev_1"));
        assert_eq!(row.text, "[image message]");
        let back = inbound_of(&entry("feishu", &row.text, &row.payload)).unwrap();
        assert_eq!(back.content, inbound.content);
        assert_eq!(back.reply_to, inbound.reply_to);
        assert_eq!(back.options.max_new_tokens, Some(5));
    }

    #[test]
    fn rows_of_the_first_version_still_replay() {
        let old = r#"{"options":{},"route":{"chat_id":42,"thread_id":null,"message_id":5,"group":false}}"#;
        let back = inbound_of(&entry("telegram", "hi", old)).unwrap();
        assert_eq!(back.reply_to, ReplyTarget::Telegram { chat_id: 42, thread_id: None, message_id: Some(5), group: false });
        assert_eq!(back.content, Content::Text("hi".into()));
        let http = inbound_of(&entry("http", "hi", r#"{"options":{},"route":null}"#)).unwrap();
        assert_eq!(http.reply_to, ReplyTarget::Http);
        assert!(inbound_of(&entry("irc", "hi", "{}")).is_none());
    }
}
