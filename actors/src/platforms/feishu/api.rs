//! The Open API client: tenant token management, replies and bot info (PROTOCOLS §2.2,
//! §2.4, §2.5). Never logs the app secret or tokens.

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use super::error::retry_after_hint;
pub use super::error::{FsError, classify, classify_body};
use super::token::{FetchedToken, TokenCache};

/// Feishu (China) Open Platform host.
pub const FEISHU_BASE: &str = "https://open.feishu.cn";
/// Lark (international) Open Platform host.
pub const LARK_BASE: &str = "https://open.larksuite.com";

const JSON_UTF8: &str = "application/json; charset=utf-8";

/// The bot's identity, from `GET /open-apis/bot/v3/info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotInfo {
    /// The bot's per-app `ou_…` id; compare with `mentions[].id.open_id`.
    pub open_id: String,
    /// The app's display name.
    pub app_name: String,
}

/// Content JSON for a text message: `{"text": "..."}`, to pass as `content_json`.
pub fn text_content(text: &str) -> String {
    json!({ "text": text }).to_string()
}

/// An Open API client for one self-built app.
pub struct FeishuApi {
    /// Shared HTTP client (timeouts are the caller's choice).
    client: reqwest::Client,
    /// `https://open.feishu.cn`, `https://open.larksuite.com` or a test server; no trailing `/`.
    base: String,
    /// `cli_…`.
    app_id: String,
    /// Secret; only ever sent to the token endpoint.
    app_secret: String,
    /// The tenant access token, refreshed single-flight.
    tokens: TokenCache,
}

impl std::fmt::Debug for FeishuApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeishuApi").field("base", &self.base).field("app_id", &self.app_id).field("app_secret", &"<redacted>").finish()
    }
}

impl FeishuApi {
    /// A client for `base` (e.g. [`FEISHU_BASE`]); a trailing `/` is ignored.
    pub fn new(client: reqwest::Client, base: &str, app_id: &str, app_secret: &str) -> Self {
        Self {
            client,
            base: base.trim_end_matches('/').to_string(),
            app_id: app_id.to_string(),
            app_secret: app_secret.to_string(),
            tokens: TokenCache::new(),
        }
    }

    /// The tenant access token: cached until `expire - 3 min`; concurrent callers that find
    /// it stale share one refresh.
    pub async fn tenant_token(&self) -> Result<String, FsError> {
        self.tokens.get_or_refresh(|| self.fetch_token()).await
    }

    /// How many token fetches have succeeded.
    pub fn token_refreshes(&self) -> u64 {
        self.tokens.refreshes()
    }

    /// Replies to `message_id` (`POST /open-apis/im/v1/messages/{message_id}/reply`) and
    /// returns the new message id. `content_json` is serialized content (see
    /// [`text_content`]); `uuid` (at most 50 characters, empty for none) makes the send
    /// idempotent for an hour.
    pub async fn reply(&self, message_id: &str, msg_type: &str, content_json: &str, uuid: &str) -> Result<String, FsError> {
        check_id(message_id)?;
        let mut body = json!({ "msg_type": msg_type, "content": content_json });
        if !uuid.is_empty() {
            body["uuid"] = json!(uuid);
        }
        let path = format!("/open-apis/im/v1/messages/{message_id}/reply");
        let data = self.call(Method::POST, &path, Some(&body)).await?;
        message_id_of(&data)
    }

    /// Sends a new message (`POST /open-apis/im/v1/messages?receive_id_type=…`) and returns
    /// its id. `receive_id_type` is `open_id`, `user_id`, `union_id`, `email` or `chat_id`.
    pub async fn send(
        &self,
        receive_id_type: &str,
        receive_id: &str,
        msg_type: &str,
        content_json: &str,
        uuid: &str,
    ) -> Result<String, FsError> {
        check_id(receive_id_type)?;
        let mut body = json!({ "receive_id": receive_id, "msg_type": msg_type, "content": content_json });
        if !uuid.is_empty() {
            body["uuid"] = json!(uuid);
        }
        let path = format!("/open-apis/im/v1/messages?receive_id_type={receive_id_type}");
        let data = self.call(Method::POST, &path, Some(&body)).await?;
        message_id_of(&data)
    }

