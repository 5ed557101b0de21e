//! A fake Feishu Open Platform: the tenant token endpoint (with expiry), bot info, and the
//! message reply endpoint, recording calls; it can answer rate-limit, server-error and
//! token-invalid codes. Also builds encrypted and signed event requests like Feishu does.

#![allow(dead_code)]

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use warp::Filter;
use warp::http::StatusCode;

pub const APP_ID: &str = "cli_test_app";
pub const APP_SECRET: &str = "test-app-secret";
pub const VERIFICATION_TOKEN: &str = "verif-token-123";
pub const ENCRYPT_KEY: &str = "test-encrypt-key";
pub const BOT_OPEN_ID: &str = "ou_bot_0001";

#[derive(Debug, Clone)]
pub enum ReplyFault {
    RateLimited,
    ServerError,
    TokenInvalid,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub message_id: String,
    pub body: Value,
    pub token: String,
    pub at: Instant,
}

struct Inner {
    token_fetches: u64,
    /// Tokens the server accepts.
    valid: HashSet<String>,
    current: String,
    expire_secs: u64,
    replies: Vec<Reply>,
    faults: VecDeque<ReplyFault>,
    next: u64,
    /// Card updates (PATCH).
    patches: Vec<Reply>,
}

#[derive(Clone)]
pub struct FakeFeishu {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

type Resp = warp::reply::Response;

fn json_resp(v: Value, status: u16) -> Resp {
    use warp::Reply;
    warp::reply::with_status(warp::reply::json(&v), StatusCode::from_u16(status).unwrap()).into_response()
}

impl FakeFeishu {
    pub async fn start(expire_secs: u64) -> FakeFeishu {
        let inner = Arc::new(Mutex::new(Inner {
            token_fetches: 0,
            valid: HashSet::new(),
            current: String::new(),
            expire_secs,
            replies: Vec::new(),
            faults: VecDeque::new(),
            next: 0,
            patches: Vec::new(),
        }));
        let i1 = inner.clone();
        let token = warp::path!("open-apis" / "auth" / "v3" / "tenant_access_token" / "internal")
            .and(warp::post())
            .and(warp::body::json())
            .map(move |b: Value| {
                if b["app_id"] != APP_ID || b["app_secret"] != APP_SECRET {
                    return json_resp(json!({"code": 10014, "msg": "app secret invalid"}), 400);
                }
                let mut g = i1.lock().unwrap();
                g.token_fetches += 1;
                let t = format!("t-{}", g.token_fetches);
                g.valid.insert(t.clone());
                g.current = t.clone();
                json_resp(json!({"code": 0, "msg": "ok", "tenant_access_token": t, "expire": g.expire_secs}), 200)
            });
        let i2 = inner.clone();
        let bot = warp::path!("open-apis" / "bot" / "v3" / "info")
            .and(warp::get())
            .and(warp::header::optional::<String>("authorization"))
            .map(move |auth: Option<String>| {
                let ok = auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")).is_some_and(|t| i2.lock().unwrap().valid.contains(t));
                if !ok {
                    return json_resp(json!({"code": 99991663, "msg": "Invalid access token for authorization."}), 400);
                }
                json_resp(json!({"code": 0, "msg": "ok", "bot": {"open_id": BOT_OPEN_ID, "app_name": "Switchboard"}}), 200)
            });
        let i3 = inner.clone();
        let reply = warp::path!("open-apis" / "im" / "v1" / "messages" / String / "reply")
            .and(warp::post())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::json())
            .map(move |mid: String, auth: Option<String>, body: Value| {
                let mut g = i3.lock().unwrap();
                let token = auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")).unwrap_or_default().to_string();
                g.replies.push(Reply { message_id: mid.clone(), body: body.clone(), token: token.clone(), at: Instant::now() });
                if !g.valid.contains(&token) {
                    return json_resp(json!({"code": 99991663, "msg": "Invalid access token for authorization."}), 400);
                }
                match g.faults.pop_front() {
                    Some(ReplyFault::RateLimited) => {
                        return json_resp(json!({"code": 99991400, "msg": "request trigger frequency limit"}), 429);
                    }
                    Some(ReplyFault::ServerError) => return json_resp(json!({"code": 1, "msg": "internal error"}), 500),
                    Some(ReplyFault::TokenInvalid) => {
                        g.valid.remove(&token);
                        return json_resp(json!({"code": 99991663, "msg": "Invalid access token for authorization."}), 400);
                    }
                    None => {}
                }
                g.next += 1;
                json_resp(json!({"code": 0, "msg": "success", "data": {"message_id": format!("om_reply_{}", g.next)}}), 200)
            });
        let i4 = inner.clone();
        let patch = warp::path!("open-apis" / "im" / "v1" / "messages" / String)
            .and(warp::patch())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::json())
            .map(move |mid: String, auth: Option<String>, body: Value| {
                let mut g = i4.lock().unwrap();
                let token = auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")).unwrap_or_default().to_string();
                if !g.valid.contains(&token) {
                    return json_resp(json!({"code": 99991663, "msg": "Invalid access token for authorization."}), 400);
                }
                g.patches.push(Reply { message_id: mid, body, token, at: Instant::now() });
                json_resp(json!({"code": 0, "msg": "success", "data": {}}), 200)
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(token.or(bot).or(reply).or(patch)).incoming(listener).run());
        FakeFeishu { inner, addr }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_fetches(&self) -> u64 {
        self.inner.lock().unwrap().token_fetches
    }

    pub fn replies(&self) -> Vec<Reply> {
        self.inner.lock().unwrap().replies.clone()
    }

    pub fn patches(&self) -> Vec<Reply> {
        self.inner.lock().unwrap().patches.clone()
    }

    pub fn fail_next_reply(&self, f: ReplyFault) {
        self.inner.lock().unwrap().faults.push_back(f);
    }

    /// Successful replies only (those that got a message id).
    pub fn delivered(&self) -> Vec<Reply> {
        let g = self.inner.lock().unwrap();
        // A reply is delivered when its token was valid at the time and no fault hit it; the
        // fake does not keep that per call, so count distinct uuids of calls with valid tokens.
        let mut seen = HashSet::new();
        g.replies.iter().filter(|r| g.valid.contains(&r.token) && seen.insert(r.body["uuid"].to_string())).cloned().collect()
    }

    pub async fn wait_replies(&self, n: usize) -> Vec<Reply> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.replies();
            if r.len() >= n {
                return r;
            }
            if Instant::now() >= deadline {
                panic!("expected {n} reply calls, got {}: {r:?}", r.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reply calls answering the user's message `message_id`.
    pub fn replies_to(&self, message_id: &str) -> Vec<Reply> {
        self.replies().into_iter().filter(|r| r.message_id == message_id).collect()
    }

    /// Waits until the user's message `message_id` was answered, and returns that reply call.
    /// A sentinel: messages of a conversation (a chat) are handled strictly in order, so once a
    /// later message of the same chat is answered, every earlier one was handled and any answer
    /// to it was handed to egress first, so it was already sent.
    pub async fn wait_reply_to(&self, message_id: &str) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(r) = self.replies_to(message_id).into_iter().next() {
                return r;
            }
            if Instant::now() >= deadline {
                panic!("no answer to message {message_id}; reply calls: {:?}", self.replies());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// AES-256-CBC encryption as Feishu does it: key = SHA-256(encrypt key), random IV prefixed,
/// PKCS#7, base64.
pub fn encrypt(plain: &str) -> String {
    use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
    let key = Sha256::digest(ENCRYPT_KEY.as_bytes());
    let iv: [u8; 16] = rand_iv();
    let ct = cbc::Encryptor::<aes::Aes256>::new(key.as_slice().into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plain.as_bytes());
    let mut all = iv.to_vec();
    all.extend(ct);
    base64::engine::general_purpose::STANDARD.encode(all)
}

fn rand_iv() -> [u8; 16] {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let h = Sha256::digest(n.to_le_bytes());
    h[..16].try_into().unwrap()
}

/// Headers and body of a signed request carrying `plain` encrypted.
pub fn signed_encrypted(plain: &Value, timestamp: i64) -> (Vec<(String, String)>, String) {
    let body = json!({"encrypt": encrypt(&plain.to_string())}).to_string();
    let ts = timestamp.to_string();
    let nonce = "nonce-123";
    let mut h = Sha256::new();
    h.update(ts.as_bytes());
    h.update(nonce.as_bytes());
    h.update(ENCRYPT_KEY.as_bytes());
    h.update(body.as_bytes());
    let sig = hex::encode(h.finalize());
    (vec![("X-Lark-Request-Timestamp".into(), ts), ("X-Lark-Request-Nonce".into(), nonce.into()), ("X-Lark-Signature".into(), sig)], body)
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// An `im.message.receive_v1` event (schema 2.0).
pub fn message_event(event_id: &str, message_id: &str, chat_id: &str, chat_type: &str, text: &str, mentions: Value) -> Value {
    json!({
        "schema": "2.0",
        "header": {"event_id": event_id, "event_type": "im.message.receive_v1", "create_time": "1700000000000",
                   "token": VERIFICATION_TOKEN, "app_id": APP_ID, "tenant_key": "tenant"},
        "event": {
            "sender": {"sender_id": {"open_id": "ou_user_1", "user_id": "u1", "union_id": "on_1"}, "sender_type": "user", "tenant_key": "tenant"},
            "message": {"message_id": message_id, "root_id": "", "parent_id": "", "create_time": "1700000000000",
                        "chat_id": chat_id, "chat_type": chat_type, "message_type": "text",
                        "content": json!({"text": text}).to_string(), "mentions": mentions}
        }
    })
}
