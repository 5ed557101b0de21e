//! The admin API under `/admin/v1`: bearer tokens from config (only their SHA-256 is stored),
//! three roles, and every action written to the audit log.

use std::sync::Arc;

use serde::Deserialize;
use switchboard_actors::session::evict;
use switchboard_actors::store::ConversationInfo;
use switchboard_actors::{ingress, telemetry};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::auth::{bearer, find_by_sha256};
use super::{ApiError, AppState, with_state};
use crate::config::{AdminToken, Role};

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// Finds the configured token whose hash matches `presented` (comparing every entry in
/// constant time).
pub fn authenticate(tokens: &[AdminToken], presented: &str) -> Option<Principal> {
    find_by_sha256(tokens, presented, |t| &t.token_sha256).map(|t| Principal { name: t.name.clone(), role: t.role })
}

#[derive(Debug, Clone, Deserialize)]
struct ListQuery {
    platform: Option<String>,
    limit: Option<i64>,
}

fn limit(q: Option<i64>) -> Result<i64, ApiError> {
    match q {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!("`limit` must be between 1 and 1000. Given: {n}"))),
    }
}

/// Checks the bearer token and role; unauthorized and forbidden attempts are audited too.
async fn authorize(state: &AppState, header: Option<String>, need: Role, action: &str) -> Result<Principal, Rejection> {
    let Some(principal) = bearer(header.as_deref()).and_then(|t| authenticate(&state.admin_tokens, t)) else {
        telemetry::admin_request("unauthorized");
        let reason = if header.is_some() { "unknown_token" } else { "missing_token" };
        tracing::debug!(action, reason, "Refused an admin request without a valid token.");
        state.auth_failures.record("admin", "anonymous".into(), "admin.unauthorized", reason);
        return Err(warp::reject::custom(ApiError::Unauthorized));
    };
    if principal.role < need {
        telemetry::admin_request("forbidden");
        state.audit(&principal.name, "admin.forbidden", action, &format!("role {:?} lacks {:?}", principal.role, need)).await;
        return Err(warp::reject::custom(ApiError::Forbidden(need_name(need))));
    }
    telemetry::admin_request("ok");
    Ok(principal)
}

/// Path segments arrive percent-encoded (`http%3Ac1`).
fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

fn need_name(r: Role) -> &'static str {
    match r {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
    }
}

fn db(e: impl std::fmt::Display) -> Rejection {
    telemetry::admin_request("error");
    warp::reject::custom(ApiError::Storage(e.to_string()))
}

pub fn routes(state: Arc<AppState>) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let with_state = with_state(state);
    let auth = warp::header::optional::<String>("authorization");
    let base = warp::path!("admin" / "v1" / ..);
    let query = warp::query::<ListQuery>();
    let list =
        base.and(warp::path!("conversations")).and(warp::get()).and(with_state.clone()).and(auth).and(query).and_then(list_conversations);
    let messages = base
        .and(warp::path!("conversations" / String / "messages"))
        .and(warp::get())
        .and(with_state.clone())
        .and(auth)
        .and(query)
        .and_then(conversation_messages);
    let erase =
        base.and(warp::path!("conversations" / String)).and(warp::delete()).and(with_state.clone()).and(auth).and_then(erase_conversation);
    let dead =
        base.and(warp::path!("dead-letters")).and(warp::get()).and(with_state.clone()).and(auth).and(query).and_then(list_dead_letters);
    let replay =
        base.and(warp::path!("dead-letters" / String / "replay")).and(warp::post()).and(with_state).and(auth).and_then(replay_dead_letter);
    list.or(messages).unify().or(erase).unify().or(dead).unify().or(replay).unify()
}

fn json(body: serde_json::Value) -> warp::reply::Response {
    warp::reply::json(&body).into_response()
}

/// The stored conversation named by a path segment (key or hash).
async fn find_conversation(st: &AppState, segment: &str) -> Result<ConversationInfo, Rejection> {
    let key = decode(segment);
    st.store.conversation(&key).await.map_err(db)?.ok_or_else(|| ApiError::NoSuch(format!("conversation {key:?}")).reject())
}

