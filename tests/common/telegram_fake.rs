//! A fake Telegram Bot API server speaking the real protocol (`/bot<token>/<method>`, JSON
//! bodies, `{"ok": …}` envelopes), recording every call. It can be told to answer the next
//! `sendMessage` calls with 429 + retry_after, 5xx or 403.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warp::Filter;
use warp::http::StatusCode;

pub const TOKEN: &str = "123456:TEST-token_abc";
pub const BOT_ID: i64 = 999;
pub const BOT_USERNAME: &str = "sb_test_bot";

/// A scripted failure for the next `sendMessage`.
#[derive(Debug, Clone)]
pub enum Fault {
    RetryAfter(u64),
    ServerError,
    Forbidden,
    Migrate(i64),
    CantParseEntities,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    /// Updates not yet acknowledged (getUpdates offset semantics).
    updates: VecDeque<Value>,
    faults: VecDeque<Fault>,
    next_message_id: i64,
    webhook: Option<String>,
}

#[derive(Clone)]
pub struct FakeTelegram {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<tokio::sync::Notify>,
    pub addr: SocketAddr,
}

impl FakeTelegram {
    pub async fn start() -> FakeTelegram {
        let inner = Arc::new(Mutex::new(Inner { next_message_id: 5000, ..Default::default() }));
        let notify = Arc::new(tokio::sync::Notify::new());
        let (i2, n2) = (inner.clone(), notify.clone());
        let route = warp::path!(String / String).and(warp::post()).and(warp::body::bytes()).and_then(
            move |bot: String, method: String, body: bytes::Bytes| {
                let (inner, notify) = (i2.clone(), n2.clone());
                async move { Ok::<_, std::convert::Infallible>(handle(inner, notify, bot, method, body).await) }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        FakeTelegram { inner, notify, addr }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn push_update(&self, update: Value) {
        self.inner.lock().unwrap().updates.push_back(update);
        self.notify.notify_waiters();
    }

    pub fn fail_next_send(&self, f: Fault) {
        self.inner.lock().unwrap().faults.push_back(f);
    }

    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.inner.lock().unwrap().calls.iter().filter(|c| c.method == method).cloned().collect()
    }

    pub fn webhook(&self) -> Option<String> {
        self.inner.lock().unwrap().webhook.clone()
    }

    /// Waits until `method` was called at least `n` times.
    pub async fn wait_calls(&self, method: &str, n: usize) -> Vec<Call> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let c = self.calls(method);
            if c.len() >= n {
                return c;
            }
            if Instant::now() >= deadline {
                panic!("expected {n} {method} calls, got {}: {:?}", c.len(), c);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `sendMessage` calls that reply to the user's message `message_id` (the first part of an
    /// answer carries `reply_parameters`).
    pub fn replies_to(&self, message_id: i64) -> Vec<Call> {
        self.calls("sendMessage").into_iter().filter(|c| c.body["reply_parameters"]["message_id"] == message_id).collect()
    }

    /// Waits until the answer to the user's message `message_id` was sent, and returns that
    /// `sendMessage` call. A sentinel: messages of a conversation are handled strictly in order,
    /// so once a later message of the same chat is answered, every earlier one was handled and
    /// any answer to it was handed to egress first, so it was already sent.
    pub async fn wait_reply_to(&self, message_id: i64) -> Call {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.replies_to(message_id).into_iter().next() {
                return c;
            }
            if Instant::now() >= deadline {
                panic!("no answer to message {message_id}; sendMessage calls: {:?}", self.calls("sendMessage"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn ok(result: Value) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(&json!({"ok": true, "result": result})), StatusCode::OK).into_response()
}

fn err(status: u16, description: &str, parameters: Option<Value>) -> warp::reply::Response {
    let mut body = json!({"ok": false, "error_code": status, "description": description});
    if let Some(p) = parameters {
        body["parameters"] = p;
    }
    warp::reply::with_status(warp::reply::json(&body), StatusCode::from_u16(status).unwrap()).into_response()
}

use warp::Reply;

async fn handle(
    inner: Arc<Mutex<Inner>>,
    notify: Arc<tokio::sync::Notify>,
    bot: String,
    method: String,
    body: bytes::Bytes,
) -> warp::reply::Response {
    if bot != format!("bot{TOKEN}") {
        return err(401, "Unauthorized", None);
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    inner.lock().unwrap().calls.push(Call { method: method.clone(), body: body.clone(), at: Instant::now() });
    match method.as_str() {
        "getMe" => ok(json!({"id": BOT_ID, "is_bot": true, "first_name": "Switchboard", "username": BOT_USERNAME})),
        "setWebhook" => {
            inner.lock().unwrap().webhook = body["url"].as_str().map(str::to_string);
            ok(json!(true))
        }
        "deleteWebhook" => {
            inner.lock().unwrap().webhook = None;
            ok(json!(true))
        }
        "getUpdates" => {
            if inner.lock().unwrap().webhook.is_some() {
                return err(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
                    None,
                );
            }
            let offset = body["offset"].as_i64().unwrap_or(0);
            let timeout = body["timeout"].as_u64().unwrap_or(0).min(2);
            let deadline = Instant::now() + Duration::from_secs(timeout);
            loop {
                let pending: Vec<Value> = {
                    let mut g = inner.lock().unwrap();
                    // Updates below the offset are confirmed and forgotten.
                    g.updates.retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
                    g.updates.iter().cloned().collect()
                };
                if !pending.is_empty() || Instant::now() >= deadline {
                    return ok(Value::Array(pending));
                }
                let _ = tokio::time::timeout(deadline - Instant::now(), notify.notified()).await;
            }
        }
        "sendMessage" => {
            let fault = inner.lock().unwrap().faults.pop_front();
            match fault {
                Some(Fault::RetryAfter(s)) => err(429, &format!("Too Many Requests: retry after {s}"), Some(json!({"retry_after": s}))),
                Some(Fault::ServerError) => err(502, "Bad Gateway", None),
                Some(Fault::Forbidden) => err(403, "Forbidden: bot was blocked by the user", None),
                Some(Fault::Migrate(to)) => {
                    err(400, "Bad Request: group chat was upgraded to a supergroup chat", Some(json!({"migrate_to_chat_id": to})))
                }
                Some(Fault::CantParseEntities) if body["parse_mode"].is_string() => {
                    err(400, "Bad Request: can't parse entities: Unsupported start tag \"x\" at byte offset 0", None)
                }
                _ => {
                    let mut g = inner.lock().unwrap();
                    g.next_message_id += 1;
                    ok(
                        json!({"message_id": g.next_message_id, "date": 1_700_000_000, "chat": {"id": body["chat_id"], "type": "private"}, "text": body["text"]}),
                    )
                }
            }
        }
        "editMessageText" | "sendChatAction" => ok(json!(true)),
        _ => err(404, "Not Found: method not found", None),
    }
}

/// A private-chat text update.
pub fn private_text(update_id: i64, chat_id: i64, text: &str) -> Value {
    json!({"update_id": update_id, "message": {
        "message_id": update_id * 10, "date": 1_700_000_000,
        "from": {"id": chat_id, "is_bot": false, "first_name": "Alice", "username": "alice"},
        "chat": {"id": chat_id, "type": "private", "first_name": "Alice"},
        "text": text}})
}

/// A group text update with optional entities.
pub fn group_text(update_id: i64, chat_id: i64, thread: Option<i64>, text: &str, entities: Value) -> Value {
    let mut m = json!({
        "message_id": update_id * 10, "date": 1_700_000_000,
        "from": {"id": 42, "is_bot": false, "first_name": "Bob"},
        "chat": {"id": chat_id, "type": "supergroup", "title": "Team", "is_forum": thread.is_some()},
        "text": text, "entities": entities});
    if let Some(t) = thread {
        m["message_thread_id"] = json!(t);
        m["is_topic_message"] = json!(true);
    }
    json!({"update_id": update_id, "message": m})
}
