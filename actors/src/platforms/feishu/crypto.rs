//! Feishu cryptography: event decryption, event signatures, custom-bot signatures and
//! constant-time token comparison (PROTOCOLS §2.3, §2.7).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, KeyIvInit};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// AES block size, also the IV length.
const BLOCK: usize = 16;

/// Why an `encrypt` payload could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The payload is not valid standard base64.
    #[error("the encrypted payload is not valid base64")]
    Base64,
    /// The decoded payload is shorter than one IV plus one block, or not block-aligned.
    #[error("the encrypted payload has an invalid length: {0} bytes")]
    Length(usize),
    /// The PKCS#7 padding is malformed (wrong key, or corrupted data).
    #[error("the decrypted payload has invalid PKCS#7 padding")]
    Padding,
    /// The plaintext is not UTF-8.
    #[error("the decrypted payload is not valid UTF-8")]
    Utf8,
}

/// Decrypts a Feishu `encrypt` field.
///
/// AES-256-CBC with key `SHA-256(encrypt_key)`, IV = the first 16 bytes of the base64-decoded
/// data, and real PKCS#7 unpadding (every pad byte equal, value 1..=16).
pub fn decrypt(encrypt_key: &str, encrypted_b64: &str) -> Result<String, CryptoError> {
    let raw = B64.decode(encrypted_b64.trim()).map_err(|_| CryptoError::Base64)?;
    if raw.len() < 2 * BLOCK || raw.len() % BLOCK != 0 {
        return Err(CryptoError::Length(raw.len()));
    }
    let key = Sha256::digest(encrypt_key.as_bytes());
    let (iv, ciphertext) = raw.split_at(BLOCK);
    let decryptor = cbc::Decryptor::<aes::Aes256>::new_from_slices(key.as_slice(), iv).map_err(|_| CryptoError::Length(raw.len()))?;
    let mut buf = ciphertext.to_vec();
    let plain = decryptor.decrypt_padded_mut::<NoPadding>(&mut buf).map_err(|_| CryptoError::Length(raw.len()))?;
    let unpadded = pkcs7_unpad(plain)?;
    String::from_utf8(unpadded.to_vec()).map_err(|_| CryptoError::Utf8)
}

/// Strips PKCS#7 padding, checking that every pad byte carries the pad length.
fn pkcs7_unpad(data: &[u8]) -> Result<&[u8], CryptoError> {
    let pad = *data.last().ok_or(CryptoError::Padding)? as usize;
    if pad == 0 || pad > BLOCK || pad > data.len() {
        return Err(CryptoError::Padding);
    }
    let (body, padding) = data.split_at(data.len() - pad);
    if padding.iter().any(|&b| b as usize != pad) {
        return Err(CryptoError::Padding);
    }
    Ok(body)
}

