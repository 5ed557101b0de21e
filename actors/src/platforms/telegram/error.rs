//! Bot API errors and their classification from HTTP status plus response envelope.

use std::time::Duration;

use super::types::ApiResponse;

/// Wait used for a 429 that carries no `retry_after` parameter.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(3);

/// Upper bound applied to `retry_after`, so a hostile or buggy value cannot park a sender
/// forever.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A failed Bot API call, classified by what the caller should do about it. No variant ever
/// contains the bot token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TgError {
    /// Flood control (429): wait this long, then repeat the request.
    #[error("telegram flood control: retry after {0:?}")]
    RetryAfter(Duration),
    /// The group became a supergroup with this chat id: resend there and move the conversation.
    #[error("telegram chat migrated to {0}")]
    Migrated(i64),
    /// 409: a webhook is set while polling, or another poller uses the same token.
    #[error("telegram conflict: {0}")]
    Conflict(String),
    /// 5xx, network failure or timeout: retry with backoff.
    #[error("telegram transient error: {0}")]
    Transient(String),
    /// 400/401/403/404 and other client errors: retrying the same request will not help.
    #[error("telegram error {code}: {description}")]
    Permanent {
        /// `error_code` from the envelope, else the HTTP status.
        code: i64,
        /// `description` from the envelope.
        description: String,
    },
    /// 400 "can't parse entities": the markup was bad; resend as plain text.
    #[error("telegram could not parse entities: {0}")]
    CantParseEntities(String),
    /// A response that is not a valid envelope, or a successful one whose result has an
    /// unexpected shape.
    #[error("unexpected telegram response: {0}")]
    BadResponse(String),
    /// The request was rejected locally before sending (for example an invalid secret token).
    #[error("invalid telegram request: {0}")]
    InvalidRequest(String),
}

impl TgError {
    /// A bounded label for metrics (`reason`).
    pub fn label(&self) -> &'static str {
        match self {
            TgError::RetryAfter(_) => "retry_after",
            TgError::Migrated(_) => "migrated",
            TgError::Conflict(_) => "conflict",
            TgError::Transient(_) => "transient",
            TgError::Permanent { .. } => "permanent",
            TgError::CantParseEntities(_) => "cant_parse_entities",
            TgError::BadResponse(_) => "bad_response",
            TgError::InvalidRequest(_) => "invalid_request",
        }
    }

    /// True when repeating the same request later may succeed (after [`TgError::RetryAfter`]'s
    /// delay, or with backoff).
    pub fn is_retryable(&self) -> bool {
        matches!(self, TgError::RetryAfter(_) | TgError::Transient(_))
    }

    /// True for the 400 "message is not modified" answer to an edit with unchanged content,
    /// which callers treat as success.
    pub fn is_not_modified(&self) -> bool {
        matches!(self, TgError::Permanent { code: 400, description } if description.to_ascii_lowercase().contains("message is not modified"))
    }
}

