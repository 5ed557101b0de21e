//! Serde types for the parts of the Telegram Bot API the daemon uses.
//!
//! Every type tolerates unknown fields (serde's default) and every field Telegram may omit is an
//! `Option` or has `#[serde(default)]`, so new API versions and update kinds we do not handle
//! still deserialize. IDs are `i64` throughout (PROTOCOLS.md 1.1).

use serde::{Deserialize, Serialize};

/// One incoming update. It carries `update_id` plus at most one payload field; kinds we do not
/// model (callback queries, reactions, ...) deserialize with every payload field `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// Monotonic per bot (but may jump randomly after a week of silence); used as the
    /// getUpdates offset and for de-duplicating webhook retries.
    pub update_id: i64,
    /// A new message in a private chat, group or supergroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// A new version of a message that was edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_message: Option<Message>,
    /// A new post in a channel the bot is a member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_post: Option<Message>,
    /// An edited channel post.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_channel_post: Option<Message>,
    /// An inline-keyboard callback; kept raw because the daemon does not act on it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_query: Option<serde_json::Value>,
}

impl Update {
    /// The name of the payload field this update carries (`"message"`, `"edited_message"`,
    /// ...), or `"unknown"` for kinds we do not model. Bounded, so usable as a metric label.
    pub fn kind(&self) -> &'static str {
        if self.message.is_some() {
            "message"
        } else if self.edited_message.is_some() {
            "edited_message"
        } else if self.channel_post.is_some() {
            "channel_post"
        } else if self.edited_channel_post.is_some() {
            "edited_channel_post"
        } else if self.callback_query.is_some() {
            "callback_query"
        } else {
            "unknown"
        }
    }
}

/// A message (or service message) in a chat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Unique inside its chat.
    pub message_id: i64,
    /// Forum topic or reply-thread id; a topic only when `is_topic_message` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_thread_id: Option<i64>,
    /// True only when the message was really sent in a forum topic.
    #[serde(default)]
    pub is_topic_message: bool,
    /// The sender; absent for channel posts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<User>,
    /// Set when sent on behalf of a chat (anonymous group admins, linked channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_chat: Option<Chat>,
    /// The chat the message belongs to.
    pub chat: Chat,
    /// Unix seconds.
    #[serde(default)]
    pub date: i64,
    /// Unix seconds of the last edit, if edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit_date: Option<i64>,
    /// Text of a text message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Entities (mentions, commands, formatting) in `text`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<MessageEntity>,
    /// Caption of a media message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// Entities in `caption`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caption_entities: Vec<MessageEntity>,
    /// The message this one replies to (in forums: possibly the topic's creation message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_message: Option<Box<Message>>,
    /// Service field: this group was upgraded to the supergroup with this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate_to_chat_id: Option<i64>,
    /// Service field: this supergroup was upgraded from the group with this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate_from_chat_id: Option<i64>,
    /// Present on the service message that created a forum topic; kept raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forum_topic_created: Option<serde_json::Value>,
}

/// A Telegram user or bot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Stable numeric id.
    pub id: i64,
    /// True for bots.
    #[serde(default)]
    pub is_bot: bool,
    /// Display first name (may be empty for odd accounts, hence the default).
    #[serde(default)]
    pub first_name: String,
    /// Optional last name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// `@username` without the `@`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// getMe only: true when privacy mode is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_read_all_group_messages: Option<bool>,
}

/// A chat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chat {
    /// Negative for groups; `-100...` for supergroups and channels.
    pub id: i64,
    /// Private, group, supergroup or channel.
    #[serde(rename = "type")]
    pub kind: ChatType,
    /// Title of groups and channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Public username, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// True for supergroups with topics enabled.
    #[serde(default)]
    pub is_forum: bool,
}

/// The `type` of a chat. Unknown future values map to `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatType {
    /// One-to-one chat with a user.
    Private,
    /// Basic group.
    Group,
    /// Supergroup (possibly a forum).
    Supergroup,
    /// Broadcast channel.
    Channel,
    /// A type this code does not know.
    #[serde(other)]
    Other,
}

impl ChatType {
    /// True for groups and supergroups, where the bot answers only when addressed.
    pub fn is_group(self) -> bool {
        matches!(self, ChatType::Group | ChatType::Supergroup)
    }

    /// Bounded lowercase name, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatType::Private => "private",
            ChatType::Group => "group",
            ChatType::Supergroup => "supergroup",
            ChatType::Channel => "channel",
            ChatType::Other => "other",
        }
    }
}

/// A special part of a message text. `offset` and `length` count UTF-16 code units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageEntity {
    /// `mention`, `bot_command`, `text_mention`, `bold`, ... kept as a string so new types
    /// never break parsing.
    #[serde(rename = "type")]
    pub kind: String,
    /// Start, in UTF-16 code units.
    pub offset: i64,
    /// Length, in UTF-16 code units.
    pub length: i64,
    /// For `text_mention`: the mentioned user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
}

