//! Opening an incoming event request (HTTP "request URL" mode, PROTOCOLS §2.3): decrypt,
//! authenticate and classify it as a URL challenge or an event.
//!
//! Order of checks:
//! 1. The body must be a JSON object (`BadJson`).
//! 2. A body with `encrypt` needs a configured Encrypt Key (`EncryptedButNoKey`).
//! 3. With an Encrypt Key, the signature headers are checked against the raw body. If they do
//!    not verify, the request can still be a URL challenge (the platform does not sign those,
//!    and the SDK skips the check), so the payload is decrypted and accepted only if it is a
//!    `url_verification` with the right token. Any other failure on that path reports the
//!    signature problem, never `Undecryptable`, so an unauthenticated sender cannot use the
//!    answer as a padding oracle.
//! 4. For events with a verified signature, the timestamp must be within `max_skew` of now.
//! 5. The verification token is always compared, in constant time (`header.token` in schema
//!    2.0, `token` in 1.0 and in the challenge). An empty configured token matches nothing.

use std::time::Duration;

use serde_json::Value;

use super::crypto;

/// What is needed to authenticate incoming event requests.
#[derive(Clone)]
pub struct VerifyConfig {
    /// The app's Verification Token, compared against the token inside every request.
    pub verification_token: String,
    /// The app's Encrypt Key. When set, bodies are encrypted and events are signed.
    pub encrypt_key: Option<String>,
    /// Largest accepted difference between `X-Lark-Request-Timestamp` and now, for signed
    /// events. The platform documents no window; this is hardening.
    pub max_skew: Duration,
}

impl VerifyConfig {
    /// A config with the default skew window ([`default_max_skew`]).
    pub fn new(verification_token: &str, encrypt_key: Option<&str>) -> Self {
        Self {
            verification_token: verification_token.to_string(),
            encrypt_key: encrypt_key.filter(|k| !k.is_empty()).map(str::to_string),
            max_skew: default_max_skew(),
        }
    }
}

impl std::fmt::Debug for VerifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyConfig")
            .field("verification_token", &"<redacted>")
            .field("encrypt_key", &self.encrypt_key.as_ref().map(|_| "<redacted>"))
            .field("max_skew", &self.max_skew)
            .finish()
    }
}

/// Default replay window: 5 minutes either side.
pub fn default_max_skew() -> Duration {
    Duration::from_secs(300)
}

/// The authentication headers of an event request, as received (absent headers are `None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHeaders<'a> {
    /// `X-Lark-Request-Timestamp` (Unix seconds).
    pub timestamp: Option<&'a str>,
    /// `X-Lark-Request-Nonce`.
    pub nonce: Option<&'a str>,
    /// `X-Lark-Signature` (lowercase hex SHA-256).
    pub signature: Option<&'a str>,
}

/// An authenticated incoming request.
#[derive(Debug, Clone, PartialEq)]
pub enum Envelope {
    /// The URL check: answer HTTP 200 with [`challenge_response`] within 1 second.
    UrlVerification {
        /// The value to echo back.
        challenge: String,
    },
    /// An event to acknowledge and process.
    Event(EventEnvelope),
}

/// An event, normalised across schema 2.0 and 1.0.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope {
    /// Dedupe key: `header.event_id` (2.0) or `uuid` (1.0).
    pub event_id: String,
    /// `header.event_type` (2.0) or `event.type` (1.0), e.g. `im.message.receive_v1`.
    pub event_type: String,
    /// `header.create_time` (2.0, ms) or `ts` (1.0, seconds, converted to ms), if parseable.
    pub create_time_ms: Option<i64>,
    /// The `event` object, untouched.
    pub event: Value,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not a JSON object, or not a known envelope shape (missing event id or type).
    #[error("the request body is not a recognised Feishu event envelope")]
    BadJson,
    /// The `encrypt` payload failed to decrypt (only reported for signed requests).
    #[error("the encrypted payload could not be decrypted")]
    Undecryptable,
    /// The body is encrypted but no Encrypt Key is configured.
    #[error("the event data is encrypted but no encrypt key is configured")]
    EncryptedButNoKey,
    /// An Encrypt Key is configured but the signature headers are absent.
    #[error("the request lacks the X-Lark-Request-Timestamp, -Nonce or X-Lark-Signature header")]
    MissingSignature,
    /// The signature does not match the body.
    #[error("the X-Lark-Signature does not match the request")]
    BadSignature,
    /// The timestamp is unparseable or outside the accepted window.
    #[error("the request timestamp is outside the accepted window")]
    StaleTimestamp,
    /// The verification token is missing or wrong.
    #[error("the verification token does not match")]
    BadToken,
}

