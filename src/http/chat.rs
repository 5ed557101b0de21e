//! `POST /api/v1/chat`: the generic JSON chat API. The message goes through the same accept
//! path as every platform message; the caller waits for the answer (or streams it as SSE).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use switchboard_actors::inference::{FinishReason, GenerateOptions};
use switchboard_actors::ingress::Inbound;
use switchboard_actors::message::{Content, Platform, ReplyTarget};
use switchboard_actors::session::{Caller, ChatError, ChatReply};
use switchboard_actors::store::Accepted;
use switchboard_actors::telemetry::{self, AnswerOutcome};
use tokio::sync::{mpsc, oneshot};
use warp::{Filter, Rejection, Reply};

use super::{ApiError, AppState, auth, body_within, with_state};
use switchboard_actors::ingress::limits::Admit;

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
    pub finish_reason: Option<FinishReason>,
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

pub fn route(state: Arc<AppState>) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let limit = state.limits.api;
    warp::path!("api" / "v1" / "chat")
        .and(warp::post())
        .and(with_state(state))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("content-type"))
        .and(body_within(limit))
        .and_then(chat)
}

/// Checks a text field: not blank, at most `max` characters.
fn check(name: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.trim().is_empty() {
        return Err(ApiError::BadRequest(format!("`{name}` must not be empty")));
    }
    if v.chars().count() > max {
        return Err(ApiError::BadRequest(format!("`{name}` is longer than {max} characters")));
    }
    Ok(())
}

/// Parses and checks a chat body into the message and whether to stream (public for the
/// fuzzer).
pub fn parse(body: &[u8]) -> Result<(Inbound, bool), ApiError> {
    let b: ChatBody = serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
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
    let inbound = Inbound {
        platform: Platform::Http,
        account: switchboard_actors::ingress::ANONYMOUS_ACCOUNT.into(),
        conversation: format!("http:{}", b.conversation),
        sender_id: b.user.clone(),
        user: b.user,
        content: Content::Text(b.text),
        message_id: b.message_id,
        reply_to: ReplyTarget::Http,
        options,
        kind: "message",
    };
    Ok((inbound, b.stream))
}

/// The body is JSON whatever Content-Type says (curl -d sends form-urlencoded); a declared
/// non-JSON media type other than that is refused.
fn check_content_type(content_type: Option<String>) -> Result<(), ApiError> {
    let Some(ct) = content_type.map(|c| c.to_ascii_lowercase()) else { return Ok(()) };
    let ok = ["application/json", "application/x-www-form-urlencoded", "text/plain"].iter().any(|p| ct.starts_with(p));
    if ok { Ok(()) } else { Err(ApiError::UnsupportedMediaType) }
}

/// Authenticates the caller and applies its rate limit: the API key's name, or `None` for an
/// anonymous caller (where allowed).
fn authenticate(state: &AppState, authorization: Option<&str>) -> Result<Option<String>, ApiError> {
    let key = match auth::api_principal(&state.api, authorization) {
        Ok(key) => key,
        Err(reason) => {
            state.auth_failures.record("api", "anonymous".into(), "api.unauthorized", reason);
            return Err(ApiError::Unauthorized);
        }
    };
    let Some(key) = key else { return Ok(None) };
    auth::may_use_local(key)?;
    if let Some(limiter) = state.api_limits.get(&key.name) {
        if let Admit::No { retry_after, .. } = limiter.check(&(), std::time::Instant::now()) {
            telemetry::rate_limited(Platform::Http, "api_key");
            return Err(ApiError::RateLimited(retry_after));
        }
    }
    Ok(Some(key.name.clone()))
}

async fn chat(
    state: Arc<AppState>,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Bytes,
) -> Result<warp::reply::Response, Rejection> {
    if state.is_shutting_down() {
        return Err(ApiError::ShuttingDown.reject());
    }
    let key = authenticate(&state, authorization.as_deref()).map_err(ApiError::reject)?;
    if !state.is_ready() {
        return Err(ApiError::NotReady.reject());
    }
    check_content_type(content_type).map_err(ApiError::reject)?;
    let (inbound, stream) = parse(&body).map_err(ApiError::reject)?;
    let inbound = match key {
        Some(name) => inbound.for_api_key(&name),
        None => inbound,
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    let (deltas_tx, deltas_rx) = if stream {
        let (tx, rx) = mpsc::unbounded_channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let accepted_at = Instant::now();
    let caller = Caller { reply: reply_tx.into(), deltas: deltas_tx };
    match state.ingress.accept(inbound, Some(caller)).await {
        Ok(Accepted::New(_)) => {}
        Ok(Accepted::Duplicate(id)) => return Err(ApiError::Chat(ChatError::Duplicate(id)).reject()),
        Err(e) => return Err(ApiError::from(e).reject()),
    }
    let answer = wait_for_answer(state, reply_rx, accepted_at);
    match deltas_rx {
        None => answer.await.map(|r| warp::reply::json(&ChatResponse::from(r)).into_response()).map_err(ApiError::reject),
        Some(deltas) => Ok(sse(deltas, answer)),
    }
}

/// Waits for the session's answer within `chat_timeout`.
async fn wait_for_answer(
    state: Arc<AppState>,
    reply: oneshot::Receiver<Result<ChatReply, ChatError>>,
    accepted_at: Instant,
) -> Result<ChatReply, ApiError> {
    let result = match tokio::time::timeout(state.chat_timeout, reply).await {
        Ok(Ok(r)) => r.map_err(ApiError::from),
        Ok(Err(_)) => Err(ApiError::Chat(ChatError::SessionFailed)),
        Err(_) => Err(ApiError::Timeout),
    };
    // The session counts the messages it answers; count here only those it never answered.
    if matches!(result, Err(ApiError::Timeout | ApiError::Chat(ChatError::SessionFailed))) {
        telemetry::message_answered(Platform::Http, AnswerOutcome::Failed, accepted_at.elapsed());
    }
    result
}

/// Streams deltas as `delta` events, then the answer (`done`) or the error (`error`).
fn sse(
    deltas: mpsc::UnboundedReceiver<String>,
    answer: impl std::future::Future<Output = Result<ChatReply, ApiError>> + Send + 'static,
) -> warp::reply::Response {
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = done_tx.send(answer.await);
    });
    let deltas = tokio_stream::wrappers::UnboundedReceiverStream::new(deltas)
        .map(|d| Ok::<_, Infallible>(warp::sse::Event::default().event("delta").json_data(serde_json::json!({"text": d})).expect("json")));
    let last = futures::stream::once(async move {
        let ev = match done_rx.await {
            Ok(Ok(reply)) => warp::sse::Event::default().event("done").json_data(ChatResponse::from(reply)),
            Ok(Err(e)) => warp::sse::Event::default().event("error").json_data(e.event_body()),
            Err(_) => warp::sse::Event::default().event("error").json_data(ApiError::Chat(ChatError::SessionFailed).event_body()),
        };
        Ok::<_, Infallible>(ev.expect("json"))
    });
    warp::sse::reply(deltas.chain(last)).into_response()
}
