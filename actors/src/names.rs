//! Registered actor names, in one place. Names are dotted: `<area>.<what>[.<which>]`; the
//! supervisors carry their area's name. They double as the `actor` label of
//! `switchboard_actor_restarts_total`.

use crate::message::Platform;

/// The root supervisor.
pub const ROOT: &str = "root";
/// Supervisor of the batcher and the inference workers.
pub const INFERENCE: &str = "inference";
/// Supervisor slot of the session router.
pub const SESSIONS: &str = "sessions";
/// Supervisor of the platform ingress actors (Telegram pollers).
pub const INGRESS: &str = "ingress";
/// Supervisor of the egress actors.
pub const EGRESS: &str = "egress";
/// Periodic upkeep.
pub const HOUSEKEEPING: &str = "housekeeping";
/// The inference batcher.
pub const BATCHER: &str = "inference.batcher";
/// The session router.
pub const ROUTER: &str = "sessions.router";
/// The restart label shared by every session actor (their names are unbounded).
pub const SESSION_LABEL: &str = "session";

/// An inference worker.
pub fn worker(id: usize) -> String {
    format!("inference.worker.{id}")
}

/// The worker id in a worker's name.
pub fn worker_id(name: &str) -> Option<usize> {
    name.strip_prefix("inference.worker.")?.parse().ok()
}

/// A conversation's session actor, by conversation hash and the router's generation counter:
/// a new session never collides with an earlier one of the same conversation still stopping.
pub fn session(hash: &str, generation: u64) -> String {
    format!("session.{hash}.{generation}")
}

/// The egress actor of a platform account.
pub fn egress(platform: Platform, account: &str) -> String {
    format!("egress.{platform}.{account}")
}

/// The long-polling actor of a Telegram bot.
pub fn telegram_poller(account: &str) -> String {
    format!("ingress.telegram.{account}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn worker_names_round_trip() {
        assert_eq!(super::worker_id(&super::worker(3)), Some(3));
        assert_eq!(super::worker_id("inference.batcher"), None);
    }
}
