//! The HTTP surface (warp): health, readiness, metrics, the generic chat API ([`chat`]), the
//! admin API ([`admin`]) and the platform webhooks ([`webhooks`]). Every error is one
//! [`ApiError`], mapped to a status in one function and answered by one [`recover`].

pub mod admin;
pub mod auth;
pub mod chat;
pub mod error;
pub mod state;
pub mod webhooks;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use switchboard_actors::telemetry;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

pub use error::{ApiError, recover};
pub use state::{AppState, BodyLimits};

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

/// Passes the shared state to a handler.
pub(crate) fn with_state(state: Arc<AppState>) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The request body, refused with 413 (naming `limit`) when it is larger.
pub(crate) fn body_within(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::body::content_length_limit(limit).and(warp::body::bytes()).or_else(move |r: Rejection| async move {
        if r.find::<warp::reject::PayloadTooLarge>().is_some() { Err(warp::reject::custom(error::BodyTooLarge(limit))) } else { Err(r) }
    })
}

/// All routes, with JSON errors and request metrics.
pub fn routes(state: Arc<AppState>) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let healthz = warp::path!("healthz").and(warp::get()).map(|| warp::reply::json(&serde_json::json!({"status": "ok"})));
    let readyz = warp::path!("readyz").and(warp::get()).and(with_state(state.clone())).map(|s: Arc<AppState>| {
        let ready = s.is_ready();
        let body = serde_json::json!({
            "status": if ready { "ready" } else if s.is_shutting_down() { "shutting_down" } else { "starting" },
            "workers_ready": s.ready_workers.load(Ordering::Acquire),
        });
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        warp::reply::with_status(warp::reply::json(&body), status)
    });
    let metrics = warp::path!("metrics").and(warp::get()).and(with_state(state.clone())).map(|s: Arc<AppState>| {
        s.process.collect();
        warp::reply::with_header(s.prometheus.render(), "content-type", "text/plain; version=0.0.4")
    });
    let max = state.limits.api;
    healthz
        .or(readyz)
        .or(metrics)
        .or(chat::route(state.clone()))
        .or(admin::routes(state.clone()))
        .or(webhooks::routes(state))
        .recover(move |r| recover(r, max))
        .with(warp::log::custom(|info| telemetry::http_request(route_label(info.path()), info.status().as_u16(), info.elapsed())))
}
