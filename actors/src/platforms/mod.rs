//! Chat platform protocols: plain code with unit tests (types, signatures, crypto, API
//! clients, formatting) that knows nothing of actors, sessions or the store. The adapters that
//! turn platform requests into messages live in [`crate::ingress`]; the senders in
//! [`crate::egress`]. [`config`] holds the `[[telegram]]` and `[[feishu]]` account settings.

pub mod config;
pub mod feishu;
pub mod telegram;
