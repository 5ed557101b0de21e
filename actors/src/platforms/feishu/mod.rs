//! Feishu / Lark Open Platform channel: plain protocol code (no actors, no HTTP server).
//!
//! - [`crypto`]: event decryption, event and custom-bot signatures, constant-time compares.
//! - [`event`]: opening an incoming event request (challenge or event, authenticated).
//! - [`message`]: `im.message.receive_v1` parsing, answer policy, splitting long replies.
//! - [`api`]: the Open API client with single-flight tenant token refresh.
//! - [`custom_bot`]: send-only group webhook bot.
//! - [`error`] and [`token`]: error classification and the token cache behind [`api`].

pub mod api;
pub mod crypto;
pub mod custom_bot;
pub mod error;
pub mod event;
pub mod message;
pub mod token;

pub use api::{BotInfo, FeishuApi, text_content};
pub use error::{FsError, classify};