/// The envelope every Bot API response uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ApiResponse<T> {
    /// True on success; then `result` is set.
    pub ok: bool,
    /// The method's result on success.
    #[serde(default = "none")]
    pub result: Option<T>,
    /// Human-readable error text on failure.
    #[serde(default)]
    pub description: Option<String>,
    /// Error code on failure (Telegram warns it may change; the HTTP status usually matches).
    #[serde(default)]
    pub error_code: Option<i64>,
    /// Machine-readable hints for automatic error handling.
    #[serde(default)]
    pub parameters: Option<ResponseParameters>,
}

fn none<T>() -> Option<T> {
    None
}

/// `ResponseParameters`: hints attached to some errors.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ResponseParameters {
    /// Flood control: seconds to wait before repeating the request.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// The group was migrated to the supergroup with this id.
    #[serde(default)]
    pub migrate_to_chat_id: Option<i64>,
}

/// Parses one raw update (from getUpdates or a webhook body) into an [`Update`].
pub fn parse_update(value: serde_json::Value) -> Result<Update, serde_json::Error> {
    serde_json::from_value(value)
}

/// Parses a webhook request body into an [`Update`].
pub fn parse_update_bytes(body: &[u8]) -> Result<Update, serde_json::Error> {
    serde_json::from_slice(body)
}

/// The `update_id` of a raw update even when the rest of it is malformed, so a poller can
/// still advance its offset past an update it cannot parse.
pub fn update_id_of(value: &serde_json::Value) -> Option<i64> {
    value.get("update_id")?.as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_group_message_with_unknown_fields() {
        let u = parse_update(json!({
            "update_id": 10,
            "message": {
                "message_id": 5, "date": 1700000000, "brand_new_field": {"x": 1},
                "from": {"id": 42, "is_bot": false, "first_name": "Ann", "username": "ann", "language_code": "en"},
                "chat": {"id": -1001234567890i64, "type": "supergroup", "title": "T", "is_forum": true},
                "text": "@bot hi",
                "entities": [{"type": "mention", "offset": 0, "length": 4}],
                "reply_to_message": {"message_id": 4, "chat": {"id": -1001234567890i64, "type": "supergroup"}}
            }
        }))
        .unwrap();
        assert_eq!(u.kind(), "message");
        let m = u.message.unwrap();
        assert_eq!(m.chat.kind, ChatType::Supergroup);
        assert_eq!(m.chat.id, -1001234567890);
        assert!(m.chat.is_forum);
        assert_eq!(m.entities[0].kind, "mention");
        assert_eq!(m.reply_to_message.unwrap().message_id, 4);
        assert_eq!(m.from.unwrap().username.as_deref(), Some("ann"));
    }

    #[test]
    fn unknown_update_kinds_and_chat_types_parse() {
        let u = parse_update(json!({"update_id": 1, "message_reaction": {"whatever": true}})).unwrap();
        assert_eq!(u.kind(), "unknown");
        let u = parse_update(json!({"update_id": 2, "message": {
            "message_id": 1, "chat": {"id": 1, "type": "secret_future_type"}}}))
        .unwrap();
        assert_eq!(u.message.unwrap().chat.kind, ChatType::Other);
    }

    #[test]
    fn malformed_updates_error_but_keep_their_id() {
        let v = json!({"update_id": 7, "message": {"message_id": "nope"}});
        assert!(parse_update(v.clone()).is_err());
        assert_eq!(update_id_of(&v), Some(7));
        assert_eq!(update_id_of(&json!([1, 2])), None);
        assert!(parse_update_bytes(b"\xff\x00not json").is_err());
        assert!(parse_update_bytes(b"").is_err());
    }

    #[test]
    fn deep_reply_nesting_is_an_error_not_a_stack_overflow() {
        let mut s = String::new();
        for _ in 0..10_000 {
            s.push_str(r#"{"update_id":1,"message":{"message_id":1,"chat":{"id":1,"type":"private"},"reply_to_message":"#);
        }
        assert!(parse_update_bytes(s.as_bytes()).is_err());
    }

    #[test]
    fn envelope_parses_success_and_error() {
        let ok: ApiResponse<User> =
            serde_json::from_str(r#"{"ok":true,"result":{"id":9,"is_bot":true,"first_name":"B","username":"sb_bot"}}"#).unwrap();
        assert!(ok.ok);
        assert_eq!(ok.result.unwrap().username.as_deref(), Some("sb_bot"));
        let err: ApiResponse<User> = serde_json::from_str(
            r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3","parameters":{"retry_after":3}}"#,
        )
        .unwrap();
        assert_eq!(err.error_code, Some(429));
        assert_eq!(err.parameters.unwrap().retry_after, Some(3));
    }
}
