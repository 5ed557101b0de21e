//! The HTTP layer's one error type and the one place that maps errors to status codes
//! ([`ApiError::status_and_code`]); every rejection, webhook refusals included, is turned into
//! JSON `{"error": {"code": "...", "message": "..."}}` by [`recover`].

use std::convert::Infallible;

use switchboard_actors::inference::InferenceError;
use switchboard_actors::ingress::AcceptError;
use switchboard_actors::platforms::feishu::event::Rejection as FeishuRejection;
use switchboard_actors::session::ChatError;
use warp::http::{HeaderValue, StatusCode};
use warp::{Rejection, Reply};

/// Typed API errors.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// A Feishu event request that was authenticated but cannot be read.
    #[error("{0}")]
    FeishuRejected(FeishuRejection),
    /// A platform webhook request that failed authentication. One body for every reason
    /// (unknown account, wrong secret, bad signature, stale timestamp): the reason goes to
    /// metrics and logs, never to the caller.
    #[error("the request could not be authenticated")]
    WebhookUnauthorized,
    /// Over the caller's rate limit; try again after the given time.
    #[error("too many requests; retry after {} s", .0.as_secs().max(1))]
    RateLimited(std::time::Duration),
}

impl warp::reject::Reject for ApiError {}

impl From<AcceptError> for ApiError {
    fn from(e: AcceptError) -> Self {
        ApiError::Storage(e.to_string())
    }
}

impl ApiError {
    /// The only mapping from errors to HTTP statuses and error codes.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::NotFound | ApiError::NoSuch(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::Unauthorized | ApiError::WebhookUnauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
            ApiError::FeishuRejected(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Chat(e) => chat_status(e),
        }
    }

    fn body(&self) -> serde_json::Value {
        let (_, code) = self.status_and_code();
        let mut error = serde_json::json!({"code": code, "message": self.to_string()});
        if let ApiError::FeishuRejected(r) = self {
            error["reason"] = r.reason().into();
        }
        serde_json::json!({ "error": error })
    }

    /// The body of an SSE `error` event.
    pub fn event_body(&self) -> serde_json::Value {
        self.body()
    }

    pub fn into_response(self) -> warp::reply::Response {
        let (status, _) = self.status_and_code();
        let mut resp = warp::reply::with_status(warp::reply::json(&self.body()), status).into_response();
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        if let ApiError::RateLimited(wait) = &self {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut().insert("retry-after", HeaderValue::from(secs.max(1)));
        }
        if matches!(self, ApiError::Chat(ChatError::Inference(InferenceError::Busy(_)))) {
            resp.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        }
        resp
    }

    /// As a warp rejection (handlers return these; [`recover`] answers them).
    pub fn reject(self) -> Rejection {
        warp::reject::custom(self)
    }
}

fn chat_status(e: &ChatError) -> (StatusCode, &'static str) {
    match e {
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
    }
}

/// Turns every rejection into a JSON error: the one `recover` of the server.
pub async fn recover(r: Rejection, max_body: u64) -> Result<warp::reply::Response, Infallible> {
    let err = if let Some(e) = r.find::<ApiError>() {
        e.clone()
    } else if r.is_not_found() {
        ApiError::NotFound
    } else if let Some(limit) = r.find::<BodyTooLarge>() {
        ApiError::PayloadTooLarge(limit.0)
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

/// A body over a route's own limit (webhooks have a limit of their own).
#[derive(Debug)]
pub struct BodyTooLarge(pub u64);

impl warp::reject::Reject for BodyTooLarge {}
