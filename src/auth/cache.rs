//! Per-worker cache of verified tokens, so a caller's repeated requests skip the signature
//! check. Bounded; an entry is never returned at or after the token's `exp`.
//!
//! Keyed by the whole token, compared byte for byte, as Envoy's own `jwt_authn` cache does:
//! tokens are chosen by the caller, so a key derived from them must not collide, and exact
//! comparison cannot. (A truncated SHA-256 was used before; it cost ~3 µs per request in V8,
//! a tenth of the filter's whole cost on the cached path.) The map's hasher is std's SipHash
//! with random keys (WASI `random_get`), so callers cannot aim tokens at one bucket. Memory is
//! bounded twice: at most `capacity` tokens and at most `DEFAULT_MAX_BYTES` of them per worker
//! (typical Entra tokens are 1-2 KB, the largest accepted 16 KB).

use super::jwks::KeySet;
use super::Caller;
use std::collections::HashMap;

pub const DEFAULT_CAPACITY: usize = 4096;
/// The tokens kept by one worker, in bytes.
pub const DEFAULT_MAX_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
struct Entry {
    caller: Caller,
    exp_ms: u64,
    provider: usize,
    kid: String,
}

/// A bounded map from token key to the caller it authenticated.
#[derive(Debug, Clone)]
pub struct VerifiedCache {
    map: HashMap<Box<str>, Entry>,
    capacity: usize,
    /// Sum of the lengths of the tokens in `map`, and its bound.
    bytes: usize,
    max_bytes: usize,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        VerifiedCache::new(DEFAULT_CAPACITY)
    }
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> Self {
        VerifiedCache::with_limits(capacity, DEFAULT_MAX_BYTES)
    }

    pub fn with_limits(capacity: usize, max_bytes: usize) -> Self {
        VerifiedCache {
            map: HashMap::new(),
            capacity: capacity.max(1),
            bytes: 0,
            max_bytes,
        }
    }

    /// Bytes of tokens held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn remove(&mut self, key: &str) {
        if self.map.remove(key).is_some() {
            self.bytes = self.bytes.saturating_sub(key.len());
        }
    }

    fn retain(&mut self, keep: impl Fn(&Entry) -> bool) {
        self.map.retain(|_, e| keep(e));
        self.bytes = self.map.keys().map(|k| k.len()).sum();
    }

    fn has_room_for(&self, key: &str) -> bool {
        self.map.len() < self.capacity && self.bytes.saturating_add(key.len()) <= self.max_bytes
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The caller of a cached token, unless it has expired (`now_ms >= exp`), in which case
    /// the entry is dropped. One lookup: hashing the token is most of the cached path's cost.
    pub fn get(&mut self, key: &str, now_ms: u64) -> Option<Caller> {
        let e = self.map.get(key)?;
        if now_ms < e.exp_ms {
            return Some(e.caller.clone());
        }
        self.remove(key);
        None
    }

    /// Stores a verified token. Already expired tokens (accepted within the clock skew) are
    /// not cached. When full (entries or bytes), expired entries are dropped first, then the
    /// entries closest to expiry.
    pub fn insert(
        &mut self,
        key: &str,
        caller: Caller,
        exp_s: u64,
        provider: usize,
        kid: String,
        now_ms: u64,
    ) {
        let exp_ms = exp_s.saturating_mul(1000);
        if now_ms >= exp_ms {
            return;
        }
        let entry = Entry {
            caller,
            exp_ms,
            provider,
            kid,
        };
        if let Some(existing) = self.map.get_mut(key) {
            *existing = entry;
            return;
        }
        if key.len() > self.max_bytes {
            return; // larger than the whole budget: never evict everything for it
        }
        if !self.has_room_for(key) {
            self.retain(|e| now_ms < e.exp_ms);
        }
        while !self.has_room_for(key) {
            let victim = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.exp_ms)
                .map(|(k, _)| k.clone());
            match victim {
                Some(v) => self.remove(&v),
                None => return,
            }
        }
        self.bytes += key.len();
        self.map.insert(key.into(), entry);
    }

    /// After a provider's JWKS changed: forget tokens signed with keys it no longer publishes
    /// (a withdrawn key stops working at once, not at the tokens' expiry).
    pub fn retain_keys(&mut self, provider: usize, keys: &KeySet) {
        self.retain(|e| e.provider != provider || keys.contains(&e.kid));
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMethod, Caller};

    fn caller(w: &str) -> Caller {
        Caller {
            workload: w.into(),
            provider: "p".into(),
            method: AuthMethod::Jwt,
            tenant: None,
            subject_hash: None,
            exp_s: None,
        }
    }

    #[test]
    fn never_returns_an_entry_at_or_after_exp() {
        let mut c = VerifiedCache::new(8);
        let k = "t1";
        c.insert(k, caller("a"), 100, 0, "kid".into(), 50_000);
        assert_eq!(c.get(k, 99_999).map(|c| c.workload), Some("a".to_string()));
        assert!(c.get(k, 100_000).is_none());
        assert!(c.is_empty(), "expired entry is dropped");
        c.insert(k, caller("a"), 100, 0, "kid".into(), 100_000);
        assert!(c.is_empty(), "expired tokens are not cached");
    }

    #[test]
    fn bounded_and_evicts_expired_then_soonest() {
        let mut c = VerifiedCache::new(3);
        for i in 0..3u64 {
            c.insert(&format!("t{i}"), caller("w"), 100 + i, 0, "k".into(), 0);
        }
        assert_eq!(c.len(), 3);
        c.insert("t3", caller("w"), 200, 0, "k".into(), 0);
        assert_eq!(c.len(), 3);
        assert!(c.get("t0", 0).is_none(), "soonest expiring evicted");
        assert!(c.get("t3", 0).is_some());
        // At t=101.5 s, t1 (exp 101) has expired: it goes first.
        c.insert("t4", caller("w"), 300, 0, "k".into(), 101_500);
        assert_eq!(c.len(), 3);
        assert!(c.get("t2", 101_500).is_some());
        for i in 0..10_000u64 {
            c.insert(&format!("x{i}"), caller("w"), 1000 + i, 0, "k".into(), 0);
            assert!(c.len() <= 3);
        }
    }

    #[test]
    fn bounded_in_bytes_too() {
        let mut c = VerifiedCache::with_limits(100, 10);
        c.insert("aaaa", caller("a"), 100, 0, "k".into(), 0);
        c.insert("bbbb", caller("b"), 200, 0, "k".into(), 0);
        assert_eq!((c.len(), c.bytes()), (2, 8));
        // 8 + 4 > 10: the entry closest to expiry makes room.
        c.insert("cccc", caller("c"), 300, 0, "k".into(), 0);
        assert_eq!((c.len(), c.bytes()), (2, 8));
        assert!(c.get("aaaa", 0).is_none());
        assert!(c.get("cccc", 0).is_some());
        // Storing a token again replaces its entry without counting it twice.
        c.insert("cccc", caller("c2"), 300, 0, "k".into(), 0);
        assert_eq!(c.bytes(), 8);
        // Larger than the whole budget: not cached, nothing else lost.
        c.insert("x".repeat(11).as_str(), caller("x"), 400, 0, "k".into(), 0);
        assert_eq!(c.bytes(), 8);
        // Expiry on lookup gives the bytes back.
        assert!(c.get("bbbb", 200_000).is_none());
        assert_eq!((c.len(), c.bytes()), (1, 4));
        c.clear();
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn only_the_exact_token_hits() {
        let mut c = VerifiedCache::new(8);
        c.insert("a.b.c", caller("a"), 100, 0, "kid".into(), 0);
        assert!(c.get("a.b.c", 0).is_some());
        assert!(c.get("a.b.d", 0).is_none());
        assert!(c.get("a.b.c ", 0).is_none());
        assert!(c.get("a.b", 0).is_none());
    }
}