/// Classifies a failed call from its HTTP status and body (the envelope
/// `{ok:false, error_code, description, parameters}`), first match wins:
/// 1. `parameters.retry_after` (capped at [`MAX_RETRY_AFTER`]), or a 429 without it
///    ([`DEFAULT_RETRY_AFTER`]) → [`TgError::RetryAfter`];
/// 2. `parameters.migrate_to_chat_id` → [`TgError::Migrated`];
/// 3. 409 → [`TgError::Conflict`];
/// 4. 400 "can't parse entities" → [`TgError::CantParseEntities`];
/// 5. 5xx → [`TgError::Transient`];
/// 6. anything else → [`TgError::Permanent`].
///
/// A body that is not an error envelope (a proxy's HTML page, an `ok:true` body) gives
/// `RetryAfter` for 429, `Permanent` for other 4xx and `Transient` otherwise. Only call this
/// for failed calls.
pub fn classify(status: u16, body: &str) -> TgError {
    let envelope = serde_json::from_str::<ApiResponse<serde::de::IgnoredAny>>(body).ok();
    let Some(env) = envelope.filter(|e| !e.ok) else {
        return if status == 429 {
            TgError::RetryAfter(DEFAULT_RETRY_AFTER)
        } else if (400..500).contains(&status) {
            TgError::Permanent { code: i64::from(status), description: format!("HTTP {status} without an error envelope") }
        } else {
            TgError::Transient(format!("HTTP {status} without an error envelope"))
        };
    };
    let params = env.parameters.unwrap_or_default();
    let code = env.error_code.unwrap_or(i64::from(status));
    let description = env.description.unwrap_or_else(|| format!("HTTP {status}"));
    if let Some(secs) = params.retry_after {
        return TgError::RetryAfter(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    if code == 429 || status == 429 {
        return TgError::RetryAfter(DEFAULT_RETRY_AFTER);
    }
    if let Some(to) = params.migrate_to_chat_id {
        return TgError::Migrated(to);
    }
    if code == 409 || status == 409 {
        return TgError::Conflict(description);
    }
    if code == 400 && description.to_ascii_lowercase().contains("can't parse entities") {
        return TgError::CantParseEntities(description);
    }
    if (500..600).contains(&status) || (500..600).contains(&code) {
        return TgError::Transient(description);
    }
    TgError::Permanent { code, description }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_control() {
        let e = classify(
            429,
            r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 7","parameters":{"retry_after":7}}"#,
        );
        assert_eq!(e, TgError::RetryAfter(Duration::from_secs(7)));
        assert!(e.is_retryable());
        assert_eq!(e.label(), "retry_after");
        assert_eq!(
            classify(429, r#"{"ok":false,"error_code":429,"description":"Too Many Requests"}"#),
            TgError::RetryAfter(DEFAULT_RETRY_AFTER)
        );
    }

    #[test]
    fn migration() {
        let e = classify(
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001234567890}}"#,
        );
        assert_eq!(e, TgError::Migrated(-1001234567890));
        assert_eq!(e.label(), "migrated");
    }

    #[test]
    fn conflict() {
        let e = classify(
            409,
            r#"{"ok":false,"error_code":409,"description":"Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"}"#,
        );
        assert!(matches!(&e, TgError::Conflict(d) if d.contains("other getUpdates")));
        assert_eq!(e.label(), "conflict");
    }

    #[test]
    fn bad_markup() {
        let e = classify(
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: can't parse entities: Can't find end of the entity starting at byte offset 12"}"#,
        );
        assert!(matches!(&e, TgError::CantParseEntities(d) if d.contains("byte offset 12")));
        assert_eq!(e.label(), "cant_parse_entities");
        assert!(!e.is_retryable());
    }

    #[test]
    fn permanent_client_errors() {
        for (status, desc) in [
            (400, "Bad Request: chat not found"),
            (401, "Unauthorized"),
            (403, "Forbidden: bot was blocked by the user"),
            (404, "Not Found"),
        ] {
            let body = format!(r#"{{"ok":false,"error_code":{status},"description":"{desc}"}}"#);
            assert_eq!(classify(status, &body), TgError::Permanent { code: i64::from(status), description: desc.into() });
        }
        let e = classify(
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: message is not modified: specified new message content and reply markup are exactly the same"}"#,
        );
        assert!(e.is_not_modified());
        assert_eq!(e.label(), "permanent");
        assert!(!classify(403, r#"{"ok":false,"error_code":403,"description":"Forbidden"}"#).is_not_modified());
    }

    #[test]
    fn server_errors_and_garbage_are_transient() {
        assert!(matches!(classify(502, "<html>Bad Gateway</html>"), TgError::Transient(_)));
        assert!(matches!(classify(500, r#"{"ok":false,"error_code":500,"description":"Internal Server Error"}"#), TgError::Transient(_)));
        assert!(matches!(classify(200, r#"{"ok":true,"result":true}"#), TgError::Transient(_)));
        assert!(matches!(classify(0, ""), TgError::Transient(_)));
        assert_eq!(classify(418, "teapot"), TgError::Permanent { code: 418, description: "HTTP 418 without an error envelope".into() });
        // Hostile numbers do not panic.
        assert_eq!(
            classify(429, r#"{"ok":false,"parameters":{"retry_after":18446744073709551615}}"#),
            TgError::RetryAfter(MAX_RETRY_AFTER)
        );
        assert_eq!(classify(429, r#"{"ok":false,"parameters":{"retry_after":-1}}"#), TgError::RetryAfter(DEFAULT_RETRY_AFTER));
        assert!(matches!(classify(400, r#"{"ok":false,"parameters":{"migrate_to_chat_id":1e400}}"#), TgError::Permanent { code: 400, .. }));
    }
}
