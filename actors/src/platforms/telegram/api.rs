//! A small Bot API client: POST with JSON bodies to `<base>/bot<token>/<method>`, responses
//! decoded from the `{ok, result, ...}` envelope, failures classified by
//! [`classify`](super::error::classify). The token never appears in an error or in `Debug`
//! output.

use std::time::Duration;

use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};

use super::error::{TgError, classify};
use super::types::{ApiResponse, Message, User};

/// The public Bot API server.
pub const DEFAULT_BASE: &str = "https://api.telegram.org";

/// `parse_mode` for HTML-formatted text (escape plain text with
/// [`escape_html`](super::format::escape_html)).
pub const PARSE_MODE_HTML: &str = "HTML";

/// Per-request timeout for every call except getUpdates.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How much longer than the long-poll timeout a getUpdates request may take before it is
/// abandoned as a network failure.
pub const LONG_POLL_GRACE: Duration = Duration::from_secs(15);

/// A message to send with `sendMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendMessage {
    /// Target chat.
    pub chat_id: i64,
    /// 1–[`MAX_MESSAGE_LEN`](super::format::MAX_MESSAGE_LEN) characters after entity parsing.
    pub text: String,
    /// `Some(PARSE_MODE_HTML)` for HTML, `None` for plain text.
    pub parse_mode: Option<&'static str>,
    /// Forum topic to post in (only a real topic id; see `Incoming::thread_id`).
    pub message_thread_id: Option<i64>,
    /// Message to reply to; sent as `reply_parameters` with `allow_sending_without_reply`, so a
    /// deleted original does not make the send fail.
    pub reply_to_message_id: Option<i64>,
}

/// The JSON body of `sendMessage`.
#[derive(Serialize)]
struct SendMessageBody<'a> {
    chat_id: i64,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parse_mode: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_thread_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_parameters: Option<ReplyParameters>,
}

/// `ReplyParameters`, the current way to reply.
#[derive(Serialize)]
struct ReplyParameters {
    message_id: i64,
    allow_sending_without_reply: bool,
}

/// True when `token` is a valid webhook secret: 1–256 characters of `A-Z a-z 0-9 _ -`.
pub fn is_valid_secret_token(token: &str) -> bool {
    (1..=256).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A Bot API client for one bot token. Cheap to clone.
#[derive(Clone)]
pub struct BotApi {
    /// Shared HTTP client (connection pool). Its own timeouts are overridden per request.
    client: reqwest::Client,
    /// API server, without a trailing slash.
    base: String,
    /// The bot token; secret, only ever placed in request URLs.
    token: String,
}

impl std::fmt::Debug for BotApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotApi").field("base", &self.base).field("token", &"<redacted>").finish()
    }
}

impl BotApi {
    /// A client for `token` against `base` (use [`DEFAULT_BASE`] in production, a local fake
    /// server in tests).
    pub fn new(client: reqwest::Client, base: &str, token: &str) -> Self {
        Self { client, base: base.trim_end_matches('/').to_string(), token: token.to_string() }
    }

    /// `getMe`: the bot's own user (id and username, for [`BotIdentity`](super::inbound::BotIdentity)).
    pub async fn get_me(&self) -> Result<User, TgError> {
        self.call("getMe", &serde_json::json!({}), CALL_TIMEOUT).await
    }

    /// `getUpdates` long poll. Returns raw updates so one malformed update can be skipped
    /// (parse each with [`parse_update`](super::types::parse_update); get its id with
    /// [`update_id_of`](super::types::update_id_of) to advance the offset regardless). An
    /// empty `allowed_updates` is sent as `[]`, which Telegram reads as "all kinds except
    /// chat_member and reactions". The request may take up to `timeout_secs` plus
    /// [`LONG_POLL_GRACE`].
    pub async fn get_updates(&self, offset: i64, timeout_secs: u64, allowed_updates: &[&str]) -> Result<Vec<serde_json::Value>, TgError> {
        let body = serde_json::json!({
            "offset": offset,
            "timeout": timeout_secs,
            "allowed_updates": allowed_updates,
        });
        let timeout = Duration::from_secs(timeout_secs).saturating_add(LONG_POLL_GRACE);
        self.call("getUpdates", &body, timeout).await
    }

