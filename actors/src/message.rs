//! The platform-neutral vocabulary of the message path: which platform a message came from,
//! what it says, and where its answer goes. Adapters produce these; the session and the egress
//! consume them; the store sees them only as JSON (serialized at its boundary).

use serde::{Deserialize, Serialize};

/// A chat platform (bounded: usable as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// The generic JSON chat API (`POST /api/v1/chat`).
    Http,
    /// Telegram Bot API (webhook or long polling).
    Telegram,
    /// Feishu / Lark Open Platform.
    Feishu,
}

impl Platform {
    /// Every platform, for pre-registering metric series.
    pub const ALL: [Platform; 3] = [Platform::Http, Platform::Telegram, Platform::Feishu];

    /// The label used in metrics, conversation keys and inbox rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Http => "http",
            Platform::Telegram => "telegram",
            Platform::Feishu => "feishu",
        }
    }

    /// Parses a stored label; `None` for a platform this build does not know.
    pub fn parse(s: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the answer to a message goes, one variant per platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "platform", rename_all = "lowercase")]
pub enum ReplyTarget {
    /// The HTTP caller waits for the answer on its connection; nothing is sent anywhere.
    Http,
    /// A Telegram chat.
    Telegram {
        /// The chat to answer in.
        chat_id: i64,
        /// Forum topic to answer in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread_id: Option<i64>,
        /// The user's message, which the first part of the answer replies to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<i64>,
        /// Group or supergroup (stricter send limits).
        #[serde(default)]
        group: bool,
    },
    /// A Feishu / Lark chat.
    Feishu {
        /// `oc_…`: the chat (for the send limiter).
        chat_id: String,
        /// `om_…`: the user's message, which every part of the answer replies to.
        message_id: String,
        /// Group chat (stricter send limits).
        #[serde(default)]
        group: bool,
    },
}

impl ReplyTarget {
    /// The platform this target belongs to.
    pub fn platform(&self) -> Platform {
        match self {
            ReplyTarget::Http => Platform::Http,
            ReplyTarget::Telegram { .. } => Platform::Telegram,
            ReplyTarget::Feishu { .. } => Platform::Feishu,
        }
    }

    /// Whether the answer is delivered by a platform's egress (not returned to a caller).
    pub fn is_platform(&self) -> bool {
        !matches!(self, ReplyTarget::Http)
    }
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Text for the assistant (or a command such as `/reset`).
    Text(String),
    /// A message type the assistant cannot read (an image, a file…): answered with a short
    /// explanation, never sent to the model. `kind` is the platform's type name.
    Unsupported { kind: String },
}

impl Content {
    /// What the inbox and the dead-letter queue keep as the message text.
    pub fn stored_text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Unsupported { kind } => format!("[{kind} message]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_round_trip_their_labels() {
        for p in Platform::ALL {
            assert_eq!(Platform::parse(p.as_str()), Some(p));
        }
        assert_eq!(Platform::parse("irc"), None);
    }

    #[test]
    fn reply_targets_serialize_tagged_by_platform() {
        let t = ReplyTarget::Telegram { chat_id: -100, thread_id: Some(7), message_id: None, group: true };
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json, serde_json::json!({"platform": "telegram", "chat_id": -100, "thread_id": 7, "group": true}));
        assert_eq!(serde_json::from_value::<ReplyTarget>(json).unwrap(), t);
        let f = ReplyTarget::Feishu { chat_id: "oc_1".into(), message_id: "om_1".into(), group: false };
        assert_eq!(serde_json::from_value::<ReplyTarget>(serde_json::to_value(&f).unwrap()).unwrap(), f);
        assert_eq!(f.platform(), Platform::Feishu);
        assert!(!ReplyTarget::Http.is_platform());
    }
}
