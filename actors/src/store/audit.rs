//! The tamper-evident audit log: each record carries the SHA-256 of the previous record's
//! hash and its own fields, so editing or removing any record breaks the chain.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The hash that precedes the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub at_ms: i64,
    /// Who: an admin token name, `webhook:<platform>`, `system`.
    pub actor: String,
    /// What: e.g. `admin.dead_letters.replay`, `webhook.signature_rejected`.
    pub action: String,
    /// On what: a conversation key, a dead-letter id, …
    pub target: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of a record given the previous hash (fields separated by a unit separator so
/// that no two field lists produce the same input).
pub fn record_hash(prev_hash: &str, at_ms: i64, actor: &str, action: &str, target: &str, detail: &str) -> String {
    let mut h = Sha256::new();
    for part in [prev_hash, &at_ms.to_string(), actor, action, target, detail] {
        h.update(part.as_bytes());
        h.update([0x1f]);
    }
    hex::encode(h.finalize())
}

/// Checks the chain; returns the id of the first bad record and why.
pub fn verify_chain(records: &[AuditRecord]) -> Result<usize, (i64, String)> {
    let mut prev = GENESIS.to_string();
    for r in records {
        if r.prev_hash != prev {
            return Err((r.id, "its previous-hash does not match the record before it (a record was removed or reordered)".into()));
        }
        let expect = record_hash(&r.prev_hash, r.at_ms, &r.actor, &r.action, &r.target, &r.detail);
        if r.hash != expect {
            return Err((r.id, "its content does not match its hash (the record was edited)".into()));
        }
        prev = r.hash.clone();
    }
    Ok(records.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_string();
        (0..n)
            .map(|i| {
                let hash = record_hash(&prev, i as i64, "admin", "act", "t", "d");
                let r = AuditRecord {
                    id: i as i64 + 1,
                    at_ms: i as i64,
                    actor: "admin".into(),
                    action: "act".into(),
                    target: "t".into(),
                    detail: "d".into(),
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                r
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)), Ok(5));
    }

    #[test]
    fn edit_and_removal_are_detected() {
        let mut c = chain(5);
        c[2].detail = "changed".into();
        assert_eq!(verify_chain(&c).unwrap_err().0, 3);
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify_chain(&c).unwrap_err().0, 3);
    }
}
