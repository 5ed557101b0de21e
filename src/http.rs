//! The HTTP surface (warp): health, readiness, metrics and the generic chat API. Every error
//! is JSON `{"error": {"code": "...", "message": "..."}}`, and one function decides statuses.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use switchboard_actors::inference::{GenerateOptions, InferenceError};
use switchboard_actors::session::{ChatError, ChatReply, ChatRequest, InboxPayload};
use switchboard_actors::store::{Accepted, NewInbound, Store};

use crate::config::AdminToken;
use switchboard_actors::telemetry;
use switchboard_actors::tree::{HTTP_INGRESS_NAME, IngressMsg};
use tokio::sync::mpsc;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// Shared state of the HTTP layer.
pub struct AppState {
    /// Set once the tree is up.
    pub started: AtomicBool,
    /// Set when shutdown begins: readiness fails and new chats are refused.
    pub shutting_down: AtomicBool,
    /// Workers registered with the batcher.
    pub ready_workers: Arc<AtomicUsize>,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// Collects process metrics on each scrape.
    pub process: metrics_process::Collector,
    pub max_body_bytes: u64,
    /// How long a chat call may take end to end.
    pub chat_timeout: Duration,
    /// Durable storage (inbox, history, audit).
    pub store: Arc<dyn Store>,
    /// This node's name in the inbox.
    pub node: String,
    /// Admin API tokens.
    pub admin_tokens: Vec<AdminToken>,
    /// Telegram bots by account.
    pub telegram: std::collections::HashMap<String, Arc<switchboard_actors::platforms::telegram_bot::TelegramBot>>,
    /// Feishu / Lark apps by account.
    pub feishu: std::collections::HashMap<String, Arc<switchboard_actors::platforms::feishu_app::FeishuApp>>,
}

impl AppState {
    /// Writes an audit record; a failure is logged, never hidden.
    pub async fn audit(&self, actor: &str, action: &str, target: &str, detail: &str) {
        tracing::info!(actor, action, target, "Audit event.");
        if let Err(e) = self.store.audit_append(actor, action, target, detail).await {
            tracing::error!(error = %e, actor, action, "Could not write an audit record.");
        }
    }

    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::Acquire)
            && !self.shutting_down.load(Ordering::Acquire)
            && self.ready_workers.load(Ordering::Acquire) > 0
    }
}

