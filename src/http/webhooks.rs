//! Platform webhooks: `POST /webhook/telegram/{account}` and `POST /webhook/feishu/{account}`.
//! Each request is authenticated before anything else is parsed, parsed once, stored in the
//! inbox through the accept path, and only then acknowledged. Bodies are limited by
//! `server.webhook_max_body_bytes`.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_actors::ingress::feishu::EventAnswer;
use switchboard_actors::message::Platform;
use switchboard_actors::platforms::feishu::event::RequestHeaders;
use switchboard_actors::platforms::feishu::event::challenge_response;
use switchboard_actors::platforms::telegram::Update;
use switchboard_actors::platforms::telegram::types::parse_update_bytes;
use switchboard_actors::telemetry;
use warp::{Filter, Rejection, Reply};

use super::{ApiError, AppState, body_within, with_state};

/// Telegram's secret-token header.
const TELEGRAM_SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

pub fn routes(state: Arc<AppState>) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let limit = state.limits.webhook;
    let telegram = warp::path!("webhook" / "telegram" / String)
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(warp::header::optional::<String>(TELEGRAM_SECRET_HEADER))
        .and(body_within(limit))
        .and_then(telegram);
    let feishu = warp::path!("webhook" / "feishu" / String)
        .and(warp::post())
        .and(with_state(state))
        .and(warp::header::headers_cloned())
        .and(body_within(limit))
        .and_then(feishu);
    telegram.or(feishu).unify()
}

/// A failed webhook authentication: the same 401 for every reason; the reason is counted
/// (`switchboard_platform_rejected_total`, `switchboard_auth_failures_total`), logged at debug
/// and audited in aggregate.
fn unauthorized(state: &AppState, platform: Platform, account: &str, reason: &'static str) -> Rejection {
    // An unknown account name is caller input: keep it out of metric labels.
    let label = if reason == "unknown_account" { "unknown" } else { account };
    telemetry::platform_rejected(platform, label, reason);
    tracing::debug!(%platform, account = label, reason, "Refused a webhook request that failed authentication.");
    state.auth_failures.record("webhook", format!("webhook:{platform}:{label}"), "webhook.rejected", reason);
    ApiError::WebhookUnauthorized.reject()
}

fn ok_json(body: serde_json::Value) -> warp::reply::Response {
    warp::reply::json(&body).into_response()
}

async fn feishu(
    account: String,
    state: Arc<AppState>,
    headers: warp::http::HeaderMap,
    body: Bytes,
) -> Result<warp::reply::Response, Rejection> {
    let Some(app) = state.feishu.get(&account) else {
        return Err(unauthorized(&state, Platform::Feishu, &account, "unknown_account"));
    };
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let rh =
        RequestHeaders { timestamp: h("x-lark-request-timestamp"), nonce: h("x-lark-request-nonce"), signature: h("x-lark-signature") };
    match app.handle(&body, &rh).await.map_err(|e| ApiError::from(e).reject())? {
        EventAnswer::Challenge(c) => {
            Ok(warp::reply::with_header(challenge_response(&c), "content-type", "application/json").into_response())
        }
        EventAnswer::Ok => Ok(ok_json(serde_json::json!({}))),
        EventAnswer::Rejected(r) if r.is_authentication() => Err(unauthorized(&state, Platform::Feishu, app.account(), r.reason())),
        EventAnswer::Rejected(r) => {
            telemetry::platform_rejected(Platform::Feishu, app.account(), r.reason());
            Err(ApiError::FeishuRejected(r).reject())
        }
    }
}

/// Parses a Telegram webhook body once. A JSON object that is not a valid update is
/// acknowledged and counted (Telegram would re-send it forever); anything else is a 400.
fn parse_update(body: &[u8]) -> Result<Option<Update>, ApiError> {
    match parse_update_bytes(body) {
        Ok(u) => Ok(Some(u)),
        Err(e) if e.classify() == serde_json::error::Category::Data && body.trim_ascii_start().starts_with(b"{") => Ok(None),
        Err(_) => Err(ApiError::BadRequest("the body is not a JSON Update object".into())),
    }
}

async fn telegram(account: String, state: Arc<AppState>, secret: Option<String>, body: Bytes) -> Result<warp::reply::Response, Rejection> {
    let Some(bot) = state.telegram.get(&account).filter(|b| b.secret_matches(secret.as_deref())) else {
        let reason = if state.telegram.contains_key(&account) { "bad_secret" } else { "unknown_account" };
        return Err(unauthorized(&state, Platform::Telegram, &account, reason));
    };
    let update = parse_update(&body)
        .inspect_err(|_| telemetry::platform_rejected(Platform::Telegram, bot.account(), "bad_json"))
        .map_err(ApiError::reject)?;
    if state.is_shutting_down() {
        // Telegram retries until it gets a 2xx; better it does so against another node.
        return Err(ApiError::ShuttingDown.reject());
    }
    match update {
        // Not stored: a 5xx makes Telegram deliver it again.
        Some(update) => bot.accept_update(&update).await.map_err(|e| ApiError::from(e).reject())?,
        None => {
            tracing::warn!(account = %bot.account(), "Skipped a Telegram update that does not parse.");
            telemetry::platform_update(Platform::Telegram, bot.account(), "malformed", telemetry::UpdateOutcome::Ignored);
            telemetry::UpdateOutcome::Malformed
        }
    };
    Ok(ok_json(serde_json::json!({"ok": true})))
}