impl Rejection {
    /// Whether the request failed authentication (signature, timestamp, token) rather than
    /// being unreadable after it passed.
    pub fn is_authentication(&self) -> bool {
        matches!(self, Rejection::MissingSignature | Rejection::BadSignature | Rejection::StaleTimestamp | Rejection::BadToken)
    }

    /// A bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::BadJson => "bad_json",
            Rejection::Undecryptable => "undecryptable",
            Rejection::EncryptedButNoKey => "encrypted_but_no_key",
            Rejection::MissingSignature => "missing_signature",
            Rejection::BadSignature => "bad_signature",
            Rejection::StaleTimestamp => "stale_timestamp",
            Rejection::BadToken => "bad_token",
        }
    }
}

/// The JSON body answering a URL challenge: `{"challenge":"..."}` (always plaintext).
pub fn challenge_response(challenge: &str) -> String {
    serde_json::json!({ "challenge": challenge }).to_string()
}

/// Opens an incoming event request: authenticates, decrypts and classifies it.
///
/// With an Encrypt Key the signature over the raw body is checked first, before anything is
/// decoded, decrypted or parsed; then the timestamp window. Feishu sends the URL check without
/// signature headers, so a request without them is decrypted only to be answered if it is that
/// check (which still needs the verification token). `body` is the raw HTTP body exactly as
/// received; `now_unix_secs` is the current time.
pub fn open(body: &[u8], headers: &RequestHeaders, cfg: &VerifyConfig, now_unix_secs: i64) -> Result<Envelope, Rejection> {
    let Some(key) = cfg.encrypt_key.as_deref() else {
        let outer = parse_object(body)?;
        if outer.get("encrypt").is_some() {
            return Err(Rejection::EncryptedButNoKey);
        }
        return classify(outer, cfg);
    };
    match check_signature(body, headers, key) {
        Ok(()) => {
            let envelope = classify(decrypt_payload(parse_object(body)?, key)?, cfg)?;
            if matches!(envelope, Envelope::Event(_)) {
                check_freshness(headers.timestamp, cfg.max_skew, now_unix_secs)?;
            }
            Ok(envelope)
        }
        Err(Rejection::MissingSignature) => match parse_object(body).and_then(|outer| decrypt_payload(outer, key)) {
            Ok(p) if is_url_verification(&p) => classify(p, cfg),
            _ => Err(Rejection::MissingSignature),
        },
        Err(e) => Err(e),
    }
}

/// The body as a JSON object.
fn parse_object(body: &[u8]) -> Result<Value, Rejection> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(Rejection::BadJson),
    }
}

/// The plaintext envelope: the decrypted `encrypt` field, or the body itself.
fn decrypt_payload(outer: Value, key: &str) -> Result<Value, Rejection> {
    let Some(enc) = outer.get("encrypt") else { return Ok(outer) };
    let text = enc.as_str().and_then(|e| crypto::decrypt(key, e).ok()).ok_or(Rejection::Undecryptable)?;
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(Rejection::BadJson),
        Err(_) => Err(Rejection::Undecryptable),
    }
}

/// Verifies the signature headers against the raw body.
fn check_signature(body: &[u8], headers: &RequestHeaders, key: &str) -> Result<(), Rejection> {
    let (Some(ts), Some(nonce), Some(sig)) = (headers.timestamp, headers.nonce, headers.signature) else {
        return Err(Rejection::MissingSignature);
    };
    if crypto::verify_signature(ts, nonce, key, body, sig) { Ok(()) } else { Err(Rejection::BadSignature) }
}

/// Rejects timestamps further than `max_skew` from now. Values above 10^11 are taken as
/// milliseconds (the unit is not documented; seconds are expected).
fn check_freshness(ts: Option<&str>, max_skew: Duration, now: i64) -> Result<(), Rejection> {
    let ts: i64 = ts.and_then(|t| t.trim().parse().ok()).ok_or(Rejection::StaleTimestamp)?;
    let ts = if ts > 100_000_000_000 { ts / 1000 } else { ts };
    let skew = i64::try_from(max_skew.as_secs()).unwrap_or(i64::MAX);
    if now.saturating_sub(ts).saturating_abs() > skew {
        return Err(Rejection::StaleTimestamp);
    }
    Ok(())
}