/// Typed API errors; [`ApiError::status`] is the only place that maps errors to statuses.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(u64),
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the service is not ready yet")]
    NotReady,
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Chat(#[from] ChatError),
    #[error("the reply did not arrive in time")]
    Timeout,
    #[error("unsupported content type; send application/json")]
    UnsupportedMediaType,
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("this action needs the {0} role")]
    Forbidden(&'static str),
    #[error("no such {0}")]
    NoSuch(String),
    #[error("storage error: {0}")]
    Storage(String),
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NoSuch(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
            ApiError::Chat(e) => match e {
                ChatError::Inference(InferenceError::Busy(_)) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
                ChatError::Inference(InferenceError::Timeout(_)) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                ChatError::Inference(InferenceError::PromptTooLong { .. }) | ChatError::MessageTooLong { .. } => {
                    (StatusCode::BAD_REQUEST, "message_too_long")
                }
                ChatError::Inference(InferenceError::Unavailable(_)) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                ChatError::Inference(InferenceError::Failed(_)) => (StatusCode::INTERNAL_SERVER_ERROR, "inference_failed"),
                ChatError::SessionFailed => (StatusCode::INTERNAL_SERVER_ERROR, "session_failed"),
                ChatError::DeadLettered { .. } => (StatusCode::SERVICE_UNAVAILABLE, "dead_lettered"),
                ChatError::Duplicate(_) => (StatusCode::CONFLICT, "duplicate"),
                ChatError::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
                ChatError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        }
    }

    fn body(&self) -> serde_json::Value {
        let (_, code) = self.status_and_code();
        serde_json::json!({"error": {"code": code, "message": self.to_string()}})
    }

    pub fn into_response(self) -> warp::reply::Response {
        let (status, _) = self.status_and_code();
        let mut resp = warp::reply::with_status(warp::reply::json(&self.body()), status).into_response();
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert("www-authenticate", warp::http::HeaderValue::from_static("Bearer"));
        }
        if matches!(self, ApiError::Chat(ChatError::Inference(InferenceError::Busy(_)))) {
            resp.headers_mut().insert("retry-after", warp::http::HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Body of `POST /api/v1/chat`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatBody {
    /// Conversation id chosen by the caller; messages with the same id share history.
    pub conversation: String,
    /// Who is speaking.
    pub user: String,
    /// The message.
    pub text: String,
    /// Stream the reply as Server-Sent Events.
    #[serde(default)]
    pub stream: bool,
    pub max_new_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    /// Optional id for de-duplication: a second message with the same id gets 409.
    pub message_id: Option<String>,
}

/// Answer of `POST /api/v1/chat`.
#[derive(Debug, Serialize)]
pub struct ChatResponse {
    pub conversation: String,
    pub reply: String,
    pub tokens: usize,
    pub prompt_tokens: usize,
    pub finish_reason: Option<switchboard_actors::inference::FinishReason>,
    pub latency_ms: u64,
}

impl From<ChatReply> for ChatResponse {
    fn from(r: ChatReply) -> Self {
        Self {
            conversation: r.conversation,
            reply: r.reply,
            tokens: r.tokens,
            prompt_tokens: r.prompt_tokens,
            finish_reason: r.finish_reason,
            latency_ms: r.latency.as_millis() as u64,
        }
    }
}

/// A parsed chat request plus what the inbox needs.
struct ParsedChat {
    request: ChatRequest,
    stream: bool,
    message_id: Option<String>,
}

fn parse_chat(body: &[u8]) -> Result<ParsedChat, ApiError> {
    let b: ChatBody = serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    let check = |name: &str, v: &str, max: usize| -> Result<(), ApiError> {
        if v.trim().is_empty() {
            return Err(ApiError::BadRequest(format!("`{name}` must not be empty")));
        }
        if v.chars().count() > max {
            return Err(ApiError::BadRequest(format!("`{name}` is longer than {max} characters")));
        }
        Ok(())
    };
    check("conversation", &b.conversation, 256)?;
    check("user", &b.user, 256)?;
    check("text", &b.text, usize::MAX)?;
    if let Some(id) = &b.message_id {
        check("message_id", id, 256)?;
    }
    let options = GenerateOptions {
        max_new_tokens: b.max_new_tokens,
        temperature: b.temperature,
        top_p: b.top_p,
        top_k: b.top_k,
        repetition_penalty: b.repetition_penalty,
        stop: b.stop,
        seed: b.seed,
        fault: None,
    };
    options.validate().map_err(ApiError::BadRequest)?;
    let req = ChatRequest {
        platform: "http",
        conversation: format!("http:{}", b.conversation),
        user: b.user,
        text: b.text,
        options,
        deltas: None,
        accepted_at: Instant::now(),
        inbox_id: None,
        account: "api".into(),
        attempts: 0,
        route: None,
    };
    Ok(ParsedChat { request: req, stream: b.stream, message_id: b.message_id })
}

/// Sends a request into the tree and waits for the reply.
async fn call_session(state: &AppState, req: ChatRequest) -> Result<ChatReply, ApiError> {
    let ingress = ActorRef::<IngressMsg>::where_is(HTTP_INGRESS_NAME.to_string()).ok_or(ApiError::NotReady)?;
    let platform = req.platform;
    let accepted = req.accepted_at;
    let result = match ingress.call(|port| IngressMsg::Chat(req, Some(port)), Some(state.chat_timeout)).await {
        Ok(ractor::rpc::CallResult::Success(r)) => r.map_err(ApiError::from),
        Ok(ractor::rpc::CallResult::Timeout) => Err(ApiError::Timeout),
        Ok(ractor::rpc::CallResult::SenderError) => Err(ApiError::Chat(ChatError::SessionFailed)),
        Err(_) => Err(ApiError::NotReady),
    };
    // The session counts the messages it answers; count here only those it never answered.
    if matches!(result, Err(ApiError::Timeout | ApiError::NotReady) | Err(ApiError::Chat(ChatError::SessionFailed))) {
        telemetry::message_answered(platform, "failed", accepted.elapsed());
    }
    result
}

async fn chat(state: Arc<AppState>, content_type: Option<String>, body: Bytes) -> Result<warp::reply::Response, Rejection> {
    if state.shutting_down.load(Ordering::Acquire) {
        return Err(warp::reject::custom(ApiError::ShuttingDown));
    }
    if !state.is_ready() {
        return Err(warp::reject::custom(ApiError::NotReady));
    }
    // The body is JSON whatever Content-Type says (curl -d sends form-urlencoded); a
    // declared non-JSON media type other than that is refused.
    if let Some(ct) = content_type.map(|c| c.to_ascii_lowercase()) {
        let ok = ct.starts_with("application/json") || ct.starts_with("application/x-www-form-urlencoded") || ct.starts_with("text/plain");
        if !ok {
            return Err(warp::reject::custom(ApiError::UnsupportedMediaType));
        }
    }
    let ParsedChat { request: mut req, stream, message_id } = parse_chat(&body).map_err(warp::reject::custom)?;
    // Durable before anything else: from here on a crash loses nothing.
    let inbound = NewInbound {
        platform: "http".into(),
        account: req.account.clone(),
        dedup_key: message_id.map(|id| format!("http:{id}")),
        conversation: req.conversation.clone(),
        user: req.user.clone(),
        text: req.text.clone(),
        payload: InboxPayload { options: req.options.clone(), route: None }.to_json(),
    };
    match state.store.inbox_accept(&inbound, &state.node).await {
        Ok(Accepted::New(id)) => req.inbox_id = Some(id),
        Ok(Accepted::Duplicate(id)) => {
            telemetry::inbox_duplicate("http");
            return Err(warp::reject::custom(ApiError::Chat(ChatError::Duplicate(id))));
        }
        Err(e) => return Err(warp::reject::custom(ApiError::Storage(e.to_string()))),
    }
    if !stream {
        let reply = call_session(&state, req).await.map_err(warp::reject::custom)?;
        return Ok(warp::reply::json(&ChatResponse::from(reply)).into_response());
    }
    // Streaming: deltas flow through a channel while the call runs; the final event carries usage.
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    req.deltas = Some(tx);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let st = state.clone();
    tokio::spawn(async move {
        let _ = done_tx.send(call_session(&st, req).await);
    });
    let deltas = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
        .map(|d| Ok::<_, Infallible>(warp::sse::Event::default().event("delta").json_data(serde_json::json!({"text": d})).expect("json")));
    let last = futures::stream::once(async move {
        let ev = match done_rx.await {
            Ok(Ok(reply)) => warp::sse::Event::default().event("done").json_data(ChatResponse::from(reply)),
            Ok(Err(e)) => warp::sse::Event::default().event("error").json_data(e.body()),
            Err(_) => warp::sse::Event::default().event("error").json_data(ApiError::Chat(ChatError::SessionFailed).body()),
        };
        Ok::<_, Infallible>(ev.expect("json"))
    });
    Ok(warp::sse::reply(deltas.chain(last)).into_response())
}

/// Bounded route label for metrics.
fn route_label(path: &str) -> &'static str {
    match path {
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/api/v1/chat" => "/api/v1/chat",
        p if p.starts_with("/admin/v1/") => "/admin/v1",
        p if p.starts_with("/webhook/telegram/") => "/webhook/telegram",
        p if p.starts_with("/webhook/feishu/") => "/webhook/feishu",
        _ => "other",
    }
}

/// All routes, with JSON errors and request metrics.
pub fn routes(state: Arc<AppState>) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let with_state = {
        let s = state.clone();
        warp::any().map(move || s.clone())
    };
    let healthz = warp::path!("healthz").and(warp::get()).map(|| warp::reply::json(&serde_json::json!({"status": "ok"})));
    let readyz = warp::path!("readyz").and(warp::get()).and(with_state.clone()).map(|s: Arc<AppState>| {
        let ready = s.is_ready();
        let body = serde_json::json!({
            "status": if ready { "ready" } else if s.shutting_down.load(Ordering::Acquire) { "shutting_down" } else { "starting" },
            "workers_ready": s.ready_workers.load(Ordering::Acquire),
        });
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        warp::reply::with_status(warp::reply::json(&body), status)
    });
    let metrics = warp::path!("metrics").and(warp::get()).and(with_state.clone()).map(|s: Arc<AppState>| {
        s.process.collect();
        warp::reply::with_header(s.prometheus.render(), "content-type", "text/plain; version=0.0.4")
    });
    let max = state.max_body_bytes;
    let chat = warp::path!("api" / "v1" / "chat")
        .and(warp::post())
        .and(with_state)
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::content_length_limit(max))
        .and(warp::body::bytes())
        .and_then(chat);
    let admin = crate::admin::routes(state.clone());
    let webhooks = crate::webhooks::routes(state.clone());
    healthz
        .or(readyz)
        .or(metrics)
        .or(chat)
        .or(admin)
        .or(webhooks)
        .recover(move |r| recover(r, max))
        .with(warp::log::custom(|info| telemetry::http_request(route_label(info.path()), info.status().as_u16(), info.elapsed())))
}

