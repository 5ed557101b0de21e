//! Inbound normalization: decides whether an [`Update`] is something the bot should answer and,
//! if so, reduces it to an [`Incoming`] with the text the model should see.
//!
//! Rules (PROTOCOLS.md 1.5):
//! * Private chats: every text or caption message from a human is answered.
//! * Groups and supergroups: answered only when the bot is addressed: a `mention` entity
//!   `@bot_username` (case-insensitive), a `text_mention` entity for the bot's user id, a reply
//!   to one of the bot's messages, or a leading `bot_command` entity `/cmd@bot_username`. A bare
//!   `/cmd` counts only when [`TriageOptions::bare_commands_in_groups`] is set, because in a
//!   group it may be meant for another bot.
//! * Forum topics: the implicit reply to the topic's creation message is not a reply to the
//!   bot, and `message_thread_id` is a topic only when `is_topic_message` is true.
//! * Channels, messages from other bots, and update kinds other than `message` and
//!   `edited_message` are ignored.
//! * A group-to-supergroup migration service message yields [`Triage::Migrated`].

use super::types::{ChatType, Message, MessageEntity, Update, User};

/// Who the bot is, from getMe at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotIdentity {
    /// The bot's user id; `None` if unknown (then only username matching works).
    pub id: Option<i64>,
    /// The bot's username without the leading `@`.
    pub username: String,
}

impl BotIdentity {
    /// Builds an identity, dropping a leading `@` from `username`.
    pub fn new(id: Option<i64>, username: &str) -> Self {
        Self { id, username: username.trim_start_matches('@').to_string() }
    }

    /// Builds the identity from the getMe result.
    pub fn from_user(me: &User) -> Self {
        Self::new(Some(me.id), me.username.as_deref().unwrap_or_default())
    }

    /// True when `user` is this bot (by id, or by username if the id is unknown or differs).
    fn is(&self, user: &User) -> bool {
        self.id == Some(user.id) || (user.is_bot && self.name_matches(user.username.as_deref().unwrap_or_default()))
    }

    /// Case-insensitive username comparison; an empty own username never matches.
    fn name_matches(&self, name: &str) -> bool {
        !self.username.is_empty() && name.eq_ignore_ascii_case(&self.username)
    }
}

/// Policy knobs for [`triage_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriageOptions {
    /// Treat a bare `/cmd` (no `@bot` suffix) at the start of a group message as addressed to
    /// this bot. Off by default: in a group with several bots it may be meant for another.
    pub bare_commands_in_groups: bool,
}

/// A message the bot should answer, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// For de-duplication of webhook retries and poll offsets.
    pub update_id: i64,
    /// `"message"` or `"edited_message"`.
    pub kind: &'static str,
    /// The chat to answer in.
    pub chat_id: i64,
    /// Private, group or supergroup.
    pub chat_type: ChatType,
    /// Forum topic to answer in: `message_thread_id` when `is_topic_message`, else `None`.
    pub thread_id: Option<i64>,
    /// The message to reply to.
    pub message_id: i64,
    /// The sender's user id (for an anonymous group admin: the group's id).
    pub user_id: i64,
    /// Display name: first and last name, else `@username`, else the group title for
    /// anonymous admins. Never empty.
    pub user_name: String,
    /// The text (or caption) the model should see: the bot's mentions removed, `/cmd@bot`
    /// reduced to `/cmd`, trimmed. Never empty.
    pub text: String,
}

/// The outcome of [`triage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Triage {
    /// Answer this message.
    Answer(Incoming),
    /// The group `from` was upgraded to the supergroup `to`: move the conversation. Telegram
    /// sends two service messages for one migration (one in each chat, carrying
    /// `migrate_to_chat_id` and `migrate_from_chat_id`); both map to the same value, so the
    /// caller must treat this idempotently.
    Migrated {
        /// The old group's chat id.
        from: i64,
        /// The new supergroup's chat id.
        to: i64,
    },
    /// Do nothing. `reason` is one of a bounded set, usable as a metric label:
    /// `"unsupported_kind"`, `"channel"`, `"unsupported_chat"`, `"no_sender"`, `"from_bot"`,
    /// `"no_text"`, `"not_addressed"`.
    Ignore {
        /// Why the update was ignored.
        reason: &'static str,
    },
}

