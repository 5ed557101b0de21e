//! Platform webhooks: `POST /webhook/telegram/{account}` and `POST /webhook/feishu/{account}`.
//! Each request is authenticated before anything else is parsed, stored in the inbox, and only
//! then acknowledged.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_actors::telemetry;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use switchboard_actors::platforms::feishu::event::{Rejection as FeishuRejection, RequestHeaders};
use switchboard_actors::platforms::feishu_app::EventAnswer;

use crate::http::{ApiError, AppState};

/// Telegram's secret-token header.
const TELEGRAM_SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

pub fn routes(state: Arc<AppState>) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let with_state = warp::any().map(move || state.clone());
    let max = 1 << 20;
    let telegram = warp::path!("webhook" / "telegram" / String)
        .and(warp::post())
        .and(with_state.clone())
        .and(warp::header::optional::<String>(TELEGRAM_SECRET_HEADER))
        .and(warp::body::content_length_limit(max))
        .and(warp::body::bytes())
        .and_then(telegram);
    let feishu = warp::path!("webhook" / "feishu" / String)
        .and(warp::post())
        .and(with_state)
        .and(warp::header::headers_cloned())
        .and(warp::body::content_length_limit(max))
        .and(warp::body::bytes())
        .and_then(feishu);
    telegram.or(feishu).unify()
}

async fn feishu(
    account: String,
    state: Arc<AppState>,
    headers: warp::http::HeaderMap,
    body: Bytes,
) -> Result<warp::reply::Response, Rejection> {
    let Some(app) = state.feishu.get(&account) else {
        return Err(warp::reject::custom(ApiError::NoSuch(format!("feishu account {account:?}"))));
    };
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let rh =
        RequestHeaders { timestamp: h("x-lark-request-timestamp"), nonce: h("x-lark-request-nonce"), signature: h("x-lark-signature") };
    match app.handle(&body, &rh).await {
        Ok(EventAnswer::Challenge(c)) => Ok(warp::reply::json(&serde_json::json!({"challenge": c})).into_response()),
        Ok(EventAnswer::Ok) => Ok(warp::reply::json(&serde_json::json!({})).into_response()),
        Ok(EventAnswer::Rejected(r)) => {
            let (status, code) = match r {
                FeishuRejection::BadJson | FeishuRejection::Undecryptable | FeishuRejection::EncryptedButNoKey => {
                    (StatusCode::BAD_REQUEST, "bad_request")
                }
                _ => (StatusCode::UNAUTHORIZED, "unauthorized"),
            };
            if status == StatusCode::UNAUTHORIZED {
                state.audit(&format!("webhook:feishu:{}", app.account()), "webhook.rejected", r.reason(), &r.to_string()).await;
            }
            let body = serde_json::json!({"error": {"code": code, "message": r.to_string(), "reason": r.reason()}});
            Ok(warp::reply::with_status(warp::reply::json(&body), status).into_response())
        }
        Err(e) => Err(warp::reject::custom(ApiError::Storage(e.to_string()))),
    }
}

async fn telegram(account: String, state: Arc<AppState>, secret: Option<String>, body: Bytes) -> Result<warp::reply::Response, Rejection> {
    let Some(bot) = state.telegram.get(&account) else {
        return Err(warp::reject::custom(ApiError::NoSuch(format!("telegram account {account:?}"))));
    };
    if !bot.secret_matches(secret.as_deref()) {
        telemetry::platform_rejected("telegram", bot.account(), "bad_secret");
        state
            .audit(
                &format!("webhook:telegram:{}", bot.account()),
                "webhook.rejected",
                "bad_secret",
                "missing or wrong X-Telegram-Bot-Api-Secret-Token",
            )
            .await;
        return Err(warp::reject::custom(ApiError::Unauthorized));
    }
    let raw: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => {
            telemetry::platform_rejected("telegram", bot.account(), "bad_json");
            return Err(warp::reject::custom(ApiError::BadRequest("the body is not a JSON Update object".into())));
        }
    };
    if state.shutting_down.load(std::sync::atomic::Ordering::Acquire) {
        // Telegram retries until it gets a 2xx; better it does so against another node.
        return Err(warp::reject::custom(ApiError::ShuttingDown));
    }
    match bot.accept_update(&raw).await {
        Ok(_) => Ok(warp::reply::with_status(warp::reply::json(&serde_json::json!({"ok": true})), StatusCode::OK).into_response()),
        // Not stored: a 5xx makes Telegram deliver it again.
        Err(e) => Err(warp::reject::custom(ApiError::Storage(e.to_string()))),
    }
}
