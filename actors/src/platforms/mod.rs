//! Chat platforms. Each has plain protocol code (types, signatures, crypto, API clients, with
//! unit tests) and the actors that use it (ingress and egress).

pub mod config;
pub mod egress;
pub mod feishu;
pub mod feishu_app;
pub mod telegram;
pub mod telegram_bot;
