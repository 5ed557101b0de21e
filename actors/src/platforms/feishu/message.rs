//! `im.message.receive_v1` parsing (PROTOCOLS §2.4) and splitting long replies (§2.5).
//!
//! Bot-mention detection: when the bot's `open_id` is known (from `GET /open-apis/bot/v3/info`),
//! the bot is mentioned iff some `mentions[].id.open_id` equals it. When it is unknown, a
//! mention counts as the bot only if it carries `"mentioned_type":"bot"` (seen in real payloads,
//! undocumented); otherwise group messages are not answered. This fails closed: without the
//! bot's identity the daemon never answers people mentioning each other in a group.

use serde_json::Value;

/// Largest chunk [`split_text`] should be asked for, in bytes of text.
///
/// A text message request body may not exceed 150 KB. The text is JSON-escaped twice (once in
/// `content`, once in the request body), which in the worst case (control characters) grows it
/// about 7 times: 16 000 × 7 = 112 KB, leaving room for the envelope. Readable chunks are far
/// smaller in practice anyway.
pub const TEXT_CHUNK_LIMIT_BYTES: usize = 16_000;

/// Whether the message came from a one-to-one chat or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatType {
    /// `"p2p"`: a direct chat with the bot.
    P2p,
    /// `"group"`, and any unknown value (treated as group-like).
    Group,
}

/// An incoming message, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// `om_…`; the reply target and a dedupe key.
    pub message_id: String,
    /// Thread root, for replies.
    pub root_id: Option<String>,
    /// Direct parent, for replies.
    pub parent_id: Option<String>,
    /// `oc_…`.
    pub chat_id: String,
    /// One-to-one or group.
    pub chat_type: ChatType,
    /// `omt_…`, for topic threads.
    pub thread_id: Option<String>,
    /// The sender's per-app `ou_…` id.
    pub sender_open_id: String,
    /// `"user"` in practice.
    pub sender_type: String,
    /// `text`, `post`, `image`, …
    pub message_type: String,
    /// Plain text with mentions resolved and the bot's own mention removed; `None` for
    /// unsupported message types.
    pub text: Option<String>,
    /// Whether the bot itself is mentioned (see the module docs).
    pub bot_mentioned: bool,
}

/// Why an event could not be read as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A required field is absent or not a string.
    #[error("the message event lacks the required field `{0}`")]
    MissingField(&'static str),
    /// `content` is not a JSON string holding a JSON object.
    #[error("the message content of type `{0}` is not valid JSON")]
    BadContent(String),
}

/// One entry of `message.mentions`.
#[derive(Debug, Clone)]
struct Mention {
    key: String,
    name: String,
    open_id: Option<String>,
    is_bot: bool,
}

/// Parses the `event` object of an `im.message.receive_v1` event.
pub fn parse_receive(event: &Value, bot_open_id: Option<&str>) -> Result<Incoming, ParseError> {
    let message = event.get("message").ok_or(ParseError::MissingField("message"))?;
    let sender = event.get("sender").ok_or(ParseError::MissingField("sender"))?;
    let message_id = req_str(message, "message_id", "message.message_id")?;
    let chat_id = req_str(message, "chat_id", "message.chat_id")?;
    let message_type = req_str(message, "message_type", "message.message_type")?;
    let sender_open_id =
        sender.get("sender_id").and_then(|s| opt_str(s, "open_id")).ok_or(ParseError::MissingField("sender.sender_id.open_id"))?;
    let chat_type = match message.get("chat_type").and_then(Value::as_str) {
        Some("p2p") => ChatType::P2p,
        _ => ChatType::Group,
    };

    let mentions = parse_mentions(message, bot_open_id);
    let bot_mentioned = mentions.iter().any(|m| m.is_bot);

    let text = match message_type.as_str() {
        "text" | "post" => {
            let raw = message.get("content").and_then(Value::as_str).ok_or(ParseError::MissingField("message.content"))?;
            let content: Value = serde_json::from_str(raw).map_err(|_| ParseError::BadContent(message_type.clone()))?;
            let text = if message_type == "text" {
                let t = content.get("text").and_then(Value::as_str).ok_or_else(|| ParseError::BadContent(message_type.clone()))?;
                resolve_placeholders(t, &mentions)
            } else {
                flatten_post(&content, &mentions, bot_open_id).ok_or_else(|| ParseError::BadContent(message_type.clone()))?
            };
            Some(text.trim().to_string())
        }
        _ => None,
    };

    Ok(Incoming {
        message_id,
        root_id: opt_str(message, "root_id"),
        parent_id: opt_str(message, "parent_id"),
        chat_id,
        chat_type,
        thread_id: opt_str(message, "thread_id"),
        sender_open_id,
        sender_type: opt_str(sender, "sender_type").unwrap_or_else(|| "user".to_string()),
        message_type,
        text,
        bot_mentioned,
    })
}

