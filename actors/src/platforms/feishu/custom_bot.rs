//! Custom (group webhook) bot: send-only text alerts to one group (PROTOCOLS §2.7).

use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use super::api::send_and_classify;
use super::crypto::custom_bot_sign;
use super::error::FsError;

/// A custom bot webhook, optionally with signature verification enabled.
#[derive(Clone)]
pub struct CustomBot {
    /// `https://open.feishu.cn/open-apis/bot/v2/hook/<token>`; the URL itself is a secret.
    pub webhook_url: String,
    /// The "signature verification" secret, when the bot has one.
    pub secret: Option<String>,
}

impl std::fmt::Debug for CustomBot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomBot")
            .field("webhook_url", &"<redacted>")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl CustomBot {
    /// A bot for `webhook_url`; an empty `secret` counts as none.
    pub fn new(webhook_url: &str, secret: Option<&str>) -> Self {
        Self { webhook_url: webhook_url.to_string(), secret: secret.filter(|s| !s.is_empty()).map(str::to_string) }
    }

    /// The request body for `text` at `now_unix_secs`: `content` is a JSON object here (not a
    /// string as in the IM API); `timestamp` and `sign` are added when a secret is set.
    pub fn text_body(&self, text: &str, now_unix_secs: i64) -> Value {
        let mut body = json!({ "msg_type": "text", "content": { "text": text } });
        if let Some(secret) = &self.secret {
            body["timestamp"] = json!(now_unix_secs.to_string());
            body["sign"] = json!(custom_bot_sign(now_unix_secs, secret));
        }
        body
    }

    /// Posts a text message to the group, signed with the current time when a secret is set.
    pub async fn send_text(&self, client: &reqwest::Client, text: &str) -> Result<(), FsError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let body = self.text_body(text, now);
        let req = client.post(&self.webhook_url).header(CONTENT_TYPE, "application/json; charset=utf-8").body(body.to_string());
        send_and_classify(req).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_body() {
        let bot = CustomBot::new("https://open.feishu.cn/open-apis/bot/v2/hook/x", Some(""));
        assert_eq!(bot.text_body("hi", 1599360473).to_string(), r#"{"msg_type":"text","content":{"text":"hi"}}"#);
    }

    #[test]
    fn signed_body_matches_vector() {
        let bot = CustomBot::new("https://open.feishu.cn/open-apis/bot/v2/hook/x", Some("demo_secret"));
        let body = bot.text_body("hi", 1599360473);
        assert_eq!(body["timestamp"], "1599360473");
        assert_eq!(body["sign"], "sdR0eS36UO/d4NpAyDr6RpCJWLJtcheypjGCjiZTm0o=");
        assert_eq!(body["content"]["text"], "hi");
    }

    #[test]
    fn debug_hides_url_and_secret() {
        let bot = CustomBot::new("https://open.feishu.cn/open-apis/bot/v2/hook/tok123", Some("sec"));
        let s = format!("{bot:?}");
        assert!(!s.contains("tok123") && !s.contains("sec\""));
    }

    #[tokio::test]
    async fn unreachable_webhook_is_transient() {
        let bot = CustomBot::new("http://127.0.0.1:9/open-apis/bot/v2/hook/x", None);
        let err = bot.send_text(&reqwest::Client::new(), "hi").await.unwrap_err();
        assert!(matches!(err, FsError::Transient(_)));
    }
}