    /// `setWebhook` with a secret token Telegram will echo in `X-Telegram-Bot-Api-Secret-Token`.
    /// An invalid secret is rejected locally with [`TgError::InvalidRequest`].
    pub async fn set_webhook(&self, url: &str, secret_token: &str, allowed_updates: &[&str]) -> Result<(), TgError> {
        if !is_valid_secret_token(secret_token) {
            return Err(TgError::InvalidRequest("webhook secret token must be 1-256 characters of A-Z, a-z, 0-9, _ and -".into()));
        }
        let body = serde_json::json!({
            "url": url,
            "secret_token": secret_token,
            "allowed_updates": allowed_updates,
        });
        self.call::<_, IgnoredAny>("setWebhook", &body, CALL_TIMEOUT).await.map(drop)
    }

    /// `deleteWebhook`, needed before polling when a webhook was set (else getUpdates gets 409).
    pub async fn delete_webhook(&self, drop_pending: bool) -> Result<(), TgError> {
        let body = serde_json::json!({ "drop_pending_updates": drop_pending });
        self.call::<_, IgnoredAny>("deleteWebhook", &body, CALL_TIMEOUT).await.map(drop)
    }

    /// `sendMessage`; returns the sent message (its `message_id` is needed for edits).
    pub async fn send_message(&self, req: &SendMessage) -> Result<Message, TgError> {
        let body = SendMessageBody {
            chat_id: req.chat_id,
            text: &req.text,
            parse_mode: req.parse_mode,
            message_thread_id: req.message_thread_id,
            reply_parameters: req.reply_to_message_id.map(|message_id| ReplyParameters { message_id, allow_sending_without_reply: true }),
        };
        self.call("sendMessage", &body, CALL_TIMEOUT).await
    }