/// Whether the message is for the bot: a user wrote it, in a direct chat or mentioning the bot
/// (in groups the bot only answers when mentioned).
pub fn is_addressed(msg: &Incoming) -> bool {
    msg.sender_type == "user" && (msg.chat_type == ChatType::P2p || msg.bot_mentioned)
}

fn req_str(v: &Value, key: &str, name: &'static str) -> Result<String, ParseError> {
    opt_str(v, key).ok_or(ParseError::MissingField(name))
}

/// A non-empty string field.
fn opt_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

fn parse_mentions(message: &Value, bot_open_id: Option<&str>) -> Vec<Mention> {
    let Some(list) = message.get("mentions").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|m| {
            let key = opt_str(m, "key")?;
            let name = m.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            // In events `id` is an object; in message resources it is a plain open_id.
            let open_id = match m.get("id") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(id) => opt_str(id, "open_id"),
                None => None,
            };
            let is_bot = match bot_open_id {
                Some(bot) => open_id.as_deref() == Some(bot),
                None => m.get("mentioned_type").and_then(Value::as_str) == Some("bot"),
            };
            Some(Mention { key, name, open_id, is_bot })
        })
        .collect()
}

/// Replaces `@_user_N` placeholders with `@Name`, dropping the bot's own mention (and one
/// following space). Scans left to right, preferring the longest key, so `@_user_1` never
/// matches inside `@_user_10` and inserted names are never re-scanned.
fn resolve_placeholders(text: &str, mentions: &[Mention]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('@') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let best = mentions.iter().filter(|m| tail.starts_with(m.key.as_str())).max_by_key(|m| m.key.len());
        match best {
            Some(m) => {
                let mut after = &tail[m.key.len()..];
                if m.is_bot {
                    after = after.strip_prefix(' ').unwrap_or(after);
                } else {
                    out.push('@');
                    out.push_str(if m.name.is_empty() { &m.key[1..] } else { &m.name });
                }
                rest = after;
            }
            None => {
                out.push('@');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Flattens `post` content (direct `{"title","content"}` or locale-wrapped
/// `{"zh_cn": {...}}`) to plain text: the title, then one line per paragraph.
fn flatten_post(content: &Value, mentions: &[Mention], bot_open_id: Option<&str>) -> Option<String> {
    let body = if content.get("content").is_some() {
        content
    } else {
        let obj = content.as_object()?;
        ["zh_cn", "en_us", "ja_jp"].iter().find_map(|l| obj.get(*l)).or_else(|| obj.values().find(|v| v.get("content").is_some()))?
    };
    let mut lines = Vec::new();
    if let Some(title) = body.get("title").and_then(Value::as_str).filter(|t| !t.trim().is_empty()) {
        lines.push(title.to_string());
    }
    for para in body.get("content").and_then(Value::as_array).into_iter().flatten() {
        let mut line = String::new();
        for el in para.as_array().into_iter().flatten() {
            post_element(el, mentions, bot_open_id, &mut line);
        }
        lines.push(line);
    }
    Some(lines.join("\n"))
}

fn post_element(el: &Value, mentions: &[Mention], bot_open_id: Option<&str>, out: &mut String) {
    let text = el.get("text").and_then(Value::as_str).unwrap_or("");
    match el.get("tag").and_then(Value::as_str).unwrap_or("") {
        "text" | "code_block" | "md" => out.push_str(text),
        "a" => out.push_str(if text.is_empty() { el.get("href").and_then(Value::as_str).unwrap_or("") } else { text }),
        "at" => {
            let id = el.get("user_id").and_then(Value::as_str).unwrap_or("");
            // `user_id` is a placeholder key in received events, an open_id elsewhere.
            let mention = mentions.iter().find(|m| m.key == id || m.open_id.as_deref() == Some(id));
            let is_bot = mention.is_some_and(|m| m.is_bot) || (bot_open_id == Some(id) && !id.is_empty());
            if is_bot {
                return;
            }
            let name = el
                .get("user_name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .or(mention.map(|m| m.name.as_str()).filter(|n| !n.is_empty()))
                .unwrap_or(id);
            out.push('@');
            out.push_str(name);
        }
        _ => {}
    }
}

/// Splits `text` into chunks of at most `limit_bytes` bytes, preferring to cut at a paragraph
/// break, then a line break, then a space, and otherwise at a character boundary. The separator
/// at a cut is dropped; empty chunks are skipped. Limits below 4 bytes are raised to 4 so that
/// any character fits. See [`TEXT_CHUNK_LIMIT_BYTES`] for a safe limit.
pub fn split_text(text: &str, limit_bytes: usize) -> Vec<String> {
    let limit = limit_bytes.max(4);
    let mut chunks = Vec::new();
    let mut rest = text;
    while rest.len() > limit {
        let mut window_end = limit;
        while !rest.is_char_boundary(window_end) {
            window_end -= 1;
        }
        let window = &rest[..window_end];
        let (cut, skip) = if let Some(p) = window.rfind("\n\n").filter(|&p| p > 0) {
            (p, 2)
        } else if let Some(p) = window.rfind('\n').filter(|&p| p > 0) {
            (p, 1)
        } else if let Some(p) = window.rfind(' ').filter(|&p| p > 0) {
            (p, 1)
        } else {
            (window_end, 0)
        };
        let chunk = &rest[..cut];
        if !chunk.trim().is_empty() {
            chunks.push(chunk.to_string());
        }
        rest = &rest[cut + skip..];
    }
    if !rest.trim().is_empty() {
        chunks.push(rest.to_string());
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BOT: &str = "ou_bot";

    fn event(chat_type: &str, msg_type: &str, content: Value, mentions: Value) -> Value {
        json!({
            "sender": {
                "sender_id": {"open_id": "ou_alice", "union_id": "on_a", "user_id": null},
                "sender_type": "user", "tenant_key": "t"
            },
            "message": {
                "message_id": "om_1", "root_id": "", "parent_id": "om_0",
                "create_time": "1700000000000", "chat_id": "oc_1",
                "chat_type": chat_type, "message_type": msg_type,
                "content": content.to_string(), "mentions": mentions
            }
        })
    }

    fn mention(key: &str, name: &str, open_id: &str) -> Value {
        json!({"key": key, "id": {"open_id": open_id, "union_id": "on_x"}, "name": name, "tenant_key": "t"})
    }

    #[test]
    fn p2p_text_is_parsed() {
        let ev = event("p2p", "text", json!({"text": "  hello there \n"}), json!(null));
        let m = parse_receive(&ev, Some(BOT)).unwrap();
        assert_eq!(m.message_id, "om_1");
        assert_eq!(m.root_id, None);
        assert_eq!(m.parent_id.as_deref(), Some("om_0"));
        assert_eq!(m.chat_id, "oc_1");
        assert_eq!(m.chat_type, ChatType::P2p);
        assert_eq!(m.sender_open_id, "ou_alice");
        assert_eq!(m.sender_type, "user");
        assert_eq!(m.text.as_deref(), Some("hello there"));
        assert!(!m.bot_mentioned);
        assert!(is_addressed(&m));
    }

    #[test]
    fn bot_mention_is_removed_and_others_named() {
        let ev = event(
            "group",
            "text",
            json!({"text": "@_user_1 ask @_user_2 and @_user_10 about it"}),
            json!([mention("@_user_1", "Switchboard", BOT), mention("@_user_2", "Tom", "ou_tom"), mention("@_user_10", "Ann", "ou_ann"),]),
        );
        let m = parse_receive(&ev, Some(BOT)).unwrap();
        assert_eq!(m.text.as_deref(), Some("ask @Tom and @Ann about it"));
        assert!(m.bot_mentioned);
        assert_eq!(m.chat_type, ChatType::Group);
        assert!(is_addressed(&m));
    }

    #[test]
    fn group_without_bot_mention_is_not_answered() {
        let ev = event("group", "text", json!({"text": "@_user_1 lunch?"}), json!([mention("@_user_1", "Tom", "ou_tom")]));
        let m = parse_receive(&ev, Some(BOT)).unwrap();
        assert_eq!(m.text.as_deref(), Some("@Tom lunch?"));
        assert!(!m.bot_mentioned);
        assert!(!is_addressed(&m));
    }

    #[test]
    fn unknown_bot_id_uses_mentioned_type_only() {
        let mut bot = mention("@_user_1", "Switchboard", "ou_whatever");
        bot["mentioned_type"] = json!("bot");
        let ev = event("group", "text", json!({"text": "@_user_1 hi"}), json!([bot]));
        let m = parse_receive(&ev, None).unwrap();
        assert!(m.bot_mentioned);
        assert_eq!(m.text.as_deref(), Some("hi"));

        let ev = event("group", "text", json!({"text": "@_user_1 hi"}), json!([mention("@_user_1", "Tom", "ou_tom")]));
        assert!(!parse_receive(&ev, None).unwrap().bot_mentioned);
    }

    #[test]
    fn unknown_chat_type_is_group_like() {
        let ev = event("topic", "text", json!({"text": "hi"}), json!([]));
        let m = parse_receive(&ev, Some(BOT)).unwrap();
        assert_eq!(m.chat_type, ChatType::Group);
        assert!(!is_addressed(&m));
    }

    #[test]
    fn post_is_flattened_direct_and_locale_wrapped() {
        let body = json!({
            "title": "Plan",
            "content": [
                [{"tag": "at", "user_id": "@_user_1", "user_name": "Switchboard"},
                 {"tag": "text", "text": " see "},
                 {"tag": "a", "text": "docs", "href": "https://x"}],
                [{"tag": "img", "image_key": "img_1"}],
                [{"tag": "text", "text": "ping "}, {"tag": "at", "user_id": "@_user_2", "user_name": "Tom"}]
            ]
        });
        let mentions = json!([mention("@_user_1", "Switchboard", BOT), mention("@_user_2", "Tom", "ou_tom")]);
        let m = parse_receive(&event("group", "post", body.clone(), mentions.clone()), Some(BOT)).unwrap();
        assert_eq!(m.text.as_deref(), Some("Plan\n see docs\n\nping @Tom"));
        assert!(m.bot_mentioned);

        let wrapped = json!({"zh_cn": body});
        let m2 = parse_receive(&event("group", "post", wrapped, mentions), Some(BOT)).unwrap();
        assert_eq!(m2.text, m.text);
    }

    #[test]
    fn unsupported_types_have_no_text() {
        for t in ["image", "file", "sticker", "audio", "interactive"] {
            let ev = event("p2p", t, json!({"image_key": "img_1"}), json!(null));
            let m = parse_receive(&ev, Some(BOT)).unwrap();
            assert_eq!(m.text, None);
            assert_eq!(m.message_type, t);
            assert!(is_addressed(&m), "a direct message is for the bot even without text (it gets the text-only answer)");
        }
    }

    #[test]
    fn malformed_events_are_errors() {
        assert_eq!(parse_receive(&json!({}), None), Err(ParseError::MissingField("message")));
        let mut ev = event("p2p", "text", json!({"text": "x"}), json!(null));
        ev["message"]["content"] = json!("not json");
        assert_eq!(parse_receive(&ev, None), Err(ParseError::BadContent("text".into())));
        let mut ev = event("p2p", "text", json!({"text": "x"}), json!(null));
        ev["sender"]["sender_id"] = json!({});
        assert_eq!(parse_receive(&ev, None), Err(ParseError::MissingField("sender.sender_id.open_id")));
        let mut ev = event("p2p", "text", json!({"text": "x"}), json!(null));
        ev["message"]["content"] = json!(42);
        assert!(parse_receive(&ev, None).is_err());
    }

    #[test]
    fn stray_at_signs_survive() {
        let ev = event("p2p", "text", json!({"text": "mail a@b.c @_user_9 @"}), json!([]));
        let m = parse_receive(&ev, Some(BOT)).unwrap();
        assert_eq!(m.text.as_deref(), Some("mail a@b.c @_user_9 @"));
    }

    #[test]
    fn split_keeps_short_text_whole() {
        assert_eq!(split_text("hello", 100), vec!["hello"]);
        assert!(split_text("", 100).is_empty());
        assert!(split_text("  \n ", 100).is_empty());
    }

    #[test]
    fn split_prefers_paragraphs_then_lines_then_spaces() {
        assert_eq!(split_text("aaaa\n\nbbbb\ncc", 10), vec!["aaaa", "bbbb\ncc"]);
        assert_eq!(split_text("aaaa\nbbbb\ncccc", 10), vec!["aaaa\nbbbb", "cccc"]);
        assert_eq!(split_text("aaa bbb ccc ddd", 8), vec!["aaa bbb", "ccc ddd"]);
    }

    #[test]
    fn split_cuts_on_char_boundaries_within_limit() {
        let text = "é".repeat(10) + &"语".repeat(10);
        for limit in [0, 1, 4, 5, 7, 16] {
            let chunks = split_text(&text, limit);
            assert!(chunks.iter().all(|c| c.len() <= limit.max(4)), "limit {limit}");
            assert_eq!(chunks.concat(), text);
        }
        let big = "word ".repeat(10_000);
        let chunks = split_text(&big, TEXT_CHUNK_LIMIT_BYTES);
        assert!(chunks.len() >= 3);
        assert!(chunks.iter().all(|c| c.len() <= TEXT_CHUNK_LIMIT_BYTES));
    }
}