/// Computes the `X-Lark-Signature` of an event request:
/// `lowercase_hex(SHA-256(timestamp + nonce + encrypt_key ++ raw_body))`.
///
/// Plain SHA-256, not HMAC; `body` must be the exact bytes received.
pub fn event_signature(timestamp: &str, nonce: &str, encrypt_key: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(timestamp.as_bytes());
    hasher.update(nonce.as_bytes());
    hasher.update(encrypt_key.as_bytes());
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// Checks an `X-Lark-Signature` header against [`event_signature`], in constant time.
///
/// The comparison is case-insensitive on the hex digits (the platform sends lowercase).
pub fn verify_signature(timestamp: &str, nonce: &str, encrypt_key: &str, body: &[u8], expected_hex: &str) -> bool {
    let computed = event_signature(timestamp, nonce, encrypt_key, body);
    token_eq(&computed, &expected_hex.trim().to_ascii_lowercase())
}

/// Computes a custom (webhook) bot signature:
/// `base64(HMAC-SHA256(key = timestamp + "\n" + secret, message = ""))`.
pub fn custom_bot_sign(timestamp: i64, secret: &str) -> String {
    let string_to_sign = format!("{timestamp}\n{secret}");
    // HMAC accepts keys of any length, so this cannot fail; fall back to an empty string
    // rather than panic.
    match Hmac::<Sha256>::new_from_slice(string_to_sign.as_bytes()) {
        Ok(mac) => B64.encode(mac.finalize().into_bytes()),
        Err(_) => String::new(),
    }
}

/// Compares two secrets (tokens, signatures) in constant time, lengths included.
pub fn token_eq(a: &str, b: &str) -> bool {
    crate::platforms::secrets_equal(a.as_bytes(), b.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHALLENGE_ENC: &str =
        "AAECAwQFBgcICQoLDA0ODw9mLTIAZS9jAmGTQ1wAhHpnBHVL2wRjH9rPunQdQC1vLjsckayA10kZ8cPwtb62F8rC7JprUPR/4S2aZihfR+p8npX7UzWPithZmfKIPZgE";

    #[test]
    fn decrypts_official_vector() {
        let plain = decrypt("test key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=").unwrap();
        assert_eq!(plain, "hello world");
    }

    #[test]
    fn decrypts_local_challenge_vector() {
        let plain = decrypt("test key", CHALLENGE_ENC).unwrap();
        assert_eq!(plain, r#"{"challenge":"ajls384kdjx98XX","token":"xxxxxx","type":"url_verification"}"#);
    }

    #[test]
    fn wrong_key_is_an_error_not_a_panic() {
        let err = decrypt("other key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=");
        assert!(err.is_err());
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert_eq!(decrypt("k", "not base64!!"), Err(CryptoError::Base64));
        assert_eq!(decrypt("k", ""), Err(CryptoError::Length(0)));
        // 16 bytes: IV only.
        assert_eq!(decrypt("k", &B64.encode([0u8; 16])), Err(CryptoError::Length(16)));
        // Not block-aligned.
        assert_eq!(decrypt("k", &B64.encode([0u8; 40])), Err(CryptoError::Length(40)));
    }

    #[test]
    fn pkcs7_unpad_checks_every_byte() {
        assert_eq!(pkcs7_unpad(b"abc\x02\x02").unwrap(), b"abc");
        assert_eq!(pkcs7_unpad(b"abc\x01\x02"), Err(CryptoError::Padding));
        assert_eq!(pkcs7_unpad(b"abc\x00"), Err(CryptoError::Padding));
        assert_eq!(pkcs7_unpad(&[17u8; 32]), Err(CryptoError::Padding));
        assert_eq!(pkcs7_unpad(b""), Err(CryptoError::Padding));
        assert_eq!(pkcs7_unpad(&[16u8; 16]).unwrap(), b"");
    }

    #[test]
    fn event_signature_matches_vector() {
        let body = format!(r#"{{"encrypt":"{CHALLENGE_ENC}"}}"#);
        let sig = event_signature("1700000000", "nonce123", "test key", body.as_bytes());
        assert_eq!(sig, "3d0c699fc2e01244af25e03bfb5fdd58f72780c45c0fe7c22b7a71fea8cb3342");
        assert!(verify_signature("1700000000", "nonce123", "test key", body.as_bytes(), &sig.to_ascii_uppercase()));
    }

    #[test]
    fn event_signature_mismatch_is_rejected() {
        let body = br#"{"encrypt":"abc"}"#;
        let sig = event_signature("1700000000", "nonce123", "test key", body);
        assert!(!verify_signature("1700000001", "nonce123", "test key", body, &sig));
        assert!(!verify_signature("1700000000", "nonce123", "test key", b"{}", &sig));
        assert!(!verify_signature("1700000000", "nonce123", "test key", body, ""));
        assert!(!verify_signature("1700000000", "nonce123", "test key", body, "zz"));
    }

    #[test]
    fn custom_bot_sign_matches_vector() {
        assert_eq!(custom_bot_sign(1599360473, "demo_secret"), "sdR0eS36UO/d4NpAyDr6RpCJWLJtcheypjGCjiZTm0o=");
    }

    #[test]
    fn token_eq_compares_content_and_length() {
        assert!(token_eq("abc", "abc"));
        assert!(!token_eq("abc", "abd"));
        assert!(!token_eq("abc", "abcd"));
        assert!(token_eq("", ""));
    }
}
