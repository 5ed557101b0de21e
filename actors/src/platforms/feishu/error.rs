//! Open API errors and response classification (PROTOCOLS §2.1, §2.6).

use std::time::Duration;

use serde_json::Value;

/// Body code: gateway / app-wide frequency limit (with HTTP 429).
pub const CODE_RATE_LIMIT: i64 = 99_991_400;
/// Body code: per-chat or per-message frequency limit (with HTTP 400).
pub const CODE_FREQUENCY_LIMIT: i64 = 230_020;
/// Body code: tenant-level message creation limit (community-reported).
pub const CODE_TENANT_SEND_LIMIT: i64 = 11_232;
/// Body codes meaning "drop the cached token, refresh and retry once".
pub const TOKEN_INVALID_CODES: [i64; 3] = [99_991_663, 99_991_664, 99_991_671];

/// A failed Open API call, classified by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// HTTP 429, or codes 99991400 / 230020 / 11232: back off, then retry.
    #[error("Feishu rate limit hit (retry after {retry_after:?})")]
    RateLimited {
        /// From `x-ogw-ratelimit-reset` or `Retry-After`, when present.
        retry_after: Option<Duration>,
    },
    /// Codes 99991663 / 99991664 / 99991671: the access token is not (or no longer) valid.
    #[error("the Feishu access token is invalid")]
    TokenInvalid,
    /// Network failure, timeout, HTTP 5xx or an unreadable answer: retry later.
    #[error("transient Feishu failure: {0}")]
    Transient(String),
    /// Any other failure; retrying will not help. `code` is -1 when the body has none.
    #[error("Feishu refused the request: code {code}: {msg}")]
    Permanent {
        /// The body `code`.
        code: i64,
        /// The body `msg`.
        msg: String,
    },
}

impl FsError {
    /// A bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            FsError::RateLimited { .. } => "rate_limited",
            FsError::TokenInvalid => "token_invalid",
            FsError::Transient(_) => "transient",
            FsError::Permanent { .. } => "permanent",
        }
    }

    /// Whether trying again later may succeed (everything but `Permanent`).
    pub fn retryable(&self) -> bool {
        !matches!(self, FsError::Permanent { .. })
    }
}

/// Classifies an Open API answer and returns its `data` (`Null` when absent).
///
/// Pure: needs only the HTTP status and the body text. `RateLimited.retry_after` is left `None`;
/// callers holding the headers fill it in.
pub fn classify(status: u16, body: &str) -> Result<Value, FsError> {
    classify_body(status, body).map(|mut v| v.get_mut("data").map(Value::take).unwrap_or(Value::Null))
}

/// Like [`classify`], but returns the whole body object (for the token and bot-info
/// endpoints, whose payload sits at the top level).
pub fn classify_body(status: u16, body: &str) -> Result<Value, FsError> {
    let parsed: Option<Value> = serde_json::from_str(body).ok().filter(Value::is_object);
    let code = parsed.as_ref().and_then(|v| v.get("code")).and_then(Value::as_i64);
    let msg = parsed.as_ref().and_then(|v| v.get("msg")).and_then(Value::as_str).unwrap_or("").to_string();
    let ok_status = (200..300).contains(&status);
    match code {
        Some(0) if ok_status => Ok(parsed.unwrap_or(Value::Null)),
        Some(c) if c == CODE_RATE_LIMIT || c == CODE_FREQUENCY_LIMIT || c == CODE_TENANT_SEND_LIMIT => {
            Err(FsError::RateLimited { retry_after: None })
        }
        Some(c) if TOKEN_INVALID_CODES.contains(&c) => Err(FsError::TokenInvalid),
        _ if status == 429 => Err(FsError::RateLimited { retry_after: None }),
        _ if status >= 500 => Err(FsError::Transient(match code {
            Some(c) => format!("HTTP {status}, code {c}: {msg}"),
            None => format!("HTTP {status}"),
        })),
        Some(c) => Err(FsError::Permanent { code: c, msg }),
        None if ok_status => Err(FsError::Transient(format!("HTTP {status} with a body that is not a Feishu response"))),
        None => Err(FsError::Permanent { code: -1, msg: format!("HTTP {status}") }),
    }
}

/// Reads a rate-limit reset hint (seconds) from `x-ogw-ratelimit-reset` or `Retry-After`.
pub fn retry_after_hint(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    ["x-ogw-ratelimit-reset", "retry-after"].iter().find_map(|name| {
        let secs: f64 = headers.get(*name)?.to_str().ok()?.trim().parse().ok()?;
        (0.0..86_400.0).contains(&secs).then(|| Duration::from_secs_f64(secs))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_returns_data() {
        let data = classify(200, r#"{"code":0,"msg":"success","data":{"message_id":"om_1"}}"#).unwrap();
        assert_eq!(data["message_id"], "om_1");
        assert_eq!(classify(200, r#"{"code":0,"msg":"ok"}"#).unwrap(), Value::Null);
        let whole = classify_body(200, r#"{"code":0,"tenant_access_token":"t-1","expire":7200}"#).unwrap();
        assert_eq!(whole["expire"], 7200);
    }

    #[test]
    fn rate_limits() {
        let rl = Err(FsError::RateLimited { retry_after: None });
        assert_eq!(classify(429, r#"{"code":99991400,"msg":"request trigger frequency limit"}"#), rl);
        assert_eq!(classify(429, "Too Many Requests"), rl);
        assert_eq!(classify(200, r#"{"code":99991400,"msg":"limit"}"#), rl);
        assert_eq!(classify(400, r#"{"code":230020,"msg":"frequency limit"}"#), rl);
        assert!(FsError::RateLimited { retry_after: None }.retryable());
    }

    #[test]
    fn token_invalid_codes() {
        for code in TOKEN_INVALID_CODES {
            let body = format!(r#"{{"code":{code},"msg":"invalid access token"}}"#);
            assert_eq!(classify(400, &body), Err(FsError::TokenInvalid));
            assert_eq!(classify(200, &body), Err(FsError::TokenInvalid));
        }
    }

    #[test]
    fn server_errors_are_transient() {
        assert!(matches!(classify(502, "<html>bad gateway</html>"), Err(FsError::Transient(_))));
        assert!(matches!(classify(500, r#"{"code":1,"msg":"busy"}"#), Err(FsError::Transient(_))));
        assert!(matches!(classify(200, "garbage"), Err(FsError::Transient(_))));
        assert!(FsError::Transient("x".into()).retryable());
        assert_eq!(FsError::Transient("x".into()).label(), "transient");
    }

    #[test]
    fn other_codes_are_permanent() {
        assert_eq!(
            classify(400, r#"{"code":230002,"msg":"Bot/User can NOT be out of the chat."}"#),
            Err(FsError::Permanent { code: 230002, msg: "Bot/User can NOT be out of the chat.".into() })
        );
        assert_eq!(classify(404, ""), Err(FsError::Permanent { code: -1, msg: "HTTP 404".into() }));
        let e = classify(400, r#"{"code":10003,"msg":"invalid param"}"#).unwrap_err();
        assert!(!e.retryable());
        assert_eq!(e.label(), "permanent");
    }

    #[test]
    fn retry_hint_headers() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after_hint(&h), None);
        h.insert("x-ogw-ratelimit-reset", "3".parse().unwrap());
        assert_eq!(retry_after_hint(&h), Some(Duration::from_secs(3)));
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "-5".parse().unwrap());
        assert_eq!(retry_after_hint(&h), None);
    }
}