    /// The bot's identity (`GET /open-apis/bot/v3/info`).
    pub async fn bot_info(&self) -> Result<BotInfo, FsError> {
        let body = self.call_raw(Method::GET, "/open-apis/bot/v3/info", None).await?;
        let bot = body.get("bot").unwrap_or(&Value::Null);
        let open_id = bot
            .get("open_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| FsError::Transient("bot info without an open_id".to_string()))?;
        Ok(BotInfo { open_id: open_id.to_string(), app_name: bot.get("app_name").and_then(Value::as_str).unwrap_or("").to_string() })
    }

    /// Calls an authenticated Open API endpoint (`path` starts with `/open-apis/`) and returns
    /// its `data`. On a token-invalid code the token is dropped, refreshed and the call
    /// retried once.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, FsError> {
        let mut whole = self.call_raw(method, path, body).await?;
        Ok(whole.get_mut("data").map(Value::take).unwrap_or(Value::Null))
    }

    /// Like [`FeishuApi::call`] but returns the whole response body.
    async fn call_raw(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, FsError> {
        let token = self.tenant_token().await?;
        match self.request(method.clone(), path, body, &token).await {
            Err(FsError::TokenInvalid) => {
                tracing::info!(path, "Feishu rejected the tenant token; refreshing it and retrying once.");
                self.tokens.invalidate_if(&token);
                let token = self.tenant_token().await?;
                self.request(method, path, body, &token).await
            }
            other => other,
        }
    }

    /// One HTTP round trip with the given token.
    async fn request(&self, method: Method, path: &str, body: Option<&Value>, token: &str) -> Result<Value, FsError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.client.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            req = req.header(CONTENT_TYPE, JSON_UTF8).body(body.to_string());
        }
        send_and_classify(req).await
    }

    /// `POST /open-apis/auth/v3/tenant_access_token/internal`.
    async fn fetch_token(&self) -> Result<FetchedToken, FsError> {
        let url = format!("{}/open-apis/auth/v3/tenant_access_token/internal", self.base);
        let body = json!({ "app_id": self.app_id, "app_secret": self.app_secret });
        let req = self.client.post(url).header(CONTENT_TYPE, JSON_UTF8).body(body.to_string());
        let whole = send_and_classify(req).await.map_err(|e| match e {
            // The token endpoint has no token to be invalid; treat such codes as permanent.
            FsError::TokenInvalid => FsError::Permanent { code: -1, msg: "the token endpoint reported an invalid token".to_string() },
            other => other,
        })?;
        let token = whole
            .get("tenant_access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| FsError::Transient("token response without a token".to_string()))?;
        let expire_secs = whole.get("expire").and_then(Value::as_u64).unwrap_or(0);
        tracing::debug!(expire_secs, "Fetched a new Feishu tenant access token.");
        Ok(FetchedToken { token: token.to_string(), expire_secs })
    }
}

/// Sends a request and classifies the answer, returning the whole body on success.
pub(super) async fn send_and_classify(req: reqwest::RequestBuilder) -> Result<Value, FsError> {
    let resp = req.send().await.map_err(|e| FsError::Transient(format!("request failed: {}", e.without_url())))?;
    let status = resp.status().as_u16();
    let hint = retry_after_hint(resp.headers());
    let text = resp.text().await.map_err(|e| FsError::Transient(format!("reading the response failed: {}", e.without_url())))?;
    classify_body(status, &text).map_err(|e| match e {
        FsError::RateLimited { retry_after: None } => FsError::RateLimited { retry_after: hint },
        other => other,
    })
}

/// Rejects ids that would break the URL path (real ids are `[A-Za-z0-9_-]`).
fn check_id(id: &str) -> Result<(), FsError> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        Ok(())
    } else {
        Err(FsError::Permanent { code: -1, msg: "invalid id in request path".to_string() })
    }
}

fn message_id_of(data: &Value) -> Result<String, FsError> {
    data.get("message_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| FsError::Transient("send response without a message_id".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_content_is_escaped_json() {
        assert_eq!(text_content("a \"b\"\nc"), r#"{"text":"a \"b\"\nc"}"#);
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("om_dc13264520392913993dd051dba21dcf").is_ok());
        assert!(check_id("chat_id").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("om_1/../x").is_err());
        assert!(check_id("a?b").is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let api = FeishuApi::new(reqwest::Client::new(), "https://x/", "cli_1", "s3cret");
        let s = format!("{api:?}");
        assert!(!s.contains("s3cret"));
        assert!(s.contains("\"https://x\""));
    }

    #[tokio::test]
    async fn unreachable_server_is_transient() {
        let api = FeishuApi::new(reqwest::Client::new(), "http://127.0.0.1:9", "cli_1", "s");
        let err = api.tenant_token().await.unwrap_err();
        assert!(matches!(err, FsError::Transient(_)), "{err:?}");
        assert_eq!(api.token_refreshes(), 0);
    }
}