/// Triage with the default [`TriageOptions`].
pub fn triage(update: &Update, bot: &BotIdentity) -> Triage {
    triage_with(update, bot, &TriageOptions::default())
}

/// Decides whether to answer `update`; see the module docs for the rules.
pub fn triage_with(update: &Update, bot: &BotIdentity, opts: &TriageOptions) -> Triage {
    let (kind, msg) = match (&update.message, &update.edited_message) {
        (Some(m), _) => ("message", m),
        (None, Some(m)) => ("edited_message", m),
        (None, None) if update.channel_post.is_some() || update.edited_channel_post.is_some() => {
            return ignore("channel");
        }
        (None, None) => return ignore("unsupported_kind"),
    };
    let chat_type = msg.chat.kind;
    match chat_type {
        ChatType::Channel => return ignore("channel"),
        ChatType::Other => return ignore("unsupported_chat"),
        ChatType::Private | ChatType::Group | ChatType::Supergroup => {}
    }
    if let Some(to) = msg.migrate_to_chat_id {
        return Triage::Migrated { from: msg.chat.id, to };
    }
    if let Some(from) = msg.migrate_from_chat_id {
        return Triage::Migrated { from, to: msg.chat.id };
    }
    let Some((user_id, user_name)) = sender(msg) else {
        return match &msg.from {
            Some(_) => ignore("from_bot"),
            None => ignore("no_sender"),
        };
    };
    let (raw, entities) = match (&msg.text, &msg.caption) {
        (Some(t), _) => (t.as_str(), msg.entities.as_slice()),
        (None, Some(c)) => (c.as_str(), msg.caption_entities.as_slice()),
        (None, None) => return ignore("no_text"),
    };
    let units: Vec<u16> = raw.encode_utf16().collect();
    if chat_type.is_group() && !is_addressed(msg, &units, entities, bot, opts) {
        return ignore("not_addressed");
    }
    let text = strip_addressing(&units, entities, bot);
    let text = text.trim();
    if text.is_empty() {
        return ignore("no_text");
    }
    Triage::Answer(Incoming {
        update_id: update.update_id,
        kind,
        chat_id: msg.chat.id,
        chat_type,
        thread_id: if msg.is_topic_message { msg.message_thread_id } else { None },
        message_id: msg.message_id,
        user_id,
        user_name,
        text: text.to_string(),
    })
}

fn ignore(reason: &'static str) -> Triage {
    Triage::Ignore { reason }
}

/// The human sender's id and display name; `None` for bots and sender-less messages. An
/// anonymous group admin (sent as the group itself via `GroupAnonymousBot`) counts as a human
/// identified by the group.
fn sender(msg: &Message) -> Option<(i64, String)> {
    let from = msg.from.as_ref()?;
    if !from.is_bot {
        return Some((from.id, display_name(from)));
    }
    let chat = msg.sender_chat.as_ref().filter(|c| c.id == msg.chat.id)?;
    let name = chat.title.clone().filter(|t| !t.trim().is_empty()).unwrap_or_else(|| "group admin".to_string());
    Some((chat.id, name))
}

fn display_name(user: &User) -> String {
    let full = match &user.last_name {
        Some(last) if !last.is_empty() => format!("{} {}", user.first_name, last),
        _ => user.first_name.clone(),
    };
    let full = full.trim();
    if !full.is_empty() {
        return full.to_string();
    }
    match &user.username {
        Some(u) if !u.is_empty() => format!("@{u}"),
        _ => format!("user {}", user.id),
    }
}

/// The entity's range in UTF-16 units, or `None` if it does not lie inside the text.
fn entity_range(e: &MessageEntity, len: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(e.offset).ok()?;
    let end = start.checked_add(usize::try_from(e.length).ok()?)?;
    (end <= len && start < end).then_some(start..end)
}

/// The text an entity covers (decoded lossily, so malformed offsets cannot panic).
fn entity_text(units: &[u16], e: &MessageEntity) -> Option<String> {
    entity_range(e, units.len()).map(|r| String::from_utf16_lossy(&units[r]))
}

