//! API-key callers (Foundry's gateway connections send `api-key`). Keys are configured only as
//! SHA-256 hashes, each mapped to a workload; a presented key is hashed and compared with
//! every configured hash in constant time.

use sha2::{Digest, Sha256};

/// Longest api-key accepted.
pub const MAX_API_KEY_BYTES: usize = 512;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    entries: Vec<([u8; 32], String)>,
}

impl std::fmt::Debug for ApiKeys {
    // The hashes of weak keys could be brute-forced: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let workloads: Vec<&str> = self.entries.iter().map(|(_, w)| w.as_str()).collect();
        write!(
            f,
            "ApiKeys({} keys for {:?})",
            self.entries.len(),
            workloads
        )
    }
}

impl ApiKeys {
    /// Adds a key hash; false when the hash is already present.
    pub fn insert(&mut self, sha256: [u8; 32], workload: String) -> bool {
        if self.entries.iter().any(|(h, _)| *h == sha256) {
            return false;
        }
        self.entries.push((sha256, workload));
        true
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The workload of a presented key. Every configured hash is compared, in constant time,
    /// whatever matches.
    pub fn lookup(&self, presented: &str) -> Option<&str> {
        if presented.is_empty() || presented.len() > MAX_API_KEY_BYTES {
            return None;
        }
        let digest = Sha256::digest(presented.as_bytes());
        let mut found = None;
        for (hash, workload) in &self.entries {
            if ct_eq(hash, &digest[..]) {
                found = Some(workload.as_str());
            }
        }
        found
    }
}

/// Constant-time equality of two byte strings of the same length.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Parses 64 hex digits (either case).
pub fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = (*pair.first()? as char).to_digit(16)?;
        let lo = (*pair.get(1)? as char).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn lookup_by_hash() {
        let mut k = ApiKeys::default();
        let h = parse_sha256_hex(&hex(&Sha256::digest(b"secret-one"))).unwrap();
        assert!(k.insert(h, "agent-a".into()));
        assert!(!k.insert(h, "agent-b".into()));
        let h2 = parse_sha256_hex(&hex(&Sha256::digest(b"secret-two")).to_uppercase()).unwrap();
        assert!(k.insert(h2, "agent-b".into()));
        assert_eq!(k.lookup("secret-one"), Some("agent-a"));
        assert_eq!(k.lookup("secret-two"), Some("agent-b"));
        assert_eq!(k.lookup("secret-three"), None);
        assert_eq!(k.lookup(""), None);
        assert_eq!(k.lookup(&"x".repeat(MAX_API_KEY_BYTES + 1)), None);
        assert!(!format!("{k:?}").contains(&hex(&h)));
    }

    #[test]
    fn hex_parsing() {
        assert!(parse_sha256_hex(&"0".repeat(63)).is_none());
        assert!(parse_sha256_hex(&"g".repeat(64)).is_none());
        assert!(parse_sha256_hex(&"é".repeat(32)).is_none());
        assert_eq!(parse_sha256_hex(&"ff".repeat(32)), Some([0xff; 32]));
    }
}
