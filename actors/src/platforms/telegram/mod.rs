//! Telegram Bot API channel.
//!
//! Plain protocol code, no actors:
//! * [`types`]: serde types for updates, messages and the response envelope.
//! * [`inbound`]: [`triage`](inbound::triage) decides whether to answer an update and
//!   normalizes it to an [`Incoming`](inbound::Incoming).
//! * [`format`]: HTML escaping and splitting answers into ≤ 4096-character messages.
//! * [`api`]: [`BotApi`](api::BotApi), the HTTP client.
//! * [`error`]: [`TgError`](error::TgError) and [`classify`](error::classify).

pub mod api;
pub mod error;
pub mod format;
pub mod inbound;
pub mod types;

pub use api::{BotApi, SendMessage};
pub use error::TgError;
pub use inbound::{BotIdentity, Incoming, Triage, triage};
pub use types::{ChatType, Message, Update, User};