async fn list_conversations(st: Arc<AppState>, h: Option<String>, q: ListQuery) -> Result<warp::reply::Response, Rejection> {
    let who = authorize(&st, h, Role::Viewer, "conversations.list").await?;
    let limit = limit(q.limit).map_err(ApiError::reject)?;
    let list = st.store.conversations(q.platform.as_deref(), limit).await.map_err(db)?;
    st.audit(&who.name, "admin.conversations.list", q.platform.as_deref().unwrap_or("*"), &format!("{} rows", list.len())).await;
    Ok(json(serde_json::json!({"conversations": list})))
}

async fn conversation_messages(
    key: String,
    st: Arc<AppState>,
    h: Option<String>,
    q: ListQuery,
) -> Result<warp::reply::Response, Rejection> {
    let who = authorize(&st, h, Role::Viewer, "conversations.messages").await?;
    let limit = limit(q.limit.or(Some(1000))).map_err(ApiError::reject)?;
    let conv = find_conversation(&st, &key).await?;
    let msgs = st.store.messages(&conv.key, limit).await.map_err(db)?;
    st.audit(&who.name, "admin.conversations.messages", &conv.key, &format!("{} messages", msgs.len())).await;
    Ok(json(serde_json::json!({"conversation": conv, "messages": msgs})))
}

async fn erase_conversation(key: String, st: Arc<AppState>, h: Option<String>) -> Result<warp::reply::Response, Rejection> {
    let who = authorize(&st, h, Role::Admin, "conversations.erase").await?;
    let conv = find_conversation(&st, &key).await?;
    evict(&conv.key);
    let rows = st.store.erase(&conv.key).await.map_err(db)?;
    st.audit(&who.name, "admin.conversations.erase", &conv.key, &format!("{rows} rows erased")).await;
    Ok(json(serde_json::json!({"erased": conv.key, "rows": rows})))
}

async fn list_dead_letters(st: Arc<AppState>, h: Option<String>, q: ListQuery) -> Result<warp::reply::Response, Rejection> {
    let who = authorize(&st, h, Role::Viewer, "dead_letters.list").await?;
    let limit = limit(q.limit).map_err(ApiError::reject)?;
    let list = st.store.dead_letters(limit).await.map_err(db)?;
    st.audit(&who.name, "admin.dead_letters.list", "*", &format!("{} rows", list.len())).await;
    Ok(json(serde_json::json!({"dead_letters": list})))
}

async fn replay_dead_letter(id: String, st: Arc<AppState>, h: Option<String>) -> Result<warp::reply::Response, Rejection> {
    let who = authorize(&st, h, Role::Operator, "dead_letters.replay").await?;
    let id: i64 = id.parse().map_err(|_| ApiError::BadRequest(format!("dead letter id must be a number. Given: {id:?}")).reject())?;
    let Some(entry) = st.store.replay_dead_letter(id, &st.node).await.map_err(db)? else {
        return Err(ApiError::NoSuch(format!("dead letter {id} (or it was already replayed)")).reject());
    };
    st.audit(&who.name, "admin.dead_letters.replay", &id.to_string(), &format!("new inbox entry {}", entry.id)).await;
    if let Err(e) = ingress::resume(&entry) {
        tracing::warn!(inbox_id = entry.id, error = %e, "A replayed dead letter could not be handed to its session; it is replayed at the next start.");
    }
    let body = warp::reply::json(&serde_json::json!({"replayed": id, "inbox_id": entry.id}));
    Ok(warp::reply::with_status(body, StatusCode::ACCEPTED).into_response())
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn tokens_match_by_hash_only() {
        let tokens = vec![AdminToken { name: "ops".into(), role: Role::Operator, token_sha256: hex::encode(Sha256::digest(b"s3cret")) }];
        let p = authenticate(&tokens, "s3cret").unwrap();
        assert_eq!(p.name, "ops");
        assert_eq!(p.role, Role::Operator);
        assert!(authenticate(&tokens, "s3cre").is_none());
        assert!(authenticate(&tokens, &tokens[0].token_sha256).is_none(), "the hash itself is not a token");
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }
}
