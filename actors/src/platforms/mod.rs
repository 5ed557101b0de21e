//! Chat platform protocols: plain code with unit tests (types, signatures, crypto, API
//! clients, formatting) that knows nothing of actors, sessions or the store. The adapters that
//! turn platform requests into messages live in [`crate::ingress`]; the senders in
//! [`crate::egress`]. [`config`] holds the `[[telegram]]` and `[[feishu]]` account settings.

pub mod config;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Compares two secrets in constant time, lengths included: the SHA-256 digests of both are
/// compared, so neither a mismatching prefix nor a different length answers sooner.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}
pub mod feishu;
pub mod telegram;
