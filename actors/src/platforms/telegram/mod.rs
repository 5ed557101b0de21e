//! Telegram Bot API channel.