fn is_url_verification(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("url_verification")
}

/// Classifies a plaintext envelope and checks its verification token.
fn classify(v: Value, cfg: &VerifyConfig) -> Result<Envelope, Rejection> {
    if !v.is_object() {
        return Err(Rejection::BadJson);
    }
    if is_url_verification(&v) {
        check_token(v.get("token"), cfg)?;
        let challenge = v.get("challenge").and_then(Value::as_str).ok_or(Rejection::BadJson)?;
        return Ok(Envelope::UrlVerification { challenge: challenge.to_string() });
    }
    if v.get("schema").and_then(Value::as_str) == Some("2.0") || v.get("header").is_some() {
        let header = v.get("header").ok_or(Rejection::BadJson)?;
        check_token(header.get("token"), cfg)?;
        let event_id = non_empty_str(header.get("event_id")).ok_or(Rejection::BadJson)?;
        let event_type = non_empty_str(header.get("event_type")).ok_or(Rejection::BadJson)?;
        let create_time_ms = header.get("create_time").and_then(int_like);
        let event = v.get("event").cloned().unwrap_or(Value::Null);
        return Ok(Envelope::Event(EventEnvelope { event_id, event_type, create_time_ms, event }));
    }
    if v.get("type").and_then(Value::as_str) == Some("event_callback") {
        check_token(v.get("token"), cfg)?;
        let event_id = non_empty_str(v.get("uuid")).ok_or(Rejection::BadJson)?;
        let event = v.get("event").cloned().unwrap_or(Value::Null);
        let event_type = non_empty_str(event.get("type")).ok_or(Rejection::BadJson)?;
        let create_time_ms = v.get("ts").and_then(seconds_to_ms);
        return Ok(Envelope::Event(EventEnvelope { event_id, event_type, create_time_ms, event }));
    }
    Err(Rejection::BadJson)
}

/// Constant-time token check; a missing token or an empty configured token never matches.
fn check_token(token: Option<&Value>, cfg: &VerifyConfig) -> Result<(), Rejection> {
    match token.and_then(Value::as_str) {
        Some(t) if !cfg.verification_token.is_empty() && crypto::token_eq(t, &cfg.verification_token) => Ok(()),
        _ => Err(Rejection::BadToken),
    }
}