/// Classification of one entity with respect to this bot.
enum Addressing {
    /// `@bot` mention or `text_mention` of the bot: removed from the text.
    Mention,
    /// Leading `/cmd@bot`: the `@bot` suffix (this many UTF-16 units) is removed.
    CommandForUs { suffix_units: usize },
    /// Leading bare `/cmd`.
    BareCommand,
    /// Anything else (including commands for other bots).
    Other,
}

fn classify_entity(units: &[u16], e: &MessageEntity, bot: &BotIdentity) -> Addressing {
    match e.kind.as_str() {
        "mention" => match entity_text(units, e) {
            Some(t) if t.strip_prefix('@').is_some_and(|n| bot.name_matches(n)) => Addressing::Mention,
            _ => Addressing::Other,
        },
        "text_mention" => match &e.user {
            Some(u) if bot.id == Some(u.id) => Addressing::Mention,
            _ => Addressing::Other,
        },
        "bot_command" if e.offset == 0 => match entity_text(units, e) {
            Some(t) => match t.split_once('@') {
                None => Addressing::BareCommand,
                Some((_, name)) if bot.name_matches(name) => Addressing::CommandForUs { suffix_units: name.encode_utf16().count() + 1 },
                Some(_) => Addressing::Other,
            },
            None => Addressing::Other,
        },
        _ => Addressing::Other,
    }
}

fn is_addressed(msg: &Message, units: &[u16], entities: &[MessageEntity], bot: &BotIdentity, opts: &TriageOptions) -> bool {
    let by_entity = entities.iter().any(|e| match classify_entity(units, e, bot) {
        Addressing::Mention | Addressing::CommandForUs { .. } => true,
        Addressing::BareCommand => opts.bare_commands_in_groups,
        Addressing::Other => false,
    });
    by_entity || is_reply_to_bot(msg, bot)
}

/// A real reply to one of the bot's messages. In forum topics every message carries an
/// implicit `reply_to_message` pointing at the topic's creation message; that is not a reply.
fn is_reply_to_bot(msg: &Message, bot: &BotIdentity) -> bool {
    let Some(parent) = msg.reply_to_message.as_deref() else { return false };
    if parent.forum_topic_created.is_some() || Some(parent.message_id) == msg.message_thread_id {
        return false;
    }
    parent.from.as_ref().is_some_and(|u| bot.is(u))
}