/// Turns every rejection into a JSON error.
async fn recover(r: Rejection, max_body: u64) -> Result<warp::reply::Response, Infallible> {
    let err = if let Some(e) = r.find::<ApiError>() {
        clone_api_error(e)
    } else if r.is_not_found() {
        ApiError::NotFound
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge(max_body)
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::BadRequest("a Content-Length header is required".into())
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if let Some(e) = r.find::<warp::reject::InvalidQuery>() {
        ApiError::BadRequest(format!("invalid query string: {e}"))
    } else if let Some(e) = r.find::<warp::reject::InvalidHeader>() {
        ApiError::BadRequest(e.to_string())
    } else if r.find::<warp::reject::UnsupportedMediaType>().is_some() {
        ApiError::UnsupportedMediaType
    } else {
        ApiError::BadRequest(format!("{r:?}"))
    };
    Ok(err.into_response())
}

/// Rebuilds an `ApiError` found in a rejection (it is only borrowed there).
fn clone_api_error(e: &ApiError) -> ApiError {
    match e {
        ApiError::BadRequest(m) => ApiError::BadRequest(m.clone()),
        ApiError::PayloadTooLarge(n) => ApiError::PayloadTooLarge(*n),
        ApiError::NotFound => ApiError::NotFound,
        ApiError::MethodNotAllowed => ApiError::MethodNotAllowed,
        ApiError::NotReady => ApiError::NotReady,
        ApiError::ShuttingDown => ApiError::ShuttingDown,
        ApiError::Chat(c) => ApiError::Chat(c.clone()),
        ApiError::Timeout => ApiError::Timeout,
        ApiError::UnsupportedMediaType => ApiError::UnsupportedMediaType,
        ApiError::Unauthorized => ApiError::Unauthorized,
        ApiError::Forbidden(r) => ApiError::Forbidden(r),
        ApiError::NoSuch(m) => ApiError::NoSuch(m.clone()),
        ApiError::Storage(m) => ApiError::Storage(m.clone()),
    }
}