fn non_empty_str(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

/// An integer given as a JSON number or a numeric string.
fn int_like(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A schema-1.0 `ts` (seconds, possibly fractional, number or string) in milliseconds.
fn seconds_to_ms(v: &Value) -> Option<i64> {
    let secs = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    let ms = secs * 1000.0;
    (ms.is_finite() && ms.abs() < 9.0e15).then_some(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "test key";
    /// PROTOCOLS §3.2: encrypted `{"challenge":"ajls384kdjx98XX","token":"xxxxxx",...}`.
    const CHALLENGE_ENC: &str =
        "AAECAwQFBgcICQoLDA0ODw9mLTIAZS9jAmGTQ1wAhHpnBHVL2wRjH9rPunQdQC1vLjsckayA10kZ8cPwtb62F8rC7JprUPR/4S2aZihfR+p8npX7UzWPithZmfKIPZgE";
    const NOW: i64 = 1_700_000_000;

    fn cfg(key: Option<&str>) -> VerifyConfig {
        VerifyConfig::new("xxxxxx", key)
    }

    fn event_json(token: &str) -> String {
        serde_json::json!({
            "schema": "2.0",
            "header": {
                "event_id": "ev_1", "event_type": "im.message.receive_v1",
                "create_time": "1700000000123", "token": token,
                "app_id": "cli_x", "tenant_key": "t"
            },
            "event": {"message": {"message_id": "om_1"}}
        })
        .to_string()
    }

    /// Encrypts like the platform does (test-only helper; fixed IV).
    fn encrypt(key: &str, plain: &str) -> String {
        use base64::Engine as _;
        use cbc::cipher::block_padding::Pkcs7;
        use cbc::cipher::{BlockEncryptMut, KeyIvInit};
        use sha2::Digest;
        let k = sha2::Sha256::digest(key.as_bytes());
        let iv = [7u8; 16];
        let ct =
            cbc::Encryptor::<aes::Aes256>::new_from_slices(k.as_slice(), &iv).unwrap().encrypt_padded_vec_mut::<Pkcs7>(plain.as_bytes());
        let mut raw = iv.to_vec();
        raw.extend_from_slice(&ct);
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    fn signed_open(body: &str, ts: &str, cfg: &VerifyConfig) -> Result<Envelope, Rejection> {
        let sig = crypto::event_signature(ts, "n1", KEY, body.as_bytes());
        let h = RequestHeaders { timestamp: Some(ts), nonce: Some("n1"), signature: Some(&sig) };
        open(body.as_bytes(), &h, cfg, NOW)
    }

    fn encrypted_body(plain: &str) -> String {
        serde_json::json!({ "encrypt": encrypt(KEY, plain) }).to_string()
    }

    #[test]
    fn plain_challenge_is_answered_after_token_check() {
        let body = br#"{"challenge":"abc","token":"xxxxxx","type":"url_verification"}"#;
        let env = open(body, &RequestHeaders::default(), &cfg(None), NOW).unwrap();
        assert_eq!(env, Envelope::UrlVerification { challenge: "abc".into() });
        assert_eq!(challenge_response("abc"), r#"{"challenge":"abc"}"#);

        let bad = br#"{"challenge":"abc","token":"nope","type":"url_verification"}"#;
        assert_eq!(open(bad, &RequestHeaders::default(), &cfg(None), NOW), Err(Rejection::BadToken));
    }

    #[test]
    fn encrypted_challenge_needs_no_signature() {
        let body = format!(r#"{{"encrypt":"{CHALLENGE_ENC}"}}"#);
        let env = open(body.as_bytes(), &RequestHeaders::default(), &cfg(Some(KEY)), NOW).unwrap();
        assert_eq!(env, Envelope::UrlVerification { challenge: "ajls384kdjx98XX".into() });
        // Also fine when signed, with any timestamp.
        let env = signed_open(&body, "1", &cfg(Some(KEY))).unwrap();
        assert!(matches!(env, Envelope::UrlVerification { .. }));
    }

    #[test]
    fn encrypted_challenge_with_wrong_token_is_refused() {
        let body = format!(r#"{{"encrypt":"{CHALLENGE_ENC}"}}"#);
        let c = VerifyConfig::new("other", Some(KEY));
        assert_eq!(open(body.as_bytes(), &RequestHeaders::default(), &c, NOW), Err(Rejection::BadToken));
    }

    #[test]
    fn encrypted_signed_event_is_opened() {
        let body = encrypted_body(&event_json("xxxxxx"));
        let Envelope::Event(ev) = signed_open(&body, "1700000010", &cfg(Some(KEY))).unwrap() else {
            panic!("expected an event");
        };
        assert_eq!(ev.event_id, "ev_1");
        assert_eq!(ev.event_type, "im.message.receive_v1");
        assert_eq!(ev.create_time_ms, Some(1_700_000_000_123));
        assert_eq!(ev.event["message"]["message_id"], "om_1");
    }

    #[test]
    fn local_signature_vector_is_accepted_for_challenge_body() {
        let body = format!(r#"{{"encrypt":"{CHALLENGE_ENC}"}}"#);
        let h = RequestHeaders {
            timestamp: Some("1700000000"),
            nonce: Some("nonce123"),
            signature: Some("3d0c699fc2e01244af25e03bfb5fdd58f72780c45c0fe7c22b7a71fea8cb3342"),
        };
        assert!(open(body.as_bytes(), &h, &cfg(Some(KEY)), NOW).is_ok());
    }

    #[test]
    fn event_with_bad_or_missing_signature_is_refused() {
        let body = encrypted_body(&event_json("xxxxxx"));
        let h = RequestHeaders { timestamp: Some("1700000000"), nonce: Some("n1"), signature: Some("00") };
        assert_eq!(open(body.as_bytes(), &h, &cfg(Some(KEY)), NOW), Err(Rejection::BadSignature));
        assert_eq!(open(body.as_bytes(), &RequestHeaders::default(), &cfg(Some(KEY)), NOW), Err(Rejection::MissingSignature));
    }

    #[test]
    fn unsigned_garbage_reports_signature_not_decryption() {
        let body = br#"{"encrypt":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#;
        assert_eq!(open(body, &RequestHeaders::default(), &cfg(Some(KEY)), NOW), Err(Rejection::MissingSignature));
    }

    #[test]
    fn signed_garbage_is_undecryptable() {
        let body = r#"{"encrypt":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#;
        assert_eq!(signed_open(body, "1700000000", &cfg(Some(KEY))), Err(Rejection::Undecryptable));
    }

    #[test]
    fn stale_timestamp_is_refused() {
        let body = encrypted_body(&event_json("xxxxxx"));
        assert_eq!(signed_open(&body, "1699999000", &cfg(Some(KEY))), Err(Rejection::StaleTimestamp));
        assert_eq!(signed_open(&body, "1700000400", &cfg(Some(KEY))), Err(Rejection::StaleTimestamp));
        assert_eq!(signed_open(&body, "soon", &cfg(Some(KEY))), Err(Rejection::StaleTimestamp));
        // Milliseconds are tolerated.
        assert!(signed_open(&body, "1700000000500", &cfg(Some(KEY))).is_ok());
    }

    #[test]
    fn bad_token_in_signed_event_is_refused() {
        let body = encrypted_body(&event_json("wrong"));
        assert_eq!(signed_open(&body, "1700000000", &cfg(Some(KEY))), Err(Rejection::BadToken));
    }

    #[test]
    fn plaintext_event_without_key_checks_token() {
        let body = event_json("xxxxxx");
        let env = open(body.as_bytes(), &RequestHeaders::default(), &cfg(None), NOW).unwrap();
        assert!(matches!(env, Envelope::Event(ref e) if e.event_id == "ev_1"));
        let body = event_json("wrong");
        assert_eq!(open(body.as_bytes(), &RequestHeaders::default(), &cfg(None), NOW), Err(Rejection::BadToken));
        let empty = VerifyConfig::new("", None);
        let body = event_json("");
        assert_eq!(open(body.as_bytes(), &RequestHeaders::default(), &empty, NOW), Err(Rejection::BadToken));
    }

    #[test]
    fn encrypted_body_without_key_is_refused() {
        let body = format!(r#"{{"encrypt":"{CHALLENGE_ENC}"}}"#);
        assert_eq!(open(body.as_bytes(), &RequestHeaders::default(), &cfg(None), NOW), Err(Rejection::EncryptedButNoKey));
    }

    #[test]
    fn plaintext_event_with_key_still_needs_signature() {
        let body = event_json("xxxxxx");
        assert_eq!(open(body.as_bytes(), &RequestHeaders::default(), &cfg(Some(KEY)), NOW), Err(Rejection::MissingSignature));
        assert!(signed_open(&body, "1700000000", &cfg(Some(KEY))).is_ok());
    }

    #[test]
    fn schema_1_event_is_mapped() {
        let body = serde_json::json!({
            "uuid": "u-1", "token": "xxxxxx", "ts": "1502199207.7171419",
            "type": "event_callback",
            "event": {"type": "message", "text": "hi"}
        })
        .to_string();
        let Envelope::Event(ev) = open(body.as_bytes(), &RequestHeaders::default(), &cfg(None), NOW).unwrap() else {
            panic!("expected an event");
        };
        assert_eq!(ev.event_id, "u-1");
        assert_eq!(ev.event_type, "message");
        assert_eq!(ev.create_time_ms, Some(1_502_199_207_717));
    }

    #[test]
    fn junk_is_bad_json() {
        let h = RequestHeaders::default();
        for body in [&b"not json"[..], b"[]", b"42", br#"{"type":"other","token":"xxxxxx"}"#] {
            assert_eq!(open(body, &h, &cfg(None), NOW), Err(Rejection::BadJson));
        }
        let no_id = br#"{"schema":"2.0","header":{"token":"xxxxxx","event_type":"x"}}"#;
        assert_eq!(open(no_id, &h, &cfg(None), NOW), Err(Rejection::BadJson));
    }

    #[test]
    fn reasons_are_distinct_labels() {
        let all = [
            Rejection::BadJson,
            Rejection::Undecryptable,
            Rejection::EncryptedButNoKey,
            Rejection::MissingSignature,
            Rejection::BadSignature,
            Rejection::StaleTimestamp,
            Rejection::BadToken,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(Rejection::reason).collect();
        assert_eq!(labels.len(), all.len());
        assert!(!Rejection::BadToken.to_string().is_empty());
    }

    #[test]
    fn debug_redacts_secrets() {
        let s = format!("{:?}", VerifyConfig::new("tok-secret", Some("key-secret")));
        assert!(!s.contains("tok-secret") && !s.contains("key-secret"));
    }
}