    /// `editMessageText` of a message the bot sent. "message is not modified" (same content)
    /// counts as success.
    pub async fn edit_message_text(&self, chat_id: i64, message_id: i64, text: &str, parse_mode: Option<&str>) -> Result<(), TgError> {
        let mut body = serde_json::json!({ "chat_id": chat_id, "message_id": message_id, "text": text });
        if let Some(mode) = parse_mode {
            body["parse_mode"] = mode.into();
        }
        match self.call::<_, IgnoredAny>("editMessageText", &body, CALL_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_modified() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `sendChatAction` (e.g. `"typing"`, shown for about 5 seconds).
    pub async fn send_chat_action(&self, chat_id: i64, thread_id: Option<i64>, action: &str) -> Result<(), TgError> {
        let mut body = serde_json::json!({ "chat_id": chat_id, "action": action });
        if let Some(thread) = thread_id {
            body["message_thread_id"] = thread.into();
        }
        self.call::<_, IgnoredAny>("sendChatAction", &body, CALL_TIMEOUT).await.map(drop)
    }

    /// POSTs `body` to `method` and decodes the envelope's `result`.
    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(&self, method: &str, body: &B, timeout: Duration) -> Result<T, TgError> {
        let url = format!("{}/bot{}/{}", self.base, self.token, method);
        let result = async {
            let resp = self.client.post(url).json(body).timeout(timeout).send().await.map_err(network_error)?;
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.map_err(network_error)?;
            decode(status, &bytes)
        }
        .await;
        result.map_err(|e| self.redact(e))
    }

    /// Removes the token from every string in `e` (defence in depth: reqwest errors have their
    /// URL stripped already, and Telegram does not echo tokens).
    fn redact(&self, e: TgError) -> TgError {
        if self.token.is_empty() {
            return e;
        }
        let r = |s: String| s.replace(&self.token, "<token>");
        match e {
            TgError::Conflict(s) => TgError::Conflict(r(s)),
            TgError::Transient(s) => TgError::Transient(r(s)),
            TgError::Permanent { code, description } => TgError::Permanent { code, description: r(description) },
            TgError::CantParseEntities(s) => TgError::CantParseEntities(r(s)),
            TgError::BadResponse(s) => TgError::BadResponse(r(s)),
            TgError::InvalidRequest(s) => TgError::InvalidRequest(r(s)),
            e @ (TgError::RetryAfter(_) | TgError::Migrated(_)) => e,
        }
    }
}

/// A reqwest failure (connect, timeout, body read) as [`TgError::Transient`], with the URL
/// (which contains the token) stripped and the source chain flattened into the message.
fn network_error(e: reqwest::Error) -> TgError {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "network"
    };
    let e = e.without_url();
    let mut msg = format!("{kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    TgError::Transient(msg)
}

/// Decodes a response: a 2xx `{ok:true, result}` gives the result, anything else an error.
fn decode<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, TgError> {
    if !(200..300).contains(&status) {
        return Err(classify(status, &String::from_utf8_lossy(body)));
    }
    match serde_json::from_slice::<ApiResponse<T>>(body) {
        Ok(ApiResponse { ok: true, result: Some(result), .. }) => Ok(result),
        Ok(ApiResponse { ok: true, result: None, .. }) => Err(TgError::BadResponse("ok response without a result".into())),
        Ok(_) => Err(classify(status, &String::from_utf8_lossy(body))),
        Err(e) => Err(TgError::BadResponse(format!("cannot decode response: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platforms::telegram::types::{parse_update, update_id_of};
    use serde_json::{Value, json};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    const TOKEN: &str = "123456:SECRET-token_abc";

    /// A minimal fake Bot API server speaking HTTP/1.1: answers each request with the next
    /// canned `(status, body)` and records `(path, json body)`.
    struct FakeTelegram {
        base: String,
        requests: Arc<Mutex<Vec<(String, Value)>>>,
    }

    async fn fake(responses: Vec<(u16, &'static str)>) -> FakeTelegram {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let queue = Arc::new(Mutex::new(responses.into_iter()));
        let recorded = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (queue, recorded) = (queue.clone(), recorded.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut reader = BufReader::new(read);
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_string();
                        let mut len = 0;
                        loop {
                            let mut line = String::new();
                            reader.read_line(&mut line).await.unwrap();
                            if line.trim().is_empty() {
                                break;
                            }
                            if let Some((k, v)) = line.split_once(':')
                                && k.eq_ignore_ascii_case("content-length")
                            {
                                len = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; len];
                        reader.read_exact(&mut body).await.unwrap();
                        recorded.lock().unwrap().push((path, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                        let (status, body) = queue.lock().unwrap().next().unwrap_or((500, "{}"));
                        let resp = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        write.write_all(resp.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        FakeTelegram { base, requests }
    }

    fn api(base: &str) -> BotApi {
        BotApi::new(reqwest::Client::new(), &format!("{base}/"), TOKEN)
    }

    #[tokio::test]
    async fn send_message_posts_json_to_the_token_path() {
        let tg =
            fake(vec![(200, r#"{"ok":true,"result":{"message_id":77,"date":1,"chat":{"id":-1001,"type":"supergroup"},"text":"hi"}}"#)])
                .await;
        let sent = api(&tg.base)
            .send_message(&SendMessage {
                chat_id: -1001,
                text: "<b>hi</b>".into(),
                parse_mode: Some(PARSE_MODE_HTML),
                message_thread_id: Some(30),
                reply_to_message_id: Some(50),
            })
            .await
            .unwrap();
        assert_eq!(sent.message_id, 77);
        let reqs = tg.requests.lock().unwrap().clone();
        assert_eq!(reqs[0].0, format!("/bot{TOKEN}/sendMessage"));
        assert_eq!(
            reqs[0].1,
            json!({"chat_id": -1001, "text": "<b>hi</b>", "parse_mode": "HTML", "message_thread_id": 30,
                   "reply_parameters": {"message_id": 50, "allow_sending_without_reply": true}})
        );
    }

    #[tokio::test]
    async fn get_updates_returns_raw_values_including_malformed_ones() {
        let tg = fake(vec![(
            200,
            r#"{"ok":true,"result":[{"update_id":5,"message":{"message_id":1,"chat":{"id":1,"type":"private"},"text":"a"}},{"update_id":6,"message":{"message_id":"bad"}}]}"#,
        )])
        .await;
        let raw = api(&tg.base).get_updates(5, 30, &["message", "edited_message"]).await.unwrap();
        assert_eq!(raw.len(), 2);
        assert!(parse_update(raw[0].clone()).is_ok());
        assert!(parse_update(raw[1].clone()).is_err());
        assert_eq!(update_id_of(&raw[1]), Some(6));
        let reqs = tg.requests.lock().unwrap().clone();
        assert_eq!(reqs[0].1, json!({"offset": 5, "timeout": 30, "allowed_updates": ["message", "edited_message"]}));
    }

    #[tokio::test]
    async fn errors_are_classified_and_not_modified_is_ok() {
        let tg = fake(vec![
            (429, r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 2","parameters":{"retry_after":2}}"#),
            (400, r#"{"ok":false,"error_code":400,"description":"Bad Request: message is not modified: same"}"#),
            (409, r#"{"ok":false,"error_code":409,"description":"Conflict: can't use getUpdates method while webhook is active"}"#),
            (200, r#"{"ok":true,"result":{"id":9,"is_bot":true,"first_name":"B","username":"sb_bot"}}"#),
            (200, r#"{"ok":true,"result":true}"#),
            (200, r#"{"ok":true,"result":"not a user"}"#),
        ])
        .await;
        let api = api(&tg.base);
        assert_eq!(api.send_chat_action(1, Some(3), "typing").await, Err(TgError::RetryAfter(Duration::from_secs(2))));
        assert_eq!(api.edit_message_text(1, 2, "same", None).await, Ok(()));
        assert!(matches!(api.get_updates(0, 1, &[]).await, Err(TgError::Conflict(_))));
        assert_eq!(api.get_me().await.unwrap().username.as_deref(), Some("sb_bot"));
        assert_eq!(api.delete_webhook(true).await, Ok(()));
        assert!(matches!(api.get_me().await, Err(TgError::BadResponse(_))));
        let reqs = tg.requests.lock().unwrap().clone();
        assert_eq!(reqs[0].1, json!({"chat_id": 1, "action": "typing", "message_thread_id": 3}));
        assert_eq!(reqs[1].1, json!({"chat_id": 1, "message_id": 2, "text": "same"}));
        assert_eq!(reqs[4].1, json!({"drop_pending_updates": true}));
    }

    #[tokio::test]
    async fn network_errors_never_contain_the_token() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let api = api(&base);
        let err = api.get_me().await.unwrap_err();
        assert!(matches!(err, TgError::Transient(_)), "{err:?}");
        assert!(!err.to_string().contains(TOKEN) && !format!("{err:?}").contains("SECRET"), "{err}");
        assert!(!format!("{api:?}").contains("SECRET"));
    }

    #[tokio::test]
    async fn webhook_secret_is_validated_locally() {
        let api = api("http://127.0.0.1:9");
        let err = api.set_webhook("https://x.example/tg", "has space", &[]).await.unwrap_err();
        assert_eq!(err.label(), "invalid_request");
        assert!(is_valid_secret_token("abc_DEF-123"));
        assert!(!is_valid_secret_token(""));
        assert!(!is_valid_secret_token(&"a".repeat(257)));
        assert!(!is_valid_secret_token("ü"));
    }

    #[tokio::test]
    async fn set_webhook_sends_secret_and_kinds() {
        let tg = fake(vec![(200, r#"{"ok":true,"result":true,"description":"Webhook was set"}"#)]).await;
        api(&tg.base).set_webhook("https://x.example/tg", "s3cret", &["message"]).await.unwrap();
        let reqs = tg.requests.lock().unwrap().clone();
        assert_eq!(reqs[0].0, format!("/bot{TOKEN}/setWebhook"));
        assert_eq!(reqs[0].1, json!({"url": "https://x.example/tg", "secret_token": "s3cret", "allowed_updates": ["message"]}));
    }

    #[test]
    fn decode_handles_odd_bodies() {
        assert!(matches!(decode::<User>(200, b"not json"), Err(TgError::BadResponse(_))));
        assert!(matches!(decode::<User>(200, br#"{"ok":true}"#), Err(TgError::BadResponse(_))));
        assert!(matches!(decode::<User>(200, br#"{"ok":false,"error_code":400,"description":"x"}"#), Err(TgError::Permanent { .. })));
        assert!(matches!(decode::<User>(503, b"\xff\xfe"), Err(TgError::Transient(_))));
    }
}