/// The text with the bot's mentions removed (plus a directly following `,` or `:`) and a
/// leading `/cmd@bot` reduced to `/cmd`. Entities that overlap an earlier removal or lie
/// outside the text are skipped.
fn strip_addressing(units: &[u16], entities: &[MessageEntity], bot: &BotIdentity) -> String {
    let mut cuts: Vec<std::ops::Range<usize>> = entities
        .iter()
        .filter_map(|e| {
            let r = entity_range(e, units.len())?;
            match classify_entity(units, e, bot) {
                Addressing::Mention => {
                    let mut end = r.end;
                    if units.get(end).is_some_and(|&u| u == u16::from(b',') || u == u16::from(b':')) {
                        end += 1;
                    }
                    Some(r.start..end)
                }
                Addressing::CommandForUs { suffix_units } => Some(r.end.saturating_sub(suffix_units)..r.end),
                Addressing::BareCommand | Addressing::Other => None,
            }
        })
        .collect();
    cuts.sort_by_key(|r| r.start);
    let mut out: Vec<u16> = Vec::with_capacity(units.len());
    let mut pos = 0;
    for cut in cuts {
        if cut.start < pos {
            continue; // overlapping entity: already handled
        }
        out.extend_from_slice(&units[pos..cut.start]);
        pos = cut.end;
    }
    out.extend_from_slice(&units[pos.min(units.len())..]);
    String::from_utf16_lossy(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platforms::telegram::types::parse_update;
    use serde_json::{Value, json};

    const BOT_ID: i64 = 777;

    fn bot() -> BotIdentity {
        BotIdentity::new(Some(BOT_ID), "@Switch_Bot")
    }

    fn user(id: i64) -> Value {
        json!({"id": id, "is_bot": false, "first_name": "Ann", "last_name": "Lee", "username": "ann"})
    }

    fn group() -> Value {
        json!({"id": -1001, "type": "supergroup", "title": "Team"})
    }

    fn entity(kind: &str, offset: usize, length: usize) -> Value {
        json!({"type": kind, "offset": offset, "length": length})
    }

    /// Length in UTF-16 units, for building entity offsets.
    fn u16len(s: &str) -> usize {
        s.encode_utf16().count()
    }

    fn update(kind: &str, msg: Value) -> Update {
        let mut base = json!({"message_id": 50, "date": 1, "from": user(42)});
        for (k, v) in msg.as_object().unwrap() {
            base[k] = v.clone();
        }
        parse_update(json!({"update_id": 9, kind: base})).unwrap()
    }

    fn msg(m: Value) -> Update {
        update("message", m)
    }

    fn answer(t: Triage) -> Incoming {
        match t {
            Triage::Answer(i) => i,
            other => panic!("expected Answer, got {other:?}"),
        }
    }

    fn ignored(t: Triage) -> &'static str {
        match t {
            Triage::Ignore { reason } => reason,
            other => panic!("expected Ignore, got {other:?}"),
        }
    }

    #[test]
    fn private_text_is_answered() {
        let i = answer(triage(&msg(json!({"chat": {"id": 42, "type": "private"}, "text": "  hello there \n"})), &bot()));
        assert_eq!(
            i,
            Incoming {
                update_id: 9,
                kind: "message",
                chat_id: 42,
                chat_type: ChatType::Private,
                thread_id: None,
                message_id: 50,
                user_id: 42,
                user_name: "Ann Lee".into(),
                text: "hello there".into(),
            }
        );
    }

    #[test]
    fn private_without_text_is_ignored() {
        let u = msg(json!({"chat": {"id": 42, "type": "private"}, "photo": [{"file_id": "x"}]}));
        assert_eq!(ignored(triage(&u, &bot())), "no_text");
        let u = msg(json!({"chat": {"id": 42, "type": "private"}, "text": "   "}));
        assert_eq!(ignored(triage(&u, &bot())), "no_text");
    }

    #[test]
    fn group_without_mention_is_ignored() {
        let u = msg(json!({"chat": group(), "text": "hello @other_bot", "entities": [entity("mention", 6, 10)]}));
        assert_eq!(ignored(triage(&u, &bot())), "not_addressed");
    }

    #[test]
    fn group_mention_is_stripped_case_insensitively() {
        let text = "@switch_BOT, what is 2+2?";
        let u = msg(json!({"chat": group(), "text": text, "entities": [entity("mention", 0, 11)]}));
        let i = answer(triage(&u, &bot()));
        assert_eq!(i.text, "what is 2+2?");
        assert_eq!(i.chat_type, ChatType::Supergroup);
        assert_eq!(i.chat_id, -1001);
    }

    #[test]
    fn emoji_before_mention_uses_utf16_offsets() {
        let prefix = "😀👍🏽 héllo ";
        let text = format!("{prefix}@Switch_Bot tell me 😀");
        let u = msg(json!({"chat": group(), "text": text, "entities": [entity("mention", u16len(prefix), 11)]}));
        assert_eq!(answer(triage(&u, &bot())).text, "😀👍🏽 héllo  tell me 😀");
    }

    #[test]
    fn command_with_bot_suffix_keeps_command() {
        let u = msg(json!({"chat": group(), "text": "/ask@Switch_Bot why?", "entities": [entity("bot_command", 0, 15)]}));
        assert_eq!(answer(triage(&u, &bot())).text, "/ask why?");
        // The same in private chats.
        let u =
            msg(json!({"chat": {"id": 42, "type": "private"}, "text": "/start@switch_bot", "entities": [entity("bot_command", 0, 17)]}));
        assert_eq!(answer(triage(&u, &bot())).text, "/start");
    }

    #[test]
    fn command_for_another_bot_or_bare_is_ignored_in_groups_by_default() {
        let u = msg(json!({"chat": group(), "text": "/ask@other_bot x", "entities": [entity("bot_command", 0, 14)]}));
        assert_eq!(ignored(triage(&u, &bot())), "not_addressed");
        let bare = msg(json!({"chat": group(), "text": "/help me", "entities": [entity("bot_command", 0, 5)]}));
        assert_eq!(ignored(triage(&bare, &bot())), "not_addressed");
        let opts = TriageOptions { bare_commands_in_groups: true };
        assert_eq!(answer(triage_with(&bare, &bot(), &opts)).text, "/help me");
        // A bare command in a private chat is always for us.
        let u = msg(json!({"chat": {"id": 42, "type": "private"}, "text": "/help", "entities": [entity("bot_command", 0, 5)]}));
        assert_eq!(answer(triage(&u, &bot())).text, "/help");
    }

    #[test]
    fn text_mention_by_id_is_addressed_and_stripped() {
        let u = msg(json!({"chat": group(), "text": "Switchboard summarise this", "entities": [
            {"type": "text_mention", "offset": 0, "length": 11, "user": {"id": BOT_ID, "is_bot": true, "first_name": "Switchboard"}}
        ]}));
        assert_eq!(answer(triage(&u, &bot())).text, "summarise this");
        let other = msg(json!({"chat": group(), "text": "Bob hi", "entities": [
            {"type": "text_mention", "offset": 0, "length": 3, "user": {"id": 5, "is_bot": false, "first_name": "Bob"}}
        ]}));
        assert_eq!(ignored(triage(&other, &bot())), "not_addressed");
    }

    #[test]
    fn reply_to_the_bot_is_addressed() {
        let reply = |from: Value| {
            msg(json!({"chat": group(), "text": "and then?", "reply_to_message": {
                "message_id": 40, "chat": group(), "from": from, "text": "earlier"}}))
        };
        let by_id = reply(json!({"id": BOT_ID, "is_bot": true, "first_name": "S"}));
        assert_eq!(answer(triage(&by_id, &bot())).text, "and then?");
        let by_name = reply(json!({"id": 1, "is_bot": true, "first_name": "S", "username": "SWITCH_bot"}));
        assert!(matches!(triage(&by_name, &BotIdentity::new(None, "switch_bot")), Triage::Answer(_)));
        let to_human = reply(user(43));
        assert_eq!(ignored(triage(&to_human, &bot())), "not_addressed");
    }

    #[test]
    fn caption_mentions_count() {
        let u = msg(json!({"chat": group(), "photo": [], "caption": "look @switch_bot", "caption_entities": [entity("mention", 5, 11)]}));
        assert_eq!(answer(triage(&u, &bot())).text, "look");
        // Entities of the text are not applied to the caption.
        let u = msg(json!({"chat": group(), "caption": "look @switch_bot", "entities": [entity("mention", 5, 11)]}));
        assert_eq!(ignored(triage(&u, &bot())), "not_addressed");
    }

    #[test]
    fn messages_from_bots_are_ignored() {
        let u = msg(json!({"chat": {"id": 42, "type": "private"}, "text": "hi",
            "from": {"id": 99, "is_bot": true, "first_name": "Other"}}));
        assert_eq!(ignored(triage(&u, &bot())), "from_bot");
        let u = msg(json!({"chat": {"id": 42, "type": "private"}, "text": "hi", "from": null}));
        assert_eq!(ignored(triage(&u, &bot())), "no_sender");
    }

    #[test]
    fn anonymous_group_admin_is_answered_as_the_group() {
        let u = msg(json!({"chat": group(), "sender_chat": group(), "text": "@switch_bot hi",
            "entities": [entity("mention", 0, 11)],
            "from": {"id": 1087968824, "is_bot": true, "first_name": "Group", "username": "GroupAnonymousBot"}}));
        let i = answer(triage(&u, &bot()));
        assert_eq!((i.user_id, i.user_name.as_str(), i.text.as_str()), (-1001, "Team", "hi"));
    }

    #[test]
    fn edited_message_is_answered_with_its_kind() {
        let u = update("edited_message", json!({"chat": {"id": 42, "type": "private"}, "text": "fixed", "edit_date": 2}));
        let i = answer(triage(&u, &bot()));
        assert_eq!((i.kind, i.text.as_str()), ("edited_message", "fixed"));
    }

    #[test]
    fn unknown_kinds_and_channels_are_ignored() {
        let u = parse_update(json!({"update_id": 1, "my_chat_member": {"x": 1}})).unwrap();
        assert_eq!(ignored(triage(&u, &bot())), "unsupported_kind");
        let u = parse_update(json!({"update_id": 1, "callback_query": {"id": "1"}})).unwrap();
        assert_eq!(ignored(triage(&u, &bot())), "unsupported_kind");
        let u = update("channel_post", json!({"chat": {"id": -100, "type": "channel"}, "text": "news", "from": null}));
        assert_eq!(ignored(triage(&u, &bot())), "channel");
        let u = msg(json!({"chat": {"id": -100, "type": "channel"}, "text": "x"}));
        assert_eq!(ignored(triage(&u, &bot())), "channel");
        let u = msg(json!({"chat": {"id": 5, "type": "martian"}, "text": "x"}));
        assert_eq!(ignored(triage(&u, &bot())), "unsupported_chat");
    }

    #[test]
    fn forum_topic_thread_and_implicit_reply() {
        // A message in a bot-created topic: the implicit reply to the creation message is not
        // a reply to the bot.
        let created = json!({"message_id": 30, "chat": group(), "from": {"id": BOT_ID, "is_bot": true, "first_name": "S"},
            "forum_topic_created": {"name": "t", "icon_color": 1}});
        let u = msg(json!({"chat": group(), "text": "hello", "message_thread_id": 30, "is_topic_message": true,
            "reply_to_message": created}));
        assert_eq!(ignored(triage(&u, &bot())), "not_addressed");
        // Same topic, addressed: thread id is the topic.
        let u = msg(json!({"chat": group(), "text": "@switch_bot hi", "message_thread_id": 30, "is_topic_message": true,
            "entities": [entity("mention", 0, 11)]}));
        assert_eq!(answer(triage(&u, &bot())).thread_id, Some(30));
        // A reply chain's thread id outside a topic is not used.
        let u = msg(json!({"chat": group(), "text": "@switch_bot hi", "message_thread_id": 12,
            "entities": [entity("mention", 0, 11)]}));
        assert_eq!(answer(triage(&u, &bot())).thread_id, None);
    }

    #[test]
    fn migration_service_messages() {
        let u = msg(json!({"chat": {"id": -55, "type": "group"}, "migrate_to_chat_id": -1005555i64}));
        assert_eq!(triage(&u, &bot()), Triage::Migrated { from: -55, to: -1005555 });
        let u = msg(json!({"chat": {"id": -1005555i64, "type": "supergroup"}, "migrate_from_chat_id": -55,
            "from": {"id": 1087968824, "is_bot": true, "first_name": "Group"}}));
        assert_eq!(triage(&u, &bot()), Triage::Migrated { from: -55, to: -1005555 });
    }

    #[test]
    fn malformed_entities_never_panic() {
        let text = "😀 @switch_bot";
        let bad = [
            entity("mention", 1, 3),   // splits the surrogate pair
            entity("mention", 100, 5), // past the end
            json!({"type": "mention", "offset": -3, "length": 4}),
            json!({"type": "bot_command", "offset": 0, "length": i64::MAX}),
            json!({"type": "text_mention", "offset": 0, "length": 2}), // no user
            entity("mention", 3, 11),                                  // the real one
            entity("mention", 3, 11),                                  // duplicate
            entity("mention", 2, 5),                                   // overlapping
        ];
        let u = msg(json!({"chat": group(), "text": text, "entities": bad}));
        assert_eq!(answer(triage(&u, &bot())).text, "😀");
        // Only a mention: nothing left to answer.
        let u = msg(json!({"chat": group(), "text": "@switch_bot", "entities": [entity("mention", 0, 11)]}));
        assert_eq!(ignored(triage(&u, &bot())), "no_text");
    }

    #[test]
    fn empty_bot_username_never_matches() {
        let nameless = BotIdentity::new(Some(BOT_ID), "");
        let u = msg(json!({"chat": group(), "text": "@ hi", "entities": [entity("mention", 0, 1)]}));
        assert_eq!(ignored(triage(&u, &nameless)), "not_addressed");
        let me = User {
            id: 3,
            is_bot: true,
            first_name: "S".into(),
            last_name: None,
            username: Some("sb".into()),
            can_read_all_group_messages: None,
        };
        assert_eq!(BotIdentity::from_user(&me), BotIdentity::new(Some(3), "sb"));
    }
}
